"""Compiled (numba) per-object measurement kernels, faithful to SExtractor 2.25.

Each function reproduces one SExtractor routine, including its arithmetic
precision where it decides which pixels or sub-pixels are counted (SExtractor
keeps aperture geometry in C ``float``; it is emulated here with float32):

================  ==========================================================
kernel            SExtractor 2.25 source
================  ==========================================================
`_aper`           ``photom.c: computeaperflux`` (5x5 sub-pixel annulus)
`_auto`           ``photom.c: computeautoflux`` (Kron radius, then flux)
`_growth`         ``growth.c: makeavergrowth`` (FLUX_RADIUS, half-light radius)
`_winpos`         ``winpos.c: compute_winpos`` (XWIN, YWIN, SNR_WIN)
`_iso`            ``analyse.c: examineiso`` (ISO flux, areas, peak, FWHM)
`_localback`      ``back.c: localback, backstat`` (BACKPHOTO LOCAL)
================  ==========================================================

Pixel conventions (shared by all kernels):

* the optional pixel-flag map ``pf`` (uint8, bits `PF_BLANK`, `PF_MASK`,
  `PF_MERGED`, `PF_STUCK`; used when ``has_pf``) says which pixels are
  detected, masked, merged into their object by CLEAN, or blanked for good;
  without it every labelled pixel is detected and none is masked or merged;
* a pixel is *blanked* for the object with segmentation label ``label`` when
  MASK_TYPE is not NONE and the pixel belongs to another detection (SExtractor
  replaces those pixels by -BIG in its image buffer while it measures), or
  has `PF_STUCK` (a pixel CLEAN merged into an object that SExtractor's scan
  blanked again for good, for its own object too; see
  `galseg.extract.engine.stuck_rows`);
* a pixel is *bad* when its rms is not finite or it is masked (SExtractor's
  "weight above WEIGHT_THRESH");
* blanked or bad pixels in an aperture are, for MASK_TYPE CORRECT, replaced by
  the pixel symmetric through the object's centre when that one is usable
  (a bad mirror pixel counts 0); otherwise they count 0.

All positions are 0-based pixel centres.  No kernel modifies its inputs.
"""

from __future__ import annotations

import math
import os

import numpy as np
from numba import njit, prange

from . import _parallel
from .background import _backguess

F32 = np.float32
_U = _parallel.UINDEX  # never-negative indices: see UINDEX

#: SExtractor constants (define.h, photom.h, growth.h, winpos.h, back.h).
KRON_NSIG = 6.0          # 3 * MARGIN_SCALE
CROWD_THRESHOLD = 0.1
APER_OVERSAMP = 5
GROWTH_NSTEP = 64
GROWTH_OVERSAMP = 5
GROWTH_NSIG = 6.0
GROWTH_MINHLRAD = 0.5
WINPOS_NITERMAX = 16
WINPOS_NSIG = 4.0
WINPOS_OVERSAMP = 11
WINPOS_STEPMIN = 0.0001
WINPOS_FAC = 2.0
NISO = 8
BIG = 1e30
QUANTIF_NSIGMA = 5.0
QUANTIF_NMAXLEVELS = 4096
QUANTIF_AMIN = 4.0

MODE_NONE = 0
MODE_BLANK = 1
MODE_CORRECT = 2

#: Bits of the pixel-flag map (``pf``): blanked while measuring other objects
#: (detected pixel), user-masked, merged into its object by CLEAN, blanked
#: while measuring any object (its own included).
PF_BLANK = 1
PF_MASK = 2
PF_MERGED = 4
PF_STUCK = 8

FLAG_CROWDED = 1
FLAG_SATUR = 4
FLAG_APERT_PB = 16


@njit(cache=True, inline="always", error_model="numpy")
def _blanked(seg, pf, has_pf, x, y, label, mode):
    if mode == MODE_NONE:
        return False
    if has_pf:
        f = pf[_U(y), _U(x)]
        return (f & PF_STUCK) != 0 or ((f & PF_BLANK) != 0 and seg[_U(y), _U(x)] != label)
    s = seg[_U(y), _U(x)]
    return s != 0 and s != label


@njit(cache=True, inline="always", error_model="numpy")
def _bad(rms, pf, has_pf, x, y):
    r = rms[_U(y), _U(x)]
    if not (r < np.inf):
        return True
    if has_pf and (pf[_U(y), _U(x)] & PF_MASK) != 0:
        return True
    return False


@njit(cache=True, inline="always", error_model="numpy")
def _usable(rms, seg, pf, has_pf, x, y, label, mode):
    """Whether pixel ``(x, y)`` is summed as it is (neither blanked nor bad).

    The negation of `_blanked` or `_bad`, ordered so that the common case
    (finite noise, no flag) costs two reads.
    """
    if not (rms[_U(y), _U(x)] < np.inf):
        return False
    if has_pf:
        f = pf[_U(y), _U(x)]
        if f == 0:
            return True
        if (f & PF_MASK) != 0:
            return False
        return (mode == MODE_NONE or (f & (PF_BLANK | PF_STUCK)) == 0
                or ((f & PF_STUCK) == 0 and seg[_U(y), _U(x)] == label))
    if mode == MODE_NONE:
        return True
    s = seg[_U(y), _U(x)]
    return s == 0 or s == label


@njit(cache=True, error_model="numpy")
def _row_usable(rms, seg, pf, has_pf, y, x0, x1, label, mode):
    """Whether every pixel ``x0..x1-1`` of row ``y`` is `_usable` (most rows
    are, and their pixels then need no test).

    A branch-free pass that vectorises (unsigned indices, see `_U`).
    """
    nbad = 0
    if has_pf:
        check_seg = mode != MODE_NONE
        for x in range(x0, x1):
            f = pf[_U(y), _U(x)]
            nbad += (((f & PF_MASK) != 0)
                     | (check_seg & (((f & PF_STUCK) != 0)
                                     | (((f & PF_BLANK) != 0) & (seg[_U(y), _U(x)] != label))))
                     | (not (rms[_U(y), _U(x)] < np.inf)))
    elif mode != MODE_NONE:
        for x in range(x0, x1):
            s_ = seg[_U(y), _U(x)]
            nbad += ((s_ != 0) & (s_ != label)) | (not (rms[_U(y), _U(x)] < np.inf))
    else:
        for x in range(x0, x1):
            nbad += not (rms[_U(y), _U(x)] < np.inf)
    return nbad == 0


@njit(cache=True, error_model="numpy")
def _fetch_slow(data, rms, seg, pf, has_pf, x, y, label, mode,
                weighted, var0, m2x, m2y):
    """Value and variance SExtractor sums for pixel ``(x, y)``, and whether it was replaced.

    ``m2x``/``m2y`` are ``2*mx + 0.49999``: the mirror pixel is ``int(m2x - x)``
    (C truncation), as in SExtractor.  ``var0`` is the variance of a replaced
    pixel without weight map (SExtractor's global background variance).
    """
    h, w = data.shape
    pix = np.float64(data[_U(y), _U(x)])
    r = rms[_U(y), _U(x)]
    var = np.float64(r * r)
    if not (_blanked(seg, pf, has_pf, x, y, label, mode)
            or _bad(rms, pf, has_pf, x, y)):
        return pix, var, False
    if not weighted:
        var = var0
    if mode == MODE_CORRECT:
        x2 = int(m2x - x)
        y2 = int(m2y - y)
        if (x2 >= 0 and x2 < w and y2 >= 0 and y2 < h
                and not _blanked(seg, pf, has_pf, x2, y2, label, mode)):
            pix = np.float64(data[_U(y2), _U(x2)])
            if weighted:
                r2 = rms[_U(y2), _U(x2)]
                var = np.float64(r2 * r2)
            if _bad(rms, pf, has_pf, x2, y2):
                pix = 0.0
                if weighted:
                    var = 0.0
            return pix, var, True
    pix = 0.0
    if weighted:
        var = 0.0
    return pix, var, True


