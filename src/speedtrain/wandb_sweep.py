"""W&B sweep configs (``conf/sweep/*.yaml``) checked before a sweep is created, and the command an agent runs.

:func:`load_sweep` reads and validates a sweep yaml (:func:`validate_sweep`: method, metric, parameters, the
command's macros, the program, and that every parameter is a key of the config the command composes and Hydra
accepts a sampled trial); :func:`sample_params` draws one trial's parameters; :func:`agent_command` is the command
line ``wandb agent`` builds for them, with wandb's own functions; :func:`add_overrides` adds Hydra overrides to
a sweep's command. No network: nothing here talks to W&B's server. ``scripts/wandb_sweep.py`` creates the sweep
and runs the agents.
"""

from __future__ import annotations

import copy
import math
import os
import platform
import random
import re
from pathlib import Path
from typing import Any

from speedtrain.errors import UserError

METHODS = ("grid", "random", "bayes")
GOALS = ("minimize", "maximize")
METRIC = re.compile(r"^(?:[\w-]+-)?(?:train|val|test|bench)/\w")  # what train.py logs (stage 1: teacher-val/acc)
# the macros wandb's agent fills in (wandb/wandb_agent.py, Agent._command_run); it drops any other ${...} item
MACROS = ("env", "interpreter", "program", "args", "args_no_hyphens", "args_no_equals", "args_no_boolean_flags",
          "args_json", "args_json_file", "args_append_hydra", "args_override_hydra")
RANGE_DISTRIBUTIONS = ("uniform", "int_uniform", "q_uniform", "log_uniform", "q_log_uniform", "inv_log_uniform",
                       "log_uniform_values", "q_log_uniform_values", "inv_log_uniform_values")
DISTRIBUTIONS = ("constant", "categorical", *RANGE_DISTRIBUTIONS, "normal", "q_normal", "log_normal", "q_log_normal",
                 "beta", "q_beta")


