"""Detection: filtering, thresholding, segmentation and deblending.

SExtractor 2.25 (``scan.c``, ``filter.c``) detects on the *filtered* image: it
correlates the background-subtracted image with the ``FILTER_NAME`` kernel
(normalised by the sum of its absolute values, zero outside the image),
correlates the variance map with the same kernel, and keeps the pixels where::

    filtered > DETECT_THRESH * sqrt(filtered variance)

(a constant ``DETECT_THRESH * backsig`` without a weight map, ``DETECT_THRESH``
itself for ``THRESH_TYPE ABSOLUTE``).  Groups of at least ``DETECT_MINAREA``
8-connected detected pixels are detections, which are deblended
(``refine.c``) with ``DEBLEND_NTHRESH`` exponentially spaced sub-thresholds
between the detection's *lowest* pixel threshold and its peak.

sep's ``extract`` ports this code, but compares the filtered image with the
*unfiltered* per-pixel noise and takes a detection's deblending base level as
the *mean* of its pixel thresholds.  So this module filters the image and the
variance itself (bit for bit as SExtractor), builds the exact threshold map,
and hands sep the *filtered* image, no kernel, ``thresh=1`` and the map as the
noise.  To give sep's deblender SExtractor's base level, the map is first set,
inside each detection, to the detection's minimum threshold: the detected
pixels cannot change (each is above its own threshold, hence above the
minimum), only the level that sep averages.

Like SExtractor, which filters and detects in a buffer of image lines,
`detect_streaming` never makes either map as a full frame: it finds the
detected pixels a row at a time, cuts the image between detections into
strips, and runs sep on strips that hold the maps' values on the detections
only, which is all that is kept of them (`Detection.chain_filtered`).
Detections with a single peak, which deblending cannot split, may go through
sep apart, without the deblending sub-thresholds (`_sep_strip`).

Two things SExtractor does depend on the *order* of each detection's linked
pixel list: its CLEAN level (an order-dependent heap selection) and the
random sharing of a deblended detection's faint pixels among its children
(``gatherup``, glibc's ``rand()``).  `lutz_pixel_order` rebuilds that order
and `sextractor_pixel_lists` redoes the sharing exactly, so that segmentation
maps come out identical to SExtractor's.  Cleaning (``clean=False`` here) is
done by :mod:`galseg.extract.clean`.
"""

from __future__ import annotations

import functools
import math
import os
import re
import sys
from dataclasses import dataclass

import numba
import numpy as np
import sep

from . import _parallel

__all__ = [
    "detection_kernel",
    "normalise_kernel",
    "filter_image",
    "threshold_map",
    "Detection",
    "detect",
    "detect_streaming",
    "detect_image",
    "lutz_pixel_order",
    "sextractor_pixel_lists",
]

_U = _parallel.UINDEX  # never-negative indices: see UINDEX


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


@numba.njit(cache=True, inline="never")
def _axpy(orow, irow, m, d0, s0, n):
    # separate C-contiguous rows: LLVM vectorises this (the multiply and the
    # add stay separate single-precision operations, as in SExtractor)
    o = orow[d0:d0 + n]
    s = irow[s0:s0 + n]
    for i in range(n):
        o[i] += m * s[i]


@numba.njit(cache=True, inline="never")
def _axpy_sq(orow, irow, m, d0, s0, n):
    # as _axpy, on the squares of the input (single precision, as a variance
    # map made from an rms map holds them)
    o = orow[d0:d0 + n]
    s = irow[s0:s0 + n]
    for i in range(n):
        v = s[i]
        o[i] += m * (v * v)


@numba.njit(cache=True, nogil=True)
def _correlate(j0, j1, image, kernel, out, square, tfac, oy):
    """Rows ``j0..j1-1`` of ``out``, image rows ``oy + j``, of ``image (x)
    kernel`` (of ``image**2`` with ``square``); with ``tfac > 0``, each output
    row is then turned into the detection threshold ``tfac * sqrt(row)``
    while it is in cache (`_threshold`)."""
    height, width = image.shape
    kh, kw = kernel.shape
    kh2 = kh // 2
    kw2 = kw // 2
    block = 1024  # columns per pass: the rows involved stay in cache
    for j in range(j0, j1):
        y = j + oy
        orow = out[j]
        for x in range(width):
            orow[x] = np.float32(0.0)
        for b0 in range(0, width, block):
            b1 = min(b0 + block, width)
            # each output pixel accumulates the kernel terms in kernel order
            for r in range(kh):
                yy = y + r - kh2
                if yy < 0 or yy >= height:
                    continue
                irow = image[yy]
                for c in range(kw):
                    dmx = c - kw2
                    x0 = max(b0, -dmx)
                    x1 = min(b1, width - dmx)
                    if x1 <= x0:
                        continue
                    if square:
                        _axpy_sq(orow, irow, kernel[r, c], x0, x0 + dmx, x1 - x0)
                    else:
                        _axpy(orow, irow, kernel[r, c], x0, x0 + dmx, x1 - x0)
        if tfac > 0.0:
            _threshold_row(orow, tfac)


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
    return _filter(image, kernel)


def _filter(image, kernel, square=False, out=None, thresh_factor=0.0):
    """`filter_image`; with ``square``, of ``image**2`` (float32 squares);
    with ``thresh_factor``, the relative threshold map of the filtered
    variance (`threshold_map`) in the same pass."""
    img = _parallel.readonly(np.ascontiguousarray(image, dtype=np.float32))
    k = _parallel.readonly(np.ascontiguousarray(kernel, dtype=np.float32))
    if out is None:
        out = np.empty(img.shape, np.float32)
    _parallel.ranges(_correlate, img.shape[0], 64, img, k, out, bool(square),
                     float(thresh_factor), 0)
    return out


@numba.njit(cache=True, nogil=True)
def _above_rows(j0, j1, image, noise, kernel, square, tfac, tconst, above, rowmin):
    """``above = filtered > threshold`` on rows ``j0..j1-1``, the filtered
    image and threshold made a row at a time (`_correlate`): from the
    ``noise`` map when it has rows (``rowmin``: each row's lowest
    threshold), else against the constant ``tconst``."""
    width = image.shape[1]
    f = np.empty((1, width), np.float32)
    t = np.empty((1, width), np.float32)
    use_map = noise.shape[0] > 0
    for y in range(j0, j1):
        _correlate(0, 1, image, kernel, f, False, 0.0, y)
        frow = f[0]
        arow = above[y]
        if use_map:
            _correlate(0, 1, noise, kernel, t, square, tfac, y)
            trow = t[0]
            lo = trow[0]
            for x in range(width):
                arow[x] = frow[x] > trow[x]
                lo = min(lo, trow[x])
            rowmin[y] = lo
        else:
            for x in range(width):
                arow[x] = frow[x] > tconst


@numba.njit(cache=True, nogil=True)
def _correlate_at(image, kernel, y, x, square):
    """One pixel of `_correlate` (the same single-precision terms, in the
    same order: the same value, bit for bit)."""
    height, width = image.shape
    kh, kw = kernel.shape
    acc = np.float32(0.0)
    for r in range(kh):
        yy = y + r - kh // 2
        if yy < 0 or yy >= height:
            continue
        for c in range(kw):
            xx = x + c - kw // 2
            if xx < 0 or xx >= width:
                continue
            v = image[yy, xx]
            acc += kernel[r, c] * (v * v if square else v)
    return acc


