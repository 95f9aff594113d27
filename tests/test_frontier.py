"""The FrontierReport callback on a fake sweep: students from the job folders, peers on the jobs' own split."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
from hydra.utils import instantiate
from omegaconf import OmegaConf

from speedtrain.config import compose_config, config_dir
from speedtrain import frontier
from speedtrain.frontier import FrontierReport, job_config, job_splits, peer_rows, student_row
from tests.conftest import EXPORT_TINY, TINY, write_csv


def _job(sweep: Path, num: int, cfg, model: str, metrics: dict | None) -> Path:
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, job / ".hydra" / "config.yaml")
    OmegaConf.save({"hydra": {"runtime": {"choices": {"model": model}}}}, job / ".hydra" / "hydra.yaml")
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    return job


def _metrics(seed: int, acc: float, bundle: dict, teacher: Path | None = None) -> dict:
    distilled = {"teacher/dir": str(teacher), "teacher/test_acc": 0.95, "teacher/source": "minilm"} if teacher else {}
    return {"seed": seed, "test/acc": acc, "val/acc": acc, "params": {"params_total": 1_070_000},
            "bundle": {"fast": "onnx_int8", "fast_accuracy": 100 * acc, **bundle}, **distilled}


def test_frontier_report_writes_students_teacher_and_peers(tmp_path, product_rows, tiny_teacher_dir):
    data = write_csv(tmp_path / "products.csv", product_rows)
    cfg = compose_config([*TINY, *EXPORT_TINY, "+experiment=frontier", "model=bert_tiny", "logger=wandb", "data=files",
                          f"data.train={data}", "data.text_column=title", "data.label_column=cat",
                          f"paths.output_dir={tmp_path / 'unused'}"])
    sweep = tmp_path / "multirun" / "2026-12-01" / "10-00-00"
    _job(sweep, 0, cfg, "bert_tiny", _metrics(1, 0.91, {"e2e_texts_per_s": 2300.0, "e2e_p50_ms": 0.7,
                                                        "fast_texts_per_s": {"1": 2000.0, "8": 3600.0}},
                                              tiny_teacher_dir))
    _job(sweep, 1, cfg, "bert_mini", _metrics(1, 0.93, {"fast_texts_per_s": {"1": 900.0, "8": 1500.0},
                                                        "fast_p50_ms": 1.2}, tiny_teacher_dir))  # before the e2e keys
    _job(sweep, 2, cfg, "static", None)  # failed: no metrics.json

    shipped = OmegaConf.load(config_dir() / "experiment" / "frontier.yaml").hydra.callbacks.frontier
    callback = instantiate(shipped)  # as Hydra builds it from +experiment=frontier
    assert isinstance(callback, FrontierReport) and callback.peers == ["tfidf_lr", "fasttext", "static_lr"]
    assert callback.teacher is True
    callback.on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))

    table = pd.read_csv(sweep / "frontier.csv").set_index("model")
    assert sorted(table.index) == ["bert_mini", "bert_tiny", "fasttext", "minilm", "static_lr", "tfidf_lr"]
    assert table.loc["bert_tiny", "texts_per_s"] == 2300.0 and table.loc["bert_tiny", "speed"] == "e2e"
    assert table.loc["bert_mini", "texts_per_s"] == 1500.0 and table.loc["bert_mini", "speed"] == "model"
    assert table.loc["bert_tiny", "test_acc"] == 91.0 and table.loc["bert_tiny", "params"] == 1_070_000
    peers = ["fasttext", "tfidf_lr", "static_lr"]
    assert (table.loc[peers, "kind"] == "peer").all() and (table.loc[peers, "texts_per_s"] > 0).all()
    assert (table.loc[["fasttext", "tfidf_lr"], "test_acc"] > 50).all()  # 3 classes told apart by their nouns
    assert table.loc["static_lr", "test_acc"] >= 0 and '"pieces": 30522' in table.loc["static_lr", "choice"]
    teacher = table.loc["minilm"]  # one row for the teacher both jobs name: 0.95 of its metrics, timed now
    assert teacher["kind"] == "teacher" and teacher["test_acc"] == 95.0 and teacher["seed"] == 42
    assert teacher["texts_per_s"] > 0 and teacher["p50_ms"] > 0 and teacher["batch"] == 8
    assert teacher["teacher_dir"] == str(tiny_teacher_dir) and teacher["params"] > 976_000  # 30,522 x 32 embeddings
    md = (sweep / "frontier.md").read_text()
    assert "† model time only" in md and md.count(" †") == 2  # bert_mini's texts/s and p50
    assert table.loc["bert_mini", "batch"] == 8 and table.loc["bert_tiny", "batch"] == 8
    assert "texts/s b8" in md and "× fastText texts/s" in md and "| tfidf_lr | peer |" in md.replace("**", "")
    plain = md.replace("**", "")
    assert "| minilm | teacher | – | 95.00 |" in plain and "| static_lr | peer |" in plain
    assert (sweep / "frontier.png").stat().st_size > 10_000
    # W&B: one offline run with the table, all of it under the sweep folder; no fastText file left behind
    (run_file,) = sweep.glob("wandb/offline-run-*/run-*.wandb")
    assert run_file.stat().st_size > 0
    # its wandb-core service is gone: processes started later would otherwise attach to it (and share run ids)
    assert "WANDB_SERVICE" not in os.environ
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "1", "2", "frontier.csv", "frontier.md", "frontier.png",
                                                         "wandb"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["multirun", "products.csv"]


def test_a_sweep_over_splits_gets_the_teacher_and_peers_of_each_split(tmp_path, product_rows, tiny_teacher_dir,
                                                                     monkeypatch):
    """data.split_seed=1,2: every split has its own peers and teacher row; the table averages each over the splits."""
    data = write_csv(tmp_path / "products.csv", product_rows)
    sweep = tmp_path / "sweep"
    for num, (split, acc) in enumerate([(1, 0.90), (1, 0.92), (2, 0.80)]):
        cfg = compose_config([*TINY, *EXPORT_TINY, "+experiment=frontier", "model=bert_tiny", "data=files",
                              f"data.train={data}", "data.text_column=title", "data.label_column=cat",
                              f"data.split_seed={split}", f"paths.output_dir={tmp_path / 'unused'}"])
        _job(sweep, num, cfg, "static", _metrics(num, acc, {"e2e_texts_per_s": 9000.0, "e2e_p50_ms": 0.1},
                                                  tiny_teacher_dir))
    one_split = peer_rows(job_config(sweep / "2"), ["tfidf_lr"], tmp_path)[0]["test_acc"]  # split 2 alone
    drawn = []
    monkeypatch.setattr(frontier, "job_splits", lambda cfg: drawn.append(cfg.data.split_seed) or job_splits(cfg))
    FrontierReport(peers=["tfidf_lr"]).on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))

    table = pd.read_csv(sweep / "frontier.csv")
    assert sorted(zip(table["model"], table["split"])) == [("minilm", 1), ("minilm", 2), ("static", 1),
                                                            ("static", 1), ("static", 2), ("tfidf_lr", 1),
                                                            ("tfidf_lr", 2)]
    assert drawn == [1, 2]  # each split drawn once, for its peers and its teacher's test texts
    peer = table[table["model"] == "tfidf_lr"].set_index("split")["test_acc"]
    assert peer[2] == one_split  # fitted on split 2's own train texts, scored on its test texts
    md = (sweep / "frontier.md").read_text().replace("**", "")
    assert "mean ± std over the runs (seeds × splits" in md and "| model | kind | seeds | splits |" in md
    assert f"| tfidf_lr | peer | – | 2 | {peer.mean():.2f}" in md
    assert "| static | student | 3 | 2 | 87.33 ± 6.43 |" in md  # 90, 92 (split 1) and 80 (split 2)
    assert "| minilm | teacher | – | 2 | 95.00 |" in md  # one row per split, one teacher in the table
    per_split = md.split("Per split (`data.split_seed`)")[1]  # the paired comparison: the same split's peer
    head, *lines = [line.strip("|").split(" | ") for line in per_split.splitlines() if line.startswith("| ")]
    cells = {line[0].strip(): dict(zip([h.strip() for h in head], [c.strip() for c in line])) for line in lines}
    assert set(cells) == {"1", "2"} and set(cells["1"]) == {"split", "static", "tfidf_lr", "minilm",
                                                           "static − TF-IDF+LR"}
    for split, student in ((1, 91.0), (2, 80.0)):
        assert cells[str(split)]["static"] == f"{student:.2f}" and cells[str(split)]["minilm"] == "95.00"
        assert cells[str(split)]["tfidf_lr"] == f"{peer[split]:.2f}"
        assert cells[str(split)]["static − TF-IDF+LR"] == f"{student - peer[split]:+.2f}"


def test_student_row_without_a_bundle(tmp_path):
    job = tmp_path / "3"
    job.mkdir()
    (job / "metrics.json").write_text(json.dumps({"seed": 7, "test/acc": 0.5, "params": {"params_total": 10}}))
    row = student_row(job)
    assert row["model"] == "3" and row["seed"] == 7 and row["test_acc"] == 50.0
    assert row["texts_per_s"] is None and row["p50_ms"] is None and row["speed"] is None


def test_frontier_experiment(tmp_path):
    """+experiment=frontier: the distill recipe (static: logits only), one teacher seed, two ONNX variants, three
    families swept."""
    cfg = compose_config(["+experiment=frontier", "seed=3", f"paths.output_dir={tmp_path}"])
    assert cfg.task_name == "frontier" and cfg.module._target_ == "speedtrain.lit.distill.DistillModule"
    assert "intermediate" in cfg.distill and cfg.distill.teacher_logits == "cache"  # dropped for static at run time
    assert cfg.teacher.seed == 42 and cfg.teacher.source == "minilm"  # one teacher whatever the student's seed
    assert list(cfg.export.variants) == ["onnx", "onnx_int8"] and cfg.export.teacher is False
    assert cfg.model.family == "static" and cfg.trainer.max_epochs == 5  # as +experiment=distill
    assert cfg.data.batch_size == 128 and cfg.trainer.min_steps == 1500  # the static family's recipe
    hydra = OmegaConf.load(config_dir() / "experiment" / "frontier.yaml").hydra
    assert hydra.sweeper.params.model == "static,static_conv,bert_tiny"
    mini = compose_config(["+experiment=frontier", "model=bert_mini", f"paths.output_dir={tmp_path}"])
    assert mini.model.hidden_size == 256  # a swept model= beats the experiment's default


def test_speedtrain_frontier_times_the_bundles_again(tmp_path, tiny_run, monkeypatch, capsys):
    """`speedtrain frontier SWEEP --rebench`: each job's bundle timed again now, beside the peers, in one process."""
    import shutil

    import speedtrain.bench.latency as latency
    from speedtrain.cli import main

    sweep = tmp_path / "sweep"
    shutil.copytree(tiny_run, sweep / "0", ignore=shutil.ignore_patterns("checkpoints", "wandb", "csv"))
    real, calls = latency.benchmark_end_to_end, []

    def counted(*args, **kwargs):
        calls.append(real(*args, **kwargs))
        return calls[-1]

    monkeypatch.setattr(latency, "benchmark_end_to_end", counted)
    assert main(["frontier", str(sweep), "--rebench", "--peers", "", "--no-wandb"]) == 0
    assert len(calls) == 1 and "| bert_tiny | student |" in capsys.readouterr().out.replace("**", "")
    row = pd.read_csv(sweep / "frontier.csv").iloc[0]
    assert row["texts_per_s"] == calls[0]["throughput"]["8"] and row["speed"] == "e2e"  # EXPORT_TINY: batches 1, 8
    assert row["p50_ms"] == calls[0]["latency"]["p50_ms"]
    assert main(["frontier", str(tmp_path / "empty")]) == 2
    assert "holds no finished job" in capsys.readouterr().err
