"""The ``speedtrain`` command.

    speedtrain train +experiment=baseline                  # same as `python train.py ...`, with the installed configs
    speedtrain export outputs/<run> [--out DIR] [export.variants=[onnx,onnx_int8] ...]
    speedtrain bench outputs/<run>/bundle                  # re-benchmark a bundle on this machine
    speedtrain frontier multirun/<date>/<time> [--rebench]  # a frontier sweep's table again, peers timed now
    speedtrain predict outputs/<run>/bundle "text" ... [--json] [--variant onnx]
    speedtrain serve outputs/<run>/bundle [--port 8000] [--workers 2]   # HTTP API (speedtrain serve --help)
    speedtrain info                                        # versions, devices, where the configs and the cache are

Each command imports what it needs when it runs, so ``speedtrain --help`` answers without loading torch.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from omegaconf import OmegaConf

from speedtrain.errors import UserError

USAGE = """usage: speedtrain <command> [args]

commands:
  train [overrides...]                 train with the packaged Hydra configs (same flags as `python train.py`)
  export RUN_DIR|CKPT [--out DIR] [export.key=value ...]
                                       export, check and benchmark a finished run's model into a bundle
  bench BUNDLE [--out DIR] [export.bench.key=value ...]
                                       re-benchmark a bundle on this machine (rewrites its benchmark files)
  frontier SWEEP_DIR [--rebench] [--peers tfidf_lr,fasttext,static_lr] [--no-teacher]
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
                return globals()[command](rest)
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


def export(argv: list[str]) -> int:
    """Export a finished run (its ``model/`` or a given checkpoint) into a bundle, like the end of a run does."""
    parser = argparse.ArgumentParser(prog="speedtrain export", description=export.__doc__)
    parser.add_argument("source", help="a run folder (outputs/<date>/<time>) or one of its .ckpt files")
    parser.add_argument("--out", help="bundle folder (default: <run>/bundle)")
    parser.add_argument("overrides", nargs="*", help="config values, e.g. export.variants=[onnx,onnx_int8]")
    args = parser.parse_intermixed_args(argv)
    _logging()
    from speedtrain.builders import build_datamodule
    from speedtrain.callbacks.export_bench import build_exporter
    from speedtrain.config import config_dir

    source = Path(args.source).resolve()
    run_dir = source.parent.parent if source.suffix == ".ckpt" else source
    config = run_dir / ".hydra" / "config.yaml"
    if not config.is_file():
        raise UserError(f"{run_dir} is not a run folder ({config} missing); pass the folder train.py wrote or "
                        "one of its checkpoints")
    defaults = {"export": OmegaConf.load(Path(config_dir()) / "export" / "default.yaml")}  # runs older than export
    cfg = OmegaConf.merge(defaults, OmegaConf.load(config), OmegaConf.from_dotlist(args.overrides))
    cfg.export.enabled = True
    cfg.paths.output_dir = str(run_dir)
    model, tokenizer = _trained_model(run_dir, source if source.suffix == ".ckpt" else None)
    datamodule = build_datamodule(cfg)
    datamodule.prepare()
    metrics = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}
    distill = {"teacher_dir": metrics["teacher/dir"]} if metrics.get("teacher/dir") else None
    exporter = build_exporter(cfg, datamodule, distill, metrics)
    out = Path(args.out) if args.out else exporter.out_dir
    report = exporter.export(model, datamodule, out, tokenizer=tokenizer)  # what the end of the run does
    print((out / "benchmark.md").read_text())
    print(f"bundle: {out} (fast variant: {report['fast']})")
    return 0


