"""`mobilevec embed` under faults, run as a user runs it: odd files, odd names, signals,
full and read-only disks, foreign targets, damaged parts, moved and changing inputs.

Every store is also read the way other programs read it, with pandas and pyarrow.dataset:
each stored row exactly once, nothing missing against mobilevec's own reader, at every
point where a run was stopped. Images are tiny and inputs 32 pixels, to keep this quick.
"""

from __future__ import annotations

import contextlib
import csv
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_embed_pipeline import V3, photo, rows, weights  # noqa: F401 - a fixture

from mobilevec.cli.app import main
from mobilevec.embedding import store as store_module
from mobilevec.embedding.store import META_NAME, VectorStore, read_errors, read_store

REPO = Path(__file__).resolve().parents[1]
PYTHON = [sys.executable, "-m", "mobilevec.cli"]


@pytest.fixture(scope="module")
def artifact(weights):  # noqa: F811 - test_embed_pipeline's fixture, imported above
    """Random V3 weights with data-set BatchNorm statistics, saved to a file."""
    return weights


def model_args(artifact) -> list[str]:
    return ["--model", V3, "--weights", str(artifact), "--size", "32", "--quiet"]


def embed(*argv, artifact) -> int:
    return main(["embed", *map(str, argv), *model_args(artifact)])


def cli(*argv, timeout: float = 120, **options) -> subprocess.CompletedProcess:
    """``python -m mobilevec.cli ARGV`` in a fresh process, bounded in time."""
    return subprocess.run([*PYTHON, *argv], cwd=REPO, capture_output=True, timeout=timeout,
                          **options)


def path_text(path: str) -> str:
    """How a name that is not UTF-8 reads in the ``path`` column: its bytes as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def text(stream: bytes) -> str:
    return stream.decode("utf-8", "replace")


def folder_of_photos(folder: Path, count: int, start: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [photo(folder / f"{i:03d}.png", i, (24, 24)) for i in range(start, start + count)]


def external_paths(out: Path) -> tuple[list[str], list[str]]:
    """The ``path`` column as pandas and as pyarrow.dataset read the folder."""
    import pandas as pd
    import pyarrow.dataset as ds

    by_pandas = pd.read_parquet(out, columns=["path"])["path"].tolist()
    by_arrow = ds.dataset(out, format="parquet").to_table(columns=["path"]).column(
        "path").to_pylist()
    return by_pandas, by_arrow


def check_readers(out: Path, expected: set[str] | None = None) -> set[str]:
    """pandas, pyarrow.dataset and mobilevec see the same rows, each once; returns them."""
    by_pandas, by_arrow = external_paths(out)
    assert len(set(by_pandas)) == len(by_pandas), "a row is duplicated for pandas"
    assert sorted(by_pandas) == sorted(by_arrow)
    ours = [path_text(p) for p in read_store(out).paths]
    assert sorted(by_pandas) == sorted(ours), "pandas and mobilevec disagree"
    if expected is not None:
        assert set(ours) <= {path_text(p) for p in expected}
    return set(ours)


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """A small tmpfs at ``path``; skips (visibly) where mounting is not allowed."""
    path.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                               str(path)], capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("no mount command: cannot make a small file system for this test")
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); needs root with "
                    "CAP_SYS_ADMIN")

    def remount(options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)

    try:
        yield remount
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


# --- files that are not images: FIFOs, sockets, devices, hung reads -----------------------
def test_fifo_socket_and_device_are_failures_not_hangs(tmp_path, artifact):
    folder = tmp_path / "in"
    good = folder_of_photos(folder, 3)
    os.mkfifo(folder / "pipe.jpg")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(folder / "sock.png"))
    (folder / "zero.jpg").symlink_to("/dev/zero")
    os.mkfifo(tmp_path / "named.png")  # named on the command line, not found by the walk
    out = tmp_path / "v.parquet"
    try:
        done = cli("embed", str(folder), str(tmp_path / "named.png"), "-o", str(out),
                   *model_args(artifact), "--workers", "2", timeout=90)
    finally:
        listener.close()
    assert done.returncode == 3, text(done.stderr)
    assert "Traceback" not in text(done.stderr)
    errors = dict(read_errors(out))
    assert set(errors) == {str(folder / "pipe.jpg"), str(folder / "sock.png"),
                           str(folder / "zero.jpg"), str(tmp_path / "named.png")}
    assert "FIFO" in errors[str(folder / "pipe.jpg")]
    assert "socket" in errors[str(folder / "sock.png")]
    assert "character device" in errors[str(folder / "zero.jpg")]
    assert sorted(rows(out)) == sorted(map(str, good))


def test_decoding_never_blocks_on_a_fifo(tmp_path):
    fifo = tmp_path / "late.png"
    os.mkfifo(fifo)  # no writer ever comes: a plain open() would wait forever
    check = ("import sys; from mobilevec.data.images import ImageError, load_array\n"
             "try:\n    load_array(sys.argv[1], 32)\nexcept ImageError as e:\n    print(e)")
    done = subprocess.run([sys.executable, "-c", check, str(fifo)], cwd=REPO, timeout=60,
                          capture_output=True, text=True)
    assert "not a regular file (a FIFO" in done.stdout, done.stderr


SLOW_FILE = """
import sys, time
from pathlib import Path
from mobilevec.embedding import batching
load = batching.Preprocessing.load
def slow(self, path):
    if Path(path).name == "slow.png":  # what a read on a hung network mount does
        time.sleep(600)
    return load(self, path)
