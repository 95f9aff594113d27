"""``callbacks=ema``: validation, the best checkpoint, the test after ``fit`` and the module that is exported all hold
the exponential moving average of the weights, not the last step's."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from speedtrain.callbacks.averaging import EMAWeights
from speedtrain.config import compose_config
from speedtrain.errors import UserError
from speedtrain.trainer import build_callbacks


class Regression(pl.LightningModule):
    """One linear layer trained by plain SGD; val/score and test/score are its weights' sum (what it holds then)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def validation_step(self, batch, batch_idx):
        self.log("val/score", -self.layer.weight.sum().item())

    def test_step(self, batch, batch_idx):
        self.log("test/score", self.layer.weight.sum().item())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Recorder(pl.Callback):
    """The raw weights after every optimizer step."""

    def __init__(self) -> None:
        self.weights: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.weights.append(pl_module.layer.weight.detach().clone())


def test_validation_checkpoints_and_the_test_after_fit_read_the_average(tmp_path):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(64, 4, generator=generator)
    data = DataLoader(TensorDataset(x, x @ torch.tensor([[1.0], [-2.0], [3.0], [0.5]])), batch_size=8)
    module, recorder, decay = Regression(), Recorder(), 0.8
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="val/score", mode="max", save_top_k=1)
    trainer = pl.Trainer(max_epochs=3, callbacks=[recorder, EMAWeights(decay=decay), checkpoint], logger=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, data, data)

    average = recorder.weights[0]  # the first update copies the weights, then average = d * average + (1 - d) * w
    averages = [average]
    for weights in recorder.weights[1:]:
        average = decay * average + (1 - decay) * weights
        averages.append(average)
    assert not torch.allclose(averages[-1], recorder.weights[-1], atol=1e-3)  # the average lags the raw weights
    torch.testing.assert_close(module.layer.weight.detach(), averages[-1])  # fit ends with the average in place

    saved = torch.load(checkpoint.best_model_path, weights_only=False)
    epoch = saved["epoch"]  # the best epoch's checkpoint: the average after its last step, the raw ones beside it
    step = (epoch + 1) * len(data) - 1
    torch.testing.assert_close(saved["state_dict"]["layer.weight"], averages[step])
    torch.testing.assert_close(saved["current_model_state"]["layer.weight"], recorder.weights[step])
    assert checkpoint.best_model_score.item() == pytest.approx(-averages[step].sum().item(), abs=1e-5)

    (result,) = trainer.test(module, data, ckpt_path="best", verbose=False)
    assert result["test/score"] == pytest.approx(averages[step].sum().item(), abs=1e-5)  # not the raw weights'
    assert abs(averages[step].sum() - recorder.weights[step].sum()) > 1e-3


def test_callbacks_ema_adds_the_average_to_the_default_callbacks_and_checks_its_decay(tmp_path):
    cfg = compose_config(["+experiment=baseline", "callbacks=ema", f"paths.output_dir={tmp_path}"])
    callbacks = build_callbacks(cfg)
    assert [c.decay for c in callbacks if isinstance(c, EMAWeights)] == [cfg.callbacks.ema.decay]
    assert any(isinstance(c, ModelCheckpoint) for c in callbacks)
    with pytest.raises(UserError, match=r"callbacks.ema.decay=1.5 must be in \(0, 1\)"):
        EMAWeights(decay=1.5)
