"""`speedtrain serve` as a user runs it: a real server in a subprocess on a free loopback port.

Two servers for the module: ``server`` (2 workers, defaults) and ``strict`` (1 worker, API key, small limits, a
queue of two texts and a 50 ms batching wait, so that overload and in-flight shutdown are easy to provoke).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from speedtrain.bench.http_load import LoadOptions, make_bodies, make_texts, run_load
from speedtrain.bundle.predictor import Predictor
from speedtrain.serve.batcher import MicroBatcher, Overloaded

KEY = "s3cret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, bundle: Path, *flags: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "speedtrain.cli", "serve", str(bundle), "--port",
                                      str(self.port), *flags], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            assert self.proc.poll() is None, self.proc.stdout.read()
            try:
                if request(self.url + "/readyz")[0] == 200:
                    return
            except OSError:
                time.sleep(0.3)
        raise AssertionError("server not ready in 120 s")

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(60)


def request(url: str, body: bytes | None = None, headers: dict | None = None, method: str | None = None,
            timeout: float = 30) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def post(server: Server, payload, key: str | None = None, raw: bytes | None = None) -> tuple[int, dict, dict]:
    headers = {"Content-Type": "application/json", **({"X-API-Key": key} if key else {})}
    status, head, body = request(server.url + "/predict", raw if raw is not None else json.dumps(payload).encode(),
                                 headers)
    return status, head, json.loads(body)


def metrics(server: Server) -> dict[str, float]:
    text = request(server.url + "/metrics")[2].decode()
    return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
            if line.startswith("speedtrain_")}


@pytest.fixture(scope="module")
def server(tiny_bundle):
    s = Server(tiny_bundle, "--workers", "2")
    yield s
    assert s.stop() == 0


@pytest.fixture(scope="module")
def strict(tiny_bundle):
    s = Server(tiny_bundle, "--workers", "1", "--api-key", KEY, "--max-texts", "4", "--max-text-chars", "50",
               "--max-body-bytes", "2000", "--max-queue", "2", "--max-batch-size", "2", "--max-wait-ms", "50")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def texts(tiny_bundle):
    return (tiny_bundle / "benchmark_texts.txt").read_text().splitlines()[:30]


def test_predictions_equal_the_predictor(server, tiny_bundle, texts):
    status, _, body = post(server, {"texts": texts})
    assert status == 200
    expected = Predictor.load(tiny_bundle).predict(texts)
    got = body["predictions"]
    assert [p["label"] for p in got] == [p["label"] for p in expected]
    assert all(abs(a["score"] - b["score"]) < 1e-5 for a, b in zip(got, expected))
    # The single-text form. Two workers, each with its own cache: the one that computed the batch answers from its
    # cache, the other computes the text alone, and a dynamic-INT8 model's scores move a little (~1e-3) with the
    # batch a text is computed in (activation scales per batch). Either answer, to float precision.
    status, _, one = post(server, {"text": texts[3]})
    alone = Predictor.load(tiny_bundle, cache_size=0).predict([texts[3]])
    assert status == 200 and (same(one["predictions"], [got[3]]) or same(one["predictions"], alone))


def same(a: list[dict], b: list[dict], tol: float = 1e-6) -> bool:
    """The same labels, and scores within ``tol``."""
    return [p["label"] for p in a] == [p["label"] for p in b] and all(
        abs(x["score"] - y["score"]) < tol for x, y in zip(a, b, strict=True))


def test_concurrent_requests_are_batched_and_counted(server, tiny_bundle):
    pool = (tiny_bundle / "benchmark_texts.txt").read_text().splitlines()
    before = metrics(server)
    result = run_load(LoadOptions(url=server.url + "/predict", concurrency=32, requests=600, duration_s=30,
                                  warmup_s=0), make_bodies(make_texts(pool, 600, 0.0, first=10**6)))
    assert result["ok"] == result["requests"] == 600 and result["errors"] == 0
    after = metrics(server)  # summed over the two workers
    delta = {k: after[k] - before.get(k, 0.0) for k in after}
    assert delta['speedtrain_requests_total{endpoint="/predict",status="200"}'] == 600
    assert delta["speedtrain_cache_misses_total"] == 600 and delta["speedtrain_batch_size_sum"] == 600
    assert delta["speedtrain_batch_size_count"] < 600  # some model calls took several requests' texts
    assert delta['speedtrain_batch_size_bucket{le="1.0"}'] < delta["speedtrain_batch_size_count"]
    assert 'speedtrain_request_latency_seconds_bucket{le="0.05"}' in after
    assert after["speedtrain_queue_depth"] == 0


def test_load_generator_open_loop_and_several_processes(server, tiny_bundle):
    pool = (tiny_bundle / "benchmark_texts.txt").read_text().splitlines()
    bodies = make_bodies(make_texts(pool, 1000, 0.0, first=2 * 10**6))
    url = server.url + "/predict"
    result = run_load(LoadOptions(url=url, mode="open", rate=200, concurrency=8, duration_s=1.5, warmup_s=0), bodies)
    assert result["errors"] == 0 and 240 <= result["requests"] <= 301  # 200/s for 1.5 s, on schedule
    assert result["p50_ms"] < 200
    result = run_load(LoadOptions(url=url, concurrency=4, requests=200, duration_s=30, warmup_s=0), bodies,
                      processes=2)
    assert result["requests"] == result["ok"] == 200 and result["errors"] == 0


def test_repeated_texts_hit_the_cache(server, texts):
    before = metrics(server)
    for _ in range(3):
        assert post(server, {"texts": [texts[0], texts[1]]})[0] == 200
    after = metrics(server)
    # each worker misses a text at most once, whichever of the two gets the connection
    assert after["speedtrain_cache_hits_total"] - before["speedtrain_cache_hits_total"] >= 2


@pytest.mark.parametrize("raw,status,words", [
    (b"{not json", 400, "not valid UTF-8 JSON"),
    (b'{"texts": ["caf\xe9"]}', 400, "not valid UTF-8 JSON"),  # latin-1 bytes
    (b'{"texts": []}', 422, "empty"),
    (b'{"texts": "one string"}', 422, "must be a list"),
    (b'{"texts": ["ok", 3]}', 422, "texts[1] is int"),
    (b'["a", "b"]', 422, "JSON object"),
    (b'{"txt": "a"}', 422, "JSON object"),
    (b'{"texts": ["a", "b", "c", "d", "e"]}', 413, "limit is 4"),
    (json.dumps({"texts": ["x" * 51]}).encode(), 413, "limit is 50"),
    (json.dumps({"texts": ["x" * 40] * 60}).encode(), 413, "over the limit of 2000"),
])
def test_bad_requests_get_a_4xx_and_the_server_keeps_serving(strict, raw, status, words):
    got, _, body = post(strict, None, key=KEY, raw=raw)
    assert got == status and words in body["error"]
    assert post(strict, {"texts": ["live horses"]}, key=KEY)[0] == 200


def test_api_key(strict):
    assert post(strict, {"texts": ["live horses"]})[0] == 401
    assert post(strict, {"texts": ["live horses"]}, key="wrong")[0] == 401
    status, _, _ = request(strict.url + "/predict", b'{"texts": ["a"]}', {"Authorization": f"Bearer {KEY}"})
    assert status == 200
    assert request(strict.url + "/healthz")[0] == 200  # probes need no key


def test_endpoints(server):
    status, _, body = request(server.url + "/healthz")
    assert status == 200 and json.loads(body) == {"status": "ok"}
    status, _, body = request(server.url + "/readyz")
    assert status == 200 and json.loads(body)["ready"] is True
    spec = json.loads(request(server.url + "/openapi.json")[2])
    assert spec["openapi"].startswith("3.") and "/predict" in spec["paths"]
    assert b"swagger-ui" in request(server.url + "/docs")[2]
    assert request(server.url + "/nope")[0] == 404
    status, head, _ = request(server.url + "/predict")  # GET
    assert status == 405 and head["allow"] == "POST"


def test_overload_answers_503_not_a_hang(strict):
    # a queue of two texts and a 50 ms wait for company: 16 simultaneous requests cannot all queue
    results = []

    def one(i):
        results.append(post(strict, {"texts": [f"steel screws {i}"]}, key=KEY)[:2])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    start = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    statuses = [s for s, _ in results]
    assert len(statuses) == 16 and set(statuses) <= {200, 503}
    assert statuses.count(503) >= 1 and statuses.count(200) >= 1
    assert all(h["retry-after"] == "1" for s, h in results if s == 503)
    assert time.time() - start < 10
    assert post(strict, {"texts": ["live horses"]}, key=KEY)[0] == 200


def test_shutdown_finishes_in_flight_requests(tiny_bundle):
    s = Server(tiny_bundle, "--workers", "1", "--max-wait-ms", "1000")  # each request waits 1 s for company
    answers = []
    thread = threading.Thread(target=lambda: answers.append(post(s, {"texts": ["frozen fish fillets"]})[0]))
    thread.start()
    deadline = time.time() + 10
    while metrics(s).get("speedtrain_texts_total", 0) < 1 and time.time() < deadline:
        time.sleep(0.02)  # until the request is in the batcher
    os.killpg(s.proc.pid, signal.SIGTERM)
    thread.join(30)
    assert answers == [200]
    assert s.proc.wait(30) == 0
    with pytest.raises(OSError):
        request(s.url + "/healthz", timeout=2)


def test_a_killed_worker_is_replaced(server):
    import psutil

    def workers():  # live worker processes (a killed one is a zombie until the supervisor reaps it)
        found = []
        for child in psutil.Process(server.proc.pid).children():
            try:
                if child.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(child.cmdline()):
                    found.append(child)
            except psutil.Error:  # it exited meanwhile
                pass
        return found

    before = workers()
    assert len(before) == 2
    before[0].kill()
    deadline = time.time() + 60
    while time.time() < deadline:
        now = workers()
        if len(now) == 2 and before[0].pid not in {p.pid for p in now}:
            break
        time.sleep(0.2)
    assert len(now) == 2 and before[0].pid not in {p.pid for p in now}
    time.sleep(5)  # the new worker loads the model; until it listens, the kernel sends connections to the other
    assert all(post(server, {"texts": [f"steel screws {i}"]})[0] == 200 for i in range(20))


def test_bad_bundle_and_busy_port_are_one_clear_error(tiny_bundle, tmp_path, server):
    done = subprocess.run([sys.executable, "-m", "speedtrain.cli", "serve", str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "is not a bundle" in done.stderr and "Traceback" not in done.stderr
    done = subprocess.run([sys.executable, "-m", "speedtrain.cli", "serve", str(tiny_bundle), "--port",
                           str(server.port)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and f"cannot listen on 127.0.0.1:{server.port}" in done.stderr
    done = subprocess.run([sys.executable, "-m", "speedtrain.cli", "serve", str(tiny_bundle), "--max-queue", "0"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--max-queue=0 must be a positive integer" in done.stderr


# -- the pieces, without HTTP ---------------------------------------------------------------------------------------
def test_micro_batcher_groups_concurrent_requests_and_keeps_order():
    calls = []

    def infer(texts):
        calls.append(list(texts))
        time.sleep(0.01)
        return [t.upper() for t in texts]

    async def main():
        batcher = MicroBatcher(infer, max_batch_size=8, max_wait_s=0.005, max_queue=100)
        batcher.start()
        futures = [batcher.submit([f"t{i}", f"u{i}"]) for i in range(10)]  # 20 texts, batches of <= 8
        results = await asyncio.gather(*futures)
        with pytest.raises(Overloaded):
            for i in range(60):
                batcher.submit([f"v{i}", "w"])  # 120 texts > max_queue while the model is busy
        await batcher.close()  # finishes what is queued
        return results

    results = asyncio.run(main())
    assert results == [[f"T{i}", f"U{i}"] for i in range(10)]
    assert all(len(c) <= 8 for c in calls[:3]) and len(calls[0]) > 2  # concurrent requests shared a call
    assert sum(len(c) for c in calls) == 20 + 2 * 50  # the 50 accepted before the queue was full also ran


def test_micro_batcher_failure_fails_only_its_requests():
    def infer(texts):
        if "bad" in texts:
            raise RuntimeError("model failed")
        return texts

    async def main():
        batcher = MicroBatcher(infer, max_batch_size=1, max_wait_s=0, max_queue=10)
        batcher.start()
        bad, good = batcher.submit(["bad"]), batcher.submit(["good"])
        with pytest.raises(RuntimeError):
            await bad
        assert await good == ["good"]
        await batcher.close()

    asyncio.run(main())

