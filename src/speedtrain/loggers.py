"""Experiment loggers from the ``logger`` config group; W&B kept offline and inside the run folder by default."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.loggers import Logger


def build_loggers(cfg: DictConfig | None, output_dir: str | os.PathLike, prefix: str = "") -> list[Logger]:
    """Instantiate every logger in ``cfg`` (a mapping name -> ``_target_`` node; empty for ``logger=none``).

    Args:
        prefix: metric names start with ``<prefix>-`` (Lightning's logger ``prefix``). A second W&B logger in
            the same process (stage 2 of a distillation run after stage 1) continues the same W&B run.
    """
    loggers = []
    for node in (cfg or {}).values():
        if node is None:
            continue
        extra = {"prefix": prefix} if prefix else {}
        if "WandbLogger" in node.get("_target_", ""):
            loggers.append(_wandb(node, Path(output_dir), **extra))
        else:
            loggers.append(instantiate(node, **extra))
    return loggers


def _wandb(node: DictConfig, output_dir: Path, **kwargs) -> Logger:
    """W&B that never prompts: offline without ``WANDB_API_KEY``; every file under ``<run>/wandb``.

    wandb otherwise writes its settings, artifact cache and staging area under ``$HOME``.
    """
    output_dir = Path(node.get("save_dir") or output_dir)
    root = output_dir / "wandb"
    for var, sub in (("WANDB_DIR", ""), ("WANDB_DATA_DIR", "data"), ("WANDB_CACHE_DIR", "cache"),
                     ("WANDB_CONFIG_DIR", "config"), ("WANDB_ARTIFACT_DIR", "artifacts")):
        path = root / sub if sub else output_dir
        path.mkdir(parents=True, exist_ok=True)
        os.environ[var] = str(path)
    os.environ.setdefault("WANDB_CONSOLE", "off")
    offline = node.get("offline")
    if offline is None:
        offline = not os.environ.get("WANDB_API_KEY")
    logger = instantiate(node, offline=offline, **kwargs)
    import wandb

    if wandb.run is not None:  # stage 2 of a distillation run continues stage 1's W&B run, as intended
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="There is a wandb run already in progress")
            logger.experiment  # noqa: B018 (attaches to the run now, without the warning)
    return logger


def finish_wandb() -> None:
    """End the W&B run of this process, if any: the next run in the process (a Hydra multirun job) starts its own."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()
