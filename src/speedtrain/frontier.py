"""The accuracy–speed frontier of a sweep: its students against peer baselines trained on the same split.

    python train.py -m +experiment=frontier seed=1,2,3      # conf/experiment/frontier.yaml registers the callback
    python train.py -m +experiment=frontier data.split_seed=1,2,3,4,5    # five splits: a small test set is noisy

:class:`FrontierReport` (a Hydra callback) runs when the multirun ends. It reads every job folder
``<sweep dir>/<n>/`` with a ``metrics.json``, fits and measures the peers (:mod:`speedtrain.bench.peers`) on the
split of the jobs' config (on each split, when the jobs ran on several ``data.split_seed``: every row then
averages over splits, the students over seeds and splits), and writes ``frontier.csv``, ``frontier.md`` and
``frontier.png`` into the sweep folder (:mod:`speedtrain.bench.frontier`); when the jobs logged to W&B, it logs
the table and the plot to a new W&B run there too.

The teacher the students learned from is a row too (kind ``teacher``, the ceiling): once per teacher folder
(``metrics["teacher/dir"]``; the frontier experiment fine-tunes one), its test accuracy from the job's metrics
(``teacher/transformer_test_acc`` for an ensemble teacher, else ``teacher/test_acc``) and its speed measured in
the report's process by the peers' harness: its own tokenizer + PyTorch eager, end to end. The ``static_lr`` peer
is built from the first teacher folder; without one (no distilled job) it is skipped with a warning.

What it takes from a job:

==============  ====================================================================================
model           ``.hydra/hydra.yaml``: ``hydra.runtime.choices.model``
seed            ``metrics["seed"]``
test_acc        ``metrics["test/acc"] * 100``
params          ``metrics["params"]["params_total"]``
texts_per_s     ``metrics["bundle"]["e2e_texts_per_s"]`` (the fast variant through the Predictor, largest
                benchmark batch); else the largest batch of ``fast_texts_per_s`` (model time only)
p50_ms          ``metrics["bundle"]["e2e_p50_ms"]``; else ``fast_p50_ms``
variant         ``metrics["bundle"]["fast"]`` (and ``fast_acc``: its test accuracy, points)
==============  ====================================================================================
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from speedtrain.errors import exit_on_user_error

log = logging.getLogger(__name__)

PEERS = ("tfidf_lr", "fasttext", "static_lr")  # the default peers (conf/experiment/frontier.yaml's too)


def job_dirs(sweep_dir: str | Path) -> list[Path]:
    """The job folders of ``sweep_dir`` that finished (hold ``metrics.json``), by job number."""
    jobs = [p.parent for p in Path(sweep_dir).glob("*/metrics.json")]
    return sorted(jobs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))


def student_row(job_dir: str | Path) -> dict:
    """The frontier row of one finished job (see the module docstring)."""
    job_dir = Path(job_dir)
    metrics = json.loads((job_dir / "metrics.json").read_text())
    hydra_file = job_dir / ".hydra" / "hydra.yaml"
    model = OmegaConf.select(OmegaConf.load(hydra_file), "hydra.runtime.choices.model") if hydra_file.is_file() \
        else None
    bundle = metrics.get("bundle") or {}
    texts_per_s, p50, speed, extra = bundle.get("e2e_texts_per_s"), bundle.get("e2e_p50_ms"), "e2e", {}
    if texts_per_s is None and bundle.get("fast_texts_per_s"):  # metrics.json written before the e2e keys
        by_batch = bundle["fast_texts_per_s"]
        batch = max(by_batch, key=int)
        texts_per_s, p50, speed, extra = by_batch[batch], bundle.get("fast_p50_ms"), "model", {"batch": int(batch)}
    test_acc = metrics.get("test/acc")
    return {"model": model or job_dir.name, "kind": "student", "seed": metrics.get("seed"),
            "split": job_split(job_dir),
            "test_acc": None if test_acc is None else 100 * test_acc,
            "texts_per_s": texts_per_s, "p50_ms": p50, "params": (metrics.get("params") or {}).get("params_total"),
            "variant": bundle.get("fast"), "fast_acc": bundle.get("fast_accuracy"),
            "speed": speed if texts_per_s is not None else None, "job": job_dir.name, **extra}


def job_config(job_dir: str | Path) -> DictConfig:
    """The config a job ran with (``<job>/.hydra/config.yaml``), its ``paths.output_dir`` set to the job."""
    cfg = OmegaConf.load(Path(job_dir) / ".hydra" / "config.yaml")
    cfg.paths.output_dir = str(job_dir)  # ${hydra:runtime.output_dir} resolves only inside the job
    return cfg


def job_split(job_dir: str | Path) -> int | None:
    """The ``data.split_seed`` a job's train/validation/test split was drawn with (None: no saved config)."""
    config = Path(job_dir) / ".hydra" / "config.yaml"
    return OmegaConf.select(OmegaConf.load(config), "data.split_seed", default=None) if config.is_file() else None


