"""`mobilevec embed --runner ray`: the local runner's vectors, errors and resume, on Ray Data.

A local Ray instance (2 CPUs, small object store) is started once for the module; every
test is skipped, with the reason shown, when Ray is not installed.
"""

from __future__ import annotations

import csv
import logging
import sys

import numpy as np
import pytest
import torch
from test_embed_pipeline import V3, build_corpus, photo, weights  # noqa: F401 - a fixture

import mobilevec
from mobilevec.cli.app import main
from mobilevec.data.images import load_image
from mobilevec.embedding.batching import Preprocessing
from mobilevec.embedding.pipeline import run_embed, store_meta
from mobilevec.embedding.store import file_key, read_errors, read_store
from mobilevec.errors import MissingDependencyError

SIZE = 64  # small inputs: the comparisons do not need 224 pixels, the 2-core CI does


@pytest.fixture(scope="module")
def random_weights(weights):  # noqa: F811 - test_embed_pipeline's fixture, imported above
    """Random V3 weights with data-set BatchNorm statistics, saved to a file."""
    return weights


@pytest.fixture(scope="module")
def ray_instance(tmp_path_factory):
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install "
                                            "'mobilevec[ray]' (CI installs it)")
    pytest.importorskip("ray.data", reason="Ray Data is not installed: pip install "
                                           "'mobilevec[ray]'")
    ray.init("local", num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20,
             logging_level=logging.WARNING, log_to_driver=False)
    yield ray
    ray.shutdown()


def embed(*argv) -> int:
    return main(["embed", *map(str, argv), "--quiet"])


def stored(output) -> dict[str, np.ndarray]:
    table = read_store(output)
    assert len(set(table.paths)) == len(table.paths)  # each file once
    return dict(zip(table.paths, table.vectors.astype(np.float32), strict=True))


def test_ray_store_equals_the_local_runners_and_lists_exactly_the_bad_files(
        ray_instance, tmp_path, v3_tflite, capsys):
    # Real weights at the published size: float32 sums in another order (1 thread per actor
    # here, 2 in the local run; other batch sizes) move these vectors by up to ~7e-6, so
    # 1e-5 is a promise that can be kept; random weights give far larger activations.
    good, bad = build_corpus(tmp_path / "corpus")
    options = ("--model", V3, "--weights", v3_tflite, "--batch-size", 3)
    local, remote = tmp_path / "local.parquet", tmp_path / "ray.parquet"
    # the local runner on the torch module too: this compares runners, not engines
    assert embed(tmp_path / "corpus", "-o", local, *options, "--workers", 0,
                 "--backend", "torch") == 3
    capsys.readouterr()
    assert embed(tmp_path / "corpus", "-o", remote, *options, "--runner", "ray",
                 "--num-workers", 2) == 3  # 3: some files failed, the rest was done
    assert f"{len(good)} embedded, {len(bad)} failed" in capsys.readouterr().out
    ours, theirs = stored(remote), stored(local)
    assert sorted(ours) == sorted(theirs) == sorted(str(p) for p in good)
    model = mobilevec.create(V3, weights=v3_tflite, trainable=False)
    with torch.no_grad():  # the model on the decoded tensors: a reference neither runner made
        expected = model(torch.stack([load_image(p, draft=True) for p in good])).numpy()
    for path, vector in zip(good, expected, strict=True):
        np.testing.assert_allclose(ours[str(path)], theirs[str(path)], atol=1e-5, rtol=0)
        np.testing.assert_allclose(ours[str(path)], vector, atol=1e-5, rtol=0)
    # the comparison can tell images apart (rgb.jpg and cmyk.jpg; alpha.png has rgb's pixels)
    assert np.abs(expected[0] - expected[3]).max() > 1e-2
    errors = dict(read_errors(remote))
    assert set(errors) == {str(p) for p in bad}
    for path, word in bad.items():
        assert word in errors[str(path)].lower(), (path, errors[str(path)])
    assert errors == dict(read_errors(local))
    with open(remote / "_errors.csv", newline="") as f:
        assert {row["path"] for row in csv.DictReader(f)} == set(errors)
    assert not (remote / "_ray").exists()  # every shard was committed as a part


