"""Distillation end to end on CPU with a tiny random teacher: logit cache, frozen teacher, summary, errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from speedtrain.distill import logit_cache
from speedtrain.distill.logit_cache import weights_digest
from speedtrain.errors import UserError
from speedtrain.pipeline import run
from tests.conftest import TINY, TINY_RUN


@pytest.fixture(scope="module")
def fine_tuned_teacher(tiny_teacher_dir, tmp_path_factory):
    """The tiny teacher fine-tuned on HS chapters by +experiment=teacher: its <run>/model folder."""
    from speedtrain.config import compose_config

    out = tmp_path_factory.mktemp("teacher-run")
    run(compose_config([*TINY_RUN, "+experiment=teacher", f"teacher.source={tiny_teacher_dir}",
                        "teacher.max_length=24", "data.eval_batch_size=64", f"paths.output_dir={out}"]))
    return out / "model"


def _distill(make_cfg, teacher, *overrides):
    return make_cfg("+experiment=distill", f"teacher.path={teacher}", "teacher.max_length=24", *overrides)


def test_distill_end_to_end_and_logit_cache(make_cfg, tmp_path, fine_tuned_teacher, monkeypatch):
    before = weights_digest(fine_tuned_teacher)
    run(_distill(make_cfg, fine_tuned_teacher, "logger=csv", "trainer.log_every_n_steps=1"))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0 <= metrics["teacher/test_acc"] <= 1 and metrics["teacher/params"] > metrics["params"]["params_total"]
    assert metrics["distill/teacher_share"] == pytest.approx(metrics["test/acc"] / metrics["teacher/test_acc"])
    assert metrics["distill/size_ratio"] == pytest.approx(metrics["teacher/params"] / metrics["params"]["params_total"])
    (csv,) = (tmp_path / "run" / "csv").glob("version_*/metrics.csv")
    logged = pd.read_csv(csv)
    assert logged["train/kd_loss"].notna().any() and logged["train/ce_loss"].notna().any()
    assert weights_digest(fine_tuned_teacher) == before  # the teacher is never trained

    def no_teacher_forward(*args, **kwargs):
        raise AssertionError("the teacher ran although its logits are cached")

    monkeypatch.setattr(logit_cache, "teacher_logits", no_teacher_forward)
    run(_distill(make_cfg, fine_tuned_teacher, f"paths.output_dir={tmp_path / 'again'}"))
    assert json.loads((tmp_path / "again" / "metrics.json").read_text())["teacher/logits_from_cache"] is True
    with pytest.raises(AssertionError, match="the teacher ran"):  # other data (another split): recomputed
        run(_distill(make_cfg, fine_tuned_teacher, "data.split_seed=7", f"paths.output_dir={tmp_path / 'other'}"))


def test_distill_errors(make_cfg, fine_tuned_teacher, tmp_path):
    with pytest.raises(UserError, match="set teacher.path="):
        run(make_cfg("+experiment=distill"))
    with pytest.raises(UserError, match="predicts 96 labels but the data has 21"):
        run(_distill(make_cfg, fine_tuned_teacher, "data.label=section"))
    with pytest.raises(UserError, match="no Hugging Face model folder"):
        run(_distill(make_cfg, tmp_path))
    with pytest.raises(Exception) as err:
        run(_distill(make_cfg, fine_tuned_teacher, "distill.loss.alpha=1.5"))
    assert "distill.alpha=1.5 must be in [0, 1]" in str(err.value.__cause__ or err.value)
