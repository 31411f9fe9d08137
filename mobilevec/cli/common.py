"""The model options every model-building command shares: ``--model``, ``--weights``, ``--handle``.

A command adds them with :func:`add_model_options` and builds its model with
:func:`model_from_args`, so that every command accepts the same three ways of naming weights:
a registered name with a local artifact (``--model NAME --weights FILE|DIR``), a hub-style
handle or URL (``--handle H``, downloaded once into the cache; ``--model`` is then optional),
or a name alone (random weights, for tests and training from scratch).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn


def add_model_options(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    """Add ``--model``, ``--weights`` and ``--handle`` to ``parser``.

    ``required``: whether some model must be named (``--model`` or ``--handle``); commands
    that can take the model from an earlier run's metadata pass False.
    """
    parser.add_argument("--model", help="model name, see `mobilevec list`"
                        + ("" if required else " (default: the one recorded with the input)"))
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--weights", help="weights FILE or DIR, any supported format")
    group.add_argument("--handle", help="TF Hub / Kaggle handle or URL of an artifact "
                                        "(downloaded once into the cache, then offline)")
    parser.set_defaults(_model_required=required)


def model_from_args(args: argparse.Namespace, *, trainable: bool = False,
                    batch_norm_momentum: float | None = None) -> nn.Module:
    """The model that ``args.model`` / ``args.weights`` / ``args.handle`` name.

    Raises :class:`~mobilevec.errors.MobilevecError` (reported by the CLI) when neither a
    model nor a handle is given, or the weights do not fit.
    """
    from ..errors import MobilevecError

    handle = getattr(args, "handle", None)
    if handle:
        from ..hub.loader import load

        arguments = ({"batch_norm_momentum": batch_norm_momentum}
                     if batch_norm_momentum is not None else None)
        return load(handle, trainable=trainable, arguments=arguments, model=args.model,
                    progress=True)
    if not args.model:
        raise MobilevecError("name a model: --model NAME [--weights FILE|DIR], or --handle H")
    from ..api import create

    return create(args.model, weights=args.weights, trainable=trainable,
                  batch_norm_momentum=batch_norm_momentum)


def weights_source(args: argparse.Namespace) -> str | None:
    """The artifact file or folder behind ``args`` (the cached original for a handle), or
    None for random weights: what outputs record as the source of their vectors."""
    if getattr(args, "handle", None):
        from ..hub.cache import get_entry
        from ..hub.loader import resolve

        resolved = resolve(args.handle)
        entry = get_entry(resolved.url) if resolved.url else None
        return str(entry.file if entry is not None else resolved.path)
    return args.weights
