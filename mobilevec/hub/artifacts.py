"""Known weight artifacts and the handles that name them (data, like the model registry).

A *handle* is what users already write: a TF Hub handle (``https://tfhub.dev/google/
imagenet/mobilenet_v3_small_075_224/feature_vector/5``), its Kaggle successor, or the URL of
an official artifact (TF-Slim checkpoint tarball, Keras ``.h5``, MediaPipe ``.tflite``).
:func:`resolve_handle` turns one into an :class:`Artifact`: the model it holds (when the
handle says), where to download it, and its sha256 where we know it. Anything else that is
a URL is an artifact of unknown model, recognised by content after download.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..models.registry import MODELS, ModelConfig

# Where the official artifacts live (public, documented by their publishers).
TFHUB = "https://tfhub.dev/google"
KAGGLE = "https://www.kaggle.com/models/google"
SLIM_V2 = "https://storage.googleapis.com/mobilenet_v2/checkpoints"
SLIM_V3 = "https://storage.googleapis.com/mobilenet_v3/checkpoints"
KERAS_V2 = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2"
KERAS_V3 = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v3"
MEDIAPIPE = "https://storage.googleapis.com/mediapipe-assets"

# TF Hub serves a module as a tarball when asked for the compressed format; tfhub.dev
# redirects such requests to Kaggle and then to storage.
COMPRESSED_QUERY = "tf-hub-format=compressed"
# A mirror that serves tfhub.dev / Kaggle module paths (an internal proxy, or a test server):
# ``$MOBILEVEC_HUB_MIRROR/google/imagenet/.../feature_vector/5?tf-hub-format=compressed``.
ENV_HUB_MIRROR = "MOBILEVEC_HUB_MIRROR"


@dataclass(frozen=True)
class Artifact:
    """A downloadable weights artifact and the contract of the model it holds.

    ``model`` is the mobilevec model it holds when the handle tells (None: infer it from
    the variables after download), and :attr:`config` that model's
    :class:`~mobilevec.models.registry.ModelConfig`: input contract, output size, default
    dedup threshold. ``url`` is what is fetched; ``sha256`` is checked when known, else
    recorded on first download; ``md5`` is the publisher's md5 where that is all it gives
    (Keras applications), checked the same way; ``size`` the exact size when known;
    ``kind`` is "feature_vector", "classification" or "weights"; ``format`` the
    artifact's format when known ("tf_hub_module", "tf_slim_checkpoint", "keras_h5",
    "tflite"); ``provenance`` where the facts come from.
    """

    handle: str
    url: str
    model: str | None
    sha256: str | None = None
    kind: str = "weights"
    format: str | None = None
    provenance: str = ""
    md5: str | None = None
    size: int | None = None

    @property
    def config(self) -> ModelConfig | None:
        return MODELS.get(self.model) if self.model else None


# The md5s Keras publishes for its MobileNetV3 application weights (keras/src/applications/
# mobilenet_v3.py, WEIGHTS_HASHES: ``get_file(file_hash=...)`` takes a 32-digit hash as md5):
# (the file with the classifier, the ``_no_top_v2`` file). Keras publishes none for V2.
KERAS_V3_MD5 = {
    "large_224_0.75_float": ("765b44a33ad4005b3ac83185abf1d0eb",
                             "40af19a13ebea4e2ee0c676887f69a2e"),
    "large_224_1.0_float": ("59e551e166be033d707958cf9e29a6a7",
                            "07fb09a5933dd0c8eaafa16978110389"),
    "large_minimalistic_224_1.0_float": ("675e7b876c45c57e9e63e6d90a36599c",
                                         "ec5221f64a2f6d1ef965a614bdae7973"),
    "small_224_0.75_float": ("cb65d4e5be93758266aa0a7f2c6708b7",
                             "ebdb5cc8e0b497cd13a7c275d475c819"),
    "small_224_1.0_float": ("8768d4c2e7dee89b9d02b2d03d65d862",
                            "d3e8ec802a04aa4fc771ee12a9a9b836"),
    "small_minimalistic_224_1.0_float": ("99cd97fb2fcdad2bf028eb838de69e37",
                                         "cde8136e733e811080d9fcd8a252f7e4"),
}


def _keras_v3_artifacts() -> tuple[Artifact, ...]:
    rows = []
    for variant, (top, no_top) in KERAS_V3_MD5.items():
        size, minimal, _, alpha, _ = re.fullmatch(
            r"(small|large)(_minimalistic)?_(224)_(\d\.\d+)_(float)", variant).groups()
        model = (f"mobilenet_v3_{size}{'_minimalistic' if minimal else ''}_"
                 f"{round(float(alpha) * 100):03d}_224")
        for suffix, md5 in (("", top), ("_no_top_v2", no_top)):
            url = f"{KERAS_V3}/weights_mobilenet_v3_{variant}{suffix}.h5"
            rows.append(Artifact(url, url, model, None, "weights", "keras_h5",
                                 "Keras applications weights; md5 as Keras publishes it",
                                 md5=md5))
    return tuple(rows)


# Artifacts whose bytes were checked, with what is known of them beyond their handle.
KNOWN: tuple[Artifact, ...] = (
    Artifact(f"{MEDIAPIPE}/mobilenet_v3_small_075_224_embedder.tflite",
             f"{MEDIAPIPE}/mobilenet_v3_small_075_224_embedder.tflite",
             "mobilenet_v3_small_075_224",
             "0f786f8eb8bcecd1f9c5bc50f00a5e6b9f62600edb503ad3bfff5f51035b0ea5",
             "feature_vector", "tflite",
             "MediaPipe image embedder built from the TF Hub V3 Small 0.75 feature vector "
             "(../shared/weights/PROVENANCE.md)", size=4_117_698),
    *_keras_v3_artifacts(),
)
_KNOWN_BY_URL = {a.url: a for a in KNOWN}


_HUB_PATH = re.compile(
    r"(?:google/)?(?:imagenet/)?(?P<name>mobilenet_v[23]_[a-z0-9_]+?)/"
    r"(?P<kind>feature_vector|classification)/(?P<version>\d+)")
_HUB_PREVIEW = re.compile(
    r"(?:google/)?tf2-preview/mobilenet_v2/(?P<kind>feature_vector|classification)/"
    r"(?P<version>\d+)")
# Kaggle: .../mobilenet-v3/frameworks/TensorFlow2/variations/small-075-224-feature-vector/
_KAGGLE_PATH = re.compile(
    r"(?:google/)?mobilenet-v(?P<v>[23])/frameworks/[^/]+/variations/"
    r"(?P<variation>[a-z0-9-]+)/versions/(?P<version>\d+)")
_KAGGLE_VARIATION = re.compile(
    r"(?:(?P<size_class>small|large)-)?(?:(?P<minimal>minimalistic)-)?(?P<mult>\d{3})-"
    r"(?P<res>\d+)-(?P<kind>feature-vector|classification)")


_FORMAT_BY_SUFFIX = {"tgz": "tf_slim_checkpoint", "h5": "keras_h5", "tflite": "tflite",
                     "safetensors": "safetensors"}


def _with_query(url: str, query: str) -> str:
    return url if query in url else url + ("&" if "?" in url else "?") + query


def _hub_artifact(handle: str, name: str, kind: str) -> Artifact | None:
    if name not in MODELS:
        return None
    path = urlsplit(handle).path if "://" in handle else handle
    url = handle if "://" in handle else f"https://tfhub.dev/{path.lstrip('/')}"
    if mirror := os.environ.get(ENV_HUB_MIRROR):
        url = f"{mirror.rstrip('/')}/{path.lstrip('/')}"
    return Artifact(handle, _with_query(url.split("?")[0], COMPRESSED_QUERY), name,
                    kind=kind, format="tf_hub_module")


def _from_hub_path(handle: str, path: str) -> Artifact | None:
    if m := _HUB_PREVIEW.search(path):
        return _hub_artifact(handle, "mobilenet_v2_100_224", m["kind"])
    if m := _HUB_PATH.search(path):
        return _hub_artifact(handle, m["name"], m["kind"])
    if m := _KAGGLE_PATH.search(path):
        v = _KAGGLE_VARIATION.fullmatch(m["variation"])
        if not v:
            return None
        parts = [f"mobilenet_v{m['v']}", v["size_class"], v["minimal"] and "minimalistic",
                 v["mult"], v["res"]]
        return _hub_artifact(handle, "_".join(p for p in parts if p),
                             v["kind"].replace("-", "_"))
    return None


def _from_file_name(name: str) -> tuple[str | None, str]:
    """Model named by an official artifact's file name, e.g. ``mobilenet_v2_1.0_224.tgz``."""
    if m := re.fullmatch(r"mobilenet_v2_(\d\.\d+)_(\d+)\.tgz", name):
        return f"mobilenet_v2_{round(float(m[1]) * 100):03d}_{m[2]}", "weights"
    if m := re.fullmatch(r"v3-(small|large)(-minimalistic)?_224_(\d\.\d+)_float\.tgz", name):
        minimal = "_minimalistic" if m[2] else ""
        return f"mobilenet_v3_{m[1]}{minimal}_{round(float(m[3]) * 100):03d}_224", "weights"
    if m := re.fullmatch(r"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_(\d\.\d+)_(\d+)"
                         r"(_no_top)?\.h5", name):
        return f"mobilenet_v2_{round(float(m[1]) * 100):03d}_{m[2]}", "weights"
    if m := re.fullmatch(r"weights_mobilenet_v3_(small|large)(_minimalistic)?_224_(\d\.\d+)"
                         r"_float(_no_top_v2)?\.h5", name):
        minimal = "_minimalistic" if m[2] else ""
        return f"mobilenet_v3_{m[1]}{minimal}_{round(float(m[3]) * 100):03d}_224", "weights"
    if m := re.fullmatch(r"mobilenet_v3_(small|large)_(\d{3})_224_embedder\.tflite", name):
        return f"mobilenet_v3_{m[1]}_{m[2]}_224", "feature_vector"
    return None, "weights"


