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
    above: np.ndarray | None = None


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

    # sep's stack holds the pixels of the detections in progress: never more
    # than all detected pixels (+ slack for its free-list bookkeeping).
    enough = npix_total + 64
    pixstack = min(max(int(params["MEMORY_PIXSTACK"]), 300000), enough)
    objs, seg, stack, sublim = _extract_growing(
        image, err, minarea, int(params["DEBLEND_NTHRESH"]),
        float(params["DEBLEND_MINCONT"]), pixstack, enough)
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
    return Detection(objs, seg, image, thresh, parent, pymin, pymax, stack, sublim, above)


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
                       satur_level=50000.0, pixel_lists=None):
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
    pixel_lists : (offsets, index), optional
        Each object's flat pixel indices in SExtractor's pixel-list order
        (`sextractor_pixel_lists`); raster order when not given.

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
    if pixel_lists is None:
        offsets, index = _group_pixels(det.segmap.ravel(), n)
    else:
        offsets, index = pixel_lists
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


# --------------------------------------------------------------------------- Lutz pixel order
@numba.njit(cache=True)
def _lutz_chains(mask, minarea):
    """Pixel lists of the detections in SExtractor's own order (``scanimage``).

    A transcription of the Lutz one-pass segmentation of ``scan.c`` that keeps
    only the bookkeeping of pixel chains: SExtractor processes each detection's
    pixels in the order of its linked pixel list, which depends on how the
    segments of successive lines were joined.  Returns, for every detection of
    at least ``minarea`` pixels in completion order, its flat pixel indices in
    that order (CSR: ``offsets``, ``pixels``).
    """
    height, width = mask.shape
    ndet = 0
    for y in range(height):
        for x in range(width):
            if mask[y, x]:
                ndet += 1
    nextpix = np.full(ndet, -1, np.int64)
    flat = np.empty(ndet, np.int64)
    stack = width + 1
    i_first = np.full(stack, -1, np.int64)
    i_last = np.full(stack, -1, np.int64)
    i_nb = np.zeros(stack, np.int64)
    s_first = np.full(stack, -1, np.int64)
    s_last = np.full(stack, -1, np.int64)
    s_nb = np.zeros(stack, np.int64)
    marker = np.zeros(stack, np.int8)
    psstack = np.zeros(stack + 2, np.int8)
    start = np.zeros(stack, np.int64)
    end = np.zeros(stack, np.int64)
    heads = []
    sizes = []
    UNKNOWN = -1
    NONOBJECT, OBJECT = 2, 3  # one enum with COMPLETE/INCOMPLETE, as in C
    COMPLETE, INCOMPLETE = 0, 1
    co = 0
    pstop = 0
    counter = 0
    for yl in range(height + 1):
        ps = COMPLETE
        cs = NONOBJECT
        for xl in range(width + 1):
            on = xl < width and yl < height and mask[yl, xl]
            newmarker = marker[xl]
            marker[xl] = 0
            cur = -1
            if on:
                cur = counter
                flat[cur] = yl * width + xl
                counter += 1
                if cs != OBJECT:
                    cs = OBJECT
                    if ps == OBJECT:
                        if start[co] == UNKNOWN:
                            marker[xl] = 1
                            start[co] = xl
                        else:
                            marker[xl] = 2
                    else:
                        psstack[pstop] = ps
                        pstop += 1
                        marker[xl] = 1
                        co += 1
                        start[co] = xl
                        ps = COMPLETE
                        i_first[co] = -1
                        i_last[co] = -1
                        i_nb[co] = 0
            if newmarker:
                if newmarker == 1:  # 'S'
                    psstack[pstop] = ps
                    pstop += 1
                    if cs == NONOBJECT:
                        psstack[pstop] = COMPLETE
                        pstop += 1
                        co += 1
                        i_first[co] = s_first[xl]
                        i_last[co] = s_last[xl]
                        i_nb[co] = s_nb[xl]
                        start[co] = UNKNOWN
                    else:
                        i_nb[co] += s_nb[xl]
                        if i_first[co] == -1:
                            i_first[co] = s_first[xl]
                            i_last[co] = s_last[xl]
                        elif s_last[xl] != -1:
                            nextpix[i_last[co]] = s_first[xl]
                            i_last[co] = s_last[xl]
                    ps = OBJECT
                elif newmarker == 2:  # 's'
                    if cs == OBJECT and ps == COMPLETE:
                        pstop -= 1
                        xl2 = start[co]
                        i_nb[co - 1] += i_nb[co]
                        if i_first[co - 1] == -1:
                            i_first[co - 1] = i_first[co]
                            i_last[co - 1] = i_last[co]
                        elif i_last[co] != -1:
                            nextpix[i_last[co - 1]] = i_first[co]
                            i_last[co - 1] = i_last[co]
                        co -= 1
                        if start[co] == UNKNOWN:
                            start[co] = xl2
                        else:
                            marker[xl2] = 2
                    ps = OBJECT
                elif newmarker == 3:  # 'f'
                    ps = INCOMPLETE
                else:  # 'F'
                    pstop -= 1
                    ps = psstack[pstop]
                    if cs == NONOBJECT and ps == COMPLETE:
                        if start[co] == UNKNOWN:
                            if i_nb[co] >= minarea:
                                heads.append(i_first[co])
                                sizes.append(i_nb[co])
                        else:
                            marker[end[co]] = 4
                            s_first[start[co]] = i_first[co]
                            s_last[start[co]] = i_last[co]
                            s_nb[start[co]] = i_nb[co]
                        co -= 1
                        pstop -= 1
                        ps = psstack[pstop]
            if on:
                i_nb[co] += 1
                if i_first[co] == -1:
                    i_first[co] = cur
                    i_last[co] = cur
                else:
                    nextpix[i_last[co]] = cur
                    i_last[co] = cur
            elif cs == OBJECT:
                cs = NONOBJECT
                if ps != COMPLETE:
                    marker[xl] = 3
                    end[co] = xl
                else:
                    pstop -= 1
                    ps = psstack[pstop]
                    marker[xl] = 4
                    s_first[start[co]] = i_first[co]
                    s_last[start[co]] = i_last[co]
                    s_nb[start[co]] = i_nb[co]
                    co -= 1
    nobj = len(heads)
    offsets = np.zeros(nobj + 1, np.int64)
    for k in range(nobj):
        offsets[k + 1] = offsets[k] + sizes[k]
    pixels = np.empty(offsets[nobj], np.int64)
    for k in range(nobj):
        p = heads[k]
        q = offsets[k]
        while p != -1:
            pixels[q] = flat[p]
            q += 1
            p = nextpix[p]
    return offsets, pixels


