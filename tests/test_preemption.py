"""Preemption-safe runs (issue 26): a stop signal saves where the run is (mid-epoch), exits non-zero with the command
that continues it, and the continued run ends exactly as an uninterrupted one; a SIGKILL while a checkpoint is
being written leaves the previous one loadable; stage 1 and the teacher's labelling continue where they stopped."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from speedtrain.config import compose_config
from speedtrain.pipeline import run
from tests.conftest import REPO, TINY, TINY_RUN, reset_torch_threads, run_train_py
from tests.crash import crash_overrides
from tests.test_train import _cli

# 3 epochs of 4 batches at a learning rate that moves the weights: any change in the steps shows in them
RUN = ["+experiment=baseline", *TINY, "trainer.max_epochs=3", "module.optimizer.lr=1e-2"]
DDP_CPU = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true"]
SIGTERM = "[SIGTERM]"


def _checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


def _assert_same_run(a: Path, b: Path) -> None:
    """The same final metrics, optimizer steps and bit-identical weights."""
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    for key in ("val/acc", "val/loss", "test/acc", "test/loss", "global_step", "epochs"):
        assert ma[key] == mb[key], key
    wa, wb = _checkpoint(a)["state_dict"], _checkpoint(b)["state_dict"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The uninterrupted run of RUN, in this process."""
    reset_torch_threads()  # as the tests' own fixture does (a module fixture is set up before it)
    out = tmp_path_factory.mktemp("straight") / "run"
    run(compose_config([*RUN, f"paths.output_dir={out}"]))
    return out


def test_on_device_batches_resume_mid_epoch_too(tmp_path):
    """The GPU trainers' batching (data.on_device), here on the CPU; the stop signal arrives in this process."""
    args = [*RUN, "data.on_device=true"]
    run(compose_config([*args, f"paths.output_dir={tmp_path / 'straight'}"]))
    killed = [*args, f"paths.output_dir={tmp_path / 'killed'}"]
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    with pytest.raises(SystemExit) as stop:
        run(compose_config([*killed, *crash_overrides(tmp_path / "marker", batch=1, signals=SIGTERM)]))
    assert stop.value.code == 143 and _checkpoint(tmp_path / "killed")["global_step"] == 6
    assert {s: signal.getsignal(s) for s in before} == before  # the run's handlers are gone with it
    run(compose_config(killed))  # the same config again: it continues from last.ckpt
    _assert_same_run(tmp_path / "straight", tmp_path / "killed")


