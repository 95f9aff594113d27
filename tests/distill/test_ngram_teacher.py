"""teacher=ensemble: the n-gram model's out-of-fold scores, the weight chosen on val, its cache, attach_teacher."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from scipy.special import log_softmax, softmax

from speedtrain.builders import build_datamodule
from speedtrain.config import config_dir
from speedtrain.distill import ngram_teacher
from speedtrain.distill.augment import word_dropout_variants
from speedtrain.distill.ngram_teacher import (
    NgramSettings,
    cached_ngram_log_probs,
    choose_weight,
    combine,
    fold_assignment,
    ngram_log_probs,
)
from speedtrain.distill.teacher import attach_teacher
from speedtrain.errors import UserError
from tests.conftest import write_csv

WORDS = {0: ["apple", "banana", "cherry", "mango"], 1: ["hammer", "wrench", "drill", "chisel"],
         2: ["boot", "sandal", "loafer", "sneaker"]}
SERIAL = NgramSettings(folds=3, n_jobs=1)


def _texts(n_per_class: int = 12, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Short made-up product titles of 3 classes: two class words and a shared adjective each."""
    rng = np.random.default_rng(seed)
    adjectives = ["fresh", "large", "small", "red", "cheap", "steel"]
    texts, labels = [], []
    for label, words in WORDS.items():
        for _ in range(n_per_class):
            texts.append(" ".join([rng.choice(adjectives), *rng.choice(words, 2, replace=False)]))
            labels.append(label)
    return texts, np.array(labels)


def test_folds_are_stratified_balanced_and_seeded():
    labels = np.array([0] * 10 + [1] * 7 + [2] * 3)
    fold = fold_assignment(labels, 3, seed=0)
    assert sorted(np.bincount(fold, minlength=3)) in ([6, 7, 7], [7, 7, 6])
    for label in range(3):  # each label spread over the folds as evenly as its count allows
        counts = np.bincount(fold[labels == label], minlength=3)
        assert counts.max() - counts.min() <= 1
    assert np.array_equal(fold, fold_assignment(labels, 3, seed=0))
    assert not np.array_equal(fold, fold_assignment(labels, 3, seed=1))
    with pytest.raises(UserError, match="folds=5 needs at least 5 training texts"):
        fold_assignment(labels[:4], 5, seed=0)


def test_out_of_fold_scores_come_from_the_model_that_never_saw_the_text(monkeypatch):
    texts, labels = _texts()
    labels[[0, 12, 24]] = [1, 2, 0]  # three wrong labels: a full fit learns them, held-out models cannot
    variants = word_dropout_variants(texts, copies=1, word_dropout=0.4, seed=0)
    evaluate = {"validation": _texts(3, seed=1), "test": _texts(3, seed=2)}
    calls = []
    fit = ngram_teacher._fit_and_score

    def recording(train_texts, train_labels, score, *args):
        result = fit(train_texts, train_labels, score, *args)
        calls.append((list(train_texts), score, result[0]))
        return result

    monkeypatch.setattr(ngram_teacher, "_fit_and_score", recording)
    out = ngram_log_probs((texts, labels), evaluate, variants, 3, SERIAL, seed=7)
    assert len(calls) == 1 + SERIAL.folds and calls[0][0] == texts  # the full fit, then one model per fold
    fold = fold_assignment(labels, SERIAL.folds, seed=7)
    n, source = len(texts), np.array([i for i, _ in variants])
    for f, (seen, _, result) in enumerate(calls[1:]):
        held, held_variants = np.flatnonzero(fold == f), np.flatnonzero(fold[source] == f)
        assert seen == [texts[i] for i in np.flatnonzero(fold != f)]  # the other folds' texts only
        np.testing.assert_array_equal(out["train"][held], result[0][0])
        np.testing.assert_array_equal(out["train"][n + held_variants], result[0][1])
    full = fit(texts, labels, [texts], (SERIAL.C,), 3, SERIAL)[0][0][0]  # the full fit's scores of its own texts
    np.testing.assert_array_equal(out["validation"], calls[0][2][0][0])
    assert not np.allclose(out["train"][:n], full, atol=1e-3)
    wrong = [0, 12, 24]
    assert (full[wrong, labels[wrong]] > out["train"][wrong, labels[wrong]]).all()  # memorised vs not
    assert np.exp(out["train"][:n].max(1)).mean() < np.exp(full.max(1)).mean()  # softer targets
    assert out["train"].shape == (n + len(variants), 3) and float(out["C"]) == SERIAL.C
    np.testing.assert_allclose(np.exp(out["train"]).sum(1), 1, rtol=1e-5)


