"""Peer baselines a student must beat, fitted on the run's own splits and timed with the bundles' harness.

    peer = TfidfLogReg().fit(train_texts, train_labels, val_texts, val_labels)
    result = measure_peer(peer, test_texts, test_labels, BenchOptions())

Three peers (:data:`PEERS`):

- ``tfidf_lr``: word 1–2-gram and char_wb 2–5-gram TF-IDF (sublinear tf) + logistic regression, C picked on the
  validation split (``scripts/tfidf_baseline.py`` is the same model). The vectorizer is fitted once and shared
  by every C of the grid.
- ``fasttext``: ``fasttext.train_supervised`` with word bigrams and char 3–6-grams on lowercased,
  whitespace-normalised texts, epochs x learning rate picked on val. Needs ``pip install -e ".[peers]"``.
  On the default data (HS chapters, seeded split) val preferred char 3–6 to 2–5-grams (93.4 vs 91.5) and 100
  epochs to 50; test 90.4, TF-IDF + LR 93.25 (C=30).
- ``static_lr``: model2vec-style, the fine-tuned teacher's frozen static table of its own vocabulary (PCA 256,
  SIF-weighted mean of a text's pieces) + logistic regression (:mod:`speedtrain.bench.static_peer`). Needs
  ``teacher_dir`` (``peer_kwargs``); without one it is skipped with a warning.

A peer's ``predict(texts)`` includes its featurisation (TF-IDF, fastText's tokenization), so its speed compares
with a bundle's end-to-end numbers (``Predictor``, tokenization included): :func:`measure_peer` calls
:func:`speedtrain.bench.latency.benchmark_end_to_end`, batch 1 with ``latency_threads`` (BLAS limited through
threadpoolctl), throughput with ``threads`` (all cores by default). fastText predicts on one thread whatever the
setting.
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from speedtrain.bench.latency import BenchOptions, benchmark_end_to_end
from speedtrain.bench.static_peer import StaticLogReg
from speedtrain.errors import UserError

log = logging.getLogger(__name__)

PEERS_EXTRA = 'pip install -e ".[peers]"'


class Peer(Protocol):
    """What :func:`measure_peer` needs of a fitted peer; ``fit`` sets the attributes."""

    name: str
    fit_s: float  # wall seconds of ``fit``, the validation grid included
    val_acc: float  # points, of the chosen setting
    choice: dict  # the chosen setting of the grid
    params: int  # learned numbers (weights)
    size_mb: float  # the fitted model, serialised

    def predict(self, texts: list[str]) -> np.ndarray: ...


def accuracy(predicted: Sequence[int], labels: Sequence[int]) -> float:
    """Share of ``predicted`` equal to ``labels``, in points (0–100)."""
    return float(np.mean(np.asarray(predicted) == np.asarray(labels)) * 100)


class TfidfLogReg:
    """Word + char_wb TF-IDF and logistic regression (scikit-learn), C chosen on the validation split.

    Args:
        c_grid: inverse regularisation strengths tried; the best on val wins (the first on ties).
        max_iter: lbfgs iterations per fit.
    """

    name = "tfidf_lr"

    def __init__(self, c_grid: Sequence[float] = (3.0, 10.0, 30.0), max_iter: int = 2000) -> None:
        self.c_grid = tuple(float(c) for c in c_grid)
        self.max_iter = max_iter
        self.model = None

    def fit(self, train_texts: list[str], train_labels: list[int], val_texts: list[str],
            val_labels: list[int]) -> TfidfLogReg:
        """Fit the vectorizer once on train, then one classifier per C; keep the best on val."""
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline, make_union

        started = time.perf_counter()
        features = make_union(
            TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
            TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True),
        )
        x_train = features.fit_transform(train_texts)
        x_val = features.transform(val_texts)
        best = None
        for c in self.c_grid:
            classifier = LogisticRegression(C=c, max_iter=self.max_iter).fit(x_train, train_labels)
            val = accuracy(classifier.predict(x_val), val_labels)
            if best is None or val > best[0]:
                best = (val, c, classifier)
        self.val_acc, c, classifier = best
        self.model = make_pipeline(features, classifier)  # both fitted: predict runs them as they are
        self.fit_s = time.perf_counter() - started
        self.choice = {"C": c}
        self.params = int(classifier.coef_.size + classifier.intercept_.size)
        self.size_mb = len(pickle.dumps(self.model)) / 2**20
        return self

    def predict(self, texts: list[str]) -> np.ndarray:
        """Label ids of ``texts``, shape (N,)."""
        return self.model.predict(texts)


def normalise(text: str) -> str:
    """Lowercase and collapse whitespace (fastText reads one text per line, words split on spaces)."""
    return " ".join(text.lower().split())


def require(module: str):
    """Import ``module`` (``fasttext``, ``sklearn``), or raise a :class:`UserError` saying how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise UserError(f"a peer baseline needs the {module} package, which is not installed: run {PEERS_EXTRA} "
                        "(or leave that peer out of the peers list)") from err


