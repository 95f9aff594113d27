"""LightningDataModule: source -> checked, seeded splits -> small-vocab tokenizer -> token ids, cached on disk."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import datasets
import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase
from transformers.trainer_pt_utils import get_length_grouped_indices

from speedtrain.data.device import DeviceBatches, DeviceTable, column, padded
from speedtrain.data.resumable import ResumableDataLoader
from speedtrain.data.splits import content_hash, make_splits
from speedtrain.data.tokenizer import cached_wordpiece, save_atomically, vocabulary_texts
from speedtrain.errors import UserError
from speedtrain.models.teacher import load_tokenizer

log = logging.getLogger(__name__)
PARALLEL_ROWS = 50_000  # data.num_proc=auto: fewer texts tokenize faster in one process than the workers start


class TextDataModule(pl.LightningDataModule):
    """Text classification data for the student.

    ``prepare()`` (also run by ``setup``) loads the source, splits it, trains or loads the tokenizer and
    tokenizes every split once; the token ids are cached under ``cache_dir/data/<hash of data + tokenizer>``.
    Batches are padded dynamically to the longest text in the batch (at most ``max_length`` tokens).

    Args:
        source: a callable returning a ``DatasetDict`` of ``text``/``label`` strings (see ``data/sources.py``).
        tokenizer: keyword arguments of :func:`~speedtrain.data.tokenizer.train_wordpiece` (vocab_size, ...),
            or ``{"pretrained": name_or_path}`` for a pretrained model's own tokenizer.
        cache_dir: the user's cache folder for speedtrain.
        group_by_length: draw training batches of similar lengths (transformers' length grouping:
            random mega-batches of 50 batches, sorted by length inside), so less padding is computed. It halved
            the MiniLM teacher's step time here (0.75 s vs 1.56 s, batch 32, 64 tokens at most, 2-core CPU).
        seed: the training order of epoch ``e`` depends only on (seed, e) (:class:`SeededSampler`), so a resumed
            run sees the batches the uninterrupted one saw.
        num_proc: processes that tokenize (``datasets.map``); ``auto``: every core from 50,000 texts on, else 1.
        on_device: keep every split as tensors on the training device and index batches there
            (:mod:`speedtrain.data.device`) instead of a DataLoader; ``length_buckets``: its bucket granularity.
    """

    def __init__(
        self,
        source: Callable[[], datasets.DatasetDict],
        tokenizer: dict,
        cache_dir: str | os.PathLike,
        max_length: int = 32,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        pin_memory: bool = False,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 42,
        group_by_length: bool = False,
        seed: int = 0,
        on_device: bool = False,
        length_buckets: int = 8,
        num_proc: int | str = "auto",
    ) -> None:
        super().__init__()
        if num_proc != "auto" and (isinstance(num_proc, bool) or not isinstance(num_proc, int) or num_proc < 1):
            raise UserError(f"data.num_proc={num_proc!r} must be a number of processes >= 1 or auto (every core "
                            f"from {PARALLEL_ROWS:,} texts on)")
        self.num_proc = num_proc
        self.seed, self.on_device, self.length_buckets = seed, on_device, length_buckets
        self._tables: dict[str, DeviceTable] = {}
        for key, value in (("data.max_length", max_length), ("data.batch_size", batch_size),
                           ("data.eval_batch_size", eval_batch_size)):
            if not isinstance(value, int) or value <= 0:
                hint = " (it follows model.max_length unless set)" if key == "data.max_length" else ""
                raise UserError(f"{key}={value!r} must be a positive integer{hint}")
        if max_length < 3:
            raise UserError(f"data.max_length={max_length} leaves no room for text beside [CLS]/[SEP]; use e.g. 32")
        if num_workers < 0:
            raise UserError(f"data.num_workers={num_workers} must be >= 0")
        if not isinstance(length_buckets, int) or length_buckets < 0:
            raise UserError(f"data.length_buckets={length_buckets!r} must be an integer >= 0 (0: no buckets), e.g. 8")
        self.source, self.tokenizer_kwargs = source, dict(tokenizer)
        self.cache_dir = Path(os.path.expanduser(str(cache_dir)))
        self.max_length, self.batch_size, self.eval_batch_size = max_length, batch_size, eval_batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        self.group_by_length = group_by_length
        self.data_digest: str | None = None  # hash of every split's texts and labels (not of the tokenizer)
        self.teacher_tokenizer: PreTrainedTokenizerBase | None = None  # online distillation: batches carry both
        self.teacher_arrays: dict[str, np.ndarray] = {}  # cached teacher outputs per training row
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.splits: datasets.DatasetDict | None = None  # text + label
        self.encoded: datasets.DatasetDict | None = None  # input_ids + label
        self.timings: dict[str, float] = {}  # seconds of each step of prepare()

    @property
    def label_names(self) -> list[str]:
        assert self.splits is not None, "call prepare() first"
        return self.splits["train"].features["label"].names

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def prepare(self) -> None:
        """Load, split, train the tokenizer and tokenize (each step cached); idempotent. ``timings`` gets the
        seconds of each step (read, split, vocabulary, hash, tokenize), also logged."""
        if self.encoded is not None:
            return
        clock = _Clock()
        source = self.source()
        clock.lap("read")
        self.splits = make_splits(source, self.val_fraction, self.test_fraction, self.split_seed)
        clock.lap("split")
        pretrained = self.tokenizer_kwargs.get("pretrained")
        if pretrained:  # a pretrained model's own tokenizer (the teacher's)
            self.tokenizer = load_tokenizer(pretrained)
            vocab = json.dumps(self.tokenizer.get_vocab(), sort_keys=True)
            tokenizer_key = hashlib.sha256(f"{type(self.tokenizer).__name__}{vocab}".encode()).hexdigest()
        else:
            settings = dict(self.tokenizer_kwargs)
            texts = vocabulary_texts(self.splits["train"], settings.pop("train_sample", None), self.split_seed)
            self.tokenizer, folder = cached_wordpiece(texts, self.cache_dir, max_length=self.max_length, **settings)
            tokenizer_key = folder.name
        clock.lap("vocabulary")
        data = hashlib.sha256()
        for split in ("train", "validation", "test"):
            data.update(content_hash(self.splits[split]))
        self.data_digest = data.hexdigest()
        clock.lap("hash")
        key = hashlib.sha256(f"{self.data_digest}/{tokenizer_key}/{self.max_length}".encode())
        folder = self.cache_dir / "data" / key.hexdigest()[:16]
        if not (folder / "dataset_dict.json").is_file():
            save_atomically(self._tokenize().save_to_disk, folder)
        self.encoded = datasets.load_from_disk(str(folder))
        clock.lap("tokenize")
        self.timings = clock.laps
        log.info("Data: %s texts; %s", f"{sum(len(s) for s in self.splits.values()):,}",
                 ", ".join(f"{k} {v:.1f} s" for k, v in self.timings.items()))

    def _tokenize(self, splits: datasets.DatasetDict | None = None) -> datasets.DatasetDict:
        tok = self.tokenizer
        backend = getattr(tok, "backend_tokenizer", None)
        if backend is not None:  # the Rust tokenizer itself: the same ids, 1.3x the texts/s of the transformers call
            from tokenizers import Tokenizer

            backend = Tokenizer.from_str(backend.to_str())  # a copy: truncation set here only
            backend.enable_truncation(self.max_length)
            backend.no_padding()

        def encode(batch: dict) -> dict:
            if backend is None:
                return tok(batch["text"], truncation=True, max_length=self.max_length, return_token_type_ids=False)
            found = getattr(backend, "encode_batch_fast", backend.encode_batch)(batch["text"])
            return {"input_ids": [e.ids for e in found], "attention_mask": [e.attention_mask for e in found]}

        splits = self.splits if splits is None else splits
        rows = sum(len(split) for split in splits.values())
        procs = (os.cpu_count() or 1) if self.num_proc == "auto" else self.num_proc
        procs = procs if rows >= PARALLEL_ROWS or self.num_proc != "auto" else 1  # auto: small data in-process
        return splits.map(encode, batched=True, remove_columns=["text"], desc="tokenizing",
                          num_proc=procs if procs > 1 else None)

    def add_train_texts(self, texts: list[str], labels: list[int]) -> None:
        """Append more training inputs (a transfer set), tokenized like the rest; ``splits`` keeps the originals."""
        assert self.encoded is not None
        extra = datasets.Dataset.from_dict({"text": texts, "label": labels}, features=self.splits["train"].features)
        extra = self._tokenize(datasets.DatasetDict(train=extra))["train"]
        self.encoded["train"] = datasets.concatenate_datasets([self.encoded["train"], extra])
        self._tables.pop("train", None)

    def attach_teacher_logits(self, logits, hidden=None, weights=None) -> None:
        """Give every training row the teacher's logits (N_train, C) as ``teacher_logits`` and, if given, its pooled
        hidden states (N_train, L, H) as ``teacher_hidden`` (flattened to L * H) and a loss weight (N_train,)
        as ``sample_weight``.

        The arrays stay in memory as numpy; the training split gets a ``row`` index column and the collator
        gathers the batch's rows (converting ~1,200 floats a row to Arrow and back cost more than the student step).
        """
        assert self.encoded is not None and len(logits) == len(self.encoded["train"])
        self.teacher_arrays = {"teacher_logits": np.ascontiguousarray(logits, dtype=np.float32)}
        if hidden is not None:
            self.teacher_arrays["teacher_hidden"] = np.ascontiguousarray(hidden, np.float32).reshape(len(hidden), -1)
        if weights is not None:
            self.teacher_arrays["sample_weight"] = np.ascontiguousarray(weights, dtype=np.float32)
        self._tables.pop("train", None)
        train = self.encoded["train"]
        if "row" not in train.column_names:
            self.encoded["train"] = train.add_column("row", np.arange(len(train)))

    def attach_teacher_inputs(self, tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int) -> None:
        """Add the teacher's own tokenization of the training inputs ``texts`` (in the training split's order) as
        ``teacher_input_ids``/``teacher_attention_mask``, for a teacher run online; batches then carry both."""
        assert self.encoded is not None and len(texts) == len(self.encoded["train"])
        enc = tokenizer(texts, truncation=True, max_length=max_length, return_token_type_ids=False)
        train = self.encoded["train"].add_column("teacher_input_ids", enc["input_ids"])
        self.encoded["train"] = train.add_column("teacher_attention_mask", enc["attention_mask"])
        self.teacher_tokenizer = tokenizer
        self._tables.pop("train", None)

    def prepare_data(self) -> None:
        self.prepare()

    def setup(self, stage: str | None = None) -> None:
        self.prepare()

    def _loader(self, split: str, shuffle: bool) -> DataLoader | DeviceBatches:
        if self.on_device:
            return self._device_batches(split, shuffle)
        arrays = self.teacher_arrays if split == "train" else {}
        collator = PairCollator(self.tokenizer, self.teacher_tokenizer, arrays)
        dataset = self.encoded[split].rename_column("label", "labels")
        batch_size = self.batch_size if shuffle else self.eval_batch_size
        sampler, kwargs = None, {}
        if shuffle:  # training: a seeded order per epoch, resumable mid-epoch
            lengths = [len(ids) for ids in dataset["input_ids"]] if self.group_by_length else None
            sampler = SeededSampler(len(dataset), self.seed, lengths=lengths, batch_size=batch_size)
            kwargs["position"] = self._position
        return (ResumableDataLoader if shuffle else DataLoader)(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=collator,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            **kwargs,
        )

    def _position(self) -> tuple[int, int, float]:
        """Where training is: (epoch, batches of it trained on, batches in an epoch), for a checkpoint of the
        training loader."""
        trainer = self.trainer
        return (trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_progress.current.processed,
                trainer.num_training_batches)

    def release_table(self, split: str) -> None:
        """Free ``split``'s device table (a later :meth:`table` builds it again)."""
        table = self._tables.pop(split, None)
        if table is not None:
            table.release()

    def table(self, split: str) -> DeviceTable:
        """``split`` as dense tensors (built once; the training split again after a change)."""
        if split not in self._tables:
            ds = self.encoded[split]
            columns = {"labels": column(ds, "label").astype(np.int64)}
            # as wide as the longest text (tokenized with truncation: at most max_length), int32
            tokens = {"": padded(ds, "input_ids", None, self.tokenizer.pad_token_id, dtype=np.int32)}
            if split == "train" and self.teacher_arrays:
                rows = column(ds, "row")
                columns.update({name: values[rows] for name, values in self.teacher_arrays.items()})
            if split == "train" and self.teacher_tokenizer is not None and "teacher_input_ids" in ds.column_names:
                tokens["teacher_"] = padded(ds, "teacher_input_ids", pad=self.teacher_tokenizer.pad_token_id or 0,
                                            dtype=np.int32)
            self._tables[split] = DeviceTable(columns, tokens)
        return self._tables[split]

    def _device_batches(self, split: str, shuffle: bool) -> DeviceBatches:
        trainer = self.trainer
        return DeviceBatches(
            self.table(split), self.batch_size if shuffle else self.eval_batch_size, shuffle=shuffle,
            bucket=self.length_buckets, seed=self.seed,
            epoch=lambda: trainer.current_epoch if trainer is not None else 0,
            rank=trainer.global_rank if trainer is not None else 0,
            world=trainer.world_size if trainer is not None else 1,
            device=lambda: trainer.strategy.root_device if trainer is not None else torch.device("cpu"),
            position=self._position if shuffle and trainer is not None else None)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


