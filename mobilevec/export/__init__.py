"""Export a mobilevec model for fast inference: ONNX (fp32 or int8 QDQ), OpenVINO IR, TFLite.

>>> from mobilevec.export import export
>>> export(model, "v3.onnx", source=weights_path)                     # fp32 ONNX
>>> export(model, "v3.xml", format="openvino")                         # + v3.bin
>>> export(model, "v3.tflite", format="tflite")                        # float32, NHWC
>>> export(model, "v3_int8.onnx", calibration=calibration_paths("photos/"))

Both formats carry the metadata block of :mod:`mobilevec.export.metadata` (model id, input
contract, source sha256) and compute the module's ``(N, D)`` vectors from float32 NCHW
(or NHWC with ``nhwc=True``; TFLite is always NHWC) input in [0, 1] at a fixed image size
and any batch size. ONNX Runtime, OpenVINO, ``onnx`` and the ``tflite`` flatbuffer package
are optional: pip extras ``onnx``, ``openvino`` and ``litert``.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .._optional import require
from .metadata import build_metadata, source_sha256

if TYPE_CHECKING:
    from .fused import FusedNet, fuse
    from .quantize import PLACEMENTS, Placement, calibration_paths

log = logging.getLogger(__name__)

# Imported on first use: the folding reads torch modules, and readers of an export's
# metadata (the engines, on a warm start) must not import torch.
_LAZY = {"FusedNet": "fused", "fuse": "fused", "PLACEMENTS": "quantize",
         "Placement": "quantize", "calibration_paths": "quantize"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)

Format = Literal["onnx", "openvino", "tflite"]
__all__ = ["PLACEMENTS", "FusedNet", "calibration_paths", "default_int8_placement", "export",
           "exported_metadata", "fuse", "onnx_model", "openvino_model", "source_sha256",
           "tflite_bytes"]


def _require_onnx():
    return require("onnx", "onnx", purpose="ONNX export")


def _require_openvino():
    return require("openvino", "openvino", purpose="OpenVINO export")


def onnx_model(model, *, nhwc: bool = False, image_size: int | tuple[int, int] | None = None,
               source: str | Path | None = None,
               calibration: Sequence[str | Path] | None = None,
               skipped: list[tuple[Path, str]] | None = None,
               int8_placement: Placement = "all-ops"):
    """The ``onnx.ModelProto`` of ``model`` (a :class:`~mobilevec.models.mobilenet.MobileNet`).

    ``source``: the weights artifact, hashed into the metadata. ``calibration``: image
    paths; when given the result is int8 (QDQ), calibrated on them (undecodable ones are
    skipped and appended to ``skipped``), with quantization placed for ONNX Runtime
    (``all-ops``) or OpenVINO (``conv-inputs``), see :mod:`.quantize`.
    """
    _require_onnx()
    from .fused import fuse
    from .onnx_graph import to_onnx

    net = fuse(model, image_size)
    meta = build_metadata(net.model, net.num_features, net.image_size, nhwc=nhwc,
                          source=source)
    proto = to_onnx(net, nhwc=nhwc, metadata=meta)
    if calibration is not None:
        from .quantize import quantize_int8

        proto = quantize_int8(proto, calibration, skipped, placement=int8_placement)
    return proto


def openvino_model(proto):
    """An ``openvino.Model`` converted from a mobilevec ONNX model, metadata in rt_info."""
    from .metadata import RT_INFO_KEY, parse_metadata

    ov = _require_openvino()
    with tempfile.TemporaryDirectory(prefix="mobilevec-ov-") as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(proto.SerializeToString())
        model = ov.convert_model(str(path))
    for key, value in parse_metadata({p.key: p.value for p in proto.metadata_props}).items():
        model.set_rt_info(value, [RT_INFO_KEY, key])
    return model


def tflite_bytes(model, *, image_size: int | tuple[int, int] | None = None,
                 source: str | Path | None = None) -> bytes:
    """The float32 NHWC ``.tflite`` of ``model`` (see :mod:`.tflite_writer`)."""
    require("tflite", "litert", purpose=".tflite export")
    from .fused import fuse
    from .tflite_writer import to_tflite

    net = fuse(model, image_size)
    return to_tflite(net, build_metadata(net.model, net.num_features, net.image_size,
                                         nhwc=True, source=source))


def exported_metadata(path: str | Path) -> dict[str, str]:
    """The mobilevec metadata (unprefixed keys) of an exported ``.onnx`` or OpenVINO
    ``.xml`` file."""
    path = Path(path)
    if path.suffix == ".xml":
        from .metadata import read_rt_metadata

        return read_rt_metadata(_require_openvino().Core().read_model(str(path)))
    from .metadata import parse_metadata

    onnx = _require_onnx()
    return parse_metadata({p.key: p.value for p in onnx.load(str(path)).metadata_props})


def default_int8_placement(format: Format) -> Placement:
    """The int8 placement whose kernels the format's runtime has (:mod:`.quantize`)."""
    return "conv-inputs" if format == "openvino" else "all-ops"


def export(model, path: str | Path, format: Format = "onnx", *, nhwc: bool = False,
           image_size: int | tuple[int, int] | None = None, source: str | Path | None = None,
           calibration: Sequence[str | Path] | None = None,
           skipped: list[tuple[Path, str]] | None = None,
           int8_placement: Placement | None = None) -> list[Path]:
    """Write ``model`` to ``path`` as ``format``; returns the files written.

    ``onnx``: one ``.onnx`` file (opset 17). ``openvino``: ``path`` with suffix ``.xml``
    and its ``.bin`` (fp32 weights, not compressed to fp16). ``tflite``: one float32
    ``.tflite`` (NHWC; no int8). ``int8_placement`` defaults to
    :func:`default_int8_placement` of ``format``. See :func:`onnx_model` for the other
    arguments.
    """
    path = Path(path)
    if format == "tflite":
        if calibration is not None:
            raise ValueError("int8 export is available for onnx and openvino, not tflite")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(tflite_bytes(model, image_size=image_size, source=source))
        log.info("exported %s to %s", model.config.name, path)
        return [path]
    onnx = _require_onnx()
    proto = onnx_model(model, nhwc=nhwc, image_size=image_size, source=source,
                       calibration=calibration, skipped=skipped,
                       int8_placement=int8_placement or default_int8_placement(format))
    path.parent.mkdir(parents=True, exist_ok=True)
    if format == "onnx":
        onnx.save(proto, str(path))
        written = [path]
    elif format == "openvino":
        xml = path.with_suffix(".xml")
        _require_openvino().save_model(openvino_model(proto), str(xml), compress_to_fp16=False)
        written = [xml, xml.with_suffix(".bin")]
    else:
        raise ValueError(f"unknown export format {format!r}; use onnx, openvino or tflite")
    log.info("exported %s to %s", model.config.name, ", ".join(map(str, written)))
    return written