@numba.njit(cache=True, nogil=True)
def _values_at(j0, j1, pix, data, noise, kernel, square, tfac, fv, tv):
    """The filtered image and (with a ``noise`` map that has rows) the
    threshold at the flat pixels ``pix[j0:j1]``."""
    width = data.shape[1]
    use_map = noise.shape[0] > 0
    for j in range(j0, j1):
        y = pix[j] // width
        x = pix[j] - y * width
        fv[j] = _correlate_at(data, kernel, y, x, False)
        if use_map:
            tv[j] = _sqrt_threshold(_correlate_at(noise, kernel, y, x, square), tfac)


@numba.njit(cache=True, nogil=True)
def _sample_at(j0, j1, noise, kernel, square, tfac, step, out):
    """``out[j] = threshold[j * step, ::step]`` for ``j0 <= j < j1``, pixel by
    pixel (`_correlate_at`)."""
    for j in range(j0, j1):
        for i in range(out.shape[1]):
            out[j, i] = _sqrt_threshold(_correlate_at(noise, kernel, j * step, i * step,
                                                      square), tfac)


def _summary(thresh_sample, thresh_min):
    return {"min": float(thresh_min), "median": float(np.median(thresh_sample))}


def _sample_step(shape):
    # a sample: the median of a full-frame map costs a sort of the image
    return max(1, int(math.sqrt(shape[0] * shape[1] / 2.5e5)))


@numba.njit(cache=True, nogil=True, inline="always")
def _sqrt_threshold(fvar, t):
    """SExtractor's threshold ``t * sqrt(fvar)`` of one pixel's filtered
    variance (float32).  A negative filtered variance (kernels with negative
    weights) gives NaN, a threshold nothing exceeds, as sqrt() gives SExtractor."""
    v = np.float64(fvar)
    return np.float32(t * math.sqrt(v)) if v >= 0.0 else np.float32(np.nan)


@numba.njit(cache=True)
def _threshold_row(row, t):
    for i in range(row.size):
        row[i] = _sqrt_threshold(row[i], t)


@numba.njit(cache=True)
def _threshold(fvar, t, out):
    for i in range(fvar.size):
        out[i] = _sqrt_threshold(fvar[i], t)


def threshold_map(params, *, fvar=None, backsig=None, out=None):
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
    out : 2-D ndarray of float32, optional
        Where to write the map (may be ``fvar`` itself).

    Returns
    -------
    float or ndarray of float32
        A float when the threshold is constant:
        ``float32(DETECT_THRESH * backsig)``; otherwise
        ``float32(DETECT_THRESH * sqrt(fvar))`` computed in double precision,
        as SExtractor does.
    """
    t = np.float32(params["DETECT_THRESH"])
    absolute = params["THRESH_TYPE"].upper() == "ABSOLUTE"
    if absolute:
        return float(t)
    if fvar is None:
        if backsig is None:
            raise ValueError("threshold_map: need fvar or backsig for a relative threshold")
        return float(np.float32(np.float64(t) * np.float64(np.float32(backsig))))
    fv = np.ascontiguousarray(fvar, dtype=np.float32)
    if out is None:
        out = np.empty(fv.shape, np.float32)
    _threshold(fv.reshape(-1), np.float64(t), out.reshape(-1))
    return out


@dataclass
class Detection:
    """Raw (uncleaned) detections, in SExtractor's processing order.

    Attributes
    ----------
    objects : structured ndarray
        sep's catalogue of the deblended objects, in the order SExtractor
        completes them (row ``i`` has segment id ``i + 1`` in ``segmap``).
        Its flux-like fields refer to the *filtered* image.
    segmap : ndarray of int32
        Segment ids ``1..n`` (0: sky).
    above : ndarray of bool
        ``filtered > thresh``: the detected pixels.
    chain_off, chain_pix : ndarray of int64
        The detections (8-connected groups of at least ``DETECT_MINAREA``
        detected pixels) in completion order, each as its flat pixel indices
        in SExtractor's pixel-list order (see `lutz_pixel_order`).
    chain_filtered, chain_thresh : ndarray of float32
        The filtered image and the detection threshold on those pixels
        (aligned with ``chain_pix``): all that is kept of either map, so that
        neither has to exist as a full frame (see `detect_streaming`).
    parent : ndarray of int64
        For each object, the index of the detection it was deblended from.
    parent_ymin, parent_ymax : ndarray of int64
        Vertical extent of each object's detection.
    pixstack, sub_object_limit : int
        The sep limits the extraction ran with.
    strips : tuple of int
        The rows at which the image was cut to run sep on horizontal strips
        (empty: one run); no detection crosses them.
    threshold : float or dict
        The detection threshold: the constant, or the map's ``min`` and its
        ``median`` on a regular sample of ~250,000 pixels.
    """

    objects: np.ndarray
    segmap: np.ndarray
    above: np.ndarray
    chain_off: np.ndarray
    chain_pix: np.ndarray
    chain_filtered: np.ndarray
    chain_thresh: np.ndarray
    parent: np.ndarray
    parent_ymin: np.ndarray
    parent_ymax: np.ndarray
    pixstack: int
    sub_object_limit: int
    strips: tuple = ()
    threshold: float | dict = 0.0

    def subset(self, keep):
        """The same detections with only the objects ``keep`` (bool mask)."""
        lut = np.zeros(len(keep) + 1, np.int32)
        lut[1:][keep] = np.arange(1, int(np.count_nonzero(keep)) + 1, dtype=np.int32)
        return Detection(self.objects[keep], lut[self.segmap], self.above, self.chain_off,
                         self.chain_pix, self.chain_filtered, self.chain_thresh,
                         self.parent[keep], self.parent_ymin[keep], self.parent_ymax[keep],
                         self.pixstack, self.sub_object_limit, self.strips, self.threshold)


_PIXSTACK_RE = re.compile(r"pixel|pixstack", re.IGNORECASE)
_SUBOBJ_RE = re.compile(r"sub-?object|deblend", re.IGNORECASE)


def _extract_growing(image, err, minarea, nthresh, mincont, pixstack, max_pixstack):
    """sep.extract that grows sep's pixel stack / sub-object limit and retries.

    SExtractor truncates or leaves undeblended what does not fit in its
    buffers (flags 128 and 64); galseg never loses pixels and never fails.
    sep's global limits are restored afterwards.
    """
    sub_limit = sep.get_sub_object_limit()
    old_stack = sep.get_extract_pixstack()
    try:
        stack = max(int(pixstack), 1)
        while True:
            sep.set_extract_pixstack(stack)
            try:
                with _parallel.small_pages():
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


@numba.njit(cache=True)
def _chain_extents(coff, cpix, width):
    """Vertical extent (first and last row) of each detection."""
    nch = coff.size - 1
    ymin = np.empty(nch, np.int64)
    ymax = np.empty(nch, np.int64)
    for k in range(nch):
        y0 = 1 << 40
        y1 = -1
        for q in range(coff[k], coff[k + 1]):
            y = cpix[q] // width
            y0 = min(y0, y)
            y1 = max(y1, y)
        ymin[k] = y0
        ymax[k] = y1
    return ymin, ymax


@numba.njit(cache=True)
def _set_chain_minimum(coff, pix, thr):
    """Inside each detection (``pix[coff[k]:coff[k + 1]]``, flat indices into
    ``thr``), the threshold map becomes the detection's lowest threshold."""
    for k in range(coff.size - 1):
        tmin = np.float32(3.0e38)
        for q in range(coff[k], coff[k + 1]):
            tmin = min(tmin, thr[pix[q]])
        for q in range(coff[k], coff[k + 1]):
            thr[pix[q]] = tmin


