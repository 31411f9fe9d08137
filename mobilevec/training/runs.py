"""The run folder: everything a trained classifier needs, in one self-contained directory.

Layout (``RUN/``)::

    run.json                 spec: model name, class names, preprocessing, head, training
                             configuration, data summary, skipped files, best epoch, status
    model.safetensors        the best weights so far: mobilevec safetensors (TF-Slim names,
                             the head as Logits/Conv2d_1c_1x1), loadable by mobilevec.create
    checkpoint.safetensors   the last finished epoch: model variables + optimizer tensors
    checkpoint.json          its metadata: epoch, optimizer hyper-parameters, early-stopping
                             state (what ``--resume`` continues from)
    features.safetensors     frozen mode: the cached feature vectors (paths in its metadata)
    metrics.csv, metrics.json   one row per epoch
    evaluation.json, per_class.csv, confusion_matrix.png, curves.png   the final report

Files are written atomically (temp file + rename), so an interrupted run leaves the last
complete checkpoint, never a half-written one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_write, atomic_write_text, write_csv
from ..errors import RunError
from ..formats.safetensors_format import (
    read_safetensors,
    read_safetensors_metadata,
    write_safetensors,
)

RUN_FORMAT = "mobilevec-run"
RUN_VERSION = 1
SPEC, MODEL, CHECKPOINT, CHECKPOINT_META = ("run.json", "model.safetensors",
                                            "checkpoint.safetensors", "checkpoint.json")
FEATURES, METRICS_CSV, METRICS_JSON = "features.safetensors", "metrics.csv", "metrics.json"
_OPTIMIZER_PREFIX = "optimizer/"
_RNG_KEY = "rng/torch"


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(f"{path}: missing (not a finished mobilevec run folder?)") from None
    except (OSError, ValueError) as e:
        raise RunError(f"{path}: unreadable ({e})") from e


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, np.ndarray], dict]:
    """An optimizer's state as (tensors for safetensors, JSON-able hyper-parameters)."""
    state = optimizer.state_dict()
    tensors = {f"{_OPTIMIZER_PREFIX}{index}/{key}": value.detach().cpu().numpy()
               for index, slots in state["state"].items() for key, value in slots.items()
               if torch.is_tensor(value)}
    return tensors, {"param_groups": state["param_groups"]}


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, np.ndarray],
                      meta: dict) -> None:
    """Inverse of :func:`optimizer_tensors`."""
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith(_OPTIMIZER_PREFIX):
            index, key = name[len(_OPTIMIZER_PREFIX):].split("/", 1)
            slots.setdefault(int(index), {})[key] = torch.from_numpy(np.array(value))
    optimizer.load_state_dict({"state": slots, "param_groups": meta["param_groups"]})


