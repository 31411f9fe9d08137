"""The HTTP application: Open Inference Protocol v2, TF Serving REST, ``/embed``,
``/metrics``, ``/openapi.json``; on aiohttp (chosen by measurement, docs/serve.md).

Every refusal is a JSON object ``{"error": message, "kind": kind}`` (TF Serving clients
read ``error``) with a 4xx status, or 503/504 for load and time limits; a request's
problem never reaches the batch other requests share (:mod:`.inputs`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._optional import require
from .._version import __version__
from .batching import DynamicBatcher, QueueFull, Stopped
from .config import ServeConfig
from .inputs import (
    Decoder,
    RequestError,
    bad,
    json_document,
    oip_response,
    parse_oip,
    parse_predict,
)
from .metrics import Metrics
from .openapi import openapi_document

log = logging.getLogger(__name__)
access_log = logging.getLogger("mobilevec.serve.access")

INPUT_NAME, OUTPUT_NAME = "images", "feature_vector"
_OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})  # probes need no token
_APP: Any = None  # aiohttp's AppKey objects, made on first use (aiohttp is optional)


@dataclass
class Runtime:
    """One served model, running: what it is, its batcher and its decoder."""

    name: str
    model: str  # the registry name
    num_features: int
    size: tuple[int, int]
    precision: str
    backend: str
    batcher: DynamicBatcher
    decoder: Decoder
    fingerprint: str = ""

    def describe_input(self) -> list[int]:
        return [-1, self.size[0], self.size[1], 3]


def _web():
    return require("aiohttp.web", "serve", purpose="mobilevec serve")


def error_response(status: int, kind: str, message: str,
                   headers: dict[str, str] | None = None):
    web = _web()
    return web.Response(status=status, body=json.dumps({"error": message, "kind": kind}),
                        content_type="application/json", headers=headers)


class State:
    """What the handlers share: the models, metrics, limits, the decode pool."""

    def __init__(self, config: ServeConfig, models: dict[str, Runtime]):
        self.config, self.models = config, models
        self.default_model = next(iter(models))
        self.metrics = Metrics(config.max_batch,
                               lambda: {n: m.batcher.depth for n, m in models.items()})
        self.pool = ThreadPoolExecutor(max_workers=config.decode_threads or _cores(),
                                       thread_name_prefix="decode",
                                       initializer=_lower_priority)
        self.stopping = False
        self.in_flight = 0
        self.pending = dict.fromkeys(models, 0)
        self.preparing = dict.fromkeys(models, 0)
        for name, runtime in models.items():
            runtime.batcher.incoming = lambda name=name: self.preparing[name]

    def model(self, name: str, request=None) -> Runtime:
        """The model ``name`` (recorded on ``request`` for the metrics), else 404."""
        runtime = self.models.get(name)
        if runtime is None:
            raise RequestError(404, "unknown_model", f"no model {name!r}; this server has "
                                                     f"{sorted(self.models)}")
        if request is not None:
            request[_APP.model] = name
        return runtime

    @contextlib.contextmanager
    def admitted(self, runtime: Runtime) -> Iterator[list[bool]]:
        """Admission control, before the body is read: at most ``queue_limit`` requests
        per model between arrival and answer (reading, decoding, queued), so that past it
        the excess is answered 503 at once and neither the decode pool's backlog nor
        memory grows with the load."""
        if self.pending[runtime.name] >= self.config.queue_limit:
            raise RequestError(503, "queue_full", f"model {runtime.name!r}: "
                                                  f"{self.pending[runtime.name]} requests "
                                                  "waiting; retry later", {"Retry-After": "1"})
        self.pending[runtime.name] += 1  # one event loop: no lock needed
        self.preparing[runtime.name] += 1
        ticket = [True]  # still preparing (read, parse, decode); vectors() clears it
        try:
            yield ticket
        finally:
            self.pending[runtime.name] -= 1
            if ticket[0]:
                self.preparing[runtime.name] -= 1

    async def prepare(self, fn: Callable[[], Any]) -> Any:
        """Parse and decode off the event loop (in parallel with inference)."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn)

    async def vectors(self, runtime: Runtime, images: np.ndarray, deadline: float,
                      ticket: list[bool]) -> np.ndarray:
        if ticket[0]:
            ticket[0] = False
            self.preparing[runtime.name] -= 1
        left = deadline - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            return await asyncio.wait_for(runtime.batcher.submit(images), left)
        except QueueFull:
            raise RequestError(503, "queue_full", f"model {runtime.name!r}: the queue is "
                                                  "full; retry later",
                               {"Retry-After": "1"}) from None
        except Stopped:
            raise RequestError(503, "shutting_down", "the server is shutting down",
                               {"Retry-After": "1", "Connection": "close"}) from None
        except TimeoutError:
            raise RequestError(504, "timeout", f"no answer within the request timeout of "
                                               f"{self.config.timeout_s:g} s") from None


