"""Sources: the embedded HS codes, local files in every format, column checks."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from speedtrain.data import sources
from speedtrain.errors import UserError
from tests.conftest import write_csv


def test_hscodes_chapters_and_sections():
    chapters = sources.hscodes("chapter")["train"]
    sections = sources.hscodes("section")["train"]
    assert len(chapters) == len(sections) == 5612
    assert chapters[0]["text"] == "Horses; live, pure-bred breeding animals" and chapters[0]["label"] == "01"
    assert len(set(chapters["label"])) == 96  # 01-97 without the reserved chapter 77
    assert len(set(sections["label"])) == 21
    with pytest.raises(UserError, match="data.label='heading'"):
        sources.hscodes("heading")


@pytest.mark.parametrize("suffix", [".csv", ".json", ".jsonl", ".parquet"])
def test_files_every_format(tmp_path, product_rows, suffix):
    df = pd.DataFrame(product_rows, columns=["title", "cat"])
    path = tmp_path / f"train{suffix}"
    {".csv": lambda: df.to_csv(path, index=False),
     ".json": lambda: df.to_json(path, orient="records", lines=True),
     ".jsonl": lambda: df.to_json(path, orient="records", lines=True),
     ".parquet": lambda: df.to_parquet(path)}[suffix]()
    dd = sources.files(str(path), text_column="title", label_column="cat", cache_dir=str(tmp_path / "c"))
    assert dd["train"]["text"] == [t for t, _ in product_rows]
    assert dd["train"]["label"] == [y for _, y in product_rows]


def test_files_integer_labels_become_strings(tmp_path):
    path = tmp_path / "t.json"
    path.write_text("\n".join(json.dumps({"text": f"item {i}", "label": i % 2}) for i in range(10)))
    dd = sources.files(str(path), cache_dir=str(tmp_path / "c"))
    assert set(dd["train"]["label"]) == {"0", "1"}


def test_files_separate_val_test(tmp_path, product_rows):
    paths = [write_csv(tmp_path / f"{s}.csv", product_rows[i::3]) for i, s in enumerate(["train", "val", "test"])]
    dd = sources.files(*map(str, paths), text_column="title", label_column="cat", cache_dir=str(tmp_path / "c"))
    assert set(dd) == {"train", "validation", "test"} and len(dd["validation"]) == 20


def test_files_errors_name_the_value(tmp_path, product_rows):
    csv = write_csv(tmp_path / "t.csv", product_rows)
    with pytest.raises(UserError, match=r"data.train='.*missing.csv': file not found"):
        sources.files(str(tmp_path / "missing.csv"))
    with pytest.raises(UserError, match=r"data.text_column='text' is not a column.*\['title', 'cat'\]"):
        sources.files(str(csv), cache_dir=str(tmp_path / "c"))
    xlsx = tmp_path / "t.xlsx"
    xlsx.write_text("x")
    with pytest.raises(UserError, match=r"\['.xlsx'\].*data.format"):
        sources.files(str(xlsx))


def test_unreadable_rows_and_an_empty_text_column_are_one_clear_error(tmp_path):
    """A CSV the parser cannot read names the file and the parser's reason (where it stopped), not the wrapper's;
    a text column with no text left is "the training data is empty"."""
    from speedtrain.data.splits import make_splits

    broken = tmp_path / "broken.csv"
    broken.write_text('text,label\n"fine",a\n"open quote,b,c,d\nnext,b\n')
    with pytest.raises(UserError, match=r"data.train='.*broken.csv' could not be read as csv: .*EOF inside string"):
        sources.files(str(broken), cache_dir=str(tmp_path / "c"))
    empty = tmp_path / "empty_text.csv"
    empty.write_text("text,label\n,a\n   ,b\n,a\n")
    with pytest.raises(UserError, match="the training data is empty"):
        make_splits(sources.files(str(empty), cache_dir=str(tmp_path / "c")))
