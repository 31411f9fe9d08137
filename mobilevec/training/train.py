"""Transfer learning: a softmax head over a MobileNet feature vector, frozen or fine-tuned.

The classifier is the seed cards' recipe: feature vector → (dropout) → Dense softmax. The
head is the backbone's ``Logits/Conv2d_1c_1x1`` layer (``MobileNet.classifier``), so the
trained weights are ordinary mobilevec safetensors that :func:`mobilevec.create` loads.

Two modes, with ``hub.KerasLayer``'s ``trainable`` semantics:

- **frozen** (default): backbone weights fixed and BatchNorm in inference mode even while
  training. Each image is embedded once; the head trains on the cached vectors (100
  epochs take seconds). With ``augment=True`` the images are instead re-augmented and
  re-embedded every epoch (the backbone still frozen).
- **fine-tune**: everything trains; BatchNorm normalises with the batch statistics and
  updates its moving averages with TF's rule at the TF momentum (decay) ``d`` (default:
  the model's, 0.997 for V2, 0.99 for V3):
  ``moving_mean = d * moving_mean + (1 - d) * batch_mean`` and likewise
  ``moving_variance`` with the *unbiased* (n / (n - 1)) batch variance, as TF's fused batch
  norm kernel (the one TF-Slim and Keras use for conv feature maps) does; the batch itself
  is normalised with the biased variance. That is exactly ``nn.BatchNorm2d`` with
  ``momentum = 1 - d``, which :meth:`MobileNet.set_batch_norm_momentum` sets.

Training: SGD with momentum or Adam, cross-entropy with label smoothing, cosine / step /
constant learning-rate schedule (per epoch), weight decay on the head's kernel only,
augmentation (random resized crop + horizontal flip, as the TF Hub image retraining
example) on images, early stopping on the validation loss, a checkpoint per epoch and
``resume``. The model kept is the one with the lowest validation loss.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._io import sha256_tree
from ..data.augment import DecodedImages, decode_labeled, exact_inputs, random_resized_crop
from ..data.datasets import LabeledFiles, read_class_folders, split_dataset
from ..data.images import resize_array
from ..embedding.batching import embed_files
from ..errors import MobilevecError
from ..models.mobilenet import MobileNet
from ..models.names import LOGITS_SCOPE, load_tf_variables, to_tf_variables, torch_to_tf
from .classifier import Classifier, FlippedPairs, FlipViews, batch_norm_is_folded
from .runs import RunError, RunFolder, restore_optimizer

log = logging.getLogger(__name__)

Optimizer = Literal["sgd", "adam"]
Schedule = Literal["cosine", "step", "constant"]


@dataclass
class TrainConfig:
    """How to train; every field is recorded in the run folder.

    Defaults follow TF Hub's image retraining example (SGD, learning rate 0.005, momentum
    0.9, dropout 0.2, label smoothing 0.1, L2 1e-4 on the head, batch 32).
    ``learning_rate`` is the head's; the backbone (fine-tune) gets
    ``learning_rate * backbone_lr_scale``. ``augment`` None means: on in fine-tune mode,
    off in frozen mode. ``crop_scale`` is the area range of the random resized crop.
    ``patience``: stop after that many epochs without a lower validation loss (None:
    never). ``normalize_features`` L2-normalises the vector before the head;
    ``flip_average`` averages the features of the image and its mirror image at inference
    (validation included); a frozen run's feature cache then also holds the mirror images'
    vectors, as extra training samples. ``bn_momentum`` is TF's decay (None: the model's).
    ``freeze_batch_norm`` (fine-tune): keep BatchNorm in inference mode (moving statistics
    fixed, gamma/beta still trained); None means: only when the weights carry BatchNorm
    folded into the convolutions (TFLite files), whose identity statistics batch
    normalisation would destroy. ``head_warmup_epochs`` (fine-tune): first train the head
    alone that many epochs on cached features (SGD at the default learning rate), so that
    fine-tuning starts from a trained head instead of a random one. ``clip_grad_norm``
    rescales each step's gradients to at most that global L2 norm.
    """

    epochs: int = 10
    fine_tune: bool = False
    batch_size: int = 32
    optimizer: Optimizer = "sgd"
    learning_rate: float = 0.005
    momentum: float = 0.9
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    schedule: Schedule = "cosine"
    step_epochs: int = 30
    step_gamma: float = 0.1
    dropout: float = 0.2
    augment: bool | None = None
    crop_scale: tuple[float, float] = (0.5, 1.0)
    bn_momentum: float | None = None
    freeze_batch_norm: bool | None = None
    backbone_lr_scale: float = 1.0
    head_warmup_epochs: int = 0
    clip_grad_norm: float | None = None
    patience: int | None = None
    normalize_features: bool = False
    flip_average: bool = False
    seed: int = 0
    val_fraction: float = 0.2
    image_size: int | None = None

    @property
    def augments(self) -> bool:
        return self.fine_tune if self.augment is None else self.augment

    def to_dict(self) -> dict:
        return {**asdict(self), "crop_scale": list(self.crop_scale)}

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if "crop_scale" in values:
            values["crop_scale"] = tuple(values["crop_scale"])
        return cls(**values)

    def check(self) -> None:
        """Raise ValueError on settings that cannot train."""
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be at least 1")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.schedule not in ("cosine", "step", "constant"):
            raise ValueError(f"schedule must be cosine, step or constant, got {self.schedule!r}")
        if not 0.0 <= self.dropout < 1.0 or not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError("dropout and label_smoothing must be in [0, 1)")
        if not 0.0 < self.crop_scale[0] <= self.crop_scale[1] <= 1.0:
            raise ValueError(f"crop_scale must be 0 < min <= max <= 1, got {self.crop_scale}")
        if self.learning_rate <= 0:
            raise ValueError("learning_rate must be positive")


def learning_rate_at(config: TrainConfig, epoch: int) -> float:
    """The head's learning rate during ``epoch`` (0-based)."""
    if config.schedule == "cosine":
        return config.learning_rate * 0.5 * (1.0 + math.cos(math.pi * epoch / config.epochs))
    if config.schedule == "step":
        return config.learning_rate * config.step_gamma ** (epoch // config.step_epochs)
    return config.learning_rate


def build_optimizer(classifier: Classifier, config: TrainConfig) -> torch.optim.Optimizer:
    """Head kernel with weight decay, head bias without; in fine-tune mode the backbone
    (no weight decay, ``backbone_lr_scale``). Group 'lr_scale' entries scale the schedule."""
    head = classifier.backbone.classifier
    groups = [{"params": [head.weight], "weight_decay": config.weight_decay, "lr_scale": 1.0},
              {"params": [head.bias], "weight_decay": 0.0, "lr_scale": 1.0}]
    if config.fine_tune:
        own = {id(p) for p in head.parameters()}
        backbone = [p for p in classifier.backbone.parameters() if id(p) not in own]
        groups.append({"params": backbone, "weight_decay": 0.0,
                       "lr_scale": config.backbone_lr_scale})
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.learning_rate, momentum=config.momentum)
    return torch.optim.Adam(groups, lr=config.learning_rate)


