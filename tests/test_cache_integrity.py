"""The cache never serves tampered or wrong bytes, and downloads are bounded (issue 18).

Every derived file (``model.safetensors``, the unpacked archive) has its sha256 in
entry.json and is checked before it is read; an edited one is rebuilt from the
re-verified original, an edited original is fetched again, and offline the error names
``mobilevec cache clear``. Unpinned downloads are committed only when they parse as
weights; HTML answers, endless bodies and dripping servers are refused. All traffic goes
to a server on 127.0.0.1 (tests/_http_server.py).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import mobilevec
from mobilevec.errors import CorruptCacheError, DownloadError, OfflineError, WeightsError
from mobilevec.hub import cache
from mobilevec.hub import download as _download
from mobilevec.hub import loader as hub
from mobilevec.hub.archive import extract_archive

FIXTURES = Path(__file__).parent / "fixtures"
CKPT_DIR = FIXTURES / "tf_ckpt_v2_035"
H5 = FIXTURES / "keras2_mobilenet_v2_035_no_top.h5"
V2_035 = "mobilenet_v2_035_224"


def tarball(folder: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=path.relative_to(folder).as_posix())
    return buf.getvalue()


def vectors(model: torch.nn.Module) -> np.ndarray:
    x = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(x).numpy()


def flip_keeping_mtime(path: Path, offset: int) -> None:
    """Change one byte in place, keeping size and modification time (what bit rot or a
    careful edit looks like to a size + mtime check)."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x55
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return vectors(mobilevec.create(V2_035, weights=CKPT_DIR / "model.ckpt"))


@pytest.fixture
def served_tarball(server, cache_root):
    server.files["/m/model.tar.gz"] = tarball(CKPT_DIR)
    return server.url("/m/model.tar.gz")


# --- derived files are checked before they are read ----------------------------------------

def test_entry_records_the_sha256_of_every_derived_file(served_tarball, cache_root):
    mobilevec.load(served_tarball, model=V2_035)
    entry = cache.get_entry(served_tarball)
    extracted = {p.relative_to(entry.folder).as_posix(): hashlib.sha256(p.read_bytes())
                 .hexdigest() for p in (entry.folder / "extracted").rglob("*") if p.is_file()}
    assert len(extracted) == 3
    converted = hashlib.sha256(entry.safetensors_path.read_bytes()).hexdigest()
    assert entry.derived == {**extracted, "model.safetensors": converted}
    assert all(ok for _, ok, _ in cache.verify_entries())


def test_edited_converted_weights_are_rebuilt_not_served(served_tarball, cache_root,
                                                         reference, caplog):
    mobilevec.load(served_tarball, model=V2_035)
    converted = cache.get_entry(served_tarball).safetensors_path
    flip_keeping_mtime(converted, converted.stat().st_size - 100)  # a weight, not the header
    report = {e.url: (ok, why) for e, ok, why in cache.verify_entries()}
    assert report[served_tarball][0] is False and "model.safetensors" in report[served_tarball][1]

    with caplog.at_level(logging.WARNING, logger="mobilevec.hub.loader"):
        model = mobilevec.load(served_tarball, model=V2_035)
    np.testing.assert_array_equal(vectors(model), reference)
    assert "was changed" in caplog.text
    assert all(ok for _, ok, _ in cache.verify_entries())  # rebuilt and recorded again


def test_edited_unpacked_file_is_unpacked_again_even_offline(served_tarball, cache_root,
                                                             reference, server):
    mobilevec.load(served_tarball, model=V2_035)
    entry = cache.get_entry(served_tarball)
    entry.safetensors_path.unlink()  # the next load must read the unpacked checkpoint
    data = entry.folder / "extracted" / "model.ckpt.data-00000-of-00001"
    flip_keeping_mtime(data, 1000)
    requests = len(server.log)
    model = mobilevec.load(served_tarball, model=V2_035, offline=True)
    np.testing.assert_array_equal(vectors(model), reference)
    assert len(server.log) == requests  # rebuilt from the verified archive, no download


def test_file_added_to_the_unpacked_tree_is_not_trusted(served_tarball, cache_root, reference):
    mobilevec.load(served_tarball, model=V2_035)
    entry = cache.get_entry(served_tarball)
    entry.safetensors_path.unlink()
    (entry.folder / "extracted" / "planted.h5").write_bytes(H5.read_bytes())
    with pytest.raises(CorruptCacheError, match="planted.h5"):
        cache.verified_extracted(served_tarball)
    np.testing.assert_array_equal(vectors(mobilevec.load(served_tarball, model=V2_035)),
                                  reference)
    assert not (entry.folder / "extracted" / "planted.h5").exists()


