"""Distillation end to end on CPU with a tiny random teacher: logit cache, frozen teacher, summary, errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from speedtrain.distill import logit_cache
from speedtrain.errors import UserError
from speedtrain.models.digest import weights_digest
from speedtrain.pipeline import run
from tests.conftest import DISTILL_TINY


def _distill(make_cfg, teacher, *overrides):
    return make_cfg(*DISTILL_TINY, f"teacher.path={teacher}", "teacher.max_length=24", *overrides)


def test_distill_end_to_end_and_logit_cache(make_cfg, tmp_path, fine_tuned_teacher, monkeypatch):
    before = weights_digest(fine_tuned_teacher)
    run(_distill(make_cfg, fine_tuned_teacher, "logger=csv", "trainer.log_every_n_steps=1"))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0 <= metrics["teacher/test_acc"] <= 1 and metrics["teacher/params"] > metrics["params"]["params_total"]
    assert metrics["distill/teacher_share"] == pytest.approx(metrics["test/acc"] / metrics["teacher/test_acc"])
    assert metrics["distill/size_ratio"] == pytest.approx(metrics["teacher/params"] / metrics["params"]["params_total"])
    # the default transfer set: the training texts and up to 2 word-dropout variants of each
    assert metrics["data"]["train"] * 2 < metrics["distill/transfer_set"] <= metrics["data"]["train"] * 3
    (csv,) = (tmp_path / "run" / "csv").glob("version_*/metrics.csv")
    logged = pd.read_csv(csv)
    assert logged["train/kd_loss"].notna().any() and logged["train/ce_loss"].notna().any()
    assert weights_digest(fine_tuned_teacher) == before  # the teacher is never trained

    def no_teacher_forward(*args, **kwargs):
        raise AssertionError("the teacher ran although its logits are cached")

    monkeypatch.setattr(logit_cache, "teacher_outputs", no_teacher_forward)
    run(_distill(make_cfg, fine_tuned_teacher, f"paths.output_dir={tmp_path / 'again'}"))
    assert json.loads((tmp_path / "again" / "metrics.json").read_text())["teacher/logits_from_cache"] is True
    with pytest.raises(AssertionError, match="the teacher ran"):  # the pooled hidden states are not cached yet
        run(_distill(make_cfg, fine_tuned_teacher, "distill=logits_hidden", "distill.intermediate.layer_map=[[1,1]]",
                     f"paths.output_dir={tmp_path / 'hidden'}"))
    with pytest.raises(AssertionError, match="the teacher ran"):  # other data (another split): recomputed
        run(_distill(make_cfg, fine_tuned_teacher, "data.split_seed=7", f"paths.output_dir={tmp_path / 'other'}"))


def test_distill_errors(make_cfg, fine_tuned_teacher, tmp_path):
    with pytest.raises(UserError, match="distillation needs a teacher"):
        run(make_cfg("+experiment=distill", "teacher=none"))
    with pytest.raises(UserError, match="predicts 96 labels but the data has 21"):
        run(_distill(make_cfg, fine_tuned_teacher, "data.label=section"))
    with pytest.raises(UserError, match="no Hugging Face model folder"):
        run(_distill(make_cfg, tmp_path))
    with pytest.raises(Exception) as err:
        run(_distill(make_cfg, fine_tuned_teacher, "distill.loss.alpha=1.5"))
    assert "distill.alpha=1.5 must be in [0, 1]" in str(err.value.__cause__ or err.value)
    with pytest.raises(Exception) as err:  # checked before any teacher work
        run(_distill(make_cfg, fine_tuned_teacher, "distill.intermediate.layer_map=[[1,6]]"))
    assert "pair [1, 6] is out of range: the student has layers 0..1 and the teacher 0..1" in str(
        err.value.__cause__ or err.value)


def test_stage1_fine_tunes_the_teacher_once_and_caches_it(make_cfg, tmp_path, tiny_teacher_dir, isolated_cache):
    """No teacher.path: stage 1 fine-tunes the teacher and stores it; the next run reuses it; other hparams refit."""
    def distill(out, *overrides):
        run(make_cfg(*DISTILL_TINY, f"teacher.source={tiny_teacher_dir}", "teacher.max_length=24",
                     "teacher.lr=1e-3", f"paths.output_dir={tmp_path / out}", *overrides))
        return json.loads((tmp_path / out / "metrics.json").read_text())

    first = distill("first", "logger=csv")
    assert first["teacher/cached"] is False and first["teacher/fit_s"] > 0
    cached = isolated_cache / "teachers" / first["teacher/key"]
    assert first["teacher/dir"] == str(cached)  # the stored copy of what stage 1 fine-tuned is used
    stage1 = (tmp_path / "first" / "teacher" / "model" / "model.safetensors").read_bytes()
    assert (cached / "model.safetensors").read_bytes() == stage1
    # stage 1 logged its own metrics, with the prefix, into its own folder
    (csv,) = (tmp_path / "first" / "teacher" / "csv").glob("version_*/metrics.csv")
    assert any(c.startswith("teacher-train/loss") for c in pd.read_csv(csv).columns)

    second = distill("second")
    assert second["teacher/cached"] is True and second["teacher/key"] == first["teacher/key"]
    assert not (tmp_path / "second" / "teacher").exists() and second["teacher/logits_from_cache"] is True
    assert second["test/acc"] == first["test/acc"]  # the student does not depend on whether stage 1 ran

    other = distill("other", "teacher.epochs=1")
    assert other["teacher/cached"] is False and other["teacher/key"] != first["teacher/key"]


def test_an_interrupted_stage1_resumes_from_its_checkpoint(make_cfg, tmp_path, tiny_teacher_dir):
    """A run that fails in the middle of the teacher's fine-tuning continues it when started again in its folder."""
    from tests.crash import Crash, crash_overrides

    out = tmp_path / "run"
    overrides = [*DISTILL_TINY, f"teacher.source={tiny_teacher_dir}", "teacher.max_length=24", "teacher.lr=2e-3",
                 f"paths.output_dir={out}", *crash_overrides(tmp_path / "marker", epoch=1, batch=1, signals="[]")]
    with pytest.raises(Crash):
        run(make_cfg(*overrides))  # stage 1 fails in its second epoch
    assert (out / "teacher" / "checkpoints" / "last.ckpt").is_file() and not (out / "metrics.json").exists()
    run(make_cfg(*overrides))  # the same run again
    stage1 = json.loads((out / "teacher" / "metrics.json").read_text())
    assert stage1["resumed_from"] == str(out / "teacher" / "checkpoints" / "last.ckpt")
    assert stage1["epochs"] == make_cfg(*overrides).teacher.epochs
    assert json.loads((out / "metrics.json").read_text())["teacher/cached"] is False
    assert not (out / "teacher" / "checkpoints" / "last.ckpt").exists()  # the teacher is cached: no longer needed


