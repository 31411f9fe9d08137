"""``mobilevec serve --runner ray``: the same protocols on Ray Serve, past one machine.

Each served model is a Ray Serve deployment of replicas (``replicas``, or autoscaling up to
``max_replicas``), each with the embedder on the default engine, batching with
``serve.batch`` (up to ``max_batch`` images within ``max_delay_ms``); one ingress
deployment speaks the Open Inference Protocol v2, TF Serving REST and ``/embed`` through
the same parsers as the local server (:mod:`.inputs`), so clients stay unchanged. Ray
Serve's HTTP proxy listens on ``host``:``port``. What the local server adds around the
protocols (its admission control, metrics, access log) is Ray Serve's here: its own
queue limits (``max_ongoing_requests``), metrics and logs.

Needs ``pip install 'mobilevec[serve-ray]'`` (Ray Serve); ``address`` joins a running
cluster (``auto`` or ``ray://HOST:10001``), else a local Ray instance is started.
"""

# No `from __future__ import annotations` here: FastAPI reads the handlers' annotations
# (Request) as objects.

import asyncio
import hmac
import logging
import signal
import threading

import numpy as np

from .._optional import require
from .config import ServeConfig, ServedModel
from .inputs import (
    Decoder,
    RequestError,
    bad,
    json_document,
    oip_response,
    parse_oip,
    parse_predict,
)

log = logging.getLogger(__name__)
INPUT_NAME, OUTPUT_NAME = "images", "feature_vector"


def _model_deployment(serve, config: ServeConfig, served: ServedModel, replicas: int,
                      max_replicas: int | None):
    options = {"num_replicas": replicas} if not max_replicas else {
        "autoscaling_config": {"min_replicas": replicas, "max_replicas": max_replicas}}

    @serve.deployment(name=f"model-{served.name}", max_ongoing_requests=config.queue_limit,
                      **options)
    class Model:
        def __init__(self):
            from ..embedding.embedder import embedder
            from .batching import CallPlan, time_call_sizes

            self.emb = embedder(served.model, served.weights, handle=served.handle,
                                backend=served.backend, precision=served.precision)
            shape = (3, *self.emb.image_size)
            self.calls = CallPlan(self.emb, shape, config.max_batch,
                                  time_call_sizes(self.emb, shape, config.max_batch))

        def describe(self) -> dict:
            return {"model": self.emb.config.name, "num_features": self.emb.num_features,
                    "size": list(self.emb.image_size), "precision": self.emb.precision,
                    "backend": self.emb.backend}

        @serve.batch(max_batch_size=config.max_batch,
                     batch_wait_timeout_s=config.max_delay_ms / 1000,
                     batch_size_fn=lambda items: sum(len(x) for x in items))
        async def embed(self, requests: list) -> list:
            counts = [len(x) for x in requests]
            vectors = self.calls(np.concatenate(requests))
            return np.split(vectors, np.cumsum(counts)[:-1])

    return Model


