"""run(cfg) -> objective: seed, build everything from the config, fit, test the best checkpoint, write metrics.

    python train.py +experiment=baseline
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from transformers import AutoConfig

from speedtrain.callbacks.export_bench import best_student, build_exporter, bundle_summary, export_options
from speedtrain.data.datamodule import TextDataModule
from speedtrain.distill.teacher import (
    attach_teacher,
    cached_teacher,
    is_teacher_run,
    store_teacher,
    student_vs_teacher,
    teacher_key,
    teacher_run_config,
)
from speedtrain.errors import UserError
from speedtrain.families import apply_latency_budget, builder_config, check_budget, check_family, model_name
from speedtrain.loggers import finish_wandb, log_confusion_matrix
from speedtrain.models.student import count_parameters
from speedtrain.models.teacher import load_tokenizer, resolve_source
from speedtrain.resume import resume_checkpoint, resumed_config, track_trainer
from speedtrain.summary import print_summary
from speedtrain.trainer import (
    batch_plan,
    build_trainer,
    check_trainer,
    is_deepspeed,
    scaled_module_config,
    speed_options,
)

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> float | None:
    """Train the configured model and return ``metrics[cfg.objective]`` (for Hydra sweepers).

    Writes ``<output_dir>/metrics.json``, ``checkpoints/`` and ``model/`` (a Hugging Face folder of the best
    checkpoint: ``AutoModelForSequenceClassification`` and ``AutoTokenizer`` load it). A distillation run
    without a cached teacher first fine-tunes one (stage 1) into ``<output_dir>/teacher/``. A folder that holds a
    checkpoint of an interrupted run (``resume=<run>``, or ``hydra.run.dir=<run>``) continues from it.
    """
    cfg = apply_latency_budget(apply_debug(resumed_config(cfg)))
    check_config(cfg)
    try:
        return _run(cfg)
    finally:
        finish_wandb()


def _run(cfg: DictConfig) -> float | None:
    started = time.perf_counter()
    datamodule = build_datamodule(cfg)
    datamodule.prepare()
    timings = {"data_s": time.perf_counter() - started}
    if not cfg.get("distill"):
        store = is_teacher_run(cfg) and cfg.teacher.get("cache", True)
        key = teacher_key(cfg, datamodule.data_digest) if store else None
        metrics = fit_and_evaluate(cfg, datamodule, started, timings, store_teacher_as=key)
        return metrics.get(cfg.objective)
    loss = instantiate(cfg.distill.loss)  # a bad alpha/T fails before any teacher work
    teacher_dir, stage1 = ensure_teacher(cfg, datamodule)
    distill = {"loss": loss, "teacher_dir": teacher_dir, "stage1": stage1}
    return fit_and_evaluate(cfg, datamodule, started, timings, distill=distill).get(cfg.objective)


def ensure_teacher(cfg: DictConfig, datamodule: TextDataModule) -> tuple[str, dict]:
    """The fine-tuned teacher's folder: ``teacher.path``, a cached teacher, or one fine-tuned now (stage 1).

    Returns:
        The folder and what stage 1 did (``teacher/cached``, ``teacher/key``, ``teacher/fit_s``).
    """
    started, t = time.perf_counter(), cfg.teacher
    if t.get("path"):
        return t.path, {"teacher/source": str(t.path)}
    if not t.get("source"):
        raise UserError("distillation needs a teacher: pick one (teacher=minilm) or pass teacher.path=<folder> of "
                        "a fine-tuned teacher")
    teacher_cfg = teacher_run_config(cfg, Path(cfg.paths.output_dir) / "teacher")
    teacher_data = build_datamodule(teacher_cfg)
    teacher_data.prepare()
    timings = {"data_s": time.perf_counter() - started}
    key = teacher_key(teacher_cfg, teacher_data.data_digest)
    found = cached_teacher(cfg.paths.cache_dir, key) if t.get("cache", True) else None
    if found is not None:
        log.info("Using the cached teacher %s", found)
        return str(found), {"teacher/cached": True, "teacher/key": key, "teacher/source": t.source}
    log.info("Stage 1/2: fine-tuning the teacher %s (no cached teacher %s)", t.source, key)
    metrics = fit_and_evaluate(teacher_cfg, teacher_data, started, timings, stage="teacher",
                               store_teacher_as=key if t.get("cache", True) else None)
    log.info("Stage 2/2: distilling the teacher into the student")
    cached = cached_teacher(cfg.paths.cache_dir, key)
    if cached is not None:  # stage 1 is done for good: its resume checkpoint (weights + optimizer) can go
        (Path(teacher_cfg.paths.output_dir) / "checkpoints" / "last.ckpt").unlink(missing_ok=True)
    folder = cached or Path(teacher_cfg.paths.output_dir) / "model"
    return str(folder), {"teacher/cached": False, "teacher/key": key, "teacher/source": t.source,
                         "teacher/fit_s": metrics["timings"]["total_s"]}


def fit_and_evaluate(
    cfg: DictConfig, datamodule: TextDataModule, started: float, timings: dict, stage: str = "",
    distill: dict | None = None, store_teacher_as: str | None = None,
) -> dict:
    """Fit ``cfg``'s model, evaluate its best checkpoint, write ``metrics.json`` and ``model/``; return the metrics.

    Args:
        started: ``perf_counter()`` at the start of the run; timings: what the run measured so far (data_s).
        stage: ``"teacher"`` for stage 1 of a distillation run: its metrics are logged with that prefix and
            the run's config is not logged again.
        distill: ``loss`` (the KD loss), ``teacher_dir`` (a fine-tuned teacher) and ``stage1`` (what stage 1 did).
        store_teacher_as: a teacher-cache key: the fine-tuned model is stored in the teacher cache under it.
    """
    teacher_metrics, extra = {}, {}
    if distill:  # the student learns from a fine-tuned teacher
        teacher_metrics, extra = prepare_distillation(cfg, datamodule, **distill)
        timings["teacher_s"] = time.perf_counter() - started - timings["data_s"]  # stage 1 and the teacher outputs
    exporter = None if stage else build_exporter(cfg, datamodule, distill, teacher_metrics)
    trainer = build_trainer(cfg, prefix=stage, extra_callbacks=[exporter] if exporter else [],
                            train_rows=len(datamodule.encoded["train"]))
    plan = batch_plan(cfg, trainer)  # the global batch and the learning rate scaled to it
    speed = speed_options(cfg)
    pl.seed_everything(cfg.seed, workers=True)  # the same student whether or not stage 1 ran before
    model = build_model(cfg, datamodule)
    module = instantiate(scaled_module_config(cfg, plan), model=model, num_labels=datamodule.num_labels,
                         compile=speed["compile"], fused_optimizer=speed["fused_optimizer"],
                         attention=speed["attention"], **extra)

    resume = resume_checkpoint(cfg.paths.output_dir)
    if resume is not None:
        log.info("Resuming from %s", resume)
    fit_started = time.perf_counter()
    with track_trainer(trainer):  # a SLURM preemption saves this fit (speedtrain.launcher)
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None)
    fit_s = time.perf_counter() - fit_started
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    ckpt_path = best or None  # fast_dev_run saves no checkpoint: evaluate the weights in memory
    metrics = _evaluate(trainer, module, datamodule, ckpt_path, test=cfg.get("test", True))
    metrics.update(
        objective=cfg.objective,
        resumed_from=str(resume) if resume else None,
        best_checkpoint=best or None,
        epochs=trainer.current_epoch,
        global_step=trainer.global_step,
        seed=cfg.seed,
        model_family=model_name(cfg),
        params=count_parameters(model),
        batch=plan,
        speed=speed,
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
        output_dir = Path(cfg.paths.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        # the best checkpoint's weights (_evaluate loaded them); DeepSpeed's, consolidated to fp32 first
        saved = best_student(model, trainer) if is_deepspeed(trainer) else model
        saved.save_pretrained(output_dir / "model")
        datamodule.tokenizer.save_pretrained(output_dir / "model")
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        if store_teacher_as:
            metrics["teacher_cache"] = str(store_teacher(output_dir / "model", cfg.paths.cache_dir,
                                                         store_teacher_as, metrics))
        print_summary(metrics, output_dir, title=f"speedtrain {stage or 'run'}")
    if not stage:
        log_confusion_matrix(trainer.loggers, getattr(module, "test_predictions", None), datamodule.label_names)
    trainer.strategy.barrier()  # other ranks read model/ and the teacher cache only once rank 0 wrote them
    if exporter is not None and exporter.error is not None:
        raise exporter.error  # after checkpoints, metrics.json and model/ are written: nothing is lost
    return metrics


def prepare_distillation(
    cfg: DictConfig, datamodule: TextDataModule, loss, teacher_dir: str, stage1: dict
) -> tuple[dict, dict]:
    """Bring the teacher's outputs (cached) or the teacher itself (online) to ``datamodule``.

    Returns:
        The teacher's metrics, and the DistillModule arguments (loss, teacher, intermediate loss, sizes).
    """
    d = cfg.distill
    augment = OmegaConf.to_container(d.augment, resolve=True) if d.get("augment") else None
    inter = d.get("intermediate")
    if inter is not None and cfg.model.get("num_hidden_layers") is None:
        log.warning("The student (model=%s) has no hidden layers to match the teacher's: distilling logits only "
                    "(distill=logits)", model_name(cfg))
        inter = None
    teacher_config = None
    if inter is not None:  # check the layer map before any teacher work
        teacher_config = AutoConfig.from_pretrained(resolve_source(str(teacher_dir)))
        instantiate(inter, student_width=1, teacher_width=1, shared_tokens=True,
                    teacher_layers=teacher_config.num_hidden_layers, student_layers=cfg.model.get("num_hidden_layers"))
    shared = load_tokenizer(teacher_dir).get_vocab() == datamodule.tokenizer.get_vocab()
    # token-level intermediate terms need the teacher online; per-text ones (other tokenizers) are cached
    online = d.get("teacher_logits", "cache") == "online" or (inter is not None and shared)
    layers = tuple(pair[1] for pair in inter.layer_map) if inter is not None and not online else ()
    metrics, teacher = attach_teacher(cfg.teacher, teacher_dir, datamodule, cfg.paths.cache_dir, augment,
                                      online=online, hidden_layers=layers)
    metrics.update(stage1, **{"distill/teacher_logits": "online" if online else "cache"})
    extra = {"loss": loss, "teacher": teacher, "shared_tokens": shared}
    if inter is not None:
        extra["intermediate"] = instantiate(inter, _partial_=True)
        # the sizes as a dict (Hydra would convert a config object)
        extra["teacher_config"] = {k: getattr(teacher_config, k) for k in ("hidden_size", "num_hidden_layers")}
    return metrics, extra


def build_model(cfg: DictConfig, datamodule: TextDataModule):
    """The student of ``cfg.model`` (its ``family`` and ``recipe`` are for the experiments, not the builder), sized
    to the datamodule's tokenizer and labels."""
    return instantiate(
        builder_config(cfg.model),
        vocab_size=len(datamodule.tokenizer),
        num_labels=datamodule.num_labels,
        pad_token_id=datamodule.tokenizer.pad_token_id,
        id2label=dict(enumerate(datamodule.label_names)),
    )


