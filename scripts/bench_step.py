"""Time one training step of the student (forward, backward, AdamW) in fp32 and under bf16 autocast.

    python scripts/bench_step.py                          # bert_tiny, batch 64, 32 tokens, this machine's CPU
    python scripts/bench_step.py model=bert_mini --batch-size 256 --device cuda

Both precisions run in this one process, interleaved, after a warm-up; medians over --repeats rounds.
This is the measurement behind trainer=cpu defaulting to 32-true (see conf/trainer/cpu.yaml).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time

import torch
from hydra.utils import instantiate

from speedtrain.config import compose_config
from speedtrain.families import builder_config


def step_seconds(model, batch, labels, optimizer, precision: str, device: str, steps: int) -> float:
    """Median seconds of ``steps`` optimizer steps."""
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            logits = model(**batch).logits  # (B, C)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cpu_model() -> str:
    """The CPU's model name and whether it has AVX-512 BF16 / AMX (what makes bf16 fast on a CPU)."""
    try:
        info = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or platform.machine()
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    bf16 = [f for f in flags if f in ("avx512_bf16", "amx_bf16")]
    return f"{fields.get('Model name', '?').strip()} ({', '.join(bf16) or 'no AVX-512 BF16/AMX'})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=bert_mini")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--vocab-size", type=int, default=5000)
    parser.add_argument("--num-labels", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    cfg = compose_config(["paths.output_dir=.", *args.overrides])
    torch.manual_seed(0)
    model = instantiate(builder_config(cfg.model), vocab_size=args.vocab_size, num_labels=args.num_labels).to(args.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(5, args.vocab_size, (args.batch_size, args.seq_len), device=args.device)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    labels = torch.randint(0, args.num_labels, (args.batch_size,), device=args.device)

    precisions = ["32-true", "bf16-mixed"]
    for p in precisions:  # warm-up
        step_seconds(model, batch, labels, optimizer, p, args.device, 3)
    rounds = {p: [] for p in precisions}
    for _ in range(args.repeats):
        for p in precisions:
            rounds[p].append(step_seconds(model, batch, labels, optimizer, p, args.device, args.steps))
    median = {p: statistics.median(v) for p, v in rounds.items()}
    result = {
        "machine": f"{cpu_model()}, {torch.get_num_threads()} threads, {args.device}",
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
        "torch": torch.__version__,
        "model": {k: cfg.model[k] for k in ("num_hidden_layers", "hidden_size", "intermediate_size")},
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "step_ms": {p: round(1000 * s, 2) for p, s in median.items()},
        "samples_per_s": {p: round(args.batch_size / s) for p, s in median.items()},
        "bf16_over_fp32_time": round(median["bf16-mixed"] / median["32-true"], 2),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
