"""How a run scales with its data: 10K / 100K / 1M labelled rows, per stage, wall time, texts/s and peak RSS.

    python scripts/bench_scale.py                                   # 10K, 100K, 1M rows; teacher on 10K texts
    python scripts/bench_scale.py --rows 10000 100000 --teacher-texts 10000 100000
    python scripts/bench_scale.py --rows 1000000 --trainer gpu --teacher-texts 1000000 --device cuda \
        --teacher random-minilm

Each size is one ``train.py +experiment=baseline model=static data=files data.train=<csv> trainer.max_epochs=1
export.variants=[onnx]`` run, in a fresh cache folder (nothing reused), the memory (PSS) of its process tree
sampled every 0.2 s. The rows are generated from the embedded data (a product description with ~20% of its words
dropped, its chapter as the label: 96 labels; seeded). The stages come from the run: ``read``, ``split``,
``vocabulary``, ``hash``, ``tokenize`` (``timings.data_steps_s`` of metrics.json), ``fit`` (one epoch and its
validation) and ``export`` (ONNX, parity and benchmark); the peak memory per phase is the highest sample between the
log lines that end them (data, fit, the rest), and ``max RSS`` the largest resident size of one process (the
training process).

Teacher labelling (``--teacher-texts``) runs :func:`speedtrain.distill.logit_cache.teacher_outputs` (the run's
sharded labelling) over that many generated texts on ``--device``, in process and/or (``--labelling lightning``)
through Lightning's predict loop with a DDP Trainer of ``--devices`` devices, as a run of a parallel trainer does: with ``--teacher <folder>`` (default: the newest
teacher in the cache, whatever run stored it: the cost per text depends on its size, not its training) or ``random-minilm`` (MiniLM-L6's shape, random weights, a 30K WordPiece
vocabulary learned here: the same cost per text, for a machine without the checkpoint).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from bench_static_train import write_rows  # noqa: E402  (the same generated rows)

RUN = ["+experiment=baseline", "model=static", "data=files", "trainer.max_epochs=1", "export.variants=[onnx]",
       "logger=csv", "test=true"]
STAGE_LINES = {"data": "speedtrain.data.datamodule][INFO] - Data:", "fit": "`Trainer.fit` stopped"}


class Sampler(threading.Thread):
    """Memory of a process and its children, every ``every`` seconds: ``samples`` is [(time, bytes)]. PSS where the
    system reports it (pages shared by forked tokenizer workers counted once), RSS elsewhere."""

    def __init__(self, pid: int, every: float = 0.2):
        super().__init__(daemon=True)
        self.process, self.every, self.samples, self.done = psutil.Process(pid), every, [], threading.Event()
        self.main: list[tuple[float, int]] = []  # the RSS of the training process alone

    def run(self) -> None:
        while not self.done.is_set():
            try:
                procs = [self.process, *self.process.children(recursive=True)]
            except psutil.Error:  # the run has ended
                break
            self.samples.append((time.time(), sum(_memory(p) for p in procs)))
            self.main.append((time.time(), _rss(self.process)))
            time.sleep(self.every)


def _rss(process: psutil.Process) -> int:
    try:
        return process.memory_info().rss
    except psutil.Error:
        return 0


def _memory(process: psutil.Process) -> int:
    try:
        try:
            return process.memory_full_info().pss
        except (AttributeError, psutil.AccessDenied):
            return process.memory_info().rss
    except psutil.Error:  # a worker that has just exited
        return 0


def run_size(rows: int, out: Path, seed: int, trainer: str = "cpu", overrides: tuple[str, ...] = ()) -> dict:
    csv_path = out / f"rows-{rows}.csv"
    if not csv_path.exists():
        write_rows(csv_path, rows, seed)
    folder, cache = out / f"run-{rows}", out / f"cache-{rows}"
    cmd = [sys.executable, str(REPO / "train.py"), *RUN, f"data.train={csv_path}", f"hydra.run.dir={folder}",
           f"paths.cache_dir={cache}", f"trainer={trainer}", *overrides]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    started = time.time()
    with (out / f"run-{rows}.log").open("w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        sampler = Sampler(proc.pid)
        sampler.start()
        code = proc.wait()
        sampler.done.set()
    wall = time.time() - started
    # the largest resident size of one process so far (kB on Linux): the runs go from small to large, so for each
    # size the training process itself (its forked tokenizer workers are smaller)
    max_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    if code:
        raise SystemExit(f"{rows:,} rows: train.py exited {code}; see {out / f'run-{rows}.log'}")
    text = (out / f"run-{rows}.log").read_text(errors="replace")
    ends = {name: _stamp(text, marker) for name, marker in STAGE_LINES.items()}
    bounds = [("data", started, ends["data"]), ("fit", ends["data"], ends["fit"]), ("rest", ends["fit"], 1e18)]
    peaks = {name: max((b for t, b in sampler.samples if lo <= t < hi), default=0) / 2**30 for name, lo, hi in bounds}
    main = {name: max((b for t, b in sampler.main if lo <= t < hi), default=0) / 2**30 for name, lo, hi in bounds}
    metrics = json.loads((folder / "metrics.json").read_text())
    return {"rows": rows, "wall_s": wall, "timings": metrics["timings"], "train": metrics["data"]["train"],
            "peak_gb": peaks, "peak_all_gb": max(b for _, b in sampler.samples) / 2**30, "max_rss_gb": max_rss,
            "main_rss_gb": main, "test_acc": 100 * metrics["test/acc"]}


def _stamp(text: str, marker: str) -> float:
    for line in text.splitlines():
        if marker in line:
            found = re.search(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+)\]", line)
            if found:
                return datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return float("nan")


def label_texts(count: int, teacher: str, device: str, out: Path, seed: int, labelling: str = "process",
                devices: int = 1) -> dict:
    """Texts/s of the run's teacher labelling over ``count`` generated texts: in process, or (``lightning``)
    through Lightning's predict loop with a DDP Trainer of ``devices`` devices, as a run of a parallel trainer."""
    import torch
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, BertConfig,
                              BertForSequenceClassification)

    from speedtrain.distill.logit_cache import teacher_outputs

    csv_path = out / f"texts-{count}.csv"
    if not csv_path.exists():
        write_rows(csv_path, count, seed)
    import pandas as pd

    texts = pd.read_csv(csv_path)["text"].astype(str).tolist()
    if teacher == "random-minilm":
        from speedtrain.data.tokenizer import train_wordpiece

        tokenizer = train_wordpiece(texts[:50_000], vocab_size=30522, max_length=128)
        config = BertConfig(vocab_size=len(tokenizer), hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                            intermediate_size=1536, num_labels=96)
        model = BertForSequenceClassification(config)
    else:
        tokenizer = AutoTokenizer.from_pretrained(teacher)
        model = AutoModelForSequenceClassification.from_pretrained(teacher)
    model = model.to(device)
    if device.startswith("cuda"):
        model = model.to(torch.bfloat16)
    batch = 512 if device.startswith("cuda") else 128
    make_trainer = None
    if labelling == "lightning":
        import pytorch_lightning as pl

        def make_trainer(callbacks):
            return pl.Trainer(accelerator="gpu" if device.startswith("cuda") else "cpu", devices=devices,
                              strategy="ddp", callbacks=callbacks, logger=False, enable_checkpointing=False,
                              enable_model_summary=False, enable_progress_bar=False)
    # the shards under out/ (a fixed path: every process of a multi-device run finds the same folder), cleared by
    # the first process before it starts the others; kept after (another process may still read them)
    shards = out / f"shards-{count}-{labelling}-{devices}"
    if int(os.environ.get("LOCAL_RANK", 0)) == 0:
        shutil.rmtree(shards, ignore_errors=True)
    teacher_outputs(model, tokenizer, texts[:batch], 64, batch_size=batch)  # warm-up
    started = time.perf_counter()
    outputs = teacher_outputs(model, tokenizer, texts, 64, batch_size=batch, shard_dir=shards,
                              make_trainer=make_trainer)
    seconds = time.perf_counter() - started
    assert outputs["logits"].shape == (count, model.config.num_labels)
    return {"texts": count, "seconds": seconds, "texts_per_s": count / seconds, "device": device,
            "labelling": labelling if labelling == "process" else f"Lightning predict, {devices} device(s)",
            "teacher": "MiniLM-L6 shape, random weights" if teacher == "random-minilm" else Path(teacher).name,
            "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None}


def newest_teacher() -> str:
    root = Path(os.environ.get("SPEEDTRAIN_CACHE", Path.home() / ".cache" / "speedtrain")) / "teachers"
    folders = sorted(root.glob("*/model.safetensors"), key=lambda p: p.stat().st_mtime)
    if not folders:
        raise SystemExit(f"no fine-tuned teacher in {root}; run python train.py +experiment=distill once, or pass "
                         "--teacher random-minilm")
    return str(folders[-1].parent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--teacher-texts", type=int, nargs="*", default=[10_000])
    parser.add_argument("--teacher", default=None, help="a teacher folder, or random-minilm (default: the newest)")
    parser.add_argument("--device", default="cpu", help="the teacher's device (cpu, cuda)")
    parser.add_argument("--labelling", nargs="+", default=["process"], choices=["process", "lightning"],
                        help="teacher labelling in process, and/or through Lightning's predict loop (a DDP Trainer)")
    parser.add_argument("--devices", type=int, default=1, help="devices of the Lightning labelling (more than one: "
                        "the script runs again in each process, as train.py does; pass no --rows then)")
    parser.add_argument("--trainer", default="cpu", help="the runs' trainer group (cpu, gpu)")
    parser.add_argument("--override", action="append", default=[], help="more train.py overrides, e.g. "
                        "export.teacher=false (no teacher row in the bundle's benchmark)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_scale-"))
    out.mkdir(parents=True, exist_ok=True)
    runs = [run_size(n, out, args.seed, args.trainer, tuple(args.override)) for n in args.rows]
    teacher = args.teacher or (newest_teacher() if args.teacher_texts else None)
    labelled = [label_texts(n, teacher, args.device, out, args.seed, how, args.devices) for n in args.teacher_texts
                for how in args.labelling]
    if int(os.environ.get("LOCAL_RANK", 0)) > 0:  # another process of a multi-device labelling: rank 0 reports
        return
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{psutil.virtual_memory().total / 2**30:.0f} GiB\n")
    if runs:
        print("| rows | read s | split s | vocabulary s | tokenize s | data s | fit s (train texts/s) | export s "
              "| whole run s | s per 1K rows | peak memory GB (data / fit / rest) | max RSS GB | test acc |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for r in runs:
        t, d = r["timings"], r["timings"].get("data_steps_s", {})
        peaks = " / ".join(f"{r['peak_gb'][k]:.2f}" for k in ("data", "fit", "rest"))
        print(f"| {r['rows']:,} | {d.get('read', 0):.1f} | {d.get('split', 0):.1f} | {d.get('vocabulary', 0):.1f} | "
              f"{d.get('tokenize', 0):.1f} | {t['data_s']:.1f} | {t['fit_s']:.1f} ({r['train'] / t['fit_s']:,.0f}) | "
              f"{t.get('export_s', 0):.1f} | {r['wall_s']:.1f} | {1000 * r['wall_s'] / r['rows']:.2f} | {peaks} | "
              f"{r['max_rss_gb']:.2f} | {r['test_acc']:.2f} |")
    if labelled:
        print("\n| teacher texts | device | teacher | labelling | seconds | texts/s |")
        print("|---:|---|---|---|---:|---:|")
    for row in labelled:
        print(f"| {row['texts']:,} | {row['gpu'] or row['device']} | {row['teacher']} | {row['labelling']} | "
              f"{row['seconds']:.1f} | {row['texts_per_s']:,.0f} |")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "teacher": labelled}, indent=1))


if __name__ == "__main__":
    main()
