"""The input contract of every runner, written once: what the torch module
(:class:`~mobilevec.models.mobilenet.MobileNet`), every engine
(:class:`~mobilevec.engines.base.Engine`) and :class:`~mobilevec.embedding.embedder.Embedder`
take as images, and the one error that says what was expected instead.

Images are a batch ``(N, 3, H, W)``: RGB, channels first (NCHW), floating point, values in
[0, 1] — a decoded 8-bit image divided by 255, which is what
:func:`mobilevec.data.images.load_image` returns (the TF Hub modules' contract; the model
scales to [-1, 1] inside). A numpy array or a torch tensor; float64 and float16 are
converted to float32 (numpy in, numpy out).

Refused with :class:`~mobilevec.errors.InputError` (a ValueError), because each of them
otherwise runs and gives vectors that mean nothing (cosine about 0.04 to the right ones
for pixels in [0, 255]):

- integer arrays, uint8 included (``np.asarray(PIL.Image.open(p))``): pixels are 0–255,
  so divide by 255 (or use ``load_image``), rather than guessing the scale;
- values below 0 or above 1 by more than :data:`RANGE_TOLERANCE`: pixels in [0, 255],
  inputs already scaled to [-1, 1], mean/std-normalised ImageNet inputs;
- NaN or infinite values;
- NHWC batches ``(N, H, W, 3)`` and single images without the batch dimension.

The Keras layer (:class:`mobilevec.keras.KerasLayer`) takes the hub's NHWC layout instead
and applies the same dtype and value rules through :func:`check_dtype` and
:func:`check_range`.

The value check reads the whole batch once (min and max: about 1 % of one image's
inference), so a wrong scale is caught on the first call.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from ..errors import InputError

# How far outside [0, 1] a value may lie (resizers such as bicubic overshoot slightly).
RANGE_TOLERANCE = 0.01


def _torch_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")  # a tensor exists only where torch was imported
    return torch is not None and isinstance(x, torch.Tensor)


def contract(size: tuple[int, int] | None = None) -> str:
    """The contract in words, e.g. "float NCHW (N, 3, 224, 224) RGB in [0, 1]"."""
    h, w = size if size else ("H", "W")
    return f"float NCHW (N, 3, {h}, {w}) RGB in [0, 1]"


def check_images(x: Any, *, who: str, size: tuple[int, int] | None = None) -> None:
    """Raise :class:`InputError` unless ``x`` (numpy array or torch tensor) is a batch of
    images as the contract above says; ``size`` (H, W): the only input size ``who`` takes.

    ``who`` names the runner in the message (e.g. "openvino engine for mobilenet_v2_100_224").
    Raises TypeError for anything that is neither an array nor a tensor.
    """
    wanted = f"{who} takes {contract(size)}"
    tensor = _torch_tensor(x)
    if not tensor and not isinstance(x, np.ndarray):
        raise TypeError(f"{who} takes a numpy array or a torch tensor ({contract(size)}), got "
                        f"{type(x).__name__}")
    shape = tuple(int(d) for d in x.shape)
    _check_shape(shape, wanted, size)
    floating = x.dtype.is_floating_point if tensor else x.dtype.kind == "f"
    check_dtype(str(x.dtype).replace("torch.", ""), floating, wanted)
    if shape[0] == 0:
        return
    if tensor:
        import torch

        with torch.no_grad():
            lo_t, hi_t = torch.aminmax(x.detach())
        lo, hi = float(lo_t), float(hi_t)
    else:
        lo, hi = float(np.min(x)), float(np.max(x))
    check_range(lo, hi, wanted)


def check_dtype(dtype: str, floating: bool, wanted: str) -> None:
    """Refuse a non-float dtype; ``wanted`` opens the message ("<runner> takes ...")."""
    if not floating:
        hint = (" (8-bit pixels: pass x / 255 as float32, or decode files with "
                "mobilevec.data.images.load_image)" if dtype == "uint8" else "")
        raise InputError(f"{wanted}; got dtype {dtype}{hint}")


def check_range(lo: float, hi: float, wanted: str) -> None:
    """Refuse a batch whose smallest and largest values are not finite and in [0, 1]."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise InputError(f"{wanted}; the input holds NaN or infinite values")
    if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        raise InputError(f"{wanted}; got values in [{lo:.4g}, {hi:.4g}]{_range_hint(lo, hi)}")


def _check_shape(shape: tuple[int, ...], wanted: str, size: tuple[int, int] | None) -> None:
    got = f"{wanted}; got shape {shape}"
    if len(shape) == 3 and 3 in (shape[0], shape[-1]):
        raise InputError(f"{got}, one image without the batch dimension: pass x[None]")
    if len(shape) != 4:
        raise InputError(got)
    if shape[1] != 3 and shape[3] == 3:
        raise InputError(f"{got}, which is NHWC: transpose it (x.transpose(0, 3, 1, 2) for "
                         "numpy, x.permute(0, 3, 1, 2) for torch)")
    if shape[1] != 3:
        raise InputError(f"{got}, with {shape[1]} channels (RGB has 3)")
    if size is not None and tuple(shape[2:]) != tuple(size):
        raise InputError(f"{got}: its input size is fixed; resize the images, or build it "
                         "with image_size=")


def _range_hint(lo: float, hi: float) -> str:
    if lo < -0.5:
        return (" (looks already scaled to [-1, 1] or mean/std normalised: the model does "
                "that itself, pass the [0, 1] values)")
    if hi > 3:
        return " (looks like 8-bit pixels in [0, 255]: divide by 255)"
    return " (clip with x.clip(0, 1) if this is a resizer's overshoot)"
