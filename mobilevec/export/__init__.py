"""Export a mobilevec model for fast inference: ONNX (fp32 or int8 QDQ) and OpenVINO IR.

>>> from mobilevec.export import export
>>> export(model, "v3.onnx", source=weights_path)                     # fp32 ONNX
>>> export(model, "v3.xml", format="openvino")                         # + v3.bin
>>> export(model, "v3_int8.onnx", calibration=calibration_paths("photos/"))

Both formats carry the metadata block of :mod:`mobilevec.export.metadata` (model id, input
contract, source sha256) and compute the module's ``(N, D)`` vectors from float32 NCHW
(or NHWC with ``nhwc=True``) input in [0, 1] at a fixed image size and any batch size.
ONNX Runtime, OpenVINO and ``onnx`` itself are optional: pip extras ``onnx`` and
``openvino``.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from .fused import FusedNet, fuse
from .metadata import build_metadata, source_sha256
from .quantize import calibration_paths

log = logging.getLogger(__name__)

Format = Literal["onnx", "openvino"]
__all__ = ["FusedNet", "calibration_paths", "export", "fuse", "onnx_model", "openvino_model",
           "source_sha256"]


def _require_onnx():
    try:
        import onnx
    except ImportError:
        from ..engines.base import MissingBackendError

        raise MissingBackendError("onnxruntime", "onnx") from None
    return onnx


def onnx_model(model, *, nhwc: bool = False, image_size: int | tuple[int, int] | None = None,
               source: str | Path | None = None,
               calibration: Sequence[str | Path] | None = None,
               skipped: list[tuple[Path, str]] | None = None):
    """The ``onnx.ModelProto`` of ``model`` (a :class:`~mobilevec.model.MobileNet`).

    ``source``: the weights artifact, hashed into the metadata. ``calibration``: image
    paths; when given the result is int8 (QDQ), calibrated on them (undecodable ones are
    skipped and appended to ``skipped``).
    """
    _require_onnx()
    from .onnx_graph import to_onnx

    net = fuse(model, image_size)
    meta = build_metadata(net.model, net.num_features, net.image_size, nhwc=nhwc,
                          source=source)
    proto = to_onnx(net, nhwc=nhwc, metadata=meta)
    if calibration is not None:
        from .quantize import quantize_int8

        proto = quantize_int8(proto, calibration, skipped)
    return proto


def openvino_model(proto):
    """An ``openvino.Model`` converted from a mobilevec ONNX model, metadata in rt_info."""
    from ..engines.openvino_engine import RT_INFO_KEY, _ov
    from .metadata import parse_metadata

    ov = _ov()
    with tempfile.TemporaryDirectory(prefix="mobilevec-ov-") as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(proto.SerializeToString())
        model = ov.convert_model(str(path))
    for key, value in parse_metadata({p.key: p.value for p in proto.metadata_props}).items():
        model.set_rt_info(value, [RT_INFO_KEY, key])
    return model


def export(model, path: str | Path, format: Format = "onnx", *, nhwc: bool = False,
           image_size: int | tuple[int, int] | None = None, source: str | Path | None = None,
           calibration: Sequence[str | Path] | None = None,
           skipped: list[tuple[Path, str]] | None = None) -> list[Path]:
    """Write ``model`` to ``path`` as ``format``; returns the files written.

    ``onnx``: one ``.onnx`` file (opset 17). ``openvino``: ``path`` with suffix ``.xml``
    and its ``.bin`` (fp32 weights, not compressed to fp16). See :func:`onnx_model` for
    the other arguments.
    """
    onnx = _require_onnx()
    proto = onnx_model(model, nhwc=nhwc, image_size=image_size, source=source,
                       calibration=calibration, skipped=skipped)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if format == "onnx":
        onnx.save(proto, str(path))
        written = [path]
    elif format == "openvino":
        from ..engines.openvino_engine import _ov

        xml = path.with_suffix(".xml")
        _ov().save_model(openvino_model(proto), str(xml), compress_to_fp16=False)
        written = [xml, xml.with_suffix(".bin")]
    else:
        raise ValueError(f"unknown export format {format!r}; use 'onnx' or 'openvino'")
    log.info("exported %s to %s", model.config.name, ", ".join(map(str, written)))
    return written
