"""Crash-safe runs: SIGTERM mid-epoch then resume gives the uninterrupted run's result, the W&B run continues (and
holds the config, metrics, system stats, confusion matrix, benchmark table and bundle), and SLURM's requeue signal
saves a checkpoint, requeues the job and the requeued job resumes in the same folder."""

from __future__ import annotations

import json
import os
import signal
import stat
import sys

import pytest
import pytorch_lightning as pl
import torch

import train
from tests.conftest import EXPORT_TINY, TINY, run_train_py
from tests.crash import crash_overrides
from tests.test_train import _cli
from tests.wandb_records import summarize

# 3 epochs of 4 batches at a learning rate that moves the weights: any change in the steps shows in them
RUN = ["+experiment=baseline", *TINY, "trainer.max_epochs=3", "module.optimizer.lr=1e-2"]


def _weights(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


def test_stopped_mid_epoch_then_resumed_equals_the_uninterrupted_run(make_cfg, tmp_path):
    """SIGTERM (what a scheduler sends) mid-epoch: the run saves after that step and exits 143 naming the command
    that continues it; continued, it ends bit-identical to an uninterrupted run (issue 26). A SIGKILL instead:
    tests/test_preemption.py (during a checkpoint write)."""
    from speedtrain.pipeline import run

    straight, killed = tmp_path / "run", tmp_path / "killed"
    run(make_cfg(*RUN))  # uninterrupted, in this process
    home = tmp_path / "home"
    home.mkdir()
    # W&B offline without credentials; the bundle (one variant) becomes an artifact
    env = {"HOME": str(home), "WANDB_MODE": "", "WANDB_API_KEY": "", "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    wandb_export = ["logger=wandb", *EXPORT_TINY, "export.variants=[onnx]", "export.teacher=false"]
    stopped = _cli(*RUN, *wandb_export, f"hydra.run.dir={killed}",
                   *crash_overrides(tmp_path / "marker", signals="[SIGTERM]"), cwd=tmp_path, env=env)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]  # before batch 2 of epoch 1
    line = (f"speedtrain: stopped by SIGTERM in epoch 1 after batch 3 of 4 (step 7); saved "
            f"{killed / 'checkpoints' / 'last.ckpt'}; continue with: python train.py resume={killed}")
    assert [x for x in stopped.stderr.splitlines() if x.startswith("speedtrain:")] == [line]
    assert f"continue with: python train.py resume={killed}" in (killed / "train.log").read_text()
    assert "Traceback" not in stopped.stderr and not (killed / "metrics.json").exists()
    saved = torch.load(killed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["global_step"] == 7 and saved["epoch"] == 1  # mid-epoch: 4 + 3 steps, not the epoch-0 one
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "batches": 3, "of": 4}]
    run_id = json.loads((killed / "wandb_run.json").read_text())["id"]

    resumed = _cli(f"resume={killed}", cwd=tmp_path, env=env)  # nothing else on the line
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "(epoch 1, step 7, 3 batches of epoch 1 trained on)" in (killed / "train.log").read_text()
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (straight, killed))
    assert b["resumed_from"] == str(killed / "checkpoints" / "last.ckpt") and a["resumed_from"] is None
    for key in ("val/acc", "val/loss", "test/acc", "test/loss", "global_step", "epochs"):
        assert a[key] == b[key], key  # the same optimizer steps: none of epoch 1's first 3 batches twice
    wa, wb = _weights(straight), _weights(killed)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # bit-identical weights after the last step
    # the config it was started with stays in .hydra/; the resumed start's own is beside it
    assert "logger: wandb" in (killed / ".hydra" / "hydra.yaml").read_text()
    assert (killed / ".hydra" / "resumed" / "overrides.yaml").read_text().strip() == f"- resume={killed}"

    # the same W&B run, continued: both starts wrote into run <id>
    starts = sorted(killed.glob("wandb/offline-run-*"))
    assert len(starts) == 2 and all(s.name.endswith(run_id) for s in starts)
    saved = json.loads((killed / "wandb_run.json").read_text())
    assert saved["id"] == run_id and saved["mode"] == "offline"
    w = summarize(starts[-1] / f"run-{run_id}.wandb")  # what the resumed start logged
    assert w["run_id"] == run_id and w["group"] == "baseline"
    assert w["config"]["model"]["hidden_size"] == 32 and w["config"]["trainer"]["max_epochs"] == 3  # resolved config
    assert {"train/acc", "val/acc", "test/acc", "bench/fast/p50_ms", "epoch"} <= w["history_keys"]
    assert w["stats"] >= 1  # system metrics
    artifacts = dict(w["artifacts"])
    assert artifacts[f"bundle-{run_id}"] == "model"  # the bundle
    assert any("confusion_matrix" in name for name in artifacts) and any("benchtable" in name for name in artifacts)
    assert list(home.rglob("*")) == []  # nothing under $HOME


