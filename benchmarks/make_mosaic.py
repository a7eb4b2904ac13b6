"""Deterministic synthetic survey mosaics of any size, written strip by strip.

A JWST-like deep mosaic: Sersic galaxies (exponential discs and de Vaucouleurs
bulges, some in close pairs for deblending, a few very large ones), Moffat
stars (a few bright ones with wide wings), Gaussian noise whose rms follows a
smooth depth map with darker "chip gaps", and an irregular footprint outside
which there is no data (``sci = 0``, ``rms = 1e10``: no detection there, for
galseg and SExtractor alike).  ``--sky`` adds a smooth sky pedestal (for
``BACK_TYPE AUTO`` tests; galfind's mosaics are sky-subtracted and use
``BACK_TYPE MANUAL 0``).

The mosaic never exists in memory as a whole: it is rendered in strips of
`STRIP` rows (each source is rendered on its whole stamp and normalised there,
then the rows inside the strip are added), and the strips stream into
``sci.fits`` and ``rms.fits`` (float32, big-endian, TAN WCS) through
temporary files renamed at the end.  The noise of each strip comes from its
own seeded generator, so the pixels are a pure function of (size, seed,
options): the same call always writes the same files, and an existing mosaic
with the same recipe (``mosaic.json``) is reused.

Memory: about ``STRIP * size * 20`` bytes plus the source list (a 32768^2
mosaic: ~0.7 GB).  Time: ~1-2 min for 32768^2 on one core.

    python benchmarks/make_mosaic.py --size 32768 --out benchmarks/.fields/mosaic_32768
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numba
import numpy as np
from astropy.io import fits

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

from galseg.io.atomic import atomic_write, atomic_write_json  # noqa: E402

__all__ = ["RECIPE_VERSION", "STRIP", "recipe", "sources", "render_strip", "make_mosaic",
           "mosaic_arrays", "main"]

#: Bump when the generator changes, so that cached mosaics are rebuilt.
RECIPE_VERSION = 1
#: Rows per strip (part of the recipe: the noise is drawn per strip).
STRIP = 512
PIXEL_SCALE = 0.03   # arcsec
ZEROPOINT = 28.0
NOISE = 0.02         # median 1-sigma pixel noise (counts)
PSF_FWHM = 3.5       # pixels
PSF_BETA = 2.5
NODATA_RMS = 1e10    # outside the footprint


def recipe(size: int, seed: int = 1, density: float = 250.0, sky: float = 0.0,
           footprint: bool = True) -> dict:
    """The parameters that define a mosaic (stored as ``mosaic.json``)."""
    return {"kind": "mosaic", "version": RECIPE_VERSION, "size": int(size), "seed": int(seed),
            "density_per_mpix": float(density), "sky": float(sky), "footprint": bool(footprint),
            "strip": STRIP, "pixel_scale": PIXEL_SCALE, "zeropoint": ZEROPOINT,
            "noise": NOISE, "psf_fwhm": PSF_FWHM, "psf_beta": PSF_BETA}


# --------------------------------------------------------------------------- sources
def sources(size: int, seed: int = 1, density: float = 250.0) -> np.ndarray:
    """The injected objects, sorted by y (a structured array).

    Fields: ``x``, ``y`` (0-based pixel), ``flux``, ``kind`` (0 star, 1
    exponential disc, 2 de Vaucouleurs), ``re`` (half-light radius, px),
    ``q`` (axis ratio), ``pa`` (radians), ``rmax`` (stamp radius, px).
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xA11]))
    area = size * size / 1e6
    n = int(round(density * area))
    # magnitudes 20-29 with counts rising 0.3 dex/mag
    u = rng.random(n)
    lo, hi, slope = 20.0, 29.0, 0.3 * math.log(10)
    mag = lo + np.log1p(u * (math.exp(slope * (hi - lo)) - 1.0)) / slope
    kind = np.where(rng.random(n) < 0.12, 0, np.where(rng.random(n) < 0.7, 1, 2))
    x = rng.random(n) * (size - 1)
    y = rng.random(n) * (size - 1)
    re = np.clip(rng.lognormal(np.log(2.5 * 10 ** (-0.12 * (mag - 24.0))), 0.35), 0.8, 40.0)
    q = rng.uniform(0.3, 1.0, n)
    pa = rng.uniform(0.0, math.pi, n)
    # companions: 20 % of galaxies get a fainter neighbour 3-10 px away (blends)
    gal = np.flatnonzero(kind > 0)
    pick = gal[rng.random(gal.size) < 0.2]
    m = pick.size
    ang = rng.uniform(0, 2 * math.pi, m)
    sep = rng.uniform(3.0, 10.0, m) + re[pick]
    cx = np.clip(x[pick] + sep * np.cos(ang), 0, size - 1)
    cy = np.clip(y[pick] + sep * np.sin(ang), 0, size - 1)
    cmag = mag[pick] + rng.uniform(0.3, 2.5, m)
    cre = np.clip(re[pick] * rng.uniform(0.4, 1.0, m), 0.8, 40.0)
    ckind = rng.integers(1, 3, m)
    cq = rng.uniform(0.3, 1.0, m)
    cpa = rng.uniform(0.0, math.pi, m)
    # giants: ~1 per 16 Mpix, 17-18.5 mag, r_e 25-70 px (extend over hundreds of px)
    g = max(1, int(round(area / 16.0)))
    gx = rng.random(g) * (size - 1)
    gy = rng.random(g) * (size - 1)
    gmag = rng.uniform(17.0, 18.5, g)
    gre = rng.uniform(25.0, 70.0, g)
    gkind = rng.integers(1, 3, g)
    gq = rng.uniform(0.4, 1.0, g)
    gpa = rng.uniform(0.0, math.pi, g)
    # bright stars with wide wings: ~1 per 8 Mpix, 15.5-18 mag
    s = max(1, int(round(area / 8.0)))
    sx = rng.random(s) * (size - 1)
    sy = rng.random(s) * (size - 1)
    smag = rng.uniform(15.5, 18.0, s)

    def cat(*parts):
        return np.concatenate(parts)

    out = np.zeros(n + m + g + s, dtype=[("x", "f8"), ("y", "f8"), ("flux", "f8"),
                                         ("kind", "i4"), ("re", "f8"), ("q", "f8"),
                                         ("pa", "f8"), ("rmax", "i4")])
    out["x"] = cat(x, cx, gx, sx)
    out["y"] = cat(y, cy, gy, sy)
    out["flux"] = 10.0 ** (-0.4 * (cat(mag, cmag, gmag, smag) - ZEROPOINT))
    out["kind"] = cat(kind, ckind, gkind, np.zeros(s, np.int32))
    out["re"] = cat(re, cre, gre, np.zeros(s))
    out["q"] = cat(q, cq, gq, np.ones(s))
    out["pa"] = cat(pa, cpa, gpa, np.zeros(s))
    star = out["kind"] == 0
    # stamp radius: 8 r_e for galaxies (+ PSF), Moffat wings scale with brightness
    rstar = np.clip(6.0 * PSF_FWHM * (out["flux"] / 10.0 ** (-0.4 * (22 - ZEROPOINT))) ** 0.25,
                    4 * PSF_FWHM, 250.0)
    out["rmax"] = np.ceil(np.where(star, rstar, np.minimum(8.0 * out["re"] + 2 * PSF_FWHM,
                                                            600.0))).astype(np.int32)
    return out[np.argsort(out["y"], kind="stable")]