# Decode threads run at a lower priority than the event loop and the engine threads, as
# the pipeline's decode processes do: on a saturated CPU the loop must still answer the
# excess (503) and the health probes at once.
DECODE_NICENESS = 10


def _lower_priority() -> None:
    import os
    import threading

    with contextlib.suppress(AttributeError, OSError):  # Linux: a thread is a task
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid,
                       min(19, os.getpriority(os.PRIO_PROCESS, tid) + DECODE_NICENESS))


def _cores() -> int:
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


async def _body(request) -> bytes:
    web = _web()
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(request.app[_APP.state].config.max_body_bytes) from None


def _check_version(model: Runtime, request) -> None:
    version = request.match_info.get("version")
    if version not in (None, "1"):
        raise RequestError(404, "unknown_version", f"model {model.name!r} has version 1 "
                                                   f"only, not {version!r}")


def _too_large(limit: int) -> RequestError:
    return RequestError(413, "body_too_large", f"the request body exceeds the limit of "
                                               f"{limit} bytes (--max-body-bytes)",
                        {"Connection": "close"})


def _size(response) -> str:
    body = getattr(response, "body", None)
    return str(len(body)) if isinstance(body, bytes | bytearray) else "-"


def _allow(e) -> dict[str, str] | None:
    allow = e.headers.get("Allow") if e.headers else None
    return {"Allow": allow} if allow else None


# --- middleware: access log + metrics, then token, limits and errors -------------------
def _endpoint(request) -> str:
    info = request.match_info
    route = info.route.resource.canonical if info.route.resource is not None else "unmatched"
    return route


def _middlewares(state: State):
    web = _web()

    @web.middleware
    async def observe(request, handler):
        start = time.monotonic()
        request[_APP.deadline] = start + state.config.timeout_s
        state.in_flight += 1
        kind = ""
        try:
            response = await handler(request)
        except RequestError as e:
            kind = e.kind
            response = error_response(e.status, e.kind, e.message, e.headers)
        except web.HTTPException as e:  # aiohttp's own (404 route, 405 method)
            kind = {404: "not_found", 405: "method_not_allowed"}.get(e.status, "http")
            response = error_response(e.status, kind, f"{request.method} {request.path}: "
                                                      f"{e.reason}", _allow(e))
        except asyncio.CancelledError:
            state.metrics.errors.inc("client_gone")  # the client closed the connection
            raise
        except Exception as e:  # noqa: BLE001 - one request's bug must not take the server
            log.exception("%s %s failed", request.method, request.path)
            kind = "internal"
            response = error_response(500, "internal", f"internal error ({type(e).__name__})")
        finally:
            state.in_flight -= 1
        seconds = time.monotonic() - start
        endpoint = _endpoint(request)
        if kind:
            state.metrics.errors.inc(kind)
        state.metrics.requests.inc(endpoint, request.get(_APP.model, ""), str(response.status))
        state.metrics.latency.observe(seconds, endpoint)
        if state.config.access_log:
            access_log.info('%s "%s %s" %d %s %.1fms%s', request.remote, request.method,
                            request.path_qs, response.status, _size(response), 1000 * seconds,
                            f" kind={kind}" if kind else "")
        return response

    @web.middleware
    async def guard(request, handler):
        token = state.config.token
        if token is not None and request.path not in _OPEN_PATHS:
            given = request.headers.get("Authorization", "")
            scheme, _, value = given.partition(" ")
            if not (scheme.lower() == "bearer"
                    and hmac.compare_digest(value.strip().encode(), token.encode())):
                raise RequestError(401, "unauthorized", "a valid bearer token is needed "
                                                        "(Authorization: Bearer TOKEN)",
                                   {"WWW-Authenticate": 'Bearer realm="mobilevec"'})
        if state.stopping and request.path not in _OPEN_PATHS:
            raise RequestError(503, "shutting_down", "the server is shutting down",
                               {"Retry-After": "1", "Connection": "close"})
        length = request.content_length
        if length is not None and length > state.config.max_body_bytes:
            raise _too_large(state.config.max_body_bytes)
        return await handler(request)

    return [observe, guard]