@pytest.mark.slow  # three 2-process runs: ~85 s on 2 cores, past the default suite's budget (run: pytest -m slow)
def test_sigterm_to_rank_0_of_two_ddp_processes_stops_both_and_resumes_exactly(tmp_path):
    straight = _cli(*RUN, *DDP_CPU, f"hydra.run.dir={tmp_path / 'straight'}", cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = tmp_path / "killed"
    # only rank 0 gets the signal (``kill <pid>``): the ranks agree to stop after the same step
    stopped = _cli(*RUN, *DDP_CPU, f"hydra.run.dir={killed}",
                   *crash_overrides(tmp_path / "marker", signals=SIGTERM, rank=0), cwd=tmp_path)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert stopped.stderr.count("speedtrain: stopped by SIGTERM in epoch 1 after batch 3 of 4") == 1  # rank 0 says it
    assert _checkpoint(killed)["global_step"] == 7
    resumed = _cli(f"resume={killed}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_run(tmp_path / "straight", killed)


def test_sigkill_while_writing_a_checkpoint_leaves_the_previous_one_loadable(straight, tmp_path):
    killed = tmp_path / "killed"
    # a checkpoint after every step (by time: every_minutes as good as 0); the write after step 6 is cut halfway
    crashed = _cli(*RUN, f"hydra.run.dir={killed}", "callbacks.checkpoint.every_minutes=1e-9",
                   "+callbacks.crash._target_=tests.crash.KillDuringSave", "+callbacks.crash.step=6",
                   f"+callbacks.crash.marker={tmp_path / 'marker'}", cwd=tmp_path)
    assert crashed.returncode == -9 and (tmp_path / "marker").is_file(), crashed.stderr[-3000:]
    assert _checkpoint(killed)["global_step"] == 5  # the previous, mid-epoch one, whole
    assert list((killed / "checkpoints").glob(".last.ckpt.*.tmp"))  # the half-written file never replaced it
    run_train_py(f"resume={killed}", cwd=tmp_path)  # continues from step 5 with batch 2 of epoch 1
    _assert_same_run(straight, killed)
    assert not list((killed / "checkpoints").glob(".last.ckpt.*.tmp"))  # the next write cleared it


def test_a_crash_resumes_from_the_end_of_epoch_checkpoint_exactly(straight, tmp_path):
    """A run that fails (no signal: nothing saved then) continues from the last.ckpt of its last validation: the
    loader starts the next epoch from its first batch, also when limit_train_batches cuts the epochs short."""
    from tests.crash import Crash

    args = [*RUN, f"paths.output_dir={tmp_path / 'crashed'}"]
    with pytest.raises(Crash):
        run(compose_config([*args, *crash_overrides(tmp_path / "marker", batch=0, signals="[]")]))
    saved = _checkpoint(tmp_path / "crashed")
    assert saved["global_step"] == 4 and saved["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [
        {"epoch": 0, "batches": 4, "of": 4}]  # the end of epoch 0 (4 of the loader's 71 batches)
    run(compose_config(args))
    _assert_same_run(straight, tmp_path / "crashed")


def test_sigterm_in_stage_1_keeps_the_teachers_progress(tiny_teacher_dir, tmp_path, caplog):
    args = [*TINY_RUN, "+experiment=distill", "distill=logits", f"teacher.source={tiny_teacher_dir}",
            "teacher.max_length=24", "teacher.cache=false", "trainer.max_epochs=3", *TINY[len(TINY_RUN):]]
    killed = [*args, f"paths.output_dir={tmp_path / 'killed'}"]
    with pytest.raises(SystemExit) as stop:  # stage 1's fit gets the signal
        run(compose_config([*killed, *crash_overrides(tmp_path / "marker", batch=1, signals=SIGTERM)]))
    assert stop.value.code == 143
    teacher_ckpt = tmp_path / "killed" / "teacher" / "checkpoints" / "last.ckpt"
    assert torch.load(teacher_ckpt, map_location="cpu", weights_only=False)["global_step"] == 6
    with caplog.at_level(logging.INFO, logger="speedtrain"):
        run(compose_config(killed))
    assert f"Resuming from {teacher_ckpt} (epoch 1, step 6, 2 batches of epoch 1 trained on)" in caplog.text
    teacher = json.loads((tmp_path / "killed" / "teacher" / "metrics.json").read_text())
    assert teacher["resumed_from"] == str(teacher_ckpt) and teacher["global_step"] == teacher["epochs"] * 4  # none twice
    assert "test/acc" in json.loads((tmp_path / "killed" / "metrics.json").read_text())  # then the student


def test_sigterm_while_the_teacher_labels_keeps_its_finished_shards(fine_tuned_teacher, tmp_path, monkeypatch,
                                                                    caplog):
    from speedtrain.distill import logit_cache
    from speedtrain.models.teacher import load_classifier, load_tokenizer
    from speedtrain.stopping import handle_stop_signals

    teacher = load_classifier(str(fine_tuned_teacher), num_labels=96, fine_tuned=True)
    tokenizer = load_tokenizer(fine_tuned_teacher)
    texts = [f"{'fresh ' * (i % 7)}item number {i} of steel" for i in range(1_000)]
    expected = logit_cache.teacher_outputs(teacher, tokenizer, texts, 24)  # in one go, nothing on disk
    monkeypatch.setattr(logit_cache, "SHARD_TEXTS", 256)  # 4 shards of 2 batches
    batches = logit_cache._batch_outputs
    calls = []

    def signalled(*args):
        calls.append(1)
        if len(calls) == 3:  # in the second shard
            signal.raise_signal(signal.SIGTERM)
        return batches(*args)

    monkeypatch.setattr(logit_cache, "_batch_outputs", signalled)
    cache = tmp_path / "cache"
    with pytest.raises(SystemExit) as stop, handle_stop_signals():
        logit_cache.cached_teacher_outputs(fine_tuned_teacher, teacher, tokenizer, texts, 24, cache)
    assert stop.value.code == 143 and "the outputs of 512 are kept in" in stop.value.message
    (parts,) = (cache / "logits").glob("*.parts")
    assert sorted(p.name for p in parts.glob("*.npz")) == ["000000.npz", "000001.npz"] and len(calls) == 4

    with caplog.at_level(logging.INFO, logger="speedtrain"):
        outputs, from_cache = logit_cache.cached_teacher_outputs(fine_tuned_teacher, teacher, tokenizer, texts, 24,
                                                                 cache)
    assert "reused 512 of 1,000 texts (2 shards)" in caplog.text and len(calls) == 8  # 2 shards left: 4 batches
    assert not from_cache and np.array_equal(outputs["logits"], expected["logits"])
    assert not parts.exists() and len(list((cache / "logits").glob("*.npz"))) == 1


def test_a_second_signal_stops_at_once(tmp_path):
    script = (
        "import os, signal, time\n"
        "from speedtrain import stopping\n"
        "with stopping.handle_stop_signals():\n"
        "    stopping.defer()\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    print('first: remembered', stopping.requested(), flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(5)\n"
        "    print('not reached', flush=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == -signal.SIGTERM, done.stderr
    assert done.stdout == "first: remembered 15\n" and "stopping at once" in done.stderr


@pytest.mark.parametrize("override,expected", [
    ("callbacks.checkpoint.signals=[SIGTERM,SIGBOGUS]", "'SIGBOGUS' is not a signal this process can catch"),
    ("callbacks.checkpoint.every_minutes=0", "callbacks.checkpoint.every_minutes=0 must be positive"),
])
def test_bad_checkpoint_settings_are_one_line_and_exit_2(override, expected, tmp_path, monkeypatch, capsys):
    import train

    monkeypatch.setattr(sys, "argv", ["train.py", *RUN, f"hydra.run.dir={tmp_path / 'run'}", override])
    with pytest.raises(SystemExit) as exit_info:
        train.main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("speedtrain: error:") == 1, err
    assert expected in err and "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()  # stopped before any work


@pytest.mark.parametrize("workers", [0, 2])
def test_a_restored_loader_skips_the_batches_trained_on_then_draws_whole_epochs(workers):
    """The DataLoader path alone, also with persistent worker processes (they keep their iterator across epochs)."""
    from speedtrain.data.datamodule import SeededSampler
    from speedtrain.data.resumable import ResumableDataLoader

    def loader(position=None):
        sampler = SeededSampler(40, seed=3)
        return ResumableDataLoader(list(range(40)), batch_size=4, sampler=sampler, num_workers=workers,
                                   persistent_workers=workers > 0, position=position)

    def epoch(dl, number):
        dl.sampler.set_epoch(number)
        return [b.tolist() for b in dl]

    whole = loader()
    expected = {e: epoch(whole, e) for e in (1, 2)}
    assert expected[1] != expected[2] and len(expected[1]) == 10
    state = loader(position=lambda: (1, 3, 10)).state_dict()  # saved after 3 batches of epoch 1
    assert state == {"epoch": 1, "batches": 3, "of": 10}
    restored = loader()
    restored.load_state_dict(state)
    assert [b.tolist() for b in restored] == expected[1][3:]  # the rest of epoch 1: its order, from batch 4
    assert epoch(restored, 2) == expected[2]  # then whole epochs again
    for of in (10, 4):  # saved at the end of epoch 1 (of its 10 batches, or of 4: limit_train_batches=4)
        at_end = loader()
        at_end.load_state_dict({"epoch": 1, "batches": of, "of": of})
        assert at_end.sampler.epoch == 2 and [b.tolist() for b in at_end] == expected[2]  # epoch 2 from its start


def test_on_device_batches_skip_the_batches_trained_on_once():
    from speedtrain.data.device import DeviceBatches, DeviceTable

    table = DeviceTable({"labels": np.arange(40)}, {"": (np.ones((40, 4), np.int64), np.full(40, 4))})
    current = {"epoch": 1}
    batches = DeviceBatches(table, 4, shuffle=True, bucket=0, seed=3, epoch=lambda: current["epoch"])
    expected = [b["labels"].tolist() for b in batches]
    batches.load_state_dict({"epoch": 1, "batches": 3})
    assert [b["labels"].tolist() for b in batches] == expected[3:]
    assert [b["labels"].tolist() for b in batches] == expected  # once only


def test_a_signal_outside_training_stops_at_once_and_says_what_next(make_cfg, tmp_path, monkeypatch, capsys):
    import speedtrain.pipeline as pipeline

    build = pipeline.build_datamodule

    def signalled(cfg):  # SIGTERM while the data is being prepared: nothing to save there
        signal.raise_signal(signal.SIGTERM)
        return build(cfg)

    monkeypatch.setattr(pipeline, "build_datamodule", signalled)
    with pytest.raises(SystemExit) as stop:
        run(make_cfg("+experiment=baseline"))
    assert stop.value.code == 143
    err = capsys.readouterr().err
    assert err.count("speedtrain: stopped by SIGTERM outside training") == 1 and "run the same command again" in err
    assert not (tmp_path / "run" / "checkpoints").exists()
