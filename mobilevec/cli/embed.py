"""``mobilevec embed`` and ``search``: thin commands over the embedding pipeline.

Exit status: see :mod:`mobilevec.cli.common` (3 when some input files failed).
"""

from __future__ import annotations

import argparse
import sys

from .._io import write_csv
from .common import (
    EXIT_ERROR,
    EXIT_FAILED_FILES,
    EXIT_OK,
    EXIT_USAGE,
    Interruption,
    add_decode_options,
    add_image_size_option,
    add_input_options,
    add_json_option,
    add_model_options,
    expand_args,
    interrupt_on_signals,
    positive_int,
    print_failures,
    print_json,
    printable,
    progress_bar,
)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of pixels, 1 or more")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text!r}: give seconds, 0 or more (0: no limit)")
    return value


# --- embed -------------------------------------------------------------------------------
def cmd_embed(args: argparse.Namespace) -> int:
    with interrupt_on_signals() as caught:
        try:
            return _embed(args, caught)
        except KeyboardInterrupt:  # before the run began, or while it was shutting down
            print(f"interrupted ({caught.name}): what was committed is kept in "
                  f"{printable(args.output)}; re-run the same command to go on",
                  file=sys.stderr)
            return caught.exit_code


def _embed(args: argparse.Namespace, caught: Interruption) -> int:
    from ..data.images import MAX_PIXELS
    from ..embedding.batching import Preprocessing
    from ..embedding.embedder import measure_precision
    from ..embedding.pipeline import run_embed
    from ..embedding.provenance import store_meta
    from .common import embedder_from_args

    if not (args.weights or args.handle or args.random_weights):
        print("error: no --weights or --handle: the vectors would come from random weights "
              "and mean nothing; name the weights, or pass --random-weights if that is "
              "what you want (tests, timing)", file=sys.stderr)
        return EXIT_USAGE
    sources = expand_args(args)
    if not sources.paths and not sources.missing:
        print("error: no input images (give files, folders, globs or @list.txt)",
              file=sys.stderr)
        return EXIT_ERROR
    embed = _embed_function(args, run_embed)
    emb = embedder_from_args(args, image_size=args.size, calibration=sources.paths)
    weights = None if emb.source.artifact is None else str(emb.source.artifact)
    size = emb.image_size[0]
    if weights is None:
        print("warning: --random-weights: random initialisation (vectors mean nothing, and "
              "a re-run cannot resume them)", file=sys.stderr)
    prep = Preprocessing(size=(size, size), crop=args.crop, draft=not args.exact_decode,
                         max_pixels=MAX_PIXELS if args.max_pixels is None else args.max_pixels)
    quality = measure_precision(emb, sources.paths, prep)
    meta = store_meta(emb, prep, normalize=args.normalize, half=args.half, weights=weights,
                      source=args.handle, precision=emb.precision, quality=quality)
    bar, update = progress_bar(len(sources.paths), "embed", args.quiet or args.json)
    try:
        summary = embed(emb.runner, sources.paths, args.output, prep=prep, meta=meta,
                        batch_size=args.batch_size, missing=sources.missing, progress=update)
    finally:
        if bar is not None:
            bar.close()
    for warning in summary.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print_failures(summary.errors, None if summary.read_only else summary.errors_file)
    if summary.read_only:
        print(f"note: {printable(args.output)} is read-only: nothing left to embed"
              + ("; the failures above are not recorded" if summary.errors else ""),
              file=sys.stderr)
    if args.json:
        print_json({"status": "interrupted" if summary.interrupted else "done",
                    "output": printable(args.output), "embedded": summary.ok,
                    "failed": summary.failed, "skipped": summary.skipped,
                    "pruned": summary.pruned, "seconds": round(summary.seconds, 3),
                    "images_per_second": round(summary.images_per_second, 2),
                    "backend": emb.backend, "precision": emb.precision, "quality": quality,
                    "errors": [{"path": printable(p), "reason": why}
                               for p, why in summary.errors],
                    "errors_file": None if summary.read_only else summary.errors_file,
                    "warnings": list(summary.warnings)})
    else:
        pruned = f", {summary.pruned} pruned" if summary.pruned else ""
        print(f"{'interrupted' if summary.interrupted else 'done'}: {summary.ok} embedded, "
              f"{summary.failed} failed, {summary.skipped} skipped (already in "
              f"{printable(args.output)}){pruned} in {summary.seconds:.1f} s "
              f"({summary.images_per_second:.1f} img/s) on {emb.backend}, "
              f"{_precision_words(emb.precision, quality)}")
    if summary.interrupted:
        return caught.exit_code
    return EXIT_FAILED_FILES if summary.failed else EXIT_OK


