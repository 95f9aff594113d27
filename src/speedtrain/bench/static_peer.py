"""The model2vec-style peer ``static_lr``: a frozen static table from the fine-tuned teacher + logistic regression.

    peer = StaticLogReg(teacher_dir).fit(train_texts, train_labels, val_texts, val_labels)
    peer.predict(["steel screws"])                     # teacher tokenizer, one gather, a sum: no transformer

The recipe of model2vec (Tulkens & van Dongen 2024) with the run's own teacher: every piece of the teacher's
vocabulary (all of it, in id order) is read by the teacher alone (:func:`speedtrain.models.static_init.piece_vectors`;
special tokens get a zero vector), PCA takes the vectors to ``dims``, and each row is scaled by its SIF weight
``a / (a + p)``, ``p`` the piece's share of the training texts' pieces. A text's vector is the mean of its pieces'
scaled rows (the teacher's tokenizer, truncated to ``max_length`` tokens), and a standardised logistic regression,
C picked on the validation split, classifies it. Scaler and classifier are linear: ``fit`` folds them into the
table, so ``predict`` adds up per-piece logits (V, K) instead of vectors (V, dims) when there are fewer classes than
dims.

Computing the vectors is the costly part (all-MiniLM-L6-v2, 30,522 pieces: 20-28 s on one thread of the 2-core
CPU); they are cached under ``<cache_dir>/peers/static_lr/<digest of the teacher's files>.npy``.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from speedtrain.errors import UserError
from speedtrain.models.digest import weights_digest

log = logging.getLogger(__name__)

RECIPE = b"piece_vectors/v1"  # part of the cache key: change it when the vectors are computed differently


def teacher_digest(folder: str | os.PathLike) -> str:
    """The cache key (16 hex digits): :data:`RECIPE` and the teacher folder's weights, config and tokenizer files."""
    return hashlib.sha256(RECIPE + weights_digest(folder).encode()).hexdigest()[:16]


