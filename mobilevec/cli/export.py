"""``mobilevec export`` and ``mobilevec backends``: thin commands over :mod:`mobilevec.export`
and :mod:`mobilevec.engines`.

Exit status of ``export``: 0 written; 1 a fatal error (bad weights, missing runtime, no
calibration image decodes); 2 a usage error. Calibration images that fail to decode are
reported and skipped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import (
    EXIT_ERROR,
    EXIT_OK,
    StageBars,
    add_image_size_option,
    add_json_option,
    add_model_options,
    positive_int,
    print_json,
)

_SHOWN_ERRORS = 10


def cmd_export(args: argparse.Namespace) -> int:
    from ..engines import MissingBackendError
    from ..export import (
        calibration_paths,
        default_int8_placement,
        export,
        export_format,
        exported_metadata,
    )
    from .common import model_from_args, weights_source

    # Everything that can be refused is refused before the weights load or a photo decodes.
    try:
        fmt = export_format(args.output, args.format)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    if args.calibrate and not args.int8:
        print("error: --calibrate only applies with --int8", file=sys.stderr)
        return EXIT_ERROR
    if args.int8 and fmt == "tflite":
        print("error: --int8 is available for onnx and openvino exports, not tflite",
              file=sys.stderr)
        return EXIT_ERROR
    if args.nhwc and fmt == "tflite":
        args.nhwc = False  # a .tflite is NHWC anyway
    calibration = None
    if args.int8:
        if not args.calibrate:
            print("error: --int8 needs --calibrate DIR (a folder of representative photos)",
                  file=sys.stderr)
            return EXIT_ERROR
        try:
            calibration = calibration_paths(args.calibrate, args.calibration_images)
        except FileNotFoundError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_ERROR
        if not args.json:
            print(f"calibrating int8 on {len(calibration)} images from {args.calibrate}",
                  file=sys.stderr)
    model = model_from_args(args)
    skipped: list[tuple[Path, str]] = []
    bars = StageBars(quiet=args.quiet)
    try:
        written = export(model, args.output, fmt, nhwc=args.nhwc,
                         image_size=args.image_size, source=weights_source(args),
                         calibration=calibration, skipped=skipped,
                         int8_placement=args.int8_placement,
                         progress=bars.update if args.int8 else None)
    except (MissingBackendError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        bars.close()
    for path, reason in skipped[:_SHOWN_ERRORS]:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if len(skipped) > _SHOWN_ERRORS:
        print(f"... and {len(skipped) - _SHOWN_ERRORS} more skipped", file=sys.stderr)
    size = args.image_size or model.config.image_size
    nhwc = args.nhwc or fmt == "tflite"
    report = {"model": model.config.name, "format": fmt, "files": [str(p) for p in written],
              "precision": "int8" if args.int8 else "fp32",
              "input": {"dtype": "float32", "layout": "NHWC" if nhwc else "NCHW",
                        "range": [0, 1], "size": [size, size]},
              "output": [None, model.num_features],
              "skipped": [{"path": str(p), "reason": why} for p, why in skipped]}
    if args.int8:
        meta = exported_metadata(written[0])
        report["int8"] = {
            "placement": args.int8_placement or default_int8_placement(fmt),
            "fp32_blocks": [b for b in meta.get("int8_fp32_blocks", "").split(",") if b],
            "cosine_mean": float(meta.get("int8_cosine_mean", "nan")),
            "calibration_images": int(meta.get("calibration_images", 0))}
    if args.json:
        print_json(report)
        return EXIT_OK
    if args.int8:
        q = report["int8"]
        kept = ", ".join(q["fp32_blocks"]) or "none"
        print(f"int8 ({q['placement']} placement, fp32 blocks: {kept}) vs fp32 vectors on "
              f"held-out calibration images: mean cosine {q['cosine_mean']:.4f}"
              + ("  WARNING: below 0.99, check accuracy before use"
                 if q["cosine_mean"] < 0.99 else ""))
    layout = "NHWC (N, H, W, 3)" if nhwc else "NCHW (N, 3, H, W)"
    print(f"{model.config.name} -> {', '.join(map(str, written))}")
    print(f"  {report['precision']}, input float32 {layout} in [0, 1] at "
          f"{size}x{size}, any batch; output (N, {model.num_features})")
    if fmt == "openvino" and not args.int8:
        print("  runs in fp32 under OpenVINO's defaults (the IR pins it; OpenVINO would "
              "otherwise pick bf16 on CPUs that have it)")
    elif fmt == "openvino":
        print("  run it as mobilevec measured it: mobilevec.engines.load_engine(xml), or "
              "compile_model(xml, 'CPU', {'INFERENCE_PRECISION_HINT': 'f32'})")
    return EXIT_OK


def cmd_backends(args: argparse.Namespace) -> int:
    from ..engines import BACKENDS, EXTRAS, available_backends
    from ..engines.default import check_precision, default_backend
    from ..errors import MobilevecError

    installed = available_backends()
    fp32 = default_backend()
    precisions = {}
    for precision in ("bf16", "int8"):
        try:
            check_precision(precision)
            precisions[precision] = (True, f"available (--precision {precision}, on openvino)")
        except MobilevecError as e:
            precisions[precision] = (False, f"not available: {e}")
    if args.json:
        print_json({"default": fp32,
                    "backends": [{"backend": "torch", "installed": True}] +
                    [{"backend": b, "installed": b in installed,
                      "extra": None if b in installed else EXTRAS[b]} for b in BACKENDS],
                    "precisions": {p: {"available": ok, "detail": why}
                                   for p, (ok, why) in precisions.items()}})
        return EXIT_OK
    print("torch        the trainable nn.Module (mobilevec.create's default)"
          + ("  <- default (no engine runtime installed)" if fp32 == "torch" else ""))
    for backend in BACKENDS:
        state = ("installed" if backend in installed
                 else f"missing: pip install 'mobilevec[{EXTRAS[backend]}]'")
        print(f"{backend:12} {state}{'  <- default (fp32, exact)' if backend == fp32 else ''}")
    for precision, (_, verdict) in precisions.items():
        print(f"{precision:12} {verdict}")
    return EXIT_OK


def add_commands(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="write a model as ONNX or OpenVINO IR for fast inference (fp32/int8)",
        description="Export the folded network (BatchNorm and input scaling folded, static "
                    "TF 'SAME' pads, dynamic batch) with a metadata block (model, input "
                    "contract, sha256 of the weights).")
    add_model_options(p)
    p.add_argument("--format", choices=("onnx", "openvino", "tflite"), default=None,
                   help="onnx: one .onnx file (opset 17); openvino: .xml + .bin (runs fp32 "
                        "under OpenVINO's defaults); tflite: float32 NHWC .tflite for LiteRT. "
                        "Default: the suffix of -o (.onnx, .xml, .tflite); a --format that "
                        "contradicts it is refused")
    p.add_argument("-o", "--output", required=True, type=Path,
                   help="output file: model.onnx, model.xml (+ model.bin) or model.tflite")
    p.add_argument("--int8", action="store_true",
                   help="post-training static int8 quantization (QDQ), needs --calibrate; "
                        "onnx and openvino only")
    p.add_argument("--calibrate", type=Path, metavar="DIR",
                   help="folder of representative photos for int8 calibration")
    p.add_argument("--int8-placement", choices=("all-ops", "conv-inputs"),
                   help="where int8 quantization goes: all-ops (ONNX Runtime's int8 "
                        "kernels; default for onnx) or conv-inputs (OpenVINO's, with "
                        "per-channel equalization and bias correction; default for openvino)")
    p.add_argument("--calibration-images", type=positive_int, default=300, metavar="N",
                   help="use at most N calibration images, spread over the folder (300)")
    p.add_argument("--nhwc", action="store_true",
                   help="take (N, H, W, 3) input instead of (N, 3, H, W)")
    add_image_size_option(p, dest="image_size", help="fixed input size (default: the "
                                                    "model's, e.g. 224)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_json_option(p)
    p.set_defaults(func=cmd_export)

    p = subparsers.add_parser("backends", help="list inference backends and which are "
                                               "installed")
    add_json_option(p)
    p.set_defaults(func=cmd_backends)