def build_datamodule(cfg: DictConfig) -> TextDataModule:
    """The DataModule for ``cfg.data`` with the student tokenizer of ``cfg.tokenizer``."""
    d = cfg.data
    return TextDataModule(
        source=instantiate(d.source, _partial_=True),
        tokenizer=OmegaConf.to_container(cfg.tokenizer, resolve=True),
        cache_dir=cfg.paths.cache_dir,
        max_length=d.max_length,
        batch_size=d.batch_size,
        eval_batch_size=d.eval_batch_size,
        num_workers=d.num_workers,
        pin_memory=d.pin_memory,
        val_fraction=d.val_fraction,
        test_fraction=d.test_fraction,
        split_seed=d.split_seed,
        group_by_length=d.get("group_by_length", False),
        seed=cfg.seed,
        on_device=speed_options(cfg)["data_on_device"],
        length_buckets=speed_options(cfg)["length_buckets"],
    )


def apply_debug(cfg: DictConfig) -> DictConfig:
    """Merge ``debug.trainer`` (set by ``debug=fdr|limit|overfit``) over ``trainer``, so it wins over the experiment."""
    if not cfg.get("debug") or not cfg.debug.get("trainer"):
        return cfg
    return OmegaConf.merge(cfg, {"trainer": cfg.debug.trainer})


