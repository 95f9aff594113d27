"""Teacher labelling through Lightning's predict loop, for runs of several processes (DDP, DeepSpeed, SLURM).

One item of the predict loop is one shard of the texts (:data:`~speedtrain.distill.logit_cache.SHARD_TEXTS`, in
the length-sorted order); the loop's distributed sampler gives rank ``r`` of ``w`` the shards ``r, r + w, ...``
(``UnrepeatedDistributedSampler``: no shard twice), the strategy puts the teacher on the rank's device with the
run's precision, and :class:`ShardWriter` writes each shard as soon as it is done. A shard already on disk (a run
that was stopped or killed) is read, not labelled again. After a barrier every rank reads every shard.

    teacher_outputs(..., shard_dir=folder, make_trainer=factory)   # factory(callbacks) -> a Trainer
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from speedtrain import stopping
from speedtrain.distill.logit_cache import _batch_outputs, _read_shard, _save_npz, shard_path

log = logging.getLogger(__name__)

TrainerFactory = Callable[[list[pl.Callback]], pl.Trainer]  # callbacks -> a Trainer to predict with


class ShardLabeller(pl.LightningModule):
    """``predict_step(shard number) -> (number, {"logits": ..., ["hidden": ...]})``, or ``(number, None)`` when
    the shard is on disk already."""

    def __init__(self, teacher: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str],
                 shards: list[np.ndarray], like: dict[str, np.ndarray], max_length: int, layers: tuple[int, ...],
                 batch_size: int, shard_dir: Path):
        super().__init__()
        self.teacher = teacher
        self.tokenizer, self.texts, self.shards, self.like = tokenizer, texts, shards, like
        self.max_length, self.layers, self.batch_size, self.shard_dir = max_length, layers, batch_size, shard_dir

    def predict_step(self, number: int, batch_idx: int = 0):
        if number < 0:  # an empty item: a rank with no shard (fewer shards than ranks)
            return number, None
        idx = self.shards[number]
        if _read_shard(shard_path(self.shard_dir, number), self.like, len(idx)) is not None:
            return number, None
        shard = {k: np.zeros((len(idx), *v.shape[1:]), v.dtype) for k, v in self.like.items()}
        for start in range(0, len(idx), self.batch_size):
            rows = idx[start : start + self.batch_size]
            found = _batch_outputs(self.teacher, self.tokenizer, [self.texts[i] for i in rows], self.max_length,
                                   self.layers)
            for k, v in found.items():
                shard[k][start : start + len(rows)] = v
        return number, shard


class ShardWriter(BasePredictionWriter):
    """Writes each labelled shard (atomically) as its predict step ends; on a stop signal, stops after it."""

    def __init__(self, shard_dir: Path, sizes: list[int]):
        super().__init__(write_interval="batch")
        self.shard_dir, self.sizes = shard_dir, sizes
        self.labelled = self.reused = 0  # texts, this rank

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx=0) -> None:
        number, shard = prediction  # number -1: an empty item
        if number >= 0 and shard is None:
            self.reused += self.sizes[number]
        elif number >= 0:
            _save_npz(shard_path(self.shard_dir, number), shard)
            self.labelled += self.sizes[number]
        if stopping.requested() is not None:
            raise stopping.Stopped(stopping.requested(), (
                f"stopped by {stopping.signal_name(stopping.requested())} while the teacher labelled texts on rank "
                f"{trainer.global_rank}: its finished shards are kept in {self.shard_dir} for the next start"))


def _one(items: list):
    return items[0]


def predict_outputs(make_trainer: TrainerFactory, teacher: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                    texts: list[str], shards: list[np.ndarray], out: dict[str, np.ndarray], max_length: int,
                    layers: tuple[int, ...], batch_size: int, shard_dir: Path) -> dict[str, np.ndarray]:
    """Fill ``out`` (arrays of N rows, N = len(texts)) with the teacher's outputs through ``make_trainer``'s predict
    loop, every rank its share of ``shards`` (the rows of each, in ``out``'s order); returns ``out``."""
    like = {k: v[:0] for k, v in out.items()}
    writer = ShardWriter(shard_dir, [len(idx) for idx in shards])
    trainer = make_trainer([writer])
    module = ShardLabeller(teacher, tokenizer, texts, shards, like, max_length, layers, batch_size, shard_dir)
    # the sampler needs an item for every rank: fewer shards than ranks get empty items (-1)
    items = list(range(len(shards))) + [-1] * max(0, trainer.world_size - len(shards))
    loader = DataLoader(items, batch_size=1, collate_fn=_one)
    with stopping.deferred():
        trainer.predict(module, loader, return_predictions=False)
    trainer.strategy.barrier("teacher outputs")  # every rank's shards are on disk
    for number, idx in enumerate(shards):
        found = _read_shard(shard_path(shard_dir, number), out, len(idx))
        if found is None:
            raise RuntimeError(f"shard {number} of the teacher outputs is missing from {shard_dir}: the rank that "
                               "labels it did not write it")
        for k, v in found.items():
            out[k][idx] = v
    log.info("Teacher outputs (Lightning predict, rank %d of %d): labelled %s, reused %s of %s texts",
             trainer.global_rank, trainer.world_size, f"{writer.labelled:,}", f"{writer.reused:,}", f"{len(texts):,}")
    return out