@dataclass
class RunFolder:
    """Reads and writes one run folder (see the module docstring for the layout)."""

    path: Path

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    def file(self, name: str) -> Path:
        return self.path / name

    # --- spec ------------------------------------------------------------------------
    def create(self, spec: dict, *, overwrite: bool = False) -> None:
        """Start a new run in ``path`` (created); refuses to clobber another run's files."""
        if self.file(SPEC).exists() and not overwrite:
            raise RunError(f"{self.path} already holds a run; pass --resume to continue it, "
                           "--overwrite to start again, or pick another -o folder")
        self.path.mkdir(parents=True, exist_ok=True)
        for stale in (CHECKPOINT, CHECKPOINT_META, FEATURES, METRICS_CSV, METRICS_JSON, MODEL):
            self.file(stale).unlink(missing_ok=True)
        self.write_spec(spec)

    def write_spec(self, spec: dict) -> None:
        write_json(self.file(SPEC), {"format": RUN_FORMAT, "version": RUN_VERSION, **spec})

    def spec(self) -> dict:
        if not self.path.is_dir():
            raise RunError(f"{self.path}: no such run folder")
        spec = read_json(self.file(SPEC))
        if spec.get("format") != RUN_FORMAT:
            raise RunError(f"{self.file(SPEC)}: not a mobilevec run description")
        if spec.get("version", 0) > RUN_VERSION:
            raise RunError(f"{self.file(SPEC)}: written by a newer mobilevec (run format "
                           f"{spec['version']}); upgrade mobilevec")
        return spec

    # --- weights -----------------------------------------------------------------------
    def write_model(self, variables: dict[str, np.ndarray], model_name: str,
                    num_classes: int) -> None:
        write_safetensors(variables, self.file(MODEL),
                          {"model": model_name, "num_classes": str(num_classes)})

    def model_path(self) -> Path:
        path = self.file(MODEL)
        if not path.exists():
            raise RunError(f"{path}: missing; the run has not finished an epoch yet")
        return path

    # --- checkpoints -------------------------------------------------------------------
    def write_checkpoint(self, variables: dict[str, np.ndarray],
                         optimizer: torch.optim.Optimizer, meta: dict) -> None:
        """The state after an epoch: weights, optimizer slots, torch RNG, and ``meta``."""
        tensors, optimizer_meta = optimizer_tensors(optimizer)
        tensors[_RNG_KEY] = torch.get_rng_state().numpy()
        write_safetensors({**variables, **tensors}, self.file(CHECKPOINT),
                          {"epoch": str(meta["epoch"])})
        # written second: a checkpoint.json always describes a complete checkpoint file
        write_json(self.file(CHECKPOINT_META), {**meta, "optimizer": optimizer_meta})

    def read_checkpoint(self) -> tuple[dict[str, np.ndarray], dict]:
        """``(variables incl. optimizer/RNG tensors, meta)`` of the last epoch."""
        meta_path = self.file(CHECKPOINT_META)
        if not meta_path.exists():
            raise RunError(f"{self.path}: no checkpoint to resume from (no epoch finished)")
        meta = read_json(meta_path)
        tensors = read_safetensors(self.file(CHECKPOINT))
        stored = read_safetensors_metadata(self.file(CHECKPOINT)).get("epoch")
        if stored != str(meta.get("epoch")):
            raise RunError(f"{self.file(CHECKPOINT)}: holds epoch {stored} but "
                           f"{meta_path.name} says {meta.get('epoch')}; the run folder was "
                           "modified by hand")
        return tensors, meta

    @staticmethod
    def restore_rng(tensors: dict[str, np.ndarray]) -> None:
        if _RNG_KEY in tensors:
            torch.set_rng_state(torch.from_numpy(np.array(tensors[_RNG_KEY])))

    @staticmethod
    def model_variables(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The checkpoint's model variables (without optimizer and RNG tensors)."""
        return {k: v for k, v in tensors.items()
                if not k.startswith(_OPTIMIZER_PREFIX) and k != _RNG_KEY}

    # --- cached features -----------------------------------------------------------------
    def write_features(self, arrays: dict[str, np.ndarray], meta: dict) -> None:
        write_safetensors(arrays, self.file(FEATURES), {"cache": json.dumps(meta)})

    def read_features(self) -> tuple[dict[str, np.ndarray], dict] | None:
        path = self.file(FEATURES)
        if not path.exists():
            return None
        return read_safetensors(path), json.loads(read_safetensors_metadata(path)["cache"])

    # --- metrics -------------------------------------------------------------------------
    def write_metrics(self, rows: list[dict]) -> None:
        """The whole per-epoch log, as CSV and JSON (rewritten each epoch; it is small)."""
        write_json(self.file(METRICS_JSON), rows)
        if not rows:
            return
        columns = list(rows[0])
        atomic_write(self.file(METRICS_CSV), lambda tmp: write_csv(
            tmp, columns, [[row.get(c) for c in columns] for row in rows]))

    def metrics(self) -> list[dict]:
        path = self.file(METRICS_JSON)
        return read_json(path) if path.exists() else []