def teacher_piece_vectors(folder: str | os.PathLike,
                          cache_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The teacher's vector of every piece of its own vocabulary, and which pieces are special.

    Args:
        folder: a fine-tuned teacher (Hugging Face classifier folder with its tokenizer).
        cache_dir: the user's cache folder (``paths.cache_dir``); None: computed every time.

    Returns:
        float32 (V, H) vectors in id order (special pieces: zero) and bool (V,) ``special``; V = len(tokenizer).
    """
    from transformers import AutoConfig

    from speedtrain.models.static_init import piece_vectors
    from speedtrain.models.teacher import load_classifier, load_tokenizer

    tokenizer = load_tokenizer(str(folder))
    special = np.zeros(len(tokenizer), dtype=bool)
    special[tokenizer.all_special_ids] = True
    path = None
    if cache_dir is not None:
        path = Path(os.path.expanduser(cache_dir)) / "peers" / "static_lr" / f"{teacher_digest(folder)}.npy"
        if path.is_file():
            return np.load(path), special
    teacher = load_classifier(str(folder), AutoConfig.from_pretrained(folder).num_labels, fine_tuned=True)
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    started = time.perf_counter()
    vectors = piece_vectors(teacher, tokenizer, pieces, skip=set(tokenizer.all_special_tokens))
    log.info("static_lr: %d piece vectors from the teacher %s in %.1f s", len(pieces), folder,
             time.perf_counter() - started)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.stem}.{os.getpid()}.partial.npy")
        np.save(partial, vectors)
        os.replace(partial, path)  # atomic: a concurrent report never reads half a file
    return vectors, special


class StaticLogReg:
    """model2vec-style peer (module docstring): the teacher's static table, SIF-weighted mean, logistic regression.

    Args:
        teacher_dir: the fine-tuned teacher's folder (its tokenizer tokenizes too).
        dims: PCA dimensions (at most the teacher's hidden size).
        c_grid: inverse regularisation strengths tried; the best on val wins (the first on ties).
        max_length: tokens of a text as the teacher reads it, [CLS] and [SEP] included.
        max_iter: lbfgs iterations per fit.
        cache_dir: where the piece vectors are cached (:func:`teacher_piece_vectors`); None: not cached.
    """

    name = "static_lr"

    def __init__(self, teacher_dir: str | os.PathLike | None = None, dims: int = 256,
                 c_grid: Sequence[float] = (0.3, 1.0, 3.0, 10.0), max_length: int = 128, max_iter: int = 2000,
                 cache_dir: str | os.PathLike | None = None) -> None:
        if not teacher_dir or not (Path(teacher_dir) / "config.json").is_file():
            raise UserError(f"static_lr needs the fine-tuned teacher's folder, with its config.json (teacher_dir="
                            f"{str(teacher_dir) if teacher_dir else None!r}); a frontier sweep of distilled students "
                            "passes it (their metrics.json's teacher/dir)")
        self.teacher_dir, self.dims, self.max_length = str(teacher_dir), dims, max_length
        self.c_grid, self.max_iter, self.cache_dir = tuple(float(c) for c in c_grid), max_iter, cache_dir

    def fit(self, train_texts: list[str], train_labels: list[int], val_texts: list[str],
            val_labels: list[int]) -> StaticLogReg:
        """Build the table (vectors, PCA, SIF on train), then one classifier per C; keep the best on val, folded."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        from speedtrain.bundle.runtime import TextEncoder
        from speedtrain.models.static_init import pca, sif_log_weights

        started = time.perf_counter()
        self.encoder = TextEncoder(self.teacher_dir, self.max_length)
        vectors, special = teacher_piece_vectors(self.teacher_dir, self.cache_dir)
        table = pca(vectors, min(self.dims, vectors.shape[1]), rows=np.flatnonzero(~special))  # (V, D)
        train_rows = self.encoder.encode(train_texts)
        counts = np.bincount(np.fromiter(itertools.chain.from_iterable(train_rows), np.int64), minlength=len(table))
        weights = np.where(special, 0.0, np.exp(sif_log_weights(counts))).astype(np.float32)
        self.pad = len(table)  # an extra zero row that does not count: the id after a batch's last one
        self.table = np.vstack([table * weights[:, None], np.zeros((1, table.shape[1]), np.float32)])
        self.counted = np.append(~special, False).astype(np.float32)  # 1: the piece counts in a text's length
        self.head = None
        x_train, x_val = self._features(train_rows), self._features(self.encoder.encode(val_texts))
        scaler = StandardScaler().fit(x_train)
        best = None
        for c in self.c_grid:
            classifier = LogisticRegression(C=c, max_iter=self.max_iter).fit(scaler.transform(x_train), train_labels)
            val = float(np.mean(classifier.predict(scaler.transform(x_val)) == np.asarray(val_labels)) * 100)
            if best is None or val > best[0]:
                best = (val, c, classifier)
        self.val_acc, c, classifier = best
        self.params = int(self.table[:-1].size + classifier.coef_.size + classifier.intercept_.size)
        coef = classifier.coef_ / scaler.scale_  # (K', D): K' = 1 for two classes
        self.bias = (classifier.intercept_ - coef @ scaler.mean_).astype(np.float32)
        if coef.shape[0] <= coef.shape[1]:  # per-piece logits: a narrower table to gather from
            self.table = (self.table @ coef.T).astype(np.float32)
        else:
            self.head = coef.T.astype(np.float32)
        self.classes = classifier.classes_
        self.choice = {"C": c, "dims": table.shape[1], "pieces": len(table)}
        self.size_mb = (self.table.nbytes + (0 if self.head is None else self.head.nbytes)) / 2**20
        self.fit_s = time.perf_counter() - started
        return self

    def _pooled(self, rows: list[list[int]]) -> np.ndarray:
        """Mean of the table rows of each text's pieces (specials add and count nothing), (N, table width).

        One gather of all the batch's ids and a segment sum: no padding (a batch of 256 test texts pads to 3.3x
        its ids: 2.4 ms of a 15 ms call here, tokenization 12.6)."""
        if len(rows) == 1:  # one text (the latency path): a plain sum
            ids = np.asarray(rows[0], dtype=np.int64)
            return self.table[ids].sum(0, keepdims=True) / max(float(self.counted[ids].sum()), 1.0)
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        # a last padding id: every segment's start is an index, the empty texts' included
        flat = np.fromiter(itertools.chain(itertools.chain.from_iterable(rows), (self.pad,)), dtype=np.int64,
                           count=int(lengths.sum()) + 1)
        starts = np.cumsum(lengths) - lengths
        sums = np.add.reduceat(self.table[flat], starts)  # an empty text's segment reads the next one's first id
        counts = np.add.reduceat(self.counted[flat], starts)
        sums[lengths == 0], counts[lengths == 0] = 0.0, 0.0
        return sums / np.maximum(counts, 1.0)[:, None]

    def _features(self, rows: list[list[int]], chunk: int = 1024) -> np.ndarray:
        return np.concatenate([self._pooled(rows[i:i + chunk]) for i in range(0, len(rows), chunk)])

    def decision(self, texts: list[str]) -> np.ndarray:
        """Logits of ``texts``, (N, K) (N, 1 for two classes), tokenization included."""
        pooled = self._pooled(self.encoder.encode(texts))
        return (pooled if self.head is None else pooled @ self.head) + self.bias

    def predict(self, texts: list[str]) -> np.ndarray:
        """Label ids of ``texts``, shape (N,)."""
        scores = self.decision(texts)
        return self.classes[(scores[:, 0] > 0).astype(int) if scores.shape[1] == 1 else scores.argmax(1)]
