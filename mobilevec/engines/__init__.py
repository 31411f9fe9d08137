"""Inference engines with the torch module's call contract (see :mod:`.base`).

``create_engine(name, weights, backend)`` builds the model from its weights, folds it
(:mod:`mobilevec.export.fused`) and hands it to a runtime; ``load_engine(path)`` runs a
file written by ``mobilevec export`` (fp32 or int8). Backends:

============== ============================================ ==========================
backend        runs                                         needs
============== ============================================ ==========================
torch-fused    folded network, eager PyTorch, channels-last (always there)
onnxruntime    mobilevec's ONNX graph, ONNX Runtime CPU EP  ``mobilevec[onnx]``
openvino       the same graph converted to OpenVINO         ``mobilevec[openvino]``
litert         mobilevec's own float32 .tflite, LiteRT+XNNPACK ``mobilevec[litert]``
============== ============================================ ==========================

``backend="auto"`` takes the first installed backend of :data:`AUTO_ORDER`, a static order
measured with ``benchmarks/engines.py`` (docs/benchmarks.md): never timing at run time.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import MissingBackendError
from .base import EXTRAS, Engine, physical_cores, require_backend

__all__ = ["AUTO_ORDER", "BACKENDS", "EXTRAS", "Engine", "MissingBackendError",
           "available_backends", "create_engine", "engine_from_model", "load_engine",
           "physical_cores"]

BACKENDS = ("torch-fused", "onnxruntime", "openvino", "litert")
# Fastest first, fp32 batch 32 on the 2-core x86 benchmark machine (docs/benchmarks.md).
AUTO_ORDER = ("openvino", "onnxruntime", "litert", "torch-fused")
_MODULES = {"onnxruntime": ("onnxruntime", "onnx"), "openvino": ("openvino", "onnx"),
            "litert": ("ai_edge_litert", "tflite")}


def available_backends() -> list[str]:
    """Backends whose runtime (and exporter) is importable."""
    return ["torch-fused"] + [b for b, modules in _MODULES.items()
                              if all(importlib.util.find_spec(m) for m in modules)]


def _resolve(backend: str) -> str:
    if backend == "auto":
        installed = available_backends()
        return next(b for b in AUTO_ORDER if b in installed)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of "
                         f"{', '.join(('torch', *BACKENDS, 'auto'))}")
    return backend


def create_engine(name: str, weights=None, backend: str = "auto", *,
                  image_size: int | tuple[int, int] | None = None, threads: int | None = None,
                  ema: bool = True, **options) -> Engine:
    """Model ``name`` with ``weights`` (as :func:`mobilevec.create`) on ``backend``.

    ``image_size``: the fixed input size (default the model's, 224). ``threads``: default
    physical cores. ``options`` go to the engine (``shards`` for onnxruntime;
    ``precision``, ``streams`` for openvino). Raises :class:`MissingBackendError` naming
    the pip extra when the runtime is not installed.
    """
    from ..models.factory import create_model

    backend = _resolve(backend)
    model = create_model(name, weights, trainable=False, ema=ema)
    source = weights if isinstance(weights, str | Path) else None
    return engine_from_model(model, backend, image_size=image_size, threads=threads,
                             source=source, **options)


def engine_from_model(model, backend: str = "auto", *,
                      image_size: int | tuple[int, int] | None = None,
                      threads: int | None = None, source: str | Path | None = None,
                      **options) -> Engine:
    """An engine running the weights of ``model`` (a :class:`~mobilevec.models.mobilenet.MobileNet`,
    e.g. from :func:`mobilevec.load`) on ``backend``; ``source`` is the artifact recorded in
    the exported graph's metadata. Options as for :func:`create_engine`."""
    from ..export import fuse

    backend = _resolve(backend)
    if backend == "litert":
        from ..export import tflite_bytes
        from .litert_engine import LiteRtEngine, _interpreter_class

        _interpreter_class()  # a missing runtime is reported before any work
        return LiteRtEngine(tflite_bytes(model, image_size=image_size, source=source),
                            threads=threads, **options)
    net = fuse(model, image_size)
    if backend == "torch-fused":
        from .torch_engine import TorchFusedEngine

        return TorchFusedEngine(net, threads=threads, **options)
    require_backend(backend, "onnx")  # the exporter's, reported before any work
    from ..export.metadata import build_metadata
    from ..export.onnx_graph import to_onnx

    proto = to_onnx(net, metadata=build_metadata(net.model, net.num_features, net.image_size,
                                                 source=source))
    if backend == "onnxruntime":
        from .onnxruntime_engine import OnnxRuntimeEngine

        return OnnxRuntimeEngine(proto.SerializeToString(), threads=threads, **options)
    from ..export import openvino_model
    from .openvino_engine import OpenVinoEngine, _ov

    _ov()
    return OpenVinoEngine(openvino_model(proto), threads=threads, **options)


def load_engine(path: str | Path, backend: str | None = None, *, threads: int | None = None,
                **options) -> Engine:
    """An engine running an exported file: ``.onnx`` (onnxruntime, or openvino when asked),
    ``.xml`` (openvino) or ``.tflite`` (litert). The model and input size come from the
    file's metadata."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such exported model")
    backend = backend or {".xml": "openvino", ".tflite": "litert"}.get(path.suffix,
                                                                        "onnxruntime")
    if backend == "litert":
        from .litert_engine import LiteRtEngine

        return LiteRtEngine(path, threads=threads, **options)
    if backend == "onnxruntime":
        from .onnxruntime_engine import OnnxRuntimeEngine

        return OnnxRuntimeEngine(path, threads=threads, **options)
    if backend == "openvino":
        from .openvino_engine import OpenVinoEngine, _ov

        model = path
        if path.suffix == ".onnx":
            import onnx

            from ..export import openvino_model

            model = openvino_model(onnx.load(str(path)))
        else:
            _ov()
        return OpenVinoEngine(model, threads=threads, **options)
    raise ValueError(f"cannot run {path} on backend {backend!r}")
