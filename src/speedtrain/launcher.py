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
