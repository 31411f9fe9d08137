"""Warm ``mobilevec.load`` (converted safetensors in the cache) vs a cold parse of the
original artifact, for both seed models, measured in one run.

    .venv/bin/python benchmarks/hub_load.py [--weights-dir ../shared/weights] [--repeats 7]

Cases per model: "parse" = ``mobilevec.create(name, weights=original)`` (what every load
would cost without the cache); "cold load" = ``mobilevec.load`` of a tarball of the original
into an empty cache (sha256, unpack, parse, convert); "warm load" = the same call again.
Times are medians of ``--repeats`` interleaved runs, in milliseconds.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

import mobilevec

SEEDS = [("mobilenet_v2_100_224", "mobilenet_v2_1.0_224_tfslim_npy"),
         ("mobilenet_v3_small_075_224", "mobilenet_v3_small_075_224_embedder.tflite")]


def _tarball(artifact: Path, target: Path) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(artifact, arcname=artifact.name)
        manifest = artifact.with_name(artifact.name + ".MANIFEST.tsv")
        if manifest.exists():  # the .npy folder's manifest lives beside it
            tar.add(manifest, arcname=manifest.name)
    target.write_bytes(buf.getvalue())
    return target


def _ms(fn) -> float:
    start = time.perf_counter()
    fn()
    return 1000 * (time.perf_counter() - start)


def measure(name: str, artifact: Path, repeats: int) -> tuple[float, float, float]:
    """Median (parse, cold load, warm load) in ms; the three are interleaved so that load
    from other processes on a shared machine hits them alike."""
    parse, cold, warm = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        archive = _tarball(artifact, Path(tmp) / f"{name}.tar.gz")
        for i in range(repeats):
            cache = Path(tmp) / f"cache{i}"
            parse.append(_ms(lambda: mobilevec.create(name, weights=artifact)))
            cold.append(_ms(lambda c=cache: mobilevec.load(archive, model=name, cache=c)))
            warm.append(_ms(lambda c=cache: mobilevec.load(archive, model=name, cache=c)))
    return statistics.median(parse), statistics.median(cold), statistics.median(warm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights-dir", type=Path, default=Path(
        os.environ.get("MOBILEVEC_WEIGHTS_DIR", "../shared/weights")))
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    print(f"{'model':28} {'parse original':>15} {'cold load':>10} {'warm load':>10} "
          f"{'parse / warm':>13} {'cold / warm':>12}")
    for name, file in SEEDS:
        artifact = args.weights_dir / file
        if not artifact.exists():
            print(f"{name:28} skipped: {artifact} not found")
            continue
        parse, cold, warm = measure(name, artifact, args.repeats)
        print(f"{name:28} {parse:12.1f} ms {cold:7.1f} ms {warm:7.1f} ms "
              f"{parse / warm:12.2f}x {cold / warm:11.2f}x")


if __name__ == "__main__":
    main()
