"""Every student family trains, distils, exports and predicts through the same pipeline (model=static here;
the BERT families run everywhere else), and a family that cannot do what is asked fails up front."""

from __future__ import annotations

import json
import logging

import pytest

from speedtrain.builders import data_on_device
from speedtrain.bundle.predictor import Predictor
from speedtrain.config import compose_config
from speedtrain.lit.optim import SparseAdamW
from speedtrain.errors import UserError
from speedtrain.pipeline import run
from tests.conftest import EXPORT_TINY, TINY_RUN

STATIC_TINY = ["model=static", "model.hidden_size=16", "model.buckets=2048", "tokenizer.vocab_size=600"]


def test_static_student_distils_exports_and_predicts(tmp_path, fine_tuned_teacher, caplog, monkeypatch):
    """+experiment=distill trains the static family unless model= says otherwise (no model= here), starting from
    the teacher's piece vectors."""
    out = tmp_path / "run"
    cfg = compose_config([*TINY_RUN, *EXPORT_TINY, *STATIC_TINY[1:], "+experiment=distill",
                          f"teacher.path={fine_tuned_teacher}", "teacher.max_length=24",
                          "export.variants=[onnx,onnx_int8]", "export.teacher=false",
                          "model.recipe.large.from_texts=1000",  # the large-data path, on the small data
                          f"paths.output_dir={out}"])
    assert cfg.data.batch_size == 128 and cfg.module.optimizer.lr == pytest.approx(1e-2)  # the family's recipe
    assert cfg.module.optimizer._target_ == "speedtrain.lit.optim.SparseAdamW" and not data_on_device(cfg)
    assert cfg.data.max_length == 64
    assert cfg.model.init == "teacher"
    sparse_steps = []  # the shapes of the parameters SparseAdamW updated row by row
    row_step = SparseAdamW._sparse_step
    monkeypatch.setattr(SparseAdamW, "_sparse_step",
                        lambda self, p, group: (sparse_steps.append(tuple(p.shape)), row_step(self, p, group))[1])
    with caplog.at_level(logging.INFO):
        run(cfg)  # +experiment=distill asks for hidden-state terms: the static student has no layers to match
    assert "has no hidden layers" in caplog.text and "model.init=teacher: " in caplog.text
    assert "training inputs (>= model.recipe.large.from_texts=1,000): batch 1024, lr 0.0283" in caplog.text
    assert "model.sparse_grad" not in caplog.text  # the tables stayed sparse
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["batch"]["batch_size"] == 1024 and metrics["speed"]["data_on_device"] is True
    vocab = metrics["data"]["vocab_size"]
    assert metrics["params"]["params_total"] == (vocab + 2048) * (16 + 1) + 16 * 96 + 96  # table, importance, head
    assert {(vocab + 2048, 16), (vocab + 2048, 1)} <= set(sparse_steps)  # the tables trained row by row
    assert 0 <= metrics["test/acc"] <= 1 and metrics["model_family"] == "static"
    bundle = metrics["bundle"]  # what the frontier reads: the fast variant end to end, tokenization included
    assert bundle["e2e_texts_per_s"] > 0 and bundle["e2e_p50_ms"] > 0 and bundle["e2e_batch"] == 8  # EXPORT_TINY
    manifest = json.loads((out / "bundle" / "speedtrain.json").read_text())
    assert manifest["max_length"] == 64 and set(manifest["variants"]) == {"pytorch", "onnx", "onnx_int8"}
    predictor = Predictor.load(out / "bundle")
    texts = ["live horses for breeding", "frozen fish fillets", "steel screws and bolts"]
    probs = predictor.predict_proba(texts)
    assert probs.shape == (3, 96) and abs(float(probs.sum(1).mean()) - 1) < 1e-4
    reference = Predictor.load(out / "bundle", variant="pytorch").predict_proba(texts)
    assert (probs.argmax(1) == reference.argmax(1)).all()


def test_a_family_without_ffn_layers_cannot_be_pruned(tmp_path):
    cfg = compose_config([*TINY_RUN, *STATIC_TINY, "+experiment=baseline", "export.enabled=true",
                          "export.prune.enabled=true", f"paths.output_dir={tmp_path / 'run'}"])
    with pytest.raises(UserError, match="export.prune.enabled=true prunes a transformer's feed-forward layers"):
        run(cfg)
    assert not (tmp_path / "run").exists()  # failed before anything was written


def test_a_latency_budget_picks_the_most_accurate_family_that_fits(tmp_path):
    from speedtrain.families import apply_latency_budget, pick_family

    families = {"bert_mini": 1.5, "bert_tiny": 0.7, "static": 0.2}
    assert [pick_family(b, families) for b in (5, 1.0, 0.3)] == ["bert_mini", "bert_tiny", "static"]
    with pytest.raises(UserError, match="no student family answers that fast here; the fastest, static, takes 0.2"):
        pick_family(0.1, families)
    with pytest.raises(UserError, match="export.latency_budget_ms=0 must be a positive number"):
        pick_family(0, families)
    cfg = compose_config(["+experiment=distill", "export.latency_budget_ms=0.3", f"paths.output_dir={tmp_path}"])
    picked = apply_latency_budget(cfg)
    assert picked.model_family == "static" and picked.model._target_.endswith("build_static_student")
    assert picked.data.batch_size == 128 and picked.data.max_length == 64  # the family's recipe follows it
    roomy = apply_latency_budget(compose_config(["+experiment=distill", "export.latency_budget_ms=9",
                                                 f"paths.output_dir={tmp_path}"]))
    assert roomy.model_family == "static"  # the most accurate family measured, and the fastest
    tiny = apply_latency_budget(compose_config(["+experiment=distill", "export.latency_budget_ms=9",
                                                "~export.families", "+export.families={bert_mini:1.5,bert_tiny:0.45}",
                                                f"paths.output_dir={tmp_path}"]))
    assert tiny.model_family == "bert_mini" and tiny.model.num_hidden_layers == 4  # over its bert_tiny defaults
    assert tiny.model.max_length == 32 and tiny.model.recipe.lr == pytest.approx(5e-4)
    assert apply_latency_budget(cfg.copy()).model_family == "static"
    unchanged = compose_config(["+experiment=distill", f"paths.output_dir={tmp_path}"])
    assert apply_latency_budget(unchanged) is unchanged  # no budget: the model group's choice