def build_ray_app(config: ServeConfig, *, replicas: int = 1, max_replicas: int | None = None):
    """The Ray Serve application: one deployment per model, one ingress."""
    serve = require("ray.serve", "serve-ray", purpose="mobilevec serve --runner ray")
    fastapi = require("fastapi", "serve-ray", purpose="mobilevec serve --runner ray")
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response

    app = fastapi.FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    token = config.token
    limit = config.max_body_bytes

    def error(e: RequestError):
        return JSONResponse({"error": e.message, "kind": e.kind}, e.status, e.headers)

    @app.exception_handler(RequestError)
    async def request_error(request, e: RequestError):
        return error(e)

    # Ray Serve's default of 5 ongoing requests per replica queued the rest in its proxy:
    # past 8 clients, answers took seconds (docs/benchmarks.md, "Serving")
    @serve.deployment(name="ingress", num_replicas=replicas,
                      max_ongoing_requests=config.queue_limit)
    @serve.ingress(app)
    class Ingress:
        def __init__(self, handles: dict):
            self.handles = handles
            self.info = {name: None for name in handles}

        async def _model(self, name: str, request: Request):
            if token is not None:
                scheme, _, value = request.headers.get("authorization", "").partition(" ")
                if not (scheme.lower() == "bearer"
                        and hmac.compare_digest(value.strip().encode(), token.encode())):
                    raise RequestError(401, "unauthorized", "a valid bearer token is needed "
                                                            "(Authorization: Bearer TOKEN)",
                                       {"WWW-Authenticate": 'Bearer realm="mobilevec"'})
            if name not in self.handles:
                raise RequestError(404, "unknown_model", f"no model {name!r}; this server "
                                                         f"has {sorted(self.handles)}")
            if self.info[name] is None:
                self.info[name] = await self.handles[name].describe.remote()
            info = self.info[name]
            decoder = Decoder(tuple(info["size"]), config.crop, not config.exact_decode,
                              config.max_pixels)
            return self.handles[name], info, decoder

        async def _body(self, request: Request) -> bytes:
            length = request.headers.get("content-length")
            if length and length.isdigit() and int(length) > limit:
                raise RequestError(413, "body_too_large", f"the request body exceeds the "
                                                          f"limit of {limit} bytes")
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise RequestError(413, "body_too_large", f"the request body exceeds "
                                                              f"the limit of {limit} bytes")
                chunks.append(chunk)
            return b"".join(chunks)

        @app.get("/v2/health/live")
        async def live(self):
            return {"live": True}

        @app.get("/v2/health/ready")
        async def ready(self):
            return {"ready": True}

        @app.get("/v2/models/{name}")
        async def metadata(self, name: str, request: Request):
            _, info, _ = await self._model(name, request)
            h, w = info["size"]
            return {"name": name, "versions": ["1"], "platform": f"mobilevec_{info['backend']}",
                    "inputs": [{"name": INPUT_NAME, "datatype": "FP32",
                                "shape": [-1, h, w, 3]}],
                    "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32",
                                 "shape": [-1, info["num_features"]]}]}

        @app.get("/v2/models/{name}/ready")
        async def model_ready(self, name: str, request: Request):
            await self._model(name, request)
            return {"name": name, "ready": True}

        @app.post("/v2/models/{name}/infer")
        async def infer(self, name: str, request: Request):
            handle, _, decoder = await self._model(name, request)
            body = await self._body(request)
            header = request.headers.get("inference-header-content-length")
            parsed = await asyncio.to_thread(parse_oip, body, header, decoder,
                                             output_name=OUTPUT_NAME)
            vectors = await handle.embed.remote(parsed.images)
            out, headers = oip_response(name, parsed, vectors)
            return Response(out, headers=headers)

        @app.get("/v1/models/{name}")
        async def tfs_status(self, name: str, request: Request):
            await self._model(name, request)
            return {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                              "status": {"error_code": "OK",
                                                         "error_message": ""}}]}

        @app.post("/v1/models/{name}:predict")
        async def predict(self, name: str, request: Request):
            handle, _, decoder = await self._model(name, request)
            images, key = await asyncio.to_thread(parse_predict, await self._body(request),
                                                  decoder)
            vectors = await handle.embed.remote(images)
            return Response(json_document({key: vectors}),
                            media_type="application/json")

        @app.post("/embed")
        async def embed(self, request: Request):
            name = request.query_params.get("model", next(iter(self.handles)))
            handle, info, decoder = await self._model(name, request)
            body = await self._body(request)
            ctype = request.headers.get("content-type", "")
            if ctype.startswith("image/") or ctype == "application/octet-stream":
                blobs = [("body", body)]
            else:
                raise bad("unsupported_media_type", "with --runner ray, /embed takes one "
                                                    "image as the body (image/*)")
            vectors = await handle.embed.remote(await asyncio.to_thread(decoder.images, blobs))
            return {"model": name, "dim": info["num_features"], "names": ["body"],
                    "vectors": vectors.tolist()}

    handles = {m.name: _model_deployment(serve, config, m, replicas, max_replicas).bind()
               for m in config.models}
    return Ingress.bind(handles)


def serve_on_ray(config: ServeConfig, *, address: str | None = None, replicas: int = 1,
                 max_replicas: int | None = None, on_ready=None) -> None:
    """Deploy on Ray Serve and block until SIGTERM/SIGINT, then shut the app down."""
    ray = require("ray", "serve-ray", purpose="mobilevec serve --runner ray")
    serve = require("ray.serve", "serve-ray", purpose="mobilevec serve --runner ray")
    ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    # Ours from here on (ray.init installs its own, which exits 15): the proxy can answer
    # the health probes before serve.run returns, so a SIGTERM can come that early.
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    serve.start(http_options={"host": config.host, "port": config.port})
    serve.run(build_ray_app(config, replicas=replicas, max_replicas=max_replicas),
              name="mobilevec", route_prefix="/")
    url = f"http://{config.host}:{config.port}"
    log.info("serving %s on Ray Serve at %s", ", ".join(m.name for m in config.models), url)
    if on_ready is not None:
        on_ready(url)
    stop.wait()
    log.info("shutting down the Ray Serve app")
    serve.delete("mobilevec")
    serve.shutdown()
    ray.shutdown()