def load_sweep(path: str | Path, validate: bool = True, root: str | Path = ".") -> dict:
    """Read (and validate) the sweep yaml at ``path``; raise :class:`UserError` naming the problem and the fix.

    ``root``: the folder the agents start in, where the sweep's ``program`` must be (:func:`validate_sweep`)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"sweep config '{path}': file not found; pass a yaml such as conf/sweep/distill.yaml")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"sweep config '{path}' cannot be read ({err}); pass a UTF-8 yaml file") from None
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = text.splitlines()[where.line] if where is not None and where.line < len(text.splitlines()) else ""
        fix = ("write each command item on its own '- ' line (in a flow list [${env}, ...] '{' starts a mapping)"
               if "${" in line and "[" in line else "fix the YAML there")
        at = f" (line {where.line + 1})" if where is not None else ""
        raise UserError(f"sweep config '{path}' is not valid YAML{at}: {getattr(err, 'problem', None) or err}; "
                        f"{fix}") from None
    if validate:
        validate_sweep(config, source=str(path), root=root)
    return config


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_parameter(name: str, spec: Any, method: str, source: str) -> None:
    where = f"{source}: parameters.{name}"
    if not isinstance(spec, dict) or not spec:
        raise UserError(f"{where} must be a mapping with value, values, min/max or distribution, e.g. "
                        f"{{values: [1, 2]}}")
    if "parameters" in spec:
        raise UserError(f"{where}: nested parameters are not Hydra overrides; name the dotted key instead, "
                        f"e.g. {name}.<key>")
    dist = spec.get("distribution")
    if dist is not None and dist not in DISTRIBUTIONS:
        raise UserError(f"{where}.distribution={dist!r} is unknown; use one of {', '.join(DISTRIBUTIONS)}")
    if "values" in spec and (not isinstance(spec["values"], list) or not spec["values"]):
        raise UserError(f"{where}.values must be a non-empty list, e.g. values: [64, 128]")
    if not ({"value", "values", "min", "max", "distribution"} & spec.keys()):
        raise UserError(f"{where} has none of value, values, min/max, distribution; add one, e.g. values: [1, 2]")
    if dist is None:  # how W&B infers it
        dist = ("constant" if "value" in spec else "categorical" if "values" in spec
                else "int_uniform" if all(isinstance(spec.get(k), int) for k in ("min", "max")) else "uniform")
    if dist == "constant" and "value" not in spec:
        raise UserError(f"{where}: distribution constant needs value: <v>")
    if dist == "categorical" and "values" not in spec:
        raise UserError(f"{where}: distribution categorical needs values: [...]")
    if dist in RANGE_DISTRIBUTIONS:
        low, high = spec.get("min"), spec.get("max")
        if not (_number(low) and _number(high)):
            raise UserError(f"{where}: {dist} needs numbers min and max (got min={low!r}, max={high!r}); "
                            "in YAML write 3.0e-4, not 3e-4 (a string)")
        if not low < high:
            raise UserError(f"{where}: min={low} must be below max={high}")
        if dist.endswith("_values") and low <= 0:
            raise UserError(f"{where}: {dist} needs min > 0 (got {low}); these are the values, not their logs")
        if dist == "int_uniform" and not (isinstance(low, int) and isinstance(high, int)):
            raise UserError(f"{where}: int_uniform needs integer min and max (got {low}, {high})")
    if method == "grid" and dist not in ("constant", "categorical"):
        raise UserError(f"{where}: method grid needs value or values, not the distribution {dist}; "
                        "list the values or use method random/bayes")


def validate_sweep(config: Any, source: str = "sweep config", root: str | Path = ".") -> None:
    """Check a sweep config as W&B and this project need it (no network: the ``sweeps`` package that wandb's
    server-side schema lives in is not a dependency of wandb).

    Checks: method, metric (name, goal), parameters (non-empty; value/values/min+max/distribution well formed;
    every name a key of the config the command composes), early_terminate, the command (known macros only, the
    parameters passed as ``${args_no_hyphens}``), the program exists in ``root`` (the folder the agents start in:
    ``wandb agent`` runs ``program`` relative to it), and that Hydra accepts a sampled trial.
    """
    if not isinstance(config, dict):
        raise UserError(f"{source}: a sweep config must be a YAML mapping (program, method, metric, parameters, "
                        "command)")
    where = f"{source}: "
    method = config.get("method")
    if method not in METHODS:
        raise UserError(f"{where}method={method!r} is unknown; use one of {', '.join(METHODS)}")
    metric = config.get("metric")
    if not isinstance(metric, dict) or not metric.get("name"):
        raise UserError(f"{where}metric is missing; add metric: {{name: val/acc, goal: maximize}}")
    if metric.get("goal", "minimize") not in GOALS:
        raise UserError(f"{where}metric.goal={metric.get('goal')!r} is unknown; use maximize or minimize")
    parameters = config.get("parameters")
    if not isinstance(parameters, dict) or not parameters:
        raise UserError(f"{where}parameters is missing or empty; add e.g. parameters: {{module.optimizer.lr: "
                        "{values: [1.0e-3, 2.0e-3]}}")
    for name, spec in parameters.items():
        _check_parameter(name, spec, method, source)
    early = config.get("early_terminate")
    if early is not None:
        if not isinstance(early, dict) or early.get("type") != "hyperband":
            raise UserError(f"{where}early_terminate.type must be hyperband (got {early!r})")
        if not any(isinstance(early.get(k), int) and early[k] > 0 for k in ("min_iter", "max_iter")):
            raise UserError(f"{where}early_terminate needs a positive integer min_iter or max_iter, e.g. min_iter: 2")
    program = config.get("program")
    root = Path(root).resolve()
    if not program or not (root / str(program)).is_file():
        raise UserError(f"{where}program={program!r} is not a file in {root}; use program: train.py")
    command = config.get("command")
    if not isinstance(command, list) or not all(isinstance(c, (str, int, float)) for c in command):
        raise UserError(f"{where}command must be a list of strings, e.g. [${{env}}, ${{interpreter}}, ${{program}}, "
                        "+experiment=distill, ${args_no_hyphens}]")
    for item in map(str, command):
        if item.startswith("${") and item.endswith("}") and item[2:-1] not in MACROS:
            raise UserError(f"{where}command item {item} is not a wandb macro (the agent would drop it); "
                            f"use one of {', '.join('${' + m + '}' for m in MACROS)}")
    if "${args_no_hyphens}" not in command:
        raise UserError(f"{where}command must pass the parameters as Hydra overrides with ${{args_no_hyphens}} "
                        "(${args} adds '--', which Hydra rejects)")
    check_hydra_keys(config, source)


def command_overrides(config: dict) -> list[str]:
    """The Hydra overrides written in the sweep's command (no macros, no ``hydra.*``): what each trial composes."""
    return [str(c) for c in config.get("command") or []
            if not str(c).startswith("${") and "=" in str(c) and not str(c).lstrip("+~").startswith("hydra.")]


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def check_hydra_keys(config: dict, source: str = "sweep config") -> None:
    """Every parameter is a key of the config the command composes, and Hydra accepts a sampled trial."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    from speedtrain.config import compose_config

    base = command_overrides(config)
    shown = " ".join(base) or "(no overrides)"
    try:
        cfg = compose_config(base)
    except HydraException as err:
        raise UserError(f"{source}: the command's overrides {shown} do not compose: {_first_line(err)}") from None
    missing = object()
    for name in config["parameters"]:
        if name.startswith("+"):  # appends a new key: nothing to find
            continue
        key = name.lstrip("~")
        current = OmegaConf.select(cfg, key, default=missing, throw_on_resolution_failure=False)
        if current is missing:
            raise UserError(f"{source}: parameters.{name} is not a key of the config of {shown}; "
                            f"see the keys with: python train.py {shown} --cfg job")
        _check_type(f"{source}: parameters.{name}", config["parameters"][name], current)
    metric = config["metric"]["name"]
    if metric != cfg.get("objective") and not METRIC.match(metric):
        raise UserError(f"{source}: metric.name={metric!r} is not a metric train.py logs; use {cfg.get('objective')} "
                        "or another <train|val|test>/<name> (val/f1, val/loss)")
    args = create_args(sample_params(config))["args_no_hyphens"]  # as the agent formats them
    try:
        OverridesParser.create().parse_overrides(args)
    except HydraException as err:
        raise UserError(f"{source}: Hydra rejects a sampled trial {' '.join(args)}: {_first_line(err)}") from None


def _check_type(where: str, spec: dict, current: Any) -> None:
    """A number in the config is swept over numbers (an integer over integers): Hydra itself takes any string."""
    if isinstance(current, bool) or not _number(current):
        return
    candidates = [spec["value"]] if "value" in spec else list(spec.get("values") or [])
    bad = [v for v in candidates if not _number(v) or (isinstance(current, int) and not isinstance(v, int))]
    kind = "integers" if isinstance(current, int) else "numbers"
    if bad:
        raise UserError(f"{where}: {bad[0]!r} is not one of the {kind} the key holds (now {current!r})")
    dist = spec.get("distribution")
    ranged = dist in RANGE_DISTRIBUTIONS or (dist is None and not candidates and "min" in spec)
    if ranged and isinstance(current, int) and not (
            all(isinstance(spec.get(k), int) for k in ("min", "max")) and dist in (None, "int_uniform")
            or (dist or "").startswith("q_") and isinstance(spec.get("q"), int)):
        raise UserError(f"{where}: the key holds an integer (now {current!r}); use distribution int_uniform "
                        "with integer min and max, or values: [...]")


def sample_params(config: dict, rng: random.Random | None = None) -> dict[str, Any]:
    """One parameter set: without ``rng`` the first value / lower bound of each parameter, else a random draw."""
    params = {}
    for name, spec in config["parameters"].items():
        dist = spec.get("distribution")
        if "value" in spec and dist in (None, "constant"):
            params[name] = spec["value"]
            continue
        if "values" in spec and dist in (None, "categorical"):
            params[name] = rng.choice(spec["values"]) if rng else spec["values"][0]
            continue
        low, high = spec.get("min"), spec.get("max")
        if dist is None:
            dist = "int_uniform" if isinstance(low, int) and isinstance(high, int) else "uniform"
        if dist in ("normal", "q_normal", "log_normal", "q_log_normal"):
            value = rng.gauss(spec.get("mu", 0.0), spec.get("sigma", 1.0)) if rng else spec.get("mu", 0.0)
            value = math.exp(value) if "log" in dist else value
        elif dist in ("beta", "q_beta"):
            a, b = spec.get("a", 1.0), spec.get("b", 1.0)
            value = rng.betavariate(a, b) if rng else a / (a + b)
        elif dist == "int_uniform":
            value = rng.randint(low, high) if rng else low
        elif dist.endswith("_values"):  # log-uniform between the values
            value = math.exp(rng.uniform(math.log(low), math.log(high))) if rng else low
        elif "log_uniform" in dist:  # min and max are natural logs
            value = math.exp(rng.uniform(low, high) if rng else low)
            value = 1 / value if dist.startswith("inv_") else value
        else:
            value = rng.uniform(low, high) if rng else low
        if dist.startswith("q_"):
            q = spec.get("q", 1)
            value = round(value / q) * q
            value = int(value) if isinstance(q, int) else value
        params[name] = value
    return params


def create_args(params: dict[str, Any]) -> dict[str, Any]:
    """wandb's own argument formats for ``params`` ({name: value} or {name: {"value": value}}, as the agent gets)."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    args = {k: v if isinstance(v, dict) and "value" in v else {"value": v} for k, v in params.items()}
    return create_sweep_command_args({"args": args})


