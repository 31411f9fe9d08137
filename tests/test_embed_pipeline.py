"""`mobilevec embed / search / dedup`: exact vectors, bad files reported, SIGKILL-safe resume."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from test_images import png_bytes, smooth_photo

import mobilevec
from mobilevec.cli.app import main
from mobilevec.data.images import load_image
from mobilevec.embedding.batching import Preprocessing, decode_files, embed_files, iter_embeddings
from mobilevec.embedding.store import VectorStore, read_errors, read_meta, read_store

V3 = "mobilenet_v3_small_075_224"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """Random V3 weights saved to a file, so that every run (and process) has the same model.

    Freshly initialised BatchNorm statistics (mean 0, var 1) make a random MobileNet's output
    nearly constant; one training-mode pass over smooth noise (momentum 1) sets them from
    data, so that the vectors depend on the image and the comparisons below can fail.
    """
    torch.manual_seed(0)
    model = mobilevec.create(V3, batch_norm_momentum=0.0)
    with torch.no_grad():
        model.train()(F.avg_pool2d(torch.rand(16, 3, 67, 67), 4, 1))
    path = tmp_path_factory.mktemp("weights") / "v3_random.safetensors"
    mobilevec.save(model.eval(), path)
    return path


@pytest.fixture(scope="module")
def model(weights):
    return mobilevec.create(V3, weights=weights, trainable=False)


def photo(path: Path, seed: int, size=(48, 64), **save) -> Path:
    """A small distinct picture (random blocks upsampled: photo-like, not noise)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (4, 4, 3)).astype(np.uint8)
    Image.fromarray(blocks).resize(size[::-1], Image.BILINEAR).save(path, **save)
    return path


def embed(*argv) -> int:
    return main(["embed", *map(str, argv), "--quiet"])


def external_paths(output) -> list[str]:
    """The stored paths as pandas and pyarrow.dataset read the folder (they must agree)."""
    import pandas as pd
    import pyarrow.dataset as ds

    by_pandas = pd.read_parquet(output, columns=["path"])["path"].tolist()
    by_arrow = ds.dataset(output, format="parquet").to_table(columns=["path"]).column(
        "path").to_pylist()
    assert sorted(by_pandas) == sorted(by_arrow)
    return by_pandas


def rows(output) -> dict[str, np.ndarray]:
    stored = read_store(output)
    assert len(set(stored.paths)) == len(stored.paths)
    return dict(zip(stored.paths, stored.vectors.astype(np.float32), strict=True))


# --- exact vectors -----------------------------------------------------------------------
def test_cli_vectors_equal_the_model_on_the_decoded_tensor(tmp_path, v3_tflite):
    model = mobilevec.create(V3, weights=v3_tflite)
    folder = tmp_path / "photos"
    folder.mkdir()
    paths = [photo(folder / f"p{i}.jpg", i, (40 + 30 * i, 90)) for i in range(5)]
    smooth_photo(1000, 1200).save(folder / "large.jpg")  # DCT-scaled by default
    paths.append(folder / "large.jpg")
    out = tmp_path / "v.parquet"
    assert embed(folder, "--model", V3, "--weights", v3_tflite, "-o", out, "--batch-size",
                 "4") == 0
    stored = rows(out)
    assert sorted(stored) == sorted(str(p) for p in paths)
    with torch.no_grad():
        expected = model(torch.stack([load_image(p, draft=True) for p in paths])).numpy()
    for path, vector in zip(paths, expected, strict=True):
        np.testing.assert_allclose(stored[str(path)], vector, atol=1e-5, rtol=0)
    assert np.abs(expected[0] - expected[1]).max() > 1e-2  # the comparison can tell images apart
    meta = read_meta(out)
    assert meta["model"] == V3 and meta["dim"] == 1024 and meta["preprocessing"]["draft"]


def test_exact_decode_normalize_and_half_are_applied(tmp_path, weights, model):
    path = photo(tmp_path / "a.png", 1)
    out = tmp_path / "v.parquet"
    assert embed(path, "--model", V3, "--weights", weights, "-o", out, "--exact-decode",
                 "--normalize", "--half", "--workers", "0") == 0
    stored = read_store(out)
    assert stored.vectors.dtype == np.float16
    with torch.no_grad():
        expected = model(load_image(path)[None])[0].numpy()
    np.testing.assert_allclose(stored.vectors[0].astype(np.float32),
                               expected / np.linalg.norm(expected), atol=1e-3, rtol=0)


