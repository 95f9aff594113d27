"""Callbacks that interrupt a training process the way a cluster does: the resume, sweep and SLURM tests' crashes."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytorch_lightning as pl

_SEEN: dict[str, int] = {}  # per marker: how often this process reached the crash point (sweep jobs share it)


class KillOnce(pl.Callback):
    """Before batch ``batch`` of epoch ``epoch``: send ``signals`` (names, e.g. ``[SIGUSR1, SIGKILL]``) to this
    process, unless ``marker`` exists (then it is the resumed run, which trains on). The marker is written first.

    Args:
        skip: let the first ``skip`` arrivals at that point in this process pass (the n-th job of a sweep crashes).
        signals: ``[]`` raises :class:`Crash` instead (a run that fails inside this process).
        rank: only this global rank signals itself (a scheduler that signals one process); None: every rank.
    """

    def __init__(self, epoch: int, batch: int, marker: str, skip: int = 0, signals: list[str] | None = None,
                 rank: int | None = None) -> None:
        self.epoch, self.batch, self.marker, self.skip, self.rank = epoch, batch, Path(marker), skip, rank
        self.signals = list(signals) if signals is not None else ["SIGKILL"]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.current_epoch != self.epoch or batch_idx != self.batch or self.marker.exists():
            return
        if self.rank is not None and trainer.global_rank != self.rank:
            return
        _SEEN[str(self.marker)] = seen = _SEEN.get(str(self.marker), 0) + 1
        if seen <= self.skip:
            return
        self.marker.write_text(f"interrupted at epoch {self.epoch} batch {self.batch}\n")
        for name in self.signals:
            os.kill(os.getpid(), getattr(signal, name))
        if not self.signals:
            raise Crash(f"crashed at epoch {self.epoch} batch {self.batch}")


class KillDuringSave(pl.Callback):
    """From global step ``step`` on, the next checkpoint write stops halfway: half its bytes are on disk, then
    SIGKILL (a crash or power loss mid-write). Only while ``marker`` does not exist (it is written first)."""

    def __init__(self, step: int, marker: str) -> None:
        self.step, self.marker = step, Path(marker)

    def setup(self, trainer, pl_module, stage: str) -> None:
        import io

        import torch

        if self.marker.exists():
            return
        real = torch.save

        def save(obj, f, *args, **kwargs):
            if trainer.global_step < self.step or isinstance(f, (str, os.PathLike)) or self.marker.exists():
                return real(obj, f, *args, **kwargs)
            buffer = io.BytesIO()
            real(obj, buffer, *args, **kwargs)
            data = buffer.getvalue()
            self.marker.write_text(f"killed while writing a checkpoint at step {trainer.global_step}\n")
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)

        torch.save = save


class Crash(RuntimeError):
    """The failure :class:`KillOnce` raises when it sends no signal."""


def crash_overrides(marker: Path, epoch: int = 1, batch: int = 2, skip: int = 0, signals: str = "[SIGKILL]",
                    rank: int | None = None) -> list[str]:
    """The command-line overrides that add :class:`KillOnce` to a run."""
    return ["+callbacks.crash._target_=tests.crash.KillOnce", f"+callbacks.crash.epoch={epoch}",
            f"+callbacks.crash.batch={batch}", f"+callbacks.crash.marker={marker}", f"+callbacks.crash.skip={skip}",
            f"+callbacks.crash.signals={signals}", f"+callbacks.crash.rank={'null' if rank is None else rank}"]
