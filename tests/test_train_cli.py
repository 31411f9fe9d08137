"""`mobilevec train / predict / evaluate`: the run folder, resume, and bad inputs.

Mechanics only, on tiny synthetic images with a randomly initialised V3 Small at 48 px
(accuracy on real photos is in test_train_accuracy.py).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from train_data import class_tree

from mobilevec.cli.app import main
from mobilevec.formats.safetensors_format import read_safetensors
from mobilevec.training.train import TrainConfig, train

MODEL = "mobilenet_v3_small_075_224"
SMALL = ["--model", MODEL, "--size", "48", "--workers", "0", "--quiet"]


@pytest.fixture()
def tree(tmp_path):
    return class_tree(tmp_path / "data", per_class=6)


def _train(data, out, *extra) -> int:
    return main(["train", str(data), "-o", str(out), *SMALL, *extra])


def test_frozen_run_folder_is_self_contained_and_predict_uses_it(tree, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(tree, out, "--epochs", "3", "--lr", "0.05") == 0
    for name in ("run.json", "model.safetensors", "checkpoint.safetensors", "checkpoint.json",
                 "features.safetensors", "metrics.csv", "metrics.json", "evaluation.json",
                 "per_class.csv", "confusion_matrix.png", "curves.png"):
        assert (out / name).is_file(), name
    spec = json.loads((out / "run.json").read_text())
    assert spec["class_names"] == ["blue", "green", "red"]
    assert spec["preprocessing"]["size"] == [48, 48] and spec["mode"] == "frozen"
    assert spec["status"] == "finished" and spec["epochs_done"] == 3
    assert len(json.loads((out / "metrics.json").read_text())) == 3
    assert (out / "metrics.csv").read_text().splitlines()[0].startswith("epoch,lr,train_loss")
    # the weights are ordinary mobilevec safetensors with the head as Logits
    variables = read_safetensors(out / "model.safetensors")
    assert variables["MobilenetV3/Logits/Conv2d_1c_1x1/weights"].shape == (1, 1, 1024, 3)
    capsys.readouterr()

    image = tree / "red" / "img_0.png"
    assert main(["predict", str(out), str(image), "-k", "2", "--json", "--workers", "0"]) == 0
    result = json.loads(capsys.readouterr().out)
    top = result["predictions"][0]["top"]
    assert result["predictions"][0]["path"] == str(image) and len(top) == 2
    assert top[0]["probability"] >= top[1]["probability"]
    assert {t["class"] for t in top} <= {"blue", "green", "red"}

    assert main(["evaluate", str(out), str(tree), "--json", "--workers", "0"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 18 and np.sum(report["confusion_matrix"]) == 18

    # an inference engine computes the same probabilities
    images = [str(p) for p in sorted(tree.rglob("*.png"))]
    probabilities = {}
    for backend in ("torch", "torch-fused"):
        assert main(["predict", str(out), *images, "-k", "3", "--json", "--workers", "0",
                     "--backend", backend]) == 0
        rows = json.loads(capsys.readouterr().out)["predictions"]
        probabilities[backend] = {(r["path"], t["class"]): t["probability"]
                                  for r in rows for t in r["top"]}
    assert probabilities["torch"].keys() == probabilities["torch-fused"].keys()
    for key, p in probabilities["torch"].items():
        assert abs(probabilities["torch-fused"][key] - p) < 1e-4, key


def test_predict_reports_a_bad_image_and_still_predicts_the_others(tree, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(tree, out, "--epochs", "1") == 0
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    good = tree / "blue" / "img_1.png"
    capsys.readouterr()
    assert main(["predict", str(out), str(bad), str(good), "--workers", "0"]) == 3
    captured = capsys.readouterr()
    assert str(good) in captured.out and "1. " in captured.out
    assert f"FAILED {bad}" in captured.err


def test_unreadable_training_image_is_reported_skipped_and_recorded(tree, tmp_path, capsys):
    bad = tree / "green" / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "run"
    assert _train(tree, out, "--epochs", "2") == 3  # finished, but with a skipped file
    assert f"FAILED {bad}" in capsys.readouterr().err
    spec = json.loads((out / "run.json").read_text())
    assert spec["status"] == "finished"
    assert [p for p, _ in spec["skipped_files"]] == [str(bad)]


@pytest.mark.parametrize("case, message", [
    ("empty class", "class folder without images"),
    ("single class", "only one class"),
    ("no images", "no image files"),
])
def test_bad_data_folders_fail_with_a_clear_error(tmp_path, capsys, case, message):
    data = tmp_path / "data"
    if case == "empty class":
        class_tree(data, per_class=3)
        (data / "violet").mkdir()
    elif case == "single class":
        class_tree(data, per_class=3, classes={"blue": (0, 0, 255)})
    else:
        for name in ("a", "b"):
            (data / name).mkdir(parents=True)
            (data / name / "x.txt").write_text("text")
    assert _train(data, tmp_path / "run", "--epochs", "1") == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_train_refuses_to_overwrite_a_run_without_asking(tree, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(tree, out, "--epochs", "1") == 0
    assert _train(tree, out, "--epochs", "1") == 1
    assert "already holds a run" in capsys.readouterr().err
    assert _train(tree, out, "--epochs", "1", "--overwrite") == 0


@pytest.mark.parametrize("fine_tune", [False, True], ids=["frozen", "fine-tune"])
def test_resume_after_interruption_matches_an_uninterrupted_run(tree, tmp_path, fine_tune):
    import mobilevec

    config = TrainConfig(epochs=3, fine_tune=fine_tune, batch_size=8, image_size=32,
                         learning_rate=0.02, seed=5)

    def fresh():  # the same random backbone for both runs
        torch.manual_seed(0)
        return mobilevec.create(MODEL, trainable=fine_tune)

    whole = train(fresh(), tree, tmp_path / "whole", config, workers=0)
    assert len(whole.history) == 3
    # the kept model is the lowest-validation-loss epoch's, not a later one's
    kept = torch.nn.functional.cross_entropy(torch.from_numpy(whole.val_logits),
                                             torch.from_numpy(whole.val_labels))
    best = min(row["val_loss"] for row in whole.history)
    assert float(kept) == pytest.approx(best, rel=1e-5)
    # stopped after epoch 1, as a Ctrl-C after that checkpoint would
    cut = train(fresh(), tree, tmp_path / "cut", config, workers=0,
                on_epoch=lambda row: row["epoch"] == 1)
    assert len(cut.history) == 1
    assert json.loads((tmp_path / "cut" / "run.json").read_text())["status"] == "interrupted"
    assert main(["train", "--resume", "-o", str(tmp_path / "cut"), "--quiet"]) == 0
    metrics = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert [row["epoch"] for row in metrics] == [1, 2, 3]
    for a, b in zip(metrics, whole.history, strict=True):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4, abs=1e-6)
    resumed = read_safetensors(tmp_path / "cut" / "model.safetensors")
    reference = read_safetensors(tmp_path / "whole" / "model.safetensors")
    assert resumed.keys() == reference.keys()
    for key in reference:
        np.testing.assert_allclose(resumed[key], reference[key], rtol=1e-4, atol=1e-5,
                                   err_msg=key)


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--resume", "-o", str(tmp_path / "nothing"), "--quiet"]) == 1
    assert "no such run folder" in capsys.readouterr().err


@pytest.mark.parametrize("flags", [[], ["--flip-average", "--normalize-features"]],
                         ids=["plain", "flip-average"])
def test_evaluate_reproduces_the_validation_of_the_cached_features(tmp_path, capsys, flags):
    train_dir = class_tree(tmp_path / "train", per_class=5)
    val_dir = class_tree(tmp_path / "val", per_class=3, seed=1)  # other images
    out = tmp_path / "run"
    assert _train(train_dir, out, "--val", str(val_dir), "--epochs", "5", "--lr", "0.05",
                  *flags) == 0
    cached = read_safetensors(out / "features.safetensors")
    views = 2 if flags else 1
    assert cached["train/vectors"].shape == (15 * views, 1024)
    spec = json.loads((out / "run.json").read_text())
    capsys.readouterr()
    assert main(["evaluate", str(out), str(val_dir), "--json", "--workers", "0"]) == 0
    report = json.loads(capsys.readouterr().out)
    # predict/evaluate embed the images anew (the flip average inside the classifier); the
    # training cache built the same numbers another way
    assert report["images"] == 9
    assert report["accuracy"] == pytest.approx(spec["best_val_accuracy"])


def test_train_without_a_model_is_a_usage_error(tree, tmp_path, capsys):
    assert main(["train", str(tree), "-o", str(tmp_path / "run"), "--quiet"]) == 2
    assert "name a model" in capsys.readouterr().err
