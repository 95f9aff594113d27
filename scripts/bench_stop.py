"""How long a run takes to stop after SIGTERM, what it saved, and what the resumed run does (issue 26).

    python scripts/bench_stop.py                      # static and bert_tiny students, MiniLM stage 1, this machine
    python scripts/bench_stop.py --cases static --after 5 --repeats 3

Each case starts ``python train.py`` on the embedded data (a first, uninterrupted start fills the data caches, so
the timed starts train within seconds), sends SIGTERM ``--after`` seconds after the first training step is logged,
and measures the seconds from the signal to the process's exit (the step that runs, the checkpoint write, the
teardown), the exit status, the checkpoint's size and step. The run is then resumed (``resume=<run>``) and its
step count compared with the uninterrupted run's. A scheduler's grace period (Kubernetes 30 s, SLURM's KillWait
30 s by default) must exceed the stop time. Also the teacher's labelling rate: a stop there waits for one shard of
1,024 texts. Medians over --repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
BASE = ["logger=none", "export.enabled=false", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1"]
CASES = {  # name -> overrides; every case trains long enough for a stop to land mid-epoch
    "static": ["+experiment=baseline", "model=static", "trainer.max_epochs=10"],
    "bert_tiny": ["+experiment=baseline", "model=bert_tiny", "trainer.max_epochs=3"],
    "minilm_teacher": ["+experiment=teacher", "trainer.max_epochs=1"],  # the fit of stage 1: MiniLM fine-tuning
}


def train_py(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "train.py"), *BASE, *args], cwd=cwd, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_for_training(run_dir: Path, proc: subprocess.Popen, timeout: float = 600) -> None:
    """Until the run's log shows its fit started (Lightning's 'Loading `train_dataloader`' line)."""
    log = run_dir / "train.log"
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"the run ended before training: {proc.stderr.read()[-2000:]}")
        if log.is_file() and "train_dataloader" in log.read_text():
            return
        time.sleep(0.05)
    raise TimeoutError("no training after 10 minutes")


def one_stop(case: list[str], after: float, root: Path, number: int) -> dict:
    run_dir = root / f"run{number}"
    proc = train_py(*case, f"hydra.run.dir={run_dir}", cwd=root)
    wait_for_training(run_dir, proc)
    time.sleep(after)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=600)[1]
    stop_s = time.monotonic() - sent
    line = next((x for x in err.splitlines() if x.startswith("speedtrain: stopped")), "")
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=False, mmap=True) if ckpt.is_file() else {}
    return {"stop_s": stop_s, "exit": proc.returncode, "step": saved.get("global_step"),
            "ckpt_mb": ckpt.stat().st_size / 1e6 if ckpt.is_file() else None, "line": line, "run": run_dir}


def labelling_rate(texts: int = 1024) -> float:
    """Texts per second of the MiniLM teacher (64 tokens, batch 128) on this machine: a stop waits one shard."""
    from speedtrain.builders import build_datamodule
    from speedtrain.config import compose_config
    from speedtrain.distill.logit_cache import teacher_outputs
    from speedtrain.models.teacher import load_classifier, load_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        dm = build_datamodule(compose_config(["+experiment=baseline", f"paths.output_dir={tmp}"]))
        dm.prepare()
    sample = list(dm.splits["train"]["text"])[:texts]
    teacher, tokenizer = load_classifier("minilm", num_labels=dm.num_labels), load_tokenizer("minilm")
    teacher_outputs(teacher, tokenizer, sample[:128], 64)  # warm-up
    started = time.perf_counter()
    teacher_outputs(teacher, tokenizer, sample, 64)
    return texts / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--after", type=float, default=3.0, help="seconds of training before SIGTERM")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in args.cases:
            case = CASES[name]
            warm = train_py(*case, "trainer.limit_train_batches=2", "trainer.max_epochs=1",
                            f"hydra.run.dir={root / name / 'warm'}", cwd=root)  # fills the caches
            assert warm.wait() == 0, warm.stderr.read()[-2000:]
            stops = [one_stop(case, args.after, root / name, i) for i in range(args.repeats)]
            resumed = subprocess.run([sys.executable, str(REPO / "train.py"), f"resume={stops[0]['run']}"],
                                     cwd=root, capture_output=True, text=True)
            metrics = json.loads((stops[0]["run"] / "metrics.json").read_text()) if resumed.returncode == 0 else {}
            row = {"case": name, "stop_s_median": statistics.median(s["stop_s"] for s in stops),
                   "stop_s_max": max(s["stop_s"] for s in stops), "exit": sorted({s["exit"] for s in stops}),
                   "saved_at_step": [s["step"] for s in stops], "ckpt_mb": stops[0]["ckpt_mb"],
                   "resumed_exit": resumed.returncode, "resumed_global_step": metrics.get("global_step"),
                   "resumed_from": metrics.get("resumed_from") is not None, "line": stops[0]["line"]}
            rows.append(row)
            print(json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    rate = labelling_rate()
    print(json.dumps({"case": "minilm_labelling", "texts_per_s": round(rate, 1),
                      "one_shard_s": round(1024 / rate, 2)}), flush=True)


if __name__ == "__main__":
    main()
