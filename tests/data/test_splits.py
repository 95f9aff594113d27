"""Seeded stratified splits and the checks on labels and emptiness."""

from __future__ import annotations

import collections

import datasets
import pytest

from speedtrain.data.splits import make_splits
from speedtrain.errors import UserError


def _dd(labels, texts=None, **splits):
    texts = texts or [f"text {i}" for i in range(len(labels))]
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": texts, "label": labels})})
    for name, (t, y) in splits.items():
        dd[name] = datasets.Dataset.from_dict({"text": t, "label": y})
    return dd


def test_split_is_stratified_seeded_and_disjoint():
    labels = ["a"] * 50 + ["b"] * 30 + ["c"] * 20
    out = make_splits(_dd(labels), 0.1, 0.1, seed=1)
    assert [len(out[s]) for s in ("train", "validation", "test")] == [80, 10, 10]
    names = out["train"].features["label"].names
    assert names == ["a", "b", "c"]
    counts = collections.Counter(names[i] for i in out["test"]["label"])
    assert counts == {"a": 5, "b": 3, "c": 2}
    texts = [set(out[s]["text"]) for s in ("train", "validation", "test")]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    assert make_splits(_dd(labels), 0.1, 0.1, seed=1)["test"]["text"] == out["test"]["text"]
    assert make_splits(_dd(labels), 0.1, 0.1, seed=2)["test"]["text"] != out["test"]["text"]


def test_given_splits_are_kept():
    out = make_splits(_dd(["a", "b"] * 10, validation=(["x", "y"], ["a", "b"]), test=(["z"], ["b"])))
    assert out["validation"]["text"] == ["x", "y"] and len(out["train"]) == 20


def test_rows_without_text_or_label_are_dropped():
    out = make_splits(_dd(["a", "b", "", "a"] * 10, texts=[" ", "t1", "t2", "t3"] * 10))
    assert len(out["train"]) + len(out["validation"]) + len(out["test"]) == 20


@pytest.mark.parametrize(
    ("dd", "message"),
    [
        (_dd([]), "training data is empty"),
        (_dd(["a"] * 10), r"1 label\(s\) \['a'\]; a classifier needs at least 2"),
        (_dd(["a", "b"] * 10, validation=([], [])), "validation split is empty"),
        (_dd(["a", "b"] * 10, test=(["t"], ["zzz"])), r"test split has label\(s\) \['zzz'\]"),
    ],
)
def test_bad_data_is_reported(dd, message):
    with pytest.raises(UserError, match=message):
        make_splits(dd)


def test_bad_fractions():
    with pytest.raises(UserError, match="data.val_fraction=0.6"):
        make_splits(_dd(["a", "b"] * 10), 0.6, 0.5)
