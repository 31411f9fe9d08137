"""`mobilevec dedup` on a large synthetic store: wall time and peak memory.

Writes ``--rows`` (default 10^6) synthetic clustered 1024-d float16 vectors as a real
Parquet store of model ``mobilenet_v3_small_075_224`` (its calibrated rule applies): rows
around ``--clusters`` random centres (cosine about 0.7 to the centre, 0.5 between rows of
one cluster), and one planted near-duplicate (cosine about 0.99 to its source) for every
``--dup-every`` rows. Then runs ``mobilevec dedup STORE --index METHOD --json`` in a child
process with BLAS/OpenMP threads = ``--threads``, reporting its wall time, peak RSS
(ru_maxrss of the child) and the share of planted pairs found in a group. ``--new N`` then
appends N new rows (every second one a copy of the one before) and times ``dedup --new``.

    python benchmarks/dedup_scale.py --rows 1000000 --index buckets --new 1000 --dir /tmp/s
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

MODEL = "mobilenet_v3_small_075_224"
DIM = 1024


def _meta() -> dict:
    return {"model": MODEL, "fingerprint": "synthetic", "dim": DIM, "dtype": "float16",
            "normalize": False, "preprocessing": {}}


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def synthetic(rng, start: int, count: int, centres: np.ndarray, dup_every: int
              ) -> tuple[np.ndarray, list[int]]:
    """``count`` rows; returns them and the row numbers that copy the row before them."""
    which = rng.integers(0, len(centres), count)
    rows = _unit(centres[which] + 0.03 * rng.standard_normal((count, DIM), np.float32))
    copies = [i for i in range(1, count) if (start + i) % dup_every == 0]
    for i in copies:
        rows[i] = rows[i - 1] + 0.005 * rng.standard_normal(DIM, np.float32)
    return rows.astype(np.float16), [start + i for i in copies]


def write_store(out: Path, rows: int, clusters: int, dup_every: int, seed: int = 0,
                start: int = 0) -> list[int]:
    from mobilevec.embedding.store import VectorStore

    rng = np.random.default_rng(seed)
    centres = _unit(np.random.default_rng(1).standard_normal((clusters, DIM), np.float32))
    planted: list[int] = []
    step = 50_000
    for a in range(start, start + rows, step):
        count = min(step, start + rows - a)
        block, copies = synthetic(rng, a, count, centres, dup_every)
        planted += copies
        keys = [(f"/synthetic/{i:08d}.jpg", 1000 + i, i) for i in range(a, a + count)]
        with VectorStore.open(out, _meta()) as store:
            store.append(keys, block, [])
            store.finish(merge=False)
    return planted


def run_dedup(out: Path, index: str, threads: int, new: bool = False) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads)}
    argv = [sys.executable, "-m", "mobilevec.cli", "dedup", str(out), "--index", index,
            "--json"] + (["--new"] if new else [])
    t0 = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB -> GiB
    return {"seconds": round(seconds, 1), "peak_rss_gib_so_far": round(peak, 2),
            "result": json.loads(done.stdout)}


def found_share(result: dict, planted: list[int]) -> float:
    where = {}
    for group in result["groups"]:
        for image in group["images"]:
            where[int(Path(image["path"]).stem)] = group["group"]
    hits = [p in where and where.get(p - 1) == where[p] for p in planted]
    return round(float(np.mean(hits)), 4) if hits else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--clusters", type=int, default=20_000)
    ap.add_argument("--dup-every", type=int, default=100)
    ap.add_argument("--index", default="buckets")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new", type=int, default=0, help="then time dedup --new with N rows")
    ap.add_argument("--dir", type=Path, required=True, help="where the store is written")
    ap.add_argument("--json", help="write the report here")
    args = ap.parse_args(argv)
    out = args.dir / "synthetic.parquet"
    report: dict = {"rows": args.rows, "index": args.index, "threads": args.threads}
    t0 = time.perf_counter()
    planted = write_store(out, args.rows, args.clusters, args.dup_every)
    report["write_seconds"] = round(time.perf_counter() - t0, 1)
    print(f"wrote {args.rows} rows ({len(planted)} planted copies) in "
          f"{report['write_seconds']} s", flush=True)
    full = run_dedup(out, args.index, args.threads)
    report["dedup"] = {"seconds": full["seconds"], "peak_rss_gib": full["peak_rss_gib_so_far"],
                       "groups": len(full["result"]["groups"]),
                       "planted_found": found_share(full["result"], planted)}
    print(f"dedup: {report['dedup']}", flush=True)
    if args.new:
        more = write_store(out, args.new, args.clusters, 2, seed=7, start=args.rows)
        again = run_dedup(out, args.index, args.threads, new=True)
        report["dedup_new"] = {"rows": args.new, "seconds": again["seconds"],
                               "checked": again["result"]["checked"],
                               "planted_found": found_share(again["result"], more)}
        print(f"dedup --new: {report['dedup_new']}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
