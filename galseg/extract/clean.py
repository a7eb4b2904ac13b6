"""What SExtractor does with a detection once it is deblended: its detection-
stage analysis, CLEAN with merging, and the catalogue order (``analyse.c``,
``clean.c``, ``scan.c``).

**Analysis** (:func:`analyse_detections`).  For each deblended object, on its
own pixels and in SExtractor's pixel-list order: the moments of the filtered
image (``preanalyse``: single-precision products, double sums; a deblended
object keeps its core's barycentre), its detection threshold (the lowest pixel
threshold), ``abcor``, the CLEAN level ``mthresh`` and the position-error
moments (``examineiso``), and the mesh background at its centre.

**CLEAN** (:func:`clean_and_order`).  SExtractor cleans *while it scans*: each
new object is compared with the objects still held in its "clean list" (those
not yet written out).  Modelling each object as a Moffat profile
(``CLEAN_PARAM`` is the Moffat beta) of amplitude ``fdflux / (2 pi a b
abcor)``, a fainter object is "spurious" when the brighter one's profile, at
its position, exceeds its own ``mthresh``.  A spurious object is not dropped:
``mergeobject`` adds its pixels, fluxes, areas, peaks, bounding box and flags
to the object that absorbs it; the absorber's position and shape are *not*
recomputed.  A newcomer is absorbed by the first brighter listed object that
eats it; otherwise it absorbs every fainter listed object it eats.

**Order.**  Objects leave the clean list, and get their catalogue ``NUMBER``,
when the image buffer moves past them (``ycmin <= buffer ymin``), when the
list is full (``MEMORY_OBJSTACK``: the one that ends highest goes), and at
the end of the image (first the list's first entry, then from its end, as
``subcleanobj`` reshuffles it).  :func:`clean_and_order` replays this
bookkeeping exactly, so that galseg's ``NUMBER`` is SExtractor's.  Candidate
pairs come from a spatial grid, so the cost is linear in the number of
objects for realistic fields.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from . import _parallel
from ._sort import argsort_small, sort_inplace

__all__ = ["ANALYSIS_FIELDS", "analyse_detections", "CLEAN_ZONE", "neighbour_pairs",
           "clean_and_order", "clean_margin", "strip_geometry"]


# --------------------------------------------------------------------------- analysis
#: Fields of `analyse_detections` (SExtractor ``objstruct`` names where they exist).
ANALYSIS_FIELDS = (
    ("x", np.float64), ("y", np.float64), ("x2", np.float64), ("y2", np.float64),
    ("xy", np.float64), ("a", np.float32), ("b", np.float32), ("theta", np.float32),
    ("cxx", np.float32), ("cyy", np.float32), ("cxy", np.float32),
    ("xmin", np.int64), ("xmax", np.int64), ("ymin", np.int64), ("ymax", np.int64),
    ("singu", np.bool_), ("xcpeak", np.int64), ("ycpeak", np.int64),
    ("xpeak", np.int64), ("ypeak", np.int64),
    ("fdnpix", np.int64), ("dnpix", np.int64), ("fdflux", np.float32), ("dflux", np.float32),
    ("fdpeak", np.float32), ("dpeak", np.float32), ("dthresh", np.float32),
    ("mthresh", np.float32), ("abcor", np.float32),
    ("poserr_mx2", np.float64), ("poserr_my2", np.float64), ("poserr_mxy", np.float64),
    ("bkg", np.float32),
)


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
            sort_inplace(heap)
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
def _moments(offsets, index, chain, width, filt, merged, cenx, ceny, out_mom, out_box,
             out_peak):
    """Detection moments of each object, as SExtractor's ``preanalyse``.

    ``ANALYSE_FULL|ANALYSE_ROBUST``: filtered-image weights, single-precision
    products, double sums; deblended objects (``merged``) keep the barycentre
    of their core (``cenx``, ``ceny``) and take second moments about it.
    Also the bounding box and the first brightest filtered / unfiltered
    pixels.  ``filt``: the filtered image on the detections' pixels, pixel
    ``index[k]`` at ``filt[chain[k]]``.
    """
    n = merged.size
    for o in range(n):
        start = offsets[o]
        stop = offsets[o + 1]
        if stop == start:
            continue
        xmin = 1 << 40
        ymin = 1 << 40
        xmax = -1
        ymax = -1
        rv = 0.0
        cpk = np.float32(-3e38)
        xc = 0
        yc = 0
        for k in range(start, stop):
            p = index[k]
            y = p // width
            x = p - y * width
            if x < xmin:
                xmin = x
            if x > xmax:
                xmax = x
            if y < ymin:
                ymin = y
            if y > ymax:
                ymax = y
            c = filt[chain[k]]
            rv += c
            if c > cpk:
                cpk = c
                xc = x
                yc = y
        sx = 0.0
        sy = 0.0
        sx2 = 0.0
        sy2 = 0.0
        sxy = 0.0
        for k in range(start, stop):
            p = index[k]
            y = p // width
            x = p - y * width
            c = filt[chain[k]]
            fx = np.float32(x - xmin)
            fy = np.float32(y - ymin)
            cx = c * fx
            cy = c * fy
            sx += cx
            sy += cy
            sx2 += cx * fx
            sy2 += cy * fy
            sxy += cx * fy
        xm = sx / rv
        ym = sy / rv
        if merged[o]:
            xn = cenx[o] - xmin
            yn = ceny[o] - ymin
            xm2 = sx2 / rv + xn * xn - 2 * xm * xn
            ym2 = sy2 / rv + yn * yn - 2 * ym * yn
            xym = sxy / rv + xn * yn - xm * yn - xn * ym
            xm = xn
            ym = yn
        else:
            xm2 = sx2 / rv - xm * xm
            ym2 = sy2 / rv - ym * ym
            xym = sxy / rv - xm * ym
        singu = 0
        temp2 = xm2 * ym2 - xym * xym
        if temp2 < 0.00694:
            xm2 += 0.0833333
            ym2 += 0.0833333
            temp2 = xm2 * ym2 - xym * xym
            singu = 1
        d = xm2 - ym2
        theta = math.atan2(2.0 * xym, d) / 2.0 if abs(d) > 0.0 else math.pi / 4.0
        temp = math.sqrt(0.25 * d * d + xym * xym)
        pmx2 = 0.5 * (xm2 + ym2) + temp
        pmy2 = 0.5 * (xm2 + ym2) - temp
        out_mom[o, 0] = xm + xmin
        out_mom[o, 1] = ym + ymin
        out_mom[o, 2] = xm2
        out_mom[o, 3] = ym2
        out_mom[o, 4] = xym
        out_mom[o, 5] = np.float32(math.sqrt(pmx2))
        out_mom[o, 6] = np.float32(math.sqrt(pmy2) if pmy2 > 0.0 else 0.0)
        out_mom[o, 7] = np.float32(theta)
        out_mom[o, 8] = np.float32(ym2 / temp2)
        out_mom[o, 9] = np.float32(xm2 / temp2)
        out_mom[o, 10] = np.float32(-2 * xym / temp2)
        out_box[o, 0] = xmin
        out_box[o, 1] = xmax
        out_box[o, 2] = ymin
        out_box[o, 3] = ymax
        out_box[o, 4] = singu
        out_peak[o, 0] = xc
        out_peak[o, 1] = yc


@numba.njit(cache=True)
def _analyse(offsets, index, chain, width, data, filt, thr, mx, my, a, b, singu,
             minarea, dbacknoise2, gain, weighted, mesh, bw, bh, out_i, out_f, out_d):
    n = mx.size
    for o in range(n):
        start = offsets[o]
        stop = offsets[o + 1]
        npx = stop - start
        if npx == 0:
            continue
        # ---- preanalyse(ANALYSE_FULL): threshold, peaks, fluxes, abcor
        dthresh = np.float32(3.0e38)
        fdflux = 0.0
        fdpeak = np.float32(-1e30)
        dpeak = np.float32(-1e30)
        xpk = 0
        ypk = 0
        for k in range(start, stop):
            p = index[k]
            y = p // width
            x = p - y * width
            t = thr[chain[k]]
            if t < dthresh:
                dthresh = t
            c = filt[chain[k]]
            fdflux += c
            if c > fdpeak:
                fdpeak = c
            v = data[y, x]
            if v > dpeak:
                dpeak = v
                xpk = x
                ypk = y
        thresh = np.float64(dthresh)
        thresh2 = (thresh + dpeak) / 2.0
        dnpix = 0
        area2 = 0
        dflux = 0.0
        tpix = np.empty(npx, np.float32)
        fdflux32 = np.float32(fdflux)
        flux2 = np.float64(fdflux32) * np.float64(fdflux32)
        esum = 0.0
        emx2 = 0.0
        emy2 = 0.0
        emxy = 0.0
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
            c = filt[chain[k]]
            t = thr[chain[k]]
            tpix[k - start] = c - t
            # examineiso: position-error moments (global noise + Poisson)
            err = dbacknoise2
            if gain > 0.0 and c > 0.0:
                err += c / gain
            ddx = x - mx[o]
            ddy = y - my[o]
            esum += err
            emx2 += err * ddx * ddx
            emy2 += err * ddy * ddy
            emxy += err * ddx * ddy
        abcor = np.float32(1.0)
        t1t2 = thresh / thresh2
        if t1t2 > 0.0 and not weighted:
            darea = np.float64(area2) - dnpix
            lg = math.log(t1t2 if t1t2 < 1.0 else 0.99)
            val = (darea if darea < 0.0 else -1.0) / (2 * math.pi * lg * a[o] * b[o])
            abcor = np.float32(val if val < 1.0 else 1.0)
        emx2 /= flux2
        emy2 /= flux2
        emxy /= flux2
        esum *= 0.08333 / flux2
        if singu[o] and (emx2 * emy2 - emxy * emxy) < esum * esum:
            emx2 += esum
            emy2 += esum
        out_i[o, 0] = npx
        out_i[o, 1] = dnpix
        out_i[o, 2] = xpk
        out_i[o, 3] = ypk
        out_f[o, 0] = fdflux32
        out_f[o, 1] = np.float32(dflux)
        out_f[o, 2] = fdpeak
        out_f[o, 3] = dpeak
        out_f[o, 4] = dthresh
        out_f[o, 5] = _clean_level(tpix, minarea)
        out_f[o, 6] = abcor
        out_f[o, 7] = _back_at(mesh, bw, bh, int(mx[o] + 0.5), int(my[o] + 0.5))
        out_d[o, 0] = emx2
        out_d[o, 1] = emy2
        out_d[o, 2] = emxy


def analyse_detections(det, data, params, *, backsig, mesh, pixel_lists, centre=None,
                       gain=0.0, weighted=False):
    """SExtractor's analysis of each deblended object before CLEAN.

    Parameters
    ----------
    det : `~galseg.extract.detect.Detection`
    data : ndarray of float32
        Background-subtracted (interpolated) detection image.
    params : Params
        Uses ``DETECT_MINAREA``.
    backsig : float
        Global background sigma (position errors).
    mesh : `~galseg.extract.background.MeshStatistics`
        Mesh statistics of the image (the ``BACKGROUND`` value: SExtractor
        interpolates the mesh grid linearly, whatever ``BACK_TYPE``).
    pixel_lists : (offsets, index, chain_index)
        Each object's flat pixel indices in SExtractor's pixel-list order,
        and their places in ``det.chain_pix``
        (`~galseg.extract.detect.sextractor_pixel_lists`).
    centre : ndarray, shape (n, 2), optional
        Core barycentres of deblended objects (NaN: sep's position).
    gain : float
        Detector gain (0: none).
    weighted : bool
        Whether detection uses a weight map (SExtractor then takes
        ``abcor = 1``).

    Returns
    -------
    structured ndarray
        One row per raw object, fields `ANALYSIS_FIELDS`.
    """
    objs = det.objects
    n = len(objs)
    width = det.segmap.shape[1]
    offsets, index, chain = pixel_lists
    ro = _parallel.readonly
    filt, thr = ro(det.chain_filtered), ro(det.chain_thresh)
    merged = (objs["flag"] & 1).astype(np.bool_)  # sep.OBJ_MERGED: deblended
    cen = np.full((n, 2), np.nan) if centre is None else np.asarray(centre, np.float64)
    cenx = np.where(np.isfinite(cen[:, 0]), cen[:, 0], objs["x"]).astype(np.float64)
    ceny = np.where(np.isfinite(cen[:, 1]), cen[:, 1], objs["y"]).astype(np.float64)
    mom = np.zeros((n, 11), np.float64)
    box = np.zeros((n, 5), np.int64)
    pk = np.zeros((n, 2), np.int64)
    _moments(offsets, index, chain, width, filt, merged, cenx, ceny, mom, box, pk)
    backsig32 = np.float32(backsig)
    out_i = np.zeros((n, 4), np.int64)
    out_f = np.zeros((n, 8), np.float32)
    out_d = np.zeros((n, 3), np.float64)
    bw, bh = mesh.mesh_size
    _analyse(offsets, index, chain, width, ro(np.ascontiguousarray(data, dtype=np.float32)),
             filt, thr, np.ascontiguousarray(mom[:, 0]),
             np.ascontiguousarray(mom[:, 1]), mom[:, 5].astype(np.float32),
             mom[:, 6].astype(np.float32), box[:, 4].astype(np.bool_),
             max(int(params["DETECT_MINAREA"]), 1), float(backsig32 * backsig32), float(gain),
             bool(weighted), mesh.back, bw, bh, out_i, out_f, out_d)
    props = np.zeros(n, dtype=list(ANALYSIS_FIELDS))
    for j, f in enumerate(("x", "y", "x2", "y2", "xy", "a", "b", "theta", "cxx", "cyy", "cxy")):
        props[f] = mom[:, j]
    for j, f in enumerate(("xmin", "xmax", "ymin", "ymax", "singu")):
        props[f] = box[:, j]
    props["xcpeak"], props["ycpeak"] = pk.T
    props["fdnpix"], props["dnpix"], props["xpeak"], props["ypeak"] = out_i.T
    (props["fdflux"], props["dflux"], props["fdpeak"], props["dpeak"], props["dthresh"],
     props["mthresh"], props["abcor"], props["bkg"]) = out_f.T
    props["poserr_mx2"], props["poserr_my2"], props["poserr_mxy"] = out_d.T
    return props


# --------------------------------------------------------------------------- CLEAN
#: Objects farther apart than CLEAN_ZONE * (a1 + a2) are never compared (clean.h).
CLEAN_ZONE = 10.0
_MARGIN_SCALE = 2.0
_MARGIN_OFFSET = 4.0


@numba.njit(cache=True)
def _neighbour_pairs(mx, my, a, cell):
    n = mx.size
    if n == 0:
        return np.zeros(1, np.int64), np.zeros(0, np.int64)
    xmin = mx.min()
    ymin = my.min()
    nx = int((mx.max() - xmin) / cell) + 1
    ny = int((my.max() - ymin) / cell) + 1
    cx = np.empty(n, np.int64)
    cy = np.empty(n, np.int64)
    counts = np.zeros(nx * ny + 1, np.int64)
    for i in range(n):
        cx[i] = int((mx[i] - xmin) / cell)
        cy[i] = int((my[i] - ymin) / cell)
        counts[cy[i] * nx + cx[i] + 1] += 1
    for k in range(1, nx * ny + 1):
        counts[k] += counts[k - 1]
    fill = counts[:-1].copy()
    members = np.empty(n, np.int64)
    for i in range(n):
        c = cy[i] * nx + cx[i]
        members[fill[c]] = i
        fill[c] += 1
    pi = []
    pj = []
    cz2 = CLEAN_ZONE * CLEAN_ZONE
    for i in range(n):
        # the object with the larger a finds the pair: d < CZ(a_i+a_j) <= 2 CZ a_i
        r = 2.0 * CLEAN_ZONE * a[i] * 1.001 + 1.0
        gx0 = max(int((mx[i] - r - xmin) / cell), 0)
        gx1 = min(int((mx[i] + r - xmin) / cell), nx - 1)
        gy0 = max(int((my[i] - r - ymin) / cell), 0)
        gy1 = min(int((my[i] + r - ymin) / cell), ny - 1)
        for gy in range(gy0, gy1 + 1):
            for gx in range(gx0, gx1 + 1):
                c = gy * nx + gx
                for q in range(counts[c], counts[c + 1]):
                    j = members[q]
                    if j == i:
                        continue
                    if a[j] > a[i] or (a[j] == a[i] and j < i):
                        continue
                    dx = mx[i] - mx[j]
                    dy = my[i] - my[j]
                    rl = np.float64(a[i]) + np.float64(a[j])
                    if dx * dx + dy * dy < rl * rl * cz2 * 1.0001 + 1e-3:
                        pi.append(i)
                        pj.append(j)
    m = len(pi)
    deg = np.zeros(n + 1, np.int64)
    for k in range(m):
        deg[pi[k] + 1] += 1
        deg[pj[k] + 1] += 1
    for k in range(1, n + 1):
        deg[k] += deg[k - 1]
    fill2 = deg[:-1].copy()
    nbr = np.empty(2 * m, np.int64)
    for k in range(m):
        nbr[fill2[pi[k]]] = pj[k]
        fill2[pi[k]] += 1
        nbr[fill2[pj[k]]] = pi[k]
        fill2[pj[k]] += 1
    return deg, nbr


def neighbour_pairs(mx, my, a):
    """Pairs of objects that CLEAN may compare, as a CSR adjacency.

    Every pair closer than ``CLEAN_ZONE * (a_i + a_j)`` (plus a tiny margin)
    is included.

    Returns
    -------
    offsets : ndarray of int64, shape (n + 1,)
    neighbours : ndarray of int64
        ``neighbours[offsets[i]:offsets[i + 1]]`` are the candidates of ``i``.
    """
    mx = np.ascontiguousarray(mx, dtype=np.float64)
    my = np.ascontiguousarray(my, dtype=np.float64)
    a = np.ascontiguousarray(a, dtype=np.float64)
    cell = float(max(16.0, 4.0 * CLEAN_ZONE * np.median(a))) if a.size else 16.0
    return _neighbour_pairs(mx, my, a, cell)


@numba.njit(cache=True)
def _margins(cxx, cyy, cxy, ymin, ymax, my, cleanmargin):
    hh1 = np.float32(cyy - cxy * cxy / (4.0 * cxx))
    hh1 = np.float32(1.0 / math.sqrt(3 * hh1)) if hh1 > 0.0 else np.float32(0.0)
    hh2 = np.float32(ymax - ymin + 1.0)
    margin = int((hh1 if hh1 > hh2 else hh2) * _MARGIN_SCALE + _MARGIN_OFFSET + 0.49999)
    ycmax = ymax + margin
    y = int(my + 0.49999) + cleanmargin
    if y > ycmax:
        ycmax = y
    ycmin = ymin - margin
    y = int(my + 0.49999) - cleanmargin
    if y < ycmin:
        ycmin = y
    return ycmin, ycmax


@numba.njit(cache=True)
def _simulate(order, yc, mx, my, a, b, cxx, cyy, cxy, abcor, fdflux0, fdnpix0, dthresh,
              mthresh, ymin0, ymax0, nb_off, nb, height, strip_h, strip_m, objstack,
              do_clean, beta, cleanmargin):
    n = mx.size
    fdflux = fdflux0.copy()
    fdnpix = fdnpix0.copy()
    ymin = ymin0.copy()
    ymax = ymax0.copy()
    absorber = np.full(n, -1, np.int64)
    inlist = np.zeros(n, np.bool_)
    pos = np.full(n, -1, np.int64)
    ycmin = np.zeros(n, np.int64)
    ycmax = np.zeros(n, np.int64)
    lst = np.empty(n, np.int64)
    nlist = 0
    out = np.empty(n, np.int64)
    nout = 0
    victims = np.empty(n, np.int64)
    vpos = np.empty(n, np.int64)

    # image-buffer bookkeeping (readimage.c / scan.c)
    buf_ymin = 0
    buf_ymax = strip_h
    sclim = strip_h - strip_m if height > strip_h else 0
    nxt = 0
    for yl in range(height + 1):
        if height > strip_h and 0 < yl < height and yl % strip_h == sclim:
            buf_ymin += 1
            buf_ymax += 1
            if buf_ymax < height:
                sclim = (sclim + 1) % strip_h
        while nxt < n and yc[order[nxt]] == yl:
            i = order[nxt]
            nxt += 1
            # clean list full: the object that ends highest leaves
            if nlist >= objstack:
                vi = 0
                best = 2000000000
                for q in range(nlist):
                    if ycmax[lst[q]] < best:
                        best = ycmax[lst[q]]
                        vi = q
                out[nout] = lst[vi]
                nout += 1
                inlist[lst[vi]] = False
                nlist -= 1
                if vi != nlist:
                    lst[vi] = lst[nlist]
                    pos[lst[vi]] = vi
            keep = True
            if do_clean:
                unitareain = math.pi * a[i] * b[i]
                ampin = fdflux[i] / (2 * unitareain * abcor[i])
                alphain = (math.pow(ampin / dthresh[i], 1.0 / beta) - 1) * unitareain / fdnpix[i]
                eater = -1
                eater_pos = n + 1
                nv = 0
                for q in range(nb_off[i], nb_off[i + 1]):
                    j = nb[q]
                    if not inlist[j]:
                        continue
                    dx = np.float32(mx[i] - mx[j])
                    dy = np.float32(my[i] - my[j])
                    rlim = np.float32(a[i] + a[j])
                    rlim = rlim * rlim
                    if not (np.float64(dx * dx + dy * dy)
                            < np.float64(rlim) * CLEAN_ZONE * CLEAN_ZONE):
                        continue
                    if fdflux[j] < fdflux[i]:
                        val = 1 + alphain * np.float64(cxx[i] * dx * dx + cyy[i] * dy * dy
                                                       + cxy[i] * dx * dy)
                        if val > 1.0:
                            amp_at = np.float32(ampin * math.pow(val, -beta)) if val < 1e10 \
                                else np.float32(0.0)
                            if amp_at > mthresh[j]:
                                victims[nv] = j
                                vpos[nv] = pos[j]
                                nv += 1
                    else:
                        unitarea = math.pi * a[j] * b[j]
                        amp = fdflux[j] / (2 * unitarea * abcor[j])
                        alpha = (math.pow(amp / dthresh[j], 1.0 / beta) - 1) * unitarea / fdnpix[j]
                        val = 1 + alpha * np.float64(cxx[j] * dx * dx + cyy[j] * dy * dy
                                                     + cxy[j] * dx * dy)
                        if val > 1.0:
                            amp_at = np.float32(amp * math.pow(val, -beta)) if val < 1e10 \
                                else np.float32(0.0)
                            if amp_at > mthresh[i] and pos[j] < eater_pos:
                                eater = j
                                eater_pos = pos[j]
                if eater >= 0:
                    absorber[i] = eater
                    fdflux[eater] += fdflux[i]
                    fdnpix[eater] += fdnpix[i]
                    ymin[eater] = min(ymin[eater], ymin[i])
                    ymax[eater] = max(ymax[eater], ymax[i])
                    keep = False
                elif nv:
                    # the newcomer eats its menu, highest list position first
                    srt = argsort_small(vpos[:nv])
                    for t in range(nv - 1, -1, -1):
                        j = victims[srt[t]]
                        absorber[j] = i
                        fdflux[i] += fdflux[j]
                        fdnpix[i] += fdnpix[j]
                        ymin[i] = min(ymin[i], ymin[j])
                        ymax[i] = max(ymax[i], ymax[j])
                        k = pos[j]
                        inlist[j] = False
                        pos[j] = -1
                        nlist -= 1
                        if k != nlist:
                            lst[k] = lst[nlist]
                            pos[lst[k]] = k
            if keep:
                ycmin[i], ycmax[i] = _margins(cxx[i], cyy[i], cxy[i], ymin[i], ymax[i],
                                              my[i], cleanmargin)
                lst[nlist] = i
                pos[i] = nlist
                inlist[i] = True
                nlist += 1
        # end of line: flush what the buffer has left behind
        if (yl + 1) % strip_h == sclim:
            q = nlist
            while q > 0:
                q -= 1
                o = lst[q]
                if ycmin[o] <= buf_ymin:
                    out[nout] = o
                    nout += 1
                    inlist[o] = False
                    nlist -= 1
                    if q != nlist:
                        lst[q] = lst[nlist]
                        pos[lst[q]] = q
    # end of image: first entry, then the last, repeatedly
    while nlist > 0:
        o = lst[0]
        out[nout] = o
        nout += 1
        inlist[o] = False
        nlist -= 1
        if nlist:
            lst[0] = lst[nlist]
            pos[lst[0]] = 0
    return absorber, out[:nout]


def strip_geometry(params, height, kernel_height=None):
    """SExtractor's image-buffer height and margin (``field.c``).

    Returns
    -------
    strip_height, strip_margin : int
    """
    margin = 0
    if params["BACKPHOTO_TYPE"].upper() == "LOCAL":
        margin = int(params["BACKPHOTO_THICK"]) + int(params["MEMORY_BUFSIZE"]) // 4
    strip_h = int(params["MEMORY_BUFSIZE"]) + margin
    strip_h = min(strip_h, height)
    strip_m = 1 + margin
    if kernel_height:
        strip_h = max(strip_h, kernel_height)
        strip_m = max(strip_m, (kernel_height - 1) // 2 + 1)
    return max(strip_h, 1), strip_m


def clean_margin(params, naper=None):
    """SExtractor's ``cleanmargin`` (``prefs.c``).

    SExtractor keeps an object in its clean list until the image buffer has
    moved past its apertures: with aperture photometry in the catalogue the
    margin is ``int((D + 1) / 2) + 1`` for the largest of the measured
    ``PHOT_APERTURES`` diameters ``D``.  It changes the catalogue order.
    galseg's catalogue measures every aperture (as its ``sextractor`` backend
    asks SExtractor to), so ``naper`` defaults to all of them; a SExtractor
    run whose ``.param`` asks for ``FLUX_APER(1)`` only corresponds to
    ``naper=1``.
    """
    diam = params["PHOT_APERTURES"]
    if naper is not None:
        diam = diam[:int(naper)]
    margin = 0
    for d in diam:
        margin = max(margin, int((float(d) + 1) / 2) + 1)
    return margin


def clean_and_order(props, objects, completion_line, params, height, kernel_height=None,
                    cleanmargin=None):
    """Replay SExtractor's CLEAN and output bookkeeping.

    Parameters
    ----------
    props : structured ndarray
        `galseg.extract.detect.analyse_detections` output (``fdflux``,
        ``fdnpix``, ``abcor``, ``dthresh``, ``mthresh``).
    objects : structured ndarray
        sep's raw objects (``x``, ``y``, ``a``, ``b``, ``cxx``, ``cyy``,
        ``cxy``, ``ymin``, ``ymax``), in SExtractor's processing order.
    completion_line : ndarray of int
        The scan line at which each object is completed (its parent
        detection's last line + 1).
    params : Params
        Uses ``CLEAN``, ``CLEAN_PARAM``, ``MEMORY_OBJSTACK``,
        ``MEMORY_BUFSIZE``, ``BACKPHOTO_TYPE``, ``BACKPHOTO_THICK``.
    height : int
        Image height.
    kernel_height : int, optional
        Height of the detection filter (None when not filtering).
    cleanmargin : int, optional
        SExtractor's ``cleanmargin`` (default: `clean_margin` of ``params``).

    Returns
    -------
    absorber : ndarray of int64
        For each raw object, the raw object that absorbed it (-1: kept).
    order : ndarray of int64
        The kept raw objects in catalogue (``NUMBER``) order.
    """
    n = len(objects)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    yc = np.ascontiguousarray(completion_line, dtype=np.int64)
    order = np.argsort(yc, kind="stable")
    mx = np.ascontiguousarray(objects["x"], dtype=np.float64)
    my = np.ascontiguousarray(objects["y"], dtype=np.float64)
    a = np.ascontiguousarray(objects["a"], dtype=np.float32)
    do_clean = bool(params["CLEAN"])
    if do_clean:
        nb_off, nb = neighbour_pairs(mx, my, a)
    else:
        nb_off, nb = np.zeros(n + 1, np.int64), np.zeros(0, np.int64)
    strip_h, strip_m = strip_geometry(params, height, kernel_height)

    def f32(v):
        return np.ascontiguousarray(v, dtype=np.float32)

    def i64(v):
        return np.ascontiguousarray(v, dtype=np.int64)

    return _simulate(
        i64(order), yc, mx, my, a, f32(objects["b"]), f32(objects["cxx"]),
        f32(objects["cyy"]), f32(objects["cxy"]), f32(props["abcor"]),
        f32(props["fdflux"]), i64(props["fdnpix"]), f32(props["dthresh"]),
        f32(props["mthresh"]), i64(objects["ymin"]), i64(objects["ymax"]), nb_off, nb,
        int(height), strip_h, strip_m, max(int(params["MEMORY_OBJSTACK"]), 1), do_clean,
        float(params["CLEAN_PARAM"]),
        clean_margin(params) if cleanmargin is None else int(cleanmargin))
