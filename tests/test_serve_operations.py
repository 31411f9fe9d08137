"""``mobilevec serve`` operations: the bearer token, a full queue (503 at once), graceful
SIGTERM, the access log; and the dynamic batcher and config file in-process (no server)."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import threading
import time

import numpy as np
import pytest
from serve_support import Served
from shared_paths import DATA_DIR, V3_TFLITE, require

requests = pytest.importorskip("requests")
pytest.importorskip("aiohttp")

V3 = "mobilenet_v3_small_075_224"
BIG = 48  # images in one request: more than one engine call (--max-batch)
TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def photo() -> bytes:
    return sorted(require(DATA_DIR / "imagenet-samples").glob("*.JPEG"))[0].read_bytes()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve-ops")
    (folder / "token").write_text(TOKEN + "\n")
    served = Served(["--model", V3, "--weights", str(require(V3_TFLITE)), "--max-batch", "8",
                     "--max-queue", "2", "--decode-threads", "1", "--token-file",
                     str(folder / "token")], folder / "server.log", token=TOKEN)
    yield served
    served.stop()


def _infer_body(photo: bytes, n: int) -> dict:
    return {"inputs": [{"name": "images", "shape": [n], "datatype": "BYTES",
                        "data": [base64.b64encode(photo).decode()] * n}]}


def test_a_wrong_or_missing_token_is_refused(server, photo):
    url = f"{server.url}/v1/models/{V3}/metadata"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                    {"Authorization": f"Basic {TOKEN}"}):
        answer = requests.get(url, headers=headers, timeout=10)
        assert answer.status_code == 401 and answer.json()["kind"] == "unauthorized"
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert requests.get(url, headers=server.headers, timeout=10).status_code == 200
    # probes stay open, so that an orchestrator can check health without the secret
    assert requests.get(f"{server.url}/v2/health/live", timeout=10).status_code == 200

    httpclient = pytest.importorskip("tritonclient.http")
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    with pytest.raises(InferenceServerException, match="bearer token"):
        client.get_model_metadata(V3)
    assert client.get_model_metadata(V3, headers=server.headers)["name"] == V3


def test_a_full_queue_answers_503_at_once_and_the_queued_requests_still_succeed(server,
                                                                                 photo):
    url = f"{server.url}/v2/models/{V3}/infer"
    answers: list = []
    body = json.dumps(_infer_body(photo, BIG)).encode()
    halves, go = threading.Semaphore(0), threading.Event()

    def big():  # two requests in flight fill the queue of 2 (--max-queue)
        def chunks():  # held half-sent until the third is refused, however fast the host
            yield body[:len(body) // 2]
            halves.release()
            go.wait(30)
            yield body[len(body) // 2:]

        answers.append(requests.post(url, data=chunks(), timeout=120, headers={
            **server.headers, "Content-Type": "application/json"}))

    threads = [threading.Thread(target=big) for _ in range(2)]
    for thread in threads:
        thread.start()
    assert halves.acquire(timeout=30) and halves.acquire(timeout=30)
    time.sleep(0.2)  # both admitted
    start = time.monotonic()
    refused = requests.post(url, json=_infer_body(photo, 1), headers=server.headers,
                            timeout=60)
    seconds = time.monotonic() - start
    go.set()
    for thread in threads:
        thread.join()
    assert refused.status_code == 503 and refused.json()["kind"] == "queue_full"
    assert refused.headers["Retry-After"] == "1"
    assert seconds < 0.5  # answered at once, not after the queued work ran
    assert [a.status_code for a in answers] == [200, 200]
    assert all(a.json()["outputs"][0]["shape"] == [BIG, 1024] for a in answers)
    metrics = requests.get(f"{server.url}/metrics", headers=server.headers, timeout=10).text
    assert 'mobilevec_errors_total{kind="queue_full"} 1' in metrics


def test_one_access_log_line_per_request(server):
    for _ in range(3):
        requests.get(f"{server.url}/v2/health/live?probe=log-test", timeout=10)
    time.sleep(0.2)
    lines = [line for line in server.log.splitlines() if "probe=log-test" in line]
    assert len(lines) == 3 and all('"GET /v2/health/live?probe=log-test" 200' in line
                                   for line in lines)


def test_sigterm_finishes_the_requests_in_flight_and_refuses_new_ones(server, photo):
    # the last test of the module: it stops the server
    url = f"{server.url}/v2/models/{V3}/infer"
    answer: dict = {}
    body = json.dumps(_infer_body(photo, BIG)).encode()
    sent_half, signalled = threading.Event(), threading.Event()

    def chunks():
        # half the body, the rest only after the signal: the request is in flight when
        # SIGTERM comes on any host (a fixed sleep after starting a whole request lost that
        # race on a fast one: it had been answered already)
        yield body[:len(body) // 2]
        sent_half.set()
        signalled.wait(30)
        yield body[len(body) // 2:]

    def in_flight():
        answer["r"] = requests.post(url, data=chunks(), timeout=60, headers={
            **server.headers, "Content-Type": "application/json"})

    thread = threading.Thread(target=in_flight)
    thread.start()
    assert sent_half.wait(30)
    time.sleep(0.2)  # the server has the headers and the first half
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(requests.ConnectionError):  # no longer listening
        requests.get(f"{server.url}/v2/health/live", timeout=5)
    signalled.set()
    thread.join()
    assert answer["r"].status_code == 200, answer["r"].text
    assert answer["r"].json()["outputs"][0]["shape"] == [BIG, 1024]
    assert server.proc.wait(30) == 0
    assert "SIGTERM: finishing 1 request(s) in flight" in server.log


# --- in-process: the batcher and the config file ---------------------------------------
def _batcher(run, **options):
    from mobilevec.serve.batching import DynamicBatcher

    defaults = {"image_shape": (3, 2, 2), "max_batch": 4, "max_delay_ms": 50,
                "max_queue": 16}
    return DynamicBatcher("m", run, **{**defaults, **options})


def test_the_batcher_groups_concurrent_requests_up_to_max_batch():
    calls = []

    def run(x):
        calls.append(len(x))
        return x.reshape(len(x), -1)[:, :2] * 2

    batcher = _batcher(run)

    async def main():
        inputs = [np.full((1, 3, 2, 2), i, np.float32) for i in range(10)]
        return inputs, await asyncio.gather(*(batcher.submit(x) for x in inputs))

    inputs, outputs = asyncio.run(main())
    batcher.stop()
    for x, y in zip(inputs, outputs, strict=True):  # each request gets its own rows back
        assert np.array_equal(y, np.full((1, 2), 2 * x.flat[0]))
    # fewer engine calls than requests, each padded to one of the warmed-up sizes
    assert set(calls) <= {1, 2, 4} and sum(calls) >= 10 and len(calls) < 10


def test_call_plans_split_or_pad_a_batch_by_the_call_timings():
    from mobilevec.serve.batching import call_plans

    sizes = [1, 2, 4, 8, 16, 32]
    # a call costs its size + 1: 17 images are 16 + 1 (cost 19), not 32 (33); 31 pad to 32
    plans = call_plans(sizes)
    assert plans[17] == [16, 1] and plans[31] == [32] and plans[16] == [16]
    # every call the same time, whatever its size: one call, padded
    assert call_plans(sizes, dict.fromkeys(sizes, 1.0))[17] == [32]
    # V2's timings on one host (ms): 4 images per call is the cheapest per image (2.28 ms),
    # so 32 images are 8 calls of 4 (72.8 ms) rather than one of 32 (91.6 ms)
    v2 = {1: 2.69, 2: 4.71, 4: 9.10, 8: 18.83, 16: 41.21, 32: 91.57}
    assert call_plans(sizes, v2)[32] == [4] * 8
    assert all(sum(plan) >= n for n, plan in enumerate(call_plans(sizes, v2)))


def test_a_split_batch_gives_each_request_its_own_rows():
    calls = []

    def run(x):
        calls.append(len(x))
        return x.reshape(len(x), -1)[:, :2] * 2

    # calls of 1 cost 3, of 2 cost 2, of 4 cost 8: 3 images run as 2 + 2 (the second
    # padded), neither as 4 nor with a call of 1
    batcher = _batcher(run, max_delay_ms=200, call_seconds={1: 3.0, 2: 2.0, 4: 8.0})
    batcher.incoming = lambda: 1

    async def main():
        inputs = [np.full((1, 3, 2, 2), i + 1, np.float32) for i in range(3)]
        return inputs, await asyncio.gather(*(batcher.submit(x) for x in inputs))

    inputs, outputs = asyncio.run(main())
    batcher.stop()
    for x, y in zip(inputs, outputs, strict=True):
        assert np.array_equal(y, np.full((1, 2), 2 * x.flat[0]))
    assert set(calls) == {2}, calls


def test_the_batcher_refuses_past_its_queue_and_drops_abandoned_requests():
    from mobilevec.serve.batching import QueueFull

    gate = threading.Event()
    ran = []

    def run(x):
        gate.wait(10)
        ran.append(len(x))
        return np.zeros((len(x), 2), np.float32)

    batcher = _batcher(run, max_batch=2, max_delay_ms=0, max_queue=2)

    async def main():
        busy = asyncio.ensure_future(batcher.submit(np.zeros((2, 3, 2, 2), np.float32)))
        await asyncio.sleep(0.1)  # taken into the engine, which now blocks
        queued = asyncio.ensure_future(batcher.submit(np.zeros((2, 3, 2, 2), np.float32)))
        await asyncio.sleep(0.05)
        with pytest.raises(QueueFull):
            await batcher.submit(np.zeros((1, 3, 2, 2), np.float32))
        with pytest.raises(asyncio.TimeoutError):  # the caller's timeout: dropped unrun
            await asyncio.wait_for(queued, 0.05)
        assert batcher.depth == 0
        gate.set()
        await busy

    asyncio.run(main())
    batcher.stop()
    assert ran == [2]


def test_a_config_file_names_several_models_and_settings(tmp_path):
    from mobilevec.errors import MobilevecError
    from mobilevec.serve import ServeConfig, read_config_file

    (tmp_path / "serve.toml").write_text(
        'max_batch = 16\nport = 9000\n[[models]]\nname = "v3"\n'
        f'model = "{V3}"\nweights = "w/v3.tflite"\n[[models]]\n'
        'name = "v2"\nmodel = "mobilenet_v2_100_224"\nhandle = "https://example.invalid/x"\n'
        'precision = "bf16"\n')
    config = ServeConfig(**read_config_file(tmp_path / "serve.toml"))
    assert [m.name for m in config.models] == ["v3", "v2"] and config.max_batch == 16
    assert config.models[0].weights == str(tmp_path / "w" / "v3.tflite")
    assert config.models[1].precision == "bf16" and config.host == "127.0.0.1"
    (tmp_path / "bad.toml").write_text('[[models]]\nname = "a/b"\nweights = "x"\n')
    with pytest.raises(MobilevecError, match="letters, digits"):
        read_config_file(tmp_path / "bad.toml")


def test_answers_write_every_float32_so_that_it_reads_back_exactly():
    from mobilevec.serve.inputs import float32_json, json_document

    rng = np.random.default_rng(5)
    spread = rng.standard_normal(1006) * 10.0 ** rng.integers(-40, 38, 1006)
    specials = [0.0, -0.0, 1e-45, -3.4028235e38, 1.1754944e-38, 0.1, 1 / 3, 7.0, 123456789.0,
                1e9, -5.0]
    values = np.concatenate([spread, specials]).astype(np.float32).reshape(3, 339)
    parsed = json.loads(float32_json(values))
    assert all(isinstance(x, float) for row in parsed for x in row)  # no JSON integers
    back = np.array(parsed, np.float32)
    assert back.shape == (3, 339) and np.array_equal(back, values)
    assert np.array_equal(np.signbit(back), np.signbit(values))  # -0.0 stays negative
    doc = json.loads(json_document({"predictions": values[:1], "id": 'a "quoted" id',
                                    "shape": [1, 339], "nested": {"v": values[0, :3]}}))
    assert doc["id"] == 'a "quoted" id' and doc["shape"] == [1, 339]
    assert np.array_equal(np.array(doc["predictions"], np.float32), values[:1])
    assert np.array_equal(np.array(doc["nested"]["v"], np.float32), values[0, :3])
    assert float32_json(np.array([1.0, np.nan], np.float32)) == "[1.0, NaN]"


def test_a_request_past_its_timeout_gets_504_and_never_runs():
    """In-process (aiohttp's test server, a slow fake engine): the per-request timeout."""
    aiohttp_test = pytest.importorskip("aiohttp.test_utils")
    from mobilevec.serve.app import Runtime, build_app
    from mobilevec.serve.batching import DynamicBatcher
    from mobilevec.serve.config import ServeConfig, ServedModel
    from mobilevec.serve.inputs import Decoder

    ran = []

    def slow(x):
        ran.append(len(x))
        time.sleep(0.6)
        return np.zeros((len(x), 4), np.float32)

    batcher = DynamicBatcher("m", slow, image_shape=(3, 2, 2), max_batch=1, max_delay_ms=0,
                             max_queue=8)
    runtime = Runtime("m", V3, 4, (2, 2), "fp32", "fake", batcher,
                      Decoder((2, 2), "none", False, 1000))
    config = ServeConfig(models=(ServedModel("m", V3, weights="unused"),), timeout_s=0.3)
    body = {"inputs": [{"name": "images", "shape": [1, 2, 2, 3], "datatype": "FP32",
                        "data": [0.5] * 12}]}

    async def main():
        async with aiohttp_test.TestClient(aiohttp_test.TestServer(
                build_app(config, {"m": runtime}))) as client:
            first, second = await asyncio.gather(
                client.post("/v2/models/m/infer", json=body),
                client.post("/v2/models/m/infer", json=body))
            return [(r.status, (await r.json())["kind"]) for r in (first, second)]

    answers = asyncio.run(main())
    time.sleep(0.8)  # the engine call that had started finishes; the queued one never runs
    batcher.stop()
    assert answers == [(504, "timeout"), (504, "timeout")]
    assert ran == [1]


def test_the_command_line_refuses_what_it_cannot_serve(tmp_path):
    import subprocess
    import sys

    def serve(*args):
        return subprocess.run([sys.executable, "-m", "mobilevec.cli", "serve", *args],
                              capture_output=True, text=True, timeout=60)

    run = serve()
    assert run.returncode == 2 and "name a model to serve" in run.stderr
    run = serve("--weights", "x.tflite")
    assert run.returncode == 2 and "give --model NAME before each --weights" in run.stderr
    run = serve("--model", V3)
    assert run.returncode == 2 and "give weights or a handle" in run.stderr
    (tmp_path / "empty").write_text("\n")
    run = serve("--model", V3, "--weights", "x", "--token-file", str(tmp_path / "empty"))
    assert run.returncode == 1 and "is empty" in run.stderr


def test_the_batcher_waits_for_company_only_while_some_is_on_its_way():
    calls = []
    batcher = _batcher(lambda x: calls.append(len(x)) or np.zeros((len(x), 2), np.float32),
                       max_delay_ms=2000)
    coming = [0]
    batcher.incoming = lambda: coming[0]

    async def one() -> float:
        start = time.monotonic()
        await batcher.submit(np.zeros((1, 3, 2, 2), np.float32))
        return time.monotonic() - start

    async def main():
        alone = await one()  # nobody else coming: runs at once, not after 2 s
        coming[0] = 1  # one more request is being decoded: wait for it

        async def late():
            await asyncio.sleep(0.3)
            coming[0] = 0
            await batcher.submit(np.zeros((1, 3, 2, 2), np.float32))

        waited, _ = await asyncio.gather(one(), late())
        return alone, waited

    alone, waited = asyncio.run(main())
    batcher.stop()
    assert alone < 0.2 and 0.25 < waited < 1.5
    assert calls == [1, 2]  # the second batch held both


def test_hostile_bodies_get_4xx_in_process():
    """Deep nesting, a gzip bomb, NaN pixels, a broken multipart form, a huge shape: each a
    4xx naming the problem (in-process, a fake engine that must never run)."""
    import gzip

    aiohttp_test = pytest.importorskip("aiohttp.test_utils")
    from mobilevec.serve.app import Runtime, build_app
    from mobilevec.serve.batching import DynamicBatcher
    from mobilevec.serve.config import ServeConfig, ServedModel
    from mobilevec.serve.inputs import Decoder

    ran = []
    batcher = DynamicBatcher("m", lambda x: ran.append(x) or np.zeros((len(x), 4)),
                             image_shape=(3, 2, 2), max_batch=1, max_delay_ms=0, max_queue=8)
    runtime = Runtime("m", V3, 4, (2, 2), "fp32", "fake", batcher,
                      Decoder((2, 2), "none", False, 1000))
    config = ServeConfig(models=(ServedModel("m", V3, weights="unused"),),
                         max_body_bytes=1 << 20)

    def tensor(data: str, shape: str = "[1, 2, 2, 3]") -> bytes:
        return (f'{{"inputs": [{{"name": "a", "shape": {shape}, "datatype": "FP32", '
                f'"data": {data}}}]}}').encode()

    cases = [  # (path, body, headers, status, kind, words)
        ("/v1/models/m:predict", b'{"instances": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}",
         {}, 400, "bad_json", "nested too deeply"),
        ("/v1/models/m:predict", gzip.compress(b"[" + b"0," * (20 << 20) + b"0]"),
         {"Content-Encoding": "gzip"}, 413, "body_too_large", "limit of 1048576"),
        ("/v2/models/m/infer", tensor("[NaN" + ", 0.5" * 11 + "]"), {}, 400, "out_of_range",
         "NaN"),
        ("/v2/models/m/infer", tensor("[255" + ", 0.5" * 11 + "]"), {}, 400, "out_of_range",
         "divide 8-bit values by 255"),
        ("/v2/models/m/infer", tensor("[1]", "[99999999, 99999999, 2, 3]"), {}, 400,
         "wrong_shape", "1 values for shape"),
        ("/embed", b"--x\r\n", {"Content-Type": "multipart/form-data; boundary=x"}, 400,
         "bad_multipart", "multipart"),
    ]

    async def main():
        async with aiohttp_test.TestClient(aiohttp_test.TestServer(
                build_app(config, {"m": runtime}))) as client:
            out = []
            for path, body, headers, *_ in cases:
                r = await client.post(path, data=body, headers=headers)
                out.append((r.status, await r.json()))
            return out

    answers = asyncio.run(main())
    batcher.stop()
    for (status, body), (path, _, _, want, kind, words) in zip(answers, cases, strict=True):
        assert (status, body["kind"]) == (want, kind) and words in body["error"], (path, body)
    assert not ran