def _set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]


# --- epochs --------------------------------------------------------------------------------
@dataclass
class EpochStats:
    loss: float
    accuracy: float


def _batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    order = rng.permutation(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def _step(classifier: Classifier, optimizer: torch.optim.Optimizer, logits: torch.Tensor,
          labels: torch.Tensor, config: TrainConfig) -> tuple[float, int]:
    loss = F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.clip_grad_norm is not None:
        nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]],
                                 config.clip_grad_norm)
    optimizer.step()
    return float(loss.detach()) * len(labels), int((logits.argmax(1) == labels).sum())


def head_epoch(classifier: Classifier, optimizer: torch.optim.Optimizer,
               vectors: torch.Tensor, labels: torch.Tensor, config: TrainConfig,
               rng: np.random.Generator) -> EpochStats:
    """One epoch of the head on cached feature vectors ``(N, D)``."""
    classifier.dropout.train()  # only the head runs: no need to walk the backbone's modules
    total, correct = 0.0, 0
    for index in _batches(len(labels), config.batch_size, rng):
        index = torch.from_numpy(index)
        logits = classifier.head(vectors[index])
        loss, hits = _step(classifier, optimizer, logits, labels[index], config)
        total, correct = total + loss, correct + hits
    return EpochStats(total / len(labels), correct / len(labels))


