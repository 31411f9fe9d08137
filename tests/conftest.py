"""Shared test settings: where the real weights and photos live (never in the repo)."""

from __future__ import annotations

from pathlib import Path

import pytest
from shared_paths import DATA_DIR, V2_NPY, V3_TFLITE, require


@pytest.fixture(scope="session")
def v3_tflite() -> Path:
    return require(V3_TFLITE)


@pytest.fixture(scope="session")
def v2_npy() -> Path:
    return require(V2_NPY)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return require(DATA_DIR)
