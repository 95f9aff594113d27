"""The Lightning Trainer of ``cfg.trainer``: checked against this machine, built with its strategy, callbacks and
loggers, and the global batch / learning-rate scaling it implies.

``cfg.trainer`` is the Trainer's arguments (``strategy`` may be a node with ``_target_``: a DDP or DeepSpeed
strategy built from config) plus ``speed``, speedtrain's own switches for the module (``torch.compile``, fused
optimizer, attention, learning-rate scaling). The data's own (on the device, length buckets) are in ``cfg.data``.
"""

from __future__ import annotations

import logging
import math

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from speedtrain.callbacks.memory import KeepFreedMemory
from speedtrain.errors import UserError
from speedtrain.launcher import prepare_ddp_relaunch
from speedtrain.loggers import build_loggers

log = logging.getLogger(__name__)

LR_SCALING = ("none", "linear", "sqrt")
COMPILE_MODES = (False, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
ATTENTION = (None, "eager", "sdpa")
DEFAULT_SPEED = {"compile": False, "fused_optimizer": False, "lr_scaling": "sqrt", "attention": None,
                 "keep_freed_memory": True}


def speed_options(cfg: DictConfig) -> dict:
    """``cfg.trainer.speed`` with its defaults, checked."""
    speed = DEFAULT_SPEED | OmegaConf.to_container(cfg.trainer.get("speed") or {}, resolve=True)
    if speed["compile"] is True:
        speed["compile"] = "default"
    if speed["compile"] not in COMPILE_MODES:
        raise UserError(f"trainer.speed.compile={speed['compile']!r} is not one of {list(COMPILE_MODES)}; "
                        "e.g. trainer.speed.compile=default")
    if speed["lr_scaling"] not in LR_SCALING:
        raise UserError(f"trainer.speed.lr_scaling={speed['lr_scaling']!r} is not one of {list(LR_SCALING)}")
    if speed["attention"] not in ATTENTION:
        raise UserError(f"trainer.speed.attention={speed['attention']!r} is not one of {list(ATTENTION)}; "
                        "e.g. trainer.speed.attention=eager (null keeps the model's own)")
    for key in ("data_on_device", "length_buckets"):  # runs saved before they moved to data.on_device/length_buckets
        if key in speed and "on_device" in (cfg.get("data") or {}):  # a new config: typed on the command line
            raise UserError(f"trainer.speed.{key} is now data.{key.removeprefix('data_')}: pass "
                            f"data.{key.removeprefix('data_')}={speed[key]} instead")
        speed.pop(key, None)
    return speed


def strategy_name(cfg: DictConfig) -> str:
    """The strategy as a short lowercase name: ``auto``, ``ddp``, ``deepspeed``, ... (from a string or a node)."""
    strategy = cfg.trainer.get("strategy", "auto")
    if isinstance(strategy, DictConfig):
        return strategy.get("_target_", "").rsplit(".", 1)[-1].removesuffix("Strategy").lower() or "custom"
    return str(strategy).lower()


def check_trainer(cfg: DictConfig) -> None:
    """Refuse a trainer this machine cannot run, before any work: one message naming the fix."""
    t = cfg.trainer
    accelerator, devices, strategy = str(t.get("accelerator", "auto")), t.get("devices", "auto"), strategy_name(cfg)
    cuda = torch.cuda.is_available()
    wants_gpu = accelerator in ("gpu", "cuda")
    if strategy.startswith("deepspeed") and (not cuda or accelerator == "cpu"):
        raise UserError(f"trainer.strategy={strategy} (DeepSpeed ZeRO) needs CUDA GPUs, and "
                        f"{'this machine has none' if not cuda else 'trainer.accelerator=cpu'}; use trainer=cpu, or "
                        "trainer=ddp trainer.accelerator=cpu for several CPU processes")
    if wants_gpu and not cuda:
        raise UserError(f"trainer.accelerator={accelerator} needs a CUDA GPU and torch sees none "
                        "(torch.cuda.is_available() is False); use trainer=cpu (or trainer=ddp "
                        "trainer.accelerator=cpu for several CPU processes)")
    if wants_gpu and isinstance(devices, int) and devices > torch.cuda.device_count():
        raise UserError(f"trainer.devices={devices} but this machine has {torch.cuda.device_count()} CUDA GPU(s); use "
                        f"trainer.devices={torch.cuda.device_count()} or fewer (-1: all of them)")
    if isinstance(devices, int) and devices > 1 and strategy in ("auto", "single_device"):
        raise UserError(f"trainer.devices={devices} with trainer.strategy={strategy}: pick a parallel trainer, e.g. "
                        f"trainer=ddp trainer.devices={devices}")
    speed_options(cfg)


def lr_scale(rule: str, replicas: int) -> float:
    """The learning-rate factor for a global batch ``replicas`` times one device's batch."""
    return {"none": 1.0, "linear": float(replicas), "sqrt": math.sqrt(replicas)}[rule]


def batch_plan(cfg: DictConfig, trainer: pl.Trainer) -> dict:
    """The global batch and the learning rate the run uses, derived from the per-device batch and the trainer.

    Returns:
        ``batch_size`` (per device), ``world_size``, ``accumulate_grad_batches``, ``global_batch_size``,
        ``lr_scaling``, ``lr_base`` (``module.optimizer.lr``) and ``lr`` (the scaled rate the optimizer gets).
    """
    accumulate = int(trainer.accumulate_grad_batches)
    world = int(trainer.num_devices) * int(trainer.num_nodes)
    rule = speed_options(cfg)["lr_scaling"]
    base = cfg.module.optimizer.get("lr")
    plan = {"batch_size": int(cfg.data.batch_size), "world_size": world, "accumulate_grad_batches": accumulate,
            "global_batch_size": int(cfg.data.batch_size) * world * accumulate, "lr_scaling": rule, "lr_base": base}
    plan["lr"] = base * lr_scale(rule, world * accumulate) if base is not None else None
    return plan


def scaled_module_config(cfg: DictConfig, plan: dict) -> DictConfig:
    """``cfg.module`` with ``optimizer.lr`` set to the plan's scaled rate."""
    module = cfg.module.copy()
    if plan["lr"] is not None:
        with open_dict(module):
            module.optimizer.lr = plan["lr"]
    return module


def build_trainer(cfg: DictConfig, prefix: str = "", extra_callbacks: list | None = None,
                  train_rows: int | None = None) -> pl.Trainer:
    """The Lightning Trainer of ``cfg.trainer`` (without ``speed``) with the configured callbacks and loggers.

    Args:
        prefix: logged metric names start with it (stage 1's ``teacher``), and the config is not logged: the
            distillation run that follows logs its own.
        extra_callbacks: built by the pipeline (the export callback).
        train_rows: training inputs per epoch; with ``trainer.min_steps`` the epochs are raised to reach it.
    """
    check_trainer(cfg)
    prepare_ddp_relaunch()  # in a multirun, DDP's extra ranks run this job, not the sweep
    loggers = build_loggers(cfg.get("logger"), cfg.paths.output_dir, prefix=prefix)
    callbacks = build_callbacks(cfg) + list(extra_callbacks or [])
    if speed_options(cfg)["keep_freed_memory"]:
        callbacks.append(KeepFreedMemory())
    node = cfg.trainer.copy()
    with open_dict(node):
        node.pop("speed", None)
        epochs = epochs_for_min_steps(node, train_rows, int(cfg.data.batch_size))
        if epochs != node.get("max_epochs"):
            log.info("trainer.min_steps=%s: %d epochs instead of %s over %d training inputs", node.min_steps, epochs,
                     node.get("max_epochs"), train_rows)
            node.max_epochs = epochs
    trainer = instantiate(node, callbacks=callbacks, logger=loggers or False)
    plan = batch_plan(cfg, trainer)
    log.info("Global batch %d (%d per device x %d devices x %d accumulation); lr %.3g (%s scaling of %.3g)",
             plan["global_batch_size"], plan["batch_size"], plan["world_size"], plan["accumulate_grad_batches"],
             plan["lr"] or 0, plan["lr_scaling"], plan["lr_base"] or 0)
    for logger in loggers if not prefix else []:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True) | {"derived": plan})
    return trainer