def image_epoch(classifier: Classifier, optimizer: torch.optim.Optimizer,
                data: DecodedImages, config: TrainConfig, size: tuple[int, int],
                rng: np.random.Generator) -> EpochStats:
    """One epoch on images (augmented when the config says so). Frozen backbone: its
    features are computed without gradients and BatchNorm stays in inference mode."""
    classifier.train()
    labels = torch.from_numpy(data.labels)
    total, correct = 0.0, 0
    for index in _batches(len(labels), config.batch_size, rng):
        if config.augments:
            x = np.stack([random_resized_crop(data.images[i], size, rng, config.crop_scale)
                          for i in index])
        else:
            x = np.stack([resize_array(data.images[i], size) for i in index])
        x = torch.from_numpy(x)
        if config.fine_tune:
            logits = classifier(x)
        else:
            with torch.no_grad():
                vectors = classifier.backbone.features(x)
            logits = classifier.head(vectors)
        loss, hits = _step(classifier, optimizer, logits, labels[torch.from_numpy(index)],
                           config)
        total, correct = total + loss, correct + hits
    return EpochStats(total / len(labels), correct / len(labels))


@torch.no_grad()
def predict_logits(classifier: Classifier, inputs: torch.Tensor, batch_size: int = 64
                   ) -> torch.Tensor:
    """Eval-mode logits of ``(N, 3, h, w)`` inputs."""
    classifier.eval()
    parts = [classifier(inputs[i:i + batch_size]) for i in range(0, len(inputs), batch_size)]
    return torch.cat(parts) if parts else torch.zeros((0, classifier.num_classes))


@torch.no_grad()
def head_logits(classifier: Classifier, vectors: torch.Tensor) -> torch.Tensor:
    classifier.dropout.eval()
    return classifier.head(vectors)


def evaluate_logits(logits: torch.Tensor, labels: torch.Tensor) -> EpochStats:
    """Plain (unsmoothed) cross-entropy and accuracy."""
    if len(labels) == 0:
        return EpochStats(float("nan"), float("nan"))
    return EpochStats(float(F.cross_entropy(logits, labels)),
                      float((logits.argmax(1) == labels).float().mean()))


# --- the whole run -------------------------------------------------------------------------
@dataclass
class TrainResult:
    """What :func:`train` did; ``history`` has one row per epoch (all epochs of the run,
    resumed ones included)."""

    run: RunFolder
    classifier: Classifier
    history: list[dict]
    best_epoch: int
    val_labels: np.ndarray
    val_logits: np.ndarray
    class_names: list[str]
    skipped: list[tuple[str, str]]
    stopped_early: bool
    seconds_features: float = 0.0
    seconds_training: float = 0.0


@dataclass
class _Data:
    train: LabeledFiles
    val: LabeledFiles
    val_source: str


def prepare_data(data_dir: str | Path, config: TrainConfig, val_dir: str | Path | None = None
                 ) -> _Data:
    """Training and validation files: a seeded stratified split, or ``val_dir``."""
    data = read_class_folders(data_dir)
    if val_dir is None:
        train, val = split_dataset(data, config.val_fraction, config.seed)
        return _Data(train, val, f"split {config.val_fraction:g} of {data_dir}, "
                                 f"seed {config.seed}")
    return _Data(data, read_class_folders(val_dir, data.class_names), str(val_dir))


def _relative(paths: list[Path], root: Path) -> list[str]:
    out = []
    for p in paths:
        try:
            out.append(str(Path(p).resolve().relative_to(root.resolve())))
        except ValueError:
            out.append(str(p))
    return out


class _Progress:
    """Optional callbacks: ``embed(done, total)`` while embedding, ``epoch(row)`` after
    each epoch (returning True stops training, e.g. to simulate an interruption)."""

    def __init__(self, embed: Callable[[int, int], None] | None = None,
                 epoch: Callable[[dict], bool | None] | None = None):
        self.embed, self.epoch = embed, epoch