def check_config(cfg: DictConfig) -> None:
    """Reject values that would fail deep inside a library, naming the value and the fix."""
    check_trainer(cfg)  # a GPU or DeepSpeed trainer on a machine without CUDA fails here, before any work
    missing = sorted(_missing_keys(cfg))
    if missing:
        example = " ".join(f"{k}=<value>" for k in missing)
        raise UserError(f"config value(s) {missing} are required but not set; pass them, e.g. {example}")
    lr = cfg.module.optimizer.get("lr")
    if lr is not None and not lr > 0:
        raise UserError(f"module.optimizer.lr={lr} must be positive, e.g. module.optimizer.lr=2e-3")
    epochs = cfg.trainer.get("max_epochs")
    if epochs is not None and epochs != -1 and epochs <= 0:
        raise UserError(f"trainer.max_epochs={epochs} must be positive (or -1 for no limit)")
    options = export_options(cfg)
    check_family(cfg, prune=options is not None and options.prune.enabled)
    if cfg.teacher.get("ngram") and (cfg.get("distill") or {}).get("teacher_logits") == "online":  # before stage 1
        raise UserError("teacher=ensemble needs cached teacher logits (its n-gram half cannot run every step): pass "
                        "distill.teacher_logits=cache, or teacher=minilm to distil online")
    if cfg.objective.split("/")[0] not in ("val", "test"):
        raise UserError(f"objective={cfg.objective!r} must be a val/ or test/ metric, e.g. objective=val/acc")


