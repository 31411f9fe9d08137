"""Hub handles: resolve a handle to a verified local artifact (downloaded once into the
cache) and build the module it names. ``load`` is ``hub.KerasLayer(handle)`` in PyTorch."""

from .loader import load, resolve

__all__ = ["load", "resolve"]