@njit(cache=True, error_model="numpy")
def _fill_row(data, rms, seg, pf, has_pf, y, xa, xb, label, mode,
              weighted, var0, m2x, m2y, pixb, varb, cand):
    """Fetch pixels ``xa..xb`` (inclusive) of row ``y`` into ``pixb``/``varb``.

    Equivalent to `_fetch_slow` for every pixel: branch-free (vectorised)
    passes copy the values and list the candidates for replacement (any flag,
    or bad noise) in ``cand``; then only those are settled exactly.
    """
    n = xb - xa + 1
    for k in range(n):
        r = rms[_U(y), _U(xa + k)]
        pixb[_U(k)] = data[_U(y), _U(xa + k)]
        varb[_U(k)] = r * r
    # candidates: counted by a vectorised reduction, listed only if any
    nc = 0
    if has_pf:
        for k in range(n):
            nc += (pf[_U(y), _U(xa + k)] != 0) | (not (rms[_U(y), _U(xa + k)] < np.inf))
        if nc == 0:
            return
        nc = 0
        for k in range(n):
            if pf[_U(y), _U(xa + k)] != 0 or not (rms[_U(y), _U(xa + k)] < np.inf):
                cand[_U(nc)] = k
                nc += 1
    else:
        check_seg = mode != MODE_NONE
        for k in range(n):
            nc += (check_seg & (seg[_U(y), _U(xa + k)] != 0)) | (not (rms[_U(y), _U(xa + k)] < np.inf))
        if nc == 0:
            return
        nc = 0
        for k in range(n):
            if (check_seg and seg[_U(y), _U(xa + k)] != 0) or not (rms[_U(y), _U(xa + k)] < np.inf):
                cand[_U(nc)] = k
                nc += 1
    h, w = data.shape
    y2 = int(m2y - y)
    yok = y2 >= 0 and y2 < h
    for j in range(nc):
        k = cand[j]
        x = xa + k
        if _usable(rms, seg, pf, has_pf, x, y, label, mode):
            continue
        # replaced: as _fetch_slow
        if not weighted:
            varb[_U(k)] = var0
        if mode == MODE_CORRECT:
            x2 = int(m2x - x)
            if yok and x2 >= 0 and x2 < w and not _blanked(seg, pf, has_pf, x2, y2, label,
                                                          mode):
                if _bad(rms, pf, has_pf, x2, y2):
                    pixb[_U(k)] = 0.0
                    if weighted:
                        varb[_U(k)] = 0.0
                else:
                    pixb[_U(k)] = data[_U(y2), _U(x2)]
                    if weighted:
                        r2 = rms[_U(y2), _U(x2)]
                        varb[_U(k)] = r2 * r2
                continue
        pixb[_U(k)] = 0.0
        if weighted:
            varb[_U(k)] = 0.0


@njit(inline="always", error_model="numpy")
def _inside(x, mx, dy2, lim2, strict):
    """SExtractor's float32 test ``(x-mx)**2 + dy**2 < lim2`` (``<=`` if not strict)."""
    dx = F32(x) - mx
    r2 = dx * dx + dy2
    return r2 < lim2 if strict else r2 <= lim2


@njit(cache=True, error_model="numpy")
def _span(mx, dy2, lim2, strict, lo, hi):
    """Range ``(a, b)`` of the x in ``lo..hi`` passing `_inside` (empty: ``a > b``).

    The float32 distance is monotonic on either side of ``mx``, so the set is
    contiguous; an estimate from ``sqrt`` is corrected with the exact test.
    """
    if lo > hi:
        return 1, 0
    xc = int(math.floor(np.float64(mx) + 0.5))
    if xc < lo:
        xc = lo
    if xc > hi:
        xc = hi
    if not _inside(xc, mx, dy2, lim2, strict):
        return 1, 0
    rem = np.float64(lim2) - np.float64(dy2)
    half = math.sqrt(rem) if rem > 0.0 else 0.0
    a = int(math.ceil(np.float64(mx) - half))
    if a < lo:
        a = lo
    if a > xc:
        a = xc
    while a > lo and _inside(a - 1, mx, dy2, lim2, strict):
        a -= 1
    while not _inside(a, mx, dy2, lim2, strict):
        a += 1
    b = int(math.floor(np.float64(mx) + half))
    if b > hi:
        b = hi
    if b < xc:
        b = xc
    while b < hi and _inside(b + 1, mx, dy2, lim2, strict):
        b += 1
    while not _inside(b, mx, dy2, lim2, strict):
        b -= 1
    return a, b


@njit(cache=True, inline="always", error_model="numpy")
def _clip_box(xmin, xmax, ymin, ymax, w, h):
    """A measurement box (``xmax``/``ymax`` exclusive) clipped to the image,
    and `FLAG_APERT_PB` if it had to be (SExtractor: aperture data incomplete)."""
    flag = 0
    if xmin < 0:
        xmin = 0
        flag = FLAG_APERT_PB
    if xmax > w:
        xmax = w
        flag = FLAG_APERT_PB
    if ymin < 0:
        ymin = 0
        flag = FLAG_APERT_PB
    if ymax > h:
        ymax = h
        flag = FLAG_APERT_PB
    return xmin, xmax, ymin, ymax, flag


@njit(cache=True, inline="always", error_model="numpy")
def _subpixels_inside(dx, half, fary, neary, rin, rout, offset, scale, dy2s, xsq, lim2,
                      nsub, nlanes):
    """How many of a pixel's ``nsub x nsub`` sub-pixels lie inside ``r**2 < lim2``
    (see `_area_table`; index its partial sums with the count).

    ``dx``: the pixel's float32 x offset from the centre; ``half``: the half
    extent of the sub-pixel grid; ``fary``/``neary``: the farthest/nearest
    squared y extents of the row, ``rin``/``rout``: ``lim2`` shrunk/grown by
    the rounding margin, so that pixels clearly inside (``nsub**2``) or
    outside (0) skip the sweep; ``dy2s``: the row's squared sub-row offsets;
    ``xsq``: scratch of ``nlanes >= nsub`` entries, the lanes past ``nsub``
    holding inf (a fixed-width, vectorised count).
    """
    adx = abs(np.float64(dx))
    if (adx + half) * (adx + half) + fary < rin:
        return nsub * nsub
    nx = adx - half if adx > half else 0.0
    if nx * nx + neary > rout:
        return 0
    dx1 = dx + offset
    for kk in range(nsub):
        xsq[kk] = dx1 * dx1
        dx1 += scale
    nin = 0
    for sy in range(nsub):
        c = 0
        for kk in range(nlanes):
            c += xsq[kk] + dy2s[sy] < lim2
        nin += c
    return nin


@njit(cache=True, error_model="numpy")
def _area_table(nsub, scale2):
    """Float32 partial sums ``acc[n]`` of ``n`` times ``scale2`` (n = 0..nsub**2).

    SExtractor sweeps an ``nsub x nsub`` sub-pixel grid and adds ``scale2``
    (float32) for every sub-pixel inside the aperture; the result depends only
    on their number ``n``, so it is ``acc[n]``.  The sweeps (in `_aper` and
    `_winpos`) count ``n`` with SExtractor's float32 sub-pixel coordinates and
    test, skipping pixels whose whole grid is clearly inside (``acc[nsub**2]``)
    or outside (0).
    """
    acc = np.empty(nsub * nsub + 1, dtype=np.float32)
    a = F32(0.0)
    acc[0] = a
    for i in range(nsub * nsub):
        a += scale2
        acc[i + 1] = a
    return acc