@numba.njit  # not cached: loaded from a file path by tests, under several module names
def _sersic_b(n):
    return 2.0 * n - 1.0 / 3.0 + 4.0 / (405.0 * n) + 46.0 / (25515.0 * n * n)


@numba.njit  # not cached: loaded from a file path by tests, under several module names
def _render(out, y0, src_x, src_y, flux, kind, re, q, pa, rmax, psf_fwhm, psf_beta):
    """Add every source to the strip ``out`` (rows y0..y0+h), each normalised
    over its whole stamp so that a source spanning strips is the same in each."""
    h, w = out.shape
    alpha = psf_fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / psf_beta) - 1.0))
    psf_sig = psf_fwhm / 2.3548
    for i in range(src_x.size):
        xc = src_x[i]
        yc = src_y[i]
        r = rmax[i]
        ix0 = int(math.floor(xc)) - r
        iy0 = int(math.floor(yc)) - r
        n = 2 * r + 2
        k = kind[i]
        if k == 0:
            bn = 0.0
            inv_n = 0.0
        else:
            nn = 1.0 if k == 1 else 4.0
            bn = _sersic_b(nn)
            inv_n = 1.0 / nn
        # the PSF softens the profile: effective radius grown in quadrature
        ree = math.sqrt(re[i] * re[i] + psf_sig * psf_sig)
        c = math.cos(pa[i])
        s = math.sin(pa[i])
        qq = q[i]
        total = 0.0
        # pass 1: normalisation over the whole stamp; pass 2: the strip's rows
        for pas in range(2):
            scale = flux[i] / total if pas == 1 and total > 0 else 0.0
            for jy in range(n):
                yy = iy0 + jy
                if pas == 1 and (yy < y0 or yy >= y0 + h):
                    continue
                dy = yy - yc
                for jx in range(n):
                    xx = ix0 + jx
                    dx = xx - xc
                    if k == 0:
                        v = (1.0 + (dx * dx + dy * dy) / (alpha * alpha)) ** (-psf_beta)
                    else:
                        u = dx * c + dy * s
                        t = (-dx * s + dy * c) / qq
                        rr = math.sqrt(u * u + t * t)
                        if rr < 0.3:
                            rr = 0.3
                        v = math.exp(-bn * ((rr / ree) ** inv_n - 1.0))
                    if dx * dx + dy * dy > r * r:
                        v = 0.0
                    if pas == 0:
                        total += v
                    elif 0 <= xx < w:
                        out[yy - y0, xx] += np.float32(v * scale)


