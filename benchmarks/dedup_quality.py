"""How well ``mobilevec dedup`` finds near-duplicates, against a perceptual hash, on a set
built to be hard.

The set, from ../shared/data photos (imagededup's "transformed" protocol plus distractors
chosen to look alike):

- **groups**: ``--imagenet`` ImageNet sample photos and ``--flowers`` tf_flowers photos,
  each with 7 copies: exact copy, JPEG re-encode at quality 75, centre crop 80 %,
  horizontal flip, 10 degree rotation, aspect x1.3, half size + JPEG quality 30;
- **same-class distractors**: ``--same-class`` other tf_flowers photos of the classes of the
  flower originals (different photos of the same kind of flower, often the same framing);
- **crop distractors**: for ``--crop-pairs`` other ImageNet photos, the left 45 % and the
  right 45 % (two images of one scene that share no pixels);
- **other distractors**: ``--others`` further ImageNet photos (200 dog breeds are 1/4 of
  ImageNet, so many are close).

A duplicate pair is two images of one group; every other pair is not. For each method and
threshold: pairwise precision, recall and F1 of the predicted groups, and per method the
recall at precision >= 0.99 over the sweep. Methods: mobilevec's grouping (complete linkage
over the exact k-NN graph, :mod:`mobilevec.embedding.dedup`) with plain and
collection-centred cosine for each seed model, its default rule (also on small random
sub-collections, where a collection mean is noisier), the old command (single linkage,
cosine >= 0.95), and ``imagehash`` pHash (Hamming distance <= t, as imagededup's PHash).
Vectors come from the default engine with ``mobilevec embed``'s default preprocessing
(JPEG draft decoding on).

    python benchmarks/dedup_quality.py [--json out.json]   # pip install 'mobilevec[bench]'
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
    if name == "copy":
        return image, 95
    if name == "reencode":
        return image, 75
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


def write_group(folder: Path, g: int, src: Path, transforms=TRANSFORMS
                ) -> list[tuple[Path, str]]:
    """The original and its transformed copies, written into ``folder``."""
    original = folder / f"g{g:03d}_original{src.suffix.lower()}"
    original.write_bytes(src.read_bytes())
    out = [(original, "original")]
    image = Image.open(src).convert("RGB")
    for name in transforms:
        if name == "copy":
            target = folder / f"g{g:03d}_copy{src.suffix.lower()}"
            target.write_bytes(src.read_bytes())
        else:
            target = folder / f"g{g:03d}_{name}.jpg"
            picture, quality = transform(image, name)
            picture.save(target, quality=quality)
        out.append((target, name))
    return out


def crop_pair(folder: Path, j: int, src: Path) -> list[tuple[Path, str]]:
    """The left and right 45 % of ``src``: one scene, no shared pixels, not duplicates."""
    image = Image.open(src).convert("RGB")
    w, h = image.size
    out = []
    for side, box in (("left", (0, 0, int(w * 0.45), h)),
                      ("right", (w - int(w * 0.45), 0, w, h))):
        target = folder / f"c{j:03d}_{side}.jpg"
        image.crop(box).save(target, quality=90)
        out.append((target, f"crop_{side}"))
    return out


def build_set(folder: Path, imagenet: int = 30, flowers: int = 20, same_class: int = 40,
              crop_pairs: int = 15, others: int = 40, split: int = 0
              ) -> tuple[list[Path], np.ndarray, list[str]]:
    """Write the set into ``folder``: (paths, group label with -1 = distractor, kind).

    The photos are shuffled once (seed 0) and halved; ``split`` picks the half, so that
    thresholds chosen on split 0 can be checked on photos they never saw."""
    rng = np.random.default_rng(0)
    nets = sorted((DATA / "imagenet-samples").glob("*.JPEG"))
    nets = [nets[i] for i in rng.permutation(len(nets))][split::2]
    classes = sorted(p for p in (DATA / "tf_flowers5").iterdir() if p.is_dir())
    by_class = {c.name: sorted(c.glob("*.jpg")) for c in classes}
    for name in by_class:
        by_class[name] = [by_class[name][i]
                          for i in rng.permutation(len(by_class[name]))][split::2]
    entries: list[tuple[Path, str, int]] = []
    g = 0
    for src in nets[:imagenet]:
        entries += [(p, k, g) for p, k in write_group(folder, g, src)]
        g += 1
    per_class = -(-flowers // len(classes))
    taken = 0
    for photos in by_class.values():
        for src in photos[:per_class]:
            if taken == flowers:
                break
            entries += [(p, k, g) for p, k in write_group(folder, g, src)]
            g += 1
            taken += 1
    # Same-class distractors: the next photos of the same classes, round robin.
    rounds = zip(*(ph[per_class:] for ph in by_class.values()), strict=False)
    pool = [p for photos in rounds for p in photos]
    for j, src in enumerate(pool[:same_class]):
        target = folder / f"s{j:03d}_{src.parent.name}{src.suffix.lower()}"
        target.write_bytes(src.read_bytes())
        entries.append((target, "same_class", -1))
    rest = nets[imagenet:]
    for j, src in enumerate(rest[:crop_pairs]):
        entries += [(p, k, -1) for p, k in crop_pair(folder, j, src)]
    for j, src in enumerate(rest[crop_pairs:crop_pairs + others]):
        target = folder / f"d{j:03d}{src.suffix.lower()}"
        target.write_bytes(src.read_bytes())
        entries.append((target, "other", -1))
    return ([e[0] for e in entries], np.array([e[2] for e in entries]),
            [e[1] for e in entries])


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


def groups_at(vectors: np.ndarray, score: str, thresholds, k: int = 10) -> list[list[list[int]]]:
    from mobilevec.embedding.dedup import Scorer, group_graph, knn_graph

    scorer = Scorer.fit(score, vectors)
    graph = knn_graph(vectors, scorer, k, "exact")
    return [group_graph(graph, vectors, scorer, float(t)) for t in thresholds]


def mobilevec_sweep(vectors: np.ndarray, score: str, labels: np.ndarray,
                    thresholds: np.ndarray) -> list[dict]:
    truth = true_pairs(labels)
    return [{"threshold": round(float(t), 3), **prf(group_pairs(groups), truth)}
            for t, groups in zip(thresholds, groups_at(vectors, score, thresholds),
                                 strict=True)]


def per_kind_recall(groups: list[list[int]], labels: np.ndarray, kinds: list[str]) -> dict:
    """For each transform: the share of copies grouped with their original; for each
    distractor kind: the share that joined some group (should be 0)."""
    where = {i: n for n, g in enumerate(groups) for i in g}
    out: dict[str, list[int]] = {}
    originals = {int(labels[i]): i for i, k in enumerate(kinds) if k == "original"}
    for i, kind in enumerate(kinds):
        if kind == "original":
            continue
        if labels[i] >= 0:
            o = originals[int(labels[i])]
            hit = i in where and where.get(o) == where[i]
        else:
            hit = i in where
        out.setdefault(kind, []).append(int(hit))
    return {k: round(float(np.mean(v)), 3) for k, v in out.items()}


def small_collections(vectors: np.ndarray, labels: np.ndarray, rule, trials: int = 20,
                      groups: int = 5, distractors: int = 10, seed: int = 1) -> dict:
    """The default rule on small random sub-collections (a centred score's mean is then
    that of a few dozen images): mean and worst precision / recall."""
    rng = np.random.default_rng(seed)
    ids = sorted(set(labels.tolist()) - {-1})
    lonely = np.nonzero(labels == -1)[0]
    ps, rs = [], []
    for _ in range(trials):
        chosen = rng.choice(ids, groups, replace=False)
        rows = np.concatenate([np.nonzero(np.isin(labels, chosen))[0],
                               rng.choice(lonely, distractors, replace=False)])
        [found] = groups_at(vectors[rows], rule.score, [rule.threshold])
        m = prf(group_pairs(found), true_pairs(labels[rows]))
        ps.append(m["precision"])
        rs.append(m["recall"])
    return {"trials": trials, "images": int(len(rows)), "precision_mean": round(np.mean(ps), 4),
            "precision_min": round(min(ps), 4), "recall_mean": round(np.mean(rs), 4),
            "recall_min": round(min(rs), 4)}


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
    at99 = max(ok, key=lambda r: (r["recall"], r["precision"])) if ok else None
    return {"best_f1": top, "recall_at_p99": at99["recall"] if at99 else 0.0,
            "threshold_at_p99": at99["threshold"] if at99 else None}


def embed(model: str, weights: Path, paths: list[Path]) -> tuple[np.ndarray, float, str]:
    import mobilevec

    emb = mobilevec.embedder(model, weights=weights)
    t0 = time.perf_counter()
    result = emb.embed_files(paths, draft=True)  # as `mobilevec embed` decodes by default
    if result.errors:
        raise SystemExit(f"failed to embed: {result.errors[:3]}")
    return result.vectors, time.perf_counter() - t0, emb.backend


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--imagenet", type=int, default=30)
    ap.add_argument("--flowers", type=int, default=20)
    ap.add_argument("--same-class", type=int, default=40)
    ap.add_argument("--crop-pairs", type=int, default=15)
    ap.add_argument("--others", type=int, default=40)
    ap.add_argument("--split", type=int, choices=(0, 1), default=0,
                    help="which half of the photos the set is drawn from (0: the calibration "
                         "set; 1: the held-out set, no photo in common)")
    ap.add_argument("--models", default="v3,v2")
    ap.add_argument("--json", help="write every row here")
    ap.add_argument("--vectors", help="also save the vectors, labels and kinds (.npz)")
    args = ap.parse_args(argv)
    report: dict = {"split": args.split, "transforms": TRANSFORMS, "methods": {}, "per_kind": {},
                    "small_collections": {}}
    saved: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths, labels, kinds = build_set(Path(tmp), args.imagenet, args.flowers,
                                         args.same_class, args.crop_pairs, args.others,
                                         split=args.split)
        report.update(images=len(paths), groups=int(labels.max()) + 1,
                      distractors=int((labels == -1).sum()),
                      true_pairs=len(true_pairs(labels)))
        print(f"{len(paths)} images: {report['groups']} groups of 8, {report['distractors']} "
              f"distractors; {report['true_pairs']} duplicate pairs", flush=True)
        thresholds = np.round(np.arange(0.0, 0.991, 0.01), 3)
        for key in args.models.split(","):
            model, weights = MODELS[key]
            if not weights.exists():
                print(f"skip {key}: {weights} missing")
                continue
            vectors, seconds, backend = embed(model, weights, paths)
            print(f"{key}: embedded in {seconds:.1f} s on {backend}", flush=True)
            saved[key] = vectors
            for score in ("cosine", "centred"):
                rows = mobilevec_sweep(vectors, score, labels, thresholds)
                report["methods"][f"mobilevec {key} {score}"] = {"sweep": rows, **best(rows)}
            from mobilevec.models.registry import get_config

            rule = get_config(model).dedup
            [found] = groups_at(vectors, rule.score, [rule.threshold])
            default = {"threshold": rule.threshold,
                       **prf(group_pairs(found), true_pairs(labels))}
            report["methods"][f"mobilevec {key} default ({rule.describe()})"] = {
                "sweep": [default], **best([default])}
            report["per_kind"][key] = per_kind_recall(found, labels, kinds)
            report["small_collections"][key] = small_collections(vectors, labels, rule)
            old = {"threshold": 0.95, **single_linkage(vectors, labels, 0.95)}
            report["methods"][f"mobilevec {key} before (single linkage, cosine >= 0.95)"] = {
                "sweep": [old], **best([old])}
        try:
            rows, seconds = phash_sweep(paths, labels, range(0, 33, 1))
            report["methods"]["imagehash pHash (Hamming <= t)"] = {"sweep": rows, **best(rows),
                                                                   "seconds": round(seconds, 1)}
        except ImportError:
            print("skip pHash: imagehash not installed (pip install 'mobilevec[bench]')")
        try:
            import imagededup  # noqa: F401
            report["imagededup_cnn"] = "imagededup imports; its CNN method is not wired here"
        except ImportError:
            report["imagededup_cnn"] = "not run: imagededup is not installed"
    print("\n| method | best F1 (P / R at t) | recall at P >= 0.99 (t) |")
    print("|---|---|---|")
    for name, m in report["methods"].items():
        b = m["best_f1"]
        print(f"| {name} | {b['f1']:.3f} ({b['precision']:.3f} / {b['recall']:.3f} at "
              f"{b['threshold']}) | {m['recall_at_p99']:.3f} ({m['threshold_at_p99']}) |")
    for key, kinds_ in report["per_kind"].items():
        print(f"{key} default, share grouped with the original / distractors in a group: "
              f"{kinds_}")
    for key, s in report["small_collections"].items():
        print(f"{key} default on {s['trials']} collections of {s['images']} images: "
              f"precision {s['precision_mean']} (min {s['precision_min']}), recall "
              f"{s['recall_mean']} (min {s['recall_min']})")
    print(report["imagededup_cnn"])
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    if args.vectors:
        np.savez(args.vectors, labels=labels, kinds=np.array(kinds), **saved)
    return 0


if __name__ == "__main__":
    sys.exit(main())
