"""Head to head: mobilevec's fastest engines against the best peers, alternating in one process.

Not a test. `engines.py` runs every case in a fresh process, one after the other, so on a
shared machine a slow minute lands on whichever case ran then (its cases moved by ±30 %
between runs). Here the contenders of one seed model are built once, in one process, and
timed in alternating rounds (each round: ``--runs`` batch-32 runs of each case, in turn).
The ratio of each round compares figures taken seconds apart; the median over rounds is
the figure to quote for the ≥ 1.2x goal of issue 7. Cases run exactly as in `engines.py`
(peers with their runtimes' defaults, as a default user calls them).

    python benchmarks/head_to_head.py [--model mobilenet_v3_small_075_224] [--rounds 15]
        [--cases mv-ov-bf16,mv-ov-int8,peer-ov,peer-ort,peer-litert]

Case ids are those of `engines.py` (its CASES table). mobilevec's int8 engines are exported
first (calibration as in `engines.py`, about a minute per file).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engines import (  # noqa: E402
    BATCH,
    CASES,
    SEEDS,
    _build,
    _int8_files,
    _physical_cores,
    _plain_onnx,
)

SETTLE_S = 0.3
DEFAULT_CASES = {
    "mobilenet_v2_100_224": "mv-ov-int8,mv-ov-bf16,peer-ov,peer-ort",
    "mobilenet_v3_small_075_224": "mv-ov-bf16,mv-ov-int8,peer-ov,peer-ort,peer-litert",
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mobilenet_v3_small_075_224", choices=sorted(SEEDS))
    p.add_argument("--cases", help="comma-separated case ids (default: per model)")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--runs", type=int, default=5, help="batch-32 runs per case per round")
    args = p.parse_args()
    os.environ.setdefault("KERAS_BACKEND", "torch")
    cases = (args.cases or DEFAULT_CASES[args.model]).split(",")
    labels = {case: label for case, label, _, _ in CASES}
    unknown = [c for c in cases if c not in labels]
    if unknown:
        p.error(f"unknown case ids {unknown}; see CASES in engines.py")
    threads = _physical_cores()
    x = np.random.default_rng(0).random((BATCH, 3, 224, 224), dtype=np.float32)
    print(f"load average at start: {os.getloadavg()[0]:.2f}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="mobilevec-h2h-") as tmp:
        files = {"plain": str(Path(tmp) / f"{args.model}_plain.onnx")}
        _plain_onnx(args.model, Path(files["plain"]))
        if any("int8" in c for c in cases):
            files.update(_int8_files(args.model, Path(tmp))[0])
        runners = {}
        for case in cases:
            fn = _build(case, args.model, files, threads)
            if fn is None:
                print(f"skipping {case}: not applicable or not installed", file=sys.stderr)
                continue
            for _ in range(3):
                fn(x)
            runners[case] = fn
        rates: dict[str, list[float]] = {case: [] for case in runners}
        for _ in range(args.rounds):
            for case, fn in runners.items():
                # let the previous case's thread pool stop spinning (ONNX Runtime's threads
                # spin after a run and would take the cores from the next case)
                time.sleep(SETTLE_S)
                start = time.perf_counter()
                for _ in range(args.runs):
                    fn(x)
                rates[case].append(args.runs * BATCH / (time.perf_counter() - start))
    peers = [c for c in runners if c.startswith("peer-")]
    ours = [c for c in runners if not c.startswith("peer-")]
    # the best peer of each round: the ratio asks "faster than every peer, at that moment"
    best_peer = [max(rates[c][r] for c in peers) for r in range(args.rounds)] if peers else []
    print(f"\n{args.model}, batch {BATCH}, {threads} threads, {args.rounds} alternating "
          f"rounds of {args.runs} runs; load average at the end {os.getloadavg()[0]:.2f}")
    print("| case | img/s median (q25–q75) | × best peer of the round, median (q25–q75) |")
    print("|---|---:|---:|")
    for case in [*ours, *peers]:
        values = np.array(rates[case])
        row = (f"| {labels[case]} | {np.median(values):.0f} "
               f"({np.percentile(values, 25):.0f}–{np.percentile(values, 75):.0f}) |")
        if case in ours and best_peer:
            ratio = values / np.array(best_peer)
            row += (f" **{np.median(ratio):.2f}** ({np.percentile(ratio, 25):.2f}–"
                    f"{np.percentile(ratio, 75):.2f}) |")
        else:
            row += " |"
        print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
