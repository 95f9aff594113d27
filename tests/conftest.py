"""Fixtures that compose the real conf/ and shrink it: tiny model, few batches, CPU, no logger, tmp folders."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import DictConfig

from speedtrain.config import compose_config

REPO = Path(__file__).resolve().parents[1]

# A run small enough for a few seconds on 2 cores, on the real embedded data.
TINY_RUN = [
    "logger=none",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "export.enabled=false",  # the export tests turn it on (EXPORT_TINY)
]
TINY_STUDENT = [
    "model.num_hidden_layers=1",
    "model.hidden_size=32",
    "model.num_attention_heads=2",
    "model.intermediate_size=64",
    "tokenizer.vocab_size=600",
]
TINY = [*TINY_RUN, *TINY_STUDENT]
# the export callback with a benchmark of a few hundred milliseconds
EXPORT_TINY = [
    "export.enabled=true",
    "export.bench.batch_sizes=[1,8]",
    "export.bench.warmup=2",
    "export.bench.min_reps=20",
    "export.bench.min_time_s=0.05",
    "export.bench.throughput_time_s=0.02",
]
# +experiment=distill (distill=logits_hidden) with a layer map that the 1-layer tiny teacher has
DISTILL_TINY = ["+experiment=distill", "distill.intermediate.layer_map=[[0,0],[1,1]]"]


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One speedtrain cache for the whole session (tokenizers and token ids are reused), never ~/.cache."""
    cache = tmp_path_factory.mktemp("speedtrain-cache")
    os.environ["SPEEDTRAIN_CACHE"] = str(cache)
    os.environ["HF_DATASETS_CACHE"] = str(cache / "hf-datasets")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["WANDB_MODE"] = "offline"
    return cache


@pytest.fixture
def make_cfg(tmp_path: Path):
    """``make_cfg(*overrides)`` -> the real config, shrunk by TINY, writing under ``tmp_path/run``.

    ``tiny_student=False`` keeps the model group's own sizes (for a pretrained model).
    """

    def make(*overrides: str, tiny_student: bool = True) -> DictConfig:
        tiny = TINY if tiny_student else TINY_RUN
        return compose_config([*tiny, f"paths.output_dir={tmp_path / 'run'}", *overrides])

    return make


@pytest.fixture
def cfg_tiny(make_cfg) -> DictConfig:
    return make_cfg("+experiment=baseline")


def write_csv(path: Path, rows: list[tuple[str, str]], header: tuple[str, str] = ("title", "cat")) -> Path:
    """A small CSV with a text and a label column."""
    import csv

    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def product_rows() -> list[tuple[str, str]]:
    """60 short product titles in 3 categories (made up here for the tests)."""
    kinds = {
        "fruit": ["apple", "banana", "cherry", "mango", "pear"],
        "tools": ["hammer", "wrench", "drill", "saw", "chisel"],
        "shoes": ["sneaker", "boot", "sandal", "loafer", "slipper"],
    }
    adjectives = ["fresh", "red", "large", "small"]
    return [(f"{a} {w}", label) for label, words in kinds.items() for w in words for a in adjectives]


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 1-layer BERT (2 labels) with MiniLM's tokenizer, saved as a Hugging Face folder."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from speedtrain.models.teacher import load_tokenizer

    folder = tmp_path_factory.mktemp("tiny-teacher")
    tokenizer = load_tokenizer("minilm")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def fine_tuned_teacher(tiny_teacher_dir, tmp_path_factory):
    """The tiny teacher fine-tuned on HS chapters by +experiment=teacher: its <run>/model folder."""
    from speedtrain.pipeline import run

    out = tmp_path_factory.mktemp("teacher-run")
    run(compose_config([*TINY_RUN, "+experiment=teacher", f"teacher.source={tiny_teacher_dir}",
                        "teacher.max_length=24", "data.eval_batch_size=64", f"paths.output_dir={out}"]))
    return out / "model"


# The export callback in a tiny run: its bundle serves the export, serve and notebook tests.
# trained enough to tell classes apart (an untrained model's near-equal logits make agreement meaningless)
TINY_EXPORT_RUN = [*TINY, *EXPORT_TINY, "+experiment=baseline", "export.variants=[onnx,onnx_int8,onnx_fp16,pt2]",
                   "data.label=section", "trainer.max_epochs=4", "trainer.limit_train_batches=25",
                   "module.optimizer.lr=1e-2"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_teacher_dir: Path) -> Path:
    """``python train.py`` as a user runs it (a real Hydra run folder), with the bundle at ``<run>/bundle``."""
    run_dir = tmp_path_factory.mktemp("export-run") / "run"
    done = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *TINY_EXPORT_RUN, f"teacher.source={tiny_teacher_dir}",
         "teacher.max_length=24", f"hydra.run.dir={run_dir}"],
        cwd=run_dir.parent, capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert done.returncode == 0, done.stderr[-4000:]
    return run_dir


@pytest.fixture(scope="session")
def tiny_bundle(tiny_run: Path) -> Path:
    return tiny_run / "bundle"
