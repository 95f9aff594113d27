"""An HTTP load generator for ``POST /predict``-style JSON endpoints, cheap enough to share 2 cores with a server.

    result = run_load(LoadOptions(url="http://127.0.0.1:8000/predict", concurrency=64), bodies)

Each connection is an HTTP/1.1 keep-alive connection driven by a bare asyncio protocol (uvloop when installed):
requests are prebuilt bytes, responses are parsed only as far as the status line and the body's length, so the
generator spends ~10 µs of CPU per request instead of the ~100 µs of a general HTTP client.

- ``closed`` loop: ``concurrency`` connections, each sends its next request when the last answer arrives
  (wrk's model): the throughput a server sustains.
- ``open`` loop: requests are scheduled at ``rate`` per second whatever the answers; a request waits for a free
  connection when all ``concurrency`` are busy, and its latency counts from its scheduled time (no coordinated
  omission): the latency a server gives at a given load.

Both stop after ``requests`` requests or ``duration_s`` seconds, whichever comes first; requests answered during
the first ``warmup_s`` seconds are not counted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections import Counter
from collections.abc import Sequence
from urllib.parse import urlsplit

import numpy as np
import orjson


@dataclasses.dataclass
class LoadOptions:
    url: str = "http://127.0.0.1:8000/predict"
    concurrency: int = 64
    mode: str = "closed"  # or "open"
    rate: float = 1000.0  # open loop: requests per second
    requests: int = 200_000  # stop after this many requests ...
    duration_s: float = 10.0  # ... or this many seconds (after the warm-up)
    warmup_s: float = 1.0
    timeout_s: float = 30.0  # a request unanswered this long counts as an error
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


def make_texts(pool: Sequence[str], n: int, repeat_share: float, hot: int = 1000, seed: int = 0,
               first: int = 0) -> list[str]:
    """``n`` request texts: a share ``repeat_share`` drawn from ``hot`` popular texts, the rest never seen before.

    A new text is a pool text with a serial number appended (``"frozen fish fillets #18342"``), as catalogue entries
    with SKUs look: real vocabulary, never a cache hit (serials from ``first`` on: give each run its own range so none repeats another's).
    """
    rng = random.Random(seed)
    popular = [pool[i % len(pool)] for i in range(hot)]
    out = []
    for i in range(n):
        if rng.random() < repeat_share:
            out.append(popular[rng.randrange(hot)])
        else:
            out.append(f"{pool[rng.randrange(len(pool))]} #{first + i}")
    return out


def make_bodies(texts: Sequence[str], texts_per_request: int = 1) -> list[bytes]:
    """JSON bodies ``{"texts": [...]}`` of ``texts_per_request`` consecutive texts each."""
    k = texts_per_request
    return [orjson.dumps({"texts": list(texts[i:i + k])}) for i in range(0, len(texts) - k + 1, k)]


def build_request(url: str, body: bytes, headers: dict[str, str]) -> bytes:
    parts = urlsplit(url)
    head = [f"POST {parts.path or '/'} HTTP/1.1", f"Host: {parts.netloc}", "Content-Type: application/json",
            f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class _Connection(asyncio.Protocol):
    """One keep-alive connection: ``await request(raw)`` -> (status, body)."""

    def __init__(self):
        self.transport = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection closed: {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data):
        self.buffer += data
        self._parse()

    def _parse(self):
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None:
            return
        head = bytes(self.buffer[:end]).lower()
        status = int(head[9:12])
        start = end + 4
        at = head.find(b"\r\ncontent-length:")
        if at >= 0:
            stop = head.find(b"\r\n", at + 2)
            length = int(head[at + 17: stop if stop >= 0 else None])
            if len(self.buffer) < start + length:
                return
            body = bytes(self.buffer[start:start + length])
            del self.buffer[:start + length]
        elif b"transfer-encoding: chunked" in head:
            body, used = _dechunk(self.buffer, start)
            if body is None:
                return
            del self.buffer[:used]
        else:
            raise ConnectionError("response has neither Content-Length nor chunked encoding")
        waiter, self.waiter = self.waiter, None
        if not waiter.done():
            waiter.set_result((status, body))

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self.waiter


def _dechunk(buffer: bytearray, start: int) -> tuple[bytes | None, int]:
    body, at = bytearray(), start
    while True:
        line_end = buffer.find(b"\r\n", at)
        if line_end < 0:
            return None, 0
        size = int(bytes(buffer[at:line_end]).split(b";")[0], 16)
        if len(buffer) < line_end + 2 + size + 2:
            return None, 0
        body += buffer[line_end + 2: line_end + 2 + size]
        at = line_end + 2 + size + 2
        if size == 0:
            return bytes(body), at


async def _connect(host: str, port: int) -> _Connection:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(_Connection, host, port)
    return conn


def run_load(options: LoadOptions, bodies: Sequence[bytes], texts_per_request: int = 1, processes: int = 1) -> dict:
    """Drive the server at ``options.url`` with ``bodies`` (cycled) and return the measurements.

    ``processes`` > 1 splits the connections (and the open-loop rate and the bodies) over that many generator
    processes, for servers that one Python process cannot saturate (~10,000 requests/s per core here).
    """
    if processes <= 1:
        return summarize(options, texts_per_request, *_drive(options, bodies))
    import concurrent.futures
    import multiprocessing

    parts = []
    for i in range(processes):
        share = dataclasses.replace(
            options, concurrency=max(1, options.concurrency // processes), rate=options.rate / processes,
            requests=max(1, options.requests // processes))
        parts.append((share, bodies[i::processes]))
    with concurrent.futures.ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(_drive_part, parts))
    latencies = [x for r in results for x in r[0]]
    statuses, errors = Counter(), Counter()
    for r in results:
        statuses.update(r[1])
        errors.update(r[2])
    return summarize(options, texts_per_request, latencies, statuses, errors, float(np.median([r[3] for r in results])))


def _drive_part(part):
    return _drive(*part)


def _drive(options: LoadOptions, bodies: Sequence[bytes]):
    import gc

    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        runner = asyncio.run
    # no garbage collection while measuring: a full collection takes ~20 ms in a generator holding 200,000
    # prebuilt requests, a pause an open loop would book as server latency
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        return runner(_run(options, bodies))
    finally:
        gc.enable()
        gc.unfreeze()


def summarize(o: LoadOptions, texts_per_request: int, latencies, statuses: Counter, errors: Counter,
              elapsed: float) -> dict:
    lat = np.asarray(latencies) * 1000
    ok = statuses.get(200, 0)
    count = int(lat.size)
    pct = (lambda q: float(np.percentile(lat, q))) if count else (lambda q: float("nan"))
    return {
        "mode": o.mode, "concurrency": o.concurrency, "rate": o.rate if o.mode == "open" else None,
        "texts_per_request": texts_per_request, "seconds": round(elapsed, 3), "requests": count, "ok": ok,
        "errors": count - ok + sum(errors.values()),
        "statuses": {str(k): v for k, v in sorted(statuses.items())}, "failures": dict(errors),
        "requests_per_s": count / elapsed if elapsed > 0 else 0.0,
        "texts_per_s": ok * texts_per_request / elapsed if elapsed > 0 else 0.0,
        "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99), "mean_ms": float(lat.mean()) if count else float("nan"),
    }


def results_table(rows: list[dict]) -> str:
    """A markdown table of :func:`run_load` results, each labelled with ``server`` and ``scenario`` (and optionally
    ``repeat_share`` and ``cache_hit_ratio``) by the caller."""
    out = ["| server | scenario | conns | texts/req | repeats | requests/s | texts/s | p50 ms | p95 ms | p99 ms | "
           "errors | cache hits |", "|" + "---|" * 12]
    for r in rows:
        hit = r.get("cache_hit_ratio")
        out.append(f"| {r['server']} | {r['scenario']} | {r['concurrency']} | {r['texts_per_request']} | "
                   f"{r.get('repeat_share', 0):.0%} | {r['requests_per_s']:,.0f} | {r['texts_per_s']:,.0f} | "
                   f"{r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors']} | "
                   f"{'' if hit is None else f'{hit:.1%}'} |")
    return "\n".join(out)

async def _run(o: LoadOptions, bodies: Sequence[bytes]):
    parts = urlsplit(o.url)
    raws = [build_request(o.url, b, o.headers) for b in bodies]
    conns = await asyncio.gather(*(_connect(parts.hostname, parts.port or 80) for _ in range(o.concurrency)))
    now = time.perf_counter  # not loop.time(): uvloop's clock has 1 ms steps
    latencies: list[float] = []
    statuses: Counter = Counter()
    errors: Counter = Counter()
    start = now()
    measure_from = start + o.warmup_s
    stop_at = measure_from + o.duration_s
    sent = 0

    async def one(conn: _Connection, raw: bytes, t0: float) -> bool:
        try:
            status, _ = await asyncio.wait_for(conn.request(raw), o.timeout_s)
        except (asyncio.TimeoutError, ConnectionError, OSError) as e:
            errors[type(e).__name__] += 1
            return False
        t1 = now()
        if t0 >= measure_from:
            statuses[status] += 1
            latencies.append(t1 - t0)
        return True

    if o.mode == "closed":
        async def worker(conn: _Connection):
            nonlocal sent
            while sent < o.requests and now() < stop_at:
                raw = raws[sent % len(raws)]
                sent += 1
                if not await one(conn, raw, now()):
                    return

        await asyncio.gather(*(worker(c) for c in conns))
    elif o.mode == "open":
        idle: asyncio.Queue = asyncio.Queue()
        for c in conns:
            idle.put_nowait(c)
        tasks = set()

        async def scheduled(raw: bytes, t0: float):
            conn = await idle.get()
            if await one(conn, raw, t0):
                idle.put_nowait(conn)

        interval = 1.0 / o.rate
        while sent < o.requests:
            t0 = start + sent * interval
            if t0 >= stop_at:
                break
            delay = t0 - now()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.ensure_future(scheduled(raws[sent % len(raws)], t0))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        if tasks:
            await asyncio.wait(tasks, timeout=o.timeout_s)
    else:
        raise ValueError(f"mode={o.mode!r}: use 'closed' or 'open'")
    elapsed = min(now(), stop_at) - measure_from
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    return latencies, statuses, errors, elapsed

