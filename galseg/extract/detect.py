"""Detection: filtering, thresholding, segmentation and deblending.

SExtractor 2.25 (``scan.c``) detects on the *filtered* image: it correlates the
background-subtracted image with the ``FILTER_NAME`` kernel (normalised by the
sum of its absolute values, zero outside the image), correlates the variance
map with the same kernel, and keeps the pixels where::

    filtered > DETECT_THRESH * sqrt(filtered variance)

(a constant ``DETECT_THRESH * backsig`` without a weight map, ``DETECT_THRESH``
itself for ``THRESH_TYPE ABSOLUTE``).  Groups of at least ``DETECT_MINAREA``
8-connected detected pixels are detections, which are deblended with
``DEBLEND_NTHRESH`` exponentially spaced sub-thresholds between the
detection's *lowest* pixel threshold and its peak, and ``DEBLEND_MINCONT``.

sep's ``extract`` ports this code but differs in three places that change the
results wherever the noise varies: it compares the filtered image with the
*unfiltered* per-pixel noise, it takes a detection's deblending base level as
the *mean* of its pixel thresholds rather than the minimum, and its filtering
arithmetic differs from SExtractor's in the last bits.  So this module filters
the image and the variance itself (with SExtractor's single-precision
arithmetic), builds the exact threshold map, and hands sep the *filtered*
image with no further filtering, ``thresh=1`` and that map as the noise.  To
give sep's deblender SExtractor's base level, the threshold map is first set,
inside each detection, to the detection's minimum threshold: the set of
detected pixels cannot change (every pixel of a detection is above its own
threshold, hence above the minimum), only the level that sep averages.

Cleaning (``clean=False`` here) is done by :mod:`galseg.extract.clean`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numba
import numpy as np
import sep
from scipy import ndimage

__all__ = [
    "detection_kernel",
    "filter_image",
    "threshold_map",
    "Detection",
    "detect",
]

_STRUCT8 = np.ones((3, 3), dtype=bool)


def detection_kernel(params):
    """The normalised detection filter of ``params`` (None when ``FILTER`` is N).

    The ``.conv`` file named by ``FILTER_NAME`` (found as
    :mod:`galseg.extract.presets` finds it) is read and, for ``CONV NORM``
    files, divided by the sum of the absolute values of its elements summed
    in SExtractor's order (``filter.c``), so that the single-precision kernel
    is bit-for-bit SExtractor's.
    """
    if not params["FILTER"]:
        return None
    from .presets import filter_path
    from .sexfiles import read_conv

    raw, normalise = read_conv(filter_path(params))
    return normalise_kernel(raw, normalise)


def normalise_kernel(kernel, normalise=True):
    """Normalise a raw kernel as SExtractor's ``getconv`` does.

    Parameters
    ----------
    kernel : 2-D array
        The kernel as written in the ``.conv`` file.
    normalise : bool
        ``CONV NORM`` (True) or ``CONV NONORM``.

    Returns
    -------
    ndarray of float32
    """
    k = np.asarray(kernel, dtype=np.float32)
    if k.ndim != 2:
        raise ValueError(f"filter kernel must be 2-D, got shape {k.shape}")
    if not normalise:
        return np.ascontiguousarray(k)
    total = 0.0
    var = 0.0
    for v in k.ravel().tolist():  # sequential double sums, as filter.c
        total += abs(v)
        var += v * v
    if total == 0.0:
        total = var ** 0.5
    if total == 0.0:
        raise ValueError("filter kernel is all zeros")
    return np.ascontiguousarray((k.astype(np.float64) / total).astype(np.float32))


@numba.njit(cache=True)
def _correlate(image, kernel, out):
    height, width = image.shape
    kh, kw = kernel.shape
    kh2 = kh // 2
    kw2 = kw // 2
    for y in range(height):
        for x in range(width):
            out[y, x] = np.float32(0.0)
        for r in range(kh):
            yy = y + r - kh2
            if yy < 0 or yy >= height:
                continue
            for c in range(kw):
                dmx = c - kw2
                mval = kernel[r, c]
                x0 = -dmx if dmx < 0 else 0
                x1 = width - dmx if dmx > 0 else width
                for x in range(x0, x1):
                    out[y, x] += mval * image[yy, x + dmx]


def filter_image(image, kernel):
    """Correlate ``image`` with ``kernel`` exactly as SExtractor's ``convolve``.

    Zero outside the image, single-precision products accumulated in kernel
    order, so that the result is bit-for-bit SExtractor's ``FILTERED`` check
    image.

    Parameters
    ----------
    image : 2-D ndarray (converted to float32; not modified)
    kernel : 2-D ndarray of float32, already normalised

    Returns
    -------
    ndarray of float32
    """
    img = np.ascontiguousarray(image, dtype=np.float32)
    k = np.ascontiguousarray(kernel, dtype=np.float32)
    out = np.empty_like(img)
    _correlate(img, k, out)
    return out


def threshold_map(params, *, fvar=None, backsig=None):
    """Per-pixel (or constant) detection threshold, as ``scan.c`` computes it.

    Parameters
    ----------
    params : Params
        Uses ``DETECT_THRESH`` and ``THRESH_TYPE``.
    fvar : 2-D ndarray of float32, optional
        The (filtered, when filtering) absolute variance map; None when there
        is no weight map.
    backsig : float, optional
        Global background sigma (used without a weight map).

    Returns
    -------
    float or ndarray of float32
        A float when the threshold is constant.
    """
    t = np.float32(params["DETECT_THRESH"])
    absolute = params["THRESH_TYPE"].upper() == "ABSOLUTE"
    if absolute:
        return float(t)
    if fvar is None:
        if backsig is None:
            raise ValueError("threshold_map: need fvar or backsig for a relative threshold")
        return float(np.float32(np.float64(t) * np.float64(np.float32(backsig))))
    with np.errstate(invalid="ignore"):
        thr = (np.float64(t) * np.sqrt(np.maximum(fvar, 0).astype(np.float64)))
    return thr.astype(np.float32)


@dataclass
class Detection:
    """Raw (uncleaned) detections, in SExtractor's processing order.

    Attributes
    ----------
    objects : structured ndarray
        sep's catalogue of the deblended detections, in the order SExtractor
        completes them (row ``i`` has segment id ``i + 1`` in ``segmap``).
        Its flux-like fields refer to the *filtered* image.
    segmap : ndarray of int32
        Segment ids ``1..n`` (0: sky).
    filtered : ndarray of float32
        The filtered detection image (the input when not filtering).
    thresh : float or ndarray of float32
        The detection threshold per pixel (or constant).
    parent : ndarray of int64
        For each object, the id of the detection (8-connected group of
        detected pixels) it was deblended from.
    parent_ymin, parent_ymax : ndarray of int64
        Vertical extent of each object's parent detection.
    pixstack, sub_object_limit : int
        The sep limits the extraction ran with.
    """

    objects: np.ndarray
    segmap: np.ndarray
    filtered: np.ndarray
    thresh: float | np.ndarray
    parent: np.ndarray
    parent_ymin: np.ndarray
    parent_ymax: np.ndarray
    pixstack: int
    sub_object_limit: int


_PIXSTACK_RE = re.compile(r"pixel|pixstack", re.IGNORECASE)
_SUBOBJ_RE = re.compile(r"sub-?object|deblend", re.IGNORECASE)


def _extract_growing(image, err, minarea, nthresh, mincont, pixstack, max_pixstack):
    """sep.extract that grows sep's pixel stack / sub-object limit and retries."""
    sub_limit = sep.get_sub_object_limit()
    old_stack = sep.get_extract_pixstack()
    try:
        stack = max(int(pixstack), 1)
        while True:
            sep.set_extract_pixstack(stack)
            try:
                objs, seg = sep.extract(
                    image, 1.0, err=err, minarea=minarea, filter_kernel=None,
                    deblend_nthresh=nthresh, deblend_cont=mincont, clean=False,
                    segmentation_map=True)
                return objs, seg, stack, sep.get_sub_object_limit()
            except Exception as exc:  # sep raises plain Exception subclasses
                msg = str(exc)
                if _PIXSTACK_RE.search(msg) and "sub-object" not in msg:
                    if stack >= max_pixstack:
                        raise
                    stack = min(stack * 4, max_pixstack)
                elif _SUBOBJ_RE.search(msg):
                    sep.set_sub_object_limit(sep.get_sub_object_limit() * 4)
                else:
                    raise
    finally:
        sep.set_extract_pixstack(old_stack)
        sep.set_sub_object_limit(sub_limit)


