"""Training throughput on GPUs: a plain Lightning loop vs speedtrain, on 1 GPU, DDP on 2 and DeepSpeed ZeRO-2 on 2.

    python scripts/gpu_bench.py                                  # every row the visible GPUs allow
    python scripts/gpu_bench.py --rows a1,b1 --steps 100         # some rows
    python scripts/gpu_bench.py --write docs/benchmarks.md       # also append the table there
    python scripts/gpu_bench.py --rows h1,b1 --profile prof      # + torch.profiler tables and traces per row

Rows (the same data, the same student and teacher shapes, bf16-mixed, train steps only):

* ``a``: the plain-Lightning baseline a template user gets: a LightningModule with an online teacher, a
  DataLoader (4 workers, pinned, padding collator), batch 256, AdamW, the default progress bar.
* ``b``: speedtrain's defaults for the trainer (``trainer=gpu|ddp|deepspeed_stage2``: data on the device, length
  buckets, torch.compile, fused AdamW) with the teacher's logits cached (``distill=logits``), a large batch.
* ``c``: the same with the teacher online (``distill.teacher_logits=online``), a large batch.
* ``h1`` (only when asked for): a hand-written loop over the same GPU-resident batches (compiled student, fused
  AdamW, bf16 autocast, the same KD loss, no Lightning): the reference that tells what the framework costs.

Data: the embedded HS-code texts (train split, tokenized by the run's small-vocabulary tokenizer) repeated to
cover the steps. The teacher is a randomly initialised model of all-MiniLM-L6-v2's shape (6 x 384, 12 heads,
vocabulary 30,522; speed does not depend on its weights) reading the same texts at up to 64 tokens.

Every row runs in its own process (DDP re-launches it per GPU); samples/s counts the steps after ``--warmup``
(which absorbs torch.compile), between two CUDA synchronisations; a window in which a new shape compiled (a length
bucket seen late) starts again (``restarts``). Without CUDA the single-device rows run on the CPU (fp32, eager):
that is for the tests, not a measurement. MFU = model FLOPs per sample at the configured
lengths (training the student: 6 x non-embedding params x T + 12 x layers x T^2 x width; the online teacher's
forward: 2 x params x T + 4 x layers x T^2 x width) x samples/s / (GPUs x the bf16 matmul rate measured here).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from speedtrain.callbacks.step_timer import MAX_RESTARTS, PROFILED, StepTimer

REPO = Path(__file__).resolve().parents[1]
ROWS = {  # name: (kind, devices, trainer)
    "a1": ("plain", 1, "gpu"), "b1": ("cache", 1, "gpu"), "c1": ("online", 1, "gpu"),
    "a2": ("plain", 2, "ddp"), "b2": ("cache", 2, "ddp"), "c2": ("online", 2, "ddp"),
    "a2z": ("plain", 2, "deepspeed_stage2"), "b2z": ("cache", 2, "deepspeed_stage2"),
    "c2z": ("online", 2, "deepspeed_stage2"),
    "h1": ("hand", 1, "gpu"),  # the ceiling reference: a hand-written loop, no Lightning
}
TEACHER = {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536,
           "vocab_size": 30522}
TEACHER_LENGTH = 64


def most_steps(args) -> int:
    """Steps a row may take: the warm-up, then the timed window and its restarts."""
    return args.warmup + (MAX_RESTARTS + 1) * args.steps + 2


def overrides(kind: str, devices: int, trainer: str, batch: int, steps: int, out_dir: str) -> list[str]:
    """The speedtrain config of a row: the experiment and trainer a user types, shrunk to train steps only."""
    rows = [
        "+experiment=distill", "model=bert_tiny", f"trainer={trainer}", f"trainer.devices={devices}",
        f"data.batch_size={batch}",
        "distill=logits", "distill.augment.copies=0", "logger=none", "export.enabled=false", "test=false",
        f"trainer.max_steps={steps}", "trainer.max_epochs=-1", "trainer.limit_val_batches=0",
        "trainer.num_sanity_val_steps=0", "trainer.enable_model_summary=false", "~callbacks.model_checkpoint",
        "~callbacks.last_checkpoint", f"paths.output_dir={out_dir}",
    ]
    if kind == "online":
        rows.append("distill.teacher_logits=online")
    if not torch.cuda.is_available():  # the same rows on a CPU (for the tests): fp32, no compile
        rows += ["trainer.accelerator=cpu", "trainer.precision=32-true"]
    return rows


def prepare_data(cfg, rows_needed: int, online: bool):
    """The datamodule of ``cfg`` with its training split repeated to ``rows_needed`` rows, plus the teacher."""
    import datasets
    import numpy as np
    from transformers import BertConfig, BertForSequenceClassification

    from speedtrain.builders import build_datamodule

    dm = build_datamodule(cfg)
    dm.prepare()
    texts = list(dm.splits["train"]["text"])
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(BertConfig(**TEACHER, num_labels=dm.num_labels,
                                                       max_position_embeddings=512))
    if online:  # the teacher reads the texts with its own length (its tokenizer: the student's, for speed only)
        dm.attach_teacher_inputs(dm.tokenizer, texts, TEACHER_LENGTH)
    else:
        dm.attach_teacher_logits(np.random.default_rng(0).standard_normal((len(texts), dm.num_labels), np.float32))
    train = dm.encoded["train"]
    dm.encoded["train"] = datasets.concatenate_datasets([train] * math.ceil(rows_needed / len(train)))
    dm._tables.pop("train", None)
    return dm, teacher


def run_speedtrain(args) -> None:
    """One row through speedtrain's own pipeline pieces (datamodule, DistillModule, build_trainer)."""
    from hydra.utils import instantiate

    from speedtrain.builders import build_module
    from speedtrain.config import compose_config
    from speedtrain.trainer import build_trainer

    kind, devices, trainer_name = ROWS[args.row]
    cfg = compose_config(overrides(kind, devices, trainer_name, args.batch, most_steps(args),
                                   args.work) + args.override)
    dm, teacher = prepare_data(cfg, args.batch * devices * (most_steps(args) + 8), kind == "online")
    timer = StepTimer(args.warmup, args.steps, args.out, args.profile)
    trainer = build_trainer(cfg, extra_callbacks=[timer])
    module, _ = build_module(cfg, dm, trainer, loss=instantiate(cfg.distill.loss),
                             teacher=teacher if kind == "online" else None)  # the module a run trains
    trainer.fit(module, datamodule=dm)


