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

Two things SExtractor does depend on the *order* of each detection's linked
pixel list: its CLEAN level (an order-dependent heap selection) and the
random sharing of a deblended detection's faint pixels among its children
(``gatherup``, glibc's ``rand()``).  `lutz_pixel_order` rebuilds that order
and `sextractor_pixel_lists` redoes the sharing exactly, so that segmentation
maps come out identical to SExtractor's.  Cleaning (``clean=False`` here) is
done by :mod:`galseg.extract.clean`.
"""

from __future__ import annotations

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
def _correlate(y0, y1, image, kernel, out, square, tfac):
    """Rows ``y0..y1-1`` of ``out = image (x) kernel`` (of ``image**2`` with
    ``square``); with ``tfac > 0``, each output row is then turned into the
    detection threshold ``tfac * sqrt(row)`` while it is in cache
    (`_threshold`)."""
    height, width = image.shape
    kh, kw = kernel.shape
    kh2 = kh // 2
    kw2 = kw // 2
    block = 1024  # columns per pass: the rows involved stay in cache
    for y in range(y0, y1):
        orow = out[y]
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
                     float(thresh_factor))
    return out


@numba.njit(cache=True)
def _threshold_row(row, t):
    for i in range(row.size):
        v = np.float64(row[i])
        row[i] = np.float32(t * math.sqrt(v)) if v >= 0.0 else np.float32(np.nan)


@numba.njit(cache=True)
def _threshold(fvar, t, out):
    n = fvar.size
    for i in range(n):
        v = np.float64(fvar[i])
        # negative filtered variance (kernels with negative weights): NaN,
        # a threshold nothing exceeds, as sqrt() gives SExtractor
        out[i] = np.float32(t * math.sqrt(v)) if v >= 0.0 else np.float32(np.nan)


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
    filtered : ndarray of float32
        The filtered detection image (the input when not filtering).
    thresh : float or ndarray of float32
        The detection threshold per pixel (or constant).
    above : ndarray of bool
        ``filtered > thresh``: the detected pixels.
    chain_off, chain_pix : ndarray of int64
        The detections (8-connected groups of at least ``DETECT_MINAREA``
        detected pixels) in completion order, each as its flat pixel indices
        in SExtractor's pixel-list order (see `lutz_pixel_order`).
    parent : ndarray of int64
        For each object, the index of the detection it was deblended from.
    parent_ymin, parent_ymax : ndarray of int64
        Vertical extent of each object's detection.
    pixstack, sub_object_limit : int
        The sep limits the extraction ran with.
    strips : tuple of int
        The rows at which the image was cut to run sep on several horizontal
        strips at once (empty: one run); no detection crosses them.
    """

    objects: np.ndarray
    segmap: np.ndarray
    filtered: np.ndarray
    thresh: float | np.ndarray
    above: np.ndarray
    chain_off: np.ndarray
    chain_pix: np.ndarray
    parent: np.ndarray
    parent_ymin: np.ndarray
    parent_ymax: np.ndarray
    pixstack: int
    sub_object_limit: int
    strips: tuple = ()

    def subset(self, keep):
        """The same detections with only the objects ``keep`` (bool mask)."""
        lut = np.zeros(len(keep) + 1, np.int32)
        lut[1:][keep] = np.arange(1, int(np.count_nonzero(keep)) + 1, dtype=np.int32)
        return Detection(self.objects[keep], lut[self.segmap], self.filtered, self.thresh,
                         self.above, self.chain_off, self.chain_pix, self.parent[keep],
                         self.parent_ymin[keep], self.parent_ymax[keep], self.pixstack,
                         self.sub_object_limit, self.strips)


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
def _chain_levels(coff, cpix, width, thr, thr_is_map, saved):
    """Per detection: vertical extent, and (threshold map) the lowest pixel
    threshold written over its pixels, their values kept in ``saved``."""
    nch = coff.size - 1
    ymin = np.empty(nch, np.int64)
    ymax = np.empty(nch, np.int64)
    for k in range(nch):
        tmin = np.float32(3.0e38)
        y0 = 1 << 40
        y1 = -1
        for q in range(coff[k], coff[k + 1]):
            p = cpix[q]
            y = p // width
            if y < y0:
                y0 = y
            if y > y1:
                y1 = y
            if thr_is_map:
                t = thr[p]
                saved[q] = t
                if t < tmin:
                    tmin = t
        ymin[k] = y0
        ymax[k] = y1
        if thr_is_map:
            for q in range(coff[k], coff[k + 1]):
                thr[cpix[q]] = tmin
    return ymin, ymax


@numba.njit(cache=True)
def _restore(cpix, thr, saved):
    for q in range(cpix.size):
        thr[cpix[q]] = saved[q]


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


# ------------------------------------------------------------------ parallel strips
#: sep's cost (seconds) per image pixel scanned and per detected pixel
#: (deblending), measured on the benchmark fields.
_SEP_COST_PIXEL = 1.3e-9
_SEP_COST_DETECTED = 5.7e-7
#: Least estimated sep time (s) worth running strips in forked processes
#: (forking a process holding several full-frame arrays costs ~0.1 s).
STRIP_MIN_SECONDS = 0.4


@numba.njit(cache=True)
def _row_counts(cpix, width, height):
    counts = np.zeros(height, np.int64)
    for q in range(cpix.size):
        counts[cpix[q] // width] += 1
    return counts


def _strip_rows(cpix, ymin, ymax, shape, nstrips):
    """Rows at which to cut the image into ``nstrips`` strips of similar work.

    A cut row lies outside the vertical extent of every detection, so that
    sep finds exactly the same objects in the strips (each strip includes its
    cut rows) as in the whole image.  Returns the cut rows (possibly fewer
    than ``nstrips - 1``, none when no row qualifies).
    """
    height, width = shape
    if nstrips < 2 or height < 8:
        return ()
    cover = np.zeros(height + 1, np.int64)
    np.add.at(cover, ymin, 1)
    np.add.at(cover, ymax + 1, -1)
    free = np.flatnonzero(np.cumsum(cover[:-1]) == 0)
    free = free[(free > 0) & (free < height - 1)]
    if free.size == 0:
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


@numba.njit(cache=True)
def _gather_labels(seg, pix, base):
    """Labels of the flat pixels ``pix`` of an image, in a strip starting at
    flat index ``base``."""
    out = np.empty(pix.size, np.int32)
    flat = seg.reshape(-1)
    for q in range(pix.size):
        out[q] = flat[pix[q] - base]
    return out


@numba.njit(cache=True)
def _scatter_labels(seg, pix, labels, offset):
    flat = seg.reshape(-1)
    for q in range(pix.size):
        v = labels[q]
        flat[pix[q]] = v + offset if v else 0


_Y_FIELDS = ("y", "ymin", "ymax", "ycpeak", "ypeak")


def _extract_strips(image, err, args, cuts, coff, cpix, chain_ymax):
    """`_extract_growing` on horizontal strips, the first in this process and
    the others in forked child processes at the same time; the results are
    those of one run on the whole image (see `_strip_rows`), except for the
    random sharing sep draws for detections it deblends (galseg redoes that
    sharing; the engine runs sep once more on the whole image in the rare
    case where it keeps sep's).

    sep labels only the pixels of detections, so a child sends back, with
    its objects, the labels of its detections' pixels (``cpix``), not its
    segmentation map.
    """
    import gc
    import pickle
    import warnings

    height, width = image.shape
    bounds = [0, *cuts, height - 1]
    nstrip = len(bounds) - 1
    # detections (completion order) of each strip, as ranges of chains
    first_chain = np.searchsorted(chain_ymax, np.asarray(bounds[1:-1]), side="left")
    chain_lo = [0, *first_chain.tolist()]
    chain_hi = [*first_chain.tolist(), len(coff) - 1]

    def run(k):
        a, b = bounds[k], bounds[k + 1]
        e = err if np.ndim(err) == 0 else err[a:b + 1]
        objs, sseg, stack, sublim = _extract_growing(image[a:b + 1], e, *args)
        pix = cpix[coff[chain_lo[k]]:coff[chain_hi[k]]]
        labels = _gather_labels(np.ascontiguousarray(sseg, dtype=np.int32), pix, a * width)
        return objs, labels, stack, sublim

    children = []
    for k in range(1, nstrip):
        rfd, wfd = os.pipe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
            pid = os.fork()
        if pid == 0:  # child: one strip, its results through the pipe
            status = 1
            try:
                gc.disable()
                os.close(rfd)
                payload = pickle.dumps(run(k), protocol=pickle.HIGHEST_PROTOCOL)
                view = memoryview(payload)
                while view:
                    view = view[os.write(wfd, view):]
                status = 0
            finally:
                os._exit(status)
        os.close(wfd)
        children.append((k, pid, rfd))

    parts = {}
    try:
        parts[0] = run(0)
    finally:
        for k, pid, rfd in children:
            chunks = []
            with os.fdopen(rfd, "rb") as f:
                while True:
                    chunk = f.read(1 << 22)
                    if not chunk:
                        break
                    chunks.append(chunk)
            _, status = os.waitpid(pid, 0)
            if status == 0 and chunks:
                parts[k] = pickle.loads(b"".join(chunks))
    with _parallel.small_pages():  # filled only on the detected pixels (see _small_pages)
        seg = np.zeros((height, width), np.int32)
    allobjs = []
    offset = 0
    for k in range(nstrip):
        if k not in parts:  # the child failed: this strip here
            parts[k] = run(k)
        objs, labels, _, _ = parts[k]
        if k:
            objs = objs.copy()
            for f in _Y_FIELDS:
                objs[f] += bounds[k]
        _scatter_labels(seg, cpix[coff[chain_lo[k]]:coff[chain_hi[k]]], labels, offset)
        allobjs.append(objs)
        offset += len(objs)
    return (np.concatenate(allobjs), seg, max(p[2] for p in parts.values()),
            max(p[3] for p in parts.values()))


def _default_strips(shape, ndetected):
    """How many strips `detect` cuts an image into: one per numba thread on
    Linux (fork), when sep's estimated time exceeds `STRIP_MIN_SECONDS`."""
    est = _SEP_COST_PIXEL * shape[0] * shape[1] + _SEP_COST_DETECTED * ndetected
    if not sys.platform.startswith("linux") or est < STRIP_MIN_SECONDS:
        return 1
    return max(1, numba.get_num_threads())


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
    image = np.ascontiguousarray(filtered, dtype=np.float32)
    if not image.flags.writeable:  # sep takes writeable buffers only
        image = image.copy()
    width = image.shape[1]
    minarea = max(int(params["DETECT_MINAREA"]), 1)
    scalar = np.ndim(thresh) == 0
    above = image > (np.float32(thresh) if scalar else thresh)
    coff, cpix = lutz_pixel_order(above, minarea)

    # sep's stack holds the pixels of the detections in progress: never more
    # than all detected pixels (+ slack for its free-list bookkeeping).
    enough = int(np.count_nonzero(above)) + 64
    pixstack = min(max(int(params["MEMORY_PIXSTACK"]), 300000), enough)
    args = (minarea, int(params["DEBLEND_NTHRESH"]), float(params["DEBLEND_MINCONT"]),
            pixstack, enough)
    nstrips = (_default_strips(image.shape, int(coff[-1])) if strips is None
               else max(int(strips), 1))

    def extract(err):
        if nstrips > 1:
            cuts = _strip_rows(cpix, ymin, ymax, image.shape, nstrips)
            if cuts:
                return (*_extract_strips(image, err, args, cuts, coff, cpix, ymax), cuts)
        return (*_extract_growing(image, err, *args), ())

    if scalar:
        ymin, ymax = _chain_levels(coff, cpix, width, np.zeros(1, np.float32), False,
                                   np.zeros(1, np.float32))
        objs, seg, stack, sublim, cuts = extract(float(np.float32(thresh)))
    else:
        # Inside each detection, its minimum pixel threshold everywhere: sep
        # then deblends from SExtractor's base level (see module docstring).
        # The map is changed in place on the detected pixels and restored.
        thr = thresh if (isinstance(thresh, np.ndarray) and thresh.dtype == np.float32
                         and thresh.flags.c_contiguous and thresh.flags.writeable) \
            else np.array(thresh, dtype=np.float32, order="C")
        thr_flat = thr.reshape(-1)
        saved = np.empty(cpix.size, np.float32)
        ymin, ymax = _chain_levels(coff, cpix, width, thr_flat, True, saved)
        try:
            objs, seg, stack, sublim, cuts = extract(thr)
        finally:
            _restore(cpix, thr_flat, saved)
        thresh = thr
    seg = np.ascontiguousarray(seg, dtype=np.int32)
    parent = _object_parents(coff, cpix, seg.reshape(-1), len(objs))
    if len(objs) and parent.min() < 0:
        raise RuntimeError("sep's detections do not match SExtractor's segmentation "
                           "(internal error; please report)")
    return Detection(objs, seg, image, thresh, above, coff, cpix, parent, ymin[parent],
                     ymax[parent], stack, sublim, tuple(cuts))


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
def _share_pixels(seg, width, cd, data, thr, thr_is_map, weighted, coff, cpix, pk,
                  objx, objy, xn, rng, out_off, out_idx, centre, ok_out, ncalls):
    """Redo SExtractor's pixel sharing for every deblended detection.

    ``pk[o]`` is the Lutz chain (detection) of object ``o``; objects of one
    detection are consecutive.  Writes each object's pixel list, in
    SExtractor's order, into the CSR (``out_off``, ``out_idx``), the new labels
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
                fill += 1
            for j in range(gath[c], gath[c + 1]):
                out_idx[fill] = P[gq[j]]
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
    offsets, index : ndarray of int64
        CSR of flat pixel indices per object (row ``i`` = label ``i + 1``).
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
        return (np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros((0, 2)),
                {"reshared": 0, "kept": 0, "kept_index": np.zeros(0, np.int64),
                 "rand_calls": 0})
    thr = det.thresh
    thr_is_map = np.ndim(thr) == 2
    ro = _parallel.readonly
    thr_flat = ro(np.ascontiguousarray(thr, dtype=np.float32).reshape(-1) if thr_is_map
                  else np.full(1, thr, np.float32))
    seg = det.segmap.reshape(-1)
    if not np.shares_memory(seg, det.segmap):
        raise RuntimeError("segmentation map must be C-contiguous")
    coff, cpix = det.chain_off, det.chain_pix
    out_off = np.zeros(n + 1, np.int64)
    out_idx = np.zeros(int(coff[-1]), np.int64)
    centre = np.full((n, 2), np.nan)
    ok = np.zeros(n, np.int64)
    rng = _glibc_srand(1)
    ncalls = np.zeros(n, np.int64)
    _share_pixels(seg, width, ro(np.ascontiguousarray(det.filtered, np.float32)).reshape(-1),
                  ro(np.ascontiguousarray(data, np.float32)).reshape(-1), thr_flat, thr_is_map,
                  bool(weighted), coff, cpix, np.ascontiguousarray(det.parent, np.int64),
                  np.ascontiguousarray(objs["x"], np.float64),
                  np.ascontiguousarray(objs["y"], np.float64),
                  int(params["DEBLEND_NTHRESH"]), rng, out_off, out_idx, centre, ok, ncalls)
    return out_off, out_idx, centre, {"reshared": int(np.count_nonzero(ok == 1)),
                                      "kept": int(np.count_nonzero(ok == 0)),
                                      "kept_index": np.flatnonzero(ok == 0),
                                      "rand_calls": int(ncalls.sum())}
