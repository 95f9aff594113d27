"""Training texts/s of the static student: its large-data path (sparse tables, on-device batches of 1024: what the
recipe picks from 50K training inputs on) against the small-data recipe and, with ``--before-ref``, the code before
it, side by side, in one command, through ``train.py`` (Lightning's loop included).

    python scripts/bench_static_train.py                          # 100K rows, 1 epoch, 3 rounds
    python scripts/bench_static_train.py --rows 20000 --rounds 1  # quicker
    python scripts/bench_static_train.py --before-ref fe7f6ed --before-overrides data.on_device=false
        # + that commit's code (a git worktree), unchanged
    python scripts/bench_static_train.py --variant "no kept memory=trainer.speed.keep_freed_memory=false"

The rows are generated from the embedded data (each a product description with ~20% of its words dropped, its
chapter as the label; seeded) and written to a CSV; each variant runs
``train.py +experiment=baseline model=static data=files data.train=<csv> trainer.max_epochs=1`` with its own
overrides, no export, no test. Reported per variant, median over the rounds (the variants alternate within a round):

* ``train texts/s``: the median of the run's logged ``perf/samples_per_s`` (training steps, batch loading included);
* ``fit texts/s``: training rows / the fit stage's seconds (validation and checkpointing included);
* ``val acc`` after the epoch, and the ratio of each variant's train texts/s to the first one's.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
RUN = ["+experiment=baseline", "model=static", "data=files", "trainer.max_epochs=1", "export.enabled=false",
       "test=false", "logger=csv"]
# the small-data recipe at any size: dense AdamW over the whole table (clipped whole), the DataLoader's collate,
# batch 128 (no large-data path)
BEFORE = ["model.recipe.large=null", "module.optimizer._target_=torch.optim.AdamW"]


def write_rows(path: Path, rows: int, seed: int) -> None:
    """``rows`` labelled texts from the embedded data: a random description, ~20% of its words dropped."""
    sys.path.insert(0, str(REPO / "src"))
    from speedtrain.data import sources

    data = sources.hscodes("chapter")["train"]
    texts, labels = list(data["text"]), list(data["label"])
    rng = random.Random(seed)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for _ in range(rows):
            i = rng.randrange(len(texts))
            words = texts[i].split()
            kept = [w for w in words if rng.random() > 0.2] or words[:1]
            writer.writerow([" ".join(kept), labels[i]])


def run_variant(name: str, overrides: list[str], csv_path: Path, out: Path, src: Path) -> dict:
    folder = out / re.sub(r"[^A-Za-z0-9_.-]+", "_", name)  # a Hydra override value: no spaces, no brackets
    cmd = [sys.executable, str(src.parent / "train.py"), *RUN, f"data.train={csv_path}", f"hydra.run.dir={folder}",
           *overrides]
    env = {**os.environ, "PYTHONPATH": str(src), "WANDB_MODE": "disabled"}
    done = subprocess.run(cmd, cwd=src.parent, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    metrics = json.loads((folder / "metrics.json").read_text())
    (log,) = folder.glob("csv/version_*/metrics.csv")
    speed = pd.read_csv(log)["perf/samples_per_s"].dropna()
    return {"train": float(speed.median()), "fit": metrics["data"]["train"] / metrics["timings"]["fit_s"],
            "val": 100 * metrics["val/acc"], "batch": metrics["batch"]["batch_size"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--before-ref", default=None, help="also run this git commit's code with its own recipe")
    parser.add_argument("--before-overrides", nargs="*", default=[], help="overrides for --before-ref's runs, e.g. "
                        "data.on_device=false for a commit before data.on_device existed (fe7f6ed)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=OVERRIDES",
                        help="another variant of this code: a name, '=', space-separated overrides, e.g. "
                        "'no kept memory=trainer.speed.keep_freed_memory=false'")
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_static_train-"))
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / f"rows-{args.rows}.csv"
    write_rows(csv_path, args.rows, args.seed)
    variants = {"large-data path (the recipe here)": (REPO / "src", []),
                "small-data recipe (dense AdamW, DataLoader, batch 128)": (REPO / "src", BEFORE)}
    if args.before_ref:
        tree = out / f"tree-{args.before_ref}"
        if not tree.exists():
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), args.before_ref],
                           check=True, capture_output=True)
        variants[f"commit {args.before_ref}"] = (tree / "src", list(args.before_overrides))
    for spec in args.variant:
        name, _, overrides = spec.partition("=")
        variants[name] = (REPO / "src", overrides.split())
    results: dict[str, list[dict]] = {name: [] for name in variants}
    for r in range(args.rounds):
        for name, (src, overrides) in variants.items():
            results[name].append(run_variant(f"{name}-{r}", overrides, csv_path, out, src))
            print(f"round {r + 1}: {name}: {results[name][-1]}", file=sys.stderr, flush=True)
    if args.before_ref:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(out / f"tree-{args.before_ref}")],
                       check=False, capture_output=True)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores; {args.rows:,} rows "
          f"({int(args.rows * 0.8):,} train), 1 epoch, median of {args.rounds} rounds\n")
    print("| variant | batch | train texts/s | fit texts/s | val acc | train texts/s vs the first |")
    print("|---|---:|---:|---:|---:|---:|")
    first = None
    for name, runs in results.items():
        train = statistics.median(r["train"] for r in runs)
        fit = statistics.median(r["fit"] for r in runs)
        val = statistics.median(r["val"] for r in runs)
        first = first or train
        print(f"| {name} | {runs[0]['batch']} | {train:,.0f} | {fit:,.0f} | {val:.2f} | {train / first:.2f}x |")


if __name__ == "__main__":
    main()