@pytest.mark.parametrize("rows,overrides,epochs", [
    (13_500, {}, 5),  # the default data's transfer set: 2,100 steps at 5 epochs already
    (4_800, {}, 14),  # a 2,000-row CSV: 150 steps an epoch -> 14 epochs for 2,000 steps
    (4_800, {"limit_train_batches": 4}, 5),  # a limited run is left alone
    (4_800, {"min_steps": None}, 5),
])
def test_min_steps_raise_the_epochs_of_small_data_sets(rows, overrides, epochs):
    from omegaconf import OmegaConf

    from speedtrain.trainer import epochs_for_min_steps

    trainer = OmegaConf.create({"max_epochs": 5, "min_steps": 2000, "devices": 1, "num_nodes": 1,
                                "accumulate_grad_batches": 1, "limit_train_batches": None, **overrides})
    assert epochs_for_min_steps(trainer, rows, batch_size=32) == epochs


def test_static_conv_is_the_static_family_plus_a_convolution(tmp_path):
    """model=static_conv composes from conf/model/static.yaml (Hydra's defaults list, and load_model_config the same
    way for export.families) and builds a static student with the convolution."""
    from hydra.utils import instantiate

    from speedtrain.families import builder_config, load_model_config, model_name

    cfg = compose_config(["+experiment=distill", "model=static_conv", f"paths.output_dir={tmp_path}"])
    assert model_name(cfg) == "static_conv" and cfg.model.init == "teacher" and cfg.data.batch_size == 128  # its own
    static = compose_config(["+experiment=distill", "model=static", f"paths.output_dir={tmp_path}"]).model
    assert load_model_config("static_conv") == cfg.model
    changed = {k for k in cfg.model if cfg.model[k] != static.get(k)}
    assert changed == {"family", "conv_channels", "conv_kernel", "vocabulary", "recipe"}
    assert cfg.model.vocabulary == "teacher" and static.vocabulary == "data"
    model = instantiate(builder_config(cfg.model), vocab_size=50, num_labels=3)
    assert model.conv.out_channels == cfg.model.conv_channels and model.config.conv_kernel == cfg.model.conv_kernel


def test_static_text_vector_is_matched_with_the_teachers_last_layer(tmp_path, fine_tuned_teacher, caplog,
                                                                    monkeypatch):
    """model.distill_text_vector=true: the static student's pooled vector (B, D) meets the cached mean of the
    teacher's last layer through the per-text term; without it, a static student distils the logits only."""
    from transformers import AutoConfig

    from speedtrain.distill.losses import IntermediateLoss

    seen = []
    original = IntermediateLoss.forward

    def spy(self, student_hidden, student_mask, *args, **kwargs):
        seen.append((dict(self.layer_map), tuple(student_hidden[0].shape), tuple(kwargs["teacher_pooled"].shape)))
        return original(self, student_hidden, student_mask, *args, **kwargs)

    monkeypatch.setattr(IntermediateLoss, "forward", spy)
    cfg = compose_config([*TINY_RUN, *STATIC_TINY[1:], "+experiment=distill", f"teacher.path={fine_tuned_teacher}",
                          "model.distill_text_vector=true", "distill.augment.copies=0", "trainer.max_epochs=1",
                          "trainer.min_steps=null", "trainer.limit_train_batches=2", f"paths.output_dir={tmp_path}"])
    with caplog.at_level(logging.INFO):
        run(cfg)
    assert "matches its text vector with the mean of the teacher's last layer" in caplog.text
    depth = AutoConfig.from_pretrained(fine_tuned_teacher).num_hidden_layers  # the tiny teacher's last layer
    assert seen and all(m == {0: depth} for m, _, _ in seen)
    batch, width = seen[0][1]
    assert width == cfg.model.hidden_size and seen[0][2][:2] == (batch, 1)  # (B, D) student, (B, 1, H_t) teacher


def test_large_data_takes_the_familys_fast_path_small_data_keeps_its_recipe(tmp_path):
    from speedtrain.families import grow_batch

    def cfg(*overrides):
        return compose_config(["+experiment=distill", "model=static", f"paths.output_dir={tmp_path}", *overrides])

    small = cfg()
    assert not grow_batch(small, 49_999) and small.data.batch_size == 128 and small.model.sparse_grad is False
    large = cfg()
    assert grow_batch(large, 50_000)
    assert large.data.batch_size == 1024 and large.module.optimizer.lr == pytest.approx(1e-2 * 8**0.5)
    assert large.trainer.min_steps == 188 and large.model.sparse_grad is True and data_on_device(large)
    chosen = cfg("data.batch_size=256", "module.optimizer.lr=0.05")
    assert not grow_batch(chosen, 10**6) and chosen.data.batch_size == 256  # the user's batch stays
    rate = cfg("module.optimizer.lr=0.05", "trainer.min_steps=10")
    assert grow_batch(rate, 10**6) and rate.module.optimizer.lr == 0.05 and rate.trainer.min_steps == 10
    conv = cfg("model=static_conv")
    assert not grow_batch(conv, 10**6) and conv.data.batch_size == 128  # no large-data path (not validated)
