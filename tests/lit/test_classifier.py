"""ClassifierModule: the logged keys and the warm-up/decay schedule, read back from the CSV logger."""

from __future__ import annotations

import pandas as pd

from speedtrain.pipeline import run


def test_logged_keys_and_schedule(make_cfg, tmp_path):
    run(make_cfg("+experiment=baseline", "logger=csv", "trainer.log_every_n_steps=1", "module.warmup_ratio=0.25"))
    (csv,) = (tmp_path / "run" / "csv").glob("version_*/metrics.csv")
    df = pd.read_csv(csv)
    for key in ("train/loss", "train/acc", "train/lr", "perf/samples_per_s", "val/loss", "val/acc", "val/f1",
                "test/acc", "test/f1"):
        assert df[key].notna().any(), key
    lr = df["train/lr"].dropna().tolist()  # 8 steps, 2 of warm-up, then linear decay to 0
    peak = 2e-3
    assert lr[0] == 0.0 and abs(max(lr) - peak) < 1e-9
    assert lr.index(max(lr)) == 2 and all(a > b for a, b in zip(lr[2:], lr[3:]))
    assert (df["perf/samples_per_s"].dropna() > 0).all()


def test_a_fused_optimizer_is_clipped_under_bf16(monkeypatch):
    """Lightning refuses to clip for a fused optimizer under mixed precision; without a loss scaler (bf16) the
    module clips itself (the GPU trainers default to fused AdamW + gradient_clip_val)."""
    import functools

    import pytorch_lightning as pl
    import torch

    from speedtrain.lit.classifier import ClassifierModule
    from speedtrain.models.student import build_student

    torch.manual_seed(0)
    model = build_student(100, 3, num_hidden_layers=1, hidden_size=16, num_attention_heads=2, intermediate_size=32)
    module = ClassifierModule(model, 3, functools.partial(torch.optim.AdamW, lr=1e-2, fused=True), scheduler=None)
    ids = torch.randint(1, 100, (64, 8))
    data = [{"input_ids": ids[i : i + 16], "attention_mask": torch.ones(16, 8, dtype=torch.long),
             "labels": torch.randint(0, 3, (16,))} for i in range(0, 64, 16)]
    norms = []
    clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: norms.append(clip(*a, **k)) or norms[-1])
    trainer = pl.Trainer(accelerator="cpu", precision="bf16-mixed", gradient_clip_val=1e-3, max_steps=3, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(data, batch_size=None))
    assert trainer.global_step == 3 and len(norms) == 3 and all(n > 1e-3 for n in norms)  # clipped every step


def test_no_per_step_sync_and_the_fitting_attention(monkeypatch):
    """A training step turns no logged value into a Python number (on a GPU each such read waits for the device):
    the progress bar shows train/loss itself at its refreshes. ``attention`` applies while fitting only."""
    import functools
    import traceback

    import pytorch_lightning as pl
    import torch

    from speedtrain.callbacks.progress import ProgressBar
    from speedtrain.lit.classifier import ClassifierModule
    from speedtrain.models.student import build_student

    torch.manual_seed(0)
    model = build_student(100, 3, num_hidden_layers=1, hidden_size=16, num_attention_heads=2, intermediate_size=32)
    module = ClassifierModule(model, 3, functools.partial(torch.optim.AdamW, lr=1e-2, fused=True), scheduler=None,
                              attention="eager")  # (fused, as on a GPU: the CPU's for-loop AdamW reads its step count)
    seen = []
    forward = module.model.forward
    monkeypatch.setattr(module.model, "forward",
                        lambda *a, **k: seen.append(module.model.config._attn_implementation) or forward(*a, **k))
    items = []  # Tensor.item calls during the training steps (Lightning converts progress-bar values with it)
    item = torch.Tensor.item

    class Watch(pl.Callback):
        def on_train_batch_start(self, *args):
            monkeypatch.setattr(torch.Tensor, "item", lambda t: items.append(traceback.format_stack(limit=6)) or item(t))

        def on_train_batch_end(self, *args):
            monkeypatch.setattr(torch.Tensor, "item", item)

    ids = torch.randint(1, 100, (64, 8))
    data = [{"input_ids": ids[i : i + 16], "attention_mask": torch.ones(16, 8, dtype=torch.long),
             "labels": torch.randint(0, 3, (16,))} for i in range(0, 64, 16)]
    bar = ProgressBar(refresh_rate=2)
    trainer = pl.Trainer(accelerator="cpu", max_steps=4, logger=False, enable_checkpointing=False,
                         enable_model_summary=False, log_every_n_steps=50, callbacks=[Watch(), bar])
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(data, batch_size=None))
    assert trainer.global_step == 4 and not items, "".join(items[0] if items else [])
    assert "train/loss" not in trainer.progress_bar_metrics  # (Lightning reads those after every step)
    assert bar.get_metrics(trainer, module)["train/loss"] == float(trainer.callback_metrics["train/loss"])
    assert set(seen) == {"eager"} and model.config._attn_implementation == "sdpa"  # its own again after training
