"""Transfer-set augmentation: more student inputs made from the training texts, labelled by the teacher.

A distilled student learns the teacher's function, not only its labels, so it gains from inputs the teacher
labels that are not in the training set (Tang et al. 2019, "Distilling task-specific knowledge from BERT into
simple neural networks", used masking and word swaps). Each variant keeps its source text's label for the
cross-entropy term and gets the teacher's own logits for the KD term. Variants are drawn once with a seed, so
their teacher logits are cached like the training texts' and a training step still runs only the student.

``replace`` swaps words for their neighbours in the teacher's word-piece embeddings (:func:`neighbour_words`:
"good" -> "excellent", "bad", "great"; "boring" -> "dull", "exciting"), Tang et al.'s POS-guided replacement
without a tagger: the teacher's logits on "a dull, exciting film" tell the student about words and combinations
the training texts never show.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping

import numpy as np
import torch

from speedtrain.errors import UserError

_WORD = re.compile(r"^(\W*)(\w+)(\W*)$")  # a word with the punctuation around it: "(good," -> "(", "good", ","


def text_words(texts: Iterable[str]) -> set[str]:
    """The distinct words of ``texts`` (whitespace-split, the punctuation around a word left off), as written."""
    out = set()
    for text in texts:
        for word in text.split():
            m = _WORD.match(word)
            if m:
                out.add(m[2])
    return out


@torch.no_grad()
def neighbour_words(embeddings: np.ndarray | torch.Tensor, vocab: Mapping[str, int], words: Iterable[str],
                    k: int = 8) -> dict[str, list[str]]:
    """The ``k`` whole-word pieces of a vocabulary nearest each of ``words`` by the cosine of their embeddings.

    Args:
        embeddings: (V, H) the teacher's input word-piece embeddings.
        vocab: the teacher's piece -> id.
        words: the words to find neighbours for; a word that is not a whole piece (as written, else lowercased) has
            none. Words and candidates are alphabetic pieces of two letters or more (no ``##`` pieces, no special
            tokens, no "a").

    Returns:
        ``{word: [neighbour, ...]}`` (nearest first, the word itself left out) for the words that are pieces.
    """
    if not isinstance(k, int) or k < 1:
        raise UserError(f"distill.augment.replace_neighbours={k!r} must be an integer >= 1, e.g. 8")
    table = torch.nn.functional.normalize(torch.as_tensor(embeddings, dtype=torch.float32), dim=1)
    candidates = sorted(i for w, i in vocab.items() if w.isalpha() and len(w) > 1 and i < len(table))
    names = {i: w for w, i in vocab.items()}
    found = {}
    for word in words:
        piece = word if word in vocab else word.lower()
        if piece in vocab and piece.isalpha() and len(piece) > 1 and vocab[piece] < len(table):
            found[word] = vocab[piece]
    keys = sorted(found)
    if not keys or len(candidates) < 2:
        return {}
    pool = table[candidates]  # (N, H)
    out = {}
    for start in range(0, len(keys), 2048):
        chunk = keys[start:start + 2048]
        sims = table[[found[w] for w in chunk]] @ pool.T  # (b, N)
        top = sims.topk(min(k + 1, len(candidates)), dim=1).indices.tolist()
        for word, row in zip(chunk, top):
            own = found[word]
            out[word] = [names[candidates[j]] for j in row if candidates[j] != own][:k]
    return out


def _replaced(word: str, neighbours: Mapping[str, list[str]], rng: random.Random) -> str:
    """``word`` with its core swapped for one of its neighbours (its punctuation and capital kept), if it has any."""
    m = _WORD.match(word)
    options = neighbours.get(m[2]) if m else None
    if not options:
        return word
    new = rng.choice(options)
    return m[1] + (new.capitalize() if m[2][:1].isupper() else new) + m[3]


def _spliced(head: list[str], tail: list[str], rng: random.Random) -> list[str]:
    """The first 1..n-1 words of ``head`` and the last 1..m-1 words of ``tail`` (a one-word text: all of it)."""
    first = head[:rng.randint(1, max(1, len(head) - 1))]
    return first + tail[rng.randint(min(1, len(tail) - 1), len(tail) - 1):]


def word_dropout_variants(
    texts: list[str], copies: int = 2, word_dropout: float = 0.15, word_swap: float = 0.0, seed: int = 0,
    span: float = 0.0, span_words: int = 5, replace: float = 0.0, neighbours: Mapping[str, list[str]] | None = None,
    splice: float = 0.0,
) -> list[tuple[int, str]]:
    """Up to ``copies`` variants of each text: each word dropped with probability ``word_dropout`` (one kept at
    least), then neighbouring words swapped with probability ``word_swap``; or, with probability ``span``, a run of
    1 to ``span_words`` consecutive words of the text (Tang et al. 2019's n-gram sampling: the teacher's logits on
    a phrase teach the student what the phrase alone says, e.g. "not bad" or "a waste of"). A word-dropout copy's
    words are then each replaced with probability ``replace`` by one of their ``neighbours`` (:func:`neighbour_words`).
    With probability ``splice`` a copy is instead the text's first words joined to the last words of another text
    drawn at random (each cut at a random word): new texts that mix two opinions or topics ("a gorgeous cast" +
    "but the script drags"), whose teacher logits say which part wins (a text-level mixup, as MixKD mixes inputs).
    A splice's source is its first text: with ``teacher=ensemble`` the n-gram half scores it with the fold model
    that held that text out, which may have been fitted on the other text.

    Returns:
        ``(index of the source text, variant)`` pairs; variants equal to their source or to an earlier variant of
        the same text are left out (a one-word text has none).
    """
    if not isinstance(copies, int) or copies < 0:
        raise UserError(f"distill.augment.copies={copies!r} must be an integer >= 0 (0: no augmentation)")
    for name, p in (("word_dropout", word_dropout), ("word_swap", word_swap), ("span", span), ("replace", replace),
                    ("splice", splice)):
        if not 0.0 <= p < 1.0:
            raise UserError(f"distill.augment.{name}={p} must be in [0, 1), e.g. 0.15")
    if not isinstance(span_words, int) or span_words < 1:
        raise UserError(f"distill.augment.span_words={span_words!r} must be an integer >= 1, e.g. 5")
    rng = random.Random(seed)
    out = []
    for i, text in enumerate(texts):
        words, seen = text.split(), {text}
        for _ in range(copies):
            if splice and len(texts) > 1 and rng.random() < splice:  # drawn only when asked for, as span
                kept = _spliced(words, texts[(i + rng.randrange(1, len(texts))) % len(texts)].split() or words, rng)
            elif span and rng.random() < span:  # drawn only when asked for: span=0 keeps the variants of before
                n = rng.randint(1, min(span_words, len(words)))
                start = rng.randrange(len(words) - n + 1)
                kept = words[start:start + n]
            else:
                kept = [w for w in words if rng.random() >= word_dropout] or [rng.choice(words)]
                for j in range(len(kept) - 1):
                    if rng.random() < word_swap:
                        kept[j], kept[j + 1] = kept[j + 1], kept[j]
                if replace and neighbours:  # drawn only when asked for: replace=0 keeps the variants of before
                    kept = [_replaced(w, neighbours, rng) if rng.random() < replace else w for w in kept]
            variant = " ".join(kept)
            if variant not in seen:
                seen.add(variant)
                out.append((i, variant))
    return out
