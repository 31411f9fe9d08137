"""The metadata block every exported model carries, and where each format keeps it.

Keys (all strings, prefixed ``mobilevec.``): ``model`` (registry name), ``num_features``,
``input`` (the input contract in words), ``layout`` (NCHW or NHWC), ``image_size``
("H,W"), ``precision`` (fp32 or int8), ``source`` (file name of the weights) and
``source_sha256`` (the weights' identity, :func:`mobilevec._io.sha256_tree`), ``version``
(mobilevec's). ONNX keeps the block in ``metadata_props``, OpenVINO IR in the model's
rt_info under :data:`RT_INFO_KEY`.
"""

from __future__ import annotations

from pathlib import Path

from .._io import sha256_tree
from .._version import __version__
from ..models.registry import get_config

PREFIX = "mobilevec."
RT_INFO_KEY = "mobilevec"  # OpenVINO rt_info section of the block


def source_sha256(path: str | Path | None) -> str:
    """The identity of a weights artifact (:func:`mobilevec._io.sha256_tree`); "" for None."""
    return "" if path is None else sha256_tree(path)


def build_metadata(model_name: str, num_features: int, image_size: tuple[int, int], *,
                   nhwc: bool = False, precision: str = "fp32",
                   source: str | Path | None = None) -> dict[str, str]:
    """The metadata block (prefixed keys, string values) of an exported model."""
    h, w = image_size
    contract = get_config(model_name).input.describe()
    return {f"{PREFIX}{k}": str(v) for k, v in {
        "model": model_name,
        "num_features": num_features,
        "input": f"{contract}; this export takes {h}x{w}, batch dimension dynamic",
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


def read_rt_metadata(model) -> dict[str, str]:
    """The mobilevec metadata (unprefixed keys) of an ``openvino.Model``."""
    if not model.has_rt_info([RT_INFO_KEY]):
        return {}
    info = model.get_rt_info()[RT_INFO_KEY]
    return {str(k): str(v.astype(str) if hasattr(v, "astype") else v)
            for k, v in info.items()}