batching.Preprocessing.load = slow
from mobilevec.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_file_that_hangs_is_given_up_after_the_file_timeout(tmp_path, artifact):
    folder = tmp_path / "in"
    good = folder_of_photos(folder, 9)
    photo(folder / "slow.png", 99, (24, 24))
    out = tmp_path / "v.parquet"
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", SLOW_FILE, "embed", str(folder), "-o",
                           str(out), *model_args(artifact), "--workers", "2",
                           "--file-timeout", "0.5"], cwd=REPO, capture_output=True,
                          timeout=120)
    assert done.returncode == 3, text(done.stderr)
    assert time.monotonic() - start < 60
    assert "longer than 0.5 s" in dict(read_errors(out))[str(folder / "slow.png")]
    assert sorted(rows(out)) == sorted(map(str, good))


# --- names --------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".parquet", ".npy"])
def test_non_utf8_file_names_are_stored_losslessly_and_resumed(tmp_path, artifact, suffix,
                                                               capsys):
    folder = tmp_path / "in"
    good = folder_of_photos(folder, 2)
    latin1 = os.fsdecode(os.fsencode(folder) + b"/caf\xe9.png")  # a Latin-1 name
    photo(Path(latin1), 7, (24, 24))
    broken = os.fsdecode(os.fsencode(folder) + b"/cass\xe9.jpg")
    Path(broken).write_bytes(b"not an image")
    named = os.fsencode(tmp_path) + b"/na\xefve.png"
    photo(Path(os.fsdecode(named)), 8, (24, 24))
    out = tmp_path / f"v{suffix}"
    argv = [b"embed", os.fsencode(folder), named, b"-o", os.fsencode(out),
            *map(os.fsencode, model_args(artifact)), b"--workers", b"0"]
    first = cli(*argv)
    assert first.returncode == 3, text(first.stderr)  # the broken file, nothing else
    assert "Traceback" not in text(first.stderr)
    assert "cass\\xe9.jpg" in text(first.stderr)  # printable, not a crash
    stored = read_store(out)
    assert sorted(stored.paths) == sorted([*map(str, good), latin1, os.fsdecode(named)])
    assert [p for p, _ in read_errors(out)] == [broken]
    capsys.readouterr()
    assert main(list(map(os.fsdecode, argv))) == 3  # the resume, in this process
    assert "0 embedded, 1 failed, 4 skipped" in capsys.readouterr().out
    if suffix == ".parquet":
        check_readers(out)
        import pandas as pd

        table = pd.read_parquet(out).set_index("path")
        assert table.loc[path_text(latin1), "path_raw"] == os.fsencode(latin1)
        assert table.loc[path_text(str(good[0])), "path_raw"] is None
        errors_csv = out / "_errors.csv"
    else:
        with open(tmp_path / "v.index.csv", encoding="utf-8") as f:
            index = list(csv.DictReader(f))
        assert {bytes.fromhex(r["path_raw"]) for r in index if r["path_raw"]} == {
            os.fsencode(latin1), named}
        errors_csv = tmp_path / "v.errors.csv"
    with open(errors_csv, encoding="utf-8") as f:
        [row] = list(csv.DictReader(f))
    assert bytes.fromhex(row["path_raw"]) == os.fsencode(broken)