def _fake_slurm(tmp_path, job_id="4242"):
    """SLURM's variables for a 1-task batch job, and an ``scontrol`` on PATH that records its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'scontrol.log'}\n")
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_ID": job_id, "SLURM_NTASKS": "1",
            "SLURM_JOB_NAME": "speedtrain", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
            "SLURM_NODELIST": "localhost"}


def test_slurm_requeue_signal_saves_requeues_and_the_job_resumes_in_its_folder(make_cfg, tmp_path, monkeypatch):
    from speedtrain.pipeline import run

    run(make_cfg(*RUN))  # uninterrupted, in this process
    run_dir = tmp_path / "killed"
    env = _fake_slurm(tmp_path)
    # SLURM sends SIGUSR1 before the time limit (#SBATCH --signal=SIGUSR1@90): the step finishes, the run saves,
    # requeues the job and exits
    first = _cli(*RUN, f"hydra.run.dir={run_dir}", *crash_overrides(tmp_path / "marker", signals="[SIGUSR1]"),
                 cwd=tmp_path, env=env)
    assert first.returncode == 128 + signal.SIGUSR1, first.stderr[-3000:]
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    assert "requeued SLURM job 4242: it continues from there" in first.stderr
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["global_step"] == 7  # after batch 2 of epoch 1 (of 4), not in the middle of it

    # the same job, started again: train.main() with the same command line and environment, in this process
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    run_train_py(*RUN, f"hydra.run.dir={run_dir}", cwd=tmp_path)  # a failure raises
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["resumed_from"] == str(run_dir / "checkpoints" / "last.ckpt") and metrics["epochs"] == 3
    wa, wb = _weights(tmp_path / "run"), _weights(run_dir)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # the requeued job ends as an uninterrupted one


@pytest.mark.parametrize("case", ["no_run", "no_checkpoint", "group_override"])
def test_resume_bad_input_one_message_exit_2(case, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("seed: 1\n")
    if case == "group_override":
        (run_dir / "checkpoints").mkdir()
        (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"")
        (run_dir / ".hydra" / "config.yaml").write_text("seed: 1\nmodel:\n  hidden_size: 32\n")
    target = tmp_path / "nowhere" if case == "no_run" else run_dir
    extra = ["model=bert_mini"] if case == "group_override" else []
    monkeypatch.setattr(sys, "argv", ["train.py", f"resume={target}", *extra])
    with pytest.raises(SystemExit) as exit_info:
        train.main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("speedtrain: error:") == 1, err
    expected = {"no_run": "no run there", "no_checkpoint": "saved no checkpoint yet",
                "group_override": "model=bert_mini: only values can change when resuming"}[case]
    assert expected in err and "Traceback" not in err


class Preempt(pl.Callback):
    """What submitit does on SLURM's USR2 before a time limit: ask the launcher for a checkpoint (then requeue)."""

    submissions: list = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.current_epoch == 1 and batch_idx == 1 and not Preempt.submissions:
            from speedtrain.launcher import SlurmLauncher

            Preempt.submissions.append(SlurmLauncher().checkpoint("job-args"))


def test_submitit_requeue_saves_the_running_fit(make_cfg, tmp_path):
    from submitit.helpers import DelayedSubmission

    from speedtrain.pipeline import run
    from speedtrain.resume import resume_checkpoint

    Preempt.submissions.clear()
    run(make_cfg("+experiment=baseline", "+callbacks.preempt._target_=tests.test_resume.Preempt"))
    (delayed,) = Preempt.submissions
    assert isinstance(delayed, DelayedSubmission) and delayed.args == ("job-args",)  # the same job, requeued
    saved = tmp_path / "run" / "hpc_ckpt_1.ckpt"
    assert torch.load(saved, map_location="cpu", weights_only=False)["global_step"] == 5  # epoch 1, batch 1
    (tmp_path / "run" / "checkpoints" / "last.ckpt").touch()
    saved.touch()  # newest: the requeued job resumes from it
    assert resume_checkpoint(tmp_path / "run") == saved
