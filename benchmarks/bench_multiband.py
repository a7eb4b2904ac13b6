"""Multi-band end-to-end benchmark: 9 KiDS/VIKING bands, galseg vs SExtractor as galfind runs it.

The field is the shared KiDS u,g,r,i + VIKING Z,Y,J,H,Ks tile (2600 x 2600,
pixel-aligned; ``../shared/data/kids_viking``), decompressed once into
``benchmarks/.fields/kids_viking_<size>/`` as uncompressed float32 FITS (both
galseg and SExtractor read the same files), with an rms map per band (sep's
background rms, 64-px meshes: the tiles come without weights).  ``--size``
crops the centre for a reduced-scale run.  Zero points are set to 30 for every
band (ProFound's VIKING value; the KiDS bands' unit is unknown, which changes
magnitudes only).

End to end means what galfind does for a catalogue:

1. segment every band on its own (``Data.segment``; galfind's ``make_sex_cats``);
2. stack the detection band (``--det``, default the VIKING ``Z+Y+J+H+Ks``),
   segment it, and measure every band in dual-image mode on its sources
   (``Data.perform_forced_phot``);
3. join the per-band catalogues by NUMBER.

Modes (each in a fresh child process, products in a fresh work directory):

``serial``   galseg, ``workers=1`` (one process; numba kernels on all cores)
``serial1``  galseg, ``workers=1`` on one core (``NUMBA_NUM_THREADS=1``): the
             baseline for the process-level scaling of ``pool2``
``pool2``    galseg, 2 local worker processes (one core each)
``dask``     galseg on a ``distributed.LocalCluster(n_workers=2, threads_per_worker=1)``
             (cluster start-up reported separately)
``sextractor`` SExtractor 2.25 run per band in sequence, as galfind does:
             ``sex band.fits`` with SEGMENTATION and -BACKGROUND check images for
             each band and the stack, then ``sex det.fits,band.fits`` per band; the
             stack is made by galseg's `stack_bands` (galfind stacks with numpy the
             same way) and the catalogues joined with galseg's `join_forced`.

Before timing, an untimed warm-up run on a 400 x 400 crop compiles/loads
galseg's numba kernels, so the modes are compared without JIT compilation.
The table gives wall seconds per stage; targets (reported, not asserted):
pool2 >= 1.8 x serial, galseg end to end <= 0.3 x SExtractor.  First, a probe
measures what two processes gain over one on this machine, for compute-bound
and for memory-bound work (frames the size of a band): the ceiling of pool2's
speed-up (``--no-scaling`` skips it).  Results go to
stdout and ``benchmarks/results/bench_multiband.json``.

::

    python benchmarks/bench_multiband.py                # full size, all modes
    python benchmarks/bench_multiband.py --size 1300    # reduced scale
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = REPO.parent / "shared" / "data" / "kids_viking"
FIELDS = HERE / ".fields"
RESULTS = HERE / "results"
BANDS = ["u", "g", "r", "i", "Z", "Y", "J", "H", "Ks"]
VIKING = {"Z", "Y", "J", "H", "Ks"}
PIX_SCALE = 0.339
ZP = 30.0
RECIPE = 1
MODES = ("serial", "serial1", "pool2", "dask", "sextractor")


# ---------------------------------------------------------------- inputs
def prepare_field(size: int) -> Path:
    """Uncompressed float32 science images and rms maps of the (cropped) tile."""
    import sep
    from astropy.io import fits

    folder = FIELDS / f"kids_viking_{size}"
    recipe = {"recipe": RECIPE, "size": size, "bands": BANDS, "rms": "sep.Background bw=bh=64"}
    stamp = folder / "field.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == recipe:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for b in BANDS:
        with fits.open(SHARED / f"{b}.fits") as hdul:
            data = np.array(hdul[1].data, dtype=np.float32)
        ny, nx = data.shape
        y0, x0 = (ny - size) // 2, (nx - size) // 2
        data = np.ascontiguousarray(data[y0:y0 + size, x0:x0 + size])
        rms = sep.Background(data, bw=64, bh=64, fw=3, fh=3).rms().astype(np.float32)
        hdr = fits.Header({"MAGZERO": ZP, "PIXSCALE": PIX_SCALE})
        fits.PrimaryHDU(data, header=hdr).writeto(folder / f"{b}_sci.fits", overwrite=True)
        fits.PrimaryHDU(rms).writeto(folder / f"{b}_rms.fits", overwrite=True)
    stamp.write_text(json.dumps(recipe))
    return folder


def make_data(folder: Path, work: Path):
    from galseg.imaging.band import Band_Data
    from galseg.imaging.data import Data

    return Data([
        Band_Data("KiDS-VIKING", "bench", "VIRCAM" if b in VIKING else "OmegaCAM",
                  b, folder / f"{b}_sci.fits", 0, rms_err_path=folder / f"{b}_rms.fits",
                  pix_scale=PIX_SCALE, zp=ZP, work_dir=work)
        for b in BANDS
    ])


# ---------------------------------------------------------------- galseg modes
def run_galseg(mode: str, folder: Path, work: Path, det: str) -> dict:
    data = make_data(folder, work)
    kw, out = {}, {"mode": mode}
    cluster = client = None
    t0 = time.perf_counter()
    if mode == "pool2":
        kw = {"workers": 2}
    elif mode in ("serial", "serial1"):
        kw = {"workers": 1}
    elif mode == "dask":
        from distributed import Client, LocalCluster

        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster)
        kw = {"scheduler": client}
        out["cluster_start_s"] = time.perf_counter() - t0
    try:
        t1 = time.perf_counter()
        data.segment(progress=False, **kw)
        t2 = time.perf_counter()
        data.perform_forced_phot(det, progress=False, **kw)
        t3 = time.perf_counter()
    finally:
        if client is not None:
            client.close()
            cluster.close()
    cat = data.load_cat()
    out.update(segment_s=t2 - t1, forced_s=t3 - t2, total_s=t3 - t1,
               nobj_bands={r["filt"]: r["nobj"] for r in data.segment_summary},
               band_seconds={"segment": {r["filt"]: round(r["seconds"], 3)
                                         for r in data.segment_summary},
                             "forced": {r["filt"]: round(r["seconds"], 3)
                                        for r in data.forced_phot.rows}},
               band_cpu_s=sum(r["cpu_seconds"] or 0 for r in data.segment_summary)
               + sum(r["cpu_seconds"] or 0 for r in data.forced_phot.rows),
               nobj_catalogue=len(cat), catalogue=str(data.cat_path),
               forced_cats={f: str(p) for f, p in data.forced_phot.cat_paths.items()})
    return out


# ---------------------------------------------------------------- SExtractor as galfind
def _sex_files(tmp: Path, naper: int):
    from galseg.extract.presets import filter_path, load_config, nnw_path, param_path, \
        preset_path

    params = load_config("galfind_default")
    lines = [ln.replace("(1)", f"({naper})") for ln in param_path("galseg").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    (tmp / "cols.param").write_text("\n".join(lines) + "\n")
    return [str(preset_path("galfind_default")), str(tmp / "cols.param"),
            str(filter_path(params)), str(nnw_path(params))]


def run_sextractor(folder: Path, work: Path, det: str) -> dict:
    from astropy.io import fits
    from astropy.table import Table

    from galseg.extract.backends.sextractor import find_binary
    from galseg.pipeline.band import band_params
    from galseg.pipeline.catalog import join_forced

    binary = find_binary()
    data = make_data(folder, work)
    tmp = work / "sextractor"
    tmp.mkdir(parents=True, exist_ok=True)
    params = band_params(data[0], "rms_err")
    apers = ",".join(repr(float(d)) for d in params["PHOT_APERTURES"])
    sexfile, paramfile, conv, nnw = _sex_files(tmp, len(params["PHOT_APERTURES"]))

    def sex(images: str, weights: str, wtype: str, name: str, check: bool):
        cmd = [binary, images, "-c", sexfile, "-PARAMETERS_NAME", paramfile,
               "-FILTER_NAME", conv, "-STARNNW_NAME", nnw, "-WEIGHT_TYPE", wtype,
               "-WEIGHT_IMAGE", weights, "-PIXEL_SCALE", str(PIX_SCALE),
               "-MAG_ZEROPOINT", str(ZP), "-PHOT_APERTURES", apers,
               "-CATALOG_NAME", str(tmp / f"{name}.fits"), "-CATALOG_TYPE", "FITS_1.0",
               "-VERBOSE_TYPE", "QUIET"]
        if check:
            cmd += ["-CHECKIMAGE_TYPE", "SEGMENTATION,-BACKGROUND", "-CHECKIMAGE_NAME",
                    f"{tmp / name}_seg.fits,{tmp / name}_bkg.fits"]
        else:
            cmd += ["-CHECKIMAGE_TYPE", "NONE"]
        proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"SExtractor failed: {' '.join(cmd)}\n{proc.stderr}")

    t1 = time.perf_counter()
    for b in data:
        sex(str(b.im_path), str(b.rms_err_path), "MAP_RMS", b.filt, True)
    t2 = time.perf_counter()
    stack = data.stack(det)
    det_rms = stack.write_derived("rms_err")
    t_stack = time.perf_counter() - t2
    sex(str(stack.im_path), str(det_rms), "MAP_RMS", "det", True)
    for b in data:
        sex(f"{stack.im_path},{b.im_path}", f"{det_rms},{b.rms_err_path}", "MAP_RMS,MAP_RMS",
            f"forced_{b.filt}", False)
    cats = {}
    for b in data:
        with fits.open(tmp / f"forced_{b.filt}.fits") as hdul:
            cats[b.filt] = Table(hdul[1].data)
    joined = join_forced(cats)
    t3 = time.perf_counter()
    return {"mode": "sextractor", "segment_s": t2 - t1, "forced_s": t3 - t2, "stack_s": t_stack,
            "total_s": t3 - t1, "nobj_catalogue": len(joined),
            "forced_cats": {b.filt: str(tmp / f"forced_{b.filt}.fits") for b in data}}


def agreement(galseg_cats: dict, sex_cats: dict) -> dict:
    """Per band: fraction of SExtractor's objects with all FLUX_APER within 0.5 %."""
    from astropy.io import fits
    from astropy.table import Table

    out = {}
    for filt, path in galseg_cats.items():
        ours = Table.read(path, hdu=1)
        with fits.open(sex_cats[filt]) as hdul:
            ref = Table(hdul[1].data)
        common, io, ir = np.intersect1d(ours["NUMBER"], ref["NUMBER"], return_indices=True)
        o, r = ours[io], ref[ir]
        same = np.hypot(np.asarray(o["X_IMAGE"]) - r["X_IMAGE"],
                        np.asarray(o["Y_IMAGE"]) - r["Y_IMAGE"]) < 0.01
        fo, fr = np.asarray(o["FLUX_APER"], float), np.asarray(r["FLUX_APER"], float)
        close = np.all(np.abs(fo - fr) <= 0.005 * np.abs(fr), axis=1) & same
        out[filt] = {"n_galseg": len(ours), "n_sextractor": len(ref),
                     "aper_within_0.5%": round(float(close.sum() / max(1, len(ref))), 4)}
    return out


# ---------------------------------------------------------------- driver
def _cpu() -> float:
    import resource

    return sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
               for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))


def _child(args) -> None:
    import resource

    folder, work = Path(args.field), Path(args.work)
    c0 = _cpu()
    if args.child == "sextractor":
        res = run_sextractor(folder, work, args.det)
    else:
        res = run_galseg(args.child, folder, work, args.det)
    # CPU of this process and its reaped children (SExtractor runs, Dask nannies'
    # workers); pool2's forkserver workers are not our children: see band_cpu_s.
    res["cpu_s"] = _cpu() - c0
    # Peak resident memory (Linux: KiB) of this process and of its finished children
    # (pool workers; SExtractor runs).
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res["peak_rss_children_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print("RESULT " + json.dumps(res))


def _spawn(mode: str, folder: Path, work: Path, det: str) -> dict:
    env = dict(os.environ)
    if mode == "serial1":
        env["NUMBA_NUM_THREADS"] = "1"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", mode,
                           "--field", str(folder), "--work", str(work), "--det", det],
                          capture_output=True, text=True, check=False, env=env)
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"mode {mode} failed:\n{proc.stderr[-4000:]}")
    res = json.loads(lines[-1][len("RESULT "):])
    res["process_s"] = wall
    return res


def _load() -> float:
    return os.getloadavg()[0]


