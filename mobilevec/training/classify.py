"""Using a trained run: load its classifier, classify image files, evaluate a class folder."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.datasets import read_class_folders
from ..embedding.batching import Preprocessing, embed_batches
from .classifier import Classifier
from .runs import RunFolder


def load_classifier(run_dir: str | Path, backend: str | None = "auto"
                    ) -> tuple[Classifier, dict]:
    """The trained classifier of a run folder (eval mode) and its ``run.json`` spec.

    ``backend`` other than "torch" computes the backbone's features on that inference
    engine (:mod:`mobilevec.engines`, at the run's input size; "auto": the fastest exact
    one, cached per run folder); the head stays in torch.
    """
    from ..models.factory import create_model

    run = RunFolder(Path(run_dir))
    spec = run.spec()
    backbone = create_model(spec["model"], weights=run.model_path(), trainable=False)
    head = spec.get("head", {})
    engine = None
    size = tuple(spec["preprocessing"]["size"])
    if backend in (None, "auto"):
        from ..engines.default import default_backend

        backend = default_backend()
    if backend in ("openvino", "onnxruntime"):
        from ..engines.default import cached_engine

        # The run's model.safetensors holds exactly this module: it is the cache key.
        engine = cached_engine(spec["model"], run.model_path(), backend=backend,
                               image_size=size, load=lambda: backbone)
    elif backend != "torch":
        from ..engines import engine_from_model

        engine = engine_from_model(backbone, backend, image_size=size, source=run.model_path())
    classifier = Classifier(backbone, len(spec["class_names"]), head.get("dropout", 0.0),
                            head.get("normalize_features", False),
                            head.get("flip_average", False), new_head=False,
                            feature_engine=engine)
    return classifier.eval(), spec


def run_preprocessing(spec: dict) -> Preprocessing:
    """The exact input rule the run was trained and validated with."""
    p = spec["preprocessing"]
    return Preprocessing(size=tuple(p["size"]), crop=p.get("crop", "none"))


@dataclass
class Predictions:
    """Class probabilities ``(N, C)`` of the files that decoded, and (path, reason) for
    those that did not."""

    paths: list[Path]
    probabilities: np.ndarray
    errors: list[tuple[Path, str]] = field(default_factory=list)

    def top_k(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(indices, probabilities)``, each ``(N, min(k, C))``, most probable first."""
        k = min(k, self.probabilities.shape[1])
        order = np.argsort(-self.probabilities, axis=1, kind="stable")[:, :k]
        return order, np.take_along_axis(self.probabilities, order, axis=1)


def classify_files(classifier: Classifier, paths: Sequence[str | Path], prep: Preprocessing,
                   *, batch_size: int = 32, workers: int | None = None,
                   threads: bool = False, progress=None) -> Predictions:
    """Softmax probabilities of each file; undecodable files are reported, not fatal.
    ``progress(done)`` is called with the number of files handled after each batch."""
    done: list[Path] = []
    chunks: list[np.ndarray] = []
    errors: list[tuple[Path, str]] = []
    for batch in embed_batches(classifier, paths, prep=prep, batch_size=batch_size,
                               workers=workers, threads=threads):
        done += batch.paths
        errors += batch.errors
        if len(batch.paths):
            chunks.append(torch.softmax(torch.from_numpy(batch.vectors), 1).numpy())
        if progress:
            progress(len(done) + len(errors))
    probabilities = (np.concatenate(chunks) if chunks
                     else np.zeros((0, classifier.num_classes), np.float32))
    return Predictions(done, probabilities, errors)


@dataclass
class Evaluation:
    labels: np.ndarray  # (N,) true class indices of the files that decoded
    predictions: Predictions


def evaluate_folder(classifier: Classifier, spec: dict, data_dir: str | Path, *,
                    batch_size: int = 32, workers: int | None = None,
                    threads: bool = False, progress=None) -> Evaluation:
    """Classify every image of a class-folder tree whose folders are (some of) the run's
    classes; see :func:`mobilevec.data.datasets.read_class_folders` for the rules."""
    files = read_class_folders(data_dir, spec["class_names"])
    predictions = classify_files(classifier, files.paths, run_preprocessing(spec),
                                 batch_size=batch_size, workers=workers, threads=threads,
                                 progress=progress)
    label_of = dict(zip(files.paths, files.labels, strict=True))
    labels = np.asarray([label_of[p] for p in predictions.paths], dtype=np.int64)
    return Evaluation(labels, predictions)


def seen_in_training(spec: dict, paths: Sequence[str | Path]) -> dict[str, list[Path]]:
    """Which of ``paths`` the run saw: ``{"train": [...], "val": [...]}``, the files that
    ``run.json`` lists as its training images and as the validation images that picked the
    kept epoch (compared as resolved paths, so a copy elsewhere is not recognised; a run
    trained with a relative DATA_DIR is matched from the folder it was trained in)."""
    data = spec.get("data") or {}
    recorded = {}
    for split, folder in (("train", data.get("train_dir")),
                          ("val", data.get("val_dir") or data.get("train_dir"))):
        files = data.get(f"{split}_files") or []
        if folder is None:
            recorded[split] = set()
            continue
        root = Path(folder)
        recorded[split] = {_resolved(root / f if not Path(f).is_absolute() else Path(f))
                           for f in files}
    seen: dict[str, list[Path]] = {"train": [], "val": []}
    for path in paths:
        resolved = _resolved(Path(path))
        for split in seen:
            if resolved in recorded.get(split, ()):
                seen[split].append(Path(path))
    return seen


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:
        return path.absolute()