def _depth(yy, xx, size, seed):
    """Smooth relative noise map in ~[0.75, 1.3], with two darker 'chip gaps'."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xDE9]))
    ph = rng.uniform(0, 2 * math.pi, 4)
    f = 2 * math.pi / size
    d = (1.0 + 0.12 * np.sin(1.3 * f * xx + ph[0]) * np.cos(0.9 * f * yy + ph[1])
         + 0.08 * np.sin(3.1 * f * (xx + yy) + ph[2]))
    gx = size * rng.uniform(0.3, 0.7)
    gy = size * rng.uniform(0.3, 0.7)
    gap = (np.abs(xx - gx) < max(8, size // 400)) | (np.abs(yy - gy) < max(8, size // 400))
    return np.where(gap, 1.6 * d, d)


def _inside(yy, xx, size, seed):
    """The irregular footprint: a wavy-edged region ~3 % in from each side."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xF00]))
    ph = rng.uniform(0, 2 * math.pi, 4)
    m = 0.03 * size
    a = 0.015 * size
    f = 6 * math.pi / size
    left = m + a * np.sin(f * yy + ph[0])
    right = size - m + a * np.sin(f * yy + ph[1])
    top = m + a * np.sin(f * xx + ph[2])
    bottom = size - m + a * np.sin(f * xx + ph[3])
    return (xx > left) & (xx < right) & (yy > top) & (yy < bottom)


def _sky(yy, xx, size, seed, amplitude):
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5C1]))
    ph = rng.uniform(0, 2 * math.pi, 2)
    f = 2 * math.pi / size
    return amplitude * (1.0 + 0.5 * np.sin(1.7 * f * xx + ph[0]) + 0.3 * np.cos(2.3 * f * yy + ph[1]))