@njit(cache=True, error_model="numpy")
def _aper(data, rms, seg, pf, has_pf, label, mode, weighted,
          var0, gainflag, gain, backnoise2, mx64, my64, radii, dbkg, out_flux, out_var):
    """Circular apertures of radii ``radii`` (pixels); fills ``out_flux``/``out_var``.

    Returns the OBJ_APERT_PB flag when an aperture box leaves the image.
    Rows are fetched once for all apertures; each aperture's inner disc (where
    SExtractor counts whole pixels) is summed from row prefix sums and only its
    annulus is swept sub-pixel by sub-pixel.
    """
    h, w = data.shape
    naper = radii.shape[0]
    flag = 0
    mx = F32(mx64)
    my = F32(my64)
    m2x = 2.0 * np.float64(mx) + 0.49999
    m2y = 2.0 * np.float64(my) + 0.49999
    raper2 = np.empty(naper, dtype=np.float32)
    rintlim2 = np.empty(naper, dtype=np.float32)
    rextlim2 = np.empty(naper, dtype=np.float32)
    boxes = np.empty((naper, 4), dtype=np.int64)
    x0, x1, y0, y1 = w, 0, h, 0
    rext_max = F32(0.0)
    for j in range(naper):
        ra = F32(radii[j])
        raper2[j] = ra * ra
        rint = F32(np.float64(ra) - 0.75)
        rintlim2[j] = rint * rint if rint > 0.0 else F32(0.0)
        rextlim2[j] = F32((np.float64(ra) + 0.75) * (np.float64(ra) + 0.75))
        if rextlim2[j] > rext_max:
            rext_max = rextlim2[j]
        xmin = int(np.float64(mx - ra) + 0.499999)
        xmax = int(np.float64(mx + ra) + 1.499999)
        ymin = int(np.float64(my - ra) + 0.499999)
        ymax = int(np.float64(my + ra) + 1.499999)
        xmin, xmax, ymin, ymax, f = _clip_box(xmin, xmax, ymin, ymax, w, h)
        flag |= f
        # pixels outside an aperture's box are never visited (they would add
        # nothing but the per-pixel gain term)
        boxes[j, 0] = xmin
        boxes[j, 1] = xmax - 1
        boxes[j, 2] = ymin
        boxes[j, 3] = ymax - 1
        x0 = min(x0, xmin)
        x1 = max(x1, xmax)
        y0 = min(y0, ymin)
        y1 = max(y1, ymax)
    tv = np.zeros(naper)
    sigtv = np.zeros(naper)
    area = np.zeros(naper)
    scale = F32(1.0 / APER_OVERSAMP)
    scale2 = scale * scale
    offset = F32(0.5 * (np.float64(scale) - 1.0))
    acc = _area_table(APER_OVERSAMP, scale2)
    xsq = np.full(8, np.inf, dtype=np.float32)
    dy2s = np.empty(APER_OVERSAMP, dtype=np.float32)
    nb = max(x1 - x0, 1)
    pixb = np.empty(nb)
    varb = np.empty(nb)
    cand = np.empty(nb, dtype=np.int64)
    cp = np.zeros(nb + 1)
    cv = np.zeros(nb + 1)
    cg = np.zeros(nb + 1)
    usegain = gainflag and gain > 0.0
    for y in range(y0, y1):
        dy = F32(y) - my
        dy2 = dy * dy
        if not (dy2 < rext_max):
            continue
        ea, eb = _span(mx, dy2, rext_max, True, x0, x1 - 1)
        if ea > eb:
            continue
        _fill_row(data, rms, seg, pf, has_pf, y, ea, eb, label, mode,
                  weighted, var0, m2x, m2y, pixb, varb, cand)
        # sub-row offsets of this row, shared by all apertures' sub-pixel sweeps
        dys = dy + offset
        for sy in range(APER_OVERSAMP):
            dy2s[sy] = dys * dys
            dys += scale
        ady = abs(np.float64(dy))
        fary = (ady + 0.41) * (ady + 0.41)
        neary = (ady - 0.41) * (ady - 0.41) if ady > 0.41 else 0.0
        for k in range(eb - ea + 1):
            p = pixb[_U(k)]
            cp[_U(k + 1)] = cp[_U(k)] + p
            cv[_U(k + 1)] = cv[_U(k)] + varb[_U(k)]
            cg[_U(k + 1)] = cg[_U(k)] + (p / gain * varb[_U(k)] / backnoise2 if usegain and p > 0.0 else 0.0)
        for j in range(naper):
            if y < boxes[j, 2] or y > boxes[j, 3]:
                continue
            ja, jb = _span(mx, dy2, rextlim2[j], True, max(ea, boxes[j, 0]),
                           min(eb, boxes[j, 1]))
            if ja > jb:
                continue
            ia, ib = _span(mx, dy2, rintlim2[j], False, ja, jb)
            if ia <= ib:
                tv[j] += cp[ib + 1 - ea] - cp[ia - ea]
                sigtv[j] += cv[ib + 1 - ea] - cv[ia - ea] + cg[ib + 1 - ea] - cg[ia - ea]
                area[j] += ib - ia + 1
                la_, lb_, ra_, rb_ = ja, ia - 1, ib + 1, jb
            else:
                la_, lb_, ra_, rb_ = ja, jb, 1, 0
            rp2 = raper2[j]
            rin = np.float64(rp2) * (1.0 - 1e-5)
            rout = np.float64(rp2) * (1.0 + 1e-5) + 1e-6
            for side in range(2):
                sa = la_ if side == 0 else ra_
                sb = lb_ if side == 0 else rb_
                for x in range(sa, sb + 1):
                    dx = F32(x) - mx
                    la = np.float64(acc[_subpixels_inside(dx, 0.41, fary, neary, rin, rout,
                                                          offset, scale, dy2s, xsq, rp2,
                                                          APER_OVERSAMP, 8)])
                    k = x - ea
                    p = pixb[_U(k)]
                    area[j] += la
                    sigtv[j] += varb[_U(k)] * la
                    tv[j] += la * p
                    if usegain and p > 0.0:
                        sigtv[j] += p / gain * varb[_U(k)] / backnoise2
    for j in range(naper):
        t = tv[j] - area[j] * dbkg
        sv = sigtv[j]
        if (not gainflag) and gain > 0.0 and t > 0.0:
            sv += t / gain
        out_flux[j] = t
        out_var[j] = sv
    return flag


@njit(cache=True, inline="always", error_model="numpy")
def _ellipse_box(mx, my, cx2, cy2, cxy, klim, w, h):
    """Box (xmin, xmax, ymin, ymax, flag) of an ellipse, SExtractor's RINT limits."""
    flag = 0
    d = F32(np.float64(cx2) - np.float64(cxy * cxy) / (4.0 * np.float64(cy2)))
    dxlim = F32(klim / math.sqrt(np.float64(d))) if d > 0.0 else F32(0.0)
    d = F32(np.float64(cy2) - np.float64(cxy * cxy) / (4.0 * np.float64(cx2)))
    dylim = F32(klim / math.sqrt(np.float64(d))) if d > 0.0 else F32(0.0)
    xmin = int(math.floor(np.float64(mx - dxlim) + 0.5))
    xmax = int(math.floor(np.float64(mx + dxlim) + 0.5)) + 1
    ymin = int(math.floor(np.float64(my - dylim) + 0.5))
    ymax = int(math.floor(np.float64(my + dylim) + 0.5)) + 1
    xmin, xmax, ymin, ymax, f = _clip_box(xmin, xmax, ymin, ymax, w, h)
    flag |= f
    return xmin, xmax, ymin, ymax, flag