def detect(filtered, thresh, params):
    """Segment and deblend a filtered image against a threshold (map).

    Parameters
    ----------
    filtered : 2-D ndarray of float32
        The filtered, background-subtracted detection image.
    thresh : float or 2-D ndarray of float32
        Detection threshold (see `threshold_map`).
    params : Params
        Uses ``DETECT_MINAREA``, ``DEBLEND_NTHRESH``, ``DEBLEND_MINCONT``,
        ``MEMORY_PIXSTACK``.

    Returns
    -------
    Detection
    """
    image = np.ascontiguousarray(filtered, dtype=np.float32)
    minarea = max(int(params["DETECT_MINAREA"]), 1)
    scalar = np.ndim(thresh) == 0
    above = image > (np.float32(thresh) if scalar else thresh)
    labels, nlab = ndimage.label(above, structure=_STRUCT8)
    npix_total = int(above.sum())
    if nlab:
        sizes = np.bincount(labels.ravel(), minlength=nlab + 1)
        keep = sizes >= minarea
        keep[0] = False
    else:
        keep = np.zeros(1, bool)

    if scalar:
        err = float(np.float32(thresh))
    else:
        # Inside each detection, the minimum pixel threshold everywhere: sep
        # then deblends from SExtractor's base level (see module docstring).
        err = np.array(thresh, dtype=np.float32, copy=True)
        if keep.any():
            idx = np.flatnonzero(keep)
            mins = ndimage.minimum(err, labels, idx).astype(np.float32)
            lut = np.zeros(nlab + 1, np.float32)
            lut[idx] = mins
            inside = keep[labels]
            err[inside] = lut[labels[inside]]

    pixstack = min(max(int(params["MEMORY_PIXSTACK"]), 300000), npix_total + 1)
    objs, seg, stack, sublim = _extract_growing(
        image, err, minarea, int(params["DEBLEND_NTHRESH"]),
        float(params["DEBLEND_MINCONT"]), pixstack, npix_total + 1)
    seg = seg.astype(np.int32, copy=False)

    n = len(objs)
    parent = np.zeros(n, np.int64)
    pymin = np.zeros(n, np.int64)
    pymax = np.zeros(n, np.int64)
    if n:
        # any pixel of an object lies in its parent detection
        first = _first_pixel_of_labels(seg, n)
        parent = labels.ravel()[first].astype(np.int64)
        slices = ndimage.find_objects(labels)
        pymin_l = np.array([s[0].start if s is not None else 0 for s in slices], np.int64)
        pymax_l = np.array([s[0].stop - 1 if s is not None else 0 for s in slices], np.int64)
        pymin = pymin_l[parent - 1]
        pymax = pymax_l[parent - 1]
    return Detection(objs, seg, image, thresh, parent, pymin, pymax, stack, sublim)