def _missing_keys(node: DictConfig, prefix: str = ""):
    """Keys set to ``???`` (OmegaConf.missing_keys raises on interpolations that point at them)."""
    for key in node.keys():
        if key == "hydra" or OmegaConf.is_interpolation(node, key):
            continue
        if OmegaConf.is_missing(node, key):
            yield f"{prefix}{key}"
        elif isinstance(node[key], DictConfig):
            yield from _missing_keys(node[key], f"{prefix}{key}.")


def _evaluate(trainer: pl.Trainer, module, datamodule, ckpt_path: str | None, test: bool) -> dict:
    """val/* (and test/*) metrics of the checkpoint at ``ckpt_path`` (None: the weights in memory)."""
    metrics = {}
    stages = [trainer.validate] + ([trainer.test] if test else [])
    zero3 = is_deepspeed(trainer) and trainer.strategy.zero_stage_3 and ckpt_path and Path(ckpt_path).is_dir()
    if zero3:
        ckpt_path = _consolidated(trainer, ckpt_path)
        configured, trainer.strategy.load_full_weights = trainer.strategy.load_full_weights, True  # one file
    try:
        for stage in stages:
            for result in stage(module, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False):
                metrics.update({k: float(v) for k, v in result.items()})
    finally:
        if zero3:
            trainer.strategy.load_full_weights = configured  # a later fit resumes from the shards
    return metrics


def _consolidated(trainer: pl.Trainer, shards: str) -> str:
    """A ZeRO-3 checkpoint (a folder of shards) consolidated to one fp32 Lightning checkpoint beside it
    (``<name>-fp32.ckpt``), which validate/test load through Lightning's ``load_full_weights``.

    DeepSpeed's ZeRO-3 engine for evaluation has no optimizer and cannot load its own shards (DeepSpeed 0.19:
    ``'DeepSpeedZeRoOffload' object has no attribute '_restore_from_bit16_weights'``, seen on an H200); ZeRO-1/2
    shards load natively.
    """
    from pytorch_lightning.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

    target = Path(shards).with_name(Path(shards).stem + "-fp32.ckpt")
    if trainer.is_global_zero:
        convert_zero_checkpoint_to_fp32_state_dict(shards, str(target))
    trainer.strategy.barrier()  # every rank reads the file; rank 0 loads it into the gathered parameters
    return str(target)
