"""The download/cache layer: fetch, resume, verify, lock, offline, safe extraction.

Every test talks to a server on 127.0.0.1 started here (tests/_http_server.py) and keeps
its cache in tmp_path via MOBILEVEC_CACHE; nothing else is contacted.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import multiprocessing
import os
import random
import stat
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from mobilevec.errors import DownloadError, OfflineError
from mobilevec.hub import cache
from mobilevec.hub import download as _download
from mobilevec.hub.archive import extract_archive


def blob(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def entry_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []




# --- environment ---------------------------------------------------------------------

def test_cache_dir_and_offline_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MOBILEVEC_CACHE", str(tmp_path / "c"))
    assert cache.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("MOBILEVEC_CACHE")
    assert "mobilevec" in str(cache.cache_dir())  # platformdirs' user cache folder
    for value, offline in [("1", True), ("TRUE", True), ("yes", True), ("0", False),
                           ("", False), ("no", False)]:
        monkeypatch.setenv("MOBILEVEC_OFFLINE", value)
        assert cache.is_offline() is offline


# --- fetch -----------------------------------------------------------------------------

def test_cold_fetch_downloads_once_and_warm_fetch_makes_no_request(server, cache_root):
    data = blob(300_000)
    server.files["/w/mobilenet_v2_1.0_224.tgz"] = data
    url = server.url("/w/mobilenet_v2_1.0_224.tgz")

    path = cache.fetch(url)
    assert path.read_bytes() == data
    assert path == cache_root / cache.entry_key(url) / "mobilenet_v2_1.0_224.tgz"
    assert server.count("/w/mobilenet_v2_1.0_224.tgz") == 1
    meta = json.loads((path.parent / "entry.json").read_text())
    assert (meta["url"], meta["size"], meta["sha256"]) == (url, len(data), sha(data))
    assert meta["sha256_source"] == "recorded"
    assert entry_files(path.parent) == ["entry.json", "mobilenet_v2_1.0_224.tgz"]

    assert cache.fetch(url) == path
    assert cache.fetch(url, sha256=sha(data)) == path  # a known hash upgrades the record
    assert server.count("/w/mobilenet_v2_1.0_224.tgz") == 1
    assert cache.get_entry(url).sha256_source == "registry"


def test_interrupted_download_resumes_with_a_range_request(server, cache_root):
    data = blob(1_000_000, seed=1)
    server.files["/big.bin"] = data
    server.cut("/big.bin", after=300_000)
    url = server.url("/big.bin")

    with pytest.raises(_download.NetworkError, match="interrupted after 300000"):
        cache.fetch(url, sha256=sha(data))
    folder = cache.entry_dir(url)
    assert (folder / cache.PART).stat().st_size == 300_000

    path = cache.fetch(url, sha256=sha(data))
    assert path.read_bytes() == data
    first, second = server.requests("/big.bin")
    assert "Range" not in first.headers
    assert second.headers["Range"] == "bytes=300000-"
    assert second.headers["If-Range"]  # the ETag: a changed file would come back whole
    assert entry_files(folder) == ["big.bin", "entry.json"]


def test_file_changed_between_attempts_is_fetched_whole_not_spliced(server, cache_root):
    old, new = blob(400_000, seed=8), blob(400_000, seed=9)
    server.files["/v.bin"] = old
    server.cut("/v.bin", after=150_000)
    url = server.url("/v.bin")
    with pytest.raises(_download.NetworkError):
        cache.fetch(url)
    server.files["/v.bin"] = new  # new ETag: the If-Range no longer matches
    assert cache.fetch(url).read_bytes() == new
    assert server.requests("/v.bin")[1].headers["Range"] == "bytes=150000-"


def test_server_that_ignores_range_restarts_the_download(server, cache_root):
    data = blob(500_000, seed=2)
    server.files["/f.bin"] = data
    server.ranges = False
    server.cut("/f.bin", after=200_000)
    url = server.url("/f.bin")
    with pytest.raises(DownloadError):
        cache.fetch(url)
    path = cache.fetch(url)  # asks for a range, gets 200: starts over
    assert path.read_bytes() == data
    assert server.requests("/f.bin")[1].headers["Range"] == "bytes=200000-"
    assert cache.get_entry(url).sha256 == sha(data)


def test_stalled_download_times_out_and_keeps_the_partial_file(server, cache_root,
                                                                monkeypatch):
    monkeypatch.setattr(_download, "DEFAULT_TIMEOUT", 0.3)
    data = blob(400_000, seed=3)
    server.files["/slow.bin"] = data
    server.cut("/slow.bin", after=100_000, stall=1.5)
    url = server.url("/slow.bin")
    with pytest.raises(_download.NetworkError, match="interrupted"):
        cache.fetch(url)
    assert (cache.entry_dir(url) / cache.PART).stat().st_size == 100_000
    assert cache.fetch(url).read_bytes() == data


def test_wrong_sha256_raises_and_leaves_nothing_in_the_entry(server, cache_root):
    server.files["/x.bin"] = blob(100_000)
    url = server.url("/x.bin")
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        cache.fetch(url, sha256="0" * 64)
    assert entry_files(cache.entry_dir(url)) == []
    assert cache.list_entries() == []


def test_redirect_chain_is_followed_and_the_final_name_kept(server, cache_root):
    data = blob(50_000, seed=4)
    server.redirects["/google/mobilenet/5"] = "/kaggle/models/5"
    server.redirects["/kaggle/models/5"] = "/storage/model.tar.gz"
    server.files["/storage/model.tar.gz"] = data
    url = server.url("/google/mobilenet/5") + "?tf-hub-format=compressed"

    path = cache.fetch(url, progress=True)
    assert path.read_bytes() == data
    assert path.name == "model.tar.gz"
    assert cache.get_entry(url).final_url.endswith("/storage/model.tar.gz")
    assert [server.count(p) for p in ("/google/mobilenet/5", "/kaggle/models/5",
                                      "/storage/model.tar.gz")] == [1, 1, 1]


def test_content_disposition_names_the_file(server, cache_root):
    server.files["/download"] = b"abc"
    server.names["/download"] = "entry.json"  # a reserved name must not clobber metadata
    path = cache.fetch(server.url("/download"))
    assert path.name == "download-entry.json"
    assert path.read_bytes() == b"abc"


def test_redirect_loop_and_http_errors_are_download_errors(server, cache_root):
    server.redirects["/a"] = "/b"
    server.redirects["/b"] = "/a"
    with pytest.raises(DownloadError, match="redirect"):
        cache.fetch(server.url("/a"))
    with pytest.raises(DownloadError, match="404") as info:
        cache.fetch(server.url("/missing"))
    assert not isinstance(info.value, _download.NetworkError)
    with pytest.raises(DownloadError, match="scheme"):
        cache.fetch("ftp://127.0.0.1/x")
    assert cache.list_entries() == []
    assert list(cache_root.glob("[0-9a-f]*")) == []


def test_lock_held_too_long_is_a_clear_error(server, cache_root, monkeypatch):
    monkeypatch.setattr(cache, "LOCK_TIMEOUT", 0.2)
    server.files["/l.bin"] = b"x"
    url = server.url("/l.bin")
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with cache.entry_lock(url):
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(10)
    try:
        with pytest.raises(DownloadError, match="another process has held this cache lock"):
            cache.fetch(url)
    finally:
        release.set()
        holder.join()
    assert cache.fetch(url).read_bytes() == b"x"
    assert server.count("/l.bin") == 1


def _fetch_in_child(url: str, root: str, barrier, results) -> None:
    """Runs in a spawned process: wait for the sibling, then fetch the same URL."""
    from mobilevec.hub import cache as child_cache

    barrier.wait(timeout=60)
    try:
        path = child_cache.fetch(url, cache=Path(root))
        results.put((str(path), sha(path.read_bytes()), None))
    except Exception as e:  # report, don't hang the parent
        results.put((None, None, repr(e)))


def test_two_processes_fetching_at_once_download_once(server, cache_root):
    data = blob(1_000_000, seed=5)
    server.files["/shared.bin"] = data
    server.delay["/shared.bin"] = 0.02  # ~0.3 s, so the second process surely waits
    url = server.url("/shared.bin")
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_fetch_in_child, args=(url, str(cache_root), barrier, results))
             for _ in range(2)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert [o[2] for o in outcomes] == [None, None]
    assert outcomes[0][:2] == outcomes[1][:2] == (str(cache.entry_dir(url) / "shared.bin"),
                                                  sha(data))
    assert server.count("/shared.bin") == 1


def test_file_urls_are_copied_in_even_offline(tmp_path, cache_root):
    src = tmp_path / "weights.h5"
    src.write_bytes(b"local bytes")
    path = cache.fetch(src.as_uri(), offline=True)
    assert path.read_bytes() == b"local bytes"
    assert path.name == "weights.h5"


# --- offline and network failure ---------------------------------------------------

def test_offline_with_empty_cache_says_what_is_missing_and_how_to_import(server, cache_root):
    server.files["/m.tgz"] = b"x"
    url = server.url("/m.tgz")
    with pytest.raises(OfflineError) as info:
        cache.fetch(url, offline=True, handle="google/imagenet/mobilenet_v2_100_224/5")
    message = str(info.value)
    assert url in message
    assert str(cache.entry_dir(url)) in message and str(cache_root) in message
    assert "mobilevec cache import FILE --as google/imagenet/mobilenet_v2_100_224/5" in message
    assert server.log == []


def test_offline_env_with_warm_cache_works_without_network(server, cache_root, monkeypatch):
    server.files["/m.tgz"] = b"model"
    url = server.url("/m.tgz")
    path = cache.fetch(url)
    monkeypatch.setenv("MOBILEVEC_OFFLINE", "1")
    assert cache.fetch(url) == path
    with pytest.raises(OfflineError, match="mobilevec cache import"):
        cache.fetch(server.url("/other.tgz"))
    assert len(server.log) == 1


def test_network_down_uses_warm_cache_and_fails_cold_with_advice(server, cache_root):
    server.files["/a.bin"] = b"aaa"
    server.files["/b.bin"] = b"bbb"
    warm = cache.fetch(server.url("/a.bin"))
    cold_url = server.url("/b.bin")
    server.stop()
    assert cache.fetch(server.url("/a.bin")).read_bytes() == b"aaa"
    with pytest.raises(DownloadError) as info:
        cache.fetch(cold_url)
    assert isinstance(info.value, _download.NetworkError)
    assert not isinstance(info.value, OfflineError)
    assert "network failed" in str(info.value) and "mobilevec cache import" in str(info.value)
    assert not cache.entry_dir(cold_url).exists()
    assert warm.exists()


# --- cache management -------------------------------------------------------------

def test_import_list_verify_clear(server, cache_root, tmp_path):
    data = blob(20_000, seed=6)
    src = tmp_path / "v3-small_224_0.75_float.tgz"
    src.write_bytes(data)
    url = server.url("/ckpt/v3-small_224_0.75_float.tgz")

    with pytest.raises(DownloadError, match="sha256 mismatch"):
        cache.import_file(src, url, sha256="f" * 64)
    assert cache.list_entries() == []

    entry = cache.import_file(src, url)
    assert (entry.url, entry.source, entry.sha256, entry.sha256_source) == (
        url, "import", sha(data), "recorded")
    assert cache.fetch(url, offline=True) == entry.file  # imported == downloaded
    server.files["/other.bin"] = b"other"
    cache.fetch(server.url("/other.bin"))
    assert server.log == [r for r in server.log if r.path == "/other.bin"]

    assert {e.url for e in cache.list_entries()} == {url, server.url("/other.bin")}
    assert all(ok for _, ok, _ in cache.verify_entries())

    # Bit rot: same size, same mtime. Only a full verify can see it.
    st = entry.file.stat()
    with entry.file.open("r+b") as f:
        f.seek(100)
        f.write(bytes([data[100] ^ 0xFF]))
    os.utime(entry.file, ns=(st.st_atime_ns, st.st_mtime_ns))
    report = {e.url: (ok, why) for e, ok, why in cache.verify_entries()}
    assert report[url][0] is False and "corrupt" in report[url][1]
    assert report[server.url("/other.bin")] == (True, "ok")

    assert cache.clear(url) == 1
    assert cache.get_entry(url) is None and not cache.entry_dir(url).exists()
    assert cache.clear() == 1
    assert cache.list_entries() == []


def test_file_changed_on_disk_is_downloaded_again(server, cache_root, caplog):
    data = blob(10_000, seed=7)
    server.files["/c.bin"] = data
    url = server.url("/c.bin")
    path = cache.fetch(url)
    path.write_bytes(b"y" * len(data))  # same size, new mtime: fetch re-hashes
    with caplog.at_level(logging.WARNING, logger="mobilevec.hub.cache"):
        assert cache.fetch(url).read_bytes() == data
    assert server.count("/c.bin") == 2
    assert "changed on disk" in caplog.text


def test_derived_files_go_when_the_entry_is_replaced(server, cache_root, tmp_path):
    server.files["/d.bin"] = b"one"
    url = server.url("/d.bin")
    path = cache.fetch(url)
    with cache.entry_lock(url):
        (path.parent / cache.SAFETENSORS).write_bytes(b"converted")
    src = tmp_path / "d.bin"
    src.write_bytes(b"two")
    entry = cache.import_file(src, url)
    assert entry.file.read_bytes() == b"two"
    assert not entry.safetensors_path.exists()


# --- archives -----------------------------------------------------------------------

def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]],
         mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, None


GOOD = [_file("./saved_model.pb", b"graph"), _file("./variables/variables.index", b"idx")]


@pytest.mark.parametrize(("bad", "why"), [
    (_file("../evil", b"x"), "'..'"),
    (_file("variables/../../evil", b"x"), "'..'"),
    (_file("/tmp/evil", b"x"), "absolute"),
    (_special("link", tarfile.SYMTYPE, "../../outside"), "symbolic link"),
    (_special("inside", tarfile.SYMTYPE, "saved_model.pb"), "symbolic link"),
    (_special("hard", tarfile.LNKTYPE, "/etc/passwd"), "hard link"),
    (_special("dev", tarfile.CHRTYPE), "device"),
    (_special("fifo", tarfile.FIFOTYPE), "FIFO"),
])
def test_unsafe_tar_members_are_refused_and_nothing_is_left(tmp_path, bad, why):
    archive = _tar(tmp_path / "module.tar.gz", [*GOOD, bad])  # good members come first
    dest = tmp_path / "out" / "extracted"
    with pytest.raises(DownloadError, match=why) as info:
        extract_archive(archive, dest)
    assert str(archive) in str(info.value) and bad[0].name in str(info.value)
    assert not dest.exists()
    assert list((tmp_path / "out").iterdir()) == []
    assert not (tmp_path / "evil").exists()


def test_good_tar_gz_and_zip_extract_by_content_not_name(tmp_path):
    tgz = _tar(tmp_path / "weights.bin", [*GOOD, _special("empty_dir", tarfile.DIRTYPE)])
    out = extract_archive(tgz, tmp_path / "a")
    assert (out / "empty_dir").is_dir()
    assert (out / "saved_model.pb").read_bytes() == b"graph"
    assert (out / "variables" / "variables.index").read_bytes() == b"idx"

    plain = _tar(tmp_path / "plain", GOOD, mode="w")
    assert (extract_archive(plain, tmp_path / "b") / "saved_model.pb").exists()

    zpath = tmp_path / "model.dat"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("keras/model.h5", b"h5 bytes" * 100)
        zf.writestr("keras/", b"")
    out = extract_archive(zpath, tmp_path / "c")
    assert (out / "keras" / "model.h5").read_bytes() == b"h5 bytes" * 100

    # Extracting again replaces the folder.
    assert (extract_archive(plain, tmp_path / "c") / "saved_model.pb").exists()
    assert not (tmp_path / "c" / "keras").exists()


def test_unsafe_zip_members_are_refused(tmp_path):
    for name, attr, why in [("../evil", 0, "'..'"), ("/abs", 0, "absolute"),
                            ("link", (stat.S_IFLNK | 0o777) << 16, "symbolic link")]:
        zpath = tmp_path / "bad.zip"
        with zipfile.ZipFile(zpath, "w") as zf:
            zf.writestr("ok.txt", b"fine")
            info = zipfile.ZipInfo(name)
            info.create_system, info.external_attr = 3, attr
            zf.writestr(info, b"../../target")
        with pytest.raises(DownloadError, match=why):
            extract_archive(zpath, tmp_path / "z")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.zip"]


def test_size_and_count_caps_are_enforced(tmp_path):
    archive = _tar(tmp_path / "big.tgz", [_file(f"f{i}", b"x" * 600) for i in range(3)])
    with pytest.raises(DownloadError, match="beyond 1000 bytes"):
        extract_archive(archive, tmp_path / "out", max_bytes=1000)
    with pytest.raises(DownloadError, match="more than 2 members"):
        extract_archive(archive, tmp_path / "out", max_files=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.tgz"]
    assert len(list(extract_archive(archive, tmp_path / "out").iterdir())) == 3


def test_not_an_archive_or_corrupt_archive_is_a_download_error(tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(b"not an archive at all" * 50)
    with pytest.raises(DownloadError, match="not a tar"):
        extract_archive(junk, tmp_path / "out")
    good = _tar(tmp_path / "m.tgz", GOOD).read_bytes()
    truncated = tmp_path / "cut.tgz"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(DownloadError, match="corrupt"):
        extract_archive(truncated, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.tgz", "junk", "m.tgz"]


def test_fetch_extracted_unpacks_once(server, cache_root, tmp_path):
    server.files["/module/5"] = _tar(tmp_path / "m.tgz", GOOD).read_bytes()
    url = server.url("/module/5") + "?tf-hub-format=compressed"
    out = cache.fetch_extracted(url)
    assert out == cache.entry_dir(url) / "extracted"
    assert (out / "saved_model.pb").read_bytes() == b"graph"
    assert cache.fetch_extracted(url) == out
    assert server.count("/module/5") == 1
    assert cache.get_entry(url).extracted == out