@njit(cache=True, error_model="numpy")
def _auto(data, rms, ddata, drms, seg, pf, has_pf, label, mode,
          weighted, var0, gainflag, gain, backnoise2, mx64, my64, a64, b64, cxx64,
          cyy64, cxy64, kron_fact, kron_min, autoaper0, autoaper1, dbkg):
    """MAG_AUTO: returns (flux, variance, kron_factor, flags).

    The Kron radius is measured in the detection image ``ddata`` (``drms`` for
    its bad pixels), the flux in ``data``, as SExtractor does in dual-image mode.
    """
    h, w = data.shape
    flag = 0
    mx = F32(mx64)
    my = F32(my64)
    m2x = 2.0 * np.float64(mx) + 0.49999
    m2y = 2.0 * np.float64(my) + 0.49999
    a = F32(a64)
    b = F32(b64)
    sqab = math.sqrt(np.float64(a * b))
    # --- first step: Kron radius within KRON_NSIG (or a circle of autoaper0)
    if KRON_NSIG * sqab > autoaper0 / 2.0:
        cx2 = F32(cxx64)
        cy2 = F32(cyy64)
        cxy = F32(cxy64)
        xmin, xmax, ymin, ymax, f = _ellipse_box(mx, my, cx2, cy2, cxy, KRON_NSIG, w, h)
        klim2 = F32(KRON_NSIG * KRON_NSIG)
    else:
        cx2 = F32(1.0)
        cy2 = F32(1.0)
        cxy = F32(0.0)
        rad = F32(autoaper0 / 2.0)
        xmin, xmax, ymin, ymax, f = _ellipse_box(mx, my, cx2, cy2, cxy, np.float64(rad), w, h)
        klim2 = rad * rad
    flag |= f
    r1 = 0.0
    v1 = 0.0
    area = 0
    areab = 0
    for y in range(ymin, ymax):
        dy = F32(y) - my
        clean = _row_usable(drms, seg, pf, has_pf, y, xmin, xmax, label, mode)
        for x in range(xmin, xmax):
            dx = F32(x) - mx
            r2 = cx2 * dx * dx + cy2 * dy * dy + cxy * dx * dy
            if r2 <= klim2:
                if not (clean or _usable(drms, seg, pf, has_pf, x, y, label, mode)):
                    areab += 1
                else:
                    area += 1
                    pix = np.float64(ddata[_U(y), _U(x)])
                    r1 += math.sqrt(np.float64(r2)) * pix
                    v1 += pix
    area += areab
    kronfactor = F32(0.0)
    if area == 0:
        return 0.0, 0.0, 0.0, flag
    if r1 > 0.0 and v1 > 0.0:
        kronfactor = F32(kron_fact * r1 / v1)
        if kronfactor < kron_min:
            kronfactor = F32(kron_min)
    else:
        kronfactor = F32(kron_min)
    if np.float64(F32(areab) / F32(area)) > CROWD_THRESHOLD:
        flag |= FLAG_CROWDED
    # --- second step: flux within kronfactor (or a circle of autoaper1)
    if np.float64(kronfactor) * sqab > autoaper1 / 2.0:
        cx2 = F32(cxx64)
        cy2 = F32(cyy64)
        cxy = F32(cxy64)
        xmin, xmax, ymin, ymax, f = _ellipse_box(mx, my, cx2, cy2, cxy,
                                                 np.float64(kronfactor), w, h)
        klim2 = kronfactor * kronfactor
    else:
        cx2 = F32(1.0)
        cy2 = F32(1.0)
        cxy = F32(0.0)
        rad = F32(autoaper1 / 2.0)
        xmin, xmax, ymin, ymax, f = _ellipse_box(mx, my, cx2, cy2, cxy, np.float64(rad), w, h)
        klim2 = rad * rad
        kronfactor = F32(0.0)
    flag |= f
    area = 0
    areab = 0
    tv = 0.0
    sigtv = 0.0
    for y in range(ymin, ymax):
        dy = F32(y) - my
        clean = _row_usable(rms, seg, pf, has_pf, y, xmin, xmax, label, mode)
        for x in range(xmin, xmax):
            dx = F32(x) - mx
            if cx2 * dx * dx + cy2 * dy * dy + cxy * dx * dy <= klim2:
                area += 1
                r_ = rms[_U(y), _U(x)]
                if clean or _usable(rms, seg, pf, has_pf, x, y, label, mode):
                    pix = np.float64(data[_U(y), _U(x)])
                    var = np.float64(r_ * r_)
                    replaced = False
                else:
                    pix, var, replaced = _fetch_slow(data, rms, seg, pf, has_pf, x, y,
                                                     label, mode, weighted, var0, m2x, m2y)
                if replaced:
                    areab += 1
                sigtv += var
                tv += pix
                if gainflag and pix > 0.0 and gain > 0.0:
                    sigtv += pix / gain * var / backnoise2
    if np.float64(F32(areab)) > CROWD_THRESHOLD * area:
        flag |= FLAG_CROWDED
    # C: int * float in single precision
    tv -= np.float64(F32(area) * F32(dbkg))
    if (not gainflag) and gain > 0.0 and tv > 0.0:
        sigtv += tv / gain
    if tv <= 0.0:
        kronfactor = F32(0.0)
    return tv, sigtv, np.float64(kronfactor), flag


@njit(cache=True, inline="always", error_model="numpy")
def _radius_search(growth, tv):
    """SExtractor's search of the cumulative curve for ``tv`` (growth.c).

    Returns ``(i, p)``: the bin count ``i`` of the C loop and the index ``p``
    its pointer stopped at (``p = i`` unless the loop ran to the end).
    """
    n = growth.shape[0] - 1
    i = 0
    p = -1
    while i < n:
        p += 1
        if not (growth[p] < tv):
            break
        i += 1
    return i, p


@njit(cache=True, inline="always", error_model="numpy")
def _radius_at(growth, step, tv):
    """Radius where the cumulative ``growth`` curve reaches ``tv`` (growth.c)."""
    i, p = _radius_search(growth, tv)
    if i > 0:
        dg = growth[p] - growth[p - 1]
        if dg != 0.0:
            return step * (i + (tv - growth[p - 1]) / dg)
        return step * i
    if growth[0] != 0.0:
        return step * (tv / growth[0])
    return 0.0


@njit(cache=True, error_model="numpy")
def _growth_pass(data, rms, seg, pf, has_pf, label, mode, weighted,
                 var0, mx, my, xmin, xmax, ymin, ymax, r2lo, r2hi, stepdens, step,
                 growth, hist):
    """Add the pixels with ``r2lo <= r**2 < r2hi`` to the (differential) growth curve.

    Per pixel exactly as SExtractor's makeavergrowth: 5x5 sub-pixels binned by
    radius near bin boundaries, whole pixels elsewhere.
    """
    prevbinmargin = 0.75
    nextbinmargin = step - 0.75
    scale = 1.0 / GROWTH_OVERSAMP
    scale2 = scale * scale
    offset = 0.5 * (scale - 1.0)
    m2x = 2.0 * mx + 0.49999
    m2y = 2.0 * my + 0.49999
    for y in range(ymin, ymax):
        dy0 = y - my
        clean = _row_usable(rms, seg, pf, has_pf, y, xmin, xmax, label, mode)
        for x in range(xmin, xmax):
            dx0 = x - mx
            r2 = dx0 * dx0 + dy0 * dy0
            if r2 < r2lo or not (r2 < r2hi):
                continue
            if clean or _usable(rms, seg, pf, has_pf, x, y, label, mode):
                pix = np.float64(data[_U(y), _U(x)])
            else:
                pix, _v, _r = _fetch_slow(data, rms, seg, pf, has_pf,
                                          x, y, label, mode, weighted, var0, m2x, m2y)
            r = math.sqrt(r2)
            d = np.fmod(r, step)
            if d < prevbinmargin or d > nextbinmargin:
                dx = dx0 + offset
                dy = dy0 + offset
                # count the sub-pixels per bin, then add each bin once
                jbase = int(max(r - 1.0, 0.0) * stepdens)
                for _sy in range(GROWTH_OVERSAMP):
                    dx1 = dx
                    dy2 = dy * dy
                    for _sx in range(GROWTH_OVERSAMP):
                        j = int(math.sqrt(dx1 * dx1 + dy2) * stepdens)
                        hist[j - jbase] += 1
                        dx1 += scale
                    dy += scale
                spix = scale2 * pix
                for k in range(hist.shape[0]):
                    c = hist[k]
                    if c:
                        j = jbase + k
                        if j < GROWTH_NSTEP:
                            growth[j] += c * spix
                        hist[k] = 0
            else:
                j = int(r * stepdens)
                if j < GROWTH_NSTEP:
                    growth[j] += pix


