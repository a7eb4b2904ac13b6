"""Survey-mosaic benchmark: tiled galseg (1, 2 local workers, Dask) vs SExtractor 2.25.

On a synthetic mosaic from ``make_mosaic.py`` (default 32768 x 32768 with an
rms map, galfind's ``galfind_default`` parameters, ``WEIGHT_TYPE MAP_RMS``):

* ``galseg-1``, ``galseg-2``: `galseg.tiling.extract_tiled` with 1 / 2 local
  worker processes and ``max_memory`` (default 4GB) choosing the tile size,
  writing the segmentation and background maps straight into FITS files;
* ``galseg-dask``: the same on a `distributed.LocalCluster` of 2 single-thread
  worker processes;
* ``sextractor``: SExtractor 2.25 on the same files with the same parameters
  (catalogue + SEGMENTATION and BACKGROUND check images, as galfind asks).

Each method runs in its own child process; the parent samples the memory of
the child's whole process tree (workers included) every 0.2 s and reports the
peak of the summed RSS and of the summed *anonymous* RSS (``RssAnon``: the
process memory proper, without the pages of memory-mapped files, which the
kernel can drop at any time).  Scaling efficiency is
``t(1 worker) / (n * t(n workers))``.

``--compare N`` runs the acceptance check on an N x N mosaic instead: galseg
in one piece (`galseg.extract.run`) against tiled galseg (2 workers, forced
tile size ``--tile`` or the budget's), object by object (count, positions,
FLUX_AUTO to 1e-4) and pixel by pixel (segmentation maps equal up to
relabelling).

    python benchmarks/bench_mosaic.py                      # 32768^2, all methods
    python benchmarks/bench_mosaic.py --size 8192 --methods galseg-1,galseg-2
    python benchmarks/bench_mosaic.py --compare 8192 --tile 2048

Results go to ``benchmarks/results/bench_mosaic[_<size>].json`` (or
``bench_mosaic_compare_<N>.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import make_mosaic  # noqa: E402

RESULTS = HERE / "results"
METHODS = ("galseg-1", "galseg-2", "galseg-dask", "sextractor")
APERTURE_COLUMNS = {"MAG_APER", "MAGERR_APER", "FLUX_APER", "FLUXERR_APER"}


def mosaic_params():
    from galseg.extract.presets import load_config

    return load_config("galfind_default", WEIGHT_TYPE="MAP_RMS",
                       MAG_ZEROPOINT=make_mosaic.ZEROPOINT)


# --------------------------------------------------------------------------- workers (child)
def _worker(method: str, field: Path, out: Path, max_memory: str, tile: int | None) -> dict:
    from astropy.io import fits
    from astropy.wcs import WCS

    from galseg.tiling import extract_tiled

    warnings.simplefilter("ignore")
    hdr = fits.getheader(field / "sci.fits")
    params = mosaic_params()
    t0 = time.perf_counter()
    kwargs = dict(params=params, header=hdr, wcs=WCS(hdr), max_memory=max_memory,
                  tile_size=tile, seg_path=out / "seg.fits", bkg_path=out / "bkg.fits")
    if method == "galseg-dask":
        from distributed import Client, LocalCluster

        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                          dashboard_address=":0", memory_limit=0) as cluster, \
                Client(cluster) as client:
            t_cluster = time.perf_counter() - t0
            res = extract_tiled(field / "sci.fits", rms=field / "rms.fits", scheduler=client,
                                **kwargs)
    else:
        t_cluster = 0.0
        res = extract_tiled(field / "sci.fits", rms=field / "rms.fits",
                            workers=int(method.split("-")[1]), **kwargs)
    run_s = time.perf_counter() - t0
    res.catalog.write(out / "cat.fits", overwrite=True)
    return {"run_s": run_s, "cluster_start_s": t_cluster, "nobj": len(res.catalog),
            "timings": res.meta["timings"], "tiling": res.meta["tiling"]}


def _sextractor_command(field: Path, out: Path) -> list[str]:
    from galseg.extract.presets import filter_path, nnw_path, param_path
    from galseg.extract.sexfiles import _parse_param_entry, read_param, write_sex

    binary = shutil.which("source-extractor") or shutil.which("sex")
    if binary is None:
        raise FileNotFoundError("SExtractor not found (apt-get install source-extractor)")
    params = mosaic_params()
    naper = len(params["PHOT_APERTURES"])
    entries = []
    for entry in read_param(param_path("galfind_default")):
        name, _ = _parse_param_entry(entry, "galfind_default.param")
        entries.append(f"{name}({naper})" if name in APERTURE_COLUMNS else name)
    (out / "run.param").write_text("\n".join(entries) + "\n")
    run_params = params.replace(
        CATALOG_NAME="cat.fits", CATALOG_TYPE="FITS_1.0", PARAMETERS_NAME="run.param",
        CHECKIMAGE_TYPE=("SEGMENTATION", "BACKGROUND"), CHECKIMAGE_NAME=("seg.fits", "bkg.fits"),
        WEIGHT_IMAGE=(str(field / "rms.fits"),), FILTER_NAME=str(filter_path(params)),
        STARNNW_NAME=str(nnw_path(params)), VERBOSE_TYPE="QUIET", WRITE_XML=False,
        XSL_URL="")
    write_sex(run_params, out / "run.sex")
    return [binary, str(field / "sci.fits"), "-c", "run.sex"]


# --------------------------------------------------------------------------- parent
def _tree_memory(pid: int, cpu: dict | None = None) -> tuple[int, int, int]:
    """(summed RSS, summed RssAnon, number of processes) of a process tree, bytes.

    ``cpu`` (pid -> user + system seconds) is updated with each process's CPU
    time: worker processes of a forkserver are not children the benchmark can
    reap, so their CPU time is sampled.
    """
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0, 0, 0
    rss = anon = 0
    n = 0
    for p in procs:
        if cpu is not None:
            try:
                t = p.cpu_times()
                cpu[p.pid] = max(cpu.get(p.pid, 0.0), t.user + t.system)
            except psutil.Error:
                pass
        try:
            with open(f"/proc/{p.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("RssAnon:"):
                        anon += int(line.split()[1]) * 1024
            n += 1
        except OSError:
            continue
    return rss, anon, n


def run_child(command: list[str], cwd: Path, timeout: float) -> dict:
    """Run a child, sampling its process tree's memory; wall time and peaks."""
    import resource

    cwd.mkdir(parents=True, exist_ok=True)
    log = open(cwd / "child.log", "w")
    t0 = time.perf_counter()
    load0 = os.getloadavg()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=log, text=True)
    peak = {"rss": 0, "anon": 0, "nproc": 0}
    cpu: dict = {}
    done = threading.Event()

    def sample():
        while not done.is_set():
            rss, anon, n = _tree_memory(proc.pid, cpu)
            peak["rss"] = max(peak["rss"], rss)
            peak["anon"] = max(peak["anon"], anon)
            peak["nproc"] = max(peak["nproc"], n)
            done.wait(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        out, _ = proc.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        timed_out = True
    done.set()
    th.join()
    log.close()
    # CPU time of the whole tree: the reaped child's own (with what it reaped),
    # or the sampled sum over its processes, whichever is larger
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    reaped = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    cpu_s = max(reaped, sum(cpu.values()))
    return {"returncode": proc.returncode, "wall_s": time.perf_counter() - t0, "cpu_s": cpu_s,
            "peak_rss_gb": peak["rss"] / 1e9, "peak_anon_gb": peak["anon"] / 1e9,
            "processes": peak["nproc"], "timed_out": timed_out, "stdout": out[-2000:],
            "loadavg_start": load0, "loadavg_end": os.getloadavg()}


def _load_cat(path: Path):
    from astropy.table import Table

    if not path.is_file():
        return None
    return Table.read(path, hdu=1)


def compare_catalogues(ref, cat, tol: float = 0.5) -> dict:
    """Nearest-neighbour match of ``cat`` to ``ref`` by pixel position."""
    from scipy.spatial import cKDTree

    if ref is None or cat is None or not len(ref) or not len(cat):
        return {}
    a = np.c_[np.asarray(ref["X_IMAGE"], float), np.asarray(ref["Y_IMAGE"], float)]
    b = np.c_[np.asarray(cat["X_IMAGE"], float), np.asarray(cat["Y_IMAGE"], float)]
    d, j = cKDTree(b).query(a, distance_upper_bound=tol)
    ok = np.isfinite(d)
    fr = np.asarray(cat["FLUX_AUTO"], float)[j[ok]]
    f0 = np.asarray(ref["FLUX_AUTO"], float)[ok]
    good = f0 > 0
    ratio = fr[good] / f0[good]
    return {"n_ref": int(len(ref)), "n": int(len(cat)), "matched_frac": float(ok.mean()),
            "auto_ratio_median": float(np.median(ratio)) if ratio.size else None,
            "auto_within_2pct": float(np.mean(np.abs(ratio - 1) < 0.02)) if ratio.size else None}


def identical(c1, c2) -> dict:
    """Exact agreement between two galseg catalogues (same NUMBER order)."""
    if c1 is None or c2 is None:
        return {}
    same_n = len(c1) == len(c2)
    out = {"same_count": same_n}
    if same_n:
        f1 = np.asarray(c1["FLUX_AUTO"], float)
        f2 = np.asarray(c2["FLUX_AUTO"], float)
        out["flux_auto_identical_frac"] = float(np.mean(f1 == f2))
        out["max_position_diff_px"] = float(np.max(np.abs(
            np.asarray(c1["X_IMAGE"], float) - np.asarray(c2["X_IMAGE"], float)), initial=0))
    return out


def bench(args) -> dict:
    size = args.size
    field = args.field or HERE / ".fields" / f"mosaic_{size}"
    t0 = time.perf_counter()
    make_mosaic.make_mosaic(field, size, seed=args.seed, verbose=True)
    gen_s = time.perf_counter() - t0
    runs = RESULTS / "runs" / f"mosaic_{size}"
    # warm-up: compile (or load) numba's cached kernels once, outside the timings
    small = HERE / ".fields" / "mosaic_1024"
    make_mosaic.make_mosaic(small, 1024, seed=args.seed)
    warm = runs / "warmup"
    warm.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", "galseg-2",
                    "--field", str(small), "--out", str(warm), "--tile", "512"],
                   check=True, capture_output=True)
    shutil.rmtree(warm, ignore_errors=True)
    results = {"created": time.strftime("%Y-%m-%dT%H:%M:%S"),
               "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                           "python": platform.python_version()},
               "settings": {"size": size, "seed": args.seed, "max_memory": args.max_memory,
                            "tile": args.tile, "preset": "galfind_default",
                            "weight_type": "MAP_RMS"},
               "mosaic": {"dir": str(field), "generate_s": gen_s,
                          "recipe": json.loads((field / "mosaic.json").read_text())},
               "methods": {}}
    for method in args.methods:
        out = runs / method
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        print(f"[{time.strftime('%H:%M:%S')}] {method} ...", file=sys.stderr, flush=True)
        if method == "sextractor":
            cmd = _sextractor_command(field, out)
        else:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", method,
                   "--field", str(field), "--out", str(out), "--max-memory", args.max_memory]
            if args.tile:
                cmd += ["--tile", str(args.tile)]
        r = run_child(cmd, out, args.timeout)
        if method != "sextractor" and r["returncode"] == 0:
            try:
                r.update(json.loads(r["stdout"].strip().splitlines()[-1]))
            except (ValueError, IndexError):
                pass
        r.pop("stdout", None)
        cat = _load_cat(out / "cat.fits")
        r["nobj"] = None if cat is None else len(cat)
        results["methods"][method] = r
        print(f"    wall {r['wall_s']:.1f} s, cpu {r['cpu_s']:.1f} s, peak RSS {r['peak_rss_gb']:.2f} GB "
              f"(anon {r['peak_anon_gb']:.2f} GB), nobj {r['nobj']}", file=sys.stderr, flush=True)
        if not args.keep:  # the maps are GBs: keep the catalogues only
            for name in ("seg.fits", "bkg.fits"):
                (out / name).unlink(missing_ok=True)
    m = results["methods"]
    if "galseg-1" in m:
        t1 = m["galseg-1"]["wall_s"]
        for k, n in (("galseg-2", 2), ("galseg-dask", 2)):
            if k in m and m[k].get("returncode") == 0:
                m[k]["speedup"] = t1 / m[k]["wall_s"]
                m[k]["scaling_efficiency"] = t1 / (n * m[k]["wall_s"])
    cats = {k: _load_cat(runs / k / "cat.fits") for k in m}
    ref = cats.get("galseg-1")
    for k in ("galseg-2", "galseg-dask"):
        if k in cats and ref is not None:
            m[k]["vs_galseg-1"] = identical(ref, cats[k])
    if cats.get("sextractor") is not None and ref is not None:
        m["galseg-1"]["vs_sextractor"] = compare_catalogues(cats["sextractor"], ref)
    return results


