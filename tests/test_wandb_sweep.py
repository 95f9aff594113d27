"""W&B sweeps (conf/sweep/*.yaml; the checks in speedtrain.wandb_sweep, the agents in scripts/wandb_sweep.py): the
configs validate against the composed config, the command a W&B agent builds for a trial trains offline with the
swept values, and bad input is one line, exit 2. No sweep is created: nothing here talks to W&B's server."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from speedtrain import wandb_sweep as sweeps
from speedtrain.config import compose_config
from speedtrain.errors import UserError
from tests.conftest import DISTILL_TINY, REPO, TINY_RUN, TINY_STUDENT

SCRIPT = REPO / "scripts" / "wandb_sweep.py"
_spec = importlib.util.spec_from_file_location("speedtrain_wandb_sweep_script", SCRIPT)
ws = importlib.util.module_from_spec(_spec)  # the script: agents and the command line (the checks: `sweeps`)
_spec.loader.exec_module(ws)

SWEEPS = sorted((REPO / "conf" / "sweep").glob("*.y*ml"))


def _env() -> dict[str, str]:
    """The agent's `python` (${interpreter}) is this Python; W&B offline; no hub."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**os.environ, "PATH": path, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}


@pytest.mark.parametrize("path", SWEEPS, ids=[p.name for p in SWEEPS])
def test_sweep_config_validates(path, tmp_path):
    config = sweeps.load_sweep(path, root=REPO)  # validates, incl. every parameter against the composed config
    assert {"distill", "baseline"} <= {p.stem for p in SWEEPS}
    assert config["program"] == "train.py" and config["metric"] == {"name": "val/acc", "goal": "maximize"}
    assert "${args_no_hyphens}" in config["command"] and "logger=wandb" in config["command"]
    cfg = compose_config([*sweeps.command_overrides(config), f"paths.output_dir={tmp_path}"])
    assert cfg.objective == config["metric"]["name"] and cfg.task_name == path.stem
    for name in config["parameters"]:
        assert OmegaConf.select(cfg, name) is not None, name
    for width in config["parameters"]["model.hidden_size"]["values"]:
        assert width % cfg.model.num_attention_heads == 0


def _broken(change) -> dict:
    config = yaml.safe_load((REPO / "conf" / "sweep" / "distill.yaml").read_text())
    change(config)
    return config


