"""Time a bundle's Predictor end to end (tokenization included), as the frontier does, several times; print medians.

    python scripts/bench_predictor.py outputs/<run>/bundle --repeats 5
    # before/after a change, interleaved in one command (the "before" checkout's src first on the path):
    for i in 1 2 3; do PYTHONPATH=/tmp/before/src python scripts/bench_predictor.py B --tag before; \
                       python scripts/bench_predictor.py B --tag after; done

Batch-1 p50 on one thread (``Predictor.predict([text])``, no cache) and texts/s at batch 256 on all cores, with the
bundle's ``export.bench`` harness (:func:`speedtrain.bench.latency.benchmark_end_to_end`) on its benchmark texts.
One JSON line per repeat and a median line (``--json`` appends them to a file).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from speedtrain.bench.latency import BenchOptions, benchmark_end_to_end
from speedtrain.bundle.predictor import Predictor


def measure(bundle: Path, variant: str, options: BenchOptions) -> dict:
    texts = (bundle / "benchmark_texts.txt").read_text().splitlines()
    result = benchmark_end_to_end(
        lambda threads: Predictor.load(bundle, variant=variant, threads=threads, cache_size=0).predict, texts, options)
    largest = max(result["throughput"], key=int)
    return {"p50_ms": result["latency"]["p50_ms"], "p99_ms": result["latency"]["p99_ms"],
            "texts_per_s": result["throughput"][largest], "batch": int(largest)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--variant", default="fast")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tag", default="", help="a name for this code version in the output lines")
    parser.add_argument("--json", type=Path, help="append the lines to this file")
    args = parser.parse_args()
    options = BenchOptions(batch_sizes=(256,), min_time_s=2.0, throughput_time_s=1.5, throughput_min_reps=5)
    rows = []
    for i in range(args.repeats):
        rows.append({"tag": args.tag, "repeat": i + 1, **measure(args.bundle, args.variant, options)})
        print(json.dumps(rows[-1]), flush=True)
    median = {"tag": args.tag, "repeat": "median", "batch": rows[0]["batch"],
              **{k: statistics.median(r[k] for r in rows) for k in ("p50_ms", "p99_ms", "texts_per_s")}}
    print(json.dumps(median))
    if args.json:
        with args.json.open("a") as f:
            f.writelines(json.dumps(r) + "\n" for r in [*rows, median])


if __name__ == "__main__":
    main()