def agent_command(config: dict, params: dict[str, Any]) -> list[str]:
    """The command line a W&B agent runs for one parameter set, built with wandb's ``create_sweep_command`` and
    ``create_sweep_command_args``; the macro filling mirrors ``wandb.wandb_agent.Agent._command_run`` (not a
    function wandb exposes): ``${env}`` -> /usr/bin/env, ``${interpreter}`` -> python, ``${program}``."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command

    command = create_sweep_command(copy.deepcopy(config.get("command")) or None)  # it edits the list in place
    sweep_vars = create_args(params)
    sweep_vars["interpreter"] = ["python"]
    sweep_vars["program"] = [str(config["program"])]
    sweep_vars["args_json_file"] = [os.path.join("wandb", "sweep-<id>", "config-<run>.json")]
    if platform.system() != "Windows":
        sweep_vars["env"] = ["/usr/bin/env"]
    out: list[str] = []
    for chunk in map(str, command):
        if chunk.startswith("${") and chunk.endswith("}"):
            out += sweep_vars.get(chunk[2:-1]) or []
        else:
            out.append(chunk)
    return out


def add_overrides(config: dict, overrides: list[str]) -> dict:
    """``config`` with Hydra ``overrides`` placed before ``${args_no_hyphens}`` in its command."""
    config = copy.deepcopy(config)
    command = list(config.get("command") or [])
    at = command.index("${args_no_hyphens}") if "${args_no_hyphens}" in command else len(command)
    config["command"] = [*command[:at], *overrides, *command[at:]]
    return config
