"""The long fuzz run: ``python fuzz/run.py [--cases 10000] [--seed 0] [--jobs 2] [FORMAT ...]``.

Runs fuzz/harness.py over every format (or those named), splitting the cases of each
format over ``--jobs`` processes, and prints one summary line per format plus every
failing case (its description and how it ended). Failing mutants are kept under
``--keep`` (default ``fuzz-failures/``, ignored by git) to replay one with ``--case N``.
The counts of the last full run are recorded in docs/security.md.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import harness  # noqa: E402
import seeds  # noqa: E402


def _part(args: tuple[str, int, int, int, str]) -> harness.Report:
    fmt, start, count, seed, keep = args
    harness.env_ready()
    return harness.run(fmt, count, seed, start=start, keep=Path(keep))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("formats", nargs="*", default=list(seeds.FORMATS))
    parser.add_argument("--cases", type=int, default=10_000, help="mutants per format")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--case", type=int, help="run only this case (replay)")
    parser.add_argument("--keep", default=str(HERE.parent / "fuzz-failures"))
    args = parser.parse_args()
    Path(args.keep).mkdir(parents=True, exist_ok=True)
    bad = 0
    for fmt in args.formats:
        if args.case is not None:
            parts = [(fmt, args.case, 1, args.seed, args.keep)]
        else:
            step = -(-args.cases // args.jobs)
            parts = [(fmt, s, min(step, args.cases - s), args.seed, args.keep)
                     for s in range(0, args.cases, step)]
        with multiprocessing.get_context("fork").Pool(len(parts)) as pool:
            reports = pool.map(_part, parts)
        total = harness.Report(fmt)
        for r in reports:
            total.cases += r.cases
            total.kinds.update(r.kinds)
            total.failures += r.failures
            total.max_cpu = max(total.max_cpu, r.max_cpu)
            total.max_rss_growth = max(total.max_rss_growth, r.max_rss_growth)
            total.seconds = max(total.seconds, r.seconds)
        print(harness.summary(total), flush=True)
        for index, description, outcome in total.failures:
            print(f"  case {index}: {outcome.kind} <- {description}\n    {outcome.detail}")
        bad += len(total.failures)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
