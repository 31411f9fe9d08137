"""What parsing a Keras ``.h5`` in a sandboxed child process costs a normal load.

Times, side by side in one run, (a) the raw read in this process
(``_h5_child.read_raw`` + the name mapping: what ``read_keras_h5`` did before the
sandbox) and (b) ``read_keras_h5`` (child process with limits), on the Keras 2 fixtures
and, for scale, on a Keras file of the full V2 1.0 written with h5py from the real .npy
weights when ../shared is present. Prints medians; figures go to docs/security.md.

    .venv/bin/python benchmarks/h5_sandbox.py [--repeat 15]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from mobilevec.formats import _h5_child  # noqa: E402
from mobilevec.formats.keras_h5 import read_keras_h5, variables_from_raw  # noqa: E402


def in_process(path: Path) -> dict:
    layers, arrays, keras3 = _h5_child.read_raw(str(path))
    return variables_from_raw(path, layers, arrays, keras3)


def median_seconds(fn, path: Path, repeat: int) -> float:
    fn(path)  # warm the page cache and imports
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn(path)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def full_v2_file(folder: Path) -> Path | None:
    """A Keras-2-layout .h5 of the real V2 1.0 weights (no top), if ../shared has them."""
    import h5py

    from mobilevec.formats.npy import read_npy_dir

    npy = REPO.parent / "shared" / "weights" / "mobilenet_v2_1.0_224_tfslim_npy"
    if not npy.is_dir():
        return None
    variables = read_npy_dir(npy)
    path = folder / "v2_100.h5"
    with h5py.File(path, "w") as f:
        layers = []
        for i, (_name, array) in enumerate(sorted(variables.items())):
            layer = f"layer_{i}"
            layers.append(layer.encode())
            group = f.create_group(layer)
            group.attrs["weight_names"] = [f"{layer}/kernel:0".encode()]
            group.create_dataset(f"{layer}/kernel:0", data=array)
        f.attrs["layer_names"] = layers
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    fixtures = REPO / "tests" / "fixtures"
    with tempfile.TemporaryDirectory() as tmp:
        files = [fixtures / "keras2_mobilenet_v2_035_no_top.h5",
                 fixtures / "keras2_mobilenet_v3_small_075_no_top.h5"]
        big = full_v2_file(Path(tmp))
        print("file | size | in-process (ms) | sandboxed (ms) | cost (ms)")
        for path in files + ([big] if big else []):
            raw = None
            if path == big:  # synthetic layer names: time only the raw read in-process
                def raw(p):
                    return _h5_child.read_raw(str(p))
            inproc = median_seconds(raw or in_process, path, args.repeat)
            if path == big:
                def sandboxed(p):
                    return __import__("mobilevec.formats.keras_h5", fromlist=["x"]) \
                        .read_raw_sandboxed(p)
            else:
                sandboxed = read_keras_h5
            boxed = median_seconds(sandboxed, path, args.repeat)
            print(f"{path.name} | {path.stat().st_size / 1e6:.1f} MB | {inproc * 1e3:.0f} | "
                  f"{boxed * 1e3:.0f} | {(boxed - inproc) * 1e3:+.0f}")


if __name__ == "__main__":
    main()
