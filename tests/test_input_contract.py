"""One input contract for every runner (mobilevec.models.inputs): the torch module, each
engine and the Embedder accept the same inputs and refuse the same ones with the same
typed error, instead of running on pixels in [0, 255] and giving vectors that mean nothing.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import mobilevec
from mobilevec.embedding.embedder import embedder
from mobilevec.engines import available_backends
from mobilevec.errors import InputError

V3 = "mobilenet_v3_small_075_224"
SIZE = 96  # small inputs keep the engines quick; the contract does not depend on size
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).random((2, 3, SIZE, SIZE), dtype=np.float32)


@pytest.fixture(scope="module")
def module():
    torch.manual_seed(0)
    return mobilevec.create(V3, trainable=False)


@pytest.fixture(scope="module")
def runners(module):
    """Every runner of the same (random) weights: module, each engine, an Embedder."""
    from mobilevec.engines import engine_from_model

    found = {"torch": module}
    for backend in available_backends():
        found[backend] = engine_from_model(module, backend, image_size=SIZE)
    return found


def _bad_inputs(x: np.ndarray) -> dict[str, tuple[object, str]]:
    """Inputs every runner must refuse, and what the message must say."""
    return {
        "uint8 pixels": ((x * 255).astype(np.uint8), r"dtype uint8.*x / 255"),
        "float pixels in [0, 255]": (x * 255, r"\[0, 255\]: divide by 255"),
        "already scaled to [-1, 1]": (x * 2 - 1, r"\[-1, 1\]"),
        "imagenet mean/std": ((x - 0.45) / 0.225, r"mean/std"),
        "int64": (np.zeros_like(x, np.int64), "dtype int64"),
        "NaN": (np.where(x > 0.5, np.nan, x).astype(np.float32), "NaN"),
        "infinite": (np.where(x > 0.5, np.inf, x).astype(np.float32), "infinite"),
        "NHWC": (np.ascontiguousarray(x.transpose(0, 2, 3, 1)), r"NHWC.*transpose"),
        "one image without batch": (x[0], r"x\[None\]"),
        "grey": (x[:, :1], "1 channels"),
        "uint8 tensor": (torch.from_numpy((x * 255).astype(np.uint8)), "dtype uint8"),
        "tensor in [0, 255]": (torch.from_numpy(x * 255), "divide by 255"),
    }


@pytest.mark.parametrize("case", list(_bad_inputs(np.zeros((1, 3, 2, 2), np.float32))))
def test_every_runner_refuses_what_breaks_the_contract(runners, images, case):
    bad, message = _bad_inputs(images)[case]
    for name, runner in runners.items():
        with pytest.raises(InputError, match=message) as e:
            runner(bad)
        assert "RGB in [0, 1]" in str(e.value), name
        assert isinstance(e.value, ValueError) and isinstance(e.value, mobilevec.MobilevecError)


def test_every_runner_takes_numpy_and_tensors_and_gives_the_same_vectors(runners, images):
    reference = runners["torch"](torch.from_numpy(images)).detach().numpy()
    for name, runner in runners.items():
        out = runner(images)
        assert isinstance(out, np.ndarray) and out.dtype == np.float32, name  # numpy in, out
        np.testing.assert_allclose(out, reference, atol=1e-4, rtol=0, err_msg=name)
        as_float64 = runner(images.astype(np.float64))
        np.testing.assert_allclose(as_float64, out, atol=1e-6, rtol=0, err_msg=name)
        tensor_out = runner(torch.from_numpy(images).double())
        assert isinstance(tensor_out, torch.Tensor), name  # tensor in, tensor out
        np.testing.assert_allclose(tensor_out.detach().numpy(), reference, atol=1e-4, rtol=0)


def test_values_at_the_edges_and_a_small_overshoot_are_accepted(runners, images):
    edges = images.copy()
    edges[0, 0, 0, :3] = (0.0, 1.0, 1.005)  # 0 and 1 exactly; a bicubic resizer's overshoot
    edges[1, 2, 5, :2] = (-0.005, 0.5)
    for name, runner in runners.items():
        assert np.asarray(runner(edges)).shape == (2, 1024), name
    with pytest.raises(InputError, match=r"x.clip\(0, 1\)"):
        runners["torch"](np.clip(images + 0.05, 0, 1.05).astype(np.float32))


def test_the_torch_module_keeps_gradients_for_tensors_and_none_for_numpy(images):
    torch.manual_seed(0)
    net = mobilevec.create(V3)  # trainable
    x = torch.from_numpy(images).requires_grad_(True)
    net(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    out = net(images)
    assert isinstance(out, np.ndarray) and out.shape == (2, 1024)
    feature_map = net.forward_features(images)
    assert isinstance(feature_map, np.ndarray) and feature_map.ndim == 4
    np.testing.assert_allclose(feature_map.mean((2, 3))[:, :4],
                               net.forward_features(x).detach().numpy().mean((2, 3))[:, :4],
                               atol=1e-5)


def test_embedder_checks_the_input_before_converting_it(v3_tflite, images):
    emb = embedder(V3, v3_tflite, backend="torch", image_size=SIZE)
    with pytest.raises(InputError, match="uint8"):
        emb((images * 255).astype(np.uint8))
    with pytest.raises(InputError, match="divide by 255"):
        emb(torch.from_numpy(images * 255))
    out = emb(torch.from_numpy(images))
    assert isinstance(out, np.ndarray) and out.shape == (2, 1024)


def test_the_real_first_thing_users_pass_is_refused_with_what_to_do(v3_tflite, data_dir):
    """``np.asarray(PIL.Image.open(p))`` (HWC uint8, any size) and its batch."""
    from PIL import Image

    photo = next(p for p in sorted((data_dir / "imagenet-samples").iterdir())
                 if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    pixels = np.asarray(Image.open(photo).convert("RGB"))
    model = mobilevec.create(V3, weights=v3_tflite, trainable=False)
    with pytest.raises(InputError, match=r"x\[None\]|NHWC|uint8"):
        model(pixels)
    batch = np.ascontiguousarray(pixels[None].transpose(0, 3, 1, 2))
    with pytest.raises(InputError, match="uint8"):
        model(batch)
    with pytest.raises(InputError, match="divide by 255"):
        model(batch.astype(np.float32))
    ok = model(batch.astype(np.float32) / 255)  # what the message says to do
    assert ok.shape == (1, 1024) and np.isfinite(ok).all()


def test_create_backend_none_is_the_torch_module():
    torch.manual_seed(0)
    assert isinstance(mobilevec.create(V3, backend=None), mobilevec.MobileNet)
    assert isinstance(mobilevec.create(V3, backend="torch"), mobilevec.MobileNet)
    with pytest.raises(TypeError, match="engine backends"):
        mobilevec.create(V3, backend=None, threads=2)


def test_the_readme_states_the_signatures_of_create_and_embedder():
    """The README's signature lines are the real ones (parameters, defaults, order)."""
    readme = (REPO / "README.md").read_text()
    for name, function in (("create", mobilevec.create), ("embedder", mobilevec.embedder)):
        m = re.search(rf"`mobilevec\.{name}\((.*?)\)`", readme, re.S)
        assert m, f"README documents no signature of mobilevec.{name}"
        documented = " ".join(m[1].split())
        real = []
        for p in inspect.signature(function).parameters.values():
            if p.kind is p.KEYWORD_ONLY and "*" not in real:
                real.append("*")
            if p.kind is p.VAR_KEYWORD:
                real.append(f"**{p.name}")
            elif p.default is inspect.Parameter.empty:
                real.append(p.name)
            else:
                real.append(f"{p.name}={p.default!r}".replace("'", '"'))
        assert documented == ", ".join(real), name
