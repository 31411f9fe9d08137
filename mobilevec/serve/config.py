"""What a server serves and how: the models (name, weights, precision) and the knobs of
batching, limits and security. Built from the command line or a small TOML/JSON file."""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..data.images import MAX_PIXELS
from ..errors import MobilevecError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8500
DEFAULT_MAX_BATCH = 32
DEFAULT_MAX_DELAY_MS = 5.0
# A TF Serving JSON body of one 224x224 image is ~1.5 MB of text; 64 MiB takes a batch of
# about 40 of those, or 100 binary FP32 images.
DEFAULT_MAX_BODY_BYTES = 64 << 20
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class ServedModel:
    """One model behind the server: its URL name, the registry ``model``, and ``weights``
    (a file or folder) or a ``handle``; ``precision`` as ``embed --precision``."""

    name: str
    model: str | None = None
    weights: str | None = None
    handle: str | None = None
    precision: str = "fp32"
    backend: str = "auto"

    def __post_init__(self):
        if not _NAME.match(self.name):
            raise MobilevecError(f"model name {self.name!r}: use letters, digits, '_', '.' "
                                 "and '-' (it is part of the URLs)")
        if not (self.weights or self.handle):
            raise MobilevecError(f"model {self.name!r}: give weights or a handle (a server "
                                 "of random weights would answer vectors that mean nothing)")
        if self.weights and self.handle:
            raise MobilevecError(f"model {self.name!r}: give weights or a handle, not both")
        if self.precision not in ("fp32", "bf16", "int8"):
            raise MobilevecError(f"model {self.name!r}: precision must be fp32, bf16 or "
                                 f"int8, not {self.precision!r}")


@dataclass(frozen=True)
class ServeConfig:
    """Server settings. ``max_queue``: requests per model between arrival and answer
    (reading, decoding, queued) before 503, and images queued for the engine (default
    4 x ``max_batch``); ``timeout_s``: a request's limit from arrival to answer (504
    past it); ``decode_threads``: parallel image decoders (default: one per core)."""

    models: tuple[ServedModel, ...]
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    max_batch: int = DEFAULT_MAX_BATCH
    max_delay_ms: float = DEFAULT_MAX_DELAY_MS
    max_queue: int | None = None
    timeout_s: float = 30.0
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_pixels: int = MAX_PIXELS
    exact_decode: bool = False
    crop: str = "none"
    decode_threads: int | None = None
    token: str | None = field(default=None, repr=False)
    access_log: bool = True

    def __post_init__(self):
        if not self.models:
            raise MobilevecError("serve needs at least one model")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise MobilevecError(f"model names must differ, got {names}")
        for what, value, low in (("max_batch", self.max_batch, 1),
                                 ("max_body_bytes", self.max_body_bytes, 1024),
                                 ("max_pixels", self.max_pixels, 1)):
            if value < low:
                raise MobilevecError(f"{what} must be >= {low}, got {value}")
        if not self.max_delay_ms >= 0 or not self.timeout_s > 0:
            raise MobilevecError("max_delay_ms must be >= 0 and timeout_s > 0")
        if self.crop not in ("none", "center"):
            raise MobilevecError(f"crop must be 'none' or 'center', not {self.crop!r}")

    @property
    def queue_limit(self) -> int:
        return self.max_queue if self.max_queue is not None else 4 * self.max_batch


def parse_model_option(text: str) -> dict:
    """``--model`` as ``NAME`` (registry name, also the URL name) or
    ``URLNAME=NAME``."""
    url_name, _, model = text.partition("=")
    return {"name": url_name, "model": model} if model else {"name": text, "model": text}


def read_config_file(path: str | Path) -> dict:
    """A TOML or JSON file: ``[[models]]`` tables (name, model, weights | handle,
    precision) and any :class:`ServeConfig` field at the top level."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise MobilevecError(f"{path}: cannot read the serve config ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise MobilevecError(f"{path}: expected a 'models' list of tables")
    known = {f.name for f in fields(ServedModel)}
    models = []
    for entry in data["models"]:
        if not isinstance(entry, dict) or set(entry) - known or "name" not in entry:
            raise MobilevecError(f"{path}: each model has a name and only the keys "
                                 f"{sorted(known)}; got {entry!r}")
        entry = dict(entry)
        entry.setdefault("model", entry["name"])
        if entry.get("weights"):  # relative to the file, as people write them
            entry["weights"] = str((path.parent / entry["weights"]).resolve())
        models.append(ServedModel(**entry))
    settings = {k: v for k, v in data.items() if k != "models"}
    allowed = {f.name for f in fields(ServeConfig)} - {"models", "token"}
    if set(settings) - allowed:
        raise MobilevecError(f"{path}: unknown settings {sorted(set(settings) - allowed)}")
    return {"models": tuple(models), **settings}
