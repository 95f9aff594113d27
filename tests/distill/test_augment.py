"""Transfer-set augmentation: seeded word-dropout variants, labelled by the teacher, joining the training split."""

from __future__ import annotations

import pytest

from speedtrain.distill.augment import word_dropout_variants
from speedtrain.errors import UserError

TEXTS = ["fresh apples and pears in boxes", "frozen fish fillets", "steel", "woven cotton shirts for men"]


def test_variants_are_seeded_subsets_of_their_source():
    variants = word_dropout_variants(TEXTS, copies=3, word_dropout=0.3, seed=1)
    assert variants == word_dropout_variants(TEXTS, copies=3, word_dropout=0.3, seed=1)
    assert variants != word_dropout_variants(TEXTS, copies=3, word_dropout=0.3, seed=2)
    assert all(2 != i for i, _ in variants)  # a one-word text has no variant that differs from it
    for i, variant in variants:
        words = TEXTS[i].split()
        assert variant != TEXTS[i] and variant.split() and set(variant.split()) <= set(words)
        kept = iter(words)  # word dropout alone keeps the order
        assert all(any(w == k for k in kept) for w in variant.split())
    per_text = [sum(1 for i, _ in variants if i == j) for j in range(len(TEXTS))]
    assert max(per_text) <= 3 and sum(per_text) >= 6
    assert len({v for _, v in variants}) == len(variants)


def test_swaps_reorder_and_copies_zero_is_off():
    swapped = word_dropout_variants(TEXTS, copies=4, word_dropout=0.0, word_swap=0.5, seed=0)
    assert swapped and all(sorted(v.split()) == sorted(TEXTS[i].split()) for i, v in swapped)
    assert word_dropout_variants(TEXTS, copies=0) == []


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"copies": -1}, "distill.augment.copies=-1"),
    ({"word_dropout": 1.0}, "distill.augment.word_dropout=1.0 must be in"),
    ({"word_swap": -0.1}, "distill.augment.word_swap=-0.1 must be in"),
])
def test_bad_settings(kwargs, message):
    with pytest.raises(UserError, match=message):
        word_dropout_variants(TEXTS, **kwargs)
