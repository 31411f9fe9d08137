"""`mobilevec dedup`, `neighbours` and `search --k/--html` on real stores made by
`mobilevec embed` from real photos with the real V3 weights.

The expected groups follow from how the images were made (a photo and its mirror image, a
photo and its smaller re-encode), never from the code under test.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from shared_paths import DATA_DIR, V3_TFLITE, require

from mobilevec.cli.app import main

V3 = "mobilenet_v3_small_075_224"


def _embed(*inputs, out: Path) -> int:
    return main(["embed", *map(str, inputs), "-o", str(out), "--model", V3, "--weights",
                 str(require(V3_TFLITE)), "--quiet", "--workers", "0"])


def _photos(count: int, start: int = 0) -> list[Path]:
    # One photo from each of several classes first, so that no two originals are copies.
    found = sorted(require(DATA_DIR / "tf_flowers5").glob("*/*.jpg"))
    return found[start::7][:count]


def _mirror(src: Path, target: Path) -> Path:
    Image.open(src).convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(
        target, quality=85)
    return target


def _smaller(src: Path, target: Path) -> Path:
    """A copy at 80 % size, re-encoded at JPEG quality 60 (a smaller file)."""
    image = Image.open(src).convert("RGB")
    image.resize((image.width * 4 // 5, image.height * 4 // 5)).save(target, quality=60)
    return target


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """12 photos, the mirror image of 2 and a 80 % size JPEG-60 copy of a third."""
    folder = tmp_path_factory.mktemp("dedup_cli")
    images = folder / "images"
    images.mkdir()
    photos = _photos(12)
    originals = [Path(shutil.copy(p, images / p.name)) for p in photos]
    pairs = [(originals[0], _mirror(originals[0], images / "mirror_0.jpg")),
             (originals[1], _mirror(originals[1], images / "mirror_1.jpg")),
             (originals[2], _smaller(originals[2], images / "small_2.jpg"))]
    out = folder / "v.parquet"
    assert _embed(images, out=out) == 0
    return out, images, originals, pairs


def _groups_from_csv(path: Path) -> list[set[str]]:
    groups: dict[str, set[str]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            groups.setdefault(row["group"], set()).add(row["path"])
    return sorted(groups.values(), key=sorted)


def test_dedup_with_no_flags_groups_each_copy_with_its_original(store, tmp_path, capsys):
    out, _, _, pairs = store
    capsys.readouterr()
    assert main(["dedup", str(out), "--csv", str(tmp_path / "g.csv")]) == 0
    text = capsys.readouterr().out
    assert _groups_from_csv(tmp_path / "g.csv") == sorted(({str(a), str(b)} for a, b in pairs),
                                                          key=sorted)
    assert "3 groups of near-duplicates" in text and "among 15 images" in text
    with open(tmp_path / "g.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["group", "path", "cosine_to_first", "action", "score"]
    assert sorted(r["action"] for r in rows) == ["keep"] * 3 + ["remove"] * 3
    for row in rows:
        assert -1 <= float(row["score"]) <= 1 and -1 <= float(row["cosine_to_first"]) <= 1


def test_keep_largest_keeps_the_bigger_file_and_first_keeps_the_store_order(store, capsys):
    out, _, _, pairs = store
    capsys.readouterr()
    assert main(["dedup", str(out), "--keep", "largest", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    small_group = next(g for g in result["groups"] if any(
        i["path"] == str(pairs[2][1]) for i in g["images"]))
    # The 80 % size JPEG-60 copy is the smaller file: the original is kept.
    assert os.path.getsize(pairs[2][0]) > os.path.getsize(pairs[2][1])
    assert small_group["keep"] == str(pairs[2][0])
    assert [i["action"] for i in small_group["images"]] == ["keep", "remove"]
    assert result["method"] == "exact" and result["score"] in ("cosine", "centred")
    assert main(["dedup", str(out), "--keep", "first", "--json"]) == 0
    from mobilevec.embedding.store import read_store

    order = {p: i for i, p in enumerate(read_store(out).paths)}
    for group in json.loads(capsys.readouterr().out)["groups"]:
        paths = [i["path"] for i in group["images"]]
        assert group["keep"] == min(paths, key=order.__getitem__)


def test_threshold_and_score_override_the_calibrated_rule(store, capsys):
    out, _, originals, _ = store
    capsys.readouterr()
    # At -1 every pair qualifies; complete linkage then puts everything in groups of at
    # most k+1 images (here k=20 covers the 15), so one group of all.
    assert main(["dedup", str(out), "--threshold", "-1", "--score", "cosine", "--k", "20",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["score"] == "cosine" and result["threshold"] == -1
    assert len(result["groups"]) == 1 and len(result["groups"][0]["images"]) == 15
    assert main(["dedup", str(out), "--threshold", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["groups"] == []


@pytest.mark.parametrize("value", ["2", "nan", "-1.01", "high"])
def test_a_threshold_outside_minus_one_to_one_is_a_usage_error(store, value, capsys):
    out = store[0]
    with pytest.raises(SystemExit) as stop:
        main(["dedup", str(out), "--threshold", value])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "--threshold" in err and ("[-1, 1]" in err or "not a number" in err)


def test_a_store_of_another_model_is_refused(store, capsys):
    out = store[0]
    assert main(["dedup", str(out), "--model", "mobilenet_v2_100_224"]) == 1
    assert "holds mobilenet_v3_small_075_224 vectors" in capsys.readouterr().err


def test_an_empty_store_is_a_clear_error(tmp_path, capsys):
    broken = tmp_path / "in" / "broken.jpg"
    broken.parent.mkdir()
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    out = tmp_path / "v.parquet"
    assert _embed(broken.parent, out=out) == 3
    capsys.readouterr()
    assert main(["dedup", str(out)]) == 1
    assert "holds no vectors" in capsys.readouterr().err
    assert main(["neighbours", str(out), "-o", str(tmp_path / "n.csv")]) == 1
    assert "holds no vectors" in capsys.readouterr().err
    assert main(["dedup", str(tmp_path / "nothing.parquet")]) == 1
    assert "no vectors here" in capsys.readouterr().err


def test_dedup_new_checks_only_the_images_added_since(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    photos = [Path(shutil.copy(p, images / p.name)) for p in _photos(8, start=3)]
    first = _mirror(photos[0], images / "mirror_0.jpg")
    out = tmp_path / "v.parquet"
    assert _embed(images, out=out) == 0
    capsys.readouterr()
    assert main(["dedup", str(out), "--json"]) == 0
    before = json.loads(capsys.readouterr().out)
    assert before["checked"] == 8 + 1
    assert [{i["path"] for i in g["images"]} for g in before["groups"]] == [
        {str(photos[0]), str(first)}]
    assert (out / "_dedup" / "state.json").is_file()
    added = _smaller(photos[4], images / "small_4.jpg")
    assert _embed(images, out=out) == 0
    capsys.readouterr()
    assert main(["dedup", str(out), "--new", "--json"]) == 0
    after = json.loads(capsys.readouterr().out)
    # Only the added image was looked at, and only its group is reported.
    assert after["checked"] == 1 and after["images"] == 10
    assert [{i["path"] for i in g["images"]} for g in after["groups"]] == [
        {str(photos[4]), str(added)}]
    assert main(["dedup", str(out), "--new", "--json"]) == 0  # nothing new since
    again = json.loads(capsys.readouterr().out)
    assert again["checked"] == 0 and again["groups"] == []
    assert main(["dedup", str(out), "--json"]) == 0  # a full run sees both groups
    full = json.loads(capsys.readouterr().out)
    assert sorted(sorted(i["path"] for i in g["images"]) for g in full["groups"]) == sorted(
        [sorted([str(photos[0]), str(first)]), sorted([str(photos[4]), str(added)])])


@pytest.mark.parametrize("index", ["exact", "buckets"])
def test_dedup_new_keeps_its_state_per_index_method(store, tmp_path, capsys, index):
    out, images, originals, pairs = store
    copy = tmp_path / "v.parquet"
    shutil.copytree(out, copy)
    assert main(["dedup", str(copy), "--index", index, "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["method"] == index and len(first["groups"]) == 3
    assert main(["dedup", str(copy), "--index", index, "--new", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["checked"] == 0 and again["groups"] == []


def test_a_name_that_is_not_utf8_is_printed_and_written(tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for p in _photos(5, start=5):
        shutil.copy(p, folder / p.name)
    src = _photos(1, start=5)[0]
    odd = os.fsdecode(os.fsencode(str(folder)) + b"/caf\xe9.jpg")
    shutil.copy(src, odd)
    _mirror(src, folder / "mirror.jpg")
    out = tmp_path / "v.parquet"
    assert _embed(folder, out=out) == 0
    capsys.readouterr()
    assert main(["dedup", str(out), "--csv", str(tmp_path / "g.csv"), "--html",
                 str(tmp_path / "r.html")]) == 0
    text = capsys.readouterr().out
    assert "caf\\xe9.jpg" in text
    assert "caf\\xe9.jpg" in (tmp_path / "g.csv").read_text(encoding="utf-8")
    assert "caf\\xe9.jpg" in (tmp_path / "r.html").read_text(encoding="utf-8")
    assert main(["neighbours", str(out), "--k", "2", "-o", str(tmp_path / "n.csv")]) == 0
    assert "caf\\xe9.jpg" in (tmp_path / "n.csv").read_text(encoding="utf-8")


def test_neighbours_lists_the_top_k_of_every_image(store, tmp_path, capsys):
    import pyarrow.parquet as pq

    from mobilevec.embedding.store import read_store

    out, _, _, pairs = store
    assert main(["neighbours", str(out), "--k", "3", "--score", "cosine", "-o",
                 str(tmp_path / "n.parquet")]) == 0
    table = pq.read_table(tmp_path / "n.parquet").to_pydict()
    assert len(table["path"]) == 15 * 3
    # An independent reference: every cosine of the stored vectors, by numpy.
    stored = read_store(out)
    unit = stored.vectors.astype(np.float64)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    row = {p: i for i, p in enumerate(stored.paths)}
    for path, rank, neighbour, score in zip(table["path"], table["rank"], table["neighbour"],
                                            table["score"], strict=True):
        i = row[path]
        expected = np.argsort(-sims[i], kind="stable")[rank - 1]
        assert abs(sims[i, row[neighbour]] - sims[i, expected]) < 1e-5
        assert abs(score - sims[i, row[neighbour]]) < 1e-4
    for a, b in pairs:  # each copy's nearest image is its original, and back
        first = {p: n for p, r, n in zip(table["path"], table["rank"], table["neighbour"],
                                         strict=True) if r == 1}
        assert first[str(a)] == str(b) and first[str(b)] == str(a)
    assert main(["neighbours", str(out), "-o", str(tmp_path / "n.txt")]) == 1
    assert ".parquet or .csv" in capsys.readouterr().err


def test_search_takes_k_in_both_spellings(store, tmp_path, capsys):
    out, _, originals, _ = store
    query = _mirror(originals[5], tmp_path / "query.jpg")
    for flag in ("-k", "--k"):
        capsys.readouterr()
        assert main(["search", str(out), str(query), flag, "2", "--json", "--quiet",
                     "--workers", "0"]) == 0
        hits = json.loads(capsys.readouterr().out)["queries"][0]["neighbours"]
        assert len(hits) == 2 and hits[0]["path"] == str(originals[5])


# --- the HTML reports, in a real browser -----------------------------------------------------
_CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(_CHROMIUM is None, reason="chromium is not installed "
                                    "(apt-get install chromium); the HTML report is not "
                                    "checked in a browser")


def _chromium(tmp_path: Path, page: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'chromium-profile'}", *extra,
         page.resolve().as_uri()], capture_output=True, text=True, timeout=90)


def _count(dom: str, cls: str) -> int:
    """Elements of the rendered DOM whose class list holds ``cls``."""
    return sum(cls in found.split() for found in re.findall(r'class="([^"]*)"', dom))


def _check_self_contained(page: Path) -> str:
    text = page.read_text(encoding="utf-8")
    assert "<script" not in text.lower()
    assert not re.search(r'(src|href)="(?!data:image/jpeg;base64,)', text)  # nothing fetched
    assert "http://" not in text and "https://" not in text
    # Thumbnails, never full images: each inlined JPEG is at most 128 px a side.
    import base64
    import io

    for uri in re.findall(r'src="data:image/jpeg;base64,([^"]+)"', text):
        with Image.open(io.BytesIO(base64.b64decode(uri))) as thumb:
            assert max(thumb.size) <= 128, thumb.size
    return text


@needs_chromium
def test_the_dedup_report_renders_in_headless_chromium(store, tmp_path, capsys):
    out, _, _, pairs = store
    page = tmp_path / "report.html"
    assert main(["dedup", str(out), "--html", str(page)]) == 0
    text = _check_self_contained(page)
    assert page.stat().st_size < 200_000
    assert text.count("data:image/jpeg;base64,") == 6
    dom = _chromium(tmp_path, page, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert _count(dom.stdout, "group") == 3
    assert _count(dom.stdout, "keep") == 3 and _count(dom.stdout, "remove") == 3
    for a, b in pairs:
        assert Path(a).name in dom.stdout and Path(b).name in dom.stdout
    shot = tmp_path / "report.png"
    taken = _chromium(tmp_path, page, f"--screenshot={shot}", "--window-size=1200,900")
    assert taken.returncode == 0, taken.stderr[-2000:]
    with Image.open(shot) as image:
        assert image.size == (1200, 900)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert shot.stat().st_size > 20_000 and (colours is None or len(colours) > 500)


@needs_chromium
def test_the_search_report_renders_in_headless_chromium(store, tmp_path, capsys):
    out, _, originals, _ = store
    queries = [_mirror(originals[i], tmp_path / f"q{i}.jpg") for i in (6, 7)]
    page = tmp_path / "search.html"
    assert main(["search", str(out), *map(str, queries), "--k", "4", "--html", str(page),
                 "--quiet", "--workers", "0"]) == 0
    _check_self_contained(page)
    dom = _chromium(tmp_path, page, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert _count(dom.stdout, "query") == 2 and _count(dom.stdout, "query-image") == 2
    assert _count(dom.stdout, "neighbour") == 8
    shot = tmp_path / "search.png"
    assert _chromium(tmp_path, page, f"--screenshot={shot}",
                     "--window-size=1200,900").returncode == 0
    assert shot.stat().st_size > 20_000


def test_report_paths_are_escaped(tmp_path):
    from mobilevec.embedding.report import search_report

    hostile = tmp_path / '<img src=x onerror="alert(1)">.jpg'
    page = search_report(tmp_path / "r.html", [(str(hostile), [(str(hostile), 0.5)])])
    text = page.read_text(encoding="utf-8")
    assert "<img src=x" not in text and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in text
    assert 'class="missing"' in text  # the file does not exist: a box, not an error
