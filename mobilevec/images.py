"""Image decoding and preprocessing, exactly as TF Hub users feed the modules.

The rule, in order:

1. Decode with Pillow; refuse images above :data:`MAX_PIXELS` (decompression bombs)
   before pixels are decoded. GIFs and other animations give their first frame.
2. Apply the EXIF orientation tag.
3. Convert to 8-bit RGB: alpha is dropped (as ``tf.image.decode_*(channels=3)`` does),
   palettes are expanded, grayscale is repeated, CMYK is converted by Pillow, and 16/32-bit
   integer modes are scaled to 8 bits by their full range (``v * 255 / 65535``).
4. Scale to float32 in [0, 1] (``tf.image.convert_image_dtype``).
5. Resize to the model size with ``tf.image.resize(..., "bilinear")`` semantics: half-pixel
   centres, no antialiasing (identical to ``F.interpolate(mode="bilinear",
   align_corners=False, antialias=False)``). ``crop="center"`` first resizes the shorter
   side to the target and then crops the centre; the default squashes to the target.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from .errors import MobilevecError

log = logging.getLogger(__name__)

# 24k x 24k: far above real photos, far below what would exhaust memory when decoded.
MAX_PIXELS = 24_000 * 24_000
Crop = Literal["none", "center"]


class ImageError(MobilevecError):
    """An image that cannot be decoded; the message names the file and the cause."""

    def __init__(self, path: str | Path, cause: str):
        self.path, self.cause = str(path), cause
        super().__init__(f"{path}: {cause}")


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        gray = np.clip(np.round(array * 255.0 / top), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def load_rgb(path: str | Path) -> np.ndarray:
    """Decode one image to an ``(H, W, 3)`` uint8 RGB array following the module rule."""
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_PIXELS:
                raise ImageError(path, f"{image.width}x{image.height} pixels exceeds the "
                                       f"limit of {MAX_PIXELS} (decompression bomb?)")
            image.seek(0)
            image = ImageOps.exif_transpose(image)
            return np.array(_to_rgb(image))  # writable, owns its memory
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(path, f"refused as a decompression bomb ({e})") from e
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise ImageError(path, f"cannot decode image ({type(e).__name__}: {e})") from e


def resize(images: torch.Tensor, size: int | tuple[int, int], crop: Crop = "none") -> torch.Tensor:
    """TF-style bilinear resize of float NCHW images to ``size`` (int = square)."""
    height, width = (size, size) if isinstance(size, int) else size
    if crop == "center":
        h, w = images.shape[-2:]
        scale = max(height / h, width / w)
        inner = (max(height, round(h * scale)), max(width, round(w * scale)))
        images = F.interpolate(images, size=inner, mode="bilinear", align_corners=False)
        top, left = (inner[0] - height) // 2, (inner[1] - width) // 2
        return images[..., top:top + height, left:left + width]
    return F.interpolate(images, size=(height, width), mode="bilinear", align_corners=False)


def preprocess(rgb: np.ndarray, size: int | tuple[int, int] = 224,
               crop: Crop = "none") -> torch.Tensor:
    """``(H, W, 3)`` uint8 RGB → ``(3, size, size)`` float32 in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255.0
    return resize(x, size, crop)[0]


def load_image(path: str | Path, size: int | tuple[int, int] = 224,
               crop: Crop = "none") -> torch.Tensor:
    """Decode and preprocess one file to a ``(3, size, size)`` float32 tensor in [0, 1]."""
    return preprocess(load_rgb(path), size, crop)
