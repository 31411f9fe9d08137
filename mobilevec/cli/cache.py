"""``mobilevec cache list | verify | import | clear``: thin commands over
:mod:`mobilevec.hub.cache`.

Exit status: 0 ok; 1 an error (a bad import, a failed verification: the bad entries are
listed); 2 a usage error.
"""

from __future__ import annotations

import argparse
import sys

from .common import EXIT_ERROR, EXIT_OK, add_json_option, print_json


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def cmd_list(args: argparse.Namespace) -> int:
    from ..hub.cache import cache_dir, list_entries

    entries = list_entries()
    if args.json:
        print_json({"cache": str(cache_dir()), "entries": [
            {"key": e.key, "url": e.url, "file": str(e.file), "size": e.size,
             "sha256": e.sha256, "sha256_source": e.sha256_source, "source": e.source,
             "created": e.created, "extracted": e.extracted is not None,
             "safetensors": e.safetensors_path.is_file()} for e in entries]})
        return EXIT_OK
    print(f"cache: {cache_dir()}  ({len(entries)} entries)")
    for e in entries:
        derived = [name for name, present in (("extracted", e.extracted is not None),
                                              ("safetensors", e.safetensors_path.is_file()))
                   if present]
        print(f"  {e.key}  {_size(e.size):>9}  {e.created[:19]}  {e.source:8}  {e.url}")
        print(f"  {'':16}  {e.file.name}" + (f"  (+ {', '.join(derived)})" if derived else ""))
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from ..hub.cache import verify_entries

    results = verify_entries()
    if args.json:
        print_json({"entries": [{"key": e.key, "url": e.url, "ok": ok, "reason": reason}
                                for e, ok, reason in results],
                    "ok": sum(ok for _, ok, _ in results),
                    "bad": sum(not ok for _, ok, _ in results)})
        return EXIT_OK if all(ok for _, ok, _ in results) else EXIT_ERROR
    bad = 0
    for entry, ok, reason in results:
        print(f"  {'ok ' if ok else 'BAD'}  {entry.key}  {entry.url}" + ("" if ok else
                                                                        f"\n       {reason}"))
        bad += not ok
    print(f"{len(results) - bad} ok, {bad} bad" + (" (remove them with `mobilevec cache clear "
                                                   "URL`, or load again to re-download)"
                                                   if bad else ""))
    return EXIT_ERROR if bad else EXIT_OK


def cmd_import(args: argparse.Namespace) -> int:
    from ..hub.cache import import_file
    from ..hub.loader import validate_artifact

    entry = import_file(args.file, args.handle, sha256=args.sha256, validate=validate_artifact,
                        unpack=True)
    if args.json:
        print_json({"imported": str(args.file), "url": entry.url, "key": entry.key,
                    "file": str(entry.file), "sha256": entry.sha256,
                    "sha256_source": entry.sha256_source})
        return EXIT_OK
    print(f"imported {args.file} as {entry.url}\n  -> {entry.file} (sha256 {entry.sha256}, "
          f"{entry.sha256_source})")
    return EXIT_OK


def cmd_clear(args: argparse.Namespace) -> int:
    from ..hub.cache import cache_dir, clear

    if args.handle is None and not args.all:
        print("error: name a handle or URL to clear, or pass --all", file=sys.stderr)
        return EXIT_ERROR
    removed = clear(args.handle)
    engines = None
    if args.all:
        from ..engines.cache import clear as clear_engines

        engines = clear_engines()
    if args.json:
        print_json({"cache": str(cache_dir()), "removed_entries": removed,
                    "removed_engines": engines})
        return EXIT_OK
    print(f"removed {removed} entr{'y' if removed == 1 else 'ies'} from {cache_dir()}")
    if engines is not None:
        print(f"removed {engines} compiled engine{'' if engines == 1 else 's'}")
    return EXIT_OK


def add_commands(subparsers) -> None:
    """Register ``cache`` and its sub-commands on the ``mobilevec`` parser."""
    p = subparsers.add_parser(
        "cache", help="list, verify, import or clear downloaded artifacts",
        description="The download cache ($MOBILEVEC_CACHE, else the user cache folder); "
                    "see docs/cache.md.")
    sub = p.add_subparsers(dest="cache_command", required=True)

    q = sub.add_parser("list", help="the cached artifacts")
    add_json_option(q)
    q.set_defaults(func=cmd_list)

    q = sub.add_parser("verify", help="re-hash every cached file and every file derived from "
                                      "it (exit 1 if any is bad)")
    add_json_option(q)
    q.set_defaults(func=cmd_verify)

    q = sub.add_parser("import", help="add a downloaded file under the handle that load uses "
                                      "(for offline machines)")
    q.add_argument("file", help="the artifact file (e.g. a .tar.gz, .tgz, .h5, .tflite)")
    q.add_argument("--as", dest="handle", required=True, metavar="HANDLE",
                   help="the TF Hub handle or URL that mobilevec.load will be given")
    q.add_argument("--sha256", help="expected sha256 of the file (default: the registry's, "
                                    "if it knows one)")
    add_json_option(q)
    q.set_defaults(func=cmd_import)

    q = sub.add_parser("clear", help="delete the entry of a handle or URL (or --all)")
    q.add_argument("handle", nargs="?", help="handle or URL whose entry to delete")
    q.add_argument("--all", action="store_true", help="delete every entry")
    add_json_option(q)
    q.set_defaults(func=cmd_clear)
