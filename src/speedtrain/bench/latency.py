"""Latency, throughput and memory of a runner on real texts: the numbers a bundle ships with.

    rows = benchmark_runner(load, encoder, texts, BenchOptions())

Latency: batch 1, ``latency_threads`` threads (1), one text after another from ``texts``, after a warm-up; at least
``min_reps`` calls and ``min_time_s`` seconds, so p99 rests on hundreds of samples. Throughput: texts per second at
each batch size with all cores (``threads``), median over repeated calls on consecutive batches of ``texts``
(padded to the longest text of each batch, as a server would; all of ``texts`` when they are fewer than the
batch size). Model time only, inputs tokenized beforehand; :func:`benchmark_end_to_end` adds tokenization.
Memory: growth of the process's resident memory from before loading the variant to the peak while running its
batches (psutil, sampled after each call) — approximate: in one process, memory that earlier variants freed
is reused, so a small variant can read near 0.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from collections.abc import Callable, Sequence

import numpy as np
import psutil

from speedtrain.bundle.manifest import library_versions
from speedtrain.bundle.runtime import Runner, TextEncoder


@dataclasses.dataclass
class BenchOptions:
    """What to measure and how long (the ``export.bench`` config node)."""

    batch_sizes: Sequence[int] = (1, 8, 32, 128, 256)
    latency_threads: int = 1
    threads: int | None = None  # throughput threads; None: all cores
    warmup: int = 20
    min_reps: int = 300  # latency calls at least ...
    min_time_s: float = 1.0  # ... and at least this long
    max_reps: int = 20000
    throughput_time_s: float = 0.3  # per batch size, after the warm-up calls ...
    throughput_warmup: int = 2
    throughput_min_reps: int = 3  # ... and at least this many calls


def machine_info() -> dict:
    """The CPU (model, cores), the GPU if any, and library versions: a benchmark holds only for these."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": ", ".join(gpus) or None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": library_versions(),
    }


def timed_calls(fn: Callable[[int], object], warmup: int, min_reps: int, min_time_s: float, max_reps: int) -> np.ndarray:
    """Seconds per call of ``fn(i)`` for i = 0, 1, ... after ``warmup`` untimed calls."""
    for i in range(warmup):
        fn(i)
    times, started = [], time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - started < min_time_s):
        t = time.perf_counter()
        fn(len(times))
        times.append(time.perf_counter() - t)
    return np.asarray(times)


def percentiles(times: np.ndarray) -> dict:
    """p50/p95/p99/mean in milliseconds, and how many calls they rest on."""
    p50, p95, p99 = np.percentile(times, [50, 95, 99]) * 1e3
    return {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99),
            "mean_ms": float(times.mean() * 1e3), "reps": int(times.size)}


def benchmark_runner(
    load: Callable[[int | None], Runner], encoder: TextEncoder, texts: Sequence[str], options: BenchOptions,
) -> dict:
    """Latency at batch 1 (``latency_threads``), throughput per batch size (``threads``) and memory of one variant.

    Args:
        load: ``load(threads) -> runner``; called once per thread setting.
        encoder: the variant's tokenization (inputs are encoded before timing).
        texts: real inputs (the test split); batches cycle through them.
    """
    process = psutil.Process()
    rss_before = process.memory_info().rss
    runner = load(options.latency_threads)
    singles = [encoder([text]) for text in texts[:512]]
    times = timed_calls(lambda i: runner(*singles[i % len(singles)]), options.warmup, options.min_reps,
                        options.min_time_s, options.max_reps)
    result = {"latency": percentiles(times), "throughput": {}}
    runner = load(options.threads)
    peak = process.memory_info().rss
    for size in options.batch_sizes:
        starts = range(0, max(1, len(texts) - size + 1), size)[:8]  # 8 batches, not the whole split encoded
        batches = [encoder(list(texts[i:i + size])) for i in starts]
        batches = batches or [encoder(list(texts[:size]))]
        times = timed_calls(lambda i: runner(*batches[i % len(batches)]), options.throughput_warmup,
                            options.throughput_min_reps, options.throughput_time_s, 10000)
        result["throughput"][str(size)] = float(len(batches[0][0]) / np.median(times))
        peak = max(peak, process.memory_info().rss)
    result["memory_mb"] = float(max(0, peak - rss_before) / 2**20)
    return result


def benchmark_end_to_end(
    make_predict: Callable[[int | None], Callable[[list[str]], object]], texts: Sequence[str], options: BenchOptions,
) -> dict:
    """Like :func:`benchmark_runner` for ``make_predict(threads)(texts)``, which tokenizes too (the ``Predictor``,
    without its cache)."""
    predict = make_predict(options.latency_threads)
    one = [[text] for text in texts[:512]]
    times = timed_calls(lambda i: predict(one[i % len(one)]), options.warmup, options.min_reps, options.min_time_s,
                        options.max_reps)
    result = {"latency": percentiles(times), "throughput": {}}
    predict = make_predict(options.threads)
    for size in options.batch_sizes:
        batches = [list(texts[i:i + size]) for i in range(0, max(1, len(texts) - size + 1), size)[:8]]
        times = timed_calls(lambda i: predict(batches[i % len(batches)]), options.throughput_warmup,
                            options.throughput_min_reps, options.throughput_time_s, 10000)
        result["throughput"][str(size)] = float(len(batches[0]) / np.median(times))
    return result
