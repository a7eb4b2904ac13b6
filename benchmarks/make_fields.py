"""Deterministic benchmark fields for galseg's single-band speed benchmark.

Two kinds of field, each written as ``sci.fits`` (float32, with a TAN WCS),
``rms.fits`` (float32, absolute 1-sigma noise per pixel) and ``field.json``
(how it was made) into ``<cache>/<kind>_<size>/``:

``dense``
    sep's reference image (``shared/data/sep_reference/image.fits``, 256 x 256,
    simulated) minus its SExtractor background (``back.fits``), tiled to
    ``size`` x ``size`` (32 x 32 tiles at the default 8192), with ``rms.fits``
    tiled the same way.  SExtractor finds 42 objects per tile with galfind's
    settings (43,008 at 8192^2; 65 per tile with the image's own
    ``default.sex``).  The background is
    subtracted so that galfind's ``BACK_TYPE MANUAL 0`` applies, as it does to
    galfind's (already sky-subtracted) survey mosaics.

``deep``
    A synthetic deep field: ~4,800 objects per 8192^2 (scaled by area for other
    sizes), 85 % galaxies with Sersic profiles (n 0.7-4, r_e shrinking with
    magnitude, axis ratio 0.3-1) convolved with a Moffat PSF (FWHM 3.5 px,
    beta 2.5) and 15 % stars (the PSF), AB magnitudes 19-28.5 with a rising
    number count, zero point 28.0, and Gaussian noise whose rms varies
    smoothly by +-25 % across the field (a "depth map").  ``--correlated``
    smooths the noise with a 3 x 3 kernel and rescales it, as drizzling does.
    ``truth.fits`` lists every object (x, y 1-based as SExtractor's X_IMAGE,
    flux, mag, type, r_e, sersic_n, axis ratio, position angle); ``flux`` is
    the total flux actually added to the image.

Every field is a pure function of (kind, size, seed, options): the same call
always writes the same pixels, and an existing field with the same recipe is
reused.  Run ``python benchmarks/make_fields.py --help``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table
from scipy import ndimage, signal

HERE = Path(__file__).resolve().parent
DEFAULT_CACHE = HERE / ".fields"
SHARED_DATA = HERE.parents[1] / "shared" / "data"
SEP_REFERENCE = SHARED_DATA / "sep_reference"

#: Bump when a generator changes, so that cached fields are rebuilt.
RECIPE_VERSION = 1

DEEP_OBJECTS_PER_8192 = 4800
DEEP_ZEROPOINT = 28.0
DEEP_PIXEL_SCALE = 0.03  # arcsec, JWST/NIRCam-like mosaics (galfind's usual case)
DEEP_PSF_FWHM = 3.5
DEEP_PSF_BETA = 2.5
DEEP_NOISE = 0.02  # median 1-sigma pixel noise in counts: 5-sigma point sources at ~28 mag
STAR_FRACTION = 0.15

__all__ = ["field_dir", "make_dense", "make_deep", "ensure_field", "main"]


def field_dir(kind: str, size: int, cache: Path | str = DEFAULT_CACHE, *,
              correlated: bool = False, seed: int = 1) -> Path:
    """Folder of a field: ``<cache>/<kind>_<size>[ _corr][ _s<seed>]``."""
    name = f"{kind}_{size}"
    if kind == "deep":
        if correlated:
            name += "_corr"
        if seed != 1:
            name += f"_s{seed}"
    return Path(cache) / name


def _wcs_header(size: int, pixel_scale: float) -> fits.Header:
    """A plain TAN WCS centred on the field (so ALPHA/DELTA get computed)."""
    hdr = fits.Header()
    hdr["CTYPE1"], hdr["CTYPE2"] = "RA---TAN", "DEC--TAN"
    hdr["CUNIT1"], hdr["CUNIT2"] = "deg", "deg"
    hdr["CRVAL1"], hdr["CRVAL2"] = 150.1, 2.2
    hdr["CRPIX1"], hdr["CRPIX2"] = (size + 1) / 2.0, (size + 1) / 2.0
    hdr["CD1_1"], hdr["CD2_2"] = -pixel_scale / 3600.0, pixel_scale / 3600.0
    hdr["CD1_2"], hdr["CD2_1"] = 0.0, 0.0
    hdr["RADESYS"], hdr["EQUINOX"] = "ICRS", 2000.0
    return hdr


def _write(folder: Path, sci: np.ndarray, rms: np.ndarray, header: fits.Header,
           recipe: dict, truth: Table | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / ".partial"
    tmp.mkdir(exist_ok=True)
    fits.PrimaryHDU(np.ascontiguousarray(sci, dtype=np.float32), header=header).writeto(
        tmp / "sci.fits", overwrite=True)
    fits.PrimaryHDU(np.ascontiguousarray(rms, dtype=np.float32), header=header).writeto(
        tmp / "rms.fits", overwrite=True)
    if truth is not None:
        truth.write(tmp / "truth.fits", overwrite=True)
    (tmp / "field.json").write_text(json.dumps(recipe, indent=2) + "\n")
    # field.json last: its presence marks a complete field.
    for name in ("sci.fits", "rms.fits", "truth.fits", "field.json"):
        if (tmp / name).exists():
            (tmp / name).replace(folder / name)
    tmp.rmdir()
    return folder


def _cached(folder: Path, recipe: dict) -> bool:
    meta = folder / "field.json"
    if not meta.is_file():
        return False
    try:
        return json.loads(meta.read_text()) == recipe
    except (OSError, ValueError):
        return False


# --------------------------------------------------------------------------- dense
def make_dense(size: int = 8192, cache: Path | str = DEFAULT_CACHE, *,
               source: Path | str = SEP_REFERENCE, force: bool = False) -> Path:
    """Write (or reuse) the tiled sep-reference field; returns its folder."""
    source = Path(source)
    recipe = {"kind": "dense", "size": int(size), "version": RECIPE_VERSION,
              "source": "sep_reference image.fits - back.fits, tiled",
              "pixel_scale": 1.0}
    folder = field_dir("dense", size, cache)
    if not force and _cached(folder, recipe):
        return folder
    for name in ("image.fits", "back.fits", "rms.fits"):
        if not (source / name).is_file():
            raise FileNotFoundError(f"dense field needs {source / name} (sep's reference data)")
    with warnings.catch_warnings():
        # the 1992 ESO header has non-standard "ESO-LOG" cards
        warnings.simplefilter("ignore")
        image = fits.getdata(source / "image.fits").astype(np.float32)
        back = fits.getdata(source / "back.fits").astype(np.float32)
        rms = fits.getdata(source / "rms.fits").astype(np.float32)
    tile = image - back
    reps = (math.ceil(size / tile.shape[0]), math.ceil(size / tile.shape[1]))
    sci = np.tile(tile, reps)[:size, :size]
    rmap = np.tile(rms, reps)[:size, :size]
    return _write(folder, sci, rmap, _wcs_header(size, 1.0), recipe)


# --------------------------------------------------------------------------- deep
def _moffat(dx, dy, fwhm, beta):
    alpha = fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
    return (1.0 + (dx * dx + dy * dy) / (alpha * alpha)) ** (-beta)


def _sersic_b(n):
    # Ciotti & Bertin (1999) asymptotic expansion, good to <1e-4 for n > 0.36
    return 2.0 * n - 1.0 / 3.0 + 4.0 / (405.0 * n) + 46.0 / (25515.0 * n * n)


def _psf_image(fwhm: float, beta: float, half: int, oversample: int = 5) -> np.ndarray:
    """Pixel-integrated, unit-sum Moffat PSF image, (2 half + 1)^2."""
    o = oversample
    g = (np.arange((2 * half + 1) * o) - ((2 * half + 1) * o - 1) / 2.0) / o
    xx, yy = np.meshgrid(g, g)
    p = _moffat(xx, yy, fwhm, beta)
    p = p.reshape(2 * half + 1, o, 2 * half + 1, o).sum(axis=(1, 3))
    return p / p.sum()


def _draw_star(x, y, fwhm, beta, half, oversample=5):
    """Unit-flux star on a stamp whose centre pixel is round(x), round(y)."""
    ix, iy = int(round(x)), int(round(y))
    o = oversample
    g = (np.arange((2 * half + 1) * o) - ((2 * half + 1) * o - 1) / 2.0) / o
    xx, yy = np.meshgrid(g - (x - ix), g - (y - iy))
    p = _moffat(xx, yy, fwhm, beta).reshape(2 * half + 1, o, 2 * half + 1, o).sum(axis=(1, 3))
    return ix, iy, p / p.sum()


def _draw_galaxy(x, y, re, n, q, pa, psf, half, oversample=3):
    """Unit-flux PSF-convolved Sersic stamp centred on round(x), round(y)."""
    ix, iy = int(round(x)), int(round(y))
    o = oversample
    g = (np.arange((2 * half + 1) * o) - ((2 * half + 1) * o - 1) / 2.0) / o
    xx, yy = np.meshgrid(g - (x - ix), g - (y - iy))
    c, s = math.cos(pa), math.sin(pa)
    u = xx * c + yy * s
    v = (-xx * s + yy * c) / q
    r = np.sqrt(u * u + v * v)
    # keep the cusp finite: the central sub-pixel of an n=4 profile
    r = np.maximum(r, 0.25 / o)
    prof = np.exp(-_sersic_b(n) * ((r / re) ** (1.0 / n) - 1.0))
    prof = prof.reshape(2 * half + 1, o, 2 * half + 1, o).mean(axis=(1, 3))
    stamp = signal.fftconvolve(prof, psf, mode="same")
    stamp = np.clip(stamp, 0.0, None)
    return ix, iy, stamp / stamp.sum()


def _add_stamp(image, ix, iy, stamp):
    """Add ``stamp`` centred on (ix, iy); returns the flux that landed on the image."""
    h = stamp.shape[0] // 2
    ny, nx = image.shape
    x0, x1 = ix - h, ix + h + 1
    y0, y1 = iy - h, iy + h + 1
    sx0, sy0 = max(0, -x0), max(0, -y0)
    sx1 = stamp.shape[1] - max(0, x1 - nx)
    sy1 = stamp.shape[0] - max(0, y1 - ny)
    part = stamp[sy0:sy1, sx0:sx1]
    image[max(0, y0):min(ny, y1), max(0, x0):min(nx, x1)] += part
    return float(part.sum())


def _depth_map(size: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth +-25 % noise-level variation (a few overlapping 'pointings')."""
    coarse = 8
    grid = rng.uniform(0.75, 1.25, size=(coarse, coarse)).astype(np.float32)
    zoom = size / coarse
    smooth = ndimage.zoom(grid, zoom, order=3, mode="nearest", grid_mode=True)[:size, :size]
    return np.clip(smooth, 0.6, 1.4).astype(np.float32)


