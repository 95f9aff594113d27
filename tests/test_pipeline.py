"""End to end on the real embedded data with a tiny model: outputs, metrics, determinism."""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from speedtrain.pipeline import run

EXPECTED_KEYS = {
    "val/acc", "val/f1", "val/loss", "test/acc", "test/f1", "test/loss", "objective", "best_checkpoint",
    "epochs", "global_step", "seed", "params", "data", "timings",
}


def test_tiny_run_writes_checkpoints_and_metrics(cfg_tiny, tmp_path):
    objective = run(cfg_tiny)
    out = tmp_path / "run"
    metrics = json.loads((out / "metrics.json").read_text())
    assert EXPECTED_KEYS <= set(metrics)
    assert objective == metrics["val/acc"] and 0.0 <= objective <= 1.0
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert metrics["best_checkpoint"].startswith(str(out / "checkpoints"))
    assert metrics["global_step"] == 8  # 2 epochs x 4 batches
    assert metrics["data"] == {"train": 4486, "validation": 563, "test": 563, "num_labels": 96, "vocab_size": 600}
    assert metrics["params"]["params_total"] > metrics["params"]["params_non_embedding"] > 0
    assert set(metrics["timings"]) == {"data_s", "data_steps_s", "fit_s", "total_s"}
    assert set(metrics["timings"]["data_steps_s"]) == {"read", "split", "vocabulary", "hash", "tokenize"}
    assert AutoTokenizer.from_pretrained(out / "model").vocab_size == 600
    student = AutoModelForSequenceClassification.from_pretrained(out / "model")
    assert student.config.num_labels == 96 and student.config.id2label[0] == "01"


def test_best_checkpoint_holds_a_loadable_student(cfg_tiny, tmp_path):
    run(cfg_tiny)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    state = torch.load(metrics["best_checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
    assert any(k.startswith("model.bert.encoder.layer.0.") for k in state)


def test_same_seed_same_metrics_other_seed_differs(make_cfg, tmp_path):
    results = []
    for seed in (7, 7, 8):
        cfg = make_cfg("+experiment=baseline", f"seed={seed}", f"paths.output_dir={tmp_path / str(len(results))}")
        run(cfg)
        m = json.loads((tmp_path / str(len(results)) / "metrics.json").read_text())
        results.append((m["val/loss"], m["val/acc"], m["test/loss"], m["test/acc"]))
    assert results[0] == results[1]
    assert results[0] != results[2]


def test_fast_dev_run_evaluates_weights_in_memory(make_cfg, tmp_path):
    run(make_cfg("+experiment=baseline", "debug=fdr"))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["best_checkpoint"] is None and metrics["global_step"] == 1 and "test/acc" in metrics


def test_own_csv_file_end_to_end(make_cfg, tmp_path, product_rows):
    from tests.conftest import write_csv

    train = write_csv(tmp_path / "products.csv", product_rows * 3)  # 180 rows, 3 labels
    run(make_cfg("+experiment=baseline", "data=files", f"data.train={train}", "data.text_column=title",
                 "data.label_column=cat", "tokenizer.vocab_size=100"))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["data"]["num_labels"] == 3 and metrics["data"]["train"] + metrics["data"]["validation"] + \
        metrics["data"]["test"] == 180
    student = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "model")
    assert sorted(student.config.id2label.values()) == ["fruit", "shoes", "tools"]


def test_debug_settings_win_over_the_experiment(make_cfg, tmp_path):
    # +experiment=baseline sets max_epochs=15 and comes after debug in the defaults list; debug=limit still wins
    run(make_cfg("+experiment=baseline", "debug=limit"))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["global_step"] == 5 and metrics["epochs"] == 1
