"""The main job's entry point: a model's weights, on the fastest exact engine, from the
first image.

>>> import mobilevec
>>> emb = mobilevec.embedder("mobilenet_v3_small_075_224", weights="v3.tflite")
>>> vectors = emb(images)                  # float32 NCHW in [0, 1] -> (N, 1024) numpy
>>> result = emb.embed_files(["a.jpg", "b.png"])   # EmbedResult: vectors, paths, errors

:func:`embedder` picks the engine the way ``mobilevec embed`` does: ``backend="auto"`` is
the fastest installed exact runtime (:func:`mobilevec.engines.default.default_backend`),
built once per weights and cached (:func:`mobilevec.engines.default.cached_engine`), so a
warm start compiles nothing and imports no torch; ``precision`` "bf16" and "int8" are
opt-in. ``backend="torch"`` (or a ``device`` other than the CPU) runs the torch module.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import MobilevecError

if TYPE_CHECKING:
    from ..models.registry import ModelConfig
    from .batching import EmbedResult

log = logging.getLogger(__name__)


@dataclass
class WeightsSource:
    """Which weights a run uses: the model name, the artifact on disk (the cached original
    for a handle; None: random initialisation) and the handle, if one named them.

    ``load()`` builds the torch module (only called when an engine must be exported).
    """

    model: str
    artifact: Path | None
    handle: str | None = None
    load: Callable[[], Any] = field(default=lambda: None, repr=False)


def weights_source(model: str | None = None, weights: str | Path | None = None, *,
                   handle: str | None = None, trainable: bool = False,
                   batch_norm_momentum: float | None = None,
                   progress: bool = False) -> WeightsSource:
    """Resolve ``model`` + ``weights`` or a ``handle`` without building the module.

    A handle is fetched into the cache (once) and its model is what the handle names,
    what converted weights record, or what the variables imply (read, not built).
    """
    if handle:
        from ..hub.cache import get_entry
        from ..hub.loader import load, model_name, resolve

        resolved = resolve(handle, progress=progress)
        entry = get_entry(resolved.url) if resolved.url else None
        artifact = Path(entry.file if entry is not None else resolved.path)
        name = model or model_name(resolved)
        arguments = ({"batch_norm_momentum": batch_norm_momentum}
                     if batch_norm_momentum is not None else None)
        return WeightsSource(name, artifact, handle, lambda: load(
            handle, trainable=trainable, arguments=arguments, model=name))
    if not model:
        raise MobilevecError("name a model: --model NAME [--weights FILE|DIR], or --handle H")
    from ..models.registry import get_config

    get_config(model)  # an unknown name fails here, before any work
    artifact = None if weights is None else Path(weights)

    def build() -> Any:
        from ..models.factory import create_model

        return create_model(model, artifact, trainable=trainable,
                            batch_norm_momentum=batch_norm_momentum)

    return WeightsSource(model, artifact, None, build)


class Embedder:
    """A model's weights on one runner (an engine, or the torch module), with what outputs
    record about them.

    ``runner`` maps float32 NCHW RGB in [0, 1] to ``(N, num_features)``; ``fingerprint``
    identifies the weights as loaded; ``precision`` and ``quality`` (the measured cosine
    to fp32, for bf16 and int8) say how exact the vectors are.
    """

    def __init__(self, runner: Any, source: WeightsSource, *, precision: str = "fp32",
                 fingerprint: str | None = None, quality: dict | None = None,
                 image_size: int | tuple[int, int] | None = None):
        self.runner, self.source, self.precision = runner, source, precision
        self._image_size = image_size
        self.quality = dict(quality or {})
        self.config: ModelConfig = runner.config
        self.num_features = int(runner.num_features)
        self._fingerprint = fingerprint

    @property
    def backend(self) -> str:
        return getattr(self.runner, "backend", "torch")

    @property
    def image_size(self) -> tuple[int, int]:
        """The input size: an engine's fixed one, else the one asked for, else the
        model's published size."""
        size = getattr(self.runner, "image_size", None) or self._image_size
        if size is None:
            return self.config.input.size
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            from ..models.factory import model_fingerprint

            self._fingerprint = model_fingerprint(self.runner)
        return self._fingerprint

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """``(N, 3, H, W)`` float32 in [0, 1] (numpy or torch; the contract of
        :mod:`mobilevec.models.inputs`) → ``(N, num_features)`` float32 numpy."""
        from ..models.inputs import check_images
        from .batching import _batch_runner

        check_images(x, who=f"embedder of {self.config.name} ({self.backend})",
                     size=getattr(self.runner, "image_size", None))
        if not isinstance(x, np.ndarray):  # a torch tensor
            x = x.detach().cpu().float().numpy()
        x = np.asarray(x, np.float32)
        staging, run, takes_views = _batch_runner(self.runner, len(x), tuple(x.shape[2:]))
        if not takes_views:
            staging[...] = x
        return run(x)

    def embed_files(self, paths: Sequence[str | Path], **options) -> EmbedResult:
        """Vectors of the files that decode (others reported), as
        :func:`mobilevec.embedding.batching.embed_files`."""
        from .batching import embed_files

        options.setdefault("size", self.image_size)
        return embed_files(self.runner, paths, **options)

    def __repr__(self) -> str:
        return (f"Embedder({self.config.name}, backend={self.backend!r}, "
                f"precision={self.precision!r})")


