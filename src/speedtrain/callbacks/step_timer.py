"""``StepTimer``: training throughput over a window of steps, between two CUDA synchronisations, and the fit stopped
after it (``scripts/gpu_bench.py`` times each of its rows with it).

A window in which ``torch.compile`` built a new graph (a length bucket seen late) is timed again; steps before the
window may run under ``torch.profiler``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

PROFILED = 8  # steps under the profiler (before the timed ones)
MAX_RESTARTS = 3  # a torch.compile of a new shape (a length bucket seen late) inside the window restarts it


def sync() -> None:
    if torch.cuda.is_available():  # (the rows also run on a CPU, for the tests)
        torch.cuda.synchronize()


class StepTimer(pl.Callback):
    """Time steps [warmup, warmup + steps) between two CUDA syncs, then stop the fit; rank 0 writes the result.

    A step that compiled a new graph (a length bucket first seen inside the window) restarts the window at the
    next step, up to ``MAX_RESTARTS`` times (``restarts`` in the result).

    With ``profile`` (a folder), the ``PROFILED`` steps before the timed ones also run under ``torch.profiler``
    (rank 0): the operator table sorted by GPU time and by CPU time, and a Chrome trace, land in that folder.
    """

    def __init__(self, warmup: int, steps: int, out: str | None, profile: str | None = None) -> None:
        self.warmup, self.steps, self.out, self.profile = warmup, steps, out, profile
        self.started, self.samples = 0.0, 0
        self.first, self.graphs, self.restarts, self.restart_at = warmup, 0, 0, None
        self.result: dict | None = None
        self.profiler = None

    def step_start(self, step: int) -> None:
        if self.restart_at is not None and step >= self.restart_at:  # a compile spoiled the window: time again
            self.restart_at, self.samples = None, 0
            sync()
            self.started, self.first, self.graphs = time.perf_counter(), step, compiled_graphs()
        if self.profile and step == self.warmup - PROFILED and self.profiler is None:
            self.profiler = torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA])
            self.profiler.__enter__()
        if step == self.warmup and not self.started:
            self.first, self.graphs = step, compiled_graphs()
            if self.profiler is not None:
                sync()
                self.profiler.__exit__(None, None, None)
                write_profile(self.profiler, Path(self.profile))
            sync()
            self.started = time.perf_counter()

    def step_end(self, step: int, samples: int) -> bool:
        """Count a finished step; True once the timed steps are done."""
        if not self.started or self.result is not None:
            return self.result is not None
        self.samples += samples
        if compiled_graphs() != self.graphs and self.restarts < MAX_RESTARTS:  # a new shape compiled in the window
            self.restarts += 1
            self.restart_at = step
            return False
        if step >= self.first + self.steps:
            sync()
            seconds = time.perf_counter() - self.started
            self.result = {"samples_per_s": self.samples / seconds, "seconds": seconds, "samples": self.samples,
                           "steps": step - self.first, "restarts": self.restarts,
                           "max_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available()
                           else 0.0}
            return True
        return False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.step_start(trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.result is None and self.step_end(trainer.global_step, batch["labels"].shape[0] * trainer.world_size):
            trainer.should_stop = True
            if trainer.is_global_zero and self.out:
                Path(self.out).write_text(json.dumps(self.result))


PROFILED = 8  # steps under the profiler (before the timed ones)
MAX_RESTARTS = 3  # a torch.compile of a new shape (a length bucket seen late) inside the window restarts it


def compiled_graphs() -> int:
    """Graphs torch.compile has built so far in this process."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def write_profile(profiler, folder: Path) -> None:
    """The profiler's operator tables (by GPU time, by CPU time) and its trace, into ``folder``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank():
        return
    folder.mkdir(parents=True, exist_ok=True)
    averages = profiler.key_averages()
    for key in ("cuda_time_total", "self_cpu_time_total"):
        (folder / f"ops_by_{key}.txt").write_text(averages.table(sort_by=key, row_limit=40, max_name_column_width=70))
    profiler.export_chrome_trace(str(folder / "trace.json"))
