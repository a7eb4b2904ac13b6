"""The ``galseg`` command.

Argument parsing, progress and exit codes only: every command calls the
library.  Errors print as one line on stderr with exit code 1 (2 for usage
errors); ``--debug`` shows the traceback.  ``--json`` prints machine-readable
results on stdout (progress and summaries go to stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ._version import __version__

EXAMPLES = """\
examples:
  galseg demo                                   segment the XDF sample shipped with galseg
  galseg segment XDF v1 --data-dir ../shared/data --bands F160W F125W
  galseg segment XDF v1 --config test --set DETECT_THRESH=3 --overwrite --workers 2
  galseg segment XDF v1 --scheduler tcp://scheduler:8786
  galseg stack XDF v1 F105W+F125W+F140W+F160W --segment
  galseg forced XDF v1 --detection F105W+F125W+F140W+F160W --json
  galseg plot XDF-demo v1 --bands F160W --overlay -o f160w.png
  galseg export XDF-demo v1 --format geojson -o exports/
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


def _summary_rows(data):
    rows = []
    for band, info in zip(data, data.segment_summary):
        rows.append({
            "filter": band.filt,
            "detections": info["nobj"],
            "time_s": round(info["seconds"], 3),
            "from_cache": info["status"] != "computed",
            "products": info["stem"] + "_{seg,bkg,cat}",
            "seg_path": str(band.seg_path),
            "bkg_path": str(band.bkg_path),
            "cat_path": str(band.cat_path),
        })
    return rows


_TABLE_KEYS = ("filter", "detections", "time_s", "from_cache", "products")


def _print_table(rows, keys, stream=sys.stdout):
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in keys}
    print("  ".join(f"{k:<{widths[k]}}" for k in keys), file=stream)
    print("  ".join("-" * widths[k] for k in keys), file=stream)
    for r in rows:
        print("  ".join(f"{str(r[k]):<{widths[k]}}" for k in keys), file=stream)


def _emit(args, result: dict):
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")


def _load_data(args):
    from .imaging import Data

    return Data.from_survey_version(args.survey, args.version, args.instruments, filters=args.bands,
                                    data_dir=args.data_dir, work_dir=args.work_dir)


def _seg_kwargs(args):
    return dict(err_type=args.err_type, method=args.method, config=args.config,
                progress=not args.json, **_parse_set(args.set))


def _segment(data, args):
    from .extract._kernels import kernels_cached

    if not kernels_cached() and not getattr(args, "json", False):
        print("compiling galseg's kernels (once per installation, about 30 s) ...",
              file=sys.stderr)
    data.segment(overwrite=args.overwrite, workers=args.workers, scheduler=args.scheduler,
                 **_seg_kwargs(args))
    return _summary_rows(data)


def _cmd_demo(args):
    from .imaging import Data

    data = Data.from_survey_version("XDF-demo", "v1", work_dir=args.work_dir)
    if not args.json:
        print(f"galseg {__version__} demo: HST XDF sample, {len(data)} bands, "
              f"products under {Path(data[0].work_dir).resolve()}", file=sys.stderr)
    rows = _segment(data, args)
    plot_path = None
    if not args.no_plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        band = data["F160W"]
        fig, axes = plt.subplots(1, 2, figsize=(12, 6))
        band.plot("SCI", ax=axes[0], show=False)
        band.plot("SEG", ax=axes[1], show=False)
        plot_path = Path(data[0].work_dir) / "demo_F160W_seg.png"
        fig.savefig(plot_path, dpi=110, bbox_inches="tight")
        plt.close(fig)
    if args.json:
        print(json.dumps({"bands": rows, "plot": str(plot_path) if plot_path else None}, indent=2))
    else:
        _print_table(rows, _TABLE_KEYS)
        if plot_path:
            print(f"SEG plot: {plot_path}")
    return 0


def _cmd_segment(args):
    rows = _segment(_load_data(args), args)
    if args.json:
        print(json.dumps({"bands": rows}, indent=2))
    else:
        _print_table(rows, _TABLE_KEYS)
    return 0


def _cmd_stack(args):
    band = _load_data(args).stack(args.stack_bands, overwrite=args.overwrite)
    out = {"band": band.filt, "sci": str(band.im_path), "wht": str(band.wht_path), "zp": band.zp}
    if args.segment:
        kwargs = _seg_kwargs(args)
        kwargs.pop("progress")
        band.segment(overwrite=args.overwrite, **kwargs)
        out.update(detections=len(band.load_cat()), seg_path=str(band.seg_path),
                   cat_path=str(band.cat_path))
    _emit(args, out)
    return 0


def _cmd_forced(args):
    data = _load_data(args)
    data.perform_forced_phot(args.detection, overwrite=args.overwrite, workers=args.workers,
                             scheduler=args.scheduler, **_seg_kwargs(args))
    cat = data.load_cat()
    _emit(args, {"catalogue": str(data.cat_path), "objects": len(cat),
                 "columns": len(cat.colnames), "bands": data.filters})
    return 0


