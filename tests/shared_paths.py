"""Where the real weights and photos live (never in the repo)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WEIGHTS_DIR = Path(os.environ.get("MOBILEVEC_WEIGHTS_DIR", REPO.parent / "shared" / "weights"))
DATA_DIR = Path(os.environ.get("MOBILEVEC_DATA_DIR", REPO.parent / "shared" / "data"))

V3_TFLITE = WEIGHTS_DIR / "mobilenet_v3_small_075_224_embedder.tflite"
V2_NPY = WEIGHTS_DIR / "mobilenet_v2_1.0_224_tfslim_npy"


def require(path: Path) -> Path:
    """Skip (with the reason shown in the summary) when a real artifact is absent."""
    if not path.exists():
        pytest.skip(f"real artifact not found at {path}; set MOBILEVEC_WEIGHTS_DIR / "
                    "MOBILEVEC_DATA_DIR or place ../shared beside the repo")
    return path


def _native_int8_reason() -> str | None:
    from mobilevec.engines.default import check_precision
    from mobilevec.errors import MobilevecError

    try:
        check_precision("int8")
    except MobilevecError as e:
        return str(e)
    return None


# int8 accuracy is a property of the CPU's kernels: without VNNI/AMX, OpenVINO and ONNX
# Runtime multiply u8 x s8 pairs with AVX2's saturating 16-bit sums (vpmaddubsw), so the
# measured cosines are those of a CPU that `--precision int8` refuses anyway.
_INT8_REASON = _native_int8_reason()
needs_native_int8 = pytest.mark.skipif(
    _INT8_REASON is not None,
    reason=f"int8 accuracy needs native int8 dot products: {_INT8_REASON}")
