"""Export a mobilevec model for fast inference: ONNX (fp32 or int8 QDQ), OpenVINO IR, TFLite.

>>> from mobilevec.export import export
>>> export(model, "v3.onnx", source=weights_path)                     # fp32 ONNX
>>> export(model, "v3.xml")                                            # OpenVINO IR + v3.bin
>>> export(model, "v3.tflite")                                         # float32, NHWC
>>> export(model, "v3_int8.onnx", calibration=calibration_paths("photos/"))

The format is the file's suffix (:data:`SUFFIXES`: ``.onnx``, ``.xml``, ``.tflite``);
``format=`` names it for other file names, and a ``format`` that contradicts the suffix
is refused (:func:`export_format`).

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
    from .quantize import PLACEMENTS, Placement, Progress, calibration_paths

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
FORMATS: tuple[Format, ...] = ("onnx", "openvino", "tflite")
SUFFIXES: dict[str, Format] = {".onnx": "onnx", ".xml": "openvino", ".tflite": "tflite"}
__all__ = ["FORMATS", "PLACEMENTS", "SUFFIXES", "FusedNet", "calibration_paths",
           "default_int8_placement", "export", "export_format", "exported_metadata", "fuse",
           "onnx_model", "openvino_model", "pin_fp32", "source_sha256", "tflite_bytes",
           "unpin_fp32"]


def export_format(path: str | Path, format: str | None = None) -> Format:
    """The format an export to ``path`` is written in: the suffix's (:data:`SUFFIXES`), or
    ``format`` for a file name without one of those suffixes.

    Raises ``ValueError`` when ``format`` contradicts the suffix (``-o v3.xml --format
    onnx`` would write ONNX bytes into an .xml file), is unknown, or when neither tells.
    """
    if format is not None and format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; use onnx, openvino or tflite")
    suffix = Path(path).suffix.lower()
    implied = SUFFIXES.get(suffix)
    if implied is not None and format is not None and format != implied:
        raise ValueError(f"{path}: a {suffix} file is {implied}, not {format}; name the file "
                         f"{_suffix_of(format)} or drop the format")
    if implied is None and format is None:
        raise ValueError(f"{path}: cannot tell the format from the file name; name it .onnx, "
                         ".xml (OpenVINO) or .tflite, or give the format")
    return implied or format  # type: ignore[return-value]


def _suffix_of(format: str) -> str:
    return next(s for s, f in SUFFIXES.items() if f == format)


def _require_onnx():
    return require("onnx", "onnx", purpose="ONNX export")


def _require_openvino():
    return require("openvino", "openvino", purpose="OpenVINO export")


def onnx_model(model, *, nhwc: bool = False, image_size: int | tuple[int, int] | None = None,
               source: str | Path | None = None,
               calibration: Sequence[str | Path] | None = None,
               skipped: list[tuple[Path, str]] | None = None,
               int8_placement: Placement = "all-ops", progress: Progress | None = None):
    """The ``onnx.ModelProto`` of ``model`` (a :class:`~mobilevec.models.mobilenet.MobileNet`).

    ``source``: the weights artifact, hashed into the metadata. ``calibration``: image
    paths; when given the result is int8 (QDQ), calibrated on them (undecodable ones are
    skipped and appended to ``skipped``), with quantization placed for ONNX Runtime
    (``all-ops``) or OpenVINO (``conv-inputs``), see :mod:`.quantize`. ``progress``:
    called as ``progress(stage, done, total)`` through the int8 work (:data:`.quantize.STAGES`).
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

        proto = quantize_int8(proto, calibration, skipped, placement=int8_placement,
                              progress=progress)
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


# OpenVINO's key of ``ov::disable_fp16_compression`` (transformations/rt_info): nodes that
# carry it keep their precision; ``save_model`` writes it into the IR as
# DisablePrecisionConversion, which the CPU plugin honours when it reads the file.
_KEEP_PRECISION = "precise_0"
_PINNED_IN_IR = "DisablePrecisionConversion_0"  # the same mark, as read back from an IR


def pin_fp32(model) -> None:
    """Make the ``openvino.Model`` run in fp32 under OpenVINO's defaults, once saved as IR.

    OpenVINO's CPU plugin runs fp32 graphs in bf16 by default on CPUs with bf16
    instructions (the vectors then differ from fp32 by up to 0.3, cosine 0.9986). The IR
    gets the fp32 precision hint in ``runtime_options`` (what OpenVINO reads from rt_info
    for the options it takes from a model) and every operation is marked to keep its
    precision (which OpenVINO 2026 honours where it ignores that hint for this option),
    so plain ``openvino.Core().compile_model("model.xml")`` gives the fp32 vectors. An
    explicit bf16 hint is then ignored too: the bf16 engine exports without this.
    """
    model.set_rt_info("f32", ["runtime_options", "INFERENCE_PRECISION_HINT"])
    for op in model.get_ops():
        op.get_rt_info()[_KEEP_PRECISION] = ""


def unpin_fp32(model) -> int:
    """Undo :func:`pin_fp32` on an ``openvino.Model`` (e.g. read from a pinned IR) in
    memory, so that a bf16 hint applies; returns how many operations were unpinned."""
    if model.has_rt_info(["runtime_options", "INFERENCE_PRECISION_HINT"]):
        model.set_rt_info("bf16", ["runtime_options", "INFERENCE_PRECISION_HINT"])
    count = 0
    for op in model.get_ops():
        info = op.get_rt_info()
        for key in (_KEEP_PRECISION, _PINNED_IN_IR):
            if key in info:
                del info[key]
                count += 1
    return count


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


def export(model, path: str | Path, format: Format | None = None, *, nhwc: bool = False,
           image_size: int | tuple[int, int] | None = None, source: str | Path | None = None,
           calibration: Sequence[str | Path] | None = None,
           skipped: list[tuple[Path, str]] | None = None,
           int8_placement: Placement | None = None,
           progress: Progress | None = None, fp32_runtime: bool = True) -> list[Path]:
    """Write ``model`` to ``path`` as ``format`` (default: the suffix's, see
    :func:`export_format`); returns the files written.

    ``onnx``: one ``.onnx`` file (opset 17). ``openvino``: ``path`` with suffix ``.xml``
    and its ``.bin`` (fp32 weights, not compressed to fp16); an fp32 IR runs in fp32 under
    OpenVINO's defaults (:func:`pin_fp32`) unless ``fp32_runtime=False``. ``tflite``: one float32
    ``.tflite`` (NHWC; no int8). ``int8_placement`` defaults to
    :func:`default_int8_placement` of ``format``. See :func:`onnx_model` for the other
    arguments.
    """
    path = Path(path)
    format = export_format(path, format)
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
                       int8_placement=int8_placement or default_int8_placement(format),
                       progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    if format == "onnx":
        onnx.save(proto, str(path))
        written = [path]
    else:
        xml = path.with_suffix(".xml")
        ov_model = openvino_model(proto)
        if fp32_runtime and calibration is None:
            pin_fp32(ov_model)
        _require_openvino().save_model(ov_model, str(xml), compress_to_fp16=False)
        written = [xml, xml.with_suffix(".bin")]
    log.info("exported %s to %s", model.config.name, ", ".join(map(str, written)))
    return written
