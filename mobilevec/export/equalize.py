"""Per-channel equalization of convolution inputs, before int8 quantization.

int8 activations have one scale per tensor, so a channel whose values span 0.7 shares the
step of one that spans 30. MobileNetV3 has many such tensors: after ReLU and hard-swish,
which have no upper bound (unlike V2's ReLU6), channel ranges differ up to 100-fold, and
the narrow channels are often the ones the next (BN-folded) depthwise convolution
amplifies most. In the real V3 Small 0.75 weights, 8-bit per-tensor rounding of the stem's
output alone takes the vectors' cosine to 0.80; per-channel rounding of the same tensor
costs 0.001 (docs/benchmarks.md).

A convolution is linear in each input channel, so rescaling is exact: feed it
``h_c / s_c`` and multiply the weights that read channel ``c`` by ``s_c``; zero padding
stays zero. With ``r_c = max|h_c| / max_c max|h_c|``:

- a **depthwise** convolution reads each channel with its own kernel (quantized per
  channel too), so ``s_c = r_c``: every channel spans the same range, and the per-tensor
  int8 step becomes a per-channel one;
- a **regular** convolution mixes channels, and its weights are quantized per *output*
  channel, so scaling one input channel up widens every output channel's weight range:
  ``s_c = r_c ** regular_alpha`` splits the imbalance between the two (0.5, as
  SmoothQuant does; see docs/benchmarks.md, "Measurements behind the code").

The ``1 / s_c`` goes into the producing convolution's weights and bias when a ReLU sits
between them (``relu(y / s) = relu(y) / s`` for ``s > 0``: free), and into one ``Mul``
node otherwise (after a hard-swish, which does not commute with scaling, or the
squeeze-excite product): an elementwise op that OpenVINO folds into the quantization that
follows. Squeeze-excite convolutions (on a pooled 1x1 map) stay fp32 and are left alone.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from .fused import in_squeeze_excite
from .onnx_runs import channel_abs_max, reduce_tensors

log = logging.getLogger(__name__)

# A channel is never scaled below this fraction of the widest: a dead (all-zero) channel
# would otherwise get a scale of 0.
MIN_SCALE = 1e-3
_EQUALIZED = ("Relu", "HardSwish")  # unbounded activations; ReLU6 (Clip) ranges are alike
REGULAR_ALPHA = 0.5


def _group(node) -> int:
    return next((a.i for a in node.attribute if a.name == "group"), 1)


def equalize_conv_inputs(model, batches: Sequence[np.ndarray],
                         regular_alpha: float | None = REGULAR_ALPHA):
    """A copy of the fp32 ONNX ``model`` whose convolution inputs that come from a ReLU, a
    hard-swish or a squeeze-excite product are equalized per channel on ``batches`` (the
    module doc; ``regular_alpha=None`` leaves regular convolutions alone). Its outputs
    equal ``model``'s up to float rounding."""
    import onnx
    from onnx import helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {n.output[0]: n for n in graph.node}
    consumers: dict[str, list] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)

    def get(name: str) -> np.ndarray:
        return numpy_helper.to_array(inits[name]).astype(np.float32)

    def put(name: str, array: np.ndarray) -> None:
        inits[name].CopyFrom(numpy_helper.from_array(array.astype(np.float32), name))

    def wanted(n) -> bool:
        if n.op_type != "Conv" or n.input[0] not in producer or in_squeeze_excite(n.name):
            return False
        kind = producer[n.input[0]].op_type
        if _group(n) > 1:
            return kind in _EQUALIZED
        return regular_alpha is not None and (kind in _EQUALIZED or kind == "Mul")

    targets = sorted({n.input[0] for n in graph.node if wanted(n)})
    if not targets:
        return out
    ranges = reduce_tensors(model, targets, batches, channel_abs_max, np.maximum)
    inserted = 0
    for tensor, amax in zip(targets, ranges, strict=True):
        widest = float(amax.max())
        if widest <= 0:
            continue
        scale = np.maximum(amax, MIN_SCALE * widest) / widest
        users = consumers[tensor]
        convs = [u for u in users if u.op_type == "Conv" and wanted(u)]
        if any(_group(u) == 1 for u in convs):
            scale = scale ** regular_alpha
        for conv in convs:
            if _group(conv) > 1:
                put(conv.input[1], get(conv.input[1]) * scale[:, None, None, None])
            else:
                put(conv.input[1], get(conv.input[1]) * scale[None, :, None, None])
        act = producer[tensor]
        source = producer.get(act.input[0])
        foldable = (act.op_type == "Relu" and source is not None and source.op_type == "Conv"
                    and len(users) == len(convs) and len(consumers[source.output[0]]) == 1
                    and len(source.input) == 3)
        if foldable:
            put(source.input[1], get(source.input[1]) / scale[:, None, None, None])
            put(source.input[2], get(source.input[2]) / scale)
            continue
        name = f"{tensor}/equalized"
        graph.initializer.append(numpy_helper.from_array(
            (1.0 / scale).reshape(1, -1, 1, 1).astype(np.float32), f"{name}/scale"))
        mul = helper.make_node("Mul", [tensor, f"{name}/scale"], [name], name=name)
        graph.node.insert(list(graph.node).index(act) + 1, mul)
        for conv in convs:
            conv.input[0] = name
        inserted += 1
    log.info("int8: equalized %d convolution inputs (%d by a Mul node)", len(targets), inserted)
    return out
