"""The ASGI app of one ``speedtrain serve`` worker: routing, request checks, the result cache and the batcher.

Endpoints: ``POST /predict`` (``{"texts": [...]}`` or ``{"text": "..."}``), ``GET /healthz`` (the process
answers), ``GET /readyz`` (model loaded and not shutting down), ``GET /metrics`` (Prometheus), ``GET /docs`` and
``GET /openapi.json``.

How a request is served (each worker process; the workers share the port, :mod:`speedtrain.serve.supervisor`):

1. The body is read up to ``max_body_bytes`` (413 beyond), parsed with orjson (400 if it is not JSON), checked
   (422 for wrong types or an empty list, 413 past ``max_texts`` texts or ``max_text_chars`` characters).
2. Texts found in the LRU result cache are answered at once, on the event loop.
3. The others join the micro-batcher's queue; a full queue (``max_queue`` texts) answers 503 with ``Retry-After``
   instead of letting latency grow without bound.
4. One batching task takes everything queued (up to ``max_batch_size`` texts; after an idle spell it first waits
   ``max_wait_ms`` for company) and runs tokenizer + model + softmax in a thread, so the event loop keeps
   accepting and answering while the model works. Under load the next batch fills while the current one runs.

The app is a plain ASGI callable (no web framework): docs/benchmarks.md has the measurements that chose it and
uvicorn (uvloop + httptools) over Starlette, FastAPI, granian and LitServe. ``app_from_env`` is its factory for
servers started by name (``speedtrain.serve.app:app_from_env``).
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import json
import logging
import os
import time

import numpy as np
import orjson

from speedtrain.bundle.cache import LRUCache
from speedtrain.serve.batcher import MicroBatcher, Overloaded
from speedtrain.serve.metrics import Metrics
from speedtrain.serve.openapi import DOCS_HTML, openapi
from speedtrain.serve.options import API_KEY_ENV, OPTIONS_ENV, ServeOptions

log = logging.getLogger(__name__)


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
        from speedtrain.bundle.predictor import Predictor

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
        results = self.cache.get_many(texts)
        missing = [i for i, r in enumerate(results) if r is None]
        m = self.metrics
        m.texts.inc(len(texts))
        if len(missing) < len(texts):
            m.hits.inc(len(texts) - len(missing))
        if missing:
            m.misses.inc(len(missing))
            asked = [texts[i] for i in missing]
            try:
                found = await self.batcher.submit(asked)
            except Overloaded as err:
                raise HTTPError(503, f"{err}; retry later", [(b"retry-after", b"1")]) from None
            for i, r in zip(missing, found):
                results[i] = r
            self.cache.put_many(zip(asked, found))
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


def app_from_env() -> ServeApp:
    """The app of a worker process, configured by the JSON in ``$SPEEDTRAIN_SERVE_OPTIONS`` (uvicorn factory)."""
    raw = os.environ.get(OPTIONS_ENV)
    if not raw:
        raise RuntimeError(f"{OPTIONS_ENV} is not set; start the server with `speedtrain serve BUNDLE`")
    return ServeApp(ServeOptions(**json.loads(raw)))
