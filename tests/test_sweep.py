"""Hydra multiruns: plain value lists with DDP jobs, and the resumable Optuna sweep with its summary."""

from __future__ import annotations

import json
import re
import sys

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

import train
from speedtrain.config import config_dir
from speedtrain.errors import UserError
from speedtrain.sweep import check_search_space
from tests.conftest import TINY, TINY_RUN, run_train_py
from tests.crash import crash_overrides
from tests.test_train import _cli

DDP_CPU = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true"]


def test_multirun_of_ddp_jobs_runs_each_job_once_with_one_wandb_run(tmp_path):
    """Lightning re-launches train.py for rank 1: inside a multirun that must run this job, not the sweep."""
    done = _cli("-m", "+experiment=baseline", *TINY, *DDP_CPU, "seed=1,2", "logger=wandb",
                f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path, env={"WANDB_MODE": "offline"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep"]  # no stray outputs/ or multirun/ from rank 1
    jobs = sorted(p.parent for p in (tmp_path / "sweep").glob("*/metrics.json"))
    assert [j.name for j in jobs] == ["0", "1"]
    for job, seed in zip(jobs, (1, 2)):
        metrics = json.loads((job / "metrics.json").read_text())
        assert metrics["seed"] == seed and metrics["global_step"] == 8  # 4 batches per rank per epoch, 2 epochs
        (run_file,) = job.glob("wandb/offline-run-*/run-*.wandb")  # one W&B run per job: rank 0's
        assert run_file.name == f"run-{json.loads((job / 'wandb_run.json').read_text())['id']}.wandb"
    summary = pd.read_csv(tmp_path / "sweep" / "sweep_summary.csv")
    assert list(summary["status"]) == ["complete", "complete"] and set(summary["seed"]) == {1, 2}
    assert summary["val/acc"].is_monotonic_decreasing


def _optuna_args(tmp_path, *extra) -> list[str]:
    tiny = [o for o in TINY if not o.startswith("model.hidden_size=")]
    return ["-m", "+experiment=baseline", "hparams_search=optuna_baseline", *tiny, "hydra.sweeper.n_trials=3",
            "model.hidden_size=choice(32,64)", f"hydra.sweep.dir={tmp_path / 'sweep'}", *extra]


def test_optuna_sweep_returns_the_best_and_an_interrupted_sweep_continues(tmp_path):
    sweep = tmp_path / "sweep"
    # the sweep process is killed (SIGKILL) in the middle of its second trial
    crash = crash_overrides(tmp_path / "killed", epoch=1, batch=1, skip=1)
    killed = _cli(*_optuna_args(tmp_path, *crash), cwd=tmp_path)  # a real process: SIGKILL ends it
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert (sweep / "0" / "metrics.json").is_file() and not (sweep / "1" / "metrics.json").exists()
    first = (sweep / "0" / "metrics.json").stat().st_mtime_ns
    interrupted = OmegaConf.load(sweep / "1" / ".hydra" / "overrides.yaml")

    # the same command again (the crash marker now exists), in this process: train.main() with that command line
    # (a failed sweep raises SystemExit); what carries over is on disk: the study in optuna.db, the job folders
    run_train_py(*_optuna_args(tmp_path, *crash), cwd=tmp_path)
    assert (sweep / "0" / "metrics.json").stat().st_mtime_ns == first  # the finished trial is not run again
    complete = sorted(p.parent.name for p in sweep.glob("*/metrics.json"))
    assert complete == ["0", "2", "3"]  # 3 trials in all; job 1 was cut off, its parameters ran again as job 2
    params = {job: OmegaConf.load(sweep / job / ".hydra" / "overrides.yaml")[:2] for job in ("0", "2", "3")}
    assert params["2"] == interrupted[:2]
    assert params["3"] != params["0"]  # the continued study draws new parameters, it does not replay the first launch
    values = {job: json.loads((sweep / job / "metrics.json").read_text())["val/acc"] for job in complete}
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    assert best.best_value == max(values.values())
    summary = pd.read_csv(sweep / "sweep_summary.csv")
    ranked = summary[summary["status"] == "complete"]
    assert list(ranked["val/acc"]) == sorted(values.values(), reverse=True) and list(summary["rank"]) == [1, 2, 3, 4]
    assert summary.set_index(summary["job"].astype(str)).loc["1", "status"] == "failed"
    assert {"module.optimizer.lr", "model.hidden_size"} <= set(summary.columns)
    assert (sweep / "sweep_summary.md").read_text().startswith(f"# Sweep {sweep}")


def test_search_space_of_another_experiment_is_one_message_before_anything_runs(tmp_path, monkeypatch, capsys):
    """hparams_search=optuna searches distill.*: on +experiment=baseline Hydra failed on the first trial with
    "Key 'distill' is not in struct" (exit 1, optuna.db written). Now: one line naming the fitting choice, exit 2,
    no study, no job, nothing written."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train.py", "-m", "hparams_search=optuna", "+experiment=baseline", *TINY_RUN,
                                      f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    with pytest.raises(SystemExit) as exit_info:
        train.main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    errors = [line for line in err.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert errors == ["speedtrain: error: hparams_search=optuna searches distill.* keys, which +experiment=baseline "
                      "does not have; use hparams_search=optuna_baseline"], err
    assert list(tmp_path.iterdir()) == []


def _check(overrides: list[str], params: dict | None = None) -> None:
    """check_search_space on the composed config (with its hydra node), as the sweeper sees it."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
        check_search_space(cfg, cfg.hydra.sweeper.params if params is None else params,
                           GlobalHydra.instance().config_loader())


@pytest.mark.parametrize("overrides", [["+experiment=distill", "hparams_search=optuna"],
                                       ["+experiment=distill", "hparams_search=optuna_baseline"],
                                       ["+experiment=baseline", "hparams_search=optuna_baseline"],
                                       ["+experiment=baseline", "model=static", "hparams_search=optuna_baseline"]])
def test_search_spaces_that_fit(overrides):
    _check(overrides)


def test_search_space_missing_leaf_and_group_choices():
    # a leaf the chosen model lacks is named as such; config group choices and +additions are left to Hydra
    params = {"model.num_attention_heads": "choice(2,4)", "model": "choice(bert_tiny,static)", "+foo.bar": "1,2"}
    with pytest.raises(UserError, match=re.escape(
            "hydra.sweeper.params searches model.num_attention_heads, which +experiment=baseline does not have; "
            "use hparams_search=optuna_baseline")):
        _check(["+experiment=baseline", "model=static", "hydra/sweeper=optuna"], params)
