"""Embedding pipeline throughput: whole pipeline vs decode-only vs model-only, and peak RSS.

Not a test. Makes a corpus of JPEGs of mixed sizes from ../shared/data (re-encoded and
resized, into a temporary folder, never the repo), then measures in one run, with the same
decode workers:

- decode-only: files → preprocessed arrays (``mobilevec.embedding.batching.decode_files``);
- model-only: the model on ready-made input batches;
- pipeline: ``mobilevec embed``'s library call (decode ∥ inference → Parquet parts);
- peak RSS of a fresh ``mobilevec embed`` process (plus its decode workers) on N and 10 x N
  images: flat when nothing grows with the number of images.

    python benchmarks/embed_pipeline.py [--images 1000] [--model mobilenet_v3_small_075_224]
                                        [--weights FILE] [--workers N] [--backend B] [--rss]

Re-run on a quiet machine for figures worth quoting: other processes' load shows up as
lower and noisier rates (the script prints the load average it started with).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
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
from mobilevec.embedding.batching import (  # noqa: E402
    DEFAULT_BATCH_SIZE,
    Preprocessing,
    decode_files,
    default_workers,
    flush_denormals,
)
from mobilevec.embedding.embedder import embedder  # noqa: E402
from mobilevec.embedding.pipeline import run_embed, store_meta  # noqa: E402

DATA = Path(os.environ.get("MOBILEVEC_DATA_DIR", REPO.parent / "shared" / "data"))
WEIGHTS = Path(os.environ.get("MOBILEVEC_WEIGHTS_DIR", REPO.parent / "shared" / "weights"))
DEFAULT_WEIGHTS = {"mobilenet_v3_small_075_224": "mobilenet_v3_small_075_224_embedder.tflite",
                   "mobilenet_v2_100_224": "mobilenet_v2_1.0_224_tfslim_npy"}
# Long sides of the corpus: thumbnails to camera-ish sizes (most photos on disk are larger
# than the 224-pixel model input).
LONG_SIDES = (128, 256, 400, 500, 640, 800, 1024, 1600)


def make_corpus(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` JPEGs from the shared photos, resized to mixed sizes and re-encoded."""
    sources = sorted(p for sub in ("imagenet-samples", "tf_flowers5", "flowers5")
                     for p in (DATA / sub).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    if not sources:
        sys.exit(f"no photos under {DATA}; set MOBILEVEC_DATA_DIR")
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    cache: dict[Path, Image.Image] = {}
    for i in range(count):
        source = sources[i % len(sources)]
        if source not in cache:
            cache.clear()  # keep one decoded source at a time
            cache[source] = Image.open(source).convert("RGB")
        image = cache[source]
        side = int(rng.choice(LONG_SIDES))
        scale = side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        path = folder / f"{i:06d}.jpg"
        image.resize(size, Image.BILINEAR).save(path, quality=int(rng.integers(70, 96)))
        paths.append(path)
    return paths


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("nan")


def decode_only(paths, prep, workers, threads) -> float:
    start = time.perf_counter()
    n = sum(1 for _, array, _ in decode_files(paths, prep, workers=workers, threads=threads)
            if array is not None)
    return rate(n, time.perf_counter() - start)


@torch.inference_mode()
def model_only(model, count: int, batch: np.ndarray) -> float:
    """The model (torch module or engine) on one batch of decoded corpus photos, run until
    ``count`` images, as the pipeline runs it: batches start on the CPU, denormals flushed
    per batch (see ``mobilevec.embedding.batching.flush_denormals``), vectors come back to
    the CPU."""
    parameters = getattr(model, "parameters", None)
    device = next(parameters()).device if parameters else "cpu"
    x = torch.from_numpy(batch)
    flush_denormals()
    model(x.to(device)).cpu()  # warm-up
    start = time.perf_counter()
    done = 0
    while done < count:
        flush_denormals()
        model(x[:min(len(x), count - done)].to(device)).cpu()
        done += len(x)
    return rate(count, time.perf_counter() - start)


def pipeline(module, runner, paths, prep, workers, threads, batch_size, weights, out: Path,
             prefetch: int | None = None) -> float:
    """``runner``: ``module`` itself or an engine running its weights."""
    meta = store_meta(module, prep, weights=weights)
    summary = run_embed(runner, paths, out, prep=prep, meta=meta, batch_size=batch_size,
                        workers=workers, threads=threads, prefetch=prefetch)
    assert summary.ok == len(paths), summary
    return rate(summary.ok, summary.seconds)


def peak_rss_mb(folder: Path, model: str, weights: Path, workers: int, out: Path) -> dict:
    """Peak RSS (MiB) of a fresh `mobilevec embed` process and of its largest worker."""
    code = ("import resource, sys, json; from mobilevec.cli import main; rc = main(sys.argv[1:]);"
            "print(json.dumps({'rc': rc, 'main': resource.getrusage(resource.RUSAGE_SELF)"
            ".ru_maxrss / 1024, 'workers': resource.getrusage(resource.RUSAGE_CHILDREN)"
            ".ru_maxrss / 1024}))")
    argv = ["embed", str(folder), "--model", model, "--weights", str(weights), "-o", str(out),
            "--workers", str(workers), "--quiet"]
    result = subprocess.run([sys.executable, "-c", code, *argv], cwd=REPO, capture_output=True,
                            text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--model", default="mobilenet_v3_small_075_224")
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--threads", action="store_true", help="decode in threads")
    parser.add_argument("--device", default="cpu", help="torch device for the model")
    parser.add_argument("--backend", default="auto",
                        help="inference backend, as `mobilevec embed --backend` (auto: the "
                             "default engine; torch, onnxruntime, openvino, ...)")
    parser.add_argument("--precision", default="fp32", help="fp32, bf16 or int8")
    parser.add_argument("--engine-threads", type=int,
                        help="engine threads and streams (default: physical cores)")
    parser.add_argument("--torch-threads", type=int, help="torch intra-op threads")
    parser.add_argument("--prefetch", type=int, nargs="+", default=[None],
                        help="files decoded ahead of the model (default: 4 batches); several "
                             "values: one pipeline run each")
    parser.add_argument("--rounds", type=int, default=3,
                        help="measure decode, model and pipeline this many times, alternating")
    parser.add_argument("--corpus", type=Path,
                        help="make the corpus in (or reuse it from) this folder")
    parser.add_argument("--exact-decode", action="store_true", help="no JPEG draft mode")
    parser.add_argument("--rss", action="store_true",
                        help="also measure peak RSS on N and 10 x N images (slow: makes 10 x N "
                             "files)")
    args = parser.parse_args()
    weights = args.weights or WEIGHTS / DEFAULT_WEIGHTS[args.model]
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    print(f"load average at start: {os.getloadavg()[0]:.2f} (cores: {os.cpu_count()}); "
          f"torch threads {torch.get_num_threads()}, decode workers {args.workers}")
    with tempfile.TemporaryDirectory(prefix="mobilevec-bench-") as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        folder = args.corpus or tmp / "corpus"
        paths = sorted(folder.glob("*.jpg"))[:args.images]
        if len(paths) < args.images:
            paths = make_corpus(folder, args.images)
        megapixels = np.mean([np.prod(Image.open(p).size) for p in paths]) / 1e6
        print(f"corpus: {len(paths)} JPEGs, mean {megapixels:.2f} MP, made in "
              f"{time.perf_counter() - t:.0f} s")
        module = create(args.model, weights=weights, trainable=False).to(args.device)
        size = (module.config.image_size,) * 2
        runner = embedder(args.model, weights, backend=args.backend, precision=args.precision,
                          device=args.device, threads=args.engine_threads,
                          calibration=paths).runner
        prep = Preprocessing(size=size, draft=not args.exact_decode)
        first = [a for _, a, _ in decode_files(paths[:args.batch_size], prep, workers=1)]
        batch = np.stack([a for a in first if a is not None])
        # Rounds alternate the three measures, so that a slow moment of a shared machine
        # shows in one round's figures together rather than in one measure only.
        decode, infer, runs = [], [], {p: [] for p in args.prefetch}
        for r in range(args.rounds):
            decode.append(decode_only(paths, prep, args.workers, args.threads))
            infer.append(model_only(runner, len(paths), batch))
            for prefetch in args.prefetch:
                runs[prefetch].append(pipeline(
                    module, runner, paths, prep, args.workers, args.threads, args.batch_size,
                    weights, tmp / f"r{r}p{prefetch}.parquet", prefetch))
        where = (args.device if args.backend == "torch" else
                 f"{getattr(runner, 'backend', 'torch')} {args.precision} (CPU, "
                 f"{args.engine_threads or 'default'} engine threads)")
        print(f"\n{args.model} on {where}, {len(paths)} images, batch "
              f"{args.batch_size}, draft {'off' if args.exact_decode else 'on'}, "
              f"{args.workers} decode {'threads' if args.threads else 'processes'}, "
              f"{args.rounds} rounds")
        print("| measure | img/s, median (range) | median / min(decode, model) | per round |\n"
              "|---|---:|---:|---|")
        floor = [min(d, m) for d, m in zip(decode, infer, strict=True)]
        rows = [("decode only", decode), ("model only", infer)]
        rows += [(f"whole pipeline{f', prefetch {p}' if p else ''}", full)
                 for p, full in runs.items()]
        rows += [("1 / (1/decode + 1/model): both sharing the cores",
                  [1 / (1 / d + 1 / m) for d, m in zip(decode, infer, strict=True)])]
        lowest = min(np.median(decode), np.median(infer))
        for name, values in rows:
            per_round = " / ".join(f"{v / f:.2f}" for v, f in zip(values, floor, strict=True))
            print(f"| {name} | {np.median(values):.1f} ({min(values):.1f}-{max(values):.1f}) | "
                  f"{np.median(values) / lowest:.2f} | {per_round} |")
        print(f"load average at the end: {os.getloadavg()[0]:.2f}")
        if args.rss:
            big = make_corpus(tmp / "corpus10", 10 * args.images, seed=1)
            for folder, count in ((paths[0].parent, len(paths)), (tmp / "corpus10", len(big))):
                rss = peak_rss_mb(folder, args.model, weights, args.workers,
                                  tmp / f"rss{count}.parquet")
                print(f"peak RSS, {count} images: main {rss['main']:.0f} MiB, largest "
                      f"worker {rss['workers']:.0f} MiB (exit {rss['rc']})")


if __name__ == "__main__":
    main()
