"""Decoding and preprocessing follow the documented rule (mobilevec/images.py).

References are independent of the code under test: a per-pixel transcription of TF's
half-pixel bilinear kernel, PNG files assembled byte by byte, and hand-computed values.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mobilevec.data.images import ImageError, load_array, load_image, load_rgb, resize, resize_array


# --- references --------------------------------------------------------------------------
def tf_bilinear_reference(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """TF ``ResizeBilinear(half_pixel_centers=True)`` written out pixel by pixel.

    Source coordinates in float32 as TF's kernel computes them (``scale = float(in) / out``,
    ``(i + 0.5f) * scale - 0.5f``); the interpolation itself in float64.
    """
    in_h, in_w, channels = image.shape
    out = np.zeros((out_h, out_w, channels))

    def weights(i, in_size, out_size):
        scale = np.float32(in_size) / np.float32(out_size)
        src = float((np.float32(i) + np.float32(0.5)) * scale - np.float32(0.5))
        lower = max(int(np.floor(src)), 0)
        upper = min(int(np.ceil(src)), in_size - 1)
        return lower, upper, src - np.floor(src)

    for y in range(out_h):
        y0, y1, fy = weights(y, in_h, out_h)
        for x in range(out_w):
            x0, x1, fx = weights(x, in_w, out_w)
            top = image[y0, x0] + (image[y0, x1] - image[y0, x0]) * fx
            bottom = image[y1, x0] + (image[y1, x1] - image[y1, x0]) * fx
            out[y, x] = top + (bottom - top) * fy
    return out.transpose(2, 0, 1)


def png_bytes(width: int, height: int, bit_depth: int, color_type: int, rows: bytes = b"",
              extra_chunks: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
    """A PNG assembled chunk by chunk (filter byte 0 per row), without any image library."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    body = b"".join(chunk(k, d) for k, d in extra_chunks)
    idat = chunk(b"IDAT", zlib.compress(rows)) if rows else b""
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + body + idat + chunk(b"IEND", b"")


def write(path, data: bytes):
    path.write_bytes(data)
    return path


# --- resize ------------------------------------------------------------------------------
@pytest.mark.parametrize("in_hw,out_hw", [((37, 53), (224, 224)), ((300, 200), (224, 224)),
                                          ((50, 50), (17, 31)), ((7, 5), (7, 5)),
                                          ((1, 9), (4, 4))])
def test_resize_matches_tf_half_pixel_bilinear_formula(in_hw, out_hw):
    rng = np.random.default_rng(sum(in_hw) + sum(out_hw))
    image = rng.integers(0, 256, (*in_hw, 3)).astype(np.uint8)
    ours = resize_array(image, out_hw)
    reference = tf_bilinear_reference(image / 255.0, *out_hw)
    assert ours.dtype == np.float32 and ours.shape == (3, *out_hw)
    np.testing.assert_allclose(ours, reference, atol=1e-6, rtol=0)


def test_resize_agrees_with_torch_bilinear_without_antialias():
    image = np.random.default_rng(0).random((91, 64, 3)).astype(np.float32)
    ours = resize(torch.from_numpy(image).permute(2, 0, 1)[None], (224, 160))
    theirs = F.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None], size=(224, 160),
                           mode="bilinear", align_corners=False, antialias=False)
    torch.testing.assert_close(ours, theirs, atol=2e-6, rtol=0)


def test_center_crop_is_resize_of_shorter_side_then_central_window():
    image = np.random.default_rng(1).integers(0, 256, (40, 100, 3)).astype(np.uint8)
    # shorter side 40 -> 20, so the inner image is 20 x 50 and the window starts at column 15
    full = tf_bilinear_reference(image / 255.0, 20, 50)
    np.testing.assert_allclose(resize_array(image, 20, crop="center"), full[:, :, 15:35],
                               atol=1e-6, rtol=0)


def test_unknown_crop_is_refused():
    with pytest.raises(ValueError, match="crop"):
        resize_array(np.zeros((4, 4, 3), np.uint8), 2, crop="middle")


