"""``onnxruntime``: a mobilevec ONNX export (fp32 or int8 QDQ) run by ONNX Runtime's CPU EP.

Tuning (measured in ``benchmarks/engines.py``): all graph optimisations (ORT's NCHWc
layout transformer is what makes its convolutions fast on x86), sessions built once and
reused, ``threads`` = physical cores. Small batches run on one session with ``threads``
intra-op threads (latency); batches of at least :data:`SHARD_MIN_PER_CORE` images per core
are split over one single-threaded session per core (throughput: no intra-op
synchronisation). ``shards=False`` keeps every batch on the intra-op session.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..export.metadata import parse_metadata
from ..models.registry import get_config
from .base import Engine, physical_cores, require_backend


def _ort():
    return require_backend("onnxruntime", "onnxruntime")


SHARD_MIN_PER_CORE = 4


def _session(model: bytes | str, threads: int):
    ort = _ort()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    # denormal activations are slow on x86 and change no vector
    options.add_session_config_entry("session.set_denormal_as_zero", "1")
    try:
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own classes for unreadable or invalid models
        where = model if isinstance(model, str) else "<onnx bytes>"
        raise ValueError(f"{where}: not a loadable ONNX model ({e})") from e


class OnnxRuntimeEngine(Engine):
    """``model``: serialized ONNX bytes or a file path written by :mod:`mobilevec.export`."""

    backend = "onnxruntime"

    def __init__(self, model: bytes | str | Path, *, threads: int | None = None,
                 shards: bool = True):
        threads = threads or physical_cores()
        source = str(model) if isinstance(model, Path) else model
        first = _session(source, threads)
        self.shard_sessions = ([_session(source, 1) for _ in range(threads)]
                               if shards and threads > 1 else [])
        meta = parse_metadata(first.get_modelmeta().custom_metadata_map)
        if "model" not in meta:
            raise ValueError(f"{model if isinstance(model, str | Path) else '<onnx bytes>'}: "
                             "not a mobilevec export (no mobilevec.models.mobilenet metadata)")
        h, w = (int(v) for v in meta["image_size"].split(","))
        super().__init__(get_config(meta["model"]), (h, w), int(meta["num_features"]))
        self.precision = meta.get("precision", "fp32")
        if meta.get("layout") == "NHWC":
            raise ValueError("engines take NCHW input; export without --nhwc to run it here")
        self._input = first.get_inputs()[0].name
        self.session = first
        self._pool = ThreadPoolExecutor(threads) if self.shard_sessions else None

    def _run_one(self, session, x: np.ndarray) -> np.ndarray:
        return session.run(None, {self._input: x})[0]

    def run(self, x: np.ndarray) -> np.ndarray:
        shards = len(self.shard_sessions)
        if not shards or len(x) < SHARD_MIN_PER_CORE * shards:
            return self._run_one(self.session, x)
        bounds = np.linspace(0, len(x), shards + 1).astype(int)
        parts = self._pool.map(lambda s, a, b: self._run_one(s, x[a:b]),
                               self.shard_sessions, bounds[:-1], bounds[1:])
        return np.concatenate(list(parts))
