"""Teacher, baseline student and distilled student over several seeds -> a markdown table (mean ± std).

    python scripts/distill_report.py                                   # 3 seeds on the embedded data
    python scripts/distill_report.py --seeds 42 --variant "aug4=distill.augment.copies=4" --no-baseline
    python scripts/distill_report.py --out docs/distillation.md        # write the table into that file

Each seed runs `python train.py +experiment=baseline seed=S` and `python train.py +experiment=distill seed=S`
(whose stage 1 fine-tunes the teacher with that seed unless the teacher cache already holds it) in their own
processes, plus one distillation run per ``--variant NAME=OVERRIDES``. The data split is the same for every
seed (data.split_seed), so the TF-IDF + logistic-regression reference is one number. Runs go under
``--runs-dir``; the teacher cache is the user's (``$SPEEDTRAIN_CACHE``). Select on val, report test.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- distill_report:begin -->", "<!-- distill_report:end -->"


def train(overrides: list[str], run_dir: Path) -> dict:
    """Run train.py with ``overrides`` in a fresh process; its metrics.json plus the wall time."""
    cmd = [sys.executable, str(REPO / "train.py"), *overrides, "logger=csv", "trainer.enable_progress_bar=false",
           f"hydra.run.dir={run_dir}"]
    print("$", shlex.join(cmd[1:]), flush=True)
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {shlex.join(cmd)}\n{done.stderr[-3000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["wall_s"] = time.perf_counter() - started
    return metrics


def stats(values: list[float]) -> str:
    """``mean ± std`` in percent (std over seeds; a single value has none)."""
    mean = statistics.mean(values) * 100
    return f"{mean:.2f} ± {statistics.stdev(values) * 100:.2f}" if len(values) > 1 else f"{mean:.2f}"


def table(rows: dict[str, list[dict]], teacher: list[dict], tfidf: dict | None, seeds: list[int]) -> str:
    """The markdown table: one row per model, mean ± std over the seeds."""
    lines = [f"Seeds {', '.join(map(str, seeds))}; accuracy in % (mean ± std over seeds).", "",
             "| model | params | val acc | test acc | share of teacher (test) | wall time / run |",
             "|---|---:|---:|---:|---:|---:|"]
    if tfidf:
        lines.append(f"| TF-IDF + LR (word 1-2 + char 2-5 grams, C={tfidf['C']}) | – | {tfidf['val/acc'] * 100:.2f} "
                     "| "
                     f"{tfidf['test/acc'] * 100:.2f} | – | {tfidf['seconds']:.0f} s |")
    t_test = [m["teacher/test_acc"] for m in teacher]
    fit = [m["teacher/fit_s"] for m in teacher if "teacher/fit_s" in m]
    fit_time = f"{statistics.median(fit) / 60:.1f} min (stage 1)" if fit else "cached"
    lines.append(f"| teacher: {teacher[0].get('teacher/source', '?')}, fine-tuned | {teacher[0]['teacher/params']:,} | "
                 f"{stats([m['teacher/val_acc'] for m in teacher])} | {stats(t_test)} | 100% | {fit_time} |")
    for name, runs in rows.items():
        share = [m["test/acc"] / t for m, t in zip(runs, t_test)]
        lines.append(f"| {name} | {runs[0]['params']['params_total']:,} | {stats([m['val/acc'] for m in runs])} | "
                     f"{stats([m['test/acc'] for m in runs])} | {statistics.mean(share) * 100:.1f}% | "
                     f"{statistics.median(m['wall_s'] for m in runs) / 60:.1f} min |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=OVERRIDES",
                        help="one more distillation run per seed with these space-separated overrides")
    parser.add_argument("--no-baseline", action="store_true", help="skip the baseline student")
    parser.add_argument("--no-tfidf", action="store_true", help="skip the TF-IDF + LR reference")
    parser.add_argument("--overrides", default="", help="space-separated overrides for every run")
    parser.add_argument("--runs-dir", type=Path, default=REPO / "outputs" / "distill_report")
    parser.add_argument("--out", type=Path, help="markdown file whose report section is replaced (or appended)")
    args = parser.parse_args()

    common = shlex.split(args.overrides)
    plans = {} if args.no_baseline else {"baseline student (labels only)": ["+experiment=baseline"]}
    plans["distilled student (+experiment=distill)"] = ["+experiment=distill"]
    for variant in args.variant:
        name, _, overrides = variant.partition("=")
        plans[f"distilled: {name}"] = ["+experiment=distill", *shlex.split(overrides)]
    rows: dict[str, list[dict]] = {name: [] for name in plans}
    teacher = []
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for seed in args.seeds:
        for i, (name, overrides) in enumerate(plans.items()):
            metrics = train([*overrides, *common, f"seed={seed}"], args.runs_dir / stamp / f"seed{seed}-{i}")
            rows[name].append(metrics)
            if "teacher/test_acc" in metrics and len(teacher) < len(rows[name]):
                teacher.append(metrics)
    tfidf = None
    if not args.no_tfidf:
        sys.path.insert(0, str(REPO / "scripts"))
        from tfidf_baseline import tfidf_reference

        tfidf = tfidf_reference()
    report = table(rows, teacher, tfidf, args.seeds)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    report += f"\nMachine: {cpu}, {os.cpu_count()} cores; overrides: `{args.overrides or 'none'}`.\n"
    print(report)
    (args.runs_dir / stamp).mkdir(parents=True, exist_ok=True)
    (args.runs_dir / stamp / "report.json").write_text(json.dumps({"rows": rows, "teacher": teacher, "tfidf": tfidf},
                                                                  indent=1, default=str))
    if args.out:
        text = args.out.read_text() if args.out.exists() else ""
        block = f"{BEGIN}\n{report}{END}"
        if BEGIN in text:
            text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END):]
        else:
            text = text + ("\n" if text else "") + block + "\n"
        args.out.write_text(text)


if __name__ == "__main__":
    main()
