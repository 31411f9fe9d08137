"""The module paths of mobilevec 0.1's flat layout, kept importable.

``import mobilevec.embed`` (the path the 0.1 README documents) gives the very module object
that now lives at ``mobilevec.embedding.batching``: one module under two names, so code
written for the old paths, monkeypatching included, keeps working. New code imports the new
paths (docs/architecture.md).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys

# old path -> new path
MOVED = {
    "mobilevec.specs": "mobilevec.models.specs",
    "mobilevec.layers": "mobilevec.models.layers",
    "mobilevec.model": "mobilevec.models.mobilenet",
    "mobilevec.registry": "mobilevec.models.registry",
    "mobilevec.names": "mobilevec.models.names",
    "mobilevec.artifacts": "mobilevec.hub.artifacts",
    "mobilevec.cache": "mobilevec.hub.cache",
    "mobilevec.images": "mobilevec.data.images",
    "mobilevec.sources": "mobilevec.data.sources",
    "mobilevec.datasets": "mobilevec.data.datasets",
    "mobilevec.augment": "mobilevec.data.augment",
    "mobilevec.embed": "mobilevec.embedding.batching",
    "mobilevec.pipeline": "mobilevec.embedding.pipeline",
    "mobilevec.vectorstore": "mobilevec.embedding.store",
    "mobilevec.search": "mobilevec.embedding.search",
    "mobilevec.vector_index": "mobilevec.embedding.index",
    "mobilevec.ray_runner": "mobilevec.embedding.ray_runner",
    "mobilevec.train": "mobilevec.training.train",
    "mobilevec.classify": "mobilevec.training.classify",
    "mobilevec.runs": "mobilevec.training.runs",
    "mobilevec.reports": "mobilevec.training.reports",
    "mobilevec.demo": "mobilevec.cli.demo",
}


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        return importlib.import_module(self.target)

    def exec_module(self, module) -> None:
        # The target ran its own code already; only the old name is bound here.
        pass


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        new = MOVED.get(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(new))


def install() -> None:
    """Make the old paths importable (idempotent)."""
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.append(_AliasFinder())


install()