def _cmd_plot(args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = _load_data(args)
    if args.ext in ("SEG", "BKG") or args.overlay:
        data.segment(workers=args.workers, scheduler=args.scheduler, **_seg_kwargs(args))
    out = Path(args.output)
    if len(data) == 1 and args.overlay:
        data[0].plot_overlay(show=False, save=out)
    elif len(data) == 1:
        data[0].plot(args.ext, show=False, save=out)
    else:
        data.plot(args.ext, overlay=args.overlay, show=False, save=out)
    plt.close("all")
    _emit(args, {"plot": str(out)})
    return 0


def _cmd_export(args):
    data = _load_data(args)
    data.segment(workers=args.workers, scheduler=args.scheduler, **_seg_kwargs(args))
    out = data.export(args.output, format=args.format)
    if isinstance(out, dict):
        out = list(out.values())
    paths = [str(p) for p in (out if isinstance(out, (list, tuple)) else [out])]
    _emit(args, {"files": paths})
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
            table["kind", "survey", "version", "instrument", "weight_type", "filt", "label",
                  "detection", "hash", "created", "nobj", "valid", "size",
                  "reason"].pprint(max_lines=-1, max_width=-1)
            print(f"{len(table)} cached items, {int((~table['valid']).sum())} invalid, "
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
        # Accepted after the command too; SUPPRESS keeps it from resetting a global --debug.
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help=argparse.SUPPRESS)

    def data_options(p):
        p.add_argument("survey")
        p.add_argument("version")
        p.add_argument("--bands", nargs="+", default=None, help="filters (default: all)")
        p.add_argument("--instruments", nargs="+", default=None)
        p.add_argument("--data-dir", type=Path, default=None, help="root of the imaging tree")

    def seg_options(p, parallel=True):
        p.add_argument("--err-type", choices=("rms_err", "wht"), default="rms_err",
                       help="noise map: rms_err (MAP_RMS) or wht (MAP_WEIGHT, rescaled)")
        p.add_argument("--method", choices=("sep", "sextractor", "photutils"), default="sep")
        p.add_argument("--config", default="galfind_default", help="preset name or .sex file")
        p.add_argument("--set", action="append", metavar="NAME=VALUE",
                       help="SExtractor parameter override, e.g. --set DETECT_THRESH=2.5")
        p.add_argument("--overwrite", action="store_true", help="recompute cached products")
        if parallel:
            group = p.add_mutually_exclusive_group()
            group.add_argument("--workers", type=int, default=None,
                               help="local worker processes (default: one per CPU; 1 = serial)")
            group.add_argument("--scheduler", default=None, metavar="ADDRESS",
                               help="Dask scheduler address, e.g. tcp://host:8786")

    p = sub.add_parser("demo", help="segment the XDF sample shipped with galseg")
    common(p)
    seg_options(p)
    p.add_argument("--no-plot", action="store_true", help="do not write the SEG plot PNG")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("segment", help="segment the bands of a survey/version")
    data_options(p)
    common(p)
    seg_options(p)
    p.set_defaults(func=_cmd_segment)

    p = sub.add_parser("stack", help="inverse-variance stack of bands (a detection band)")
    data_options(p)
    p.add_argument("stack_bands", metavar="BANDS", help='bands to stack, e.g. "F277W+F356W+F444W"')
    p.add_argument("--segment", action="store_true", help="also segment the stack")
    common(p)
    seg_options(p, parallel=False)
    p.set_defaults(func=_cmd_stack)

    p = sub.add_parser("forced", help="forced photometry of every band and the joined catalogue")
    data_options(p)
    p.add_argument("--detection", required=True,
                   help='detection band or stack, e.g. F444W or "F277W+F356W+F444W"')
    common(p)
    seg_options(p)
    p.set_defaults(func=_cmd_forced)

    p = sub.add_parser("plot", help="write an image of one extension of the bands")
    data_options(p)
    p.add_argument("--ext", default="SEG", type=str.upper,
                   choices=("SCI", "RMS_ERR", "WHT", "SEG", "BKG", "MASK"))
    p.add_argument("--overlay", action="store_true", help="segments over the image")
    p.add_argument("-o", "--output", required=True, help="output file (PNG, PDF ...)")
    common(p)
    seg_options(p)
    p.set_defaults(func=_cmd_plot)

    p = sub.add_parser("export", help="export segmentations: ds9, index-png, geojson, areas")
    data_options(p)
    p.add_argument("--format", default="ds9", choices=("ds9", "index-png", "geojson", "areas"))
    p.add_argument("-o", "--output", required=True, help="output directory")
    common(p)
    seg_options(p)
    p.set_defaults(func=_cmd_export)

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
        text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        msg = str(text).strip().splitlines()[0] if str(text).strip() else type(exc).__name__
        print(f"galseg: error: {msg}", file=sys.stderr)
        return 1


def run() -> None:
    """Console-script entry point: `main`, then exit without a final garbage collection.

    Freezing the objects still alive spares Python's last full collection at
    interpreter exit (~0.3 s after a run); only done here, never inside
    `main`, which tests and notebooks call in a long-lived process.
    """
    import gc

    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    run()
