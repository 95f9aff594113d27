"""Structured FFN pruning of a BERT-style classifier, then a short distillation to recover what was lost.

    pruned, info = prune_and_recover(model, train_batches, keep_ratio=0.5, steps=200, lr=1e-3)

Each encoder layer's feed-forward block is ``W_out @ act(W_in @ h)``: intermediate neuron j only reaches the
output through column j of ``W_out``. Its score is mean |act_j| over real (non-padding) tokens times
``||W_out[:, j]||_2``, a first-order bound on how much the layer output moves when the neuron is removed.
Every layer keeps its ``keep`` best neurons (one ``intermediate_size`` for all layers, so the pruned model is
still a plain ``BertConfig`` that ``save_pretrained``/``from_pretrained`` round-trip), and the pruned student is
then distilled from the unpruned model for a few steps.
"""

from __future__ import annotations

import copy
import itertools
import logging
import time
from collections.abc import Iterable

import torch
from torch import nn

from speedtrain.distill.losses import KDLoss
from speedtrain.errors import UserError

log = logging.getLogger(__name__)

IMPORTANCE_BATCHES = 16  # batches prune_and_recover scores on: enough tokens for a stable mean, a second of CPU


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The encoder layers of a BERT-style model (``model.base_model.encoder.layer``)."""
    layers = getattr(getattr(model.base_model, "encoder", None), "layer", None)
    if layers is None or not all(hasattr(x, "intermediate") and hasattr(x, "output") for x in layers):
        raise UserError(f"pruning needs a BERT-style model with encoder.layer[i].intermediate/.output; "
                        f"got {type(model).__name__}: use a BertForSequenceClassification student")
    return layers


@torch.no_grad()
def ffn_importance(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
    """Score every intermediate (FFN) neuron of every encoder layer.

    Args:
        model: BERT-style classifier; run in eval mode (its mode is restored afterwards).
        batches: ``(input_ids (B, T), attention_mask (B, T))`` int64 pairs; padding tokens are not counted.

    Returns:
        One tensor (intermediate_size,) per layer: mean |post-activation| over real tokens times the L2 norm of
        the neuron's column in ``layer.output.dense.weight``. Higher is more important.
    """
    layers = encoder_layers(model)
    device = next(model.parameters()).device
    sums = [torch.zeros(x.output.dense.in_features, dtype=torch.float64, device=device) for x in layers]
    mask_now: list[torch.Tensor] = []  # the current batch's mask (B, T, 1), read by the hooks

    def hook(i: int):
        def add(_module, _inputs, out):  # out (B, T, I): BertIntermediate returns act(dense(h))
            sums[i] += (out.abs().double() * mask_now[0]).sum(dim=(0, 1))
        return add

    handles = [x.intermediate.register_forward_hook(hook(i)) for i, x in enumerate(layers)]
    was_training, tokens = model.training, 0
    model.eval()
    try:
        for input_ids, attention_mask in batches:
            input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
            mask_now[:] = [attention_mask.unsqueeze(-1).double()]
            model(input_ids=input_ids, attention_mask=attention_mask)
            tokens += int(attention_mask.sum())
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if tokens == 0:
        raise UserError("ffn_importance got no real tokens (no batches, or all-zero attention masks); "
                        "pass at least one batch of (input_ids, attention_mask) with some mask ones")
    return [(s / tokens).float() * x.output.dense.weight.float().norm(dim=0) for s, x in zip(sums, layers)]


def _sliced(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear holding ``linear``'s weight rows (dim 0, with the bias) or columns (dim 1) at ``index``."""
    weight = linear.weight.detach().index_select(dim, index)
    bias = linear.bias is not None
    # skip_init: the random init would be overwritten anyway, and it would draw from the caller's global RNG
    out = nn.utils.skip_init(nn.Linear, weight.shape[1], weight.shape[0], bias=bias, device=weight.device,
                             dtype=weight.dtype)
    with torch.no_grad():
        out.weight.copy_(weight)
        if bias:
            # rows are output features: their biases go with them; columns share the whole bias
            out.bias.copy_(linear.bias.detach()[index] if dim == 0 else linear.bias.detach())
    return out


def prune_ffn(model: nn.Module, keep: int, importance: list[torch.Tensor]) -> nn.Module:
    """A pruned copy of ``model`` keeping the ``keep`` most important FFN neurons in every layer.

    Args:
        model: BERT-style classifier; left unchanged.
        keep: neurons kept per layer, in [1, intermediate_size].
        importance: per layer (intermediate_size,) scores, e.g. from :func:`ffn_importance`.

    Returns:
        A deep copy with ``intermediate.dense`` (keep, H) and ``output.dense`` (H, keep), kept neurons in their
        original order, and ``config.intermediate_size = keep``.
    """
    layers = encoder_layers(model)
    size = layers[0].intermediate.dense.out_features
    if not 1 <= keep <= size:
        raise UserError(f"prune keep={keep} must be in [1, {size}] (the model's intermediate_size); "
                        f"e.g. keep={max(1, size // 2)} keeps half the FFN neurons")
    if len(importance) != len(layers) or any(s.shape != (size,) for s in importance):
        raise UserError(f"importance must be {len(layers)} tensors of shape ({size},), one per layer; "
                        f"got shapes {[tuple(s.shape) for s in importance]}: compute it with ffn_importance(model)")
    pruned = copy.deepcopy(model)
    for layer, scores in zip(encoder_layers(pruned), importance):
        index = scores.topk(keep).indices.sort().values.to(layer.output.dense.weight.device)
        layer.intermediate.dense = _sliced(layer.intermediate.dense, index, dim=0)
        layer.output.dense = _sliced(layer.output.dense, index, dim=1)
    pruned.config.intermediate_size = keep
    return pruned


