"""The ``mobilevec`` command line: one module per command group over library calls."""

from .app import main

__all__ = ["main"]