# --- handlers ----------------------------------------------------------------------------
def _json(data: Any, status: int = 200):
    return _web().Response(status=status, body=json_document(data),
                           content_type="application/json")


def _handlers(state: State) -> dict[str, Callable[..., Awaitable]]:
    web = _web()

    async def live(request):
        return _json({"live": True})

    async def ready(request):
        ok = not state.stopping
        return _json({"ready": ok}, 200 if ok else 503)

    async def server_metadata(request):
        return _json({"name": "mobilevec", "version": __version__,
                      "extensions": ["binary_tensor_data"]})

    async def model_metadata(request):
        m = state.model(request.match_info["name"], request)
        return _json({"name": m.name, "versions": ["1"], "platform": f"mobilevec_{m.backend}",
                      "inputs": [{"name": INPUT_NAME, "datatype": "FP32",
                                  "shape": m.describe_input()}],
                      "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32",
                                   "shape": [-1, m.num_features]}],
                      "parameters": {"model": m.model, "precision": m.precision,
                                     "bytes_input": "BYTES [N] of encoded images (JPEG, "
                                                    "PNG, ...) also accepted"}})

    async def model_ready(request):
        state.model(request.match_info["name"], request)
        return _json({"name": request.match_info["name"], "ready": not state.stopping},
                     200 if not state.stopping else 503)

    async def infer(request):
        m = state.model(request.match_info["name"], request)
        _check_version(m, request)
        with state.admitted(m) as ticket:
            body = await _body(request)
            header = request.headers.get("Inference-Header-Content-Length")
            parsed = await state.prepare(lambda: parse_oip(body, header, m.decoder,
                                                           output_name=OUTPUT_NAME))
            vectors = await state.vectors(m, parsed.images, request[_APP.deadline],
                                          ticket)
        out, headers = oip_response(m.name, parsed, vectors)
        return web.Response(body=out, headers=headers)

    async def tfs_status(request):
        state.model(request.match_info["name"], request)
        return _json({"model_version_status": [
            {"version": "1", "state": "AVAILABLE" if not state.stopping else "UNLOADING",
             "status": {"error_code": "OK", "error_message": ""}}]})

    async def tfs_metadata(request):
        m = state.model(request.match_info["name"], request)

        def tensor(name: str, dims: list[int]) -> dict:
            return {"dtype": "DT_FLOAT", "tensor_shape": {"dim": [{"size": str(d), "name": ""}
                                                                  for d in dims],
                                                          "unknown_rank": False},
                    "name": name}

        signature = {"inputs": {INPUT_NAME: tensor(INPUT_NAME, m.describe_input())},
                     "outputs": {OUTPUT_NAME: tensor(OUTPUT_NAME, [-1, m.num_features])},
                     "method_name": "tensorflow/serving/predict"}
        return _json({"model_spec": {"name": m.name, "signature_name": "", "version": "1"},
                      "metadata": {"signature_def": {"signature_def": {
                          "serving_default": signature}}}})

    async def predict(request):
        m = state.model(request.match_info["name"], request)
        _check_version(m, request)
        with state.admitted(m) as ticket:
            body = await _body(request)
            images, key = await state.prepare(lambda: parse_predict(body, m.decoder))
            vectors = await state.vectors(m, images, request[_APP.deadline], ticket)
        return _json({key: vectors})

    async def embed(request):
        name = request.query.get("model", state.default_model)
        m = state.model(name, request)
        with state.admitted(m) as ticket:
            blobs = await _uploads(request, state.config.max_body_bytes)
            images = await state.prepare(lambda: m.decoder.images(blobs))
            vectors = await state.vectors(m, images, request[_APP.deadline], ticket)
        if "application/octet-stream" in request.headers.get("Accept", ""):
            return web.Response(body=np.ascontiguousarray(vectors, "<f4").tobytes(),
                                content_type="application/octet-stream",
                                headers={"X-Vector-Shape": f"{len(vectors)},{m.num_features}",
                                         "X-Vector-Dtype": "float32-le"})
        return _json({"model": m.name, "dim": m.num_features,
                      "names": [n for n, _ in blobs], "vectors": vectors})

    async def metrics(request):
        return web.Response(body=state.metrics.render().encode(),
                            headers={"Content-Type": "text/plain; version=0.0.4; "
                                                     "charset=utf-8"})

    async def openapi(request):
        return _json(openapi_document(state))

    return {"live": live, "ready": ready, "server_metadata": server_metadata,
            "model_metadata": model_metadata, "model_ready": model_ready, "infer": infer,
            "tfs_status": tfs_status, "tfs_metadata": tfs_metadata, "predict": predict,
            "embed": embed, "metrics": metrics, "openapi": openapi}


