"""Every Python block of README.md and docs/*.md runs as pasted.

Each block runs alone, in a fresh interpreter, in a temporary folder that holds what the
blocks name: the real weights under their published file names (links into
../shared/weights), photos as cat.jpg / dog.png / photos/, and a download cache in which
the TF Hub handles that the blocks load were imported (`mobilevec cache import`, the
offline route the docs describe) with ``MOBILEVEC_OFFLINE=1``: nothing touches the network.
No KERAS_BACKEND is set, as on a new user's machine.

A block that needs something this machine cannot give (a cluster address, a GPU) is
marked in the Markdown with an HTML comment on the line before its fence, which readers do
not see and this test reports as a skip with the reason::

    <!-- docs-test: skip needs a Ray cluster at ray://head:10001 -->

A block that loads a handle this test cannot serve offline fails, naming the handle (add
its local artifact to HANDLES, or mark the block).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from shared_paths import DATA_DIR, REPO, V2_NPY, V3_TFLITE, require

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SKIP_MARKER = re.compile(r"<!--\s*docs-test:\s*skip\s+(.+?)\s*-->")
FENCE = re.compile(r"^```python\s*$")
# Handles the blocks load, and the local artifact imported under each.
HANDLES = {
    "https://tfhub.dev/google/imagenet/mobilenet_v3_small_075_224/feature_vector/5": V3_TFLITE,
    "https://tfhub.dev/google/tf2-preview/mobilenet_v2/feature_vector/2": V2_NPY,
}
BLOCK_TIMEOUT = 300


def python_blocks(path: Path) -> list[tuple[int, str, str | None]]:
    """``(line, code, skip reason or None)`` of each ```python block of a Markdown file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if FENCE.match(lines[i]):
            marker = SKIP_MARKER.search(lines[i - 1]) if i else None
            start = i + 1
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                i += 1
            blocks.append((start + 1, "\n".join(lines[start:i]) + "\n",
                           marker[1] if marker else None))
        i += 1
    return blocks


ALL_BLOCKS = [(doc, line, code, skip) for doc in DOCS for line, code, skip in python_blocks(doc)]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """The folder a user would have: weights, photos, a cache holding the handles."""
    root = tmp_path_factory.mktemp("docs")
    v3, v2 = require(V3_TFLITE), require(V2_NPY)
    photos = sorted(p for p in require(DATA_DIR / "imagenet-samples").iterdir()
                    if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:6]
    (root / V3_TFLITE.name).symlink_to(v3)
    (root / V2_NPY.name).symlink_to(v2)
    manifest = v2.with_name(f"{v2.name}.MANIFEST.tsv")
    if manifest.is_file():
        (root / manifest.name).symlink_to(manifest)
    Image.open(photos[0]).convert("RGB").save(root / "cat.jpg")
    Image.open(photos[1]).convert("RGB").save(root / "dog.png")
    (root / "photos").mkdir()
    for photo in photos[2:]:
        shutil.copy(photo, root / "photos" / photo.name)
    env = _env(root)
    for handle, artifact in HANDLES.items():
        subprocess.run([sys.executable, "-m", "mobilevec.cli", "cache", "import", str(artifact),
                        "--as", handle], env=env, check=True, capture_output=True, timeout=120)
    return root


def _env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERAS_")}
    env.update(MOBILEVEC_CACHE=str(root / "cache"), MOBILEVEC_OFFLINE="1",
               PYTHONPATH=str(REPO))
    return env


def test_the_docs_have_python_blocks():
    docs = {doc.name for doc, *_ in ALL_BLOCKS}
    assert {"README.md", "cache.md", "keras.md", "ray.md"} <= docs and len(ALL_BLOCKS) >= 8


@pytest.mark.parametrize(("doc", "line", "code", "skip"), ALL_BLOCKS,
                         ids=[f"{d.relative_to(REPO)}:{n}" for d, n, _, _ in ALL_BLOCKS])
def test_python_block_runs_as_pasted(workspace, doc, line, code, skip):
    if skip:
        pytest.skip(f"{doc.name}:{line}: {skip}")
    unknown = sorted(set(re.findall(r"https://tfhub\.dev/[^\s\"']+", code)) - set(HANDLES))
    assert not unknown, (f"{doc.name}:{line} loads {unknown}, which this test cannot serve "
                         "offline: add the artifact to HANDLES or mark the block")
    script = workspace / f"block_{doc.stem}_{line}.py"
    script.write_text(code, encoding="utf-8")
    result = subprocess.run([sys.executable, script.name], cwd=workspace, env=_env(workspace),
                            capture_output=True, text=True, timeout=BLOCK_TIMEOUT)
    assert result.returncode == 0, (f"{doc.name}:{line} failed as pasted:\n{code}\n"
                                    f"--- stderr ---\n{result.stderr[-4000:]}")


def test_skip_markers_are_recognised(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("text\n<!-- docs-test: skip needs a GPU -->\n```python\nimport torch\n```\n"
                   "```python\nprint(1)\n```\n")
    assert python_blocks(doc) == [(4, "import torch\n", "needs a GPU"), (7, "print(1)\n", None)]
