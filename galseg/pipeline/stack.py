"""Inverse-variance weighted stacks of bands: the usual detection image.

`stack_bands` combines pixel-aligned bands into one image::

    sci = sum(s_i * w_i) / sum(w_i)      wht = sum(w_i)      rms = 1 / sqrt(sum(w_i))

with ``w_i`` each band's absolute inverse variance (its weight map, or
``1 / rms**2`` when it only has an rms map), summed in float64.  Pixels where
every band has zero weight (or no finite data) get ``sci = 0`` and ``wht = 0``:
they are masked (the stack's rms is ``inf`` there, see
`Band_Data.load_rms_err`), never NaN.  A band's pixel with a non-finite
science value or weight contributes nothing.

Flux units
----------
Bands with different zero points measure flux in different units, and
averaging them is only meaningful in a common unit.  ``common_zp`` says
which:

``"auto"`` (default)
    When every band has the same zero point (or none has one), nothing is
    scaled.  Otherwise every band is converted to the zero point of the first
    band (in wavelength order), which keeps the stack in familiar units.
a number
    Every band is converted to this AB zero point (e.g. 31.4 for nJy, 23.9
    for uJy, 8.9 for Jy).
``None``
    The bands are taken to be in the same unit already; nothing is scaled (a
    warning is given when their zero points differ).  This is how the
    ``detection_*`` stack of the XDF test data was made.

A band with zero point ``zp_i`` is converted to ``zp`` by multiplying its
science image by ``10**(0.4 * (zp - zp_i))`` and dividing its weights by the
square of that factor.  The stack's zero point is ``zp`` (or the common zero
point of the inputs).

Caching
-------
The stack is written atomically into
``{work}/{instrument}/{version}/{survey}/stacks/{survey}_{name}_{hash}_sci.fits``
and ``..._wht.fits`` (``name`` like ``F277W+F356W+F444W``, filters in
wavelength order; ``instrument`` the bands' instruments joined by ``+``), with a
JSON sidecar as commit marker.  ``hash`` is the short key over the inputs'
content fingerprints (`galseg.products.input_fingerprint`), zero points,
scales and output type, so a rerun reuses the stack and changed inputs make a
new one.  The result is a real `~galseg.imaging.Band_Data`: it can be
segmented, plotted and cached like any band.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import astropy.units as u
import numba
import numpy as np
from astropy.io import fits
from astropy.wcs import FITSFixedWarning

from ..extract._parallel import ranges, readonly
from ..imaging.band import Band_Data
from ..imaging.filters import canonical_filter, filter_wavelength
from ..io.atomic import atomic_write_fits_image
from ..io.fits import _open, resolve_ext
from ..products import make_key
from ..products.fileset import FileSet

__all__ = ["stack_bands", "stack_name", "parse_band_list", "zp_scale", "STACK_PARTS"]

log = logging.getLogger("galseg.pipeline")

STACK_PARTS = {"sci": "_sci.fits", "wht": "_wht.fits"}
_STACK_FORMAT = 1
_CHUNK_BYTES = 32 * 1024 * 1024
_ROWS_PER_TASK = 64  # rows per kernel call on the helper threads
_ZP_TOL = 1e-6
_SCALE_RTOL = 1e-6
# WCS alignment tolerance, in pixels, between bands of a stack.
_ALIGN_TOL_PIX = 0.01


def parse_band_list(spec) -> list[str]:
    """Filter names from ``"F277W+F356W+F444W"`` or a list of names."""
    if isinstance(spec, str):
        names = [s.strip() for s in spec.split("+")]
    elif isinstance(spec, Iterable):
        names = [str(s).strip() for s in spec]
    else:
        raise TypeError(f"bands must be a '+'-joined string or a list of names, got {spec!r}")
    if not names or any(not n for n in names):
        raise ValueError(f"empty filter name in the band list {spec!r}")
    return [canonical_filter(n) for n in names]


def stack_name(filters: Sequence[str]) -> str:
    """The stack's filter name: the filters in wavelength order joined by ``+``."""
    names = sorted(dict.fromkeys(canonical_filter(f) for f in filters),
                   key=lambda f: (filter_wavelength(f), f))
    return "+".join(names)


def zp_scale(zp_from: float, zp_to: float) -> float:
    """Factor converting fluxes with zero point ``zp_from`` to zero point ``zp_to``."""
    return float(10.0 ** (0.4 * (float(zp_to) - float(zp_from))))


