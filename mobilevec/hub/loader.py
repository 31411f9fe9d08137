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

Nothing unverified is read: an artifact without a pinned hash is committed to the cache
only once its bytes parse as weights; every file a load reads from the cache (the
converted weights, the unpacked files, the original) is checked against the sha256 its
entry recorded, first. A derived file that changed is rebuilt from the re-verified
original; an original that changed, or that no longer parses, is dropped and fetched
again (offline, the error names ``mobilevec cache clear <handle>``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

from ..errors import CorruptCacheError, MobilevecError, OfflineError, WeightsError
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
    cache: Path | None = None

    @cached_property
    def path(self) -> Path:
        """The artifact, after its cached bytes were checked against their recorded sha256
        (CorruptCacheError when they changed)."""
        if self.entry is None or self.url is None:
            return self.location
        if self.unpacked:
            return find_artifact(_cache.verified_extracted(self.url, self.cache, self.handle))
        return _cache.verify_file(self.url, self.cache, self.handle)


def resolve(handle: str | Path, *, offline: bool | None = None, progress: bool = False,
            cache: Path | None = None, rehash: bool = False) -> Resolved:
    """Find (downloading and unpacking once, when needed) the artifact ``handle`` names.

    ``rehash`` re-hashes the cached original in full before it is used. Raises
    :class:`~mobilevec.errors.DownloadError` (``OfflineError`` offline with a cold cache)
    or :class:`MobilevecError` for a handle that is no path, URL or known name.
    """
    from .artifacts import Artifact, resolve_handle

    text = str(handle)
    local = _local_path(text)
    if local is not None and not (local.is_file() and archive_kind(local)):
        return Resolved(text, local, None)
    if local is not None:  # a local archive: unpacked into the cache like a download
        artifact = Artifact(text, local.resolve().as_uri(), _model_from_name(local.name))
    else:
        artifact = resolve_handle(text)
        if artifact is None:
            raise MobilevecError(
                f"{text!r} is not a file, directory, URL or handle mobilevec knows; give a "
                "local artifact, an http(s):// or file:// URL, or a TF Hub / Kaggle handle")
    # Warm: no lock and no network; archives come unpacked, with their files recorded.
    file = _cache.fetch(artifact.url, sha256=artifact.sha256, md5=artifact.md5,
                        size=artifact.size, cache=cache, offline=offline, progress=progress,
                        handle=text, validate=validate_artifact, unpack=True, rehash=rehash)
    unpacked = (file.parent / _cache.EXTRACTED).is_dir() and bool(archive_kind(file))
    location = file.parent / _cache.EXTRACTED if unpacked else file
    return Resolved(text, location, artifact.model, file.parent, artifact.kind, artifact.url,
                    unpacked, cache)


def validate_artifact(candidate: Path) -> None:
    """What the cache asks before committing an artifact whose hash nobody pinned: its bytes
    (a file, or the folder an archive unpacked to) must hold weights mobilevec can read.
    Raises WeightsError otherwise."""
    read_weights(find_artifact(candidate) if candidate.is_dir() else candidate)


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
    resolved, weights = _resolve_and_read(handle, ema=ema, offline=offline, progress=progress,
                                          cache=cache)
    name = model or resolved.model or _named_model(weights)
    if name not in MODELS:
        raise WeightsError(resolved.location, f"names model {name!r}, which mobilevec does not "
                           "know")
    net = create_model(name, weights=weights, trainable=trainable, batch_norm_momentum=momentum)
    if resolved.entry is not None and ema and weights.path.name != _cache.SAFETENSORS:
        _write_converted(net, resolved, weights)
    if resolved.kind == "classification":
        if net.classifier is None:
            raise WeightsError(resolved.location, "a classification module without Logits "
                               "weights")
        net.output = "logits"
    return net


def _resolve_and_read(handle: str | Path, *, ema: bool, offline: bool | None, progress: bool,
                      cache: Path | None) -> tuple[Resolved, Weights]:
    """Resolve ``handle`` and read its weights from verified bytes only.

    A converted or unpacked file that no longer matches its recorded sha256 is dropped and
    rebuilt from the original, re-hashed in full (this works offline); an original that
    changed is fetched again, and one that verifies but does not parse (an entry from an
    older mobilevec that never checked) is dropped and fetched again, once.
    """
    offline_now = _cache.is_offline() if offline is None else offline
    for attempt in (0, 1):
        resolved = resolve(handle, offline=offline, progress=progress, cache=cache,
                           rehash=attempt > 0)
        try:
            return resolved, _read_resolved(resolved, ema)
        except CorruptCacheError as e:
            if attempt:
                raise
            log.warning("%s; rebuilding it from the original, re-verified", e)
            _cache.drop_derived(resolved.url, cache)
        except WeightsError as e:
            entry = _cache.get_entry(resolved.url, cache) if resolved.url else None
            pinned = entry is not None and (entry.sha256_source == "registry" or entry.md5)
            if resolved.entry is None or attempt or pinned:  # the same bytes would come back
                raise
            clear = _cache.CLEAR_HINT.format(resolved.handle)
            if offline_now and urlsplit(resolved.url).scheme != "file":
                raise OfflineError(
                    f"{e}. The cached copy of {resolved.url} does not parse as weights and "
                    f"cannot be fetched again offline: remove it with `{clear}` and load it "
                    "again with network access.", url=resolved.url,
                    path=resolved.entry) from e
            log.warning("%s: the cached copy does not parse as weights (%s); fetching it "
                        "again", resolved.url, e)
            _cache.clear(resolved.url, cache=cache)
    raise AssertionError("unreachable")  # pragma: no cover


def _read_resolved(resolved: Resolved, ema: bool) -> Weights:
    if resolved.entry is not None and ema:
        converted = _cache.check_derived(resolved.url, _cache.SAFETENSORS, resolved.cache,
                                         resolved.handle)
        if converted is not None:
            log.debug("%s: warm load from %s", resolved.handle, converted)
            return read_weights(converted)
    return read_weights(resolved.path, ema=ema)


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
        recorded = read_safetensors_metadata(converted).get("model")
        if recorded:
            return recorded
    return _named_model(read_weights(resolved.path))


def _named_model(weights: Weights) -> str:
    """The model that mobilevec safetensors record, or that the variables imply."""
    if weights.format == "safetensors":
        recorded = read_safetensors_metadata(weights.path).get("model")
        if recorded:
            return recorded
    return infer_model({k: tuple(v.shape) for k, v in weights.variables.items()})


def _momentum(arguments: dict[str, Any] | None) -> float | None:
    arguments = dict(arguments or {})
    unknown = sorted(set(arguments) - set(SUPPORTED_ARGUMENTS))
    if unknown:
        raise MobilevecError(f"unknown arguments {unknown}; the MobileNet modules take "
                             f"{list(SUPPORTED_ARGUMENTS)}")
    value = arguments.get("batch_norm_momentum")
    return None if value is None else float(value)


def _write_converted(net: MobileNet, resolved: Resolved, weights: Weights) -> None:
    """Store the weights as safetensors in the cache entry, recording their sha256; a
    failure only costs speed."""
    metadata = {"model": net.config.name, "source": weights.path.name}
    if net.classifier is not None:
        metadata["num_classes"] = str(net.classifier.out_features)
    variables = to_tf_variables(net)
    try:
        _cache.add_derived(resolved.url, _cache.SAFETENSORS,
                           lambda target: write_safetensors(variables, target, metadata),
                           resolved.cache)
    except (OSError, MobilevecError) as e:
        log.warning("could not store converted weights in %s (%s); later loads will parse "
                    "the original artifact again", resolved.entry, e)
