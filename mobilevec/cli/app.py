"""The ``mobilevec`` command line: thin argument parsing over library calls.

What every command shares, set up here once: ``--version``; ``-v`` before or after the
command; usage errors that suggest the option, command or choice meant ("did you mean");
``--device`` checked before any work (one line, not a traceback, when torch has no such
device); a closed stdout (``mobilevec list | head``) ends the command quietly, exit 0.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import logging
import os
import re
import sys
from pathlib import Path

from .._version import __version__
from ..errors import MobilevecError
from .common import (
    EXIT_ERROR,
    EXIT_OK,
    add_json_option,
    add_model_options,
    print_json,
    progress_bar,
)

# Modules of this package that add their own sub-commands: each defines
# ``add_commands(subparsers)`` and keeps its heavy imports inside the command functions.
_COMMAND_MODULES: list[str] = ["embed", "dedup", "export", "cache", "train", "serve"]


class Parser(argparse.ArgumentParser):
    """argparse, with "did you mean" on a misspelt command or choice."""

    def error(self, message: str):
        m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if m:
            choices = re.findall(r"'([^']*)'", m[2])
            close = difflib.get_close_matches(m[1], choices, n=1, cutoff=0.5)
            if close:
                message += f"; did you mean '{close[0]}'?"
        super().error(message)


def default_shared_dir(env: str, sub: str) -> Path:
    return Path(os.environ.get(env, Path("..") / "shared" / sub))


def cmd_list(args: argparse.Namespace) -> int:
    from ..models.registry import MODELS, list_models

    if args.json:
        print_json([{"model": name, "arch": MODELS[name].arch,
                     "multiplier": MODELS[name].multiplier,
                     "image_size": MODELS[name].image_size,
                     "num_features": MODELS[name].num_features} for name in list_models()])
        return EXIT_OK
    print(f"{'model':42} {'arch':34} {'mult':>5} {'size':>5} {'features':>8}")
    for name in list_models():
        c = MODELS[name]
        print(f"{name:42} {c.arch:34} {c.multiplier:5.2f} {c.image_size:5d} {c.num_features:8d}")
    return EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    from ..models.names import variable_names
    from .common import model_from_args, weights_source

    model = model_from_args(args)
    c = model.config
    params = sum(p.numel() for p in model.parameters())
    artifact = weights_source(args)
    loaded = None
    if artifact is not None:
        readable = artifact
        if args.handle:  # the artifact inside an archive, not the archive itself
            from ..hub.loader import resolve

            readable = str(resolve(args.handle).path)
        loaded = _loaded_weights(readable, artifact, model)
    variables = [(v.tf_name, v.torch_key) for v in variable_names(model)] \
        if args.variables else None
    if args.json:
        print_json({"model": c.name, "root_scope": c.spec.root_scope,
                    "multiplier": c.multiplier, "input": c.input.describe(),
                    "num_features": model.num_features, "dedup_threshold": c.dedup.threshold,
                    "dedup_rule": {"score": c.dedup.score, "threshold": c.dedup.threshold},
                    "params": params,
                    "classes": None if model.classifier is None
                    else model.classifier.out_features,
                    "weights": loaded,
                    "variables": None if variables is None
                    else [{"tf_name": t, "torch_key": k} for t, k in variables]})
        return EXIT_OK
    print(f"model      {c.name}  ({c.spec.root_scope}, multiplier {c.multiplier})")
    print(f"input      {c.input.describe()}")
    print(f"output     {model.num_features}-d feature vector (near-duplicates by default: "
          f"{c.dedup.describe()})")
    print(f"params     {params:,}" + (f" (+ {model.classifier.out_features}-way logits)"
                                     if model.classifier is not None else ""))
    if loaded is None:
        print("weights    none: random initialisation (give --weights FILE|DIR or --handle H)")
    else:
        print(f"weights    {loaded['path']}" + (f" (in {loaded['artifact']})"
                                                  if loaded["artifact"] != loaded["path"]
                                                  else ""))
        print(f"  format     {loaded['format']}")
        print(f"  variables  {loaded['variables']} read, {loaded['used']} used by the model"
              + (f"; {loaded['unused']} not used" if loaded["unused"] else ""))
        print("  batchnorm  " + ("folded into the convolutions (loaded as identity BN)"
                                  if loaded["batch_norm_folded"] else "separate (moving "
                                  "mean and variance)"))
        print("  classifier " + (f"{loaded['classes']} classes"
                                  + (" (index 0: background)" if loaded["classes"] == 1001
                                     else "") if loaded["classes"] else "none"))
        print(f"  sha256     {loaded['sha256']} (of {Path(loaded['artifact']).name}: what "
              "vector stores and exports record)")
    for tf_name, torch_key in variables or ():
        print(f"  {tf_name:70} {torch_key}")
    return EXIT_OK


def _loaded_weights(readable: str, artifact: str, model) -> dict:
    """What ``info`` says about the weights behind ``model``: read from ``readable``, the
    identity (sha256) of ``artifact`` (what stores and exports record)."""
    from .._io import sha256_tree
    from ..formats.detect import read_weights
    from ..models.names import variable_names
    from ..training.classifier import batch_norm_is_folded

    weights = read_weights(readable)
    used = {v.tf_name for v in variable_names(model)}
    return {"path": str(readable), "artifact": str(artifact), "format": weights.format,
            "variables": len(weights.variables),
            "used": len(used & set(weights.variables)),
            "unused": len(set(weights.variables) - used),
            "batch_norm_folded": batch_norm_is_folded(model),
            "classes": None if model.classifier is None else model.classifier.out_features,
            "sha256": sha256_tree(artifact)}


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import demo_results, demo_status, print_demo

    result = demo_results(args.weights_dir, args.data_dir, progress=progress_bar)
    if args.json:
        print_json(result)
    else:
        print_demo(result)
    return demo_status(result)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="mobilevec",
        description="TF Hub MobileNet V2/V3 feature vectors, faithful to TF-Slim, in PyTorch.")
    parser.add_argument("--version", action="version", version=f"mobilevec {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log library details "
                                                                     "(also after the command)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="list the known models")
    add_json_option(p)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("info", help="describe a model (and what its weights hold)")
    add_model_options(p)
    p.add_argument("--variables", action="store_true", help="print the TF-Slim variable names")
    add_json_option(p)
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
    add_json_option(p)
    p.set_defaults(func=cmd_demo)

    for module in _COMMAND_MODULES:
        importlib.import_module(f"{__package__}.{module}").add_commands(sub)
    for command in _subparsers(parser):
        # After the command too; SUPPRESS keeps a -v given before it.
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                             help="log library details")
    return parser


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every sub-command's parser, nested ones (``cache list``) included."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                found.append(child)
                found += _subparsers(child)
    return found


def _command_parser(parser: argparse.ArgumentParser,
                    args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the sub-command that ``args`` ran (the innermost one)."""
    current = parser
    while True:
        action = next((a for a in current._actions
                       if isinstance(a, argparse._SubParsersAction)), None)
        chosen = getattr(args, action.dest, None) if action is not None else None
        if chosen is None or chosen not in action.choices:
            return current
        current = action.choices[chosen]


def _unknown_arguments(parser: argparse.ArgumentParser, extras: list[str]) -> str:
    options = [o for a in parser._actions for o in a.option_strings
               if a.help is not argparse.SUPPRESS]
    words = []
    for extra in extras:
        flag = extra.split("=", 1)[0]
        close = difflib.get_close_matches(flag, options, n=1, cutoff=0.6) \
            if flag.startswith("-") else []
        words.append(f"{extra} (did you mean {close[0]}?)" if close else extra)
    return "unrecognized arguments: " + " ".join(words)


def _check_device(args: argparse.Namespace) -> None:
    device = getattr(args, "device", None)
    if device and device != "cpu":
        from ..models.factory import torch_device

        torch_device(device)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    command = _command_parser(parser, args)
    if extras:
        command.error(_unknown_arguments(command, extras))
    if getattr(args, "_model_required", False) and not (args.model or args.handle):
        command.error("name a model: --model NAME [--weights FILE|DIR], or --handle H")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        _check_device(args)
        return args.func(args)
    except MobilevecError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        # The reader of stdout went away (`| head`): what it wanted was printed. Point
        # stdout at /dev/null so that the interpreter's final flush raises nothing.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
