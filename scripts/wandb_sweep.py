"""Create a W&B sweep from a yaml in conf/sweep/ and run agents for it; every trial is ``train.py`` + Hydra overrides.

    python scripts/wandb_sweep.py conf/sweep/distill.yaml --dry-run              # validate, print one trial's command
    python scripts/wandb_sweep.py conf/sweep/distill.yaml --agents 4             # create the sweep, 4 agents here
    python scripts/wandb_sweep.py conf/sweep/distill.yaml --gpus 0,1,2,3 --override trainer=gpu  # one agent per GPU
    python scripts/wandb_sweep.py --sweep-id <entity>/speedtrain/<id> --agents 2 --count 5    # agents for a sweep

The yaml is validated before anything is created: method, metric, parameters (each a key of the config that
the command composes, e.g. ``+experiment=distill``), and a command that passes them as Hydra overrides
(``${args_no_hyphens}``). An agent is ``wandb agent [--count K] <entity>/<project>/<id>`` started from the
repository root (the sweep's ``program: train.py`` is relative to it), with the ``python`` that runs this script
first on PATH (the agent runs ``${interpreter}``, i.e. ``python``). The script waits for the agents and exits 1
if one failed. Bad input: one line on stderr and exit code 2. ``--override KEY=VALUE`` adds Hydra overrides to
the command of a sweep this script creates. Creating a sweep and running agents needs ``wandb login``.
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import subprocess
import sys
from pathlib import Path

from speedtrain.errors import UserError, exit_on_user_error
from speedtrain.wandb_sweep import add_overrides, agent_command, load_sweep, sample_params, validate_sweep

REPO = Path(__file__).resolve().parents[1]  # the agents start here: the sweep's program (train.py) is relative to it


def sweep_path(sweep_id: str, project: str, entity: str | None) -> str:
    """``entity/project/id`` (``project/id`` without an entity) unless ``sweep_id`` already names them."""
    if "/" in sweep_id:
        return sweep_id
    return "/".join(p for p in (entity, project, sweep_id) if p)


def agent_envs(agents: int, gpus: list[str]) -> list[dict[str, str]]:
    """One environment per agent: this Python first on PATH; with ``gpus`` each agent sees one GPU (round robin)."""
    base = dict(os.environ)
    base["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), base.get("PATH", "")])
    envs = []
    for i in range(agents):
        env = dict(base)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
        envs.append(env)
    return envs


def run_agents(path: str, agents: int, count: int | None, gpus: list[str]) -> int:
    """Start ``agents`` ``wandb agent`` processes in the repository root, wait; the number of failed agents."""
    cmd = [sys.executable, "-m", "wandb", "agent", *(["--count", str(count)] if count else []), path]
    procs = []
    for i, env in enumerate(agent_envs(agents, gpus)):
        gpu = f" (CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']})" if gpus else ""
        print(f"agent {i}{gpu}: {shlex.join(cmd)}", flush=True)
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env))
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        raise
    for i, code in enumerate(codes):
        if code:
            print(f"agent {i} exited with {code}", file=sys.stderr)
    return sum(1 for c in codes if c)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", help="the sweep yaml, e.g. conf/sweep/distill.yaml")
    parser.add_argument("--sweep-id", help="run agents for this existing sweep (id or entity/project/id)")
    parser.add_argument("--project", default="speedtrain", help="W&B project (default: speedtrain)")
    parser.add_argument("--entity", default=None, help="W&B entity (default: yours)")
    parser.add_argument("--agents", type=int, default=None, help="agents to start (default: 1, or one per GPU)")
    parser.add_argument("--count", type=int, default=None, help="trials per agent (default: until the sweep ends)")
    parser.add_argument("--gpus", default="", help="comma-separated GPU ids: each agent gets one (round robin)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="a Hydra override added to the command of the sweep created here (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="validate and print one trial's command; no sweep")
    parser.add_argument("--random", action="store_true", help="--dry-run: a random trial, not the lower bounds")
    parser.add_argument("--seed", type=int, default=0, help="--dry-run --random: the seed")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    gpus = [g.strip() for g in args.gpus.split(",") if g.strip()]
    agents = args.agents if args.agents is not None else max(1, len(gpus))
    if agents < 1:
        raise UserError(f"--agents={agents} must be at least 1")
    if args.count is not None and args.count < 1:
        raise UserError(f"--count={args.count} must be at least 1 (leave it out to run until the sweep ends)")
    if bool(args.config) == bool(args.sweep_id):
        raise UserError("pass a sweep yaml (e.g. conf/sweep/distill.yaml) or --sweep-id of an existing sweep, "
                        "not both or neither")
    if args.sweep_id:
        if args.override or args.dry_run:
            raise UserError("--override and --dry-run need the sweep yaml: the command of an existing sweep "
                            "is on the W&B server")
        return 1 if run_agents(sweep_path(args.sweep_id, args.project, args.entity), agents, args.count, gpus) else 0

    config = load_sweep(args.config, validate=not args.override, root=REPO)
    if args.override:
        bad = [o for o in args.override if "=" not in o or o.startswith("-")]
        if bad:
            raise UserError(f"--override {bad[0]!r} is not a Hydra override; write KEY=VALUE, e.g. trainer=gpu")
        config = add_overrides(config, args.override)
        validate_sweep(config, source=f"{args.config} with --override {' '.join(args.override)}", root=REPO)
    if args.dry_run:
        params = sample_params(config, random.Random(args.seed) if args.random else None)
        print(shlex.join(agent_command(config, params)))
        return 0
    if gpus and not any(str(c).startswith("trainer=") for c in config["command"]):
        print(f"note: the command has no trainer= override, so trials use the default trainer (CPU); "
              f"add --override trainer=gpu to use the GPUs {','.join(gpus)}", file=sys.stderr)
    import wandb

    sweep_id = wandb.sweep(config, project=args.project, entity=args.entity)
    path = sweep_path(sweep_id, args.project, args.entity)
    print(f"sweep {path}: more agents with `wandb agent {path}` from {REPO}", flush=True)
    return 1 if run_agents(path, agents, args.count, gpus) else 0


if __name__ == "__main__":
    with exit_on_user_error():
        try:
            code = main()
        except KeyboardInterrupt:  # the agents were stopped (run_agents)
            code = 130
    sys.exit(code)
