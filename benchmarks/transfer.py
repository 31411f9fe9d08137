"""Transfer-learning recipes on a class-folder data set: frozen heads and fine-tuning.

    python benchmarks/transfer.py frozen [--data ../shared/data/flowers5] [--splits 5]
    python benchmarks/transfer.py fine-tune --model v3 [--epochs 2] [--optimizer adam] ...

``frozen`` embeds every image once per seed model (and its mirror image once, for the
flip recipes), then trains each head recipe on the cached vectors over ``--splits``
seeded stratified 200/100-style splits (``--val-fraction``) and prints the mean and
range of the validation accuracy, plus the wall time of features and of one head.
Reporting the mean over several splits, not the best split, keeps recipe selection from
overfitting one validation set.

``fine-tune`` runs :func:`mobilevec.training.train.train` once (split seed 0) and prints its
validation accuracy and wall time. Results are JSON lines on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

import mobilevec
from mobilevec.data.datasets import read_class_folders, stratified_split
from mobilevec.embedding.batching import embed_files
from mobilevec.training.train import Classifier, TrainConfig, fit_head, train

SHARED = Path(os.environ.get("MOBILEVEC_SHARED", Path(__file__).resolve().parents[2] / "shared"))
SEEDS = {"v2": ("mobilenet_v2_100_224", "mobilenet_v2_1.0_224_tfslim_npy"),
         "v3": ("mobilenet_v3_small_075_224", "mobilenet_v3_small_075_224_embedder.tflite")}


@dataclass(frozen=True)
class Recipe:
    name: str
    config: TrainConfig
    features: str = "plain"  # plain | flip-average (train and test on mean of both views)
    train_on_flips: bool = False  # both views as training samples (cached augmentation)


BASE = TrainConfig(epochs=100)
RECIPES = [
    Recipe("probe: Adam 1e-3, no dropout/smoothing/decay, 100 epochs",
           replace(BASE, optimizer="adam", learning_rate=1e-3, dropout=0.0, label_smoothing=0.0,
                   weight_decay=0.0, schedule="constant")),
    Recipe("default: SGD 0.005 m0.9, dropout 0.2, smoothing 0.1, L2 1e-4, cosine", BASE),
    Recipe("default + L2-normalised features, lr 0.05",
           replace(BASE, normalize_features=True, learning_rate=0.05)),
    Recipe("default + strong L2 1e-2", replace(BASE, weight_decay=1e-2)),
    Recipe("default + dropout 0.5, L2 1e-3", replace(BASE, dropout=0.5, weight_decay=1e-3)),
    Recipe("default + flip-averaged features", BASE, features="flip-average"),
    Recipe("default + flips as training samples, flip-averaged test", BASE,
           features="flip-average", train_on_flips=True),
    Recipe("dropout 0.5, L2 1e-3 + flips as samples, flip-averaged test",
           replace(BASE, dropout=0.5, weight_decay=1e-3), features="flip-average",
           train_on_flips=True),
]


class _Mirrored(torch.nn.Module):
    """The backbone's features of the mirror image (for the flip recipes' cache)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config, self.num_features = model, model.config, model.num_features

    def forward(self, x):
        return self.model(x.flip(-1))


def _features(name: str, weights: Path, paths: list[Path]) -> dict:
    model = mobilevec.create(name, weights=weights, trainable=False)
    t0 = time.perf_counter()
    plain = embed_files(model, paths)
    seconds = time.perf_counter() - t0
    mirrored = embed_files(_Mirrored(model), paths)
    assert not plain.errors and not mirrored.errors
    return {"model": model, "plain": torch.from_numpy(plain.vectors),
            "mirrored": torch.from_numpy(mirrored.vectors), "seconds": seconds}