class FastTextPeer:
    """fastText's supervised classifier, epochs x learning rate chosen on the validation split.

    Training is seeded and single-threaded by default (``threads=1``): fastText's multi-threaded training is
    not reproducible.

    Args:
        epochs: epoch counts tried.
        lrs: learning rates tried (every combination with ``epochs``).
        dim: embedding size.
        word_ngrams: word n-gram length (2: bigrams).
        minn: shortest char n-gram (0 with ``maxn=0``: none).
        maxn: longest char n-gram.
        bucket: hash buckets of the n-grams (fastText's default, 2M, costs 400 MB at dim 50 for no gain on
            small data).
        threads: training threads.
        seed: fastText's random seed.
        work_dir: where the training file goes (a temporary folder in it, deleted afterwards; None: the
            system's temporary folder).
    """

    name = "fasttext"

    def __init__(self, epochs: Sequence[int] = (50, 100), lrs: Sequence[float] = (0.5, 1.0), dim: int = 50,
                 word_ngrams: int = 2, minn: int = 3, maxn: int = 6, bucket: int = 200_000, threads: int = 1,
                 seed: int = 0, work_dir: str | os.PathLike | None = None) -> None:
        self.grid = [(int(e), float(lr)) for e in epochs for lr in lrs]
        self.settings = {"dim": dim, "wordNgrams": word_ngrams, "minn": minn, "maxn": maxn, "bucket": bucket,
                         "thread": threads, "seed": seed}
        self.work_dir = work_dir
        self.model = None

    def fit(self, train_texts: list[str], train_labels: list[int], val_texts: list[str],
            val_labels: list[int]) -> FastTextPeer:
        """Train one model per (epochs, lr) on train; keep the best on val."""
        fasttext = require("fasttext")
        started = time.perf_counter()
        self._fallback = int(np.bincount(np.asarray(train_labels)).argmax())  # for a text with no words
        best = None
        with tempfile.TemporaryDirectory(dir=self.work_dir, prefix="fasttext-") as tmp:
            path = Path(tmp) / "train.txt"
            path.write_text("".join(f"__label__{y} {normalise(t)}\n" for t, y in zip(train_texts, train_labels)))
            # a grid that diverged everywhere ("Encountered NaN.", seen once on 12K movie snippets at lr 0.5 and 1,
            # where the same fit had passed before) is tried again at a tenth of its learning rates
            smaller = [(epochs, lr / 10) for epochs, lr in self.grid]
            for grid in (self.grid, smaller):
                for epochs, lr in grid:
                    try:
                        self.model = fasttext.train_supervised(str(path), epoch=epochs, lr=lr, verbose=0,
                                                               **self.settings)
                    except RuntimeError as err:  # "Encountered NaN.": this setting diverged
                        log.warning("fastText epochs=%d lr=%g failed (%s): skipped", epochs, lr, err)
                        continue
                    val = accuracy(self.predict(val_texts), val_labels)
                    if best is None or val > best[0]:
                        best = (val, {"epochs": epochs, "lr": lr}, self.model)
                if best is not None:
                    break
            if best is None:
                raise UserError(f"fastText failed for every setting of its grid {self.grid} (epochs, lr), and at a "
                                "tenth of those rates; try other rates: FastTextPeer(lrs=(0.01, 0.03))")
            self.val_acc, self.choice, self.model = best
            self.fit_s = time.perf_counter() - started
            self.model.save_model(str(path.with_suffix(".bin")))
            self.size_mb = path.with_suffix(".bin").stat().st_size / 2**20
        rows = len(self.model.words) + self.settings["bucket"] + len(self.model.labels)
        self.params = int(rows * self.model.get_dimension())
        return self

    def predict(self, texts: list[str]) -> np.ndarray:
        """Label ids of ``texts``, shape (N,).

        ``model.predict`` of a list returns plain lists (its single-text path breaks under numpy 2).
        """
        labels, _ = self.model.predict([normalise(t) for t in texts])
        return np.array([int(found[0][9:]) if found else self._fallback for found in labels])  # "__label__<id>"


PEERS = {TfidfLogReg.name: TfidfLogReg, FastTextPeer.name: FastTextPeer, StaticLogReg.name: StaticLogReg}
_PACKAGES = {TfidfLogReg.name: "sklearn", FastTextPeer.name: "fasttext", StaticLogReg.name: "sklearn"}


