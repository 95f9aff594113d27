"""Padding every text of a batch to its longest vs grouping texts of similar token counts (`TextEncoder.groups`).

    python scripts/bench_padding.py outputs/<run>/bundle [--variant onnx] [--threads 1] [--repeats 5]

Both on the bundle's test texts, same runner, interleaved in one process; median ms per text of ``--repeats``
rounds over 2,048 texts, at batch sizes 8, 64 and 256 (what the server's micro-batches hold).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path


from speedtrain.bench.latency import machine_info
from speedtrain.bundle.manifest import read_manifest
from speedtrain.bundle.runtime import TextEncoder, load_runner


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bundle")
    parser.add_argument("--variant", default="fast")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    manifest = read_manifest(args.bundle)
    variant = manifest["fast"] if args.variant == "fast" else args.variant
    runner = load_runner(args.bundle, variant, args.threads)
    encoder = TextEncoder(args.bundle, manifest["max_length"])
    pool = (Path(args.bundle) / "benchmark_texts.txt").read_text().splitlines()
    texts = [pool[i % len(pool)] for i in range(2048)]

    def padded(batch):
        runner(*encoder(batch))

    def grouped(batch):
        for _, ids, mask in encoder.groups(batch, len(batch)):
            runner(ids, mask)

    def tokens(batch, grouped_):
        if grouped_:
            return sum(ids.size for _, ids, _ in encoder.groups(batch, len(batch)))
        return encoder(batch)[0].size

    info = machine_info()
    print(f"{info['cpu']}, {variant}, {args.threads} thread(s); ms per text, median of {args.repeats}")
    print("| batch | padded ms | grouped ms | ratio | padded tokens / real | grouped tokens / real |")
    print("|---|---|---|---|---|---|")
    for size in (8, 64, 256):
        batches = [texts[i:i + size] for i in range(0, len(texts), size)]
        real = sum(int(encoder(b)[1].sum()) for b in batches)
        times = {"padded": [], "grouped": []}
        for f in (padded, grouped):  # warm-up
            f(batches[0])
        for _ in range(args.repeats):
            for name, f in (("padded", padded), ("grouped", grouped)):
                start = time.perf_counter()
                for b in batches:
                    f(b)
                times[name].append((time.perf_counter() - start) / len(texts) * 1000)
        p, g = statistics.median(times["padded"]), statistics.median(times["grouped"])
        pt = sum(tokens(b, False) for b in batches) / real
        gt = sum(tokens(b, True) for b in batches) / real
        print(f"| {size} | {p:.3f} | {g:.3f} | {p / g:.2f}x | {pt:.2f} | {gt:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
