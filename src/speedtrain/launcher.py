"""Hydra's submitit launchers (``hydra/launcher=slurm|local``) that save the running Trainer's state when SLURM
asks the job to stop (time limit or preemption) before submitit requeues it.

submitit sends itself ``SIGUSR2`` ``signal_delay_s`` seconds before the time limit and calls the launcher's
``checkpoint()`` on the job's global rank 0; the requeued job runs the same Hydra job (same run folder), where
the pipeline resumes from the newest checkpoint it finds there (:mod:`speedtrain.resume`).
"""

from __future__ import annotations

from typing import Any

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher as _LocalLauncher
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as _SlurmLauncher


class SlurmLauncher(_SlurmLauncher):
    """submitit's SLURM launcher; on requeue it first writes a checkpoint of the running fit."""

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        from speedtrain.resume import save_preemption_checkpoint

        save_preemption_checkpoint()
        return super().checkpoint(*args, **kwargs)


class LocalLauncher(_LocalLauncher):
    """submitit's local launcher (jobs in subprocesses of this machine): try a cluster config without a cluster."""


# what Lightning's DDP launcher sets in the launching process (rank 0) for its ranks
_DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "PL_GLOBAL_SEED")
_ENV_BEFORE_FIRST_JOB: dict[str, str] | None = None


def prepare_ddp_relaunch() -> None:
    """Make Lightning's DDP re-launch of this script run this job, not the whole sweep again.

    Lightning starts ranks 1..N-1 as ``python <argv> hydra.run.dir=<hydra.run.dir>``: inside a Hydra multirun
    that would re-run the sweep (``-m`` and the value lists are in argv) and write to the run folder pattern, not
    to the job's folder. In a multirun job, argv becomes this job's own overrides and ``hydra.run.dir`` the job's
    output folder, so every rank runs exactly this job in exactly its folder. The next job of the sweep in this
    process starts its own ranks: the previous job's process group and launcher variables are dropped first.
    """
    import os
    import sys

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import read_write

    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return
    sys.argv = [sys.argv[0], *hydra_cfg.overrides.task]
    with read_write(hydra_cfg.run):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
    global _ENV_BEFORE_FIRST_JOB
    if _ENV_BEFORE_FIRST_JOB is None:
        _ENV_BEFORE_FIRST_JOB = {k: os.environ[k] for k in _DDP_ENV if k in os.environ}
        return
    for key in _DDP_ENV:  # else Lightning takes the next job's ranks as already launched
        if key in _ENV_BEFORE_FIRST_JOB:
            os.environ[key] = _ENV_BEFORE_FIRST_JOB[key]
        else:
            os.environ.pop(key, None)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
