"""GPU runs, end to end through ``python train.py``: one GPU, DDP on 2, DeepSpeed ZeRO-2/3 (+ offload) with the
consolidated checkpoint, the bundle and a resume. Skipped by default (markers gpu / multi_gpu); on a GPU machine:

    pytest -m "gpu or multi_gpu" tests/test_gpu.py
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import EXPORT_TINY, REPO, TINY

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
needs_2_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A small random teacher (2 x 64) over the 96 HS chapters with its own WordPiece tokenizer (no download)."""
    from transformers import BertConfig, BertForSequenceClassification

    from speedtrain.builders import build_datamodule
    from speedtrain.config import compose_config
    from speedtrain.data.tokenizer import train_wordpiece

    folder = tmp_path_factory.mktemp("gpu-teacher")
    dm = build_datamodule(compose_config([*TINY, "+experiment=baseline", f"paths.output_dir={folder / 'x'}"]))
    dm.prepare()
    tokenizer = train_wordpiece(list(dm.splits["train"]["text"]), vocab_size=2000, max_length=24)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=64, num_labels=dm.num_labels,
                        id2label=dict(enumerate(dm.label_names)))
    BertForSequenceClassification(config).save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    return folder / "model"


def train(run_dir: Path, teacher: Path, *overrides: str, returncode: int = 0) -> dict | None:
    """``python train.py`` a tiny distillation with export into ``run_dir``; its metrics.json (when it finished)."""
    # the teacher has 2 layers; distill=logits (the online runs) has no intermediate terms to map
    layer_map = [] if "distill=logits" in overrides else ["distill.intermediate.layer_map=[[0,0],[1,2]]"]
    cmd = [sys.executable, str(REPO / "train.py"), *TINY, *EXPORT_TINY, "+experiment=distill",
           f"teacher.path={teacher}", "teacher.max_length=24", *layer_map, f"hydra.run.dir={run_dir}", *overrides]
    done = subprocess.run(cmd, cwd=run_dir.parent, capture_output=True, text=True, timeout=900, env=dict(os.environ))
    assert done.returncode == returncode, done.stdout[-3000:] + done.stderr[-6000:]
    return json.loads((run_dir / "metrics.json").read_text()) if returncode == 0 else None


def check_outputs(run_dir: Path, metrics: dict, world: int) -> None:
    """model/ is an fp32 Hugging Face folder equal to the best checkpoint; the bundle passed its parity checks."""
    from transformers import AutoModelForSequenceClassification

    assert metrics["batch"]["world_size"] == world and metrics["speed"]["data_on_device"] is True
    assert metrics["batch"]["global_batch_size"] == metrics["batch"]["batch_size"] * world
    assert metrics["batch"]["lr"] == pytest.approx(metrics["batch"]["lr_base"] * math.sqrt(world))
    assert 0.0 < metrics["val/acc"] <= 1.0 and "test/acc" in metrics
    model = AutoModelForSequenceClassification.from_pretrained(run_dir / "model")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    best = Path(metrics["best_checkpoint"])
    if best.is_dir():  # DeepSpeed shards: consolidate them here too and compare
        from pytorch_lightning.utilities.deepspeed import (
            convert_zero_checkpoint_to_fp32_state_dict,
        )

        state = convert_zero_checkpoint_to_fp32_state_dict(str(best), str(run_dir / "consolidated.pt"))["state_dict"]
    else:
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
    saved = model.state_dict()
    for key, value in state.items():
        if key.startswith("model."):
            assert torch.equal(saved[key.removeprefix("model.")], value.float().cpu()), key
    manifest = json.loads((run_dir / "bundle" / "speedtrain.json").read_text())
    assert manifest["fast"] in manifest["variants"] and metrics["bundle"]["fast_agreement"] >= 70


@pytest.mark.gpu
@needs_gpu
def test_distill_on_one_gpu_end_to_end_with_export(tmp_path, teacher):
    metrics = train(tmp_path / "run", teacher, "trainer=gpu")
    check_outputs(tmp_path / "run", metrics, world=1)
    assert metrics["speed"]["compile"] == "default" and metrics["speed"]["fused_optimizer"] is True


@pytest.mark.multi_gpu
@needs_2_gpus
def test_ddp_on_two_gpus(tmp_path, teacher):
    metrics = train(tmp_path / "run", teacher, "trainer=ddp", "trainer.devices=2")
    check_outputs(tmp_path / "run", metrics, world=2)


def distill_consolidate_export_resume(tmp_path: Path, teacher: Path, trainer: str, devices: int) -> None:
    """A DeepSpeed distillation (1 epoch), its consolidated checkpoint and bundle; then a resume to 2 epochs."""
    extra = ["distill=logits", "distill.teacher_logits=online"] if trainer.endswith("online") else []
    name = trainer.removesuffix("_online")
    run_dir = tmp_path / "run"
    common = [f"trainer={name}", f"trainer.devices={devices}", *extra]
    first = train(run_dir, teacher, *common, "trainer.max_epochs=1")
    assert (run_dir / "checkpoints" / "last.ckpt").is_dir()  # DeepSpeed's shards
    check_outputs(run_dir, first, world=devices)
    resumed = train(run_dir, teacher, *common, "trainer.max_epochs=2")
    assert resumed["resumed_from"].endswith("last.ckpt") and resumed["global_step"] == 2 * first["global_step"]
    check_outputs(run_dir, resumed, world=devices)


@pytest.mark.multi_gpu
@needs_2_gpus
@pytest.mark.parametrize("trainer", ["deepspeed_stage2", "deepspeed_stage3", "deepspeed_stage3_online",
                                     "deepspeed_stage3_offload"])
def test_deepspeed_distill_consolidates_exports_and_resumes(tmp_path, teacher, trainer):
    distill_consolidate_export_resume(tmp_path, teacher, trainer, devices=2)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("trainer", ["deepspeed_stage2", "deepspeed_stage3_online"])
def test_deepspeed_on_one_gpu(tmp_path, teacher, trainer):
    """ZeRO on a single GPU (world size 1): the same consolidation, bundle and resume where only one GPU is lent."""
    distill_consolidate_export_resume(tmp_path, teacher, trainer, devices=1)


def stop_and_resume(tmp_path: Path, teacher: Path, *overrides: str) -> None:
    """SIGTERM (to rank 0 only) before batch 1 of epoch 1: the run saves after that step and exits 143; resumed,
    it ends with the uninterrupted run's step count (on the GPU not bit for bit: its kernels are not deterministic)."""
    from tests.crash import crash_overrides

    run_dir = tmp_path / "run"
    train(run_dir, teacher, *overrides, *crash_overrides(tmp_path / "marker", batch=1, signals="[SIGTERM]", rank=0),
          returncode=143)
    assert (run_dir / "checkpoints" / "last.ckpt").exists() and not (run_dir / "metrics.json").exists()
    resumed = train(run_dir, teacher, *overrides)
    assert resumed["resumed_from"].endswith("last.ckpt") and resumed["epochs"] == 2
    assert resumed["global_step"] == 2 * 4  # 2 epochs of 4 batches (TINY): none trained twice, none skipped
    check_outputs(run_dir, resumed, world=resumed["batch"]["world_size"])


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("trainer", ["gpu", "deepspeed_stage2"])
def test_stop_signal_mid_epoch_saves_and_resumes_on_one_gpu(tmp_path, teacher, trainer):
    stop_and_resume(tmp_path, teacher, f"trainer={trainer}", "trainer.devices=1")


@pytest.mark.multi_gpu
@needs_2_gpus
def test_stop_signal_to_rank_0_of_ddp_on_two_gpus(tmp_path, teacher):
    stop_and_resume(tmp_path, teacher, "trainer=ddp", "trainer.devices=2")
