"""Fast by default: the default engine gives the torch module's vectors, its cache is
verified and rebuilt when bad, a warm start imports no torch, and missing runtimes or
precisions are named (issue 15). Timing lives in benchmarks/pipelines.py."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import mobilevec
from mobilevec.cli.app import main
from mobilevec.data.images import load_array
from mobilevec.embedding.store import read_store
from mobilevec.engines import cache as engine_cache
from mobilevec.engines import default as default_engine
from mobilevec.errors import MissingBackendError, PrecisionError

pytest.importorskip("openvino")

V2, V3 = "mobilenet_v2_100_224", "mobilenet_v3_small_075_224"
TOL = 1e-4


@pytest.fixture(scope="module")
def photos(data_dir) -> list[Path]:
    return sorted((data_dir / "imagenet-samples").glob("*.JPEG"))[:12]


@pytest.fixture
def seeds(v2_npy, v3_tflite) -> dict[str, Path]:
    return {V2: v2_npy, V3: v3_tflite}


def _torch_vectors(name: str, weights: Path, paths: list[Path]) -> np.ndarray:
    model = mobilevec.create(name, weights=weights, trainable=False, backend="torch")
    x = torch.from_numpy(np.stack([load_array(p, 224, draft=True) for p in paths]))
    with torch.no_grad():
        return model(x).numpy()


@pytest.mark.parametrize("name", [V2, V3])
def test_default_embed_gives_the_torch_modules_vectors(tmp_path, seeds, photos, name):
    out = tmp_path / "v.parquet"
    assert main(["embed", *map(str, photos), "--model", name, "--weights", str(seeds[name]),
                 "-o", str(out), "--quiet"]) == 0
    stored = read_store(out)
    assert stored.meta["precision"] == "fp32"
    want = _torch_vectors(name, seeds[name], [Path(p) for p in stored.paths])
    assert np.abs(stored.vectors - want).max() <= TOL


def _entry(cache: Path) -> Path:
    (folder,) = [p for p in (cache / "engines").iterdir() if not p.name.startswith(".")]
    return folder


def _embed_twice(tmp_path, v3_tflite, photos, damage) -> tuple[np.ndarray, np.ndarray]:
    cache = tmp_path / "cache"
    x = np.stack([load_array(p, 224) for p in photos[:4]])
    first = default_engine.cached_engine(V3, v3_tflite, cache=cache)(x)
    damage(_entry(cache))
    second = default_engine.cached_engine(V3, v3_tflite, cache=cache)(x)
    return first, second


@pytest.mark.parametrize("damage", ["model_bytes", "entry_json", "other_key", "blob",
                                    "missing_file"])
def test_a_bad_engine_cache_entry_is_rebuilt_never_used(tmp_path, v3_tflite, photos, damage):
    def spoil(folder: Path) -> None:
        if damage == "model_bytes":
            data = bytearray((folder / "model.bin").read_bytes())
            data[len(data) // 2] ^= 0xFF  # one weight changes: same size, other vectors
            (folder / "model.bin").write_bytes(bytes(data))
        elif damage == "entry_json":
            (folder / "entry.json").write_text("{not json")
        elif damage == "other_key":  # stale: written for another runtime version
            meta = json.loads((folder / "entry.json").read_text())
            meta["key"]["runtime_version"] = "0.0"
            (folder / "entry.json").write_text(json.dumps(meta))
        elif damage == "blob":
            for blob in (folder / "compiled").glob("*.blob"):
                blob.write_bytes(b"garbage" + blob.read_bytes()[7:])
        else:
            (folder / "model.xml").unlink()

    first, second = _embed_twice(tmp_path, v3_tflite, photos, spoil)
    assert np.abs(first - second).max() <= TOL  # the damaged files were not used
    want = _torch_vectors(V3, v3_tflite, photos[:4])
    assert np.abs(second - want).max() <= TOL


def test_concurrent_first_runs_build_one_good_entry(tmp_path, v3_tflite, photos):
    cache = tmp_path / "cache"
    # A build killed half-way leaves a temporary folder; it must not matter.
    (cache / "engines" / ".deadbeef.tmp-1-00000000").mkdir(parents=True)
    script = textwrap.dedent(f"""
        import numpy as np
        from mobilevec.data.images import load_array
        from mobilevec.engines.default import cached_engine
        x = np.stack([load_array(p, 224) for p in {[str(p) for p in photos[:2]]!r}])
        v = cached_engine({V3!r}, {str(v3_tflite)!r}, cache={str(cache)!r})(x)
        print(float(v.sum()))
    """)
    runs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(3)]
    sums = []
    for run in runs:
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
        sums.append(float(out.split()[-1]))
    assert max(sums) - min(sums) <= 1e-3
    entries = [p for p in (cache / "engines").iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1 and (entries[0] / "entry.json").is_file()


def _no_torch(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    check = code + "\nimport sys\nassert 'torch' not in sys.modules, 'torch was imported'\n"
    return subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                          timeout=300, env=env)


def test_import_help_and_a_warm_embed_import_no_torch(tmp_path, v3_tflite, photos):
    assert _no_torch("import mobilevec").returncode == 0
    helped = _no_torch("from mobilevec.cli.app import main\n"
                       "import contextlib, io\n"
                       "with contextlib.suppress(SystemExit), contextlib.redirect_stdout("
                       "io.StringIO()):\n    main(['--help'])")
    assert helped.returncode == 0, helped.stderr
    cache = tmp_path / "cache"
    args = [*map(str, photos[:3]), "--model", V3, "--weights", str(v3_tflite), "--quiet"]
    env = {**__import__("os").environ, "MOBILEVEC_CACHE": str(cache)}
    cold = subprocess.run([sys.executable, "-m", "mobilevec.cli", "embed", *args, "-o",
                           str(tmp_path / "a.parquet")], capture_output=True, text=True,
                          env=env, timeout=300)
    assert cold.returncode == 0, cold.stderr
    warm = _no_torch(f"from mobilevec.cli.app import main\n"
                     f"assert main({['embed', *args, '-o', str(tmp_path / 'b.parquet')]!r}) "
                     "== 0", env)
    assert warm.returncode == 0, warm.stderr
    a, b = read_store(tmp_path / "a.parquet"), read_store(tmp_path / "b.parquet")
    assert np.array_equal(a.vectors, b.vectors)


def test_a_warm_bf16_embed_imports_no_torch(tmp_path, v3_tflite, photos):
    # the precision run also measures its cosine to fp32 (measure_precision): that must
    # stay torch-free too (it imported the int8 exporter, and torch with it: 0.8 s)
    try:
        default_engine.check_precision("bf16")
    except PrecisionError as e:
        pytest.skip(f"this CPU does not run bf16: {e}")
    env = {**__import__("os").environ, "MOBILEVEC_CACHE": str(tmp_path / "cache")}
    args = ["embed", *map(str, photos[:3]), "--model", V3, "--weights", str(v3_tflite),
            "--precision", "bf16", "--quiet"]
    cold = subprocess.run([sys.executable, "-m", "mobilevec.cli", *args, "-o",
                           str(tmp_path / "a.parquet")], capture_output=True, text=True,
                          env=env, timeout=300)
    assert cold.returncode == 0, cold.stderr
    warm = _no_torch(f"from mobilevec.cli.app import main\n"
                     f"assert main({[*args, '-o', str(tmp_path / 'b.parquet')]!r}) == 0", env)
    assert warm.returncode == 0, warm.stderr
    assert read_store(tmp_path / "b.parquet").meta["quality"]["cosine_mean"] > 0.9


def test_without_an_engine_runtime_the_torch_module_runs_and_says_so_once(
        tmp_path, monkeypatch, caplog, v3_tflite, photos):
    for module in ("openvino", "onnxruntime"):
        monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    monkeypatch.setattr(default_engine, "_hinted", False)
    for run in range(2):
        out = tmp_path / f"v{run}.parquet"
        assert main(["embed", *map(str, photos[:3]), "--model", V3, "--weights",
                     str(v3_tflite), "-o", str(out), "--quiet"]) == 0
    hints = [r for r in caplog.records if "mobilevec[openvino]" in r.getMessage()]
    assert len(hints) == 1
    want = _torch_vectors(V3, v3_tflite, [Path(p) for p in read_store(out).paths])
    assert np.abs(read_store(out).vectors - want).max() <= TOL


def test_a_missing_runtime_for_an_asked_backend_or_precision_names_the_extra(
        tmp_path, monkeypatch, capsys, v3_tflite, photos):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingBackendError, match=r"mobilevec\[onnx\]"):
        mobilevec.embedder(V3, v3_tflite, backend="onnxruntime")
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(MissingBackendError, match=r"mobilevec\[openvino\]"):
        mobilevec.embedder(V3, v3_tflite, precision="bf16")
    assert main(["embed", str(photos[0]), "--model", V3, "--weights", str(v3_tflite),
                 "-o", str(tmp_path / "v.parquet"), "--precision", "int8", "--quiet"]) == 1
    assert "mobilevec[openvino]" in capsys.readouterr().err


def test_a_cpu_without_native_bf16_or_int8_is_told_so(monkeypatch):
    monkeypatch.setattr(default_engine, "_cpu_flags", lambda: {"sse2", "avx2"})
    for precision in ("bf16", "int8"):
        with pytest.raises(PrecisionError, match="no native"):
            default_engine.check_precision(precision)
    default_engine.check_precision("fp32")


def test_bf16_is_opt_in_and_recorded_with_its_measured_cosine(tmp_path, v3_tflite, photos):
    if default_engine._cpu_flags() is not None and not (
            default_engine._cpu_flags() & set(default_engine._BF16_FLAGS)):
        pytest.skip("this CPU has no native bf16")
    out = tmp_path / "v.parquet"
    assert main(["embed", *map(str, photos), "--model", V3, "--weights", str(v3_tflite),
                 "-o", str(out), "--precision", "bf16", "--quiet"]) == 0
    stored = read_store(out)
    quality = stored.meta["quality"]
    assert stored.meta["precision"] == "bf16" and quality["images"] == len(photos)
    want = _torch_vectors(V3, v3_tflite, [Path(p) for p in stored.paths])
    cosine = np.sum(stored.vectors * want, 1) / (
        np.linalg.norm(stored.vectors, axis=1) * np.linalg.norm(want, axis=1))
    assert 0.97 < cosine.mean() < 0.99999  # bf16: close, not exact
    assert abs(quality["cosine_mean"] - cosine.mean()) < 0.005  # what it recorded is true
    # An fp32 run cannot resume a bf16 store.
    assert main(["embed", *map(str, photos), "--model", V3, "--weights", str(v3_tflite),
                 "-o", str(out), "--quiet"]) == 1


def test_engine_key_covers_weights_size_precision_and_runtime():
    base = engine_cache.EngineKey(V3, "a" * 64, (224, 224), "fp32", "openvino", "1")
    variants = [engine_cache.EngineKey(V3, "b" * 64, (224, 224), "fp32", "openvino", "1"),
                engine_cache.EngineKey(V3, "a" * 64, (192, 192), "fp32", "openvino", "1"),
                engine_cache.EngineKey(V3, "a" * 64, (224, 224), "bf16", "openvino", "1"),
                engine_cache.EngineKey(V3, "a" * 64, (224, 224), "fp32", "openvino", "2"),
                engine_cache.EngineKey(V2, "a" * 64, (224, 224), "fp32", "openvino", "1")]
    assert len({base.digest(), *(v.digest() for v in variants)}) == 6
