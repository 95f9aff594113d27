"""Continue an interrupted run in its own folder: which checkpoint, which config, and saving one on preemption.

A run folder is resumable as soon as it holds ``checkpoints/last.ckpt`` (written at every validation, every
``callbacks.checkpoint.every_minutes`` and on a stop signal: :mod:`speedtrain.callbacks.preemption`) or an
``hpc_ckpt_<n>.ckpt`` (written by the submitit launcher before a requeue). Re-running with ``hydra.run.dir=<run>`` or
``resume=<run>`` fits from the newest of them; the W&B run id saved in the folder (:mod:`speedtrain.loggers`)
continues the same W&B run.

Resuming from a checkpoint written between steps reproduces the uninterrupted run exactly on the CPU: the training
order of an epoch depends only on (seed, epoch) (:class:`~speedtrain.data.datamodule.SeededSampler`), the loader
skips the batches of the epoch already trained on (:mod:`speedtrain.data.resumable`), and the random state of a step
depends only on (seed, epoch, batch) (:class:`~speedtrain.callbacks.reproducible.StepSeed`).
"""

from __future__ import annotations

import logging
import os
import weakref
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from speedtrain.errors import UserError

log = logging.getLogger(__name__)

_ACTIVE: list[weakref.ref] = []  # the Trainer fitting in this process (for save_preemption_checkpoint)


def resume_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint to continue the run in ``output_dir`` from, or None for a fresh run."""
    output_dir = Path(output_dir)
    found = list(output_dir.glob("hpc_ckpt_*.ckpt"))
    last = output_dir / "checkpoints" / "last.ckpt"  # a file, or a folder for DeepSpeed
    if last.exists():
        found.append(last)
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def describe_checkpoint(path: str | os.PathLike) -> str:
    """Where a checkpoint file stands: ``epoch 1, step 6, 2 batches of epoch 1 trained on`` (read memory-mapped)."""
    path = Path(path)
    if not path.is_file():
        return "a sharded checkpoint"
    try:
        import torch

        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        text = f"epoch {ckpt.get('epoch')}, step {ckpt.get('global_step')}"
        states = ckpt.get("loops", {}).get("fit_loop", {}).get("state_dict", {}).get("combined_loader") or [{}]
        if "batches" in states[0] and states[0]["batches"] < states[0].get("of", float("inf")):  # mid-epoch
            text += f", {states[0]['batches']} batches of epoch {states[0]['epoch']} trained on"
        return text
    except Exception as err:  # noqa: BLE001 - the log line only; Lightning reports an unreadable checkpoint
        return f"unreadable here: {err}"


def continue_hint(run_dir: str | os.PathLike) -> str:
    """How to continue the run in ``run_dir`` after it stopped: the command, when it saved a checkpoint."""
    import sys

    run_dir = Path(run_dir)
    if resume_checkpoint(run_dir) is None and resume_checkpoint(run_dir / "teacher") is None:
        return "; run the same command again (what it cached so far, data, tokenizer, teacher outputs, is reused)"
    if not (run_dir / ".hydra" / "config.yaml").is_file():  # not a Hydra run: its folder is the output_dir
        return f"; continue by running it again with paths.output_dir={run_dir}"
    prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "train.py"
    prog = "speedtrain train" if prog.startswith("speedtrain") else f"python {prog}"
    return f"; continue with: {prog} resume={run_dir}"


def resumed_config(cfg: DictConfig) -> DictConfig:
    """For ``resume=<run>``: the config the run was started with (``<run>/.hydra/config.yaml``), with the
    command line's other value overrides applied on top; ``cfg`` itself otherwise."""
    run_dir = cfg.get("resume")
    if not run_dir:
        return cfg
    saved = Path(run_dir) / ".hydra" / "config.yaml"
    if not saved.is_file():
        raise UserError(f"resume={run_dir}: no run there ({saved} is missing); pass the folder of a run, "
                        "e.g. resume=outputs/2026-11-28/12-00-00")
    if resume_checkpoint(run_dir) is None and resume_checkpoint(Path(run_dir) / "teacher") is None:  # stage 1's
        raise UserError(f"resume={run_dir}: the run saved no checkpoint yet ({Path(run_dir) / 'checkpoints'} has no "
                        "last.ckpt); start it again without resume=")
    new = OmegaConf.load(saved)
    for key, value in _value_overrides(cfg):
        if isinstance(OmegaConf.select(new, key, default=None), DictConfig):
            raise UserError(f"{key}={value}: only values can change when resuming (not config groups); start a new "
                            "run for a different model, data or experiment")
        OmegaConf.update(new, key, value, force_add=True)
    with open_dict(new):
        new.resume = str(run_dir)
    log.info("Resuming %s with the config it was started with", run_dir)
    return new


def _value_overrides(cfg: DictConfig) -> list[tuple[str, object]]:
    """The command line's ``key=value`` overrides other than ``resume`` (empty outside a Hydra run)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not HydraConfig.initialized():
        return []
    overrides = OverridesParser.create().parse_overrides(list(HydraConfig.get().overrides.task))
    out = []
    for o in overrides:
        key = o.key_or_group
        if key == "resume":
            continue
        value = OmegaConf.select(cfg, key, default=None)  # the value as the composed config typed it
        out.append((key, value if not isinstance(value, DictConfig) else o.value()))
    return out


class track_trainer:
    """``with track_trainer(trainer): trainer.fit(...)``: the fit a preemption checkpoint saves."""

    def __init__(self, trainer) -> None:
        self.trainer = trainer

    def __enter__(self):
        _ACTIVE.append(weakref.ref(self.trainer))
        return self.trainer

    def __exit__(self, *exc) -> None:
        _ACTIVE.pop()


def save_preemption_checkpoint() -> Path | None:
    """Write ``hpc_ckpt_<n>.ckpt`` of the fit running in this process (as Lightning's SLURM handler would).

    Called from a signal handler on the job's global rank 0 only (submitit), so it writes without the
    collective barrier of ``Trainer.save_checkpoint``; strategies that shard the state (DeepSpeed, FSDP) cannot be
    saved that way and resume from their last end-of-validation checkpoint instead.
    """
    trainer = _ACTIVE[-1]() if _ACTIVE else None
    if trainer is None or trainer.state.fn != "fit":
        return None
    if type(trainer.strategy).__name__ in ("DeepSpeedStrategy", "FSDPStrategy"):
        log.warning("preemption: %s state is sharded; resuming from the last checkpoint",
                    type(trainer.strategy).__name__)
        return None
    connector = trainer._checkpoint_connector
    folder = str(trainer.default_root_dir)
    number = (connector._hpc_resume_path and int(Path(connector._hpc_resume_path).stem.split("_")[-1]) or 0) + 1
    path = Path(folder) / f"hpc_ckpt_{number}.ckpt"
    trainer.strategy.checkpoint_io.save_checkpoint(connector.dump_checkpoint(weights_only=False), path)
    log.info("preemption: saved %s", path)
    return path