def test_c_grid_is_chosen_on_val_and_a_missing_class_gets_a_score():
    texts, labels = _texts()
    settings = NgramSettings(C=[0.01, 10.0], folds=3, n_jobs=1)
    out = ngram_log_probs((texts, labels), {"validation": _texts(4, seed=1)}, [], 3, settings, seed=0)
    assert float(out["C"]) == 10.0  # C=0.01 underfits 36 texts
    two = labels < 2  # a model that never saw label 2 still scores all 3 labels, label 2 at the bottom
    out = ngram_log_probs(([t for t, k in zip(texts, two) if k], labels[two]), {"validation": _texts(2, seed=1)},
                          [], 3, NgramSettings(folds=2, n_jobs=1), seed=0)
    assert np.isfinite(out["validation"]).all() and (out["validation"].argmax(1) < 2).all()


def test_weight_is_chosen_on_val_ties_to_the_lower():
    transformer = np.array([[2.0, 0.0], [0.5, 0.0]])  # right on the first text, wrong on the second
    ngram = log_softmax(np.array([[0.0, 1.0], [0.0, 3.0]]), axis=1)  # the other way round, surer
    labels = np.array([0, 1])
    # both right while 2 - 3w > 0 and 3.5w - 0.5 > 0: w in (1/7, 2/3); the lowest of the grid is 0.2
    assert choose_weight(transformer, ngram, labels) == 0.2
    assert choose_weight(transformer, log_softmax(np.zeros((2, 2)), axis=1), np.array([0, 0])) == 0.0
    assert choose_weight(np.zeros((2, 2)), ngram, labels, grid=(1.0, 0.5)) == 0.5
    mixed = combine(transformer, ngram, 0.0)  # weight 0: the transformer's own distribution
    np.testing.assert_allclose(softmax(mixed, axis=1), softmax(transformer, axis=1), rtol=1e-6)
    np.testing.assert_allclose(combine(transformer, ngram, 0.25),
                               0.75 * log_softmax(transformer, axis=1) + 0.25 * ngram, rtol=1e-6)


def test_cache_hit_on_the_second_call_and_parallel_equals_serial(tmp_path, monkeypatch):
    texts, labels = _texts()
    args = ((texts, labels), {"validation": _texts(3, seed=1)}, word_dropout_variants(texts, 1, 0.4, seed=0), 3)
    serial = ngram_log_probs(*args, SERIAL, 0)
    first, cached = cached_ngram_log_probs(*args, NgramSettings(folds=3, n_jobs=2), 0, tmp_path)
    np.testing.assert_array_equal(first["train"], serial["train"])  # fitted in 2 processes: the same scores
    assert not cached and len(list((tmp_path / "logits").glob("ngram-*.npz"))) == 1
    monkeypatch.setattr(ngram_teacher, "ngram_log_probs", lambda *a: pytest.fail("fitted although cached"))
    again, cached = cached_ngram_log_probs(*args, NgramSettings(folds=3, n_jobs=1, weight=0.3), 0, tmp_path)
    assert cached and first.keys() == again.keys()  # n_jobs and the weight change nothing that is cached
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    paths = {ngram_teacher.cache_path(tmp_path, *args, NgramSettings(folds=3), 0)}
    paths.add(ngram_teacher.cache_path(tmp_path, *args, NgramSettings(folds=4), 0))
    paths.add(ngram_teacher.cache_path(tmp_path, *args, NgramSettings(folds=3), 1))
    paths.add(ngram_teacher.cache_path(tmp_path, (texts, labels[::-1]), *args[1:], NgramSettings(folds=3), 0))
    assert len(paths) == 4


def test_settings_errors():
    for node, message in [({"weight": 1.5}, "teacher.ngram.weight=1.5 must be 'auto'"),
                          ({"folds": 1}, "teacher.ngram.folds=1 must be an integer >= 2"),
                          ({"C": [3, -1]}, r"teacher.ngram.C=\[3, -1\] must be a positive number"),
                          ({"n_jobs": 0}, "teacher.ngram.n_jobs=0 must be a process count"),
                          ({"temperature": 2}, r"unknown key\(s\) \['temperature'\]")]:
        with pytest.raises(UserError, match=message):
            NgramSettings.from_config(node)
    assert NgramSettings.from_config({"C": [3, 10]}).grid == (3.0, 10.0)