def bench_options(cfg: DictConfig):
    """The :class:`~speedtrain.bench.latency.BenchOptions` of a job's ``export.bench``."""
    from speedtrain.bench.latency import BenchOptions

    return BenchOptions(**OmegaConf.to_container(cfg.export.bench, resolve=True))


def job_splits(cfg: DictConfig):
    """The train/validation/test split ``cfg`` trains on, from the same DataModule the jobs built."""
    from speedtrain.builders import build_datamodule

    datamodule = build_datamodule(cfg)
    datamodule.prepare()
    return datamodule.splits


def peer_rows(cfg: DictConfig, peers: Sequence[str], work_dir: str | Path, splits=None,
              teacher_dir: str | None = None) -> list[dict]:
    """Fit and measure ``peers`` on the split ``cfg`` trains on, with its benchmark settings (``export.bench``).

    The split (``splits``, else :func:`job_splits`) comes from the same DataModule the jobs built, so the peers
    see exactly the students' train/validation/test texts. fastText's temporary file goes under ``work_dir``;
    ``static_lr`` reads ``teacher_dir`` and caches its piece vectors under ``paths.cache_dir``.
    """
    from speedtrain.bench.peers import fit_and_measure

    static = {"teacher_dir": teacher_dir, "cache_dir": OmegaConf.select(cfg, "paths.cache_dir", default=None)}
    return fit_and_measure(list(peers), job_splits(cfg) if splits is None else splits, bench_options(cfg),
                           work_dir=work_dir, peer_kwargs={"static_lr": static})


def teachers(jobs: Sequence[Path]) -> dict[str, Path]:
    """Each teacher folder the jobs name (``metrics["teacher/dir"]``) -> the first job that names it."""
    found: dict[str, Path] = {}
    for job in jobs:
        folder = json.loads((job / "metrics.json").read_text()).get("teacher/dir")
        if folder:
            found.setdefault(str(folder), job)
    return found


def teacher_row(folder: str, job_dir: Path, texts: list[str], options) -> dict:
    """The teacher of ``job_dir`` as a frontier row: test accuracy from the job's metrics, speed measured now as a
    peer's is (:func:`~speedtrain.bench.latency.benchmark_end_to_end`: its tokenizer + PyTorch eager, inference
    mode, ``teacher.max_length``), with fewer calls (it is ~100x slower than a student)."""
    import dataclasses

    import torch
    from transformers import AutoConfig

    from speedtrain.bench.latency import benchmark_end_to_end
    from speedtrain.bundle.runtime import TextEncoder, TorchRunner
    from speedtrain.models.teacher import load_classifier

    metrics, cfg = json.loads((job_dir / "metrics.json").read_text()), job_config(job_dir)
    model = load_classifier(folder, AutoConfig.from_pretrained(folder).num_labels, fine_tuned=True).eval()
    encoder = TextEncoder(folder, int(OmegaConf.select(cfg, "teacher.max_length", default=None) or 128))

    def make_predict(threads: int | None):
        runner = TorchRunner(model, threads or os.cpu_count() or 1)
        return lambda batch: runner(*encoder(batch)).argmax(1)

    fewer = dataclasses.replace(options, min_reps=min(options.min_reps, 100), warmup=min(options.warmup, 5),
                                throughput_warmup=1, throughput_min_reps=1)
    threads = torch.get_num_threads()
    try:
        speed = benchmark_end_to_end(make_predict, texts, fewer)
    finally:
        torch.set_num_threads(threads)  # TorchRunner sets torch's global thread count
    batch = max(speed["throughput"], key=int)
    acc = metrics.get("teacher/transformer_test_acc", metrics.get("teacher/test_acc"))
    source = str(metrics.get("teacher/source") or folder)
    return {"model": Path(source).name, "kind": "teacher", "seed": OmegaConf.select(cfg, "teacher.seed", default=None),
            "test_acc": None if acc is None else 100 * acc, "texts_per_s": speed["throughput"][batch],
            "p50_ms": speed["latency"]["p50_ms"], "p99_ms": speed["latency"]["p99_ms"],
            "params": sum(p.numel() for p in model.parameters()), "throughput": speed["throughput"],
            "batch": int(batch), "speed": "e2e", "teacher_dir": folder, "job": job_dir.name}


