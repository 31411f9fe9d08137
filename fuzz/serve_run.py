"""The long server fuzz run: ``python fuzz/serve_run.py [--requests 20000] [--seed 0]``.

Starts a real ``mobilevec serve`` (V3 Small 0.75 from the shared weights, on a free
127.0.0.1 port) and sends it mutants of valid requests of every protocol it speaks:
Open Inference Protocol v2 (JSON floats, BYTES as JSON and in the binary extension),
TF Serving ``:predict`` (floats and ``{"b64": ...}``), ``/embed`` multipart, with their
headers. Mutations: byte flips, truncation, insertion of random or boundary bytes,
duplicated spans, swapped headers (Content-Type, Content-Length, the binary header
length), JSON edits (numbers, shapes, dtypes, nesting), and valid images with hostile
sizes. Every answer must be a 2xx or a 4xx, or 503/504 under load, with a JSON body; the
server must stay healthy (checked every 200 requests) and its RSS under ``--max-rss-mb``.

Prints one summary line per protocol and each failing case (seed, protocol, mutation,
status). The tests run a short, seeded version of the same idea (tests/test_serve.py);
this run is for hours. Exit status 1 if any case failed.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import requests
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = Path(os.environ.get("MOBILEVEC_WEIGHTS_DIR", REPO.parent / "shared" / "weights"))
DATA = Path(os.environ.get("MOBILEVEC_DATA_DIR", REPO.parent / "shared" / "data"))
MODEL = "mobilenet_v3_small_075_224"
BOUNDARY = b"mobilevecfuzz"
ALLOWED = {503, 504}  # load and time limits, never a bug


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _jpeg(rng: random.Random, photo: Path) -> bytes:
    image = Image.open(photo).convert("RGB")
    side = rng.choice([1, 2, 7, 31, 224, 640])
    image = image.resize((side, max(1, side * rng.choice([1, 2, 3]) // 2)))
    buffer = io.BytesIO()
    image.save(buffer, rng.choice(["JPEG", "PNG", "WEBP"]))
    return buffer.getvalue()


def seeds(rng: random.Random, photo: Path) -> dict[str, tuple[str, dict, bytes]]:
    """One valid request per protocol: (path, headers, body)."""
    image = _jpeg(rng, photo)
    floats = np.random.default_rng(rng.randrange(1 << 30)).random((1, 224, 224, 3),
                                                                   dtype=np.float32)
    oip_json = json.dumps({"inputs": [{"name": "images", "datatype": "FP32",
                                       "shape": list(floats.shape),
                                       "data": floats.ravel().round(4).tolist()}]}).encode()
    header = json.dumps({"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1],
                                     "parameters": {"binary_data_size": len(image) + 4}}],
                         "outputs": [{"name": "feature_vector",
                                      "parameters": {"binary_data": True}}]}).encode()
    binary = header + len(image).to_bytes(4, "little") + image
    b64 = base64.b64encode(image).decode()
    multipart = (b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="file"; '
                 b'filename="a.jpg"\r\nContent-Type: image/jpeg\r\n\r\n' + image + b"\r\n--"
                 + BOUNDARY + b"--\r\n")
    json_type = {"Content-Type": "application/json"}
    return {
        "oip-fp32": (f"/v2/models/{MODEL}/infer", json_type, oip_json),
        "oip-bytes-json": (f"/v2/models/{MODEL}/infer", json_type, json.dumps(
            {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1],
                         "data": [b64]}]}).encode()),
        "oip-binary": (f"/v2/models/{MODEL}/infer",
                       {"Content-Type": "application/octet-stream",
                        "Inference-Header-Content-Length": str(len(header))}, binary),
        "tfs-b64": (f"/v1/models/{MODEL}:predict", json_type,
                    json.dumps({"instances": [{"b64": b64}]}).encode()),
        "tfs-floats": (f"/v1/models/{MODEL}:predict", json_type, json.dumps(
            {"instances": floats.round(3).tolist()}).encode()),
        "embed-multipart": ("/embed", {"Content-Type": "multipart/form-data; boundary="
                                       + BOUNDARY.decode()}, multipart),
    }


_BOUNDARY_BYTES = [b"\x00", b"\xff", b"{", b"}", b"[", b"]", b'"', b"\\", b"-1", b"1e309",
                   b"NaN", b"\r\n", b"--" + BOUNDARY, b"\xff\xd8\xff", b"\x89PNG"]


def mutate(rng: random.Random, headers: dict, body: bytes) -> tuple[str, dict, bytes]:
    """One random mutation of a valid request: (its name, headers, body)."""
    headers, data = dict(headers), bytearray(body)
    kind = rng.choice(["flip", "truncate", "insert", "duplicate", "header", "json", "none"])
    if kind == "flip" and data:
        for _ in range(rng.randint(1, 16)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        del data[rng.randrange(len(data) + 1):]
    elif kind == "insert":
        at = rng.randrange(len(data) + 1)
        data[at:at] = rng.choice(_BOUNDARY_BYTES) * rng.choice([1, 2, 1000])
    elif kind == "duplicate" and data:
        a = rng.randrange(len(data))
        data[a:a] = data[a:a + rng.randint(1, 4096)] * rng.randint(1, 8)
    elif kind == "header":
        name = rng.choice(["Content-Type", "Inference-Header-Content-Length", "Accept"])
        headers[name] = rng.choice(["", "-1", "99999999999", "0", "text/plain",
                                    "application/json", "multipart/form-data",
                                    "application/octet-stream", "\u00e9"])
    elif kind == "json":
        try:
            doc = json.loads(bytes(data))
        except ValueError:
            return kind, headers, bytes(data)
        _edit(rng, doc)
        data = bytearray(json.dumps(doc, allow_nan=True).encode())
    return kind, headers, bytes(data)


def _edit(rng: random.Random, doc) -> None:
    """Replace one value somewhere in ``doc`` by a hostile one."""
    node = doc
    for _ in range(rng.randint(1, 6)):
        if not isinstance(node, dict | list) or not node:
            break
        at = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
        if not isinstance(node[at], dict | list) or rng.random() < 0.3:
            node[at] = _hostile(rng)
            return
        node = node[at]
    if isinstance(node, list):
        node.append(_hostile(rng))


def _hostile(rng: random.Random):
    return rng.choice([None, True, -1, 0, 2**63, 1e308, float("nan"), float("inf"), "",
                       "FP64", "UINT8", "x" * 10_000, [], {}, [[[[[]]]]], [-1, 224, 224, 3],
                       [10**9, 224, 224, 3], [1, 100000, 100000, 3],
                       {"b64": "!!!"}, {"b64": base64.b64encode(b"\x00" * 64).decode()}])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-rss-mb", type=float, default=1536)
    parser.add_argument("--timeout", type=float, default=30, help="seconds per request")
    args = parser.parse_args()
    weights = WEIGHTS / "mobilenet_v3_small_075_224_embedder.tflite"
    photos = sorted((DATA / "imagenet-samples").glob("*.JPEG"))
    if not weights.is_file() or not photos:
        sys.exit(f"needs {weights} and photos under {DATA / 'imagenet-samples'}")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"serve-fuzz-{port}.log", "wb")  # noqa: SIM115
    server = subprocess.Popen([sys.executable, "-m", "mobilevec.cli", "serve", "--model", MODEL,
                               "--weights", str(weights), "--port", str(port),
                               "--max-pixels", "4000000", "--max-body-bytes", "16M"],
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(1200):
            try:
                if requests.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if server.poll() is not None:
                sys.exit(f"the server exited ({server.returncode}); see {log.name}")
            time.sleep(0.2)
        rng = random.Random(args.seed)
        # valid requests made once (encoding 150k floats as JSON costs more than serving them)
        pool = [seeds(rng, rng.choice(photos)) for _ in range(16)]
        statuses: dict[str, Counter] = {}
        failures: list[str] = []
        peak = 0.0
        for case in range(args.requests):
            protocol, (path, headers, body) = rng.choice(list(rng.choice(pool).items()))
            mutation, headers, body = mutate(rng, headers, body)
            try:
                answer = requests.post(url + path, data=body, headers=headers,
                                       timeout=args.timeout)
                status = answer.status_code
                ok = status < 500 or status in ALLOWED
                if ok and status >= 400:
                    ok = "error" in answer.json()  # every refusal is a JSON error
            except (requests.RequestException, ValueError) as e:
                status, ok = type(e).__name__, False
            statuses.setdefault(protocol, Counter())[status] += 1
            if not ok:
                failures.append(f"case {case} (seed {args.seed}): {protocol}, {mutation}: "
                                f"{status}")
            if case % 200 == 199:
                peak = max(peak, rss_mb(server.pid))
                alive = server.poll() is None and requests.get(
                    f"{url}/v2/health/ready", timeout=10).status_code == 200
                if not alive or peak > args.max_rss_mb:
                    failures.append(f"after case {case}: healthy={alive}, RSS {peak:.0f} MB")
                    break
        if server.poll() is None:
            peak = max(peak, rss_mb(server.pid))
        for protocol, counts in sorted(statuses.items()):
            print(f"{protocol:16} {sum(counts.values()):6d} requests  " +
                  "  ".join(f"{k}: {v}" for k, v in sorted(counts.items(), key=str)))
        print(f"server peak RSS {peak:.0f} MB; {len(failures)} failing cases")
        for line in failures[:50]:
            print("  FAILED", line)
        return 1 if failures else 0
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


if __name__ == "__main__":
    sys.exit(main())
