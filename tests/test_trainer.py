"""Trainer configs on the CPU: every strategy built from config, the global batch and lr scaling, the errors for a
machine that cannot run a trainer, and the on-device data path (its plan, its sharding, a run through it)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from pytorch_lightning.strategies import DDPStrategy, DeepSpeedStrategy

from speedtrain.builders import build_datamodule
from speedtrain.config import compose_config, config_dir
from speedtrain.data.device import DeviceBatches
from speedtrain.errors import UserError
from speedtrain.pipeline import run
from speedtrain.trainer import batch_plan, build_trainer, check_trainer, labelling_device, predict_trainers
from tests.conftest import EXPORT_TINY, TINY, run_train_py

TRAINERS = sorted(p.stem for p in (config_dir() / "trainer").glob("*.yaml"))


def test_every_trainer_config_builds_its_strategy():
    assert {"cpu", "gpu", "ddp", "deepspeed_stage1", "deepspeed_stage2", "deepspeed_stage3",
            "deepspeed_stage3_offload"} <= set(TRAINERS)
    for name in TRAINERS:
        t = compose_config(["+experiment=distill", f"trainer={name}"]).trainer
        strategy = instantiate(t.strategy) if "strategy" in t else None
        if name.startswith("deepspeed"):
            assert isinstance(strategy, DeepSpeedStrategy), name
            zero = strategy.config["zero_optimization"]
            assert zero["stage"] == int(name[len("deepspeed_stage")]), name
            assert ("offload_optimizer" in zero and "offload_param" in zero) == name.endswith("offload"), name
            assert strategy.config["train_micro_batch_size_per_gpu"] == 128  # data.batch_size: the static recipe
        elif name == "ddp":
            assert isinstance(strategy, DDPStrategy) and strategy._ddp_kwargs["gradient_as_bucket_view"]
        else:
            assert strategy is None and t.devices == 1
        assert t.accelerator == ("cpu" if name == "cpu" else "gpu") and "speed" in t


def test_runs_of_several_processes_label_with_a_ddp_predict_trainer(tmp_path):
    """One process labels in process (None); DDP gets a Trainer of the run's devices and strategy for the predict
    loop, without loggers or checkpoints (DeepSpeed's needs CUDA: its factory exists, built on a GPU only)."""
    base = ["+experiment=distill", f"paths.output_dir={tmp_path}"]
    assert predict_trainers(compose_config([*base, "trainer=cpu"])) is None
    assert predict_trainers(compose_config([*base, "trainer=deepspeed_stage2"])) is not None
    make = predict_trainers(compose_config([*base, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                                            "trainer.precision=32-true"]))
    marker = pl.Callback()
    trainer = make([marker])
    assert isinstance(trainer.strategy, DDPStrategy) and trainer.world_size == 2 and trainer.num_devices == 2
    assert trainer.strategy._ddp_kwargs["gradient_as_bucket_view"]  # the run's own DDP strategy node
    assert marker in trainer.callbacks and not trainer.loggers and trainer.checkpoint_callback is None


def test_global_batch_and_lr_scaling_follow_the_trainer(tmp_path):
    base = [*TINY, "+experiment=baseline", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
            "trainer.precision=32-true", "trainer.accumulate_grad_batches=3", "data.batch_size=16",
            "module.optimizer.lr=1e-3", f"paths.output_dir={tmp_path}"]
    for rule, factor in (("sqrt", math.sqrt(6)), ("linear", 6.0), ("none", 1.0)):
        cfg = compose_config([*base, f"trainer.speed.lr_scaling={rule}"])
        plan = batch_plan(cfg, build_trainer(cfg))
        assert plan["global_batch_size"] == 16 * 2 * 3 and plan["world_size"] == 2
        assert plan["lr"] == pytest.approx(1e-3 * factor) and plan["lr_base"] == 1e-3


def test_a_trainer_this_machine_cannot_run_fails_first_with_the_fix(make_cfg, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match=r"trainer.accelerator=gpu needs a CUDA GPU.*use trainer=cpu"):
        run(make_cfg("+experiment=baseline", "trainer=gpu"))
    for name in ("deepspeed_stage2", "deepspeed_stage3_offload"):
        with pytest.raises(UserError, match=r"DeepSpeed ZeRO\) needs CUDA GPUs.*use trainer=cpu"):
            run(make_cfg("+experiment=baseline", f"trainer={name}"))
    with pytest.raises(UserError, match=r"needs CUDA GPUs, and trainer.accelerator=cpu"):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        check_trainer(make_cfg("+experiment=baseline", "trainer=deepspeed_stage2", "trainer.accelerator=cpu"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(UserError, match=r"trainer.devices=4 but this machine has 2 CUDA GPU\(s\); use "
                                        r"trainer.devices=2 or fewer"):
        check_trainer(make_cfg("+experiment=baseline", "trainer=ddp", "trainer.devices=4"))
    with pytest.raises(UserError, match=r"trainer.devices=2 with trainer.strategy=auto: .*trainer=ddp"):
        check_trainer(make_cfg("+experiment=baseline", "trainer=gpu", "trainer.devices=2"))
    with pytest.raises(UserError, match=r"trainer.speed.compile='fast' is not one of"):
        check_trainer(make_cfg("+experiment=baseline", "trainer.speed.compile=fast"))
    with pytest.raises(UserError, match=r"trainer.speed.attention='flash' is not one of"):
        check_trainer(make_cfg("+experiment=baseline", "trainer.speed.attention=flash"))
    check_trainer(make_cfg("+experiment=baseline", "trainer=ddp", "trainer.devices=2"))  # fits: no error


def test_train_py_without_cuda_exits_2_with_one_line(tmp_path, capsys):
    """train.py's main in this process (test_train.py checks exit code 2 of a real ``python train.py``)."""
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit) as exit_info:
        run_train_py("+experiment=baseline", "trainer=deepspeed_stage2", "logger=none",
                     f"hydra.run.dir={tmp_path / 'run'}")
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2, stderr[-2000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("speedtrain: error: trainer.strategy=deepspeed (DeepSpeed ZeRO) needs CUDA GPUs")
    assert not any("Traceback" in line for line in lines)
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.fixture(scope="module")
def datamodule(tmp_path_factory):
    cfg = compose_config([*TINY, "+experiment=baseline", f"paths.output_dir={tmp_path_factory.mktemp('dm')}"])
    dm = build_datamodule(cfg)
    dm.prepare()
    return dm


def _rows(batches: DeviceBatches, epoch: int) -> list[np.ndarray]:
    rows, plan = batches.plan(epoch)
    return [rows[start : start + size] for start, size, _ in plan]


def test_device_batches_cover_every_row_in_length_buckets(datamodule):
    table = datamodule.table("train")
    n, lengths = len(table), table.lengths[""]
    train = DeviceBatches(table, batch_size=32, shuffle=True, bucket=8, seed=5, epoch=lambda: 1)
    groups = _rows(train, 1)
    seen = np.concatenate(groups)
    assert set(seen.tolist()) == set(range(n))  # every row, none dropped
    assert len(seen) - n == -n % 32  # the last batch topped up with that many rows seen twice this epoch
    assert len(train) == len(groups) == math.ceil(n / 32)
    assert {len(g) for g in groups} == {32}  # one batch size: compiled shapes stay one per bucket
    ds = datamodule.encoded["train"]
    for batch, rows in zip(train, groups):
        width = batch["input_ids"].shape[1]
        assert width % 8 == 0 or width == datamodule.max_length
        assert (batch["attention_mask"].sum(1).numpy() == lengths[rows]).all()
        assert width < lengths[rows].max() + 8  # padded to the bucket, not to max_length
        for i in (0, len(rows) - 1):  # the collator's ids and label for the same row
            assert batch["input_ids"][i, : lengths[rows[i]]].tolist() == ds[int(rows[i])]["input_ids"]
            assert int(batch["labels"][i]) == ds[int(rows[i])]["label"]
    widths = {b["input_ids"].shape[1] for b in train}
    assert len(widths) >= 3 and max(widths) <= datamodule.max_length  # several buckets on this data
    again = DeviceBatches(table, batch_size=32, shuffle=True, bucket=8, seed=5)
    assert all((a == b).all() for a, b in zip(_rows(again, 1), groups))  # (seed, epoch) fixes the order
    assert not all(len(a) == len(b) and (a == b).all() for a, b in zip(_rows(again, 2), groups))


def test_online_batches_follow_the_teacher_lengths():
    """With the teacher's tokens in the table (online distillation) a batch holds texts of one teacher-length bucket:
    the teacher, the costlier forward, pads little; the student's width still covers its own rows."""
    from speedtrain.data.device import DeviceTable

    rng = np.random.default_rng(0)
    n, student, teacher = 1000, rng.integers(1, 33, 1000), rng.integers(1, 65, 1000)
    tokens = {"": (np.ones((n, 32), np.int64), student), "teacher_": (np.ones((n, 64), np.int64), teacher)}
    table = DeviceTable({"labels": np.zeros(n, np.int64)}, tokens)
    batches = DeviceBatches(table, batch_size=20, shuffle=True, bucket=8, seed=3)
    rows, plan = batches.plan(0)
    one_bucket = 0
    for start, size, widths in plan:
        r = rows[start : start + size]
        assert widths[""] >= student[r].max() and widths["teacher_"] >= teacher[r].max()
        one_bucket += int((teacher[r] > widths["teacher_"] - 8).all())
    assert one_bucket >= len(plan) - 8  # all but the leftover batches (at most one per bucket)


def test_device_batches_split_across_ranks(datamodule):
    table = datamodule.table("train")
    ranks = [DeviceBatches(table, batch_size=16, shuffle=True, seed=1, rank=r, world=2) for r in range(2)]
    a, b = _rows(ranks[0], 0), _rows(ranks[1], 0)
    assert len(a) == len(b) and [len(x) for x in a] == [len(x) for x in b]  # the same steps on every rank
    assert [w for *_, w in ranks[0].plan(0)[1]] == [w for *_, w in ranks[1].plan(0)[1]]  # and the same shapes
    seen = np.concatenate(a + b)
    assert set(seen.tolist()) == set(range(len(table)))  # every row; only the last batch's top-up repeats
    assert len(seen) == math.ceil(len(table) / 32) * 32 and {len(x) for x in a} == {16}
    evals = [DeviceBatches(datamodule.table("validation"), 64, shuffle=False, rank=r, world=2) for r in range(2)]
    rows = np.concatenate([np.concatenate(_rows(e, 0)) for e in evals])
    assert sorted(rows.tolist()) == list(range(len(datamodule.encoded["validation"])))


def test_a_run_on_the_device_path(make_cfg, tmp_path, fine_tuned_teacher, monkeypatch):
    """The on-device path through the pipeline (CPU tensors here): a baseline run trained with the GPU trainers'
    eager attention whose export (and model/) keeps the model's own SDPA, and online distillation whose batches
    carry the teacher's own tokens."""
    import speedtrain.callbacks.export_bench as export_bench

    exported = []  # the attention of the model the export callback builds the bundle from
    build = export_bench.build_bundle
    def recording(model, *args, **kwargs):
        exported.append(model.config._attn_implementation)
        return build(model, *args, **kwargs)

    monkeypatch.setattr(export_bench, "build_bundle", recording)
    run(make_cfg("+experiment=baseline", "data.on_device=true", "trainer.limit_train_batches=null",
                 "trainer.max_epochs=1", "data.batch_size=256", "trainer.speed.attention=eager", *EXPORT_TINY))
    assert exported == ["sdpa"]  # trained with eager attention, exported with the model's own
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["speed"]["data_on_device"] is True and metrics["val/acc"] > 0.03  # chance: 1/96
    assert metrics["speed"]["attention"] == "eager" and metrics["bundle"]  # exported (a failed export raises)
    assert metrics["global_step"] == math.ceil(metrics["data"]["train"] / 256)  # each row once, buckets + leftovers
    out = tmp_path / "online"
    run(make_cfg("+experiment=distill", "distill=logits", "distill.teacher_logits=online", "distill.augment.copies=0",
                 f"teacher.path={fine_tuned_teacher}", "teacher.max_length=24", "data.on_device=true",
                 f"paths.output_dir={out}"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["distill/teacher_logits"] == "online" and metrics["global_step"] == 8


def test_parameter_count_of_zero3_placeholders():
    """ZeRO-3 leaves empty placeholders in the module; the count reads DeepSpeed's full sizes."""
    from speedtrain.models.student import count_parameters

    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 3))
    full = count_parameters(model)
    for p in model.parameters():
        p.ds_numel = p.numel()
        p.data = torch.empty(0)
    assert count_parameters(model) == full == {"params_total": 55, "params_non_embedding": 55}


def test_the_old_data_speed_keys_name_their_new_place(tmp_path):
    """``+trainer.speed.data_on_device=true`` (Hydra's hint for the moved key) must not be ignored silently."""
    cfg = compose_config(["+experiment=baseline", "+trainer.speed.data_on_device=true", f"paths.output_dir={tmp_path}"])
    with pytest.raises(UserError, match=r"trainer.speed.data_on_device is now data.on_device: pass data.on_device=True"):
        check_trainer(cfg)
    check_trainer(compose_config(["+experiment=baseline", "data.on_device=true", f"paths.output_dir={tmp_path}"]))



RSS_AFTER_FREE = """
import numpy as np
from speedtrain.callbacks.memory import KeepFreedMemory
def rss_mb():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) / 1024
def returned_at_free():
    block = np.ones(8 << 20)  # 64 MB, every page touched: above glibc's default mmap threshold (32 MB at most)
    held = rss_mb()
    del block
    return held - rss_mb(), held
default = returned_at_free()[0]  # glibc's own thresholds first (a 64 MB block does not move them)
callback = KeepFreedMemory()
callback.on_train_start(None, None)
kept, held = returned_at_free()
callback.on_train_end(None, None)
print(callback.applied is False, default, kept, held - rss_mb())
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux only")
def test_keep_freed_memory_keeps_a_freed_block_while_training_and_returns_it_after(tmp_path, make_cfg):
    """trainer.speed.keep_freed_memory: while training, a freed 64 MB block stays in the process (the next step reuses
    its pages instead of page-faulting them in again); when training ends it goes back to the OS."""
    import platform
    import subprocess
    import sys

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc's malloc only")
    script = tmp_path / "rss.py"
    script.write_text(RSS_AFTER_FREE)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True).stdout.split()
    done, (default, kept, returned_at_end) = out[0] == "True", map(float, out[1:])
    assert default > 56  # glibc's own thresholds: the block went back to the OS at once
    assert kept < 8 and returned_at_end > 56 and done  # kept while training, returned when it ends
    assert compose_config(overrides=[]).trainer.speed.keep_freed_memory is True
    for keep in (True, False):
        trainer = build_trainer(make_cfg("logger=none", f"trainer.speed.keep_freed_memory={keep}"), prefix="x")
        assert sum(type(c).__name__ == "KeepFreedMemory" for c in trainer.callbacks) == keep


def test_a_gpu_run_of_one_process_labels_on_the_gpu(monkeypatch):
    """The teacher of a one-process GPU run labels its texts there, not with the host's cores."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert labelling_device(compose_config(["trainer=gpu"])) == "cuda"
    assert labelling_device(compose_config(["trainer.accelerator=auto"])) == "cuda"
    assert labelling_device(compose_config([])) == "cpu"  # trainer=cpu: the default
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert labelling_device(compose_config(["trainer.accelerator=auto"])) == "cpu"
