"""Label-scarce distillation: keep 10% / 30% of the training labels, hand the rest to the teacher as bare texts.

    python scripts/label_scarce.py --out docs/results/label-scarce            # 10% and 30%, seeds 1-3
    python scripts/label_scarce.py --fractions 0.1 --seeds 1 --out /tmp/ls    # one cell, a quick look

For each fraction and seed, on the embedded data's seeded split (validation and test unchanged): a stratified
sample of that share of the training split keeps its labels (at least one text per class); the other training
texts become ``unlabeled.txt``. Then, all through ``train.py`` (``+experiment=distill data=files``):

- the teacher, fine-tuned on the labelled part (stage 1, ``teacher.seed`` = the seed; its test accuracy);
- the student (the main command's family) on the labelled part only;
- the same student with ``distill.unlabeled=unlabeled.txt`` (the same teacher, from the teacher cache);

and, in this process, TF-IDF + LR and fastText (``speedtrain.bench.peers``) on the labelled part. Writes
``results.json`` (every run) and ``results.md`` (mean ± std over seeds, test accuracy in points) into ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from speedtrain.bench.peers import FastTextPeer, TfidfLogReg, accuracy
from speedtrain.data import sources
from speedtrain.data.splits import make_splits

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ("teacher", "student", "student_unlabeled", "tfidf_lr", "fasttext")


def labelled_sample(labels: list[str], fraction: float, seed: int) -> np.ndarray:
    """Row indices of a stratified ``fraction`` of ``labels`` (ceil per class, at least one), seeded."""
    rng = np.random.default_rng(seed)
    by_class = defaultdict(list)
    for i, label in enumerate(labels):
        by_class[label].append(i)
    keep = []
    for label in sorted(by_class):
        rows = np.array(by_class[label])
        keep.extend(rng.choice(rows, size=max(1, math.ceil(fraction * len(rows))), replace=False).tolist())
    return np.sort(np.array(keep))


def write_csv(path: Path, texts, labels) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(zip(texts, labels))


def train(run_dir: Path, folder: Path, seed: int, *extra: str) -> dict:
    """``python train.py +experiment=distill`` on the fraction's files; its metrics.json."""
    command = [sys.executable, "train.py", "+experiment=distill", "data=files", f"data.train={folder / 'train.csv'}",
               f"data.val={folder / 'val.csv'}", f"data.test={folder / 'test.csv'}", f"seed={seed}",
               f"teacher.seed={seed}", "logger=none", "export.enabled=false", "trainer.enable_progress_bar=false",
               f"hydra.run.dir={run_dir}", *extra]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["wall_s"] = time.perf_counter() - started
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.3])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--no-fasttext", action="store_true")
    parser.add_argument("--extra", nargs="*", default=[], help="more train.py overrides for the students")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    splits = make_splits(sources.hscodes("chapter"), 0.1, 0.1, seed=42)  # data=files carves nothing: same split
    train_texts, train_labels = list(splits["train"]["text"]), splits["train"].features["label"].int2str(
        list(splits["train"]["label"]))
    names = splits["train"].features["label"]
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else []
    done_cells = {(r["fraction"], r["seed"]) for r in results}
    for fraction in args.fractions:
        for seed in args.seeds:
            if (fraction, seed) in done_cells:
                continue
            folder = args.out / f"data-{fraction:g}-{seed}"
            folder.mkdir(exist_ok=True)
            keep = labelled_sample(train_labels, fraction, seed)
            rest = np.setdiff1d(np.arange(len(train_texts)), keep)
            write_csv(folder / "train.csv", [train_texts[i] for i in keep], [train_labels[i] for i in keep])
            for split, name in (("validation", "val"), ("test", "test")):
                write_csv(folder / f"{name}.csv", splits[split]["text"], names.int2str(list(splits[split]["label"])))
            (folder / "unlabeled.txt").write_text("".join(train_texts[i] + "\n" for i in rest), encoding="utf-8")
            row = {"fraction": fraction, "seed": seed, "labelled": len(keep), "unlabeled": len(rest)}
            plain = train(folder / "run-plain", folder, seed, *args.extra)
            bare = train(folder / "run-unlabeled", folder, seed, f"distill.unlabeled={folder / 'unlabeled.txt'}",
                         *args.extra)
            row.update(teacher=100 * plain["teacher/test_acc"], student=100 * plain["test/acc"],
                       student_unlabeled=100 * bare["test/acc"], student_s=plain["wall_s"],
                       student_unlabeled_s=bare["wall_s"], unlabeled_used=bare.get("distill/unlabeled"))
            test_texts, test_labels = list(splits["test"]["text"]), list(splits["test"]["label"])
            peers = [TfidfLogReg()] + ([] if args.no_fasttext else [FastTextPeer(seed=seed)])
            lab_texts = [train_texts[i] for i in keep]
            lab_ids = names.str2int([train_labels[i] for i in keep])
            for peer in peers:
                peer.fit(lab_texts, lab_ids, list(splits["validation"]["text"]), list(splits["validation"]["label"]))
                row[peer.name] = accuracy(peer.predict(test_texts), test_labels)
            results.append(row)
            results_path.write_text(json.dumps(results, indent=2) + "\n")
            print(json.dumps(row), flush=True)
    write_table(results, args.out / "results.md")
    print((args.out / "results.md").read_text())


def write_table(results: list[dict], path: Path) -> None:
    """Mean ± std (over seeds) of each column's test accuracy per fraction, and the student's share of the teacher."""
    lines = ["| labels kept | labelled / unlabelled texts | " + " | ".join(COLUMNS)
             + " | student + unlabelled / teacher | seeds |", "|" + "---|" * (len(COLUMNS) + 4)]
    for fraction in sorted({r["fraction"] for r in results}):
        rows = [r for r in results if r["fraction"] == fraction]
        cells = []
        for column in COLUMNS:
            values = [r[column] for r in rows if column in r]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.2f} ± {std:.2f}" if values else "–")
        share = statistics.mean(r["student_unlabeled"] / r["teacher"] for r in rows) * 100
        lines.append(f"| {fraction:.0%} | {rows[0]['labelled']:,} / {rows[0]['unlabeled']:,} | " + " | ".join(cells)
                     + f" | {share:.1f}% | {len(rows)} |")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
