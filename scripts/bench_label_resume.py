"""Teacher labelling killed halfway and started again: it resumes from its shards, and the student ends as an
uninterrupted run's does.

    python scripts/bench_label_resume.py --teacher ~/.cache/speedtrain/teachers/<key>   # 100K unlabelled texts
    python scripts/bench_label_resume.py --teacher <folder> --texts 20000               # quicker

Three runs of ``train.py +experiment=distill teacher.path=<folder> distill.unlabeled=<csv> export.enabled=false``
(the texts generated from the embedded data, seeded):

1. ``killed``: SIGKILL to its process group once half of the labelling's shards are on disk;
2. ``resumed``: the same command and cache again (its log says how many texts it reused);
3. ``straight``: the same command and cache without the teacher's outputs (deleted), labelled all again in one go.

Printed: each run's wall time, the texts the resumed run reused, and val/test accuracy of ``resumed`` and
``straight`` (equal when the resume is exact).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from bench_static_train import write_rows  # noqa: E402  (the same generated texts)


def command(args, texts: Path, run: Path, cache: Path) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), "+experiment=distill", f"teacher.path={args.teacher}",
            f"distill.unlabeled={texts}", "export.enabled=false", "logger=csv", f"hydra.run.dir={run}",
            f"paths.cache_dir={cache}", *args.override]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help="a fine-tuned teacher folder (teacher.path)")
    parser.add_argument("--texts", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--override", action="append", default=[], help="more train.py overrides")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_label_resume-"))
    out.mkdir(parents=True, exist_ok=True)
    rows = out / "rows.csv"
    write_rows(rows, args.texts, args.seed)
    texts = out / "unlabeled.csv"
    with rows.open(newline="") as src, texts.open("w", newline="") as dst:  # the texts alone, no labels
        writer = csv.writer(dst)
        writer.writerow(["text"])
        writer.writerows([row["text"]] for row in csv.DictReader(src))
    env = {**os.environ, "WANDB_MODE": "disabled"}
    results = {}

    started = time.time()  # 1. killed once half the shards are written
    with (out / "killed.log").open("w") as log:
        proc = subprocess.Popen(command(args, texts, out / "killed", out / "cache"), cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        half = max(1, args.texts // 1024 // 2)  # half of the unlabelled texts' shards (the transfer set adds more)
        while proc.poll() is None:
            if len(list((out / "cache" / "logits").glob("*.parts/*.npz"))) >= half:
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.5)
        proc.wait()
    shards = len(list((out / "cache" / "logits").glob("*.parts/*.npz")))
    results["killed"] = {"seconds": time.time() - started, "shards_on_disk": shards, "code": proc.returncode}

    for name in ("resumed", "straight"):
        if name == "straight":  # the same cache (vocabulary, token ids) without the teacher's outputs: all again
            for path in (out / "cache" / "logits").iterdir():
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        cache = out / "cache"
        started = time.time()
        done = subprocess.run(command(args, texts, out / name, cache), cwd=REPO, env=env, capture_output=True,
                              text=True)
        if done.returncode:
            raise SystemExit(f"{name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        metrics = json.loads((out / name / "metrics.json").read_text())
        log = done.stdout + done.stderr
        reused = re.search(r"reused ([\d,]+) of ([\d,]+) texts", log)
        results[name] = {"seconds": time.time() - started, "val_acc": 100 * metrics["val/acc"],
                         "test_acc": 100 * metrics["test/acc"], "reused": reused.group(0) if reused else None,
                         "transfer_set": metrics.get("distill/transfer_set")}
    print(json.dumps(results, indent=1))
    same = all(results["resumed"][k] == results["straight"][k] for k in ("val_acc", "test_acc"))
    print(f"\n{args.texts:,} unlabelled texts: killed after {results['killed']['seconds']:.0f} s with "
          f"{results['killed']['shards_on_disk']} shards on disk; the restart {results['resumed']['reused']} and took "
          f"{results['resumed']['seconds']:.0f} s; uninterrupted: {results['straight']['seconds']:.0f} s. Resumed "
          f"val/test {results['resumed']['val_acc']:.2f} / {results['resumed']['test_acc']:.2f}, straight "
          f"{results['straight']['val_acc']:.2f} / {results['straight']['test_acc']:.2f}: "
          f"{'the same' if same else 'DIFFERENT'}.")


if __name__ == "__main__":
    main()
