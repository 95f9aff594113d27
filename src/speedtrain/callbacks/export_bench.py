"""``ExportAndBenchmark``: at the end of fit, turn the best checkpoint into a benchmarked bundle (rank 0 only).

Thin: the work is :func:`speedtrain.export.build.build_bundle`; :func:`build_exporter` makes the callback of a
run's config, and :meth:`ExportAndBenchmark.export` is the one export both the end of a run and ``speedtrain export``
call.

Logged (every logger; W&B also gets the table and the bundle as an artifact of type ``model``):

| key                              | meaning                                             |
|----------------------------------|-----------------------------------------------------|
| ``bench/<variant>/acc``          | test accuracy of the variant (points)               |
| ``bench/<variant>/agreement``    | top-1 agreement with the PyTorch model (points)     |
| ``bench/<variant>/p50_ms``       | batch-1 latency, p50 / ``p99_ms``                   |
| ``bench/<variant>/texts_per_s``  | throughput at the largest benchmark batch size      |
| ``bench/fast/...``               | the same for the bundle's fast variant              |
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, open_dict

from speedtrain.checkpoints import best_student
from speedtrain.config import instantiate_known
from speedtrain.errors import UserError
from speedtrain.export.build import ExportError, ExportOptions, build_bundle
from speedtrain.export.parity import largest_batch
from speedtrain.models.teacher import resolve_source

if TYPE_CHECKING:
    from speedtrain.data.datamodule import TextDataModule

log = logging.getLogger(__name__)

EXPORT_OPTIONS = "speedtrain.export.build.ExportOptions"


class ExportAndBenchmark(pl.Callback):
    """Export, check and benchmark the best checkpoint's student into ``out_dir``.

    Args:
        out_dir: the bundle folder (``<run>/bundle``).
        options: variants, parity budget, benchmark settings.
        teacher: ``{"folder", "max_length", "num_labels", "accuracy"?}``: benchmark it as the "before".
        extra: more manifest entries.
    """

    def __init__(self, out_dir: str | Path, options: ExportOptions, teacher: dict | None = None,
                 extra: dict | None = None):
        self.out_dir, self.options, self.teacher, self.extra = Path(out_dir), options, teacher, extra or {}
        self.report: dict | None = None
        self.seconds: float | None = None
        self.error: UserError | None = None  # raised by the pipeline once the run's outputs are written

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        try:
            if trainer.is_global_zero:
                self._export(trainer, pl_module)
        finally:
            trainer.strategy.barrier()  # the other ranks wait for the bundle, whatever happened to it

    def export(self, model: torch.nn.Module, datamodule: TextDataModule, out_dir: str | Path | None = None,
               tokenizer=None) -> dict:
        """Write the bundle of ``model`` (a trained student on the CPU) and ``tokenizer`` (default: the datamodule's)
        to ``out_dir`` (default: ``self.out_dir``), checked and benchmarked on the datamodule's test split
        (validation without one); returns the report.

        The end of a run and ``speedtrain export`` both export through here.
        """
        split = datamodule.splits["test"] if "test" in datamodule.splits else datamodule.splits["validation"]
        batches = train_batches(datamodule) if self.options.prune.enabled else None
        return build_bundle(model, tokenizer or datamodule.tokenizer, Path(out_dir or self.out_dir), list(split["text"]),
                            list(split["label"]), datamodule.max_length, self.options, teacher=self.teacher,
                            extra=self.extra, train_batches=batches)

    def _export(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        started = time.perf_counter()
        try:
            self.report = self.export(best_student(pl_module.model, trainer), trainer.datamodule)
            log_report(trainer, self.report, self.out_dir)
        except UserError as err:  # a failed variant or a bad value: its message says what to do
            self.error = err
        except Exception as err:  # a bug: the traceback goes to the log, the run still finishes its outputs
            log.error("Export failed", exc_info=True)
            self.error = ExportError(
                f"the export to {self.out_dir} failed ({type(err).__name__}: {err}; traceback in the log); the run's "
                "checkpoints, metrics.json and model/ are kept; export again with `speedtrain export <run>`")
        finally:
            self.seconds = time.perf_counter() - started


def train_batches(datamodule) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The training split as ``(input_ids, attention_mask, labels)`` batches (for the pruning's recovery)."""
    return [(b["input_ids"], b["attention_mask"], b["labels"]) for b in datamodule.train_dataloader()]


def report_metrics(report: dict) -> dict[str, float]:
    """Flat ``bench/<variant>/<name>`` metrics of a benchmark report."""
    metrics = {}
    rows = dict(report["variants"])
    rows["fast"] = rows[report["fast"]]
    for name, row in rows.items():
        metrics[f"bench/{name}/acc"] = row["parity"]["accuracy"]
        metrics[f"bench/{name}/agreement"] = row["parity"]["agreement"]
        if "latency" in row:
            metrics[f"bench/{name}/p50_ms"] = row["latency"]["p50_ms"]
            metrics[f"bench/{name}/p99_ms"] = row["latency"]["p99_ms"]
            metrics[f"bench/{name}/texts_per_s"] = largest_batch(row["throughput"])
    if "teacher" in report:
        metrics["bench/teacher/p50_ms"] = report["teacher"]["latency"]["p50_ms"]
    return metrics


def log_report(trainer: pl.Trainer, report: dict, bundle: Path) -> None:
    """Metrics to every logger; the table and the bundle (artifact of type ``model``) to W&B."""
    from pytorch_lightning.loggers import WandbLogger

    metrics = report_metrics(report)
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)
        if isinstance(logger, WandbLogger):
            import wandb

            run = logger.experiment
            columns = ["variant", "accuracy", "agreement", "p50_ms", "p99_ms", "texts_per_s", "size_mb"]
            table = wandb.Table(columns=columns)
            for name, row in report["variants"].items():
                lat = row.get("latency", {})
                table.add_data(name, row["parity"]["accuracy"], row["parity"]["agreement"], lat.get("p50_ms"),
                               lat.get("p99_ms"), largest_batch(row.get("throughput")), row["size_mb"])
            run.log({"bench/table": table})
            artifact = wandb.Artifact(f"bundle-{run.id}", type="model", metadata={"fast": report["fast"]})
            artifact.add_dir(str(bundle))
            run.log_artifact(artifact)


