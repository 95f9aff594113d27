"""Build a bundle from a trained student: export, check parity, benchmark, pick the fast variant, write it all.

    report = build_bundle(model, tokenizer, "outputs/<run>/bundle", test_texts, test_labels, max_length=32)

The bundle is assembled in ``<out>.partial`` and renamed when complete, so a failed export leaves no half bundle
(and the run's checkpoints and ``model/`` untouched).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from speedtrain.bench.latency import BenchOptions, benchmark_end_to_end, benchmark_runner, machine_info
from speedtrain.bench.report import write_model_card, write_report
from speedtrain.bundle.manifest import MANIFEST, write_manifest
from speedtrain.bundle.runtime import VARIANT_FILES, TextEncoder, TorchRunner, load_runner
from speedtrain.errors import UserError
from speedtrain.export.parity import choose_fast, parity, predict_logits

log = logging.getLogger(__name__)

EXPORTED = ("onnx", "onnx_int8", "onnx_fp16", "pt2")
TEXTS_FILE = "benchmark_texts.txt"  # the test texts the bundle was benchmarked on: `speedtrain bench` reuses them


class ExportError(UserError):
    """A variant could not be exported; the message names it and how to leave it out."""


@dataclasses.dataclass
class PruneOptions:
    """``export.prune``: structured FFN pruning with a short recovery distillation (export/prune.py)."""

    enabled: bool = False
    keep_ratio: float = 0.25  # FFN neurons kept per layer
    steps: int = 400  # recovery steps (distilling from the unpruned student on the training batches)
    lr: float = 1e-3
    seed: int | None = 0  # the recovery's dropout masks (the run's seed in a run): the same run prunes the same way


@dataclasses.dataclass
class ExportOptions:
    """The ``export`` config node: variants, the parity budget and what the benchmark measures."""

    variants: Sequence[str] = ("onnx", "onnx_int8", "onnx_fp16", "pt2")
    int8_per_channel: bool = False
    parity_budget: float = 0.5  # accuracy points a variant may lose against the PyTorch model and still be "fast"
    min_agreement: float = 99.0  # ... and the % of texts on which it must predict the PyTorch model's label
    benchmark: bool = True
    bench: BenchOptions = dataclasses.field(default_factory=BenchOptions)
    prune: PruneOptions = dataclasses.field(default_factory=PruneOptions)

    def __post_init__(self):
        unknown = [v for v in self.variants if v not in EXPORTED]
        if unknown:
            raise UserError(f"export.variants: unknown {unknown}; pick from {list(EXPORTED)}")
        if not 0 <= self.min_agreement <= 100:
            raise UserError(f"export.min_agreement={self.min_agreement} must be a percentage in [0, 100]")
        if self.parity_budget < 0:
            raise UserError(f"export.parity_budget={self.parity_budget} must be >= 0 (accuracy points)")
        if isinstance(self.bench, dict):
            self.bench = BenchOptions(**self.bench)
        if not self.bench.batch_sizes or min(self.bench.batch_sizes) < 1:
            raise UserError(f"export.bench.batch_sizes={list(self.bench.batch_sizes)} must be positive sizes, "
                            "e.g. [1,8,32,128,256]")
        if isinstance(self.prune, dict):
            self.prune = PruneOptions(**self.prune)
        if self.prune.enabled and not 0 < self.prune.keep_ratio <= 1:
            raise UserError(f"export.prune.keep_ratio={self.prune.keep_ratio} must be in (0, 1], e.g. 0.25")


def build_bundle(
    model, tokenizer, out: str | Path, test_texts: Sequence[str], test_labels: Sequence[int], max_length: int,
    options: ExportOptions | None = None, teacher: dict | None = None, extra: dict | None = None,
    train_batches: list | None = None,
) -> dict:
    """Write the bundle of ``model`` to ``out`` and return its benchmark report.

    Args:
        model: a Hugging Face sequence classifier (the best checkpoint's weights); tokenizer: its tokenizer.
        test_texts, test_labels: the data every variant is checked and benchmarked on (the test split).
        max_length: the training truncation length.
        teacher: ``{"folder", "max_length", "num_labels", "accuracy"?}`` to benchmark the teacher as the "before".
        extra: more manifest entries (the run folder, its metrics).
        train_batches: ``(input_ids, attention_mask, labels)`` batches for the pruning's recovery (``options.prune``).
    """
    options = options or ExportOptions()
    if options.prune.enabled and not train_batches:
        raise UserError("export.prune needs training batches for its recovery; pass train_batches")
    out = Path(out)
    if out.exists() and not (out / MANIFEST).is_file() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not a bundle; the export replaces only an older bundle there: pass "
                        "an empty or new folder (--out / export.out_dir)")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        report = _build(model, tokenizer, tmp, test_texts, test_labels, max_length, options, teacher, extra,
                        train_batches)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # no half bundle; an older complete one at `out` stays
        raise
    if out.exists():
        shutil.rmtree(out)  # an older bundle (checked before the export started)
    tmp.rename(out)
    log.info("Bundle written to %s (fast variant: %s)", out, report["fast"])
    return report


def _build(model, tokenizer, tmp: Path, test_texts, test_labels, max_length, options, teacher, extra,
           train_batches) -> dict:
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    timings = export_variants(model.eval().cpu(), tmp, max_length, options)
    variants = ["pytorch", *options.variants]
    pruning = None
    if options.prune.enabled:
        pruning, seconds = export_pruned(model, tmp, max_length, options, train_batches)
        timings["pruned"] = seconds
        variants += ["pruned_onnx", "pruned_onnx_int8"]

    (tmp / TEXTS_FILE).write_text("".join(" ".join(t.split()) + "\n" for t in test_texts))
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    rows = check_parity(tmp, variants, test_texts, test_labels, max_length)
    report = benchmark_bundle(tmp, rows, test_texts, max_length, labels, options, teacher)
    report["export_s"] = timings
    if pruning:
        report["prune"] = pruning
    fast = report["fast"]
    extra = {**(extra or {}), "teacher": teacher} if teacher else extra
    write_manifest(tmp, labels=labels, max_length=max_length, variants=variants, fast=fast, extra=extra)
    write_report(tmp, report)
    write_model_card(tmp, report, labels)
    return report


def check_parity(folder: Path, variants: list[str], texts: Sequence[str], labels: Sequence[int],
                 max_length: int) -> dict:
    """Accuracy, agreement and max |logit diff| of each variant against the PyTorch model, and its size."""
    encoder = TextEncoder(folder, max_length)
    reference = predict_logits(load_runner(folder, "pytorch"), encoder, texts)
    rows = {}
    for variant in variants:
        logits = reference if variant == "pytorch" else predict_logits(load_runner(folder, variant), encoder, texts)
        rows[variant] = {"parity": parity(logits, reference, labels),
                         "size_mb": (folder / VARIANT_FILES[variant]).stat().st_size / 2**20}
    return rows


def benchmark_bundle(folder: Path, rows: dict, texts: Sequence[str], max_length: int, labels: list[str],
                     options: ExportOptions, teacher: dict | None = None) -> dict:
    """Benchmark every variant in ``rows`` (which carry their parity), pick the fast one; return the report.

    Without ``options.benchmark`` only parity is reported and the fast variant is the PyTorch model. The runners
    set torch's process-wide thread count per call; the caller's count is restored afterwards.
    """
    import torch

    threads = torch.get_num_threads()
    try:
        return _benchmark_bundle(folder, rows, texts, max_length, labels, options, teacher)
    finally:
        torch.set_num_threads(threads)  # a notebook or run that benchmarks a bundle keeps its cores afterwards


def _benchmark_bundle(folder: Path, rows: dict, texts: Sequence[str], max_length: int, labels: list[str],
                      options: ExportOptions, teacher: dict | None) -> dict:
    encoder = TextEncoder(folder, max_length)
    for variant, row in rows.items():
        if options.benchmark:
            log.info("Benchmarking %s", variant)
            row.update(benchmark_runner(lambda t, v=variant: load_runner(folder, v, t), encoder, texts, options.bench))
    fast = choose_fast(rows, "pytorch", options.parity_budget, options.min_agreement) if options.benchmark \
        else "pytorch"
    report = {
        "schema": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "data": {"split": "test", "texts": len(texts), "max_length": max_length},
        "reference": "pytorch",
        "parity_budget": options.parity_budget,
        "min_agreement": options.min_agreement,
        "fast": fast,
        "variants": rows,
        "export_s": {},
    }
    if options.benchmark:
        report["end_to_end"] = benchmark_end_to_end(
            lambda t: _predictor(folder, fast, t, encoder, labels).predict, texts, options.bench)
        report["end_to_end"]["variant"] = fast
        if teacher and Path(teacher["folder"]).is_dir():
            report["teacher"] = benchmark_teacher(teacher, texts, options.bench)
    return report


def export_variants(model, folder: Path, max_length: int, options: ExportOptions) -> dict:
    """Write each variant of ``options.variants`` into ``folder``; return seconds per variant."""
    from speedtrain.export.onnx import export_onnx, to_fp16
    from speedtrain.export.pt2 import export_pt2
    from speedtrain.export.quantize import quantize_int8

    onnx_path = folder / VARIANT_FILES["onnx"]
    steps = {
        "onnx": lambda: export_onnx(model, onnx_path, max_length),
        "onnx_int8": lambda: quantize_int8(onnx_path, folder / VARIANT_FILES["onnx_int8"], options.int8_per_channel),
        "onnx_fp16": lambda: to_fp16(onnx_path, folder / VARIANT_FILES["onnx_fp16"]),
        "pt2": lambda: export_pt2(model, folder / VARIANT_FILES["pt2"], max_length),
    }
    wanted = list(options.variants)
    needs_onnx = any(v.startswith("onnx_") for v in wanted)
    timings = {}
    for variant in (["onnx"] if needs_onnx or "onnx" in wanted else []) + [v for v in wanted if v != "onnx"]:
        started = time.perf_counter()
        try:
            steps[variant]()
        except Exception as err:
            log.error("Export of %s failed", variant, exc_info=True)
            others = [v for v in wanted if v != variant]
            raise ExportError(
                f"exporting the {variant} variant failed ({type(err).__name__}: {err}); no bundle was written, the "
                f"run's checkpoints, metrics.json and model/ are kept. Leave the variant out and export again: "
                f"speedtrain export <run> export.variants=[{','.join(others)}]") from err
        timings[variant] = time.perf_counter() - started
    if "onnx" not in wanted and onnx_path.exists():
        onnx_path.unlink()  # only the source of int8/fp16
    return timings


def export_pruned(model, folder: Path, max_length: int, options: ExportOptions, train_batches) -> tuple[dict, float]:
    """Prune the FFNs, recover by distillation from ``model``, export fp32 and int8 ONNX; return info and seconds."""
    from speedtrain.export.onnx import export_onnx
    from speedtrain.export.prune import prune_and_recover
    from speedtrain.export.quantize import quantize_int8

    started = time.perf_counter()
    p = options.prune
    pruned, info = prune_and_recover(model, train_batches, p.keep_ratio, p.steps, p.lr, seed=p.seed)
    export_onnx(pruned, folder / VARIANT_FILES["pruned_onnx"], max_length)
    quantize_int8(folder / VARIANT_FILES["pruned_onnx"], folder / VARIANT_FILES["pruned_onnx_int8"],
                  options.int8_per_channel)
    info = {"intermediate_size": list(info["intermediate_size"]), "params": list(info["params"]),
            "recovery_steps": info["recovery_steps"], "recovery_s": info["recovery_s"]}
    return info, time.perf_counter() - started


def benchmark_teacher(teacher: dict, texts: Sequence[str], options: BenchOptions) -> dict:
    """The teacher in PyTorch eager: the "before" of the speed-up. Accuracy is the run's, if given."""
    from transformers import AutoModelForSequenceClassification

    from transformers.utils import logging as hf_logging

    def load(threads):
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # a pretrained encoder gets a new head: speed does not care
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                teacher["folder"], num_labels=teacher["num_labels"], use_safetensors=True,
                ignore_mismatched_sizes=True).eval()  # a head of another size: the timing is the same
        finally:
            hf_logging.set_verbosity(verbosity)
        return TorchRunner(model, threads or os.cpu_count() or 1)

    encoder = TextEncoder(teacher["folder"], teacher["max_length"])
    # ~100x slower than the student: fewer calls (a batch of 256 takes seconds on a small CPU)
    fewer = dataclasses.replace(options, min_reps=min(options.min_reps, 100), warmup=min(options.warmup, 5),
                                throughput_warmup=1, throughput_min_reps=1)
    row = benchmark_runner(load, encoder, texts, fewer)
    row["source"] = str(teacher.get("name") or teacher["folder"])
    row["accuracy"] = teacher.get("accuracy")
    return row


def _predictor(folder: Path, variant: str, threads: int | None, encoder: TextEncoder, labels: list[str]):
    """The Predictor as ``Predictor.load`` builds it: ``threads`` single-threaded model calls at once."""
    from speedtrain.bundle.predictor import Predictor

    return Predictor(load_runner(folder, variant, 1), encoder, labels, cache_size=0, variant=variant,
                     workers=threads or os.cpu_count() or 1)
