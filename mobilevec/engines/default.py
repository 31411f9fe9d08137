"""The default engine: the fastest installed runtime, at the precision the user chose, built
once per weights and kept in the engine cache (:mod:`.cache`).

Precision is the user's choice, never a silent one:

- ``fp32`` (the default): the vectors of the torch module to ≤ 1e-4. The backend is the
  first installed of :data:`EXACT_ORDER` (OpenVINO with its f32 hint, then ONNX Runtime),
  an order measured side by side (docs/benchmarks.md); without either, the torch module
  runs and one message says which extra would make it faster.
- ``bf16``: OpenVINO's bf16 (with its int8 first convolution), on CPUs with native bf16.
- ``int8``: OpenVINO int8 (``conv-inputs`` placement), calibrated once on up to
  :data:`CALIBRATION_IMAGES` of the photos given (the first run's), on CPUs with native
  int8 dot products.

A CPU without the instructions is refused with a message, rather than run slowly.

A warm :func:`cached_engine` reads the cache entry, imports the compiled engine and runs:
no torch, no export, no compilation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

from .._io import sha256_tree
from .._optional import available
from ..errors import MissingBackendError, MobilevecError, PrecisionError
from ..models.registry import get_config
from . import cache as engine_cache
from .base import EXTRAS, Engine

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "int8")
# Fastest exact (fp32) runtimes first, as measured side by side in benchmarks/pipelines.py.
EXACT_ORDER = ("openvino", "onnxruntime")
CACHED_BACKENDS = ("openvino", "onnxruntime")
CALIBRATION_IMAGES = 300
_RUNTIME_MODULES = {"openvino": "openvino", "onnxruntime": "onnxruntime"}
# CPU flags that mean native int8 dot products (VNNI, AMX) and native bf16.
_INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp")
_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
_hinted = False


def _installed(backend: str) -> bool:
    return available(_RUNTIME_MODULES.get(backend, backend)) and available("onnx")


def check_precision(precision: str) -> None:
    """Raise :class:`PrecisionError` (or MissingBackendError) unless ``precision`` is one of
    :data:`PRECISIONS` and this CPU and the installed runtimes run it natively."""
    if precision not in PRECISIONS:
        raise PrecisionError(f"unknown precision {precision!r}; choose one of "
                             f"{', '.join(PRECISIONS)}")
    if precision == "fp32":
        return
    if not _installed("openvino"):
        raise MissingBackendError("openvino", "openvino", EXTRAS["openvino"])
    flags = _cpu_flags()
    wanted = _BF16_FLAGS if precision == "bf16" else _INT8_FLAGS
    if flags is not None and not any(f in flags for f in wanted):
        what = "bf16 arithmetic" if precision == "bf16" else "int8 dot products (VNNI/AMX)"
        raise PrecisionError(
            f"--precision {precision}: this CPU has no native {what} (none of the flags "
            f"{', '.join(wanted)}), so it would run slower than fp32; use --precision fp32")


def _cpu_flags() -> set[str] | None:
    """The CPU's feature flags (Linux), or None where they cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return None


def default_backend(precision: str = "fp32") -> str:
    """The backend that runs ``precision`` fastest here: "torch" when no engine runtime is
    installed (fp32 only; logged once with the extra that would make it faster)."""
    check_precision(precision)
    if precision != "fp32":
        return "openvino"
    for backend in EXACT_ORDER:
        if _installed(backend):
            return backend
    global _hinted
    if not _hinted:
        _hinted = True
        log.warning("no engine runtime is installed: running the torch module; "
                    "pip install 'mobilevec[openvino]' makes this several times faster")
    return "torch"


def runtime_version(backend: str) -> str:
    import importlib

    module = importlib.import_module(_RUNTIME_MODULES[backend])
    return str(getattr(module, "__version__", None) or module.get_version())


