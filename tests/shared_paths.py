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
