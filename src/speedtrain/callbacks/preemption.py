"""PreemptionCheckpoint: a fit that is asked to stop saves where it is, mid-epoch, and a hard kill loses little.

On a stop signal (``signals``: SIGTERM from a scheduler, spot reclaim or Kubernetes eviction, Ctrl-C's SIGINT,
SIGUSR1) the running optimizer step finishes, every rank agrees to stop after that same step, the full training
state is written to ``checkpoints/last.ckpt`` (model, optimizer, scheduler, loop progress, callbacks, and the
training loader's position in its epoch), and :class:`~speedtrain.stopping.Stopped` ends the run with a non-zero
status. Re-running in the folder (``resume=<run>``) continues with the very next batch: the loaders of
:mod:`speedtrain.data` skip the batches already trained on, and :class:`~speedtrain.callbacks.reproducible.StepSeed`
gives each step the random state it had, so the result is the uninterrupted run's (bit-exact on the CPU).

Every ``every_minutes`` (and/or ``every_n_steps``) the same checkpoint is written without stopping, so a SIGKILL
or a power loss costs at most that much. Checkpoint files are written atomically (:class:`AtomicCheckpointIO`): a
crash while writing leaves the previous ``last.ckpt`` as it was.

In a SLURM batch job (``#SBATCH --signal=SIGUSR1@90 --requeue``) SIGUSR1 also requeues the job (``scontrol requeue``,
from rank 0) after the save: the requeued job runs in the same folder and continues from ``last.ckpt``, exactly (as
Lightning's own SLURM handler would, but from the end of a step, not from the middle of one).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from speedtrain import stopping
from speedtrain.errors import UserError

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a temporary file beside the target, flushed to disk, then renamed over it.

    Lightning's own writer stages the file in the system's temporary folder and moves it into place, which is a
    copy (not atomic) when that folder is on another file system than the run, as on most clusters.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a writer that was killed mid-write
            stale.unlink(missing_ok=True)


class PreemptionCheckpoint(pl.Callback):
    """Save ``<dirpath>/<filename>.ckpt`` mid-epoch on a stop signal (then stop) and every ``every_minutes``.

    Args:
        dirpath: the run's checkpoint folder (``${paths.output_dir}/checkpoints``).
        filename: the checkpoint's name: ``last``, the one a run resumes from.
        every_minutes: also save after the first optimizer step that ends this many minutes after the last save
            (null: never by time).
        every_n_steps: also save every this many optimizer steps (null: never by steps).
        signals: the signals that stop the run after saving (names; a second one stops at once).
    """

    def __init__(self, dirpath: str, filename: str = "last", every_minutes: float | None = 30.0,
                 every_n_steps: int | None = None, signals: list[str] | tuple[str, ...] = stopping.DEFAULT_SIGNALS,
                 ) -> None:
        if every_minutes is not None and not every_minutes > 0:
            raise UserError(f"callbacks.checkpoint.every_minutes={every_minutes} must be positive, e.g. "
                            "callbacks.checkpoint.every_minutes=30 (null: no checkpoints by time)")
        if every_n_steps is not None and not every_n_steps > 0:
            raise UserError(f"callbacks.checkpoint.every_n_steps={every_n_steps} must be positive, e.g. "
                            "callbacks.checkpoint.every_n_steps=1000 (null: none by steps)")
        self.dirpath, self.filename = Path(dirpath), filename
        self.every_minutes, self.every_n_steps = every_minutes, every_n_steps
        self.signals = list(signals)
        stopping.signal_numbers(self.signals)  # a bad name fails when the trainer is built
        self._deferring = False
        self._last_save = time.monotonic()
        self._kill_children = None

    @property
    def path(self) -> Path:
        return self.dirpath / f"{self.filename}.ckpt"

    # --- the fit's life ---------------------------------------------------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # DeepSpeed writes its own shard folders
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        if not self._deferring:
            stopping.defer()
            self._deferring = True
        self._last_save = time.monotonic()

    def _take_signals(self, trainer: pl.Trainer) -> None:
        """Lightning registers its own SIGTERM handler as a fit starts (it ends the fit with exit status 0 and
        saves nothing): the stop handler takes the signals back."""
        stopping.install(self.signals)
        launcher = trainer.strategy.launcher
        if self._kill_children is None and getattr(launcher, "procs", None):  # rank 0 of `python train.py` DDP
            self._kill_children = lambda: launcher.kill(signal.SIGKILL)
            stopping.add_hard_stop(self._kill_children)

    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._take_signals(trainer)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._take_signals(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._release()  # after training (the export of on_fit_end, evaluation) a signal stops the run at once

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._release()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._release()

    def _release(self) -> None:
        if self._deferring:
            stopping.undefer()
            self._deferring = False
        if self._kill_children is not None:
            stopping.remove_hard_stop(self._kill_children)
            self._kill_children = None

    # --- where a fit may stop -----------------------------------------------------------------------------------

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        loop = trainer.fit_loop.epoch_loop
        # between optimizer steps only (accumulated gradients are not saved); the epoch's last batch: its
        # validation runs first, then on_train_epoch_end decides
        if loop._should_accumulate() or loop.batch_progress.is_last_batch:
            return
        stop, due = self._agree(trainer, stopping.requested() or 0, self._due(trainer))
        if stop or due:
            self._save(trainer)
        if stop:
            self._stop(trainer, stop, f"in epoch {trainer.current_epoch} after batch {batch_idx + 1} of "
                                f"{trainer.num_training_batches}")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        stop, _ = self._agree(trainer, stopping.requested() or 0, False)
        if stop:
            self._save(trainer)
            self._stop(trainer, stop, f"at the end of epoch {trainer.current_epoch}")

    def _due(self, trainer: pl.Trainer) -> bool:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            return True
        return self.every_minutes is not None and time.monotonic() - self._last_save >= 60 * self.every_minutes

    @staticmethod
    def _agree(trainer: pl.Trainer, signum: int, due: bool) -> tuple[int, bool]:
        """(the stop signal, save now) as any rank has them (0: none): a signal may reach one rank only
        (``kill <pid of rank 0>``), and every rank must save and stop after the same step."""
        if trainer.world_size == 1 or not torch.distributed.is_available() or not torch.distributed.is_initialized():
            return signum, due
        flags = torch.tensor([int(signum), int(due)], device=trainer.strategy.root_device)
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        signum, due = flags.tolist()
        return int(signum), bool(due)

    def _save(self, trainer: pl.Trainer) -> None:
        started = time.monotonic()
        trainer.save_checkpoint(self.path)  # every rank: DDP writes on rank 0, DeepSpeed each rank its shards
        self._last_save = time.monotonic()
        if trainer.is_global_zero:
            log.info("Saved %s at epoch %d, step %d (%.1f s)", self.path, trainer.current_epoch, trainer.global_step,
                     self._last_save - started)

    def _stop(self, trainer: pl.Trainer, signum: int, where: str) -> None:
        requeued = slurm_requeue() if signum == signal.SIGUSR1 and trainer.is_global_zero else ""
        raise stopping.Stopped(signum, f"stopped by {stopping.signal_name(signum)} {where} (step "
                                       f"{trainer.global_step}); saved {self.path}{requeued}")


def slurm_requeue() -> str:
    """In a SLURM batch job (Lightning's SLURM environment): ``scontrol requeue`` this job; what it did, for the
    run's last line (empty outside SLURM)."""
    from lightning_fabric.plugins.environments import SLURMEnvironment

    if not SLURMEnvironment.detect():
        return ""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array else os.environ["SLURM_JOB_ID"]
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        log.warning("scontrol requeue %s failed: %s", job, err)
        return f"; requeueing SLURM job {job} failed ({err})"
    if result.returncode != 0:
        log.warning("scontrol requeue %s failed: %s", job, result.stderr.strip())
        return f"; requeueing SLURM job {job} failed ({result.stderr.strip() or result.returncode})"
    return f"; requeued SLURM job {job}: it continues from there"