@numba.njit(cache=True)
def _object_parents(coff, cpix, seg, n):
    """Detection of each object: sep completes the objects of one detection
    one after the other, in the detections' order; -1 if that is not so."""
    nch = coff.size - 1
    parent = np.full(n, -1, np.int64)
    for k in range(nch):
        for q in range(coff[k], coff[k + 1]):
            o = seg[cpix[q]] - 1
            if o >= 0:
                if parent[o] >= 0 and parent[o] != k:
                    return np.full(n, -1, np.int64)
                parent[o] = k
    for o in range(1, n):
        if parent[o] < parent[o - 1]:
            return np.full(n, -1, np.int64)
    return parent


# ------------------------------------------------------------------ where the rows come from
class _Frames:
    """The filtered image and threshold of `detect`, as full frames.

    A writeable C-contiguous float32 threshold map is used in place: sep's
    strips see it changed on their detections' pixels, which are restored
    afterwards.
    """

    streams = False

    def __init__(self, filtered, thresh):
        image = np.ascontiguousarray(filtered, dtype=np.float32)
        if not image.flags.writeable:  # sep takes writeable buffers only
            image = image.copy()
        self.image = image
        self.shape = image.shape
        if np.ndim(thresh) == 0:
            self.tconst, self.thr = np.float32(thresh), None
        else:
            self.tconst = None
            self.thr = thresh if (isinstance(thresh, np.ndarray)
                                  and thresh.dtype == np.float32
                                  and thresh.flags.c_contiguous and thresh.flags.writeable) \
                else np.array(thresh, dtype=np.float32, order="C")

    def above(self):
        return self.image > (self.tconst if self.thr is None else self.thr)

    def threshold(self):
        if self.thr is None:
            return float(self.tconst)
        step = _sample_step(self.shape)
        return _summary(self.thr[::step, ::step], np.min(self.thr))

    def buffers(self, rows):
        return None

    def rows(self, a, b, buffers, pix):
        """Rows ``a..b-1`` of the filtered image and the threshold (map or
        constant), both views, and their values at the strip's flat pixels
        ``pix``."""
        image = self.image[a:b]
        fv = image.reshape(-1)[pix]
        if self.thr is None:
            return image, self.tconst, fv, np.full(pix.size, self.tconst, np.float32)
        thr = self.thr[a:b]
        return image, thr, fv, thr.reshape(-1)[pix]

    def release(self, image, thr, pix, tv):
        """After sep: the threshold map's values at ``pix`` restored."""
        if np.ndim(thr):
            thr.reshape(-1)[pix] = tv