def lutz_pixel_order(mask, minarea):
    """SExtractor's pixel-list order of every detection (see `_lutz_chains`).

    Parameters
    ----------
    mask : 2-D bool array
        Detected pixels (filtered image above threshold).
    minarea : int

    Returns
    -------
    offsets, pixels : ndarray of int64
        Detection ``k`` (in completion order) has the flat pixel indices
        ``pixels[offsets[k]:offsets[k + 1]]``, in its pixel-list order.
    """
    return _lutz_chains(np.ascontiguousarray(mask, dtype=np.bool_), int(minarea))



# --------------------------------------------------------------------------- deblending: pixel sharing
# SExtractor's deblender (refine.c) shares the faint pixels of a deblended
# detection among its children at random ("gatherup"), drawing glibc's rand()
# in the order of the detection's pixel list.  sep draws from another
# generator, so its children differ from SExtractor's in their outskirts.  The
# children's cores (found by sep) are recovered here and the sharing redone
# exactly as SExtractor does it, with glibc's generator.

_RAND_MAX = 2147483647


@numba.njit(cache=True)
def _glibc_srand(seed):
    """State of glibc's ``random()`` TYPE_3 generator after ``srand(seed)``."""
    r = np.zeros(344 + 34, np.int64)
    r[0] = seed
    for i in range(1, 31):
        hi = r[i - 1] // 127773
        lo = r[i - 1] % 127773
        word = 16807 * lo - 2836 * hi
        if word < 0:
            word += 2147483647
        r[i] = word
    for i in range(31, 34):
        r[i] = r[i - 31]
    for i in range(34, 344):
        r[i] = (r[i - 31] + r[i - 3]) & 0xFFFFFFFF
    state = np.zeros(35, np.int64)  # 34 last values + position
    for i in range(34):
        state[i] = r[344 - 34 + i]
    state[34] = 0
    return state


