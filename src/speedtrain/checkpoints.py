"""A fitted run's checkpoints: the best one, evaluated, consolidated from DeepSpeed shards, as a student on the CPU.

One place knows that a DeepSpeed ZeRO checkpoint is a folder of shards: :func:`consolidated` turns it into one
fp32 Lightning checkpoint beside it (``<name>-fp32.ckpt``), once; evaluation and the export both read that file.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytorch_lightning as pl
import torch


def is_deepspeed(trainer: pl.Trainer) -> bool:
    """Whether ``trainer`` runs DeepSpeed (its checkpoints are folders of shards)."""
    return type(trainer.strategy).__name__ == "DeepSpeedStrategy"


def best_checkpoint(trainer: pl.Trainer) -> str | None:
    """The checkpoint callback's best checkpoint (a file, or a folder of DeepSpeed shards); None if none was saved
    (``fast_dev_run``, no checkpoint callback)."""
    return (trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else "") or None


def consolidated(shards: str | Path) -> Path:
    """A DeepSpeed ZeRO checkpoint (a folder of shards) as one fp32 Lightning checkpoint beside it.

    Converts once: a ``<name>-fp32.ckpt`` newer than the shards is reused. Call it on one rank (rank 0).
    """
    from pytorch_lightning.utilities.deepspeed import (
        convert_zero_checkpoint_to_fp32_state_dict,
    )

    target = consolidated_path(shards)
    if not target.is_file() or target.stat().st_mtime < Path(shards).stat().st_mtime:
        convert_zero_checkpoint_to_fp32_state_dict(str(shards), str(target))
    return target


def evaluate(trainer: pl.Trainer, module: pl.LightningModule, datamodule, ckpt_path: str | None,
             test: bool) -> dict[str, float]:
    """val/* (and test/*) metrics of the checkpoint at ``ckpt_path`` (None: the weights in memory).

    A ZeRO-3 checkpoint is consolidated first and loaded as one file through Lightning's ``load_full_weights``:
    DeepSpeed's ZeRO-3 engine for evaluation has no optimizer and cannot load its own shards (DeepSpeed 0.19:
    ``'DeepSpeedZeRoOffload' object has no attribute '_restore_from_bit16_weights'``, seen on an H200); ZeRO-1/2
    shards load natively.
    """
    metrics = {}
    stages = [trainer.validate] + ([trainer.test] if test else [])
    zero3 = is_deepspeed(trainer) and trainer.strategy.zero_stage_3 and ckpt_path and Path(ckpt_path).is_dir()
    if zero3:
        if trainer.is_global_zero:
            consolidated(ckpt_path)
        trainer.strategy.barrier()  # every rank reads the file; rank 0 loads it into the gathered parameters
        ckpt_path = str(consolidated_path(ckpt_path))
        configured, trainer.strategy.load_full_weights = trainer.strategy.load_full_weights, True  # one file
    try:
        for stage in stages:
            for result in stage(module, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False):
                metrics.update({k: float(v) for k, v in result.items()})
    finally:
        if zero3:
            trainer.strategy.load_full_weights = configured  # a later fit resumes from the shards
    return metrics


def consolidated_path(shards: str | Path) -> Path:
    """Where :func:`consolidated` writes the fp32 checkpoint of ``shards``."""
    return Path(shards).with_name(Path(shards).stem + "-fp32.ckpt")


def best_student(model: torch.nn.Module, trainer: pl.Trainer) -> torch.nn.Module:
    """A CPU fp32 copy of ``model`` with the best checkpoint's weights (the weights in memory if none was saved).

    Checkpoints load with ``weights_only=True``. A DeepSpeed checkpoint is :func:`consolidated` first (the file
    this run just wrote from its own shards; it keeps Lightning's client state, which is more than tensors), and
    the student is built fresh from its config (ZeRO-3's parameters in ``model`` are partitioned, not copyable).
    """
    best = best_checkpoint(trainer)
    if best is None:
        return copy.deepcopy(model).cpu().float().eval()
    shards = Path(best).is_dir()
    if shards:
        student = type(model)(copy.deepcopy(model.config)).eval()
        best = consolidated(best)
    else:
        student = copy.deepcopy(model).cpu().float().eval()
    state = torch.load(best, map_location="cpu", weights_only=not shards)["state_dict"]
    student.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    return student
