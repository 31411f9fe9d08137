"""Image decoding and preprocessing, exactly as TF Hub users feed the modules.

The rule, in order (what ``tf.io.decode_image(channels=3)`` followed by
``tf.image.convert_image_dtype(float32)`` and ``tf.image.resize(size)`` does, except where
noted):

1. **Open** with Pillow and read the header only. Only regular files are read (a FIFO,
   socket or device is refused without blocking on it). Images of more than
   ``max_pixels`` pixels (default :data:`MAX_PIXELS`) are refused *before* any pixel is
   decoded (decompression bombs); that one limit decides, above or below Pillow's own
   (``Image.MAX_IMAGE_PIXELS``), which is raised for the call when needed. GIFs and other
   animations give their first frame.
2. **JPEG draft** (optional, ``draft_to``): a JPEG at least twice as large as needed on both
   axes is decoded at 1/2, 1/4 or 1/8 scale by libjpeg's DCT scaling, never below
   ``draft_to`` pixels per axis. This is *not* what TF does (it decodes at full size); its
   effect on the vectors is measured in ``docs/benchmarks.md`` (``load_image`` leaves it off;
   the embedding pipeline turns it on with :data:`DRAFT_MARGIN` x the model size).
3. **EXIF orientation** is applied (TF ignores it; every photo viewer applies it).
4. **Mode → 8-bit RGB**, as ``tf.io.decode_png/decode_jpeg(channels=3)``:

   - alpha is dropped, not composited (RGBA, LA, PA, and palettes with a transparent
     index keep the stored colour of transparent pixels);
   - palettes are expanded; grayscale (``L``, ``1``) is repeated to three channels;
   - 16-bit samples keep their high byte (``v >> 8``, libpng's ``png_set_strip_16`` as
     TF uses it); 32-bit integer ``I`` is clipped to [0, 65535] and treated the same;
     float ``F`` is clipped to [0, 255] and rounded;
   - CMYK (TF cannot decode CMYK JPEGs) uses Pillow's conversion without colour
     management: ``R = round((255 - C) * (255 - K) / 255)``, likewise G (M) and B (Y);
   - other modes (YCbCr, LAB, HSV) use Pillow's ``convert("RGB")``.
5. **Scale** to float32 in [0, 1]: ``v * float32(1/255)`` (``convert_image_dtype``).
6. **Resize** with ``tf.image.resize(..., "bilinear")`` semantics: half-pixel centres,
   no antialiasing, TF's arithmetic in float32 (source coordinate ``(i + 0.5) * in/out -
   0.5``, lower index clamped at 0, upper at the last pixel, horizontal lerp first,
   then vertical). ``crop="center"`` resizes the shorter side to the target (the other
   side keeps the aspect ratio, rounded) and keeps the centre window, offset
   ``(inner - target) // 2``; the default ``"none"`` squashes the image to the target.
   Only the source rows the output needs are copied (two per output row), then only the
   needed columns of those, so the working memory is 2 x output height x input width.

The result is float32, channels first, in [0, 1]: the input contract of the models.

Memory (:func:`load_array`): the one full-size copy is Pillow's decoded image (1 byte per
pixel for L/P, 2 for LA and 16-bit gray, 4 for RGB, RGBA, CMYK and 32-bit modes: Pillow
keeps RGB as RGBX). For images above :data:`GATHER_PIXELS`, steps 3-5 run on the rows and
columns the resize reads (taken from Pillow's image by the EXIF orientation, converted
strip by strip), so no RGB, rotated or numpy copy of the whole image is made; the vectors
are bit-identical to the full path. Decodes whose Pillow image exceeds
:data:`LARGE_DECODE_BYTES` pass a gate (:func:`use_decode_gate`) that the embedding
pipeline shares between its decode workers, so that together they stay within a budget.
The measured peaks are in docs/benchmarks.md ("Decode memory").
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import stat
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal

import numpy as np
from PIL import Image, ImageOps

from ..errors import ImageError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# Pillow's default hard limit (2 x Image.MAX_IMAGE_PIXELS): about 179 MP, far above real
# photos (a 100 MP camera frame fits); Pillow holds such an RGB image in 0.7 GB.
MAX_PIXELS = 178_956_970
# Above this many pixels, the resize reads its rows and columns straight from Pillow's image
# (no full-size RGB or numpy copy); below, one full conversion is faster.
GATHER_PIXELS = 4_000_000
# Pillow images larger than this (bytes) are decoded through the decode gate.
LARGE_DECODE_BYTES = 64 << 20
# JPEGs are DCT-scaled only while they stay >= DRAFT_MARGIN x the target size per axis, so the
# final resize is still a >= 2x bilinear reduction of a sharp image.
DRAFT_MARGIN = 2
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".gif",
                            ".tif", ".tiff"})
Crop = Literal["none", "center"]
Size = int | tuple[int, int]

_ORIENTATION = 0x0112
_SWAPS_AXES = {5, 6, 7, 8}  # EXIF orientations that rotate by 90 degrees
_TO_UNIT = np.float32(1.0 / 255.0)  # tf.image.convert_image_dtype's scale, as a float32
# bytes per pixel of Pillow's decoded image, by mode (Pillow pads RGB to 4 bytes)
_PILLOW_BYTES = {"1": 1, "L": 1, "P": 1, "LA": 2, "PA": 2, "La": 2, "I;16": 2, "I;16B": 2,
                 "I;16L": 2, "I;16N": 2}
_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISDIR, "a folder"))


def not_a_regular_file(mode: int) -> str | None:
    """What a file of ``st_mode`` is when it is not a regular file (None when it is)."""
    if stat.S_ISREG(mode):
        return None
    return next((what for test, what in _FILE_KINDS if test(mode)), "not a regular file")


@contextlib.contextmanager
def _open_regular(path: str | Path) -> Iterator[IO[bytes]]:
    """``path`` opened for reading, refused unless it is a regular file.

    The open does not block (``O_NONBLOCK``): opening a FIFO for reading would otherwise
    wait for a writer forever; what the descriptor is, is then checked with ``fstat``.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        what = not_a_regular_file(os.fstat(fd).st_mode)
        if what:
            raise ImageError(path, f"not a regular file ({what}); only image files are read")
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        yield f


