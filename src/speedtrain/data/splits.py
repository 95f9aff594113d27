"""Check a text/label dataset and split it into train/validation/test with integer labels.

The split is stratified and seeded: the same data and seed always give the same split, on any machine.
"""

from __future__ import annotations

import datasets
import numpy as np

from speedtrain.errors import UserError

SPLITS = ("train", "validation", "test")


def make_splits(
    dd: datasets.DatasetDict, val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 42
) -> datasets.DatasetDict:
    """Return ``train``/``validation``/``test`` with ``label`` as a :class:`datasets.ClassLabel`.

    Splits the source gave are kept; missing ones are carved from ``train`` (stratified per label,
    ``round(n * fraction)`` texts of each label, labels with fewer than 3 texts stay in train).

    Raises:
        UserError: empty data or split, fewer than 2 labels, labels in val/test that train lacks.
    """
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise UserError(
            f"data.val_fraction={val_fraction} and data.test_fraction={test_fraction} must be in [0, 1) "
            "and sum to less than 1"
        )
    dd = datasets.DatasetDict({k: _drop_empty(v) for k, v in dd.items()})
    if "train" not in dd or len(dd["train"]) == 0:
        raise UserError("the training data is empty (no rows with both a text and a label); check data.train")
    train = dd["train"]
    carve = {s: f for s, f in (("validation", val_fraction), ("test", test_fraction)) if s not in dd}
    if carve:
        parts = _stratified_split(train["label"], carve, seed)
        for split, idx in parts.items():  # includes "train": what is left of it
            dd[split] = train.select(idx)
    for split in SPLITS:
        if split not in dd or len(dd[split]) == 0:
            raise UserError(
                f"the {split} split is empty; give a file with rows (data.val / data.test) or raise "
                f"data.{'val' if split == 'validation' else split}_fraction"
            )
    names = sorted(set(dd["train"]["label"]))
    if len(names) < 2:
        raise UserError(f"the training data has {len(names)} label(s) {names}; a classifier needs at least 2")
    known = set(names)
    for split in ("validation", "test"):
        unseen = sorted(set(dd[split]["label"]) - known)
        if unseen:
            raise UserError(
                f"the {split} split has label(s) {unseen[:10]} that the training data lacks; "
                "add examples of them to the training data or drop them"
            )
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)})
    ids = {name: i for i, name in enumerate(names)}
    return datasets.DatasetDict({
        s: datasets.Dataset.from_dict({"text": dd[s]["text"], "label": [ids[y] for y in dd[s]["label"]]}, features)
        for s in SPLITS
    })


def _drop_empty(ds: datasets.Dataset) -> datasets.Dataset:
    keep = [i for i, (t, y) in enumerate(zip(ds["text"], ds["label"])) if t.strip() and y != ""]
    return ds if len(keep) == len(ds) else ds.select(keep)


def _stratified_split(labels: list[str], fractions: dict[str, float], seed: int) -> dict[str, list[int]]:
    """Indices for each split in ``fractions`` plus ``train`` (the rest), stratified by label."""
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[int]] = {}
    for i, y in enumerate(labels):
        by_label.setdefault(y, []).append(i)
    out: dict[str, list[int]] = {s: [] for s in [*fractions, "train"]}
    for y in sorted(by_label):
        idx = rng.permutation(by_label[y]).tolist()
        start = 0
        if len(idx) >= 3:
            for split, frac in fractions.items():
                n = max(1, round(len(idx) * frac)) if frac > 0 else 0
                out[split] += idx[start : start + n]
                start += n
        out["train"] += idx[start:]
    return {s: sorted(v) for s, v in out.items()}
