"""The command line tried as a new user would (issue #20): what they type first, what they
mistype, what they pipe, and what they expect to find. Subprocesses where the shell
matters (pipes, tracebacks, exit status); ``main()`` in-process elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from shared_paths import REPO, V3_TFLITE, require
from train_data import class_tree

import mobilevec
from mobilevec._version import __version__
from mobilevec.cli.app import main

V3, V2 = "mobilenet_v3_small_075_224", "mobilenet_v2_100_224"
V2_HANDLE = "https://tfhub.dev/google/tf2-preview/mobilenet_v2/feature_vector/2"
CLI = [sys.executable, "-m", "mobilevec.cli"]


def run_cli(*args: str, env: dict | None = None, timeout: float = 300,
            **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          env=env, **kwargs)


def usage_error(argv: list[str], capsys) -> str:
    """The message of a usage error (exit 2) for ``argv``."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2, argv
    return capsys.readouterr().err


@pytest.fixture(scope="module")
def photos(tmp_path_factory, data_dir) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    found = sorted(p for p in (data_dir / "imagenet-samples").iterdir()
                   if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    for photo in found[:6]:
        shutil.copy(photo, folder / photo.name)
    return folder


# --- what users expect to find ----------------------------------------------------------
def test_version():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"mobilevec {__version__}"


@pytest.mark.parametrize("argv", [["list", "-v"], ["-v", "list"], ["cache", "list", "-v"],
                                  ["backends", "--verbose"], ["-v", "cache", "verify"]])
def test_verbose_before_or_after_the_command(argv):
    from mobilevec.cli.app import build_parser

    assert build_parser().parse_args(argv).verbose is True
    assert build_parser().parse_args([a for a in argv if a not in ("-v", "--verbose")]
                                     ).verbose is False
    assert run_cli(*argv).returncode == 0


def test_list_models_is_in_natural_order(capsys):
    names = mobilevec.list_models()
    assert names.index("mobilenet_v2_100_96") < names.index("mobilenet_v2_100_128") \
        < names.index("mobilenet_v2_100_224") < names.index("mobilenet_v2_130_96")
    from mobilevec.models.registry import MODELS

    assert sorted(names) == sorted(MODELS)  # the same names
    assert main(["list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [m["model"] for m in listed] == names
    assert next(m for m in listed if m["model"] == V3)["num_features"] == 1024
    assert main(["list"]) == 0
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert rows == names


def test_info_says_what_it_loaded(capsys, v3_tflite, v2_npy):
    assert main(["info", "--model", V3, "--weights", str(v3_tflite)]) == 0
    out = capsys.readouterr().out
    assert "format     tflite" in out and "folded into the convolutions" in out
    assert "classifier none" in out
    assert hashlib.sha256(v3_tflite.read_bytes()).hexdigest() in out
    assert main(["info", "--model", V2, "--weights", str(v2_npy), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    w = info["weights"]
    assert w["format"] == "npy" and not w["batch_norm_folded"] and w["classes"] is None
    rows = (v2_npy.with_name(v2_npy.name + ".MANIFEST.tsv")).read_text().splitlines()[1:]
    present = [r for r in rows if (v2_npy / r.split("\t")[0]).is_file()]
    assert w["variables"] == len(present) == 261  # the logits kernel is absent
    assert w["used"] == 260 and w["unused"] == 1  # the logits biases, without their kernel
    assert info["num_features"] == 1280 and info["model"] == V2
    assert main(["info", "--model", V3]) == 0
    assert "random initialisation" in capsys.readouterr().out


def test_backends_and_cache_have_json(capsys, cache_root):
    assert main(["backends", "--json"]) == 0
    backends = json.loads(capsys.readouterr().out)
    assert backends["default"] == "openvino" and {"bf16", "int8"} <= set(backends["precisions"])
    assert main(["cache", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"cache": str(cache_root), "entries": []}
    assert main(["cache", "verify", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["bad"] == 0


# --- what users mistype -----------------------------------------------------------------
def test_did_you_mean_a_flag_a_command_a_choice(capsys):
    assert "did you mean --json?" in usage_error(["list", "--jsn"], capsys)
    assert "did you mean --batch-size?" in usage_error(
        ["embed", "x.jpg", "-o", "v.parquet", "--model", V3, "--batch-sise", "8"], capsys)
    assert "did you mean 'embed'?" in usage_error(["embd"], capsys)
    assert "did you mean 'openvino'?" in usage_error(
        ["embed", "x.jpg", "-o", "v.parquet", "--model", V3, "--backend", "openvno"], capsys)


def test_did_you_mean_a_model_name(capsys):
    assert main(["info", "--model", "mobilenet_v3_small_75_224"]) == 1
    err = capsys.readouterr().err
    assert "did you mean 'mobilenet_v3_small_075_224'" in err and err.count("\n") == 1
    with pytest.raises(mobilevec.UnknownModelError, match="did you mean 'mobilenet_v2_100_224'"):
        mobilevec.create("mobilenet_v2_100_244")


@pytest.mark.parametrize(("argv", "option"), [
    (["embed", "x.jpg", "-o", "v.parquet", "--model", V3, "--batch-size", "0"], "--batch-size"),
    (["embed", "x.jpg", "-o", "v.parquet", "--model", V3, "--workers", "-1"], "--workers"),
    (["embed", "x.jpg", "-o", "v.parquet", "--model", V3, "--image-size", "0"], "--image-size"),
    (["embed", "x.jpg", "-o", "v.parquet", "--model", V3, "--num-workers", "0"],
     "--num-workers"),
    (["train", "d", "-o", "r", "--model", V3, "--epochs", "0"], "--epochs"),
    (["train", "d", "-o", "r", "--model", V3, "--val-fraction", "1"], "--val-fraction"),
    (["train", "d", "-o", "r", "--model", V3, "--dropout", "nan"], "--dropout"),
    (["train", "d", "-o", "r", "--model", V3, "--lr", "-1"], "--lr"),
    (["predict", "run", "x.jpg", "-k", "0"], "-k"),
    (["evaluate", "run", "d", "--batch-size", "-3"], "--batch-size"),
    (["export", "--model", V3, "-o", "x.onnx", "--calibration-images", "0"],
     "--calibration-images"),
])
def test_numeric_options_are_range_checked(argv, option, capsys):
    err = usage_error(argv, capsys)
    assert f"argument {option}" in err and "Traceback" not in err


def test_one_name_for_the_input_size_and_the_old_one_still_works(capsys):
    from mobilevec.cli.app import build_parser

    parser = build_parser()
    for command, extra in (("embed", ["x.jpg", "-o", "v.parquet", "--model", V3]),
                           ("train", ["d", "-o", "r"]),
                           ("export", ["--model", V3, "-o", "x.onnx"])):
        new = parser.parse_args([command, *extra, "--image-size", "160"])
        old = parser.parse_args([command, *extra, "--size", "160"])
        assert vars(new) == vars(old), command
        assert 160 in vars(new).values()
        help_text = subprocess.run([*CLI, command, "--help"], capture_output=True,
                                   text=True).stdout
        assert "--image-size" in help_text and "--size" not in help_text, command


def test_train_help_claims_no_default_model():
    text = run_cli("train", "--help").stdout
    assert "recorded with the input" not in text
    assert "--resume" in text and "name one, unless --resume" in " ".join(text.split())


# --- tracebacks that must not happen ----------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("command", [["embed", "PHOTOS", "-o", "OUT/v.parquet", "--model", V3,
                                      "--random-weights"],
                                     ["predict", "OUT/run", "PHOTOS"]])
def test_device_cuda_on_a_cpu_only_torch_is_one_line(command, photos, tmp_path):
    argv = [str(photos) if a == "PHOTOS" else a.replace("OUT", str(tmp_path)) for a in command]
    result = run_cli(*argv, "--device", "cuda")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "AssertionError" not in result.stderr
    assert result.stderr.strip().startswith("error: --device cuda:")
    assert len(result.stderr.strip().splitlines()) == 1
    with pytest.raises(mobilevec.errors.DeviceError, match="cuda:3"):
        mobilevec.embedder(V3, backend="torch", device="cuda:3")


@pytest.mark.parametrize("command", ["list", f"info --model {V3} --variables"])
def test_a_closed_pipe_ends_quietly(command):
    """`mobilevec list | head`: no BrokenPipeError, exit 0 (pipefail sees mobilevec's)."""
    cli = " ".join(CLI)
    result = subprocess.run(["bash", "-o", "pipefail", "-c", f"{cli} {command} | head -2"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 2
    assert "Error" not in result.stderr and "Traceback" not in result.stderr, result.stderr


# --- embed: no silent random weights; a JSON summary -------------------------------------
def test_embed_without_weights_needs_an_explicit_opt_in(photos, tmp_path):
    out = tmp_path / "v.parquet"
    refused = run_cli("embed", str(photos), "-o", str(out), "--model", V3, "--quiet")
    assert refused.returncode == 2 and "--random-weights" in refused.stderr
    assert not out.exists()
    opted = run_cli("embed", str(photos), "-o", str(out), "--model", V3, "--quiet",
                    "--random-weights", "--image-size", "96", "--json")
    assert opted.returncode == 0, opted.stderr
    assert "random initialisation" in opted.stderr
    summary = json.loads(opted.stdout)
    assert summary["embedded"] == 6 and summary["failed"] == 0 and summary["status"] == "done"


def test_embed_search_dedup_json(photos, tmp_path, v3_tflite, capsys):
    out = tmp_path / "v.parquet"
    assert main(["embed", str(photos), "-o", str(out), "--model", V3, "--weights",
                 str(v3_tflite), "--quiet", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["embedded"] == 6 and summary["backend"] == "openvino"
    query = sorted(photos.iterdir())[0]
    assert main(["search", str(out), str(query), "-k", "2", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    hits = found["queries"][0]["neighbours"]
    assert found["queries"][0]["query"] == str(query) and len(hits) == 2
    assert Path(hits[0]["path"]).name == query.name and hits[0]["cosine"] > 0.999
    assert main(["dedup", str(out), "--threshold", "0.999", "--json"]) == 0
    groups = json.loads(capsys.readouterr().out)
    assert groups["images"] == 6 and groups["groups"] == [] and groups["duplicates"] == 0


# --- export ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def v3_module():
    return mobilevec.create(V3, weights=require(V3_TFLITE), trainable=False)


def test_export_takes_the_format_from_the_suffix(tmp_path, capsys):
    xml = tmp_path / "v3.xml"
    assert main(["export", "--model", V3, "--weights", str(require(V3_TFLITE)), "-o",
                 str(xml)]) == 0
    assert xml.read_text().startswith("<?xml") and xml.with_suffix(".bin").is_file()
    assert "runs in fp32 under OpenVINO's defaults" in capsys.readouterr().out
    tflite = tmp_path / "v3.tflite"
    assert main(["export", "--model", V3, "-o", str(tflite), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "tflite" and report["input"]["layout"] == "NHWC"
    assert tflite.read_bytes()[4:8] == b"TFL3"


@pytest.mark.parametrize(("output", "extra", "message"), [
    ("x.xml", ["--format", "onnx"], "a .xml file is openvino, not onnx"),
    ("x.tflite", ["--format", "openvino"], "a .tflite file is tflite, not openvino"),
    ("x.bin", [], "cannot tell the format"),
    ("x.tflite", ["--int8", "--calibrate", "PHOTOS"], "not tflite"),
])
def test_export_refuses_a_contradiction_before_any_work(output, extra, message, tmp_path,
                                                        photos, capsys, monkeypatch):
    import mobilevec.export as export_module

    def no_calibration(*_args, **_kwargs):
        raise AssertionError("calibration started before the refusal")

    monkeypatch.setattr(export_module, "calibration_paths", no_calibration)
    argv = ["export", "--model", V3, "-o", str(tmp_path / output),
            *[str(photos) if a == "PHOTOS" else a for a in extra]]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and "calibrating" not in err
    assert list(tmp_path.iterdir()) == []


def test_export_library_takes_the_suffix_too(tmp_path, v3_module):
    from mobilevec.export import export

    written = export(v3_module, tmp_path / "m.xml")
    assert [p.name for p in written] == ["m.xml", "m.bin"]
    with pytest.raises(ValueError, match="not onnx"):
        export(v3_module, tmp_path / "m.tflite", "onnx")


def _plain_openvino(xml: Path, x: np.ndarray) -> np.ndarray:
    """``openvino.Core().compile_model(xml)`` with nothing set, in a fresh process."""
    np.save(xml.with_name("x.npy"), x)
    code = ("import sys, numpy as np, openvino as ov\n"
            "x = np.load(sys.argv[2])\n"
            "c = ov.Core().compile_model(sys.argv[1])\n"
            "np.save(sys.argv[3], c({0: x})[0])\n")
    out = xml.with_name("y.npy")
    subprocess.run([sys.executable, "-c", code, str(xml), str(xml.with_name("x.npy")),
                    str(out)], check=True, timeout=300)
    return np.load(out)


def test_an_fp32_openvino_export_runs_fp32_under_openvino_defaults(tmp_path, v3_module):
    """On a CPU with bf16, OpenVINO's default is bf16 (max |d| ~0.2 on these weights); the
    export pins fp32, so the plain compile gives the torch module's vectors."""
    from mobilevec.engines.default import _BF16_FLAGS, _cpu_flags
    from mobilevec.export import export, onnx_model, openvino_model

    x = np.random.default_rng(0).random((4, 3, 224, 224), dtype=np.float32)
    reference = v3_module(x)
    xml = tmp_path / "v3.xml"
    assert main(["export", "--model", V3, "--weights", str(require(V3_TFLITE)), "-o",
                 str(xml), "--quiet"]) == 0
    np.testing.assert_allclose(_plain_openvino(xml, x), reference, atol=1e-4, rtol=0)
    flags = _cpu_flags() or set()
    if not any(f in flags for f in _BF16_FLAGS):
        pytest.skip("this CPU has no bf16: OpenVINO's default is fp32 here anyway")
    # the same IR without the pin: what the test guards against
    import openvino as ov

    unpinned = tmp_path / "unpinned" / "v3.xml"
    unpinned.parent.mkdir()
    ov.save_model(openvino_model(onnx_model(v3_module)), str(unpinned), compress_to_fp16=False)
    assert np.abs(_plain_openvino(unpinned, x) - reference).max() > 1e-2
    # the bf16 engine's IR is not pinned (its bf16 hint would be ignored)
    bf16 = export(v3_module, tmp_path / "bf16" / "v3.xml", fp32_runtime=False)[0]
    assert np.abs(_plain_openvino(bf16, x) - reference).max() > 1e-2
    # and asking for bf16 explicitly still gets it from the pinned IR
    from mobilevec.engines import load_engine

    fast = load_engine(xml, precision="bf16", threads=2)
    assert np.abs(fast(x) - reference).max() > 1e-2
    exact = load_engine(xml, threads=2)
    np.testing.assert_allclose(exact(x), reference, atol=1e-4, rtol=0)


def test_int8_export_reports_progress_through_every_stage(tmp_path, capsys):
    from mobilevec.export import export

    rng = np.random.default_rng(3)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (48, 40, 3)).astype(np.uint8)).save(
            photos / f"{i}.png")
    torch.manual_seed(0)
    model = mobilevec.create(V3, trainable=False)
    calls: list[tuple[str, int, int]] = []
    export(model, tmp_path / "q.onnx", image_size=64, calibration=sorted(photos.iterdir()),
           progress=lambda *call: calls.append(call), int8_placement="conv-inputs")
    stages = [stage for stage, _, _ in calls]
    assert stages[0] == "decode" and "calibrate" in stages
    decoded = [(d, t) for s, d, t in calls if s == "decode"]
    assert decoded[-1] == (12, 12) and [d for d, _ in decoded] == list(range(1, 13))
    calibrated = [(d, t) for s, d, t in calls if s == "calibrate"]
    assert calibrated[-1][0] == calibrated[-1][1] >= 1
    # a target that no pass reaches: one search for a block to keep in fp32, reported
    from mobilevec.export import onnx_model
    from mobilevec.export.quantize import quantize_int8

    calls.clear()
    quantize_int8(onnx_model(model, image_size=64), sorted(photos.iterdir()),
                  target_cosine=2.0, max_fp32_blocks=1,
                  progress=lambda *call: calls.append(call))
    searched = [(d, t) for s, d, t in calls if s == "fp32 blocks"]
    assert searched and searched[-1][0] == searched[-1][1] > 5
    assert [s for s, _, _ in calls].count("calibrate") > len(calibrated)  # two passes
    # the command line draws them as bars on stderr
    capsys.readouterr()
    assert main(["export", "--model", V3, "--image-size", "64", "--int8", "--calibrate",
                 str(photos), "-o", str(tmp_path / "cli.onnx")]) == 0
    err = capsys.readouterr().err
    assert "decode" in err and "calibrate" in err


def test_the_first_int8_embed_reports_its_calibration(tmp_path, cache_root, v3_tflite,
                                                     data_dir, monkeypatch):
    """The int8 entry of the engine cache is calibrated on the first run: minutes, shown."""
    import functools

    from mobilevec.engines import default
    from mobilevec.export import quantize

    monkeypatch.setattr(default, "check_precision", lambda precision: None)  # any CPU
    # no search for fp32 blocks (a minute here, where int8 is inexact): its bar is tested above
    monkeypatch.setattr(quantize, "quantize_int8",
                        functools.partial(quantize.quantize_int8, max_fp32_blocks=0))
    photos = sorted((data_dir / "imagenet-samples").glob("*.JPEG"))[:6]
    calls: list[tuple[str, int, int]] = []
    emb = mobilevec.embedder(V3, v3_tflite, backend="openvino", precision="int8",
                             image_size=64, calibration=photos,
                             progress=lambda *call: calls.append(call))
    assert emb.precision == "int8"
    stages = [stage for stage, _, _ in calls]
    assert stages[0] == "decode" and "calibrate" in stages
    assert [(d, t) for s, d, t in calls if s == "decode"][-1] == (6, 6)
    calls.clear()
    mobilevec.embedder(V3, v3_tflite, backend="openvino", precision="int8", image_size=64,
                       calibration=photos, progress=lambda *call: calls.append(call))
    assert calls == []  # a warm cache calibrates nothing


# --- cache import of a folder ------------------------------------------------------------
def test_cache_import_accepts_the_npy_folder_the_offline_message_advises(cache_root, capsys,
                                                                        v2_npy, monkeypatch):
    monkeypatch.setenv("MOBILEVEC_OFFLINE", "1")
    from mobilevec.errors import OfflineError

    with pytest.raises(OfflineError, match="cache import"):
        mobilevec.load(V2_HANDLE)
    assert main(["cache", "import", str(v2_npy), "--as", V2_HANDLE]) == 0
    assert "imported" in capsys.readouterr().out
    loaded = mobilevec.load(V2_HANDLE)
    direct = mobilevec.create(V2, weights=v2_npy, trainable=False)
    x = np.random.default_rng(1).random((2, 3, 96, 96), dtype=np.float32)
    np.testing.assert_array_equal(loaded(x), direct(x))
    from mobilevec.hub.cache import list_entries

    first = list_entries()[0].sha256
    assert main(["cache", "import", str(v2_npy), "--as", V2_HANDLE]) == 0  # the same bytes
    assert list_entries()[0].sha256 == first
    assert main(["cache", "verify"]) == 0
    capsys.readouterr()


def test_cache_import_and_clear_report_json(cache_root, v2_npy, capsys):
    import hashlib

    assert main(["cache", "import", str(v2_npy), "--as", V2_HANDLE, "--json"]) == 0
    imported = json.loads(capsys.readouterr().out)
    # a folder is cached as its deterministic tar: the entry's sha256 is that file's
    assert imported["sha256"] == hashlib.sha256(Path(imported["file"]).read_bytes()).hexdigest()
    assert imported["imported"] == str(v2_npy) and imported["url"]
    assert main(["cache", "clear", V2_HANDLE, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["removed_entries"] == 1
    assert main(["cache", "clear", "--all", "--json"]) == 0
    cleared = json.loads(capsys.readouterr().out)
    assert cleared["removed_entries"] == 0 and isinstance(cleared["removed_engines"], int)


def test_cache_import_of_a_folder_checks_its_tree_hash_and_refuses_links(cache_root, tmp_path,
                                                                       v2_npy, capsys):
    from mobilevec._io import sha256_tree

    assert main(["cache", "import", str(v2_npy), "--as", V2_HANDLE, "--sha256", "0" * 64]) == 1
    assert "sha256 mismatch" in capsys.readouterr().err
    assert main(["cache", "import", str(v2_npy), "--as", V2_HANDLE, "--sha256",
                 sha256_tree(v2_npy)]) == 0
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "a.npy").symlink_to(next(v2_npy.glob("*.npy")))
    assert main(["cache", "import", str(linked), "--as", V2_HANDLE]) == 1
    assert "not a plain file" in capsys.readouterr().err


# --- train and evaluate -----------------------------------------------------------------
def test_train_names_its_figures_and_evaluate_warns_about_training_images(tmp_path, capsys):
    data = class_tree(tmp_path / "data", per_class=5)
    run = tmp_path / "run"
    assert main(["train", str(data), "-o", str(run), "--model", V3, "--image-size", "48",
                 "--workers", "0", "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "mean cross-entropy loss and accuracy on the training images" in out
    assert "train loss" in out and "val loss" in out
    assert "validation images (" in out and "precision (of the images predicted" in out
    assert "confusion_matrix.png" in out
    assert main(["evaluate", str(run), str(data), "--workers", "0"]) == 0
    err = capsys.readouterr().err
    assert "were trained on" in err and "used to pick the epoch" in err
    fresh = class_tree(tmp_path / "fresh", per_class=2, seed=5)
    assert main(["evaluate", str(run), str(fresh), "--workers", "0", "--json"]) == 0
    captured = capsys.readouterr()
    assert "warning" not in captured.err
    assert json.loads(captured.out)["seen_in_training"] == {"train": [], "val": []}


def test_train_json_is_the_only_stdout(tmp_path, capsys):
    data = class_tree(tmp_path / "data", per_class=5)
    run = tmp_path / "run"
    assert main(["train", str(data), "-o", str(run), "--model", V3, "--image-size", "48",
                 "--workers", "0", "--epochs", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)  # no epoch lines mixed in
    assert report["run"] == str(run) and [e["epoch"] for e in report["epochs"]] == [1, 2]
    assert report["best_epoch"] in (1, 2)
    recorded = json.loads((run / "run.json").read_text())
    assert report["validation"]["images"] == len(recorded["data"]["val_files"]) == 3
    assert report["best_epoch"] == recorded["best_epoch"]
    assert sorted(report["validation"]["class_names"]) == sorted(p.name for p in data.iterdir())
    assert set(report["figures"]) <= {"confusion_matrix.png", "curves.png"}


# --- packaging --------------------------------------------------------------------------
def test_parquet_output_works_from_a_plain_install():
    """`pip install mobilevec` then `embed -o vectors.parquet` (the README's headline)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert any(d.replace(" ", "").startswith("pyarrow") for d in project["dependencies"])

