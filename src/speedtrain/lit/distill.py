"""DistillModule: the student learns from the teacher's (cached) logits and the labels.

Logs everything :class:`~speedtrain.lit.classifier.ClassifierModule` logs, plus:

=================  ======================================================
``train/kd_loss``  T^2 * KL(teacher || student) of the batch, before alpha
``train/ce_loss``  cross-entropy with the labels, before (1 - alpha)
=================  ======================================================

The batch carries ``teacher_logits`` (B, C), computed once by :mod:`speedtrain.distill.logit_cache`, so a
step runs only the student; the teacher is never part of this module, its optimizer or its checkpoints.
"""

from __future__ import annotations

import torch

from speedtrain.distill.losses import KDLoss
from speedtrain.lit.classifier import Batch, ClassifierModule


class DistillModule(ClassifierModule):
    """:class:`ClassifierModule` whose training loss is ``loss`` (a :class:`KDLoss`) against the teacher's logits.

    Args:
        loss: the distillation loss; the other arguments are :class:`ClassifierModule`'s.
    """

    def __init__(self, *args, loss: KDLoss, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.kd = loss

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        logits = self(batch["input_ids"], batch["attention_mask"])  # (B, C)
        out = self.kd(logits, batch["teacher_logits"], batch["labels"])
        self.train_acc(logits, batch["labels"])
        self.log("train/loss", out.loss, prog_bar=True)
        self.log_dict({"train/kd_loss": out.kd_loss, "train/ce_loss": out.ce_loss})
        self.log_train_step_stats(batch)
        return out.loss