def build_peer(name: str, work_dir: str | os.PathLike | None = None, **kwargs) -> Peer:
    """An unfitted peer by its name in :data:`PEERS`; ``kwargs`` go to its class (``work_dir`` to fastText,
    ``teacher_dir`` and ``cache_dir`` to ``static_lr``, which raises a :class:`UserError` without a teacher)."""
    if name not in PEERS:
        raise UserError(f"unknown peer {name!r}; the peers are {sorted(PEERS)}")
    require(_PACKAGES[name])  # fail before any fitting when it is not installed
    if name == FastTextPeer.name:
        kwargs["work_dir"] = work_dir
    return PEERS[name](**kwargs)


def measure_peer(peer: Peer, texts: list[str], labels: list[int], options: BenchOptions) -> dict:
    """Test accuracy of a fitted peer and its speed, measured as a bundle's end-to-end speed is.

    Args:
        peer: a fitted peer.
        texts: the test split's texts (also the benchmark's inputs, as for a bundle).
        labels: their label ids.
        options: the benchmark settings (``export.bench``).

    Returns:
        ``model``, ``kind`` ("peer"), ``test_acc`` and ``val_acc`` (points), ``p50_ms``/``p99_ms`` (batch 1,
        ``latency_threads``), ``throughput`` (batch size -> texts/s, ``threads``), ``batch`` (the largest batch
        size) and ``texts_per_s`` (at it), ``fit_s``, ``size_mb``, ``params`` and ``choice``.
    """
    try:
        from threadpoolctl import ThreadpoolController  # installed with scikit-learn

        controller = ThreadpoolController()
    except ImportError:  # no scikit-learn: no BLAS pool to limit
        controller = None
    limiter = []

    def make_predict(threads: int | None):
        while limiter:
            limiter.pop().restore_original_limits()
        if threads is not None and controller is not None:
            limiter.append(controller.limit(limits=threads))  # scikit-learn's BLAS / OpenMP pools
        return peer.predict

    test_acc = accuracy(peer.predict(texts), labels)
    try:
        speed = benchmark_end_to_end(make_predict, texts, options)
    finally:
        make_predict(None)
    batch = max(int(size) for size in speed["throughput"])
    return {"model": peer.name, "kind": "peer", "test_acc": test_acc, "val_acc": peer.val_acc,
            "p50_ms": speed["latency"]["p50_ms"], "p99_ms": speed["latency"]["p99_ms"],
            "throughput": speed["throughput"], "batch": batch, "texts_per_s": speed["throughput"][str(batch)],
            "fit_s": peer.fit_s, "size_mb": peer.size_mb, "params": peer.params, "choice": peer.choice}


def fit_and_measure(names: Sequence[str], splits, options: BenchOptions, work_dir: str | os.PathLike | None = None,
                    peer_kwargs: dict[str, dict] | None = None) -> list[dict]:
    """Fit every peer in ``names`` on ``splits`` (train, pick on validation) and measure it on test.

    A peer whose package is not installed (or ``static_lr`` without a teacher), or whose fit fails with a
    :class:`UserError` (fastText diverging at every rate of its grid), is skipped with a warning; an unknown name raises :class:`UserError` before anything is fitted.

    Args:
        splits: a mapping with ``train``/``validation``/``test``, each with ``text`` and ``label`` columns
            (``TextDataModule.splits``).
        work_dir: where fastText writes its temporary training file.
        peer_kwargs: peer name -> arguments of its class (``{"static_lr": {"teacher_dir": ..., "cache_dir": ...}}``).

    Returns:
        :func:`measure_peer`'s dict of each peer, in the order of ``names``.
    """
    unknown = [name for name in names if name not in PEERS]
    if unknown:
        raise UserError(f"unknown peers {unknown}; the peers are {sorted(PEERS)}")
    results = []
    for name in names:
        try:
            peer = build_peer(name, work_dir=work_dir, **(peer_kwargs or {}).get(name, {}))
        except UserError as err:  # its package (or static_lr's teacher) is missing
            log.warning("peer %s skipped: %s", name, err)
            continue
        train, val, test = (splits[s] for s in ("train", "validation", "test"))
        try:
            peer.fit(list(train["text"]), list(train["label"]), list(val["text"]), list(val["label"]))
        except UserError as err:  # e.g. fastText diverged (NaN) at every rate: the other rows still count
            log.warning("peer %s skipped: its fit failed: %s", name, err)
            continue
        results.append(measure_peer(peer, list(test["text"]), list(test["label"]), options))
        log.info("peer %s: test acc %.2f, %.0f texts/s at batch %d, p50 %.3f ms (fit %.1f s, %s)", name,
                 results[-1]["test_acc"], results[-1]["texts_per_s"], results[-1]["batch"],
                 results[-1]["p50_ms"], peer.fit_s, peer.choice)
    return results
