"""Export (folded graph, ONNX, OpenVINO, int8) and the inference engines.

References are the torch module itself (run in float64 where the comparison must isolate
the folding) and independent computations (hashlib for the metadata hash, hand-made
broken inputs for the failure paths). Timing lives in benchmarks/engines.py, not here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from calibrated import calibrated_variables, structured_images
from shared_paths import V2_NPY, V3_TFLITE, require

import mobilevec
from mobilevec.cli.app import main
from mobilevec.export import export, fuse, onnx_model
from mobilevec.export.fused import FusedConv
from mobilevec.export.torch_fused import FusedModule
from mobilevec.formats.detect import Weights

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

V2, V3 = "mobilenet_v2_100_224", "mobilenet_v3_small_075_224"
TOL = 1e-4


def _randomize_batch_norm(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random BN statistics and affine terms, so that folding BN is not a no-op."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return model


@pytest.fixture(scope="module")
def real_models() -> dict[str, mobilevec.MobileNet]:
    return {V2: mobilevec.create(V2, weights=require(V2_NPY), trainable=False),
            V3: mobilevec.create(V3, weights=require(V3_TFLITE), trainable=False)}


def _session(proto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(proto.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def _torch(model, x: np.ndarray, dtype=torch.float32) -> np.ndarray:
    model = model.to(dtype)
    try:
        with torch.no_grad():
            return model(torch.from_numpy(x).to(dtype)).double().numpy()
    finally:
        model.float()


# --- the folded graph ----------------------------------------------------------------
@pytest.mark.parametrize("name", [V2, V3, "mobilenet_v3_large_minimalistic_100_224"])
def test_folded_network_computes_the_module_in_float64(name):
    model = _randomize_batch_norm(mobilevec.create(name, trainable=False))
    net = fuse(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in FusedModule(net).modules())
    x = np.random.default_rng(1).random((2, 3, 224, 224), dtype=np.float32)
    folded = FusedModule(net).double()
    with torch.no_grad():
        got = folded(torch.from_numpy(x).double()).numpy()
    # float32 storage of the folded weights is the only difference left
    np.testing.assert_allclose(got, _torch(model, x, torch.float64), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("name", [V2, V3])
def test_first_conv_centres_its_input_so_the_scaling_fold_is_exact_at_the_border(
        real_models, name):
    """TF pads the *scaled* image with 0 (= input 0.5): folding the scaling into weights
    and bias alone, with zero pads of the unscaled input, is right inside the image and
    wrong at the bottom/right border, which constant images expose."""
    model = real_models[name]
    net = fuse(model)
    first = net.layers[0]
    assert isinstance(first, FusedConv) and first.input_offset == -0.5
    assert first.pads == (0, 0, 1, 1)  # 224 -> 112 with a 3x3 stride-2 'SAME' conv
    # 2w(x - 0.5) + b == 2w x + (b - Σw) away from the pads
    uncentred = dataclasses.replace(first, input_offset=0.0,
                                    bias=first.bias - 0.5 * first.weight.sum(axis=(1, 2, 3)))
    wrong = dataclasses.replace(net, layers=(uncentred, *net.layers[1:]))
    for value in (0.0, 1.0):
        x = np.full((1, 3, 224, 224), value, np.float32)
        reference = _torch(model, x, torch.float64)
        with torch.no_grad():
            right = FusedModule(net).double()(torch.from_numpy(x).double()).numpy()
            bad = FusedModule(wrong).double()(torch.from_numpy(x).double()).numpy()
        assert np.abs(right - reference).max() < 2e-5
        assert np.abs(bad - reference).max() > 1e-3  # the test can tell a wrong fold


# --- ONNX ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", [V2, V3])
@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_export_matches_the_torch_module_on_real_weights(real_models, name, batch):
    model = real_models[name]
    session = _session(onnx_model(model))
    x = np.random.default_rng(batch).random((batch, 3, 224, 224), dtype=np.float32)
    got = session.run(None, {"images": x})[0]
    assert got.shape == (batch, model.num_features) and got.dtype == np.float32
    np.testing.assert_allclose(got, _torch(model, x), atol=TOL, rtol=0)


@pytest.mark.parametrize("name", [V2, V3])
def test_onnx_export_is_exact_at_the_border_on_constant_images(real_models, name):
    model = real_models[name]
    session = _session(onnx_model(model))
    x = np.stack([np.zeros((3, 224, 224), np.float32), np.ones((3, 224, 224), np.float32)])
    # against float64 torch: two float32 computations would each add their own rounding
    np.testing.assert_allclose(session.run(None, {"images": x})[0],
                               _torch(model, x, torch.float64), atol=TOL, rtol=0)


@pytest.mark.parametrize("name", mobilevec.list_models())
def test_onnx_export_of_every_model_matches_its_torch_module(name):
    # A cheap size, and random weights calibrated like trained ones (folding is no no-op).
    weights = Weights(calibrated_variables(name, seed=0), "safetensors", Path("calibrated"))
    model = mobilevec.create(name, weights=weights, trainable=False)
    x = structured_images(2, 96, seed=1)
    got = _session(onnx_model(model, image_size=96)).run(None, {"images": x})[0]
    want = _torch(model, x)
    scale = np.abs(want).max()
    assert scale > 1e-3 and np.abs(want[0] - want[1]).max() > 1e-3 * scale  # not vacuous
    assert np.abs(got - want).max() <= TOL * max(1.0, scale)


def test_onnx_graph_has_static_pads_no_batch_norm_and_a_dynamic_batch(real_models):
    proto = onnx_model(real_models[V3])
    assert proto.opset_import[0].version >= 17
    ops = [n.op_type for n in proto.graph.node]
    assert "BatchNormalization" not in ops and "Sub" not in ops
    assert "Pad" not in ops  # every pad is a Conv attribute
    first = proto.graph.node[0]  # the folded scaling's -0.5, a constant
    constants = {i.name: i for i in proto.graph.initializer}
    assert first.op_type == "Add" and proto.graph.node[1].op_type == "Conv"
    assert onnx.numpy_helper.to_array(constants[first.input[1]]) == np.float32(-0.5)
    strided = [n for n in proto.graph.node if n.op_type == "Conv"
               and next(a for a in n.attribute if a.name == "strides").ints[0] == 2]
    assert strided and all(next(a for a in n.attribute if a.name == "pads").ints
                           for n in strided[1:])
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 224, 224]


def test_onnx_metadata_names_model_contract_and_source_hash(real_models, tmp_path):
    path = tmp_path / "v3.onnx"
    export(real_models[V3], path, source=V3_TFLITE)
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["mobilevec.model"] == V3
    assert props["mobilevec.num_features"] == "1024"
    assert "[0, 1]" in props["mobilevec.input"] and props["mobilevec.layout"] == "NCHW"
    assert props["mobilevec.source_sha256"] == hashlib.sha256(V3_TFLITE.read_bytes()).hexdigest()


def test_source_hash_of_a_directory_covers_names_and_contents(tmp_path):
    from mobilevec.export import source_sha256

    (tmp_path / "a.npy").write_bytes(b"one")
    (tmp_path / "b.npy").write_bytes(b"two")
    expected = hashlib.sha256("".join(
        f"{n}\t{hashlib.sha256(c).hexdigest()}\n" for n, c in (("a.npy", b"one"),
                                                             ("b.npy", b"two"))).encode())
    assert source_sha256(tmp_path) == expected.hexdigest()
    (tmp_path / "b.npy").write_bytes(b"changed")
    assert source_sha256(tmp_path) != expected.hexdigest()


def test_nhwc_export_takes_channels_last_input(real_models):
    model = real_models[V2]
    x = np.random.default_rng(5).random((2, 3, 224, 224), dtype=np.float32)
    got = _session(onnx_model(model, nhwc=True)).run(
        None, {"images": np.ascontiguousarray(x.transpose(0, 2, 3, 1))})[0]
    np.testing.assert_allclose(got, _torch(model, x), atol=TOL, rtol=0)


def test_export_at_another_image_size_fixes_other_pads():
    model = _randomize_batch_norm(mobilevec.create(V3, trainable=False))
    x = np.random.default_rng(6).random((2, 3, 193, 193), dtype=np.float32)
    got = _session(onnx_model(model, image_size=193)).run(None, {"images": x})[0]
    np.testing.assert_allclose(got, _torch(model, x), atol=TOL, rtol=0)


# --- engines -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def engines(real_models) -> dict[str, mobilevec.engines.Engine]:
    from mobilevec.engines import available_backends

    made = {}
    for backend in available_backends():
        made[backend] = mobilevec.create(V3, weights=V3_TFLITE, backend=backend, threads=2)
    return made


def test_every_engine_keeps_the_torch_call_contract(engines, real_models):
    model = real_models[V3]
    x = np.random.default_rng(7).random((9, 3, 224, 224), dtype=np.float32)
    reference = _torch(model, x)
    assert {"torch-fused", "onnxruntime", "litert"} <= set(engines)
    for backend, engine in engines.items():
        assert engine.num_features == 1024 and engine.config.name == V3, backend
        out = engine(x)  # 9 images: sharded over the per-core sessions/streams
        assert isinstance(out, np.ndarray) and out.dtype == np.float32, backend
        np.testing.assert_allclose(out, reference, atol=TOL, rtol=0, err_msg=backend)
        one = engine(torch.from_numpy(x[:1]))  # one image: the latency path
        assert isinstance(one, torch.Tensor) and one.shape == (1, 1024), backend
        np.testing.assert_allclose(one.numpy(), reference[:1], atol=TOL, rtol=0)
        assert engine(np.zeros((0, 3, 224, 224), np.float32)).shape == (0, 1024)


def test_engines_refuse_wrong_shapes_and_types(engines):
    engine = engines["onnxruntime"]
    with pytest.raises(ValueError, match=r"\(N, 3, 224, 224\)"):
        engine(np.zeros((1, 224, 224, 3), np.float32))
    with pytest.raises(ValueError, match="224"):
        engine(np.zeros((1, 3, 160, 160), np.float32))
    with pytest.raises(TypeError, match="numpy array or a torch tensor"):
        engine([[0.0]])


def test_create_keeps_the_trainable_module_by_default_and_auto_picks_a_backend():
    from mobilevec.engines import AUTO_ORDER, available_backends

    assert isinstance(mobilevec.create(V3), mobilevec.MobileNet)
    engine = mobilevec.create(V3, backend="auto")
    assert engine.backend == next(b for b in AUTO_ORDER if b in available_backends())
    with pytest.raises(ValueError, match="unknown backend"):
        mobilevec.create(V3, backend="tensorrt")
    with pytest.raises(TypeError, match="engine backends"):
        mobilevec.create(V3, threads=2)


def test_missing_runtime_names_the_pip_extra(monkeypatch):
    from mobilevec.engines import MissingBackendError

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now raises ImportError
    with pytest.raises(MissingBackendError, match=r"pip install 'mobilevec\[onnx\]'"):
        mobilevec.create(V3, backend="onnxruntime")


def test_load_engine_runs_exported_files_and_refuses_foreign_ones(real_models, tmp_path):
    from mobilevec.engines import load_engine

    model = real_models[V2]
    x = np.random.default_rng(8).random((2, 3, 224, 224), dtype=np.float32)
    path = tmp_path / "v2.onnx"
    export(model, path, source=V2_NPY)
    np.testing.assert_allclose(load_engine(path)(x), _torch(model, x), atol=TOL, rtol=0)

    foreign = tmp_path / "foreign.onnx"
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    onnx.save(proto, str(foreign))
    with pytest.raises(ValueError, match="not a mobilevec export"):
        load_engine(foreign)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ValueError, match="not a loadable ONNX model"):
        load_engine(garbage)


def test_openvino_export_matches_the_torch_module(real_models, tmp_path):
    pytest.importorskip("openvino")
    from mobilevec.engines import load_engine

    model = real_models[V2]
    written = export(model, tmp_path / "v2.xml", "openvino", source=V2_NPY)
    assert [p.suffix for p in written] == [".xml", ".bin"]
    engine = load_engine(written[0], threads=2)
    assert engine.backend == "openvino" and engine.config.name == V2
    x = np.random.default_rng(9).random((2, 3, 224, 224), dtype=np.float32)
    np.testing.assert_allclose(engine(x), _torch(model, x), atol=TOL, rtol=0)


# --- TFLite / LiteRT ------------------------------------------------------------------
def _litert(data: bytes, x_nchw: np.ndarray) -> np.ndarray:
    interpreter_module = pytest.importorskip("ai_edge_litert.interpreter")
    it = interpreter_module.Interpreter(model_content=data, num_threads=2)
    index = it.get_input_details()[0]["index"]
    it.resize_tensor_input(index, [len(x_nchw), *x_nchw.shape[2:], 3])
    it.allocate_tensors()
    it.set_tensor(index, np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1)))
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


@pytest.mark.parametrize("name", [V2, V3])
def test_tflite_export_matches_the_torch_module_on_real_weights(real_models, name):
    pytest.importorskip("tflite")
    from mobilevec.export import tflite_bytes

    model = real_models[name]
    data = tflite_bytes(model, source=None)
    assert data[4:8] == b"TFL3"
    x = np.random.default_rng(10).random((3, 3, 224, 224), dtype=np.float32)
    x = np.concatenate([x, np.zeros((1, 3, 224, 224), np.float32)])  # border: the input offset
    np.testing.assert_allclose(_litert(data, x), _torch(model, x, torch.float64),
                               atol=TOL, rtol=0)


def test_tflite_export_uses_builtin_ops_and_carries_metadata(real_models):
    tflite = pytest.importorskip("tflite")
    from mobilevec.engines.litert_engine import read_tflite_metadata
    from mobilevec.export import tflite_bytes

    data = tflite_bytes(real_models[V3], source=V3_TFLITE)
    graph = tflite.Model.GetRootAsModel(data, 0)
    codes = {graph.OperatorCodes(i).BuiltinCode() for i in range(graph.OperatorCodesLength())}
    ops = tflite.BuiltinOperator
    assert codes == {ops.CONV_2D, ops.DEPTHWISE_CONV_2D, ops.HARD_SWISH, ops.MEAN, ops.MUL,
                     ops.ADD, ops.RESHAPE}  # no PAD: TFLite's SAME is TF's
    sub = graph.Subgraphs(0)
    first = graph.OperatorCodes(sub.Operators(0).OpcodeIndex()).BuiltinCode()
    assert first == ops.ADD  # the folded scaling's -0.5
    assert list(sub.Tensors(sub.Inputs(0)).ShapeSignatureAsNumpy()) == [-1, 224, 224, 3]
    meta = read_tflite_metadata(data)
    assert meta["model"] == V3 and meta["layout"] == "NHWC"
    assert meta["source_sha256"] == hashlib.sha256(V3_TFLITE.read_bytes()).hexdigest()


def test_litert_engine_refuses_the_official_tflite_as_its_own(tmp_path):
    pytest.importorskip("ai_edge_litert")
    from mobilevec.engines import load_engine

    with pytest.raises(ValueError, match="not a mobilevec export"):
        load_engine(require(V3_TFLITE))
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="not a mobilevec export"):
        load_engine(garbage)


# --- int8 ----------------------------------------------------------------------------
def test_int8_export_stays_close_and_skips_broken_calibration_images(real_models, data_dir,
                                                                     tmp_path):
    from mobilevec.data.images import load_array
    from mobilevec.export import calibration_paths

    photos = sorted((data_dir / "imagenet-samples").glob("*.JPEG"))[::10][:24]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(photos[0].read_bytes()[:300])  # truncated JPEG
    skipped: list[tuple[Path, str]] = []
    model = real_models[V2]
    proto = onnx_model(model, calibration=[*photos, broken], skipped=skipped)
    assert [p for p, _ in skipped] == [broken]
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["mobilevec.precision"] == "int8"
    assert props["mobilevec.calibration_images"] == str(len(photos))
    assert float(props["mobilevec.int8_cosine_mean"]) < 0.9999
    assert any(n.op_type == "QuantizeLinear" for n in proto.graph.node)
    flowers = calibration_paths(data_dir / "tf_flowers5", 16)
    x = np.stack([load_array(p, 224) for p in flowers])
    got = _session(proto).run(None, {"images": x})[0]
    ref = _torch(model, x)
    cosine = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    # The real V2 weights lose cosine ~0.977 when every block is int8 (their first
    # inverted-residual block alone costs ~0.015): the export keeps such blocks in fp32.
    kept = props["mobilevec.int8_fp32_blocks"].split(",")
    assert kept and all(kept)
    assert float(props["mobilevec.int8_cosine_mean"]) >= 0.985
    assert cosine.mean() > 0.985  # on photos it was not calibrated on
    assert np.abs(got - ref).max() > 1e-3  # really quantized, not fp32 passed through
    def block(node):
        return node.name.split("/")[0]

    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    float_weights = {block(n) for n in convs if not n.input[1].endswith("DequantizeLinear_Output")}
    assert float_weights == set(kept), "exactly the kept blocks run fp32 weights"


def test_int8_without_decodable_images_fails_clearly(real_models, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ValueError, match="none of the calibration images"):
        onnx_model(real_models[V3], calibration=[bad])


# --- command line --------------------------------------------------------------------
def test_cli_export_writes_a_model_that_the_engines_run(tmp_path, capsys):
    out = tmp_path / "v3.onnx"
    rc = main(["export", "--model", V3, "--weights", str(require(V3_TFLITE)), "-o", str(out)])
    assert rc == 0 and out.is_file()
    assert "(N, 1024)" in capsys.readouterr().out
    from mobilevec.engines import load_engine

    assert load_engine(out).config.name == V3


def test_cli_export_tflite_runs_on_litert(tmp_path, capsys, data_dir):
    pytest.importorskip("ai_edge_litert")
    pytest.importorskip("tflite")
    out = tmp_path / "v2.tflite"
    rc = main(["export", "--model", V2, "--weights", str(require(V2_NPY)), "--format",
               "tflite", "-o", str(out)])
    assert rc == 0 and "NHWC" in capsys.readouterr().out
    from mobilevec.engines import load_engine

    engine = load_engine(out, threads=2)
    assert engine.backend == "litert" and engine.num_features == 1280
    capsys.readouterr()
    assert main(["export", "--model", V2, "--format", "tflite", "--int8", "--calibrate",
                 str(data_dir / "flowers5"), "-o", str(out)]) == 1
    assert "not tflite" in capsys.readouterr().err


def test_cli_export_int8_needs_a_calibration_folder(tmp_path, capsys):
    assert main(["export", "--model", V3, "--int8", "-o", str(tmp_path / "x.onnx")]) == 1
    assert "--calibrate" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["export", "--model", V3, "--int8", "--calibrate", str(empty),
                 "-o", str(tmp_path / "x.onnx")]) == 1
    assert "no images" in capsys.readouterr().err


def test_cli_backends_lists_runtimes(capsys):
    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime" in out and "<- default (fp32, exact)" in out


@pytest.mark.parametrize("backend", ["onnxruntime", "torch-fused"])
def test_cli_embed_on_an_engine_gives_the_torch_vectors(tmp_path, data_dir, backend):
    from mobilevec.embedding.store import read_store

    weights = require(V3_TFLITE)
    photos = sorted((data_dir / "imagenet-samples").glob("*.JPEG"))[:6]
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in photos:
        (folder / p.name).symlink_to(p)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    outputs = {}
    for name in ("torch", backend):
        out = tmp_path / f"{name}.npy"
        assert main(["embed", str(folder), "--model", V3, "--weights", str(weights), "-o",
                     str(out), "--backend", name, "--quiet", "--workers", "0",
                     "--batch-size", "4"]) == 3  # the broken file is reported, not fatal
        stored = read_store(out)
        outputs[name] = dict(zip(stored.paths, stored.vectors, strict=True))
    assert sorted(outputs["torch"]) == sorted(outputs[backend]) and len(outputs["torch"]) == 6
    for path, vector in outputs["torch"].items():
        np.testing.assert_allclose(outputs[backend][path], vector, rtol=0, atol=TOL)
