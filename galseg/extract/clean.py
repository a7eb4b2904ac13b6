"""SExtractor's CLEAN and its catalogue order, with merging (``clean.c``).

SExtractor cleans *while it scans*: each new (deblended) object is compared
with the objects still held in its "clean list" (those not yet written out).
Modelling each object as a Moffat profile (``CLEAN_PARAM`` is the Moffat
beta) of amplitude ``fdflux / (2 pi a b abcor)``, a fainter object is
"spurious" when the brighter one's profile, at its position, exceeds its own
``mthresh`` (its ``DETECT_MINAREA``-th highest pixel above threshold).  A
spurious object is not dropped: ``mergeobject`` adds its pixels, fluxes,
areas, peaks, bounding box and flags to the object that absorbs it; the
absorber's position and shape are *not* recomputed.  A newcomer is absorbed
by the first brighter listed object that eats it; otherwise it absorbs every
fainter listed object it eats.

Objects leave the clean list, and get their catalogue ``NUMBER``, when the
image buffer moves past them (``ycmin <= buffer ymin``), when the list is
full (``MEMORY_OBJSTACK``: the one that ends highest goes), and at the end of
the image (first the list's first entry, then from its end, as
``subcleanobj`` reshuffles it).  :func:`clean_and_order` replays this
bookkeeping exactly, so that galseg's ``NUMBER`` is SExtractor's; the
candidate pairs come from a spatial grid, so the cost is linear in the
number of objects for realistic fields.
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["CLEAN_ZONE", "neighbour_pairs", "clean_and_order", "strip_geometry"]

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
                    srt = np.argsort(vpos[:nv])
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


def clean_and_order(props, objects, completion_line, params, height, kernel_height=None):
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
    f32 = lambda v: np.ascontiguousarray(v, dtype=np.float32)  # noqa: E731
    i64 = lambda v: np.ascontiguousarray(v, dtype=np.int64)  # noqa: E731
    return _simulate(
        i64(order), yc, mx, my, a, f32(objects["b"]), f32(objects["cxx"]),
        f32(objects["cyy"]), f32(objects["cxy"]), f32(props["abcor"]),
        f32(props["fdflux"]), i64(props["fdnpix"]), f32(props["dthresh"]),
        f32(props["mthresh"]), i64(objects["ymin"]), i64(objects["ymax"]), nb_off, nb,
        int(height), strip_h, strip_m, max(int(params["MEMORY_OBJSTACK"]), 1), do_clean,
        float(params["CLEAN_PARAM"]), 0)