@numba.njit(cache=True)
def _glibc_rand(state):
    pos = state[34]
    # ring of the last 34 values: r[i] = r[i-31] + r[i-3]
    v = (state[(pos + 3) % 34] + state[(pos + 31) % 34]) & 0xFFFFFFFF
    state[pos] = v
    state[34] = (pos + 1) % 34
    return v >> 1


@numba.njit(cache=True)
def _uf_find(parent, i):
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@numba.njit(cache=True)
def _core_moments(px, py, cd, val, thresh, weighted):
    """``preanalyse(ANALYSE_FULL)`` of a pixel set: moments, ellipse, abcor."""
    n = px.size
    xmin = px.min()
    ymin = py.min()
    rv = 0.0
    peak = np.float32(-1e30)
    fdpeak = np.float32(-1e30)
    for k in range(n):
        rv += cd[k]
        if val[k] > peak:
            peak = val[k]
        if cd[k] > fdpeak:
            fdpeak = cd[k]
    mx = 0.0
    my = 0.0
    mx2 = 0.0
    my2 = 0.0
    mxy = 0.0
    dnpix = 0
    area2 = 0
    thresh2 = (np.float64(thresh) + peak) / 2.0
    for k in range(n):
        c = np.float64(cd[k])
        if val[k] > thresh:
            dnpix += 1
        if val[k] > thresh2:
            area2 += 1
        x = px[k] - xmin
        y = py[k] - ymin
        mx += c * x
        my += c * y
        mx2 += c * x * x
        my2 += c * y * y
        mxy += c * x * y
    xm = mx / rv
    ym = my / rv
    xm2 = mx2 / rv - xm * xm
    ym2 = my2 / rv - ym * ym
    xym = mxy / rv - xm * ym
    temp2 = xm2 * ym2 - xym * xym
    if temp2 < 0.00694:
        xm2 += 0.0833333
        ym2 += 0.0833333
        temp2 = xm2 * ym2 - xym * xym
    temp = math.sqrt(0.25 * (xm2 - ym2) * (xm2 - ym2) + xym * xym)
    pmx2 = 0.5 * (xm2 + ym2) + temp
    pmy2 = 0.5 * (xm2 + ym2) - temp
    a = np.float32(math.sqrt(pmx2))
    b = np.float32(math.sqrt(pmy2))
    cxx = np.float32(ym2 / temp2)
    cyy = np.float32(xm2 / temp2)
    cxy = np.float32(-2 * xym / temp2)
    abcor = np.float32(1.0)
    t1t2 = np.float64(thresh) / thresh2
    if t1t2 > 0.0 and not weighted:
        darea = np.float64(area2) - dnpix
        v = (darea if darea < 0.0 else -1.0) / (2 * math.pi * math.log(t1t2 if t1t2 < 1.0
                                                                      else 0.99) * a * b)
        abcor = np.float32(v if v < 1.0 else 1.0)
    return xm + xmin, ym + ymin, a, b, cxx, cyy, cxy, abcor, fdpeak


