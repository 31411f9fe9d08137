"""An 8-bit first convolution for OpenVINO's bf16 mode.

The first convolution of a mobilevec graph sees 3 channels at full resolution. In bf16
the CPU plugin runs it at a small fraction of the core's peak (the 3-channel reduction
fills few lanes) and, before it, passes the whole input once more to add the centring
offset (``x - 0.5``, see :mod:`mobilevec.export.fused`). :func:`quantize_stem` turns
that ``Add`` into a ``FakeQuantize`` of the input and quantizes the convolution's
weights per output channel, so that the plugin runs an int8 convolution instead, which
is faster (docs/benchmarks.md, "Measurements behind the code").

Why it stays exact where TF-Slim is particular, and what it costs in accuracy:

- The input grid has 255 levels over [0, 1] (step 1/254), so the offset -0.5 is level
  127, an integer zero point. The plugin's int8 convolution pads with the zero point,
  i.e. with the centred value 0, which is what TF 'SAME' pads the scaled image with.
- Rounding [0, 1] to 1/254 moves an input by at most 1/508; bf16 itself keeps 8
  significant bits, so it rounds inputs in [0.5, 1] by up to 1/512. The convolution then
  accumulates in int32. What that costs the vectors, alone and in bf16 mode, is in
  docs/benchmarks.md ("Measurements behind the code").
- Inputs outside [0, 1] are clamped (the engine contract is [0, 1]).
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

INPUT_LEVELS = 255  # odd, so that the centre 0.5 of [0, 1] is a level (127 of 0..254)
WEIGHT_LEVELS = 255  # symmetric int8 (-127..127) per output channel


def _constant_data(output) -> np.ndarray | None:
    """The values of a constant input (a ``Constant``, or one behind a ``Convert``)."""
    node = output.get_node()
    if node.get_type_name() == "Convert":
        node = node.input_value(0).get_node()
    if node.get_type_name() != "Constant":
        return None
    return np.asarray(node.get_data(), np.float32)


def round_keeping_sums(weights: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``weights / scale`` rounded to integers so that each kernel slice (one output and one
    input channel) keeps its sum rounded, not only each tap.

    Photos are smooth: most of a 3x3 window's energy is its mean, which a convolution
    weighs by the slice's sum. Plain rounding lets the taps' errors add up in that sum;
    here the taps whose rounding erred most are moved to the other neighbour until the
    sum is the rounded sum. Each tap stays within one step of its value.
    """
    exact = weights / scale
    flat = exact.reshape(exact.shape[0] * exact.shape[1], -1)
    rounded = np.round(flat)
    for row, target, values in zip(rounded, np.round(flat.sum(axis=1)), flat, strict=True):
        excess = int(round(row.sum() - target))
        if excess:
            # taps rounded up (down) the most are the cheapest to round down (up)
            error = row - values
            order = np.argsort(-error if excess > 0 else error)[:abs(excess)]
            row[order] -= np.sign(excess)
    return rounded.reshape(exact.shape)


def _only_consumer(output):
    targets = list(output.get_target_inputs())
    return targets[0].get_node() if len(targets) == 1 else None


def quantize_stem(model) -> bool:
    """Rewrite ``Parameter → Add(offset) → Convolution`` into an int8 first convolution.

    ``model`` (an ``openvino.Model``, changed in place) must have one image input. Returns
    False, leaving the model as it was, where the graph does not start that way (an int8
    export already quantizes its input; a graph without a centring offset has nothing to
    gain) or where the offset is not on the 255-level grid.
    """
    import openvino.opset13 as ops

    if len(model.inputs) != 1:
        return False
    add = _only_consumer(model.inputs[0].get_node().output(0))
    if add is None or add.get_type_name() != "Add":
        return False
    offset = _constant_data(add.input_value(1))
    if offset is None or offset.size != 1:
        return False
    offset = float(offset.reshape(()))
    zero_point = -offset * (INPUT_LEVELS - 1)
    if not 0 < zero_point < INPUT_LEVELS - 1 or abs(zero_point - round(zero_point)) > 1e-6:
        return False
    conv = _only_consumer(add.output(0))
    if conv is None or conv.get_type_name() != "Convolution":
        return False
    weights = _constant_data(conv.input_value(1))
    if weights is None:
        return False

    def const(values) -> object:
        return ops.constant(np.asarray(values, np.float32))

    image = add.input_value(0)
    centred = ops.fake_quantize(image, const(0.0), const(1.0), const(offset),
                                const(1.0 + offset), INPUT_LEVELS,
                                name=f"{add.get_friendly_name()}/int8")
    # per output channel, max-abs scale; taps pre-rounded onto the grid keeping each
    # slice's sum, so that the FakeQuantize below leaves them as they are
    reach = np.abs(weights).reshape(len(weights), -1).max(axis=1)
    reach = np.maximum(reach, np.finfo(np.float32).tiny).reshape(-1, 1, 1, 1)
    step = reach / (WEIGHT_LEVELS // 2)
    levels = np.clip(round_keeping_sums(weights, step), -(WEIGHT_LEVELS // 2),
                     WEIGHT_LEVELS // 2)
    kernel = ops.fake_quantize(const(levels * step), const(-reach), const(reach),
                               const(-reach), const(reach), WEIGHT_LEVELS,
                               name=f"{conv.get_friendly_name()}/weights_int8")
    conv.input(0).replace_source_output(centred.output(0))
    conv.input(1).replace_source_output(kernel.output(0))
    log.debug("first convolution %s runs int8 (input zero point %d)",
              conv.get_friendly_name(), round(zero_point))
    return True
