"""DistillModule: the student learns from the teacher's logits (cached or computed online) and the labels.

Logs everything :class:`~speedtrain.lit.classifier.ClassifierModule` logs, plus:

========================  ===========================================================
``train/kd_loss``         T^2 * KL(teacher || student) of the batch, before alpha
``train/ce_loss``         cross-entropy with the labels, before (1 - alpha)
``train/hidden_loss``     weighted hidden-state MSE (``distill=logits_hidden`` only)
``train/attention_loss``  weighted attention KL (``distill=logits_hidden`` only)
========================  ===========================================================

Two ways to get the teacher's logits:

* cache (default): the batch carries ``teacher_logits`` (B, C) — and for ``distill=logits_hidden`` with a
  student tokenizer other than the teacher's, ``teacher_hidden``: per-text means of the mapped teacher layers —
  computed once by :mod:`speedtrain.distill.logit_cache`; a step runs only the student.
* online: the batch carries the teacher's own tokenization (``teacher_input_ids``, ``teacher_attention_mask``)
  beside the student's, and the teacher runs every step under ``no_grad``, in eval mode, with the run's
  precision (its weights in bf16 under ``bf16-mixed``: no per-step casts), compiled when the student is.
  Intermediate losses need this.

The teacher is kept out of Lightning's view (not a submodule): it is never in the optimizer, the checkpoints,
or a DeepSpeed-partitioned model; the module moves it to its device when fitting starts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from speedtrain.distill.losses import IntermediateLoss, KDLoss
from speedtrain.errors import UserError
from speedtrain.lit.classifier import Batch, ClassifierModule


class DistillModule(ClassifierModule):
    """:class:`ClassifierModule` whose training loss is ``loss`` (a :class:`KDLoss`) against the teacher's logits.

    Args:
        loss: the distillation loss; the other arguments are :class:`ClassifierModule`'s.
        teacher: the fine-tuned teacher, for online distillation (None: the batches carry cached logits).
        teacher_config: the teacher's ``hidden_size`` and ``num_hidden_layers`` when it is not online (for
            ``intermediate``).
        intermediate: ``partial`` of :class:`IntermediateLoss` (completed here with both widths and
            ``shared_tokens``) for hidden-state and attention terms: with the teacher online, or with its
            pooled hidden states cached in the batch (``teacher_hidden``) when the tokenizers differ.
        shared_tokens: the student reads the teacher's tokens (same tokenizer).
        mixup: ``distill.mixup``, the alpha of a Beta(alpha, alpha) draw (0: off). Each training step mixes every
            text's features at the input of the student's head (its ``classifier``) with another text's of the
            batch, ``lam * a + (1 - lam) * b``, and the loss is mixed the same way (the soft targets, the labels and
            the sample weights of both): manifold mixup (Verma et al. 2019) with the teacher's targets, as MixKD
            (Liang et al. 2021) mixes a student's inputs. No cost at inference. ``train/acc`` then scores the
            mixed logits against the unmixed labels, and ``train/kd_loss`` is the first text's term.
    """

    def __init__(
        self, *args, loss: KDLoss, teacher: nn.Module | None = None, teacher_config: Mapping | None = None,
        intermediate: Callable[..., IntermediateLoss] | None = None, shared_tokens: bool = False,
        mixup: float = 0.0, **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.kd = loss
        mixup = check_mixup(mixup)
        if mixup and not isinstance(getattr(self.model, "classifier", None), nn.Module):
            raise UserError(f"distill.mixup={mixup} mixes the features at the student's head (its `classifier`), "
                            f"which {type(self.model).__name__} lacks: pass distill.mixup=0")
        self.mixup = mixup
        self._teacher = (teacher.eval().requires_grad_(False),) if teacher is not None else ()  # hidden: see above
        self.intermediate = None
        if intermediate is not None:
            s = self.model.config
            t = teacher.config.to_dict() if teacher is not None else teacher_config
            self.intermediate = intermediate(student_width=s.hidden_size, teacher_width=t["hidden_size"],
                                             student_layers=getattr(s, "num_hidden_layers", None),
                                             teacher_layers=t["num_hidden_layers"],
                                             shared_tokens=shared_tokens)
            if self.intermediate.attention_weight > 0:  # SDPA kernels return no attention maps
                self.model.set_attn_implementation("eager")
                if teacher is not None:
                    teacher.set_attn_implementation("eager")

    @property
    def teacher(self) -> nn.Module | None:
        return self._teacher[0] if self._teacher else None

    def on_fit_start(self) -> None:
        maps = self.intermediate is not None and self.intermediate.attention_weight > 0  # needs eager attention maps
        if not maps:
            super().on_fit_start()
        if self.teacher is not None:  # the student's device; its dtype, or bf16 under bf16-mixed (inference only)
            dtype = next(self.model.parameters()).dtype
            if str(self.trainer.precision).startswith("bf16"):
                dtype = torch.bfloat16
            self.teacher.to(device=self.device, dtype=dtype).eval()
            if self.attention and not maps:
                self.teacher.set_attn_implementation(self.attention)

    def teacher_forward(self, **inputs):
        """The frozen teacher's output under ``no_grad``, through ``torch.compile`` (inference graphs) when the
        student's forward is compiled."""
        if self.compile_mode and self.device.type == "cuda" and len(self._teacher) == 1:
            self._teacher = (self.teacher, torch.compile(self.teacher, mode=self.compile_mode, dynamic=False))
        with torch.no_grad():
            return self._teacher[-1](**inputs)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        inter = self.intermediate
        attentions = inter is not None and inter.attention_weight > 0
        mix = self._mix_draw(batch["input_ids"].shape[0]) if self.mixup else None
        hook = self.model.classifier.register_forward_pre_hook(_mixing(*mix)) if mix else None
        try:
            out = self.train_forward(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                     output_hidden_states=inter is not None, output_attentions=attentions)
        finally:
            if hook is not None:
                hook.remove()
        logits = out.logits  # (B, C)
        if "teacher_logits" in batch:
            teacher_logits, t_out = batch["teacher_logits"], None
        else:
            t_out = self.teacher_forward(input_ids=batch["teacher_input_ids"],
                                         attention_mask=batch["teacher_attention_mask"],
                                         output_hidden_states=inter is not None, output_attentions=attentions)
            teacher_logits = t_out.logits
        kd = self.kd(logits, teacher_logits, batch["labels"], batch.get("sample_weight"))
        loss = kd.loss
        if mix:  # the loss is linear in the targets: the mixed loss is the mix of the two texts' losses
            lam, perm = mix
            weight = batch.get("sample_weight")
            weight = None if weight is None else weight[perm]
            other = self.kd(logits, teacher_logits[perm], batch["labels"][perm], weight)
            loss = lam * loss + (1.0 - lam) * other.loss
        parts = {"train/kd_loss": kd.kd_loss, "train/ce_loss": kd.ce_loss}
        if inter is not None and "teacher_hidden" in batch:  # cached per-text teacher states (B, L * H_t)
            pooled = batch["teacher_hidden"].view(logits.shape[0], len(inter.layer_map), -1)
            terms = inter(out.hidden_states, batch["attention_mask"], teacher_pooled=pooled)
        elif inter is not None:
            terms = inter(out.hidden_states, batch["attention_mask"], t_out.hidden_states,
                          batch["teacher_attention_mask"], out.attentions, t_out.attentions)
        if inter is not None:
            loss = loss + terms.hidden_loss + terms.attention_loss
            parts.update({"train/hidden_loss": terms.hidden_loss, "train/attention_loss": terms.attention_loss})
        if self.logging_step():  # step-only values: the logger sees them on logging steps only
            self.log_dict(parts)
        self.log_train_step_stats(batch, logits, loss)
        return loss

    def _mix_draw(self, batch_size: int) -> tuple[float, torch.Tensor] | None:
        """This step's mix: ``lam`` ~ Beta(mixup, mixup) and the batch's texts in a random order."""
        if batch_size < 2:
            return None
        lam = float(torch.distributions.Beta(self.mixup, self.mixup).sample())
        return lam, torch.randperm(batch_size, device=self.device)


def check_mixup(mixup) -> float:
    """``distill.mixup`` as a float, or a :class:`UserError` when it is not a number >= 0."""
    if isinstance(mixup, bool) or not isinstance(mixup, (int, float)) or not mixup >= 0:  # NaN too
        raise UserError(f"distill.mixup={mixup!r} must be a number >= 0 (the alpha of its Beta(alpha, alpha) draw; "
                        "0: off), e.g. distill.mixup=0.4")
    return float(mixup)


def _mixing(lam: float, perm: torch.Tensor):
    """A forward pre-hook that mixes a module's first input with itself in the order ``perm``."""
    def hook(module, args):
        features = args[0]
        return (lam * features + (1.0 - lam) * features[perm], *args[1:])
    return hook