@numba.njit(cache=True)
def _final_moments(px, py, cd, mx, my):
    """``preanalyse(ANALYSE_FULL|ANALYSE_ROBUST)`` of a deblended child."""
    n = px.size
    xmin = px.min()
    ymin = py.min()
    rv = 0.0
    sx = 0.0
    sy = 0.0
    sx2 = 0.0
    sy2 = 0.0
    sxy = 0.0
    for k in range(n):
        c = np.float64(cd[k])
        x = px[k] - xmin
        y = py[k] - ymin
        rv += c
        sx += c * x
        sy += c * y
        sx2 += c * x * x
        sy2 += c * y * y
        sxy += c * x * y
    xm = sx / rv
    ym = sy / rv
    xn = mx - xmin
    yn = my - ymin
    xm2 = sx2 / rv + xn * xn - 2 * xm * xn
    ym2 = sy2 / rv + yn * yn - 2 * ym * yn
    xym = sxy / rv + xn * yn - xm * yn - xn * ym
    singu = False
    temp2 = xm2 * ym2 - xym * xym
    if temp2 < 0.00694:
        xm2 += 0.0833333
        ym2 += 0.0833333
        temp2 = xm2 * ym2 - xym * xym
        singu = True
    d = xm2 - ym2
    theta = math.atan2(2.0 * xym, d) / 2.0 if abs(d) > 0.0 else math.pi / 4.0
    temp = math.sqrt(0.25 * d * d + xym * xym)
    pmx2 = 0.5 * (xm2 + ym2) + temp
    pmy2 = 0.5 * (xm2 + ym2) - temp
    return (xm2, ym2, xym, np.float32(math.sqrt(pmx2)), np.float32(math.sqrt(pmy2)),
            np.float32(theta), np.float32(ym2 / temp2), np.float32(xm2 / temp2),
            np.float32(-2 * xym / temp2), singu)


