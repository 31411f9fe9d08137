"""`mobilevec serve` under load, against peers serving the same model on the same engine.

    python benchmarks/serve.py [--model v3|v2] [--seconds 4] [--concurrency 1 8 32 128]
                               [--peers fastapi litserve rayserve bentoml] [--json out.json]

Every server gets the same request: one real JPEG from ../shared/data/imagenet-samples,
base64 in TF Serving's JSON (`{"instances": [{"b64": ...}]}`), answered with its vector.
Servers, each in its own process on 127.0.0.1:

- **mobilevec**: `mobilevec serve` (dynamic batching, `--max-batch 32 --max-delay-ms 5`);
- **fastapi**: a plain FastAPI app on uvicorn, one engine call per request (what a user
  writes first);
- **litserve**: LitServe with its own batching on (`max_batch_size=32`,
  `batch_timeout=0.005`), if installed (`pip install 'mobilevec[bench]'`);
- **rayserve**: Ray Serve, one deployment with `serve.batch` (32, 5 ms);
- **bentoml**: BentoML's server on a batchable API (`benchmarks/serve_bentoml.py`,
  `max_batch_size=32`);
- **mobilevec-ray**: `mobilevec serve --runner ray` (one replica), for Ray Serve's cost.

All run `mobilevec.embedder` (the default engine, fp32) and decode with
`load_array_bytes`, so only the serving differs. The load generator (aiohttp, in this
process) runs closed loops at each concurrency (throughput, p50/p99/p99.9 latency), then
an open loop at 4x the best sustained mobilevec rate (Poisson arrivals) to see what the
excess gets (503s and how fast) and the server's peak RSS. The offline `embed` rate of the
same engine (`embed_files`, decode processes) and its single-image latency are the
yardsticks. Results: docs/benchmarks.md ("Serving").
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MOBILEVEC_WEIGHTS_DIR", REPO.parent / "shared" / "weights"))
DATA = Path(os.environ.get("MOBILEVEC_DATA_DIR", REPO.parent / "shared" / "data"))
MODELS = {"v3": ("mobilenet_v3_small_075_224",
                 SHARED / "mobilenet_v3_small_075_224_embedder.tflite"),
          "v2": ("mobilenet_v2_100_224", SHARED / "mobilenet_v2_1.0_224_tfslim_npy")}
MAX_BATCH, DELAY_MS = 32, 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the peers (run in their own process: `serve.py --peer NAME`) ------------------------
def _embedder(model: str, weights: str):
    import mobilevec

    return mobilevec.embedder(model, weights)


def _decode(body: dict) -> np.ndarray:
    from mobilevec.data.images import load_array_bytes

    data = base64.b64decode(body["instances"][0]["b64"])
    return load_array_bytes(data, 224, draft=True)


def _run_fastapi(model: str, weights: str, port: int) -> None:
    import threading

    import uvicorn
    from fastapi import FastAPI

    emb = _embedder(model, weights)
    lock = threading.Lock()  # one engine call at a time, as the engine requires
    app = FastAPI()

    @app.post("/predict")
    def predict(body: dict):
        x = _decode(body)[None]
        with lock:
            vector = emb(x)[0]
        return {"predictions": [vector.tolist()]}

    @app.get("/health")
    def health():
        return {"ok": True}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", access_log=False)


try:  # LitServe pickles the API into its worker process: the class lives at module level
    import litserve as _litserve
except ImportError:
    _litserve = None

if _litserve is not None:
    class LitEmbedApi(_litserve.LitAPI):
        def __init__(self, model: str, weights: str, **options):
            super().__init__(**options)
            self.model_name, self.weights = model, weights

        def setup(self, device):
            self.emb = _embedder(self.model_name, self.weights)

        def decode_request(self, request):
            return _decode(request)

        def batch(self, inputs):
            return np.stack(inputs)

        def predict(self, x):
            return self.emb(x)

        def unbatch(self, output):
            return list(output)

        def encode_response(self, output):
            return {"predictions": [output.tolist()]}


def _run_litserve(model: str, weights: str, port: int) -> None:
    if _litserve is None:
        raise SystemExit("litserve is not installed")
    api = LitEmbedApi(model, weights, max_batch_size=MAX_BATCH, batch_timeout=DELAY_MS / 1000)
    server = _litserve.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1)
    server.run(host="127.0.0.1", port=port, generate_client_file=False, log_level="error")


def _run_rayserve(model: str, weights: str, port: int) -> None:
    """Ray Serve as its guide writes it: one deployment, ``serve.batch`` on the model call."""
    import ray
    from ray import serve
    from starlette.requests import Request

    @serve.deployment(max_ongoing_requests=4 * MAX_BATCH)
    class Embed:
        def __init__(self):
            self.emb = _embedder(model, weights)

        @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=DELAY_MS / 1000)
        async def embed(self, images: list[np.ndarray]) -> list[np.ndarray]:
            return list(self.emb(np.stack(images)))

        async def __call__(self, request: Request):
            if request.method == "GET":
                return {"ok": True}
            vector = await self.embed(_decode(await request.json()))
            return {"predictions": [vector.tolist()]}

    import signal

    # SIGTERM from the benchmark: exit through atexit, which stops Ray's local cluster
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(Embed.bind(), route_prefix="/", blocking=True)


def _run_bentoml(model: str, weights: str, port: int) -> None:
    """BentoML's own server (``bentoml serve``) on the batchable service below."""
    env = {**os.environ, "MOBILEVEC_BENCH_MODEL": model, "MOBILEVEC_BENCH_WEIGHTS": weights}
    os.execvpe(sys.executable, [sys.executable, "-m", "bentoml", "serve",
                                "serve_bentoml:Embed", "--working-dir", str(Path(__file__).parent),
                                "--host", "127.0.0.1", "--port", str(port)], env)


