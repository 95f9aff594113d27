"""The ``speedtrain`` command.

    speedtrain train +experiment=baseline                  # same as `python train.py ...`, with the installed configs
    speedtrain export outputs/<run> [--out DIR] [export.variants=[onnx,onnx_int8] ...]
    speedtrain bench outputs/<run>/bundle                  # re-benchmark a bundle on this machine
    speedtrain frontier multirun/<date>/<time> [--rebench]  # a frontier sweep's table again, peers timed now
    speedtrain predict outputs/<run>/bundle "text" ... [--json] [--variant onnx]
    speedtrain serve outputs/<run>/bundle [--port 8000] [--workers 2]   # HTTP API (speedtrain serve --help)
    speedtrain info                                        # versions, devices, where the configs and the cache are
"""

from __future__ import annotations

import os
import sys

USAGE = """usage: speedtrain <command> [args]

commands:
  train [overrides...]                 train with the packaged Hydra configs (same flags as `python train.py`)
  export RUN_DIR|CKPT [--out DIR] [export.key=value ...]
                                       export, check and benchmark a finished run's model into a bundle
  bench BUNDLE [--out DIR] [export.bench.key=value ...]
                                       re-benchmark a bundle on this machine (rewrites its benchmark files)
  frontier SWEEP_DIR [--rebench] [--peers tfidf_lr,fasttext]
                                       a frontier sweep's table and plot again: peers (and students) timed now
  predict BUNDLE TEXT... [--variant NAME] [--json]
                                       label and score of each text
  serve BUNDLE [--host H] [--port P] [--workers N] [--variant NAME] ...
                                       HTTP API: POST /predict, /healthz, /readyz, /metrics, /docs
  info                                 versions, devices, config folder and cache folder
"""

COMMANDS = ("train", "export", "bench", "frontier", "predict", "serve", "info")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0
    command, rest = argv[0], argv[1:]
    if command == "train":
        return _train(rest)
    if command == "info":
        return _info()
    if command in ("export", "bench", "frontier", "predict", "serve"):
        from speedtrain.errors import exit_on_user_error

        try:
            with exit_on_user_error():
                from speedtrain import commands

                return getattr(commands, command)(rest)
        except SystemExit as done:  # a user error (one line on stderr) or argparse: the exit code
            return done.code if isinstance(done.code, int) else 1
    print(f"speedtrain: error: unknown command {command!r}; use one of: {', '.join(COMMANDS)}", file=sys.stderr)
    return 2


def run_config(cfg) -> float | None:
    """The Hydra task of ``train.py`` and ``speedtrain train``: one run of ``cfg``; a bad value is one line, exit 2.

    Imports the pipeline only when called, so ``--help`` and ``--cfg`` answer without loading torch.
    """
    from speedtrain.errors import exit_on_user_error
    from speedtrain.pipeline import run

    with exit_on_user_error():
        return run(cfg)


def _train(overrides: list[str]) -> int:
    import hydra

    # the one speedtrain module that imports speedtrain's Hydra plugins: they import speedtrain, not the other way
    from hydra_plugins.speedtrain_plugins import register
    from speedtrain.config import config_dir

    register()  # hparams_search=optuna, hydra/launcher=slurm|local
    sys.argv = ["speedtrain-train", *overrides]  # Hydra reads its flags and overrides from sys.argv
    hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")(run_config)()
    return 0


def _info() -> int:
    import platform

    import pytorch_lightning
    import torch
    import transformers

    import speedtrain
    from speedtrain.config import compose_config, config_dir

    cfg = compose_config(["paths.output_dir=."])
    rows = {
        "speedtrain": speedtrain.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pytorch-lightning": pytorch_lightning.__version__,
        "transformers": transformers.__version__,
        "cpu": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "cuda": ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) or "none",
        "configs": str(config_dir()),
        "cache": os.path.expanduser(cfg.paths.cache_dir),
    }
    for key, value in rows.items():
        print(f"{key:>18}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
