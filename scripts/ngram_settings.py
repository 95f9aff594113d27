"""The n-gram half of ``teacher=ensemble`` under several settings, side by side on the same splits.

    python scripts/ngram_settings.py --data rotten_tomatoes.csv embedded --splits 1 2 --set tol=1e-3 --set tol=1e-4

For each data set (a ``text,label`` CSV or ``embedded``), split (``data.split_seed``) and ``--set`` (comma-separated
``key=value`` of ``teacher.ngram`` read as OmegaConf dot-list values, no lists, over ``conf/teacher/ensemble.yaml``'s
values), fits the model of :func:`speedtrain.distill.ngram_teacher.ngram_log_probs` on the split's training texts
(the full fit and its out-of-fold fits, in this process) and prints val and test accuracy, the out-of-fold accuracy
on the training texts and the seconds it took, then a table of the means.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from speedtrain.config import config_dir
from speedtrain.distill.ngram_teacher import NgramSettings, ngram_log_probs
from speedtrain.frontier import job_splits


def splits_of(data: str, split: int):
    overrides = ["+experiment=distill", f"data.split_seed={split}"]
    if data != "embedded":
        overrides += ["data=files", f"data.train={Path(data).resolve()}"]
    with initialize_config_dir(str(config_dir()), version_base=None):
        cfg = compose("train", overrides=overrides)
    return job_splits(cfg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", required=True)
    parser.add_argument("--splits", nargs="+", type=int, default=[1])
    parser.add_argument("--set", action="append", required=True, dest="sets", help="key=value[,key=value]")
    args = parser.parse_args()
    base = OmegaConf.to_container(OmegaConf.load(Path(config_dir()) / "teacher" / "ensemble.yaml").ngram)
    rows = []
    for data in args.data:
        for split in args.splits:
            sp = splits_of(data, split)
            train = (list(sp["train"]["text"]), np.asarray(sp["train"]["label"]))
            evaluate = {n: (list(sp[n]["text"]), np.asarray(sp[n]["label"])) for n in ("validation", "test")}
            labels = 1 + max(int(y.max()) for y in (train[1], *(e[1] for e in evaluate.values())))
            for spec in args.sets:
                node = {**base, "n_jobs": 1, **OmegaConf.to_container(OmegaConf.from_dotlist(spec.split(",")))}
                started = time.perf_counter()
                out = ngram_log_probs(train, evaluate, [], labels, NgramSettings.from_config(node), seed=42)
                row = {"data": Path(data).stem, "split": split, "set": spec, "s": time.perf_counter() - started,
                       "oof": 100 * np.mean(out["train"].argmax(1) == train[1]),
                       **{n: 100 * np.mean(out[n].argmax(1) == evaluate[n][1]) for n in evaluate}}
                rows.append(row)
                print(f"{row['data']} split {split} {spec}: val {row['validation']:.2f} test {row['test']:.2f} "
                      f"out-of-fold {row['oof']:.2f} ({row['s']:.0f} s)", flush=True)
    print("\n| data | settings | splits | mean val | mean test | mean out-of-fold train | mean s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for data in dict.fromkeys(r["data"] for r in rows):
        for spec in args.sets:
            rs = [r for r in rows if r["data"] == data and r["set"] == spec]
            mean = {k: statistics.mean(r[k] for r in rs) for k in ("validation", "test", "oof", "s")}
            print(f"| {data} | `{spec}` | {len(rs)} | {mean['validation']:.2f} | {mean['test']:.2f} "
                  f"| {mean['oof']:.2f} | {mean['s']:.0f} |")


if __name__ == "__main__":
    main()