def test_python_api_iterates_path_vector_pairs_and_embeds_lists(tmp_path, model):
    paths = [photo(tmp_path / f"{i}.png", i) for i in range(3)]
    bad = tmp_path / "bad.jpg"
    bad.write_text("no image")
    errors = []
    pairs = list(iter_embeddings(model, [paths[0], bad, *paths[1:]], errors, batch_size=2,
                                 workers=1))
    assert [p for p, _ in pairs] == paths and errors[0][0] == bad
    result = embed_files(model, paths + [bad], workers=0, batch_size=2)
    assert result.vectors.shape == (3, 1024) and result.paths == paths
    for (_, vector), row in zip(pairs, result.vectors, strict=True):
        np.testing.assert_allclose(vector, row, rtol=1e-6, atol=1e-6)  # same batches


# --- bad inputs --------------------------------------------------------------------------
def build_corpus(folder: Path) -> tuple[list[Path], dict[Path, str]]:
    """Good images in every mode the rule covers, and broken files with a word of the reason."""
    folder.mkdir()
    good = [photo(folder / "rgb.jpg", 0)]
    rgba = np.dstack([np.asarray(Image.open(good[0])), np.full((48, 64), 7, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(folder / "alpha.png")
    good.append(folder / "alpha.png")
    good.append(folder / "gray16.png")
    good[-1].write_bytes(png_bytes(3, 2, 16, 0, (b"\x00" + bytes(range(6))) * 2))
    Image.new("CMYK", (20, 20), (10, 80, 160, 20)).save(folder / "cmyk.jpg")
    Image.open(good[0]).convert("L").save(folder / "gray.jpg")
    Image.open(good[0]).convert("P").save(folder / "palette.gif")
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.open(good[0]).save(folder / "rotated.jpg", exif=exif.tobytes())
    good += [folder / n for n in ("cmyk.jpg", "gray.jpg", "palette.gif", "rotated.jpg")]
    bad: dict[Path, str] = {}
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("hello, not a JPEG\n")
    data = good[0].read_bytes()
    (folder / "truncated.jpg").write_bytes(data[:len(data) // 2])
    (folder / "bomb.png").write_bytes(png_bytes(100_000, 100_000, 8, 2))
    bad.update({folder / "empty.jpg": "not an image", folder / "text.jpg": "not an image",
                folder / "truncated.jpg": "truncated", folder / "bomb.png": "bomb"})
    loops = folder / "loops"
    loops.mkdir()
    (loops / "self").symlink_to(loops, target_is_directory=True)  # folder loop: walked once
    (loops / "a.jpg").symlink_to(loops / "b.jpg")  # file loop: a -> b -> a
    (loops / "b.jpg").symlink_to(loops / "a.jpg")
    bad.update({loops / "a.jpg": "symbolic links", loops / "b.jpg": "symbolic links"})
    return good, bad


def test_bad_files_are_reported_with_reasons_and_good_ones_embedded(tmp_path, weights, capsys):
    good, bad = build_corpus(tmp_path / "corpus")
    out = tmp_path / "v.parquet"
    missing = tmp_path / "nope.jpg"
    code = embed(tmp_path / "corpus", missing, "--model", V3, "--weights", weights, "-o", out,
                 "--size", "64", "--batch-size", "3", "--workers", "2")
    assert code == 3  # some files failed
    assert sorted(rows(out)) == sorted(str(p) for p in good)
    errors = dict(read_errors(out))
    assert set(errors) == {str(p) for p in bad} | {str(missing)}
    for path, word in bad.items():
        assert word in errors[str(path)].lower(), (path, errors[str(path)])
    with open(out / "_errors.csv", newline="") as f:
        assert {row["path"] for row in csv.DictReader(f)} == set(errors)
    printed = capsys.readouterr()
    assert f"{len(good)} embedded, {len(bad) + 1} failed" in printed.out
    assert f"FAILED {missing}: no such file" in printed.err


def test_exif_rotation_reaches_the_vectors(tmp_path, weights, model):
    base = photo(tmp_path / "base.png", 5, (40, 80))
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(base).save(tmp_path / "tagged.png", exif=exif.tobytes())
    Image.open(base).transpose(Image.Transpose.ROTATE_270).save(tmp_path / "turned.png")
    out = tmp_path / "v.parquet"
    assert embed(tmp_path / "tagged.png", tmp_path / "turned.png", "--model", V3, "--weights",
                 weights, "-o", out, "--workers", "0") == 0
    stored = rows(out)
    np.testing.assert_allclose(stored[str(tmp_path / "tagged.png")],
                               stored[str(tmp_path / "turned.png")], atol=1e-5)


@pytest.mark.skipif(os.geteuid() == 0, reason="running as root: chmod 000 does not stop root "
                                              "from reading the file")
def test_unreadable_file_is_reported(tmp_path, weights):
    path = photo(tmp_path / "locked.jpg", 3)
    path.chmod(0)
    out = tmp_path / "v.parquet"
    assert embed(path, "--model", V3, "--weights", weights, "-o", out) == 3
    assert "ermission denied" in dict(read_errors(out))[str(path)]


def test_decoder_process_crash_costs_only_the_culprit(tmp_path):
    paths = [photo(tmp_path / f"{i}.png", i) for i in range(9)]
    crash = tmp_path / "crash.png"
    crash.write_bytes(paths[0].read_bytes())
    order = paths[:4] + [crash] + paths[4:]
    results = list(decode_files(order, CrashingPreprocessing(size=(32, 32)), workers=2))
    assert [r[0] for r in results] == order
    failed = {p: reason for p, array, reason in results if array is None}
    assert list(failed) == [crash] and "process died" in failed[crash]


class CrashingPreprocessing(Preprocessing):
    def load(self, path):
        if Path(path).name == "crash.png":
            os._exit(1)  # what a segfaulting codec or the OOM killer does to the worker
        return super().load(path)


# --- inputs ------------------------------------------------------------------------------
def test_globs_lists_and_missing_inputs_with_decode_threads(tmp_path, weights, capsys):
    a, b, c = (photo(tmp_path / n, i) for i, n in enumerate(("a.png", "b.jpg", "c.webp")))
    listing = tmp_path / "list.txt"
    listing.write_text(f"# my images\n{c}\n\n{tmp_path / 'gone.png'}\n")
    out = tmp_path / "v.parquet"
    code = embed(str(tmp_path / "*.png"), str(tmp_path / "[b]*"), f"@{listing}",
                 str(tmp_path / "*.tif"), "--model", V3, "--weights", weights, "-o", out,
                 "--size", "32", "--workers", "2", "--threads")
    assert code == 3
    assert sorted(rows(out)) == sorted(map(str, (a, b, c)))
    assert set(dict(read_errors(out))) == {str(tmp_path / "gone.png"), str(tmp_path / "*.tif")}


# --- resume ------------------------------------------------------------------------------
def test_rerun_skips_stored_images_and_embeds_new_and_changed_ones(tmp_path, weights, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(4):
        photo(folder / f"{i}.png", i)
    out = tmp_path / "v.parquet"
    args = (folder, "--model", V3, "--weights", weights, "-o", out, "--size", "32",
            "--workers", "0")
    assert embed(*args) == 0
    before = rows(out)
    photo(folder / "new.png", 10)
    photo(folder / "0.png", 11, (50, 50))  # changed: size and mtime differ
    capsys.readouterr()
    assert embed(*args) == 0
    assert "2 embedded, 0 failed, 3 skipped" in capsys.readouterr().out
    after = rows(out)
    assert len(after) == 5
    assert read_store(out).sizes[read_store(out).paths.index(str(folder / "0.png"))] == \
        (folder / "0.png").stat().st_size
    assert np.abs(after[str(folder / "0.png")] - before[str(folder / "0.png")]).max() > 1e-2
    np.testing.assert_array_equal(after[str(folder / "1.png")], before[str(folder / "1.png")])


def test_rerun_with_other_settings_fails_clearly(tmp_path, weights, capsys):
    path = photo(tmp_path / "a.png", 0)
    out = tmp_path / "v.parquet"
    base = (path, "--model", V3, "--weights", weights, "-o", out, "--workers", "0")
    assert embed(*base) == 0
    assert embed(*base, "--half") == 1
    assert "dtype: stored 'float32', now 'float16'" in capsys.readouterr().err


def test_kill_minus_9_mid_run_then_rerun_stores_each_image_once(tmp_path, weights):
    folder = tmp_path / "in"
    folder.mkdir()
    names = [photo(folder / f"{i:03d}.jpg", i, (24, 24)) for i in range(200)]
    out = tmp_path / "v.parquet"
    argv = ["embed", str(folder), "--model", V3, "--weights", str(weights), "-o", str(out),
            "--size", "32", "--batch-size", "4", "--workers", "1", "--quiet"]
    # Each committed batch sleeps a little, so the kill lands mid-run, between or during
    # part writes, as it would on a big job.
    slow = ("import sys, time; from mobilevec import vectorstore as v; a = v.VectorStore.append;"
            "v.VectorStore.append = lambda *x, **k: (a(*x, **k), time.sleep(0.03));"
            "from mobilevec.cli import main; sys.exit(main(sys.argv[1:]))")
    process = subprocess.Popen([sys.executable, "-c", slow, *argv], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(out.glob("part-*.parquet"))) < 5 and time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before it could be killed"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    partial = read_store(out)  # what was committed is readable as it is
    assert 0 < len(partial.paths) < 200
    assert sorted(external_paths(out)) == sorted(partial.paths)  # by pandas and pyarrow too
    assert main(argv) == 0
    final = read_store(out)
    assert sorted(final.paths) == sorted(map(str, names))  # each exactly once
    assert sorted(external_paths(out)) == sorted(final.paths)
    assert not list(out.glob(".*tmp*"))
    # and the resumed vectors are those of an uninterrupted run
    fresh = tmp_path / "fresh.parquet"
    assert main([*argv[:7], str(fresh), *argv[8:]]) == 0
    expected = rows(fresh)
    for path, vector in zip(final.paths, final.vectors, strict=True):
        np.testing.assert_allclose(vector, expected[path], atol=1e-5)


def test_merge_killed_before_cleanup_counts_rows_once(tmp_path):
    meta = {"model": V3, "fingerprint": "x", "dim": 3, "dtype": "float32", "normalize": False,
            "preprocessing": {}}
    out = tmp_path / "v.parquet"
    store = VectorStore.open(out, meta)
    for i in range(3):
        store.append([(f"/p{i}", 1, 2)], np.full((1, 3), i, np.float32))
    singles = sorted(out.glob("part-*.parquet"))
    store.codec.write_merged(out / "part-000001-000003.parquet", singles)  # then "killed"
    store.close()
    assert read_store(out).paths == ["/p0", "/p1", "/p2"]
    VectorStore.open(out, meta).close()  # reopening cleans up what the merge replaced
    assert [p.name for p in out.glob("part-*")] == ["part-000001-000003.parquet"]


# --- npy output --------------------------------------------------------------------------
def test_npy_output_writes_vectors_and_an_index(tmp_path, weights):
    paths = [photo(tmp_path / f"{i}.png", i) for i in range(3)]
    out = tmp_path / "v.npy"
    assert embed(*paths, "--model", V3, "--weights", weights, "-o", out, "--size", "32",
                 "--batch-size", "2", "--workers", "0") == 0
    vectors = np.load(out)
    with open(tmp_path / "v.index.csv", newline="") as f:
        index = list(csv.DictReader(f))
    assert vectors.shape == (3, 1024) and [r["path"] for r in index] == list(map(str, paths))
    assert int(index[0]["size"]) == paths[0].stat().st_size
    np.testing.assert_array_equal(read_store(out).vectors, vectors)


# --- search and dedup --------------------------------------------------------------------
@pytest.fixture(scope="module")
def flower_table(tmp_path_factory, v3_tflite, data_dir):
    """20 real photos (plus resized/re-encoded copies of 3) embedded with the real V3."""
    folder = tmp_path_factory.mktemp("flowers")
    photos = sorted((data_dir / "tf_flowers5").glob("*/*.jpg"))[::9][:20]
    for p in photos:
        (folder / p.name).write_bytes(p.read_bytes())
    copies = {}
    for p in photos[:3]:
        image = Image.open(p)
        copy = folder / f"copy_{p.stem}.jpg"
        image.resize((image.width * 4 // 5, image.height * 4 // 5)).save(copy, quality=75)
        copies[str(folder / p.name)] = str(copy)
    out = folder / "v.parquet"
    assert embed(folder, "--model", V3, "--weights", v3_tflite, "-o", out) == 0
    return out, photos, copies


def test_search_finds_the_original_of_a_reencoded_copy_first(flower_table, tmp_path, capsys):
    out, photos, _ = flower_table
    queries = []
    for p in photos[5:8]:
        image = Image.open(p)
        queries.append(tmp_path / f"q_{p.stem}.webp")
        image.resize((image.width // 2, image.height // 2)).save(queries[-1], quality=70)
    capsys.readouterr()
    assert main(["search", str(out), *map(str, queries), "-k", "3", "--csv",
                 str(tmp_path / "hits.csv"), "--quiet"]) == 0
    with open(tmp_path / "hits.csv", newline="") as f:
        hits = [r for r in csv.DictReader(f) if r["rank"] == "1"]
    assert [Path(h["path"]).name for h in hits] == [p.name for p in photos[5:8]]


def test_dedup_groups_each_photo_with_its_copy(flower_table, tmp_path, capsys):
    out, _, copies = flower_table
    assert main(["dedup", str(out), "--threshold", "0.95", "--csv",
                 str(tmp_path / "groups.csv")]) == 0
    with open(tmp_path / "groups.csv", newline="") as f:
        groups: dict[str, set[str]] = {}
        for row in csv.DictReader(f):
            groups.setdefault(row["group"], set()).add(row["path"])
    assert sorted(map(sorted, groups.values())) == sorted(sorted(p) for p in copies.items())
    assert "3 groups of near-duplicates" in capsys.readouterr().out


def test_search_refuses_a_different_model(flower_table, tmp_path, weights, capsys):
    out, photos, _ = flower_table
    assert main(["search", str(out), str(photos[0]), "--weights", str(weights)]) == 1
    assert "gives a different model" in capsys.readouterr().err
    assert main(["search", str(out), str(photos[0]), "--model", "mobilenet_v2_100_224"]) == 1
    assert "holds mobilenet_v3_small_075_224 vectors" in capsys.readouterr().err


def test_error_only_batches_are_kept_across_runs(tmp_path):
    meta = {"model": V3, "fingerprint": "x", "dim": 2, "dtype": "float32", "normalize": False,
            "preprocessing": {}}
    out = tmp_path / "v.npy"
    for path, reason in (("/a", "broken"), ("/b", "empty")):
        with VectorStore.open(out, meta) as store:
            store.append([], np.zeros((0, 2)), [(path, reason)])
    assert read_errors(out) == [("/a", "broken"), ("/b", "empty")]


def test_neighbours_and_duplicate_groups_on_hand_made_vectors():
    from mobilevec.embedding.search import cosine_neighbours, near_duplicate_groups

    v = np.array([[1, 0], [1, 0.1], [0, 1], [-1, 0], [0.1, 1]], np.float16)
    # cos(v0, v1) = cos(v2, v4) = 1 / sqrt(1.01) = 0.995; every other pair is below 0.1
    assert near_duplicate_groups(v, 0.99) == [[0, 1], [2, 4]]
    assert near_duplicate_groups(v, 0.999) == []
    order, sims = cosine_neighbours(np.array([[1, 0.2]]), v, 2)
    assert order.tolist() == [[1, 0]]
    np.testing.assert_allclose(sims[0], [1.02 / np.sqrt(1.04 * 1.01), 1 / np.sqrt(1.04)],
                               atol=1e-3)


class _RecordingEngine:
    """An engine-shaped runner (not a torch module): per-image channel means as vectors,
    and a note of whether each batch was read where the decoders wrote it."""

    num_features = 3

    def __init__(self):
        self.in_place: list[bool] = []

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import mmap

        from mobilevec.embedding.batching import _buffer_of

        buffer = _buffer_of(x)  # the decoders' ring: a memoryview of an anonymous mmap
        self.in_place.append(isinstance(buffer, memoryview) and isinstance(buffer.obj,
                                                                           mmap.mmap))
        return x.mean(axis=(2, 3))


@pytest.mark.skipif(sys.platform != "linux", reason="the shared decode ring needs fork")
def test_engines_read_decoded_batches_in_place_and_failures_fall_back_to_a_copy(tmp_path):
    from mobilevec.embedding.batching import embed_batches

    rng = np.random.default_rng(0)
    paths = []
    for i in range(40):
        path = tmp_path / f"{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (20 + i, 30, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    (tmp_path / "13.png").write_bytes(b"not a png")  # a failure in the second batch
    prep = Preprocessing(size=(32, 32))
    expected = {p: a.mean(axis=(1, 2)) for p, a, _ in decode_files(paths, prep, workers=0)
                if a is not None}
    engine = _RecordingEngine()
    batches = list(embed_batches(engine, paths, prep=prep, batch_size=8, workers=2))
    got = {p: v for b in batches for p, v in zip(b.paths, b.vectors, strict=True)}
    assert list(got) == list(expected) and len(got) == 39
    for p in got:
        np.testing.assert_allclose(got[p], expected[p], rtol=1e-6)
    assert engine.in_place[0] and engine.in_place[2:] == [True] * (len(batches) - 2)
    assert not engine.in_place[1]  # the batch with the failed file was copied