def test_edited_original_is_downloaded_again(server, cache_root):
    name = "/keras/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
    server.files[name] = H5.read_bytes()
    url = server.url(name)
    expected = vectors(mobilevec.create(V2_035, weights=H5))
    mobilevec.load(url)
    entry = cache.get_entry(url)
    entry.safetensors_path.unlink()
    flip_keeping_mtime(entry.file, entry.size - 64)
    np.testing.assert_array_equal(vectors(mobilevec.load(url)), expected)
    assert server.count(name) == 2
    assert cache.verify_file(url) == entry.file


def test_edited_original_offline_names_cache_clear(server, cache_root):
    name = "/keras/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
    server.files[name] = H5.read_bytes()
    url = server.url(name)
    mobilevec.load(url)
    entry = cache.get_entry(url)
    entry.safetensors_path.unlink()
    flip_keeping_mtime(entry.file, entry.size - 64)
    with pytest.raises(OfflineError, match=f"mobilevec cache clear {url}"):
        mobilevec.load(url, offline=True)
    assert server.count(name) == 1


def test_converted_file_without_a_record_is_not_trusted(served_tarball, cache_root, reference):
    # An entry from an older mobilevec: model.safetensors exists, no sha256 recorded.
    mobilevec.load(served_tarball, model=V2_035)
    entry = cache.get_entry(served_tarball)
    meta = json.loads((entry.folder / "entry.json").read_text())
    del meta["derived"]["model.safetensors"]
    (entry.folder / "entry.json").write_text(json.dumps(meta))
    with pytest.raises(CorruptCacheError, match="not recorded"):
        cache.check_derived(served_tarball, "model.safetensors")
    np.testing.assert_array_equal(vectors(mobilevec.load(served_tarball, model=V2_035)),
                                  reference)
    assert cache.check_derived(served_tarball, "model.safetensors") is not None


# --- what gets committed -------------------------------------------------------------------

def test_html_answer_is_never_cached(server, cache_root):
    server.files["/login"] = b"<!doctype html><title>Sign in</title>"
    server.types["/login"] = "text/html; charset=utf-8"
    with pytest.raises(DownloadError, match="HTML page"):
        mobilevec.load(server.url("/login"))
    with pytest.raises(DownloadError, match="HTML page"):
        cache.fetch(server.url("/login"))
    assert cache.list_entries() == []


def test_body_cut_short_by_a_wrong_length_is_never_committed(server, cache_root):
    name = "/keras/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
    server.files[name] = H5.read_bytes()
    server.lengths[name] = 100_000  # the server says 100 kB and sends that much
    url = server.url(name)
    with pytest.raises(WeightsError, match="nothing was cached"):
        mobilevec.load(url)
    assert cache.list_entries() == []
    del server.lengths[name]
    assert mobilevec.load(url).config.name == V2_035  # a good answer later is cached


def test_archive_without_weights_is_not_committed(server, cache_root):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("index.html")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    server.files["/x.tgz"] = buf.getvalue()
    with pytest.raises(WeightsError, match="nothing was cached"):
        mobilevec.load(server.url("/x.tgz"))
    assert cache.list_entries() == []


def test_old_entry_that_does_not_parse_is_dropped_and_fetched_again(server, cache_root):
    # What older versions committed without checking: a truncated .h5.
    name = "/keras/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
    server.files[name] = H5.read_bytes()[:50_000]
    url = server.url(name)
    cache.fetch(url)  # no validate: committed as is
    server.files[name] = H5.read_bytes()
    assert mobilevec.load(url).config.name == V2_035
    assert server.count(name) == 2


def test_local_archive_replaced_on_disk_is_converted_again(tmp_path, cache_root):
    first = mobilevec.create(V2_035, weights=CKPT_DIR / "model.ckpt")
    second = mobilevec.create(V2_035, weights=CKPT_DIR / "model.ckpt")
    with torch.no_grad():
        for p in second.parameters():
            p.mul_(0.5)
    archive = tmp_path / "weights.tgz"

    def pack(model) -> None:
        st = tmp_path / "model.safetensors"
        mobilevec.save(model, st)
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(st, arcname="model.safetensors")

    pack(first)
    np.testing.assert_array_equal(vectors(mobilevec.load(archive)), vectors(first))
    time.sleep(0.01)
    pack(second)  # same path, new content
    np.testing.assert_array_equal(vectors(mobilevec.load(archive)), vectors(second))


# --- bounded downloads ---------------------------------------------------------------------

def test_dripping_server_is_cut_off_by_the_minimum_rate(server, cache_root, monkeypatch):
    monkeypatch.setattr(_download, "MIN_RATE", 1000)
    monkeypatch.setattr(_download, "RATE_WINDOW", 0.5)
    server.files["/drip.bin"] = bytes(10_000)
    server.drip["/drip.bin"] = 0.02  # 50 bytes/s: every read returns within the timeout
    start = time.monotonic()
    with pytest.raises(_download.NetworkError, match="slower than 1000 bytes/s"):
        cache.fetch(server.url("/drip.bin"))
    assert time.monotonic() - start < 5
    assert (cache.entry_dir(server.url("/drip.bin")) / cache.PART).is_file()  # resumable