def teacher_rows(jobs: Sequence[Path], texts: list[str], options) -> list[dict]:
    """:func:`teacher_row` of every teacher folder the jobs name that still exists (models named apart)."""
    rows = []
    for folder, job in teachers(jobs).items():
        if not (Path(folder) / "config.json").is_file():
            log.warning("Frontier: the teacher folder %s (job %s) is gone; no teacher row for it", folder, job.name)
            continue
        rows.append(teacher_row(folder, job, texts, options))
        names = [row["model"] for row in rows]
        if names.count(rows[-1]["model"]) > 1:
            rows[-1]["model"] += f"#{names.count(rows[-1]['model'])}"
        log.info("Frontier: teacher %s: test acc %s, %.0f texts/s at batch %d, p50 %.2f ms", rows[-1]["model"],
                 rows[-1]["test_acc"], rows[-1]["texts_per_s"], rows[-1]["batch"], rows[-1]["p50_ms"])
    return rows


def rebench_student(row: dict, job_dir: Path, cfg: DictConfig) -> dict:
    """``row`` with the bundle of ``job_dir`` timed again now, end to end (Predictor, tokenization included), with
    the job's ``export.bench`` settings on its benchmark texts: side by side with the peers, in one process."""
    from speedtrain.bench.latency import BenchOptions, benchmark_end_to_end
    from speedtrain.bundle.predictor import Predictor

    bundle = job_dir / "bundle"
    texts = (bundle / "benchmark_texts.txt").read_text().splitlines()
    options = BenchOptions(**OmegaConf.to_container(cfg.export.bench, resolve=True))
    e2e = benchmark_end_to_end(lambda threads: Predictor.load(bundle, threads=threads, cache_size=0).predict,
                               texts, options)
    largest = max(e2e["throughput"], key=int)
    return {**row, "texts_per_s": e2e["throughput"][largest], "p50_ms": e2e["latency"]["p50_ms"],
            "batch": int(largest), "speed": "e2e"}


def frontier_report(sweep_dir: str | Path, peers: Sequence[str] = PEERS, wandb: bool | None = None,
                    rebench: bool = False, teacher: bool = True) -> dict[str, Path] | None:
    """Write ``frontier.csv``/``.md``/``.png`` of the sweep in ``sweep_dir``, peers (and the teacher) included.

    Args:
        sweep_dir: the multirun folder (``hydra.sweep.dir``).
        peers: names in :data:`speedtrain.bench.peers.PEERS` (an empty list: students only).
        wandb: log to a new W&B run in ``sweep_dir``; None: when the jobs used the W&B logger.
        rebench: time every job's bundle again now (:func:`rebench_student`) instead of taking the speed its run
            measured, so students and peers are timed in one process (``speedtrain frontier SWEEP --rebench``).
        teacher: a row for each teacher folder of the jobs (:func:`teacher_row`), timed now.

    Returns:
        The paths :func:`speedtrain.bench.frontier.write_frontier` wrote; None when no job finished.
    """
    from speedtrain.bench.frontier import write_frontier

    sweep_dir = Path(sweep_dir)
    jobs = job_dirs(sweep_dir)
    if not jobs:
        log.warning("Frontier: no finished job (with metrics.json) in %s; nothing written", sweep_dir)
        return None
    rows = [student_row(job) for job in jobs]
    cfg = job_config(jobs[0])
    if rebench:
        rows = [rebench_student(row, job, job_config(job)) if (job / "bundle").is_dir() else row
                for row, job in zip(rows, jobs)]
    by_split: dict[int | None, list[Path]] = {}
    for row, job in zip(rows, jobs):
        by_split.setdefault(row["split"], []).append(job)
    for split, members in by_split.items():  # the teacher and peers of every split the jobs trained on
        found, split_cfg = teachers(members), job_config(members[0])
        splits = job_splits(split_cfg) if peers or (teacher and found) else None
        if len(by_split) > 1:
            log.info("Frontier: split %s (data.split_seed), %d jobs", split, len(members))
        if teacher and found:
            rows += [{**row, "split": split}
                     for row in teacher_rows(members, list(splits["test"]["text"]), bench_options(split_cfg))]
        if peers:
            rows += [{**peer, "seed": None, "split": split} for peer in
                     peer_rows(split_cfg, peers, sweep_dir, splits, next(iter(found), None))]
    batch = max(OmegaConf.select(cfg, "export.bench.batch_sizes", default=[0]) or [0]) or None
    for row in rows:
        if row["kind"] == "student" and row["texts_per_s"] is not None:
            row.setdefault("batch", batch)  # e2e_texts_per_s: the largest benchmark batch
    paths = write_frontier(sweep_dir, rows, batch)
    log.info("Frontier: %s (and .md, .png)", paths["csv"])
    if wandb is None:
        wandb = OmegaConf.select(cfg, "logger.wandb._target_", default=None) is not None
    if wandb:
        log_to_wandb(cfg, sweep_dir, rows, paths["png"])
    return paths


