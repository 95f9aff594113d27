"""The frontier writer: csv per seed, markdown and plot per model, the Pareto set, the W&B table and image."""

from __future__ import annotations

import pandas as pd
import pytest

from speedtrain.bench.frontier import aggregate, log_frontier, markdown_table, pareto_front, write_frontier


def _row(model, kind, acc, speed, seed=None, params=None):
    return {"model": model, "kind": kind, "seed": seed, "test_acc": acc, "texts_per_s": speed, "p50_ms": 0.5,
            "params": params}


# means: bert_tiny (2,100, 93.0) is between TF-IDF (1,500, 93.25) and fastText (100,000, 91.0): on the frontier;
# static (50,000, 85) loses to fastText, bert_mini (800, 93.0) to TF-IDF
ROWS = [
    _row("bert_tiny", "student", 92.0, 2000.0, seed=1, params=1_070_000),
    _row("bert_tiny", "student", 94.0, 2200.0, seed=2, params=1_070_000),
    _row("bert_mini", "student", 93.0, 800.0, seed=1, params=4_500_000),
    _row("static", "student", 85.0, 50000.0, seed=1, params=600_000),
    _row("tfidf_lr", "peer", 93.25, 1500.0, params=150_000) | {"throughput": {"1": 500.0, "256": 1500.0}},
    _row("fasttext", "peer", 91.0, 100000.0, params=10_000_000),
]


def test_pareto_front():
    points = [(1.0, 90.0), (2.0, 80.0), (0.5, 85.0), (2.0, 80.0), (3.0, 70.0), (3.0, 60.0)]
    # (0.5, 85) loses to (1, 90); the two equal (2, 80) do not dominate each other; (3, 60) loses to (3, 70)
    assert pareto_front(points) == [True, True, False, True, True, False]


def test_aggregate_means_and_std_over_seeds():
    tiny = next(e for e in aggregate(ROWS) if e["model"] == "bert_tiny")
    assert tiny["n"] == 2 and tiny["acc"] == 93.0 and tiny["texts_per_s"] == 2100.0
    assert tiny["acc_std"] == pytest.approx(1.41421, abs=1e-4) and tiny["params"] == 1_070_000
    assert next(e for e in aggregate(ROWS) if e["model"] == "static")["acc_std"] == 0.0


def test_write_frontier(tmp_path):
    paths = write_frontier(tmp_path, ROWS, batch=256)
    assert set(paths) == {"csv", "md", "png"} and paths["png"].stat().st_size > 10_000

    csv = pd.read_csv(paths["csv"])
    assert len(csv) == 6 and list(csv.columns[:7]) == ["model", "kind", "seed", "test_acc", "texts_per_s", "p50_ms",
                                                        "params"]
    assert list(csv["texts_per_s"]) == sorted(csv["texts_per_s"], reverse=True)  # fastest first
    assert sorted(csv.loc[csv["model"] == "bert_tiny", "seed"]) == [1, 2]

    lines = [line for line in paths["md"].read_text().splitlines() if line.startswith("| ")]
    assert "texts/s b256" in lines[0] and "× fastText texts/s" in lines[0] and "Δ acc vs TF-IDF+LR" in lines[0]
    body = {line.split(" | ")[0][2:].strip("*"): line for line in lines[1:]}
    assert list(body) == ["fasttext", "static", "bert_tiny", "tfidf_lr", "bert_mini"]  # by texts/s
    on_front = {name for name, line in body.items() if line.startswith("| **")}
    assert on_front == {"fasttext", "bert_tiny", "tfidf_lr"}
    assert "93.00 ± 1.41" in body["bert_tiny"] and "2,100 ± 141" in body["bert_tiny"]
    assert "| 1.00× | -2.25 |" in body["fasttext"] and "| 0.021× | -0.25 |" in body["bert_tiny"]
    assert "| 1.07M |" in body["bert_tiny"] and body["tfidf_lr"].endswith("| +0.00 |")


def test_table_without_peers_has_no_comparison_columns():
    students = [r for r in ROWS if r["kind"] == "student"]
    header = next(line for line in markdown_table(students).splitlines() if line.startswith("| model"))
    assert "fastText" not in header and "TF-IDF" not in header


def test_log_frontier_logs_tables_and_the_plot(tmp_path):
    import wandb

    class Run:
        logged = {}

        def log(self, data):
            self.logged.update(data)

    paths = write_frontier(tmp_path, ROWS)
    run = Run()
    log_frontier(run, ROWS, paths["png"])
    assert isinstance(run.logged["frontier/runs"], wandb.Table) and len(run.logged["frontier/runs"].data) == 6
    assert isinstance(run.logged["frontier/models"], wandb.Table) and len(run.logged["frontier/models"].data) == 5
    assert isinstance(run.logged["frontier/plot"], wandb.Image)
    log_frontier(None, ROWS)  # no run: nothing to do


def test_the_teacher_is_a_row_of_its_own_kind(tmp_path):
    teacher = _row("minilm", "teacher", 97.0, 300.0, seed=42, params=22_700_000)
    paths = write_frontier(tmp_path, [*ROWS, teacher], batch=256)
    body = {line.split(" | ")[0][2:].strip("*"): line for line in paths["md"].read_text().splitlines()
            if line.startswith("| ")}
    assert body["minilm"].startswith("| **minilm** | teacher | – | 97.00 |")  # the most accurate: on the frontier
    assert "| 22.70M | 0.003× | +3.75 |" in body["minilm"]
    assert pd.read_csv(paths["csv"]).set_index("model").loc["minilm", "kind"] == "teacher"
    assert paths["png"].stat().st_size > 10_000
