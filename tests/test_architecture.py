"""The layout rules of docs/architecture.md, checked on the source: one import direction,
no cycles (lazy imports included), a package map that matches the tree, and the public API
(including the 0.1 module paths) still importable."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mobilevec"
DOC = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(module: str, path: Path) -> set[str]:
    """Every mobilevec module that ``module`` imports, at any depth of its code."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("mobilevec"):
                continue
            for alias in node.names:  # `from . import cache` imports a module
                full = f"{target}.{alias.name}"
                out.add(full if full in MODULES else target)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("mobilevec"))
    out.discard(module)
    return out


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "mobilevec"


def _ranks() -> dict[str, int]:
    section = DOC.split("## Import direction", 1)[1].split("\n## ", 1)[0]
    ranks = {}
    for line in section.splitlines():
        if m := re.match(r"\d+\. (.*)", line):
            for unit in re.findall(r"`([\w.]+)`", m[1]):
                ranks[unit] = int(line.split(".")[0])
    return ranks


RANKS = _ranks()


def test_every_unit_of_the_package_has_a_place_in_the_import_direction():
    assert {_unit(m) for m in MODULES} == set(RANKS)


def test_imports_go_only_down_the_documented_direction():
    wrong = []
    for module, targets in GRAPH.items():
        for target in targets:
            a, b = _unit(module), _unit(target)
            if a != b and RANKS[b] >= RANKS[a]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against docs/architecture.md:\n" + "\n".join(sorted(wrong))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                cycles.append(sorted([v, *component]))

    for v in graph:
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycles_lazy_imports_included():
    assert not _cycles(GRAPH)


def test_the_checks_fail_on_a_lazy_cycle_and_a_wrong_direction(tmp_path):
    # The parser and the cycle finder must be able to fail: two modules written by hand.
    (tmp_path / "a.py").write_text("from .b import x\n")
    (tmp_path / "b.py").write_text("def f():\n    from .a import y\n")
    graph = {"mobilevec.a": _imports("mobilevec.a", tmp_path / "a.py"),
             "mobilevec.b": _imports("mobilevec.b", tmp_path / "b.py")}
    assert graph == {"mobilevec.a": {"mobilevec.b"}, "mobilevec.b": {"mobilevec.a"}}
    assert _cycles(graph) == [["mobilevec.a", "mobilevec.b"]]
    assert RANKS["models"] < RANKS["engines"]  # so engines -> models is allowed, not back


def test_the_package_map_matches_the_tree():
    block = DOC.split("## Package map", 1)[1].split("```", 2)[1]
    documented, folder = set(), None
    for line in block.splitlines()[2:]:  # after "mobilevec/"
        if not line.strip():
            continue
        name = line.split()[0]
        depth = (len(line) - len(line.lstrip())) // 2
        if name.endswith("/"):
            folder = name.rstrip("/")
        elif depth == 1:
            documented.add(name)
        else:
            documented.add(f"{folder}/{name}")
    actual = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")}
    assert documented == actual


PUBLIC = {
    "mobilevec": ["create", "load", "save", "read_weights", "list_models", "get_config",
                  "MobileNet", "MobilevecError", "UnknownModelError", "WeightsError",
                  "__version__"],
    "mobilevec.hub": ["load", "resolve"],
    "mobilevec.engines": ["create_engine", "engine_from_model", "load_engine",
                          "available_backends", "MissingBackendError"],
    "mobilevec.export": ["export", "onnx_model", "openvino_model", "tflite_bytes",
                         "calibration_paths", "fuse"],
    "mobilevec.cli": ["main"],
    "mobilevec.errors": ["DownloadError", "OfflineError", "NetworkError", "ImageError",
                         "StoreError", "DatasetError", "RunError", "MissingDependencyError"],
    # the 0.1 paths the README documented
    "mobilevec.images": ["load_image", "load_array", "ImageError", "IMAGE_SUFFIXES"],
    "mobilevec.embed": ["embed_files", "iter_embeddings", "embed_batches", "Preprocessing"],
    "mobilevec.pipeline": ["run_embed", "store_meta", "RunSummary"],
    "mobilevec.vectorstore": ["file_key", "read_store", "VectorStore", "StoreError"],
    "mobilevec.names": ["to_tf_variables", "variable_names", "load_tf_variables"],
    "mobilevec.cache": ["import_file", "fetch", "list_entries", "clear"],
    "mobilevec.ray_runner": ["run_ray_embed"],
    "mobilevec.train": ["train", "TrainConfig", "Classifier", "fit_head"],
    "mobilevec.registry": ["MODELS", "ModelConfig", "infer_model"],
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_names_import_from_their_documented_paths(module):
    imported = importlib.import_module(module)
    missing = [name for name in PUBLIC[module] if not hasattr(imported, name)]
    assert not missing


def test_an_old_module_path_is_the_very_module_that_moved():
    import mobilevec.embed
    import mobilevec.vectorstore

    import mobilevec.embedding.batching

    assert mobilevec.embed is mobilevec.embedding.batching
    errors = importlib.import_module("mobilevec.errors")
    assert mobilevec.vectorstore.StoreError is errors.StoreError


def test_the_command_line_is_unchanged():
    from mobilevec.cli.app import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    assert {"list", "info", "demo", "embed", "search", "dedup", "export", "backends", "cache",
            "train", "predict", "evaluate"} <= set(commands)
    embed = {o for a in commands["embed"]._actions for o in a.option_strings}
    assert {"--model", "--weights", "--handle", "-o", "--backend", "--workers", "--crop",
            "--half", "--normalize", "--max-pixels", "--runner"} <= embed
    out = subprocess.run([sys.executable, "-m", "mobilevec.cli", "list"], capture_output=True,
                         text=True, check=True).stdout
    assert "mobilenet_v3_small_075_224" in out