def run_plain(args) -> None:
    """The plain-Lightning baseline: what a user writes from Lightning's and Hugging Face's templates."""
    import torch.nn.functional as F
    from torch.utils.data import DataLoader
    from transformers import DataCollatorWithPadding

    from speedtrain.builders import build_model
    from speedtrain.config import compose_config

    _, devices, trainer_name = ROWS[args.row]
    cfg = compose_config(overrides("online", devices, "gpu", args.batch, 1, args.work) + args.override)
    dm, teacher = prepare_data(cfg, args.batch * devices * (most_steps(args) + 8), online=True)
    train = dm.encoded["train"].rename_column("label", "labels")
    student = build_model(cfg, dm)  # the run's student (model group), as in the other rows
    collate_student = DataCollatorWithPadding(dm.tokenizer)

    def collate(rows):
        batch = collate_student([{"input_ids": r["input_ids"], "attention_mask": r["attention_mask"]} for r in rows])
        t = collate_student([{"input_ids": r["teacher_input_ids"], "attention_mask": r["teacher_attention_mask"]}
                             for r in rows])
        batch["teacher_input_ids"], batch["teacher_attention_mask"] = t["input_ids"], t["attention_mask"]
        batch["labels"] = torch.tensor([r["labels"] for r in rows])
        return batch

    class Plain(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.student, self.teacher = student, teacher.eval().requires_grad_(False)

        def training_step(self, batch, batch_idx):
            logits = self.student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            with torch.no_grad():
                t = self.teacher(input_ids=batch["teacher_input_ids"],
                                 attention_mask=batch["teacher_attention_mask"]).logits
            kd = F.kl_div(F.log_softmax(logits.float(), -1), F.log_softmax(t.float(), -1), log_target=True,
                          reduction="batchmean")
            loss = 0.5 * kd + 0.5 * F.cross_entropy(logits.float(), batch["labels"])
            self.log("train/loss", loss, prog_bar=True)
            return loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.student.parameters(), lr=2e-3, weight_decay=0.01)

    loader = DataLoader(train, batch_size=args.batch, shuffle=True, collate_fn=collate, num_workers=4,
                        pin_memory=True, persistent_workers=True)
    timer = StepTimer(args.warmup, args.steps, args.out, args.profile)
    strategy = {"gpu": "auto", "ddp": "ddp", "deepspeed_stage2": "deepspeed_stage_2"}[trainer_name]
    cuda = torch.cuda.is_available()  # (on a CPU only for the tests)
    trainer = pl.Trainer(accelerator="gpu" if cuda else "cpu", devices=devices, strategy=strategy,
                         precision="bf16-mixed" if cuda else "32-true",
                         max_steps=most_steps(args), logger=False, enable_checkpointing=False,
                         callbacks=[timer], limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(Plain(), train_dataloaders=loader)


def run_hand(args) -> None:
    """A hand-written loop over the same GPU-resident batches (the issue's 40-line reference): compiled student,
    fused AdamW, bf16 autocast, the same KD loss, no Lightning, no logging."""
    from speedtrain.builders import build_model
    from speedtrain.config import compose_config
    from speedtrain.data.device import DeviceBatches
    from speedtrain.distill.losses import KDLoss

    cfg = compose_config(overrides("cache", 1, "gpu", args.batch, 1, args.work) + args.override)
    dm, _ = prepare_data(cfg, args.batch * (most_steps(args) + 8), online=False)
    cuda = torch.cuda.is_available()  # (it also runs on a CPU, eager and in fp32, for the tests)
    device = torch.device("cuda" if cuda else "cpu")
    model = build_model(cfg, dm).to(device).train()
    if cfg.trainer.speed.get("attention"):
        model.set_attn_implementation(cfg.trainer.speed.attention)
    forward = torch.compile(model, dynamic=False) if cuda else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01, fused=cuda)
    loss_fn = KDLoss(0.5, 2.0)
    batches = DeviceBatches(dm.table("train"), args.batch, shuffle=True, bucket=cfg.data.length_buckets,
                            seed=0, device=lambda: device)
    timer = StepTimer(args.warmup, args.steps, args.out, args.profile)
    for step, batch in enumerate(batches):
        timer.step_start(step)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            logits = forward(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = loss_fn(logits, batch["teacher_logits"], batch["labels"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if timer.step_end(step + 1, batch["labels"].shape[0]):
            break
    Path(args.out).write_text(json.dumps(timer.result))


def flops_per_sample(cfg, online: bool) -> float:
    """Model FLOPs of one training sample at the configured lengths (see the module docstring)."""
    m, t_len = cfg.model, cfg.model.max_length
    h, layers, inter = m.hidden_size, m.num_hidden_layers, m.intermediate_size
    per_layer = 4 * h * h + 2 * h * inter  # attention projections + FFN weights
    student = 6 * layers * per_layer * t_len + 12 * layers * t_len**2 * h
    if not online:
        return student
    th, tl, ti = TEACHER["hidden_size"], TEACHER["num_hidden_layers"], TEACHER["intermediate_size"]
    teacher = 2 * tl * (4 * th * th + 2 * th * ti) * TEACHER_LENGTH + 4 * tl * TEACHER_LENGTH**2 * th
    return student + teacher


def matmul_tflops() -> float:
    """The bf16 matmul rate of this GPU (8192^3, mean of 10 after 3 warm-ups), TFLOP/s."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 2 * 8192**3 * 10 / (time.perf_counter() - start) / 1e12


def orchestrate(args) -> None:
    from speedtrain.config import compose_config

    cuda = torch.cuda.is_available()
    if not cuda and not args.rows:
        sys.exit("gpu_bench.py: error: no CUDA GPU here; it measures GPUs. (On a CPU it runs only rows named with "
                 "--rows, at a small --batch, as the tests do.)")
    gpus = torch.cuda.device_count() if cuda else 1  # (one CPU process: the single-device rows, for the tests)
    names = [r for r in (args.rows.split(",") if args.rows else [r for r in ROWS if r != "h1"]) if ROWS[r][1] <= gpus]
    peak = matmul_tflops() if cuda else float("nan")
    gpu_name = torch.cuda.get_device_name(0) if cuda else "CPU"
    print(f"{gpu_name} x {gpus}; bf16 matmul {peak:.0f} TFLOP/s", flush=True)
    results = {}
    for name in names:
        kind, devices, trainer = ROWS[name]
        batch = args.plain_batch if kind == "plain" else (args.online_batch if kind == "online" else args.batch)
        with tempfile.TemporaryDirectory() as work:
            out = Path(work) / "result.json"
            cmd = [sys.executable, __file__, "--row", name, "--batch", str(batch), "--warmup", str(args.warmup),
                   "--steps", str(args.steps), "--work", work, "--out", str(out)]
            cmd += [x for o in args.override for x in ("--override", o)]
            if args.profile:
                cmd += ["--profile", str(Path(args.profile) / name)]
            started = time.perf_counter()
            done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=dict(os.environ))
            if done.returncode != 0 or not out.is_file():
                print(f"{name}: FAILED (rc {done.returncode})\n{done.stderr[-3000:]}", flush=True)
                results[name] = {"error": done.stderr[-600:]}
                continue
            row = json.loads(out.read_text())
        cfg = compose_config(overrides(kind, devices, trainer, batch, 1, "/tmp/x") + args.override)
        flops = flops_per_sample(cfg, online=kind in ("plain", "online"))
        row.update(kind=kind, devices=devices, trainer=trainer, batch=batch, wall_s=time.perf_counter() - started,
                   mfu=flops * row["samples_per_s"] / (devices * peak * 1e12), flops_per_sample=flops)
        results[name] = row
        if args.json:  # after every row: a run cut short keeps what it measured
            Path(args.json).write_text(json.dumps({"gpu": gpu_name, "gpus": gpus, "matmul_tflops": peak,
                                                   "rows": results, "args": vars(args)}, indent=2))
        print(f"{name}: {row['samples_per_s']:,.0f} samples/s (batch {batch} x {devices}, {trainer}, "
              f"MFU {100 * row['mfu']:.1f}%, {row['wall_s']:.0f} s)", flush=True)
    table = markdown(results, gpu_name, gpus, peak, args)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps({"gpu": gpu_name, "gpus": gpus, "matmul_tflops": peak,
                                               "rows": results, "args": vars(args)}, indent=2))
    if args.write:
        with open(args.write, "a") as f:
            f.write("\n" + table)


def markdown(results: dict, gpu_name: str, gpus: int, peak: float, args) -> str:
    """The table: samples/s, ratio to the plain baseline on the same GPUs, MFU, scaling 1 -> 2 GPUs."""
    names = {"plain": "(a) plain Lightning, online teacher", "cache": "(b) speedtrain, logit cache",
             "online": "(c) speedtrain, online teacher", "hand": "hand-written loop, logit cache (reference)"}
    lines = [f"GPU: {gpu_name} x {gpus}; bf16 matmul {peak:.0f} TFLOP/s measured; {args.steps} timed steps after "
             f"{args.warmup} warm-up steps; torch {torch.__version__}", "",
             "| row | setup | trainer | batch/GPU | samples/s | vs (a) same GPUs | MFU | scaling 1->2 | peak mem GB |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, row in results.items():
        if "error" in row:
            lines.append(f"| {name} | failed | | | | | | | |")
            continue
        base = results.get(f"a{name[1:]}", {}).get("samples_per_s")
        one = results.get(f"{name[0]}1", {}).get("samples_per_s") if row["devices"] == 2 else None
        ratio = f"{row['samples_per_s'] / base:.1f}x" if base else ""
        scaling = f"{100 * row['samples_per_s'] / (2 * one):.0f}%" if one else ""
        lines.append(f"| {name} | {names[row['kind']]} | {row['trainer']} x{row['devices']} | {row['batch']} | "
                     f"{row['samples_per_s']:,.0f} | {ratio} | {100 * row['mfu']:.1f}% | {scaling} | "
                     f"{row['max_memory_gb']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="", help="comma-separated rows (default: all the GPUs allow)")
    parser.add_argument("--batch", type=int, default=16384, help="per-GPU batch of (b)")
    parser.add_argument("--online-batch", type=int, default=8192, help="per-GPU batch of (c)")
    parser.add_argument("--plain-batch", type=int, default=256, help="per-GPU batch of (a)")
    parser.add_argument("--warmup", type=int, default=40)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--override", action="append", default=[], help="a speedtrain config override (repeat)")
    parser.add_argument("--json", default="", help="write the results here")
    parser.add_argument("--write", default="", help="append the markdown table to this file")
    parser.add_argument("--profile", default="", help=f"profile {PROFILED} steps before the timed ones of each row "
                        "into <folder>/<row>/ (operator tables, Chrome trace)")
    parser.add_argument("--row", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.row:
        return orchestrate(args)
    import speedtrain  # noqa: F401  (registers the config's resolvers)

    kind = ROWS[args.row][0]
    (run_plain if kind == "plain" else run_hand if kind == "hand" else run_speedtrain)(args)


if __name__ == "__main__":
    main()