@njit(cache=True, error_model="numpy")
def _growth(data, rms, seg, pf, has_pf, label, mode, weighted,
            var0, mx, my, a64, autoaper0, flux_auto, fluxfrac, out_radius):
    """Circular growth curve; fills FLUX_RADIUS; returns (half-light radius, flags).

    SExtractor sums every pixel within ``6 a + 1.5`` (5x5 sub-pixels); only the
    inner part of that curve decides the radii.  The pixels inside a radius
    estimated from a whole-pixel curve are summed first; the rest is added
    only when a searched radius is not decided by the complete inner bins, so
    the result is SExtractor's in every case.
    """
    h, w = data.shape
    flag = 0
    growth = np.zeros(GROWTH_NSTEP)
    rlim = GROWTH_NSIG * np.float64(F32(a64))
    if rlim < autoaper0:
        rlim = autoaper0
    raper = rlim + 1.5
    rextlim2 = raper * raper
    stepdens = GROWTH_NSTEP / rlim
    step = 1.0 / stepdens
    m2x = 2.0 * mx + 0.49999
    m2y = 2.0 * my + 0.49999
    # a pixel's sub-pixels lie within r +- 0.57 px: at most this many bins
    hist = np.zeros(int(2.0 * stepdens) + 4, dtype=np.int64)
    xmin = int(mx - raper + 0.499999)
    xmax = int(mx + raper + 1.499999)
    ymin = int(my - raper + 0.499999)
    ymax = int(my + raper + 1.499999)
    xmin, xmax, ymin, ymax, f = _clip_box(xmin, xmax, ymin, ymax, w, h)
    flag |= f
    fa = np.float64(F32(flux_auto))
    # the largest searched level: its crossing comes last
    tvmax = 0.5 * fa
    for k in range(fluxfrac.shape[0]):
        if fluxfrac[k] * fa > tvmax:
            tvmax = fluxfrac[k] * fa
    # whole-pixel curve: where the searched levels are probably reached (for
    # any sign of FLUX_AUTO: the check below decides whether the outer pixels
    # are needed after all)
    rcut2 = rextlim2
    coarse = np.zeros(GROWTH_NSTEP)
    for y in range(ymin, ymax):
        dy0 = y - my
        clean = _row_usable(rms, seg, pf, has_pf, y, xmin, xmax, label, mode)
        for x in range(xmin, xmax):
            dx0 = x - mx
            r2 = dx0 * dx0 + dy0 * dy0
            if r2 < rextlim2:
                if clean or _usable(rms, seg, pf, has_pf, x, y, label, mode):
                    pix = np.float64(data[_U(y), _U(x)])
                else:
                    pix, _v, _r = _fetch_slow(data, rms, seg, pf, has_pf, x, y,
                                              label, mode, weighted, var0, m2x, m2y)
                j = int(math.sqrt(r2) * stepdens)
                if j < GROWTH_NSTEP:
                    coarse[j] += pix
    cum = 0.0
    for j in range(GROWTH_NSTEP):
        cum += coarse[j]
        if cum >= tvmax:
            rc = (j + 1) * step + 2.0
            if rc * rc < rcut2:
                rcut2 = rc * rc
            break
    _growth_pass(data, rms, seg, pf, has_pf, label, mode, weighted,
                 var0, mx, my, xmin, xmax, ymin, ymax, 0.0, rcut2, stepdens, step, growth, hist)
    if rcut2 < rextlim2:
        # bins below jc only receive pixels with r < rcut: they are complete
        jc = int((math.sqrt(rcut2) - 0.6) * stepdens)
        cumg = np.empty(GROWTH_NSTEP)
        acc = 0.0
        for i in range(GROWTH_NSTEP):
            acc += growth[i]
            cumg[i] = acc
        done = True
        for k in range(fluxfrac.shape[0] + 1):
            tv = (fluxfrac[k] if k < fluxfrac.shape[0] else 0.5) * fa
            _i, pp = _radius_search(cumg, tv)
            if pp >= jc:
                done = False
        if not done:
            _growth_pass(data, rms, seg, pf, has_pf, label, mode,
                         weighted, var0, mx, my, xmin, xmax, ymin, ymax, rcut2, rextlim2,
                         stepdens, step, growth, hist)
    acc = 0.0
    for i in range(GROWTH_NSTEP):
        growth[i] += acc
        acc = growth[i]
    for k in range(fluxfrac.shape[0]):
        rad = _radius_at(growth, step, fluxfrac[k] * fa)
        if rad > rlim:
            rad = rlim
        out_radius[k] = rad
    hl = abs(_radius_at(growth, step, 0.5 * fa))
    if hl > rlim:
        hl = rlim
    if hl < GROWTH_MINHLRAD:
        hl = GROWTH_MINHLRAD
    return hl, flag