def predict_trainers(cfg: DictConfig):
    """For a run of several processes (a parallel ``trainer.strategy``): ``callbacks -> Trainer`` to label texts with
    the teacher through Lightning's predict loop, on the run's accelerator, devices, nodes and precision. Its
    strategy is the run's DDP one (DeepSpeed and others: plain DDP, the teacher is replicated). None for a run of
    one process (it labels in process)."""
    name = strategy_name(cfg)
    if name in ("auto", "single_device"):
        return None
    t = cfg.trainer

    def make(callbacks: list[pl.Callback]) -> pl.Trainer:
        check_trainer(cfg)
        prepare_ddp_relaunch()
        strategy = t.strategy if name.startswith("ddp") else "ddp"
        return pl.Trainer(accelerator=t.get("accelerator", "auto"), devices=t.get("devices", "auto"),
                          num_nodes=t.get("num_nodes", 1), precision=t.get("precision"),
                          strategy=instantiate(strategy) if isinstance(strategy, DictConfig) else strategy,
                          callbacks=callbacks, logger=False, enable_checkpointing=False, enable_model_summary=False)

    return make


def labelling_device(cfg: DictConfig) -> str:
    """Where a run of one process has the teacher label its texts: ``cuda`` when the run trains on a GPU
    (``trainer.accelerator`` gpu, cuda or auto, with CUDA available), else ``cpu``. Labelling used to stay on the
    CPU there, so a GPU run's teacher labelled a transfer set with the host's cores while the GPU idled."""
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    return "cuda" if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available() else "cpu"


