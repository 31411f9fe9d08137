"""The ``mobilevec`` command line: thin argument parsing over library calls."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path

from ..errors import MobilevecError
from .common import EXIT_ERROR, EXIT_OK, add_model_options, progress_bar

# Modules of this package that add their own sub-commands: each defines
# ``add_commands(subparsers)`` and keeps its heavy imports inside the command functions.
_COMMAND_MODULES: list[str] = ["embed", "export", "cache", "train"]


def default_shared_dir(env: str, sub: str) -> Path:
    return Path(os.environ.get(env, Path("..") / "shared" / sub))


def cmd_list(args: argparse.Namespace) -> int:
    from ..models.registry import MODELS

    print(f"{'model':42} {'arch':34} {'mult':>5} {'size':>5} {'features':>8}")
    for name in sorted(MODELS):
        c = MODELS[name]
        print(f"{name:42} {c.arch:34} {c.multiplier:5.2f} {c.image_size:5d} {c.num_features:8d}")
    return EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    from ..models.names import variable_names
    from .common import model_from_args

    model = model_from_args(args)
    c = model.config
    params = sum(p.numel() for p in model.parameters())
    print(f"model      {c.name}  ({c.spec.root_scope}, multiplier {c.multiplier})")
    print(f"input      {c.input.describe()}")
    print(f"output     {model.num_features}-d feature vector (near-duplicates at cosine >= "
          f"{c.dedup_threshold:g} by default)")
    print(f"params     {params:,}" + (f" (+ {model.classifier.out_features}-way logits)"
                                     if model.classifier is not None else ""))
    if args.variables:
        for v in variable_names(model):
            print(f"  {v.tf_name:70} {v.torch_key}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.weights_dir, args.data_dir, progress=progress_bar)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mobilevec",
        description="TF Hub MobileNet V2/V3 feature vectors, faithful to TF-Slim, in PyTorch.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log library details")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list the known models")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("info", help="describe a model (and check that weights load)")
    add_model_options(p)
    p.add_argument("--variables", action="store_true", help="print the TF-Slim variable names")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("demo", help="embed the example photos with both seed models, show "
                                    "nearest neighbours and kNN accuracy")
    p.add_argument("--weights-dir", type=Path,
                   default=default_shared_dir("MOBILEVEC_WEIGHTS_DIR", "weights"),
                   help="folder with the real weights (default: $MOBILEVEC_WEIGHTS_DIR or "
                        "../shared/weights)")
    p.add_argument("--data-dir", type=Path,
                   default=default_shared_dir("MOBILEVEC_DATA_DIR", "data"),
                   help="folder with the example photos (default: $MOBILEVEC_DATA_DIR or "
                        "../shared/data)")
    p.set_defaults(func=cmd_demo)

    for module in _COMMAND_MODULES:
        importlib.import_module(f"{__package__}.{module}").add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_model_required", False) and not (args.model or args.handle):
        parser.error(f"{args.command}: name a model: --model NAME [--weights FILE|DIR], "
                     "or --handle H")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except MobilevecError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR

