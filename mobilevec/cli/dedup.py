"""``mobilevec dedup`` and ``mobilevec neighbours``: thin commands over
:mod:`mobilevec.embedding.dedup`.

``dedup`` applies the store's model's calibrated rule (:class:`~mobilevec.models.registry.
DedupRule`) unless ``--threshold`` / ``--score`` override it, and lists each group with the
image to keep and the ones to remove, with their scores to the kept one.
"""

from __future__ import annotations

import argparse
import sys

from .._io import write_csv
from .common import EXIT_ERROR, EXIT_OK, add_json_option, positive_int, print_json, printable


def threshold_type(text: str) -> float:
    """An argparse type: a score threshold, a cosine in [-1, 1] (NaN refused)."""
    from ..embedding.dedup import check_threshold
    from ..errors import DedupError

    try:
        return check_threshold(text)
    except DedupError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


threshold_type.__name__ = "a threshold in [-1, 1]"


def _rule(args: argparse.Namespace, meta: dict):
    from ..embedding.dedup import rule_for

    return rule_for(meta, threshold=args.threshold, score=args.score, model=args.model)


# --- dedup -------------------------------------------------------------------------------
def cmd_dedup(args: argparse.Namespace) -> int:
    from ..embedding.dedup import find_duplicates
    from ..embedding.search import l2_normalize
    from ..embedding.store import read_meta, read_store

    meta = read_meta(args.vectors)
    rule = _rule(args, meta)
    stored = read_store(args.vectors)
    result = find_duplicates(args.vectors, stored, rule, keep=args.keep, k=args.k,
                             method=args.index, new=args.new)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    rows = []  # (group, path, cosine to the kept image, keep|remove, score to the kept image)
    for number, group in enumerate(result.groups, 1):
        unit = l2_normalize(stored.vectors[group.members])
        cosines = unit @ unit[0]  # plain cosine, as the column has always been
        if not args.json:
            print(f"group {number}: {len(group.members)} images, keep "
                  f"{printable(stored.paths[group.keep])}")
        rows.append((number, printable(stored.paths[group.keep]), f"{cosines[0]:.6f}",
                     "keep", f"{1.0:.6f}"))
        for row, score, cosine in zip(group.remove, group.scores, cosines[1:], strict=True):
            if not args.json:
                print(f"  remove  {score:8.4f}  {printable(stored.paths[row])}")
            rows.append((number, printable(stored.paths[row]), f"{cosine:.6f}", "remove",
                         f"{score:.6f}"))
    checked = (f"{result.checked} new of {result.images}" if result.checked != result.images
               else f"{result.images}")
    if args.json:
        print_json(_dedup_json(rows, result))
    else:
        print(f"{len(result.groups)} groups of near-duplicates ({rule.describe()}) among "
              f"{checked} images; {result.duplicates} could go, keeping one per group "
              f"({args.keep})")
    if args.csv:
        write_csv(args.csv, ("group", "path", "cosine_to_first", "action", "score"), rows)
    if args.html:
        from ..embedding.report import dedup_report

        dedup_report(args.html, stored, result, title=f"mobilevec dedup {printable(args.vectors)}")
        print(f"report: {printable(args.html)}", file=sys.stderr)
    return EXIT_OK


def _dedup_json(rows: list[tuple], result) -> dict:
    groups: dict[int, list[dict]] = {}
    keeps: dict[int, str] = {}
    for number, path, cosine, action, score in rows:
        groups.setdefault(number, []).append({"path": path, "cosine_to_first": float(cosine),
                                              "action": action, "score": float(score)})
        if action == "keep":
            keeps[number] = path
    return {"threshold": result.rule.threshold, "score": result.rule.score,
            "rule": result.rule.describe(), "images": result.images,
            "checked": result.checked, "method": result.method, "k": result.k,
            "duplicates": result.duplicates,
            "groups": [{"group": n, "keep": keeps[n], "images": g} for n, g in groups.items()]}