@njit(cache=True, error_model="numpy")
def _winpos(data, rms, seg, pf, has_pf, label, mode, weighted,
            var0, gainflag, gain, backnoise2, mx0, my0, cxx64, cyy64, cxy64, hl_radius):
    """Windowed centroid: returns (xwin, ywin, snr_win, flags), 0-based."""
    h, w = data.shape
    flag = 0
    sig = F32(np.float64(F32(hl_radius)) * 2.0 / 2.35)
    invtwosig2 = F32(1.0 / (2.0 * np.float64(sig) * np.float64(sig)))
    raper = F32(WINPOS_NSIG * np.float64(sig))
    raper2 = raper * raper
    rint = F32(np.float64(raper) - 0.75)
    rintlim2 = rint * rint if rint > 0.0 else F32(0.0)
    rextlim2 = F32((np.float64(raper) + 0.75) * (np.float64(raper) + 0.75))
    scale = F32(1.0 / WINPOS_OVERSAMP)
    scale2 = scale * scale
    offset = F32(0.5 * (np.float64(scale) - 1.0))
    acc = _area_table(WINPOS_OVERSAMP, scale2)
    xsq = np.full(16, np.inf, dtype=np.float32)
    dy2s = np.empty(WINPOS_OVERSAMP, dtype=np.float32)
    whalf = 0.5 - 0.5 / WINPOS_OVERSAMP + 0.01
    rin = np.float64(raper2) * (1.0 - 1e-5)
    rout = np.float64(raper2) * (1.0 + 1e-5) + 1e-6
    invgain = 1.0 / gain if gain > 0.0 else 0.0
    mx = mx0
    my = my0
    # row buffers: a box row is at most 2*raper + 2 wide
    nbuf = w if not (np.float64(raper) < w) else min(w, 2 * int(np.float64(raper) + 1.5) + 2)
    wbuf = np.empty(nbuf, dtype=np.float32)
    pixb = np.empty(nbuf)
    varb = np.empty(nbuf)
    cand = np.empty(nbuf, dtype=np.int64)
    # rows of the first box and a margin for the centre's moves
    half = int(np.float64(raper) + 1.5) + 8 if np.float64(raper) < h else h
    ybase = int(my0) - half
    nrows = min(2 * half + 2, h + 2 * half + 2)
    row_x0 = np.full(nrows, -1, dtype=np.int64)
    row_x1 = np.full(nrows, -1, dtype=np.int64)
    row_clean = np.zeros(nrows, dtype=np.bool_)
    tv = 0.0
    esum = 0.0
    dxpos = 0.0
    dypos = 0.0
    mx2 = 0.0
    my2 = 0.0
    mxy = 0.0
    for _it in range(WINPOS_NITERMAX):
        xmin = int(mx - np.float64(raper) + 0.499999)
        xmax = int(mx + np.float64(raper) + 1.499999)
        ymin = int(my - np.float64(raper) + 0.499999)
        ymax = int(my + np.float64(raper) + 1.499999)
        m2x = mx * 2.0 + 0.49999
        m2y = my * 2.0 + 0.49999
        xmin, xmax, ymin, ymax, f = _clip_box(xmin, xmax, ymin, ymax, w, h)
        flag |= f
        tv = 0.0
        esum = 0.0
        mx2 = 0.0
        my2 = 0.0
        mxy = 0.0
        dxpos = 0.0
        dypos = 0.0
        for y in range(ymin, ymax):
            dy = F32(y - my)
            dyy = dy * dy
            if not (dyy < rextlim2):
                continue
            # whether the row's box pixels are all usable depends only on the
            # box: known from an earlier iteration while the box stays put
            k = y - ybase
            if k >= 0 and k < nrows and row_x0[k] == xmin and row_x1[k] == xmax:
                clean = row_clean[k]
            else:
                clean = _row_usable(rms, seg, pf, has_pf, y, xmin, xmax, label, mode)
                if k >= 0 and k < nrows:
                    row_x0[k] = xmin
                    row_x1[k] = xmax
                    row_clean[k] = clean
            # sub-row offsets of this row for the sub-pixel sweeps (see _area_table)
            dys = dy + offset
            for sy in range(WINPOS_OVERSAMP):
                dy2s[sy] = dys * dys
                dys += scale
            ady = abs(np.float64(dy))
            fary = (ady + whalf) * (ady + whalf)
            neary = (ady - whalf) * (ady - whalf) if ady > whalf else 0.0
            # Three passes, so that the summing loop makes no call (values
            # live across a call leave the registers: x86-64 saves no xmm
            # register, and the seven sums would go through the stack): the
            # weights (sub-pixel area times expf) and the run of pixels inside,
            # the values SExtractor sums on a row with neighbours, the sums.
            xa = xmax
            xb = xmin - 1
            for x in range(xmin, xmax):
                dx = F32(x - mx)
                r2 = dx * dx + dyy
                if r2 < rextlim2:
                    if r2 > rintlim2:
                        locarea = acc[_subpixels_inside(dx, whalf, fary, neary, rin, rout,
                                                        offset, scale, dy2s, xsq, raper2,
                                                        WINPOS_OVERSAMP, 16)]
                    else:
                        locarea = F32(1.0)
                    locarea *= math.exp(-r2 * invtwosig2)  # float32: C's expf
                    wbuf[_U(x - xmin)] = locarea
                    xa = min(xa, x)
                    xb = x
            if xa > xb:
                continue
            if not clean:
                _fill_row(data, rms, seg, pf, has_pf, y, xa, xb, label, mode,
                          weighted, var0, m2x, m2y, pixb, varb, cand)
            ddy = np.float64(dy)
            for x in range(xa, xb + 1):
                locarea = wbuf[_U(x - xmin)]
                if clean:
                    pix = np.float64(data[_U(y), _U(x)])
                    r_ = rms[_U(y), _U(x)]
                    var = np.float64(r_ * r_)
                else:
                    pix = pixb[_U(x - xa)]
                    var = varb[_U(x - xa)]
                la = np.float64(locarea)
                locpix = la * pix
                tv += locpix
                ddx = np.float64(F32(x - mx))
                dxpos += locpix * ddx
                dypos += locpix * ddy
                err = var
                if invgain > 0.0 and pix > 0.0:
                    if gainflag:
                        err += pix * invgain * var / backnoise2
                    else:
                        err += pix * invgain
                esum += np.float64(locarea * locarea) * err
                mx2 += locpix * ddx * ddx
                my2 += locpix * ddy * ddy
                mxy += locpix * ddx * ddy
        if tv > 0.0:
            dxpos /= tv
            dypos /= tv
            mx += dxpos * WINPOS_FAC
            my += dypos * WINPOS_FAC
        else:
            break
        if dxpos * dxpos + dypos * dypos < WINPOS_STEPMIN * WINPOS_STEPMIN:
            break
    mx2 = mx2 / tv - dxpos * dxpos
    my2 = my2 / tv - dypos * dypos
    mxy = mxy / tv - dxpos * dypos
    snr = tv / math.sqrt(esum) if esum > 1.0 / BIG else BIG
    temp2 = mx2 * my2 - mxy * mxy
    ddx = mx - mx0
    ddy = my - my0
    c2x = np.float64(F32(cxx64))
    c2y = np.float64(F32(cyy64))
    c2xy = np.float64(F32(cxy64))
    winflag = ((ddx * ddx > 1.0 and ddy * ddy > 1.0
                and c2x * ddx * ddx + c2y * ddy * ddy + c2xy * ddx * ddy > 1.0)
               or tv <= 0.0 or mx2 < 0.0 or my2 < 0.0 or temp2 < 0.0)
    if winflag:
        mx = mx0
        my = my0
    return mx, my, snr, flag


@njit(cache=True, error_model="numpy")
def _iso(data, rms, seg, pf, has_pf, label, xmin, xmax, ymin, ymax, weighted, gainflag, gain,
         backnoise2, threshfac, field_thresh, dbkg, mx, my, a64, b64, sat, iso_out):
    """Isophotal quantities (analyse.c: examineiso, and clean.c: mergeobject).

    ``seg`` gives the object's final pixels (FLUX_ISO, its error, the peak);
    its own pixels are those without the ``PF_MERGED`` flag (CLEAN merged the
    others into it from swallowed detections): on them SExtractor measured the
    isophotal area, the threshold, the classifier's isophotal areas and the
    FWHM.

    Returns (flux, variance, isoarea, npix, peak, thresh, fwhm); fills
    ``iso_out`` with the 8 isophotal areas of the classifier.
    """
    tv = 0.0
    sigtv = 0.0
    area = 0
    npix = 0
    peak = -BIG
    opeak = -BIG
    minthresh = BIG if weighted else field_thresh
    for y in range(ymin, ymax + 1):
        for x in range(xmin, xmax + 1):
            if seg[_U(y), _U(x)] != label:
                continue
            own = not (has_pf and (pf[_U(y), _U(x)] & PF_MERGED) != 0)
            npix += 1
            p = data[_U(y), _U(x)]
            pix = np.float64(p)
            if pix > peak:
                peak = pix
            if own and pix > opeak:
                opeak = pix
            r = rms[_U(y), _U(x)]
            thresh = field_thresh
            var2 = 0.0
            if r < np.inf:
                var = np.float64(r * r)
                if weighted:
                    thresh = np.float64(F32(threshfac * math.sqrt(var)))
                    if own and thresh < minthresh:
                        minthresh = thresh
                var2 = var
                if gainflag and pix > 0.0 and gain > 0.0:
                    var2 += pix / gain * var / backnoise2
            sigtv += var2
            if own and pix > thresh:
                area += 1
            tv += pix
    if npix == 0:
        for i in range(NISO):
            iso_out[i] = 0.0
        return 0.0, 0.0, 0, 0, 0.0, 0.0, 0.0
    if opeak == -BIG:
        opeak = peak
    tv -= np.float64(F32(npix) * F32(dbkg))
    if (not gainflag) and gain > 0.0 and tv > 0.0:
        sigtv += tv / gain
    objthresh = np.float64(F32(minthresh - dbkg))
    objpeak = np.float64(F32(opeak - dbkg))
    # isophotal areas (classifier inputs)
    threshs = np.zeros(NISO, dtype=np.float32)
    if objpeak > 0.0 and objthresh > 0.0:
        for i in range(NISO):
            threshs[i] = F32(objthresh * (objpeak / objthresh) ** (i / NISO))
    counts = np.zeros(NISO, dtype=np.int64)
    # FWHM from the profile above peak/5 (analyse.c)
    thresh0 = F32(objpeak / 5.0)
    if thresh0 < objthresh:
        thresh0 = F32(objthresh)
    s = 0.0
    sx = 0.0
    sy = 0.0
    sxx = 0.0
    sxy = 0.0
    for y in range(ymin, ymax + 1):
        for x in range(xmin, xmax + 1):
            if seg[_U(y), _U(x)] != label or (has_pf and (pf[_U(y), _U(x)] & PF_MERGED) != 0):
                continue
            v = data[_U(y), _U(x)]
            for i in range(NISO):
                if v > threshs[i]:
                    counts[i] += 1
                else:
                    break
            if thresh0 > 0.0:
                pix = np.float64(v) - dbkg
                if pix > thresh0 and pix < sat:
                    dx = x - mx
                    dy = y - my
                    lpix = math.log(pix)
                    inverr2 = pix * pix
                    s += inverr2
                    d2 = dx * dx + dy * dy
                    sx += d2 * inverr2
                    sxx += d2 * d2 * inverr2
                    sy += lpix * inverr2
                    sxy += lpix * d2 * inverr2
    for i in range(NISO):
        iso_out[i] = counts[i]
    fwhm = F32(0.0)
    if thresh0 > 0.0:
        d = s * sxx - sx * sx
        if abs(d) > 0.0:
            bb = -(s * sxy - sx * sy) / d
            bmax = np.float64(F32(1.0) / (F32(13.0) * F32(a64) * F32(b64)))
            if bb < bmax:
                bb = bmax
            fwhm = F32(1.6651 / math.sqrt(bb))
            if fwhm > 0.0:
                fwhm -= F32(1.0) / (F32(4.0) * fwhm)
    # the merged peak is what CLASS_STAR and the saturation flag see
    return tv, sigtv, area, npix, np.float64(F32(peak - dbkg)), objthresh, np.float64(fwhm)


