"""int8 post-training static quantization of an exported ONNX model (QDQ).

Activations are calibrated by running the fp32 model on real photos
(:func:`calibration_images`: a few hundred images from a folder, decoded by the model's
rule); weights are quantized per output channel (int8, symmetric), activations per tensor
(uint8, asymmetric: the fast u8s8 path of x86 VNNI kernels). Two placements of the
quantize/dequantize pairs (:data:`PLACEMENTS`), one per runtime's int8 kernels:

- ``all-ops`` (ONNX Runtime's): every op's output is quantized, so that ONNX Runtime runs
  ``QLinearConv`` chains in int8 end to end. The default for ``.onnx`` files.
- ``conv-inputs`` (OpenVINO's, as NNCF places them): only convolution inputs and weights
  are quantized; convolution outputs, activations, squeeze-excite and residual adds stay
  float (a residual ``Add`` that reads a convolution's input reads the same rounded
  tensor, which is faster for a negligible cost), and the convolutions over a pooled 1x1
  map (squeeze-excite) stay fp32. OpenVINO runs these as int8 convolutions with float
  outputs, fused with what follows (faster there than the ``all-ops`` file; ONNX Runtime
  runs it slowly, through float convolutions). Float convolution outputs allow two
  corrections that make MobileNetV3 survive int8: per-channel equalization of convolution
  inputs (:mod:`.equalize`) and bias correction (:mod:`.bias_correction`). The default for
  OpenVINO IR.

Some blocks do not survive int8 (in the real V2 weights, with ``all-ops``, the first
inverted-residual block alone takes the vectors well below the target). After
quantizing, the vectors are compared with fp32 on held-out calibration images; until they
reach ``target_cosine`` (:data:`TARGET_COSINE`) with 95 % confidence, the block that costs
the vectors most when it alone runs in int8 is kept in fp32 and the model quantized again,
at most ``max_fp32_blocks`` times. Which blocks stayed fp32 is recorded in the metadata.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from ..data.images import ImageError, load_array
from ..data.sources import spread
from .fused import in_squeeze_excite
from .onnx_runs import session as _session

log = logging.getLogger(__name__)

DEFAULT_CALIBRATION_IMAGES = 300
COSINE_WARNING = 0.99  # below this mean cosine to fp32 the export warns
# Blocks are kept in fp32 until the mean cosine of int8 to fp32 vectors on the held-out
# photos is at least this with 95 % confidence: mean - 2 standard errors (how well 48
# photos measure it: docs/benchmarks.md, "Measurements behind the code").
TARGET_COSINE = 0.99
MAX_FP32_BLOCKS = 3
_CALIBRATION_BATCH = 16
_CHECK_IMAGES = 48  # held out of calibration, spread over it: photos the fit never saw

Placement = Literal["all-ops", "conv-inputs"]
PLACEMENTS: tuple[str, ...] = ("all-ops", "conv-inputs")
# ``progress(stage, done, total)`` through the int8 work, one stage after another: the
# photos decoded, the calibration batches run (again for each quantization pass), the blocks
# measured while looking for the ones to keep in fp32 (a pass that falls short of the target).
Progress = Callable[[str, int, int], None]
STAGES = ("decode", "calibrate", "fp32 blocks")


def calibration_paths(folder: str | Path, limit: int = DEFAULT_CALIBRATION_IMAGES) -> list[Path]:
    """Up to ``limit`` image files under ``folder``, spread evenly over its sorted listing
    (so every class folder contributes). Raises ``FileNotFoundError`` when there are none."""
    from ..data.sources import expand_inputs

    paths = sorted(expand_inputs([str(folder)]).paths)
    if not paths:
        raise FileNotFoundError(f"no images found under {folder} to calibrate int8 with")
    return spread(paths, limit)


def calibration_images(paths: Sequence[str | Path], image_size: tuple[int, int],
                       skipped: list[tuple[Path, str]] | None = None,
                       progress: Progress | None = None) -> Iterator[np.ndarray]:
    """Batches ``(n, 3, H, W)`` float32 in [0, 1] of the images that decode; the others are
    logged and appended to ``skipped`` as (path, reason)."""
    batch: list[np.ndarray] = []
    for done, path in enumerate(paths, 1):
        if progress is not None:
            progress("decode", done, len(paths))
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


def _reader(batches: Sequence[np.ndarray], input_name: str, progress: Progress | None):
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(batches)
            self._done = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self._batches, None)
            if progress is not None:  # the batch handed out before is done
                progress("calibrate", self._done, len(batches))
            if x is None:
                return None
            self._done += 1
            return {input_name: x}

    return _Reader()


def _block(node_name: str) -> str:
    """The TF-Slim block of a node: ``expanded_conv_3/expand/Conv2D`` → ``expanded_conv_3``."""
    return node_name.split("/", 1)[0]


def _block_outputs(model) -> dict[str, str]:
    """Block name → the tensor its last node writes, in graph order. MobileNet blocks are a
    chain: each block reads only the previous block's output (residuals stay inside)."""
    outputs: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") and node.output:
            outputs[_block(node.name)] = node.output[0]
    return outputs