def _resolve_zero_points(bands: list[Band_Data], common_zp):
    """(target zp or None, per-band scales, stack zp, note)."""
    zps = [b.zp for b in bands]
    known = [z for z in zps if z is not None]
    same = len(known) == len(zps) and all(abs(z - known[0]) <= _ZP_TOL for z in known)
    names = ", ".join(f"{b.filt}: {b.zp}" for b in bands)
    if common_zp is None:
        if known and not same:
            warnings.warn(
                f"stacking bands with different zero points ({names}) with common_zp=None: "
                f"they are taken to be in the same flux unit; the stack gets the zero point "
                f"of {bands[0].filt}", stacklevel=3)
        return None, [1.0] * len(bands), zps[0], "no conversion (common_zp=None)"
    if isinstance(common_zp, str):
        if common_zp.lower() != "auto":
            raise ValueError(f"common_zp must be 'auto', None or a number, got {common_zp!r}")
        if not known:
            log.warning("stacking bands without zero points: no flux-unit conversion")
            return None, [1.0] * len(bands), None, "no zero points known: no conversion"
        if same:
            return None, [1.0] * len(bands), known[0], "same zero point: no conversion"
        target = bands[0].zp
        if target is None or len(known) != len(zps):
            missing = [b.filt for b in bands if b.zp is None]
            raise ValueError(
                f"cannot convert the bands to a common flux unit: no zero point for "
                f"{', '.join(missing)} (give zp= to those bands, or common_zp=None if all "
                "bands are already in the same unit)")
        note = f"converted to the zero point of {bands[0].filt} ({target:g})"
    else:
        try:
            target = float(common_zp)
        except (TypeError, ValueError):
            raise ValueError(
                f"common_zp must be 'auto', None or a number, got {common_zp!r}") from None
        if not math.isfinite(target):
            raise ValueError(f"common_zp must be finite, got {common_zp!r}")
        missing = [b.filt for b in bands if b.zp is None]
        if missing:
            raise ValueError(f"common_zp={target:g} needs every band's zero point; none for "
                             f"{', '.join(missing)}")
        note = f"converted to AB zero point {target:g}"
    return target, [zp_scale(b.zp, target) for b in bands], target, note


def _check_compatible(bands: list[Band_Data]) -> None:
    first = bands[0]
    for b in bands[1:]:
        if b.shape != first.shape:
            raise ValueError(
                f"cannot stack {first.filt} and {b.filt}: image shapes differ "
                f"({first.shape[1]}x{first.shape[0]} and {b.shape[1]}x{b.shape[0]} px); "
                "stacking needs pixel-aligned images of one shape")
    scales = [None if b.pix_scale is None else b.pix_scale.to_value(u.arcsec) for b in bands]
    if any(s is not None for s in scales):
        if any(s is None for s in scales):
            unknown = [b.filt for b, s in zip(bands, scales) if s is None]
            raise ValueError(f"cannot stack: no pixel scale for {', '.join(unknown)} "
                             "(give pix_scale= or a WCS)")
        for b, s in zip(bands[1:], scales[1:]):
            if abs(s - scales[0]) > _SCALE_RTOL * scales[0]:
                raise ValueError(
                    f"cannot stack {first.filt} and {b.filt}: pixel scales differ "
                    f"({scales[0]:.6g}\" and {s:.6g}\"); resample them onto one grid first")
    # With world coordinates, the grids must also coincide.
    wcss = [(b, b.load_wcs()) for b in bands]
    wcss = [(b, w) for b, w in wcss if w is not None]
    if len(wcss) >= 2:
        ny, nx = first.shape
        px = np.array([0.0, nx - 1.0, 0.0, nx - 1.0, (nx - 1) / 2.0])
        py = np.array([0.0, 0.0, ny - 1.0, ny - 1.0, (ny - 1) / 2.0])
        b0, w0 = wcss[0]
        world = w0.pixel_to_world_values(px, py)
        for b, w in wcss[1:]:
            x, y = w.world_to_pixel_values(*world)
            off = float(np.max(np.hypot(np.asarray(x) - px, np.asarray(y) - py)))
            if not np.isfinite(off) or off > _ALIGN_TOL_PIX:
                raise ValueError(
                    f"cannot stack {b0.filt} and {b.filt}: their WCS differ by up to "
                    f"{off:.3g} px; stacking needs pixel-aligned images")


def _weight_source(band: Band_Data):
    """(kind, path, ext) of the map the band's weights come from."""
    if band.wht_path is not None:
        return "wht", band.wht_path, band.wht_ext
    return "rms_err", band.rms_err_path, band.rms_err_ext


