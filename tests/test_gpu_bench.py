"""scripts/gpu_bench.py on the CPU: its single-device rows run (tiny student, a few steps) and its step timer
restarts a window that a compile spoiled. The GPU numbers themselves come from running it on GPUs."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.conftest import REPO

TINY_STUDENT = ["model.hidden_size=16", "model.intermediate_size=32", "model.num_hidden_layers=1"]


def _bench():
    spec = importlib.util.spec_from_file_location("gpu_bench", REPO / "scripts" / "gpu_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rows_run_on_the_cpu(tmp_path, capsys):
    """The script's main in this process (no Python start-up for it); each row still runs in its own process, as
    the script starts them."""
    out, table = tmp_path / "bench.json", tmp_path / "bench.md"
    args = ["--rows", "b1,h1", "--batch", "16", "--warmup", "2", "--steps", "3", "--json", str(out), "--write",
            str(table)]
    args += [x for o in TINY_STUDENT for x in ("--override", o)]
    _bench().main(args)  # a failed row is recorded as {"error": its stderr}: the checks below then fail
    printed = capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    assert not any("error" in row for row in rows.values()), printed[-3000:]
    assert set(rows) == {"b1", "h1"}
    for name, row in rows.items():
        assert row["samples_per_s"] > 0 and row["steps"] == 3 and row["samples"] == 48, (name, row)
        assert row["flops_per_sample"] > 0 and row["kind"] == ("cache" if name == "b1" else "hand")
    text = table.read_text()
    assert "| b1 | (b) speedtrain, logit cache |" in text and "| h1 | hand-written loop" in text


def test_a_compile_inside_the_window_restarts_it(monkeypatch):
    from speedtrain.callbacks import step_timer

    graphs = {"n": 5}
    monkeypatch.setattr(step_timer, "compiled_graphs", lambda: graphs["n"])
    timer = step_timer.StepTimer(warmup=2, steps=3, out=None)
    step = 0
    while timer.result is None and step < 20:
        timer.step_start(step)
        if step == 3:  # a new shape compiled during the timed window
            graphs["n"] += 1
        timer.step_end(step + 1, 10)
        step += 1
    assert timer.result["restarts"] == 1 and timer.result["steps"] == 3 and timer.result["samples"] == 30
    assert step == 7  # window [2, 5) spoiled at step 3, timed again over [4, 7)


def test_without_a_gpu_it_asks_for_rows(monkeypatch):
    """Without CUDA and without --rows it stops at once (not hours of CPU rows); in-process, so that on a GPU machine
    too it checks the message instead of starting the benchmark."""
    bench = _bench()
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as stop:
        bench.main([])
    assert "no CUDA GPU here" in str(stop.value.code) and "--rows" in str(stop.value.code)
