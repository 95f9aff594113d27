"""The options of ``speedtrain serve`` (one dataclass, its flags have the same names) and their checks.

    options = ServeOptions(bundle="outputs/<run>/bundle", workers=2).check()  # a UserError names a bad value
    options.workers, options.threads                                          # 0s resolved from the cores
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from speedtrain.bundle.manifest import read_manifest
from speedtrain.errors import UserError

OPTIONS_ENV = "SPEEDTRAIN_SERVE_OPTIONS"  # the options, as JSON, for a worker the app factory starts
API_KEY_ENV = "SPEEDTRAIN_API_KEY"

@dataclasses.dataclass
class ServeOptions:
    """Everything ``speedtrain serve`` takes (its flags have the same names)."""

    bundle: str = ""
    variant: str = "fast"
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 0  # processes sharing the port, each with its own model, batcher and cache; 0: one per core
    threads: int = 0  # model threads per worker; 0: the cores divided among the workers
    pin: bool = True  # several workers: give each its own cores (when they go round), halving hand-off latency
    max_batch_size: int = 64  # texts per model call
    max_wait_ms: float = 0.0  # after an idle spell, how long the batcher waits for company (0: batches form
    # from what arrives while the model is busy; measured here: 0 gave 5.6 vs 7.2 ms p50 at 8 connections)
    max_queue: int = 2048  # texts waiting for the model (per worker); beyond: 503
    max_texts: int = 256  # texts per request; beyond: 413
    max_text_chars: int = 2000  # characters per text; beyond: 413 (the model reads at most max_length tokens)
    max_body_bytes: int = 1 << 20  # request body; beyond: 413
    cache_size: int = 65536  # results kept per worker (LRU); 0 turns the cache off
    api_key: str | None = None  # when set, requests need "X-API-Key: <key>" or "Authorization: Bearer <key>"
    graceful_timeout_s: float = 30.0  # on SIGTERM/SIGINT, how long in-flight requests get to finish
    log_level: str = "warning"

    def check(self) -> ServeOptions:
        """Check every value (a :class:`UserError` names the first bad one and its fix) and resolve the automatic
        ones (``workers`` and ``threads`` 0)."""
        positive = ("max_batch_size", "max_queue", "max_texts", "max_text_chars", "max_body_bytes")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise UserError(f"--{name.replace('_', '-')}={value} must be a positive integer")
        for name in ("workers", "threads", "cache_size"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name.replace('_', '-')}={getattr(self, name)} must be >= 0")
        if self.max_wait_ms < 0:
            raise UserError(f"--max-wait-ms={self.max_wait_ms} must be >= 0 (0: never wait for company)")
        if not 0 < self.port < 65536:
            raise UserError(f"--port={self.port} must be between 1 and 65535")
        if self.max_queue < self.max_batch_size:
            raise UserError(f"--max-queue={self.max_queue} must be >= --max-batch-size={self.max_batch_size}")
        if not (Path(self.bundle) / "speedtrain.json").is_file():
            raise UserError(f"{self.bundle!r} is not a bundle (no speedtrain.json); pass the bundle folder a run "
                            "wrote, e.g. outputs/<date>/<time>/bundle")
        if not self.workers:
            self.workers = len(available_cores())
        if not self.threads:
            self.threads = max(1, len(available_cores()) // self.workers)
        manifest = read_manifest(self.bundle)
        if self.variant != "fast" and self.variant not in manifest["variants"]:
            raise UserError(f"--variant={self.variant} is not in the bundle {self.bundle}; it has "
                            f"{sorted(manifest['variants'])} (or 'fast')")
        return self


def available_cores() -> list[int]:
    """The CPUs this process may run on (a container's or ``taskset``'s share, not the whole machine)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))
