"""Benchmark a bundle several times in one process and report medians and speed-up ratios.

    python scripts/bench_bundle.py outputs/<run>/bundle --repeats 3 --out docs/export_benchmark.md

Each repeat is one full ``speedtrain bench`` measurement (every variant, the teacher if its folder is here, the
fast variant end to end with tokenization). The table gives, per variant, the median over repeats of the batch-1
p50/p99 and of the throughput per batch size, and the ratios against the teacher (PyTorch eager, the "before")
and the student in PyTorch eager. Shared machines are noisy: the spread (min-max over repeats) is printed too.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from speedtrain.bundle.manifest import verify_bundle
from speedtrain.callbacks.export_bench import export_options
from speedtrain.config import compose_config
from speedtrain.export.build import TEXTS_FILE, benchmark_bundle


def measure(bundle: Path, repeats: int, overrides: list[str]) -> list[dict]:
    manifest = verify_bundle(bundle)
    options = export_options(compose_config(["paths.output_dir=.", *overrides]))
    previous = json.loads((bundle / "benchmark.json").read_text())
    texts = (bundle / TEXTS_FILE).read_text().splitlines()
    reports = []
    for i in range(repeats):
        rows = {n: {k: previous["variants"][n][k] for k in ("parity", "size_mb")} for n in manifest["variants"]}
        reports.append(benchmark_bundle(bundle, rows, texts, manifest["max_length"], manifest["labels"], options,
                                        manifest.get("teacher")))
        print(f"repeat {i + 1}/{repeats}: fast={reports[-1]['fast']}", flush=True)
    return reports


def table(reports: list[dict]) -> str:
    first = reports[0]
    rows = {"teacher": [r["teacher"] for r in reports]} if "teacher" in first else {}
    rows.update({name: [r["variants"][name] for r in reports] for name in first["variants"]})
    rows["end to end (fast + tokenizer)"] = [r["end_to_end"] for r in reports]
    sizes = list(first["variants"]["pytorch"]["throughput"])
    med = {name: {"p50": statistics.median(x["latency"]["p50_ms"] for x in xs),
                  "p99": statistics.median(x["latency"]["p99_ms"] for x in xs),
                  "spread": (min(x["latency"]["p50_ms"] for x in xs), max(x["latency"]["p50_ms"] for x in xs)),
                  "tput": {s: statistics.median(x["throughput"][s] for x in xs) for s in sizes}}
           for name, xs in rows.items()}
    m = first["machine"]
    lines = [f"{m['cpu']}, {m['cores']} cores; {len(reports)} repeats, medians; "
             f"{first['data']['texts']} test texts; fast variant per repeat: {[r['fast'] for r in reports]}", "",
             "| variant | test acc | agree % | p50 ms (min–max) | p99 ms | x teacher (p50) | x eager student (p50) | "
             + " | ".join(f"texts/s b{s}" for s in sizes) + " |",
             "|---|---|---|---|---|---|---|" + "---|" * len(sizes)]
    for name, v in med.items():
        parity = first["variants"].get(name, {}).get("parity", {})
        acc = parity.get("accuracy", first.get("teacher", {}).get("accuracy") if name == "teacher" else None)
        teacher = f"{med['teacher']['p50'] / v['p50']:.1f}" if "teacher" in med else "–"
        cells = [name, f"{acc:.2f}" if acc is not None else "–",
                 f"{parity['agreement']:.2f}" if parity else "–",
                 f"{v['p50']:.3f} ({v['spread'][0]:.3f}–{v['spread'][1]:.3f})", f"{v['p99']:.3f}", teacher,
                 f"{med['pytorch']['p50'] / v['p50']:.1f}", *[f"{v['tput'][s]:,.0f}" for s in sizes]]
        lines.append("| " + " | ".join(cells) + " |")
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    return "\n".join(lines) + f"\n\n{versions}.\n"


def gemm_gflops(threads: int, repeats: int = 30) -> float:
    """Measured fp32 GEMM rate of this CPU with ``threads`` threads (torch matmul, 8192x128 @ 128x512): the
    ceiling any runtime reaches on the encoder's matmuls."""
    import time

    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    a, b = torch.randn(8192, 128), torch.randn(128, 512)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - started)
    torch.set_num_threads(previous)
    return 2 * 8192 * 128 * 512 / statistics.median(times) / 1e9


def roofline(bundle: Path) -> str:
    """FLOPs per text of the student and the texts/s this CPU's GEMM rate allows at best (no overhead at all)."""
    import os

    from speedtrain.bundle.runtime import TextEncoder

    config = json.loads((bundle / "config.json").read_text())
    if "intermediate_size" not in config:  # the static families have no transformer layers to count
        return "Roofline: not computed (a static-family student: no transformer layers to count).\n"
    h, i, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    max_length = json.loads((bundle / "speedtrain.json").read_text())["max_length"]
    texts = (bundle / TEXTS_FILE).read_text().splitlines()
    _, mask = TextEncoder(bundle, max_length)(texts)
    tokens = float(mask.sum(1).mean())
    per_token = 2 * layers * (4 * h * h + 2 * h * i)  # Q, K, V, output projections and the FFN; attention is small
    one, cores = gemm_gflops(1), gemm_gflops(os.cpu_count() or 1)
    padded = per_token * max_length
    return (f"Roofline: {per_token / 1e6:.2f} MFLOP per token x {tokens:.1f} tokens per text (mean) = "
            f"{per_token * tokens / 1e6:.1f} MFLOP per text ({padded / 1e6:.1f} padded to {max_length}). "
            f"fp32 GEMM on this CPU: {one:.0f} GFLOP/s with 1 thread, {cores:.0f} with {os.cpu_count()}. "
            f"Best case without any overhead: batch-1 p50 >= {per_token * tokens / one / 1e6:.3f} ms (1 thread); "
            f"<= {cores * 1e9 / (per_token * tokens):,.0f} texts/s without padding, "
            f"<= {cores * 1e9 / padded:,.0f} padded to {max_length} (all cores).\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="write the markdown table here (and print it)")
    parser.add_argument("overrides", nargs="*", help="benchmark settings, e.g. export.bench.min_time_s=2")
    args = parser.parse_intermixed_args()
    text = table(measure(args.bundle, args.repeats, args.overrides)) + "\n" + roofline(args.bundle)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
