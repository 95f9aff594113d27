"""run(cfg) -> objective: the wiring of one run. Seed, check the config, build the data, find the teacher (stage 1,
a distillation run only), fit and evaluate (:mod:`speedtrain.fit`), return the objective for Hydra's sweepers.

    python train.py +experiment=baseline
"""

from __future__ import annotations

import logging
import time

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from speedtrain.builders import build_datamodule
from speedtrain.callbacks.export_bench import export_options
from speedtrain.distill.teacher import is_teacher_run, teacher_key
from speedtrain.errors import UserError
from speedtrain.families import apply_latency_budget, check_family
from speedtrain.fit import fit_and_evaluate
from speedtrain.lit.distill import check_mixup
from speedtrain.loggers import finish_wandb
from speedtrain.resume import continue_hint, resumed_config
from speedtrain.stopping import DEFAULT_SIGNALS, Stopped, handle_stop_signals, report
from speedtrain.teacher_stage import check_crossfit, ensure_teacher, prepare_distillation, read_unlabeled
from speedtrain.trainer import check_trainer, fit_epochs

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
    signals = ((cfg.get("callbacks") or {}).get("checkpoint") or {}).get("signals", DEFAULT_SIGNALS)
    stopped = None
    try:
        with handle_stop_signals(signals):  # SIGTERM, SIGINT, ...: save where the run is, then exit 128+signal
            return _run(cfg)
    except Stopped as err:
        stopped = err
        err.message += continue_hint(cfg.paths.output_dir)
        if _rank_zero():
            report(err)
        raise
    finally:
        finish_wandb(exit_code=stopped.code if stopped else 0, preempted=stopped is not None)


def _rank_zero() -> bool:
    from lightning_fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def _run(cfg: DictConfig) -> float | None:
    started = time.perf_counter()
    datamodule = build_datamodule(cfg)
    datamodule.prepare()
    timings = {"data_s": time.perf_counter() - started, "data_steps_s": dict(datamodule.timings)}
    if not cfg.get("distill"):
        store = is_teacher_run(cfg) and cfg.teacher.get("cache", True)
        key = teacher_key(cfg, datamodule.data_digest, fit_epochs(cfg, len(datamodule.encoded["train"]))) if store else None
        metrics = fit_and_evaluate(cfg, datamodule, started, timings, store_teacher_as=key)
        return metrics.get(cfg.objective)
    loss = instantiate(cfg.distill.loss)  # a bad alpha/T fails before any teacher work
    unlabeled = read_unlabeled(cfg)  # so does a bad distill.unlabeled
    teacher_dir, stage1 = ensure_teacher(cfg)
    distill = prepare_distillation(cfg, datamodule, loss, teacher_dir, stage1, unlabeled)
    timings["teacher_s"] = time.perf_counter() - started - timings["data_s"]  # stage 1 and the teacher outputs
    return fit_and_evaluate(cfg, datamodule, started, timings, distill=distill).get(cfg.objective)


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
    if cfg.get("distill"):
        check_crossfit(cfg)  # before the data is read
        check_mixup(cfg.distill.get("mixup") or 0.0)
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