def cached_engine(name: str, weights: str | Path, *, backend: str | None = None,
                  precision: str = "fp32", image_size: int | tuple[int, int] | None = None,
                  calibration: Sequence[str | Path] | None = None,
                  threads: int | None = None, load: Callable[[], Any] | None = None,
                  cache: Path | None = None,
                  progress: Callable[[str, int, int], None] | None = None) -> Engine:
    """Model ``name`` with the artifact ``weights`` on ``backend`` (None or "auto": the
    :func:`default_backend` of ``precision``), from the engine cache.

    A cache hit needs no torch: the engine reads its exported graph and compiled blobs.
    A miss builds the torch module (``load()`` when given, e.g. for a handle's archive,
    else from ``weights``), exports it into the cache and compiles. ``calibration``:
    photos for ``int8`` (used only when the int8 entry is built); ``progress(stage, done,
    total)`` is called through that calibration (minutes). The engine carries
    ``fingerprint`` (of the weights as loaded,
    :func:`~mobilevec.models.factory.model_fingerprint`), ``weights_sha256``, ``precision``
    and ``quality`` (int8: the cosine to fp32 measured at calibration).
    """
    backend = default_backend(precision) if backend in (None, "auto") else backend
    check_precision(precision)
    if backend not in CACHED_BACKENDS:
        raise MobilevecError(f"backend {backend!r} is not cached; the cached backends are "
                             f"{', '.join(CACHED_BACKENDS)} (use engine_from_model)")
    if precision != "fp32" and backend != "openvino":
        raise PrecisionError(f"--precision {precision} runs on openvino, not {backend}")
    if not _installed(backend):
        raise MissingBackendError(backend, _RUNTIME_MODULES[backend], EXTRAS[backend])
    config = get_config(name)
    size = image_size or config.input.size
    hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    key = engine_cache.EngineKey(name, sha256_tree(weights), hw, precision, backend,
                                 runtime_version(backend))

    def build(folder: Path) -> dict[str, Any]:
        return _export(folder, name, weights, backend, precision, hw, calibration, load,
                       progress)

    entry = engine_cache.get_or_build(key, build, cache)
    engine = _open(entry, backend, precision, threads)
    engine.fingerprint = entry.meta["fingerprint"]
    engine.weights_sha256 = key.weights_sha256
    engine.precision = precision
    engine.quality = entry.meta.get("quality", {})
    return engine


def _open(entry: engine_cache.EngineEntry, backend: str, precision: str,
          threads: int | None) -> Engine:
    if backend == "openvino":
        from .openvino_engine import OpenVinoEngine

        hint = "bf16" if precision == "bf16" else "f32"
        return OpenVinoEngine(entry.file("model.xml"), threads=threads, precision=hint,
                              blobs=entry)
    from .onnxruntime_engine import OnnxRuntimeEngine

    return OnnxRuntimeEngine(entry.file("model.onnx"), threads=threads)


def _export(folder: Path, name: str, weights: str | Path, backend: str, precision: str,
            size: tuple[int, int], calibration: Sequence[str | Path] | None,
            load: Callable[[], Any] | None,
            progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Write the engine's graph into ``folder``; returns what entry.json records."""
    from ..export import export, exported_metadata
    from ..models.factory import create_model, model_fingerprint

    module = load() if load is not None else create_model(name, weights, trainable=False)
    quality: dict[str, Any] = {}
    if precision == "int8":
        if not calibration:
            raise PrecisionError("--precision int8 needs photos to calibrate on the first "
                                 "time (the run's own inputs, or `mobilevec export --int8 "
                                 "--calibrate DIR`); none were given")
        from ..data.sources import spread

        photos = spread(list(calibration), CALIBRATION_IMAGES)
        log.info("calibrating int8 %s on %d photos (once; cached)", name, len(photos))
        written = export(module, folder / "model.xml", "openvino", image_size=size,
                         source=weights, calibration=photos, int8_placement="conv-inputs",
                         progress=progress)
        meta = exported_metadata(written[0])
        with suppress(KeyError, ValueError):
            quality = {"cosine_mean": float(meta["int8_cosine_mean"]),
                       "calibration_images": int(meta["calibration_images"]),
                       "fp32_blocks": meta.get("int8_fp32_blocks", ""),
                       "measured_on": "held-out calibration photos"}
    elif backend == "openvino":  # bf16 compiles this IR with the bf16 hint: not pinned
        export(module, folder / "model.xml", "openvino", image_size=size, source=weights,
               fp32_runtime=precision == "fp32")
    else:
        export(module, folder / "model.onnx", "onnx", image_size=size, source=weights)
    return {"fingerprint": model_fingerprint(module), "model": name,
            "num_features": int(module.num_features), "quality": quality}