@numba.njit(cache=True)
def _first_pixel_of_labels_nb(flat, n):
    out = np.full(n, -1, np.int64)
    for i in range(flat.size):
        v = flat[i]
        if v > 0 and out[v - 1] < 0:
            out[v - 1] = i
    return out


def _first_pixel_of_labels(seg, n):
    return _first_pixel_of_labels_nb(seg.ravel(), n)


# --------------------------------------------------------------------------- per-object analysis
#: Fields of the per-object analysis (`analyse_detections`), SExtractor ``objstruct`` names.
ANALYSIS_FIELDS = (
    ("fdnpix", np.int64), ("dnpix", np.int64), ("fdflux", np.float32), ("dflux", np.float32),
    ("fdpeak", np.float32), ("dpeak", np.float32), ("dthresh", np.float32),
    ("mthresh", np.float32), ("abcor", np.float32),
    ("poserr_mx2", np.float64), ("poserr_my2", np.float64), ("poserr_mxy", np.float64),
    ("npix", np.int64), ("flux", np.float32), ("fluxerr", np.float32), ("peak", np.float32),
    ("thresh", np.float32), ("fwhm", np.float32), ("bkg", np.float32),
)
NISO = 8


@numba.njit(cache=True)
def _group_pixels(flat, n):
    """Counting sort of labelled pixels: CSR (offsets, pixel indices in raster order)."""
    counts = np.zeros(n + 1, np.int64)
    for i in range(flat.size):
        v = flat[i]
        if v > 0:
            counts[v] += 1
    offsets = np.zeros(n + 1, np.int64)
    for k in range(1, n + 1):
        offsets[k] = offsets[k - 1] + counts[k]
    fill = offsets.copy()
    index = np.empty(offsets[n], np.int64)
    for i in range(flat.size):
        v = flat[i]
        if v > 0:
            index[fill[v - 1]] = i
            fill[v - 1] += 1
    return offsets, index


