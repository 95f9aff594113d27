"""Check a text/label dataset and split it into train/validation/test with integer labels.

The split is stratified and seeded: the same data and seed always give the same split, on any machine.
"""

from __future__ import annotations

import hashlib

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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
    tables = {k: _drop_empty(_table(v)) for k, v in dd.items()}
    if "train" not in tables or tables["train"].num_rows == 0:
        raise UserError("the training data is empty (no rows with both a text and a label); check data.train")
    train = tables["train"]
    carve = {s: f for s, f in (("validation", val_fraction), ("test", test_fraction)) if s not in tables}
    if carve:
        parts = _stratified_split(_strings(train.column("label")), carve, seed)
        for split, idx in parts.items():  # includes "train": what is left of it
            tables[split] = train.take(pa.array(idx))
    for split in SPLITS:
        if split not in tables or tables[split].num_rows == 0:
            raise UserError(
                f"the {split} split is empty; give a file with rows (data.val / data.test) or raise "
                f"data.{'val' if split == 'validation' else split}_fraction"
            )
    labels = {s: _strings(tables[s].column("label")) for s in SPLITS}
    names = np.unique(labels["train"])
    if len(names) < 2:
        raise UserError(f"the training data has {len(names)} label(s) {names.tolist()}; a classifier needs at least 2")
    for split in ("validation", "test"):
        unseen = np.setdiff1d(np.unique(labels[split]), names)
        if len(unseen):
            raise UserError(
                f"the {split} split has label(s) {unseen[:10].tolist()} that the training data lacks; "
                "add examples of them to the training data or drop them"
            )
    label = datasets.ClassLabel(names=names.tolist())
    features = datasets.Features({"text": datasets.Value("string"), "label": label})
    return datasets.DatasetDict({  # label ids in the sorted names' order, in Arrow: no Python object per row
        s: datasets.Dataset(pa.table({"text": tables[s].column("text"),
                                      "label": pa.array(np.searchsorted(names, labels[s]), pa.int64())}),
                            info=datasets.DatasetInfo(features=features))
        for s in SPLITS
    })


def _table(ds: datasets.Dataset) -> pa.Table:
    """The ``text``/``label`` rows of ``ds`` as an Arrow table (its indices mapping applied)."""
    table = ds.data.table.select(["text", "label"])
    table = table.take(ds._indices.column(0)) if ds._indices is not None else table
    return pa.table({name: pc.cast(table.column(name), pa.string()) for name in ("text", "label")})


def _strings(column: pa.ChunkedArray) -> np.ndarray:
    """A string column as a numpy array of ``str`` (numpy sorts it as Python sorts strings)."""
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=str)


def _drop_empty(table: pa.Table) -> pa.Table:
    """The rows with a text (not only whitespace) and a label."""
    text, label = table.column("text"), table.column("label")
    keep = pc.and_(pc.not_equal(pc.utf8_trim_whitespace(pc.fill_null(text, "")), ""),
                   pc.not_equal(pc.fill_null(label, ""), ""))
    return table if pc.all(keep).as_py() else table.filter(keep)


def _stratified_split(labels: np.ndarray, fractions: dict[str, float], seed: int) -> dict[str, np.ndarray]:
    """Indices for each split in ``fractions`` plus ``train`` (the rest), stratified by label: per label (in sorted
    order) its rows in file order are permuted by one seeded generator and cut ``round(n * fraction)`` at a time."""
    rng = np.random.default_rng(seed)
    names, inverse = np.unique(labels, return_inverse=True)
    order = np.argsort(inverse, kind="stable")  # each label's rows, in file order, label after label
    bounds = np.concatenate([[0], np.cumsum(np.bincount(inverse, minlength=len(names)))])
    out: dict[str, list[np.ndarray]] = {s: [] for s in [*fractions, "train"]}
    for k in range(len(names)):
        idx = rng.permutation(order[bounds[k]:bounds[k + 1]])
        start = 0
        if len(idx) >= 3:
            for split, frac in fractions.items():
                n = max(1, round(len(idx) * frac)) if frac > 0 else 0
                out[split].append(idx[start : start + n])
                start += n
        out["train"].append(idx[start:])
    return {s: np.sort(np.concatenate(v)) if v else np.array([], dtype=np.int64) for s, v in out.items()}


def content_hash(ds: datasets.Dataset) -> bytes:
    """A digest of the texts and label names of a split (datasets' own fingerprints are random in memory)."""
    h = hashlib.sha256("\x1f".join(ds.features["label"].names).encode())
    if ds._indices is not None:
        ds = ds.flatten_indices()
    for batch in ds.data.table.select(["text", "label"]).to_batches(max_chunksize=65536):
        # the bytes of "<label>\x1e<text>\x1f" for every row, joined in Arrow (not a Python string per row)
        label, text = (pc.cast(batch.column(name), pa.string()) for name in ("label", "text"))  # 32-bit offsets
        rows = pc.binary_join_element_wise(label, text, "\x1e")
        rows = pc.binary_join_element_wise(rows, pa.scalar(""), "\x1f")
        offsets, data = rows.buffers()[1:]
        ends = np.frombuffer(offsets, dtype=np.int32, count=len(rows) + 1, offset=4 * rows.offset)
        h.update(memoryview(data)[int(ends[0]):int(ends[-1])])
    return h.digest()
