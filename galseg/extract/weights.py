"""Weight maps to absolute variance, as SExtractor 2.25 does it (``weight.c``).

SExtractor turns every weight map into a variance map (``weight_to_var``):

* ``MAP_RMS``: ``var = rms**2`` (absolute);
* ``MAP_VAR``: ``var = sigfac**2 * var`` (relative: rescaled);
* ``MAP_WEIGHT``: ``var = sigfac**2 / weight`` (relative inverse variance,
  rescaled); zero or negative weight means no data (``var = BIG``);
* ``BACKGROUND``: the interpolated background-sigma map, squared.

The rescaling factor ``sigfac`` (``back.c``, end of ``makeback``) is the median,
over the background meshes, of ``sigma_image / sqrt(background of 1/weight)``:
the variance map is scaled so that its sky level matches the measured pixel
noise of the science image.  sep takes errors as absolute, so without this
step relative weights (e.g. HST drizzle weights) give absurdly many
detections.

Where the variance reaches ``WEIGHT_THRESH`` (in variance units) SExtractor
interpolates the data and/or the variance from the neighbouring pixels
(``INTERP_TYPE``, ``INTERP_MAXXLAG``, ``INTERP_MAXYLAG``; ``interpolate.c``);
:func:`interpolate_bad` does the same.

galseg departs from SExtractor only for values that SExtractor cannot use
either: non-finite, zero or negative ``rms`` / ``var`` and non-finite weights
are "no data" (SExtractor would take rms 0 as a noiseless pixel, and let NaN
spread through the filtered image).
"""

from __future__ import annotations

import numba
import numpy as np

from ._parallel import readonly
from .background import BIG, MeshStatistics

__all__ = [
    "WEIGHT_TYPES",
    "raw_variance",
    "rescale_variance",
    "noise_map",
    "weight_threshold",
    "rescale_factor",
    "interpolate_bad",
]

#: Weight types the engine knows, and the ``run`` argument each needs.
WEIGHT_TYPES = {
    "NONE": None,
    "BACKGROUND": None,
    "MAP_RMS": "rms",
    "MAP_WEIGHT": "wht",
    "MAP_VAR": "var",
}

_BIG32 = np.float32(BIG)


_CODES = {"MAP_WEIGHT": 0, "MAP_RMS": 1, "MAP_VAR": 2}


@numba.njit(cache=True)
def _raw_variance(a, code, var, nodata):
    """Variance of each pixel (``BIG`` without data); ``nodata`` of size 1 is
    not written.  Returns the number of pixels without data."""
    big = np.float32(BIG)
    n = a.size
    store = nodata.size == n
    nbad = 0
    for i in range(n):
        v = np.float32(a[i])
        bad = not (np.isfinite(v) and v > 0)
        r = big
        if not bad:
            if code == 0:
                r = np.float32(1.0) / v
            elif code == 1:
                r = v * v
                bad = not np.isfinite(r)  # rms beyond sqrt(float max)
            else:
                r = v
        if store:
            nodata[i] = bad
        var[i] = big if bad else r
        nbad += bad
    return nbad


@numba.njit(cache=True)
def _scan_rms(rms, wthresh):
    """For an absolute rms map: the pixels whose variance (``rms**2``, as
    `_raw_variance` computes it) is not below ``wthresh`` or that have no
    data, and the pixels where ``sqrt(rms**2)`` is not ``rms`` itself."""
    n = rms.size
    nbad = 0
    ninexact = 0
    for i in range(n):
        v = rms[i]
        if not (np.isfinite(v) and v > 0):
            nbad += 1
            continue
        r = v * v
        if not (np.isfinite(r) and r < wthresh):
            nbad += 1
        elif np.float32(np.sqrt(r)) != v:
            ninexact += 1
    return nbad, ninexact


@numba.njit(cache=True)
def _count_ge(var, t):
    n = var.size
    count = 0
    for i in range(n):
        count += var[i] >= t
    return count


@numba.njit(cache=True)
def _set_where(arr, where, value):
    n = arr.size
    for i in range(n):
        if where[i]:
            arr[i] = value


def raw_variance(weight_type, array):
    """Variance map before rescaling (SExtractor's ``weight_to_var``, sigfac 1).

    Parameters
    ----------
    weight_type : {"MAP_RMS", "MAP_WEIGHT", "MAP_VAR"}
    array : 2-D ndarray
        The rms, weight or variance map (any float dtype / byte order; not
        modified).

    Returns
    -------
    var : ndarray of float32
        ``BIG`` (1e30) where the map has no usable value.
    nodata : ndarray of bool
        Pixels with no usable value (non-finite; weight <= 0; rms or var <= 0).
    """
    if weight_type not in _CODES:
        raise ValueError(f"raw_variance: unknown weight type {weight_type!r}")
    a = np.asarray(array)
    if not a.dtype.isnative or a.dtype.kind != "f" or not a.flags.c_contiguous:
        a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("=") if a.dtype.kind == "f"
                                 else np.float64)
    var, nodata, _nbad = _variance(weight_type, a, want_nodata=True)
    return var, nodata


def _variance(weight_type, a, want_nodata=True):
    """`raw_variance` of a native, C-contiguous map, with the number of pixels
    without data; ``nodata`` is None unless ``want_nodata``."""
    var = np.empty(a.shape, np.float32)
    nodata = np.empty(a.shape, np.bool_) if want_nodata else None
    nbad = _raw_variance(readonly(a).reshape(-1), _CODES[weight_type], var.reshape(-1),
                         nodata.reshape(-1) if want_nodata else np.zeros(1, np.bool_))
    return var, nodata, int(nbad)


