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


def test_the_vocabulary_is_learned_from_a_seeded_sample_when_asked(tmp_path):
    """tokenizer.train_sample: the vocabulary comes from that many training texts (the same ones for the same
    seed); more than there are is all of them, which is the run without the setting (same cached tokenizer)."""
    import pytest

    from speedtrain.data.tokenizer import vocabulary_texts
    from speedtrain.errors import UserError

    train = sources.hscodes("section")["train"]
    sample = vocabulary_texts(train, 500, seed=1)
    assert len(sample) == 500 and sample == vocabulary_texts(train, 500, seed=1) != vocabulary_texts(train, 500, 2)
    assert set(sample) <= set(train["text"])
    assert vocabulary_texts(train, 10**9, seed=1) == vocabulary_texts(train, None, seed=1) == train["text"]
    small = _dm(tmp_path, split_seed=3)
    small.tokenizer_kwargs["train_sample"] = 300
    small.prepare()
    full = _dm(tmp_path, split_seed=3)
    full.prepare()
    assert len(list((tmp_path / "tokenizers").iterdir())) == 2  # another vocabulary, cached apart
    assert small.tokenizer.get_vocab() != full.tokenizer.get_vocab()
    everything = _dm(tmp_path, split_seed=3)
    everything.tokenizer_kwargs["train_sample"] = 10**9
    everything.prepare()
    assert len(list((tmp_path / "tokenizers").iterdir())) == 2
    assert everything.tokenizer.get_vocab() == full.tokenizer.get_vocab()
    for bad in (0, -5, "many", 2.5):
        with pytest.raises(UserError, match=f"tokenizer.train_sample={bad!r} must be a positive number"):
            vocabulary_texts(train, bad, seed=1)


def test_tokenizing_in_several_processes_gives_the_same_ids(tmp_path):
    import pytest

    from speedtrain.errors import UserError

    two = _dm(tmp_path, num_proc=2)
    two.prepare()
    for split in ("train", "validation", "test"):  # what the tokenizer itself gives, in one process
        expected = two.tokenizer(list(two.splits[split]["text"]), truncation=True, max_length=16)["input_ids"]
        assert list(two.encoded[split]["input_ids"]) == expected
    for bad in (0, "all", True):
        with pytest.raises(UserError, match=f"data.num_proc={bad!r} must be a number of processes >= 1 or auto"):
            _dm(tmp_path, num_proc=bad)


def test_token_ids_are_what_the_tokenizer_call_gives_truncation_included(tmp_path):
    dm = _dm(tmp_path)  # max_length 16: many descriptions are longer
    dm.prepare()
    texts = list(dm.splits["train"]["text"])
    expected = dm.tokenizer(texts, truncation=True, max_length=16)
    assert dm.encoded["train"]["input_ids"] == expected["input_ids"]
    assert dm.encoded["train"]["attention_mask"] == expected["attention_mask"]
    assert max(map(len, expected["input_ids"])) == 16  # truncation happened


def test_device_tables_pad_ragged_ids_across_arrow_chunks_and_selections():
    import datasets
    import numpy as np

    from speedtrain.data.device import padded

    rows = [[1, 2, 3], [4], [5, 6, 7, 8, 9], [], [10, 11]] * 7
    one = datasets.Dataset.from_dict({"x": rows})
    data = datasets.concatenate_datasets([one, one])  # two Arrow chunks
    assert data.data.column("x").num_chunks == 2
    rows = rows * 2
    for width in (None, 3):
        for step in (2, 3, 65536):
            ids, lengths = padded(data, "x", width, pad=-1, dtype=np.int32, rows_per_step=step)
            w = width or 5
            assert ids.dtype == np.int32 and ids.tolist() == [(r + [-1] * w)[:w] for r in rows]
            assert lengths.tolist() == [min(len(r), w) for r in rows]
    ids, lengths = padded(data.select([3, 1, 2]), "x")
    assert ids.tolist() == [[0, 0, 0, 0, 0], [4, 0, 0, 0, 0], [5, 6, 7, 8, 9]] and lengths.tolist() == [0, 1, 5]


def test_a_released_device_table_is_built_again_when_asked(tmp_path):
    dm = _dm(tmp_path, on_device=True)
    dm.prepare()
    table = dm.table("train")
    ids = table.tokens[""][0].clone()
    dm.release_table("train")
    assert table.tokens == {} and table.columns == {}  # the memory is given back
    again = dm.table("train")
    assert again is not table and torch.equal(again.tokens[""][0], ids)
    dm.release_table("never built")  # nothing to do
