"""Distillation losses as small ``nn.Module``s.

``KDLoss`` is Hinton et al.'s soft-target loss mixed with the label loss:

    loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)

The T^2 factor keeps the soft-target gradients on the scale of the label term when T changes.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from speedtrain.errors import UserError


class KDLossOutput(NamedTuple):
    loss: torch.Tensor  # () the weighted sum that is back-propagated
    kd_loss: torch.Tensor  # () T^2 * KL(teacher || student), before alpha
    ce_loss: torch.Tensor  # () cross-entropy with the labels, before (1 - alpha)


class KDLoss(nn.Module):
    """Soft-target KL to the teacher plus cross-entropy to the labels.

    Args:
        alpha: weight of the soft-target term in [0, 1]; 0 is plain cross-entropy, 1 ignores the labels.
        temperature: T > 0; softens both distributions (T = 1: the model's own probabilities).
    """

    def __init__(self, alpha: float = 0.5, temperature: float = 2.0) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise UserError(f"distill.alpha={alpha} must be in [0, 1] (0: labels only, 1: teacher only)")
        if not temperature > 0:
            raise UserError(f"distill.temperature={temperature} must be positive, e.g. distill.temperature=2")
        self.alpha, self.temperature = alpha, temperature

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor
    ) -> KDLossOutput:
        """Args: student_logits (B, C), teacher_logits (B, C), labels (B,) class ids.

        Returns:
            :class:`KDLossOutput` of scalars; the KL is averaged over the batch ("batchmean").
        """
        s = student_logits.float()
        t = teacher_logits.float().detach()
        temp = self.temperature
        kd = F.kl_div(F.log_softmax(s / temp, -1), F.log_softmax(t / temp, -1), log_target=True,
                      reduction="batchmean") * temp**2
        ce = F.cross_entropy(s, labels)
        return KDLossOutput(self.alpha * kd + (1.0 - self.alpha) * ce, kd, ce)
