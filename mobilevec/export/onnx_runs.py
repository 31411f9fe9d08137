"""Running an ONNX model on the CPU to look inside it: sessions and intermediate tensors.

The int8 steps (:mod:`.quantize`, :mod:`.equalize`, :mod:`.bias_correction`) all measure
tensors in the middle of a graph on calibration photos; this is the one place that knows
how.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np


def session(model):
    """An ONNX Runtime CPU session of ``model`` (an ``onnx.ModelProto``), denormals flushed
    (as the engines run it)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.set_denormal_as_zero", "1")
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def with_outputs(model, names: Sequence[str]):
    """A copy of ``model`` whose outputs are the tensors ``names`` (in that order)."""
    import onnx
    from onnx import helper

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.output[:]
    copy.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names)
    return copy


def reduce_tensors(model, names: Sequence[str], batches: Iterable[np.ndarray],
                   reduce: Callable[[np.ndarray], np.ndarray],
                   combine: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> list[np.ndarray]:
    """For each tensor of ``names``: ``reduce`` of it on each batch, folded over the batches
    with ``combine`` (e.g. per-channel max-abs, or sums for means). Nothing but the reduced
    values is kept, so any number of photos fits in memory."""
    run = session(with_outputs(model, names))
    input_name = model.graph.input[0].name
    totals: list[np.ndarray] | None = None
    for x in batches:
        values = [reduce(v) for v in run.run(None, {input_name: x})]
        totals = values if totals is None else [combine(t, v) for t, v in
                                                zip(totals, values, strict=True)]
    if totals is None:
        raise ValueError("no batches to measure tensors on")
    return totals


def channel_abs_max(x: np.ndarray) -> np.ndarray:
    """Per-channel max |x| of an NCHW tensor."""
    return np.abs(x).max(axis=(0, 2, 3))


def image_channel_mean_sum(x: np.ndarray) -> np.ndarray:
    """Per-channel sum over the batch of each image's spatial mean (NCHW), in float64:
    summed over batches and divided by the number of images, the per-channel mean."""
    return x.mean(axis=(2, 3), dtype=np.float64).sum(axis=0)