_pillow_lock = threading.Lock()
_pillow_raises = 0  # calls in flight that need Pillow's limit out of the way
_pillow_saved: int | None = None


@contextlib.contextmanager
def _pillow_allows(max_pixels: int) -> Iterator[None]:
    """Let Pillow open images up to ``max_pixels`` (its own bomb check would refuse those
    above 2 x ``Image.MAX_IMAGE_PIXELS`` first); ours then decides. Reference counted, so
    concurrent decodes in threads restore Pillow's setting only when the last one ends."""
    global _pillow_raises, _pillow_saved
    limit = Image.MAX_IMAGE_PIXELS
    if _pillow_raises == 0 and (limit is None or max_pixels <= 2 * limit):
        yield
        return
    with _pillow_lock:
        if _pillow_raises == 0:
            _pillow_saved = Image.MAX_IMAGE_PIXELS
        _pillow_raises += 1
        Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        with _pillow_lock:
            _pillow_raises -= 1
            if _pillow_raises == 0:
                Image.MAX_IMAGE_PIXELS = _pillow_saved


def decoded_bytes(image: Image.Image) -> int:
    """Bytes of Pillow's decoded copy of ``image`` (its size and mode as opened or drafted)."""
    return image.width * image.height * _PILLOW_BYTES.get(image.mode, 4)


_decode_gate: Callable[[int], contextlib.AbstractContextManager] | None = None


def use_decode_gate(gate: Callable[[int], contextlib.AbstractContextManager] | None) -> None:
    """Make every decode in this process of more than :data:`LARGE_DECODE_BYTES` run inside
    ``gate(nbytes)`` (None: no gate). The embedding pipeline installs a budget shared by
    its decode workers (:mod:`mobilevec.embedding.batching`)."""
    global _decode_gate
    _decode_gate = gate


def _gated(nbytes: int) -> contextlib.AbstractContextManager:
    gate = _decode_gate
    if gate is None or nbytes <= LARGE_DECODE_BYTES:
        return contextlib.nullcontext()
    return gate(nbytes)