# --------------------------------------------------------------------------- compare mode
def compare(args) -> dict:
    """One piece vs tiles on an N^2 mosaic (in this process, sequentially)."""
    from astropy.io import fits
    from astropy.wcs import WCS

    from galseg.extract import run
    from galseg.tiling import extract_tiled

    warnings.simplefilter("ignore")
    n = args.compare
    field = HERE / ".fields" / f"mosaic_{n}"
    make_mosaic.make_mosaic(field, n, seed=args.seed, verbose=True)
    sci = fits.getdata(field / "sci.fits").astype(np.float32)
    rms = fits.getdata(field / "rms.fits").astype(np.float32)
    hdr = fits.getheader(field / "sci.fits")
    params = mosaic_params()
    t0 = time.perf_counter()
    one = run(sci, rms=rms, params=params, header=hdr, wcs=WCS(hdr))
    t_one = time.perf_counter() - t0
    del sci, rms
    t0 = time.perf_counter()
    til = extract_tiled(field / "sci.fits", rms=field / "rms.fits", params=params, header=hdr,
                        wcs=WCS(hdr), tile_size=args.tile, max_memory=args.max_memory,
                        workers=2)
    t_til = time.perf_counter() - t0
    c1, c2 = one.catalog, til.catalog
    out = {"size": n, "untiled_s": t_one, "tiled_s": t_til, "tiling": til.meta["tiling"],
           "n_untiled": len(c1), "n_tiled": len(c2), "same_count": len(c1) == len(c2)}
    # match object by object (NUMBERs are the same by construction: check positions)
    k = min(len(c1), len(c2))
    dx = np.hypot(np.asarray(c1["X_IMAGE"][:k], float) - np.asarray(c2["X_IMAGE"][:k], float),
                  np.asarray(c1["Y_IMAGE"][:k], float) - np.asarray(c2["Y_IMAGE"][:k], float))
    f1 = np.asarray(c1["FLUX_AUTO"][:k], float)
    f2 = np.asarray(c2["FLUX_AUTO"][:k], float)
    rel = np.abs(f2 - f1) / np.maximum(np.abs(f1), 1e-30)
    match = (dx < 1e-6) & (rel <= 1e-4)
    out.update({"max_position_diff_px": float(dx.max(initial=0)),
                "frac_position_and_flux_auto_1e-4": float(match.mean()) if k else None,
                "frac_flux_auto_identical": float(np.mean(f1 == f2)) if k else None})
    for col in c1.colnames:
        a, b = np.asarray(c1[col][:k]), np.asarray(c2[col][:k])
        if a.dtype.kind == "f":
            eq = (a == b) | (np.isnan(a) & np.isnan(b))
        else:
            eq = a == b
        eq = eq.reshape(k, -1).all(axis=1) if k else eq
        out.setdefault("columns_identical_frac", {})[col] = float(eq.mean()) if k else None
    # segmentation maps equal up to relabelling: the label pairs form a bijection
    s1 = one.segmap
    s2 = np.asarray(til.segmap).astype(np.int32)
    both = (s1 > 0) | (s2 > 0)
    pairs = np.unique(np.c_[s1[both], s2[both]], axis=0)
    bijection = (len(np.unique(pairs[:, 0])) == len(pairs) == len(np.unique(pairs[:, 1]))
                 and not np.any(pairs == 0))
    out.update({"segmap_identical": bool(np.array_equal(s1, s2)),
                "segmap_equal_up_to_relabelling": bool(bijection),
                "background_identical": bool(np.array_equal(
                    one.background, np.asarray(til.background).astype(np.float32)))})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=32768)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--max-memory", default="4GB")
    ap.add_argument("--tile", type=int, default=None, help="force the core size (pixels)")
    ap.add_argument("--timeout", type=float, default=7200)
    ap.add_argument("--keep", action="store_true", help="keep the seg/bkg maps of each run")
    ap.add_argument("--compare", type=int, default=None, metavar="N",
                    help="one piece vs tiles on an N x N mosaic")
    ap.add_argument("--field", type=Path, default=None)
    ap.add_argument("--tag", default="", help="suffix of the results file name")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        res = _worker(a.worker, a.field, a.out, a.max_memory, a.tile)
        print(json.dumps(res))
        return 0
    RESULTS.mkdir(parents=True, exist_ok=True)
    if a.compare:
        res = compare(a)
        path = RESULTS / f"bench_mosaic_compare_{a.compare}.json"
    else:
        a.methods = [m.strip() for m in a.methods.split(",") if m.strip()]
        bad = set(a.methods) - set(METHODS)
        if bad:
            ap.error(f"unknown method(s) {', '.join(sorted(bad))}; choose from {', '.join(METHODS)}")
        res = bench(a)
        stem = "bench_mosaic" if a.size == 32768 else f"bench_mosaic_{a.size}"
        path = RESULTS / (stem + (f"_{a.tag}" if a.tag else "") + ".json")
    path.write_text(json.dumps(res, indent=1, default=str) + "\n")
    print(json.dumps(res, indent=1, default=str))
    print(f"-> {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
