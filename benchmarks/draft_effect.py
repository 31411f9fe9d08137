"""How much JPEG draft mode (DCT-scaled decoding) changes the vectors, and what it saves.

Not a test. For each seed model with real weights, embeds the ImageNet sample photos
(../shared/data/imagenet-samples) decoded in full (TF's way) and with draft mode at
margins 2 (the pipeline's default: decoded >= 2 x the model input per axis) and 1 (>= 1 x),
and prints the cosine to the full decode and the decode + preprocess time. The photos are
mostly about 500 x 375, so draft mode rarely applies to them; the same photos upscaled 4x
(Lanczos, re-encoded at quality 90: stand-ins for camera-size files) show the effect where it
matters. For scale, the cosine of the full decode to a quality-90 re-encode of the same photo
is printed too.

    python benchmarks/draft_effect.py [--limit N]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mobilevec import create  # noqa: E402
from mobilevec.data.images import load_rgb, resize_array  # noqa: E402

DATA = Path(os.environ.get("MOBILEVEC_DATA_DIR", REPO.parent / "shared" / "data"))
WEIGHTS = Path(os.environ.get("MOBILEVEC_WEIGHTS_DIR", REPO.parent / "shared" / "weights"))
SEEDS = {"mobilenet_v3_small_075_224": "mobilenet_v3_small_075_224_embedder.tflite",
         "mobilenet_v2_100_224": "mobilenet_v2_1.0_224_tfslim_npy"}
SIZE = 224


def decode_all(paths, margin: int | None):
    """Preprocessed inputs, seconds per image, and which images were DCT-scaled."""
    arrays, scaled = [], []
    start = time.perf_counter()
    for path in paths:
        rgb = load_rgb(path, draft_to=None if margin is None else (margin * SIZE,) * 2)
        arrays.append(resize_array(rgb, SIZE))
        with Image.open(path) as image:
            scaled.append(rgb.shape[0] * rgb.shape[1] < image.width * image.height)
    return np.stack(arrays), (time.perf_counter() - start) / len(paths), np.array(scaled)


@torch.inference_mode()
def vectors(model, arrays: np.ndarray) -> np.ndarray:
    return np.concatenate([model(torch.from_numpy(arrays[i:i + 64])).numpy()
                           for i in range(0, len(arrays), 64)])


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def upscaled_copies(paths, folder: Path, factor: int, quality: int) -> list[Path]:
    out = []
    for path in paths:
        image = Image.open(path).convert("RGB")
        if factor != 1:
            image = image.resize((image.width * factor, image.height * factor), Image.LANCZOS)
        out.append(folder / f"{path.stem}_x{factor}_q{quality}.jpg")
        image.save(out[-1], quality=quality)
    return out


def stats(values: np.ndarray) -> str:
    if not len(values):
        return "| – | – | – |"
    return f"| {values.min():.4f} | {np.median(values):.4f} | {values.mean():.4f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="use the first N photos only")
    args = parser.parse_args()
    photos = sorted((DATA / "imagenet-samples").glob("*.JPEG"))[:args.limit]
    if not photos:
        sys.exit(f"no photos under {DATA / 'imagenet-samples'}; set MOBILEVEC_DATA_DIR")
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="mobilevec-draft-") as tmp:
        sets = {"imagenet-samples as is": photos,
                "same, upscaled 4x (q90)": upscaled_copies(photos, Path(tmp), 4, 90)}
        requality = upscaled_copies(photos, Path(tmp), 1, 90)
        for name, weights in SEEDS.items():
            if not (WEIGHTS / weights).exists():
                print(f"skipping {name}: {WEIGHTS / weights} not found")
                continue
            model = create(name, weights=WEIGHTS / weights, trainable=False)
            print(f"\n{name}: cosine to the full decode\n")
            print("| photos | decode | DCT-scaled | all: min | median | mean | "
                  "scaled only: min | median | mean | ms / image |")
            print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
            for set_name, paths in sets.items():
                exact, seconds, _ = decode_all(paths, None)
                reference = vectors(model, exact)
                print(f"| {set_name} | full (TF) | 0 | 1 | 1 | 1 | – | – | – | "
                      f"{seconds * 1e3:.1f} |")
                for margin in (2, 1):
                    arrays, seconds, scaled = decode_all(paths, margin)
                    cos = cosines(vectors(model, arrays), reference)
                    print(f"| {set_name} | draft, margin {margin} | {scaled.sum()} / "
                          f"{len(paths)} {stats(cos)[:-1]}{stats(cos[scaled])} "
                          f"{seconds * 1e3:.1f} |")
            arrays, _, _ = decode_all(requality, None)
            exact, _, _ = decode_all(photos, None)
            cos = cosines(vectors(model, arrays), vectors(model, exact))
            print(f"\nfor scale: full decode vs the same photos re-encoded at quality 90: "
                  f"min {cos.min():.4f}, median {np.median(cos):.4f}, mean {cos.mean():.4f}")


if __name__ == "__main__":
    main()
