"""Online teacher (batches carry both tokenizations) and the intermediate (TinyBERT) terms."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from speedtrain.builders import build_datamodule
from speedtrain.data.datamodule import PairCollator
from speedtrain.distill.losses import IntermediateLoss
from speedtrain.distill.teacher import attach_teacher
from speedtrain.errors import UserError
from speedtrain.pipeline import run
from tests.conftest import DISTILL_TINY, TINY_STUDENT


def test_online_batches_carry_both_tokenizations_aligned_with_the_cache(make_cfg, fine_tuned_teacher):
    """The teacher run online on a batch's teacher_* inputs gives the cached logits of the same rows."""
    cfg = make_cfg("+experiment=distill", "teacher.max_length=24")
    augment = {"copies": 1, "word_dropout": 0.3, "seed": 0}
    cached, online = build_datamodule(cfg), build_datamodule(cfg)
    for dm in (cached, online):
        dm.prepare()
    attach_teacher(cfg.teacher, fine_tuned_teacher, cached, cfg.paths.cache_dir, augment)
    _, teacher = attach_teacher(cfg.teacher, fine_tuned_teacher, online, cfg.paths.cache_dir, augment, online=True)
    n = online.encoded["train"].num_rows
    assert n == cached.encoded["train"].num_rows > online.splits["train"].num_rows  # the variants, in both modes
    rows = [*range(8), *range(n - 8, n)]  # training texts and variants
    collate = PairCollator(online.tokenizer, online.teacher_tokenizer)
    batch = collate([online.encoded["train"][i] for i in rows])
    assert batch["teacher_input_ids"].shape[0] == batch["input_ids"].shape[0] == 16
    assert batch["teacher_attention_mask"].shape == batch["teacher_input_ids"].shape
    assert batch["teacher_input_ids"].max() >= 1000  # MiniLM's ids, not the 600-word student vocabulary
    assert torch.equal(batch["input_ids"], collate([cached.encoded["train"][i] for i in rows])["input_ids"])
    with torch.no_grad():
        logits = teacher(input_ids=batch["teacher_input_ids"], attention_mask=batch["teacher_attention_mask"]).logits
    expected = torch.from_numpy(cached.teacher_arrays["teacher_logits"][rows])
    assert torch.equal(PairCollator(cached.tokenizer, None, cached.teacher_arrays)(
        [cached.encoded["train"][i] for i in rows])["teacher_logits"], expected)  # the collator gathers the rows
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    loader_batch = next(iter(online.train_dataloader()))  # the loader uses the same collator
    assert {"teacher_input_ids", "teacher_attention_mask", "input_ids", "labels"} <= set(loader_batch)


def test_online_distillation_end_to_end(make_cfg, tmp_path, fine_tuned_teacher):
    before = (fine_tuned_teacher / "model.safetensors").read_bytes()
    run(make_cfg(*DISTILL_TINY, f"teacher.path={fine_tuned_teacher}", "teacher.max_length=24",
                 "distill.teacher_logits=online", "logger=csv", "trainer.log_every_n_steps=1"))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["distill/teacher_logits"] == "online" and "teacher/logits_from_cache" not in metrics
    (csv,) = (tmp_path / "run" / "csv").glob("version_*/metrics.csv")
    assert pd.read_csv(csv)["train/kd_loss"].dropna().gt(0).all()
    assert (fine_tuned_teacher / "model.safetensors").read_bytes() == before  # frozen: never trained, never saved
    ckpt = torch.load(metrics["best_checkpoint"], weights_only=False)
    assert not any(k.startswith(("teacher", "_teacher")) for k in ckpt["state_dict"])  # kept out of checkpoints


def test_logits_hidden_with_the_small_vocabulary_student(make_cfg, tmp_path, fine_tuned_teacher):
    run(make_cfg("+experiment=distill", "distill=logits_hidden", f"teacher.path={fine_tuned_teacher}",
                 "teacher.max_length=24", "distill.intermediate.layer_map=[[0,0],[1,1]]", "logger=csv",
                 "trainer.log_every_n_steps=1"))
    (csv,) = (tmp_path / "run" / "csv").glob("version_*/metrics.csv")
    logged = pd.read_csv(csv)
    assert logged["train/hidden_loss"].dropna().gt(0).all() and logged["train/attention_loss"].dropna().eq(0).all()
    with pytest.raises(Exception) as err:  # Hydra's InstantiationException, caused by our UserError
        run(make_cfg("+experiment=distill", "distill=logits_hidden", f"teacher.path={fine_tuned_teacher}",
                     "teacher.max_length=24", "distill.intermediate.layer_map=[[1,1]]",
                     "distill.intermediate.attention_weight=1.0", f"paths.output_dir={tmp_path / 'bad'}"))
    assert "needs the student to read the teacher's tokens" in str(err.value.__cause__ or err.value)