def resolve_handle(handle: str) -> Artifact | None:
    """The artifact a remote handle names, or None when ``handle`` is not a remote handle.

    Bare TF Hub paths (``google/imagenet/mobilenet_v2_100_224/feature_vector/5``) count as
    handles. The model is None when the handle does not name one (an arbitrary URL); such
    artifacts are recognised by content after download.
    """
    scheme = urlsplit(handle).scheme
    if scheme in ("http", "https"):
        parts = urlsplit(handle)
        if parts.netloc.endswith(("tfhub.dev", "kaggle.com", "tensorflow.google.cn")):
            return _from_hub_path(handle, parts.path)
        if handle in _KNOWN_BY_URL:
            return _KNOWN_BY_URL[handle]
        name = parts.path.rsplit("/", 1)[-1]
        model, kind = _from_file_name(name)
        model = model if model in MODELS else None
        return Artifact(handle, handle, model, None, kind, _FORMAT_BY_SUFFIX.get(
            name.rsplit(".", 1)[-1]))
    if not scheme and re.match(r"^(google/)?(imagenet|tf2-preview)/mobilenet", handle):
        return _from_hub_path(handle, handle)
    return None


def official_artifacts() -> list[Artifact]:
    """The official artifacts of the two seed modules and their siblings (for docs/tests)."""
    urls = [
        f"{TFHUB}/tf2-preview/mobilenet_v2/feature_vector/4",
        f"{TFHUB}/imagenet/mobilenet_v3_small_075_224/feature_vector/5",
        f"{SLIM_V2}/mobilenet_v2_1.0_224.tgz",
        f"{SLIM_V3}/v3-small_224_0.75_float.tgz",
        f"{KERAS_V2}/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
        f"{MEDIAPIPE}/mobilenet_v3_small_075_224_embedder.tflite",
    ]
    return [a for a in (resolve_handle(u) for u in urls) if a is not None]
