"""Static tables from a teacher: what a transformer knows about each word piece, as one vector per piece.

model2vec's recipe (Tulkens & van Dongen 2024), done with the teacher the run already has: every piece of a
vocabulary is read by the teacher on its own (``[CLS] piece [SEP]``), the mean of its output states is the
piece's vector, PCA reduces the vectors to the student's width, and a piece's initial importance follows its
frequency (SIF: ``a / (a + p)``, so "the" counts little and a rare, telling piece fully).

    vectors = piece_vectors(teacher, teacher_tokenizer, pieces)            # (V, H_teacher)
    table = pca(vectors, 96)                                               # (V, 96)
    model.load_teacher_table(table, sif_log_weights(counts))               # a StaticForSequenceClassification

Used by the ``static`` student (``model.init=teacher``: :mod:`speedtrain.distill.static_init` builds it) and by
the model2vec-style peer of the frontier (``static_lr`` in :mod:`speedtrain.bench.peers`).
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

SIF_A = 1e-3  # SIF's a: a piece of probability p weighs a / (a + p)


def _piece_ids(piece: str, tokenizer: PreTrainedTokenizerBase, vocab: dict[str, int]) -> list[int]:
    """The teacher's ids for one piece of another vocabulary: its own id when the teacher has the piece
    (``##ing`` included), else the teacher's tokenization of the piece's text."""
    if piece in vocab:
        return [vocab[piece]]
    text = piece[2:] if piece.startswith("##") else piece
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
    return ids or [tokenizer.unk_token_id]


@torch.no_grad()
def piece_vectors(teacher: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, pieces: list[str],
                  batch_size: int = 512, skip: set[str] | frozenset[str] = frozenset()) -> np.ndarray:
    """The teacher's vector of every piece: the mean of its last hidden states over the piece's own tokens.

    Args:
        teacher: a ``transformers`` encoder (a ``*ForSequenceClassification`` too: its encoder's states are read).
        tokenizer: the teacher's tokenizer.
        pieces: the pieces (a student vocabulary in id order, or the teacher's own).
        skip: pieces that get a zero vector (padding).

    Returns:
        float32 (len(pieces), teacher hidden size).
    """
    teacher.eval()
    vocab = tokenizer.get_vocab()
    cls, sep, pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id or 0
    ids = [_piece_ids(p, tokenizer, vocab) for p in pieces]
    out = np.zeros((len(pieces), teacher.config.hidden_size), dtype=np.float32)
    order = sorted((i for i, p in enumerate(pieces) if p not in skip), key=lambda i: len(ids[i]))
    device = next(teacher.parameters()).device
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        longest = max(len(ids[i]) for i in rows)
        batch = torch.full((len(rows), longest + 2), pad, dtype=torch.long)
        mask = torch.zeros_like(batch)
        own = torch.zeros(len(rows), longest + 2)  # the piece's own positions (not [CLS]/[SEP]/padding)
        for j, i in enumerate(rows):
            n = len(ids[i])
            batch[j, : n + 2] = torch.tensor([cls, *ids[i], sep])
            mask[j, : n + 2] = 1
            own[j, 1 : n + 1] = 1
        states = teacher(input_ids=batch.to(device), attention_mask=mask.to(device),
                         output_hidden_states=True).hidden_states[-1].float().cpu()  # (B, T, H)
        out[rows] = ((states * own[..., None]).sum(1) / own.sum(1, keepdim=True)).numpy()
    return out


def pca(vectors: np.ndarray, dims: int, rows: np.ndarray | None = None) -> np.ndarray:
    """``vectors`` (V, H) projected on their first ``dims`` principal components (fitted on ``rows``, default all),
    centred; zero rows stay zero. Returns float32 (V, dims); fewer components than ``dims`` are padded with 0."""
    fit = vectors if rows is None else vectors[rows]
    mean = fit.mean(0)
    _, _, vt = np.linalg.svd(fit - mean, full_matrices=False)
    k = min(dims, vt.shape[0])
    out = np.zeros((len(vectors), dims), dtype=np.float32)
    out[:, :k] = (vectors - mean) @ vt[:k].T
    out[~vectors.any(1)] = 0.0
    return out


def sif_log_weights(counts: np.ndarray, a: float = SIF_A) -> np.ndarray:
    """``log(a / (a + p))`` per piece, ``p`` its share of all piece occurrences (``counts``): 0 for an unseen or
    rare piece, about -4 for one that makes up 5% of the text. float32 (V,)."""
    p = counts.astype(np.float64) / max(float(counts.sum()), 1.0)
    return np.log(a / (a + p)).astype(np.float32)
