"""``speedtrain serve``'s processes: the listening sockets, the uvicorn server of each worker, and the supervisor
that starts the workers, restarts one that dies and stops them all on SIGTERM/SIGINT.

    speedtrain serve outputs/<run>/bundle --port 8000 --workers 2
    curl -s localhost:8000/predict -d '{"texts": ["live horses for breeding", "frozen fish fillets"]}'
    # {"predictions":[{"label":"01","score":0.73},{"label":"03","score":0.98}]}

From Python: ``serve(ServeOptions(bundle=...))``. What a worker does with a request: :mod:`speedtrain.serve.app`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from pathlib import Path

from speedtrain.errors import UserError
from speedtrain.serve.app import ServeApp
from speedtrain.serve.options import ServeOptions, available_cores

log = logging.getLogger(__name__)


def _listen_socket(host: str, port: int, reuse_port: bool):
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({err.strerror}); pick another --port or stop what "
                        "uses it") from None
    return sock


def _uvicorn_server(config):
    """uvicorn's server, but exiting with status 0 after a graceful shutdown on SIGTERM/SIGINT.

    (uvicorn re-raises the signal once it has finished, so the process dies of it, status -15; a shutdown that
    finished every request is a success to a supervisor, systemd or Kubernetes.)
    """
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            with super().capture_signals():
                yield
                self._captured_signals = []  # handled: in-flight requests finished, the server stopped

    return Server(config)


def _run_worker(options_json: str, reuse_port: bool, index: int = 0) -> None:
    """One worker process: its own socket on the shared port (``SO_REUSEPORT``), app, batcher and cache."""
    import uvicorn

    options = ServeOptions(**json.loads(options_json))
    cores = available_cores()
    if options.pin and options.workers > 1 and options.workers * options.threads <= len(cores):
        # the loop thread and the model thread of a worker on the same core(s): a hand-off between them is a
        # context switch, not a wake-up of another (virtual) CPU: 70 vs 240 µs per round trip measured here
        os.sched_setaffinity(0, cores[index * options.threads:(index + 1) * options.threads])
    sock = _listen_socket(options.host, options.port, reuse_port)
    config = uvicorn.Config(ServeApp(options), loop="uvloop", http="httptools", lifespan="on",
                            log_level=options.log_level, access_log=False, backlog=4096,
                            timeout_graceful_shutdown=options.graceful_timeout_s)
    server = _uvicorn_server(config)
    server.run(sockets=[sock])
    if not server.started:  # lifespan startup failed: uvicorn logged why
        raise SystemExit(3)


def serve(options: ServeOptions) -> None:
    """Run the server until SIGINT/SIGTERM, then let in-flight requests finish and stop.

    ``workers`` > 1: that many processes, each listening on the port with ``SO_REUSEPORT``, so the kernel spreads
    connections evenly over them. (uvicorn's own ``--workers`` share one listening socket; measured here, one
    worker then accepted every connection of a benchmark and the other idled — docs/benchmarks.md.)
    """
    import multiprocessing
    import shutil
    import signal
    import socket
    import tempfile

    from speedtrain.config import default_cache_dir

    options.check()
    _listen_socket(options.host, options.port, reuse_port=False).close()  # the port is free (one clear error)
    raw = json.dumps(dataclasses.asdict(options))
    if options.workers == 1:
        _run_worker(raw, reuse_port=False)
        return
    metrics_dir = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # the workers write their metrics to files here and /metrics sums them (prometheus_client's multiprocess
        # mode); a fresh folder per server under the user's cache, removed when the server stops
        root = Path(default_cache_dir()) / "serve"
        root.mkdir(parents=True, exist_ok=True)
        metrics_dir = tempfile.mkdtemp(prefix="metrics-", dir=root)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    reuse_port = hasattr(socket, "SO_REUSEPORT")
    context = multiprocessing.get_context("spawn")
    stopping = []

    def start_worker(index: int):
        process = context.Process(target=_run_worker, args=(raw, reuse_port, index), name=f"speedtrain-worker-{index}")
        process.start()
        return process

    def stop(signum, frame):
        stopping.append(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    workers = [start_worker(i) for i in range(options.workers)]
    print(f"speedtrain serve: {options.workers} workers on http://{options.host}:{options.port} "
          f"(bundle {options.bundle})", flush=True)
    try:
        while not stopping:
            for i, process in enumerate(workers):
                if process.exitcode is not None and not stopping:
                    if process.exitcode == 3:  # the app could not start (e.g. a broken bundle): stop, not respawn
                        raise UserError(f"worker {i} could not load {options.bundle!r}; the lines above say why")
                    log.warning("worker %d exited with %s; starting a new one", i, process.exitcode)
                    from prometheus_client import multiprocess

                    multiprocess.mark_process_dead(process.pid)  # its live gauges (queue depth) stop counting
                    workers[i] = start_worker(i)
            time.sleep(0.2)
    finally:
        for process in workers:  # SIGTERM: each worker stops accepting, finishes in-flight requests, exits
            if process.exitcode is None:
                process.terminate()
        for process in workers:
            process.join(options.graceful_timeout_s + 5)
            if process.exitcode is None:
                process.kill()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