def fit_epochs(cfg: DictConfig, train_rows: int) -> int | None:
    """The epochs a fit of ``cfg`` on ``train_rows`` training inputs makes (``trainer.min_steps`` counted)."""
    return epochs_for_min_steps(cfg.trainer, train_rows, int(cfg.data.batch_size))


def epochs_for_min_steps(trainer: DictConfig, train_rows: int | None, batch_size: int) -> int | None:
    """``trainer.max_epochs``, raised so that the run makes at least ``trainer.min_steps`` optimizer steps.

    Lightning stops at ``max_epochs`` even before ``min_steps`` (which only holds off early stopping), so a small
    data set would get few steps: 5 epochs of 1,600 texts are 250 steps of 32. Unchanged without ``min_steps``,
    without ``train_rows``, or when batches, steps or epochs are limited some other way.
    """
    epochs, min_steps = trainer.get("max_epochs"), trainer.get("min_steps")
    limited = (trainer.get("limit_train_batches") not in (None, 1.0) or trainer.get("fast_dev_run")
               or trainer.get("overfit_batches") or (trainer.get("max_steps") or -1) > 0)
    if not min_steps or not train_rows or epochs is None or epochs < 0 or limited:
        return epochs
    devices = trainer.get("devices") if isinstance(trainer.get("devices"), int) else 1
    world = max(1, devices) * int(trainer.get("num_nodes") or 1) * int(trainer.get("accumulate_grad_batches") or 1)
    steps_per_epoch = max(1, math.ceil(train_rows / (batch_size * world)))
    return max(epochs, math.ceil(min_steps / steps_per_epoch))


def build_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    """``cfg.callbacks``, without the progress bar when ``trainer.enable_progress_bar=false``."""
    bar = cfg.trainer.get("enable_progress_bar", True)
    nodes = (cfg.get("callbacks") or {}).values()
    return [instantiate(n) for n in nodes if n is not None and (bar or "ProgressBar" not in n.get("_target_", ""))]
