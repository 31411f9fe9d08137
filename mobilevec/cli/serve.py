"""``mobilevec serve``: the feature vectors over HTTP (Open Inference Protocol v2, TF
Serving REST, ``/embed``), with dynamic batching; see docs/serve.md."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .common import EXIT_ERROR, EXIT_OK, EXIT_USAGE, float_in, positive_int


class _ModelAction(argparse.Action):
    """``--model`` starts a served model; ``--weights``/``--handle`` complete the last
    one (or, for a handle, start one of their own)."""

    def __call__(self, parser, namespace, value, option_string=None):
        specs = list(getattr(namespace, "specs", None) or [])
        key = self.dest
        if key == "model":
            from ..serve.config import parse_model_option

            specs.append(parse_model_option(value))
        elif specs and not (specs[-1].get("weights") or specs[-1].get("handle")):
            specs[-1][key] = value
        elif key == "handle":
            specs.append({"handle": value})
        else:
            parser.error(f"--weights {value}: give --model NAME before each --weights")
        namespace.specs = specs


def _byte_count(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    scale = units.get(t[-1:], 1)
    try:
        value = int(float(t[:-1] if t[-1:] in units else t) * scale)
    except ValueError:
        value = 0
    if value < 1024:
        raise argparse.ArgumentTypeError(f"{text!r}: give a size of at least 1024 bytes "
                                         "(e.g. 64M)")
    return value


def cmd_serve(args: argparse.Namespace) -> int:
    from ..errors import MobilevecError
    from ..serve import ServeConfig, ServedModel, read_config_file, serve

    settings: dict = {}
    if args.config:
        settings = read_config_file(args.config)
    models = list(settings.pop("models", ()))
    try:
        for spec in getattr(args, "specs", None) or []:
            if "name" not in spec:  # a handle alone: the model it names
                from ..embedding.embedder import weights_source

                model = weights_source(None, handle=spec["handle"], progress=True).model
                spec = {"name": model, "model": model, **spec}
            models.append(ServedModel(precision=args.precision, backend=args.backend,
                                      **spec))
    except MobilevecError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if not models:
        print("error: name a model to serve: --model NAME --weights FILE|DIR, --handle H, "
              "or --config FILE", file=sys.stderr)
        return EXIT_USAGE
    token = None
    if args.token_file:
        try:
            token = Path(args.token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            print(f"error: --token-file {args.token_file}: {e}", file=sys.stderr)
            return EXIT_ERROR
        if not token:
            print(f"error: --token-file {args.token_file} is empty", file=sys.stderr)
            return EXIT_ERROR
    options = {k: v for k, v in (
        ("host", args.host), ("port", args.port), ("max_batch", args.max_batch),
        ("max_delay_ms", args.max_delay_ms), ("max_queue", args.max_queue),
        ("timeout_s", args.timeout), ("max_body_bytes", args.max_body_bytes),
        ("max_pixels", args.max_pixels), ("decode_threads", args.decode_threads),
        ("crop", args.crop)) if v is not None}
    if args.exact_decode:
        options["exact_decode"] = True
    if args.no_access_log:
        options["access_log"] = False
    config = ServeConfig(models=tuple(models), token=token, **{**settings, **options})
    logging.getLogger("mobilevec.serve").setLevel(logging.INFO)
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    if config.host not in ("127.0.0.1", "localhost", "::1") and token is None:
        print(f"warning: listening on {config.host} without --token-file: anyone who can "
              "reach the port can use the server", file=sys.stderr)

    def ready(url: str) -> None:
        print(f"serving {', '.join(m.name for m in config.models)} on {url} "
              f"(Ctrl-C or SIGTERM to stop)", file=sys.stderr, flush=True)

    if args.runner == "ray":
        from ..serve.ray_runner import serve_on_ray

        serve_on_ray(config, address=args.address, replicas=args.replicas,
                     max_replicas=args.max_replicas, on_ready=ready)
        return EXIT_OK
    serve(config, on_ready=ready)
    return EXIT_OK


def add_commands(subparsers) -> None:
    """Register ``serve`` on the ``mobilevec`` parser."""
    p = subparsers.add_parser(
        "serve", help="serve feature vectors over HTTP (Triton/KServe v2, TF Serving REST)",
        description="Serve one or more models over HTTP: the Open Inference Protocol v2 "
                    "(tritonclient, KServe), TF Serving's REST API, and POST /embed for "
                    "multipart uploads, with dynamic batching. Binds 127.0.0.1 unless told "
                    "otherwise; SIGTERM finishes the requests in flight. See docs/serve.md.")
    p.add_argument("--model", action=_ModelAction, metavar="[URLNAME=]NAME",
                   help="a model to serve (repeat for several; each followed by its "
                        "--weights or --handle); URLNAME is its name in the URLs "
                        "(default: NAME)")
    p.add_argument("--weights", action=_ModelAction, help="weights FILE or DIR of the last "
                                                          "--model")
    p.add_argument("--handle", action=_ModelAction,
                   help="TF Hub / Kaggle handle of the last --model (or alone: the model "
                        "it names)")
    p.add_argument("--config", help="a TOML or JSON file with [[models]] (name, model, "
                                    "weights | handle, precision) and settings")
    p.add_argument("--host", help="address to bind (default 127.0.0.1; 0.0.0.0 exposes the "
                                  "server: use --token-file)")
    p.add_argument("--port", type=positive_int, help="TCP port (default 8500)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "int8"),
                   help="as embed --precision (default fp32: vectors equal to embed's)")
    p.add_argument("--backend", default="auto",
                   choices=("auto", "torch", "torch-fused", "onnxruntime", "openvino",
                            "litert"), help="inference engine (default auto, as embed)")
    p.add_argument("--max-batch", type=positive_int,
                   help="images per engine call at most (default 32)")
    p.add_argument("--max-delay-ms", type=float_in(0, 10_000),
                   help="how long the first request of a batch waits for others (default 5)")
    p.add_argument("--max-queue", type=positive_int,
                   help="requests per model waiting (decoding or queued) before 503, and "
                        "images queued for the engine (default 4 x --max-batch)")
    p.add_argument("--timeout", type=float_in(0, 3600, low_open=True), metavar="SECONDS",
                   help="per-request limit from arrival to answer, 504 past it (default 30)")
    p.add_argument("--max-body-bytes", type=_byte_count, metavar="SIZE",
                   help="refuse larger request bodies with 413 (default 64M)")
    p.add_argument("--max-pixels", type=positive_int, metavar="N",
                   help="refuse images of more than N pixels before decoding, as embed "
                        "(default 178956970)")
    p.add_argument("--exact-decode", action="store_true",
                   help="decode JPEGs at full size as TF does (default: as embed, DCT-scaled "
                        "when 4x or more the input size)")
    p.add_argument("--crop", choices=("none", "center"), help="as embed --crop")
    p.add_argument("--decode-threads", type=positive_int,
                   help="parallel image decoders (default: one per core)")
    p.add_argument("--token-file", help="require 'Authorization: Bearer TOKEN' with the "
                                        "token in this file (health probes stay open)")
    p.add_argument("--no-access-log", action="store_true",
                   help="no log line per request")
    p.add_argument("--runner", choices=("local", "ray"), default="local",
                   help="local: this process (default); ray: Ray Serve deployments, the same "
                        "protocols (pip install 'mobilevec[serve-ray]'; docs/serve.md)")
    p.add_argument("--address", help="with --runner ray: 'auto' or ray://HOST:10001 to join a "
                                     "cluster (default: a local Ray instance)")
    p.add_argument("--replicas", type=positive_int, default=1,
                   help="with --runner ray: replicas per model (the minimum, with "
                        "--max-replicas)")
    p.add_argument("--max-replicas", type=positive_int,
                   help="with --runner ray: autoscale each model up to this many replicas")
    p.set_defaults(func=cmd_serve)
