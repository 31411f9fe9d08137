"""``mobilevec.load(handle)``: handles, URLs and local paths through the cache.

A server on 127.0.0.1 (tests/_http_server.py) serves archives built here from the committed
TF-written fixtures and, where present, the real V3 ``.tflite``; the reference for every
vector is ``mobilevec.create`` on the same artifact read straight from disk.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import mobilevec
from mobilevec.cli.app import main as cli_main
from mobilevec.errors import DownloadError, MobilevecError, OfflineError, WeightsError
from mobilevec.hub import cache
from mobilevec.hub import loader as hub

FIXTURES = Path(__file__).parent / "fixtures"
CKPT_DIR = FIXTURES / "tf_ckpt_v2_035"
SAVED_MODEL = FIXTURES / "tf_saved_model_v2_035"
V2_035 = "mobilenet_v2_035_224"
HUB_PATH = f"/google/imagenet/{V2_035}/feature_vector/5"
HUB_HANDLE = f"https://tfhub.dev{HUB_PATH}"


def tarball(folder: Path, extra: dict[str, bytes] | None = None, prefix: str = "") -> bytes:
    """A .tar.gz of ``folder``'s files (as TF Hub and TF-Slim publish them) plus ``extra``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=prefix + path.relative_to(folder).as_posix())
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def vectors(model: torch.nn.Module, seed: int = 0) -> np.ndarray:
    x = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(x).numpy()


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    """The V2 0.35 fixture checkpoint read straight from disk (EMA values)."""
    return vectors(mobilevec.create(V2_035, weights=CKPT_DIR / "model.ckpt"))




@pytest.fixture
def hub_mirror(server, cache_root, monkeypatch):
    """tfhub.dev handles fetched from the local server, through a tfhub → Kaggle → storage
    redirect chain like the real one."""
    monkeypatch.setenv("MOBILEVEC_HUB_MIRROR", server.url(""))
    server.redirects[HUB_PATH] = "/api/v1/models/google/mobilenet-v2/tf2/035-224/5/download"
    server.redirects["/api/v1/models/google/mobilenet-v2/tf2/035-224/5/download"] = \
        "/storage/model.tar.gz"
    server.files["/storage/model.tar.gz"] = tarball(CKPT_DIR)
    return server


# --- hub handles ---------------------------------------------------------------------

@pytest.mark.parametrize("handle", [HUB_HANDLE, HUB_PATH.lstrip("/"),
                                    "https://www.kaggle.com/models/google/mobilenet-v2/"
                                    "frameworks/TensorFlow2/variations/035-224-feature-vector/"
                                    "versions/5"])
def test_hub_handle_resolves_to_the_model_it_names(handle):
    from mobilevec.hub.artifacts import resolve_handle

    artifact = resolve_handle(handle)
    assert artifact.model == V2_035
    assert artifact.kind == "feature_vector"
    assert "tf-hub-format=compressed" in artifact.url


def test_seed_handles_name_the_seed_models():
    from mobilevec.hub.artifacts import resolve_handle

    v2 = resolve_handle("https://tfhub.dev/google/tf2-preview/mobilenet_v2/feature_vector/2")
    v3 = resolve_handle("https://tfhub.dev/google/imagenet/mobilenet_v3_small_075_224/"
                        "feature_vector/5")
    assert (v2.model, v3.model) == ("mobilenet_v2_100_224", "mobilenet_v3_small_075_224")
    cls = resolve_handle("https://tfhub.dev/google/imagenet/mobilenet_v2_140_224/"
                         "classification/5")
    assert (cls.model, cls.kind) == ("mobilenet_v2_140_224", "classification")
    for url, model in [
            ("https://storage.googleapis.com/mobilenet_v2/checkpoints/mobilenet_v2_1.0_224.tgz",
             "mobilenet_v2_100_224"),
            ("https://storage.googleapis.com/mobilenet_v3/checkpoints/"
             "v3-small_224_0.75_float.tgz", "mobilenet_v3_small_075_224"),
            ("https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
             "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
             "mobilenet_v2_100_224"),
            ("https://storage.googleapis.com/mediapipe-assets/"
             "mobilenet_v3_small_075_224_embedder.tflite", "mobilenet_v3_small_075_224")]:
        assert resolve_handle(url).model == model, url
    embedder = resolve_handle("https://storage.googleapis.com/mediapipe-assets/"
                              "mobilenet_v3_small_075_224_embedder.tflite")
    assert embedder.sha256 == ("0f786f8eb8bcecd1f9c5bc50f00a5e6b9f62600edb503ad3bfff5f51035b0ea5")