@numba.njit(cache=True)
def _rescale(var, w, nodata, s2, code):
    big = np.float32(BIG)
    for i in range(var.size):
        if nodata[i]:
            var[i] = big
        elif code == 0:
            var[i] = s2 / np.float32(w[i])
        elif code == 2:
            var[i] = var[i] * s2


def rescale_variance(weight_type, var, array, nodata, sigfac):
    """Apply the rescaling factor in place: ``sigfac**2 / weight`` (MAP_WEIGHT),
    ``sigfac**2 * var`` (MAP_VAR), single precision as ``weight_to_var``."""
    if weight_type not in ("MAP_WEIGHT", "MAP_VAR"):
        return var
    s2 = np.float32(np.float32(sigfac) * np.float32(sigfac))
    a = np.asarray(array)
    if not a.dtype.isnative or a.dtype.kind != "f" or not a.flags.c_contiguous:
        a = np.ascontiguousarray(a, dtype=np.float64)
    _rescale(var.reshape(-1), readonly(a).reshape(-1), readonly(nodata).reshape(-1), s2,
             _CODES[weight_type])
    return var


@numba.njit(cache=True)
def _noise(var, hard, rms):
    """``rms = sqrt(var)`` (``inf`` from ``BIG``), ``var = BIG`` on ``hard``
    pixels (``hard`` of size 1: none); ``rms`` may be ``var`` itself."""
    big = np.float32(BIG)
    inf = np.float32(np.inf)
    n = var.size
    any_hard = hard.size == n
    for i in range(n):
        if any_hard and hard[i]:
            var[i] = big
        v = var[i]
        rms[i] = inf if v >= big else np.float32(np.sqrt(v))


def noise_map(var, hard):
    """Absolute rms from the final variance; ``inf`` where there is no data.

    ``var`` is set to ``BIG`` on the ``hard`` (masked) pixels, in place.
    """
    rms = np.empty(var.shape, np.float32)
    _noise(var.reshape(-1), readonly(np.ascontiguousarray(hard, dtype=np.bool_)).reshape(-1),
           rms.reshape(-1))
    return rms


def weight_threshold(weight_type, params):
    """``WEIGHT_THRESH`` in variance units, as SExtractor converts it.

    SExtractor converts the threshold with the *unrescaled* weight-to-variance
    rule (``makeit.c`` calls ``weight_to_var`` before the rescaling factor is
    known), and compares it with rescaled variances later on.  The default is
    0 for ``MAP_WEIGHT`` (i.e. ``BIG``) and ``BIG`` otherwise.
    """
    values = params["WEIGHT_THRESH"]
    if not values:
        return float(_BIG32)
    t = float(values[0])
    if weight_type == "MAP_WEIGHT":
        return float(np.float32(1.0) / np.float32(t)) if t > 0 else float(_BIG32)
    if weight_type == "MAP_RMS":
        return float(np.float32(t) * np.float32(t)) if t < BIG else float(_BIG32)
    return float(np.float32(t))


def rescale_factor(image_mesh: MeshStatistics, weight_mesh: MeshStatistics) -> float:
    """SExtractor's weight-map rescaling factor ``sigfac`` (``makeback``).

    The median over meshes of ``image sigma / sqrt(variance-map background)``,
    using meshes where both are positive; 1 when there are none.
    """
    wb = weight_mesh.back.astype(np.float64).ravel()
    sig = image_mesh.sigma.ravel()
    ok = wb > 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = (sig[ok].astype(np.float64) / np.sqrt(wb[ok])).astype(np.float32)
    ratio = ratio[ratio > 0.0]
    if ratio.size == 0:
        return 1.0
    ratio.sort()
    n = ratio.size
    if n & 1:
        return float(ratio[n // 2])
    return float(np.float32((np.float64(ratio[n // 2 - 1]) + np.float64(ratio[n // 2])) / 2.0))


@numba.njit(cache=True)
def _interpolate(data, var, wthresh, xlag, ylag, with_data):
    height, width = var.shape
    ytimeout = np.zeros(width, np.int64)
    wbackup = np.empty(width, np.float32)
    backup = np.empty(width, np.float32)
    for y in range(height):
        xtimeout = 0  # as if the previous pixel had been interpolated
        for x in range(width):
            if var[y, x] >= wthresh:
                if xtimeout == 0:
                    if ytimeout[x] > 0:
                        ytimeout[x] -= 1
                        var[y, x] = wbackup[x]
                        if with_data:
                            data[y, x] = backup[x]
                else:
                    xtimeout -= 1
                    var[y, x] = var[y, x - 1]
                    if with_data:
                        data[y, x] = data[y, x - 1]
            else:
                xtimeout = xlag
                ytimeout[x] = ylag
            wbackup[x] = var[y, x]
            if with_data:
                backup[x] = data[y, x]


def interpolate_bad(data, var, wthresh, *, xlag=16, ylag=16, with_data=True):
    """Fill low-weight pixels from their neighbours (SExtractor ``interpolate``).

    Scanning line by line, a pixel whose variance is ``>= wthresh`` takes the
    variance (and, with ``with_data``, the value) of the pixel to its left,
    for at most ``xlag`` consecutive pixels after a good one, else of the pixel
    below it (previous line) for at most ``ylag`` lines.  Pixels further from
    good data are left as they are.

    ``data`` and ``var`` (float32, C-contiguous) are modified in place.
    """
    _interpolate(data, var, np.float32(wthresh), int(xlag), int(ylag), bool(with_data))
