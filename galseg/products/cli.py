"""``galseg cache list|clean``: show and prune the product cache.

Runs as ``python -m galseg.products ...``; the main ``galseg`` command can
mount it with `add_cache_parser` and dispatch to `run`.
"""

from __future__ import annotations

import argparse
import sys

from .manage import clean, list_products

__all__ = ["add_cache_parser", "run", "main"]


def _add_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("work_dir", help="galseg work directory (root of the product tree)")
    p.add_argument("--survey")
    p.add_argument("--instrument")
    p.add_argument("--version", dest="data_version", metavar="VERSION")
    p.add_argument("--filt", help="filter name")


def add_cache_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``cache`` command (with ``list`` and ``clean``) to an argparse subparsers object."""
    cache = subparsers.add_parser("cache", help="show and prune segmentation products")
    sub = cache.add_subparsers(dest="cache_command", required=True)
    p_list = sub.add_parser("list", help="list products and whether they are valid")
    _add_filters(p_list)
    p_list.add_argument("--check-inputs", action="store_true",
                        help="also check that the input images are unchanged")
    p_clean = sub.add_parser(
        "clean", help="remove invalid/incomplete products, orphan temp files and stale locks")
    _add_filters(p_clean)
    p_clean.add_argument("--all", action="store_true",
                         help="also remove valid products in the selection")
    p_clean.add_argument("--older-than", metavar="AGE",
                         help="only products older than AGE (e.g. 30m, 12h, 7d)")
    p_clean.add_argument("--dry-run", action="store_true", help="show, do not remove")
    return cache


def run(args: argparse.Namespace) -> int:
    """Execute a parsed ``cache`` command; returns the exit status."""
    filters = dict(survey=args.survey, instrument=args.instrument,
                   version=args.data_version, filt=args.filt)
    if args.cache_command == "list":
        table = list_products(args.work_dir, check_inputs=args.check_inputs, **filters)
        if len(table) == 0:
            print(f"no products under {args.work_dir}")
            return 0
        show = table["survey", "version", "instrument", "weight_type", "filt", "label", "hash",
                      "created", "nobj", "valid", "size", "reason"]
        show.pprint(max_lines=-1, max_width=-1)
        nbad = int((~table["valid"]).sum())
        print(f"{len(table)} products, {nbad} invalid, "
              f"{table['size'].sum() / 1e6:.1f} MB")
        return 0
    removed = clean(args.work_dir, invalid_only=not args.all, older_than=args.older_than,
                    dry_run=args.dry_run, **filters)
    verb = "would remove" if args.dry_run else "removed"
    for p in removed:
        print(f"{verb} {p}")
    print(f"{verb} {len(removed)} files")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m galseg.products",
                                     description="galseg product cache")
    sub = parser.add_subparsers(dest="command", required=True)
    add_cache_parser(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    # Accept both "python -m galseg.products list ..." and "... cache list ...".
    if argv and argv[0] in ("list", "clean"):
        argv = ["cache"] + argv
    try:
        return run(parser.parse_args(argv))
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