def _extractor(model):
    """Cuts sub-graphs out of ``model``: ``.extract_model([start], [stop])``."""
    import onnx.shape_inference
    import onnx.utils

    return onnx.utils.Extractor(onnx.shape_inference.infer_shapes(model))


def _dequantized_names(model) -> dict[str, str]:
    """Tensor → the output of the DequantizeLinear that follows its QuantizeLinear."""
    quantized = {n.output[0]: n.input[0] for n in model.graph.node
                 if n.op_type == "QuantizeLinear"}
    return {quantized[n.input[0]]: n.output[0] for n in model.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] in quantized}


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1),
                                       1e-30)


def _agreement(fp32, int8, check: np.ndarray) -> tuple[float, float]:
    """Mean cosine between the fp32 and int8 models' vectors on ``check``, and the lower
    end of its 95 % confidence interval (mean - 2 standard errors)."""
    name = fp32.graph.input[0].name
    a, b = (_session(m).run(None, {name: check})[0] for m in (fp32, int8))
    cosines = _cosines(a, b)
    error = cosines.std(ddof=1) / np.sqrt(len(cosines)) if len(cosines) > 1 else 0.0
    return float(cosines.mean()), float(cosines.mean() - 2 * error)


def _block_losses(fp32, int8, check: np.ndarray, kept: Sequence[str],
                  progress: Progress | None = None) -> dict[str, float]:
    """For each quantized block: 1 - mean cosine of the vectors when that block alone runs
    in int8 (fed the fp32 input it would get) and everything after it in fp32. A block's
    error is judged by what it does to the vector, not to its own output: an early block's
    small error can be amplified downstream."""
    blocks = _block_outputs(fp32)
    conv_blocks = {_block(n.name) for n in fp32.graph.node if n.op_type == "Conv"}
    output = fp32.graph.output[0].name
    start = fp32.graph.input[0].name
    reference = _session(fp32).run(None, {start: check})[0]
    cut_fp32, cut_int8 = _extractor(fp32), _extractor(int8)

    def run(cut, first: str, last: str, x: np.ndarray) -> np.ndarray:
        return _session(cut.extract_model([first], [last])).run(None, {first: x})[0]

    # The quantizer drops a ReLU6 after a conv and lets the uint8 range of the tensor's
    # QuantizeLinear/DequantizeLinear pair clip instead: a block's int8 output is what that
    # pair gives, not the raw tensor.
    dequantized = _dequantized_names(int8)
    value, losses = check, {}
    for done, (block, tensor) in enumerate(blocks.items(), 1):
        if progress is not None:
            progress("fp32 blocks", done, len(blocks))
        if block in conv_blocks and block not in kept:
            quantized = run(cut_int8, start, dequantized.get(tensor, tensor), value)
            vectors = quantized if tensor == output else run(cut_fp32, tensor, output,
                                                             quantized)
            losses[block] = 1.0 - float(_cosines(vectors, reference).mean())
        value = run(cut_fp32, start, tensor, value)
        start = tensor
    return losses


