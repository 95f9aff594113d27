"""The n-gram half of ``teacher=ensemble``: TF-IDF n-grams + logistic regression beside the fine-tuned transformer.

The two models err on different texts, so their combination beats either; the students learn from the
combination through the usual cached-logit path::

    ensemble = (1 - w) * log_softmax(transformer logits) + w * log_softmax(n-gram scores)

(log-probability averaging: log-probabilities are valid logits for the KD loss). The weight ``w`` is chosen on
the validation split (``ngram.weight: auto``).

The n-gram model is fitted on the training split; val and test are scored by that full fit. A linear model on
~45K n-gram features fits its own training texts almost perfectly, so its full-fit scores of the training texts
would be one-hot targets: the training texts and their word-dropout variants are scored **out of fold** instead
(k folds over the training texts, stratified by label; a variant goes with its source text), each by the fold
model that never saw the text. Everything the n-gram model outputs is cached under ``<cache_dir>/logits/``, keyed
by the texts, labels and settings. scikit-learn is imported only when an ensemble teacher is used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from speedtrain.errors import UserError

WEIGHT_GRID = tuple(round(0.1 * i, 1) for i in range(11))  # 0, 0.1, ..., 1


@dataclasses.dataclass(frozen=True)
class NgramSettings:
    """The ``teacher.ngram`` node (conf/teacher/ensemble.yaml says what each value does)."""

    C: float | tuple[float, ...] = 10.0
    weight: float | str = "auto"
    weight_grid: tuple[float, ...] = WEIGHT_GRID
    folds: int = 5
    min_df: int = 2
    tol: float = 1e-4
    max_iter: int = 1000
    n_jobs: int = -1

    def __post_init__(self) -> None:
        """Normalise lists to tuples of floats; every bad value raises a :class:`UserError` naming it and the fix."""
        def numbers(value: object) -> tuple | None:
            values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
            ok = values and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in values)
            return tuple(float(x) for x in values) if ok else None

        c, grid = numbers(self.C), numbers(self.weight_grid)
        if c is None or min(c) <= 0:
            raise UserError(f"teacher.ngram.C={self.C} must be a positive number or a list of them, e.g. [3, 10, 30]")
        if self.weight != "auto" and (numbers(self.weight) is None or not 0 <= self.weight <= 1):
            raise UserError(f"teacher.ngram.weight={self.weight!r} must be 'auto' (chosen on val) or in [0, 1]")
        if grid is None or not all(0 <= w <= 1 for w in grid):
            raise UserError(f"teacher.ngram.weight_grid={self.weight_grid} must be a list of weights in [0, 1]")
        object.__setattr__(self, "C", c if isinstance(self.C, (list, tuple)) else c[0])
        object.__setattr__(self, "weight_grid", grid)
        if not isinstance(self.folds, int) or self.folds < 2:
            raise UserError(f"teacher.ngram.folds={self.folds!r} must be an integer >= 2, e.g. 5")
        if not isinstance(self.n_jobs, int) or self.n_jobs == 0:
            raise UserError(f"teacher.ngram.n_jobs={self.n_jobs!r} must be a process count (1, 2, ...) or -1 "
                            "(one per core)")

    @classmethod
    def from_config(cls, node: Mapping) -> NgramSettings:
        """The settings of a config node; an unknown key raises a :class:`UserError`."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(node) - known)
        if unknown:
            raise UserError(f"teacher.ngram has unknown key(s) {unknown}; the keys are {sorted(known)}")
        return cls(**node)

    @property
    def grid(self) -> tuple[float, ...]:
        """The values of C to try (one: no choice)."""
        return self.C if isinstance(self.C, tuple) else (self.C,)


def fold_assignment(labels: np.ndarray, folds: int, seed: int, setting: str = "teacher.ngram.folds") -> np.ndarray:
    """Stratified, seeded fold ids (N,) in ``0..folds-1``: each label's texts are dealt round-robin in random
    order, continuing where the previous label stopped, so fold sizes differ by at most one. ``setting``: the
    config key that chose ``folds``, for the error."""
    labels = np.asarray(labels)
    if len(labels) < folds:
        raise UserError(f"{setting}={folds} needs at least {folds} training texts, got {len(labels)}; "
                        f"lower {setting}")
    rng = np.random.default_rng(seed)
    fold, start = np.empty(len(labels), dtype=np.int64), 0
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        fold[idx] = (start + np.arange(len(idx))) % folds
        start += len(idx)
    return fold


def combine(transformer_logits: np.ndarray, ngram_log_probs: np.ndarray, weight: float) -> np.ndarray:
    """``(1 - weight) * log_softmax(transformer_logits) + weight * ngram_log_probs``, both (N, C); float32."""
    from scipy.special import log_softmax

    mixed = (1.0 - weight) * log_softmax(transformer_logits.astype(np.float64), axis=1) + weight * ngram_log_probs
    return mixed.astype(np.float32)


