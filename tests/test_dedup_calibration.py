"""The calibrated defaults on a small transformed set built here from real photos: with no
flags, `mobilevec dedup` groups every exact copy, re-encode, mirror image and aspect x1.3
copy with its original, never puts two originals' images in one group, and no distractor
joins a group (both seed models, real weights, vectors made by `mobilevec embed`).

The crop 80 %, 10 degree rotation and half-size JPEG-30 copies are made too, but only have
to stay out of other groups: at the defaults' precision (>= 0.99) a share of them scores
below the threshold, or below it to a sibling copy (complete linkage then keeps one of the
two); the shares are measured by benchmarks/dedup_quality.py (docs/benchmarks.md).

The expected groups are how the set was built (an original and its copies), not anything
the code under test computed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from shared_paths import DATA_DIR, V2_NPY, V3_TFLITE, require

from mobilevec.cli.app import main

# imagededup's "transformed" protocol, plus an exact copy and a re-encode.
TRANSFORMS = ("copy", "reencode", "crop80", "hflip", "rot10", "aspect13", "half_q30")
REQUIRED = ("original", "copy", "reencode", "hflip", "aspect13")


def _transform(image: Image.Image, name: str) -> tuple[Image.Image, int]:
    w, h = image.size
    if name in ("copy", "reencode"):
        return image, 75
    if name == "crop80":
        return image.crop((w // 10, h // 10, w - w // 10, h - h // 10)), 90
    if name == "hflip":
        return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), 90
    if name == "rot10":
        return image.rotate(10, resample=Image.Resampling.BILINEAR), 90
    if name == "aspect13":
        return image.resize((int(w * 1.3), h), Image.Resampling.BILINEAR), 90
    return image.resize((w // 2, h // 2), Image.Resampling.BILINEAR), 30  # half_q30


@pytest.fixture(scope="module")
def transformed_set(tmp_path_factory):
    """4 ImageNet photos with 7 copies each; 6 other ImageNet photos and 3 flower photos
    alone. Photos taken at fixed strides of the sorted folders (not picked by result)."""
    photos = sorted(require(DATA_DIR / "imagenet-samples").glob("*.JPEG"))
    originals, others = photos[3::61][:4], photos[20::41][:6]
    assert not set(originals) & set(others)
    flowers = sorted((DATA_DIR / "tf_flowers5").glob("*/*.jpg"))[5::63][:3]
    folder = tmp_path_factory.mktemp("calibration") / "images"
    folder.mkdir()
    groups = []
    for g, src in enumerate(originals):
        members = {"original": shutil.copy(src, folder / f"g{g}_original.jpg")}
        image = Image.open(src).convert("RGB")
        for name in TRANSFORMS:
            target = folder / f"g{g}_{name}.jpg"
            if name == "copy":
                shutil.copy(src, target)
            else:
                picture, quality = _transform(image, name)
                picture.save(target, quality=quality)
            members[name] = target
        groups.append({name: str(Path(p)) for name, p in members.items()})
    distractors = [shutil.copy(p, folder / f"d{j}.jpg") for j, p in enumerate(others + flowers)]
    return folder, groups, {str(Path(p)) for p in distractors}


@pytest.mark.parametrize("model, weights", [("mobilenet_v3_small_075_224", V3_TFLITE),
                                            ("mobilenet_v2_100_224", V2_NPY)],
                         ids=["v3", "v2"])
def test_default_dedup_groups_every_copy_with_its_original_and_no_distractor(
        transformed_set, tmp_path, capsys, model, weights):
    folder, expected, distractors = transformed_set
    out = tmp_path / "v.parquet"
    assert main(["embed", str(folder), "-o", str(out), "--model", model, "--weights",
                 str(require(weights)), "--quiet", "--workers", "0"]) == 0
    capsys.readouterr()
    assert main(["dedup", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    found = [{image["path"] for image in group["images"]} for group in result["groups"]]
    assert not distractors & set().union(*found), "a distractor joined a group"
    owner = {path: g for g, members in enumerate(expected) for path in members.values()}
    for group in found:
        assert len({owner[path] for path in group}) == 1, f"two originals mixed: {group}"
    for members in expected:
        required = {members[name] for name in REQUIRED}
        closest = max(found, key=lambda group: len(group & required))
        assert required <= closest, f"not with their original: {sorted(required - closest)}"
