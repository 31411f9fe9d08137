"""``mobilevec train``, ``predict`` and ``evaluate``: transfer learning from the command line.

Exit status of all three: 0 everything went well; 3 some image files could not be read
(each is reported and was skipped; the rest was done); 1 a fatal error (bad data folder,
weights or run folder); 2 a usage error; 130 interrupted by Ctrl-C (``train``: every
finished epoch is checkpointed, continue with ``--resume``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import (
    EXIT_ERROR,
    EXIT_FAILED_FILES,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    add_decode_options,
    add_image_size_option,
    add_input_options,
    add_json_option,
    add_model_options,
    expand_args,
    float_in,
    non_negative_int,
    positive_int,
    print_failures,
    print_json,
    progress_bar,
)


def _config_from_args(args: argparse.Namespace):
    from ..training.train import TrainConfig

    defaults = TrainConfig()
    return TrainConfig(
        epochs=args.epochs, fine_tune=args.fine_tune, batch_size=args.batch_size,
        optimizer=args.optimizer,
        learning_rate=args.lr if args.lr is not None else (
            defaults.learning_rate if args.optimizer == "sgd" else 1e-3),
        momentum=args.momentum, weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing, schedule=args.schedule,
        step_epochs=args.step_epochs, step_gamma=args.step_gamma, dropout=args.dropout,
        augment=args.augment, crop_scale=(args.crop_scale_min, 1.0),
        bn_momentum=args.bn_momentum, freeze_batch_norm=args.freeze_batch_norm,
        backbone_lr_scale=args.backbone_lr_scale, head_warmup_epochs=args.head_warmup_epochs,
        clip_grad_norm=args.clip_grad_norm,
        patience=args.patience, normalize_features=args.normalize_features,
        flip_average=args.flip_average, seed=args.seed, val_fraction=args.val_fraction,
        image_size=args.size)


EPOCH_LEGEND = ("per epoch: the head's learning rate; mean cross-entropy loss and accuracy "
                "on the training images (as trained, with dropout and label smoothing) and "
                "on the validation images; seconds")


def _print_epoch(quiet: bool):
    shown = False

    def show(row: dict) -> None:
        nonlocal shown
        if quiet:
            return
        if not shown:
            print(EPOCH_LEGEND, flush=True)
            shown = True
        print(f"epoch {row['epoch']:3d}  lr {row['lr']:.2e}  train loss {row['train_loss']:.4f} "
              f"acc {row['train_accuracy']:.3f}  |  val loss {row['val_loss']:.4f} "
              f"acc {row['val_accuracy']:.3f}  ({row['seconds']:.1f} s)", flush=True)

    return show


def cmd_train(args: argparse.Namespace) -> int:
    from ..training.reports import format_table, report_dict, write_report
    from ..training.train import train
    from .common import model_from_args, weights_source

    config = _config_from_args(args)
    try:
        config.check()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    backbone = None
    if not args.resume:
        if args.data_dir is None:
            print("error: give DATA_DIR (one sub-folder of images per class)", file=sys.stderr)
            return EXIT_USAGE
        if not (args.model or args.handle):
            print("error: train: name a model: --model NAME [--weights FILE|DIR], or --handle H "
                  "(or --resume an earlier run)", file=sys.stderr)
            return EXIT_USAGE
        backbone = model_from_args(args, trainable=args.fine_tune,
                                   batch_norm_momentum=args.bn_momentum)
        if weights_source(args) is None:
            print("warning: no --weights/--handle: training from random initialisation",
                  file=sys.stderr)
    bars: dict[str, object] = {}

    def on_embed(done: int, total: int, what: str) -> None:
        if args.quiet:
            return
        if what not in bars:
            bars[what] = progress_bar(total, f"features ({what})")
        bar, update = bars[what]
        update(done, total)
        if done >= total:
            bar.close()

    try:
        result = train(backbone, args.data_dir, args.output, config if not args.resume or
                       args.epochs_given else None, val_dir=args.val, resume=args.resume,
                       overwrite=args.overwrite,
                       weights_source=None if args.resume else weights_source(args),
                       workers=args.workers, backend=args.backend, on_embed=on_embed,
                       on_epoch=_print_epoch(args.quiet or args.json))
    except KeyboardInterrupt:
        print(f"interrupted: finished epochs are checkpointed in {args.output}; continue with "
              f"`mobilevec train --resume -o {args.output}`", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        for bar, _ in bars.values():
            bar.close()
    print_failures([(str(p), why) for p, why in result.skipped])
    matrix, reports = write_report(result.run.path, result.val_labels, result.val_logits,
                                   result.class_names, result.history)
    figures = [name for name in ("confusion_matrix.png", "curves.png")
               if (result.run.path / name).is_file()]
    status = EXIT_FAILED_FILES if result.skipped else EXIT_OK
    if args.json:
        print_json({"run": str(result.run.path), "best_epoch": result.best_epoch,
                    "stopped_early": result.stopped_early, "epochs": result.history,
                    "validation": report_dict(matrix, result.class_names),
                    "figures": figures, "seconds_features": result.seconds_features,
                    "seconds_training": result.seconds_training,
                    "skipped": [{"path": str(p), "reason": why} for p, why in result.skipped]})
        return status
    print(f"validation images ({len(result.val_labels)}), classified by the kept epoch "
          f"{result.best_epoch}: per class, precision (of the images predicted as the class, "
          "the share that are), recall (of the class's images, the share found), F1 and the "
          "number of images; accuracy over all")
    print(format_table(reports, matrix))
    how = "early stop" if result.stopped_early else f"{len(result.history)} epochs"
    print(f"done ({how}): kept epoch {result.best_epoch} (lowest validation loss); run folder "
          f"{result.run.path}: the classifier, run.json, metrics.csv, evaluation.json, "
          f"per_class.csv" + (f", {' and '.join(figures)} (confusion matrix; loss and "
                              "accuracy per epoch)" if figures else "")
          + f" (features {result.seconds_features:.1f} s, training "
          f"{result.seconds_training:.1f} s)")
    return status


def cmd_predict(args: argparse.Namespace) -> int:
    from ..training.classify import classify_files, load_classifier, run_preprocessing

    classifier, spec = load_classifier(args.run, args.backend)
    classifier.to(args.device)
    sources = expand_args(args)
    if not sources.paths and not sources.missing:
        print("error: no input images (give files, folders, globs or @list.txt)",
              file=sys.stderr)
        return EXIT_ERROR
    bar, update = progress_bar(len(sources.paths), "predict", args.quiet or args.json)
    try:
        predictions = classify_files(classifier, sources.paths, run_preprocessing(spec),
                                     batch_size=args.batch_size, workers=args.workers,
                                     threads=args.threads,
                                     progress=update and (lambda n: update(n, len(sources.paths))))
    finally:
        if bar is not None:
            bar.close()
    names = spec["class_names"]
    order, probabilities = predictions.top_k(args.k)
    failures = [(str(p), why) for p, why in sources.missing + predictions.errors]
    if args.json:
        rows = [{"path": str(path), "top": [{"class": names[i], "probability": float(p)}
                                            for i, p in zip(idx, prob, strict=True)]}
                for path, idx, prob in zip(predictions.paths, order, probabilities, strict=True)]
        json.dump({"model": spec["model"], "predictions": rows,
                   "errors": [{"path": p, "reason": why} for p, why in failures]},
                  sys.stdout, indent=2)
        print()
    else:
        for path, idx, prob in zip(predictions.paths, order, probabilities, strict=True):
            print(path)
            for rank, (i, p) in enumerate(zip(idx, prob, strict=True), 1):
                print(f"  {rank}. {names[i]:20} {p:.4f}")
    print_failures(failures)
    return EXIT_FAILED_FILES if failures else EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..training.classify import evaluate_folder, load_classifier, seen_in_training
    from ..training.reports import format_table, report_dict, write_report

    classifier, spec = load_classifier(args.run, args.backend)
    evaluation = evaluate_folder(classifier.to(args.device), spec, args.data_dir,
                                 batch_size=args.batch_size, workers=args.workers,
                                 threads=args.threads)
    predictions = evaluation.predictions
    failures = [(str(p), why) for p, why in predictions.errors]
    names = spec["class_names"]
    seen = seen_in_training(spec, predictions.paths)
    for split, paths in seen.items():
        if paths:
            print(f"warning: {len(paths)} of the {len(predictions.paths)} images were "
                  f"{'trained on' if split == 'train' else 'used to pick the epoch'} in "
                  f"{args.run} ({split} files in run.json, e.g. {paths[0]}): the figures "
                  "overstate accuracy on new images", file=sys.stderr)
    report_dir = Path(args.report_dir) if args.report_dir else None
    if report_dir is not None:
        matrix, reports = write_report(report_dir, evaluation.labels, predictions.probabilities,
                                       names, title=f"evaluation ({Path(args.data_dir).name})")
    else:
        from ..training.reports import confusion_matrix, per_class

        matrix = confusion_matrix(evaluation.labels, predictions.probabilities.argmax(1)
                                  if len(predictions.paths) else [], len(names))
        reports = per_class(matrix, names)
    if args.json:
        json.dump({**report_dict(matrix, names),
                   "seen_in_training": {k: [str(p) for p in v] for k, v in seen.items()},
                   "errors": [{"path": p, "reason": why} for p, why in failures]},
                  sys.stdout, indent=2)
        print()
    else:
        print(format_table(reports, matrix))
        print("confusion matrix (rows: true class, columns: predicted):")
        for name, row in zip(names, matrix, strict=True):
            print(f"  {name:20} " + " ".join(f"{v:5d}" for v in row))
        if report_dir is not None:
            print(f"report written to {report_dir}")
    print_failures(failures)
    return EXIT_FAILED_FILES if failures else EXIT_OK


class _EpochsAction(argparse.Action):
    """``--epochs N``, remembering that it was given (``--resume`` may then extend a run)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.epochs_given = True