def _run_recipe(cache: dict, labels: np.ndarray, recipe: Recipe, split_seed: int,
                val_fraction: float) -> tuple[float, float]:
    train_idx, val_idx = stratified_split(labels, val_fraction, split_seed)
    plain, mirrored = cache["plain"], cache["mirrored"]
    test = plain if recipe.features == "plain" else (plain + mirrored) / 2
    y = torch.from_numpy(labels)
    if recipe.train_on_flips:
        train_x = torch.cat([plain[train_idx], mirrored[train_idx]])
        train_y = torch.cat([y[train_idx], y[train_idx]])
    else:
        train_x, train_y = test[train_idx], y[train_idx]
    torch.manual_seed(split_seed)
    classifier = Classifier(cache["model"], int(labels.max()) + 1, recipe.config.dropout,
                            recipe.config.normalize_features)
    t0 = time.perf_counter()
    fit = fit_head(classifier, train_x, train_y, test[val_idx], y[val_idx],
                   replace(recipe.config, seed=split_seed))
    seconds = time.perf_counter() - t0
    return float((fit.val_logits.argmax(1) == y[val_idx]).float().mean()), seconds


def cmd_frozen(args) -> None:
    data = read_class_folders(args.data)
    for seed in args.models:
        name, weights = SEEDS[seed]
        cache = _features(name, SHARED / "weights" / weights, data.paths)
        print(json.dumps({"model": name, "images": len(data), "feature_seconds":
                          round(cache["seconds"], 1)}), flush=True)
        for recipe in RECIPES:
            runs = [_run_recipe(cache, data.labels, recipe, s, args.val_fraction)
                    for s in range(args.splits)]
            accuracies = [a for a, _ in runs]
            print(json.dumps({"model": name, "recipe": recipe.name,
                              "mean": round(float(np.mean(accuracies)), 3),
                              "min": round(min(accuracies), 3), "max": round(max(accuracies), 3),
                              "split0": round(accuracies[0], 3),
                              "head_seconds": round(float(np.mean([t for _, t in runs])), 2)}),
                  flush=True)


def cmd_fine_tune(args) -> None:
    name, weights = SEEDS[args.model]
    config = TrainConfig(epochs=args.epochs, fine_tune=True, optimizer=args.optimizer,
                         learning_rate=args.lr, batch_size=args.batch_size,
                         head_warmup_epochs=args.warmup, augment=args.augment,
                         val_fraction=args.val_fraction, flip_average=args.flip_average,
                         clip_grad_norm=args.clip)
    backbone = mobilevec.create(name, weights=SHARED / "weights" / weights, trainable=True)
    t0 = time.perf_counter()
    result = train(backbone, args.data, args.out, config, overwrite=True,
                   on_epoch=lambda row: print(json.dumps(row), file=sys.stderr, flush=True))
    accuracy = float((result.val_logits.argmax(1) == result.val_labels).mean())
    spec = result.run.spec()
    print(json.dumps({"model": name, "mode": "fine-tune", "batch_norm": spec["batch_norm"],
                      "config": {k: v for k, v in config.to_dict().items()
                                 if k in ("epochs", "optimizer", "learning_rate", "batch_size",
                                          "head_warmup_epochs", "augment", "flip_average",
                                          "clip_grad_norm")},
                      "val_accuracy": round(accuracy, 3), "best_epoch": result.best_epoch,
                      "wall_seconds": round(time.perf_counter() - t0, 1)}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "flowers5")
    parser.add_argument("--val-fraction", type=float, default=1 / 3)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("frozen")
    p.add_argument("--models", nargs="+", default=["v2", "v3"], choices=sorted(SEEDS))
    p.add_argument("--splits", type=int, default=5)
    p = sub.add_parser("fine-tune")
    p.add_argument("--model", default="v3", choices=sorted(SEEDS))
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--optimizer", default="adam", choices=("sgd", "adam"))
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--warmup", type=int, default=30, help="head warm-up epochs")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--flip-average", action="store_true")
    p.add_argument("--clip", type=float, default=None)
    p.add_argument("--out", type=Path, default=Path("/tmp/mobilevec_transfer_run"))
    args = parser.parse_args()
    {"frozen": cmd_frozen, "fine-tune": cmd_fine_tune}[args.command](args)


if __name__ == "__main__":
    main()
