"""``litert``: mobilevec's own ``.tflite`` (:mod:`mobilevec.export.tflite_writer`) on LiteRT.

LiteRT applies its XNNPACK delegate to the float32 graph. The engine's NCHW input is
transposed to the file's NHWC once per call. Small batches run on one interpreter with
``threads`` threads; batches of at least :data:`SHARD_MIN_PER_CORE` images per core are
split over one single-threaded interpreter per core (``Interpreter.invoke`` releases the
GIL). Only files carrying mobilevec's metadata are accepted: the official MediaPipe
``.tflite`` is a weights source for :func:`mobilevec.create`, not an engine input.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..models.registry import get_config
from .base import Engine, physical_cores, require_backend

SHARD_MIN_PER_CORE = 4


def _interpreter_class():
    return require_backend("litert", "ai_edge_litert.interpreter").Interpreter


def read_tflite_metadata(data: bytes) -> dict[str, str]:
    """The mobilevec metadata (unprefixed keys) stored in a ``.tflite``; {} if none."""
    import tflite

    from ..export.tflite_writer import METADATA_NAME

    try:
        model = tflite.Model.GetRootAsModel(data, 0)
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if entry.Name() and entry.Name().decode() == METADATA_NAME:
                raw = model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
                return {k.removeprefix("mobilevec."): v for k, v in json.loads(raw).items()}
    except Exception:  # not a flatbuffer we can walk: treated as "no metadata"
        return {}
    return {}


class _Runner:
    """One interpreter, resized only when the batch size changes."""

    def __init__(self, data: bytes, threads: int):
        self.interpreter = _interpreter_class()(model_content=data, num_threads=threads)
        self.input = self.interpreter.get_input_details()[0]["index"]
        self.output = self.interpreter.get_output_details()[0]["index"]
        self.batch = -1

    def __call__(self, nhwc: np.ndarray) -> np.ndarray:
        if nhwc.shape[0] != self.batch:
            self.interpreter.resize_tensor_input(self.input, list(nhwc.shape))
            self.interpreter.allocate_tensors()
            self.batch = nhwc.shape[0]
        self.interpreter.set_tensor(self.input, nhwc)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output).copy()


class LiteRtEngine(Engine):
    """``model``: ``.tflite`` bytes or path written by mobilevec."""

    backend = "litert"

    def __init__(self, model: bytes | str | Path, *, threads: int | None = None,
                 shards: bool = True):
        data = Path(model).read_bytes() if isinstance(model, str | Path) else model
        meta = read_tflite_metadata(data)
        if "model" not in meta:
            where = model if isinstance(model, str | Path) else "<tflite bytes>"
            raise ValueError(f"{where}: not a mobilevec export (no mobilevec metadata); "
                             "official .tflite files load with mobilevec.create(name, weights=...)")
        h, w = (int(v) for v in meta["image_size"].split(","))
        super().__init__(get_config(meta["model"]), (h, w), int(meta["num_features"]))
        threads = threads or physical_cores()
        self.runner = _Runner(data, threads)
        self.shards = [_Runner(data, 1) for _ in range(threads)] if shards and threads > 1 else []
        self._pool = ThreadPoolExecutor(len(self.shards)) if self.shards else None

    def run(self, x: np.ndarray) -> np.ndarray:
        nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        if not self.shards or len(x) < SHARD_MIN_PER_CORE * len(self.shards):
            return self.runner(nhwc)
        bounds = np.linspace(0, len(x), len(self.shards) + 1).astype(int)
        parts = self._pool.map(lambda r, a, b: r(nhwc[a:b]), self.shards,
                               bounds[:-1], bounds[1:])
        return np.concatenate(list(parts))
