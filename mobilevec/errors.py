"""Every exception mobilevec raises on purpose. Each one names the file, variable or input
at fault and, where there is one, what to do next.

All derive from :class:`MobilevecError`, which the command line reports as one line.
"""

from __future__ import annotations

from pathlib import Path


class MobilevecError(Exception):
    """Base class of every error mobilevec raises on purpose."""


# --- models and weights -------------------------------------------------------------------

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


# --- downloads and the cache --------------------------------------------------------------

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


class NetworkError(DownloadError):
    """The connection failed (refused, DNS, timeout, cut mid-stream); the file may be fine."""


class OfflineError(DownloadError):
    """Offline mode is on and the artifact is not in the cache (no network was tried)."""


class CorruptCacheError(DownloadError):
    """A cached file no longer matches the sha256 its entry recorded (edited or damaged).

    ``mobilevec.load`` rebuilds derived files from a verified original and downloads an
    original again; the message says how to remove the entry by hand.
    """


# --- inputs and outputs --------------------------------------------------------------------

class ImageError(MobilevecError):
    """An image that cannot be decoded; the message names the file and the cause."""

    def __init__(self, path: str | Path, cause: str):
        self.path, self.cause = str(path), cause
        super().__init__(f"{path}: {cause}")


class InputError(MobilevecError, ValueError):
    """Input arrays that break the input contract (:mod:`mobilevec.models.inputs`): the
    message says what was given and what is expected."""


class DatasetError(MobilevecError):
    """A data folder that cannot be used for training; names the folder and the cause."""


class StoreError(MobilevecError):
    """A vector store that cannot be used as asked; the message says what to do."""


class DedupError(MobilevecError, ValueError):
    """A dedup or neighbours request that cannot be done as asked (threshold outside
    [-1, 1], unknown rule, a store of a model with no calibrated rule)."""


class RunError(MobilevecError):
    """A run folder that is missing, incomplete or does not fit the request."""


# --- optional dependencies -------------------------------------------------------------------

class MissingDependencyError(MobilevecError, ImportError):
    """An optional package is not installed; the message names the pip extra."""

    def __init__(self, module: str, extra: str, purpose: str | None = None):
        self.module, self.extra = module, extra
        need = f"{purpose} needs" if purpose else "this needs"
        super().__init__(f"{need} the {module!r} package: pip install 'mobilevec[{extra}]'")


class DeviceError(MobilevecError):
    """A torch device that this torch build or machine does not have."""


class PrecisionError(MobilevecError):
    """A precision this machine cannot run natively, or that no installed backend offers."""


class MissingBackendError(MissingDependencyError):
    """An inference backend's runtime is not installed; the message names the pip extra."""

    def __init__(self, backend: str, module: str, extra: str):
        self.backend = backend
        super().__init__(module, extra, f"backend {backend!r}")
