"""Reader of the variables of a TensorFlow SavedModel directory (e.g. an extracted TF Hub
module), no TF.

A SavedModel keeps its variables in a TensorBundle at ``variables/variables`` (see
:mod:`mobilevec.formats.tf_checkpoint`). In a TF2 SavedModel the bundle keys are object
paths (``variables/0/.ATTRIBUTES/VARIABLE_VALUE``, ``model/layer-1/kernel/.ATTRIBUTES/...``),
not variable names. The bundle's ``_CHECKPOINTABLE_OBJECT_GRAPH`` entry, a serialized
``TrackableObjectGraph``, links each key to its variable: node -> ``attributes``
(``SerializedTensor``: ``name``, ``full_name``, ``checkpoint_key``), and ``full_name`` is the
TF variable name (``MobilenetV2/Conv/weights``). Where ``full_name`` is empty the name is
taken from ``saved_model.pb`` (``SavedObjectGraph`` node -> ``SavedVariable.name``), whose
node ids are the checkpoint graph's. TF1 (hub.Module-era) SavedModels have no object graph:
their keys already are variable names.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from mobilevec.errors import WeightsError
from mobilevec.formats.object_graph import OBJECT_GRAPH_KEY, resolve_object_graph
from mobilevec.formats.tf_checkpoint import (
    PathLike,
    is_tensor_bundle,
    read_tensor_bundle,
    select_variables,
)

__all__ = ["is_saved_model", "read_saved_model"]

logger = logging.getLogger(__name__)

_SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")


def _locate(path: PathLike) -> tuple[Path, Path]:
    """``(SavedModel root, variables bundle prefix)`` for a root, ``variables/`` dir or pb."""
    p = Path(path)
    if p.is_file() and p.name in _SAVED_MODEL_FILES:
        p = p.parent
    if p.is_dir() and p.name == "variables" and not any(
            (p / f).is_file() for f in _SAVED_MODEL_FILES):
        root = p.parent
    else:
        root = p
    if not any((root / f).is_file() for f in _SAVED_MODEL_FILES):
        raise WeightsError(p, "not a SavedModel directory (no saved_model.pb)")
    prefix = root / "variables" / "variables"
    if not Path(f"{prefix}.index").is_file():
        raise WeightsError(root, "SavedModel has no variables/variables.index (a model "
                           "without variables, or an incompletely extracted archive)")
    return root, prefix


def read_saved_model(path: PathLike, *, ema: bool = True) -> dict[str, np.ndarray]:
    """The variables of a SavedModel, keyed by TF variable name (``MobilenetV2/Conv/weights``).

    ``path`` is the SavedModel directory (holding ``saved_model.pb`` and ``variables/``),
    its ``variables/`` directory, or its ``saved_model.pb``. Object-based keys are resolved
    through the checkpoint's object graph (see the module docstring); TF1 SavedModels are
    keyed by name already. Then, as for checkpoints, EMA twins replace their variables when
    ``ema`` is true and training state is dropped
    (:func:`mobilevec.formats.tf_checkpoint.select_variables`). Arrays keep their stored
    dtype. Raises :class:`WeightsError` naming the file (and variable or key) on any problem.
    """
    root, prefix = _locate(path)
    tensors = read_tensor_bundle(prefix)
    if OBJECT_GRAPH_KEY in tensors:
        tensors = resolve_object_graph(tensors, Path(f"{prefix}.index"), saved_model_root=root)
    else:
        logger.debug("%s has no object graph: keys are taken as variable names", root)
    variables = select_variables(tensors, ema=ema)
    logger.info("read %d variables from SavedModel %s", len(variables), root)
    return variables


def is_saved_model(path: PathLike) -> bool:
    """Whether ``path`` is a SavedModel (root, ``variables/`` or ``saved_model.pb``) whose
    variables bundle is a TensorBundle by content. Never raises."""
    try:
        _root, prefix = _locate(path)
    except (OSError, WeightsError):
        return False
    return is_tensor_bundle(prefix)