def _feature_runner(classifier: Classifier, size: tuple[int, int], backend: str | None):
    """What computes the frozen backbone's features: the default engine (``backend``
    "auto"), a named one, or the torch module ("torch"); with flip averaging, the features
    of each image and its mirror side by side."""
    from ..engines import engine_from_model
    from ..engines.default import default_backend

    backbone = classifier.backbone.eval()
    backend = default_backend() if backend in (None, "auto") else backend
    if backend == "torch":
        return FlipViews(backbone) if classifier.flip_average else backbone
    # Not the engine cache: its entries hold the artifact's own module, and this backbone
    # carries the run's new head. Compiling once per run costs a second or two.
    engine = engine_from_model(backbone, backend, image_size=size)
    return FlippedPairs(engine) if classifier.flip_average else engine


def _cache_features(classifier: Classifier, files: LabeledFiles, size: tuple[int, int],
                    workers: int | None, progress: _Progress, what: str, features
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None,
                               list[tuple[Path, str]]]:
    """``(vectors, labels, mirrored vectors or None, errors)`` of the files that decode,
    computed by ``features`` (:func:`_feature_runner`); the mirror images' vectors only
    when the classifier averages over flips."""
    def update(done: int) -> None:
        if progress.embed:
            progress.embed(done, len(files), what)

    backbone = classifier.backbone
    result = embed_files(features, files.paths, size=size, workers=workers, progress=update)
    label_of = dict(zip(files.paths, files.labels, strict=True))
    labels = torch.from_numpy(np.asarray([label_of[p] for p in result.paths], dtype=np.int64))
    vectors = torch.from_numpy(result.vectors)
    if not classifier.flip_average:
        return vectors, labels, None, result.errors
    half = backbone.num_features
    return vectors[:, :half], labels, vectors[:, half:], result.errors


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one thread: the head's matrices are tiny, and on a busy machine the
    thread pool's synchronisation costs far more than the arithmetic (docs/benchmarks.md,
    "Measurements behind the code")."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass
class _Inputs:
    """How epochs see the data: ``epoch(rng)`` trains one epoch, ``validate()`` gives the
    validation logits (labels ``val_labels``); ``skipped`` are the files that failed."""

    epoch: Callable[[np.random.Generator], EpochStats]
    validate: Callable[[], torch.Tensor]
    val_labels: torch.Tensor
    skipped: list[tuple[Path, str]]
    seconds: float


def _prepare_inputs(classifier: Classifier, optimizer: torch.optim.Optimizer, data: _Data,
                    config: TrainConfig, size: tuple[int, int], run: RunFolder, resume: bool,
                    workers: int | None, progress: _Progress,
                    backend: str | None = "auto") -> _Inputs:
    """Cached feature vectors (frozen without augmentation, computed on ``backend``;
    reused when resuming) or decoded images (fine-tune, augmentation)."""
    t0 = time.perf_counter()
    skipped: list[tuple[Path, str]] = []
    if config.fine_tune or config.augments:
        train_images, val_images = decode_labeled(data.train), decode_labeled(data.val)
        skipped = train_images.errors + val_images.errors
        val_inputs = exact_inputs(val_images.images, size)
        _require_images(len(train_images.labels), len(val_images.labels), data)
        if config.fine_tune and config.head_warmup_epochs and not resume:
            _warm_up_head(classifier, config, exact_inputs(train_images.images, size),
                          torch.from_numpy(train_images.labels), val_inputs,
                          torch.from_numpy(val_images.labels))
        return _Inputs(
            lambda rng: image_epoch(classifier, optimizer, train_images, config, size, rng),
            lambda: predict_logits(classifier, val_inputs),
            torch.from_numpy(val_images.labels), skipped, time.perf_counter() - t0)
    stored = run.read_features() if resume else None
    if stored is not None:
        arrays = {k: torch.from_numpy(v) for k, v in stored[0].items()}
    else:
        arrays = {}
        features = _feature_runner(classifier, size, backend)
        for split, files in (("train", data.train), ("val", data.val)):
            vectors, labels, mirrored, errors = _cache_features(classifier, files, size,
                                                                workers, progress, split,
                                                                features)
            if mirrored is not None and split == "train":  # both views are training samples
                vectors, labels = torch.cat([vectors, mirrored]), torch.cat([labels, labels])
            elif mirrored is not None:  # validation sees what inference sees: the average
                vectors = (vectors + mirrored) * 0.5
            arrays[f"{split}/vectors"], arrays[f"{split}/labels"] = vectors, labels
            skipped += errors
        run.write_features({k: v.numpy() for k, v in arrays.items()},
                           {"model": classifier.config.name, "size": list(size),
                            "flip_average": config.flip_average})
    _require_images(len(arrays["train/labels"]), len(arrays["val/labels"]), data)

    def epoch(rng: np.random.Generator) -> EpochStats:
        with _one_thread():
            return head_epoch(classifier, optimizer, arrays["train/vectors"],
                              arrays["train/labels"], config, rng)

    return _Inputs(
        epoch, lambda: head_logits(classifier, arrays["val/vectors"]),
        arrays["val/labels"], skipped, time.perf_counter() - t0)


