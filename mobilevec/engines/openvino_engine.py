"""``openvino``: a mobilevec export run by OpenVINO's CPU plugin.

Takes the OpenVINO IR (``.xml`` + ``.bin``) written by ``mobilevec export --format
openvino``, or an in-memory ``openvino.Model`` (converted from mobilevec's ONNX graph).
``precision="f32"`` (default) keeps fp32 arithmetic; OpenVINO's own default on CPUs with
AMX/AVX512-BF16 is bf16 (``precision="bf16"``: faster; vectors close to fp32, see
docs/benchmarks.md).
Small batches run on a latency-compiled model using ``threads`` threads; batches of at
least :data:`SHARD_MIN_PER_STREAM` images per stream are split over ``streams`` parallel
inference requests (default one per physical core; ``streams=1`` turns this off).
``int8_stem`` (default: on with bf16) runs the 3-channel first convolution in int8
(:mod:`.openvino_stem`).

Each batch size is compiled for its own static shape the first time it is seen (up to
:data:`STATIC_SHAPES` sizes per mode; others, and uneven shards, run the dynamic-batch
model): with a static shape the CPU plugin plans its kernels and memory once, faster than
the same graph with a dynamic batch (docs/benchmarks.md, "Measurements behind the code").
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ..export.metadata import read_rt_metadata
from ..models.registry import get_config
from .base import Engine, physical_cores, require_backend

log = logging.getLogger(__name__)

SHARD_MIN_PER_STREAM = 4
STATIC_SHAPES = 4


def _ov():
    return require_backend("openvino", "openvino")


class OpenVinoEngine(Engine):
    """``model``: path of an ``.xml`` IR, or an ``openvino.Model`` carrying mobilevec rt_info.

    ``blobs``: where compiled models are kept between runs (an
    :class:`~mobilevec.engines.cache.EngineEntry`): each compilation is imported from
    there when present and exported there when made, so a warm start compiles nothing.
    """

    backend = "openvino"

    def __init__(self, model, *, threads: int | None = None, precision: str = "f32",
                 streams: int | None = None, int8_stem: bool | None = None,
                 blobs=None):
        ov = _ov()
        self._blobs = blobs
        self._core = ov.Core()
        if isinstance(model, str | Path):
            model = self._core.read_model(str(model))
        meta = read_rt_metadata(model)
        if "model" not in meta:
            raise ValueError("not a mobilevec export (no mobilevec rt_info)")
        if meta.get("layout") == "NHWC":
            raise ValueError("engines take NCHW input; export without --nhwc to run it here")
        h, w = (int(v) for v in meta["image_size"].split(","))
        super().__init__(get_config(meta["model"]), (h, w), int(meta["num_features"]))
        self.precision = meta.get("precision", "fp32")
        if precision == "bf16":  # an IR exported for fp32 under OpenVINO's defaults
            from ..export import unpin_fp32

            model = model.clone()
            unpin_fp32(model)
        self.int8_stem = False
        if (precision == "bf16") if int8_stem is None else int8_stem:
            from .openvino_stem import quantize_stem

            model = model.clone()
            self.int8_stem = quantize_stem(model)
        self._model = model
        threads = threads or physical_cores()
        self.streams = threads if streams is None else max(1, streams)
        common = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads}
        self._settings = {
            "latency": {**common, "PERFORMANCE_HINT": "LATENCY"},
            "throughput": {**common, "PERFORMANCE_HINT": "THROUGHPUT",
                           "NUM_STREAMS": self.streams},
        }
        # (mode, batch size or None for the dynamic batch) -> one request per stream
        self._requests: dict[tuple[str, int | None], list] = {}
        if blobs is None:  # compile errors surface at construction; cached ones were fine
            self._infer_requests("latency", None)

    def _infer_requests(self, mode: str, batch: int | None) -> list:
        """Requests of the model compiled for ``mode`` at a static ``batch`` (None: dynamic)."""
        static = sum(1 for m, b in self._requests if m == mode and b is not None)
        if batch is not None and (mode, batch) not in self._requests and static >= STATIC_SHAPES:
            batch = None
        key = (mode, batch)
        if key not in self._requests:
            model = self._model
            if batch is not None:
                model = model.clone()
                h, w = self.image_size
                model.reshape([batch, 3, h, w])
            compiled = self._compile(model, mode, batch)
            count = self.streams if mode == "throughput" else 1
            self._requests[key] = [compiled.create_infer_request() for _ in range(count)]
            log.debug("compiled %s for %s batch %s", self.config.name, mode, batch or "dynamic")
        return self._requests[key]

    def _compile(self, model, mode: str, batch: int | None):
        """The compiled model, imported from ``blobs`` when it holds it, else compiled (and
        exported there)."""
        settings = self._settings[mode]
        name = json.dumps([mode, batch, self.int8_stem, sorted(settings.items())], default=str)
        if self._blobs is not None:
            data = self._blobs.load_blob(name)
            if data is not None:
                try:
                    return self._core.import_model(data, "CPU", settings)
                except RuntimeError as e:  # a blob of another build of the runtime
                    log.info("cannot import the compiled %s (%s); compiling", name, e)
                    self._blobs.drop_blob(name)
        compiled = self._core.compile_model(model, "CPU", settings)
        if self._blobs is not None:
            exported = compiled.export_model()
            self._blobs.save_blob(name, exported if isinstance(exported, bytes)
                                  else exported.getvalue())
        return compiled

    def run(self, x: np.ndarray) -> np.ndarray:
        n, streams = len(x), self.streams
        if streams == 1 or n < SHARD_MIN_PER_STREAM * streams:
            request = self._infer_requests("latency", n)[0]
            return request.infer({0: x}, share_inputs=True)[0].copy()
        even = n % streams == 0
        requests = self._infer_requests("throughput", n // streams if even else None)
        bounds = np.linspace(0, n, streams + 1).astype(int)
        for request, a, b in zip(requests, bounds[:-1], bounds[1:], strict=True):
            request.start_async({0: x[a:b]}, share_inputs=True)
        parts = []
        for request in requests:
            request.wait()
            parts.append(request.get_output_tensor(0).data.copy())
        return np.concatenate(parts)