def export_options(cfg: DictConfig) -> ExportOptions | None:
    """``cfg.export`` as :class:`ExportOptions` (bad values fail here, before any training); None when disabled."""
    e = cfg.get("export")
    if not e or not e.get("enabled", True):
        return None
    node = e.copy()
    with open_dict(node):
        node.setdefault("_target_", EXPORT_OPTIONS)  # runs saved before export had a _target_
    return instantiate_known(node)


def build_exporter(cfg: DictConfig, datamodule: TextDataModule, distill: dict | None,
                   teacher_metrics: dict) -> ExportAndBenchmark | None:
    """The export-and-benchmark callback of ``cfg.export`` (None when disabled), with the teacher to compare."""
    options = export_options(cfg)
    if options is None:
        return None
    teacher = None
    if cfg.export.get("teacher", True) and options.benchmark and (distill or cfg.teacher.get("source")):
        folder = distill["teacher_dir"] if distill else resolve_source(str(cfg.teacher.source))
        teacher = {"folder": str(folder), "name": cfg.teacher.get("source") or folder,
                   "max_length": cfg.teacher.max_length, "num_labels": datamodule.num_labels,
                   "accuracy": 100 * teacher_metrics["teacher/test_acc"] if "teacher/test_acc" in teacher_metrics
                   else None}
    extra = {"run_dir": str(Path(cfg.paths.output_dir).resolve()), "task_name": cfg.get("task_name")}
    return ExportAndBenchmark(cfg.export.out_dir, options, teacher=teacher, extra=extra)


def bundle_summary(exporter: ExportAndBenchmark) -> dict:
    """What metrics.json says about the bundle: where, the fast variant and its headline numbers."""
    report = exporter.report
    fast = report["variants"][report["fast"]]
    summary = {"dir": str(exporter.out_dir), "fast": report["fast"], "fast_accuracy": fast["parity"]["accuracy"],
               "fast_agreement": fast["parity"]["agreement"]}
    if "latency" in fast:
        summary.update(fast_p50_ms=fast["latency"]["p50_ms"], fast_p99_ms=fast["latency"]["p99_ms"],
                       fast_texts_per_s=fast["throughput"])
    if "end_to_end" in report:  # through the Predictor, tokenization included: what the frontier compares
        e2e = report["end_to_end"]
        largest = max(e2e["throughput"], key=int)
        summary.update(e2e_p50_ms=e2e["latency"]["p50_ms"], e2e_texts_per_s=e2e["throughput"][largest],
                       e2e_batch=int(largest))
    if "teacher" in report:
        summary["teacher_p50_ms"] = report["teacher"]["latency"]["p50_ms"]
    return summary