def _hw(size: Size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _to_rgb(image: Image.Image) -> np.ndarray:
    """Any Pillow mode → ``(H, W, 3)`` uint8 by the module rule (step 4)."""
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        # high byte of 16-bit samples, as TF's png_set_strip_16
        values = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
        gray = (values >> 8).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        gray = np.clip(np.rint(np.asarray(image, dtype=np.float64)), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode in ("P", "PA"):
        # RGBA keeps the palette colour of transparent entries; dropping alpha then matches
        # libpng's palette expansion followed by png_set_strip_alpha.
        image = image.convert("RGBA")
    if mode != "RGB":  # convert() of an RGB image would only copy it
        image = image.convert("RGB")  # drops alpha; L/1 repeated; CMYK as documented
    return np.array(image)


def _refuse_large(path: str | Path, image: Image.Image, max_pixels: int) -> None:
    if image.width * image.height > max_pixels:
        raise ImageError(path, f"{image.width}x{image.height} = {image.width * image.height} "
                               f"pixels exceeds the limit of {max_pixels} (decompression bomb?)")


def _draft(image: Image.Image, draft_to: tuple[int, int], orientation: int | None) -> None:
    """Let libjpeg decode at 1/2, 1/4, 1/8 scale, keeping >= ``draft_to`` (H, W) per axis."""
    height, width = draft_to
    if orientation in _SWAPS_AXES:
        height, width = width, height  # the stored image is rotated by 90 degrees
    image.draft(image.mode, (width, height))


@contextlib.contextmanager
def _opened(path: str | Path, max_pixels: int, *, data: bytes | None = None
            ) -> Iterator[tuple[Image.Image, int | None]]:
    """``(image, EXIF orientation)``: the first frame's header read, nothing decoded;
    failures as :class:`ImageError` (step 1). With ``data``, the image is those bytes
    (``path`` only names them in errors) and no file is opened."""
    try:
        with warnings.catch_warnings():
            # our own limit decides; Pillow's warning below its hard limit is noise here
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with (_open_regular(path) if data is None
                  else contextlib.nullcontext(io.BytesIO(data))) as f:
                with _pillow_allows(max_pixels):
                    image = Image.open(f)
                with image:
                    _refuse_large(path, image, max_pixels)
                    image.seek(0)
                    yield image, image.getexif().get(_ORIENTATION)
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(path, f"refused as a decompression bomb ({e})") from e
    except Image.UnidentifiedImageError:
        raise ImageError(path, "not an image Pillow can identify (unknown format or not an "
                               "image file)") from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, KeyError,
            MemoryError) as e:
        reason = (f"cannot read file ({e.strerror})" if isinstance(e, OSError) and e.strerror
                  else f"cannot decode image ({type(e).__name__}: {e})")
        raise ImageError(path, reason) from e


def load_rgb(path: str | Path, *, draft_to: tuple[int, int] | None = None,
             max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode one image to an ``(H, W, 3)`` uint8 RGB array (steps 1-4 of the module rule).

    ``draft_to`` = (height, width): allow JPEG DCT scaling down to no less than that
    (None: full decode, as TF). Raises :class:`ImageError` naming the file and the cause
    for anything that is not a decodable image within ``max_pixels``.
    """
    with _opened(path, max_pixels) as (image, orientation):
        if draft_to is not None and image.format == "JPEG":
            _draft(image, draft_to, orientation)
        with _gated(decoded_bytes(image)):
            if orientation not in (None, 1):  # else exif_transpose would only copy
                image = ImageOps.exif_transpose(image)
            return _to_rgb(image)


def _source_axis(in_size: int, out_size: int, start: int, count: int):
    """TF's ``compute_interpolation_weights`` with ``HalfPixelScaler``, in float32."""
    scale = np.float32(in_size) / np.float32(out_size)
    src = (np.arange(start, start + count, dtype=np.float32) + np.float32(0.5)) * scale \
        - np.float32(0.5)
    floor = np.floor(src)
    lower = np.maximum(floor, 0).astype(np.intp)
    upper = np.minimum(np.ceil(src), in_size - 1).astype(np.intp)
    return lower, upper, (src - floor).astype(np.float32)


def _window(in_hw: tuple[int, int], size: Size, crop: Crop):
    """(inner size the image is resized to, top-left corner of the kept window)."""
    height, width = _hw(size)
    if crop == "none":
        return (height, width), (0, 0)
    if crop != "center":
        raise ValueError(f"crop must be 'none' or 'center', got {crop!r}")
    h, w = in_hw
    scale = max(height / h, width / w)
    inner = (max(height, round(h * scale)), max(width, round(w * scale)))
    return inner, ((inner[0] - height) // 2, (inner[1] - width) // 2)


def _plan(in_hw: tuple[int, int], size: Size, crop: Crop):
    """Source rows ``(y0, y1, fy)`` and columns ``(x0, x1, fx)`` of the output (step 6)."""
    height, width = _hw(size)
    (inner_h, inner_w), (top, left) = _window(in_hw, size, crop)
    return (*_source_axis(in_hw[0], inner_h, top, height),
            *_source_axis(in_hw[1], inner_w, left, width))


def _lerp(rows: np.ndarray, x0: np.ndarray, x1: np.ndarray, fx: np.ndarray,
          fy: np.ndarray) -> np.ndarray:
    """Step 6 on ``rows`` ``(C, 2h, W)``: the lower-neighbour source rows of the ``h`` output
    rows, then their upper-neighbour rows; ``x0``/``x1`` index its columns."""
    height = len(fy)

    def column(xs: np.ndarray) -> np.ndarray:
        picked = np.take(rows, xs, axis=2).astype(np.float32)
        if rows.dtype == np.uint8:
            picked *= _TO_UNIT
        return picked

    # TF's compute_lerp, in place: top = tl + (tr - tl) * fx and bottom likewise (both
    # rows at once); out = top + (bottom - top) * fy
    lerped, right = column(x0), column(x1)
    right -= lerped
    right *= fx
    lerped += right
    top_row, bottom_row = lerped[:, :height], lerped[:, height:]
    bottom_row -= top_row
    bottom_row *= fy[:, None]
    top_row += bottom_row
    return np.ascontiguousarray(top_row)


def resize_array(image: np.ndarray, size: Size = 224, crop: Crop = "none") -> np.ndarray:
    """Steps 5-6: ``(H, W, C)`` uint8 (scaled by 1/255) or float array → ``(C, h, w)`` float32.

    ``size`` is the output (height, width), an int meaning square. uint8 input lands in
    [0, 1]; float input keeps its range (the resize is a convex combination).
    """
    y0, y1, fy, x0, x1, fx = _plan(image.shape[:2], size, crop)
    # only the needed source rows (upper-neighbour rows after lower-neighbour rows), channels
    # first: two rows per output row whatever the input height, and no final transpose
    rows = np.ascontiguousarray(image[np.concatenate([y0, y1])].transpose(2, 0, 1))
    return _lerp(rows, x0, x1, fx, fy)


def _stored_index(orientation: int | None, hw: tuple[int, int]):
    """How the EXIF-oriented image O maps to the stored image S (``hw`` its height, width):
    ``(rows_are_columns, line(r), point(c))``: oriented row ``r`` is stored row (or column,
    for the rotations) ``line(r)``, and its pixel ``c`` is at ``point(c)`` along that line.
    The same transposes as ``ImageOps.exif_transpose``."""
    h, w = hw
    keep = lambda i: i  # noqa: E731
    return {
        2: (False, keep, lambda c: w - 1 - c),
        3: (False, lambda r: h - 1 - r, lambda c: w - 1 - c),
        4: (False, lambda r: h - 1 - r, keep),
        5: (True, keep, keep),
        6: (True, keep, lambda c: h - 1 - c),
        7: (True, lambda r: w - 1 - r, lambda c: h - 1 - c),
        8: (True, lambda r: w - 1 - r, keep),
    }.get(orientation, (False, keep, keep))


def _gather_resized(image: Image.Image, orientation: int | None, size: Size,
                    crop: Crop) -> np.ndarray:
    """Steps 3-6 reading only the pixels the resize uses from Pillow's (stored) image: the
    same result as ``resize_array(_to_rgb(exif_transpose(image)))`` without a full copy."""
    stored_hw = (image.height, image.width)
    columns, line, point = _stored_index(orientation, stored_hw)
    oriented_hw = stored_hw[::-1] if columns else stored_hw
    y0, y1, fy, x0, x1, fx = _plan(oriented_hw, size, crop)
    rows = np.concatenate([y0, y1])
    needed_columns = np.unique(np.concatenate([x0, x1]))
    picked = point(needed_columns)
    lines: dict[int, np.ndarray] = {}
    for r in np.unique(rows).tolist():
        s = int(line(r))
        box = (s, 0, s + 1, image.height) if columns else (0, s, image.width, s + 1)
        strip = _to_rgb(image.crop(box)).reshape(-1, 3)  # one stored row or column, RGB
        lines[r] = strip[picked]
    gathered = np.stack([lines[r] for r in rows.tolist()])  # (2h, len(needed_columns), 3)
    remap = np.searchsorted(needed_columns, x0), np.searchsorted(needed_columns, x1)
    return _lerp(np.ascontiguousarray(gathered.transpose(2, 0, 1)), *remap, fx, fy)


def resize(images: torch.Tensor, size: Size, crop: Crop = "none") -> torch.Tensor:
    """TF-style bilinear resize of float NCHW images to ``size`` (int = square), float32."""
    arrays = [resize_array(x.permute(1, 2, 0).numpy(), size, crop)
              for x in images.detach().float().cpu()]
    import torch

    return torch.from_numpy(np.stack(arrays)) if arrays else images.new_zeros(
        (0, images.shape[1], *_hw(size)), dtype=torch.float32)


def preprocess(rgb: np.ndarray, size: Size = 224, crop: Crop = "none") -> torch.Tensor:
    """``(H, W, 3)`` uint8 RGB → ``(3, h, w)`` float32 in [0, 1] (steps 5-6)."""
    import torch

    return torch.from_numpy(resize_array(np.asarray(rgb), size, crop))


def draft_size(size: Size, draft: bool) -> tuple[int, int] | None:
    """The smallest JPEG decode size the pipeline accepts for a model input of ``size``."""
    height, width = _hw(size)
    return (DRAFT_MARGIN * height, DRAFT_MARGIN * width) if draft else None


def load_array(path: str | Path, size: Size = 224, crop: Crop = "none", *, draft: bool = False,
               max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode and preprocess one file to a ``(3, h, w)`` float32 numpy array in [0, 1].

    Torch-free (used by decode worker processes). ``draft=True`` allows JPEG DCT scaling
    (step 2) down to :data:`DRAFT_MARGIN` x ``size``.
    """
    return _load_array(path, None, size, crop, draft, max_pixels)


def load_array_bytes(data: bytes, size: Size = 224, crop: Crop = "none", *,
                     draft: bool = False, max_pixels: int = MAX_PIXELS,
                     name: str = "<bytes>") -> np.ndarray:
    """:func:`load_array` of an encoded image held in memory (an upload): the same decode,
    limits and result as for a file of those bytes; ``name`` names it in errors."""
    return _load_array(name, bytes(data), size, crop, draft, max_pixels)


def _load_array(path: str | Path, data: bytes | None, size: Size, crop: Crop, draft: bool,
                max_pixels: int) -> np.ndarray:
    draft_to = draft_size(size, draft)
    with _opened(path, max_pixels, data=data) as (image, orientation):
        if draft_to is not None and image.format == "JPEG":
            _draft(image, draft_to, orientation)
        with _gated(decoded_bytes(image)):
            if image.width * image.height > GATHER_PIXELS:
                image.load()
                return _gather_resized(image, orientation, size, crop)
            if orientation not in (None, 1):
                image = ImageOps.exif_transpose(image)
            return resize_array(_to_rgb(image), size, crop)


def load_image(path: str | Path, size: Size = 224, crop: Crop = "none", *, draft: bool = False,
               max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """Decode and preprocess one file to a ``(3, h, w)`` float32 tensor in [0, 1].

    The default is the exact TF rule (full decode); ``draft=True`` is the pipeline's faster
    JPEG decode (see step 2).
    """
    import torch

    return torch.from_numpy(load_array(path, size, crop, draft=draft, max_pixels=max_pixels))
