"""Experiment loggers from the ``logger`` config group; W&B kept offline and inside the run folder by default.

W&B: one run per training run (rank 0 only under DDP; stage 1 of a distillation run logs into the same run with
the prefix ``teacher-``). Its id is saved in ``<run>/wandb_run.json``: a resumed run continues the same W&B run.
At the end of a run :func:`log_confusion_matrix` adds the test split's confusion matrix (the export callback
logs the benchmark table and the bundle as an artifact of type ``model``).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.loggers import Logger
from pytorch_lightning.utilities import rank_zero_only

RUN_FILE = "wandb_run.json"  # in the run folder: the W&B run's id, project, entity and mode


def build_loggers(cfg: DictConfig | None, output_dir: str | os.PathLike, prefix: str = "") -> list[Logger]:
    """Instantiate every logger in ``cfg`` (a mapping name -> ``_target_`` node; empty for ``logger=none``).

    Args:
        prefix: metric names start with ``<prefix>-`` (Lightning's logger ``prefix``). A second W&B logger in
            the same process (stage 2 of a distillation run after stage 1) continues the same W&B run.
    """
    loggers = []
    for node in (cfg or {}).values():
        if node is None or "_target_" not in node:  # e.g. logger.wandb.project=x with logger=none
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
    import wandb

    ids = {}
    if wandb.run is None and rank_zero_only.rank == 0 and not node.get("id"):
        ids = {"id": _run_id(output_dir, node, offline), "resume": "allow"}  # a resumed run continues its W&B run
    logger = instantiate(node, offline=offline, **ids, **kwargs)

    if wandb.run is not None:  # stage 2 of a distillation run continues stage 1's W&B run, as intended
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="There is a wandb run already in progress")
            logger.experiment  # noqa: B018 (attaches to the run now, without the warning)
    return logger


def _run_id(output_dir: Path, node: DictConfig, offline: bool) -> str:
    """The W&B run id saved in ``output_dir`` by an earlier start of this run, else a new one (saved now)."""
    import secrets
    import string

    path = output_dir / RUN_FILE
    if path.is_file():
        return json.loads(path.read_text())["id"]
    # a W&B sweep agent names the run itself (and wandb ignores any other id then)
    run_id = os.environ.get("WANDB_RUN_ID") or "".join(
        secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))  # W&B's id format
    offline = offline or os.environ.get("WANDB_MODE") in ("offline", "dryrun", "disabled")
    info = {"id": run_id, "project": node.get("project"), "entity": node.get("entity"),
            "mode": "offline" if offline else "online", "sweep": os.environ.get("WANDB_SWEEP_ID")}
    path.write_text(json.dumps(info, indent=2) + "\n")
    return run_id


def wandb_run(loggers: list[Logger]):
    """The live W&B run of ``loggers`` on this rank (None without a W&B logger and on ranks other than 0)."""
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger" and rank_zero_only.rank == 0:
            return logger.experiment
    return None


def log_confusion_matrix(loggers: list[Logger], predictions: tuple | None, label_names: list[str]) -> None:
    """Log the test split's confusion matrix to W&B (the benchmark table and the bundle artifact are logged by
    the export callback: :func:`speedtrain.callbacks.export_bench.log_report`).

    Args:
        predictions: ``(labels, predicted)`` integer arrays of the test split; None when it was not tested.
    """
    run = wandb_run(loggers)
    if run is None or predictions is None:
        return
    import wandb

    labels, predicted = (list(map(int, a)) for a in predictions)
    run.log({"test/confusion_matrix": wandb.plot.confusion_matrix(
        y_true=labels, preds=predicted, class_names=list(label_names), title="test confusion matrix")})


def finish_wandb(exit_code: int = 0, preempted: bool = False) -> None:
    """End the W&B run of this process, if any: the next run in the process (a Hydra multirun job) starts its own.

    A run stopped by a signal is marked preempted (W&B shows it so) and ends with its exit code; resuming it
    (``wandb_run.json``) continues the same W&B run."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        if preempted:
            wandb.run.mark_preempting()
        wandb.finish(exit_code=exit_code)