async def _uploads(request, limit: int) -> list[tuple[str, bytes]]:
    """``/embed``'s images: each file part of a multipart form, or the whole body when it
    is one image (``Content-Type: image/*`` or ``application/octet-stream``)."""
    web = _web()
    ctype = request.content_type
    if ctype.startswith("multipart/"):
        try:
            form = await request.post()
        except web.HTTPRequestEntityTooLarge:
            raise _too_large(limit) from None
        except Exception as e:  # noqa: BLE001 - aiohttp's parser raises many kinds
            raise bad("bad_multipart", f"cannot read the multipart form "
                                       f"({type(e).__name__}: {e})"[:500]) from None
        blobs = []
        for field, value in form.items():
            if not isinstance(value, web.FileField):
                raise bad("bad_multipart", f"form field {field!r} is not a file; send "
                                           "images as files (curl -F 'image=@cat.jpg')")
            blobs.append((value.filename or field, value.file.read()))
        if not blobs:
            raise bad("empty", "no image files in the form")
        return blobs
    if ctype.startswith("image/") or ctype == "application/octet-stream":
        return [("body", await _body(request))]
    raise RequestError(415, "unsupported_media_type",
                       f"Content-Type {ctype!r}: send multipart/form-data with image files, "
                       "or one image as image/* or application/octet-stream")


def build_app(config: ServeConfig, models: dict[str, Runtime]):
    """The aiohttp application serving ``models`` (see :mod:`mobilevec.serve`)."""
    global _APP
    web = _web()
    if _APP is None:
        request_key = getattr(web, "RequestKey", None)  # aiohttp >= 3.13; plain keys before
        _APP = type("_Keys", (), {
            "state": web.AppKey("state", State),
            "deadline": request_key("deadline", float) if request_key else "deadline",
            "model": request_key("model", str) if request_key else "model"})
    state = State(config, models)
    app = web.Application(middlewares=_middlewares(state),
                          client_max_size=config.max_body_bytes)
    app[_APP.state] = state
    h = _handlers(state)
    name, version = "{name:[^/:]+}", "{version:[^/:]+}"
    app.add_routes([
        web.get("/v2/health/live", h["live"]),
        web.get("/v2/health/ready", h["ready"]),
        web.get("/v2", h["server_metadata"]),
        web.get(f"/v2/models/{name}", h["model_metadata"]),
        web.get(f"/v2/models/{name}/versions/{version}", h["model_metadata"]),
        web.get(f"/v2/models/{name}/ready", h["model_ready"]),
        web.post(f"/v2/models/{name}/infer", h["infer"]),
        web.post(f"/v2/models/{name}/versions/{version}/infer", h["infer"]),
        web.get(f"/v1/models/{name}", h["tfs_status"]),
        web.get(f"/v1/models/{name}/metadata", h["tfs_metadata"]),
        web.get(f"/v1/models/{name}/versions/{version}/metadata", h["tfs_metadata"]),
        web.post(f"/v1/models/{name}:predict", h["predict"]),
        web.post(f"/v1/models/{name}/versions/{version}:predict", h["predict"]),
        web.post("/embed", h["embed"]),
        web.get("/metrics", h["metrics"]),
        web.get("/openapi.json", h["openapi"]),
    ])
    return app


def app_state(app) -> State:
    return app[_APP.state]
