"""AdamW that also takes sparse gradients: the static family's tables train at the cost of the rows a batch touches.

A batch of 128 texts touches a few thousand of the static student's 37K table rows; dense AdamW (and clipping)
still reads and writes all 3.6M parameters and their two moments every step. With ``model.sparse_grad=true``
the tables' gradients are sparse (``nn.Embedding(sparse=True)``) and :class:`SparseAdamW` updates only those rows
("lazy" Adam, as ``torch.optim.SparseAdam``, here with decoupled weight decay on the rows it updates); every dense
parameter gets torch's own AdamW, unchanged. One optimizer, so Lightning's loop, the LR scheduler and checkpoints
see nothing new.

``torch.optim.SparseAdam`` does the same through sparse-tensor arithmetic (a ``coalesce`` and several sparse adds a
step), which in an exploratory step loop on a 2-core CPU cost about as much as dense AdamW at batch 1024; the row
form here uses one ``index_select`` and one ``index_copy_`` per state tensor and, between them, the fused AdamW
kernel that ``torch.optim.AdamW(fused=True)`` runs (``torch._fused_adamw_``, CPU and CUDA since torch 2.4), on the
gathered rows. The whole training path is measured by ``scripts/bench_static_train.py``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch

# optimizers that accept sparse gradients (besides SparseAdamW): the static tables may stay sparse with them
SPARSE_CAPABLE = (torch.optim.SGD, torch.optim.SparseAdam, torch.optim.Adagrad)


def coalesced(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, values)`` of a sparse (COO, dim-0 sparse) gradient, duplicate rows summed: (U,), (U, D...)."""
    if grad.is_coalesced():
        return grad._indices()[0], grad._values()
    indices = grad._indices()[0]
    if indices.numel() < 2 or bool((indices[1:] > indices[:-1]).all()):  # each row once, in order (a lookup of
        return indices, grad._values()  # torch.unique's rows: the static training forward's)
    rows, inverse = torch.unique(indices, return_inverse=True)  # faster than Tensor.coalesce on a CPU
    values = grad._values()
    summed = torch.zeros((rows.numel(), *values.shape[1:]), dtype=values.dtype, device=values.device)
    return rows, summed.index_add_(0, inverse, values)


def coalesce_grads(params: Iterable[torch.Tensor]) -> None:
    """Replace every sparse ``.grad`` by its coalesced form (each row once), in place."""
    for p in params:
        grad = p.grad
        if grad is not None and grad.is_sparse and not grad.is_coalesced():
            rows, values = coalesced(grad)
            with warnings.catch_warnings():  # "invariant checks are disabled": they are, for speed; rows are unique
                warnings.simplefilter("ignore", UserWarning)
                p.grad = torch.sparse_coo_tensor(rows.unsqueeze(0), values, grad.shape, is_coalesced=True,
                                                 check_invariants=False)


def clip_grad_norm_(params: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` (L2) over dense and sparse gradients: a sparse one counts its touched
    rows (coalesced first), not its whole table. Returns the total norm before clipping."""
    params = [p for p in params if p.grad is not None]
    coalesce_grads(params)
    grads = [p.grad._values() if p.grad.is_sparse else p.grad for p in params]
    if not grads:
        return torch.tensor(0.0)
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.to(g.dtype))
    return total


def clip_grad_value_(params: Iterable[torch.Tensor], clip_value: float) -> None:
    """``torch.nn.utils.clip_grad_value_`` over dense and sparse gradients."""
    params = [p for p in params if p.grad is not None]
    coalesce_grads(params)
    for p in params:
        (p.grad._values() if p.grad.is_sparse else p.grad).clamp_(-clip_value, clip_value)


class SparseAdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` whose parameters may have sparse gradients (lazy row updates); same arguments.

    For a parameter with a sparse gradient, a step updates only the rows in the gradient: their two moments (the
    others keep theirs: "lazy" Adam, the rule of ``torch.optim.SparseAdam``), weight decay ``lr * weight_decay`` and
    the bias-corrected step, with the parameter's step count (every step in which it had a gradient). Dense
    gradients go through AdamW itself. ``amsgrad`` and ``maximize`` apply to dense parameters only.
    """

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        held = []  # (param, sparse grad): hidden from AdamW's own step, which refuses sparse gradients
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and p.grad.is_sparse:
                    self._sparse_step(p, group)
                    held.append((p, p.grad))
                    p.grad = None
        try:
            super().step()
        finally:
            for p, grad in held:
                p.grad = grad
        return loss

    def _sparse_step(self, p: torch.Tensor, group: dict) -> None:
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        lr = float(lr)  # (a tensor lr, as AdamW allows)
        state = self.state[p]
        if not state:  # the keys AdamW uses: a checkpoint's state loads either way
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        rows, grad = coalesced(p.grad)
        # the touched rows of the weight and its moments, updated by torch's fused AdamW kernel (one pass over
        # them instead of ten elementwise ones; it reads the step count from a tensor on the rows' device), then
        # written back
        weight, exp_avg, exp_avg_sq = (t.index_select(0, rows) for t in (p, state["exp_avg"], state["exp_avg_sq"]))
        step = state["step"].to(p.device, copy=True)
        torch._fused_adamw_([weight], [grad.contiguous()], [exp_avg], [exp_avg_sq], [], [step], amsgrad=False, lr=lr,
                            beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"], eps=eps, maximize=False)
        for target, values in ((p, weight), (state["exp_avg"], exp_avg), (state["exp_avg_sq"], exp_avg_sq)):
            target.index_copy_(0, rows, values)
