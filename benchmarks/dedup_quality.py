"""How well ``mobilevec dedup`` finds near-duplicates, against the peers users reach for.

The set follows imagededup's "transformed" protocol, built from ../shared/data photos:
each of ``--originals`` ImageNet sample photos gets 7 copies (exact copy, JPEG re-encode
at quality 90, centre crop 80 %, horizontal flip, 10 degree rotation, aspect x1.3, half
size + JPEG quality 30); ``--distractors`` other photos (other ImageNet classes, many of
them close: 200 dog breeds are 1/4 of ImageNet) are alone. A duplicate pair is two images of
one original's group; every other pair is not. For each method and threshold it prints
pairwise precision, recall and F1 (pairs inside predicted groups against true pairs) and,
per method, the recall at precision >= 0.99 over the sweep.

Methods: mobilevec's grouping (complete linkage over the k-NN graph,
:mod:`mobilevec.embedding.dedup`) with plain and collection-centred cosine for each seed
model; the old behaviour (single linkage, cosine >= 0.95); ``imagehash`` pHash (Hamming
distance <= t, as imagededup's PHash). imagededup's CNN method is tried only if
``imagededup`` imports.

    python benchmarks/dedup_quality.py [--originals 80] [--distractors 170] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from itertools import combinations
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
WEIGHTS = REPO.parent / "shared" / "weights"
MODELS = {"v3": ("mobilenet_v3_small_075_224",
                  WEIGHTS / "mobilenet_v3_small_075_224_embedder.tflite"),
          "v2": ("mobilenet_v2_100_224", WEIGHTS / "mobilenet_v2_1.0_224_tfslim_npy")}
TRANSFORMS = ("copy", "reencode", "crop80", "hflip", "rot10", "aspect13", "half_q30")


def transform(image: Image.Image, name: str) -> tuple[Image.Image, int]:
    """(image, JPEG quality) of one transform of ``image``."""
    w, h = image.size
    if name in ("copy", "reencode"):
        return image, 90
    if name == "crop80":
        dw, dh = int(w * 0.1), int(h * 0.1)
        return image.crop((dw, dh, w - dw, h - dh)), 90
    if name == "hflip":
        return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), 90
    if name == "rot10":
        return image.rotate(10, resample=Image.Resampling.BILINEAR), 90
    if name == "aspect13":
        return image.resize((int(w * 1.3), h), Image.Resampling.BILINEAR), 90
    if name == "half_q30":
        return image.resize((w // 2, h // 2), Image.Resampling.BILINEAR), 30
    raise ValueError(name)


def build_set(folder: Path, originals: int, distractors: int, seed: int = 0,
              sources: list[Path] | None = None) -> tuple[list[Path], np.ndarray]:
    """Write the transformed set into ``folder``: (paths, group label; -1 = distractor)."""
    photos = sources or sorted((DATA / "imagenet-samples").glob("*.JPEG"))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(photos))
    chosen = [photos[i] for i in order[:originals]]
    others = [photos[i] for i in order[originals:originals + distractors]]
    paths, labels = [], []
    for g, src in enumerate(chosen):
        original = folder / f"g{g:03d}_original{src.suffix}"
        original.write_bytes(src.read_bytes())
        paths.append(original)
        labels.append(g)
        image = Image.open(src).convert("RGB")
        for name in TRANSFORMS:
            target = folder / f"g{g:03d}_{name}.jpg"
            if name == "copy":
                target = folder / f"g{g:03d}_copy{src.suffix}"
                target.write_bytes(src.read_bytes())
            else:
                out, quality = transform(image, name)
                out.save(target, quality=quality)
            paths.append(target)
            labels.append(g)
    for j, src in enumerate(others):
        target = folder / f"d{j:03d}{src.suffix}"
        target.write_bytes(src.read_bytes())
        paths.append(target)
        labels.append(-1)
    return paths, np.array(labels)


def true_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    out = set()
    for g in set(labels.tolist()) - {-1}:
        out.update(combinations(np.nonzero(labels == g)[0].tolist(), 2))
    return out


def group_pairs(groups: list[list[int]]) -> set[tuple[int, int]]:
    return {tuple(sorted(p)) for g in groups for p in combinations(g, 2)}


def prf(pred: set, truth: set) -> dict:
    tp = len(pred & truth)
    p = tp / len(pred) if pred else 1.0
    r = tp / len(truth) if truth else 1.0
    return {"precision": round(p, 4), "recall": round(r, 4),
            "f1": round(2 * p * r / (p + r), 4) if p + r else 0.0}


def mobilevec_sweep(vectors: np.ndarray, score: str, labels: np.ndarray,
                    thresholds: np.ndarray) -> list[dict]:
    from mobilevec.embedding.dedup import Scorer, group_graph, knn_graph

    scorer = Scorer.fit(score, vectors)
    graph = knn_graph(vectors, scorer, 10, "exact")
    truth = true_pairs(labels)
    return [{"threshold": round(float(t), 3),
             **prf(group_pairs(group_graph(graph, vectors, scorer, float(t))), truth)}
            for t in thresholds]


def single_linkage(vectors: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    from mobilevec.embedding.search import near_duplicate_groups

    return prf(group_pairs(near_duplicate_groups(vectors, threshold)), true_pairs(labels))


def phash_sweep(paths: list[Path], labels: np.ndarray, distances: range) -> tuple[list, float]:
    import imagehash

    t0 = time.perf_counter()
    bits = np.array([imagehash.phash(Image.open(p)).hash.ravel() for p in paths])
    seconds = time.perf_counter() - t0
    hamming = (bits[:, None, :] != bits[None, :, :]).sum(-1)
    truth = true_pairs(labels)
    iu = np.triu_indices(len(paths), 1)
    rows = []
    for d in distances:
        hit = hamming[iu] <= d
        pred = set(zip(iu[0][hit].tolist(), iu[1][hit].tolist(), strict=True))
        rows.append({"threshold": d, **prf(pred, truth)})
    return rows, seconds


def best(rows: list[dict]) -> dict:
    """Best F1 row, and the highest recall with precision >= 0.99."""
    top = max(rows, key=lambda r: (r["f1"], r["precision"]))
    ok = [r for r in rows if r["precision"] >= 0.99]
    at99 = max(ok, key=lambda r: r["recall"]) if ok else None
    return {"best_f1": top, "recall_at_p99": at99["recall"] if at99 else 0.0,
            "threshold_at_p99": at99["threshold"] if at99 else None}


def embed(model: str, weights: Path, paths: list[Path]) -> tuple[np.ndarray, float]:
    import mobilevec

    emb = mobilevec.embedder(model, weights=weights)
    t0 = time.perf_counter()
    result = emb.embed_files(paths)
    if result.errors:
        raise SystemExit(f"failed to embed: {result.errors[:3]}")
    return result.vectors, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--originals", type=int, default=80)
    ap.add_argument("--distractors", type=int, default=170)
    ap.add_argument("--models", default="v3,v2")
    ap.add_argument("--json", help="write every row here")
    args = ap.parse_args(argv)
    report: dict = {"originals": args.originals, "distractors": args.distractors,
                    "transforms": TRANSFORMS, "methods": {}}
    with tempfile.TemporaryDirectory() as tmp:
        paths, labels = build_set(Path(tmp), args.originals, args.distractors)
        report["images"] = len(paths)
        report["true_pairs"] = len(true_pairs(labels))
        print(f"{len(paths)} images, {report['true_pairs']} duplicate pairs", flush=True)
        thresholds = np.round(np.arange(0.30, 0.981, 0.01), 3)
        for key in args.models.split(","):
            model, weights = MODELS[key]
            if not weights.exists():
                print(f"skip {key}: {weights} missing")
                continue
            vectors, seconds = embed(model, weights, paths)
            print(f"{key}: embedded in {seconds:.1f} s", flush=True)
            for score in ("cosine", "centred"):
                rows = mobilevec_sweep(vectors, score, labels, thresholds)
                report["methods"][f"mobilevec {key} {score}"] = {"sweep": rows, **best(rows)}
            from mobilevec.models.registry import get_config

            rule = get_config(model).dedup
            default = next(r for r in report["methods"][f"mobilevec {key} {rule.score}"]["sweep"]
                           if abs(r["threshold"] - rule.threshold) < 1e-6) \
                if 0.3 <= rule.threshold <= 0.98 else None
            report["methods"][f"mobilevec {key} default ({rule.describe()})"] = {
                "sweep": [default] if default else [], **(best([default]) if default else {})}
            old = {"threshold": 0.95, **single_linkage(vectors, labels, 0.95)}
            report["methods"][f"mobilevec {key} before (single linkage, cosine >= 0.95)"] = {
                "sweep": [old], **best([old])}
        try:
            rows, seconds = phash_sweep(paths, labels, range(0, 33, 2))
            report["methods"]["imagehash pHash (Hamming <= t)"] = {"sweep": rows, **best(rows),
                                                                   "seconds": round(seconds, 1)}
        except ImportError:
            print("skip pHash: imagehash not installed (pip install 'mobilevec[bench]')")
        try:
            import imagededup  # noqa: F401
            print("imagededup imports; its CNN method is not wired in this run")
        except ImportError:
            report["imagededup_cnn"] = "not run: imagededup is not installed (see docs)"
    print("\n| method | best F1 (P / R at t) | recall at P >= 0.99 (t) |")
    print("|---|---|---|")
    for name, m in report["methods"].items():
        if "best_f1" not in m:
            continue
        b = m["best_f1"]
        print(f"| {name} | {b['f1']:.3f} ({b['precision']:.3f} / {b['recall']:.3f} at "
              f"{b['threshold']}) | {m['recall_at_p99']:.3f} ({m['threshold_at_p99']}) |")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
