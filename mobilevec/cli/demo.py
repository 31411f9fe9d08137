"""The demo: both seed models on real photos — nearest neighbours and kNN accuracy."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..embedding.batching import embed_files
from ..embedding.embedder import embedder
from ..embedding.search import cosine_neighbours, leave_one_out_accuracy

# (model, weights file or folder inside the weights dir, TF Hub module it reproduces)
SEEDS = [
    ("mobilenet_v2_100_224", "mobilenet_v2_1.0_224_tfslim_npy",
     "google/tf2-preview/mobilenet_v2/feature_vector/2"),
    ("mobilenet_v3_small_075_224", "mobilenet_v3_small_075_224_embedder.tflite",
     "google/imagenet/mobilenet_v3_small_075_224/feature_vector/5"),
]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
QUERIES = 4
# ImageNet class-index ranges of coarse groups; imagenet-samples holds every 4th class in
# synset order, so file i is class 4 * i.
COARSE_GROUPS = {"bird": [(7, 24), (80, 100), (127, 146)], "reptile/amphibian": [(25, 68)],
                 "dog": [(151, 268)], "insect": [(300, 326)]}


def _coarse_labels(count: int) -> np.ndarray:
    labels = np.full(count, "", dtype=object)
    for i in range(count):
        for group, ranges in COARSE_GROUPS.items():
            if any(lo <= 4 * i <= hi for lo, hi in ranges):
                labels[i] = group
    return labels


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def _short(path: Path) -> str:
    return f"{path.parent.name}/{path.stem[:14]}"


def _embed(model, paths, progress, desc):
    bar, update = progress(len(paths), desc) if progress else (None, None)
    try:
        return embed_files(model, paths, progress=update)
    finally:
        if bar is not None:
            bar.close()


def run_demo(weights_dir: Path, data_dir: Path, progress=None) -> int:
    """Print the demo to stdout; returns a process exit status."""
    labeled = data_dir / "tf_flowers5"
    gallery = data_dir / "imagenet-samples"
    labeled_paths, gallery_paths = _images(labeled), _images(gallery)
    if not labeled_paths or not gallery_paths:
        print(f"No example photos found under {data_dir} (expected {labeled}/<class>/*.jpg and "
              f"{gallery}/*.JPEG). Pass --data-dir DIR or set MOBILEVEC_DATA_DIR.")
        return 1
    labels = np.array([p.parent.name for p in labeled_paths])
    status = 0
    for name, artifact, handle in SEEDS:
        weights = weights_dir / artifact
        print(f"\n== {name}  (TF Hub {handle})")
        if not weights.exists():
            print(f"   weights missing: put {artifact} into {weights_dir} "
                  f"(or pass --weights-dir DIR / set MOBILEVEC_WEIGHTS_DIR); skipped.")
            status = 1
            continue
        start = time.perf_counter()
        emb = embedder(name, weights)
        flowers = _embed(emb.runner, labeled_paths, progress, f"{name} flowers")
        photos = _embed(emb.runner, gallery_paths, progress, f"{name} photos")
        seconds = time.perf_counter() - start
        count = len(flowers.paths) + len(photos.paths)
        print(f"   weights  {weights}")
        print(f"   embedded {count} photos into {emb.num_features}-d vectors in {seconds:.1f} s "
              f"({count / seconds:.0f} img/s, {emb.backend} fp32, startup included)")
        for path, reason in flowers.errors + photos.errors:
            print(f"   skipped  {path}: {reason}")
        accuracy = leave_one_out_accuracy(flowers.vectors, labels[[labeled_paths.index(p)
                                                                    for p in flowers.paths]])
        print(f"   tf_flowers5 leave-one-out 1-NN accuracy: {accuracy:.3f} "
              f"({len(set(labels))} classes, chance {1 / len(set(labels)):.2f})")
        grouped = _coarse_labels(len(gallery_paths))[[gallery_paths.index(p)
                                                       for p in photos.paths]]
        keep = grouped != ""
        accuracy = leave_one_out_accuracy(photos.vectors[keep], grouped[keep])
        print(f"   imagenet-samples coarse-group 1-NN accuracy: {accuracy:.3f} "
              f"({keep.sum()} photos of birds, reptiles, dogs, insects)")
        step = max(1, len(flowers.paths) // QUERIES)
        queries = list(range(step // 2, len(flowers.paths), step))[:QUERIES]
        nearest, sims = cosine_neighbours(flowers.vectors[queries], flowers.vectors, 4)
        print("   nearest neighbours of a few flower photos (cosine):")
        for q, row, sim in zip(queries, nearest, sims, strict=True):
            others = [(_short(flowers.paths[i]), s) for i, s in zip(row, sim, strict=True)
                      if i != q]
            print(f"     {_short(flowers.paths[q]):28} -> " +
                  ", ".join(f"{name} ({s:.2f})" for name, s in others[:3]))
    return status