@numba.njit(cache=True)
def _clean_level(tpix, minarea):
    """``mthresh``: SExtractor's heap selection of the ``minarea``-th highest value.

    A transcription of ``examineiso``'s loop, including its quirks (the
    ``minarea + 1``-th value is skipped, the sift-down index is off by one,
    and with exactly ``minarea`` pixels the first one is returned), so that
    CLEAN decisions match SExtractor's.  Pixels are taken in raster order,
    SExtractor's pixel-list order for most objects.
    """
    n = tpix.size
    if n < minarea:
        return np.float32(0.0)
    heap = np.empty(minarea, np.float32)
    h = minarea
    for i in range(n):
        t = tpix[i]
        if h > 0:
            heap[minarea - h] = t
        elif h < 0:
            if t > heap[0]:
                heap[0] = t
                j = 0
                while True:
                    k = (j + 1) << 1
                    if k > minarea:
                        break
                    hk = k
                    if k != minarea and heap[hk - 1] > heap[hk]:
                        hk += 1
                        k += 1
                    hk -= 1
                    if heap[j] <= heap[hk]:
                        break
                    sw = heap[hk]
                    heap[hk] = heap[j]
                    heap[j] = sw
                    j = k
        else:
            heap.sort()
        h -= 1
    return heap[0]


@numba.njit(cache=True)
def _back_at(mesh, bw, bh, x, y):
    """Bilinear mesh background at a pixel (``back()`` in back.c)."""
    ny, nx = mesh.shape
    dx = x / bw - 0.5
    dy = y / bh - 0.5
    xl = int(dx)
    yl = int(dy)
    dx -= xl
    dy -= yl
    if xl < 0:
        xl = 0
        dx -= 1.0
    elif xl >= nx - 1:
        xl = 0 if nx < 2 else nx - 2
        dx += 1.0
    if yl < 0:
        yl = 0
        dy -= 1.0
    elif yl >= ny - 1:
        yl = 0 if ny < 2 else ny - 2
        dy += 1.0
    cdx = 1 - dx
    b0 = mesh[yl, xl]
    b1 = b0 if nx < 2 else mesh[yl, xl + 1]
    if ny < 2:
        b2 = b1
        b3 = b1 if nx < 2 else b0
    else:
        b2 = mesh[yl + 1, xl + 1] if nx >= 2 else mesh[yl + 1, xl]
        b3 = mesh[yl + 1, xl] if nx >= 2 else b2
    return np.float32((1 - dy) * (cdx * b0 + dx * b1) + dy * (dx * b2 + cdx * b3))


