"""The static_conv student's convolution in ONNX Runtime: ``nn.Conv1d`` against one matrix product per window.

    python scripts/bench_conv.py                          # 128 and 64 filters, 24 and 64 pieces, batch 256
    python scripts/bench_conv.py --filters 128 --lengths 24 --repeats 21

Both forms hold the same weights and give the same logits (checked here); the script exports each to ONNX (as a
bundle does), runs it with ONNX Runtime on all cores at batch ``--batch`` and prints the median texts/s of
``--repeats`` calls, the plain ``static`` bag (no convolution) as the ceiling. Model time only: no tokenizer.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from speedtrain.bundle.runtime import OrtRunner
from speedtrain.export.onnx import export_onnx
from speedtrain.models.static import StaticForSequenceClassification, build_static_student


class Conv1dForm(StaticForSequenceClassification):
    """The first form (2026-12-06 morning): the pieces' vectors transposed to (B, D, T) through ``nn.Conv1d``."""

    def conv_features(self, input_ids, attention_mask, vectors):
        maps = torch.relu(self.conv(vectors[:, : input_ids.shape[1]].transpose(1, 2)))  # (B, K, T)
        return (maps * attention_mask.unsqueeze(1).to(maps.dtype)).amax(dim=2)


def texts_per_s(path: Path, batch: int, length: int, repeats: int, threads: int) -> float:
    runner = OrtRunner(path, threads)
    ids = np.random.default_rng(0).integers(5, 30_000, size=(batch, length)).astype(np.int64)
    mask = np.ones_like(ids)
    runner(ids, mask)  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        runner(ids, mask)
        times.append(time.perf_counter() - started)
    return batch / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--filters", type=int, nargs="+", default=[128, 64])
    parser.add_argument("--lengths", type=int, nargs="+", default=[24, 64])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} threads, "
          f"batch {args.batch}, median of {args.repeats}; vocabulary 30,522, hidden 96, 32,768 buckets\n")
    print("| filters | form | " + " | ".join(f"texts/s, {n} pieces" for n in args.lengths) + " |")
    print("|---|---|" + "---:|" * len(args.lengths))
    folder = Path(tempfile.mkdtemp())
    sizes = dict(vocab_size=30_522, num_labels=2, hidden_size=96, buckets=32_768, pooling="weighted", max_length=64)
    for filters in [0, *args.filters]:
        torch.manual_seed(0)
        model = build_static_student(conv_channels=filters, **sizes).eval()
        forms = {"bag only": model} if not filters else {"Conv1d": Conv1dForm(model.config), "matmul": model}
        if filters:
            forms["Conv1d"].load_state_dict(model.state_dict())
            forms["Conv1d"].eval()
            ids = torch.randint(5, 30_000, (4, 20))
            with torch.no_grad():
                a, b = (m(input_ids=ids, attention_mask=torch.ones_like(ids)).logits for m in forms.values())
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)  # the same numbers
        for name, form in forms.items():
            path = folder / f"{filters}-{name}.onnx"
            export_onnx(form, path, max_length=64)
            speeds = [texts_per_s(path, args.batch, n, args.repeats, args.threads) for n in args.lengths]
            print(f"| {filters} | {name} | " + " | ".join(f"{v:,.0f}" for v in speeds) + " |", flush=True)


if __name__ == "__main__":
    main()
