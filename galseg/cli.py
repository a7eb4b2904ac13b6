"""The ``galseg`` command.

Argument parsing, progress and exit codes only: every command calls the
library.  Errors print as one line on stderr with exit code 1 (2 for usage
errors); ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ._version import __version__

EXAMPLES = """\
examples:
  galseg demo                                   segment the XDF sample shipped with galseg
  galseg segment XDF v1 --data-dir ../shared/data --bands F160W F125W
  galseg segment XDF v1 --config test --set DETECT_THRESH=3 --overwrite
  galseg cache list --json
  galseg cache clean --dry-run
"""


def _parse_set(items):
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--set expects NAME=VALUE, got {item!r}")
        name, value = item.split("=", 1)
        out[name.strip().upper()] = value.strip()
    return out


def _summary_rows(data, results):
    rows = []
    for band in data:
        info = results[band.filt]
        rows.append({
            "filter": band.filt,
            "detections": info["nobj"],
            "time_s": round(info["time_s"], 3),
            "from_cache": info["from_cache"],
            "products": str(band.seg_path.name).removesuffix("_seg.fits") + "_{seg,bkg,cat}",
        })
    return rows


def _print_table(rows, stream=sys.stdout):
    if not rows:
        return
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in keys}
    print("  ".join(f"{k:<{widths[k]}}" for k in keys), file=stream)
    print("  ".join("-" * widths[k] for k in keys), file=stream)
    for r in rows:
        print("  ".join(f"{str(r[k]):<{widths[k]}}" for k in keys), file=stream)


def _segment_all(data, *, err_type, method, config, overrides, overwrite, progress):
    results = {}
    for band in data:
        t0 = time.perf_counter()
        band.segment(err_type=err_type, method=method, config=config, overwrite=overwrite, **overrides)
        results[band.filt] = {
            "nobj": len(band.load_cat()),
            "time_s": time.perf_counter() - t0,
            "from_cache": bool(band.seg_args and band.seg_args.get("from_cache")),
        }
        if progress:
            state = "cached" if results[band.filt]["from_cache"] else "done"
            print(f"  {band.filt:<8} {results[band.filt]['nobj']:>6} objects  "
                  f"{results[band.filt]['time_s']:.2f} s  ({state})", file=sys.stderr)
    return results


def _cmd_demo(args):
    from .imaging import Data

    data = Data.from_survey_version("XDF-demo", "v1", work_dir=args.work_dir)
    if not args.json:
        print(f"galseg {__version__} demo: HST XDF sample, {len(data)} bands, "
              f"products under {Path(data[0].work_dir).resolve()}", file=sys.stderr)
    results = _segment_all(data, err_type=args.err_type, method=args.method, config="galfind_default",
                           overrides={}, overwrite=args.overwrite, progress=not args.json)
    rows = _summary_rows(data, results)
    plot_path = None
    if not args.no_plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from .plot.images import plot_band

        band = data["F160W"]
        fig, axes = plt.subplots(1, 2, figsize=(12, 6))
        plot_band(band, "SCI", ax=axes[0], show=False)
        plot_band(band, "SEG", ax=axes[1], show=False)
        plot_path = Path(data[0].work_dir) / "demo_F160W_seg.png"
        fig.savefig(plot_path, dpi=110, bbox_inches="tight")
        plt.close(fig)
    if args.json:
        for row, band in zip(rows, data):
            row.update(seg_path=str(band.seg_path), bkg_path=str(band.bkg_path), cat_path=str(band.cat_path))
        print(json.dumps({"bands": rows, "plot": str(plot_path) if plot_path else None}, indent=2))
    else:
        _print_table(rows)
        if plot_path:
            print(f"SEG plot: {plot_path}")
    return 0


def _cmd_segment(args):
    from .imaging import Data

    data = Data.from_survey_version(args.survey, args.version, args.instruments, filters=args.bands,
                                    data_dir=args.data_dir, work_dir=args.work_dir)
    results = _segment_all(data, err_type=args.err_type, method=args.method, config=args.config,
                           overrides=_parse_set(args.set), overwrite=args.overwrite,
                           progress=not args.json)
    rows = _summary_rows(data, results)
    if args.json:
        print(json.dumps({"bands": rows}, indent=2))
    else:
        _print_table(rows)
    return 0


def _cmd_cache(args):
    from .config import settings
    from .products import clean, list_products

    work_dir = args.work_dir or settings()["work_dir"]
    filters = dict(survey=args.survey, instrument=args.instrument, version=args.data_version,
                   filt=args.filt)
    if args.action == "list":
        table = list_products(work_dir, check_inputs=args.check_inputs, **filters)
        if args.json:
            rows = [{k: (v.item() if hasattr(v, "item") else v) for k, v in zip(table.colnames, row)}
                    for row in table]
            print(json.dumps(rows, indent=2, default=str))
        elif len(table) == 0:
            print(f"no products under {work_dir}")
        else:
            table["survey", "version", "instrument", "weight_type", "filt", "label", "hash",
                  "created", "nobj", "valid", "size", "reason"].pprint(max_lines=-1, max_width=-1)
            print(f"{len(table)} products, {int((~table['valid']).sum())} invalid, "
                  f"{table['size'].sum() / 1e6:.1f} MB")
        return 0
    removed = clean(work_dir, invalid_only=not args.all, older_than=args.older_than,
                    dry_run=args.dry_run, **filters)
    verb = "would remove" if args.dry_run else "removed"
    if args.json:
        print(json.dumps({verb.replace(" ", "_"): [str(p) for p in removed]}, indent=2))
    else:
        for p in removed:
            print(f"{verb} {p}")
        print(f"{verb} {len(removed)} file(s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="galseg", description="SExtractor-faithful source extraction on sep, with a product cache.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"galseg {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def common(p):
        p.add_argument("--work-dir", type=Path, default=None, help="product tree (default: settings)")
        p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
        p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    def seg_options(p):
        p.add_argument("--err-type", choices=("rms_err", "wht"), default="rms_err")
        p.add_argument("--method", choices=("sep", "sextractor", "photutils"), default="sep")
        p.add_argument("--overwrite", action="store_true", help="recompute cached products")

    p = sub.add_parser("demo", help="segment the XDF sample shipped with galseg")
    common(p)
    seg_options(p)
    p.add_argument("--no-plot", action="store_true", help="do not write the SEG plot PNG")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("segment", help="segment the bands of a survey/version")
    p.add_argument("survey")
    p.add_argument("version")
    p.add_argument("--bands", nargs="+", default=None, help="filters (default: all)")
    p.add_argument("--instruments", nargs="+", default=None)
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--config", default="galfind_default", help="preset name or .sex file")
    p.add_argument("--set", action="append", metavar="NAME=VALUE", help="SExtractor parameter override")
    common(p)
    seg_options(p)
    p.set_defaults(func=_cmd_segment)

    p = sub.add_parser("cache", help="list or prune cached products")
    p.add_argument("action", choices=("list", "clean"),
                   help="list: products and whether they are valid; clean: remove invalid or "
                        "incomplete products, orphan temp files and stale locks")
    p.add_argument("--survey")
    p.add_argument("--instrument")
    p.add_argument("--data-version", metavar="VERSION")
    p.add_argument("--filt", help="filter name")
    p.add_argument("--check-inputs", action="store_true", help="list: also check input images")
    p.add_argument("--all", action="store_true", help="clean: also remove valid products")
    p.add_argument("--older-than", metavar="AGE", help="clean: only products older than AGE (30m, 7d)")
    p.add_argument("--dry-run", action="store_true", help="clean: only say what would go")
    common(p)
    p.set_defaults(func=_cmd_cache)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("galseg: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one clear line, traceback only on request
        if args.debug:
            raise
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"galseg: error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
