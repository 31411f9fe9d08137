"""``openvino``: a mobilevec export run by OpenVINO's CPU plugin.

Takes the OpenVINO IR (``.xml`` + ``.bin``) written by ``mobilevec export --format
openvino``, or an in-memory ``openvino.Model`` (converted from mobilevec's ONNX graph).
``precision="f32"`` (default) keeps fp32 arithmetic; OpenVINO's own default on CPUs with
AMX/AVX512-BF16 is bf16 (``precision="bf16"``: faster, vectors within cosine ≈ 0.999).
Small batches run on a latency-compiled model using ``threads`` threads; batches of at
least :data:`SHARD_MIN_PER_STREAM` images per stream are split over ``streams`` parallel
inference requests (default one per physical core; ``streams=1`` turns this off).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..registry import get_config
from .base import Engine, MissingBackendError, physical_cores

RT_INFO_KEY = "mobilevec"
SHARD_MIN_PER_STREAM = 4


def _ov():
    try:
        import openvino
    except ImportError:
        raise MissingBackendError("openvino", "openvino") from None
    return openvino


def read_rt_metadata(model) -> dict[str, str]:
    """The mobilevec metadata (unprefixed keys) of an ``openvino.Model``."""
    if not model.has_rt_info([RT_INFO_KEY]):
        return {}
    info = model.get_rt_info()[RT_INFO_KEY]
    return {str(k): str(v.astype(str) if hasattr(v, "astype") else v)
            for k, v in info.items()}


class OpenVinoEngine(Engine):
    """``model``: path of an ``.xml`` IR, or an ``openvino.Model`` carrying mobilevec rt_info."""

    backend = "openvino"

    def __init__(self, model, *, threads: int | None = None, precision: str = "f32",
                 streams: int | None = None):
        ov = _ov()
        core = ov.Core()
        if isinstance(model, str | Path):
            model = core.read_model(str(model))
        meta = read_rt_metadata(model)
        if "model" not in meta:
            raise ValueError("not a mobilevec export (no mobilevec rt_info)")
        if meta.get("layout") == "NHWC":
            raise ValueError("engines take NCHW input; export without --nhwc to run it here")
        h, w = (int(v) for v in meta["image_size"].split(","))
        super().__init__(get_config(meta["model"]), (h, w), int(meta["num_features"]))
        self.precision = meta.get("precision", "fp32")
        threads = threads or physical_cores()
        streams = threads if streams is None else streams
        common = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads}
        latency = core.compile_model(model, "CPU", {**common, "PERFORMANCE_HINT": "LATENCY"})
        self._request = latency.create_infer_request()
        self._requests = []
        if streams > 1:
            throughput = core.compile_model(model, "CPU", {
                **common, "PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": streams})
            self._requests = [throughput.create_infer_request() for _ in range(streams)]

    def run(self, x: np.ndarray) -> np.ndarray:
        streams = len(self._requests)
        if not streams or len(x) < SHARD_MIN_PER_STREAM * streams:
            return self._request.infer({0: x}, share_inputs=True)[0].copy()
        bounds = np.linspace(0, len(x), streams + 1).astype(int)
        for request, a, b in zip(self._requests, bounds[:-1], bounds[1:], strict=True):
            request.start_async({0: x[a:b]}, share_inputs=True)
        parts = []
        for request in self._requests:
            request.wait()
            parts.append(request.get_output_tensor(0).data.copy())
        return np.concatenate(parts)