@torch.no_grad()
def _backbone_vectors(classifier: Classifier, inputs: torch.Tensor, batch_size: int = 64
                      ) -> torch.Tensor:
    classifier.eval()
    parts = [classifier.features(inputs[i:i + batch_size])
             for i in range(0, len(inputs), batch_size)]
    return torch.cat(parts)


def _warm_up_head(classifier: Classifier, config: TrainConfig, train_inputs: torch.Tensor,
                  train_labels: torch.Tensor, val_inputs: torch.Tensor,
                  val_labels: torch.Tensor) -> None:
    """Train the head alone on the (inference) features of the un-augmented images."""
    defaults = TrainConfig()
    warm = replace(config, epochs=config.head_warmup_epochs, fine_tune=False, augment=False,
                   optimizer=defaults.optimizer, learning_rate=defaults.learning_rate,
                   schedule="cosine", patience=None)
    fit = fit_head(classifier, _backbone_vectors(classifier, train_inputs), train_labels,
                   _backbone_vectors(classifier, val_inputs), val_labels, warm)
    log.info("head warm-up: %d epochs, kept epoch %d, validation accuracy %.3f",
             warm.epochs, fit.best_epoch, evaluate_logits(fit.val_logits, val_labels).accuracy)


def _require_images(train: int, val: int, data: _Data) -> None:
    if not train or not val:
        raise MobilevecError(f"no decodable {'training' if not train else 'validation'} "
                             f"images left after skipping unreadable files "
                             f"({data.val_source})")


_BEST = "best/"


def trained_variables(backbone: MobileNet, fine_tune: bool) -> dict[str, np.ndarray]:
    """A snapshot (copies, not views of the live tensors) of the TF-named variables
    training changes: all of them (fine-tune) or the head's (frozen)."""
    if fine_tune:
        return {k: v.copy() for k, v in to_tf_variables(backbone).items()}
    root = f"{backbone.config.spec.root_scope}/{LOGITS_SCOPE}"
    head = backbone.classifier
    return {f"{root}/weights": torch_to_tf(head.weight.detach().cpu().numpy(), "classifier").copy(),
            f"{root}/biases": head.bias.detach().cpu().numpy().copy()}


def _prefixed(variables: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {prefix + k: v for k, v in variables.items()}


def _load_partial(backbone: MobileNet, variables: dict[str, np.ndarray]) -> None:
    """Overwrite some of ``backbone``'s variables (TF names) in place."""
    full = to_tf_variables(backbone)
    full.update(variables)
    load_tf_variables(backbone, full)


def _resume_point(run: RunFolder, backbone: MobileNet, optimizer: torch.optim.Optimizer
                  ) -> tuple[list[dict], dict, dict[str, np.ndarray]]:
    """Restore the last checkpoint into ``backbone`` and ``optimizer`` (and the torch RNG):
    ``(history so far, early-stopping state, best variables)``."""
    tensors, meta = run.read_checkpoint()
    variables = RunFolder.model_variables(tensors)
    _load_partial(backbone, {k: v for k, v in variables.items() if not k.startswith(_BEST)})
    restore_optimizer(optimizer, tensors, meta["optimizer"])
    RunFolder.restore_rng(tensors)
    best_variables = {k[len(_BEST):]: v for k, v in variables.items() if k.startswith(_BEST)}
    log.info("resuming %s after epoch %d", run.path, meta["epoch"] + 1)
    return run.metrics()[:meta["epoch"] + 1], meta["best"], best_variables


def _batch_norm_mode(classifier: Classifier, config: TrainConfig) -> str:
    if not config.fine_tune or classifier.batch_norm_frozen:
        return "inference mode (moving statistics fixed)"
    momentum = (config.bn_momentum if config.bn_momentum is not None
                else classifier.config.batch_norm_momentum)
    return f"batch statistics; moving averages with TF momentum {momentum}"


def _run_spec(classifier: Classifier, data: _Data, config: TrainConfig, size: tuple[int, int],
              data_dir: str | Path, val_dir: str | Path | None,
              weights_source: str | None) -> dict:
    """What ``run.json`` records (before the results)."""
    backbone = classifier.backbone
    return {
        "model": backbone.config.name, "num_features": backbone.num_features,
        "class_names": data.train.class_names,
        "preprocessing": {"size": list(size), "crop": "none", "rule": "mobilevec.data.images "
                          "(TF decode + bilinear resize), RGB float32 in [0, 1]"},
        "head": {"dropout": config.dropout, "normalize_features": config.normalize_features,
                 "flip_average": config.flip_average},
        "mode": "fine-tune" if config.fine_tune else "frozen",
        "batch_norm": _batch_norm_mode(classifier, config),
        "config": config.to_dict(), "weights_source": weights_source,
        "weights_sha256": None if weights_source is None else sha256_tree(weights_source),
        "data": {"train_dir": str(data_dir), "val_dir": None if val_dir is None else str(val_dir),
                 "validation": data.val_source, "train_counts": data.train.counts(),
                 "val_counts": data.val.counts(),
                 "train_files": _relative(data.train.paths, Path(data_dir)),
                 "val_files": _relative(data.val.paths, Path(val_dir or data_dir))},
        "status": "training",
    }


@dataclass
class _Fit:
    history: list[dict]
    best: dict  # {"epoch": 0-based, "val_loss", "since": epochs without improvement}
    best_variables: dict[str, np.ndarray]
    stopped_early: bool


def _fit(classifier: Classifier, optimizer: torch.optim.Optimizer, inputs: _Inputs,
         config: TrainConfig, *, run: RunFolder | None, history: list[dict], best: dict,
         best_variables: dict[str, np.ndarray],
         on_epoch: Callable[[dict], bool | None] | None = None) -> _Fit:
    """The epochs after ``history`` up to ``config.epochs``: schedule, validation, the
    lowest-validation-loss weights, early stopping, and (with a ``run``) a checkpoint and
    the metrics log after every epoch. Epoch ``e`` shuffles and augments with
    ``default_rng([seed, e])``, so a resumed run repeats what an uninterrupted one does."""
    backbone = classifier.backbone
    stopped_early = False
    for epoch in range(history[-1]["epoch"] if history else 0, config.epochs):
        t0 = time.perf_counter()
        lr = learning_rate_at(config, epoch)
        _set_learning_rate(optimizer, lr)
        stats = inputs.epoch(np.random.default_rng([config.seed, epoch]))
        val = evaluate_logits(inputs.validate(), inputs.val_labels)
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": stats.loss,
               "train_accuracy": stats.accuracy, "val_loss": val.loss,
               "val_accuracy": val.accuracy, "seconds": time.perf_counter() - t0}
        history.append(row)
        current = trained_variables(backbone, config.fine_tune)
        if val.loss < best["val_loss"]:
            best = {"epoch": epoch, "val_loss": val.loss, "since": 0}
            best_variables = current
        else:
            best = {**best, "since": best["since"] + 1}
        if run is not None:
            run.write_checkpoint({**current, **_prefixed(best_variables, _BEST)}, optimizer,
                                 {"epoch": epoch, "best": best})
            run.write_metrics(history)
        log.info("epoch %d/%d: %s", epoch + 1, config.epochs, row)
        stop = bool(on_epoch and on_epoch(row))
        if config.patience is not None and best["since"] >= config.patience:
            stopped_early = True
            log.info("early stop after epoch %d: no lower validation loss for %d epochs",
                     epoch + 1, config.patience)
            break
        if stop:
            break
    return _Fit(history, best, best_variables, stopped_early)


@dataclass
class HeadFit:
    """:func:`fit_head`'s result: per-epoch ``history``, the kept (1-based) ``best_epoch``
    and the kept head's validation logits."""

    history: list[dict]
    best_epoch: int
    val_logits: torch.Tensor


def fit_head(classifier: Classifier, train_vectors: torch.Tensor, train_labels: torch.Tensor,
             val_vectors: torch.Tensor, val_labels: torch.Tensor,
             config: TrainConfig | None = None) -> HeadFit:
    """Train ``classifier``'s head on feature vectors already computed (e.g. by
    :func:`mobilevec.embedding.batching.embed_files` with the frozen backbone), without a run
    folder.
    The head keeps the weights of the epoch with the lowest validation loss."""
    config = config or TrainConfig()
    config.check()
    if config.fine_tune:
        raise ValueError("fit_head trains the head only; fine-tuning needs images (train())")
    optimizer = build_optimizer(classifier, config)

    def epoch(rng: np.random.Generator) -> EpochStats:
        with _one_thread():
            return head_epoch(classifier, optimizer, train_vectors, train_labels, config, rng)

    inputs = _Inputs(epoch, lambda: head_logits(classifier, val_vectors), val_labels, [], 0.0)
    fit = _fit(classifier, optimizer, inputs, config, run=None, history=[],
               best={"epoch": -1, "val_loss": math.inf, "since": 0},
               best_variables=trained_variables(classifier.backbone, False))
    _load_partial(classifier.backbone, fit.best_variables)
    return HeadFit(fit.history, fit.best["epoch"] + 1, inputs.validate())


def train(backbone: MobileNet | None, data_dir: str | Path, out: str | Path,
          config: TrainConfig | None = None, *, val_dir: str | Path | None = None,
          resume: bool = False, overwrite: bool = False, weights_source: str | None = None,
          workers: int | None = None, backend: str | None = "auto",
          on_embed: Callable[[int, int, str], None] | None = None,
          on_epoch: Callable[[dict], bool | None] | None = None) -> TrainResult:
    """Train a classifier on ``data_dir`` (one folder per class) into the run folder ``out``.

    ``backbone``: the pretrained feature-vector model (its BatchNorm momentum and
    ``trainable`` flag are set here from ``config``). With ``resume=True`` the run in
    ``out`` continues from its last checkpoint with the configuration and data recorded
    there (``config.epochs``, when given, may extend it); ``backbone`` is then ignored.
    Unreadable images are logged, skipped and listed in ``skipped`` and in ``run.json``.
    ``backend`` computes the frozen features (default: the fastest exact engine; "torch":
    the torch module). ``on_embed(done, total, what)`` reports embedding progress,
    ``on_epoch(row)`` each finished epoch (a true return value stops the run after that
    epoch's checkpoint, as an interruption would).
    """
    run = RunFolder(Path(out))
    progress = _Progress(on_embed, on_epoch)
    start = time.perf_counter()
    previous = run.spec() if resume else None
    if previous is not None:
        config, backbone = _resumed(run, previous, config)
        data_dir, val_dir = previous["data"]["train_dir"], previous["data"].get("val_dir")
        weights_source = previous.get("weights_source")
    config = config or TrainConfig()
    if backbone is None:
        raise MobilevecError("train() needs a backbone model unless it resumes a run")
    config.check()
    data = prepare_data(data_dir, config, val_dir)
    if previous is not None and data.train.class_names != previous["class_names"]:
        raise RunError(f"{data_dir}: classes {data.train.class_names} differ from the run's "
                       f"{previous['class_names']}")
    size = (config.image_size or backbone.config.input.size[0],) * 2
    classifier = _classifier(backbone, config, len(data.train.class_names))
    optimizer = build_optimizer(classifier, config)
    spec = _run_spec(classifier, data, config, size, data_dir, val_dir, weights_source)
    state = _start(run, classifier, optimizer, spec, previous, overwrite, config.fine_tune)
    inputs = _prepare_inputs(classifier, optimizer, data, config, size, run, previous is not None,
                             workers, progress, backend)
    if previous is None:
        spec["skipped_files"] = [[str(p), why] for p, why in inputs.skipped]
        run.write_spec(spec)

    train_start = time.perf_counter()
    fit = _fit(classifier, optimizer, inputs, config, run=run, history=state.history,
               best=state.best, best_variables=state.best_variables, on_epoch=progress.epoch)
    seconds = {"features": inputs.seconds, "training": time.perf_counter() - train_start}
    return _finish(run, classifier, inputs, fit, config, spec, seconds, start)