def test_rerun_skips_stored_files_and_embeds_new_and_changed_ones(ray_instance, tmp_path,
                                                                  random_weights, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(5):
        photo(folder / f"{i}.png", i)
    out = tmp_path / "v.parquet"
    args = (folder, "--model", V3, "--weights", random_weights, "-o", out, "--size", SIZE,
            "--batch-size", 2, "--runner", "ray")
    assert embed(*args) == 0
    before = stored(out)
    photo(folder / "new.png", 10)
    photo(folder / "0.png", 11, (50, 50))  # changed: size and mtime differ
    capsys.readouterr()
    assert embed(*args) == 0
    assert "2 embedded, 0 failed, 4 skipped" in capsys.readouterr().out
    after = stored(out)
    assert sorted(after) == sorted(str(p) for p in folder.iterdir())
    assert np.abs(after[str(folder / "0.png")] - before[str(folder / "0.png")]).max() > 1e-2
    np.testing.assert_array_equal(after[str(folder / "1.png")], before[str(folder / "1.png")])
    # the store is an ordinary one: the local runner resumes it, with nothing left to do
    assert embed(*args[:-2], "--workers", 0) == 0
    assert "0 embedded, 0 failed, 6 skipped" in capsys.readouterr().out


def test_shards_a_killed_run_finished_are_kept_and_torn_ones_dropped(ray_instance, tmp_path,
                                                                    random_weights):
    from mobilevec.embedding.ray_runner import STAGING, embed_dataset, run_ray_embed

    paths = [photo(tmp_path / f"{i}.png", i) for i in range(6)]
    model = mobilevec.create(V3, weights=random_weights, trainable=False)
    prep = Preprocessing(size=(SIZE, SIZE))
    meta = store_meta(model, prep, weights=random_weights)
    out = tmp_path / "v.parquet"
    assert run_embed(model, paths[:1], out, prep=prep, meta=meta, workers=0).ok == 1
    # What a run killed mid-write leaves: a shard written whole, and one cut short.
    staging = out / STAGING
    embed_dataset([file_key(p) for p in paths[1:4]], model, meta=meta, prep=prep,
                  num_workers=1).write_parquet(str(staging / "killed"))
    whole = sorted((staging / "killed").glob("*.parquet"))
    assert len(whole) == 1
    torn = staging / "killed" / "torn.parquet"
    torn.write_bytes(whole[0].read_bytes()[:-100])  # no footer: the write did not finish
    summary = run_ray_embed(model, paths, out, prep=prep, meta=meta)
    assert (summary.skipped, summary.ok, summary.failed) == (4, 2, 0)  # the whole shard kept
    assert sorted(stored(out)) == sorted(map(str, paths))
    assert not staging.exists()


def test_ctrl_c_during_the_write_keeps_the_shards_written_whole(ray_instance, tmp_path,
                                                               random_weights, monkeypatch):
    import ray.data

    from mobilevec.embedding.ray_runner import run_ray_embed

    paths = [photo(tmp_path / f"{i}.png", i) for i in range(4)]
    bad = tmp_path / "empty.png"
    bad.write_bytes(b"")
    model = mobilevec.create(V3, weights=random_weights, trainable=False)
    prep = Preprocessing(size=(SIZE, SIZE))
    out = tmp_path / "v.parquet"
    write = ray.data.Dataset.write_parquet

    def write_then_ctrl_c(self, *args, **kwargs):  # Ctrl-C just as the last shard is done
        write(self, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(ray.data.Dataset, "write_parquet", write_then_ctrl_c)
    summary = run_ray_embed(model, [*paths, bad], out, prep=prep,
                            meta=store_meta(model, prep, weights=random_weights))
    assert summary.interrupted and (summary.ok, summary.failed) == (4, 1)
    assert sorted(stored(out)) == sorted(map(str, paths))
    assert [p for p, _ in read_errors(out)] == [str(bad)]


def test_embed_dataset_gives_path_vector_rows_and_reports_failures(ray_instance, tmp_path,
                                                                  random_weights):
    from mobilevec.embedding.ray_runner import FailureTally, embed_dataset

    paths = [photo(tmp_path / f"{i}.jpg", i) for i in range(3)]
    bad = tmp_path / "text.jpg"
    bad.write_text("not an image")
    model = mobilevec.create(V3, weights=random_weights, trainable=False)
    prep = Preprocessing(size=(SIZE, SIZE))
    meta = store_meta(model, prep, normalize=True, half=True)
    tally = FailureTally()
    dataset = embed_dataset([file_key(p) for p in [*paths, bad]], model, meta=meta, prep=prep,
                            num_workers=1, tally=tally)
    table = dataset.take_batch(10, batch_format="pyarrow")  # the rows as Arrow keeps them
    vectors = table.column("vector").combine_chunks()
    rows = dict(zip(table.column("path").to_pylist(),
                    vectors.values.to_numpy().reshape(len(vectors), -1), strict=True))
    assert sorted(rows) == sorted(map(str, paths))
    with torch.no_grad():
        expected = model(torch.stack([load_image(p, SIZE) for p in paths])).numpy()
    for path, vector in zip(paths, expected, strict=True):
        assert rows[str(path)].dtype == np.float16
        np.testing.assert_allclose(rows[str(path)].astype(np.float32),
                                   vector / np.linalg.norm(vector), atol=1e-3, rtol=0)
    done, failures = tally.state()
    assert done == 4 and [p for p, _ in failures] == [str(bad)]
    assert "not an image" in failures[0][1]


def test_npy_output_and_engine_backends_are_refused_before_ray_starts(tmp_path, random_weights,
                                                                     capsys):
    path = photo(tmp_path / "a.png", 0)
    model = ("--model", V3, "--weights", random_weights, "--runner", "ray")
    assert embed(path, *model, "-o", tmp_path / "v.npy") == 1
    assert "use -o NAME.parquet" in capsys.readouterr().err
    assert embed(path, *model, "-o", tmp_path / "v.parquet", "--backend", "onnxruntime") == 1
    assert "torch backend only" in capsys.readouterr().err


def test_missing_ray_is_a_clear_error(monkeypatch):
    from mobilevec.embedding.ray_runner import require_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without Ray does
    with pytest.raises(MissingDependencyError, match=r"pip install 'mobilevec\[ray\]'"):
        require_ray()