def embedder(model: str | None = None, weights: str | Path | None = None, *,
             handle: str | None = None, backend: str | None = "auto",
             precision: str = "fp32", image_size: int | None = None, device: str = "cpu",
             calibration: Sequence[str | Path] | None = None,
             threads: int | None = None,
             progress: Callable[[str, int, int], None] | None = None) -> Embedder:
    """The :class:`Embedder` of ``model`` + ``weights`` (or ``handle``) on ``backend``.

    ``backend`` "auto" (or None): the fastest installed engine whose vectors equal the
    torch module's (≤ 1e-4) at ``precision`` "fp32"; "torch": the torch module on
    ``device``; or a named engine. ``precision`` "bf16"/"int8" run faster and less exactly
    (int8 calibrates on ``calibration`` photos once, calling ``progress(stage, done, total)``
    through it). Raises
    :class:`~mobilevec.errors.MissingBackendError` naming the extra when an asked-for
    runtime is missing, and :class:`~mobilevec.errors.PrecisionError` for a precision this
    CPU does not run natively.
    """
    from ..engines.default import cached_engine, check_precision, default_backend

    check_precision(precision)
    if device != "cpu":
        from ..models.factory import torch_device

        torch_device(device)  # a missing GPU is one clear error, before any work
    source = weights_source(model, weights, handle=handle)
    if backend in (None, "auto"):
        backend = "torch" if device != "cpu" and precision == "fp32" else \
            default_backend(precision)
    if backend == "torch":
        if precision != "fp32":
            raise MobilevecError(f"--precision {precision} needs an engine backend, not torch")
        module = source.load().to(device)
        return Embedder(module, source, image_size=image_size)
    if device != "cpu":
        log.warning("--device %s applies to the torch backend only; %s runs on the CPU",
                    device, backend)
    if source.artifact is None or backend not in ("openvino", "onnxruntime"):
        from ..engines import engine_from_model
        from ..models.factory import model_fingerprint

        module = source.load()
        options = {"precision": "bf16"} if precision == "bf16" else {}
        engine = engine_from_model(module, backend, image_size=image_size,
                                   source=source.artifact, threads=threads, **options)
        return Embedder(engine, source, precision=precision,
                        fingerprint=model_fingerprint(module))
    engine = cached_engine(source.model, source.artifact, backend=backend, precision=precision,
                           image_size=image_size, calibration=calibration, threads=threads,
                           load=source.load, progress=progress)
    return Embedder(engine, source, precision=precision, fingerprint=engine.fingerprint,
                    quality=engine.quality)


def measure_precision(emb: Embedder, paths: Sequence[str | Path], prep: Any,
                      count: int = 32) -> dict:
    """The cosine of ``emb``'s vectors to fp32 ones on up to ``count`` of ``paths`` (spread
    over them): ``{"cosine_mean", "cosine_min", "images", "measured_on"}``. Empty for fp32,
    random weights, or when none of the photos decodes."""
    if emb.precision == "fp32" or emb.source.artifact is None:
        return {}
    from ..data.sources import spread
    from ..engines.default import cached_engine
    from ..errors import ImageError

    arrays = []
    for path in spread(list(paths), count):
        try:
            arrays.append(prep.load(path))
        except ImageError:
            continue
    if not arrays:
        return {}
    x = np.stack(arrays)
    reference = cached_engine(emb.config.name, emb.source.artifact, backend="openvino",
                              image_size=emb.image_size, load=emb.source.load)
    a, b = emb.runner(x), reference(x)
    cosines = np.sum(a * b, 1) / np.maximum(np.linalg.norm(a, axis=1) *
                                            np.linalg.norm(b, axis=1), 1e-12)
    return {"cosine_mean": round(float(cosines.mean()), 5),
            "cosine_min": round(float(cosines.min()), 5), "images": len(arrays),
            "measured_on": "photos of this run, against the fp32 engine"}


def embedder_for_store(vectors: str | Path, meta: dict, *, model: str | None = None,
                       weights: str | Path | None = None, handle: str | None = None,
                       backend: str | None = "auto", device: str = "cpu") -> Embedder:
    """The model the vectors at ``vectors`` (whose store meta is ``meta``) were made with,
    at their precision, to embed queries comparable with them: rebuilt from the recorded
    handle or weights, or from ``model``, ``weights``, ``handle`` when given (a moved
    artifact).

    Raises :class:`~mobilevec.errors.StoreError` when the model asked for differs from the
    recorded one, the vectors were made with random weights, or the weights now give
    another model.
    """
    from ..errors import StoreError

    name = model or meta["model"]
    if name != meta["model"]:
        raise StoreError(f"{vectors} holds {meta['model']} vectors; --model {name} cannot "
                         "embed queries comparable with them")
    handle = handle or (None if weights else meta.get("source"))
    weights = weights or meta.get("weights")
    if not handle and weights is None:
        raise StoreError(f"{vectors} was made with random weights; its queries cannot be "
                         "embedded again")
    if not handle and not Path(weights).exists() and not Path(f"{weights}.index").exists():
        raise StoreError(f"{vectors} was made with weights {weights}, which no longer exist; "
                         "pass --weights FILE|DIR")
    size = meta["preprocessing"]["size"][0]
    emb = embedder(name, None if handle else weights, handle=handle, backend=backend,
                   precision=meta.get("precision", "fp32"), image_size=size, device=device)
    if emb.fingerprint != meta["fingerprint"]:
        raise StoreError(f"{handle or weights} gives a different model than the one {vectors} "
                         f"was made with ({meta.get('weights')}, sha256 "
                         f"{meta.get('weights_sha256')}); pass the same --weights")
    return emb