def _precision_words(precision: str, quality: dict) -> str:
    if precision == "fp32":
        return "fp32 (exact)"
    if not quality:
        return precision
    return (f"{precision} (cosine to fp32 {quality['cosine_mean']:.4f} mean, "
            f"{quality['cosine_min']:.4f} min, on {quality['images']} of these photos)")


def _embed_function(args: argparse.Namespace, run_embed):
    """``run_embed`` with the local decode options, or the Ray runner with its own."""
    from functools import partial

    if args.runner == "ray":
        from ..embedding.ray_runner import run_ray_embed
        from ..errors import MobilevecError

        if args.backend == "auto":  # engines hold native sessions that Ray cannot ship
            args.backend = "torch"
        if args.backend != "torch" or args.precision != "fp32":
            raise MobilevecError("--runner ray runs the torch backend only; drop --backend "
                                 "and --precision")
        return partial(run_ray_embed, address=args.address, num_workers=args.num_workers,
                       quiet=args.quiet, prune=args.prune)
    return partial(run_embed, workers=args.workers, threads=args.threads, prune=args.prune,
                   file_timeout=args.file_timeout or None)


# --- search ------------------------------------------------------------------------------
def cmd_search(args: argparse.Namespace) -> int:
    import numpy as np

    from ..embedding.batching import Preprocessing, embed_batches
    from ..embedding.embedder import embedder_for_store
    from ..embedding.index import neighbours
    from ..embedding.store import read_meta, read_store

    meta = read_meta(args.vectors)
    p = meta["preprocessing"]
    model = embedder_for_store(args.vectors, meta, model=args.model, weights=args.weights,
                               handle=args.handle, backend=args.backend,
                               device=args.device).runner
    stored = read_store(args.vectors)
    sources = expand_args(args)
    prep = Preprocessing(size=tuple(p["size"]), crop=p["crop"], draft=p["draft"])
    paths, vectors, failures = [], [], list(sources.missing)
    for batch in embed_batches(model, sources.paths, prep=prep, batch_size=args.batch_size,
                               workers=args.workers, threads=args.threads,
                               normalize=meta["normalize"]):
        paths += batch.paths
        vectors += list(batch.vectors)
        failures += [(str(path), reason) for path, reason in batch.errors]
    print_failures(failures)
    rows, results = [], []
    if paths and len(stored.paths):
        order, sims, method = neighbours(args.vectors, stored, np.asarray(vectors), args.k,
                                         args.index)
        if method != "exact":
            print(f"(approximate search: {method} index over {len(stored.paths)} vectors)",
                  file=sys.stderr)
        for query, hits, scores in zip(paths, order, sims, strict=True):
            if not args.json:
                print(f"query {printable(query)}")
            found = []
            for rank, (i, score) in enumerate(zip(hits, scores, strict=True), 1):
                if not args.json:
                    print(f"  {rank:3d}  {score:8.4f}  {printable(stored.paths[i])}")
                rows.append((printable(query), rank, f"{score:.6f}",
                             printable(stored.paths[i])))
                found.append((stored.paths[i], float(score)))
            results.append((str(query), found))
    if args.json:
        print_json(_search_json(rows, failures))
    if args.csv:
        write_csv(args.csv, ("query", "rank", "cosine", "path"), rows)
    if args.html:
        from ..embedding.report import search_report

        search_report(args.html, results, title=f"mobilevec search {printable(args.vectors)}")
        print(f"report: {printable(args.html)}", file=sys.stderr)
    return EXIT_FAILED_FILES if failures else EXIT_OK


def _search_json(rows: list[tuple], failures: list[tuple[str, str]]) -> dict:
    queries: dict[str, list[dict]] = {}
    for query, rank, cosine, path in rows:
        queries.setdefault(query, []).append({"rank": rank, "cosine": float(cosine),
                                              "path": path})
    return {"queries": [{"query": q, "neighbours": n} for q, n in queries.items()],
            "errors": [{"path": p, "reason": why} for p, why in failures]}


