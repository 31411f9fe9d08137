"""Object-based TensorBundles (TF2 checkpoints and SavedModels): bundle keys → variable names.

In a TF2 bundle the keys are object paths (``variables/0/.ATTRIBUTES/VARIABLE_VALUE``,
``model/layer-1/kernel/.ATTRIBUTES/...``), not variable names. The bundle's
``_CHECKPOINTABLE_OBJECT_GRAPH`` entry, a serialized ``TrackableObjectGraph``, links each
key to its variable: node -> ``attributes`` (``SerializedTensor``: ``name``, ``full_name``,
``checkpoint_key``), and ``full_name`` is the TF variable name (``MobilenetV2/Conv/weights``).
Where ``full_name`` is empty the name is taken from ``saved_model.pb`` (``SavedObjectGraph``
node -> ``SavedVariable.name``), whose node ids are the checkpoint graph's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mobilevec.errors import WeightsError
from mobilevec.formats import _protobuf as pb

__all__ = ["OBJECT_GRAPH_KEY", "resolve_object_graph"]

logger = logging.getLogger(__name__)

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
_VARIABLE_ATTRIBUTE = "VARIABLE_VALUE"


@dataclass
class _Node:
    children: list[int] = field(default_factory=list)
    # (attribute name, full_name, checkpoint_key) of each SerializedTensor
    attributes: list[tuple[str, str, str]] = field(default_factory=list)
    slot_variable_ids: list[int] = field(default_factory=list)


def _parse_object_graph(blob: bytes) -> list[_Node]:
    """Decode a ``TrackableObjectGraph``: nodes (1) -> children (1), attributes (2), slots (3)."""
    nodes = []
    for node_bytes in pb.parse_message(blob).get(1, []):
        fields = pb.as_message(node_bytes)
        node = _Node()
        for child in fields.get(1, []):
            node.children.append(pb.get_int64(pb.as_message(child), 1))
        for attribute in fields.get(2, []):
            attr = pb.as_message(attribute)
            node.attributes.append(
                (pb.as_str(pb.last(attr, 1)), pb.as_str(pb.last(attr, 2)),
                 pb.as_str(pb.last(attr, 3))))
        for slot in fields.get(3, []):
            node.slot_variable_ids.append(pb.get_int64(pb.as_message(slot), 3))
        nodes.append(node)
    return nodes


def _saved_variable_names(root: Path) -> dict[int, str]:
    """Node id -> ``SavedVariable.name`` from ``saved_model.pb`` (first meta graph).

    Path: SavedModel.meta_graphs (2) -> MetaGraphDef.object_graph_def (7) ->
    SavedObjectGraph.nodes (1) -> SavedObject.variable (7) -> SavedVariable.name (6).
    """
    pb_path = root / "saved_model.pb"
    try:
        saved_model = pb.parse_message(pb_path.read_bytes())
        meta_graph = pb.as_message(next(iter(saved_model.get(2, [])), None))
        object_graph = pb.as_message(pb.last(meta_graph, 7))
        names = {}
        for node_id, node_bytes in enumerate(object_graph.get(1, [])):
            variable = pb.last(pb.as_message(node_bytes), 7)
            if variable is not None:
                names[node_id] = pb.as_str(pb.last(pb.as_message(variable), 6)).removesuffix(":0")
        return names
    except OSError as exc:
        raise WeightsError(pb_path, f"cannot read saved_model.pb: {exc}") from exc
    except pb.ProtobufError as exc:
        raise WeightsError(pb_path, f"corrupt saved_model.pb: {exc}") from None


def _training_only_nodes(nodes: list[_Node]) -> set[int]:
    """Optimizer slot variables and the optimizer's own variables (step, hyperparameters)."""
    dropped: set[int] = set()
    for node in nodes:
        if node.slot_variable_ids:  # only optimizers list slot variables
            dropped.update(node.slot_variable_ids)
            dropped.update(node.children)
    return dropped


def resolve_object_graph(tensors: dict[str, np.ndarray], index_path: Path,
                         saved_model_root: Path | None = None) -> dict[str, np.ndarray]:
    """Re-key an object-based bundle (TF2 checkpoint or SavedModel) by TF variable name.

    Only ``VARIABLE_VALUE`` attributes are kept; optimizer slots and the optimizer's own
    variables are dropped. A ``full_name`` of ``X:0`` gives ``X``; an empty one is looked up
    in ``saved_model_root/saved_model.pb`` when given, else it is an error. Two variables
    with one name are an error (the result would depend on key order).
    """
    try:
        blob = tensors[OBJECT_GRAPH_KEY].item()
        if not isinstance(blob, bytes):
            raise ValueError(f"a {tensors[OBJECT_GRAPH_KEY].dtype} tensor, not one string")
        nodes = _parse_object_graph(blob)
    except (ValueError, AttributeError, pb.ProtobufError) as exc:
        raise WeightsError(index_path, f"corrupt {OBJECT_GRAPH_KEY} entry: {exc}",
                           variable=OBJECT_GRAPH_KEY) from None
    skip = _training_only_nodes(nodes)
    fallback: dict[int, str] | None = None
    out: dict[str, np.ndarray] = {}
    source: dict[str, str] = {}
    for node_id, node in enumerate(nodes):
        for attr_name, full_name, key in node.attributes:
            if attr_name != _VARIABLE_ATTRIBUTE or node_id in skip:
                continue
            name = full_name.removesuffix(":0")
            if not name and saved_model_root is not None:
                if fallback is None:
                    fallback = _saved_variable_names(saved_model_root)
                name = fallback.get(node_id, "")
            if not name:
                raise WeightsError(index_path, "the object graph gives no variable name for "
                                   "this key (empty full_name, no saved_model.pb to consult)",
                                   variable=key)
            if key not in tensors:
                raise WeightsError(index_path, f"object graph names key {key!r} that is not in "
                                   "the bundle", variable=name)
            if name in out:
                raise WeightsError(index_path, f"two variables are named {name!r} (keys "
                                   f"{source[name]!r} and {key!r})", variable=name)
            out[name] = tensors[key]
            source[name] = key
    logger.debug("resolved %d object-graph keys to variable names", len(out))
    return out
