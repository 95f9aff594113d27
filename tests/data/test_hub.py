"""The hub source through `datasets.load_dataset`, on a local folder (tests never use the network)."""

from __future__ import annotations

from speedtrain.data import sources
from tests.conftest import write_csv


def test_hub_source_reads_named_splits(tmp_path, product_rows):
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    write_csv(folder / "train.csv", product_rows[::2])
    write_csv(folder / "test.csv", product_rows[1::2])
    dd = sources.hub(str(folder), test_split="test", text_column="title", label_column="cat",
                     cache_dir=str(tmp_path / "cache"))
    assert set(dd) == {"train", "test"}
    assert dd["test"]["text"] == [t for t, _ in product_rows[1::2]]