@numba.njit(cache=True)
def _analyse(offsets, index, width, data, filt, thr, thr_is_map, var, has_var,
             mx, my, a, b, singu, minarea, dbacknoise2, gain, weighted,
             weightgain, athreshfac, athresh, backnoise2, satur, mesh, bw, bh,
             out_i, out_f, out_d, iso):
    n = mx.size
    for o in range(n):
        start = offsets[o]
        stop = offsets[o + 1]
        npx = stop - start
        # ---- detection-image quantities (preanalyse, ANALYSE_FULL)
        dthresh = np.float32(3.0e38)
        fdflux = 0.0
        fdpeak = np.float32(-1e30)
        dpeak = np.float32(-1e30)
        for k in range(start, stop):
            p = index[k]
            y = p // width
            x = p - y * width
            t = thr[y, x] if thr_is_map else thr[0, 0]
            if t < dthresh:
                dthresh = t
            c = filt[y, x]
            fdflux += c
            if c > fdpeak:
                fdpeak = c
            v = data[y, x]
            if v > dpeak:
                dpeak = v
        thresh = np.float64(dthresh)
        thresh2 = (thresh + dpeak) / 2.0
        dnpix = 0
        area2 = 0
        dflux = 0.0
        tpix = np.empty(npx, np.float32)
        for k in range(start, stop):
            p = index[k]
            y = p // width
            x = p - y * width
            v = data[y, x]
            dflux += v
            if v > thresh:
                dnpix += 1
            if v > thresh2:
                area2 += 1
            t = thr[y, x] if thr_is_map else thr[0, 0]
            tpix[k - start] = filt[y, x] - t
        abcor = np.float32(1.0)
        t1t2 = thresh / thresh2
        if t1t2 > 0.0 and not weighted:
            darea = np.float64(area2) - dnpix
            lg = math.log(t1t2 if t1t2 < 1.0 else 0.99)
            val = (darea if darea < 0.0 else -1.0) / (2 * math.pi * lg * a[o] * b[o])
            abcor = np.float32(val if val < 1.0 else 1.0)
        # ---- CLEAN level (examineiso's heap, see _clean_level)
        mthresh = _clean_level(tpix, minarea)
        # ---- examineiso: measurement-image isophotal quantities
        fdflux32 = np.float32(fdflux)
        flux2 = np.float64(fdflux32) * np.float64(fdflux32)
        esum = 0.0
        emx2 = 0.0
        emy2 = 0.0
        emxy = 0.0
        tv = 0.0
        sigtv = 0.0
        peak = np.float32(-1e30)
        minthresh = np.float32(3.0e38) if has_var else np.float32(athresh)
        area = 0
        for k in range(start, stop):
            p = index[k]
            y = p // width
            x = p - y * width
            pix = data[y, x]
            if pix > peak:
                peak = pix
            if has_var:
                pv = np.float64(var[y, x])
                pthresh = np.float32(athreshfac * math.sqrt(pv))
                if pthresh < minthresh:
                    minthresh = pthresh
            else:
                pv = backnoise2
                pthresh = np.float32(athresh)
            var2 = pv
            if weightgain and pix > 0.0 and gain > 0.0:
                var2 += pix / gain * pv / backnoise2
            sigtv += var2
            if pix > pthresh:
                area += 1
            tv += pix
            err = dbacknoise2
            cdpix = filt[y, x]
            if gain > 0.0 and cdpix > 0.0:
                err += cdpix / gain
            ddx = x - mx[o]
            ddy = y - my[o]
            esum += err
            emx2 += err * ddx * ddx
            emy2 += err * ddy * ddy
            emxy += err * ddx * ddy
        emx2 /= flux2
        emy2 /= flux2
        emxy /= flux2
        esum *= 0.08333 / flux2
        if singu[o] and (emx2 * emy2 - emxy * emxy) < esum * esum:
            emx2 += esum
            emy2 += esum
        if not weightgain and gain > 0.0 and tv > 0.0:
            sigtv += tv / gain
        # isophotal areas ISO0..ISO7
        othresh = minthresh
        if peak > 0.0 and othresh > 0.0:
            for i in range(NISO):
                iso[o, i] = 0
            for k in range(start, stop):
                p = index[k]
                y = p // width
                x = p - y * width
                pix = data[y, x]
                for i in range(NISO):
                    lev = np.float32(othresh * (np.float64(peak) / othresh) ** (i / NISO))
                    if pix > lev:
                        iso[o, i] += 1
                    else:
                        break
        else:
            for i in range(NISO):
                iso[o, i] = 0
            for k in range(start, stop):
                p = index[k]
                y = p // width
                x = p - y * width
                pix = data[y, x]
                for i in range(NISO):
                    if pix > 0.0:
                        iso[o, i] += 1
                    else:
                        break
        # FWHM_IMAGE from the log-profile fit (examineiso)
        bkg = _back_at(mesh, bw, bh, int(mx[o] + 0.5), int(my[o] + 0.5))
        fwhm = np.float32(0.0)
        thresh0 = np.float32(peak / 5.0)
        if thresh0 < othresh:
            thresh0 = othresh
        if thresh0 > 0.0:
            sat = np.float64(satur - bkg)
            s = 0.0
            sx = 0.0
            sy = 0.0
            sxx = 0.0
            sxy = 0.0
            for k in range(start, stop):
                p = index[k]
                y = p // width
                x = p - y * width
                pv = np.float64(data[y, x])
                if pv > thresh0 and pv < sat:
                    ddx = x - mx[o]
                    ddy = y - my[o]
                    lpix = math.log(pv)
                    inverr2 = pv * pv
                    s += inverr2
                    d2 = ddx * ddx + ddy * ddy
                    sx += d2 * inverr2
                    sxx += d2 * d2 * inverr2
                    sy += lpix * inverr2
                    sxy += lpix * d2 * inverr2
            dd = s * sxx - sx * sx
            if abs(dd) > 0.0:
                bb = -(s * sxy - sx * sy) / dd
                bmax = np.float64(np.float32(1.0) / (np.float32(13.0) * a[o] * b[o]))
                if bb < bmax:
                    bb = bmax
                fw = np.float32(1.6651 / math.sqrt(bb))
                if fw > 0.0:
                    fw -= np.float32(1.0) / (np.float32(4.0) * fw)
                fwhm = fw
        out_i[o, 0] = npx
        out_i[o, 1] = dnpix
        out_i[o, 2] = area
        out_f[o, 0] = fdflux32
        out_f[o, 1] = np.float32(dflux)
        out_f[o, 2] = fdpeak
        out_f[o, 3] = dpeak
        out_f[o, 4] = dthresh
        out_f[o, 5] = mthresh
        out_f[o, 6] = abcor
        out_f[o, 7] = np.float32(tv)
        out_f[o, 8] = np.float32(sigtv)
        out_f[o, 9] = peak
        out_f[o, 10] = minthresh
        out_f[o, 11] = fwhm
        out_f[o, 12] = bkg
        out_d[o, 0] = emx2
        out_d[o, 1] = emy2
        out_d[o, 2] = emxy


