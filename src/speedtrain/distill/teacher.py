"""Bring a fine-tuned teacher to a distillation run: its logits on every split, its accuracy, its size."""

from __future__ import annotations

import numpy as np
from omegaconf import DictConfig

from speedtrain.data.datamodule import TextDataModule
from speedtrain.distill.logit_cache import cached_teacher_logits
from speedtrain.errors import UserError
from speedtrain.models.teacher import load_classifier, load_tokenizer


def attach_teacher(teacher_cfg: DictConfig, datamodule: TextDataModule, cache_dir: str) -> dict:
    """Put the teacher's train logits into ``datamodule`` (cached) and return the teacher's metrics.

    Returns:
        ``teacher/val_acc``, ``teacher/test_acc``, ``teacher/params`` and ``teacher/logits_from_cache``.
    """
    path = teacher_cfg.get("path")
    if not path:
        raise UserError("distillation needs a fine-tuned teacher: set teacher.path=<folder>; "
                        "`python train.py +experiment=teacher` writes one to <its run folder>/model")
    teacher = load_classifier(path, num_labels=datamodule.num_labels, fine_tuned=True)
    names = [teacher.config.id2label[i] for i in range(teacher.config.num_labels)]
    if names != datamodule.label_names:
        raise UserError(f"the teacher at teacher.path={path!r} was trained on other labels ({names[:5]}...) than "
                        f"the data's ({datamodule.label_names[:5]}...); fine-tune a teacher on this data")
    tokenizer = load_tokenizer(path)
    metrics: dict = {"teacher/params": sum(p.numel() for p in teacher.parameters())}
    for split in ("train", "validation", "test"):
        ds = datamodule.splits[split]
        logits, cached = cached_teacher_logits(path, teacher, tokenizer, ds["text"], teacher_cfg.max_length, cache_dir)
        if split == "train":
            datamodule.attach_teacher_logits(logits)
            metrics["teacher/logits_from_cache"] = cached
        else:
            key = "val" if split == "validation" else split
            metrics[f"teacher/{key}_acc"] = float(np.mean(logits.argmax(1) == np.asarray(ds["label"])))
    return metrics


def student_vs_teacher(student: dict, teacher: dict) -> dict:
    """``distill/teacher_share``: student test accuracy / teacher's; ``distill/size_ratio``: teacher / student params."""
    return {
        "distill/teacher_share": student.get("test/acc", 0.0) / max(teacher["teacher/test_acc"], 1e-9),
        "distill/size_ratio": teacher["teacher/params"] / student["params"]["params_total"],
    }
