"""Would a recurrent layer fit the static family's speed budget? A BiGRU against ``static_conv``'s convolution.

    python scripts/bench_recurrence.py                       # batch 256, 28 pieces (Rotten Tomatoes' median), 2 threads
    python scripts/bench_recurrence.py --length 64 --repeats 50

The word-order layer of a student that must keep >= 20,000 texts/s at batch 256 on 2 cores, tokenization
included (issue 24). Each candidate reads the same (B, T) piece ids through a 30,522 x 96 table (the teacher's
vocabulary, as ``static_conv``), is exported to ONNX and run by ONNX Runtime on ``--threads`` threads, one after
the other in this process, on the same inputs: ``conv128`` is the convolution of ``static_conv`` before the
export folds it into lookup tables (its ReLU and max over the text included), ``gruH`` a bidirectional GRU of H
units a direction, max-pooled over the text. Printed: the median milliseconds a batch and the texts/s of the
layer alone (no tokenization, no bag, no head), and each one's ratio to ``conv128``.
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
import onnxruntime as ort
import torch
from torch import nn


class Conv(nn.Module):
    def __init__(self, vocab: int, width: int, channels: int) -> None:
        super().__init__()
        self.table, self.conv = nn.Embedding(vocab, width), nn.Conv1d(width, channels, 3, padding=1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(self.table(ids).transpose(1, 2))).amax(2)


class BiGRU(nn.Module):
    def __init__(self, vocab: int, width: int, units: int) -> None:
        super().__init__()
        self.table, self.gru = nn.Embedding(vocab, width), nn.GRU(width, units, batch_first=True, bidirectional=True)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.gru(self.table(ids))[0].amax(1)


def time_onnx(model: nn.Module, ids: torch.Tensor, threads: int, repeats: int, folder: Path) -> float:
    path = folder / "model.onnx"
    torch.onnx.export(model.eval(), (ids,), str(path), input_names=["ids"], dynamic_axes={"ids": {0: "b", 1: "t"}},
                      dynamo=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"ids": ids.numpy()}
    for _ in range(5):
        session.run(None, feed)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--length", type=int, default=28, help="pieces a text")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--units", type=int, nargs="+", default=[32, 64, 96], help="GRU units a direction")
    args = parser.parse_args()
    torch.manual_seed(0)
    vocab, width = 30522, 96
    ids = torch.randint(1, vocab, (args.batch, args.length))
    candidates = {"conv128": Conv(vocab, width, 128), **{f"gru{u}": BiGRU(vocab, width, u) for u in args.units}}
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, onnxruntime {ort.__version__}, "
          f"{args.threads} threads, batch {args.batch} x {args.length} pieces")
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in candidates.items():
            seconds[name] = time_onnx(model, ids, args.threads, args.repeats, Path(tmp))
    base = seconds["conv128"]
    print("| layer | ms a batch | texts/s (layer alone) | time / conv128 |\n|---|---:|---:|---:|")
    for name, s in seconds.items():
        print(f"| {name} | {1e3 * s:.2f} | {args.batch / s:,.0f} | {s / base:.2f}x |")
    assert np.isfinite(list(seconds.values())).all()


if __name__ == "__main__":
    main()
