"""One identity for weights: stores, exports, run folders and the cache record the same
sha256 of the artifact, computed here by hand with hashlib (docs/architecture.md)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from train_data import class_tree

import mobilevec
from mobilevec.embedding.batching import Preprocessing
from mobilevec.embedding.pipeline import store_meta
from mobilevec.hub import cache
from mobilevec.training.train import TrainConfig, train

FIXTURES = Path(__file__).parent / "fixtures"
NAME = "mobilenet_v2_035_224"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _lines_sha(base: Path, files: list[Path]) -> str:
    lines = "".join(f"{p.relative_to(base).as_posix()}\t{_sha(p)}\n" for p in sorted(files))
    return hashlib.sha256(lines.encode()).hexdigest()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """A file, a folder and a checkpoint prefix of one model, with their expected sha256."""
    root = tmp_path_factory.mktemp("weights")
    folder = shutil.copytree(FIXTURES / "tf_ckpt_v2_035", root / "ckpt")
    model = mobilevec.create(NAME, weights=folder)
    file = mobilevec.save(model, root / "v2_035.safetensors")
    prefix = folder / "model.ckpt"
    return {
        "file": (file, _sha(file)),
        "folder": (folder, _lines_sha(folder, list(folder.iterdir()))),
        "checkpoint prefix": (prefix, _lines_sha(folder, [*folder.glob("model.ckpt.*")])),
    }


@pytest.mark.parametrize("kind", ["file", "folder", "checkpoint prefix"])
def test_store_export_and_run_folder_record_the_same_sha256(artifacts, tmp_path, kind):
    pytest.importorskip("onnx")
    from mobilevec.export import export, exported_metadata

    weights, expected = artifacts[kind]
    model = mobilevec.create(NAME, weights=weights, trainable=False)
    assert store_meta(model, Preprocessing(), weights=weights)["weights_sha256"] == expected
    written = export(model, tmp_path / "m.onnx", source=weights)
    assert exported_metadata(written[0])["source_sha256"] == expected
    result = train(model, class_tree(tmp_path / "data", per_class=3), tmp_path / "run",
                   TrainConfig(epochs=1), weights_source=str(weights), workers=0)
    assert result.run.spec()["weights_sha256"] == expected


def test_the_cache_records_the_same_sha256_for_a_file(artifacts, tmp_path, monkeypatch):
    monkeypatch.setenv("MOBILEVEC_CACHE", str(tmp_path / "cache"))
    file, expected = artifacts["file"]
    entry = cache.import_file(file, "https://example.invalid/v2_035.safetensors")
    assert entry.sha256 == expected
    model = mobilevec.create(NAME, weights=entry.file, trainable=False)
    assert store_meta(model, Preprocessing(), weights=entry.file)["weights_sha256"] == expected