@pytest.fixture
def ensemble_setup(make_cfg, tmp_path, tiny_teacher_dir):
    """A distillation config with teacher=ensemble on 60 product titles, a function that builds its datamodule
    (prepared), and a tiny random 3-label teacher with those labels."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from speedtrain.models.teacher import load_tokenizer

    texts, labels = _texts(20)
    rows = [(t, ["fruit", "tools", "shoes"][k]) for t, k in zip(texts, labels)]
    cfg = make_cfg("+experiment=distill", "distill=logits", "teacher=ensemble", "teacher.max_length=16",
                   "teacher.ngram.n_jobs=1", "teacher.ngram.folds=3", "data=files",
                   f"data.train={write_csv(tmp_path / 'products.csv', rows)}", "data.text_column=title",
                   "data.label_column=cat")
    def prepared():
        datamodule = build_datamodule(cfg)
        datamodule.prepare()
        return datamodule

    names = prepared().label_names
    config = BertConfig.from_pretrained(tiny_teacher_dir, num_labels=3, id2label=dict(enumerate(names)),
                                        label2id={n: i for i, n in enumerate(names)})
    folder = tmp_path / "teacher3"
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    load_tokenizer(str(tiny_teacher_dir)).save_pretrained(folder)
    return cfg, prepared, folder


def test_attach_teacher_caches_the_ensemble_logits(ensemble_setup):
    cfg, prepared, folder = ensemble_setup
    augment = {"copies": 1, "word_dropout": 0.4, "seed": 0}
    datamodule = prepared()
    metrics, teacher = attach_teacher(cfg.teacher, folder, datamodule, cfg.paths.cache_dir, augment)
    assert teacher is None and metrics["teacher/ngram_from_cache"] is False
    weight = metrics["teacher/ngram_weight"]
    assert weight in ngram_teacher.WEIGHT_GRID and metrics["teacher/ngram_C"] == 10.0
    # the random transformer is near chance, the n-gram model is not: the weight goes to the n-gram model
    assert weight > 0 and metrics["teacher/val_acc"] >= metrics["teacher/transformer_val_acc"]
    assert metrics["teacher/ngram_val_acc"] > 0.8 and 0 < metrics["teacher/ngram_oof_train_acc"] <= 1
    assert metrics["teacher/params"] > metrics["teacher/ngram_params"] > 0
    logits = datamodule.teacher_arrays["teacher_logits"]
    assert logits.shape == (metrics["distill/transfer_set"], 3) and np.isfinite(logits).all()
    datamodule = prepared()  # teacher=minilm: the transformer's logits alone
    plain, _ = attach_teacher(OmegaConf.merge(cfg.teacher, {"ngram": None}), folder, datamodule, cfg.paths.cache_dir,
                              augment)
    assert "teacher/ngram_weight" not in plain and plain["teacher/val_acc"] == metrics["teacher/transformer_val_acc"]
    transformer = datamodule.teacher_arrays["teacher_logits"]
    ngram = (logits - (1 - weight) * log_softmax(transformer, axis=1)) / weight  # what the n-gram model added
    np.testing.assert_allclose(np.exp(ngram).sum(1), 1, rtol=1e-4)  # log-probabilities
    again, _ = attach_teacher(cfg.teacher, folder, prepared(), cfg.paths.cache_dir, augment)
    assert again["teacher/ngram_from_cache"] is True and again["teacher/ngram_weight"] == weight


def test_ensemble_cannot_run_online(ensemble_setup):
    cfg, prepared, folder = ensemble_setup
    with pytest.raises(UserError, match="teacher=ensemble .* cannot run online .* distill.teacher_logits=cache"):
        attach_teacher(cfg.teacher, folder, prepared(), cfg.paths.cache_dir, online=True)


def test_the_configured_fit_is_converged_on_a_sentiment_like_set():
    """A cue word among 11 random ones decides the label (80% of texts): many weak features, as in sentiment. With
    conf/teacher/ensemble.yaml's settings the probabilities must be those of a fit run to convergence; lbfgs at tol
    1e-3 stopped far from it here (this test fails; on 3,000 such texts val 68% instead of 76%)."""
    vocab = [f"w{i}" for i in range(3000)]

    def made_up(n: int, seed: int) -> tuple[list[str], np.ndarray]:
        rng, texts, labels = np.random.default_rng(seed), [], []
        for _ in range(n):
            label, words = int(rng.integers(2)), list(rng.choice(vocab[300:], 12))
            if rng.random() < 0.8:
                words[int(rng.integers(12))] = str(rng.choice(vocab[150:300] if label else vocab[:150]))
            texts.append(" ".join(words))
            labels.append(label)
        return texts, np.array(labels)

    train, evaluate = made_up(1500, 0), {"validation": made_up(300, 1)}
    node = OmegaConf.to_container(OmegaConf.load(Path(config_dir()) / "teacher" / "ensemble.yaml").ngram)
    configured = NgramSettings.from_config({**node, "folds": 2, "n_jobs": 1})
    converged = dataclasses.replace(configured, tol=1e-8, max_iter=5000)
    probs = [np.exp(ngram_log_probs(train, evaluate, [], 2, s, seed=0)["validation"]) for s in (configured, converged)]
    assert np.abs(probs[0] - probs[1]).max() < 0.05
