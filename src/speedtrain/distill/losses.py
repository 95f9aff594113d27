"""Distillation losses as small ``nn.Module``s.

``KDLoss`` is Hinton et al.'s soft-target loss mixed with the label loss:

    loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)

The T^2 factor keeps the soft-target gradients on the scale of the label term when T changes.

``IntermediateLoss`` adds TinyBERT's intermediate terms (Jiao et al. 2020) for a teacher run online:

    hidden = sum over (s, t) in layer_map of MSE(W_s h_s, h_t)       (a learned projection per mapped layer)
    attention = sum over (s, t) in layer_map, s, t > 0 of KL(mean-head attn_t || mean-head attn_s)

What the terms compare depends on whether the student reads the teacher's tokens:

* shared tokenizer (the student uses the teacher's vocabulary, e.g. ``tokenizer=pretrained``): position i is the
  same token for both, so hidden states are compared token by token over the real (unpadded) tokens, and the
  attention rows of every real query token are compared. Heads are averaged first, as student and teacher
  usually have different head counts (TinyBERT needs equal counts; the mean keeps the term defined).
* different tokenizers (the default small-vocabulary student): positions do not line up, so only
  sequence-level states are compared: the masked mean over tokens of each mapped layer. Attention maps have
  no common positions: the attention term requires a shared tokenizer and says so.
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
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
        weights: torch.Tensor | None = None,
    ) -> KDLossOutput:
        """Args: student_logits (B, C), teacher_logits (B, C), labels (B,) class ids, and optionally a weight per
        row (B,) (``distill.unlabeled_weight``): the terms are then weighted means over the batch.

        Returns:
            :class:`KDLossOutput` of scalars; the KL is averaged over the batch ("batchmean").
        """
        s = student_logits.float()
        t = teacher_logits.float().detach()
        temp = self.temperature
        if weights is not None:
            w = weights.float() / weights.float().sum().clamp(min=1e-12)
            kl = F.kl_div(F.log_softmax(s / temp, -1), F.log_softmax(t / temp, -1), log_target=True,
                          reduction="none").sum(-1)
            kd = (kl * w).sum() * temp**2
            ce = (F.cross_entropy(s, labels, reduction="none") * w).sum()
            return KDLossOutput(self.alpha * kd + (1.0 - self.alpha) * ce, kd, ce)
        kd = F.kl_div(F.log_softmax(s / temp, -1), F.log_softmax(t / temp, -1), log_target=True,
                      reduction="batchmean") * temp**2
        ce = F.cross_entropy(s, labels)
        return KDLossOutput(self.alpha * kd + (1.0 - self.alpha) * ce, kd, ce)


class IntermediateOutput(NamedTuple):
    hidden_loss: torch.Tensor  # () sum over mapped layers of the MSE after projection
    attention_loss: torch.Tensor  # () sum over mapped layers of the attention KL (0 when its weight is 0)


class IntermediateLoss(nn.Module):
    """Hidden-state MSE through learned projections and attention-distribution KL (see the module docstring).

    Args:
        student_width, teacher_width: hidden sizes (the DistillModule fills them in from the models).
        layer_map: ``[student layer, teacher layer]`` pairs, counting the embedding output as layer 0
            (``hidden_states`` index), e.g. ``[[0, 0], [1, 3], [2, 6]]`` for a 2-layer student and a 6-layer teacher.
        student_layers, teacher_layers: the models' layer counts, to check the map (None: unchecked).
        shared_tokens: the student reads the teacher's tokens (token-level terms) or not (sequence-level).
        hidden_weight, attention_weight: weights of the two terms; attention needs ``shared_tokens``.
    """

    def __init__(
        self, student_width: int, teacher_width: int, layer_map: list[list[int]], shared_tokens: bool,
        hidden_weight: float = 1.0, attention_weight: float = 0.0, student_layers: int | None = None,
        teacher_layers: int | None = None,
    ) -> None:
        super().__init__()
        if attention_weight > 0 and not shared_tokens:
            raise UserError(f"distill.intermediate.attention_weight={attention_weight} compares attention maps "
                            "position by position, which needs the student to read the teacher's tokens: use "
                            "the teacher's tokenizer for the student (tokenizer=pretrained "
                            "tokenizer.pretrained=<teacher source>) or set distill.intermediate.attention_weight=0")
        if hidden_weight < 0 or attention_weight < 0:
            raise UserError("distill.intermediate weights must be >= 0")
        try:
            self.layer_map = {int(s): int(t) for s, t in layer_map}
        except (TypeError, ValueError):
            raise UserError(f"distill.intermediate.layer_map={layer_map!r} must be [student layer, teacher layer] "
                            "pairs, e.g. [[0,0],[1,3],[2,6]]") from None
        for s, t in self.layer_map.items():
            if s < 0 or t < 0 or (student_layers is not None and s > student_layers) or (
                    teacher_layers is not None and t > teacher_layers):
                raise UserError(f"distill.intermediate.layer_map pair [{s}, {t}] is out of range: the student has "
                                f"layers 0..{student_layers} and the teacher 0..{teacher_layers} (0: embeddings)")
        self.shared_tokens = shared_tokens
        self.hidden_weight, self.attention_weight = hidden_weight, attention_weight
        self.proj = nn.ModuleDict({str(s): nn.Linear(student_width, teacher_width) for s in self.layer_map})

    def forward(
        self,
        student_hidden: tuple[torch.Tensor, ...],
        student_mask: torch.Tensor,
        teacher_hidden: tuple[torch.Tensor, ...] | None = None,
        teacher_mask: torch.Tensor | None = None,
        student_attentions: tuple[torch.Tensor, ...] | None = None,
        teacher_attentions: tuple[torch.Tensor, ...] | None = None,
        teacher_pooled: torch.Tensor | None = None,
    ) -> IntermediateOutput:
        """Args:
            student_hidden: L_s + 1 tensors (B, T_s, H_s) (``output_hidden_states``: embeddings first).
            student_mask: (B, T_s), 1 on real tokens.
            teacher_hidden, teacher_mask: L_t + 1 tensors (B, T_t, H_t) and (B, T_t), from the teacher run online
                (T_s == T_t when the tokens are shared).
            student_attentions, teacher_attentions: L tensors (B, heads, T, T), needed when attention_weight > 0.
            teacher_pooled: instead of ``teacher_hidden``, the cached per-text means (B, len(layer_map), H_t) of the
                mapped teacher layers, in ``layer_map`` order (different tokenizers only).

        Returns:
            :class:`IntermediateOutput`, each term already multiplied by its weight.
        """
        zero = student_hidden[0].new_zeros((), dtype=torch.float32)
        hidden, attention = zero, zero
        s_mask = student_mask.float()
        for j, (s, t) in enumerate(self.layer_map.items()):
            if self.shared_tokens:  # token by token over the real tokens
                projected = self.proj[str(s)](student_hidden[s]).float()  # (B, T, H_t)
                err = ((projected - teacher_hidden[t].float()) ** 2).mean(-1)  # (B, T)
                hidden = hidden + (err * s_mask).sum() / s_mask.sum()
            else:  # masked mean over tokens: one vector per text (mean first: the projection is affine)
                h = student_hidden[s]  # (B, T, H_s), or (B, H_s): a student whose state is one vector per text
                mean_s = (h.float() if h.dim() == 2
                          else (h.float() * s_mask[..., None]).sum(1) / s_mask.sum(1, keepdim=True))
                pooled_s = self.proj[str(s)](mean_s.to(h.dtype)).float()  # (B, H_t)
                if teacher_pooled is not None:
                    pooled_t = teacher_pooled[:, j].float()
                else:
                    t_mask = teacher_mask.float()[..., None]
                    pooled_t = (teacher_hidden[t].float() * t_mask).sum(1) / t_mask.sum(1)
                hidden = hidden + F.mse_loss(pooled_s, pooled_t)
            if self.attention_weight > 0 and s > 0 and t > 0:
                a_s = student_attentions[s - 1].float().mean(1)  # (B, T, T), rows sum to 1 over real keys
                a_t = teacher_attentions[t - 1].float().mean(1)
                kl = (a_t * (torch.log(a_t + 1e-9) - torch.log(a_s + 1e-9))).sum(-1)  # (B, T) per query row
                attention = attention + (kl * s_mask).sum() / s_mask.sum()
        return IntermediateOutput(self.hidden_weight * hidden, self.attention_weight * attention)