def test_cold_load_follows_redirects_and_warm_load_makes_no_request(hub_mirror, cache_root,
                                                                    reference):
    model = mobilevec.load(HUB_HANDLE)
    assert model.config.name == V2_035
    np.testing.assert_array_equal(vectors(model), reference)
    assert hub_mirror.count("/storage/model.tar.gz") == 1
    entry = cache.get_entry(hub.resolve(HUB_HANDLE).url)
    assert entry.safetensors_path.is_file(), "first load stores converted weights"

    before = len(hub_mirror.log)
    warm = mobilevec.load(HUB_HANDLE)
    assert len(hub_mirror.log) == before, "a warm load must not touch the network"
    np.testing.assert_array_equal(vectors(warm), reference)


def test_warm_load_reads_the_converted_file_not_the_archive(hub_mirror, cache_root, reference):
    mobilevec.load(HUB_HANDLE)
    resolved = hub.resolve(HUB_HANDLE)
    # Damage the unpacked checkpoint: a warm load that parsed it again would fail.
    (resolved.path.parent / "model.ckpt.data-00000-of-00001").write_bytes(b"")
    np.testing.assert_array_equal(vectors(mobilevec.load(HUB_HANDLE)), reference)


def test_offline_cold_cache_says_what_is_missing_and_how_to_import(cache_root, monkeypatch):
    monkeypatch.setenv("MOBILEVEC_OFFLINE", "1")
    with pytest.raises(OfflineError) as info:
        mobilevec.load(HUB_HANDLE)
    message = str(info.value)
    assert "tf-hub-format=compressed" in message
    assert str(cache_root) in message
    assert f"mobilevec cache import FILE --as {HUB_HANDLE}" in message


def test_offline_warm_cache_loads(hub_mirror, cache_root, monkeypatch, reference):
    mobilevec.load(HUB_HANDLE)
    monkeypatch.setenv("MOBILEVEC_OFFLINE", "1")
    hub_mirror.stop()
    np.testing.assert_array_equal(vectors(mobilevec.load(HUB_HANDLE)), reference)