def choose_weight(transformer_logits: np.ndarray, ngram_log_probs: np.ndarray, labels: np.ndarray,
                  grid: tuple[float, ...] = WEIGHT_GRID) -> float:
    """The weight of ``grid`` whose combination (N, C) is most accurate on ``labels`` (N,); ties go to the lower."""
    def accuracy(w: float) -> float:
        return float(np.mean(combine(transformer_logits, ngram_log_probs, w).argmax(1) == labels))

    return max(sorted(grid), key=lambda w: (accuracy(w), -w))


def _fit_and_score(texts: list[str], labels: np.ndarray, score: list[list[str]], grid: tuple[float, ...],
                   num_labels: int, s: NgramSettings) -> tuple[list[list[np.ndarray]], int]:
    """Fit the vectorizer once on ``texts``, then one logistic regression per C of ``grid``.

    Returns:
        Per C, per text list of ``score``: log-probabilities (N_i, num_labels), float32; and the parameter count
        of one regression (weights and biases).
    """
    from scipy.special import log_softmax
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_union

    features = make_union(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=s.min_df),
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=s.min_df),
    )
    x = features.fit_transform(texts)
    xs = [features.transform(t) if t else None for t in score]
    out = []
    for c in grid:
        model = LogisticRegression(C=c, tol=s.tol, max_iter=s.max_iter).fit(x, labels)
        per_set = []
        for xi in xs:
            if xi is None:
                per_set.append(np.zeros((0, num_labels), np.float32))
                continue
            raw = model.decision_function(xi)  # (N, K) over the K labels seen in ``texts``; (N,) when K = 2
            raw = np.column_stack([np.zeros_like(raw), raw]) if raw.ndim == 1 else raw
            full = np.repeat(raw.min(1, keepdims=True), num_labels, axis=1)  # unseen labels: as unlikely as the
            full[:, model.classes_] = raw  # least likely seen one
            per_set.append(log_softmax(full, axis=1).astype(np.float32))
        out.append(per_set)
    return out, model.coef_.size + model.intercept_.size


def _run(jobs: list[tuple], n_jobs: int) -> list:
    """:func:`_fit_and_score` of each job, in up to ``n_jobs`` processes (joblib's convention: -1 = one per core)."""
    from joblib import Parallel, delayed, effective_n_jobs

    workers = min(len(jobs), effective_n_jobs(n_jobs))
    if workers == 1:
        return [_fit_and_score(*job) for job in jobs]
    return Parallel(n_jobs=workers)(delayed(_fit_and_score)(*job) for job in jobs)


def ngram_log_probs(
    train: tuple[list[str], np.ndarray], evaluate: dict[str, tuple[list[str], np.ndarray]],
    variants: list[tuple[int, str]], num_labels: int, settings: NgramSettings, seed: int,
) -> dict[str, np.ndarray]:
    """Fit the n-gram model and score every text the ensemble needs (uncached; see :func:`cached_ngram_log_probs`).

    Args:
        train: the training texts and their labels (N,).
        evaluate: split name -> (texts, labels), e.g. ``validation`` and ``test``: scored by the full fit; the
            first split's labels choose C when ``settings.C`` is a list.
        variants: ``(source index, text)`` pairs of :func:`~speedtrain.distill.augment.word_dropout_variants`.

    Returns:
        One log-probability array (N_split, num_labels) per ``evaluate`` split; ``train``: out-of-fold
        log-probabilities of the training texts then the variants (N + N_variants, num_labels); ``C``: the C used;
        ``params``: the full fit's parameter count.
    """
    texts, labels = train
    labels = np.asarray(labels)
    names = list(evaluate)
    fold = fold_assignment(labels, settings.folds, seed)
    source = np.array([i for i, _ in variants], dtype=np.int64)

    def fold_job(f: int, c: float) -> tuple:
        keep = np.flatnonzero(fold != f)
        held = [[texts[i] for i in np.flatnonzero(fold == f)], [t for (i, t) in variants if fold[i] == f]]
        return [texts[i] for i in keep], labels[keep], held, (c,), num_labels, settings

    full_job = (texts, labels, [list(evaluate[n][0]) for n in names], settings.grid, num_labels, settings)
    single = len(settings.grid) == 1  # the folds need not wait for the choice of C: all fits at once
    folds = range(settings.folds)
    results = _run([full_job, *([fold_job(f, settings.grid[0]) for f in folds] if single else [])], settings.n_jobs)
    per_c, params = results[0]
    best = 0
    if not single:  # C: the most accurate on the first evaluation split; ties to the lower log-loss
        y = np.asarray(evaluate[names[0]][1])
        score = [(np.mean(p[0].argmax(1) == y), np.mean(p[0][np.arange(len(y)), y])) for p in per_c]
        best = max(range(len(per_c)), key=lambda i: score[i])
        results = [results[0], *_run([fold_job(f, settings.grid[best]) for f in folds], settings.n_jobs)]
    out = {name: per_c[best][k] for k, name in enumerate(names)}
    oof = np.zeros((len(texts) + len(variants), num_labels), np.float32)
    for f, (result, _) in enumerate(results[1:]):
        held_texts, held_variants = result[0]
        oof[np.flatnonzero(fold == f)] = held_texts
        oof[len(texts) + np.flatnonzero(fold[source] == f)] = held_variants
    out["train"] = oof
    out["C"] = np.float64(settings.grid[best])
    out["params"] = np.int64(params)
    return out


