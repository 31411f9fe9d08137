"""Optional dependencies: imported where they are used, with one message when absent."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from .errors import MissingDependencyError


def require(module: str, extra: str, *, purpose: str | None = None) -> ModuleType:
    """Import ``module``, or raise :class:`MissingDependencyError` naming the pip extra
    (``pip install 'mobilevec[<extra>]'``) and, when given, what needs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(module, extra, purpose) from e


def available(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
