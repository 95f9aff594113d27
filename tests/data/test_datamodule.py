"""TextDataModule: cached token ids, dynamic padding, truncation."""

from __future__ import annotations

import functools

import torch

from speedtrain.data import sources
from speedtrain.data.datamodule import TextDataModule


def _dm(cache, **kwargs) -> TextDataModule:
    return TextDataModule(
        source=functools.partial(sources.hscodes, "section"), tokenizer={"vocab_size": 700}, cache_dir=cache,
        **{"max_length": 16, "batch_size": 8, **kwargs},
    )


def test_prepare_caches_token_ids(tmp_path):
    dm = _dm(tmp_path)
    dm.prepare()
    assert dm.num_labels == 21 and dm.label_names[0] == "I"
    (folder,) = (tmp_path / "data").iterdir()
    assert (folder / "dataset_dict.json").is_file()
    again = _dm(tmp_path)
    again.prepare()
    assert again.encoded["train"]["input_ids"] == dm.encoded["train"]["input_ids"]
    assert len(list((tmp_path / "data").iterdir())) == 1  # reused, not rebuilt
    _dm(tmp_path, max_length=12).prepare()
    assert len(list((tmp_path / "data").iterdir())) == 2  # another length is another cache entry


def test_batches_are_padded_to_the_longest_text(tmp_path):
    dm = _dm(tmp_path)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    lengths = batch["attention_mask"].sum(1)
    assert batch["input_ids"].shape == (min(len(dm.encoded["validation"]), 256), int(lengths.max()))
    assert int(lengths.max()) <= 16  # truncated to max_length
    assert torch.all(batch["input_ids"][batch["attention_mask"] == 0] == dm.tokenizer.pad_token_id)
    assert next(iter(dm.train_dataloader()))["input_ids"].shape[0] == 8