@numba.njit(cache=True)
def _share_pixels(seg, width, cd, data, thr, thr_is_map, weighted, coff, cpix, pk,
                  objx, objy, xcpeak, ycpeak, xn, rng, out_off, out_idx, mom, imom, ok_out):
    """Redo SExtractor's pixel sharing for every deblended detection.

    ``pk[o]`` is the Lutz chain (detection) of object ``o``; objects of one
    detection are consecutive.  Writes each object's pixel list, in
    SExtractor's order, into the CSR (``out_off``, ``out_idx``), the new labels
    into ``seg``, and for re-shared children their final moments into
    ``mom``/``imom``; ``ok_out[o]`` is 1 where the sharing was redone, 0 where
    sep's children were kept (core not recognised), 2 for undeblended objects.
    """
    n = pk.size
    o = 0
    fill = 0
    while o < n:
        g0 = o
        while o < n and pk[o] == pk[g0]:
            o += 1
        g1 = o
        k = pk[g0]
        nch = g1 - g0
        out_off[g0] = fill
        if k < 0:
            # unknown detection: sep's pixels, raster order
            for c in range(g0, g1):
                out_off[c] = fill
                for p in range(seg.size):
                    if seg[p] == c + 1:
                        out_idx[fill] = p
                        fill += 1
                ok_out[c] = 0
            out_off[g1] = fill
            continue
        P = cpix[coff[k]:coff[k + 1]]
        npx = P.size
        if nch == 1:
            for q in range(npx):
                out_idx[fill + q] = P[q]
            fill += npx
            out_off[g1] = fill
            ok_out[g0] = 2
            continue
        # ---- local grid of the detection
        px = np.empty(npx, np.int64)
        py = np.empty(npx, np.int64)
        for q in range(npx):
            py[q] = P[q] // width
            px[q] = P[q] - py[q] * width
        x0 = px.min()
        y0 = py.min()
        bw = px.max() - x0 + 1
        bh = py.max() - y0 + 1
        grid = np.full(bw * bh, -1, np.int64)
        for q in range(npx):
            grid[(py[q] - y0) * bw + (px[q] - x0)] = q
        cdv = np.empty(npx, np.float32)
        dv = np.empty(npx, np.float32)
        tv = np.empty(npx, np.float32)
        dthresh0 = np.float32(3.0e38)
        fdpeak0 = np.float32(-3.0e38)
        for q in range(npx):
            cdv[q] = cd[P[q]]
            dv[q] = data[P[q]]
            tv[q] = thr[P[q]] if thr_is_map else thr[0]
            if tv[q] < dthresh0:
                dthresh0 = tv[q]
            if cdv[q] > fdpeak0:
                fdpeak0 = cdv[q]
        peakq = np.full(nch, -1, np.int64)
        good = True
        for c in range(nch):
            xq = xcpeak[g0 + c] - x0
            yq = ycpeak[g0 + c] - y0
            if 0 <= xq < bw and 0 <= yq < bh:
                peakq[c] = grid[yq * bw + xq]
            if peakq[c] < 0:
                good = False
        # ---- the children's cores: first level where each is on its own
        owner = np.full(npx, -1, np.int64)
        level = np.full(nch, -1, np.int64)
        lthr = np.zeros(nch, np.float32)
        uf = np.empty(npx, np.int64)
        comp = np.empty(nch, np.int64)
        if good:
            for lev in range(1, xn):
                if fdpeak0 > 0.0:
                    t = np.float32(np.float64(dthresh0)
                                   * math.pow(np.float64(fdpeak0) / np.float64(dthresh0),
                                              lev / xn))
                else:
                    t = dthresh0
                for q in range(npx):
                    uf[q] = q
                for q in range(npx):
                    if not cdv[q] > t:
                        continue
                    for dy in range(-1, 2):
                        yy = py[q] - y0 + dy
                        if yy < 0 or yy >= bh:
                            continue
                        for dx in range(-1, 2):
                            xx = px[q] - x0 + dx
                            if xx < 0 or xx >= bw or (dx == 0 and dy == 0):
                                continue
                            r = grid[yy * bw + xx]
                            if r >= 0 and cdv[r] > t:
                                ra = _uf_find(uf, q)
                                rb = _uf_find(uf, r)
                                if ra != rb:
                                    uf[ra] = rb
                for c in range(nch):
                    comp[c] = _uf_find(uf, peakq[c]) if cdv[peakq[c]] > t else -1 - c
                for c in range(nch):
                    if level[c] >= 0 or comp[c] < 0:
                        continue
                    alone = True
                    for c2 in range(nch):
                        if c2 != c and comp[c2] == comp[c]:
                            alone = False
                    if alone:
                        level[c] = lev
                        lthr[c] = t
                        for q in range(npx):
                            if cdv[q] > t and _uf_find(uf, q) == comp[c]:
                                owner[q] = c
            for c in range(nch):
                if level[c] < 0:
                    good = False
        # ---- check the cores against sep's barycentres, core ellipses
        cmx = np.zeros(nch)
        cmy = np.zeros(nch)
        ca = np.zeros(nch, np.float32)
        cb = np.zeros(nch, np.float32)
        ccxx = np.zeros(nch, np.float32)
        ccyy = np.zeros(nch, np.float32)
        ccxy = np.zeros(nch, np.float32)
        cabcor = np.zeros(nch, np.float32)
        cpeak = np.zeros(nch, np.float32)
        cnpix = np.zeros(nch, np.int64)
        if good:
            for c in range(nch):
                m = 0
                for q in range(npx):
                    if owner[q] == c:
                        m += 1
                qx = np.empty(m, np.int64)
                qy = np.empty(m, np.int64)
                qc = np.empty(m, np.float32)
                qv = np.empty(m, np.float32)
                tmin = np.float32(3.0e38)
                j = 0
                for q in range(npx):
                    if owner[q] == c:
                        qx[j] = px[q]
                        qy[j] = py[q]
                        qc[j] = cdv[q]
                        qv[j] = dv[q]
                        if tv[q] < tmin:
                            tmin = tv[q]
                        j += 1
                th = tmin if weighted else lthr[c]
                (cmx[c], cmy[c], ca[c], cb[c], ccxx[c], ccyy[c], ccxy[c], cabcor[c],
                 cpeak[c]) = _core_moments(qx, qy, qc, qv, th, weighted)
                cnpix[c] = m
                if abs(cmx[c] - objx[g0 + c]) > 1e-6 or abs(cmy[c] - objy[g0 + c]) > 1e-6:
                    good = False
        if not good:
            # keep sep's children; SExtractor's pixel order along the detection
            for c in range(nch):
                out_off[g0 + c] = fill
                for q in range(npx):
                    if seg[P[q]] == g0 + c + 1:
                        out_idx[fill] = P[q]
                        fill += 1
                ok_out[g0 + c] = 0
            out_off[g1] = fill
            continue
        # ---- gatherup: faint pixels to a probable parent, glibc's rand()
        coreowner = owner.copy()
        amp = np.zeros(nch, np.float32)
        for c in range(nch):
            dist = np.float32(cnpix[c] / (2 * math.pi * cabcor[c] * ca[c] * cb[c]))
            if dist < 70.0:
                amp[c] = dthresh0 * np.float32(math.exp(dist))
            else:
                amp[c] = np.float32(4.0 * cpeak[c])
            if amp[c] > 4.0 * cpeak[c]:
                amp[c] = np.float32(4.0 * cpeak[c])
        pcum = np.zeros(nch, np.float32)
        for q in range(npx):
            if owner[q] >= 0:
                continue
            distmin = np.float32(1e31)
            iclst = 0
            prev = np.float32(0.0)
            for c in range(nch):
                dxf = np.float32(px[q] - cmx[c])
                dyf = np.float32(py[q] - cmy[c])
                dist = np.float32(0.5 * (ccxx[c] * dxf * dxf + ccyy[c] * dyf * dyf
                                         + ccxy[c] * dxf * dyf) / cabcor[c])
                term = np.float32(amp[c] * np.float32(math.exp(-dist))) if dist < 70.0 \
                    else np.float32(0.0)
                prev = np.float32(prev + term)
                pcum[c] = prev
                if dist < distmin:
                    distmin = dist
                    iclst = c
            if pcum[nch - 1] > 1.0e-31:
                rv = _glibc_rand(rng)
                drand = np.float32(np.float32(pcum[nch - 1] * np.float32(rv))
                                   / np.float32(_RAND_MAX))
                c = 0
                while c < nch and pcum[c] < drand:
                    c += 1
                if c == nch:
                    c = iclst
            else:
                c = iclst
            owner[q] = c
        # ---- children: core in its own Lutz order, then shared pixels
        for c in range(nch):
            out_off[g0 + c] = fill
            core = np.zeros((bh, bw), np.bool_)
            for q in range(npx):
                if owner[q] == c:
                    seg[P[q]] = g0 + c + 1
                if coreowner[q] == c:
                    core[py[q] - y0, px[q] - x0] = True
            coff2, cpix2 = _lutz_chains(core, 1)
            for j in range(coff2[coff2.size - 1]):
                q = grid[cpix2[j]]
                out_idx[fill] = P[q]
                fill += 1
            for q in range(npx):
                if owner[q] == c and coreowner[q] != c:
                    out_idx[fill] = P[q]
                    fill += 1
            # final (robust) moments over all the child's pixels
            m = fill - out_off[g0 + c]
            fx = np.empty(m, np.int64)
            fy = np.empty(m, np.int64)
            fc = np.empty(m, np.float32)
            for j in range(m):
                p = out_idx[out_off[g0 + c] + j]
                fy[j] = p // width
                fx[j] = p - fy[j] * width
                fc[j] = cd[p]
            r = _final_moments(fx, fy, fc, objx[g0 + c], objy[g0 + c])
            mom[g0 + c, 0] = r[0]
            mom[g0 + c, 1] = r[1]
            mom[g0 + c, 2] = r[2]
            mom[g0 + c, 3] = r[3]
            mom[g0 + c, 4] = r[4]
            mom[g0 + c, 5] = r[5]
            mom[g0 + c, 6] = r[6]
            mom[g0 + c, 7] = r[7]
            mom[g0 + c, 8] = r[8]
            imom[g0 + c, 0] = fx.min()
            imom[g0 + c, 1] = fx.max()
            imom[g0 + c, 2] = fy.min()
            imom[g0 + c, 3] = fy.max()
            imom[g0 + c, 4] = 1 if r[9] else 0
            ok_out[g0 + c] = 1
        out_off[g1] = fill
    out_off[n] = fill


