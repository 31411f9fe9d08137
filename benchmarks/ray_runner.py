"""Ray runner vs local runner: the same images, the same store, img/s and overhead ratio.

Not a test. Makes the corpus of ``benchmarks/embed_pipeline.py`` (JPEGs of mixed sizes from
../shared/data, in a temporary folder), then embeds it into a fresh store with
``mobilevec.embedding.pipeline.run_embed`` (decode processes ∥ inference) and with
``mobilevec.embedding.ray_runner.run_ray_embed`` on a local Ray instance with as many CPUs as this
machine (one model actor per CPU), and checks that the two stores hold the same vectors.
The local runner runs twice: with torch's default threads (one per core, beside the decode
processes) and with one torch thread, as each Ray actor has.

    python benchmarks/ray_runner.py [--images 1000] [--model mobilenet_v3_small_075_224]
                                    [--weights FILE] [--repeat 2]

Ray's start (``ray.init``) is timed apart; the Ray run's time includes starting the actors
(each loads the model once) and committing the shards. The machine may be shared: the load
average it started with is printed.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from embed_pipeline import DEFAULT_WEIGHTS, WEIGHTS, make_corpus  # noqa: E402

from mobilevec import create  # noqa: E402
from mobilevec.embedding.batching import DEFAULT_BATCH_SIZE, Preprocessing, default_workers  # noqa: E402
from mobilevec.embedding.pipeline import run_embed, store_meta  # noqa: E402
from mobilevec.embedding.ray_runner import run_ray_embed  # noqa: E402
from mobilevec.embedding.store import read_store  # noqa: E402


def max_difference(a: Path, b: Path) -> float:
    x, y = read_store(a), read_store(b)
    rows = dict(zip(y.paths, y.vectors, strict=True))
    assert sorted(x.paths) == sorted(rows), "the stores hold different files"
    return max(float(np.abs(v - rows[p]).max()) for p, v in zip(x.paths, x.vectors, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--model", default="mobilenet_v3_small_075_224")
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each runner (median)")
    parser.add_argument("--corpus", type=Path, help="make the corpus in (or reuse it from) here")
    args = parser.parse_args()
    import ray

    weights = args.weights or WEIGHTS / DEFAULT_WEIGHTS[args.model]
    cores = default_workers()
    print(f"load average at start: {os.getloadavg()[0]:.2f} (cores: {cores}); ray "
          f"{ray.__version__}")
    with tempfile.TemporaryDirectory(prefix="mobilevec-ray-bench-") as tmp:
        tmp = Path(tmp)
        folder = args.corpus or tmp / "corpus"
        paths = sorted(folder.glob("*.jpg"))[:args.images]
        if len(paths) < args.images:
            paths = make_corpus(folder, args.images)
        model = create(args.model, weights=weights, trainable=False)
        prep = Preprocessing(size=(model.config.image_size,) * 2, draft=True)
        meta = store_meta(model, prep, weights=weights)
        local, local1, remote = [], [], []
        threads = torch.get_num_threads()
        for i in range(args.repeat):
            for torch_threads, times in ((threads, local), (1, local1)):
                torch.set_num_threads(torch_threads)
                s = run_embed(model, paths, tmp / f"local{i}-{torch_threads}.parquet",
                              prep=prep, meta=meta, batch_size=args.batch_size, workers=cores)
                assert s.ok == len(paths), s
                times.append(s.seconds)
        torch.set_num_threads(threads)
        t = time.perf_counter()
        ray.init("local", num_cpus=cores, include_dashboard=False, logging_level=logging.WARNING,
                 log_to_driver=False)
        started = time.perf_counter() - t
        try:
            for i in range(args.repeat):
                s = run_ray_embed(model, paths, tmp / f"ray{i}.parquet", prep=prep, meta=meta,
                                  batch_size=args.batch_size, num_workers=cores)
                assert s.ok == len(paths), s
                remote.append(s.seconds)
        finally:
            ray.shutdown()
        difference = max_difference(tmp / f"local0-{threads}.parquet", tmp / "ray0.parquet")
    n = len(paths)
    local_s, ray_s = statistics.median(local), statistics.median(remote)
    print(f"\n{args.model}, {n} JPEGs, batch {args.batch_size}, draft on, {cores} cores; "
          f"median of {args.repeat} runs each")
    best = min(local_s, statistics.median(local1))
    print("| runner | s | img/s | img/s per core | time ÷ local default | time ÷ best local |")
    print("|---|---:|---:|---:|---:|---:|")
    rows = [(f"local ({cores} decode processes + {threads} torch threads)", local_s),
            (f"local ({cores} decode processes + 1 torch thread)", statistics.median(local1)),
            (f"ray ({cores} actors × 1 CPU), Ray already started", ray_s),
            ("ray, including ray.init", ray_s + started)]
    for name, seconds in rows:
        print(f"| {name} | {seconds:.1f} | {n / seconds:.1f} | {n / seconds / cores:.1f} | "
              f"{seconds / local_s:.2f} | {seconds / best:.2f} |")
    print(f"\nray.init: {started:.1f} s; all runs (s): local {[round(x, 1) for x in local]}, "
          f"local 1 thread {[round(x, 1) for x in local1]}, ray {[round(x, 1) for x in remote]}; "
          f"max |ray - local| over the vectors: {difference:.2e}; load average at the end: "
          f"{os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