def _add_training_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--fine-tune", action="store_true",
                   help="train the backbone too (BatchNorm on batch statistics, moving "
                        "averages at --bn-momentum); default: frozen backbone, cached features")
    g.add_argument("--bn-momentum", type=float_in(0, 1, high_open=True), default=None,
                   help="BatchNorm moving-average decay in TF's convention (0.997 = torch "
                        "momentum 0.003; default: the model's, V2 0.997, V3 0.99)")
    g.add_argument("--freeze-batch-norm", action=argparse.BooleanOptionalAction, default=None,
                   help="fine-tune with BatchNorm in inference mode (default: only for weights "
                        "with BatchNorm folded into the convolutions, e.g. TFLite files)")
    g.add_argument("--epochs", type=positive_int, default=10, action=_EpochsAction,
                   help="epochs (default 10; with --resume: extend the run to this many)")
    g.add_argument("--batch-size", type=positive_int, default=32,
                   help="images per step (default 32)")
    g.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd",
                   help="SGD with momentum (default) or Adam")
    g.add_argument("--lr", type=float_in(0, 1e6, low_open=True), default=None,
                   help="learning rate of the head (default: 0.005 SGD, 0.001 Adam)")
    g.add_argument("--momentum", type=float_in(0, 1, high_open=True), default=0.9,
                   help="SGD momentum (default 0.9)")
    g.add_argument("--weight-decay", type=float_in(0, 1e6), default=1e-4,
                   help="L2 weight decay on the head's kernel (default 1e-4)")
    g.add_argument("--label-smoothing", type=float_in(0, 1, high_open=True), default=0.1,
                   help="default 0.1")
    g.add_argument("--schedule", choices=("cosine", "step", "constant"), default="cosine",
                   help="learning-rate schedule over the epochs (default cosine)")
    g.add_argument("--step-epochs", type=positive_int, default=30,
                   help="step schedule: epochs per step")
    g.add_argument("--step-gamma", type=float_in(0, 1e6, low_open=True), default=0.1,
                   help="step schedule: factor per step")
    g.add_argument("--dropout", type=float_in(0, 1, high_open=True), default=0.2,
                   help="dropout before the head (default 0.2)")
    g.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random resized crop + horizontal flip on the images (default: on "
                        "with --fine-tune, off otherwise; a frozen run with --augment "
                        "re-embeds the images every epoch)")
    g.add_argument("--crop-scale-min", type=float_in(0, 1, low_open=True), default=0.5,
                   help="smallest area fraction of the random resized crop (default 0.5)")
    g.add_argument("--backbone-lr-scale", type=float_in(0, 1e6), default=1.0,
                   help="fine-tune: the backbone's learning rate relative to the head's")
    g.add_argument("--head-warmup-epochs", type=non_negative_int, default=0,
                   help="fine-tune: first train the head alone this many epochs on cached "
                        "features (default 0)")
    g.add_argument("--clip-grad-norm", type=float_in(0, 1e12, low_open=True), default=None,
                   help="rescale each step's gradients to at most this L2 norm")
    g.add_argument("--patience", type=positive_int, default=None,
                   help="early stopping: stop after this many epochs without a lower "
                        "validation loss (default: never)")
    g.add_argument("--normalize-features", action="store_true",
                   help="L2-normalise the feature vector before the head")
    g.add_argument("--flip-average", action="store_true",
                   help="average the features of each image and its mirror image at inference")
    add_image_size_option(g, dest="size")