@dataclass
class _State:
    """Where training (re)starts: the epochs so far, early-stopping state, best weights."""

    history: list[dict]
    best: dict
    best_variables: dict[str, np.ndarray]


def _resumed(run: RunFolder, previous: dict, config: TrainConfig | None
             ) -> tuple[TrainConfig, MobileNet]:
    """The recorded configuration (``config.epochs``, when given, extends it) and the
    backbone as the run started (its head is overwritten by the checkpoint later)."""
    from ..models.factory import create_model

    recorded = TrainConfig.from_dict(previous["config"])
    if config is not None:
        recorded.epochs = config.epochs
    return recorded, create_model(previous["model"], weights=run.model_path())


def _classifier(backbone: MobileNet, config: TrainConfig, num_classes: int) -> Classifier:
    """The backbone set up as ``config`` says (BN momentum, trainable, frozen BatchNorm)
    under a fresh head seeded with ``config.seed``."""
    backbone.set_batch_norm_momentum(config.bn_momentum if config.bn_momentum is not None
                                     else backbone.config.batch_norm_momentum)
    backbone.trainable = config.fine_tune
    freeze = False
    if config.fine_tune:
        folded = batch_norm_is_folded(backbone)
        if config.freeze_batch_norm is None:  # decided once, recorded for --resume
            config.freeze_batch_norm = folded
        freeze = config.freeze_batch_norm
        if folded and freeze:
            log.warning("%s: the weights carry BatchNorm folded into the convolutions (e.g. "
                        "a TFLite file); fine-tuning keeps BatchNorm in inference mode",
                        backbone.config.name)
    torch.manual_seed(config.seed)  # the head's initialisation
    return Classifier(backbone, num_classes, config.dropout, config.normalize_features,
                      config.flip_average, freeze_batch_norm=freeze)


def _start(run: RunFolder, classifier: Classifier, optimizer: torch.optim.Optimizer,
           spec: dict, previous: dict | None, overwrite: bool, fine_tune: bool) -> _State:
    """Create the run folder, or restore the last checkpoint of the run being resumed."""
    backbone = classifier.backbone
    if previous is not None:
        history, best, best_variables = _resume_point(run, backbone, optimizer)
        spec["skipped_files"] = previous.get("skipped_files", [])
        run.write_spec(spec)
        return _State(history, best, best_variables)
    run.create(spec, overwrite=overwrite)
    # the frozen backbone as it starts (what a resumed frozen run rebuilds from)
    run.write_model(to_tf_variables(backbone), backbone.config.name, classifier.num_classes)
    return _State([], {"epoch": -1, "val_loss": math.inf, "since": 0},
                  trained_variables(backbone, fine_tune))


def _finish(run: RunFolder, classifier: Classifier, inputs: _Inputs, fit: _Fit,
            config: TrainConfig, spec: dict, seconds: dict, start: float) -> TrainResult:
    """Keep the lowest-validation-loss weights, record the outcome in ``run.json``."""
    backbone = classifier.backbone
    _load_partial(backbone, fit.best_variables)
    run.write_model(to_tf_variables(backbone), backbone.config.name, classifier.num_classes)
    val_logits = inputs.validate()
    finished = fit.stopped_early or len(fit.history) >= config.epochs
    spec.update(status="finished" if finished else "interrupted",
                best_epoch=fit.best["epoch"] + 1, epochs_done=len(fit.history),
                stopped_early=fit.stopped_early,
                best_val_accuracy=evaluate_logits(val_logits, inputs.val_labels).accuracy,
                seconds={**seconds, "total": time.perf_counter() - start})
    run.write_spec(spec)
    return TrainResult(run, classifier, fit.history, fit.best["epoch"] + 1,
                       inputs.val_labels.numpy(), val_logits.numpy(), spec["class_names"],
                       [(str(p), why) for p, why in spec["skipped_files"]], fit.stopped_early,
                       seconds["features"], seconds["training"])
