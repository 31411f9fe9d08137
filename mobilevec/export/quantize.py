"""int8 post-training static quantization of an exported ONNX model (ONNX Runtime, QDQ).

Activations are calibrated by running the fp32 model on real photos
(:func:`calibration_images`: a few hundred images from a folder, decoded by the model's
rule); weights are quantized per output channel (int8, symmetric), activations per tensor
(uint8, asymmetric: the fast u8s8 path of x86 VNNI kernels). The result is a QDQ ONNX
model that ONNX Runtime and OpenVINO both run in int8.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..images import ImageError, load_array

log = logging.getLogger(__name__)

DEFAULT_CALIBRATION_IMAGES = 300
COSINE_WARNING = 0.99  # below this mean cosine to fp32 the export warns
_CALIBRATION_BATCH = 16
_CHECK_IMAGES = 32


def calibration_paths(folder: str | Path, limit: int = DEFAULT_CALIBRATION_IMAGES) -> list[Path]:
    """Up to ``limit`` image files under ``folder``, spread evenly over its sorted listing
    (so every class folder contributes). Raises ``FileNotFoundError`` when there are none."""
    from ..sources import expand_inputs

    paths = sorted(expand_inputs([str(folder)]).paths)
    if not paths:
        raise FileNotFoundError(f"no images found under {folder} to calibrate int8 with")
    if len(paths) > limit:
        step = len(paths) / limit
        paths = [paths[int(i * step)] for i in range(limit)]
    return paths


def calibration_images(paths: Sequence[str | Path], image_size: tuple[int, int],
                       skipped: list[tuple[Path, str]] | None = None) -> Iterator[np.ndarray]:
    """Batches ``(n, 3, H, W)`` float32 in [0, 1] of the images that decode; the others are
    logged and appended to ``skipped`` as (path, reason)."""
    batch: list[np.ndarray] = []
    for path in paths:
        try:
            batch.append(load_array(path, image_size))
        except ImageError as e:
            log.warning("calibration: skipping %s", e)
            if skipped is not None:
                skipped.append((Path(path), e.cause))
            continue
        if len(batch) == _CALIBRATION_BATCH:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


def _reader(batches: Iterator[np.ndarray], input_name: str, nhwc: bool):
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(batches, None)
            if x is None:
                return None
            return {input_name: x.transpose(0, 2, 3, 1).copy() if nhwc else x}

    return _Reader()


def _agreement(fp32, int8, paths: Sequence[str | Path], size: tuple[int, int],
               nhwc: bool) -> float:
    """Mean cosine between the fp32 and int8 models' vectors on ``paths`` (nan if none)."""
    import onnxruntime as ort

    sessions = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
                for m in (fp32, int8)]
    name = fp32.graph.input[0].name
    cosines = []
    for x in calibration_images(paths, size):
        x = x.transpose(0, 2, 3, 1).copy() if nhwc else x
        a, b = (s.run(None, {name: x})[0] for s in sessions)
        cosines.append((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1))
    return float(np.concatenate(cosines).mean()) if cosines else float("nan")


def quantize_int8(model, paths: Sequence[str | Path],
                  skipped: list[tuple[Path, str]] | None = None):
    """The int8 (QDQ) ``onnx.ModelProto`` of an fp32 mobilevec ONNX model, calibrated on ``paths``.

    ``model`` must be one written by :func:`mobilevec.export.onnx_graph.to_onnx` (its
    metadata gives the input size and layout; it is copied to the result with
    ``precision`` set to int8 and ``int8_cosine_mean``, the mean cosine between int8 and
    fp32 vectors on the first calibration images; below :data:`COSINE_WARNING` a warning
    is logged: per-tensor int8 does not suit every set of weights). Raises ``ValueError``
    when no calibration image decodes.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from .metadata import PREFIX, parse_metadata

    props = {p.key: p.value for p in model.metadata_props}
    meta = parse_metadata(props)
    h, w = (int(v) for v in meta["image_size"].split(","))
    nhwc = meta.get("layout") == "NHWC"
    decoded = 0

    def counted() -> Iterator[np.ndarray]:
        nonlocal decoded
        for batch in calibration_images(paths, (h, w), skipped):
            decoded += len(batch)
            yield batch

    with tempfile.TemporaryDirectory(prefix="mobilevec-int8-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, src)
        try:
            quantize_static(
                str(src), str(dst), _reader(counted(), model.graph.input[0].name, nhwc),
                quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
        except Exception as e:  # ORT's own error when the reader gave nothing
            if decoded == 0:
                raise ValueError("none of the calibration images could be decoded") from e
            raise
        quantized = onnx.load(str(dst))
    cosine = _agreement(model, quantized, paths[:_CHECK_IMAGES], (h, w), nhwc)
    log.info("int8: calibrated on %d images; cosine to fp32 on %d of them: mean %.4f",
             decoded, min(len(paths), _CHECK_IMAGES), cosine)
    if cosine < COSINE_WARNING:
        log.warning("int8 vectors differ from fp32 (mean cosine %.4f < %.2f on calibration "
                    "images): check the accuracy you need before using this model",
                    cosine, COSINE_WARNING)
    props[f"{PREFIX}precision"] = "int8"
    props[f"{PREFIX}calibration_images"] = str(decoded)
    props[f"{PREFIX}int8_cosine_mean"] = f"{cosine:.4f}"
    del quantized.metadata_props[:]
    onnx.helper.set_model_props(quantized, props)
    return quantized
