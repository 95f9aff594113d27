"""Transfer-set augmentation: seeded word-dropout variants, labelled by the teacher, joining the training split."""

from __future__ import annotations

import numpy as np
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


def test_spans_are_runs_of_consecutive_words_and_span_zero_keeps_the_variants_of_before():
    long = ["the film is not bad at all and the cast is fine", "a waste of two good actors", *TEXTS]
    spans = word_dropout_variants(long, copies=6, word_dropout=0.0, span=0.99, span_words=3, seed=4)
    assert len(spans) >= 12
    for i, variant in spans:
        words, run = long[i].split(), variant.split()
        assert 1 <= len(run) <= 3 and any(words[s:s + len(run)] == run for s in range(len(words)))
    assert word_dropout_variants(long, copies=3, seed=2) == word_dropout_variants(long, copies=3, span=0.0, seed=2)
    with pytest.raises(UserError, match="distill.augment.span_words=0 must be"):
        word_dropout_variants(long, span=0.5, span_words=0)
    with pytest.raises(UserError, match="distill.augment.span=1.0 must be in"):
        word_dropout_variants(long, span=1.0)


def test_variants_take_the_teachers_top_class_with_label_teacher(make_cfg, fine_tuned_teacher):
    from speedtrain.builders import build_datamodule
    from speedtrain.distill.teacher import attach_teacher

    cfg = make_cfg("+experiment=distill", "teacher.max_length=24")
    augment = {"copies": 2, "word_dropout": 0.0, "span": 0.9, "span_words": 2, "seed": 0}
    by = {}
    for label in ("source", "teacher"):
        dm = build_datamodule(cfg)
        dm.prepare()
        attach_teacher(cfg.teacher, fine_tuned_teacher, dm, cfg.paths.cache_dir, {**augment, "label": label})
        by[label] = dm
    n = by["source"].splits["train"].num_rows
    source, teacher = (np.asarray(by[k].encoded["train"]["label"]) for k in ("source", "teacher"))
    assert len(source) == len(teacher) > n and (source[:n] == teacher[:n]).all()  # the training texts keep theirs
    top = by["teacher"].teacher_arrays["teacher_logits"][n:].argmax(1)
    assert (teacher[n:] == top).all() and (source[n:] != top).any()  # phrases: the teacher often disagrees
    with pytest.raises(UserError, match="distill.augment.label=teacher needs the teacher's cached logits"):
        attach_teacher(cfg.teacher, fine_tuned_teacher, build_datamodule(cfg), cfg.paths.cache_dir,
                       {**augment, "label": "teacher"}, online=True)
    with pytest.raises(UserError, match="distill.augment.label='gold' must be"):
        attach_teacher(cfg.teacher, fine_tuned_teacher, by["source"], cfg.paths.cache_dir, {"label": "gold"})
