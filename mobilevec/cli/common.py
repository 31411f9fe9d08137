"""What the command groups share: exit codes, progress bars, failure lists, options.

Exit status of every command: :data:`EXIT_OK` everything went well; :data:`EXIT_FAILED_FILES`
some input files failed (each is reported, the rest was done); :data:`EXIT_ERROR` a fatal
error (bad weights, unusable output, model mismatch); :data:`EXIT_USAGE` a usage error;
:data:`EXIT_INTERRUPTED` interrupted by Ctrl-C (what was committed is kept);
:data:`EXIT_TERMINATED` stopped by SIGTERM (what ``timeout``, systemd, Docker and Slurm send),
as cleanly as by Ctrl-C (commands that install :func:`interrupt_on_signals`; 143 is also
what a shell reports for a process that SIGTERM killed).

Model options: a command adds ``--model``, ``--weights`` and ``--handle`` with
:func:`add_model_options` and builds its model with :func:`model_from_args`, so that every
command accepts the same three ways of naming weights: a registered name with a local
artifact (``--model NAME --weights FILE|DIR``), a hub-style handle or URL (``--handle H``,
downloaded once into the cache; ``--model`` is then optional), or a name alone (random
weights, for tests and training from scratch).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from ..data.sources import Sources

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_FAILED_FILES, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_TERMINATED = 143
SHOWN_FAILURES = 20


def printable(path: Any) -> str:
    """A path as printable text: bytes of a name that is not UTF-8 shown as ``\\xNN``
    (printing the raw name would fail on a UTF-8 terminal)."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


class Interruption:
    """Which signal stopped the command (None: none yet); see :func:`interrupt_on_signals`."""

    signal: int | None = None

    @property
    def exit_code(self) -> int:
        return EXIT_TERMINATED if self.signal == signal.SIGTERM else EXIT_INTERRUPTED

    @property
    def name(self) -> str:
        return "SIGTERM" if self.signal == signal.SIGTERM else "Ctrl-C"


@contextmanager
def interrupt_on_signals() -> Iterator[Interruption]:
    """While inside: SIGTERM, like Ctrl-C, raises KeyboardInterrupt in the main thread, so
    the command stops the same clean way; the yielded record says which signal it was.
    A signal this process was started ignoring (``nohup``) stays ignored."""
    caught = Interruption()
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return

    def handler(signum, frame):
        caught.signal = signum
        raise KeyboardInterrupt

    previous = {}
    for number, default in ((signal.SIGINT, signal.default_int_handler),
                            (signal.SIGTERM, signal.SIG_DFL)):
        if signal.getsignal(number) is default:
            previous[number] = signal.signal(number, handler)
    try:
        yield caught
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


def progress_bar(total: int, desc: str, quiet: bool = False
                 ) -> tuple[Any, Callable[..., None] | None]:
    """A tqdm bar (images/s) on stderr and its ``update(done, total=None)`` callback, or
    ``(None, None)`` when ``quiet``. Close the bar when done."""
    if quiet:
        return None, None
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="img", file=sys.stderr, dynamic_ncols=True,
               leave=False)

    def update(done: int, new_total: int | None = None) -> None:
        if new_total is not None and bar.total != new_total:
            bar.reset(total=new_total)
        bar.update(done - bar.n)

    return bar, update


class StageBars:
    """One tqdm bar per stage of a ``progress(stage, done, total)`` callback (e.g. int8
    export: decode, calibrate, fp32 blocks); a stage that starts again resets its bar."""

    def __init__(self, quiet: bool = False, unit: str = "it"):
        self.quiet, self.unit = quiet, unit
        self._bars: dict[str, Any] = {}

    def update(self, stage: str, done: int, total: int) -> None:
        if self.quiet:
            return
        from tqdm import tqdm

        bar = self._bars.get(stage)
        if bar is None:
            for other in self._bars.values():  # one stage at a time on the terminal
                other.close()
            bar = self._bars[stage] = tqdm(total=total, desc=stage, file=sys.stderr,
                                           dynamic_ncols=True, leave=False)
        if done < bar.n or bar.total != total:
            bar.reset(total=total)
        bar.update(done - bar.n)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()


def add_json_option(p: argparse.ArgumentParser) -> None:
    """``--json``: the command's results as one JSON document on stdout (messages and
    progress stay on stderr)."""
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout, "
                                                       "for machines")


def print_json(data: Any) -> None:
    """``data`` as indented JSON on stdout (paths and other objects as strings)."""
    json.dump(data, sys.stdout, indent=2, default=str)
    print()