# --- folders that cannot be walked ---------------------------------------------------------
def test_folders_that_cannot_be_listed_are_failures(tmp_path, artifact, monkeypatch, capsys):
    top = tmp_path / "in"
    good = folder_of_photos(top, 2)
    # A folder whose absolute path is longer than PATH_MAX (4096): it exists, but os.walk
    # cannot list it by that path (ENAMETOOLONG).
    monkeypatch.chdir(top)
    depth = 0
    while len(str(top)) + depth * 201 < 4300:
        os.mkdir("d" * 200)
        os.chdir("d" * 200)
        depth += 1
    photo(Path("deep.png"), 5, (24, 24))
    monkeypatch.chdir(tmp_path)
    locked = top / "locked"
    locked.mkdir()
    photo(locked / "hidden.png", 6, (24, 24))
    locked.chmod(0)
    out = tmp_path / "v.parquet"
    code = embed(top, "-o", out, "--workers", "0", artifact=artifact)
    locked.chmod(0o755)
    errors = dict(read_errors(out))
    too_long = [p for p, reason in errors.items() if "File name too long" in reason]
    assert code == 3 and len(too_long) == 1 and len(too_long[0]) > 4096
    if os.geteuid() != 0:  # root reads a chmod 000 folder
        assert "ermission denied" in errors[str(locked)]
    assert set(map(str, good)) <= set(rows(out))
    assert "cannot list this folder" in capsys.readouterr().err


