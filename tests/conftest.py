"""Shared test settings: where the real weights and photos live (never in the repo)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from _http_server import LocalServer
from shared_paths import DATA_DIR, V2_NPY, V3_TFLITE, require

# One engine and download cache for the whole session, never the user's: the default
# engine writes its exported graphs there (tests that need an empty one use cache_root).
os.environ["MOBILEVEC_CACHE"] = tempfile.mkdtemp(prefix="mobilevec-test-cache-")


@pytest.fixture(scope="session")
def v3_tflite() -> Path:
    return require(V3_TFLITE)


@pytest.fixture(scope="session")
def v2_npy() -> Path:
    return require(V2_NPY)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return require(DATA_DIR)


@pytest.fixture
def server():
    """An HTTP server on 127.0.0.1 serving what the test puts in ``server.files``."""
    with LocalServer() as srv:
        yield srv


@pytest.fixture
def cache_root(tmp_path, monkeypatch) -> Path:
    """An empty download cache for this test, online, with no proxy in the way."""
    root = tmp_path / "cache"
    monkeypatch.setenv("MOBILEVEC_CACHE", str(root))
    for var in ("MOBILEVEC_OFFLINE", "MOBILEVEC_HUB_MIRROR", "http_proxy", "https_proxy",
                "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    return root