def test_imported_tarball_serves_the_handle_offline(cache_root, tmp_path, monkeypatch,
                                                    reference, capsys):
    archive = tmp_path / "mobilenet_v2_035_224.tar.gz"
    archive.write_bytes(tarball(CKPT_DIR))
    monkeypatch.setenv("MOBILEVEC_OFFLINE", "1")
    assert cli_main(["cache", "import", str(archive), "--as", HUB_HANDLE]) == 0
    np.testing.assert_array_equal(vectors(mobilevec.load(HUB_HANDLE)), reference)
    assert cli_main(["cache", "list"]) == 0
    listing = capsys.readouterr().out
    assert "tf-hub-format=compressed" in listing and "safetensors" in listing
    assert cli_main(["cache", "verify"]) == 0
    assert "1 ok, 0 bad" in capsys.readouterr().out
    entry = cache.list_entries()[0]
    before = entry.file.stat()
    data = bytearray(entry.file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    entry.file.write_bytes(bytes(data))  # same size and mtime, other content: bit rot
    os.utime(entry.file, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert cli_main(["cache", "verify"]) == 1
    assert "BAD" in capsys.readouterr().out
    assert cli_main(["cache", "clear", HUB_HANDLE]) == 0
    assert cache.list_entries() == []
    assert cli_main(["cache", "clear"]) == 1, "clearing everything needs --all"


# --- official artifacts and plain URLs ------------------------------------------------

def test_slim_checkpoint_tarball_url_picks_the_checkpoint(server, cache_root, reference):
    # TF-Slim tarballs hold the checkpoint beside a frozen graph and notes; the checkpoint
    # (unfolded BN, EMA values) is what load must read.
    name = "mobilenet_v2_0.35_224.tgz"
    server.files[f"/mobilenet_v2/checkpoints/{name}"] = tarball(
        CKPT_DIR, {"mobilenet_v2_0.35_224_frozen.pb": b"\x0a\x00",
                   "mobilenet_v2_0.35_224_info.txt": b"Model: mobilenet_v2_0.35_224\n"},
        prefix="./")
    model = mobilevec.load(server.url(f"/mobilenet_v2/checkpoints/{name}"))
    assert model.config.name == V2_035
    np.testing.assert_array_equal(vectors(model), reference)


def test_keras_h5_url_loads_like_the_file(server, cache_root):
    h5 = FIXTURES / "keras2_mobilenet_v2_035_no_top.h5"
    name = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
    server.files[f"/keras-applications/{name}"] = h5.read_bytes()
    model = mobilevec.load(server.url(f"/keras-applications/{name}"))
    assert model.config.name == V2_035
    np.testing.assert_array_equal(vectors(model), vectors(mobilevec.create(V2_035, weights=h5)))


def test_unknown_url_is_recognised_by_content(server, cache_root, tmp_path, reference):
    st = tmp_path / "w.safetensors"
    mobilevec.save(mobilevec.create(V2_035, weights=CKPT_DIR / "model.ckpt"), st)
    server.files["/blobs/8f3a"] = st.read_bytes()
    model = mobilevec.load(server.url("/blobs/8f3a"))
    assert model.config.name == V2_035
    np.testing.assert_array_equal(vectors(model), reference)

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.write(st, "weights/model.safetensors")
    server.files["/blobs/archive"] = buf.getvalue()
    np.testing.assert_array_equal(vectors(mobilevec.load(server.url("/blobs/archive"))),
                                  reference)


def test_real_v3_embedder_over_http_equals_the_file(server, cache_root, v3_tflite):
    path = "/mediapipe-assets/mobilenet_v3_small_075_224_embedder.tflite"
    server.files[path] = v3_tflite.read_bytes()
    model = mobilevec.load(server.url(path))
    direct = mobilevec.create("mobilenet_v3_small_075_224", weights=v3_tflite)
    np.testing.assert_array_equal(vectors(model, 1), vectors(direct, 1))
    warm = mobilevec.load(server.url(path))
    assert server.count(path) == 1
    np.testing.assert_array_equal(vectors(warm, 1), vectors(direct, 1))


def test_wrong_sha256_of_a_known_artifact_fails_and_leaves_nothing(server, cache_root,
                                                                   monkeypatch):
    from mobilevec.hub import artifacts

    url = server.url("/mediapipe-assets/mobilenet_v3_small_075_224_embedder.tflite")
    pinned = artifacts.Artifact(url, url, "mobilenet_v3_small_075_224", "0" * 64)
    monkeypatch.setitem(artifacts._KNOWN_BY_URL, url, pinned)
    server.files["/mediapipe-assets/mobilenet_v3_small_075_224_embedder.tflite"] = b"not it"
    with pytest.raises(DownloadError, match="sha256"):
        mobilevec.load(url)
    assert cache.list_entries() == []


def test_saved_model_archive_missing_variables_names_the_variable(server, cache_root,
                                                                  monkeypatch):
    # The SavedModel fixture holds only the first blocks: a hub tarball of it must fail
    # with the missing variable named, not with a half-loaded model.
    monkeypatch.setenv("MOBILEVEC_HUB_MIRROR", server.url(""))
    server.files[HUB_PATH] = tarball(SAVED_MODEL)
    with pytest.raises(WeightsError, match=r"expanded_conv_3"):
        mobilevec.load(HUB_HANDLE)


def test_archive_without_weights_is_a_clear_error(server, cache_root):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("README.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    server.files["/x.tar.gz"] = buf.getvalue()
    with pytest.raises(WeightsError, match="holds no weights"):
        mobilevec.load(server.url("/x.tar.gz"))


# --- local paths, file:// and arguments ----------------------------------------------

def test_local_paths_and_file_urls(cache_root, tmp_path, reference):
    prefix = CKPT_DIR / "model.ckpt"
    np.testing.assert_array_equal(vectors(mobilevec.load(prefix, model=V2_035)), reference)
    np.testing.assert_array_equal(vectors(mobilevec.load(prefix.as_uri(), model=V2_035)),
                                  reference)
    archive = tmp_path / "mobilenet_v2_0.35_224.tgz"
    archive.write_bytes(tarball(CKPT_DIR))
    np.testing.assert_array_equal(vectors(mobilevec.load(archive)), reference)


def test_trainable_and_arguments_like_keras_layer(cache_root):
    prefix = CKPT_DIR / "model.ckpt"
    frozen = mobilevec.load(prefix, model=V2_035)
    assert not any(p.requires_grad for p in frozen.parameters())
    frozen.train()
    assert not any(m.training for m in frozen.modules() if isinstance(m, torch.nn.BatchNorm2d))

    tuned = mobilevec.load(prefix, trainable=True, arguments={"batch_norm_momentum": 0.997},
                           model=V2_035)
    assert all(p.requires_grad for p in tuned.parameters())
    momenta = [m.momentum for m in tuned.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert momenta and all(m == pytest.approx(0.003) for m in momenta)
    with pytest.raises(MobilevecError, match="unknown arguments"):
        mobilevec.load(prefix, arguments={"batch_norm_decay": 0.9}, model=V2_035)


def test_not_a_handle_is_a_clear_error(cache_root):
    with pytest.raises(MobilevecError, match="not a file, directory, URL or handle"):
        mobilevec.load("no/such/thing")


# --- several processes ---------------------------------------------------------------

def _load_in_child(handle: str, root: str, mirror: str, out) -> None:
    os.environ["MOBILEVEC_CACHE"] = root
    os.environ["MOBILEVEC_HUB_MIRROR"] = mirror
    os.environ["NO_PROXY"] = "127.0.0.1,localhost"
    try:
        out.put(vectors(mobilevec.load(handle)).tolist())
    except Exception as e:  # noqa: BLE001 - reported to the parent
        out.put(repr(e))


def test_two_processes_loading_at_once_download_once(hub_mirror, cache_root, reference):
    hub_mirror.delay["/storage/model.tar.gz"] = 0.05  # keep the first download in flight
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    children = [ctx.Process(target=_load_in_child,
                            args=(HUB_HANDLE, str(cache_root), hub_mirror.url(""), out))
                for _ in range(2)]
    for child in children:
        child.start()
    results = [out.get(timeout=120) for _ in children]
    for child in children:
        child.join(timeout=60)
    for result in results:
        assert not isinstance(result, str), result
        np.testing.assert_allclose(np.array(result, np.float32), reference, rtol=0, atol=0)
    assert hub_mirror.count("/storage/model.tar.gz") == 1


# --- the CLI with --handle -----------------------------------------------------------

def test_embed_and_search_by_handle(hub_mirror, cache_root, tmp_path, capsys):
    from PIL import Image

    from mobilevec.data.images import load_image
    from mobilevec.embedding.store import read_store

    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        blocks = rng.integers(0, 256, (4, 4, 3)).astype(np.uint8)
        Image.fromarray(blocks).resize((80, 60), Image.BILINEAR).save(folder / f"p{i}.png")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "v.npy"
    assert cli_main(["embed", str(folder), "--handle", HUB_HANDLE, "-o", str(out),
                     "--quiet", "--workers", "0", "--exact-decode",
                     "--backend", "torch"]) == 3  # one bad file (the torch module: these
    # random weights amplify summation order beyond the engines' 1e-4)
    stored = read_store(out)
    assert len(stored.paths) == 3
    direct = mobilevec.create(V2_035, weights=CKPT_DIR / "model.ckpt")
    with torch.no_grad():  # the same batch: these random weights amplify summation order
        want = direct(torch.stack([load_image(p) for p in stored.paths])).numpy()
    np.testing.assert_allclose(stored.vectors, want, rtol=0, atol=1e-5)
    first = stored.paths[0]
    capsys.readouterr()
    # search rebuilds the model from the handle recorded with the vectors
    assert cli_main(["search", str(out), first, "-k", "1", "--workers", "0"]) == 0
    assert f"1    1.0000  {first}" in capsys.readouterr().out