def cache_path(cache_dir: str | Path, train: tuple[list[str], np.ndarray], evaluate: dict, variants: list,
               num_labels: int, settings: NgramSettings, seed: int) -> Path:
    """``<cache_dir>/logits/ngram-<hash>.npz``: the hash covers every text and label, the variants, the settings
    that change the outputs (not ``weight`` or ``n_jobs``), the seed and the scikit-learn version."""
    import sklearn

    kept = {k: v for k, v in dataclasses.asdict(settings).items() if k not in ("weight", "weight_grid", "n_jobs")}
    h = hashlib.sha256(json.dumps({"settings": kept, "seed": seed, "num_labels": num_labels,
                                   "sklearn": sklearn.__version__, "splits": list(evaluate)}).encode())
    for texts, labels in (train, *evaluate.values()):
        h.update(np.asarray(labels, dtype=np.int64).tobytes())
        for text in texts:
            h.update(text.encode() + b"\0")
    for i, text in variants:
        h.update(f"{i}\0{text}\0".encode())
    return Path(cache_dir) / "logits" / f"ngram-{h.hexdigest()[:20]}.npz"


def cached_ngram_log_probs(
    train: tuple[list[str], np.ndarray], evaluate: dict[str, tuple[list[str], np.ndarray]],
    variants: list[tuple[int, str]], num_labels: int, settings: NgramSettings, seed: int, cache_dir: str | Path,
) -> tuple[dict[str, np.ndarray], bool]:
    """:func:`ngram_log_probs`, cached (written atomically); returns the outputs and whether they came from it."""
    path = cache_path(cache_dir, train, evaluate, variants, num_labels, settings, seed)
    if path.is_file():
        with np.load(path) as cached:
            return {k: cached[k] for k in cached.files}, True
    out = ngram_log_probs(train, evaluate, variants, num_labels, settings, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as f:
        np.savez(f, **out)
    Path(f.name).replace(path)  # atomic: concurrent DDP ranks never read a half-written file
    return out, False


def ensemble_logits(
    node: Mapping, seed: int, splits: Mapping, variants: list[tuple[int, str]], transformer: dict[str, np.ndarray],
    cache_dir: str | Path,
) -> tuple[np.ndarray, dict]:
    """Combine the transformer's logits with the n-gram model's log-probabilities (``teacher=ensemble``).

    Args:
        node: the ``teacher.ngram`` config node (a mapping).
        splits: ``train``, ``validation`` and ``test`` datasets with ``text`` and ``label`` columns.
        variants: the transfer set's ``(source index, text)`` pairs; their rows follow the training texts'.
        transformer: the transformer's logits: ``validation`` (N_val, C), ``test`` (N_test, C) and ``train``
            (N_train + N_variants, C).

    Returns:
        The ensemble's logits of the training rows (N_train + N_variants, C), and its metrics:
        ``teacher/val_acc`` and ``teacher/test_acc`` of the ensemble, the same of each member
        (``teacher/transformer_*``, ``teacher/ngram_*``), ``teacher/ngram_oof_train_acc`` (out of fold),
        ``teacher/ngram_weight``, ``teacher/ngram_C``, ``teacher/ngram_params``, ``teacher/ngram_from_cache`` and
        ``teacher/ngram_s``.
    """
    started = time.perf_counter()
    settings = NgramSettings.from_config(node)
    num_labels = transformer["train"].shape[1]
    data = {name: (list(splits[name]["text"]), np.asarray(splits[name]["label"]))
            for name in ("train", "validation", "test")}
    evaluate = {name: data[name] for name in ("validation", "test")}
    ngram, cached = cached_ngram_log_probs(data["train"], evaluate, variants, num_labels, settings, seed, cache_dir)
    weight = (choose_weight(transformer["validation"], ngram["validation"], data["validation"][1],
                            settings.weight_grid) if settings.weight == "auto" else float(settings.weight))

    def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
        return float(np.mean(logits.argmax(1) == labels))

    metrics = {"teacher/ngram_weight": weight, "teacher/ngram_C": float(ngram["C"]),
               "teacher/ngram_params": int(ngram["params"]), "teacher/ngram_from_cache": cached}
    for split, key in (("validation", "val"), ("test", "test")):
        labels = data[split][1]
        metrics[f"teacher/transformer_{key}_acc"] = accuracy(transformer[split], labels)
        metrics[f"teacher/ngram_{key}_acc"] = accuracy(ngram[split], labels)
        metrics[f"teacher/{key}_acc"] = accuracy(combine(transformer[split], ngram[split], weight), labels)
    n = len(data["train"][0])
    metrics["teacher/ngram_oof_train_acc"] = accuracy(ngram["train"][:n], data["train"][1])
    metrics["teacher/ngram_s"] = time.perf_counter() - started
    return combine(transformer["train"], ngram["train"], weight), metrics
