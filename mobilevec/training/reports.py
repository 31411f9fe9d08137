"""Classification reports: confusion matrix, per-class precision/recall, PNG figures.

Plots use matplotlib (the ``train`` extra), imported only when a figure is drawn, with the
non-interactive Agg backend.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._optional import require


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """``(C, C)`` int64 counts: row = true class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, np.int64), np.asarray(predicted, np.int64)), 1)
    return matrix


@dataclass
class ClassReport:
    name: str
    precision: float  # NaN when nothing was predicted as this class
    recall: float  # NaN when the class has no images
    f1: float
    support: int


def per_class(matrix: np.ndarray, class_names: Sequence[str]) -> list[ClassReport]:
    """Precision, recall and F1 of each class from a confusion matrix."""
    rows = []
    for i, name in enumerate(class_names):
        hit, predicted, actual = matrix[i, i], matrix[:, i].sum(), matrix[i].sum()
        precision = hit / predicted if predicted else float("nan")
        recall = hit / actual if actual else float("nan")
        f1 = (2 * precision * recall / (precision + recall)
              if predicted and actual and (precision + recall) > 0 else 0.0)
        rows.append(ClassReport(name, float(precision), float(recall), float(f1), int(actual)))
    return rows


def accuracy(matrix: np.ndarray) -> float:
    total = matrix.sum()
    return float(np.trace(matrix) / total) if total else float("nan")


def format_table(reports: list[ClassReport], matrix: np.ndarray) -> str:
    """A plain-text per-class table with the overall accuracy."""
    width = max(12, *(len(r.name) for r in reports))
    lines = [f"{'class':{width}} {'precision':>9} {'recall':>7} {'f1':>6} {'images':>7}"]
    for r in reports:
        lines.append(f"{r.name:{width}} {r.precision:9.3f} {r.recall:7.3f} {r.f1:6.3f} "
                     f"{r.support:7d}")
    lines.append(f"{'accuracy':{width}} {accuracy(matrix):9.3f} {'':7} {'':6} "
                 f"{int(matrix.sum()):7d}")
    return "\n".join(lines)


def write_per_class_csv(reports: list[ClassReport], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "precision", "recall", "f1", "support"])
        for r in reports:
            writer.writerow([r.name, f"{r.precision:.4f}", f"{r.recall:.4f}", f"{r.f1:.4f}",
                             r.support])


def report_dict(matrix: np.ndarray, class_names: Sequence[str]) -> dict:
    """JSON-able summary: accuracy, confusion matrix, per-class figures."""
    return {"accuracy": accuracy(matrix), "images": int(matrix.sum()),
            "class_names": list(class_names), "confusion_matrix": matrix.tolist(),
            "per_class": [vars(r) for r in per_class(matrix, class_names)]}


def _pyplot():
    require("matplotlib", "train", purpose="figures").use("Agg")
    return require("matplotlib.pyplot", "train")


def plot_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], path: Path,
                          title: str = "validation") -> None:
    plt = _pyplot()
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(max(4.5, 1.2 + 0.7 * n), max(4.0, 1.0 + 0.6 * n)), dpi=100)
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}: accuracy {accuracy(matrix):.3f}")
    peak = matrix.max() if matrix.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                    color="white" if matrix[i, j] > peak / 2 else "black")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_curves(history: list[dict], path: Path) -> None:
    """Loss and accuracy per epoch, train and validation."""
    plt = _pyplot()
    epochs = [row["epoch"] for row in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    for split in ("train", "val"):
        loss_ax.plot(epochs, [row[f"{split}_loss"] for row in history], label=split)
        acc_ax.plot(epochs, [row[f"{split}_accuracy"] for row in history], label=split)
    loss_ax.set_title("loss (train: label-smoothed)")
    acc_ax.set_title("accuracy")
    for ax in (loss_ax, acc_ax):
        ax.set_xlabel("epoch")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(folder: Path, labels: np.ndarray, scores: np.ndarray,
                 class_names: Sequence[str], history: list[dict] | None = None,
                 title: str = "validation") -> tuple[np.ndarray, list[ClassReport]]:
    """Write ``evaluation.json``, ``per_class.csv``, ``confusion_matrix.png`` and (with a
    ``history``) ``curves.png`` into ``folder``; ``scores`` are ``(N, C)`` logits or
    probabilities. Without matplotlib the figures are skipped with a warning.
    Returns the confusion matrix and the per-class figures."""
    import json
    import logging

    from ..errors import MobilevecError

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    predicted = np.asarray(scores).argmax(1) if len(scores) else np.zeros(0, np.int64)
    matrix = confusion_matrix(labels, predicted, len(class_names))
    reports = per_class(matrix, class_names)
    (folder / "evaluation.json").write_text(
        json.dumps({"title": title, **report_dict(matrix, class_names)}, indent=2) + "\n",
        encoding="utf-8")
    write_per_class_csv(reports, folder / "per_class.csv")
    try:
        plot_confusion_matrix(matrix, class_names, folder / "confusion_matrix.png", title)
        if history:
            plot_curves(history, folder / "curves.png")
    except MobilevecError as e:
        logging.getLogger(__name__).warning("no figures: %s", e)
    return matrix, reports
