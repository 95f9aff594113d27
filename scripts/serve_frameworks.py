"""Which HTTP stack should `speedtrain serve` use? The same batcher, cache and model behind four of them.

    python scripts/serve_frameworks.py outputs/<run>/bundle [--duration 8] [--repeats 3]

Stacks (one worker process, one model thread, each started here on a free loopback port):
- ``asgi-uvicorn``: speedtrain's plain ASGI app on uvicorn with uvloop + httptools (what `speedtrain serve` runs);
- ``starlette``: a Starlette route around the same core, same uvicorn;
- ``fastapi``: a FastAPI route with a pydantic request model (automatic validation and docs), same uvicorn;
- ``asgi-granian``: the plain ASGI app on granian (Rust HTTP server), one worker, one runtime thread.

Scenarios, closed loop: ``http`` (64 connections, every text a cache hit after the warm-up: HTTP + JSON cost
alone), ``model`` (64 connections, new texts: the model's cost dominates), ``latency`` (8 connections, new texts).
Medians of ``--repeats``; the table goes to stdout and, with ``--out``, JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from speedtrain.bench.http_load import LoadOptions, make_bodies, make_texts, results_table, run_load
from speedtrain.bench.latency import machine_info
from speedtrain.bench.server_process import ServerProcess, free_port

STACKS = ("asgi-uvicorn", "starlette", "fastapi", "asgi-granian")
SCENARIOS = {"http": (64, 1.0), "model": (64, 0.0), "latency": (8, 0.0)}  # connections, repeated share


def options_json(bundle: str, port: int) -> str:
    from dataclasses import asdict

    from speedtrain.serve.options import ServeOptions

    return json.dumps(asdict(ServeOptions(bundle=bundle, port=port, workers=1, threads=1).check()))


def run_stack(stack: str, bundle: str, port: int) -> None:
    import uvicorn

    from speedtrain.serve.app import HTTPError, ServeApp
    from speedtrain.serve.options import OPTIONS_ENV, ServeOptions

    os.environ[OPTIONS_ENV] = options_json(bundle, port)
    if stack == "asgi-granian":
        from granian import Granian

        Granian("speedtrain.serve.app:app_from_env", address="127.0.0.1", port=port, interface="asgi", workers=1,
                runtime_threads=1, factory=True, log_level="warning").serve()
        return
    if stack == "asgi-uvicorn":
        app = ServeApp(ServeOptions(**json.loads(os.environ[OPTIONS_ENV])))
    else:
        core = ServeApp(ServeOptions(**json.loads(os.environ[OPTIONS_ENV])))

        async def lifespan(_):
            await core.startup()
            yield
            await core.shutdown()

        if stack == "starlette":
            import orjson
            from starlette.applications import Starlette
            from starlette.requests import Request
            from starlette.responses import JSONResponse, Response
            from starlette.routing import Route

            async def predict(request: Request):
                try:
                    texts = core.parse(await request.body())
                    return Response(orjson.dumps({"predictions": await core.predict(texts)}),
                                    media_type="application/json")
                except HTTPError as err:
                    return JSONResponse({"error": err.message}, status_code=err.status)

            async def readyz(request: Request):
                return JSONResponse({"ready": core.ready}, status_code=200 if core.ready else 503)

            app = Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/readyz", readyz)],
                            lifespan=lifespan)
        else:
            from fastapi import FastAPI

            app = FastAPI(lifespan=lifespan)

            @app.post("/predict")
            async def predict(request: TextsRequest) -> dict:
                return {"predictions": await core.predict(request.texts)}

            @app.get("/readyz")
            async def readyz() -> dict:
                return {"ready": core.ready}

    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools", log_level="warning",
                access_log=False)


try:  # module level, so FastAPI can resolve the annotation
    from pydantic import BaseModel

    class TextsRequest(BaseModel):
        texts: list[str]
except ImportError:  # pragma: no cover - pydantic comes with fastapi, a dev dependency
    pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bundle")
    parser.add_argument("--stacks", default=",".join(STACKS))
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out")
    args = parser.parse_args()
    pool = (Path(args.bundle) / "benchmark_texts.txt").read_text().splitlines()
    rows, serial = [], 0
    for stack in args.stacks.split(","):
        port = free_port()
        server = ServerProcess(stack, [sys.executable, __file__, "--run", stack, args.bundle, "--port", str(port)],
                               port, "/readyz")
        try:
            server.wait_ready()
            for scenario, (conns, repeat) in SCENARIOS.items():
                runs = []
                for rep in range(args.repeats):
                    n = 200_000
                    texts = make_texts(pool, n, repeat, hot=200, seed=rep, first=serial)
                    serial += n
                    r = run_load(LoadOptions(url=server.url + "/predict", concurrency=conns,
                                             duration_s=args.duration, warmup_s=args.warmup), make_bodies(texts))
                    r.update(server=stack, scenario=scenario, repeat_share=repeat)
                    runs.append(r)
                runs.sort(key=lambda r: r["requests_per_s"])
                rows.append(runs[len(runs) // 2])
                print(results_table(rows[-1:]).splitlines()[-1], flush=True)
        finally:
            server.stop()
    print("\n" + results_table(rows))
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": machine_info(), "table": rows}, indent=1))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--run":
        run_stack(sys.argv[2], sys.argv[3], int(sys.argv[5]))
    else:
        raise SystemExit(main())
