"""hydra/launcher=slurm and hydra/launcher=local (conf/hydra/launcher/): the composed launcher node, the sbatch
script that the real launcher writes for a 2-node x 4-GPU job (sbatch faked: no cluster), and a tiny multirun
through the local submitit launcher."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest
import submitit
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.plugins import Plugins
from hydra.core.utils import HydraContext
from hydra._internal.callbacks import Callbacks
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationValidationError

from hydra_plugins.speedtrain_plugins import register as register_plugins
from speedtrain.config import config_dir
from speedtrain.launcher import LocalLauncher, SlurmLauncher
from tests.conftest import REPO, TINY, run_train_py

# the brief's example: 2 nodes x 4 GPUs, DDP over 8 processes
SLURM_2x4 = ["+experiment=baseline", "hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4",
             "trainer.num_nodes=2", "hydra.launcher.partition=gpu"]


def compose_with_hydra(overrides: list[str]) -> DictConfig:
    """The root config with its ``hydra`` node (compose_config drops it), as a multirun's launcher sees it."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


def test_slurm_launcher_follows_trainer():
    launcher = compose_with_hydra(SLURM_2x4).hydra.launcher
    assert launcher._target_ == "hydra_plugins.speedtrain_plugins.SlurmLauncher"
    # ${trainer.*} interpolations resolve against the root config (ints, as the plugin's dataclass types them)
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (4, 4, 2)
    assert launcher.partition == "gpu"
    assert launcher.name == "baseline"  # ${task_name}
    assert launcher.signal_delay_s == 120 and launcher.max_num_timeout == 20


def test_slurm_launcher_rejects_device_auto():
    launcher = compose_with_hydra([*SLURM_2x4, "trainer.devices=auto"]).hydra.launcher
    with pytest.raises(InterpolationValidationError, match="auto"):
        launcher.gpus_per_node  # noqa: B018 (a SLURM allocation needs a count)


def test_local_launcher_lets_lightning_spawn():
    launcher = compose_with_hydra(["hydra/launcher=local", "trainer=ddp", "trainer.devices=4"]).hydra.launcher
    assert launcher._target_ == "hydra_plugins.speedtrain_plugins.LocalLauncher"
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (1, 4, 1)


def _write_exe(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def _task(cfg: DictConfig) -> None:  # the pickled jobs' task function (never run here)
    raise AssertionError("not run: sbatch is faked")


@pytest.mark.parametrize("seeds", [[1], [1, 2]], ids=["one-job", "array"])
def test_sbatch_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seeds: list[int]):
    """The real launcher (instantiated as Hydra does) submits through submitit's SlurmExecutor; a fake ``sbatch``
    on PATH keeps the script it is given and answers with a job id."""
    bin_dir, record = tmp_path / "bin", tmp_path / "sbatch-record"
    bin_dir.mkdir()
    record.mkdir()
    _write_exe(bin_dir / "srun", "#!/bin/sh\nexit 0\n")  # SlurmExecutor refuses to start without srun on PATH
    _write_exe(bin_dir / "sbatch", f'#!/bin/sh\ncp "$1" {record}/script.sh\necho "Submitted batch job 4242"\n')
    for tool in ("sacct", "squeue", "scancel", "scontrol"):  # never called; if they were, the test would notice
        _write_exe(bin_dir / tool, f"#!/bin/sh\necho {tool} >> {record}/unexpected\nexit 1\n")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    # results() would wait for the jobs (polling sacct): answer at once with the job id instead
    monkeypatch.setattr(submitit.slurm.slurm.SlurmJob, "results", lambda job: [job.job_id])

    register_plugins()  # as train.py does
    sweep = tmp_path / "sweep"
    overrides = [*SLURM_2x4, f"hydra.sweep.dir={sweep}", "hydra.launcher.setup=['module load cuda/12.4']"]
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
        context = HydraContext(config_loader=GlobalHydra.instance().config_loader(), callbacks=Callbacks())
        launcher = Plugins.instance().instantiate_launcher(hydra_context=context, task_function=_task, config=cfg)
        assert isinstance(launcher, SlurmLauncher)
        returned = launcher.launch([[f"seed={s}"] for s in seeds], initial_job_idx=0)

    array = len(seeds) > 1
    assert returned == (["4242_0", "4242_1"] if array else ["4242"])
    assert not (record / "unexpected").exists()
    script = (record / "script.sh").read_text()
    sbatch = {line for line in script.splitlines() if line.startswith("#SBATCH ")}
    folder = sweep / ".submitit" / ("%A_%a" if array else "%j")
    prefix = "%A_%a" if array else "%j"
    expected = {
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=64GB",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=240",
        "#SBATCH --job-name=baseline",
        "#SBATCH --signal=USR2@120",  # submitit's handler checkpoints and requeues on USR2
        "#SBATCH --requeue",  # from additional_parameters: submitit itself never adds it
        "#SBATCH --open-mode=append",  # a requeued job appends to the same logs
        f"#SBATCH --output={folder}/{prefix}_0_log.out",
        f"#SBATCH --error={folder}/{prefix}_0_log.err",
        "#SBATCH --wckey=submitit",
    }
    if array:
        expected.add("#SBATCH --array=0-1%2")  # min(jobs, array_parallelism) at once
    assert sbatch == expected, script
    # setup lines, then srun starting nodes x ntasks-per-node copies of submitit's runner
    body = script.split("# setup\n", 1)[1]
    setup, command = body.split("# command\n", 1)
    assert setup.strip() == "module load cuda/12.4"
    srun = command.strip().splitlines()[-1]
    assert srun == (f"srun --unbuffered --output {folder}/{prefix}_%t_log.out --error {folder}/{prefix}_%t_log.err "
                    f"{sys.executable} -u -m submitit.core._submit {sweep}/.submitit/%j")
    # the requeue budget travels in the pickled submission, not in the script; the pickled callable is our launcher
    pickles = sorted((sweep / ".submitit").glob("4242*/*_submitted.pkl"))
    assert len(pickles) == len(seeds)
    delayed = submitit.helpers.DelayedSubmission.load(pickles[0])
    assert delayed._timeout_countdown == 20
    assert isinstance(delayed.function, SlurmLauncher)


def test_local_launcher_multirun(tmp_path: Path):
    """``python train.py -m hydra/launcher=local ... seed=1,2``: two jobs in submitit subprocesses, each a full run.

    The sweep itself runs in this process (train.main() with that command line); the jobs are real processes."""
    sweep = tmp_path / "sweep"
    run_train_py("-m", "hydra/launcher=local", "+experiment=baseline", *TINY, "seed=1,2", f"hydra.sweep.dir={sweep}",
                 cwd=REPO)
    for job, seed in ((0, 1), (1, 2)):
        metrics = json.loads((sweep / str(job) / "metrics.json").read_text())
        assert "val/acc" in metrics and metrics["seed"] == seed
    # one submitit folder per job: its pickles, result and the job's own stdout/stderr
    logs = sorted((sweep / ".submitit").glob("*/*_0_log.out"))
    assert len(logs) == 2
    for log in logs:
        assert "Starting with JobEnvironment" in log.read_text()
        assert log.with_name(log.name.replace("_log.out", "_result.pkl")).is_file()
    launched = OmegaConf.load(sweep / "multirun.yaml").hydra.launcher
    assert launched._target_ == f"hydra_plugins.speedtrain_plugins.{LocalLauncher.__name__}"
