"""Cross-fitted teachers (``teacher.crossfit=k``): k fold teachers, each fine-tuned without one fold of the training
texts, give a training text and its variants the targets of the teacher that never saw it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from speedtrain.builders import build_datamodule
from speedtrain.config import compose_config
from speedtrain.distill.augment import word_dropout_variants
from speedtrain.distill.losses import KDLoss
from speedtrain.distill.ngram_teacher import fold_assignment
from speedtrain.errors import UserError
from speedtrain.models.teacher import load_classifier, load_tokenizer
from speedtrain.pipeline import check_config
from speedtrain.teacher_stage import ensure_teacher, prepare_distillation
from tests.conftest import TINY_RUN

STATIC = ["model=static", "model.hidden_size=16", "model.buckets=2048", "tokenizer.vocab_size=600", "distill=logits",
          "teacher.max_length=24", "data.eval_batch_size=64"]


def logits_of(folder: str, texts: list[str], num_labels: int) -> np.ndarray:
    teacher = load_classifier(folder, num_labels=num_labels, fine_tuned=True).eval()
    tok = load_tokenizer(folder)
    with torch.no_grad():
        enc = tok(texts, truncation=True, max_length=24, padding=True, return_tensors="pt")
        return teacher(**enc).logits.numpy()


def test_each_training_text_is_labelled_by_the_fold_teacher_that_did_not_see_it(tmp_path, tiny_teacher_dir):
    cfg = compose_config([*TINY_RUN, *STATIC, "+experiment=distill", f"teacher.source={tiny_teacher_dir}",
                          "teacher.crossfit=2", "teacher.seed=3", "distill.augment.copies=1",
                          f"paths.output_dir={tmp_path}"])
    folder, stage1 = ensure_teacher(cfg)
    fold_dirs = stage1["teacher/fold_dirs"]
    assert stage1["teacher/crossfit"] == 2 and len(fold_dirs) == 2 and folder not in fold_dirs

    datamodule = build_datamodule(cfg)
    datamodule.prepare()
    texts = list(datamodule.splits["train"]["text"])
    labels = np.asarray(datamodule.splits["train"]["label"])
    fold = fold_assignment(labels, 2, seed=3)
    for f in range(2):  # each fold teacher was fine-tuned on the other fold's texts only
        seen = json.loads((tmp_path / f"teacher_fold{f}" / "metrics.json").read_text())["data"]["train"]
        assert seen == int((fold != f).sum())

    distill = prepare_distillation(cfg, datamodule, KDLoss(), folder, stage1)
    metrics = distill["teacher_metrics"]
    assert "teacher/fold_dirs" not in metrics  # a list of folders is not a metric
    targets = datamodule.teacher_arrays["teacher_logits"]
    assert metrics["teacher/crossfit"] == 2  # and the fold teachers' accuracy on the texts they held out:
    assert metrics["teacher/crossfit_train_acc"] == pytest.approx(np.mean(targets[: len(texts)].argmax(1) == labels))
    aug = OmegaConf.to_container(cfg.distill.augment, resolve=True)
    aug.pop("label"), aug.pop("replace_neighbours")
    variants = word_dropout_variants(texts, **aug)  # the transfer set's variants, in its order
    assert len(targets) == len(texts) + len(variants)  # the training texts, then their variants

    rows = [int(np.flatnonzero(fold == f)[0]) for f in (0, 1)]  # a text of each fold
    n = datamodule.num_labels
    for i, f in zip(rows, (0, 1)):
        own = logits_of(fold_dirs[f], [texts[i]], n)[0]
        other = logits_of(fold_dirs[1 - f], [texts[i]], n)[0]
        np.testing.assert_allclose(targets[i], own, atol=1e-4)  # the teacher that held the text out
        assert not np.allclose(targets[i], other, atol=1e-3)
    full = logits_of(folder, [texts[rows[0]]], n)[0]
    assert not np.allclose(targets[rows[0]], full, atol=1e-3)  # not the teacher fine-tuned on all of them
    for f in (0, 1):  # a variant gets the teacher that did not see its source text
        j = next(j for j, (i, _) in enumerate(variants) if fold[i] == f)
        own = logits_of(fold_dirs[f], [variants[j][1]], n)[0]
        np.testing.assert_allclose(targets[len(texts) + j], own, atol=1e-4)

    # the second run finds every teacher and every label in the cache
    again, stage1_again = ensure_teacher(cfg)
    assert again == folder and stage1_again["teacher/fold_dirs"] == fold_dirs and stage1_again["teacher/cached"]
    datamodule = build_datamodule(cfg)
    datamodule.prepare()
    metrics = prepare_distillation(cfg, datamodule, KDLoss(), folder, stage1_again)["teacher_metrics"]
    assert metrics["teacher/logits_from_cache"]
    np.testing.assert_array_equal(datamodule.teacher_arrays["teacher_logits"], targets)


@pytest.mark.parametrize("override, words", [
    ("teacher.crossfit=1", "number of folds >= 2"),
    ("teacher.crossfit=-3", "number of folds >= 2"),
    ("teacher.path=/some/folder", "needs stage 1"),
    ("distill.teacher_logits=online", "distill.teacher_logits=cache"),
])
def test_bad_crossfit_settings_fail_before_any_fine_tuning(tmp_path, override, words):
    cfg = compose_config([*TINY_RUN, *STATIC, "+experiment=distill", "teacher.crossfit=2", override,
                          f"paths.output_dir={tmp_path}"])
    with pytest.raises(UserError, match=words.replace("(", r"\(")):
        check_config(cfg)  # the config checks, before the data is read
    with pytest.raises(UserError, match=words.replace("(", r"\(")):
        ensure_teacher(cfg)
    assert not any(Path(tmp_path).iterdir())  # nothing fine-tuned, nothing written