def sextractor_pixel_lists(det, data, params, *, weighted=False):
    """Each object's pixels in SExtractor's order, with SExtractor's pixel sharing.

    For undeblended detections the pixel list is the Lutz chain
    (`lutz_pixel_order`).  For deblended ones the children's cores are
    recovered from sep's result (the component, at the first deblending level
    where it stands alone, of the pixels above that level around the child's
    peak; checked against sep's barycentre) and the remaining pixels are shared
    among the children as SExtractor's ``gatherup`` does, with glibc's
    ``rand()`` sequence (seeded 1, drawn in SExtractor's order); ``weighted``
    says whether a weight map is used (SExtractor then takes ``abcor = 1``).
    ``det`` is
    updated in place: ``segmap`` labels, and for re-shared children the
    second moments, ellipse, bounding box and pixel count.

    Returns
    -------
    offsets, index : ndarray of int64
        CSR of flat pixel indices per object (row ``i`` = label ``i + 1``).
    info : dict
        ``reshared`` (children whose sharing was redone) and ``kept``
        (children of detections where sep's sharing was kept).
    """
    objs = det.objects
    n = len(objs)
    if n == 0 or det.above is None:
        off, idx = _group_pixels(det.segmap.ravel(), n)
        return off, idx, {"reshared": 0, "kept": 0}
    width = det.segmap.shape[1]
    minarea = max(int(params["DETECT_MINAREA"]), 1)
    coff, cpix = lutz_pixel_order(det.above, minarea)
    labels, _ = ndimage.label(det.above, structure=_STRUCT8)
    chain_label = labels.ravel()[cpix[coff[:-1]]].astype(np.int64)
    chain_of = np.full(int(labels.max()) + 1, -1, np.int64)
    chain_of[chain_label] = np.arange(chain_label.size)
    pk = chain_of[det.parent]
    # children of one detection come out of sep one after the other
    nruns = 1 + int(np.count_nonzero(pk[1:] != pk[:-1]))
    contiguous = bool(np.all(pk >= 0)) and nruns == np.unique(pk).size
    if not contiguous:
        off, idx = _group_pixels(det.segmap.ravel(), n)
        return off, idx, {"reshared": 0, "kept": n}
    thr = det.thresh
    thr_is_map = np.ndim(thr) == 2
    thr_flat = (np.ascontiguousarray(thr, dtype=np.float32).ravel() if thr_is_map
                else np.full(1, thr, np.float32))
    seg = det.segmap.ravel()  # a view: relabelled in place
    out_off = np.zeros(n + 1, np.int64)
    out_idx = np.zeros(int(coff[-1]), np.int64)
    mom = np.zeros((n, 9), np.float64)
    imom = np.zeros((n, 5), np.int64)
    ok = np.zeros(n, np.int64)
    rng = _glibc_srand(1)
    _share_pixels(seg, width, det.filtered.ravel(), np.ascontiguousarray(data, np.float32).ravel(),
                  thr_flat, thr_is_map, bool(weighted), coff, cpix, pk,
                  np.ascontiguousarray(objs["x"], np.float64),
                  np.ascontiguousarray(objs["y"], np.float64),
                  np.ascontiguousarray(objs["xcpeak"], np.int64),
                  np.ascontiguousarray(objs["ycpeak"], np.int64),
                  int(params["DEBLEND_NTHRESH"]), rng, out_off, out_idx, mom, imom, ok)
    sel = ok == 1
    if sel.any():
        o = objs  # structured array, updated in place
        for j, f in enumerate(("x2", "y2", "xy", "a", "b", "theta", "cxx", "cyy", "cxy")):
            o[f][sel] = mom[sel, j]
        for j, f in enumerate(("xmin", "xmax", "ymin", "ymax")):
            o[f][sel] = imom[sel, j]
        o["npix"][sel] = np.diff(out_off)[sel]
        singu = imom[sel, 4].astype(bool)
        o["flag"][sel] = (o["flag"][sel] & ~sep.OBJ_SINGU) | np.where(singu, sep.OBJ_SINGU, 0)
    return out_off, out_idx, {"reshared": int(sel.sum()), "kept": int((ok == 0).sum())}
