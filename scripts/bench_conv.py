"""The static_conv student's convolution in ONNX Runtime: ``nn.Conv1d`` against one matrix product per window.

    python scripts/bench_conv.py                          # 128 and 64 filters, 24 and 64 pieces, batch 256
    python scripts/bench_conv.py --filters 128 --lengths 24 --repeats 21

Four forms of the same weights, the same logits (checked here, padded texts included): ``nn.Conv1d`` over
(B, D, T); "sliced windows" (each window joined from 3 slices of the padded vectors, one matrix product, the form
of 2026-12-06 afternoon); "gathered windows" (each window's rows gathered from the table, bias and ReLU after the
max: the model's own forward); "folded tables" (each slot's filters applied to every piece once at export,
``for_export()``: 3 row lookups and adds per position, what a bundle's ONNX files hold since 2026-12-06 evening).
The script exports each to ONNX (as a bundle does), runs it with ONNX Runtime on all
cores at batch ``--batch`` and prints the median texts/s over ``--rounds`` rounds of ``--repeats`` calls (the
forms take turns within a round), the plain ``static`` bag (no convolution) as the ceiling. Model time only: no
tokenizer.
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

    def conv_features(self, input_ids, attention_mask, table=None):
        vectors = self.embeddings(input_ids)  # (B, T, D)
        maps = torch.relu(self.conv(vectors.transpose(1, 2)))  # (B, K, T)
        return (maps * attention_mask.unsqueeze(1).to(maps.dtype)).amax(dim=2)


class SlicedWindowsForm(StaticForSequenceClassification):
    """The second form (2026-12-06 afternoon): the vectors zero-padded, each window built from 3 slices joined
    along the features, one matrix product, bias and ReLU on every position, padding zeroed after the ReLU."""

    def conv_features(self, input_ids, attention_mask, table=None):
        length, k = input_ids.shape[1], self.config.conv_kernel
        x = torch.nn.functional.pad(self.embeddings(input_ids), (0, 0, k // 2, k // 2))  # (B, T + k - 1, D)
        windows = torch.cat([x[:, j:j + length] for j in range(k)], dim=2)  # (B, T, k * D)
        weight = self.conv.weight.permute(0, 2, 1).reshape(self.conv.out_channels, -1)
        maps = torch.relu(torch.nn.functional.linear(windows, weight, self.conv.bias))  # (B, T, K)
        return (maps * attention_mask.unsqueeze(2).to(maps.dtype)).amax(dim=1)


class GatheredForm(StaticForSequenceClassification):
    """The third form (2026-12-06 afternoon, still the model's forward): exported as it is, no folded tables."""

    def for_export(self):
        return self


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
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} threads, "
          f"batch {args.batch}, median of {args.rounds} rounds of {args.repeats} calls; vocabulary 30,522, hidden 96, 32,768 buckets\n")
    print("| filters | form | " + " | ".join(f"texts/s, {n} pieces" for n in args.lengths) + " |")
    print("|---|---|" + "---:|" * len(args.lengths))
    folder = Path(tempfile.mkdtemp())
    sizes = dict(vocab_size=30_522, num_labels=2, hidden_size=96, buckets=32_768, pooling="weighted", max_length=64)
    for filters in [0, *args.filters]:
        torch.manual_seed(0)
        model = build_static_student(conv_channels=filters, **sizes).eval()
        forms = {"bag only": model}
        if filters:
            forms = {"Conv1d": Conv1dForm(model.config), "sliced windows": SlicedWindowsForm(model.config),
                     "gathered windows": GatheredForm(model.config), "folded tables": model}
            ids = torch.randint(5, 30_000, (4, 20))
            mask = torch.ones_like(ids)
            mask[:2, 14:] = 0  # two padded texts
            ids[:2, 14:] = model.config.pad_token_id
            for form in forms.values():
                form.load_state_dict(model.state_dict())
                form.eval()
                with torch.no_grad():  # the same numbers
                    torch.testing.assert_close(form.for_export()(input_ids=ids, attention_mask=mask).logits,
                                               model(input_ids=ids, attention_mask=mask).logits, atol=1e-5, rtol=1e-4)
        paths = {name: folder / f"{filters}-{name.replace(' ', '-')}.onnx" for name in forms}
        for name, form in forms.items():
            export_onnx(form, paths[name], max_length=64)
        speeds = {name: [] for name in forms}
        for _ in range(args.rounds):  # the forms take turns: the host's noise falls on each alike
            for name, path in paths.items():
                speeds[name].append([texts_per_s(path, args.batch, n, args.repeats, args.threads)
                                     for n in args.lengths])
        for name, rounds in speeds.items():
            medians = [statistics.median(r[i] for r in rounds) for i in range(len(args.lengths))]
            print(f"| {filters} | {name} | " + " | ".join(f"{v:,.0f}" for v in medians) + " |", flush=True)


if __name__ == "__main__":
    main()
