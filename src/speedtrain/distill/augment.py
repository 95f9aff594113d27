"""Transfer-set augmentation: more student inputs made from the training texts, labelled by the teacher.

A distilled student learns the teacher's function, not only its labels, so it gains from inputs the teacher
labels that are not in the training set (Tang et al. 2019, "Distilling task-specific knowledge from BERT into
simple neural networks", used masking and word swaps). Each variant keeps its source text's label for the
cross-entropy term and gets the teacher's own logits for the KD term. Variants are drawn once with a seed, so
their teacher logits are cached like the training texts' and a training step still runs only the student.
"""

from __future__ import annotations

import random

from speedtrain.errors import UserError


def word_dropout_variants(
    texts: list[str], copies: int = 2, word_dropout: float = 0.15, word_swap: float = 0.0, seed: int = 0,
    span: float = 0.0, span_words: int = 5,
) -> list[tuple[int, str]]:
    """Up to ``copies`` variants of each text: each word dropped with probability ``word_dropout`` (one kept at
    least), then neighbouring words swapped with probability ``word_swap``; or, with probability ``span``, a run of
    1 to ``span_words`` consecutive words of the text (Tang et al. 2019's n-gram sampling: the teacher's logits on
    a phrase teach the student what the phrase alone says, e.g. "not bad" or "a waste of").

    Returns:
        ``(index of the source text, variant)`` pairs; variants equal to their source or to an earlier variant of
        the same text are left out (a one-word text has none).
    """
    if not isinstance(copies, int) or copies < 0:
        raise UserError(f"distill.augment.copies={copies!r} must be an integer >= 0 (0: no augmentation)")
    for name, p in (("word_dropout", word_dropout), ("word_swap", word_swap), ("span", span)):
        if not 0.0 <= p < 1.0:
            raise UserError(f"distill.augment.{name}={p} must be in [0, 1), e.g. 0.15")
    if not isinstance(span_words, int) or span_words < 1:
        raise UserError(f"distill.augment.span_words={span_words!r} must be an integer >= 1, e.g. 5")
    rng = random.Random(seed)
    out = []
    for i, text in enumerate(texts):
        words, seen = text.split(), {text}
        for _ in range(copies):
            if span and rng.random() < span:  # drawn only when asked for: span=0 keeps the variants of before
                n = rng.randint(1, min(span_words, len(words)))
                start = rng.randrange(len(words) - n + 1)
                kept = words[start:start + n]
            else:
                kept = [w for w in words if rng.random() >= word_dropout] or [rng.choice(words)]
                for j in range(len(kept) - 1):
                    if rng.random() < word_swap:
                        kept[j], kept[j + 1] = kept[j + 1], kept[j]
            variant = " ".join(kept)
            if variant not in seen:
                seen.add(variant)
                out.append((i, variant))
    return out
