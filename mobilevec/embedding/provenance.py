"""What made a store's vectors, and how to make more that compare with them.

A store records (:func:`store_meta`) the model name, a fingerprint of its weights as loaded
(:func:`model_fingerprint`), the artifact and its identity (:func:`mobilevec._io.sha256_tree`),
the preprocessing and the output options. :func:`model_for_store` rebuilds that model for
``search`` and refuses one whose fingerprint differs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from .._io import sha256_tree
from .._version import __version__
from ..errors import StoreError
from ..models.factory import model_fingerprint

if TYPE_CHECKING:
    import torch

    from .batching import Preprocessing


def store_meta(model: torch.nn.Module, prep: Preprocessing, *, normalize: bool = False,
               half: bool = False, weights: str | Path | None = None,
               source: str | None = None, fingerprint: str | None = None) -> dict:
    """What the store records about a run's model and options (see ``COMPATIBLE_KEYS``).

    ``weights`` is the artifact the model was loaded from (recorded with its sha256 so that
    ``search`` can rebuild the model); ``source`` optionally names it otherwise (a handle).
    ``fingerprint`` defaults to :func:`model_fingerprint` of ``model``.
    """
    return {
        "model": model.config.name,
        "fingerprint": fingerprint or model_fingerprint(model),
        "dim": int(model.num_features),
        "dtype": "float16" if half else "float32",
        "normalize": bool(normalize),
        "preprocessing": {"size": list(prep.size), "crop": prep.crop, "draft": prep.draft},
        "weights": os.path.abspath(weights) if weights is not None else None,
        "weights_sha256": None if weights is None else sha256_tree(weights),
        "source": source,
        "mobilevec": __version__,
    }


def model_for_store(vectors: str | Path, meta: dict, *, model: str | None = None,
                    weights: str | Path | None = None, handle: str | None = None
                    ) -> torch.nn.Module:
    """The model the vectors at ``vectors`` (whose :func:`store_meta` is ``meta``) were made
    with, to embed queries comparable with them: rebuilt from the recorded handle or
    weights, or from ``model``, ``weights``, ``handle`` when given (a moved artifact).

    Raises :class:`StoreError` when the model asked for differs from the recorded one, the
    vectors were made with random weights, or the weights now give another model.
    """
    from ..hub.loader import load
    from ..models.factory import create_model

    asked = model
    name = asked or meta["model"]
    if name != meta["model"]:
        raise StoreError(f"{vectors} holds {meta['model']} vectors; --model {name} cannot "
                         "embed queries comparable with them")
    handle = handle or (None if weights else meta.get("source"))
    weights = weights or meta.get("weights")
    if handle:
        net = load(handle, model=name)
        weights = handle
    elif weights is None:
        raise StoreError(f"{vectors} was made with random weights; its queries cannot be "
                         "embedded again")
    elif not Path(weights).exists():
        raise StoreError(f"{vectors} was made with weights {weights}, which no longer exist; "
                         "pass --weights FILE|DIR")
    else:
        net = create_model(name, weights=weights, trainable=False)
    if model_fingerprint(net) != meta["fingerprint"]:
        raise StoreError(f"{weights} gives a different model than the one {vectors} was made "
                         f"with ({meta.get('weights')}, sha256 {meta.get('weights_sha256')}); "
                         "pass the same --weights")
    return net
