"""A ``static`` student that starts from what its teacher knows (``model.init=teacher``).

Every piece of the student's vocabulary gets the fine-tuned teacher's vector of that piece
(:func:`speedtrain.models.static_init.piece_vectors`: the teacher reads the piece alone), reduced to the student's
width by PCA and scaled to ``scale`` (root mean square per entry). Its initial importance (``pooling=weighted``)
is uniform (the plain mean, as a random start) or, with ``importance=sif``, its SIF weight in the training split
(frequent pieces count less). Hashed n-gram rows start neutral: zero vectors at importance 0. An n-gram row
started at a low importance (e^-4) barely learns, since an importance's gradient scales with its weight: that
start lost 1.2 val points (docs/distillation.md). Training moves on from there.

The teacher's piece vectors are cached under ``<cache_dir>/tables/<key>.npy`` (key: the teacher's weights and
the student's vocabulary), so a seed sweep computes them once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from speedtrain.data.datamodule import TextDataModule
from speedtrain.errors import UserError
from speedtrain.models.digest import weights_digest
from speedtrain.models.static_init import pca, piece_vectors, sif_log_weights
from speedtrain.models.teacher import load_classifier, load_tokenizer

log = logging.getLogger(__name__)

INITS = ("random", "teacher")
IMPORTANCES = ("uniform", "sif")


def teacher_piece_table(teacher_dir: str | Path, pieces: list[str], cache_dir: str | Path, num_labels: int,
                        skip: frozenset[str] = frozenset()) -> np.ndarray:
    """The teacher's vector of each of ``pieces`` (V, H_teacher), computed once per (teacher, vocabulary)."""
    key = hashlib.sha256(f"{weights_digest(teacher_dir)}/{json.dumps(pieces)}/{sorted(skip)}".encode()).hexdigest()
    path = Path(cache_dir).expanduser() / "tables" / f"{key[:20]}.npy"
    if path.is_file():
        return np.load(path)
    teacher = load_classifier(str(teacher_dir), num_labels, fine_tuned=True)
    vectors = piece_vectors(teacher, load_tokenizer(str(teacher_dir)), pieces, skip=skip)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npy", delete=False) as f:  # whole, or not there
        np.save(f, vectors)
    Path(f.name).replace(path)
    return vectors


def static_initializer(init: str, teacher_dir: str | Path, datamodule: TextDataModule, cache_dir: str | Path,
                       scale: float = 1.0, importance: str = "uniform", ngram_log_weight: float = 0.0) -> Callable | None:
    """What ``model.init`` does to a freshly built static student: None for ``random``, else a function that
    loads the teacher table into the model.

    Args:
        scale: root mean square of the table's entries after PCA (``model.init_scale``).
        importance: ``uniform`` (every row starts at the plain mean, as a random start does) or ``sif`` (a piece
            starts at its SIF weight, so frequent pieces count less) (``model.init_importance``).
        ngram_log_weight: initial log-importance of the hashed n-gram rows (their vectors start at 0).
    """
    if init not in INITS:
        raise UserError(f"model.init={init!r} must be one of {list(INITS)} (teacher: start the table from the "
                        "teacher's piece vectors)")
    if importance not in IMPORTANCES:
        raise UserError(f"model.init_importance={importance!r} must be one of {list(IMPORTANCES)}")
    if not scale > 0:
        raise UserError(f"model.init_scale={scale!r} must be positive (the table's root mean square), e.g. 1.0")
    if init == "random":
        return None
    tokenizer = datamodule.tokenizer
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    vectors = teacher_piece_table(teacher_dir, pieces, cache_dir, datamodule.num_labels, skip=frozenset({tokenizer.pad_token}))
    ids = datamodule.encoded["train"]["input_ids"]
    counts = np.bincount(np.fromiter((i for row in ids for i in row), dtype=np.int64), minlength=len(pieces))
    specials = set(tokenizer.all_special_ids)
    counts[list(specials)] = 0  # [CLS]/[SEP] are in every text: they weigh by SIF like "the"
    log_weights = sif_log_weights(counts)
    log_weights[list(specials)] = np.log(0.05)  # present in every text: count little, like the commonest words

    def apply(model) -> None:
        width = model.config.hidden_size
        seen = np.flatnonzero(vectors.any(1))
        table = pca(vectors, width, rows=seen)
        table *= scale / max(float(np.sqrt((table[seen] ** 2).mean())), 1e-12)
        weights = torch.from_numpy(log_weights) if importance == "sif" else torch.zeros(len(pieces))
        model.load_teacher_table(torch.from_numpy(table), weights, ngram_log_weight)
        log.info("model.init=teacher: %d piece vectors of the teacher, PCA %d -> %d (RMS %g), %s importances",
                 len(pieces), vectors.shape[1], width, scale, importance)

    return apply
