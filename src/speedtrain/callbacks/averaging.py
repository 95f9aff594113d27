"""``EMAWeights`` (``callbacks=ema``): validate, checkpoint, test and export an exponential moving average of the
weights instead of the last step's.

Lightning's :class:`~pytorch_lightning.callbacks.EMAWeightAveraging` keeps the average (``torch.optim.swa_utils``),
swaps it in for every validation and writes it as the checkpoint's ``state_dict`` (the training weights go to
``current_model_state``, so a resumed run continues both). Two things make it fit a speedtrain run:

- **The test and the export read the average.** Lightning's callback keeps its average model after ``fit``; a
  later ``trainer.test(ckpt_path="best")`` then loads ``current_model_state`` (the raw weights) into the module
  and, since only validation swaps, tests the raw weights while the best checkpoint was chosen on the average.
  Here the average model is dropped when ``fit`` ends, so a checkpoint loaded afterwards is its ``state_dict``:
  the averaged weights that validation scored.
- **The cost is dense.** The update is one ``lerp`` over every parameter each step, whole tables included, and
  the average is a second copy of the module (with an online teacher inside it, the teacher too). A family trained
  with sparse table gradients (the static large-data path) touches a few thousand rows a step: there set
  ``every_n_steps`` (nothing does it for you; its speed there was not measured).
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import EMAWeightAveraging

from speedtrain.errors import UserError


class EMAWeights(EMAWeightAveraging):
    """An exponential moving average of the weights (``decay`` per update), from ``start_step`` on.

    Args:
        decay: weight of the average at each update (0.99: about the last 100 updates count).
        start_step: the average starts here (a copy of the weights then); before it the raw weights are validated.
        every_n_steps: update the average every n optimizer steps.
    """

    def __init__(self, decay: float = 0.99, start_step: int = 0, every_n_steps: int = 1, **kwargs: Any) -> None:
        if not 0.0 < decay < 1.0:
            raise UserError(f"callbacks.ema.decay={decay} must be in (0, 1), e.g. 0.99")
        if start_step < 0 or every_n_steps < 1:
            raise UserError(f"callbacks.ema.start_step={start_step} must be >= 0 and callbacks.ema.every_n_steps="
                            f"{every_n_steps} >= 1, e.g. start_step=0 every_n_steps=1")
        super().__init__(decay=decay, update_every_n_steps=every_n_steps, update_starting_at_step=start_step,
                         **kwargs)
        self.decay = decay

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """After ``fit`` (whose ``on_train_end`` copied the average into the module): forget the average model."""
        if stage == "fit":
            self._average_model = None

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        """Outside ``fit`` the module keeps the checkpoint's ``state_dict``: the average."""
        if self._average_model is not None:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
