"""``speedtrain serve``: a bundle behind an HTTP API with micro-batching, a result cache and several workers.

    speedtrain serve outputs/<run>/bundle --port 8000 --workers 2
    curl -s localhost:8000/predict -d '{"texts": ["live horses for breeding", "frozen fish fillets"]}'
    # {"predictions":[{"label":"01","score":0.73},{"label":"03","score":0.98}]}

Endpoints: ``POST /predict`` (``{"texts": [...]}`` or ``{"text": "..."}``), ``GET /healthz`` (the process
answers), ``GET /readyz`` (model loaded and not shutting down), ``GET /metrics`` (Prometheus), ``GET /docs`` and
``GET /openapi.json``.

How a request is served (each worker process; the workers share the port):

1. The body is read up to ``max_body_bytes`` (413 beyond), parsed with orjson (400 if it is not JSON), checked
   (422 for wrong types or an empty list, 413 past ``max_texts`` texts or ``max_text_chars`` characters).
2. Texts found in the LRU result cache are answered at once, on the event loop.
3. The others join the micro-batcher's queue; a full queue (``max_queue`` texts) answers 503 with ``Retry-After``
   instead of letting latency grow without bound.
4. One batching task takes everything queued (up to ``max_batch_size`` texts; after an idle spell it first waits
   ``max_wait_ms`` for company) and runs tokenizer + model + softmax in a thread, so the event loop keeps
   accepting and answering while the model works. Under load the next batch fills while the current one runs.

The app is a plain ASGI callable (no web framework): docs/benchmarks.md has the measurements that chose it and
uvicorn (uvloop + httptools) over Starlette, FastAPI, granian and LitServe.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import hmac
import json
import logging
import os
import time
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import orjson

from speedtrain.errors import UserError
from speedtrain.export.bundle import read_manifest

log = logging.getLogger(__name__)

OPTIONS_ENV = "SPEEDTRAIN_SERVE_OPTIONS"  # the options, as JSON, for the worker processes
API_KEY_ENV = "SPEEDTRAIN_API_KEY"


@dataclasses.dataclass
class ServeOptions:
    """Everything ``speedtrain serve`` takes (its flags have the same names)."""

    bundle: str = ""
    variant: str = "fast"
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 0  # processes sharing the port, each with its own model, batcher and cache; 0: one per core
    threads: int = 0  # model threads per worker; 0: the cores divided among the workers
    pin: bool = True  # several workers: give each its own cores (when they go round), halving hand-off latency
    max_batch_size: int = 64  # texts per model call
    max_wait_ms: float = 0.0  # after an idle spell, how long the batcher waits for company (0: batches form
    # from what arrives while the model is busy; measured here: 0 gave 5.6 vs 7.2 ms p50 at 8 connections)
    max_queue: int = 2048  # texts waiting for the model (per worker); beyond: 503
    max_texts: int = 256  # texts per request; beyond: 413
    max_text_chars: int = 2000  # characters per text; beyond: 413 (the model reads at most max_length tokens)
    max_body_bytes: int = 1 << 20  # request body; beyond: 413
    cache_size: int = 65536  # results kept per worker (LRU); 0 turns the cache off
    api_key: str | None = None  # when set, requests need "X-API-Key: <key>" or "Authorization: Bearer <key>"
    graceful_timeout_s: float = 30.0  # on SIGTERM/SIGINT, how long in-flight requests get to finish
    log_level: str = "warning"

    def check(self) -> ServeOptions:
        """Check every value (a :class:`UserError` names the first bad one and its fix) and resolve the automatic
        ones (``workers`` and ``threads`` 0)."""
        positive = ("max_batch_size", "max_queue", "max_texts", "max_text_chars", "max_body_bytes")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise UserError(f"--{name.replace('_', '-')}={value} must be a positive integer")
        for name in ("workers", "threads", "cache_size"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name.replace('_', '-')}={getattr(self, name)} must be >= 0")
        if self.max_wait_ms < 0:
            raise UserError(f"--max-wait-ms={self.max_wait_ms} must be >= 0 (0: never wait for company)")
        if not 0 < self.port < 65536:
            raise UserError(f"--port={self.port} must be between 1 and 65535")
        if self.max_queue < self.max_batch_size:
            raise UserError(f"--max-queue={self.max_queue} must be >= --max-batch-size={self.max_batch_size}")
        if not (Path(self.bundle) / "speedtrain.json").is_file():
            raise UserError(f"{self.bundle!r} is not a bundle (no speedtrain.json); pass the bundle folder a run "
                            "wrote, e.g. outputs/<date>/<time>/bundle")
        if not self.workers:
            self.workers = len(available_cores())
        if not self.threads:
            self.threads = max(1, len(available_cores()) // self.workers)
        manifest = read_manifest(self.bundle)
        if self.variant != "fast" and self.variant not in manifest["variants"]:
            raise UserError(f"--variant={self.variant} is not in the bundle {self.bundle}; it has "
                            f"{sorted(manifest['variants'])} (or 'fast')")
        return self


def available_cores() -> list[int]:
    """The CPUs this process may run on (a container's or ``taskset``'s share, not the whole machine)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