# --- the load generator ------------------------------------------------------------------
def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def _closed_loop(url: str, payloads: list[bytes], concurrency: int,
                       seconds: float) -> dict:
    import aiohttp

    latencies: list[float] = []
    codes: dict[int, int] = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        end = time.perf_counter() + seconds
        counter = iter(range(10**9))

        async def client():
            while time.perf_counter() < end:
                body = payloads[next(counter) % len(payloads)]
                t = time.perf_counter()
                async with session.post(url, data=body,
                                        headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                    codes[r.status] = codes.get(r.status, 0) + 1
                if r.status == 200:
                    latencies.append(time.perf_counter() - t)

        start, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        wall = time.perf_counter() - start
        cpu = time.process_time() - cpu
    return {"concurrency": concurrency, "rps": round(len(latencies) / wall, 1),
            # the load generator shares the host's cores with the server: its own share
            "client_cores": round(cpu / wall, 2),
            "p50_ms": round(1000 * _percentile(latencies, 0.5), 1),
            "p99_ms": round(1000 * _percentile(latencies, 0.99), 1),
            "p999_ms": round(1000 * _percentile(latencies, 0.999), 1), "codes": codes}


async def _open_loop(url: str, payloads: list[bytes], rate: float, seconds: float) -> dict:
    """Poisson arrivals at ``rate``/s; latency from each request's scheduled start."""
    import aiohttp

    ok: list[float] = []
    refused: list[float] = []
    codes: dict[int, int] = {}
    rng = random.Random(0)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=60)) as session:
        async def one(body: bytes, scheduled: float):
            try:
                async with session.post(url, data=body,
                                        headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                    status = r.status
            except aiohttp.ClientError:
                status = -1
            codes[status] = codes.get(status, 0) + 1
            (ok if status == 200 else refused).append(time.perf_counter() - scheduled)

        tasks, start, t, i = [], time.perf_counter(), 0.0, 0
        while t < seconds:
            t += rng.expovariate(rate)
            delay = start + t - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(payloads[i % len(payloads)], start + t)))
            i += 1
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - start
    return {"rate": round(rate, 1), "sent": i, "codes": codes,
            "ok_rps": round(len(ok) / wall, 1),
            "ok_p99_ms": round(1000 * _percentile(ok, 0.99), 1),
            "refused_p99_ms": round(1000 * _percentile(refused, 0.99), 1)}


def _peak_rss_mb(pid: int) -> float:
    """Peak resident memory of a process and its children so far (VmHWM), MB."""
    total = 0
    for p in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return round(total / 1024, 1)


def _children(pid: int) -> list[int]:
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    out = [int(k) for k in kids]
    for k in list(out):
        out += _children(k)
    return out


def _start(name: str, model: str, weights: Path, port: int) -> subprocess.Popen:
    if name in ("mobilevec", "mobilevec-ray"):
        cmd = [sys.executable, "-m", "mobilevec.cli", "serve", "--model", f"m={model}",
               "--weights", str(weights), "--port", str(port), "--max-batch", str(MAX_BATCH),
               "--max-delay-ms", str(DELAY_MS)]
        cmd += ["--runner", "ray"] if name == "mobilevec-ray" else ["--no-access-log"]
    else:
        cmd = [sys.executable, __file__, "--peer", name, "--model-name", model, "--weights",
               str(weights), "--port", str(port)]
    # a session of its own: LitServe's workers outlived a terminated parent, idling at
    # 6 % of a core each through the runs that followed
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's whole process group, then SIGKILL what is left."""
    import signal

    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        with contextlib.suppress(ProcessLookupError):  # the leader is gone, workers may not be
            os.killpg(proc.pid, signal.SIGKILL)
        return


