"""ClassifierModule: cross-entropy training of a sequence classifier, with accuracy/F1 and throughput logging.

Logged keys:

=====================  ==========================================================
``train/loss``         cross-entropy of the batch
``train/acc``          running accuracy over the epoch
``train/lr``           learning rate of the step
``perf/samples_per_s`` training samples per second (data loading included)
``val/loss``           mean cross-entropy on the validation split
``val/acc``            accuracy (the checkpoint and sweep objective)
``val/f1``             macro-F1
``test/acc, test/f1``  the same on the test split (of the best checkpoint)
=====================  ==========================================================

After a test, ``test_predictions`` holds ``(labels, predicted)`` of the whole test split (gathered from every
rank): the run logs its confusion matrix.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from speedtrain.data.resumable import restore_loader_position
from speedtrain.lit.optim import SPARSE_CAPABLE, SparseAdamW, clip_grad_norm_, clip_grad_value_

log = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]  # input_ids (B, T), attention_mask (B, T), labels (B,)


class ClassifierModule(pl.LightningModule):
    """Trains ``model`` (any module whose output has ``.logits`` of shape (B, C)) with cross-entropy.

    Args:
        model: the built classifier, e.g. :func:`~speedtrain.models.student.build_student`.
        num_labels: number of classes C.
        optimizer: ``partial`` of a torch optimizer, completed with the parameters.
        scheduler: ``partial`` of ``transformers.get_scheduler`` (or None), completed with the optimizer,
            ``num_warmup_steps`` and ``num_training_steps``; stepped every optimizer step.
        warmup_ratio: fraction of the optimizer steps spent warming the learning rate up.
        compile: on a CUDA device, ``torch.compile`` the model's training forward with this mode (``default``,
            ``reduce-overhead``: CUDA graphs, ...); False: eager. Evaluation stays eager (other shapes, no grad).
        fused_optimizer: on a CUDA device, ask the optimizer for its fused kernel (``fused=True``); under
            DeepSpeed with an offloaded optimizer the optimizer becomes DeepSpeed's CPU Adam.
        attention: the model's attention implementation while training (``eager``, ``sdpa``; None: the model's
            own); the model gets its own back when training ends, before the export and the test.
    """

    def __init__(
        self,
        model: nn.Module,
        num_labels: int,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        warmup_ratio: float = 0.1,
        compile: str | bool = False,
        fused_optimizer: bool = False,
        attention: str | None = None,
    ) -> None:
        super().__init__()
        # from_pretrained returns eval mode and Lightning keeps the modes it finds: train mode turns dropout on
        self.model = model.train()
        self.optimizer_fn, self.scheduler_fn, self.warmup_ratio = optimizer, scheduler, warmup_ratio
        self.compile_mode, self.fused_optimizer = ("default" if compile is True else compile), fused_optimizer
        self.attention, self._own_attention = attention, None
        self._compiled: tuple = ()  # the compiled training forward (hidden: not a second copy in the state dict)
        self.loss_fn = nn.CrossEntropyLoss()
        # validate_args=False: the checks call torch.unique on every update, a GPU -> CPU sync per step
        self.train_acc = MulticlassAccuracy(num_labels, average="micro", validate_args=False)
        self.val_acc = MulticlassAccuracy(num_labels, average="micro", validate_args=False)
        self.val_f1 = MulticlassF1Score(num_labels, average="macro", validate_args=False)
        self.test_acc = MulticlassAccuracy(num_labels, average="micro", validate_args=False)
        self.test_f1 = MulticlassF1Score(num_labels, average="macro", validate_args=False)
        self._last_step_time: float | None = None
        self._last_step = 0
        self._test_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.test_predictions: tuple | None = None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T), (B, T) -> logits (B, C)."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    def train_forward(self, **inputs):
        """The model's output for a training step: through ``torch.compile`` when asked for (CUDA only)."""
        compiles = getattr(self.model, "compile_training", True)  # the static family: no (a new shape per batch)
        if self.compile_mode and compiles and self.device.type == "cuda" and not self._compiled:
            import torch._dynamo

            # one graph per (batch, length bucket) shape: a few buckets x the last batch of an epoch
            config = torch._dynamo.config
            name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
            setattr(config, name, max(getattr(config, name), 64))
            self._compiled = (torch.compile(self.model, mode=self.compile_mode, dynamic=False),)
        model = self._compiled[0] if self._compiled else self.model
        return model(**inputs)

    def on_fit_start(self) -> None:
        config = getattr(self.model, "config", None)
        if self.attention and config is not None and self.attention != config._attn_implementation:
            self._own_attention = config._attn_implementation
            self.model.set_attn_implementation(self.attention)

    def on_train_start(self) -> None:
        restore_loader_position(self.trainer)  # a resumed fit continues its epoch with the next batch

    def on_train_end(self) -> None:  # (before the export callback's on_fit_end: the bundle gets the model's own)
        if self._own_attention is not None:
            self.model.set_attn_implementation(self._own_attention)
            self._own_attention = None
        release = getattr(getattr(self.trainer, "datamodule", None), "release_table", None)
        if release is not None:  # the training split's device tensors: 1M rows, ~0.25 GB the export can use
            release("train")

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        logits = self.train_forward(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = self.loss_fn(logits.float(), batch["labels"])
        self.log_train_step_stats(batch, logits, loss)
        return loss

    def logging_step(self) -> bool:
        """Whether this training step's logs reach the logger (Lightning's own test: every ``log_every_n_steps``)."""
        return self.trainer._logger_connector.should_update_logs

    def log_train_step_stats(self, batch: Batch, logits: torch.Tensor, loss: torch.Tensor) -> None:
        """Log train/loss, train/acc (updated here) and, on logging steps, the learning rate and the throughput.

        Nothing here makes the GPU wait: train/loss is not a progress-bar value (Lightning turns those into Python
        numbers after every step; :class:`~speedtrain.callbacks.progress.ProgressBar` shows it at its refreshes),
        and Python numbers are logged only on logging steps (logging one copies it to the device, a sync). The
        accuracy metric is logged at the epoch's end, not as a Metric object every step (Lightning moves such an
        object to the device on each ``log``: ~1 ms of CPU per step).
        """
        self.train_acc.update(logits.detach(), batch["labels"])  # the epoch's accuracy: logged when it ends
        self.log("train/loss", loss)
        if not self.logging_step():
            return
        step = self.trainer.global_step
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        now = time.perf_counter()
        if self._last_step_time is not None and step > self._last_step:  # mean over the steps since the last log
            samples = batch["labels"].shape[0] * self.trainer.world_size * (step - self._last_step)
            self.log("perf/samples_per_s", samples / (now - self._last_step_time))
        self._last_step_time, self._last_step = now, step

    def on_train_epoch_start(self) -> None:
        self._last_step_time = None

    def on_train_epoch_end(self) -> None:
        if self.train_acc.update_count:  # (every rank's updates: torchmetrics syncs in compute)
            self.log("train/acc", self.train_acc.compute())
        self.train_acc.reset()

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_acc, self.val_f1)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_acc, self.test_f1)

    def on_test_epoch_start(self) -> None:
        self._test_outputs = []

    def on_test_epoch_end(self) -> None:
        """Keep ``(labels, predicted)`` of the whole test split (DDP: all ranks' shards) as numpy arrays."""
        labels = torch.cat([o[0] for o in self._test_outputs])
        predicted = torch.cat([o[1] for o in self._test_outputs])
        if self.trainer.world_size > 1:
            labels, predicted = self._gather_uneven(labels), self._gather_uneven(predicted)
        self.test_predictions = (labels.cpu().numpy(), predicted.cpu().numpy())
        self._test_outputs = []

    def _gather_uneven(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` (n,) of every rank concatenated, n may differ per rank (padded for the collective)."""
        sizes = self.all_gather(torch.tensor([values.numel()], device=values.device)).flatten().tolist()
        padded = torch.zeros(max(sizes), dtype=values.dtype, device=values.device)
        padded[: values.numel()] = values
        gathered = self.all_gather(padded).reshape(len(sizes), -1)
        return torch.cat([row[:n] for row, n in zip(gathered, sizes)])

    def _eval_step(self, batch: Batch, stage: str, acc: MulticlassAccuracy, f1: MulticlassF1Score) -> None:
        logits = self(batch["input_ids"], batch["attention_mask"])
        loss = self.loss_fn(logits.float(), batch["labels"])
        acc(logits, batch["labels"])
        f1(logits, batch["labels"])
        if stage == "test":
            self._test_outputs.append((batch["labels"].detach(), logits.argmax(-1).detach()))
        self.log(f"{stage}/loss", loss, sync_dist=True, batch_size=batch["labels"].shape[0])
        self.log(f"{stage}/acc", acc, prog_bar=True)
        self.log(f"{stage}/f1", f1)

    def setup(self, stage: str) -> None:
        if stage == "fit":  # before the strategy wraps the model (DDP reads which tables are sparse)
            keep_sparse_tables(self.model, self.optimizer_fn, self.trainer.strategy)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Lightning's clipping, except for sparse gradients (the static tables: clipped over the rows they touch,
        not the whole table) and for a fused optimizer without a loss scaler (bf16 / fp32): Lightning refuses to
        clip for it (it could unscale fp16 gradients itself), but without a scaler there is nothing to unscale."""
        params = [p for group in optimizer.param_groups for p in group["params"]]
        sparse = gradient_clip_val and any(p.grad is not None and p.grad.is_sparse for p in params)
        fused = bool(getattr(optimizer, "defaults", {}).get("fused"))
        if sparse:
            clip = clip_grad_value_ if gradient_clip_algorithm == "value" else clip_grad_norm_
            clip(params, gradient_clip_val)
            return None
        if not gradient_clip_val or not fused or getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        if gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val, foreach=True)
        else:
            torch.nn.utils.clip_grad_norm_(params, gradient_clip_val, foreach=True)

    def configure_optimizers(self) -> dict:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = offloaded_adam(self.trainer, self.optimizer_fn, params)
        if optimizer is None:
            fused = self.fused_optimizer and self.device.type == "cuda" and accepts(self.optimizer_fn, "fused")
            optimizer = self.optimizer_fn(params=params, **({"fused": True} if fused else {}))
        if self.scheduler_fn is None:
            return {"optimizer": optimizer}
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_fn(
            optimizer=optimizer, num_warmup_steps=int(self.warmup_ratio * total), num_training_steps=total
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def keep_sparse_tables(model: nn.Module, optimizer_fn: Callable, strategy) -> bool:
    """Whether ``model``'s sparse-gradient tables (``nn.Embedding(sparse=True)``: ``model.sparse_grad``) can train
    sparse under this optimizer and strategy; if not, they are made dense, with a log line saying why. Sparse
    gradients need an optimizer that takes them (:class:`~speedtrain.lit.optim.SparseAdamW`, SGD, Adagrad,
    SparseAdam) and one process or DDP over gloo (NCCL and DeepSpeed reduce dense gradients only)."""
    tables = [m for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.sparse]
    if not tables:
        return False
    from pytorch_lightning.strategies import DDPStrategy, DeepSpeedStrategy, SingleDeviceStrategy

    target = getattr(optimizer_fn, "func", optimizer_fn)
    reason = None
    if not (isinstance(target, type) and issubclass(target, (SparseAdamW, *SPARSE_CAPABLE))):
        reason = f"the optimizer {getattr(target, '__name__', target)} takes no sparse gradients"
    elif isinstance(strategy, DeepSpeedStrategy) or not isinstance(strategy, (SingleDeviceStrategy, DDPStrategy)):
        reason = f"the strategy {type(strategy).__name__} reduces dense gradients only"
    elif isinstance(strategy, DDPStrategy) and (strategy.process_group_backend or
                                                _default_backend(strategy.root_device)) != "gloo":
        reason = "DDP over NCCL all-reduces dense gradients only"
    if reason is None:
        return True
    for table in tables:
        table.sparse = False
    if hasattr(getattr(model, "config", None), "sparse_grad"):
        model.config.sparse_grad = False
    log.info("model.sparse_grad: the tables train with dense gradients (%s)", reason)
    return False


def _default_backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def accepts(fn: Callable, name: str) -> bool:
    """Whether ``fn`` (a ``functools.partial`` of a class, as Hydra builds it) takes the argument ``name``."""
    target = getattr(fn, "func", fn)
    try:
        return name in inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False


def offloaded_adam(trainer, optimizer_fn: Callable, params: list) -> torch.optim.Optimizer | None:
    """DeepSpeed's CPU Adam(W) with ``optimizer_fn``'s settings when the trainer offloads the optimizer to the CPU
    (DeepSpeed refuses a torch optimizer there); None otherwise."""
    config = getattr(getattr(trainer, "strategy", None), "config", None) or {}
    offload = (config.get("zero_optimization") or {}).get("offload_optimizer")
    if not offload or offload.get("device", "cpu") == "none":
        return None
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    settings = dict(getattr(optimizer_fn, "keywords", {}))
    keep = {k: settings[k] for k in ("lr", "betas", "eps", "weight_decay") if k in settings}
    return DeepSpeedCPUAdam(params, adamw_mode=True, **keep)