class _Reader:
    """Row blocks of one band's science image and weights (no full-size copies)."""

    def __init__(self, band: Band_Data, scale: float):
        self.band = band
        self.scale = float(scale)
        self.kind, wpath, wext = _weight_source(band)
        self._hduls = []
        self.sci = self._hdu(band.im_path, band.im_ext, "science image")
        self.wmap = self._hdu(wpath, wext, f"{self.kind} map")

    def _hdu(self, path, ext, what):
        what = f"{self.band.filt} {what}"
        hdul = _open(path, what)
        self._hduls.append(hdul)
        return hdul[resolve_ext(hdul, ext, path, what)]

    def close(self):
        for h in self._hduls:
            h.close()

    def block(self, y0: int, y1: int):
        """Science image and weight map rows ``y0:y1`` as native float32 (new arrays)."""
        return (np.asarray(self.sci.section[y0:y1, :], dtype=np.float32),
                np.asarray(self.wmap.section[y0:y1, :], dtype=np.float32))


@numba.njit(cache=True, nogil=True)
def _accumulate_rows(lo, hi, s, m, is_wht, scale, num, den):
    """Add one band's rows ``lo:hi`` of a block to the sums, in float64.

    The weight follows `Band_Data.load_wht`: a weight map with non-finite or
    negative values set to 0, or ``1/rms**2`` (float32) where the rms is
    finite and positive; 0 where the science pixel is not finite.  Scaled
    fluxes: ``s * scale`` with weight ``w / scale**2``.
    """
    nx = s.shape[1]
    scale2 = scale * scale
    for y in range(lo, hi):
        for x in range(nx):
            mv = m[y, x]
            if is_wht:
                w32 = mv if (np.isfinite(mv) and mv >= 0) else np.float32(0.0)
            elif np.isfinite(mv) and mv > 0:
                w32 = np.float32(1.0) / (mv * mv)
            else:
                w32 = np.float32(0.0)
            w = np.float64(w32)
            sv = s[y, x]
            if not (np.isfinite(sv) and np.isfinite(w)):
                w = 0.0
            s64 = np.float64(sv) if w > 0 else 0.0
            if scale != 1.0:
                s64 *= scale
                w /= scale2
            num[y, x] += s64 * w
            den[y, x] += w


@numba.njit(cache=True, nogil=True)
def _finish_rows(lo, hi, num, den, y0, sci, wht):
    """``sci = num / den`` (0 where ``den`` is 0) and ``wht = den`` into rows ``y0 + lo:hi``."""
    nx = num.shape[1]
    for y in range(lo, hi):
        for x in range(nx):
            d = den[y, x]
            sci[y0 + y, x] = num[y, x] / d if d > 0 else 0.0
            wht[y0 + y, x] = d


def _compute_stack(bands, scales, dtype):
    from ..extract._parallel import small_pages

    with small_pages():  # full frames and blocks on ordinary pages (see small_pages)
        return _stack_blocks(bands, scales, dtype)