def _kd_step(student, reference, batch, kd_loss: KDLoss, optimizer) -> float:
    """One optimizer step on ``batch = (input_ids, attention_mask, labels)``; returns the loss."""
    device = next(student.parameters()).device
    input_ids, attention_mask, labels = (t.to(device) for t in batch)
    with torch.no_grad():
        ref_logits = reference(input_ids=input_ids, attention_mask=attention_mask).logits
    logits = student(input_ids=input_ids, attention_mask=attention_mask).logits
    loss = kd_loss(logits, ref_logits, labels).loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def recover(
    student: nn.Module,
    reference: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    steps: int,
    lr: float = 1e-3,
    temperature: float = 1.0,
    alpha: float = 0.5,
    seed: int | None = None,
) -> nn.Module:
    """Fine-tune the pruned ``student`` in place by distillation from the unpruned ``reference``.

    The loss is :class:`~speedtrain.distill.losses.KDLoss`, with its convention for ``alpha`` (the weight of the
    teacher term, as ``distill.alpha`` everywhere else in speedtrain):
    ``alpha * T^2 * KL(softmax(ref / T) || softmax(student / T)) + (1 - alpha) * CE(student, labels)``.

    Args:
        student: the model to train (AdamW over all its parameters, dropout on).
        reference: the teacher; frozen, run in eval mode under no_grad (its mode is restored afterwards).
        batches: re-iterable (a list or DataLoader) of ``(input_ids (B, T), attention_mask (B, T), labels (B,))``;
            cycled over until ``steps`` optimizer steps are done.
        steps: optimizer steps (0: return the student untouched, in eval mode).
        lr: AdamW learning rate.
        temperature: T > 0 of the soft targets.
        alpha: weight of the teacher term in [0, 1].
        seed: seeds the dropout masks for a reproducible run; the global RNG state is restored afterwards.

    Returns:
        ``student``, in eval mode.
    """
    if steps < 0:
        raise UserError(f"recovery steps={steps} must be >= 0, e.g. steps=200")
    kd_loss = KDLoss(alpha=alpha, temperature=temperature)
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=lr)
    ref_training, done, losses = reference.training, 0, []
    reference.eval()
    # dropout draws from the global RNG: fork it so a seed makes the run repeatable without seeding the caller
    with torch.random.fork_rng(enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        student.train()
        try:
            while done < steps:
                before = done
                for batch in itertools.islice(batches, steps - done):
                    losses.append(_kd_step(student, reference, batch, kd_loss, optimizer))
                    done += 1
                if done == before:
                    raise UserError("recover got no batches (empty, or a used-up generator); pass a list or a "
                                    "DataLoader of (input_ids, attention_mask, labels)")
        finally:
            student.eval()
            reference.train(ref_training)
    if losses:
        log.info("Recovery: %d steps, loss %.4f -> %.4f", steps, losses[0], losses[-1])
    return student


def n_params(model: nn.Module) -> int:
    """Number of parameters (shared ones counted once)."""
    return sum(p.numel() for p in model.parameters())


def prune_and_recover(
    model: nn.Module,
    train_batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    keep_ratio: float,
    steps: int,
    lr: float,
    seed: int | None = None,
) -> tuple[nn.Module, dict]:
    """Score on the first batches, prune every layer's FFN to ``keep_ratio``, and distill back from ``model``.

    Args:
        model: BERT-style classifier; left unchanged (it is the recovery teacher).
        train_batches: re-iterable of ``(input_ids (B, T), attention_mask (B, T), labels (B,))``; the first
            :data:`IMPORTANCE_BATCHES` score the neurons, all are cycled over for recovery.
        keep_ratio: fraction of FFN neurons kept, in (0, 1]; keep = max(1, round(keep_ratio * intermediate_size)).
        steps: recovery optimizer steps.
        lr: recovery AdamW learning rate.
        seed: seeds the recovery's dropout masks (see :func:`recover`); None: the global RNG as it is.

    Returns:
        ``(pruned model in eval mode, info)`` with info ``{"intermediate_size": (old, new), "params": (old, new),
        "recovery_steps": steps, "recovery_s": seconds}``.
    """
    if not 0.0 < keep_ratio <= 1.0:
        raise UserError(f"prune keep_ratio={keep_ratio} must be in (0, 1], e.g. keep_ratio=0.5")
    old = model.config.intermediate_size
    keep = max(1, round(keep_ratio * old))
    scored = ((ids, mask) for ids, mask, _labels in itertools.islice(train_batches, IMPORTANCE_BATCHES))
    pruned = prune_ffn(model, keep, ffn_importance(model, scored))
    start = time.perf_counter()
    recover(pruned, model, train_batches, steps=steps, lr=lr, seed=seed)
    info = {
        "intermediate_size": (old, keep),
        "params": (n_params(model), n_params(pruned)),
        "recovery_steps": steps,
        "recovery_s": time.perf_counter() - start,
    }
    log.info("Pruned FFN %d -> %d per layer: %d -> %d params", old, keep, *info["params"])
    return pruned, info