BROKEN = {
    "no_metric": (lambda c: c.pop("metric"), "metric is missing"),
    "method": (lambda c: c.update(method="optuna"), "method='optuna' is unknown"),
    "metric_name": (lambda c: c["metric"].update(name="val_acc"), "metric.name='val_acc' is not a metric train.py logs"),
    "no_parameters": (lambda c: c.update(parameters={}), "parameters is missing or empty"),
    "unknown_key": (lambda c: c["parameters"].update({"distill.loss.temprature": {"values": [1.0]}}),
                    r"parameters.distill.loss.temprature is not a key of the config of \+experiment=distill"),
    "string_min": (lambda c: c["parameters"]["module.optimizer.lr"].update(min="3e-4"), "write 3.0e-4"),
    "empty_spec": (lambda c: c["parameters"].update({"seed": {"q": 1}}), "parameters.seed has none of"),
    "hyphens": (lambda c: c.update(command=[x if x != "${args_no_hyphens}" else "${args}" for x in c["command"]]),
                r"\$\{args_no_hyphens\}"),
    "macro_typo": (lambda c: c["command"].append("${arg_no_hyphens}"), r"\$\{arg_no_hyphens\} is not a wandb macro"),
    "grid_range": (lambda c: c.update(method="grid"), "method grid needs value or values"),
    "not_int": (lambda c: c["parameters"].update({"model.hidden_size": {"values": [64, "wide"]}}),
                "'wide' is not one of the integers the key holds"),
    "float_range_int_key": (lambda c: c["parameters"].update({"model.hidden_size": {"min": 64.0, "max": 256.0}}),
                            "use distribution int_uniform"),
    "unparsable": (lambda c: c["parameters"].update({"data.label": {"values": ["[64"]}}),
                   r"Hydra rejects a sampled trial .*data.label=\[64"),
    "program": (lambda c: c.update(program="trian.py"), re.escape(f"program='trian.py' is not a file in {REPO};")),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_validation_rejects_broken_config(case):
    change, message = BROKEN[case]
    with pytest.raises(UserError, match=message):
        sweeps.validate_sweep(_broken(change), root=REPO)


def test_agent_command_trains_offline_with_the_swept_values(tmp_path, fine_tuned_teacher):
    """The exact command wandb's agent builds for a trial (lower bounds / first values), then tiny overrides, in
    the environment the agent gives a trial (sweep id, run id, parameter file), W&B offline."""
    from wandb.sdk.lib.config_util import save_config_file_from_dict

    config = sweeps.load_sweep(REPO / "conf" / "sweep" / "distill.yaml", root=REPO)
    params = sweeps.sample_params(config)
    assert params == {"module.optimizer.lr": 3e-4, "distill.loss.temperature": 1.0, "distill.loss.alpha": 0.1,
                      "model.hidden_size": 64}
    command = sweeps.agent_command(config, params)
    swept = [f"{k}={v}" for k, v in params.items()]
    assert command[:3] == ["/usr/bin/env", "python", "train.py"] and command[-len(swept):] == swept

    run_dir = tmp_path / "run"
    tiny = [*(o for o in TINY_RUN if not o.startswith("logger=")),  # keep the command's logger=wandb
            *(o for o in TINY_STUDENT if o.split("=")[0] not in params),  # keep the swept width
            *(o for o in DISTILL_TINY if o not in command),
            "distill.augment.copies=0", f"teacher.path={fine_tuned_teacher}", "teacher.max_length=24",
            f"hydra.run.dir={run_dir}"]
    print("$", shlex.join([*command, *tiny]))
    param_file = tmp_path / "agent" / "config.yaml"  # the trial's parameters, as wandb's agent writes them
    param_file.parent.mkdir()
    save_config_file_from_dict(str(param_file), {k: {"value": v} for k, v in params.items()})
    agent_env = {"WANDB_SWEEP_ID": "swp00001", "WANDB_RUN_ID": "run00001", "WANDB_SWEEP_PARAM_PATH": str(param_file)}
    done = subprocess.run([*command, *tiny], cwd=REPO, env={**_env(), **agent_env}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]

    assert "val/acc" in json.loads((run_dir / "metrics.json").read_text())
    overrides = OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")
    assert set(swept) <= set(overrides)
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    assert {k: OmegaConf.select(cfg, k) for k in params} == params
    assert cfg.logger.wandb.offline is False  # online under an agent (logged in); WANDB_MODE=offline here
    (offline_run,) = (run_dir / "wandb").rglob("offline-run-*")
    assert offline_run.is_dir() and offline_run.name.endswith("-run00001")  # the agent's run, not a new one
    records = (offline_run / "run-run00001.wandb").read_bytes()
    assert b"swp00001" in records and b"val/acc" in records  # the sweep's run, with the sweep's metric


def _script(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=120)


def test_dry_run_prints_the_agent_command():
    done = _script(str(REPO / "conf" / "sweep" / "distill.yaml"), "--dry-run", "--override", "trainer.max_epochs=3")
    assert done.returncode == 0, done.stderr
    config = sweeps.load_sweep(REPO / "conf" / "sweep" / "distill.yaml", root=REPO)
    config = sweeps.add_overrides(config, ["trainer.max_epochs=3"])
    assert shlex.split(done.stdout.strip()) == sweeps.agent_command(config, sweeps.sample_params(config))
    assert "trainer.max_epochs=3 module.optimizer.lr=0.0003" in done.stdout


@pytest.mark.parametrize("case", ["missing_file", "invalid_yaml", "unknown_method"])
def test_bad_input_one_line_exit_2(case, tmp_path):
    path = tmp_path / "sweep.yaml"
    if case == "invalid_yaml":
        path.write_text("program: train.py\ncommand: [${env}, ${program}]\n")
        expected = "is not valid YAML (line 2)"
    elif case == "unknown_method":
        path.write_text((REPO / "conf" / "sweep" / "distill.yaml").read_text().replace("method: bayes", "method: tpe"))
        expected = "method='tpe' is unknown; use one of grid, random, bayes"
    else:
        expected = "file not found"
    done = _script(str(path), "--dry-run")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and expected in lines[0] and str(path) in lines[0], done.stderr
    assert done.stdout == ""


class _FakeAgent:
    """Stands in for a `wandb agent` process: records how it was started, exits with the next code."""

    started: list = []
    codes: list = []

    def __init__(self, cmd, cwd, env):
        _FakeAgent.started.append((cmd, cwd, env))
        self.code = _FakeAgent.codes.pop(0)

    def wait(self):
        return self.code


def test_agents_per_gpu_and_failures(monkeypatch, capsys):
    """Creating the sweep (wandb.sweep faked: no network) and starting agents pinned to GPUs; a failed agent -> 1."""
    import wandb

    created = []
    monkeypatch.setattr(wandb, "sweep", lambda config, project, entity: created.append((config, project)) or "abc123")
    monkeypatch.setattr(ws.subprocess, "Popen", _FakeAgent)
    _FakeAgent.started, _FakeAgent.codes = [], [0, 0, 3]
    code = ws.main([str(REPO / "conf" / "sweep" / "baseline.yaml"), "--gpus", "0,1", "--agents", "3", "--count", "2",
                    "--entity", "me", "--override", "trainer=gpu"])
    assert code == 1 and "agent 2 exited with 3" in capsys.readouterr().err
    ((config, project),) = created
    assert project == "speedtrain" and "trainer=gpu" in config["command"]
    assert [env["CUDA_VISIBLE_DEVICES"] for _, _, env in _FakeAgent.started] == ["0", "1", "0"]
    cmd, cwd, env = _FakeAgent.started[0]
    assert cmd == [sys.executable, "-m", "wandb", "agent", "--count", "2", "me/speedtrain/abc123"] and cwd == REPO
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)  # ${interpreter} is this Python

    _FakeAgent.started, _FakeAgent.codes = [], [0]
    assert ws.main(["--sweep-id", "team/proj/xyz789"]) == 0
    assert _FakeAgent.started[0][0][-1] == "team/proj/xyz789" and "--count" not in _FakeAgent.started[0][0]