# --- registration ------------------------------------------------------------------------
def add_commands(subparsers) -> None:
    """Register ``embed`` and ``search`` on the ``mobilevec`` parser."""
    p = subparsers.add_parser(
        "embed", help="embed image files into a resumable vector table",
        description="Embed images (files, folders, globs, @list.txt) into vectors. Re-running "
                    "the same command skips images already stored (same path, size, mtime). "
                    "Exit 0: all ok; 3: some files failed (listed, and in the errors file); "
                    "1: fatal error; 130: interrupted by Ctrl-C, 143: stopped by SIGTERM "
                    "(work so far kept in both cases).")
    add_input_options(p)
    p.add_argument("-o", "--output", required=True,
                   help="vectors.parquet (a folder of Parquet parts) or vectors.npy "
                        "(+ vectors.index.csv)")
    add_model_options(p, required=True)
    p.add_argument("--random-weights", action="store_true",
                   help="without --weights/--handle: embed with random initialisation "
                        "(vectors that mean nothing; for tests and timing)")
    add_image_size_option(p, dest="size")
    p.add_argument("--crop", choices=("none", "center"), default="none",
                   help="none: squash to the input size (TF Hub's usual feed); center: "
                        "resize the shorter side and crop the centre")
    p.add_argument("--exact-decode", action="store_true",
                   help="decode JPEGs at full size as TF does (default: JPEGs 4x or more "
                        "the input size are DCT-scaled to >= 2x it: 2-3x faster decode, median "
                        "cosine 0.998 to the full decode; see docs/benchmarks.md)")
    p.add_argument("--normalize", action="store_true", help="store L2-normalised vectors")
    p.add_argument("--half", action="store_true", help="store float16 vectors")
    p.add_argument("--max-pixels", type=_positive_int, default=None, metavar="N",
                   help="refuse images of more than N pixels before decoding (default "
                        "178956970, about 179 MP; one limit, also above Pillow's own)")
    p.add_argument("--file-timeout", type=_seconds, default=120.0, metavar="SECONDS",
                   help="give up on a file whose read and decode take longer, e.g. on a hung "
                        "network mount (default 120; 0: no limit; decode processes only)")
    p.add_argument("--prune", action="store_true",
                   help="at the end, drop the rows of files that no longer exist (deleted or "
                        "moved) and older rows of files that changed")
    add_decode_options(p)
    p.add_argument("--runner", choices=("local", "ray"), default="local",
                   help="local: this machine (default); ray: Ray Data actors, one model each "
                        "(pip install 'mobilevec[ray]'; see docs/ray.md)")
    p.add_argument("--address", help="with --runner ray: 'auto' or ray://HOST:10001 to join a "
                                     "cluster (default: a local Ray instance for this run)")
    p.add_argument("--num-workers", type=positive_int,
                   help="with --runner ray: model actors (default: one per CPU in the cluster)")
    add_json_option(p)
    p.set_defaults(func=cmd_embed)

    p = subparsers.add_parser(
        "search", help="nearest stored images of query images (cosine)",
        description="Embed the query images with the model the vectors were made with and "
                    "print the k most similar stored images. Exit 3 if a query failed.")
    p.add_argument("vectors", help="vectors.parquet or vectors.npy written by embed")
    add_input_options(p, "QUERY", "query images (as for embed)")
    p.add_argument("-k", "--k", dest="k", type=positive_int, default=10,
                   help="neighbours per query (default 10)")
    p.add_argument("--csv", help="also write query,rank,cosine,path to this CSV file")
    p.add_argument("--html", help="also write a self-contained HTML page with thumbnails of "
                                  "each query and its neighbours")
    p.add_argument("--index", choices=("auto", "exact", "usearch"), default="auto",
                   help="exact: brute force; usearch: HNSW index saved with the vectors "
                        "(approximate, needs mobilevec[index]); auto (default): usearch from "
                        "100,000 stored vectors when installed, else exact")
    add_model_options(p, required=False)
    add_decode_options(p)
    add_json_option(p)
    p.set_defaults(func=cmd_search)
