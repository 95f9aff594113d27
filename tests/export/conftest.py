"""A tiny trained run with the export callback on (every variant, the tiny teacher benchmarked): built once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import EXPORT_TINY, REPO, TINY

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