def analyse_detections(det, data, var, params, *, backsig, mesh, gain=0.0,
                       satur_level=50000.0):
    """SExtractor's per-object detection-stage analysis of the raw detections.

    Computes, for every deblended object *before* cleaning, what SExtractor's
    ``preanalyse`` and ``examineiso`` compute (and what ``mergeobject`` later
    adds up): detection threshold (lowest pixel threshold), ``abcor``, the
    CLEAN level ``mthresh``, positional error moments, the isophotal area,
    flux and variance above ``ANALYSIS_THRESH``, ``ISO0..7``, ``FWHM_IMAGE``
    and the local mesh background.

    Parameters
    ----------
    det : Detection
    data : ndarray of float32
        Background-subtracted (interpolated) image.
    var : ndarray of float32 or None
        Absolute variance per pixel (None without a weight map).
    params : Params
    backsig : float
        Global background sigma.
    mesh : MeshStatistics
        Mesh statistics of the image (for the ``BACKGROUND`` value).
    gain, satur_level : float
        Detector gain (0: none) and saturation level.

    Returns
    -------
    props : structured ndarray
        One row per raw object, fields `ANALYSIS_FIELDS`.
    iso : ndarray of int64, shape (n, 8)
        ``ISO0..ISO7`` areas.
    """
    objs = det.objects
    n = len(objs)
    height, width = det.segmap.shape
    offsets, index = _group_pixels(det.segmap.ravel(), n)
    thr = det.thresh
    thr_is_map = np.ndim(thr) == 2
    thr_arr = (np.ascontiguousarray(thr, dtype=np.float32) if thr_is_map
               else np.full((1, 1), thr, np.float32))
    has_var = var is not None
    var_arr = (np.ascontiguousarray(var, dtype=np.float32) if has_var
               else np.zeros((1, 1), np.float32))
    backsig32 = np.float32(backsig)
    ath = np.float32(params["ANALYSIS_THRESH"])
    if params["THRESH_TYPE"].upper() == "ABSOLUTE":
        athresh = float(ath)
        athreshfac = float(ath) / float(backsig32) if backsig32 > 0 else 1.0
    else:
        athresh = float(np.float32(np.float64(ath) * np.float64(backsig32)))
        athreshfac = float(athresh) / float(backsig32) if backsig32 > 0 else 1.0
    backnoise2 = float(backsig32 * backsig32)
    singu = (objs["flag"] & sep.OBJ_SINGU).astype(np.bool_) if n else np.zeros(0, bool)
    out_i = np.zeros((n, 3), np.int64)
    out_f = np.zeros((n, 13), np.float32)
    out_d = np.zeros((n, 3), np.float64)
    iso = np.zeros((n, NISO), np.int64)
    bw, bh = mesh.mesh_size
    _analyse(offsets, index, width, np.ascontiguousarray(data, dtype=np.float32),
             det.filtered, thr_arr, thr_is_map, var_arr, has_var,
             np.ascontiguousarray(objs["x"], dtype=np.float64),
             np.ascontiguousarray(objs["y"], dtype=np.float64),
             np.ascontiguousarray(objs["a"], dtype=np.float32),
             np.ascontiguousarray(objs["b"], dtype=np.float32), singu,
             max(int(params["DETECT_MINAREA"]), 1), backnoise2, float(gain),
             has_var, bool(has_var and params["WEIGHT_GAIN"]), athreshfac, athresh,
             backnoise2, float(satur_level), mesh.back, bw, bh, out_i, out_f, out_d, iso)
    props = np.zeros(n, dtype=list(ANALYSIS_FIELDS))
    props["fdnpix"], props["dnpix"], props["npix"] = out_i.T
    (props["fdflux"], props["dflux"], props["fdpeak"], props["dpeak"], props["dthresh"],
     props["mthresh"], props["abcor"], props["flux"], props["fluxerr"], props["peak"],
     props["thresh"], props["fwhm"], props["bkg"]) = out_f.T
    props["poserr_mx2"], props["poserr_my2"], props["poserr_mxy"] = out_d.T
    return props, iso
