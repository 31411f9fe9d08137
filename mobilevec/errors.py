"""Exceptions raised by mobilevec. Each one names the file (and variable) at fault."""

from __future__ import annotations

from pathlib import Path


class MobilevecError(Exception):
    """Base class of every error mobilevec raises on purpose."""


class WeightsError(MobilevecError):
    """A weights artifact is missing, truncated, corrupt, or does not fit the model.

    The message always names the artifact and, where one is at fault, the variable.
    """

    def __init__(self, path: str | Path | None, message: str, variable: str | None = None):
        self.path = None if path is None else str(path)
        self.variable = variable
        where = self.path or "<weights>"
        if variable:
            where = f"{where} [{variable}]"
        super().__init__(f"{where}: {message}")


class UnknownModelError(MobilevecError, KeyError):
    """A model name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class DownloadError(MobilevecError):
    """Fetching, verifying, caching or unpacking a remote artifact failed.

    The message names the URL or file at fault and says what to do next; ``url`` and
    ``path`` hold them when known.
    """

    def __init__(self, message: str, *, url: str | None = None,
                 path: str | Path | None = None):
        super().__init__(message)
        self.url = url
        self.path = None if path is None else str(path)


class OfflineError(DownloadError):
    """Offline mode is on and the artifact is not in the cache (no network was tried)."""
