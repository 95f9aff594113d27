"""A bundle's tokenization, side by side in one process: the tokenizer itself against the word cache.

    python scripts/bench_tokenize.py --bundle outputs/<run>/bundle [--csv data.csv] [--rows 2560] [--rounds 9]

The texts: the CSV's ``text`` column, or (no ``--csv``) the bundle's own ``benchmark_texts.txt`` (its test texts).

Rows (all on the same texts, in order):
- ``tokenizers encode_batch_fast``: the Rust tokenizer, every core (what the bundle's encoder called before);
- ``encoder, no word cache``: ``TextEncoder.encode`` with the cache turned off (the ASCII batches skip the BERT
  normalizer);
- ``encoder, cold cache``: a new word cache every round (only the vocabulary's whole words in it);
- ``encoder, warm cache``: the encoder as a server runs it, after one pass over the texts.
Median microseconds per text over the rounds, texts/s and the ratio to the first row. The ids are checked equal.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import pandas as pd

from speedtrain.bundle.manifest import read_manifest
from speedtrain.bundle.runtime import TextEncoder
from speedtrain.bundle.wordpiece import WordPieceCache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True, type=Path)
    parser.add_argument("--csv", type=Path, help="a CSV with a 'text' column (default: the bundle's test texts)")
    parser.add_argument("--rows", type=int, default=2560)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()

    source = args.csv or args.bundle / "benchmark_texts.txt"
    texts = (pd.read_csv(source)["text"].astype(str).tolist() if args.csv else source.read_text().splitlines())
    texts = texts[: args.rows]
    max_length = read_manifest(args.bundle)["max_length"]
    cached = TextEncoder(args.bundle, max_length)
    if cached._words is None:
        sys.exit(f"{args.bundle}'s tokenizer is not one the word cache reproduces (BERT-style WordPiece)")
    plain = TextEncoder(args.bundle, max_length)
    plain._words = None
    cold = TextEncoder(args.bundle, max_length)
    rust = cached.tokenizer
    expected = [e.ids for e in rust.encode_batch(texts)]
    assert cached.encode(texts) == expected and plain.encode(texts) == expected, "the ids differ"

    def fresh_cold():
        cold._words = WordPieceCache.for_tokenizer(cold.tokenizer)
        start = time.perf_counter()
        cold.encode(texts)
        return time.perf_counter() - start

    def timed(fn):
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    rows = {
        "tokenizers encode_batch_fast": lambda: timed(lambda: rust.encode_batch_fast(texts)),
        "encoder, no word cache": lambda: timed(lambda: plain.encode(texts)),
        "encoder, cold cache": fresh_cold,
        "encoder, warm cache": lambda: timed(lambda: cached.encode(texts)),
    }
    seconds = {name: [] for name in rows}
    for _ in range(args.rounds):  # interleaved: the host's noise falls on every row alike
        for name, run in rows.items():
            seconds[name].append(run())
    ascii_share = sum(cached._words.accepts(t) for t in texts) / len(texts)
    print(f"# {platform.machine()}, {os.cpu_count()} cores; {len(texts)} texts of {source} (mean "
          f"{statistics.mean(map(len, texts)):.0f} characters, {ascii_share:.0%} through the cache), "
          f"{len(rust.get_vocab()):,}-piece vocabulary, max_length {max_length}; median of {args.rounds}\n")
    print("| tokenization | us / text | texts/s | vs encode_batch_fast |\n|---|---:|---:|---:|")
    base = statistics.median(seconds["tokenizers encode_batch_fast"])
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"| {name} | {median / len(texts) * 1e6:.1f} | {len(texts) / median:,.0f} | {base / median:.2f}x |")


if __name__ == "__main__":
    main()