def log_to_wandb(cfg: DictConfig, sweep_dir: Path, rows: list[dict], png: Path) -> None:
    """Log the frontier to a new W&B run (job type ``frontier``) in the sweep's group, its files under
    ``sweep_dir``: offline unless ``WANDB_API_KEY`` is set (or ``logger.wandb.offline`` says)."""
    import wandb

    from speedtrain.bench.frontier import log_frontier
    from speedtrain.loggers import finish_wandb

    node = cfg.logger.wandb
    offline = node.get("offline")
    if offline is None:
        offline = not os.environ.get("WANDB_API_KEY")
    mode = os.environ.get("WANDB_MODE") or ("offline" if offline else "online")
    root = sweep_dir / "wandb"
    env = {"WANDB_DIR": sweep_dir, "WANDB_DATA_DIR": root / "data", "WANDB_CACHE_DIR": root / "cache",
           "WANDB_CONFIG_DIR": root / "config", "WANDB_ARTIFACT_DIR": root / "artifacts", "WANDB_CONSOLE": "off"}
    saved = {var: os.environ.get(var) for var in env}
    finish_wandb()  # the last job's run, if the launcher ran the jobs in this process
    try:
        for var, value in env.items():
            if isinstance(value, Path):
                value.mkdir(parents=True, exist_ok=True)
            os.environ[var] = str(value)
        task = cfg.get("task_name", "train")
        slug = "_".join(sweep_dir.parts[-2:])  # as the jobs' group: <task>-sweep-<date>_<time>
        run = wandb.init(project=node.get("project"), entity=node.get("entity"), group=f"{task}-sweep-{slug}",
                         job_type="frontier", name=f"frontier-{slug}", tags=[task, "frontier"],
                         dir=str(sweep_dir), mode=mode, config={"sweep_dir": str(sweep_dir)})
        try:
            log_frontier(run, rows, png)
        finally:
            run.finish()
            # stop this process's wandb-core service and drop WANDB_SERVICE from the environment: processes started
            # later (DDP ranks, the next command of a notebook or test) would attach to it and share its run ids
            wandb.teardown()
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


class FrontierReport(Callback):
    """Hydra callback: the accuracy–speed frontier of the sweep when a multirun ends (module docstring).

    Args:
        peers: peer names (``tfidf_lr``, ``fasttext``, ``static_lr``); fastText is skipped with a warning when not
            installed, ``static_lr`` when no job names a teacher.
        wandb: log to W&B; None: when the jobs used the W&B logger.
        teacher: a row for the jobs' teacher, timed when the sweep ends.
    """

    def __init__(self, peers: Sequence[str] = PEERS, wandb: bool | None = None, teacher: bool = True) -> None:
        self.peers = [str(p) for p in peers]
        self.wandb = wandb
        self.teacher = teacher

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        with exit_on_user_error():
            frontier_report(config.hydra.sweep.dir, self.peers, self.wandb, teacher=self.teacher)
