"""An HTTP server under a load test, run as a subprocess on a free loopback port (scripts/loadtest.py,
scripts/serve_frameworks.py): wait until it answers, read its resident memory and its cache counters, stop it.

    server = ServerProcess("speedtrain-w1", [sys.executable, "-m", "speedtrain.cli", "serve", bundle, "--port",
                           str(port)], port, "/readyz")
    server.wait_ready()
    ...  # speedtrain.bench.http_load.run_load(LoadOptions(url=server.url + "/predict"), bodies)
    server.stop()
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import psutil


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A server subprocess in its own process group (LitServe and uvicorn workers are children); its output goes
    to ``$TMPDIR/loadtest-<name>-<port>.log``."""

    def __init__(self, name: str, command: list[str], port: int, ready_path: str, env: dict | None = None):
        self.name, self.port, self.ready_path = name, port, ready_path
        self.log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"loadtest-{name}-{port}.log", "w")
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**os.environ, **(env or {})})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log.name}")
            try:
                with urllib.request.urlopen(self.url + self.ready_path, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} not ready after {timeout} s; see {self.log.name}")

    def rss_mb(self) -> float:
        try:
            procs = [psutil.Process(self.proc.pid)]
            procs += procs[0].children(recursive=True)
            return sum(p.memory_info().rss for p in procs) / 2**20
        except psutil.Error:
            return float("nan")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def cache_counts(server: ServerProcess) -> tuple[float, float]:
    """The result cache's (hits, misses) so far, from a ``speedtrain serve``'s /metrics (nan, nan if unreachable)."""
    try:
        with urllib.request.urlopen(server.url + "/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return float("nan"), float("nan")
    values = {}
    for line in text.splitlines():
        for name in ("speedtrain_cache_hits_total", "speedtrain_cache_misses_total"):
            if line.startswith(name + " "):
                values[name] = float(line.split()[1])
    return values.get("speedtrain_cache_hits_total", 0.0), values.get("speedtrain_cache_misses_total", 0.0)
