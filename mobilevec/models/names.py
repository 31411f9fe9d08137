"""One-to-one mapping between the module's state dict and TF-Slim variable names.

The mapping is derived from the architecture table, so it cannot drift from the model:
``layers.expanded_conv_3.depthwise.conv.weight`` ↔
``MobilenetV3/expanded_conv_3/depthwise/depthwise_weights``. Arrays on the TF side are in
TF layout (HWIO kernels, ``[k, k, C, 1]`` depthwise kernels).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from ..errors import WeightsError
from .specs import ResolvedBlock, ResolvedConv

log = logging.getLogger(__name__)

Layout = Literal["conv", "depthwise", "classifier", "vector"]

_BN_FIELDS = (("weight", "gamma"), ("bias", "beta"),
              ("running_mean", "moving_mean"), ("running_var", "moving_variance"))
LOGITS_SCOPE = "Logits/Conv2d_1c_1x1"


@dataclass(frozen=True)
class VariableName:
    torch_key: str
    tf_name: str
    layout: Layout


@dataclass(frozen=True)
class Variable:
    """A variable of a model: its names, layout and PyTorch shape."""

    name: VariableName
    torch_shape: tuple[int, ...]

    @property
    def tf_shape(self) -> tuple[int, ...]:
        return tf_shape(self.torch_shape, self.name.layout)


def _conv_bn(module: str, scope: str, in_channels: int, out_channels: int, kernel: int,
             has_bn: bool, depthwise: bool = False) -> list[Variable]:
    kernel_name, layout = ("depthwise_weights", "depthwise") if depthwise else ("weights", "conv")
    shape = (out_channels, 1 if depthwise else in_channels, kernel, kernel)
    variables = [Variable(VariableName(f"{module}.conv.weight", f"{scope}/{kernel_name}",
                                       layout), shape)]
    if has_bn:
        variables += [Variable(VariableName(f"{module}.bn.{t}", f"{scope}/BatchNorm/{f}",
                                            "vector"), (out_channels,))
                      for t, f in _BN_FIELDS]
    else:
        variables.append(Variable(VariableName(f"{module}.conv.bias", f"{scope}/biases",
                                               "vector"), (out_channels,)))
    return variables


def _squeeze_excite(module: str, scope: str, channels: int, squeeze: int) -> list[Variable]:
    variables = []
    for part, tf_part, (out, inp) in (("reduce", "Conv", (squeeze, channels)),
                                      ("expand", "Conv_1", (channels, squeeze))):
        m, s = f"{module}.squeeze_excite.{part}", f"{scope}/squeeze_excite/{tf_part}"
        variables += [Variable(VariableName(f"{m}.weight", f"{s}/weights", "conv"),
                               (out, inp, 1, 1)),
                      Variable(VariableName(f"{m}.bias", f"{s}/biases", "vector"), (out,))]
    return variables


def model_variables(config, num_classes: int | None = None) -> list[Variable]:
    """Every state-dict tensor of the module of ``config`` (a
    :class:`~mobilevec.models.registry.ModelConfig`), with a ``num_classes``-way classifier
    when given: TF-Slim name, layout and shape, in network order, from the architecture
    table alone (no module is built). BN's ``num_batches_tracked`` has no TF twin."""
    root = config.spec.root_scope
    variables: list[Variable] = []
    for layer in config.resolved_layers():
        scope, module = f"{root}/{layer.spec.scope}", f"layers.{layer.spec.scope}"
        if isinstance(layer, ResolvedConv):
            variables += _conv_bn(module, scope, layer.in_channels, layer.out_channels,
                                  layer.spec.kernel, layer.spec.batch_norm)
        elif isinstance(layer, ResolvedBlock):
            if layer.has_expand:
                variables += _conv_bn(f"{module}.expand", f"{scope}/expand",
                                      layer.in_channels, layer.expanded_channels, 1, True)
            variables += _conv_bn(f"{module}.depthwise", f"{scope}/depthwise",
                                  layer.expanded_channels, layer.expanded_channels,
                                  layer.spec.kernel, True, depthwise=True)
            if layer.squeeze_channels:
                variables += _squeeze_excite(module, scope, layer.expanded_channels,
                                             layer.squeeze_channels)
            variables += _conv_bn(f"{module}.project", f"{scope}/project",
                                  layer.expanded_channels, layer.out_channels, 1, True)
    if num_classes:
        features = config.num_features
        variables += [
            Variable(VariableName("classifier.weight", f"{root}/{LOGITS_SCOPE}/weights",
                                  "classifier"), (num_classes, features)),
            Variable(VariableName("classifier.bias", f"{root}/{LOGITS_SCOPE}/biases",
                                  "vector"), (num_classes,))]
    return variables


def variable_names(model) -> list[VariableName]:
    """Every state-dict tensor of ``model`` (a :class:`~mobilevec.models.mobilenet.MobileNet`)
    with its TF-Slim name and layout, in network order. BN's ``num_batches_tracked`` has no
    TF twin."""
    classes = model.classifier.out_features if model.classifier is not None else None
    return [v.name for v in model_variables(model.config, classes)]