@njit(cache=True, error_model="numpy")
def _localback(data, seg, pf, has_pf, label, mode, xmin, xmax, ymin, ymax, pbs,
               yblank):
    """BACKPHOTO_TYPE LOCAL background of one object (back.c: localback).

    ``xmin..ymax`` is the object's own bounding box.  Neighbour pixels are left
    out of the annulus only up to row ``yblank``: SExtractor estimates the
    local background while it scans the image, when only the rows already
    scanned have been blanked.
    """
    h, w = data.shape
    oxsize = xmax - xmin + 1
    oysize = ymax - ymin + 1
    bxnml = oxsize // 4 if oxsize < w // 2 else (w - oxsize) // 4
    bynml = oysize // 4 if oysize < h // 2 else (h - oysize) // 4
    ixmin = xmin - bxnml
    bxmin = ixmin - pbs
    ixmax = xmax + 1 + bxnml
    bxmax = ixmax + pbs
    iymin = ymin - bynml
    bymin = iymin - pbs
    iymax = ymax + 1 + bynml
    bymax = iymax + pbs
    if not (bymin >= 0 and bymax < h and bxmin >= 0 and bxmax < w):
        return 0.0
    nmax = (bxmax - bxmin) * (bymax - bymin) - (ixmax - ixmin) * (iymax - iymin)
    vals = np.empty(max(nmax, 1), dtype=np.float32)
    npix = 0
    for y in range(bymin, bymax):
        for x in range(bxmin, bxmin + pbs):
            if y > yblank or not _blanked(seg, pf, has_pf, x, y, label, mode):
                vals[npix] = data[_U(y), _U(x)]
                npix += 1
        for x in range(ixmax, ixmax + pbs):
            if y > yblank or not _blanked(seg, pf, has_pf, x, y, label, mode):
                vals[npix] = data[_U(y), _U(x)]
                npix += 1
    for y in range(bymin, iymin):
        for x in range(ixmin, ixmax):
            if y > yblank or not _blanked(seg, pf, has_pf, x, y, label, mode):
                vals[npix] = data[_U(y), _U(x)]
                npix += 1
    for y in range(iymax, bymax):
        for x in range(ixmin, ixmax):
            if y > yblank or not _blanked(seg, pf, has_pf, x, y, label, mode):
                vals[npix] = data[_U(y), _U(x)]
                npix += 1
    if npix == 0:
        return 0.0
    # backstat: 2-sigma clipped mean and sigma, then the quantisation of the histogram
    mean = 0.0
    sigma = 0.0
    for i in range(npix):
        p = np.float64(vals[i])
        mean += p
        sigma += p * p
    mean /= npix
    sg = sigma / npix - mean * mean
    sigma = math.sqrt(sg) if sg > 0.0 else 0.0
    lcut = F32(mean - 2.0 * sigma)
    hcut = F32(mean + 2.0 * sigma)
    mean = 0.0
    sigma = 0.0
    n = 0
    for i in range(npix):
        p = vals[i]
        if p <= hcut and p >= lcut:
            mean += np.float64(p)
            sigma += np.float64(p) * np.float64(p)
            n += 1
    if n == 0:
        return 0.0
    mean /= n
    sg = sigma / n - mean * mean
    sigma = math.sqrt(sg) if sg > 0.0 else 0.0
    bmean = F32(mean)
    step = math.sqrt(2.0 / math.pi) * QUANTIF_NSIGMA / QUANTIF_AMIN
    nlevels = int(step * n + 1)
    if nlevels > QUANTIF_NMAXLEVELS:
        nlevels = QUANTIF_NMAXLEVELS
    qscale = F32(2 * QUANTIF_NSIGMA * sigma / nlevels) if sigma > 0.0 else F32(1.0)
    qzero = F32(mean - QUANTIF_NSIGMA * sigma)
    histo = np.zeros(nlevels, dtype=np.int64)
    cste = F32(0.499999 - np.float64(qzero) / np.float64(qscale))
    for i in range(npix):
        bn = int(vals[i] / qscale + cste)
        if bn >= 0 and bn < nlevels:
            histo[bn] += 1
    # (back.c's backguess, shared with the mesh background)
    back, _sig = _backguess(histo, nlevels, bmean, np.float32(0.0), np.float64(qscale),
                            np.float64(qzero))
    return np.float64(back)


@njit(cache=True, error_model="numpy")
def build_pixel_flags(seg, mask, has_mask, blank, has_blank, oseg, has_oseg, pf):
    """The pixel-flag map of a measurement (see the module notes).

    ``PF_BLANK`` from ``blank`` (default: labelled pixels), ``PF_MASK`` from
    ``mask``, ``PF_MERGED`` where ``oseg`` (the objects' own pixels) differs
    from ``seg``, and ``PF_STUCK`` on merged pixels that an explicit ``blank``
    marks (SExtractor restores the others when CLEAN merges them).
    """
    h, w = seg.shape
    for y in range(h):
        for x in range(w):
            s = seg[y, x]
            f = 0
            if has_blank:
                if blank[y, x] != 0:
                    f |= PF_BLANK
            elif s != 0:
                f |= PF_BLANK
            if has_mask and mask[y, x] != 0:
                f |= PF_MASK
            if has_oseg and s != 0 and oseg[y, x] != s:
                f |= PF_MERGED
                if has_blank and blank[y, x] != 0:
                    f |= PF_STUCK
            pf[y, x] = f


@njit(cache=True, error_model="numpy")
def label_boxes(seg, nobj, pf, own_only):
    """Bounding boxes (xmin, xmax, ymin, ymax) and pixel counts of labels 1..nobj.

    With ``own_only``, only the pixels without the ``PF_MERGED`` flag count.
    """
    h, w = seg.shape
    xmin = np.full(nobj, w, dtype=np.int64)
    xmax = np.full(nobj, -1, dtype=np.int64)
    ymin = np.full(nobj, h, dtype=np.int64)
    ymax = np.full(nobj, -1, dtype=np.int64)
    npix = np.zeros(nobj, dtype=np.int64)
    for y in range(h):
        for x in range(w):
            s = seg[y, x]
            if s > 0 and s <= nobj:
                if own_only and (pf[y, x] & PF_MERGED) != 0:
                    continue
                i = s - 1
                npix[i] += 1
                if x < xmin[i]:
                    xmin[i] = x
                if x > xmax[i]:
                    xmax[i] = x
                if y < ymin[i]:
                    ymin[i] = y
                if y > ymax[i]:
                    ymax[i] = y
    return xmin, xmax, ymin, ymax, npix


