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


def demo_results(weights_dir: Path, data_dir: Path, progress=None) -> dict:
    """Embed the example photos with each seed model; the figures the demo shows.

    Returns ``{"weights_dir", "data_dir", "error", "models": [...]}``; ``error`` says why
    nothing ran (no photos), and a model whose weights are missing has ``"skipped"``.
    """
    labeled = data_dir / "tf_flowers5"
    gallery = data_dir / "imagenet-samples"
    result: dict = {"weights_dir": str(weights_dir), "data_dir": str(data_dir), "error": None,
                    "models": []}
    labeled_paths, gallery_paths = _images(labeled), _images(gallery)
    if not labeled_paths or not gallery_paths:
        result["error"] = (f"No example photos found under {data_dir} (expected "
                           f"{labeled}/<class>/*.jpg and {gallery}/*.JPEG). Pass --data-dir "
                           f"DIR or set MOBILEVEC_DATA_DIR.")
        return result
    labels = np.array([p.parent.name for p in labeled_paths])
    for name, artifact, handle in SEEDS:
        weights = weights_dir / artifact
        entry: dict = {"model": name, "hub_handle": handle, "weights": str(weights)}
        result["models"].append(entry)
        if not weights.exists():
            entry["skipped"] = (f"weights missing: put {artifact} into {weights_dir} (or pass "
                                f"--weights-dir DIR / set MOBILEVEC_WEIGHTS_DIR)")
            continue
        start = time.perf_counter()
        emb = embedder(name, weights)
        flowers = _embed(emb.runner, labeled_paths, progress, f"{name} flowers")
        photos = _embed(emb.runner, gallery_paths, progress, f"{name} photos")
        seconds = time.perf_counter() - start
        count = len(flowers.paths) + len(photos.paths)
        grouped = _coarse_labels(len(gallery_paths))[[gallery_paths.index(p)
                                                       for p in photos.paths]]
        keep = grouped != ""
        step = max(1, len(flowers.paths) // QUERIES)
        queries = list(range(step // 2, len(flowers.paths), step))[:QUERIES]
        nearest, sims = cosine_neighbours(flowers.vectors[queries], flowers.vectors, 4)
        entry.update({
            "features": emb.num_features, "backend": emb.backend, "precision": "fp32",
            "images": count, "seconds": round(seconds, 3), "images_per_second": count / seconds,
            "skipped_files": [{"path": str(path), "reason": reason}
                              for path, reason in flowers.errors + photos.errors],
            "flowers_1nn_accuracy": float(leave_one_out_accuracy(
                flowers.vectors, labels[[labeled_paths.index(p) for p in flowers.paths]])),
            "flowers_classes": len(set(labels)),
            "coarse_1nn_accuracy": float(leave_one_out_accuracy(photos.vectors[keep],
                                                                grouped[keep])),
            "coarse_photos": int(keep.sum()),
            "neighbours": [{"query": _short(flowers.paths[q]),
                            "nearest": [{"image": _short(flowers.paths[i]), "cosine": float(c)}
                                        for i, c in zip(row, sim, strict=True) if i != q][:3]}
                           for q, row, sim in zip(queries, nearest, sims, strict=True)]})
    return result


def print_demo(result: dict) -> None:
    """The demo's figures as text on stdout."""
    if result["error"]:
        print(result["error"])
        return
    for entry in result["models"]:
        print(f"\n== {entry['model']}  (TF Hub {entry['hub_handle']})")
        if "skipped" in entry:
            print(f"   {entry['skipped']}; skipped.")
            continue
        print(f"   weights  {entry['weights']}")
        print(f"   embedded {entry['images']} photos into {entry['features']}-d vectors in "
              f"{entry['seconds']:.1f} s ({entry['images_per_second']:.0f} img/s, "
              f"{entry['backend']} {entry['precision']}, startup included)")
        for skipped in entry["skipped_files"]:
            print(f"   skipped  {skipped['path']}: {skipped['reason']}")
        print(f"   tf_flowers5 leave-one-out 1-NN accuracy: {entry['flowers_1nn_accuracy']:.3f} "
              f"({entry['flowers_classes']} classes, chance {1 / entry['flowers_classes']:.2f})")
        print(f"   imagenet-samples coarse-group 1-NN accuracy: "
              f"{entry['coarse_1nn_accuracy']:.3f} ({entry['coarse_photos']} photos of birds, "
              f"reptiles, dogs, insects)")
        print("   nearest neighbours of a few flower photos (cosine):")
        for row in entry["neighbours"]:
            print(f"     {row['query']:28} -> " +
                  ", ".join(f"{n['image']} ({n['cosine']:.2f})" for n in row["nearest"]))


def demo_status(result: dict) -> int:
    """1 when nothing ran or a model's weights were missing, else 0."""
    return int(bool(result["error"]) or any("skipped" in m for m in result["models"]))