# ---------------------------------------------------------------- machine scaling
def _probe(kind: str) -> float:
    """Seconds of a fixed piece of work (~1 s): ``compute`` (arithmetic in the
    caches) or ``stream`` (float32 frames the size of a band, read and written);
    the arrays are made before the clock starts."""
    if kind == "compute":
        a = np.ones(4096, np.float32)
        t0 = time.perf_counter()
        for _ in range(400000):
            a = a * np.float32(1.0000001) + np.float32(1e-7)
    else:
        a = np.ones((2600, 2600), np.float32)
        b = np.ones_like(a)
        c = np.ones_like(a)
        t0 = time.perf_counter()
        for _ in range(250):
            np.multiply(a, b, out=c)
            np.add(c, a, out=c)
    return time.perf_counter() - t0


def machine_scaling() -> dict:
    """How much two processes gain over one on this machine, for work in the
    caches and for memory-bound work: the ceiling of any 2-worker speed-up.

    Each probe runs alone, then twice at once in two processes; the gain is
    ``2 * t_alone / t_together`` (2.0: the second core is fully usable).
    """
    out = {}
    for kind in ("compute", "stream"):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--probe", kind]
        alone = float(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(2)]
        together = max(float(p.communicate()[0]) for p in procs)
        out[kind] = {"alone_s": alone, "together_s": together, "gain": 2 * alone / together}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=2600, help="crop size (default: full 2600)")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--det", default="Z+Y+J+H+Ks", help="detection bands to stack")
    ap.add_argument("--keep", action="store_true", help="keep the work directories")
    ap.add_argument("--no-scaling", action="store_true",
                    help="skip the 1-vs-2-process machine scaling probe")
    ap.add_argument("--probe", help=argparse.SUPPRESS)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--field", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.probe:
        print(_probe(args.probe))
        return 0
    if args.child:
        _child(args)
        return 0
    if not SHARED.is_dir():
        print(f"KiDS/VIKING data not found at {SHARED}", file=sys.stderr)
        return 1
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        ap.error(f"unknown mode(s) {', '.join(sorted(unknown))}; choose from {', '.join(MODES)}")
    folder = prepare_field(args.size)
    root = Path(tempfile.mkdtemp(prefix="galseg_bench_mb_"))
    try:
        scaling = None if args.no_scaling else machine_scaling()
        print(f"warm-up (numba kernels) ... load {_load():.2f}", file=sys.stderr)
        _spawn("serial", prepare_field(400), root / "warmup", args.det)
        results = {}
        for mode in modes:
            print(f"{mode} ... load {_load():.2f}", file=sys.stderr)
            results[mode] = _spawn(mode, folder, root / mode, args.det)
            results[mode]["load_before"] = _load()
        rows = []
        ref = results.get("sextractor")
        serial = results.get("serial")
        serial1 = results.get("serial1")
        header = (f"{'mode':<11} {'segment':>8} {'forced':>8} {'total':>8} {'process':>8} "
                  f"{'RSS MB':>7} {'child MB':>8}  notes")
        rows.append(header)
        for mode, r in results.items():
            note = []
            if serial and mode not in ("serial", "serial1", "sextractor"):
                note.append(f"{serial['total_s'] / r['total_s']:.2f}x serial")
            if serial1 and mode in ("pool2", "dask"):
                note.append(f"{serial1['total_s'] / r['total_s']:.2f}x serial1")
            if ref and mode != "sextractor":
                note.append(f"{r['total_s'] / ref['total_s']:.2f}x SExtractor")
            if "cluster_start_s" in r:
                note.append(f"cluster start {r['cluster_start_s']:.1f} s")
            note.append(f"{r['nobj_catalogue']} objects")
            note.append(f"CPU {r['cpu_s']:.1f} s")
            if "band_cpu_s" in r:
                note.append(f"band tasks {r['band_cpu_s']:.1f} CPU s")
            rows.append(f"{mode:<11} {r['segment_s']:8.2f} {r['forced_s']:8.2f} "
                        f"{r['total_s']:8.2f} "
                        f"{r['process_s']:8.2f} {r['peak_rss_mb']:7.0f} "
                        f"{r['peak_rss_children_mb']:8.0f}  {'; '.join(note)}")
        agree = None
        if ref and serial:
            agree = agreement(serial["forced_cats"], ref["forced_cats"])
        summary = {
            "size": args.size, "bands": BANDS, "det": args.det, "host": platform.node(),
            "cpus": os.cpu_count(), "results": results, "agreement": agree,
            "machine_scaling": scaling,
            "targets": {
                "pool2_speedup_vs_serial": (serial["total_s"] / results["pool2"]["total_s"]
                                            if serial and "pool2" in results else None),
                "pool2_speedup_vs_serial1": (serial1["total_s"] / results["pool2"]["total_s"]
                                             if serial1 and "pool2" in results else None),
                "serial_over_sextractor": (serial["total_s"] / ref["total_s"]
                                           if serial and ref else None),
            },
        }
        print("\n".join(rows))
        if scaling:
            print("2 processes vs 1 on this machine (ceiling of a 2-worker speed-up): "
                  f"compute-bound x{scaling['compute']['gain']:.2f}, memory-bound "
                  f"x{scaling['stream']['gain']:.2f}")
        if agree:
            print("forced FLUX_APER within 0.5% of SExtractor dual mode: " + ", ".join(
                f"{f} {a['aper_within_0.5%']:.3f}" for f, a in agree.items()))
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "bench_multiband.json").write_text(json.dumps(summary, indent=1))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