@njit(cache=True, error_model="numpy")
def _measure_range(lo, hi, data, rms, ddata, drms, seg, pf, has_pf,
                   x, y, a, b, cxx, cyy, cxy, bxmin, bxmax, bymin, bymax, bkg_center,
                   mode, weighted, var0, gainflag, gain, backnoise2, threshfac,
                   field_thresh, satur, radii, kron_fact, kron_min, autoaper0, autoaper1,
                   fluxfrac, local_back, pbs, oxmin, oxmax, oymin, oymax, yblank,
                   flux_aper, var_aper, flux_auto, var_auto, kron, flux_iso, var_iso,
                   isoarea, npix, peak, thresh, fwhm, iso, flux_radius, xwin, ywin, snr_win,
                   dbkg, flags):
    """`measure_objects` for objects ``lo..hi-1``, into the output arrays."""
    naper = radii.shape[0]
    for i in range(lo, hi):
        label = i + 1
        flag = 0
        db = 0.0
        if local_back and oxmax[i] >= 0:
            db = _localback(data, seg, pf, has_pf, label, mode,
                            oxmin[i], oxmax[i], oymin[i], oymax[i], pbs, yblank[i])
        dbkg[i] = db
        sat = satur - bkg_center[i] - db
        if bxmax[i] >= 0:
            r = _iso(data, rms, seg, pf, has_pf, label, bxmin[i], bxmax[i], bymin[i], bymax[i],
                     weighted, gainflag, gain, backnoise2, threshfac, field_thresh, db,
                     x[i], y[i], a[i], b[i], sat, iso[i])
            flux_iso[i] = r[0]
            var_iso[i] = r[1]
            isoarea[i] = r[2]
            npix[i] = r[3]
            peak[i] = r[4]
            thresh[i] = r[5]
            fwhm[i] = r[6]
            if r[4] + bkg_center[i] + db >= satur:
                flag |= FLAG_SATUR
        if naper > 0:
            flag |= _aper(data, rms, seg, pf, has_pf, label, mode,
                          weighted, var0, gainflag, gain, backnoise2, x[i], y[i], radii,
                          db, flux_aper[i], var_aper[i])
        fa, va, kf, f = _auto(data, rms, ddata, drms, seg, pf, has_pf,
                              label, mode, weighted, var0, gainflag, gain, backnoise2,
                              x[i], y[i], a[i], b[i], cxx[i], cyy[i], cxy[i], kron_fact,
                              kron_min, autoaper0, autoaper1, db)
        flux_auto[i] = fa
        var_auto[i] = va
        kron[i] = kf
        flag |= f
        hl, f = _growth(data, rms, seg, pf, has_pf, label, mode,
                        weighted, var0, x[i], y[i], a[i], autoaper0, fa, fluxfrac,
                        flux_radius[i])
        flag |= f
        xw, yw, snr, f = _winpos(data, rms, seg, pf, has_pf, label,
                                 mode, weighted, var0, gainflag, gain, backnoise2, x[i], y[i],
                                 cxx[i], cyy[i], cxy[i], hl)
        xwin[i] = xw
        ywin[i] = yw
        snr_win[i] = snr
        flag |= f
        flags[i] = flag


def measure_objects(data, rms, ddata, drms, seg, pf, has_pf,
                    x, y, a, b, cxx, cyy, cxy, bxmin, bxmax, bymin, bymax, bkg_center,
                    mode, weighted, var0, gainflag, gain, backnoise2, threshfac,
                    field_thresh, satur, radii, kron_fact, kron_min, autoaper0, autoaper1,
                    fluxfrac, local_back, pbs, oxmin, oxmax, oymin, oymax, yblank):
    """All SExtractor measurements of every object (label ``i+1`` is object ``i``).

    Returns a tuple of arrays (see `galseg.extract.measure` for their meaning):
    flux_aper, var_aper, flux_auto, var_auto, kron, flux_iso, var_iso, isoarea,
    npix, peak, thresh, fwhm, iso, flux_radius, xwin, ywin, snr_win, dbkg, flags.
    """
    n = x.shape[0]
    naper = radii.shape[0]
    nfrac = fluxfrac.shape[0]
    flux_aper = np.zeros((n, naper))
    var_aper = np.zeros((n, naper))
    flux_auto = np.zeros(n)
    var_auto = np.zeros(n)
    kron = np.zeros(n)
    flux_iso = np.zeros(n)
    var_iso = np.zeros(n)
    isoarea = np.zeros(n, dtype=np.int64)
    npix = np.zeros(n, dtype=np.int64)
    peak = np.zeros(n)
    thresh = np.zeros(n)
    fwhm = np.zeros(n)
    iso = np.zeros((n, NISO))
    flux_radius = np.zeros((n, nfrac))
    xwin = np.zeros(n)
    ywin = np.zeros(n)
    snr_win = np.zeros(n)
    dbkg = np.zeros(n)
    flags = np.zeros(n, dtype=np.int64)
    # chunks of objects in numba's parallel loop: the same kernels compiled
    # into a parallel function run ~20 % faster than called from Python (numba
    # then knows that the arrays do not overlap); one chunk per iteration,
    # handed out as threads come free (object costs vary a lot)
    _parallel.numba_parallel(_measure_chunks, n, data, rms, ddata, drms, seg, pf, has_pf, x, y, a,
                             b, cxx, cyy, cxy, bxmin, bxmax, bymin, bymax, bkg_center, mode,
                             weighted, var0, gainflag, gain, backnoise2, threshfac, field_thresh,
                             satur, radii, kron_fact, kron_min, autoaper0, autoaper1, fluxfrac,
                             local_back, pbs, oxmin, oxmax, oymin, oymax, yblank, flux_aper,
                             var_aper, flux_auto, var_auto, kron, flux_iso, var_iso, isoarea, npix,
                             peak, thresh, fwhm, iso, flux_radius, xwin, ywin, snr_win, dbkg,
                             flags)
    return (flux_aper, var_aper, flux_auto, var_auto, kron, flux_iso, var_iso, isoarea,
            npix, peak, thresh, fwhm, iso, flux_radius, xwin, ywin, snr_win, dbkg, flags)


_CHUNK = 32  # objects per parallel iteration


@njit(cache=True, parallel=True, error_model="numpy")
def _measure_chunks(n, data, rms, ddata, drms, seg, pf, has_pf, x, y, a, b, cxx, cyy, cxy, bxmin,
                   bxmax, bymin, bymax, bkg_center, mode, weighted, var0, gainflag, gain,
                   backnoise2, threshfac, field_thresh, satur, radii, kron_fact, kron_min,
                   autoaper0, autoaper1, fluxfrac, local_back, pbs, oxmin, oxmax, oymin, oymax,
                   yblank, flux_aper, var_aper, flux_auto, var_auto, kron, flux_iso, var_iso,
                   isoarea, npix, peak, thresh, fwhm, iso, flux_radius, xwin, ywin, snr_win, dbkg,
                   flags):
    for c in prange((n + _CHUNK - 1) // _CHUNK):
        _measure_range(c * _CHUNK, min(c * _CHUNK + _CHUNK, n),
                       data, rms, ddata, drms, seg, pf, has_pf, x, y, a, b, cxx, cyy, cxy, bxmin,
                       bxmax, bymin, bymax, bkg_center, mode, weighted, var0, gainflag, gain,
                       backnoise2, threshfac, field_thresh, satur, radii, kron_fact, kron_min,
                       autoaper0, autoaper1, fluxfrac, local_back, pbs, oxmin, oxmax, oymin, oymax,
                       yblank, flux_aper, var_aper, flux_auto, var_auto, kron, flux_iso, var_iso,
                       isoarea, npix, peak, thresh, fwhm, iso, flux_radius, xwin, ywin, snr_win,
                       dbkg, flags)


def kernels_cached() -> bool:
    """Whether numba's on-disk cache already holds the measurement kernel.

    A cold cache (a fresh installation, or a changed source) means the first
    extraction compiles every kernel, about 30 s once.  True when it cannot
    tell (numba's cache layout is not public API).
    """
    try:
        return os.path.exists(_measure_chunks._cache._cache_file._index_path)
    except Exception:  # noqa: BLE001 - another numba version: do not guess
        return True