def test_endless_body_without_length_is_capped(server, cache_root, monkeypatch):
    monkeypatch.setattr(_download, "MAX_DOWNLOAD_BYTES", 1 << 20)
    server.endless.add("/zeros")
    with pytest.raises(DownloadError, match="more than the 1048576 bytes allowed"):
        cache.fetch(server.url("/zeros"))
    assert cache.list_entries() == []
    assert not (cache.entry_dir(server.url("/zeros")) / cache.PART).exists()


def test_announced_size_over_the_cap_is_refused_before_the_body(server, cache_root):
    server.files["/big.bin"] = bytes(50_000)
    with pytest.raises(DownloadError, match="announces 50000 bytes"):
        cache.fetch(server.url("/big.bin"), size=40_000)
    with pytest.raises(DownloadError, match="50000 bytes, the artifact has 60000"):
        cache.fetch(server.url("/big.bin"), size=60_000)
    assert cache.list_entries() == []


# --- pinned md5 (Keras publishes md5s) -----------------------------------------------------

def test_keras_v3_artifacts_carry_the_published_md5():
    from mobilevec.hub.artifacts import resolve_handle

    a = resolve_handle("https://storage.googleapis.com/tensorflow/keras-applications/"
                       "mobilenet_v3/weights_mobilenet_v3_small_224_0.75_float_no_top_v2.h5")
    assert (a.model, a.md5, a.sha256) == ("mobilenet_v3_small_075_224",
                                          "ebdb5cc8e0b497cd13a7c275d475c819", None)


def test_md5_pin_is_checked_and_recorded(server, cache_root, tmp_path):
    data = H5.read_bytes()
    server.files["/k.h5"] = data
    url = server.url("/k.h5")
    with pytest.raises(DownloadError, match="md5 mismatch"):
        cache.fetch(url, md5="0" * 32)
    assert cache.list_entries() == []
    good = hashlib.md5(data).hexdigest()
    path = cache.fetch(url, md5=good, validate=lambda p: pytest.fail("pinned: not validated"))
    meta = json.loads((path.parent / "entry.json").read_text())
    assert meta["md5"] == good and meta["sha256"] == hashlib.sha256(data).hexdigest()

    src = tmp_path / "k.h5"
    src.write_bytes(data[:-1] + b"\x00")
    from mobilevec.hub import artifacts

    keras = ("https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v3/"
             "weights_mobilenet_v3_small_224_0.75_float_no_top_v2.h5")
    with pytest.raises(DownloadError, match="md5 mismatch"):
        cache.import_file(src, keras)
    assert artifacts.resolve_handle(keras).md5 is not None


# --- tar extension headers ------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "what"), [(tarfile.XHDTYPE, "pax"),
                                            (tarfile.GNUTYPE_LONGNAME, "GNU long-name")])
def test_huge_tar_extension_header_is_refused_before_it_is_read(tmp_path, kind, what):
    info = tarfile.TarInfo("././@PaxHeader" if kind == tarfile.XHDTYPE else "././@LongLink")
    info.type, info.size = kind, 1_500_000_000  # 1.5 GB, as in the issue
    head = info.tobuf(format=tarfile.GNU_FORMAT if kind != tarfile.XHDTYPE
                      else tarfile.USTAR_FORMAT)
    archive = tmp_path / "evil.tgz"
    archive.write_bytes(gzip.compress(head + bytes(1 << 20)))
    start = time.process_time()
    with pytest.raises(DownloadError, match=f"{what} header"):
        extract_archive(archive, tmp_path / "out")
    assert time.process_time() - start < 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.tgz"]


def test_many_small_extension_headers_are_capped_in_total(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for i in range(200):
            info = tarfile.TarInfo(f"f{i}")
            info.pax_headers = {"comment": "x" * 30_000}
            info.size = 1
            tar.addfile(info, io.BytesIO(b"a"))
    archive = tmp_path / "many.tgz"
    archive.write_bytes(buf.getvalue())
    with pytest.raises(DownloadError, match="in all"):
        extract_archive(archive, tmp_path / "out")


def test_resolved_path_is_verified_before_it_is_read(served_tarball, cache_root):
    mobilevec.load(served_tarball, model=V2_035)
    resolved = hub.resolve(served_tarball)
    flip_keeping_mtime(resolved.location / "model.ckpt.index", 10)
    with pytest.raises(CorruptCacheError, match="model.ckpt.index"):
        _ = hub.resolve(served_tarball).path
