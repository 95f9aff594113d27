"""Recipes side by side: stage 1 (``+experiment=teacher``) or a distillation (``--experiment distill``) under several
override sets, data sets, splits and seeds.

    python scripts/teacher_recipes.py --data rotten_tomatoes.csv bbc_headlines.csv --splits 1 2 3 \\
        --recipe base= --recipe lr2e-4=teacher.lr=2e-4 --recipe unfrozen=teacher.freeze_embeddings=false \\
        --parallel 6 --out /tmp/recipes -- trainer=gpu

Each (recipe, data, split) is one ``train.py +experiment=teacher data=files data.train=<csv>
data.split_seed=<split>`` run with the recipe's overrides (comma-separated ``key=value``; ``name=`` alone is the
configured recipe) and the arguments after ``--``; ``--parallel`` runs go at once (a GPU holds several MiniLM
fine-tunes). Every teacher is fine-tuned afresh (``teacher.cache=false``), into its own folder under ``--out``.
``--experiment distill`` runs ``+experiment=distill export.enabled=false seed=<seed>`` for each of ``--seeds``
instead (students; their teachers come from the teacher cache when one matches, e.g. fine-tuned just before).
Writes ``results.json`` (every run: val/test accuracy, seconds) and ``results.md`` (per recipe and data set: val and
test accuracy per split and their mean) as runs finish; ``--deadline`` seconds after the start no new run begins.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_one(job: dict, out: Path, extra: list[str], start: float, deadline: float) -> dict:
    if time.time() - start > deadline:
        return {**job, "skipped": "deadline"}
    run_dir = out / f"{job['recipe']}-{Path(job['data']).stem}-{job['split']}-{job['seed']}"
    data = [] if job["data"] == "embedded" else ["data=files", f"data.train={job['data']}"]
    fixed = (["+experiment=teacher", "teacher.cache=false"] if job["experiment"] == "teacher"
             else ["+experiment=distill", "export.enabled=false", f"seed={job['seed']}"])
    cmd = [sys.executable, str(REPO / "train.py"), *fixed, *data, f"data.split_seed={job['split']}", "logger=csv",
           f"hydra.run.dir={run_dir}", *job["overrides"], *extra]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    seconds = time.time() - t0
    if proc.returncode != 0:
        return {**job, "error": proc.stderr[-2000:], "seconds": seconds}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {**job, "val": 100 * metrics["val/acc"], "test": 100 * metrics["test/acc"], "seconds": seconds}


def table(results: list[dict]) -> str:
    done = [r for r in results if "test" in r]
    splits = sorted({r["split"] for r in done})
    lines = ["| recipe | data | " + " | ".join(f"split {s} val / test" for s in splits) + " | mean val | mean test |",
             "|---|---|" + "---:|" * (len(splits) + 2)]
    for recipe in dict.fromkeys(r["recipe"] for r in done):
        for data in dict.fromkeys(Path(r["data"]).stem for r in done):
            runs = [r for r in done if r["recipe"] == recipe and Path(r["data"]).stem == data]
            if not runs:
                continue
            per_split = {s: [r for r in runs if r["split"] == s] for s in splits}  # seeds: their mean
            cells = [f"{statistics.mean(r['val'] for r in rs):.2f} / {statistics.mean(r['test'] for r in rs):.2f}"
                     if rs else "" for rs in per_split.values()]
            val = statistics.mean(r["val"] for r in runs)
            test = statistics.mean(r["test"] for r in runs)
            lines.append(f"| {recipe} | {data} | " + " | ".join(cells) + f" | {val:.2f} | {test:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", required=True,
                        help="CSV files with text and label columns; 'embedded': the default data set")
    parser.add_argument("--splits", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--recipe", action="append", required=True, help="name=key=value,key=value")
    parser.add_argument("--experiment", choices=("teacher", "distill"), default="teacher")
    parser.add_argument("--seeds", nargs="+", type=int, default=[42], help="the run's seed (distill: the student's)")
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--deadline", type=float, default=float("inf"))
    parser.add_argument("--out", type=Path, required=True)
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = []
    for spec in args.recipe:
        name, _, overrides = spec.partition("=")
        for data in args.data:
            for split in args.splits:
                for seed in args.seeds if args.experiment == "distill" else [None]:
                    jobs.append({"recipe": name, "data": data if data == "embedded" else str(Path(data).resolve()),
                                 "split": split, "seed": seed, "experiment": args.experiment,
                                 "overrides": [o for o in overrides.split(",") if o]})
    start, results = time.time(), []
    with ThreadPoolExecutor(args.parallel) as pool:
        for result in pool.map(lambda j: run_one(j, args.out, extra, start, args.deadline), jobs):
            results.append(result)
            print(json.dumps({k: v for k, v in result.items() if k != "error"}), flush=True)
            if "error" in result:
                print(result["error"], file=sys.stderr, flush=True)
            (args.out / "results.json").write_text(json.dumps(results, indent=1))
            (args.out / "results.md").write_text(table(results))
    print(table(results))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
