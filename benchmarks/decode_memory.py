"""Peak memory of decoding one large image, the embedding path against a full-size decode.

Not a test. Writes a PNG (or JPEG) of ``--megapixels`` in a temporary folder, then, each in
a fresh process, decodes it to a 224 x 224 model input two ways and reports the peak
resident memory the decode added (``ru_maxrss`` after, minus before):

- ``load_array``: what ``mobilevec embed`` runs in a decode worker (steps 3-5 on the
  pixels the resize reads, no full-size RGB or numpy copy);
- ``full``: ``resize_array(load_rgb(...))``, a full RGB array first (mobilevec 0.1's path).

    python benchmarks/decode_memory.py [--megapixels 169] [--mode RGB|RGBA|L] [--format png]
                                       [--orientation 1..8]

The figures go in docs/benchmarks.md ("Decode memory").
"""

from __future__ import annotations

import argparse
import json
import math
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

_CHILD = r"""
import json, resource, sys, time
import numpy as np
from mobilevec.data.images import MAX_PIXELS, load_array, load_rgb, resize_array
path, how = sys.argv[1], sys.argv[2]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
limit = 10**10
if how == "load_array":
    x = load_array(path, 224, max_pixels=limit)
else:
    x = resize_array(load_rgb(path, max_pixels=limit), 224)
seconds = time.perf_counter() - start
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"how": how, "peak_mib": (after - before) / 1024, "seconds": seconds,
                  "checksum": float(np.asarray(x, np.float64).sum())}))
"""


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def write_png(path: Path, width: int, height: int, mode: str, orientation: int) -> None:
    """A smooth gradient PNG written row by row (never the whole image in memory)."""
    channels, color = {"L": (1, 0), "RGB": (3, 2), "RGBA": (4, 6)}[mode]
    compress = zlib.compressobj(1)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color, 0, 0, 0)))
        if orientation != 1:
            from PIL import Image

            exif = Image.Exif()
            exif[0x0112] = orientation
            f.write(_chunk(b"eXIf", exif.tobytes()[6:]))  # without the "Exif\0\0" header
        gradient = bytes(x * 255 // max(1, width - 1) for x in range(width))
        line = b"\x00" + bytes(v for v in gradient for _ in range(channels))
        idat = bytearray()
        for _ in range(height):  # every row alike: the decode costs the same
            idat += compress.compress(line)
            if len(idat) > 1 << 20:
                f.write(_chunk(b"IDAT", bytes(idat)))
                idat.clear()
        idat += compress.flush()
        f.write(_chunk(b"IDAT", bytes(idat)))
        f.write(_chunk(b"IEND", b""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megapixels", type=float, default=169)
    parser.add_argument("--mode", default="RGB", choices=("RGB", "RGBA", "L"))
    parser.add_argument("--orientation", type=int, default=1)
    args = parser.parse_args()
    side = int(math.sqrt(args.megapixels * 1e6))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "large.png"
        start = time.perf_counter()
        write_png(path, side, side, args.mode, args.orientation)
        print(f"{side} x {side} {args.mode} PNG ({side * side / 1e6:.0f} MP, "
              f"{path.stat().st_size / 2**20:.1f} MiB) written in "
              f"{time.perf_counter() - start:.1f} s", file=sys.stderr)
        results = []
        for how in ("load_array", "full"):
            out = subprocess.run([sys.executable, "-c", _CHILD, str(path), how],
                                 capture_output=True, text=True, check=True)
            results.append(json.loads(out.stdout))
            print(json.dumps(results[-1]))
        a, b = results
        assert a["checksum"] == b["checksum"], "the two paths must give the same input"
        print(f"peak: {a['peak_mib']:.0f} MiB (load_array) vs {b['peak_mib']:.0f} MiB (full), "
              f"{b['peak_mib'] / a['peak_mib']:.2f}x")


if __name__ == "__main__":
    main()
