"""The metadata block every exported model carries, and the hash of its source weights.

Keys (all strings, prefixed ``mobilevec.``): ``model`` (registry name), ``num_features``,
``input`` (the input contract in words), ``layout`` (NCHW or NHWC), ``image_size``
("H,W"), ``precision`` (fp32 or int8), ``source`` (file name of the weights) and
``source_sha256`` (see :func:`source_sha256`), ``version`` (mobilevec's).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

PREFIX = "mobilevec."
INPUT_CONTRACT = "float32 RGB in [0, 1], scaled to [-1, 1] inside; batch dimension dynamic"


def source_sha256(path: str | Path | None) -> str:
    """sha256 of a weights artifact: of the file's bytes, or for a directory of the lines
    ``<relative path>\\t<sha256 of file>`` of its files in sorted order. "" for None."""
    if path is None:
        return ""
    path = Path(path)
    if path.is_file():
        return _file_sha256(path)
    lines = [f"{p.relative_to(path).as_posix()}\t{_file_sha256(p)}\n"
             for p in sorted(path.rglob("*")) if p.is_file()]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build_metadata(model_name: str, num_features: int, image_size: tuple[int, int], *,
                   nhwc: bool = False, precision: str = "fp32",
                   source: str | Path | None = None) -> dict[str, str]:
    """The metadata block (prefixed keys, string values) of an exported model."""
    from .._version import __version__

    h, w = image_size
    return {f"{PREFIX}{k}": str(v) for k, v in {
        "model": model_name,
        "num_features": num_features,
        "input": INPUT_CONTRACT,
        "layout": "NHWC" if nhwc else "NCHW",
        "image_size": f"{h},{w}",
        "precision": precision,
        "source": "" if source is None else Path(source).name,
        "source_sha256": source_sha256(source),
        "version": __version__,
    }.items()}


def parse_metadata(props: dict[str, str]) -> dict[str, str]:
    """The mobilevec keys of ``props`` without their prefix (empty if there are none)."""
    return {k[len(PREFIX):]: v for k, v in props.items() if k.startswith(PREFIX)}
