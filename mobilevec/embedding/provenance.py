"""What made a store's vectors, and how to make more that compare with them.

A store records (:func:`store_meta`) the model name, a fingerprint of its weights as loaded
(:func:`model_fingerprint`), the artifact and its identity (:func:`mobilevec._io.sha256_tree`),
the preprocessing, the precision and the output options.
:func:`~mobilevec.embedding.embedder.embedder_for_store` rebuilds that model for ``search``
and refuses one whose fingerprint differs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._io import sha256_tree
from .._version import __version__
from ..models.factory import model_fingerprint

if TYPE_CHECKING:

    from .batching import Preprocessing


def store_meta(model: Any, prep: Preprocessing, *, normalize: bool = False,
               half: bool = False, weights: str | Path | None = None,
               source: str | None = None, fingerprint: str | None = None,
               precision: str = "fp32", quality: dict | None = None) -> dict:
    """What the store records about a run's model and options (see ``COMPATIBLE_KEYS``).

    ``model`` is the torch module, an engine or an
    :class:`~mobilevec.embedding.embedder.Embedder`. ``weights`` is the artifact the model
    was loaded from (recorded with its identity so that ``search`` can rebuild the model);
    ``source`` optionally names it otherwise (a handle). ``fingerprint`` defaults to the
    model's own (an engine's from its cache entry, else :func:`model_fingerprint`).
    ``precision`` is the arithmetic the vectors were computed in, ``quality`` the cosine to
    fp32 measured for bf16 and int8.
    """
    fingerprint = fingerprint or getattr(model, "fingerprint", None) or model_fingerprint(model)
    return {
        "model": model.config.name,
        "fingerprint": fingerprint,
        "dim": int(model.num_features),
        "dtype": "float16" if half else "float32",
        "normalize": bool(normalize),
        "preprocessing": {"size": list(prep.size), "crop": prep.crop, "draft": prep.draft},
        "precision": precision,
        "quality": dict(quality or {}),
        "weights": os.path.abspath(weights) if weights is not None else None,
        "weights_sha256": None if weights is None else sha256_tree(weights),
        "source": source,
        "mobilevec": __version__,
    }
