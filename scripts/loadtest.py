"""Load-test `speedtrain serve` against two reference servers for the same bundle, in one command.

    python scripts/loadtest.py outputs/<run>/bundle                          # all three servers, the default scenarios
    python scripts/loadtest.py BUNDLE --servers speedtrain --soak 120         # + a 2-minute soak at 80% of max load
    python scripts/loadtest.py BUNDLE --servers speedtrain --concurrency 8 --repeat-share 0.85 --texts-per-request 4

Servers (each started here as a subprocess on a free loopback port, stopped after its scenarios):
- ``speedtrain``: ``speedtrain serve BUNDLE`` (micro-batching, cache; ``--workers``);
- ``litserve``: LitServe with batching (``max_batch_size`` 64) running the bundle's fast variant through
  ``Predictor`` — the same model as speedtrain — with 1 and 2 workers (``--litserve-workers``); its best counts;
- ``naive``: a FastAPI endpoint that tokenizes with ``AutoTokenizer`` and runs the PyTorch student per request,
  what a first deployment often looks like.

Scenarios (closed loop unless said): ``throughput`` (64 connections, one text per request, no repeated texts),
``latency`` (8 connections), ``open`` (open loop at ``--open-rate`` requests/s, latency counted from the
scheduled send time; speedtrain only), ``cache`` (64 connections, 85% of requests from 1,000 popular texts;
speedtrain only; hit ratio from its /metrics), ``batched`` (64 connections, 16 texts per request), and with ``--soak S`` an
open-loop run for S seconds at 80% of the measured throughput, with the server's resident memory before and after.
The load generator (speedtrain.bench.http_load) shares the machine with the servers, as in the issue's wrk figures.
Results: a table on stdout, ratios to the references, and JSON with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from speedtrain.bench.http_load import LoadOptions, make_bodies, make_texts, results_table, run_load
from speedtrain.bench.latency import machine_info
from speedtrain.bench.server_process import ServerProcess, cache_counts, free_port

SCENARIOS = {  # name -> (concurrency, texts per request, repeat share)
    "throughput": (64, 1, 0.0),
    "latency": (8, 1, 0.0),
    "cache": (64, 1, 0.85),
    "batched": (64, 16, 0.0),
    "open": (64, 1, 0.0),  # open loop at --open-rate requests/s: the latency at a given load
}


def start(kind: str, bundle: str, workers: int, extra: list[str]) -> ServerProcess:
    port = free_port()
    if kind == "speedtrain":
        cmd = [sys.executable, "-m", "speedtrain.cli", "serve", bundle, "--port", str(port), "--workers",
               str(workers), *extra]
        return ServerProcess(f"speedtrain-w{workers}", cmd, port, "/readyz")
    cmd = [sys.executable, __file__, "--run-server", kind, bundle, "--port", str(port), "--workers", str(workers)]
    return ServerProcess(f"{kind}-w{workers}", cmd, port, "/health" if kind == "litserve" else "/ready")


_serials = [0]


def next_serial(n: int) -> int:
    """The first of ``n`` serial numbers no earlier request used (new texts stay new across scenarios)."""
    first = _serials[0]
    _serials[0] += n
    return first


def measure(server: ServerProcess, pool: list[str], scenario: str, args, seed: int) -> dict:
    concurrency, per_request, repeat = SCENARIOS[scenario]
    concurrency = args.concurrency or concurrency
    per_request = args.texts_per_request or per_request
    repeat = repeat if args.repeat_share is None else args.repeat_share
    n = max(args.requests, 1) * per_request
    bodies = make_bodies(make_texts(pool, n, repeat, seed=seed, first=next_serial(n)),
                         per_request)
    before = cache_counts(server) if server.name.startswith("speedtrain") else None
    mode = "open" if scenario == "open" else "closed"
    result = run_load(LoadOptions(url=server.url + "/predict", concurrency=concurrency, duration_s=args.duration,
                                  warmup_s=args.warmup, requests=args.requests, mode=mode, rate=args.open_rate),
                      bodies, per_request, processes=args.load_processes)
    result.update(server=server.name, scenario=scenario, repeat_share=repeat)
    if before is not None:
        hits, misses = (a - b for a, b in zip(cache_counts(server), before))
        result["cache_hit_ratio"] = hits / (hits + misses) if hits + misses else None
    return result


def soak(server: ServerProcess, pool: list[str], rate: float, args) -> dict:
    """Open loop at ``rate`` for ``args.soak`` seconds of new texts; the server's resident memory every 5 s."""
    import threading

    n = int(rate * (args.soak + 5)) + 1000
    bodies = make_bodies(make_texts(pool, n, 0.0, seed=99, first=next_serial(n)))
    # warm up at the same rate first: the first seconds allocate the server's buffers
    run_load(LoadOptions(url=server.url + "/predict", mode="open", rate=rate, concurrency=256, duration_s=5,
                         warmup_s=0), bodies[-1000:])
    samples, done = [(0.0, server.rss_mb())], threading.Event()

    def sample():
        start = time.time()
        while not done.wait(5):
            samples.append((time.time() - start, server.rss_mb()))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    result = run_load(LoadOptions(url=server.url + "/predict", mode="open", rate=rate, concurrency=256,
                                  duration_s=args.soak, warmup_s=0, requests=len(bodies)), bodies)
    done.set()
    sampler.join()
    samples.append((args.soak, server.rss_mb()))
    rss0, rss1 = samples[0][1], samples[-1][1]
    half = min(samples, key=lambda s: abs(s[0] - args.soak / 2))[1]
    result.update(server=server.name, scenario=f"soak {args.soak:.0f} s open loop", rss_start_mb=rss0,
                  rss_end_mb=rss1, rss_growth_pct=100 * (rss1 - rss0) / rss0,
                  rss_second_half_growth_pct=100 * (rss1 - half) / half, rss_samples=samples)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bundle")
    parser.add_argument("--servers", default="speedtrain,litserve,naive")
    parser.add_argument("--scenarios", default="throughput,latency,open,cache,batched")
    parser.add_argument("--workers", default="0", help="speedtrain serve --workers values to try (0: one per core)")
    parser.add_argument("--litserve-workers", default="1,2")
    parser.add_argument("--serve-args", default="", help="extra flags for speedtrain serve, e.g. '--max-wait-ms 0.5'")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per scenario, after the warm-up")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--requests", type=int, default=200_000, help="at most this many requests per scenario")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each scenario; the table shows the median")
    parser.add_argument("--concurrency", type=int, help="override every scenario's connections")
    parser.add_argument("--texts-per-request", type=int, help="override every scenario's texts per request")
    parser.add_argument("--repeat-share", type=float, help="override every scenario's share of repeated texts")
    parser.add_argument("--open-rate", type=float, default=1000.0, help="requests/s of the 'open' scenario")
    parser.add_argument("--load-processes", type=int, default=1,
                        help="load generator processes (one Python process drives ~10,000 requests/s)")
    parser.add_argument("--soak", type=float, default=0.0, help="seconds of open-loop load at 80%% of max (speedtrain)")
    parser.add_argument("--out", help="write all results as JSON here")
    args = parser.parse_args(argv)

    pool = (Path(args.bundle) / "benchmark_texts.txt").read_text().splitlines()
    rows, raw = [], []
    for kind in args.servers.split(","):
        workers = args.litserve_workers if kind == "litserve" else args.workers if kind == "speedtrain" else "1"
        for w in (int(x) for x in workers.split(",")):
            server = start(kind, args.bundle, w, args.serve_args.split())
            try:
                server.wait_ready()
                for scenario in args.scenarios.split(","):
                    if scenario in ("cache", "open") and kind != "speedtrain":
                        continue
                    runs = [measure(server, pool, scenario, args, seed=rep) for rep in range(args.repeats)]
                    raw.extend(runs)
                    runs.sort(key=lambda r: r["requests_per_s"])
                    rows.append(runs[len(runs) // 2])
                    print(results_table(rows[-1:]).splitlines()[-1], flush=True)
                if args.soak and kind == "speedtrain":
                    best = max((r["requests_per_s"] for r in rows if r["server"] == server.name
                                and r["scenario"] == "throughput"), default=1000.0)
                    rows.append(soak(server, pool, 0.8 * best, args))
                    raw.append(rows[-1])
                    r = rows[-1]
                    print(results_table([r]).splitlines()[-1], f"RSS of all workers {r['rss_start_mb']:.0f} -> "
                          f"{r['rss_end_mb']:.0f} MB ({r['rss_growth_pct']:+.1f}%; second half "
                          f"{r['rss_second_half_growth_pct']:+.1f}%)", flush=True)
            finally:
                server.stop()

    print("\n" + results_table(rows))
    best = {}
    for r in rows:
        if r["scenario"] == "throughput":
            kind = r["server"].split("-w")[0]
            best[kind] = max(best.get(kind, 0.0), r["requests_per_s"])
    if "speedtrain" in best:
        for ref in ("litserve", "naive"):
            if best.get(ref):
                print(f"throughput, 64 connections: speedtrain {best['speedtrain']:,.0f} req/s = "
                      f"{best['speedtrain'] / best[ref]:.2f}x {ref} ({best[ref]:,.0f} req/s, its best workers)")
        cache = [r for r in rows if r["scenario"] == "cache"]
        if cache:
            c = max(cache, key=lambda r: r["requests_per_s"])
            print(f"85% repeated texts: {c['requests_per_s']:,.0f} req/s = "
                  f"{c['requests_per_s'] / best['speedtrain']:.2f}x no repeats; cache hits {c['cache_hit_ratio']:.1%}")
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": machine_info(), "results": raw, "table": rows}, indent=1))
    return 0


# -- the reference servers ----------------------------------------------------------------------------------------
def run_naive(bundle: str, port: int) -> None:
    """FastAPI + PyTorch student per request (sync endpoint: FastAPI runs it in its thread pool)."""
    import torch
    import uvicorn
    from fastapi import FastAPI
    from transformers import AutoTokenizer

    from speedtrain.bundle.manifest import read_manifest
    from speedtrain.bundle.runtime import load_pretrained

    manifest = read_manifest(bundle)
    tokenizer = AutoTokenizer.from_pretrained(bundle)
    model = load_pretrained(bundle)
    labels = manifest["labels"]
    app = FastAPI()

    @app.get("/ready")
    def ready():
        return {"ready": True}

    @app.post("/predict")
    def predict(request: TextsRequest):
        enc = tokenizer(request.texts, truncation=True, max_length=manifest["max_length"], padding=True,
                        return_tensors="pt")
        with torch.inference_mode():
            probs = model(**enc).logits.softmax(-1)
        score, best = probs.max(-1)
        return {"predictions": [{"label": labels[i], "score": s} for i, s in zip(best.tolist(), score.tolist())]}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def run_litserve(bundle: str, port: int, workers: int) -> None:
    """LitServe with request batching, running the bundle's fast variant (the same model speedtrain serves)."""
    # the best of the settings tried here (fast_queue on/off, batch_timeout 1/2/10 ms, 1/2 API servers): 2 ms, ZMQ
    api = BundleAPI(max_batch_size=64, batch_timeout=0.002)
    api.bundle, api.threads = bundle, max(1, (os.cpu_count() or 1) // workers)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=workers, fast_queue=True)
    server.run(host="127.0.0.1", port=port, log_level="warning", generate_client_file=False)


try:  # module level: LitServe pickles the API into its worker processes; FastAPI resolves the annotation here
    import litserve as ls
    from pydantic import BaseModel

    class TextsRequest(BaseModel):
        texts: list[str]

    class BundleAPI(ls.LitAPI):
        def setup(self, device):
            from speedtrain.bundle.predictor import Predictor

            self.predictor = Predictor.load(self.bundle, threads=self.threads, cache_size=0)

        def decode_request(self, request):
            return request["texts"]

        def predict(self, batch):  # a list of requests, each a list of texts
            flat = [t for texts in batch for t in texts]
            probs = self.predictor.probabilities(flat)
            best, labels = probs.argmax(1), self.predictor.labels
            out, at = [], 0
            for texts in batch:
                out.append([{"label": labels[i], "score": float(probs[at + j, i])}
                            for j, i in enumerate(best[at:at + len(texts)])])
                at += len(texts)
            return out

        def encode_response(self, output):
            return {"predictions": output}
except ImportError:  # pragma: no cover - litserve is a dev dependency
    ls = None


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--run-server":
        p = argparse.ArgumentParser()
        p.add_argument("--run-server")
        p.add_argument("bundle")
        p.add_argument("--port", type=int)
        p.add_argument("--workers", type=int, default=1)
        a = p.parse_args()
        run_naive(a.bundle, a.port) if a.run_server == "naive" else run_litserve(a.bundle, a.port, a.workers)
    else:
        raise SystemExit(main())