def bench(argv: list[str]) -> int:
    """Re-benchmark a bundle on this machine: its variants, the teacher if present, on the texts it shipped with."""
    parser = argparse.ArgumentParser(prog="speedtrain bench", description=bench.__doc__)
    parser.add_argument("bundle")
    parser.add_argument("--out", help="where to write benchmark.json/.md/.png (default: the bundle)")
    parser.add_argument("overrides", nargs="*", help="benchmark settings, e.g. export.bench.min_time_s=2")
    args = parser.parse_intermixed_args(argv)
    _logging()
    from speedtrain.bench.report import write_model_card, write_report
    from speedtrain.bundle.manifest import MANIFEST, verify_bundle
    from speedtrain.callbacks.export_bench import export_options
    from speedtrain.config import compose_config
    from speedtrain.export.build import TEXTS_FILE, benchmark_bundle

    bundle = Path(args.bundle)
    manifest = verify_bundle(bundle)
    cfg = compose_config(["paths.output_dir=.", *args.overrides])
    options = export_options(cfg)
    if not (bundle / "benchmark.json").is_file() or not (bundle / TEXTS_FILE).is_file():
        raise UserError(f"{bundle} has no benchmark.json / {TEXTS_FILE} to re-benchmark from; re-export it with "
                        "`speedtrain export <run>`")
    previous = json.loads((bundle / "benchmark.json").read_text())
    rows = {name: {k: previous["variants"][name][k] for k in ("parity", "size_mb")} for name in manifest["variants"]}
    texts = (bundle / TEXTS_FILE).read_text().splitlines()
    teacher = manifest.get("teacher") if cfg.export.get("teacher", True) else None
    report = benchmark_bundle(bundle, rows, texts, manifest["max_length"], manifest["labels"], options, teacher)
    report["export_s"] = previous.get("export_s", {})
    out = Path(args.out) if args.out else bundle
    out.mkdir(parents=True, exist_ok=True)
    write_report(out, report)
    if out == bundle:
        write_model_card(bundle, report, manifest["labels"])
        if report["fast"] != manifest["fast"]:  # the fastest variant depends on the machine
            print(f"fast variant on this machine: {report['fast']} (was {manifest['fast']}); manifest updated")
            manifest["fast"] = report["fast"]
            (bundle / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    print((out / "benchmark.md").read_text())
    return 0


def frontier(argv: list[str]) -> int:
    """Write the accuracy-speed frontier (frontier.csv/.md/.png) of a finished +experiment=frontier sweep again:
    the peers fitted and timed now, and with --rebench every student bundle timed again beside them."""
    from speedtrain.frontier import PEERS, frontier_report

    parser = argparse.ArgumentParser(prog="speedtrain frontier", description=frontier.__doc__)
    parser.add_argument("sweep_dir", help="the multirun folder (multirun/<date>/<time>)")
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated peers ('' for none)")
    parser.add_argument("--teacher", action=argparse.BooleanOptionalAction, default=True,
                        help="the teacher as a row, timed now (default: on)")
    parser.add_argument("--rebench", action="store_true", help="time the students' bundles again now")
    parser.add_argument("--wandb", action=argparse.BooleanOptionalAction, default=None,
                        help="log to W&B (default: when the jobs did)")
    args = parser.parse_args(argv)
    _logging()
    peers = [p for p in args.peers.split(",") if p]
    paths = frontier_report(args.sweep_dir, peers, wandb=args.wandb, rebench=args.rebench, teacher=args.teacher)
    if paths is None:
        raise UserError(f"{args.sweep_dir} holds no finished job (a folder with metrics.json); pass the sweep folder "
                        "of `python train.py -m +experiment=frontier`")
    print(Path(paths["md"]).read_text())
    return 0


def predict(argv: list[str]) -> int:
    """Print the label and score of each text (one per line, tab-separated), or JSON with --json."""
    parser = argparse.ArgumentParser(prog="speedtrain predict", description=predict.__doc__)
    parser.add_argument("bundle")
    parser.add_argument("texts", nargs="+", metavar="text")
    parser.add_argument("--variant", default="fast", help="a variant of the bundle (default: its fast one)")
    parser.add_argument("--json", action="store_true", help="print a JSON list of {text, label, score}")
    args = parser.parse_intermixed_args(argv)
    from speedtrain.bundle.predictor import Predictor

    predictions = Predictor.load(args.bundle, variant=args.variant).predict(args.texts)
    if args.json:
        print(json.dumps([{"text": t, **p} for t, p in zip(args.texts, predictions)], indent=1))
    else:
        for text, p in zip(args.texts, predictions):
            print(f"{p['label']}\t{p['score']:.4f}\t{text}")
    return 0


def serve(argv: list[str]) -> int:
    """Serve a bundle over HTTP: POST /predict, /healthz, /readyz, /metrics, /docs (micro-batching, cache, workers)."""
    import dataclasses

    from speedtrain.serve.options import API_KEY_ENV, ServeOptions
    from speedtrain.serve.supervisor import serve as run_server

    parser = argparse.ArgumentParser(prog="speedtrain serve", description=serve.__doc__)
    parser.add_argument("bundle")
    helps = {"host": "address to bind (default 127.0.0.1: this machine only; 0.0.0.0 for all)",
             "workers": "processes sharing the port, each with the model, a batcher and a cache (0: one per core)",
             "pin": "give each worker its own core(s) when workers x threads fit the cores",
             "threads": "model threads per worker (0: the cores divided among the workers)",
             "api_key": f"require this key in X-API-Key or Authorization: Bearer (or set ${API_KEY_ENV})",
             "variant": "a variant of the bundle (default: its fast one)"}
    for field in dataclasses.fields(ServeOptions):
        if field.name == "bundle":
            continue
        flag, text = f"--{field.name.replace('_', '-')}", f"{helps.get(field.name, '')} (default: %(default)s)".strip()
        if field.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default, help=text)
        else:
            kind = {"int": int, "float": float}.get(str(field.type), str)
            parser.add_argument(flag, type=kind, default=field.default, help=text)
    args = vars(parser.parse_args(argv))
    run_server(ServeOptions(**args))
    return 0


def _trained_model(run_dir: Path, checkpoint: Path | None):
    """The run's best model (``model/``), or ``model/``'s architecture with the weights of ``checkpoint``."""
    import torch
    from transformers import AutoTokenizer

    from speedtrain.bundle.runtime import load_pretrained

    folder = run_dir / "model"
    if not (folder / "config.json").is_file():
        raise UserError(f"{run_dir} has no model/ folder (the run did not finish); export needs it")
    model = load_pretrained(folder)
    if checkpoint is not None:
        if not checkpoint.is_file():
            raise UserError(f"checkpoint {checkpoint} not found")
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
        model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    return model, AutoTokenizer.from_pretrained(str(folder))


def _logging() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("speedtrain").setLevel(logging.INFO)


if __name__ == "__main__":
    raise SystemExit(main())
