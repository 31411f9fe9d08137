"""``load(handle)``: the hub-style entry point — resolve, download once, verify, convert, build.

A handle is whatever a TF Hub user already writes (``https://tfhub.dev/google/imagenet/
mobilenet_v3_small_075_224/feature_vector/5``, a Kaggle model URL, a bare ``google/...``
path), the URL of an official artifact (TF-Slim checkpoint tarball, Keras ``.h5``, MediaPipe
``.tflite``, our ``.safetensors``), any other ``http(s)://`` / ``file://`` URL of a supported
artifact, or a local file or directory.

Remote artifacts go through :mod:`mobilevec.hub.cache` (atomic, resumable, sha256-verified,
locked, offline-aware). The first load of an entry also writes its weights as mobilevec
safetensors into the entry (``model.safetensors``), so a warm load reads one small file and
never re-parses a tarball; the cache removes that file whenever the artifact is replaced.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

from ..errors import MobilevecError, WeightsError
from ..formats.detect import Weights, detect_format, read_weights
from ..formats.safetensors_format import read_safetensors_metadata, write_safetensors
from ..models.factory import create_model
from ..models.names import to_tf_variables
from ..models.registry import MODELS, infer_model
from . import cache as _cache
from .archive import archive_kind

if TYPE_CHECKING:
    from ..models.mobilenet import MobileNet

log = logging.getLogger(__name__)

# hub.KerasLayer(arguments=...) keys the MobileNet modules accept (the seed cards name one).
SUPPORTED_ARGUMENTS = ("batch_norm_momentum",)
# Formats preferred when an archive holds several artifacts: a TF-Slim tarball carries the
# checkpoint (BN unfolded, EMA values) next to a frozen graph and a BN-folded .tflite.
_PREFERENCE = ("saved_model", "tf_checkpoint", "keras_h5", "safetensors", "npy", "tflite")


@dataclass(frozen=True)
class Resolved:
    """Where a handle's weights are on disk.

    ``path`` is the artifact to read (file, directory or checkpoint prefix; inside an
    unpacked archive it is found on first use); ``model`` the model the handle names (None:
    infer it from the variables); ``entry`` the cache entry folder for remote and archived
    artifacts (None for plain local files); ``kind`` is "feature_vector", "classification"
    or "weights"; ``url`` the cache entry's URL.
    """

    handle: str
    location: Path  # the artifact itself, or the folder an archive was unpacked into
    model: str | None
    entry: Path | None = None
    kind: str = "weights"
    url: str | None = None
    unpacked: bool = False

    @cached_property
    def path(self) -> Path:
        return find_artifact(self.location) if self.unpacked else self.location


def resolve(handle: str | Path, *, offline: bool | None = None, progress: bool = False,
            cache: Path | None = None) -> Resolved:
    """Find (downloading and unpacking once, when needed) the artifact ``handle`` names.

    Raises :class:`~mobilevec.errors.DownloadError` (``OfflineError`` offline with a
    cold cache) or :class:`MobilevecError` for a handle that is no path, URL or known name.
    """
    from .artifacts import resolve_handle

    text = str(handle)
    local = _local_path(text)
    if local is not None and not (local.is_file() and archive_kind(local)):
        return Resolved(text, local, None)
    if local is not None:  # a local archive: unpacked into the cache like a download
        url, sha256, kind = local.resolve().as_uri(), None, "weights"
        model = _model_from_name(local.name)
    else:
        artifact = resolve_handle(text)
        if artifact is None:
            raise MobilevecError(
                f"{text!r} is not a file, directory, URL or handle mobilevec knows; give a "
                "local artifact, an http(s):// or file:// URL, or a TF Hub / Kaggle handle")
        url, sha256, model, kind = artifact.url, artifact.sha256, artifact.model, artifact.kind
    # Warm: fetch and the unpacked folder need no lock and no network.
    file = _cache.fetch(url, sha256=sha256, cache=cache, offline=offline, progress=progress,
                        handle=text)
    location, unpacked = file, bool(archive_kind(file))
    if unpacked:
        location = file.parent / _cache.EXTRACTED
        if not location.is_dir():
            location = _cache.fetch_extracted(url, sha256=sha256, cache=cache, offline=offline,
                                              progress=progress, handle=text)
    return Resolved(text, location, model, file.parent, kind, url, unpacked)


def load(handle: str | Path, trainable: bool = False, arguments: dict[str, Any] | None = None,
         *, model: str | None = None, ema: bool = True, offline: bool | None = None,
         progress: bool = False, cache: Path | None = None) -> MobileNet:
    """The torch module a handle names, like ``hub.KerasLayer(handle, trainable, arguments)``.

    ``trainable=False`` (KerasLayer's default) freezes the weights and keeps BatchNorm in
    inference mode; ``arguments={"batch_norm_momentum": 0.997}`` sets the BN decay used
    when fine-tuning (TF convention). ``model`` overrides the model the handle names or the
    variables imply (e.g. ``mobilenet_v2_100_192`` for the 224 weights). ``ema`` selects a
    TF checkpoint's moving averages (TF Hub's values). Handles of classification modules
    give a module with a classifier whose ``forward`` returns the logits, like the hub
    module; ``features(x)`` gives the feature vector.

    Raises ``DownloadError`` / ``OfflineError`` (cache), :class:`WeightsError` (content),
    :class:`~mobilevec.errors.UnknownModelError` (no model fits the variables).
    """
    momentum = _momentum(arguments)
    resolved = resolve(handle, offline=offline, progress=progress, cache=cache)
    converted = resolved.entry / _cache.SAFETENSORS if resolved.entry is not None else None
    weights: Path | Weights
    if converted is not None and ema and converted.is_file():
        weights = converted
        log.debug("%s: warm load from %s", resolved.handle, converted)
    else:
        weights = read_weights(resolved.path, ema=ema)
    name = model or resolved.model or _named_model(weights)
    if name not in MODELS:
        raise WeightsError(resolved.path, f"names model {name!r}, which mobilevec does not know")
    net = create_model(name, weights=weights, trainable=trainable, batch_norm_momentum=momentum)
    if converted is not None and ema and not converted.is_file():
        _write_converted(net, converted, resolved, cache)
    if resolved.kind == "classification":
        if net.classifier is None:
            raise WeightsError(resolved.path, "a classification module without Logits weights")
        net.output = "logits"
    return net


def find_artifact(folder: Path) -> Path:
    """The weights artifact inside an unpacked archive (see ``_PREFERENCE`` for ties).

    Raises :class:`WeightsError` naming the folder when it holds none, or several of the
    preferred format.
    """
    found: dict[str, list[Path]] = {}
    for candidate in _candidates(folder):
        try:
            fmt = detect_format(candidate)
        except WeightsError:
            continue
        if candidate.is_dir() and fmt not in ("saved_model", "npy"):
            continue  # a folder that holds a checkpoint: its prefix is the candidate
        found.setdefault(fmt, []).append(candidate)
    for fmt in _PREFERENCE:
        paths = sorted(set(found.get(fmt, [])))
        # A SavedModel's variables/ folder is a bundle too: keep the outermost of nested ones.
        paths = [p for p in paths if not any(q != p and q in p.parents for q in paths)]
        if len(paths) == 1:
            return paths[0]
        if paths:
            listed = ", ".join(str(p.relative_to(folder)) for p in paths)
            raise WeightsError(folder, f"holds several {fmt} artifacts ({listed}); pass one "
                                       "of them as the path")
    raise WeightsError(folder, "the archive holds no weights mobilevec can read (expected a "
                               "SavedModel, a TF checkpoint, .h5, .safetensors, .npy or .tflite)")


def _candidates(folder: Path):
    yield folder
    for path in sorted(folder.rglob("*")):
        if path.is_dir():
            yield path
        elif path.suffix == ".index":
            yield path.with_suffix("")  # checkpoint prefix
        elif path.suffix in (".h5", ".hdf5", ".tflite", ".safetensors"):
            yield path


def _local_path(text: str) -> Path | None:
    parts = urlsplit(text)
    if parts.scheme == "file":
        return Path(url2pathname(unquote(parts.path)))
    if parts.scheme and len(parts.scheme) > 1:  # "C:" is a drive, not a scheme
        return None
    path = Path(text).expanduser()
    if path.exists() or Path(str(path) + ".index").exists():
        return path
    return None


def _model_from_name(file_name: str) -> str | None:
    from .artifacts import _from_file_name

    name, _ = _from_file_name(file_name)
    return name if name in MODELS else None


def model_name(resolved: Resolved) -> str:
    """The model of a resolved handle, without building it: what the handle names, what
    the entry's converted weights record, or what the variables imply."""
    if resolved.model:
        return resolved.model
    converted = resolved.entry / _cache.SAFETENSORS if resolved.entry is not None else None
    if converted is not None and converted.is_file():
        return _named_model(converted)
    return _named_model(read_weights(resolved.path))


