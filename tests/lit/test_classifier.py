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