# --- neighbours --------------------------------------------------------------------------
def cmd_neighbours(args: argparse.Namespace) -> int:
    from ..embedding.dedup import top_neighbours
    from ..embedding.store import read_meta, read_store
    from ..errors import MobilevecError
    from ..models.registry import MODELS, DedupRule

    output = str(args.output)
    if not output.endswith((".parquet", ".csv")):
        raise MobilevecError(f"-o {printable(output)}: name a .parquet or .csv file")
    meta = read_meta(args.vectors)
    model = meta.get("model")
    if args.model is not None and args.model != model:
        raise MobilevecError(f"the store holds {model} vectors, not {args.model}")
    config = MODELS.get(model) if isinstance(model, str) else None
    score = args.score or (config.dedup.score if config is not None else "cosine")
    stored = read_store(args.vectors)
    # The threshold plays no part in a top-k list; only the score does.
    graph = top_neighbours(args.vectors, stored, DedupRule(score, 1.0), k=args.k,
                           method=args.index)
    paths = [printable(p) for p in stored.paths]
    query, rank, neighbour, scores = [], [], [], []
    for row, hits, sims in zip(graph.rows.tolist(), graph.indices, graph.scores, strict=True):
        for r, (i, s) in enumerate(zip(hits.tolist(), sims.tolist(), strict=True), 1):
            if i < 0:
                break
            query.append(paths[row])
            rank.append(r)
            neighbour.append(paths[i])
            scores.append(s)
    if output.endswith(".csv"):
        write_csv(output, ("path", "rank", "neighbour", "score"),
                  zip(query, rank, neighbour, (f"{s:.6f}" for s in scores), strict=True))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"path": query, "rank": pa.array(rank, pa.int32()),
                                 "neighbour": neighbour,
                                 "score": pa.array(scores, pa.float32())}), output)
    summary = {"output": printable(output), "images": len(paths), "rows": len(query),
               "k": args.k, "score": score, "method": graph.method}
    if args.json:
        print_json(summary)
    else:
        print(f"{len(query)} neighbours ({args.k} per image, {score} score, {graph.method}) "
              f"of {len(paths)} images written to {printable(output)}")
    return EXIT_OK if len(paths) else EXIT_ERROR


# --- registration ------------------------------------------------------------------------
def _add_graph_options(p: argparse.ArgumentParser, k_help: str) -> None:
    p.add_argument("--k", "--topk", dest="k", type=positive_int, default=10, help=k_help)
    p.add_argument("--index", choices=("auto", "exact", "usearch", "buckets"),
                   default="auto",
                   help="how the k-NN graph is built: exact (blockwise products), usearch "
                        "(HNSW proposals over a PCA projection, re-scored exactly; needs "
                        "mobilevec[index]), buckets (k-means cells of about 500 images, each "
                        "image in its 2 nearest, exact inside each cell) or auto (default: "
                        "usearch from 20,000 images when installed)")
    p.add_argument("--score", choices=("cosine", "centred"), default=None,
                   help="cosine: of the vectors; centred: after subtracting the collection's "
                        "mean (default: the model's calibrated rule, see `mobilevec info`)")
    p.add_argument("--model", help="check that the store holds this model's vectors")


def add_commands(subparsers) -> None:
    """Register ``dedup`` and ``neighbours`` on the ``mobilevec`` parser."""
    p = subparsers.add_parser(
        "dedup", help="groups of near-duplicate stored images, with the one to keep",
        description="Group stored images that are near-duplicates under the model's "
                    "calibrated rule (see docs/dedup.md): every member of a group scores at "
                    "or above the threshold with every other (no chaining). Each group names "
                    "the image to keep and those to remove, with their scores.")
    p.add_argument("vectors", help="vectors.parquet or vectors.npy written by embed")
    p.add_argument("--threshold", type=threshold_type, default=None,
                   help="score in [-1, 1] at or above which two images are near-duplicates "
                        "(default: the model's calibrated threshold)")
    p.add_argument("--keep", choices=("largest", "oldest", "first"), default="largest",
                   help="which image of a group to keep: the largest file (default), the "
                        "oldest (mtime) or the first in the store")
    p.add_argument("--new", action="store_true",
                   help="check only images added since the last dedup of this store, "
                        "against all of them")
    _add_graph_options(p, "neighbours looked at per image (default 10; a group holds at "
                          "most k+1 images)")
    p.add_argument("--csv", help="also write group,path,cosine_to_first,action,score here")
    p.add_argument("--html", help="also write a self-contained HTML report with thumbnails")
    add_json_option(p)
    p.set_defaults(func=cmd_dedup)

    p = subparsers.add_parser(
        "neighbours", help="the k most similar stored images of every stored image",
        description="Write each stored image's k best-scoring other stored images "
                    "(path, rank, neighbour, score) to Parquet or CSV.")
    p.add_argument("vectors", help="vectors.parquet or vectors.npy written by embed")
    p.add_argument("-o", "--output", required=True, help="out.parquet or out.csv")
    _add_graph_options(p, "neighbours per image (default 10)")
    add_json_option(p)
    p.set_defaults(func=cmd_neighbours)
