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


def test_splices_join_a_texts_first_words_to_another_texts_last_words():
    long = ["the film is not bad at all", "a waste of two good actors", "dull", *TEXTS]
    spliced = word_dropout_variants(long, copies=6, word_dropout=0.0, splice=0.99, seed=3)
    assert len(spliced) >= 12
    for i, variant in spliced:
        words, run = long[i].split(), variant.split()
        head = next(n for n in range(len(run), 0, -1) if run[:n] == words[:n])  # the longest shared first words
        assert 1 <= head <= max(1, len(words) - 1)  # a proper prefix (all of a one-word text)
        tails = [t.split() for j, t in enumerate(long) if j != i]
        assert any(len(run) - n <= max(1, len(t) - 1) and run[n:] == t[len(t) - (len(run) - n):]
                   for n in range(1, head + 1) for t in tails)  # the rest: the last words of another text
    assert word_dropout_variants(long, copies=3, seed=2) == word_dropout_variants(long, copies=3, splice=0.0, seed=2)
    assert word_dropout_variants(["only one text here"], copies=3, word_dropout=0.0, splice=0.99) == []
    with pytest.raises(UserError, match="distill.augment.splice=1.0 must be in"):
        word_dropout_variants(long, splice=1.0)


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


def test_neighbours_are_the_nearest_whole_word_pieces():
    from speedtrain.distill.augment import neighbour_words, text_words

    vocab = {"[PAD]": 0, "[CLS]": 1, "good": 2, "great": 3, "bad": 4, "##s": 5, "film": 6, "movie": 7, "a": 8}
    table = np.zeros((9, 3), np.float32)
    table[2], table[3], table[4] = [1, 0.1, 0], [1, 0.2, 0], [0.8, -0.5, 0]  # good ~ great, then bad
    table[6], table[7], table[5], table[1] = [0, 0, 1], [0, 0.1, 1], [0, 0.05, 1], [1, 0.1, 0.01]
    words = text_words(["A good film, (Good) movie!", "bad"])
    assert words == {"A", "good", "film", "Good", "movie", "bad"}
    near = neighbour_words(table, vocab, words, k=2)
    assert near["good"] == ["great", "bad"] and near["Good"] == near["good"]  # "Good" found as "good"
    assert near["film"][0] == "movie" and near["bad"][0] == "good"
    assert "A" not in near  # one letter: neither a candidate nor replaced
    assert all("##s" not in v and "[CLS]" not in v for v in near.values())  # pieces and specials never come in
    with pytest.raises(UserError, match="distill.augment.replace_neighbours=0 must be"):
        neighbour_words(table, vocab, words, k=0)


def test_replace_swaps_words_for_neighbours_and_replace_zero_keeps_the_variants_of_before():
    texts = ["a good film, (Good) to watch", "a bad film", *TEXTS]
    near = {"good": ["great"], "Good": ["great"], "film": ["movie"], "bad": ["awful"]}
    swapped = word_dropout_variants(texts, copies=4, word_dropout=0.0, replace=0.9, neighbours=near, seed=0)
    assert any(v == "a great movie, (Great) to watch" for i, v in swapped if i == 0)  # punctuation, capital kept
    for i, variant in swapped:
        for old, new in zip(texts[i].split(), variant.split()):
            assert new == old or new.strip(",()").lower() in {"great", "movie", "awful"}
    assert all(i in (0, 1) for i, _ in swapped)  # nothing to replace in the other texts: no variant
    assert word_dropout_variants(texts, copies=3, seed=5) == word_dropout_variants(
        texts, copies=3, replace=0.0, neighbours=near, seed=5)
    with pytest.raises(UserError, match="distill.augment.replace=1.0 must be in"):
        word_dropout_variants(texts, replace=1.0)


def test_replaced_variants_join_the_transfer_set_with_the_teachers_logits(make_cfg, fine_tuned_teacher):
    from speedtrain.builders import build_datamodule
    from speedtrain.distill.teacher import attach_teacher

    cfg = make_cfg("+experiment=distill", "teacher.max_length=24")
    augment = {"copies": 2, "word_dropout": 0.0, "seed": 0, "label": "teacher"}
    sizes = {}
    for replace in (0.0, 0.5):
        dm = build_datamodule(cfg)
        dm.prepare()
        n = dm.splits["train"].num_rows
        metrics, _ = attach_teacher(cfg.teacher, fine_tuned_teacher, dm, cfg.paths.cache_dir,
                                    {**augment, "replace": replace, "replace_neighbours": 4})
        sizes[replace] = metrics["distill/transfer_set"]
        assert len(dm.teacher_arrays["teacher_logits"]) == len(dm.encoded["train"]) == sizes[replace]
    assert sizes[0.0] == n  # no dropout, no replacement: every copy is its source, none is added
    assert sizes[0.5] > 1.5 * n  # most texts have words the teacher knows neighbours of
