"""ProgressBar: Lightning's Rich progress bar, refreshed every ``refresh_rate`` training steps.

Lightning's ``RichProgressBar`` reads the logged metrics after every training batch whatever its refresh rate, and
reading them turns each on-device metric into a Python number: a GPU -> CPU synchronisation per step, which stalls
a fast GPU loop (the CPU can no longer queue the next steps while the GPU runs). This bar updates (bar and
metrics) every ``refresh_rate`` steps and at the end of an epoch.

For the same reason the modules log nothing per step with ``prog_bar=True`` (Lightning converts those values to
Python numbers after every step, whoever reads them): this bar shows the logged values named in ``show``
(e.g. ``train/loss``) itself, read when it refreshes.
"""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichProgressBar


class ProgressBar(RichProgressBar):
    """:class:`~pytorch_lightning.callbacks.RichProgressBar` that touches the metrics every ``refresh_rate`` steps."""

    def __init__(self, refresh_rate: int = 10, leave: bool = False, show: list[str] | tuple[str, ...] = ("train/loss",)
                 ) -> None:
        super().__init__(refresh_rate=refresh_rate, leave=leave)
        self.show = tuple(show)

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict:
        items = super().get_metrics(trainer, pl_module)
        for key in self.show:
            value = trainer.callback_metrics.get(key)
            if value is not None and key not in items:
                items[key] = float(value)
        return items

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        n = batch_idx + 1
        if n % self.refresh_rate == 0 or n == self.total_train_batches:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