class _Streamed:
    """The filtered image and threshold of `detect_streaming`, made from the
    image and its noise map a row at a time to find the detected pixels
    (`_above_rows`), then on the detected pixels only, for sep
    (`_values_at`)."""

    streams = True

    def __init__(self, data, kernel, noise=None, square=False, thresh_factor=0.0,
                 thresh=None):
        ro = _parallel.readonly
        self.data = ro(np.ascontiguousarray(data, dtype=np.float32))
        self.kernel = ro(np.ascontiguousarray(kernel, dtype=np.float32))
        self.shape = self.data.shape
        if noise is None:
            if thresh is None:
                raise ValueError("detect_streaming: give a noise map or a constant threshold")
            self.noise, self.tconst = None, np.float32(thresh)
        else:
            if not thresh_factor > 0.0:
                raise ValueError("detect_streaming: thresh_factor must be > 0 with a noise map")
            self.noise, self.tconst = ro(np.ascontiguousarray(noise, dtype=np.float32)), None
        self.square = bool(square)
        self.tfac = float(thresh_factor)

    def _noise_arg(self):
        # the kernels' "no noise map": an array without rows (one compiled type)
        return self.noise if self.noise is not None else _parallel.readonly(
            np.zeros((0, 1), np.float32))

    def above(self):
        above = np.empty(self.shape, np.bool_)
        tconst = np.float32(0.0) if self.tconst is None else self.tconst
        self.rowmin = np.zeros(self.shape[0], np.float32)
        _parallel.ranges(_above_rows, self.shape[0], 64, self.data, self._noise_arg(),
                         self.kernel, self.square, self.tfac, tconst, above, self.rowmin)
        return above

    def threshold(self):
        """As `_Frames.threshold`: the minimum from `above`'s row minima, the
        sample made again pixel by pixel."""
        if self.noise is None:
            return float(self.tconst)
        step = _sample_step(self.shape)
        height, width = self.shape
        sample = np.empty(((height + step - 1) // step, (width + step - 1) // step),
                          np.float32)
        _parallel.ranges(_sample_at, sample.shape[0], 16, self.noise, self.kernel,
                         self.square, self.tfac, step, sample)
        return _summary(sample, np.min(self.rowmin))

    #: What sep sees off the detections: nothing is above it
    _FILL_IMAGE, _FILL_THRESH = np.float32(-3.0e38), np.float32(3.0e38)

    def buffers(self, rows):
        width = self.shape[1]
        return (np.full((rows, width), self._FILL_IMAGE, np.float32),
                None if self.noise is None else np.full((rows, width), self._FILL_THRESH,
                                                        np.float32))

    def rows(self, a, b, buffers, pix):
        """As `_Frames.rows`, with one difference: sep only needs the values
        on the detections (it never looks at another pixel), so only they
        are made, exactly (`_correlate_at`), and set in strip buffers that
        hold, everywhere else, values that nothing exceeds."""
        fv = np.empty(pix.size, np.float32)
        tv = np.full(pix.size, np.float32(0.0) if self.tconst is None else self.tconst,
                     np.float32)
        _parallel.ranges(_values_at, pix.size, 4096, pix + a * self.shape[1], self.data,
                         self._noise_arg(), self.kernel, self.square, self.tfac, fv, tv)
        fbuf, tbuf = buffers
        image = fbuf[:b - a]
        image.reshape(-1)[pix] = fv
        if self.noise is None:
            return image, self.tconst, fv, tv
        thr = tbuf[:b - a]
        thr.reshape(-1)[pix] = tv
        return image, thr, fv, tv

    def release(self, image, thr, pix, tv):
        """After sep: the strip buffers as they were."""
        image.reshape(-1)[pix] = self._FILL_IMAGE
        if np.ndim(thr):
            thr.reshape(-1)[pix] = self._FILL_THRESH


# ------------------------------------------------------------------ strips
#: sep's cost (seconds) per image pixel scanned and per detected pixel
#: (deblending), measured on the benchmark fields.
_SEP_COST_PIXEL = 1.3e-9
_SEP_COST_DETECTED = 5.7e-7
#: Least estimated sep time (s) worth running strips in forked processes
#: (forking a process that holds the inputs and the segmentation map costs
#: ~0.05 s at 8192 x 8192; sep on the deep benchmark field, estimated 0.25 s,
#: takes 0.6 s in one process and 0.46 s in two).
STRIP_MIN_SECONDS = 0.15
#: Pixels per strip of `detect_streaming` (its filtered image and threshold
#: never exist for more rows at a time): 2**21 float32 pixels, 8 MB.
STREAM_STRIP_PIXELS = 1 << 21
#: sep runs twice on a strip (`_sep_strip`) when the deblending it spares is
#: estimated to cost this many times the extra scan
_SPLIT_MARGIN = 2.0
#: What the detected pixels of the other sep run are set to while it runs
_HIDDEN = np.float32(-3.0e38)


@numba.njit(cache=True)
def _row_counts(cpix, width, height):
    counts = np.zeros(height, np.int64)
    for q in range(cpix.size):
        counts[cpix[q] // width] += 1
    return counts


def _free_rows(ymin, ymax, height):
    """Rows inside the image (not the first or last) that no detection's
    vertical extent covers: where the image may be cut into strips on which
    sep finds exactly the objects of the whole image (each strip includes its
    cut rows)."""
    cover = np.zeros(height + 1, np.int64)
    np.add.at(cover, ymin, 1)
    np.add.at(cover, ymax + 1, -1)
    free = np.flatnonzero(np.cumsum(cover[:-1]) == 0)
    return free[(free > 0) & (free < height - 1)]


def _strip_rows(cpix, free, shape, nstrips):
    """Rows at which to cut the image into ``nstrips`` strips of similar work,
    among the ``free`` rows (`_free_rows`): possibly fewer cuts than
    ``nstrips - 1``, none when no row is free."""
    height, width = shape
    if nstrips < 2 or height < 8 or free.size == 0:
        return ()
    # sep's work: a scan of every pixel, and much more per detected pixel
    ratio = int(_SEP_COST_DETECTED / _SEP_COST_PIXEL)
    work = np.cumsum(width + ratio * _row_counts(cpix, width, height))
    total = float(work[-1])
    cuts = []
    for k in range(1, nstrips):
        i = int(np.argmin(np.abs(work[free] - total * k / nstrips)))
        r = int(free[i])
        if (not cuts or r > cuts[-1]) and work[r] > 0.1 * total / nstrips \
                and total - work[r] > 0.1 * total / nstrips:
            cuts.append(r)
    return tuple(cuts)


def _cuts_every(free, lo, hi, rows):
    """Free rows in ``(lo, hi)`` that cut it into strips of about ``rows``
    rows (longer where no row is free)."""
    cuts = []
    a = lo
    while hi - a > rows:
        i = int(np.searchsorted(free, a + rows, side="right")) - 1
        if i < 0 or free[i] <= a:  # none in (a, a + rows]: the next one
            i = int(np.searchsorted(free, a + rows, side="right"))
        if i >= free.size or free[i] >= hi:
            break
        a = int(free[i])
        cuts.append(a)
    return cuts


@numba.njit(cache=True)
def _gather_labels(sseg, pix, offset):
    """A strip's labels at its flat pixels ``pix``, ``+ offset`` where labelled."""
    out = np.empty(pix.size, np.int32)
    for q in range(pix.size):
        v = sseg[pix[q]]
        out[q] = v + offset if v else 0
    return out


@numba.njit(cache=True)
def _scatter_labels(seg, pix, labels, offset):
    flat = seg.reshape(-1)
    for q in range(pix.size):
        v = labels[q]
        flat[pix[q]] = v + offset if v else 0


@numba.njit(cache=True)
def _single_peaked(lcoff, pix, values, above, width):
    """Which detections have a single peak: one pixel without a higher
    8-neighbour in the detection (``pix[lcoff[k]:lcoff[k + 1]]``, flat
    indices into the strip's ``values``; ``above`` marks the strip's detected
    pixels).

    Deblending cannot split such a detection: from any of its pixels a path
    of rising values leads to the peak, so at every sub-threshold its pixels
    above form one 8-connected group.  A flat top of several equal pixels
    counts as several peaks (such detections are deblended as usual).
    """
    n = lcoff.size - 1
    out = np.zeros(n, np.bool_)
    nrow = values.size // width
    for k in range(n):
        peaks = 0
        for q in range(lcoff[k], lcoff[k + 1]):
            p = pix[q]
            y = p // width
            x = p - y * width
            v = values[p]
            top = True
            for dy in range(-1, 2):
                yy = y + dy
                if yy < 0 or yy >= nrow:
                    continue
                for dx in range(-1, 2):
                    xx = x + dx
                    if (dx == 0 and dy == 0) or xx < 0 or xx >= width:
                        continue
                    r = yy * width + xx
                    if above[r] and values[r] > v:
                        top = False
            if top:
                peaks += 1
                if peaks > 1:
                    break
        out[k] = peaks == 1
    return out


@numba.njit(cache=True)
def _object_chains(lcoff, labels, nobj):
    """The detection (chain) of each of sep's objects, from the labels of the
    detections' pixels; -1 for an object without a pixel."""
    chain = np.full(nobj, -1, np.int64)
    for k in range(lcoff.size - 1):
        for q in range(lcoff[k], lcoff[k + 1]):
            v = labels[q]
            if v:
                chain[v - 1] = k
    return chain


def _split_worthwhile(n_single_pixels, strip_pixels, nthresh):
    """Whether sep's deblending of the single-peaked detections' pixels costs
    more than the extra scan of the strip their own sep run takes."""
    saved = _SEP_COST_DETECTED * n_single_pixels * (nthresh - 1) / nthresh
    return saved > _SPLIT_MARGIN * _SEP_COST_PIXEL * strip_pixels


def _sep_strip(image, thr, lcoff, pix, above, grow, offset):
    """sep on one strip; its objects and the labels (``+ offset``) of its
    detections' pixels ``pix`` (``lcoff``: each detection's range in ``pix``).

    Most detections of a crowded field have a single peak
    (`_single_peaked`), which sep's ``DEBLEND_NTHRESH`` sub-thresholds cannot
    split but still scan one by one (about two thirds of sep's time on the
    dense benchmark field).  When that costs more than a second scan of the
    strip, sep runs twice: on the other detections with the deblending
    sub-thresholds, then on the single-peaked ones without (each run sees
    only its detections: the others' pixels are set to a value nothing
    exceeds, then restored).  sep's objects then come in the detections'
    order, as from one run: the same objects, flags and labels (deblending
    draws random numbers only for detections it splits).
    """
    thr_arg = thr if np.ndim(thr) else float(thr)
    flat = image.reshape(-1)
    nthresh = grow[1]
    sizes = np.diff(lcoff)
    # (not even looked for where all detected pixels would not be worth it)
    single = (_single_peaked(lcoff, pix, flat, above.reshape(-1), image.shape[1])
              if nthresh > 1 and _split_worthwhile(pix.size, flat.size, nthresh) else None)
    if single is None or not _split_worthwhile(int(sizes[single].sum()), flat.size, nthresh):
        o, sseg, stack, sub = _extract_growing(image, thr_arg, *grow)
        return o, _gather_labels(_int32_flat(sseg), pix, offset), stack, sub

    in_single = np.repeat(single, sizes)
    spix, mpix = pix[in_single], pix[~in_single]
    runs = []
    # the other detections with the sub-thresholds, then the single-peaked
    # ones with one threshold (each run with the other set hidden)
    for hidden, nt in ((spix, nthresh), (mpix, 1)):
        if hidden.size == pix.size:  # nothing left to run on
            runs.append((_no_objects(), np.zeros(pix.size, np.int32), 0, 0))
            continue
        values = flat[hidden]
        flat[hidden] = _HIDDEN
        try:
            o, sseg, stack, sub = _extract_growing(image, thr_arg, grow[0], nt, *grow[2:])
        finally:
            flat[hidden] = values
        runs.append((o, _gather_labels(_int32_flat(sseg), pix, 0), stack, sub))
        del sseg
    (om, lm, stack_m, sub_m), (os_, ls, stack_s, sub_s) = runs
    labels = np.where(ls > 0, ls + len(om), lm).astype(np.int32)
    objs = np.concatenate([om, os_])
    chain = _object_chains(lcoff, labels, len(objs))
    if (chain < 0).any():
        raise RuntimeError("sep's objects do not cover the strip's detections "
                           "(internal error; please report)")
    order = np.argsort(chain, kind="stable")  # within a detection: sep's order
    new_label = np.zeros(len(objs) + 1, np.int32)  # old label -> new (0 stays 0)
    new_label[order + 1] = np.arange(1, len(objs) + 1, dtype=np.int32) + offset
    return objs[order], new_label[labels], max(stack_m, stack_s), max(sub_m, sub_s)


def _int32_flat(sseg):
    return np.ascontiguousarray(sseg, dtype=np.int32).reshape(-1)


_Y_FIELDS = ("y", "ymin", "ymax", "ycpeak", "ypeak")


def _run_strips(source, above, bounds, strips, chain_lo, chain_hi, coff, cpix, args, seg=None):
    """sep on the given strips one after the other (strip ``k``: rows
    ``bounds[k]..bounds[k + 1]``, see `_sep_strip`); a strip without a
    detection is skipped.  ``above``: the detected pixels (whole image);
    ``args``: sep's settings, the least pixel stack and the cumulative
    count of detected pixels per row (a strip's stack need not hold more).

    Returns sep's objects (image rows), the labels of the strips'
    detections' pixels (numbered from 1 across these strips; written into
    the whole image's map ``seg`` instead, and None, when it is given), the
    filtered image and the original threshold on those pixels, and sep's
    limits.
    """
    width = source.shape[1]
    *sep_args, least_stack, detected = args
    todo = [k for k in strips if chain_hi[k] > chain_lo[k]]
    buffers = source.buffers(max(bounds[k + 1] - bounds[k] + 1 for k in todo)) if todo else None
    objs, labels, fvals, tvals = [], [], [], []
    stack = sublim = 0
    nobj = 0
    for k in todo:
        a, b = bounds[k], bounds[k + 1] + 1
        # sep's stack holds the pixels of the detections in progress: never
        # more than the strip's detected pixels (+ slack for its free-list
        # bookkeeping); a larger one costs fresh memory at every call
        enough = int(detected[b] - detected[a]) + 64
        grow = (*sep_args, min(least_stack, enough), enough)
        c0, c1 = coff[chain_lo[k]], coff[chain_hi[k]]
        pix = cpix[c0:c1] - a * width
        image, thr, fv, tv = source.rows(a, b, buffers, pix)
        fvals.append(fv)
        tvals.append(tv)
        try:
            lcoff = coff[chain_lo[k]:chain_hi[k] + 1] - c0  # the detections in pix
            if np.ndim(thr):
                # Inside each detection, its minimum pixel threshold
                # everywhere: sep then deblends from SExtractor's base level
                # (module docstring)
                _set_chain_minimum(lcoff, pix, thr.reshape(-1))
            o, lab, stack_k, sub_k = _sep_strip(image, thr, lcoff, pix, above[a:b], grow, nobj)
        finally:
            source.release(image, thr, pix, tv)
        if seg is None:
            labels.append(lab)
        else:
            _scatter_labels(seg, cpix[c0:c1], lab, 0)
        if a:
            o = o.copy()
            for f in _Y_FIELDS:
                o[f] += a
        objs.append(o)
        nobj += len(o)
        stack, sublim = max(stack, stack_k), max(sublim, sub_k)
    if not objs:
        return None
    return (np.concatenate(objs), np.concatenate(labels) if seg is None else None,
            np.concatenate(fvals), np.concatenate(tvals), stack, sublim)


def _run_groups(source, above, bounds, groups, chain_lo, chain_hi, coff, cpix, args, seg):
    """`_run_strips` on each group of strips, the first in this process (its
    labels straight into ``seg``, while the children work) and the others in
    forked child processes at the same time (their results come back through
    pipes: only the detections' pixels, not maps)."""
    import gc
    import pickle
    import warnings

    def run(g, seg=None):
        return _run_strips(source, above, bounds, groups[g], chain_lo, chain_hi, coff, cpix,
                           args, seg)

    children = []
    for g in range(1, len(groups)):
        rfd, wfd = os.pipe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
            pid = os.fork()
        if pid == 0:  # child: one group, its results through the pipe
            status = 1
            try:
                gc.disable()
                os.close(rfd)
                payload = pickle.dumps(run(g), protocol=pickle.HIGHEST_PROTOCOL)
                view = memoryview(payload)
                while view:
                    view = view[os.write(wfd, view):]
                status = 0
            finally:
                os._exit(status)
        os.close(wfd)
        children.append((g, pid, rfd))

    parts = {}
    try:
        parts[0] = run(0, seg)
    finally:
        for g, pid, rfd in children:
            chunks = []
            with os.fdopen(rfd, "rb") as f:
                while True:
                    chunk = f.read(1 << 22)
                    if not chunk:
                        break
                    chunks.append(chunk)
            _, status = os.waitpid(pid, 0)
            if status == 0 and chunks:
                parts[g] = pickle.loads(b"".join(chunks))
    for g in range(len(groups)):
        if g not in parts:  # the child failed: this group here
            parts[g] = run(g)
    return [parts[g] for g in range(len(groups))]


@functools.lru_cache(maxsize=1)
def _no_objects():
    """sep's (empty) object table, for an image without detections."""
    objs, _ = sep.extract(np.zeros((4, 4), np.float32), 1.0, err=1.0, minarea=1,
                          filter_kernel=None, clean=False, segmentation_map=True)
    return objs[:0]


def _default_strips(shape, ndetected):
    """How many processes `detect` runs sep in: one per numba thread on
    Linux (fork), when sep's estimated time exceeds `STRIP_MIN_SECONDS`."""
    est = _SEP_COST_PIXEL * shape[0] * shape[1] + _SEP_COST_DETECTED * ndetected
    if not sys.platform.startswith("linux") or est < STRIP_MIN_SECONDS:
        return 1
    return max(1, numba.get_num_threads())


def _detect(source, params, strips):
    height, width = source.shape
    minarea = max(int(params["DETECT_MINAREA"]), 1)
    above = source.above()
    coff, cpix = lutz_pixel_order(above, minarea)
    ymin, ymax = _chain_extents(coff, cpix, width)

    detected = np.zeros(height + 1, np.int64)
    np.cumsum(np.count_nonzero(above, axis=1), out=detected[1:])
    args = (minarea, int(params["DEBLEND_NTHRESH"]), float(params["DEBLEND_MINCONT"]),
            max(int(params["MEMORY_PIXSTACK"]), 300000), detected)
    nproc = (_default_strips(source.shape, int(coff[-1])) if strips is None
             else max(int(strips), 1))
    # processes: strips of similar work; each process: strips of bounded
    # rows when the rows are made on the fly
    free = _free_rows(ymin, ymax, height)
    proc_cuts = list(_strip_rows(cpix, free, source.shape, nproc)) if nproc > 1 else []
    lims = [0, *proc_cuts, height - 1]
    if source.streams:
        rows = max(STREAM_STRIP_PIXELS // width, 16)
        cuts, groups = [], []
        for g in range(len(lims) - 1):
            sub = _cuts_every(free, lims[g], lims[g + 1], rows)
            groups.append(list(range(len(cuts), len(cuts) + len(sub) + 1)))
            cuts += sub + ([lims[g + 1]] if g < len(lims) - 2 else [])
    else:
        cuts, groups = proc_cuts, [[g] for g in range(len(lims) - 1)]
    bounds = [0, *cuts, height - 1]
    # detections of each strip (completion order: by last row), as chain ranges
    first = np.searchsorted(ymax, np.asarray(bounds[1:-1], np.int64), side="left").tolist()
    chain_lo, chain_hi = [0, *first], [*first, len(coff) - 1]
    with _parallel.small_pages():  # filled only on the detected pixels (see small_pages)
        seg = np.zeros((height, width), np.int32)
    parts = _run_groups(source, above, bounds, groups, chain_lo, chain_hi, coff, cpix, args,
                        seg)

    chain_f = np.empty(cpix.size, np.float32)
    chain_t = np.empty(cpix.size, np.float32)
    objs = []
    offset = 0
    stack = sublim = 0
    for g, part in enumerate(parts):
        if part is None:
            continue
        o, labels, fv, tv, stack_g, sub_g = part
        c0, c1 = coff[chain_lo[groups[g][0]]], coff[chain_hi[groups[g][-1]]]
        if labels is not None:
            _scatter_labels(seg, cpix[c0:c1], labels, offset)
        chain_f[c0:c1], chain_t[c0:c1] = fv, tv
        objs.append(o)
        offset += len(o)
        stack, sublim = max(stack, stack_g), max(sublim, sub_g)
    objs = np.concatenate(objs) if objs else _no_objects()
    parent = _object_parents(coff, cpix, seg.reshape(-1), len(objs))
    if len(objs) and parent.min() < 0:
        raise RuntimeError("sep's detections do not match SExtractor's segmentation "
                           "(internal error; please report)")
    return Detection(objs, seg, above, coff, cpix, chain_f, chain_t, parent, ymin[parent],
                     ymax[parent], stack or min(args[3], int(detected[-1]) + 64),
                     sublim or sep.get_sub_object_limit(), tuple(cuts), source.threshold())


def detect(filtered, thresh, params, *, strips=None):
    """Segment and deblend a filtered image against a threshold (map).

    Parameters
    ----------
    filtered : 2-D ndarray of float32
        The filtered, background-subtracted detection image.
    thresh : float or 2-D ndarray of float32
        Detection threshold (see `threshold_map`).  A writeable C-contiguous
        float32 map is used in place (changed during the call on the detected
        pixels, and restored); any other is copied.
    params : Params
        Uses ``DETECT_MINAREA``, ``DEBLEND_NTHRESH``, ``DEBLEND_MINCONT``,
        ``MEMORY_PIXSTACK``.
    strips : int, optional
        Run sep on up to this many horizontal strips at once (forked
        processes; cut between detections, so that the objects are the same).
        Default: one per numba thread on Linux when sep's work is large
        (`STRIP_MIN_SECONDS`), else 1.

    Returns
    -------
    Detection
    """
    return _detect(_Frames(filtered, thresh), params, strips)


def detect_streaming(data, kernel, params, *, noise=None, square=False, thresh_factor=0.0,
                     thresh=None, strips=None):
    """`detect` on ``data`` filtered with ``kernel``, without full-frame maps.

    The filtered image and the threshold map are made a row at a time to
    find the detected pixels; sep then runs on strips of rows
    (`STREAM_STRIP_PIXELS`) that hold the two maps' values on the
    detections only (made pixel by pixel), so that a run holds neither map
    as a full frame: at 8192 x 8192 that is 0.5 GB less memory to touch.
    The result is that of `detect` on the full maps, bit for bit.

    Parameters
    ----------
    data : 2-D ndarray of float32
        The background-subtracted image (not modified).
    kernel : 2-D ndarray of float32
        The normalised detection kernel (`detection_kernel`).
    params : Params
    noise : 2-D ndarray of float32, optional
        The absolute variance map, or the rms map with ``square``: the
        threshold is ``thresh_factor * sqrt(noise (x) kernel)``
        (`threshold_map`).
    square : bool
        ``noise`` is an rms map (squared before filtering).
    thresh_factor : float
        ``DETECT_THRESH`` (> 0), with ``noise``.
    thresh : float, optional
        The constant threshold, without ``noise``.
    strips : int, optional
        Processes to run sep in, as for `detect`.

    Returns
    -------
    Detection
    """
    return _detect(_Streamed(data, kernel, noise, square, thresh_factor, thresh), params,
                   strips)


def detect_image(data, params, *, kernel, rms=None, var=None, backsig=None, keep_maps=False,
                 strips=None):
    """Filtering, threshold and detection of a background-subtracted image,
    as SExtractor's ``scan.c``.

    Parameters
    ----------
    data : 2-D ndarray of float32
        The background-subtracted image (0 where masked; not modified).
    params : Params
        ``DETECT_THRESH``, ``THRESH_TYPE`` and `detect`'s parameters.
    kernel : 2-D ndarray of float32 or None
        The normalised detection kernel (`detection_kernel`; None: no filter).
    rms, var : 2-D ndarray of float32, optional
        The absolute noise, as rms or as variance (at most one): the
        threshold is ``DETECT_THRESH * sqrt(filtered variance)``.  Neither:
        no weight map, the constant ``DETECT_THRESH * backsig``.
    backsig : float, optional
        The global background rms (without a noise map).
    keep_maps : bool
        Make the filtered image and threshold map as full frames and return
        them; otherwise they are made a strip at a time where that can be
        done (`detect_streaming`: a filter, a threshold factor > 0).
    strips : int, optional
        As for `detect`; ``keep_maps`` with ``strips=1`` runs sep once on
        the whole image.

    Returns
    -------
    det : Detection
    filtered, thresh : ndarray or float or None
        The full-frame maps (None when they were streamed).
    """
    weighted = rms is not None or var is not None
    if weighted and params["THRESH_TYPE"].upper() != "ABSOLUTE":
        tfac = float(np.float32(params["DETECT_THRESH"]))
        noise, square = (rms, True) if var is None else (var, False)
        if kernel is not None and tfac > 0.0 and not keep_maps:
            return (detect_streaming(data, kernel, params, noise=noise, square=square,
                                     thresh_factor=tfac, strips=strips), None, None)
        if kernel is not None and tfac > 0.0:
            # filtered variance and threshold in one pass
            thresh = _filter(noise, kernel, square=square, thresh_factor=tfac)
        elif kernel is not None:
            fvar = _filter(noise, kernel, square=square)
            thresh = threshold_map(params, fvar=fvar, out=fvar)
        elif square:
            fvar = np.square(noise, dtype=np.float32)
            thresh = threshold_map(params, fvar=fvar, out=fvar)
        else:
            thresh = threshold_map(params, fvar=noise)
    else:
        thresh = threshold_map(params, backsig=backsig)
        if kernel is not None and not keep_maps:
            return detect_streaming(data, kernel, params, thresh=thresh, strips=strips), None, None
    # (without a filter the detection image is the data itself: nothing
    # downstream writes to either)
    filtered = _filter(data, kernel) if kernel is not None else data
    return detect(filtered, thresh, params, strips=strips), filtered, thresh


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
    if height == 0 or width == 0:
        return np.zeros(1, np.int64), np.zeros(0, np.int64)
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
        row = mask[min(yl, height - 1)]
        inside = yl < height
        xl = -1
        while True:
            xl += 1
            if cs != OBJECT:
                # nothing happens on a pixel that is off, without a marker,
                # outside a segment: go to the next one that matters
                # (xl >= 0: see UINDEX)
                if inside:
                    while xl < width and not row[_U(xl)] and marker[_U(xl)] == 0:
                        xl += 1
                else:
                    while xl < width and marker[_U(xl)] == 0:
                        xl += 1
            if xl > width:
                break
            on = xl < width and inside and row[xl]
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
    # (writeable, as the deblender's own calls: one compiled version)
    return _lutz_chains(np.ascontiguousarray(mask, dtype=np.bool_), int(minarea))


# --------------------------------------------------------------------------- pixel sharing
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
        # C promotes int coordinates to float: single-precision products
        c = cd[k]
        if val[k] > thresh:
            dnpix += 1
        if val[k] > thresh2:
            area2 += 1
        x = np.float32(px[k] - xmin)
        y = np.float32(py[k] - ymin)
        cx = c * x
        cy = c * y
        mx += cx
        my += cy
        mx2 += cx * x
        my2 += cy * y
        mxy += cx * y
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
        lg = math.log(t1t2 if t1t2 < 1.0 else 0.99)
        v = (darea if darea < 0.0 else -1.0) / (2 * math.pi * lg * a * b)
        abcor = np.float32(v if v < 1.0 else 1.0)
    return xm + xmin, ym + ymin, a, b, cxx, cyy, cxy, abcor, fdpeak


@numba.njit(cache=True)
def _share_pixels(seg, width, cf, data, ct, weighted, coff, cpix, pk,
                  objx, objy, xn, rng, out_off, out_idx, out_q, centre, ok_out, ncalls):
    """Redo SExtractor's pixel sharing for every deblended detection.

    ``pk[o]`` is the Lutz chain (detection) of object ``o``; objects of one
    detection are consecutive; ``cf`` and ``ct`` are the filtered image and
    the threshold on the chains' pixels (`Detection.chain_filtered`).  Writes
    each object's pixel list, in SExtractor's order, into the CSR
    (``out_off``, ``out_idx``; ``out_q``: each pixel's place in ``cpix``), the new labels
    into ``seg``, and for re-shared children their core barycentre (the
    position SExtractor keeps for them) into ``centre``; ``ok_out[o]`` is 1
    where the sharing was redone, 0 where sep's children were kept (core not
    recognised), 2 for undeblended objects.
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
        base = coff[k]
        P = cpix[base:coff[k + 1]]
        npx = P.size
        if nch == 1:
            for q in range(npx):
                out_idx[fill + q] = P[q]
                out_q[fill + q] = base + q
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
            cdv[q] = cf[base + q]
            dv[q] = data[P[q]]
            tv[q] = ct[base + q]
            if tv[q] < dthresh0:
                dthresh0 = tv[q]
            if cdv[q] > fdpeak0:
                fdpeak0 = cdv[q]
        # ---- the children's cores: the lowest-level component (of the pixels
        # above a deblending level) whose barycentre is the child's
        good = True
        owner = np.full(npx, -1, np.int64)
        level = np.full(nch, -1, np.int64)
        lthr = np.zeros(nch, np.float32)
        uf = np.empty(npx, np.int64)
        sw = np.zeros(npx)
        swx = np.zeros(npx)
        swy = np.zeros(npx)
        cnt = np.zeros(npx, np.int64)
        rmin_x = np.zeros(npx, np.int64)
        rmin_y = np.zeros(npx, np.int64)
        roots = np.empty(npx, np.int64)
        nfound = 0
        for lev in range(1, xn):
            if nfound == nch:
                break
            if fdpeak0 > 0.0:
                t = np.float32(np.float64(dthresh0)
                               * math.pow(np.float64(fdpeak0) / np.float64(dthresh0), lev / xn))
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
            # barycentres (single-precision products, as C) about each
            # component's lower-left corner
            for q in range(npx):
                sw[q] = 0.0
                swx[q] = 0.0
                swy[q] = 0.0
                cnt[q] = 0
                rmin_x[q] = 1 << 40
                rmin_y[q] = 1 << 40
            for q in range(npx):
                if cdv[q] > t:
                    r = _uf_find(uf, q)
                    cnt[r] += 1
                    if px[q] < rmin_x[r]:
                        rmin_x[r] = px[q]
                    if py[q] < rmin_y[r]:
                        rmin_y[r] = py[q]
            for q in range(npx):
                if cdv[q] > t:
                    r = _uf_find(uf, q)
                    sw[r] += cdv[q]
                    swx[r] += cdv[q] * np.float32(px[q] - rmin_x[r])
                    swy[r] += cdv[q] * np.float32(py[q] - rmin_y[r])
            nroot = 0
            for q in range(npx):
                if uf[q] == q and cnt[q] >= 3 and cdv[q] > t:
                    roots[nroot] = q
                    nroot += 1
            for c in range(nch):
                if level[c] >= 0:
                    continue
                best = -1
                bestd = 1e-3
                for ir in range(nroot):
                    q = roots[ir]
                    bx = swx[q] / sw[q] + rmin_x[q]
                    by = swy[q] / sw[q] + rmin_y[q]
                    d = max(abs(bx - objx[g0 + c]), abs(by - objy[g0 + c]))
                    if d < bestd:
                        bestd = d
                        best = q
                if best >= 0:
                    level[c] = lev
                    lthr[c] = t
                    nfound += 1
                    for q in range(npx):
                        if cdv[q] > t and _uf_find(uf, q) == best:
                            if owner[q] >= 0:
                                good = False
                            owner[q] = c
        for c in range(nch):
            if level[c] < 0:
                good = False
        # ---- the cores' ellipses, as gatherup's preanalyse sees them
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
        # core pixels grouped by child (in detection order)
        coff3 = np.zeros(nch + 1, np.int64)
        if good:
            for q in range(npx):
                if owner[q] >= 0:
                    cnpix[owner[q]] += 1
            for c in range(nch):
                coff3[c + 1] = coff3[c] + cnpix[c]
            cq = np.empty(coff3[nch], np.int64)
            cfill = coff3[:nch].copy()
            for q in range(npx):
                c = owner[q]
                if c >= 0:
                    cq[cfill[c]] = q
                    cfill[c] += 1
            for c in range(nch):
                # the core's own pixel-list order (the deblender's Lutz scan)
                qs = cq[coff3[c]:coff3[c + 1]]
                ncq = qs.size
                # (explicit loops rather than fancy indexing: quicker to compile)
                cx0 = px[qs[0]]
                cy0 = py[qs[0]]
                cx1 = cx0
                cy1 = cy0
                for q in qs:
                    cx0 = min(cx0, px[q])
                    cx1 = max(cx1, px[q])
                    cy0 = min(cy0, py[q])
                    cy1 = max(cy1, py[q])
                cw = cx1 - cx0 + 1
                core = np.zeros((cy1 - cy0 + 1, cw), np.bool_)
                for q in qs:
                    core[py[q] - cy0, px[q] - cx0] = True
                # (np.int64: a literal 1 would compile a second specialisation)
                coff2, cpix2 = _lutz_chains(core, np.int64(1))
                for j in range(coff2[coff2.size - 1]):
                    ly = cpix2[j] // cw
                    lx = cpix2[j] - ly * cw
                    qs[j] = grid[(ly + cy0 - y0) * bw + (lx + cx0 - x0)]
                tmin = np.float32(3.0e38)
                gx = np.empty(ncq, np.int64)
                gy = np.empty(ncq, np.int64)
                gc = np.empty(ncq, np.float32)
                gd = np.empty(ncq, np.float32)
                for j in range(ncq):
                    q = qs[j]
                    if tv[q] < tmin:
                        tmin = tv[q]
                    gx[j] = px[q]
                    gy[j] = py[q]
                    gc[j] = cdv[q]
                    gd[j] = dv[q]
                th = tmin if weighted else lthr[c]
                (cmx[c], cmy[c], ca[c], cb[c], ccxx[c], ccyy[c], ccxy[c], cabcor[c],
                 cpeak[c]) = _core_moments(gx, gy, gc, gd, th, weighted)
        if not good:
            # keep sep's children; SExtractor's pixel order along the detection
            for c in range(nch):
                out_off[g0 + c] = fill
                for q in range(npx):
                    if seg[P[q]] == g0 + c + 1:
                        out_idx[fill] = P[q]
                        out_q[fill] = base + q
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
                ncalls[g0] += 1
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
        for q in range(npx):
            seg[P[q]] = g0 + owner[q] + 1
        gath = np.zeros(nch + 1, np.int64)
        for q in range(npx):
            if coreowner[q] < 0:
                gath[owner[q] + 1] += 1
        for c in range(nch):
            gath[c + 1] += gath[c]
        gq = np.empty(gath[nch], np.int64)
        gfill = gath[:nch].copy()
        for q in range(npx):  # shared pixels, in the detection's order
            if coreowner[q] < 0:
                gq[gfill[owner[q]]] = q
                gfill[owner[q]] += 1
        for c in range(nch):
            out_off[g0 + c] = fill
            for j in range(coff3[c], coff3[c + 1]):  # core, in its Lutz order
                out_idx[fill] = P[cq[j]]
                out_q[fill] = base + cq[j]
                fill += 1
            for j in range(gath[c], gath[c + 1]):
                out_idx[fill] = P[gq[j]]
                out_q[fill] = base + gq[j]
                fill += 1
            centre[g0 + c, 0] = cmx[c]
            centre[g0 + c, 1] = cmy[c]
            ok_out[g0 + c] = 1
        out_off[g1] = fill
    out_off[n] = fill


def sextractor_pixel_lists(det, data, params, *, weighted=False):
    """Each object's pixels in SExtractor's order, with SExtractor's pixel sharing.

    For undeblended detections the pixel list is the Lutz chain
    (`lutz_pixel_order`).  For deblended ones the children's cores are
    recovered from sep's result (the lowest-level component, among the
    pixels above a deblending level, whose barycentre is the child's) and the
    remaining pixels are shared among the children as SExtractor's
    ``gatherup`` does, with glibc's ``rand()`` sequence (seeded 1, drawn in
    SExtractor's order).  ``weighted`` says whether a weight map is used
    (SExtractor then takes ``abcor = 1``).  ``det.segmap`` is relabelled in
    place.

    Returns
    -------
    offsets, index, chain_index : ndarray of int64
        CSR of flat pixel indices per object (row ``i`` = label ``i + 1``),
        and of each pixel's place in ``det.chain_pix`` (where its filtered
        value and threshold are: `Detection.chain_filtered`).
    centre : ndarray of float64, shape (n, 2)
        Core barycentre (x, y) of re-shared children, NaN elsewhere.
    info : dict
        ``reshared`` (children whose sharing was redone), ``kept`` (children
        of detections where sep's sharing had to be kept: core not
        recognised), ``kept_index`` (those children), ``rand_calls``.
    """
    objs = det.objects
    n = len(objs)
    width = det.segmap.shape[1]
    if n == 0:
        return (np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64),
                np.zeros((0, 2)), {"reshared": 0, "kept": 0,
                                   "kept_index": np.zeros(0, np.int64), "rand_calls": 0})
    ro = _parallel.readonly
    seg = det.segmap.reshape(-1)
    if not np.shares_memory(seg, det.segmap):
        raise RuntimeError("segmentation map must be C-contiguous")
    coff, cpix = det.chain_off, det.chain_pix
    out_off = np.zeros(n + 1, np.int64)
    out_idx = np.zeros(int(coff[-1]), np.int64)
    out_q = np.zeros(int(coff[-1]), np.int64)
    centre = np.full((n, 2), np.nan)
    ok = np.zeros(n, np.int64)
    rng = _glibc_srand(1)
    ncalls = np.zeros(n, np.int64)
    _share_pixels(seg, width, ro(det.chain_filtered),
                  ro(np.ascontiguousarray(data, np.float32)).reshape(-1),
                  ro(det.chain_thresh), bool(weighted), coff, cpix,
                  np.ascontiguousarray(det.parent, np.int64),
                  np.ascontiguousarray(objs["x"], np.float64),
                  np.ascontiguousarray(objs["y"], np.float64),
                  int(params["DEBLEND_NTHRESH"]), rng, out_off, out_idx, out_q, centre, ok,
                  ncalls)
    return out_off, out_idx, out_q, centre, {"reshared": int(np.count_nonzero(ok == 1)),
                                             "kept": int(np.count_nonzero(ok == 0)),
                                             "kept_index": np.flatnonzero(ok == 0),
                                             "rand_calls": int(ncalls.sum())}
