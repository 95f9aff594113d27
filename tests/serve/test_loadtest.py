"""scripts/loadtest.py end to end on the tiny bundle: it starts the servers, loads them and reports honestly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "loadtest.py"


def run_loadtest(bundle: Path, out: Path, servers: str) -> tuple[str, dict]:
    # the 1 s duration ends each scenario: a request cap (3,000 before) could be spent inside the 0.3 s warm-up on
    # cache hits (over 10,000 requests/s), leaving 0 measured requests
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(bundle), "--servers", servers, "--workers", "1",
         "--litserve-workers", "1", "--scenarios", "throughput,cache", "--duration", "1", "--warmup", "0.3",
         "--requests", "100000", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout, json.loads(out.read_text())


def test_loadtest_speedtrain_against_naive_fastapi(tiny_bundle, tmp_path):
    stdout, report = run_loadtest(tiny_bundle, tmp_path / "load.json", "speedtrain,naive")
    rows = {(r["server"], r["scenario"]): r for r in report["table"]}
    assert set(rows) == {("speedtrain-w1", "throughput"), ("speedtrain-w1", "cache"), ("naive-w1", "throughput")}
    for row in rows.values():
        assert row["requests"] > 50 and row["errors"] == 0 and row["ok"] == row["requests"]
        assert 0 < row["p50_ms"] <= row["p99_ms"]
    assert rows[("speedtrain-w1", "throughput")]["cache_hit_ratio"] == 0  # new texts only
    assert rows[("speedtrain-w1", "cache")]["cache_hit_ratio"] > 0.5  # 85% from 1,000 popular texts
    assert "x naive" in stdout and report["machine"]["cpu"]


@pytest.mark.slow
def test_loadtest_with_litserve(tiny_bundle, tmp_path):
    _, report = run_loadtest(tiny_bundle, tmp_path / "load.json", "litserve")
    (row,) = report["table"]
    assert row["server"] == "litserve-w1" and row["errors"] == 0 and row["requests"] > 50
