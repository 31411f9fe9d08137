"""Which HTTP stack `mobilevec serve` runs on: Starlette on uvicorn (httptools, uvloop) or
aiohttp, measured on what the server does most: a POST of one 224x224x3 float32 image
(602 KB, the binary-data body tritonclient sends) answered with a 1024-float vector, and
a GET of a small JSON document. No model runs: this measures the stack alone.

    python benchmarks/serve_http_stack.py [--seconds 3] [--concurrency 1 32]

Each server runs in its own process on one core's worth of load (a single event loop);
the load generator is an aiohttp client in this process. Results: docs/serve.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import socket
import statistics
import sys
import time

BODY = bytes(224 * 224 * 3 * 4)
VECTOR = json.dumps([0.125] * 1024).encode()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _starlette(port: int) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def infer(request):
        body = await request.body()
        assert len(body) == len(BODY)
        return Response(VECTOR, media_type="application/json")

    async def ready(request):
        return JSONResponse({"ready": True})

    app = Starlette(routes=[Route("/infer", infer, methods=["POST"]), Route("/ready", ready)])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", access_log=False,
                loop="uvloop", http="httptools")


def _aiohttp(port: int) -> None:
    from aiohttp import web

    async def infer(request):
        body = await request.read()
        assert len(body) == len(BODY)
        return web.Response(body=VECTOR, content_type="application/json")

    async def ready(request):
        return web.json_response({"ready": True})

    app = web.Application(client_max_size=2 << 20)
    app.add_routes([web.post("/infer", infer), web.get("/ready", ready)])
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


async def _load(port: int, path: str, concurrency: int, seconds: float) -> dict:
    import aiohttp

    latencies: list[float] = []
    url = f"http://127.0.0.1:{port}{path}"
    async with aiohttp.ClientSession() as session:
        end = time.perf_counter() + seconds

        async def client():
            while time.perf_counter() < end:
                t = time.perf_counter()
                if path == "/infer":
                    async with session.post(url, data=BODY) as r:
                        await r.read()
                else:
                    async with session.get(url) as r:
                        await r.read()
                latencies.append(time.perf_counter() - t)

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    latencies.sort()
    return {"rps": round(len(latencies) / wall, 1),
            "p50_ms": round(1000 * statistics.median(latencies), 2),
            "p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 2)}


def _wait(port: int) -> None:
    for _ in range(200):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("server did not start")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    args = parser.parse_args()
    results = {}
    for name, target in (("starlette+uvicorn", _starlette), ("aiohttp", _aiohttp)):
        port = _free_port()
        proc = multiprocessing.get_context("spawn").Process(target=target, args=(port,))
        proc.start()
        try:
            _wait(port)
            for path in ("/ready", "/infer"):
                for c in args.concurrency:
                    results[f"{name} {path} c={c}"] = asyncio.run(
                        _load(port, path, c, args.seconds))
        finally:
            proc.terminate()
            proc.join()
    for key, value in results.items():
        print(f"{key:36} {value}")
    json.dump(results, sys.stderr)


if __name__ == "__main__":
    main()