def render_strip(rec: dict, src: np.ndarray, y0: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``y0 .. y0 + h`` of the mosaic: ``(sci, rms)`` float32 (native order)."""
    size, seed = rec["size"], rec["seed"]
    yy = np.arange(y0, y0 + h, dtype=np.float64)[:, None]
    xx = np.arange(size, dtype=np.float64)[None, :]
    rms = (NOISE * _depth(yy, xx, size, seed)).astype(np.float32)
    if rec["footprint"]:
        inside = _inside(yy, xx, size, seed)
    else:
        inside = np.ones((h, size), bool)
    sci = np.zeros((h, size), np.float32)
    lo = np.searchsorted(src["y"], y0 - 700.0)
    hi = np.searchsorted(src["y"], y0 + h + 700.0)
    sub = src[lo:hi]
    near = (sub["y"] + sub["rmax"] + 1 >= y0) & (sub["y"] - sub["rmax"] - 1 < y0 + h)
    sub = sub[near]
    _render(sci, y0, sub["x"], sub["y"], sub["flux"], sub["kind"], sub["re"], sub["q"],
            sub["pa"], sub["rmax"], PSF_FWHM, PSF_BETA)
    # the strip's own noise generator: pixels do not depend on anything else
    k = y0 // STRIP
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x401, k]))
    noise = rng.standard_normal((h, size), dtype=np.float32)
    sci += noise * rms
    if rec["sky"]:
        sci += _sky(yy, xx, size, seed, rec["sky"] * NOISE).astype(np.float32)
    sci[~inside] = 0.0
    rms[~inside] = np.float32(NODATA_RMS)
    return sci, rms


def _wcs_header(size: int) -> fits.Header:
    hdr = fits.Header()
    hdr["CTYPE1"], hdr["CTYPE2"] = "RA---TAN", "DEC--TAN"
    hdr["CUNIT1"], hdr["CUNIT2"] = "deg", "deg"
    hdr["CRVAL1"], hdr["CRVAL2"] = 53.16, -27.78
    hdr["CRPIX1"], hdr["CRPIX2"] = (size + 1) / 2.0, (size + 1) / 2.0
    hdr["CD1_1"], hdr["CD2_2"] = -PIXEL_SCALE / 3600.0, PIXEL_SCALE / 3600.0
    hdr["CD1_2"], hdr["CD2_1"] = 0.0, 0.0
    hdr["RADESYS"], hdr["EQUINOX"] = "ICRS", 2000.0
    hdr["BUNIT"] = "counts"
    hdr["MAGZERO"] = ZEROPOINT
    return hdr


def _fits_head(shape, header) -> bytes:
    hdu = fits.PrimaryHDU(data=np.zeros((1, 1), dtype=">f4"), header=header.copy())
    hdu.header["NAXIS1"] = shape[1]
    hdu.header["NAXIS2"] = shape[0]
    return hdu.header.tostring().encode("ascii")


def _cached(folder: Path, rec: dict) -> bool:
    meta = folder / "mosaic.json"
    try:
        return json.loads(meta.read_text()) == rec
    except (OSError, ValueError):
        return False


def make_mosaic(out, size: int = 32768, *, seed: int = 1, density: float = 250.0,
                sky: float = 0.0, footprint: bool = True, force: bool = False,
                verbose: bool = False) -> Path:
    """Write (or reuse) ``sci.fits``, ``rms.fits``, ``truth.fits`` and ``mosaic.json``.

    Returns the folder.  ``mosaic.json`` is written last and marks a complete
    mosaic; a folder whose ``mosaic.json`` matches the recipe is reused.
    """
    folder = Path(out)
    rec = recipe(size, seed, density, sky, footprint)
    if not force and _cached(folder, rec):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mosaic.json").unlink(missing_ok=True)
    t0 = time.perf_counter()
    src = sources(size, seed, density)
    head = _fits_head((size, size), _wcs_header(size))
    nbytes = size * size * 4
    with atomic_write(folder / "sci.fits", "wb") as fs, atomic_write(folder / "rms.fits", "wb") as fr:
        fs.write(head)
        fr.write(head)
        for y0 in range(0, size, STRIP):
            h = min(STRIP, size - y0)
            sci, rms = render_strip(rec, src, y0, h)
            fs.write(sci.astype(">f4").tobytes())
            fr.write(rms.astype(">f4").tobytes())
            if verbose and (y0 // STRIP) % 8 == 0:
                print(f"  rows {y0 + h}/{size}  {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        pad = b"\0" * (-nbytes % 2880)
        fs.write(pad)
        fr.write(pad)
    from astropy.table import Table

    truth = Table(src)
    truth["x"] += 1.0  # 1-based, as SExtractor's X_IMAGE
    truth["y"] += 1.0
    truth["mag"] = -2.5 * np.log10(truth["flux"]) + ZEROPOINT
    with atomic_write(folder / "truth.fits", "wb") as f:
        truth.write(f, format="fits")
    atomic_write_json(rec, folder / "mosaic.json")
    if verbose:
        print(f"mosaic {size}^2, {len(src)} sources, {time.perf_counter() - t0:.1f} s -> {folder}",
              file=sys.stderr)
    return folder


def mosaic_arrays(size: int, *, seed: int = 1, density: float = 250.0, sky: float = 0.0,
                  footprint: bool = True) -> tuple[np.ndarray, np.ndarray, fits.Header]:
    """A small mosaic in memory: ``(sci, rms, header)`` (tests, quick checks).

    The same pixels as `make_mosaic` writes for the same arguments.
    """
    rec = recipe(size, seed, density, sky, footprint)
    src = sources(size, seed, density)
    sci = np.empty((size, size), np.float32)
    rms = np.empty((size, size), np.float32)
    for y0 in range(0, size, STRIP):
        h = min(STRIP, size - y0)
        sci[y0:y0 + h], rms[y0:y0 + h] = render_strip(rec, src, y0, h)
    return sci, rms, _wcs_header(size)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=32768)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--density", type=float, default=250.0,
                    help="injected objects per Mpix (default 250)")
    ap.add_argument("--sky", type=float, default=0.0,
                    help="smooth sky pedestal, in units of the noise (default 0)")
    ap.add_argument("--no-footprint", action="store_true", help="data everywhere")
    ap.add_argument("--out", type=Path, default=None,
                    help="folder (default benchmarks/.fields/mosaic_<size>[_s<seed>])")
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args(argv)
    out = a.out or HERE / ".fields" / (f"mosaic_{a.size}" + (f"_s{a.seed}" if a.seed != 1 else ""))
    make_mosaic(out, a.size, seed=a.seed, density=a.density, sky=a.sky,
                footprint=not a.no_footprint, force=a.force, verbose=True)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