# --- modes -------------------------------------------------------------------------------
def test_alpha_is_dropped_not_composited(tmp_path):
    rgba = np.array([[[10, 20, 30, 0], [200, 100, 50, 128]]], np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(load_rgb(tmp_path / "a.png"), rgba[..., :3])


def test_gray_alpha_repeats_gray(tmp_path):
    Image.fromarray(np.array([[[7, 0], [250, 255]]], np.uint8), "LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(load_rgb(tmp_path / "la.png"), [[[7] * 3, [250] * 3]])


def test_palette_with_transparency_keeps_the_palette_colour(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.putpixel((0, 0), 0)
    image.putpixel((1, 0), 1)
    image.save(tmp_path / "p.png", transparency=0)
    np.testing.assert_array_equal(load_rgb(tmp_path / "p.png"), [[[255, 0, 0], [0, 0, 255]]])


def test_16_bit_gray_png_keeps_the_high_byte(tmp_path):
    samples = [0, 255, 256, 40000, 65535]
    rows = b"\x00" + struct.pack(">5H", *samples)
    path = write(tmp_path / "g16.png", png_bytes(5, 1, 16, 0, rows))
    np.testing.assert_array_equal(load_rgb(path)[0, :, 0], [0, 0, 1, 156, 255])
    np.testing.assert_array_equal(load_rgb(path)[..., 0], load_rgb(path)[..., 2])


def test_16_bit_rgb_png_keeps_the_high_byte(tmp_path):
    rows = b"\x00" + struct.pack(">6H", 0x1234, 0xABCD, 0x00FF, 0xFF00, 0x8080, 0x0001)
    path = write(tmp_path / "rgb16.png", png_bytes(2, 1, 16, 2, rows))
    np.testing.assert_array_equal(load_rgb(path), [[[0x12, 0xAB, 0x00], [0xFF, 0x80, 0x00]]])


def test_cmyk_uses_the_documented_formula(tmp_path):
    image = Image.new("CMYK", (2, 1))
    image.putpixel((0, 0), (100, 50, 20, 30))
    image.putpixel((1, 0), (0, 255, 10, 200))
    image.save(tmp_path / "c.tif")  # lossless CMYK
    # R = (255 - C) * (255 - K) / 255, rounded: 155*225/255 = 136.8, 205*225/255 = 180.9, ...
    np.testing.assert_array_equal(load_rgb(tmp_path / "c.tif"),
                                  [[[137, 181, 207], [55, 0, 53]]])


def test_cmyk_jpeg_decodes_to_rgb(tmp_path):
    Image.new("CMYK", (16, 16), (0, 0, 0, 0)).save(tmp_path / "c.jpg")
    rgb = load_rgb(tmp_path / "c.jpg")
    assert rgb.shape == (16, 16, 3) and rgb.min() >= 250  # no ink is white


def test_one_bit_and_gray_are_repeated(tmp_path):
    Image.fromarray(np.array([[0, 255]], np.uint8)).convert("1").save(tmp_path / "b.png")
    np.testing.assert_array_equal(load_rgb(tmp_path / "b.png"), [[[0] * 3, [255] * 3]])
    Image.fromarray(np.array([[3, 77]], np.uint8), "L").save(tmp_path / "l.bmp")
    np.testing.assert_array_equal(load_rgb(tmp_path / "l.bmp"), [[[3] * 3, [77] * 3]])


def test_animated_gif_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    rgb = load_rgb(tmp_path / "anim.gif")
    assert rgb.shape == (4, 4, 3) and (rgb == [255, 0, 0]).all()


@pytest.mark.parametrize("fmt,suffix", [("WEBP", "webp"), ("TIFF", "tif"), ("BMP", "bmp"),
                                        ("PNG", "png")])
def test_lossless_formats_round_trip(tmp_path, fmt, suffix):
    pixels = np.random.default_rng(2).integers(0, 256, (5, 7, 3)).astype(np.uint8)
    options = {"lossless": True} if fmt == "WEBP" else {}
    Image.fromarray(pixels).save(tmp_path / f"x.{suffix}", fmt, **options)
    np.testing.assert_array_equal(load_rgb(tmp_path / f"x.{suffix}"), pixels)


def test_exif_orientation_is_applied(tmp_path):
    stored = np.zeros((16, 32, 3), np.uint8)
    stored[:, :16] = (255, 0, 0)  # left half red
    stored[:, 16:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    Image.fromarray(stored).save(tmp_path / "rot.jpg", quality=95, exif=exif.tobytes())
    rgb = load_rgb(tmp_path / "rot.jpg")
    assert rgb.shape == (32, 16, 3)  # portrait once rotated
    top, bottom = rgb[4, 8].astype(int), rgb[28, 8].astype(int)
    assert top[0] > 200 and top[2] < 60  # the stored left (red) is now on top
    assert bottom[2] > 200 and bottom[0] < 60


# --- JPEG draft --------------------------------------------------------------------------
def smooth_photo(height: int, width: int) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    rgb = np.stack([np.sin(6 * x) * 0.5 + 0.5, np.cos(4 * y) * 0.5 + 0.5, x * y], axis=-1)
    return Image.fromarray((rgb * 255).astype(np.uint8))


def test_draft_decodes_large_jpegs_at_a_reduced_scale_but_never_below_the_target(tmp_path):
    smooth_photo(1600, 2000).save(tmp_path / "big.jpg", quality=90)
    # 2000 // 448 = 4, 1600 // 448 = 3 -> libjpeg scale 1/2
    assert load_rgb(tmp_path / "big.jpg", draft_to=(448, 448)).shape == (800, 1000, 3)
    assert load_rgb(tmp_path / "big.jpg").shape == (1600, 2000, 3)
    drafted = load_image(tmp_path / "big.jpg", draft=True)
    exact = load_image(tmp_path / "big.jpg")
    assert (drafted - exact).abs().max() < 0.03  # a smooth image barely changes


def test_draft_leaves_small_jpegs_and_other_formats_alone(tmp_path):
    smooth_photo(300, 400).save(tmp_path / "small.jpg")
    smooth_photo(1600, 2000).save(tmp_path / "big.png")
    assert load_rgb(tmp_path / "small.jpg", draft_to=(448, 448)).shape == (300, 400, 3)
    assert load_rgb(tmp_path / "big.png", draft_to=(448, 448)).shape == (1600, 2000, 3)
    np.testing.assert_array_equal(load_array(tmp_path / "small.jpg", draft=True),
                                  load_array(tmp_path / "small.jpg"))


# --- failures ----------------------------------------------------------------------------
def test_declared_huge_png_is_refused_before_decoding(tmp_path):
    path = write(tmp_path / "bomb.png", png_bytes(100_000, 100_000, 8, 2))
    with pytest.raises(ImageError, match="bomb") as e:
        load_rgb(path)
    assert e.value.path == str(path)


def test_pixel_limit_is_ours_to_set(tmp_path):
    Image.new("RGB", (20, 10)).save(tmp_path / "x.png")
    with pytest.raises(ImageError, match="200 pixels exceeds the limit of 199"):
        load_rgb(tmp_path / "x.png", max_pixels=199)
    assert load_rgb(tmp_path / "x.png", max_pixels=200).shape == (10, 20, 3)


@pytest.mark.parametrize("name,data,reason", [
    ("empty.jpg", b"", "not an image"),
    ("text.jpg", b"just some text, not a JPEG\n" * 10, "not an image"),
    ("png_no_data.png", png_bytes(4, 4, 8, 2), "cannot decode"),
])
def test_broken_files_raise_image_error_naming_the_file(tmp_path, name, data, reason):
    path = write(tmp_path / name, data)
    with pytest.raises(ImageError, match=reason) as e:
        load_image(path)
    assert str(path) in str(e.value)


def test_truncated_jpeg_is_an_image_error(tmp_path):
    buffer = io.BytesIO()
    smooth_photo(200, 200).save(buffer, "JPEG")
    path = write(tmp_path / "cut.jpg", buffer.getvalue()[:len(buffer.getvalue()) // 2])
    with pytest.raises(ImageError, match="truncated"):
        load_rgb(path)