def make_deep(size: int = 8192, cache: Path | str = DEFAULT_CACHE, *, seed: int = 1,
              correlated: bool = False, force: bool = False) -> Path:
    """Write (or reuse) the synthetic deep field with its truth table."""
    nobj = max(1, int(round(DEEP_OBJECTS_PER_8192 * (size / 8192.0) ** 2)))
    recipe = {"kind": "deep", "size": int(size), "seed": int(seed),
              "correlated": bool(correlated), "version": RECIPE_VERSION,
              "nobj": nobj, "zeropoint": DEEP_ZEROPOINT, "pixel_scale": DEEP_PIXEL_SCALE,
              "psf": {"type": "moffat", "fwhm": DEEP_PSF_FWHM, "beta": DEEP_PSF_BETA},
              "noise": DEEP_NOISE, "star_fraction": STAR_FRACTION}
    folder = field_dir("deep", size, cache, correlated=correlated, seed=seed)
    if not force and _cached(folder, recipe):
        return folder
    rng = np.random.default_rng(seed)

    # Object list (vectorised draws; a fixed draw order keeps it deterministic).
    is_star = rng.random(nobj) < STAR_FRACTION
    margin = 4
    x = rng.uniform(margin, size - 1 - margin, nobj)
    y = rng.uniform(margin, size - 1 - margin, nobj)
    # Rising counts: p(m) ~ 10^(0.3 m) for galaxies, flatter (0.1) for stars.
    u = rng.random(nobj)
    m_lo, m_hi = 19.0, 28.5

    def _powerlaw(slope, u):
        a, b = 10 ** (slope * m_lo), 10 ** (slope * m_hi)
        return np.log10(a + u * (b - a)) / slope

    mag = np.where(is_star, _powerlaw(0.1, u), _powerlaw(0.3, u))
    re = 10.0 * 10 ** (-0.12 * (mag - 19.0)) * np.exp(rng.normal(0.0, 0.35, nobj))
    re = np.clip(re, 0.6, 40.0)
    sersic = rng.uniform(0.7, 4.0, nobj)
    q = rng.uniform(0.3, 1.0, nobj)
    pa = rng.uniform(0.0, math.pi, nobj)
    flux_target = 10 ** (-0.4 * (mag - DEEP_ZEROPOINT))

    image = np.zeros((size, size), dtype=np.float32)
    psf_half = int(math.ceil(4 * DEEP_PSF_FWHM))
    psf = _psf_image(DEEP_PSF_FWHM, DEEP_PSF_BETA, psf_half)
    flux_in = np.empty(nobj)
    # One stamp per object: a few thousand small FFTs (generation, not benchmarked).
    for i in range(nobj):
        if is_star[i]:
            ix, iy, stamp = _draw_star(x[i], y[i], DEEP_PSF_FWHM, DEEP_PSF_BETA, psf_half)
        else:
            half = int(min(120, max(psf_half, math.ceil(5 * re[i] + 2 * DEEP_PSF_FWHM))))
            ix, iy, stamp = _draw_galaxy(x[i], y[i], re[i], sersic[i], q[i], pa[i], psf, half)
        flux_in[i] = _add_stamp(image, ix, iy, (stamp * flux_target[i]).astype(np.float32))

    depth = _depth_map(size, rng)
    rms = (DEEP_NOISE * depth).astype(np.float32)
    noise_rng = np.random.default_rng([seed, 2])
    rows = 1024
    kernel = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=np.float32)
    kernel /= np.sqrt((kernel ** 2).sum())  # unit per-pixel variance after smoothing
    for y0 in range(0, size, rows):
        # a 1-row halo so that smoothed strips join seamlessly
        lo, hi = max(0, y0 - 1), min(size, y0 + rows + 1)
        white = noise_rng.standard_normal((hi - lo, size), dtype=np.float32)
        if correlated:
            white = ndimage.correlate(white, kernel, mode="reflect")
        white = white[y0 - lo:y0 - lo + min(rows, size - y0)]
        image[y0:y0 + white.shape[0]] += white * rms[y0:y0 + white.shape[0]]

    truth = Table()
    truth["id"] = np.arange(1, nobj + 1, dtype=np.int32)
    truth["x"] = x + 1.0  # 1-based, as X_IMAGE
    truth["y"] = y + 1.0
    truth["flux"] = flux_in
    truth["mag"] = mag
    truth["type"] = np.where(is_star, "star", "galaxy")
    truth["r_e"] = np.where(is_star, 0.0, re)
    truth["sersic_n"] = np.where(is_star, 0.0, sersic)
    truth["q"] = np.where(is_star, 1.0, q)
    truth["pa_deg"] = np.where(is_star, 0.0, np.degrees(pa))
    truth.meta["ZP"] = DEEP_ZEROPOINT
    hdr = _wcs_header(size, DEEP_PIXEL_SCALE)
    hdr["MAGZERO"] = DEEP_ZEROPOINT
    return _write(folder, image, rms, hdr, recipe, truth)


def ensure_field(kind: str, size: int, cache: Path | str = DEFAULT_CACHE, **kw) -> Path:
    """The folder of field ``kind`` (``dense`` or ``deep``), made if needed."""
    if kind == "dense":
        return make_dense(size, cache, **kw)
    if kind == "deep":
        return make_deep(size, cache, **kw)
    raise ValueError(f"unknown field kind {kind!r}; use 'dense' or 'deep'")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fields", default="dense,deep", help="comma list: dense,deep")
    ap.add_argument("--size", type=int, default=8192, help="field side in pixels (default 8192)")
    ap.add_argument("--seed", type=int, default=1, help="deep-field seed (default 1)")
    ap.add_argument("--correlated", action="store_true", help="correlated noise (deep field)")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="output folder")
    ap.add_argument("--force", action="store_true", help="rebuild even if cached")
    args = ap.parse_args(argv)
    for kind in [k.strip() for k in args.fields.split(",") if k.strip()]:
        t0 = time.perf_counter()
        kw = {"force": args.force}
        if kind == "deep":
            kw.update(seed=args.seed, correlated=args.correlated)
        folder = ensure_field(kind, args.size, args.cache, **kw)
        print(f"{kind}: {folder} ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
