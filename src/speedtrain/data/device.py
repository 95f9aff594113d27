"""Batches indexed from tensors that live on the training device: no DataLoader, no workers, no copies per step.

For datasets that fit in the device's memory (the default data: ~1 MB; 10M texts of 32 tokens: ~5 GB), the
token ids, labels and cached teacher outputs of a split are padded once into dense tensors and moved to the
device. A batch is then an ``index_select`` of its rows, cut to its length bucket, all on the device: the CPU
only plans the epoch (one permutation, once) and the GPU never waits for a collate.

Length buckets: rows are grouped by length rounded up to a multiple of ``bucket`` tokens, and every batch holds
rows of one bucket, so short texts cost less and the model sees a handful of shapes (what ``torch.compile`` and
CUDA graphs want). The rows left over in each bucket are batched together (at the width of their longest), and the
last of those batches is topped up with rows drawn at random from the epoch (as ``DistributedSampler`` pads), so
every training batch has the same size: a compiled model sees only one shape per bucket, never the odd size of an
epoch's last batch (a recompile of 10-20 s, measured on an H200). The order of an epoch depends only on
(seed, epoch), like :class:`~speedtrain.data.datamodule.SeededSampler`.

Online distillation (the batches carry the teacher's own tokens): the buckets follow the teacher's lengths, as its
forward costs several times the student's training step per token (MiniLM-L6 vs bert_tiny: ~9x); on the default
data that cuts the teacher's padded tokens from 1.58x to 1.14x the real ones.

Several processes (DDP): each global batch of ``batch_size x world`` rows is split across the ranks, so every
rank takes the same number of steps; evaluation splits the rows across ranks without repeating any.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import datasets
import numpy as np
import pyarrow.compute as pc
import torch

from speedtrain.data.resumable import Position, ResumablePosition


def padded(ds: datasets.Dataset, column: str, width: int | None = None, pad: int = 0,
           dtype: type = np.int64, rows_per_step: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """A ragged list column of ``ds`` as a dense (N, width) ``dtype`` array padded on the right, and the row
    lengths (at most ``width``; None: the longest row). Vectorised over Arrow's flat values, ``rows_per_step`` rows
    at a time (the temporaries stay small beside the result): a million rows take a fraction of a second."""
    if ds._indices is not None:
        ds = ds.flatten_indices()
    col = ds.data.column(column)
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False).astype(np.int64)
    width = int(lengths.max(initial=1)) if width is None else width
    out = np.full((len(ds), width), pad, dtype=dtype)
    row = 0
    for chunk in col.chunks:
        for start in range(0, len(chunk), rows_per_step):
            part = chunk.slice(start, rows_per_step)
            offsets = np.asarray(part.offsets, dtype=np.int64)
            values = part.flatten().to_numpy(zero_copy_only=False)
            sizes = np.diff(offsets)
            pos = np.arange(len(values)) - np.repeat(offsets[:-1] - offsets[0], sizes)
            keep = pos < width
            out[row + np.repeat(np.arange(len(part)), sizes)[keep], pos[keep]] = values[keep]
            row += len(part)
    return out, np.minimum(lengths, width)


def column(ds: datasets.Dataset, name: str) -> np.ndarray:
    """A scalar column of ``ds`` as a numpy array (through Arrow, not Python lists)."""
    if ds._indices is not None:
        ds = ds.flatten_indices()
    return ds.data.column(name).to_numpy()


class DeviceTable:
    """A split's rows as dense tensors: ``columns`` (per row: labels, teacher outputs) and token groups.

    Args:
        columns: name -> array with one row per text (``labels`` (N,), ``teacher_logits`` (N, C), ...).
        tokens: prefix -> (ids (N, T), lengths (N,)): ``""`` for the student's ``input_ids``/``attention_mask``,
            ``"teacher_"`` for the teacher's own tokenization (online distillation). Ids are kept as int32 (half
            the memory of int64: 1M texts of 32 tokens take 128 MB) and batches get them as int64.
    """

    def __init__(self, columns: dict[str, np.ndarray], tokens: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        self.columns = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in columns.items()}
        self.tokens = {k: (torch.from_numpy(ids), torch.from_numpy(lengths)) for k, (ids, lengths) in tokens.items()}
        self.lengths = {k: lengths for k, (_, lengths) in tokens.items()}  # numpy, for planning on the CPU
        self.device = torch.device("cpu")

    def __len__(self) -> int:
        return len(self.lengths[""])

    def release(self) -> None:
        """Drop the tensors (training has ended; the export and the test need the memory more)."""
        self.columns, self.tokens = {}, {}

    def to(self, device: torch.device) -> DeviceTable:
        if device != self.device:
            self.columns = {k: v.to(device) for k, v in self.columns.items()}
            self.tokens = {k: (ids.to(device), lengths.to(device)) for k, (ids, lengths) in self.tokens.items()}
            self.device = device
        return self

    def gather(self, rows: torch.Tensor, widths: dict[str, int]) -> dict[str, torch.Tensor]:
        """The batch of ``rows`` (indices on the table's device); token groups cut to ``widths[prefix]``."""
        batch = {name: values.index_select(0, rows) for name, values in self.columns.items()}
        for prefix, (ids, lengths) in self.tokens.items():
            width = widths[prefix]
            batch[f"{prefix}input_ids"] = ids[:, :width].index_select(0, rows).long()  # int32 in the table
            positions = torch.arange(width, device=rows.device)
            batch[f"{prefix}attention_mask"] = (positions < lengths.index_select(0, rows)[:, None]).long()
        return batch


def round_up(lengths: np.ndarray, bucket: int, limit: int) -> np.ndarray:
    """Lengths rounded up to a multiple of ``bucket`` (at most ``limit``); ``bucket`` 0: ``limit``."""
    if bucket <= 0:
        return np.full_like(lengths, limit)
    return np.minimum(-(-np.maximum(lengths, 1) // bucket) * bucket, limit)


class DeviceBatches(ResumablePosition):
    """An iterable of batches over a :class:`DeviceTable` on ``device()``; ``len()`` is the batches per epoch.

    Args:
        table: the split.
        batch_size: rows per batch on each rank.
        shuffle: training order (seeded by (seed, epoch())) with length buckets; False: sorted by length.
        bucket: the length-bucket granularity in tokens (0: every batch padded to the full width).
        seed, epoch: the order of an epoch is drawn from ``seed`` and ``epoch()``.
        rank, world: this process and the number of processes.
        device: returns the device to put the table on (asked at the first iteration, once training has one).
        position: (epoch, batches trained on) for a checkpoint: a restored run skips those batches
            (:mod:`speedtrain.data.resumable`).
    """

    def __init__(self, table: DeviceTable, batch_size: int, shuffle: bool, bucket: int = 8, seed: int = 0,
                 epoch: Callable[[], int] = lambda: 0, rank: int = 0, world: int = 1,
                 device: Callable[[], torch.device] = lambda: torch.device("cpu"), position: Position | None = None,
                 ) -> None:
        self.table, self.batch_size, self.shuffle, self.bucket = table, batch_size, shuffle, bucket
        self.position = position
        self.seed, self.epoch, self.rank, self.world, self.device = seed, epoch, rank, world, device
        self.widths = {k: int(table.tokens[k][0].shape[1]) for k in table.tokens}  # the padded widths
        self.key_group = "teacher_" if "teacher_" in table.tokens else ""  # the costlier model's lengths
        self._len: int | None = None

    def plan(self, epoch: int) -> tuple[np.ndarray, list[tuple[int, int, dict[str, int]]]]:
        """This rank's rows of the epoch in batch order, and per batch (start, size, width per token group)."""
        n = len(self.table)
        group = self.key_group
        key = round_up(self.table.lengths[group], self.bucket, self.widths[group])
        if not self.shuffle:  # evaluation: each rank a disjoint share, sorted by length (less padding)
            rows = np.arange(n)[self.rank :: self.world]
            rows = rows[np.argsort(key[rows], kind="stable")]
            groups = [rows[i : i + self.batch_size] for i in range(0, len(rows), self.batch_size)]
            spans = groups
        else:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            perm = shuffled = torch.randperm(n, generator=generator).numpy()
            if self.bucket > 0:
                perm = perm[np.argsort(key[perm], kind="stable")]  # random inside each bucket
            size = self.batch_size * self.world
            full, rest = [], []
            for value in np.unique(key[perm]):
                rows = perm[key[perm] == value]
                cut = len(rows) // size * size
                full += [rows[i : i + size] for i in range(0, cut, size)]
                rest.append(rows[cut:])
            rest = np.concatenate(rest) if rest else np.zeros(0, np.int64)
            if len(rest) % size and n >= size:  # top the last batch up: one batch size, whatever n is
                rest = np.concatenate([rest, shuffled[: size - len(rest) % size]])
            full += [rest[i : i + size] for i in range(0, len(rest), size)]
            full = [g for g in full if len(g) >= self.world]
            order = torch.randperm(len(full), generator=generator).tolist()
            groups, spans = [], []  # spans: the global batches (every rank pads its share to the same widths)
            for g in (full[i] for i in order):
                share = len(g) // self.world
                groups.append(g[self.rank * share : (self.rank + 1) * share])
                spans.append(g[: share * self.world])
        batches, start = [], 0
        for g, span in zip(groups, spans):
            widths = {k: int(round_up(lengths[span].max(keepdims=True), self.bucket, self.widths[k])[0])
                      for k, lengths in self.table.lengths.items()}
            batches.append((start, len(g), widths))
            start += len(g)
        rows = np.concatenate(groups) if groups else np.zeros(0, np.int64)
        return rows.astype(np.int64), batches

    def __len__(self) -> int:  # the same every epoch: the buckets' sizes do not change
        if self._len is None:
            self._len = len(self.plan(0)[1])
        return self._len

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        device = self.device()
        table = self.table.to(device)
        epoch = self.epoch() if self.shuffle else 0
        rows, batches = self.plan(epoch)
        rows = torch.from_numpy(rows).to(device, non_blocking=True)
        for start, size, widths in batches[self._skip_for(epoch):]:
            yield table.gather(rows[start : start + size], widths)