# --- signals ------------------------------------------------------------------------------
SLOW_RUN = """
import os, sys, time
from mobilevec.embedding import store
append, merged, rename = store.VectorStore.append, store._ParquetParts.write_merged, os.rename
def slow_append(*args, **kwargs):  # batches committed at a pace a kill can land between
    append(*args, **kwargs)
    time.sleep(0.04)
def slow_merge(*args, **kwargs):
    time.sleep(0.3)
    merged(*args, **kwargs)
    time.sleep(0.3)
def slow_rename(*args, **kwargs):
    time.sleep(0.02)
    rename(*args, **kwargs)
store.VectorStore.append = slow_append
store._ParquetParts.write_merged = slow_merge
os.rename = slow_rename
from mobilevec.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _merge_marks(out: Path) -> set[tuple[str, int]]:
    """What a merge makes: its folder of singles, then the hidden merged part."""
    if not out.is_dir():
        return set()
    return {(p.name, p.stat().st_ino) for p in out.iterdir()
            if p.name.startswith("_merge-") or (p.name.startswith("part-") and p.is_dir())}


def test_sigint_and_sigterm_at_random_points_keep_one_readable_dataset(tmp_path, artifact):
    folder = tmp_path / "in"
    paths = folder_of_photos(folder, 32)
    out = tmp_path / "v.parquet"
    argv = [sys.executable, "-c", SLOW_RUN, "embed", str(folder), "-o", str(out),
            *model_args(artifact), "--batch-size", "4", "--workers", "1"]
    rng = random.Random(20)
    # (signal, to the process group as Ctrl-C and `timeout` do or to the process alone as
    # Docker does, when, new images before the run: each run has work, then a merge)
    plan = [(signal.SIGTERM, True, "run", 0), (signal.SIGINT, True, "run", 16),
            (signal.SIGTERM, False, "merge folder", 8), (signal.SIGINT, True, "merged part", 8)]
    for number, group, when, new in plan:
        paths += folder_of_photos(folder, new, start=len(paths))
        parts = len(list(out.glob("part-*.parquet")))
        marks = _merge_marks(out)
        process = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and process.poll() is None:
            if when == "run" and len(list(out.glob("part-*.parquet"))) >= parts + 2:
                delay = rng.uniform(0, 0.2)
                break
            fresh = {name for name, _ in _merge_marks(out) - marks}
            if when == "merge folder" and fresh:  # moving the singles: > 0.6 s from here
                delay = rng.uniform(0, 0.4)
                break
            if when == "merged part" and any(n.startswith("_merge-") for n in fresh):
                delay = rng.uniform(0, 0.25)  # written; swapped in 0.3 s
                break
            time.sleep(0.002)
        assert process.poll() is None, f"the run ended before the {when} kill"
        time.sleep(delay)
        (os.killpg if group else os.kill)(process.pid, number)
        stdout, stderr = process.communicate(timeout=60)
        assert process.returncode == (143 if number == signal.SIGTERM else 130), text(stderr)
        assert "Traceback" not in text(stderr), text(stderr)
        check_readers(out, set(map(str, paths)))
    expected = set(map(str, paths))
    final = cli("embed", str(folder), "-o", str(out), *model_args(artifact), "--batch-size",
                "4", "--workers", "1")
    assert final.returncode == 0, text(final.stderr)
    assert check_readers(out) == expected
    assert len([p for p in out.iterdir() if p.name.startswith("part-") and p.is_dir()]) == 0
    clean = tmp_path / "clean.parquet"
    assert embed(folder, "-o", clean, "--batch-size", "4", "--workers", "0",
                 artifact=artifact) == 0
    reference, resumed = rows(clean), rows(out)
    for path in expected:
        np.testing.assert_allclose(resumed[path], reference[path], atol=1e-5)


def _toy_store(out: Path, count: int) -> tuple[dict, set[str]]:
    meta = {"model": V3, "fingerprint": "x", "dim": 3, "dtype": "float32", "normalize": False,
            "preprocessing": {}}
    with VectorStore.open(out, meta) as store:
        for i in range(count):
            store.append([(f"/p{i}", 1, 2)], np.full((1, 3), i, np.float32))
    return meta, {f"/p{i}" for i in range(count)}


class Stop(KeyboardInterrupt):
    """What a signal does at one chosen step."""


def test_the_merge_shows_each_row_once_at_every_step_and_after_a_stop_at_any(tmp_path,
                                                                           monkeypatch):
    """Every file operation of the end-of-run merge is watched: before and after each,
    pandas, pyarrow and mobilevec read the same rows once; then runs are stopped after
    each step in turn, and the next writer must leave the same rows, merged."""
    watch = {"out": None, "expected": None, "steps": [], "stop_at": None}

    def watched(name, function):
        def step(*args, **kwargs):
            if watch["out"] is None:
                return function(*args, **kwargs)
            assert check_readers(watch["out"]) == watch["expected"], f"before {name}"
            result = function(*args, **kwargs)
            watch["steps"].append(name)
            assert check_readers(watch["out"]) == watch["expected"], f"after {name}"
            if len(watch["steps"]) == watch["stop_at"]:
                raise Stop
            return result
        return step

    monkeypatch.setattr(os, "rename", watched("rename", os.rename))
    monkeypatch.setattr(store_module, "exchange", watched("exchange", store_module.exchange))
    monkeypatch.setattr(store_module, "atomic_write",
                        watched("write", store_module.atomic_write))
    monkeypatch.setattr(store_module.shutil, "rmtree", watched("rmtree", shutil.rmtree))

    def merge(out: Path, stop_at: int | None) -> None:
        meta, expected = _toy_store(out, 6)
        watch.update(out=out, expected=expected, steps=[], stop_at=stop_at)
        with VectorStore.open(out, meta) as store:
            store.finish()

    merge(tmp_path / "full.parquet", None)
    steps = list(watch["steps"])
    # the probe of the file system's swap, six singles moved, the merged part written and
    # swapped in, the singles deleted, _errors.csv
    assert steps.count("rename") == 6 and steps.count("exchange") == 2
    assert {"write", "rmtree"} <= set(steps)
    assert len(list((tmp_path / "full.parquet").glob("part-*"))) == 1
    for k in range(1, len(steps) + 1):  # a stop after each step, then a new run
        out = tmp_path / f"stopped{k}.parquet"
        with pytest.raises(Stop):
            merge(out, k)
        meta = watch["out"] and read_store(out).meta
        watch["stop_at"] = None
        with VectorStore.open(out, meta) as store:  # recovers, then merges
            store.finish()
        watch["out"] = None
        assert check_readers(out) == {f"/p{i}" for i in range(6)}
        assert len(list(out.glob("part-*"))) == 1, sorted(os.listdir(out))
        assert not [p for p in out.iterdir() if p.name.startswith(("_merge", "."))]


def test_a_lock_held_before_the_metadata_exists_stops_a_second_first_run(tmp_path, artifact,
                                                                        capsys):
    out = tmp_path / "v.parquet"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
         "fcntl.lockf(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)",
         str(out / "_lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"  # a first run, just started
        code = embed(photo(tmp_path / "a.png", 0), "-o", out, "--half", "--workers", "0",
                     artifact=artifact)
    finally:
        holder.kill()
        holder.wait()
    assert code == 1 and "being written by another run" in capsys.readouterr().err
    assert not (out / META_NAME).exists()  # it wrote nothing under the other run's lock


def test_two_first_runs_with_different_options_never_mix(tmp_path, artifact):
    folder = tmp_path / "in"
    folder_of_photos(folder, 8)
    out = tmp_path / "v.parquet"
    runs = [subprocess.Popen([*PYTHON, "embed", str(folder), "-o", str(out),
                              *model_args(artifact), "--workers", "0", *extra], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for extra in ([], ["--half"])]
    results = [(r.wait(timeout=120), text(r.communicate()[1])) for r in runs]
    # concurrent: one is refused by the lock; one after the other: by the stored settings
    assert sorted(code for code, _ in results) == [0, 1], results
    for code, err in results:
        assert "Traceback" not in err
        if code:
            assert "being written by another run" in err or "different settings" in err
    dtype = read_store(out).meta["dtype"]
    assert read_store(out).vectors.dtype == np.dtype(dtype)
    with open(out / META_NAME) as f:
        assert dtype in f.read()
    assert len(rows(out)) == 8


# --- full and read-only disks ---------------------------------------------------------------
def test_a_full_disk_is_one_line_and_a_failed_merge_a_warning(tmp_path, artifact, capsys,
                                                              monkeypatch):
    folder = tmp_path / "in"
    paths = folder_of_photos(folder, 48)
    disk = tmp_path / "disk"
    with tmpfs(disk, "48k") as remount:
        out = disk / "v.parquet"
        argv = (folder, "-o", out, "--batch-size", "4", "--workers", "0")
        assert embed(*argv, artifact=artifact) == 1
        err = capsys.readouterr().err
        [line] = [x for x in err.splitlines() if x.startswith("error:")]
        assert "the disk is full" in line
        stored = int(line.split("): ")[1].split()[0])
        assert 0 < stored < 48 and len(check_readers(out)) == stored
        # Room for every batch, not for the merge: the run ends well, with a warning.
        remount("size=4m")
        finish = VectorStore.finish

        def squeezed(self, *args, **kwargs):
            used = os.statvfs(disk)
            remount(f"size={(used.f_blocks - used.f_bfree) * used.f_frsize + 8192}")
            return finish(self, *args, **kwargs)

        monkeypatch.setattr(VectorStore, "finish", squeezed)
        for _ in range(2):  # the run that embeds the rest, then one with nothing to do
            assert embed(*argv, artifact=artifact) == 0
            assert "warning: could not merge" in capsys.readouterr().err
            assert check_readers(out) == set(map(str, paths))
        monkeypatch.undo()
        remount("size=8m")
        assert embed(*argv, artifact=artifact) == 0
        assert "warning" not in capsys.readouterr().err
        assert len(list(out.glob("part-*"))) == 1
        stored = rows(out)
    clean = tmp_path / "clean.parquet"
    assert embed(folder, "-o", clean, "--batch-size", "4", "--workers", "0",
                 artifact=artifact) == 0
    for path, vector in rows(clean).items():
        np.testing.assert_allclose(stored[path], vector, atol=1e-5)


@pytest.mark.parametrize("suffix", [".parquet", ".npy"])
def test_a_read_only_store_resumes_and_is_searched(tmp_path, artifact, capsys, suffix):
    folder = tmp_path / "in"
    paths = folder_of_photos(folder, 4)
    disk = tmp_path / "disk"
    with tmpfs(disk, "4m") as remount:
        out = disk / f"v{suffix}"
        assert embed(folder, "-o", out, "--workers", "0", artifact=artifact) == 0
        remount("ro")
        capsys.readouterr()
        assert embed(folder, "-o", out, "--workers", "0", artifact=artifact) == 0
        captured = capsys.readouterr()
        assert "0 embedded, 0 failed, 4 skipped" in captured.out
        assert "read-only: nothing left to embed" in captured.err
        extra = photo(tmp_path / "new.png", 50, (24, 24))
        assert embed(folder, extra, "-o", out, "--workers", "0", artifact=artifact) == 1
        assert "read-only: 1 images are not stored" in capsys.readouterr().err
        assert main(["search", str(out), str(paths[1]), "-k", "1", "--workers", "0",
                     "--quiet"]) == 0
        assert f"1.0000  {paths[1]}" in capsys.readouterr().out
        assert main(["dedup", str(out)]) == 0
        assert "among 4 images" in capsys.readouterr().out


# --- what the target is --------------------------------------------------------------------
def test_targets_mobilevec_did_not_write_are_refused(tmp_path, artifact, capsys):
    image = photo(tmp_path / "a.png", 0)
    mine = tmp_path / "mydata.npy"
    np.save(mine, np.arange(10))
    before = mine.read_bytes()
    assert embed(image, "-o", mine, "--workers", "0", artifact=artifact) == 1
    assert "was not written by mobilevec" in capsys.readouterr().err
    assert mine.read_bytes() == before and not (tmp_path / "mydata.npy.parts").exists()

    import pyarrow as pa
    import pyarrow.parquet as pq

    spark = tmp_path / "table.parquet"
    spark.mkdir()
    pq.write_table(pa.table({"x": [1, 2]}), spark / "part-00000-5f2c.snappy.parquet")
    (spark / "_SUCCESS").write_bytes(b"")
    assert embed(image, "-o", spark, "--workers", "0", artifact=artifact) == 1
    assert "mobilevec did not write" in capsys.readouterr().err
    assert sorted(p.name for p in spark.iterdir()) == ["_SUCCESS",
                                                       "part-00000-5f2c.snappy.parquet"]
    empty = tmp_path / "empty.parquet"
    empty.mkdir()
    assert embed(image, "-o", empty, "--workers", "0", artifact=artifact) == 0


# --- damage ---------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".parquet", ".npy"])
def test_a_damaged_part_is_named_then_quarantined_and_re_embedded(tmp_path, artifact, capsys,
                                                                  suffix):
    folder = tmp_path / "in"
    folder_of_photos(folder, 6)
    out = tmp_path / f"v{suffix}"
    argv = (folder, "-o", out, "--workers", "0", "--batch-size", "2")
    assert embed(*argv, artifact=artifact) == 0
    before = rows(out)
    root = out if suffix == ".parquet" else tmp_path / "v.npy.parts"
    [part] = root.glob(f"part-*{suffix}")
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])  # truncated
    capsys.readouterr()
    for command in (["search", str(out), str(folder / "000.png"), "--workers", "0"],
                    ["dedup", str(out)]):
        assert main(command) == 1
        err = capsys.readouterr().err
        assert f"{part} is damaged" in err and "run `mobilevec embed` again" in err
    if suffix == ".parquet":
        (root / "part-000099.parquet").write_bytes(os.urandom(3000))  # garbage
    assert embed(*argv, artifact=artifact) == 0
    err = capsys.readouterr().err
    assert f"warning: {part.name} was damaged" in err
    assert (root / "_quarantine" / part.name).exists()
    after = rows(out)
    assert sorted(after) == sorted(before)
    for path, vector in before.items():
        np.testing.assert_allclose(after[path], vector, atol=1e-5)
    if suffix == ".parquet":
        check_readers(out)


# --- moves and changes -----------------------------------------------------------------------
def test_a_store_moved_alone_or_with_its_images_resumes(tmp_path, artifact, capsys):
    project = tmp_path / "project"
    folder_of_photos(project / "photos", 3)
    assert embed(project / "photos", "-o", project / "v.parquet", "--workers", "0",
                 artifact=artifact) == 0
    alone = tmp_path / "backup" / "v.parquet"  # the store alone: its images stay put
    alone.parent.mkdir()
    shutil.copytree(project / "v.parquet", alone)
    capsys.readouterr()
    assert embed(project / "photos", "-o", alone, "--workers", "0", artifact=artifact) == 0
    assert "0 embedded, 0 failed, 3 skipped" in capsys.readouterr().out
    assert sorted(read_store(alone).paths) == sorted(read_store(project / "v.parquet").paths)
    moved = tmp_path / "elsewhere" / "project"
    moved.parent.mkdir()
    shutil.move(project, moved)
    assert embed(moved / "photos", "-o", moved / "v.parquet", "--workers", "0",
                 artifact=artifact) == 0
    assert "0 embedded, 0 failed, 3 skipped" in capsys.readouterr().out
    assert sorted(read_store(moved / "v.parquet").paths) == sorted(
        str(moved / "photos" / f"{i:03d}.png") for i in range(3))


@pytest.mark.parametrize("suffix", [".parquet", ".npy"])
def test_prune_drops_rows_of_gone_files_and_the_error_history_stays_bounded(tmp_path,
                                                                           artifact, capsys,
                                                                           suffix):
    folder = tmp_path / "in"
    paths = folder_of_photos(folder, 4)
    (folder / "bad.png").write_bytes(b"broken")
    out = tmp_path / f"v{suffix}"
    root = out if suffix == ".parquet" else tmp_path / "v.npy.parts"
    argv = (folder, "-o", out, "--workers", "0")
    for _ in range(3):
        assert embed(*argv, artifact=artifact) == 3
        assert len(list((root / "_errors").iterdir())) == 1  # compacted, not one per run
    paths[0].unlink()  # deleted
    paths[1].rename(folder / "renamed.png")  # moved
    photo(paths[2], 40, (30, 30))  # changed: a new row, the old one hidden
    (folder / "bad.png").unlink()
    capsys.readouterr()
    assert embed(*argv, "--prune", artifact=artifact) == 0
    printed = capsys.readouterr().out
    # rows of the deleted file, of the moved file's old path, and the changed file's old row
    assert "2 embedded, 0 failed, 1 skipped" in printed and "3 pruned" in printed
    now = {str(folder / "renamed.png"), str(paths[2]), str(paths[3])}
    if suffix == ".parquet":
        assert check_readers(out) == now  # no old row of the changed file, none of gone ones
    else:
        with open(tmp_path / "v.index.csv", encoding="utf-8") as f:
            assert sorted(r["path"] for r in csv.DictReader(f)) == sorted(now)
        assert len(np.load(out)) == 3
    assert sorted(read_store(out).paths) == sorted(now)
    assert read_errors(out) == []


# --- pixel limits and decode memory ---------------------------------------------------------
def test_max_pixels_is_validated_and_is_the_one_limit(tmp_path, artifact, capsys,
                                                      monkeypatch):
    image = tmp_path / "a.png"
    Image.new("RGB", (100, 100), (9, 99, 199)).save(image)
    out = tmp_path / "v.parquet"
    for bad in ("0", "-5", "lots"):
        with pytest.raises(SystemExit) as e:
            embed(image, "-o", out, "--max-pixels", bad, artifact=artifact)
        assert e.value.code == 2
    assert "whole number of pixels" in capsys.readouterr().err
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses > 2000 pixels
    assert embed(image, "-o", out, "--max-pixels", "5000", "--workers", "0",
                 artifact=artifact) == 3
    assert "exceeds the limit of 5000" in dict(read_errors(out))[str(image)]
    assert embed(image, "-o", out, "--max-pixels", "20000", "--workers", "0",
                 artifact=artifact) == 0
    assert Image.MAX_IMAGE_PIXELS == 1000  # restored


MEMORY_CHILD = """
import re, sys
import numpy as np
from mobilevec.data.images import load_array, load_rgb, resize_array
def status(field):
    with open("/proc/self/status") as f:
        return int(re.search(field + r":\\s+(\\d+) kB", f.read()).group(1)) * 1024
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak resident size starts again from the current one
before = status("VmRSS")
x = load_array(sys.argv[1], 224)
peak = status("VmHWM") - before
assert np.array_equal(x, resize_array(load_rgb(sys.argv[1]), 224))
print(peak)
"""


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK),
                    reason="needs Linux's /proc/self/clear_refs to measure a peak")
def test_a_large_png_costs_one_pillow_image_in_the_decoder(tmp_path):
    width = height = 5000  # 25 MP RGB: Pillow holds it in 4 bytes a pixel, 100 MB
    line = b"\x00" + bytes(range(256)) * (width * 3 // 256) + bytes(width * 3 % 256)
    raw = zlib.compress(line * height, 1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (len(data).to_bytes(4, "big") + kind + data
                + zlib.crc32(kind + data).to_bytes(4, "big"))
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    path = tmp_path / "large.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw)
                     + chunk(b"IEND", b""))
    done = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    pillow = 4 * width * height
    # mobilevec 0.1 added a full RGB copy and its bytes: 239 MiB in all
    assert int(done.stdout) < 1.25 * pillow, f"{int(done.stdout) / 2**20:.0f} MiB"


def test_the_decode_budget_lets_large_decodes_wait_for_each_other():
    import threading

    from mobilevec.embedding.batching import DecodeBudget

    budget = DecodeBudget(100)
    order: list[str] = []
    first_in = threading.Event()

    def decode(name: str, nbytes: int, hold: float) -> None:
        with budget(nbytes):
            order.append(f"{name}+")
            first_in.set()
            time.sleep(hold)
            order.append(f"{name}-")
    a = threading.Thread(target=decode, args=("a", 60, 0.3))
    a.start()
    first_in.wait()
    b = threading.Thread(target=decode, args=("b", 60, 0))  # does not fit beside a
    c = threading.Thread(target=decode, args=("c", 30, 0))  # fits beside a
    b.start()
    c.start()
    for t in (a, b, c):
        t.join()
    assert order.index("b+") > order.index("a-")
    assert order.index("c+") < order.index("a-")
    with budget(500):  # larger than the whole budget: runs alone
        pass