def tf_shape(torch_shape: tuple[int, ...], layout: Layout) -> tuple[int, ...]:
    """The TF-layout shape of a tensor of PyTorch shape ``torch_shape`` (see
    :func:`torch_to_tf`)."""
    if layout == "conv":  # OIHW → HWIO
        o, i, h, w = torch_shape
        return h, w, i, o
    if layout == "depthwise":  # [C, 1, k, k] → [k, k, C, 1]
        c, one, h, w = torch_shape
        return h, w, c, one
    if layout == "classifier":  # [K, D] → [1, 1, D, K]
        k, d = torch_shape
        return 1, 1, d, k
    return tuple(torch_shape)


def tf_to_torch(array: np.ndarray, layout: Layout) -> np.ndarray:
    """TF layout → PyTorch layout."""
    if layout == "conv":  # HWIO → OIHW
        return array.transpose(3, 2, 0, 1)
    if layout == "depthwise":  # [k, k, C, 1] → [C, 1, k, k]
        return array.transpose(2, 3, 0, 1)
    if layout == "classifier":  # [1, 1, D, K] → [K, D]
        return array.reshape(array.shape[-2], array.shape[-1]).T
    return array


def torch_to_tf(array: np.ndarray, layout: Layout) -> np.ndarray:
    """PyTorch layout → TF layout (inverse of :func:`tf_to_torch`)."""
    if layout == "conv":  # OIHW → HWIO
        return array.transpose(2, 3, 1, 0)
    if layout == "depthwise":  # [C, 1, k, k] → [k, k, C, 1]
        return array.transpose(2, 3, 0, 1)
    if layout == "classifier":  # [K, D] → [1, 1, D, K]
        return array.T.reshape(1, 1, array.shape[1], array.shape[0])
    return array


def to_tf_variables(model) -> dict[str, np.ndarray]:
    """The model's weights as TF-Slim variables (float32, TF layout)."""
    state = model.state_dict()
    return {v.tf_name: np.ascontiguousarray(
                torch_to_tf(state[v.torch_key].detach().cpu().numpy(), v.layout))
            for v in variable_names(model)}


@dataclass
class LoadReport:
    """What a load consumed, and what the artifact held beyond the model."""

    source: str
    loaded: int = 0
    unused: list[str] = field(default_factory=list)


# Variables an artifact may hold that are not part of the inference network.
_IGNORABLE_SUFFIXES = ("global_step",)


def logits_classes(variables: dict[str, np.ndarray], root: str) -> int | None:
    """Number of classes of a complete ``Logits/Conv2d_1c_1x1`` head, if the artifact has one."""
    w = variables.get(f"{root}/{LOGITS_SCOPE}/weights")
    b = variables.get(f"{root}/{LOGITS_SCOPE}/biases")
    if w is None or b is None:
        return None
    return int(w.shape[-1])


def _check(v: VariableName, array: np.ndarray | None, expected: tuple[int, ...]) -> str | None:
    """Why ``array`` cannot fill ``v`` (None when it can)."""
    if array is None:
        return "missing"
    if not np.issubdtype(array.dtype, np.floating):
        return f"dtype {array.dtype} is not floating point"
    wanted = tf_shape(expected, v.layout)
    if tuple(array.shape) != wanted:
        return f"shape {tuple(array.shape)} does not fit the model (expects {wanted})"
    if not np.all(np.isfinite(array)):
        return "holds NaN or infinite values"
    return None


def load_tf_variables(model, variables: dict[str, np.ndarray],
                      source: str | Path | None = None) -> LoadReport:
    """Copy TF-Slim variables into ``model``; all-or-nothing.

    Every expected variable must be present with the expected shape, else
    :class:`WeightsError` names the file and the variable and the model is untouched.
    Variables the model does not use are logged and listed in the report.
    """
    src = str(source) if source is not None else "<weights>"
    state = model.state_dict()
    names = variable_names(model)
    problems = []
    for v in names:
        array = variables.get(v.tf_name)
        why = _check(v, None if array is None else np.asarray(array),
                     tuple(state[v.torch_key].shape))
        if why:
            problems.append(f"{v.tf_name}: {why}")
    if problems:
        variable, why = problems[0].split(": ", 1)
        more = f" (and {len(problems) - 1} more: {'; '.join(problems[1:5])}" \
               f"{'…' if len(problems) > 5 else ''})" if len(problems) > 1 else ""
        raise WeightsError(src, f"{why}{more}; is this artifact a {model.config.name}?",
                           variable=variable)
    import torch

    with torch.no_grad():
        for v in names:
            array = np.asarray(variables[v.tf_name], dtype=np.float32)
            state[v.torch_key].copy_(torch.from_numpy(
                np.ascontiguousarray(tf_to_torch(array, v.layout))))
    used = {v.tf_name for v in names}
    unused = sorted(k for k in variables if k not in used and not k.endswith(_IGNORABLE_SUFFIXES))
    if unused:
        log.info("%s: %d variables not used by %s: %s", src, len(unused), model.config.name,
                 ", ".join(unused[:8]) + ("…" if len(unused) > 8 else ""))
    return LoadReport(src, len(names), unused)