def _wait(port: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        for path in ("/v2/health/ready", "/health", "/readyz"):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
        time.sleep(0.5)
    raise RuntimeError("server did not start")


def _offline(model: str, weights: Path, photos: list[Path]) -> dict:
    emb = _embedder(model, str(weights))
    emb.embed_files(photos[:16], draft=True)  # warm: engine compiled, decoders forked
    start = time.perf_counter()
    result = emb.embed_files(photos, draft=True, batch_size=MAX_BATCH)
    rate = len(result.paths) / (time.perf_counter() - start)
    from mobilevec.data.images import load_array

    x = load_array(photos[0], 224, draft=True)[None]
    times = []
    for _ in range(30):
        t = time.perf_counter()
        emb(x)
        times.append(time.perf_counter() - t)
    return {"embed_images_per_second": round(rate, 1),
            "single_image_ms": round(1000 * statistics.median(times), 2),
            "vectors": result.vectors[:8], "paths": result.paths[:8]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=sorted(MODELS), default="v3")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--peers", nargs="*", default=["fastapi", "litserve"])
    parser.add_argument("--json")
    parser.add_argument("--peer", help=argparse.SUPPRESS)
    parser.add_argument("--model-name", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer:
        {"fastapi": _run_fastapi, "litserve": _run_litserve, "rayserve": _run_rayserve,
         "bentoml": _run_bentoml}[args.peer](
            args.model_name, args.weights, args.port)
        return

    model, weights = MODELS[args.model]
    photos = sorted((DATA / "imagenet-samples").glob("*.JPEG"))
    payloads = [json.dumps({"instances": [{"b64": base64.b64encode(p.read_bytes()).decode()}]})
                .encode() for p in photos]
    offline = _offline(model, weights, photos)
    print(f"offline embed: {offline['embed_images_per_second']} img/s; one image "
          f"{offline['single_image_ms']} ms", flush=True)
    results: dict = {"model": model, "offline": {k: v for k, v in offline.items()
                                                 if k not in ("vectors", "paths")},
                     "servers": {}}
    for name in ["mobilevec", *args.peers]:
        port = _free_port()
        proc = _start(name, model, weights, port)
        try:
            _wait(port, proc)
        except RuntimeError as e:
            print(f"{name}: skipped ({e})", flush=True)
            _stop(proc)
            continue
        url = (f"http://127.0.0.1:{port}/v1/models/m:predict" if name.startswith("mobilevec")
               else f"http://127.0.0.1:{port}/predict")
        try:
            # the same vectors as offline embed
            import urllib.request

            worst = 0.0
            for i in range(8):
                request = urllib.request.Request(url, data=payloads[i], headers={
                    "Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=60) as r:
                    answer = json.loads(r.read())  # BentoML answers the bare list
                    got = np.array(answer["predictions"][0] if isinstance(answer, dict)
                                   else answer[0], np.float32)
                worst = max(worst, float(np.abs(got - offline["vectors"][i]).max()))
            rows = [asyncio.run(_closed_loop(url, payloads, c, args.seconds))
                    for c in args.concurrency]
            entry = {"max_abs_diff_to_embed": worst, "closed_loop": rows}
            if name == "mobilevec":
                best = max(r["rps"] for r in rows)
                entry["overload"] = asyncio.run(_open_loop(url, payloads, 4 * best,
                                                           args.seconds))
            entry["peak_rss_mb"] = _peak_rss_mb(proc.pid)
            results["servers"][name] = entry
            for r in rows:
                print(f"{name:10} c={r['concurrency']:<4} {r['rps']:7.1f} img/s  p50 "
                      f"{r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f}  p99.9 "
                      f"{r['p999_ms']:7.1f}  client {r['client_cores']:.2f} cores  "
                      f"{r['codes']}", flush=True)
            if "overload" in entry:
                print(f"{name:10} overload {entry['overload']}", flush=True)
            print(f"{name:10} vectors vs embed: max |diff| {worst:.2e}; peak RSS "
                  f"{entry['peak_rss_mb']} MB", flush=True)
        finally:
            _stop(proc)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