def add_commands(subparsers) -> None:
    """Register ``train``, ``predict`` and ``evaluate`` on the ``mobilevec`` parser."""
    p = subparsers.add_parser(
        "train", help="train a classifier head (frozen or fine-tuned) on class folders",
        description="Train feature vector + softmax head on DATA_DIR (one sub-folder of images "
                    "per class) into the run folder -o RUN: weights, class names, "
                    "preprocessing, per-epoch checkpoints and metrics, confusion matrix and "
                    "training curves. Exit 0: ok; 3: some images unreadable (reported, "
                    "skipped); 1: fatal error; 130: interrupted (resume with --resume).")
    p.add_argument("data_dir", nargs="?", metavar="DATA_DIR",
                   help="one sub-folder of images per class (not needed with --resume)")
    p.add_argument("-o", "--output", required=True, help="run folder to write")
    add_model_options(p, required=False, default="none: name one, unless --resume")
    p.add_argument("--val", metavar="DIR", help="validation class folders (default: a seeded "
                                                "stratified split of DATA_DIR)")
    p.add_argument("--val-fraction", type=float_in(0, 1, low_open=True, high_open=True),
                   default=0.2,
                   help="validation share of each class when splitting (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="split, initialisation and shuffling")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in -o from its last epoch checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in -o")
    p.add_argument("--workers", type=non_negative_int, default=None,
                   help="decode processes for the feature cache (default: one per core)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or epoch lines")
    add_json_option(p)
    p.add_argument("--backend", default="auto",
                   choices=("auto", "torch", "torch-fused", "onnxruntime", "openvino"),
                   help="what computes the frozen features (default auto: the fastest "
                        "installed engine whose vectors equal the torch module's); "
                        "fine-tuning always trains the torch module")
    _add_training_options(p)
    p.set_defaults(func=cmd_train, epochs_given=False)

    p = subparsers.add_parser(
        "predict", help="top-k classes of images with a trained run",
        description="Print the k most probable classes of each image. Exit 3 if an image "
                    "could not be read (reported, skipped).")
    p.add_argument("run", help="run folder written by `mobilevec train`")
    add_input_options(p, "IMAGE")
    p.add_argument("-k", type=positive_int, default=5, help="classes per image (default 5)")
    p.add_argument("--json", action="store_true", help="JSON on stdout, for machines")
    add_decode_options(p)
    p.set_defaults(func=cmd_predict)

    p = subparsers.add_parser(
        "evaluate", help="accuracy, per-class precision/recall and confusion matrix of a run",
        description="Classify every image of DATA_DIR (sub-folders named after the run's "
                    "classes) and report. Exit 3 if an image could not be read.")
    p.add_argument("run", help="run folder written by `mobilevec train`")
    p.add_argument("data_dir", metavar="DATA_DIR", help="class folders to evaluate on")
    p.add_argument("--json", action="store_true", help="JSON on stdout, for machines")
    p.add_argument("--report-dir", help="also write evaluation.json, per_class.csv and "
                                        "confusion_matrix.png into this folder")
    add_decode_options(p)
    p.set_defaults(func=cmd_evaluate)
