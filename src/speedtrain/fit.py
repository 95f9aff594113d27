"""One stage of a run: fit the configured model, evaluate its best checkpoint, write ``metrics.json`` and ``model/``.

A run is one stage (``+experiment=baseline|teacher``) or two (``+experiment=distill``: the teacher's fine-tuning,
:mod:`speedtrain.teacher_stage`, then the student's). :mod:`speedtrain.pipeline` wires them.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig

from speedtrain import stopping
from speedtrain.builders import build_model, build_module, data_on_device
from speedtrain.callbacks.export_bench import build_exporter, bundle_summary
from speedtrain.checkpoints import best_checkpoint, best_student, evaluate, is_deepspeed
from speedtrain.data.datamodule import TextDataModule
from speedtrain.distill.teacher import store_teacher, student_vs_teacher
from speedtrain.families import check_budget, grow_batch, model_name
from speedtrain.loggers import log_confusion_matrix
from speedtrain.models.student import count_parameters
from speedtrain.resume import describe_checkpoint, resume_checkpoint, track_trainer
from speedtrain.summary import print_summary
from speedtrain.trainer import build_trainer, speed_options

log = logging.getLogger(__name__)


def fit_and_evaluate(
    cfg: DictConfig, datamodule: TextDataModule, started: float, timings: dict, stage: str = "",
    distill: dict | None = None, store_teacher_as: str | None = None,
) -> dict:
    """Fit ``cfg``'s model, evaluate its best checkpoint, write ``metrics.json`` and ``model/``; return the metrics.

    Args:
        started: ``perf_counter()`` at the start of the run; timings: what the run measured so far (data_s).
        stage: ``"teacher"`` for stage 1 of a distillation run: its metrics are logged with that prefix, the
            config is not logged again and no bundle is exported.
        distill: the teacher's metrics (``teacher_metrics``), ``teacher_dir`` and the DistillModule's arguments
            (``module``: loss, teacher, ...), from :func:`speedtrain.teacher_stage.prepare_distillation`.
        store_teacher_as: a teacher-cache key: the fine-tuned model is stored in the teacher cache under it.
    """
    teacher_metrics = distill["teacher_metrics"] if distill else {}
    if not stage and grow_batch(cfg, len(datamodule.encoded["train"])):  # large data: the family's fast path
        datamodule.batch_size, datamodule.on_device = int(cfg.data.batch_size), data_on_device(cfg)
    exporter = None if stage else build_exporter(cfg, datamodule, distill, teacher_metrics)
    trainer = build_trainer(cfg, prefix=stage, extra_callbacks=[exporter] if exporter else [],
                            train_rows=len(datamodule.encoded["train"]))
    pl.seed_everything(cfg.seed, workers=True)  # the same student whether or not stage 1 ran before
    model = build_model(cfg, datamodule)
    if distill and distill.get("init") is not None:  # model.init=teacher: the table starts from the teacher
        distill["init"](model)
    module, plan = build_module(cfg, datamodule, trainer, model=model, **(distill["module"] if distill else {}))

    resume = resume_checkpoint(cfg.paths.output_dir)
    if resume is not None:
        log.info("Resuming from %s (%s)", resume, describe_checkpoint(resume))
    fit_started = time.perf_counter()
    with track_trainer(trainer):  # a SLURM preemption saves this fit (speedtrain.launcher)
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None)
    stopping.check("after training finished (its checkpoints are complete)")  # a signal during the last validation
    fit_s = time.perf_counter() - fit_started
    best = best_checkpoint(trainer)  # None after fast_dev_run: the weights in memory are evaluated
    metrics = evaluate(trainer, module, datamodule, best, test=cfg.get("test", True))
    metrics.update(
        objective=cfg.objective,
        resumed_from=str(resume) if resume else None,
        best_checkpoint=best,
        epochs=trainer.current_epoch,
        global_step=trainer.global_step,
        seed=cfg.seed,
        model_family=model_name(cfg),
        params=count_parameters(model),
        batch=plan,
        speed={"data_on_device": datamodule.on_device, "length_buckets": datamodule.length_buckets,
               **speed_options(cfg)},
        data={split: len(ds) for split, ds in datamodule.splits.items()}
        | {"num_labels": datamodule.num_labels, "vocab_size": len(datamodule.tokenizer)},
        timings={**timings, "fit_s": fit_s, "total_s": time.perf_counter() - started},
    )
    if teacher_metrics:
        metrics.update(teacher_metrics, **student_vs_teacher(metrics, teacher_metrics))
    if exporter is not None and exporter.seconds is not None:
        metrics["timings"]["export_s"] = exporter.seconds  # it ran inside fit (on_fit_end)
        metrics["timings"]["fit_s"] -= exporter.seconds
        if exporter.report is not None:
            metrics["bundle"] = bundle_summary(exporter)
            check_budget(cfg, metrics["bundle"].get("e2e_p50_ms"))
    if trainer.is_global_zero:  # under DDP every rank has the metrics; one writes them
        write_outputs(cfg, metrics, best_student(model, trainer) if is_deepspeed(trainer) else model,
                      datamodule, stage, store_teacher_as)
    if not stage:
        log_confusion_matrix(trainer.loggers, getattr(module, "test_predictions", None), datamodule.label_names)
    trainer.strategy.barrier()  # other ranks read model/ and the teacher cache only once rank 0 wrote them
    if exporter is not None and exporter.error is not None:
        raise exporter.error  # after checkpoints, metrics.json and model/ are written: nothing is lost
    return metrics


def write_outputs(cfg: DictConfig, metrics: dict, model, datamodule: TextDataModule, stage: str,
                  store_teacher_as: str | None) -> None:
    """``model/`` (the best checkpoint's weights: evaluation loaded them; DeepSpeed's consolidated to fp32 first),
    ``metrics.json``, the teacher cache entry, and the summary on the console."""
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir / "model")
    datamodule.tokenizer.save_pretrained(output_dir / "model")
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if store_teacher_as:
        metrics["teacher_cache"] = str(store_teacher(output_dir / "model", cfg.paths.cache_dir, store_teacher_as,
                                                     metrics))
    print_summary(metrics, output_dir, title=f"speedtrain {stage or 'run'}")