def _named_model(weights: Path | Weights) -> str:
    """The model that mobilevec safetensors record, or that the variables imply."""
    if isinstance(weights, Path):
        recorded = read_safetensors_metadata(weights).get("model")
        if recorded:
            return recorded
        weights = read_weights(weights)
    return infer_model({k: tuple(v.shape) for k, v in weights.variables.items()})


def _momentum(arguments: dict[str, Any] | None) -> float | None:
    arguments = dict(arguments or {})
    unknown = sorted(set(arguments) - set(SUPPORTED_ARGUMENTS))
    if unknown:
        raise MobilevecError(f"unknown arguments {unknown}; the MobileNet modules take "
                             f"{list(SUPPORTED_ARGUMENTS)}")
    value = arguments.get("batch_norm_momentum")
    return None if value is None else float(value)


def _write_converted(net: MobileNet, target: Path, resolved: Resolved,
                     cache: Path | None) -> None:
    """Store the weights as safetensors in the cache entry; a failure only costs speed."""
    try:
        with _cache.entry_lock(resolved.url, cache):
            if not target.exists():
                metadata = {"model": net.config.name, "source": str(resolved.path.name)}
                if net.classifier is not None:
                    metadata["num_classes"] = str(net.classifier.out_features)
                write_safetensors(to_tf_variables(net), target, metadata)
    except (OSError, MobilevecError) as e:
        log.warning("could not store converted weights in %s (%s); later loads will parse "
                    "the original artifact again", target.parent, e)