def test_logits_hidden_token_level_with_the_teachers_tokenizer(make_cfg, tmp_path, fine_tuned_teacher):
    run(make_cfg("+experiment=distill", "distill=logits_hidden", f"teacher.path={fine_tuned_teacher}",
                 "teacher.max_length=24", "model.max_length=24", "tokenizer=pretrained",
                 f"tokenizer.pretrained={fine_tuned_teacher}", "distill.intermediate.layer_map=[[0,0],[1,1]]",
                 "distill.intermediate.attention_weight=1.0", "logger=csv", "trainer.log_every_n_steps=1",
                 *[o for o in TINY_STUDENT if not o.startswith("tokenizer.")], tiny_student=False))
    (csv,) = (tmp_path / "run" / "csv").glob("version_*/metrics.csv")
    logged = pd.read_csv(csv)
    assert logged["train/attention_loss"].dropna().gt(0).all() and logged["train/hidden_loss"].dropna().gt(0).all()


def _states(batch=2, length=5, width=8, layers=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = tuple(torch.randn(batch, length, width, generator=g) for _ in range(layers + 1))
    attn = tuple(torch.softmax(torch.randn(batch, 2, length, length, generator=g), -1) for _ in range(layers))
    return hidden, attn


def test_intermediate_loss_is_zero_for_a_copy_and_ignores_padding():
    hidden, attn = _states()
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    loss = IntermediateLoss(8, 8, [[0, 0], [1, 1], [2, 2]], shared_tokens=True, attention_weight=1.0)
    for proj in loss.proj.values():  # identity projections: the student is the teacher
        torch.nn.init.eye_(proj.weight)
        torch.nn.init.zeros_(proj.bias)
    out = loss(hidden, mask, hidden, mask, attn, attn)
    assert out.hidden_loss.item() == pytest.approx(0, abs=1e-6)
    assert out.attention_loss.item() == pytest.approx(0, abs=1e-6)
    changed = tuple(h.clone() for h in hidden)
    changed[1][1, 3:] += 100.0  # only padded positions differ
    assert loss(changed, mask, hidden, mask, attn, attn).hidden_loss.item() == pytest.approx(0, abs=1e-6)
    changed[1][1, 0] += 1.0
    assert loss(changed, mask, hidden, mask, attn, attn).hidden_loss.item() > 0
    pooled = IntermediateLoss(8, 8, [[1, 1]], shared_tokens=False)  # other tokenizers: masked mean per text
    torch.nn.init.eye_(pooled.proj["1"].weight)
    torch.nn.init.zeros_(pooled.proj["1"].bias)
    short = tuple(h[:, :3] for h in hidden)  # the teacher read 3 tokens, the student 5 of which 2 are padding
    student_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 0, 0]])
    assert pooled(hidden, student_mask, short, torch.ones(2, 3)).hidden_loss.item() == pytest.approx(0, abs=1e-6)
    means = hidden[1][:, :3].mean(1)[:, None]  # (B, 1, H): what the cache holds for teacher layer 1
    assert pooled(hidden, student_mask, teacher_pooled=means).hidden_loss.item() == pytest.approx(0, abs=1e-6)
    # a student with one vector per text (static, model.distill_text_vector): (B, H), taken as it is
    text = IntermediateLoss(8, 8, [[0, 1]], shared_tokens=False)
    torch.nn.init.eye_(text.proj["0"].weight)
    torch.nn.init.zeros_(text.proj["0"].bias)
    vectors = (hidden[1][:, :3].mean(1),)  # (B, H)
    assert text(vectors, student_mask, teacher_pooled=means).hidden_loss.item() == pytest.approx(0, abs=1e-6)
    off = (vectors[0] + torch.tensor([[1.0] * 8, [0.0] * 8]),)  # text 0 off by 1 in every dimension: MSE 1 / 2
    assert text(off, student_mask, teacher_pooled=means).hidden_loss.item() == pytest.approx(0.5, abs=1e-5)


def test_intermediate_loss_errors():
    with pytest.raises(UserError, match="attention_weight=0.5 compares attention maps"):
        IntermediateLoss(8, 16, [[1, 1]], shared_tokens=False, attention_weight=0.5)
    with pytest.raises(UserError, match="must be >= 0"):
        IntermediateLoss(8, 16, [[1, 1]], shared_tokens=True, hidden_weight=-1.0)
    with pytest.raises(UserError, match=r"pair \[3, 6\] is out of range: the student has layers 0..2"):
        IntermediateLoss(8, 16, [[3, 6]], shared_tokens=True, student_layers=2, teacher_layers=6)
    with pytest.raises(UserError, match="must be \\[student layer, teacher layer\\] pairs"):
        IntermediateLoss(8, 16, {1: 3}, shared_tokens=True)
