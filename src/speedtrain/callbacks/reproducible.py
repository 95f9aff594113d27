"""StepSeed: the random state of every training step depends only on (seed, epoch, batch index).

``seed_everything`` seeds a process once; after a resume the random streams (dropout masks, DataLoader seeds)
continue from a different point than in the uninterrupted run. Re-seeding at each batch makes a step's randomness a
function of where it is in training, so a run resumed from a checkpoint takes exactly the steps the uninterrupted
run took. Cost: one ``torch.manual_seed`` per step (microseconds).
"""

from __future__ import annotations

import random

import numpy as np
import pytorch_lightning as pl
import torch


class StepSeed(pl.Callback):
    """Seed torch, numpy and ``random`` from (seed, epoch, batch index) before every training batch.

    Args:
        seed: the run's seed (``${seed}``). Ranks share it, as ``seed_everything`` does: they see different data.
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        step_seed = (self.seed * 1_000_003 + trainer.current_epoch * 100_003 + batch_idx) % (2**31 - 1)
        torch.manual_seed(step_seed)
        np.random.seed(step_seed)
        random.seed(step_seed)