class SeededSampler(torch.utils.data.Sampler[int]):
    """A random order of ``size`` rows that depends only on (seed, epoch); Lightning calls ``set_epoch``.

    With ``lengths``, rows are grouped by length (random mega-batches of 50 batches of ``batch_size``, sorted
    inside), as transformers' ``LengthGroupedSampler`` does. Under DDP Lightning wraps it in a distributed sampler.
    """

    def __init__(self, size: int, seed: int, lengths: list[int] | None = None, batch_size: int = 1) -> None:
        self.size, self.seed, self.lengths, self.batch_size, self.epoch = size, int(seed), lengths, batch_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.lengths is None:
            return iter(torch.randperm(self.size, generator=generator).tolist())
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


class PairCollator:
    """Pads the student's inputs with its tokenizer and, when present, the teacher's (``teacher_*``) with its own;
    adds the cached teacher outputs of the batch's rows (``arrays``, indexed by the ``row`` column)."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, teacher_tokenizer: PreTrainedTokenizerBase | None = None,
        arrays: dict[str, np.ndarray] | None = None,
    ) -> None:
        self.student = DataCollatorWithPadding(tokenizer, padding="longest", return_tensors="pt")
        self.teacher = DataCollatorWithPadding(teacher_tokenizer, return_tensors="pt") if teacher_tokenizer else None
        self.arrays = arrays or {}

    def __call__(self, features: list[dict]) -> dict:
        teacher = self.teacher is not None and "teacher_input_ids" in features[0]
        batch = self.student([{k: v for k, v in f.items() if k != "row" and not k.startswith("teacher_")}
                              for f in features])
        if teacher:
            padded = self.teacher([{"input_ids": f["teacher_input_ids"], "attention_mask": f["teacher_attention_mask"]}
                                   for f in features])
            batch["teacher_input_ids"], batch["teacher_attention_mask"] = padded["input_ids"], padded["attention_mask"]
        if self.arrays and "row" in features[0]:
            rows = np.fromiter((f["row"] for f in features), dtype=np.int64, count=len(features))
            batch.update({name: torch.from_numpy(values[rows]) for name, values in self.arrays.items()})
        return batch


class _Clock:
    """Seconds between laps: ``laps[name]`` is the time since the previous lap (or the start)."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = now - self._last
        self._last = now