def test_teacher_experiment_fills_the_cache_that_distill_reads(make_cfg, tmp_path, tiny_teacher_dir, isolated_cache):
    # TINY_RUN's trainer.max_epochs=2 wins over +experiment=teacher's ${teacher.epochs}: the key sees 2 epochs
    common = [f"teacher.source={tiny_teacher_dir}", "teacher.max_length=24", "teacher.lr=2e-3", "teacher.epochs=2"]
    run(make_cfg("+experiment=teacher", *common, f"paths.output_dir={tmp_path / 't'}", tiny_student=False))
    run(make_cfg(*DISTILL_TINY, *common, f"paths.output_dir={tmp_path / 'd'}"))
    metrics = json.loads((tmp_path / "d" / "metrics.json").read_text())
    assert metrics["teacher/cached"] is True
    used = (isolated_cache / "teachers" / metrics["teacher/key"] / "model.safetensors").read_bytes()
    assert used == (tmp_path / "t" / "model" / "model.safetensors").read_bytes()


def test_an_incomplete_cached_teacher_is_ignored(make_cfg, tmp_path, tiny_teacher_dir, isolated_cache):
    common = [*DISTILL_TINY, f"teacher.source={tiny_teacher_dir}", "teacher.max_length=24", "teacher.lr=3e-3"]
    run(make_cfg(*common, f"paths.output_dir={tmp_path / 'a'}"))
    key = json.loads((tmp_path / "a" / "metrics.json").read_text())["teacher/key"]
    (isolated_cache / "teachers" / key / "speedtrain_teacher.json").unlink()  # as if a copy had been cut short
    run(make_cfg(*common, f"paths.output_dir={tmp_path / 'b'}"))
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["teacher/cached"] is False
    assert (isolated_cache / "teachers" / key / "speedtrain_teacher.json").is_file()