def _split(batches: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
    """Calibration batches and the held-out check images: up to :data:`_CHECK_IMAGES`, a
    quarter at most, taken evenly over the images (every folder of a mixed set)."""
    images = np.concatenate(batches)
    held = min(_CHECK_IMAGES, len(images) // 4)
    if held == 0:  # too few to hold any out: check on the calibration images themselves
        return batches, images
    check = np.zeros(len(images), bool)
    check[np.linspace(0, len(images) - 1, held).round().astype(int)] = True
    fit = images[~check]
    return ([fit[i:i + _CALIBRATION_BATCH] for i in range(0, len(fit), _CALIBRATION_BATCH)],
            images[check])


def quantize_int8(model, paths: Sequence[str | Path],
                  skipped: list[tuple[Path, str]] | None = None, *,
                  placement: Placement = "all-ops", target_cosine: float = TARGET_COSINE,
                  max_fp32_blocks: int = MAX_FP32_BLOCKS, progress: Progress | None = None):
    """The int8 (QDQ) ``onnx.ModelProto`` of an fp32 mobilevec ONNX model, calibrated on ``paths``.

    ``model`` must be one written by :func:`mobilevec.export.onnx_graph.to_onnx` (its
    metadata gives the input size and layout; it is copied to the result with
    ``precision`` int8, ``int8_placement``, ``int8_cosine_mean`` (the mean cosine between
    int8 and fp32 vectors on held-out calibration images) and ``int8_fp32_blocks`` (blocks
    kept in fp32 to reach ``target_cosine``, see the module doc). ``placement``: one of
    :data:`PLACEMENTS`. Below :data:`COSINE_WARNING` a warning is logged. ``progress``:
    see :data:`Progress`. Raises ``ValueError`` when no calibration image decodes.
    """
    import onnx

    from .metadata import PREFIX, parse_metadata

    if placement not in PLACEMENTS:
        raise ValueError(f"unknown int8 placement {placement!r}; use one of {PLACEMENTS}")
    props = {p.key: p.value for p in model.metadata_props}
    meta = parse_metadata(props)
    h, w = (int(v) for v in meta["image_size"].split(","))
    nhwc = meta.get("layout") == "NHWC"
    batches = list(calibration_images(paths, (h, w), skipped, progress))
    if not batches:
        raise ValueError("none of the calibration images could be decoded")
    decoded = sum(len(b) for b in batches)
    batches, check = _split(batches)
    if nhwc:
        batches = [b.transpose(0, 2, 3, 1).copy() for b in batches]
        check = check.transpose(0, 2, 3, 1).copy()
    # The graph that gets quantized: the same function as ``model``, rewritten so that
    # int8 hurts less where the placement allows it.
    source = model
    if placement == "conv-inputs":
        from .equalize import equalize_conv_inputs

        source = equalize_conv_inputs(model, batches)
    kept: list[str] = []
    with tempfile.TemporaryDirectory(prefix="mobilevec-int8-") as tmp:
        src = Path(tmp) / "fp32.onnx"
        onnx.save(source, src)
        while True:
            quantized = _quantize(src, Path(tmp) / "int8.onnx", batches, source, kept,
                                  placement, progress)
            if placement == "conv-inputs":
                from .bias_correction import correct_biases

                quantized = correct_biases(quantized, source, batches)
            cosine, lower = _agreement(model, quantized, check)
            log.info("int8 (fp32 blocks: %s): cosine to fp32 on %d held-out images: mean %.4f "
                     "(95 %% lower bound %.4f)", ", ".join(kept) or "none", len(check), cosine,
                     lower)
            if lower >= target_cosine or len(kept) >= max_fp32_blocks:
                break
            losses = _block_losses(source, quantized, check, kept, progress)
            if not losses:
                break
            kept.append(max(losses, key=losses.get))
            log.info("int8: keeping %s in fp32 (alone it costs %.4f of cosine)", kept[-1],
                     losses[kept[-1]])
    if cosine < COSINE_WARNING:
        log.warning("int8 vectors differ from fp32 (mean cosine %.4f < %.2f on held-out "
                    "calibration images): check the accuracy you need before using this "
                    "model", cosine, COSINE_WARNING)
    props[f"{PREFIX}precision"] = "int8"
    props[f"{PREFIX}calibration_images"] = str(decoded)
    props[f"{PREFIX}int8_placement"] = placement
    props[f"{PREFIX}int8_cosine_mean"] = f"{cosine:.4f}"
    props[f"{PREFIX}int8_fp32_blocks"] = ",".join(kept)
    del quantized.metadata_props[:]
    onnx.helper.set_model_props(quantized, props)
    return quantized


def _quantize(src: Path, dst: Path, batches: Sequence[np.ndarray], model,
              kept: Sequence[str], placement: Placement, progress: Progress | None = None):
    """One static-quantization pass of ``src`` with the nodes of ``kept`` blocks in fp32."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    excluded = [n.name for n in model.graph.node if _block(n.name) in kept]
    options = {"WeightSymmetric": True, "ActivationSymmetric": False}
    op_types = None  # every op ONNX Runtime can quantize
    if placement == "conv-inputs":
        op_types = ["Conv"]
        options["OpTypesToExcludeOutputQuantization"] = ["Conv"]
        excluded += [n.name for n in model.graph.node if in_squeeze_excite(n.name)]
    with _quiet_root_logger():
        quantize_static(
            str(src), str(dst), _reader(batches, model.graph.input[0].name, progress),
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=excluded,
            op_types_to_quantize=op_types, extra_options=options)
    return onnx.load(str(dst))


@contextlib.contextmanager
def _quiet_root_logger():
    """ONNX Runtime's quantizer logs advice ("consider pre-processing") on the root logger
    at WARNING on every call; mobilevec's graphs need none of it (shapes are static)."""
    def advice(record: logging.LogRecord) -> bool:
        return "pre-process" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)
