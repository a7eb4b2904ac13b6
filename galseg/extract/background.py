"""Background estimation as SExtractor 2.25 does it (``back.c``).

SExtractor measures the sky on a grid of ``BACK_SIZE`` meshes: in each mesh a
2-sigma clipped mean/sigma sets the range of a histogram, whose clipped mode
(``2.5 median - 1.5 mean``, or the median when the distribution is skewed)
is the mesh background and whose clipped width is the mesh sigma.  The mesh
grid is median filtered (``BACK_FILTERSIZE``, ``BACK_FILTTHRESH``) and
interpolated with bicubic splines.  The global background sigma
(``backsig``: the median of the mesh sigmas) sets the detection threshold
when there is no weight map, and the same mesh statistics run on a weight-
derived variance map give the ``MAP_WEIGHT`` rescaling factor
(:mod:`galseg.extract.weights`).

Everything is computed here, in numba, exactly as ``back.c`` computes it (same
clipping, single-precision histogram binning, mode estimator, mesh filtering
and bicubic-spline interpolation): the mesh values are needed for the weight
rescaling and sep exposes only the interpolated maps.  The maps are bit for
bit SExtractor's ``BACKGROUND`` and ``BACKGROUND_RMS`` check images (see
``tests/test_detect.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

from . import _parallel
from ._sort import sort_inplace

__all__ = ["MeshStatistics", "BackgroundResult", "mesh_statistics", "background_map",
           "estimate_background"]

#: SExtractor's "huge number" (define.h): pixels at or below -BIG are "no data".
BIG = 1e30

# back.h
_BACK_BUFSIZE = 1048576
_BACK_MINGOODFRAC = 0.5
_U = _parallel.UINDEX  # never-negative indices: see UINDEX
_QUANTIF_NSIGMA = 5
_QUANTIF_NMAXLEVELS = 4096
_QUANTIF_AMIN = 4


@dataclass
class MeshStatistics:
    """Background statistics on SExtractor's mesh grid.

    Attributes
    ----------
    back, sigma : ndarray of float32, shape (ny, nx)
        Mesh background and sigma after bad-mesh replacement and median
        filtering (``field->back`` / ``field->sigma`` in ``back.c``).
    backmean, backsig : float
        Medians of ``back`` and ``sigma`` (SExtractor's global background and
        background RMS, as printed in its log).
    mesh_size : tuple of int
        ``(bw, bh)``: mesh width and height in pixels.
    """

    back: np.ndarray
    sigma: np.ndarray
    backmean: float
    backsig: float
    mesh_size: tuple[int, int]


@dataclass
class BackgroundResult:
    """The background that the engine subtracts, and its noise.

    Attributes
    ----------
    background : ndarray of float32
        Full-resolution background map; for ``BACK_TYPE MANUAL`` a read-only
        constant view (``np.broadcast_to``), which takes no memory.
    globalback, globalrms : float
        SExtractor's ``backmean`` (or ``BACK_VALUE`` for MANUAL) and
        ``backsig``.
    rms : ndarray of float32 or None
        Interpolated mesh-sigma map (SExtractor's ``BACKGROUND_RMS`` check
        image), when asked for.
    mesh : MeshStatistics
        The mesh statistics of the science image.
    """

    background: np.ndarray
    globalback: float
    globalrms: float
    rms: np.ndarray | None
    mesh: MeshStatistics


# --------------------------------------------------------------------------- numba kernels
@numba.njit(cache=True)
def _fqmedian(values):
    n = values.size
    s = values.copy()
    sort_inplace(s)
    if n < 2:
        return s[0]
    if n & 1:
        return s[n // 2]
    return np.float32((np.float64(s[n // 2 - 1]) + np.float64(s[n // 2])) / 2.0)


@numba.njit(cache=True)
def _backguess(histo, nlevels, bmean, bsigma, qscale, qzero):
    """Clipped mode of a mesh histogram (``backguess`` in back.c).

    back.c rescans the histogram between the clipping limits at every
    iteration; here the sums come from exact integer prefix sums and the
    median's two-pointer walk from a binary search on the same prefix sums
    (the walk merges the cumulative counts from either end), which gives the
    same numbers for a fraction of the work.
    """
    eps = 1e-4
    hcut = nlevelsm1 = nlevels - 1
    lcut = 0
    sig = 10.0 * nlevelsm1
    sig1 = 1.0
    mea = med = np.float64(bmean)
    # prefix sums (exact integers): counts, i * counts, i^2 * counts
    c0 = np.zeros(nlevels + 1, np.int64)
    c1 = np.zeros(nlevels + 1, np.int64)
    c2 = np.zeros(nlevels + 1, np.int64)
    for i in range(nlevels):
        h = histo[i]
        c0[i + 1] = c0[i] + h
        c1[i + 1] = c1[i] + h * i
        c2[i + 1] = c2[i] + h * i * i
    n = 100
    while True:
        if not (n > 0 and sig >= 0.1 and abs(sig / sig1 - 1.0) > eps):
            break
        n -= 1
        sig1 = sig
        lo_i = lcut if lcut > 0 else 0
        hi_i = hcut
        if hi_i >= lo_i:
            total = c0[hi_i + 1] - c0[lo_i]
            mea = np.float64(c1[hi_i + 1] - c1[lo_i])
            sig = np.float64(c2[hi_i + 1] - c2[lo_i])
        else:
            total = 0
            mea = 0.0
            sig = 0.0
        # the two-pointer walk of the C loop, as a merge of the cumulative sums
        # from either end: k steps from below, N - k from above
        N = hcut - lcut + 1
        if N > 0:
            lo_k = 0
            hi_k = N
            base = c0[lcut]
            top = c0[hcut + 1]
            # largest k with L(k-1) < H(N-k) (k = 0 always qualifies)
            while lo_k < hi_k:
                k = (lo_k + hi_k + 1) // 2
                lk1 = c0[lcut + k - 1] - base
                hnk = top - c0[hcut + 1 - (N - k)]
                if lk1 < hnk:
                    lo_k = k
                else:
                    hi_k = k - 1
            k = lo_k
            hilow = lcut + k
            hihigh = hilow - 1
            lowsum = c0[hilow] - base
            highsum = top - c0[hilow]
        else:
            hilow = lcut
            hihigh = hcut
            lowsum = 0
            highsum = 0
        if hihigh >= 0:
            lo = histo[hilow] if hilow < nlevels else 0
            hi = histo[hihigh]
            den = 2.0 * (lo if lo > hi else hi)
            med = hihigh + 0.5 + (np.float64(highsum) - np.float64(lowsum)) / den
        else:
            med = 0.0
        if total:
            mea /= np.float64(total)
            sig = sig / total - mea * mea
        sig = math.sqrt(sig) if sig > 0.0 else 0.0
        ftemp = med - 3.0 * sig
        lcut = int(ftemp + 0.5 if ftemp > 0.0 else ftemp - 0.5) if ftemp > 0.0 else 0
        ftemp = med + 3.0 * sig
        if ftemp < nlevelsm1:
            hcut = int(ftemp + 0.5 if ftemp > 0.0 else ftemp - 0.5)
        else:
            hcut = nlevelsm1
    if abs(sig) > 0.0:
        if abs((mea - med) / sig) < 0.3:
            mean = qzero + (2.5 * med - 1.5 * mea) * qscale
        else:
            mean = qzero + med * qscale
    else:
        mean = qzero + mea * qscale
    return np.float32(mean), np.float32(sig * qscale)


@numba.njit(cache=True)
def _mesh_row_stats(data, valid, wvar, use_w, want_w, wthresh, y0, h, statlines, bw, nx,
                    back, sigma, wback, wsigma, j):
    """Statistics of one row of meshes (backstat + backhisto + backguess).

    ``use_w``: pixels with ``wvar >= wthresh`` are left out; ``want_w``: the
    statistics of ``wvar`` itself are computed too (only ``MAP_WEIGHT`` /
    ``MAP_VAR`` rescaling needs them).  A ``valid`` of another shape than
    ``data`` (e.g. 1x1) means every pixel has data.
    """
    width = data.shape[1]
    all_valid = valid.shape[0] != data.shape[0] or valid.shape[1] != data.shape[1]
    step = math.sqrt(2.0 / math.pi) * _QUANTIF_NSIGMA / _QUANTIF_AMIN
    nstat = statlines.size
    for m in range(nx):
        x0 = m * bw
        mw = min(bw, width - x0)
        # ---- backstat, first pass: plain mean/sigma for the clipping range
        mean = 0.0
        sig2 = 0.0
        wmean = 0.0
        wsig2 = 0.0
        npix = 0
        for li in range(nstat):
            y = statlines[li]
            for x in range(x0, x0 + mw):
                if not (all_valid or valid[_U(y), _U(x)]):
                    continue
                if use_w and not (wvar[_U(y), _U(x)] < wthresh):
                    continue
                pix = np.float64(data[_U(y), _U(x)])
                mean += pix
                sig2 += pix * pix
                if want_w:
                    wp = np.float64(wvar[_U(y), _U(x)])
                    wmean += wp
                    wsig2 += wp * wp
                npix += 1
        if np.float32(npix) < np.float32(mw * nstat * _BACK_MINGOODFRAC):
            back[j, m] = -BIG
            sigma[j, m] = -BIG
            if want_w:
                wback[j, m] = -BIG
                wsigma[j, m] = -BIG
            continue
        wlcut = np.float32(0.0)
        whcut = np.float32(0.0)
        if want_w:
            wmean /= npix
            s = wsig2 / npix - wmean * wmean
            ws = math.sqrt(s) if s > 0.0 else 0.0
            wlcut = np.float32(wmean - 2.0 * ws)
            whcut = np.float32(wmean + 2.0 * ws)
        mean /= npix
        s = sig2 / npix - mean * mean
        sd = math.sqrt(s) if s > 0.0 else 0.0
        lcut = np.float32(mean - 2.0 * sd)
        hcut = np.float32(mean + 2.0 * sd)
        # ---- backstat, second pass: clipped mean/sigma
        mean = 0.0
        sig2 = 0.0
        npix = 0
        wmean = 0.0
        wsig2 = 0.0
        wnpix = 0
        for li in range(nstat):
            y = statlines[li]
            for x in range(x0, x0 + mw):
                if not (all_valid or valid[_U(y), _U(x)]):
                    continue
                pix32 = data[_U(y), _U(x)]
                if use_w and not (wvar[_U(y), _U(x)] < wthresh):
                    continue
                if pix32 <= hcut and pix32 >= lcut:
                    pix = np.float64(pix32)
                    mean += pix
                    sig2 += pix * pix
                    npix += 1
                    if want_w:
                        wp32 = wvar[_U(y), _U(x)]
                        if wp32 <= whcut and wp32 >= wlcut:
                            wp = np.float64(wp32)
                            wmean += wp
                            wsig2 += wp * wp
                            wnpix += 1
        mean /= npix
        s = sig2 / npix - mean * mean
        sd = math.sqrt(s) if s > 0.0 else 0.0
        bmean = np.float32(mean)
        bsig = np.float32(sd)
        nlevels = int(step * npix + 1)
        if nlevels > _QUANTIF_NMAXLEVELS:
            nlevels = _QUANTIF_NMAXLEVELS
        qscale = np.float32(2 * _QUANTIF_NSIGMA * sd / nlevels) if sd > 0.0 else np.float32(1.0)
        qzero = np.float32(mean - _QUANTIF_NSIGMA * sd)
        if want_w:
            wmean /= wnpix
            s = wsig2 / wnpix - wmean * wmean
            wsd = math.sqrt(s) if s > 0.0 else 0.0
            wbmean = np.float32(wmean)
            wbsig = np.float32(wsd)
            wnlevels = int(step * wnpix + 1)
            if wnlevels > _QUANTIF_NMAXLEVELS:
                wnlevels = _QUANTIF_NMAXLEVELS
            wqscale = (np.float32(2 * _QUANTIF_NSIGMA * wsd / wnlevels) if wsd > 0.0
                       else np.float32(1.0))
            wqzero = np.float32(wmean - _QUANTIF_NSIGMA * wsd)
        # ---- backhisto: all lines of the mesh, single-precision binning
        histo = np.zeros(nlevels, np.int64)
        cste = np.float32(np.float32(0.499999) - qzero / qscale)
        if want_w:
            whisto = np.zeros(wnlevels, np.int64)
            wcste = np.float32(np.float32(0.499999) - wqzero / wqscale)
        for y in range(y0, y0 + h):
            for x in range(x0, x0 + mw):
                if not (all_valid or valid[_U(y), _U(x)]):
                    continue
                b = int(data[_U(y), _U(x)] / qscale + cste)
                if use_w:
                    wp32 = wvar[_U(y), _U(x)]
                    if wp32 < wthresh and b < nlevels and b >= 0:
                        histo[b] += 1
                        if want_w:
                            wb = int(wp32 / wqscale + wcste)
                            if wb >= 0 and wb < wnlevels:
                                whisto[wb] += 1
                elif b >= 0 and b < nlevels:
                    histo[b] += 1
        back[j, m], sigma[j, m] = _backguess(histo, nlevels, bmean, bsig, np.float64(qscale),
                                             np.float64(qzero))
        if want_w:
            wback[j, m], wsigma[j, m] = _backguess(whisto, wnlevels, wbmean, wbsig,
                                                   np.float64(wqscale), np.float64(wqzero))


@numba.njit(cache=True, nogil=True)
def _mesh_rows(j0, j1, data, valid, wvar, use_w, want_w, wthresh, bw, bh, back, sigma, wback,
               wsigma):
    """Raw statistics of mesh rows ``j0..j1-1`` (see `_mesh_row_stats`)."""
    height, width = data.shape
    nx = (width - 1) // bw + 1
    for j in range(j0, j1):
        y0 = j * bh
        h = min(bh, height - y0)
        # Wide images: SExtractor takes the clipping statistics from a subset
        # of lines (BACK_BUFSIZE), the histogram from all of them.
        if width * bh > _BACK_BUFSIZE:
            nlines = _BACK_BUFSIZE // width
            if h == bh:
                step = (bh - 1) // nlines + 1
                nlines = bh // step
            else:
                step = (h - 1) // nlines + 1
                nlines = h // step
            statlines = np.empty(nlines, np.int64)
            for k in range(nlines):
                statlines[k] = y0 + step // 2 + k * step
        else:
            statlines = np.arange(y0, y0 + h)
        _mesh_row_stats(data, valid, wvar, use_w, want_w, wthresh, y0, h, statlines, bw, nx,
                        back, sigma, wback, wsigma, j)


def _mesh_grid_stats(data, valid, wvar, use_w, want_w, wthresh, bw, bh):
    """Raw mesh statistics, rows of meshes on several threads."""
    height, width = data.shape
    nx = (width - 1) // bw + 1
    ny = (height - 1) // bh + 1
    back = np.empty((ny, nx), np.float32)
    sigma = np.empty((ny, nx), np.float32)
    wback = np.empty((ny, nx), np.float32)
    wsigma = np.empty((ny, nx), np.float32)
    _parallel.ranges(_mesh_rows, ny, 2, data, valid, wvar, use_w, want_w, wthresh, bw, bh,
                     back, sigma, wback, wsigma)
    return back, sigma, wback, wsigma


@numba.njit(cache=True)
def _filterback(back, sigma, nfx, nfy, fthresh):
    """Bad-mesh replacement and median filtering (``filterback``)."""
    ny, nx = back.shape
    s = sigma.copy()
    b2 = back.copy()
    for py in range(ny):
        for px in range(nx):
            if back[py, px] <= -BIG:
                d2min = BIG
                nmin = 0
                val = np.float32(0.0)
                sval = np.float32(0.0)
                for y in range(ny):
                    for x in range(nx):
                        if back[y, x] > -BIG:
                            d2 = np.float32((x - px) * (x - px) + (y - py) * (y - py))
                            if d2 < d2min:
                                val = back[y, x]
                                sval = sigma[y, x]
                                nmin = 1
                                d2min = d2
                            elif d2 == d2min:
                                val += back[y, x]
                                sval += sigma[y, x]
                                nmin += 1
                b2[py, px] = val / nmin if nmin else np.float32(0.0)
                s[py, px] = sval / nmin if nmin else np.float32(1.0)
    b = b2
    npx = nfx // 2
    npy = nfy // 2
    outb = b.copy()
    outs = s.copy()
    bm = np.empty(nfx * nfy, np.float32)
    sm = np.empty(nfx * nfy, np.float32)
    for py in range(ny):
        npy2 = min(npy, ny - 1 - py, py)
        for px in range(nx):
            npx2 = min(npx, nx - 1 - px, px)
            # the window, row by row (explicit loops: quicker to compile
            # than 2-D slicing)
            k = 0
            for wy in range(py - npy2, py + npy2 + 1):
                for wx in range(px - npx2, px + npx2 + 1):
                    bm[k] = b[wy, wx]
                    sm[k] = s[wy, wx]
                    k += 1
            med = _fqmedian(bm[:k])
            if abs(med - b[py, px]) >= fthresh:
                outb[py, px] = med
                outs[py, px] = _fqmedian(sm[:k])
            else:
                outb[py, px] = b[py, px]
                outs[py, px] = s[py, px]
    backmean = _fqmedian(outb.ravel())
    flat = outs.ravel().copy()
    sort_inplace(flat)
    backsig = _fqmedian(flat)
    if backsig <= 0.0:
        npos = 0
        for v in flat:
            if v > 0.0:
                npos += 1
        if 0 < npos < flat.size:
            backsig = _fqmedian(flat[flat.size - npos:])
        else:
            backsig = np.float32(1.0)
    return outb, outs, backmean, backsig


@numba.njit(cache=True)
def _spline_y(grid):
    """Second derivatives along y of a mesh grid (``makebackspline``)."""
    ny, nx = grid.shape
    d = np.zeros((ny, nx), np.float32)
    if ny < 2:
        return d
    u = np.zeros(ny - 1, np.float32)
    for x in range(nx):
        d[0, x] = 0.0
        u[0] = 0.0
        for y in range(1, ny - 1):
            temp = np.float32(-1.0) / (d[y - 1, x] + np.float32(4.0))
            d[y, x] = temp
            temp *= u[y - 1] - np.float32(6.0) * (grid[y + 1, x] + grid[y - 1, x]
                                                  - np.float32(2.0) * grid[y, x])
            u[y] = temp
        d[ny - 1, x] = 0.0
        for y in range(ny - 2, 0, -1):
            d[y, x] = np.float32((d[y, x] * d[y + 1, x] + u[y]) / 6.0)
    return d


@numba.njit(cache=True, nogil=True)
def _spline_rows(y0, y1, grid, dgrid, bw, bh, out):
    """Lines ``y0..y1-1`` of the bicubic-spline map of a mesh grid
    (``subbackline``; the lines are independent)."""
    nbx = grid.shape[1]
    node = np.empty(nbx, np.float32)
    dnode = np.zeros(nbx, np.float32)
    u = np.zeros(max(nbx - 1, 1), np.float32)
    for y in range(y0, y1):
        _spline_line(grid, dgrid, bw, bh, out, y, node, dnode, u)


@numba.njit(cache=True)
def _spline_line(grid, dgrid, bw, bh, out, y, node, dnode, u):
    """Line ``y`` of `_spline_map` (``node``, ``dnode``, ``u``: work space)."""
    height, width = out.shape
    nby, nbx = grid.shape
    nbxm1 = nbx - 1
    if nby > 1:
        dy = np.float32(np.float32(y) / np.float32(bh) - 0.5)
        yl = int(dy)
        dy -= np.float32(yl)
        if yl < 0:
            yl = 0
            dy -= np.float32(1.0)
        elif yl >= nby - 1:
            yl = 0 if nby < 2 else nby - 2
            dy += np.float32(1.0)
        cdy = np.float32(1.0) - dy
        dy3 = dy * dy * dy - dy
        cdy3 = cdy * cdy * cdy - cdy
        for x in range(nbx):
            node[x] = (cdy * grid[yl, x] + dy * grid[yl + 1, x] + cdy3 * dgrid[yl, x]
                       + dy3 * dgrid[yl + 1, x])
        if nbx > 1:
            dnode[0] = 0.0
            u[0] = 0.0
            for x in range(1, nbxm1):
                temp = np.float32(-1.0) / (dnode[x - 1] + np.float32(4.0))
                dnode[x] = temp
                temp *= u[x - 1] - np.float32(6.0) * (node[x + 1] + node[x - 1]
                                                      - np.float32(2.0) * node[x])
                u[x] = temp
            dnode[nbxm1] = 0.0
            for x in range(nbx - 2, 0, -1):
                dnode[x] = np.float32((dnode[x] * dnode[x + 1] + u[x]) / 6.0)
    else:
        # one row of meshes: no y interpolation, and SExtractor then keeps
        # the (zero) y-derivatives as x-derivatives: linear along x
        for x in range(nbx):
            node[x] = grid[0, x]
            dnode[x] = dgrid[0, x]
    if nbx > 1:
        if bw == 1:
            for j in range(width):
                out[y, j] = node[j] if j < nbx else node[nbx - 1]
        else:
            xstep = np.float32(1.0) / np.float32(bw)
            changepoint = bw // 2
            dx = (xstep - np.float32(1.0)) / np.float32(2.0)
            dx0 = np.float32((bw + 1) % 2) * xstep / np.float32(2.0)
            lo = 0
            xm = 0
            i = 0
            for j in range(width):
                if i == changepoint and xm > 0 and xm < nbxm1:
                    lo += 1
                    dx = dx0
                cdx = np.float32(1.0) - dx
                out[y, j] = (cdx * (node[lo] + (cdx * cdx - np.float32(1.0)) * dnode[lo])
                             + dx * (node[lo + 1] + (dx * dx - np.float32(1.0))
                                     * dnode[lo + 1]))
                if i == bw:
                    xm += 1
                    i = 0
                i += 1
                dx += xstep
    else:
        for j in range(width):
            out[y, j] = node[0]


def background_map(grid, shape, mesh_size):
    """Full-resolution map of a mesh grid (SExtractor's bicubic splines).

    Parameters
    ----------
    grid : 2-D ndarray of float32
        Mesh values (`MeshStatistics.back` or ``.sigma``).
    shape : tuple
        Image shape.
    mesh_size : tuple
        ``(bw, bh)``.

    Returns
    -------
    ndarray of float32
        The ``BACKGROUND`` (or ``BACKGROUND_RMS``) check image.
    """
    grid = np.ascontiguousarray(grid, dtype=np.float32)
    out = np.empty(shape, np.float32)
    _parallel.ranges(_spline_rows, shape[0], 64, _parallel.readonly(grid),
                     _parallel.readonly(_spline_y(grid)), int(mesh_size[0]), int(mesh_size[1]),
                     out)
    return out


# --------------------------------------------------------------------------- public API
def _mesh_geometry(shape, back_size, filter_size):
    height, width = shape
    bw = min(int(back_size), width)
    bh = min(int(back_size), height)
    nx = (width - 1) // bw + 1
    ny = (height - 1) // bh + 1
    fw = int(filter_size) if nx > 1 else 1
    fh = int(filter_size) if ny > 1 else 1
    return bw, bh, fw, fh


def mesh_statistics(data, *, valid=None, wvar=None, wthresh=BIG, back_size=64,
                    filter_size=3, filter_thresh=0.0, weight_stats=True):
    """SExtractor's mesh background statistics of an image.

    Parameters
    ----------
    data : 2-D ndarray
        The image (converted to native float32; not modified).
    valid : 2-D bool ndarray, optional
        Pixels that may be used (False: no data).  Default all.
    wvar : 2-D ndarray, optional
        Weight-derived variance map on the same grid.  When given, pixels
        with ``wvar >= wthresh`` are left out of the image statistics, and
        the same statistics are computed for ``wvar`` itself (needed for
        ``MAP_WEIGHT`` rescaling), as SExtractor's ``makeback`` does.
    wthresh : float
        Variance threshold above which a pixel counts as unweighted.
    back_size, filter_size, filter_thresh
        ``BACK_SIZE``, ``BACK_FILTERSIZE``, ``BACK_FILTTHRESH``.
    weight_stats : bool
        Compute the statistics of ``wvar`` (False: ``wvar`` only excludes
        pixels, and ``weight`` is None; they are needed only to rescale
        relative weights).

    Returns
    -------
    image : MeshStatistics
    weight : MeshStatistics or None
        Statistics of ``wvar`` (None when it is not given).
    """
    data = _parallel.readonly(np.ascontiguousarray(data, dtype=np.float32))
    if data.ndim != 2:
        raise ValueError(f"background: expected a 2-D image, got shape {data.shape}")
    # a 1x1 `valid` tells the kernels that every pixel has data
    valid = _parallel.readonly(np.ones((1, 1), bool) if valid is None
                               else np.ascontiguousarray(valid, dtype=bool))
    use_w = wvar is not None
    want_w = use_w and bool(weight_stats)
    w = _parallel.readonly(np.ascontiguousarray(wvar, dtype=np.float32) if use_w
                           else np.zeros((1, 1), np.float32))
    bw, bh, fw, fh = _mesh_geometry(data.shape, back_size, filter_size)
    back, sigma, wback, wsigma = _mesh_grid_stats(data, valid, w, use_w, want_w,
                                                  np.float32(wthresh), bw, bh)
    fthresh = np.float32(filter_thresh)
    fb, fs, bmean, bsig = _filterback(back, sigma, fw, fh, fthresh)
    image = MeshStatistics(fb, fs, float(bmean), float(bsig), (bw, bh))
    weight = None
    if want_w:
        wfb, wfs, wbmean, wbsig = _filterback(wback, wsigma, fw, fh, fthresh)
        weight = MeshStatistics(wfb, wfs, float(wbmean), float(wbsig), (bw, bh))
    return image, weight


def estimate_background(data, params, *, valid=None, mesh=None, want_rms=False):
    """The background to subtract, as ``BACK_TYPE`` asks.

    Parameters
    ----------
    data : 2-D ndarray of float32
        Science image (native byte order).
    params : Params
        Uses ``BACK_TYPE``, ``BACK_VALUE``, ``BACK_SIZE``, ``BACK_FILTERSIZE``,
        ``BACK_FILTTHRESH``.
    valid : 2-D bool ndarray, optional
        Pixels with data and weight (others are left out of the statistics).
    mesh : MeshStatistics, optional
        Mesh statistics already computed for ``data`` / ``valid``.
    want_rms : bool
        Also return the full-resolution background-rms map (SExtractor's
        ``BACKGROUND_RMS`` check image, whatever ``BACK_TYPE``).

    Returns
    -------
    BackgroundResult
    """
    back_type = params["BACK_TYPE"][0].upper()
    if back_type not in ("AUTO", "MANUAL"):
        raise ValueError(f"BACK_TYPE must be AUTO or MANUAL, got {params['BACK_TYPE'][0]!r}")
    if mesh is None:
        mesh, _ = mesh_statistics(data, valid=valid, back_size=params["BACK_SIZE"],
                                  filter_size=params["BACK_FILTERSIZE"],
                                  filter_thresh=params["BACK_FILTTHRESH"])
    shape = np.shape(data)
    rms = background_map(mesh.sigma, shape, mesh.mesh_size) if want_rms else None
    if back_type == "MANUAL":
        value = float(params["BACK_VALUE"][0]) if params["BACK_VALUE"] else 0.0
        # a read-only constant view: no memory for a constant map
        background = np.broadcast_to(np.float32(value), shape)
        return BackgroundResult(background, value, mesh.backsig, rms, mesh)
    background = background_map(mesh.back, shape, mesh.mesh_size)
    return BackgroundResult(background, mesh.backmean, mesh.backsig, rms, mesh)
