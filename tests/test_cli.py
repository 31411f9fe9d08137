"""The command line: thin, prints results, reports errors with a non-zero exit status."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mobilevec.cli.app import main


def test_list_prints_every_model_with_its_feature_size(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "mobilenet_v3_small_075_224" in out and "1024" in out
    assert "mobilenet_v2_100_224" in out and "1280" in out


def test_info_loads_real_weights_and_names_variables(capsys, v3_tflite):
    assert main(["info", "--model", "mobilenet_v3_small_075_224", "--weights", str(v3_tflite),
                 "--variables"]) == 0
    out = capsys.readouterr().out
    assert "1024-d feature vector" in out
    assert "MobilenetV3/expanded_conv_3/depthwise/depthwise_weights" in out


def test_bad_weights_give_a_clear_error_and_exit_1(tmp_path, capsys):
    bad = tmp_path / "broken.tflite"
    bad.write_bytes(b"\x00" * 64)
    assert main(["info", "--model", "mobilenet_v3_small_075_224", "--weights", str(bad)]) == 1
    assert str(bad) in capsys.readouterr().err


def test_demo_says_where_to_put_missing_weights(tmp_path, data_dir):
    result = subprocess.run([sys.executable, "-m", "mobilevec.cli", "demo", "--weights-dir",
                             str(tmp_path), "--data-dir", str(data_dir)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert f"put mobilenet_v3_small_075_224_embedder.tflite into {tmp_path}" in result.stdout


@pytest.mark.parametrize("argv", [["nonsense"], ["info"]])
def test_usage_errors_exit_2(argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2


def test_demo_json_reports_each_model_and_the_skipped_files(tmp_path, data_dir):
    from shared_paths import V3_TFLITE, require

    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / V3_TFLITE.name).symlink_to(require(V3_TFLITE))
    photos = tmp_path / "data"
    for cls in ("daisy", "roses"):
        (photos / "tf_flowers5" / cls).mkdir(parents=True)
        for src in sorted((data_dir / "tf_flowers5" / cls).glob("*.jpg"))[:3]:
            (photos / "tf_flowers5" / cls / src.name).symlink_to(src)
    (photos / "imagenet-samples").mkdir()
    for src in sorted((data_dir / "imagenet-samples").glob("*.JPEG"))[:4]:
        (photos / "imagenet-samples" / src.name).symlink_to(src)
    (photos / "imagenet-samples" / "broken.JPEG").write_bytes(b"not a jpeg")
    result = subprocess.run([sys.executable, "-m", "mobilevec.cli", "demo", "--json",
                             "--weights-dir", str(weights), "--data-dir", str(photos)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr  # V2's weights are missing
    report = json.loads(result.stdout)
    v2, v3 = report["models"]
    assert v2["model"] == "mobilenet_v2_100_224" and "weights missing" in v2["skipped"]
    assert v3["model"] == "mobilenet_v3_small_075_224" and v3["features"] == 1024
    assert v3["images"] == 10
    assert [s["path"] for s in v3["skipped_files"]] == [str(photos / "imagenet-samples" /
                                                            "broken.JPEG")]
    assert 0.0 <= v3["flowers_1nn_accuracy"] <= 1.0 and v3["flowers_classes"] == 2
    assert len(v3["neighbours"]) >= 1
