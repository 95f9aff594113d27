"""``KeepFreedMemory`` (``trainer.speed.keep_freed_memory``): while the training steps run, glibc's malloc keeps
freed memory for the next step; when training ends it hands it back.

A training step on the CPU allocates and frees the same tens of MB of temporaries every step (the static student at
batch 1024: ~5 MB for each table lookup, gradient and optimizer gather). By default glibc serves a block above its
mmap threshold with fresh pages from the OS and returns the heap's free top past its trim threshold, so every step
page-faults its temporaries in again. Thresholds of 256 MB (mmap) and 1 GB (trim) keep them in the heap: the static
student's step loop (fused row update, batch 1024, 2-core CPU) took 14.2 instead of 20.5 ms (median of 6 runs each,
interleaved), and its large-data path through ``train.py`` trains at 69,745 instead of 57,544 texts/s
(``scripts/bench_static_train.py``). When training ends the thresholds become what glibc's own grow to (32 MB mmap,
64 MB trim) and ``malloc_trim`` returns the kept memory, so the export and the test that follow the fit do not stand
on the training's freed blocks (a 1M-row run's peak RSS: ``scripts/bench_scale.py``).

Linux with glibc only; elsewhere nothing changes. The thresholds are process-wide.
"""

from __future__ import annotations

import ctypes
import logging
import sys

import pytorch_lightning as pl

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
KEEP = {M_MMAP_THRESHOLD: 256 << 20, M_TRIM_THRESHOLD: 1 << 30}
AFTER = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 64 << 20}  # where glibc's dynamic thresholds end up (64-bit)


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:  # not glibc (musl has no libc.so.6)
        return None


def set_malloc_thresholds(values: dict[int, int]) -> bool:
    """``mallopt(param, value)`` for each item (:data:`KEEP`, :data:`AFTER`); whether every one applied."""
    libc = _glibc()
    return libc is not None and all(libc.mallopt(param, value) == 1 for param, value in values.items())


def release_freed_memory() -> None:
    """glibc's ``malloc_trim(0)``: free memory in the heap goes back to the OS now."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


class KeepFreedMemory(pl.Callback):
    """:data:`KEEP` from the start of training to its end, then :data:`AFTER` and the kept memory released."""

    def __init__(self) -> None:
        self.applied = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.applied = set_malloc_thresholds(KEEP)
        log.debug("malloc keeps freed memory while training (mmap 256 MB, trim 1 GB): %s", self.applied)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.applied:
            set_malloc_thresholds(AFTER)
            release_freed_memory()
            self.applied = False