class Overloaded(Exception):
    """The batcher's queue is full."""


class MicroBatcher:
    """Groups the texts of concurrent requests into model calls, run one at a time in a worker thread.

    ``infer(texts) -> list`` gets at most ``max_batch_size`` texts (more only when a single request brings more)
    and returns one result per text.
    """

    def __init__(self, infer, max_batch_size: int, max_wait_s: float, max_queue: int, on_batch=None):
        self.infer, self.max_batch_size, self.max_wait_s, self.max_queue = infer, max_batch_size, max_wait_s, max_queue
        self.on_batch = on_batch or (lambda size, queued: None)
        self.pending: deque[tuple[list[str], asyncio.Future]] = deque()
        self.queued = 0  # texts in self.pending
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="speedtrain-model")
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def submit(self, texts: list[str]) -> asyncio.Future:
        """A future for the results of ``texts``; raises :class:`Overloaded` when the queue is full."""
        if self._closing:
            raise Overloaded("shutting down")
        if self.queued and self.queued + len(texts) > self.max_queue:
            raise Overloaded(f"overloaded: {self.queued} texts are waiting for the model (--max-queue "
                             f"{self.max_queue})")
        future = asyncio.get_running_loop().create_future()
        self.pending.append((texts, future))
        self.queued += len(texts)
        self._wakeup.set()
        return future

    async def close(self) -> None:
        """Finish what is queued, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        self.executor.shutdown(wait=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.pending:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                if self.max_wait_s and self.queued < self.max_batch_size and not self._closing:
                    await asyncio.sleep(self.max_wait_s)  # the model was idle: let concurrent requests join
                continue
            batch, texts = [], []
            while self.pending and (not texts or len(texts) + len(self.pending[0][0]) <= self.max_batch_size):
                item = self.pending.popleft()
                batch.append(item)
                texts.extend(item[0])
            self.queued -= len(texts)
            self.on_batch(len(texts), self.queued)
            try:
                results = await loop.run_in_executor(self.executor, self.infer, texts)
            except Exception as err:  # a model failure fails these requests (500), not the server
                log.exception("model call failed for a batch of %d texts", len(texts))
                for _, future in batch:
                    if not future.done():
                        future.set_exception(err)
                continue
            at = 0
            for item_texts, future in batch:
                if not future.done():  # a client that went away cancelled its future
                    future.set_result(results[at:at + len(item_texts)])
                at += len(item_texts)


class LRUCache:
    """Text -> result, least recently used out first. Event-loop only (no lock)."""

    def __init__(self, size: int):
        self.size, self.data = size, OrderedDict()

    def get(self, key):
        value = self.data.get(key)
        if value is not None:
            self.data.move_to_end(key)
        return value

    def put(self, key, value) -> None:
        if self.size:
            self.data[key] = value
            if len(self.data) > self.size:
                self.data.popitem(last=False)


class Metrics:
    """The Prometheus metrics of a worker (summed over the workers when ``PROMETHEUS_MULTIPROC_DIR`` is set)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

        disable_created_metrics()  # no *_created series: half the /metrics text, nothing a dashboard uses
        self.registry = CollectorRegistry()
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        kw = {"registry": None if self.multiprocess else self.registry}
        self.requests = Counter("speedtrain_requests_total", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], **kw)
        self.latency = Histogram("speedtrain_request_latency_seconds", "POST /predict latency (200 answers)",
                                 buckets=(.0005, .001, .002, .003, .005, .008, .012, .02, .05, .1, .25, .5, 1, 2.5),
                                 **kw)
        self.batch = Histogram("speedtrain_batch_size", "texts per model call",
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), **kw)
        self.queue = Gauge("speedtrain_queue_depth", "texts waiting for the model", multiprocess_mode="livesum", **kw)
        self.texts = Counter("speedtrain_texts_total", "texts predicted (cached or not)", **kw)
        self.hits = Counter("speedtrain_cache_hits_total", "texts answered from the result cache", **kw)
        self.misses = Counter("speedtrain_cache_misses_total", "texts that went to the model", **kw)
        self.ok = self.requests.labels("/predict", "200")

    def on_batch(self, size: int, queued: int) -> None:
        self.batch.observe(size)
        self.queue.set(queued)

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        if self.multiprocess:
            from prometheus_client import CollectorRegistry, multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: list | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or []


