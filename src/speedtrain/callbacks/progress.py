"""ProgressBar: Lightning's Rich progress bar, refreshed every ``refresh_rate`` training steps.

Lightning's ``RichProgressBar`` reads the logged metrics after every training batch whatever its refresh rate, and
reading them turns each on-device metric into a Python number: a GPU -> CPU synchronisation per step, which stalls
a fast GPU loop (the CPU can no longer queue the next steps while the GPU runs). This bar updates (bar and
metrics) every ``refresh_rate`` steps and at the end of an epoch.
"""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichProgressBar


class ProgressBar(RichProgressBar):
    """:class:`~pytorch_lightning.callbacks.RichProgressBar` that touches the metrics every ``refresh_rate`` steps."""

    def __init__(self, refresh_rate: int = 10, leave: bool = False) -> None:
        super().__init__(refresh_rate=refresh_rate, leave=leave)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        n = batch_idx + 1
        if n % self.refresh_rate == 0 or n == self.total_train_batches:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
