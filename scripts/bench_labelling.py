"""Where a one-process GPU run's teacher labels its transfer set: on the GPU, or (before 2026-12-07) on the host's CPU.

    python scripts/bench_labelling.py --texts data.csv                       # the embedded data when omitted
    python scripts/bench_labelling.py --texts rotten_tomatoes.csv --n 8192 --repeats 3 --teacher /tmp/minilm

A distillation run of one process (``trainer=gpu``) labels the transfer set in process
(:func:`speedtrain.distill.logit_cache.cached_teacher_outputs`). The teacher was loaded on the CPU and labelled
there, with the host's cores, while the GPU idled; now it moves to ``speedtrain.trainer.labelling_device`` for the
labelling. This script times the same call, the same texts (the first ``--n`` of the file, cycled when it has
fewer), on ``cpu`` and on ``cuda`` side by side in one process, with an empty cache folder each time, and prints
texts/s (median of ``--repeats``) and the ratio. The teacher is MiniLM as the run fine-tunes it (its weights do not
change the speed).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import tempfile
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", default=None, help="a CSV with a 'text' column (default: the embedded data)")
    parser.add_argument("--n", type=int, default=8192, help="texts to label")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cpu-repeats", type=int, default=1, help="the CPU is slow: fewer repeats there")
    parser.add_argument("--teacher", default="minilm", help="teacher.source: a name or folder")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()

    from speedtrain.distill.logit_cache import cached_teacher_outputs
    from speedtrain.models.teacher import load_classifier, load_tokenizer, resolve_source

    if args.texts:
        import pandas as pd

        source = pd.read_csv(args.texts)["text"].astype(str).tolist()
    else:
        from speedtrain.data.sources import hscodes

        source = list(hscodes()["train"]["text"])
    texts = list(itertools.islice(itertools.cycle(source), args.n))
    folder = resolve_source(args.teacher)
    teacher = load_classifier(folder, num_labels=2).eval()
    tokenizer = load_tokenizer(folder)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rates: dict[str, list[float]] = {d: [] for d in devices}
    for device in devices:
        for _ in range(args.cpu_repeats if device == "cpu" else args.repeats):
            with tempfile.TemporaryDirectory() as cache:  # no cached logits: every text is labelled
                start = time.perf_counter()
                outputs, hit = cached_teacher_outputs(folder, teacher, tokenizer, texts, args.max_length, cache,
                                                      device=device)
                seconds = time.perf_counter() - start
            assert not hit and outputs["logits"].shape == (len(texts), 2)
            rates[device].append(len(texts) / seconds)
            print(f"{device}: {len(texts):,} texts in {seconds:.1f} s ({rates[device][-1]:,.0f} texts/s)", flush=True)
    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "threads": torch.get_num_threads(),
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "texts": len(texts), "max_length": args.max_length, "teacher": args.teacher,
        "texts_per_s": {d: statistics.median(r) for d, r in rates.items()}, "runs": rates,
    }
    if "cuda" in rates:
        result["cuda_over_cpu"] = result["texts_per_s"]["cuda"] / result["texts_per_s"]["cpu"]
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