JSON = [(b"content-type", b"application/json")]


class ServeApp:
    """The ASGI application of one worker: ``ServeApp(options)`` is what uvicorn runs."""

    def __init__(self, options: ServeOptions):
        self.options = options
        self.ready = False
        self.predictor = None
        self.batcher: MicroBatcher | None = None
        self.cache = LRUCache(options.cache_size)
        self.metrics = Metrics()
        key = options.api_key or os.environ.get(API_KEY_ENV) or None
        self.api_key = key.encode() if key else None

    # -- model ---------------------------------------------------------------------------------------------------
    def load(self) -> None:
        from speedtrain.serve.predictor import Predictor

        o = self.options
        self.predictor = Predictor.load(o.bundle, o.variant, threads=o.threads or None, cache_size=0,
                                        batch_size=max(o.max_batch_size, 1))
        self.predictor.probabilities(["warm up"])  # first call allocates ORT's buffers: not a request's latency
        self.labels = self.predictor.labels

    def infer(self, texts: list[str]) -> list[dict]:
        probs = self.predictor.probabilities(texts)
        best = probs.argmax(axis=1)
        scores = probs[np.arange(len(texts)), best].tolist()
        labels = self.labels
        return [{"label": labels[i], "score": s} for i, s in zip(best.tolist(), scores)]

    async def predict(self, texts: list[str]) -> list[dict]:
        cache = self.cache
        results = [cache.get(t) for t in texts] if cache.size else [None] * len(texts)
        missing = [i for i, r in enumerate(results) if r is None]
        m = self.metrics
        m.texts.inc(len(texts))
        if len(missing) < len(texts):
            m.hits.inc(len(texts) - len(missing))
        if missing:
            m.misses.inc(len(missing))
            try:
                found = await self.batcher.submit([texts[i] for i in missing])
            except Overloaded as err:
                raise HTTPError(503, f"{err}; retry later", [(b"retry-after", b"1")]) from None
            for i, r in zip(missing, found):
                results[i] = r
                cache.put(texts[i], r)
        return results

    # -- ASGI ------------------------------------------------------------------------------------------------------
    async def __call__(self, scope, receive, send):
        kind = scope["type"]
        if kind == "http":
            await self.http(scope, receive, send)
        elif kind == "lifespan":
            await self.lifespan(receive, send)

    async def startup(self) -> None:
        """Load the model (in a thread) and start the batcher."""
        await asyncio.get_running_loop().run_in_executor(None, self.load)
        gc.collect()
        gc.freeze()  # what loading made lives as long as the server: later collections need not scan it
        o = self.options
        self.batcher = MicroBatcher(self.infer, o.max_batch_size, o.max_wait_ms / 1000, o.max_queue,
                                    self.metrics.on_batch)
        self.batcher.start()
        self.ready = True

    async def shutdown(self) -> None:
        """Not ready any more; answer what is queued, then stop the batcher."""
        self.ready = False
        if self.batcher is not None:
            await self.batcher.close()

    async def lifespan(self, receive, send):
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as err:  # a bad bundle or variant: one message, the server does not start
                    await send({"type": "lifespan.startup.failed", "message": str(err)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def http(self, scope, receive, send):
        path, method = scope["path"], scope["method"]
        start = time.perf_counter()
        try:
            if path == "/predict":
                if method != "POST":
                    raise HTTPError(405, "use POST /predict with a JSON body {\"texts\": [...]}",
                                    [(b"allow", b"POST")])
                self.authorize(scope)
                texts = self.parse(await self.read_body(scope, receive))
                if not self.ready:
                    raise HTTPError(503, "not ready: the model is loading or the server is shutting down",
                                    [(b"retry-after", b"1")])
                body = orjson.dumps({"predictions": await self.predict(texts)})
                await respond(send, 200, body, JSON)
                self.metrics.ok.inc()
                self.metrics.latency.observe(time.perf_counter() - start)
                return
            if method not in ("GET", "HEAD"):
                raise HTTPError(405, f"{path} takes GET", [(b"allow", b"GET")])
            if path == "/healthz":
                status, body, headers = 200, b'{"status":"ok"}', JSON
            elif path == "/readyz":
                status = 200 if self.ready else 503
                body, headers = orjson.dumps({"ready": self.ready, "variant": getattr(self.predictor, "variant",
                                                                                        None)}), JSON
            elif path == "/metrics":
                from prometheus_client import CONTENT_TYPE_LATEST

                status, body, headers = 200, self.metrics.exposition(), [(b"content-type",
                                                                          CONTENT_TYPE_LATEST.encode())]
            elif path == "/openapi.json":
                status, body, headers = 200, orjson.dumps(openapi(self.options)), JSON
            elif path in ("/docs", "/docs/"):
                status, body, headers = 200, DOCS_HTML, [(b"content-type", b"text/html; charset=utf-8")]
            else:
                raise HTTPError(404, f"no route {path}; see /docs")
            await respond(send, status, body, headers)
        except HTTPError as err:
            status = err.status
            await respond(send, status, orjson.dumps({"error": err.message}), JSON + err.headers)
        except Exception:
            log.exception("error serving %s %s", method, path)
            status = 500
            await respond(send, status, b'{"error":"internal error; the server log has the details"}', JSON)
        self.metrics.requests.labels(path if path in ROUTES else "other", str(status)).inc()

    def authorize(self, scope) -> None:
        if self.api_key is None:
            return
        for name, value in scope["headers"]:
            if name == b"x-api-key" or (name == b"authorization" and value[:7].lower() == b"bearer "):
                given = value[7:] if name == b"authorization" else value
                if hmac.compare_digest(given, self.api_key):
                    return
        raise HTTPError(401, "missing or wrong API key; send the header X-API-Key: <key>",
                        [(b"www-authenticate", b"Bearer")])

    async def read_body(self, scope, receive) -> bytes:
        limit = self.options.max_body_bytes
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                raise HTTPError(413, f"body of {int(value)} bytes is over the limit of {limit} "
                                     "(--max-body-bytes); send fewer texts per request")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise HTTPError(400, "client disconnected")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise HTTPError(413, f"body is over the limit of {limit} bytes (--max-body-bytes); send fewer "
                                     "texts per request")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def parse(self, body: bytes) -> list[str]:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as err:
            raise HTTPError(400, f"body is not valid UTF-8 JSON ({err}); send {{\"texts\": [\"...\"]}}") from None
        if isinstance(data, dict) and "texts" in data:
            texts = data["texts"]
            if not isinstance(texts, list):
                raise HTTPError(422, f"\"texts\" must be a list of strings, got {type(texts).__name__}")
        elif isinstance(data, dict) and "text" in data:
            texts = [data["text"]]
        else:
            raise HTTPError(422, "body must be a JSON object {\"texts\": [\"...\"]} or {\"text\": \"...\"}")
        o = self.options
        if not texts:
            raise HTTPError(422, "\"texts\" is empty; send at least one text")
        if len(texts) > o.max_texts:
            raise HTTPError(413, f"{len(texts)} texts in one request; the limit is {o.max_texts} (--max-texts): "
                                 "split the request")
        for i, text in enumerate(texts):
            if type(text) is not str:
                raise HTTPError(422, f"texts[{i}] is {type(text).__name__}, not a string")
            if len(text) > o.max_text_chars:
                raise HTTPError(413, f"texts[{i}] has {len(text)} characters; the limit is {o.max_text_chars} "
                                     "(--max-text-chars)")
        return texts


ROUTES = ("/predict", "/healthz", "/readyz", "/metrics", "/openapi.json", "/docs")


async def respond(send, status: int, body: bytes, headers: list) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def openapi(options: ServeOptions) -> dict:
    """The OpenAPI 3.1 description of the API (served at /openapi.json, rendered at /docs)."""
    prediction = {"type": "object", "properties": {"label": {"type": "string"}, "score": {"type": "number"}},
                  "required": ["label", "score"]}
    error = {"description": "error", "content": {"application/json": {"schema": {
        "type": "object", "properties": {"error": {"type": "string"}}}}}}
    request = {"oneOf": [
        {"type": "object", "required": ["texts"], "properties": {"texts": {
            "type": "array", "minItems": 1, "maxItems": options.max_texts,
            "items": {"type": "string", "maxLength": options.max_text_chars}}}},
        {"type": "object", "required": ["text"], "properties": {"text": {
            "type": "string", "maxLength": options.max_text_chars}}}]}
    simple = {"200": {"description": "ok"}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "speedtrain serve", "version": _version(),
                 "description": f"Text classification with the bundle {Path(options.bundle).resolve()}"},
        "paths": {
            "/predict": {"post": {
                "summary": "Label and score of each text, in order",
                "requestBody": {"required": True, "content": {"application/json": {"schema": request}}},
                "responses": {
                    "200": {"description": "one prediction per text", "content": {"application/json": {"schema": {
                        "type": "object", "properties": {"predictions": {"type": "array", "items": prediction}}}}}},
                    "400": error, "401": error, "413": error, "422": error, "503": error}}},
            "/healthz": {"get": {"summary": "The process answers", "responses": simple}},
            "/readyz": {"get": {"summary": "The model is loaded and the server is not shutting down",
                                "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": simple}},
        },
    }


def _version() -> str:
    import speedtrain

    return speedtrain.__version__


DOCS_HTML = b"""<!doctype html>
<html><head><title>speedtrain serve</title>
<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css"></head>
<body><div id="ui"></div>
<script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/openapi.json", dom_id: "#ui"});</script>
</body></html>
"""


def app_from_env() -> ServeApp:
    """The app of a worker process, configured by the JSON in ``$SPEEDTRAIN_SERVE_OPTIONS`` (uvicorn factory)."""
    raw = os.environ.get(OPTIONS_ENV)
    if not raw:
        raise RuntimeError(f"{OPTIONS_ENV} is not set; start the server with `speedtrain serve BUNDLE`")
    return ServeApp(ServeOptions(**json.loads(raw)))


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