def _int_at_least(low: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is not {what}")
        return value

    parse.__name__ = what  # argparse names the type in its messages
    return parse


positive_int = _int_at_least(1, "at least 1")
non_negative_int = _int_at_least(0, "at least 0")
image_size_int = _int_at_least(32, "an image size of at least 32")


def float_in(low: float, high: float, *, low_open: bool = False,
             high_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a float in [low, high] (open at either end when asked)."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        inside = ((value > low if low_open else value >= low) and
                  (value < high if high_open else value <= high))
        if not inside:  # NaN is never inside
            raise argparse.ArgumentTypeError(f"{text} is not in {interval}")
        return value

    parse.__name__ = f"a number in {interval}"
    return parse


def add_image_size_option(p: argparse.ArgumentParser, *, dest: str,
                          help: str = "input size (default: the model's, e.g. 224)") -> None:
    """``--image-size N`` (N >= 32); ``--size`` stays accepted, hidden, for old commands."""
    p.add_argument("--image-size", dest=dest, type=image_size_int, default=None, metavar="N",
                   help=help)
    p.add_argument("--size", dest=dest, type=image_size_int, help=argparse.SUPPRESS)


def print_failures(errors: Sequence[tuple[Any, str]], errors_file: Path | None = None,
                   shown: int = SHOWN_FAILURES) -> None:
    """``FAILED path: reason`` lines on stderr (the first ``shown``), and where the rest is."""
    for path, reason in errors[:shown]:
        print(f"  FAILED {printable(path)}: {reason}", file=sys.stderr)
    if len(errors) > shown:
        print(f"  ... and {len(errors) - shown} more", file=sys.stderr)
    if errors and errors_file is not None:
        print(f"  all failures: {errors_file}", file=sys.stderr)


def add_input_options(p: argparse.ArgumentParser, metavar: str = "PATH",
                      what: str = "image files, folders (recursive), globs, or @FILE listing "
                                  "paths") -> None:
    """The image inputs of a command: positional paths and ``--from-file``."""
    p.add_argument("inputs", nargs="*", metavar=metavar, help=what)
    p.add_argument("--from-file", action="append", metavar="FILE",
                   help="read input paths from FILE, one per line ('-' = stdin)")


def expand_args(args: argparse.Namespace) -> Sources:
    """The image files that ``args.inputs`` and ``args.from_file`` name."""
    from ..data.sources import expand_inputs

    return expand_inputs(args.inputs, args.from_file or ())


def add_decode_options(p: argparse.ArgumentParser) -> None:
    """Decoding and inference options of every command that reads images."""
    p.add_argument("--workers", type=non_negative_int, default=None,
                   help="decode processes (default: one per core; 0 decodes inline)")
    p.add_argument("--threads", action="store_true",
                   help="decode in threads, not processes: faster (no copies between "
                        "processes) but a crashing codec then stops the run")
    p.add_argument("--batch-size", type=positive_int, default=64,
                   help="images per inference batch")
    p.add_argument("--device", default="cpu", help="torch device for the model (cpu, cuda)")
    p.add_argument("--backend", default="auto",
                   choices=("auto", "torch", "torch-fused", "onnxruntime", "openvino", "litert"),
                   help="inference engine (default auto: the fastest installed one whose "
                        "vectors equal the torch module's to <= 1e-4, built once per weights "
                        "and cached; see `mobilevec backends`); torch: the PyTorch module")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "int8"),
                   help="fp32 (default): exact; bf16 / int8: faster on CPUs with native "
                        "bf16 / int8 instructions, vectors at the cosine to fp32 that the "
                        "run measures and records (int8 calibrates once on the inputs)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_model_options(parser: argparse.ArgumentParser, *, required: bool = True,
                      default: str = "the one recorded with the input") -> None:
    """Add ``--model``, ``--weights`` and ``--handle`` to ``parser``.

    ``required``: whether some model must be named (``--model`` or ``--handle``); commands
    that can take the model from elsewhere pass False and say where in ``default``.
    """
    parser.add_argument("--model", help="model name, see `mobilevec list`"
                        + ("" if required else f" (default: {default})"))
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


def embedder_from_args(args: argparse.Namespace, *, image_size: int | None = None,
                       calibration=None):
    """The :class:`~mobilevec.embedding.embedder.Embedder` that ``--model``/``--weights``/
    ``--handle``, ``--backend``, ``--precision`` and ``--device`` name."""
    from ..embedding.embedder import embedder

    bars = StageBars(quiet=getattr(args, "quiet", False) or not calibration)
    try:  # a first int8 run calibrates for minutes: bars for its stages
        return embedder(args.model, args.weights, handle=getattr(args, "handle", None),
                        backend=getattr(args, "backend", "auto"),
                        precision=getattr(args, "precision", "fp32"), image_size=image_size,
                        device=getattr(args, "device", "cpu"), calibration=calibration,
                        progress=bars.update)
    finally:
        bars.close()


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
