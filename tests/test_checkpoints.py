"""The best checkpoint: evaluated, consolidated once from DeepSpeed shards, loaded as a CPU student."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pytorch_lightning.utilities import deepspeed
from transformers import BertConfig, BertForSequenceClassification

from speedtrain.checkpoints import best_student, consolidated, evaluate


class ZeroStrategy:
    """Stands in for Lightning's DeepSpeedStrategy (named so for ``speedtrain.checkpoints.is_deepspeed``), no CUDA."""

    def __init__(self, stage: int):
        self.zero_stage_3, self.load_full_weights = stage == 3, False

    def barrier(self):
        pass


ZeroStrategy.__name__ = "DeepSpeedStrategy"


class EvaluatingTrainer:
    """Records which checkpoint validate/test were asked to load, and how."""

    is_global_zero = True

    def __init__(self, stage: int):
        self.strategy, self.loaded = ZeroStrategy(stage), []

    def validate(self, module, datamodule, ckpt_path, verbose):
        self.loaded.append(("validate", ckpt_path, self.strategy.load_full_weights))
        return [{"val/acc": 0.5}]

    def test(self, module, datamodule, ckpt_path, verbose):
        self.loaded.append(("test", ckpt_path, self.strategy.load_full_weights))
        return [{"test/acc": 0.25}]


@pytest.mark.parametrize("stage", [2, 3])
def test_zero3_evaluates_a_consolidated_checkpoint_and_zero2_its_shards(tmp_path, monkeypatch, stage):
    """DeepSpeed's ZeRO-3 evaluation engine cannot load its own shards (seen on an H200, DeepSpeed 0.19.8): the
    best checkpoint is consolidated beside them and loaded as full weights; ZeRO-2 shards load as they are."""
    shards = tmp_path / "checkpoints" / "epoch01-acc0.5000.ckpt"
    shards.mkdir(parents=True)
    converted = []

    def convert(src, dst):
        converted.append((src, dst))
        Path(dst).write_bytes(b"consolidated")

    monkeypatch.setattr(deepspeed, "convert_zero_checkpoint_to_fp32_state_dict", convert)
    trainer = EvaluatingTrainer(stage)
    metrics = evaluate(trainer, None, None, str(shards), test=True)
    assert metrics == {"val/acc": 0.5, "test/acc": 0.25}
    if stage == 3:
        target = str(tmp_path / "checkpoints" / "epoch01-acc0.5000-fp32.ckpt")
        assert converted == [(str(shards), target)]
        assert trainer.loaded == [("validate", target, True), ("test", target, True)]
    else:
        assert converted == [] and trainer.loaded == [("validate", str(shards), False), ("test", str(shards), False)]
    assert trainer.strategy.load_full_weights is False  # a later fit resumes from shards again


class CheckpointCallback:
    def __init__(self, best_model_path: str):
        self.best_model_path = best_model_path


def tiny_bert() -> BertForSequenceClassification:
    config = BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                        max_position_embeddings=16, num_labels=3)
    return BertForSequenceClassification(config)


def test_zero_shards_are_consolidated_once_for_evaluation_and_the_student(tmp_path, monkeypatch):
    """Evaluation (ZeRO-3) and the exported student read the same consolidated file: one conversion, and the
    student gets the checkpoint's weights, not the ones in memory."""
    trained = tiny_bert()
    shards = tmp_path / "checkpoints" / "best.ckpt"
    shards.mkdir(parents=True)
    converted = []

    def convert(src, dst):
        converted.append(src)
        torch.save({"state_dict": {f"model.{k}": v for k, v in trained.state_dict().items()}, "epoch": 3}, dst)

    monkeypatch.setattr(deepspeed, "convert_zero_checkpoint_to_fp32_state_dict", convert)
    trainer = EvaluatingTrainer(3)
    trainer.checkpoint_callback = CheckpointCallback(str(shards))
    evaluate(trainer, None, None, str(shards), test=False)
    in_memory = tiny_bert()  # other weights: the student must come from the checkpoint
    student = best_student(in_memory, trainer)
    assert converted == [str(shards)] and consolidated(shards) == shards.with_name("best-fp32.ckpt")
    assert converted == [str(shards)]  # still once: the file is newer than the shards
    for name, value in trained.state_dict().items():
        assert torch.equal(student.state_dict()[name], value), name
    assert not torch.equal(student.state_dict()["classifier.weight"], in_memory.state_dict()["classifier.weight"])


def test_best_student_of_a_checkpoint_file_and_of_no_checkpoint(tmp_path):
    trained, in_memory = tiny_bert(), tiny_bert()
    path = tmp_path / "best.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in trained.state_dict().items()}}, path)

    class Trainer:
        checkpoint_callback = CheckpointCallback(str(path))

    student = best_student(in_memory, Trainer())
    assert torch.equal(student.classifier.weight, trained.classifier.weight) and not student.training
    Trainer.checkpoint_callback = None  # fast_dev_run: the weights in memory, copied
    copy = best_student(in_memory, Trainer())
    assert copy is not in_memory and torch.equal(copy.classifier.weight, in_memory.classifier.weight)