def _stack_blocks(bands, scales, dtype):
    ny, nx = bands[0].shape
    sci = np.zeros((ny, nx), dtype=dtype)
    wht = np.zeros((ny, nx), dtype=dtype)
    rows = max(1, _CHUNK_BYTES // (8 * nx * 4))
    readers = [_Reader(b, s) for b, s in zip(bands, scales)]
    try:
        for y0 in range(0, ny, rows):
            y1 = min(ny, y0 + rows)
            n = y1 - y0
            num = np.zeros((n, nx))
            den = np.zeros((n, nx))
            # Summed in the bands' wavelength order, in float64.
            for r in readers:
                s, m = r.block(y0, y1)
                ranges(_accumulate_rows, n, _ROWS_PER_TASK, readonly(s), readonly(m),
                       r.kind == "wht", r.scale, num, den)
            ranges(_finish_rows, n, _ROWS_PER_TASK, readonly(num), readonly(den), y0, sci, wht)
    finally:
        for r in readers:
            r.close()
    return sci, wht


def _stack_header(bands, name, zp, note, scales) -> fits.Header:
    hdr = fits.Header()
    wcs = bands[0].load_wcs()
    if wcs is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            hdr.update(wcs.to_header(relax=True))
    if zp is not None:
        hdr["MAGZERO"] = (float(zp), "AB zero point of the stack")
    if bands[0].pix_scale is not None:
        hdr["PIXSCALE"] = (float(bands[0].pix_scale.to_value(u.arcsec)), "arcsec / pixel")
    hdr["FILTER"] = (name, "inverse-variance weighted stack")
    hdr["NSTACK"] = (len(bands), "number of stacked bands")
    for i, (b, s) in enumerate(zip(bands, scales), start=1):
        hdr[f"STKB{i}"] = (b.filt, "stacked band")
        hdr[f"STKZP{i}"] = (b.zp if b.zp is not None else "unknown", f"zero point of {b.filt}")
        hdr[f"STKSC{i}"] = (float(s), f"flux scale applied to {b.filt}")
    hdr["HISTORY"] = "galseg stack: sci = sum(s*w)/sum(w), wht = sum(w); wht=0 -> sci=0"
    hdr["HISTORY"] = f"galseg stack: {note}"
    return hdr


def stack_bands(bands: Sequence[Band_Data], *, common_zp="auto", work_dir=None,
                overwrite: bool = False, dtype="float32") -> Band_Data:
    """Inverse-variance weighted stack of pixel-aligned bands, cached on disk.

    Parameters
    ----------
    bands : sequence of `Band_Data`
        Two or more bands of one survey/version with the same shape and pixel
        scale (and, when they have one, the same WCS grid).
    common_zp : "auto", float or None
        Flux-unit handling; see the module docstring.  Default ``"auto"``:
        convert to the first band's zero point only when zero points differ.
    work_dir : path-like, optional
        Where to write the stack; default the first band's ``work_dir``.
    overwrite : bool
        Rebuild even when a valid cached stack exists.
    dtype : {"float32", "float64"}
        Type of the stored images (the sums are always float64).

    Returns
    -------
    Band_Data
        The stack, with ``filt`` like ``"F277W+F356W+F444W"`` and extra
        attributes ``stack_of`` (filters), ``stack_scales`` (flux scale of
        each band), ``stack_path`` (the sidecar) and ``stack_from_cache``.

    Raises
    ------
    ValueError
        Fewer than two bands, duplicated filters, different shapes, pixel
        scales or WCS grids, or zero points missing where a conversion
        needs them.
    """
    bands = list(bands)
    if len(bands) < 2:
        raise ValueError(f"a stack needs at least two bands, got {len(bands)}")
    for b in bands:
        if not isinstance(b, Band_Data):
            raise TypeError(f"stack_bands takes Band_Data objects, got {type(b).__name__}")
    filts = [b.filt for b in bands]
    dupes = sorted({f for f in filts if filts.count(f) > 1})
    if dupes:
        raise ValueError(f"band(s) {', '.join(dupes)} given twice to the stack")
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    bands.sort(key=lambda b: (filter_wavelength(b.filt), b.filt))
    first = bands[0]
    for b in bands[1:]:
        if (b.survey, b.version) != (first.survey, first.version):
            raise ValueError(f"cannot stack {first.filt} ({first.survey}/{first.version}) with "
                             f"{b.filt} ({b.survey}/{b.version}): different surveys or versions")
    _check_compatible(bands)
    target, scales, zp, note = _resolve_zero_points(bands, common_zp)

    name = stack_name(filts)
    instrument = "+".join(dict.fromkeys(b.instrument for b in bands))
    inputs = {}
    for b in bands:
        inputs[f"sci_{b.filt}"] = (b.im_path, b.im_ext if b.im_ext is not None else 0)
        kind, path, ext = _weight_source(b)
        inputs[f"{kind}_{b.filt}"] = (path, ext if ext is not None else 0)
    key = make_key(inputs, kind="stack", format=_STACK_FORMAT, filters=[b.filt for b in bands],
                   zero_points=[b.zp for b in bands], target_zp=target, scales=scales,
                   dtype=dtype.name)
    work = Path(work_dir) if work_dir is not None else first.work_dir
    directory = work / instrument / first.version / first.survey / "stacks"
    fs = FileSet(directory, f"{first.survey}_{name}_{key.short}", STACK_PARTS, "stack")

    computed = False
    if overwrite or not fs.is_valid(key.sha256):
        with fs.lock():
            if overwrite or not fs.is_valid(key.sha256):
                log.info("stacking %s for %s/%s (%s)", name, first.survey, first.version, note)
                sci, wht = _compute_stack(bands, scales, dtype)
                hdr = _stack_header(bands, name, zp, note, scales)
                fs.begin()
                written = {
                    "sci": atomic_write_fits_image(sci, fs.path("sci"), hdr, sha256=True),
                    "wht": atomic_write_fits_image(wht, fs.path("wht"), hdr, sha256=True),
                }
                fs.commit(key.sha256, written, {
                    "filters": [b.filt for b in bands], "zero_points": [b.zp for b in bands],
                    "scales": scales, "target_zp": target, "zp": zp, "note": note,
                    "inputs": {role: str(p) for role, (p, _e) in inputs.items()},
                })
                computed = True

    stack = Band_Data(
        first.survey, first.version, instrument, name, fs.path("sci"), 0,
        wht_path=fs.path("wht"), wht_ext=0,
        pix_scale=first.pix_scale, zp=zp, aper_diams=first.aper_diams, work_dir=work,
    )
    stack.zp_source = f"stack ({note})"
    stack.stack_of = [b.filt for b in bands]
    stack.stack_scales = list(scales)
    stack.stack_path = fs.path("sidecar")
    stack.stack_from_cache = not computed
    return stack
