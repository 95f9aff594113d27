"""Experiment loggers from the ``logger`` config group; W&B kept offline and inside the run folder by default."""

from __future__ import annotations

import os
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.loggers import Logger


def build_loggers(cfg: DictConfig | None, output_dir: str | os.PathLike) -> list[Logger]:
    """Instantiate every logger in ``cfg`` (a mapping name -> ``_target_`` node; empty for ``logger=none``)."""
    loggers = []
    for node in (cfg or {}).values():
        if node is None:
            continue
        if "WandbLogger" in node.get("_target_", ""):
            loggers.append(_wandb(node, Path(output_dir)))
        else:
            loggers.append(instantiate(node))
    return loggers


def _wandb(node: DictConfig, output_dir: Path) -> Logger:
    """W&B that never prompts: offline without ``WANDB_API_KEY``; every file under ``<run>/wandb``.

    wandb otherwise writes its settings, artifact cache and staging area under ``$HOME``.
    """
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
    return instantiate(node, offline=offline)
