"""The global background of a mosaic, computed in strips and evaluated on any window.

SExtractor's background (``BACK_TYPE AUTO``) is a property of the whole image:
mesh statistics on a global grid of ``BACK_SIZE`` cells, a median filter over
the mesh grid, and natural bicubic splines through the mesh nodes.  A tile
that computed its own mesh would see a different grid, different median
filtering at its edges and different splines: seams.  So galseg computes the
mesh grid once, over the whole mosaic, one row of meshes at a time (the mesh
statistics of a row of cells need only those image rows: SExtractor's own
``makeback`` reads the image the same way), and every tile evaluates the
splines of that one global grid on its own pixels.

`global_mesh` runs the mesh pass over full-width strips read from disk (the
image is never in memory), with exactly the pixel preparation of
`galseg.extract.engine.detect_sources` (no-data pixels, weight-derived
variance and ``WEIGHT_THRESH``), so that the mesh, ``backsig``, the global
background and the ``MAP_WEIGHT`` rescaling factor are those of an untiled run.
`background_window` evaluates the mesh splines on a window bit for bit as
sep's ``Background.back()`` / ``rms()`` (``background.c``:
``makebackspline`` + ``bkg_line_flt_internal``), which the untiled engine
subtracts: a tiled run subtracts the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from ..extract.background import (
    BIG,
    MeshStatistics,
    _filterback,
    _mesh_geometry,
    _mesh_grid_stats,
    _spline_y,
)
from ..extract._parallel import readonly
from ..extract.weights import WEIGHT_TYPES, raw_variance, rescale_factor, weight_threshold

__all__ = ["GlobalBackground", "global_mesh", "mesh_rows", "mesh_row_count", "finish_mesh",
           "background_window", "SplineGrid", "prepare_pixels"]

F32 = np.float32


@dataclass
class GlobalBackground:
    """Global background statistics of a mosaic (what every tile needs).

    Attributes
    ----------
    image_mesh : MeshStatistics
        Filtered mesh grid of the science image (``back``, ``sigma``,
        ``backmean``, ``backsig``).
    weight_mesh : MeshStatistics or None
        Mesh grid of the weight-derived variance (weighted runs).
    weight_type : str
        ``WEIGHT_TYPE`` (upper case).
    wthresh : float
        ``WEIGHT_THRESH`` in variance units.
    sigfac : float
        The variance-map rescaling factor applied (1 unless ``MAP_WEIGHT`` /
        ``MAP_VAR`` with ``RESCALE_WEIGHTS``).
    sigfac_measured : float or None
        The factor measured from the meshes (``MAP_WEIGHT`` / ``MAP_VAR``).
    backsig : float
        The global background sigma used for detection and measurement.
    shape : tuple of int
        Image shape.
    """

    image_mesh: MeshStatistics
    weight_mesh: MeshStatistics | None
    weight_type: str
    wthresh: float
    sigfac: float
    sigfac_measured: float | None
    backsig: float
    shape: tuple[int, int]


def prepare_pixels(sci, wmap, mask, weight_type):
    """The engine's pixel preparation of a block of rows.

    Returns ``(image, hard, wvar0, nodata)``: the science values as float32
    with no-data pixels zeroed, the no-data mask (non-finite or masked), the
    raw variance (``BIG`` where unusable; None without weight map) and the
    weight map's own no-data mask.
    """
    image = np.array(sci, dtype=np.float32, order="C", copy=True)
    hard = ~np.isfinite(image)
    if mask is not None:
        hard |= np.asarray(mask, dtype=bool)
    image[hard] = 0.0
    wvar0 = nodata = None
    if wmap is not None:
        wvar0, nodata = raw_variance(weight_type, wmap)
        wvar0[hard] = F32(BIG)
    return image, hard, wvar0, nodata


def mesh_rows(read_rows, shape, params, j0, j1):
    """Raw (unfiltered) mesh statistics of mesh rows ``j0..j1``.

    ``read_rows(y0, y1) -> (sci, wmap, mask)`` gives full-width image rows.
    Returns ``(back, sigma, wback, wsigma)``, each ``(j1 - j0, nx)`` float32
    (the weight ones are None without a weight map).
    """
    height, width = shape
    wtype = params["WEIGHT_TYPE"][0].upper()
    use_w = WEIGHT_TYPES.get(wtype) is not None
    wthresh = weight_threshold(wtype, params) if use_w else float(F32(BIG))
    bw, bh, _, _ = _mesh_geometry(shape, params["BACK_SIZE"], params["BACK_FILTERSIZE"])
    y0, y1 = j0 * bh, min(height, j1 * bh)
    sci, wmap, mask = read_rows(y0, y1)
    image, hard, wvar0, _ = prepare_pixels(sci, wmap, mask, wtype)
    del sci, wmap, mask
    w = wvar0 if use_w else np.zeros((1, 1), np.float32)
    # On a full-width strip whose height is a multiple of the mesh height,
    # the mesh statistics are rows of the global grid: a mesh row reads only
    # its own image rows (and the image width, for SExtractor's line
    # sub-sampling of wide images).
    b, s, wb, ws = _mesh_grid_stats(readonly(image), readonly(~hard), readonly(w), use_w, use_w,
                                    np.float32(wthresh), bw, bh)
    return b, s, (wb if use_w else None), (ws if use_w else None)


def mesh_row_count(shape, params) -> int:
    """Number of mesh rows of the global grid."""
    _, bh, _, _ = _mesh_geometry(shape, params["BACK_SIZE"], params["BACK_FILTERSIZE"])
    return (shape[0] - 1) // bh + 1


def finish_mesh(rows, shape, params) -> GlobalBackground:
    """Filter the assembled raw mesh grid and derive the global quantities.

    ``rows`` is the list of `mesh_rows` results covering the grid, in order.
    """
    wtype = params["WEIGHT_TYPE"][0].upper()
    if wtype not in WEIGHT_TYPES:
        raise ValueError(f"WEIGHT_TYPE {params['WEIGHT_TYPE'][0]!r} is not supported by the sep "
                         f"engine; use one of {', '.join(WEIGHT_TYPES)}")
    use_w = WEIGHT_TYPES[wtype] is not None
    wthresh = weight_threshold(wtype, params) if use_w else float(F32(BIG))
    bw, bh, fw, fh = _mesh_geometry(shape, params["BACK_SIZE"], params["BACK_FILTERSIZE"])
    back = np.concatenate([r[0] for r in rows])
    sigma = np.concatenate([r[1] for r in rows])
    fthresh = np.float32(params["BACK_FILTTHRESH"])
    fb, fs, bmean, bsig = _filterback(back, sigma, fw, fh, fthresh)
    image_mesh = MeshStatistics(fb, fs, float(bmean), float(bsig), (bw, bh))
    weight_mesh = None
    if use_w:
        wback = np.concatenate([r[2] for r in rows])
        wsigma = np.concatenate([r[3] for r in rows])
        wfb, wfs, wbmean, wbsig = _filterback(wback, wsigma, fw, fh, fthresh)
        weight_mesh = MeshStatistics(wfb, wfs, float(wbmean), float(wbsig), (bw, bh))
    backsig = image_mesh.backsig
    sigfac, measured = 1.0, None
    if wtype in ("MAP_WEIGHT", "MAP_VAR"):
        measured = rescale_factor(image_mesh, weight_mesh)
        if params["RESCALE_WEIGHTS"]:
            sigfac = measured
        else:
            backsig = float(np.float32(backsig) / np.float32(measured))
    return GlobalBackground(image_mesh, weight_mesh, wtype, float(wthresh), float(sigfac),
                            None if measured is None else float(measured), float(backsig),
                            (int(shape[0]), int(shape[1])))


def global_mesh(read_rows, shape, params, *, strip_meshes=None) -> GlobalBackground:
    """Mesh statistics of the whole image, one strip of mesh rows at a time.

    Parameters
    ----------
    read_rows : callable
        ``read_rows(y0, y1) -> (sci, wmap, mask)``: full-width rows ``y0..y1``
        of the science image, the weight map ``WEIGHT_TYPE`` needs (None
        without one) and the extra mask (None).
    shape : (int, int)
        Image shape.
    params : Params
    strip_meshes : int, optional
        Mesh rows per strip (default: about 64 MB of science pixels).

    Returns
    -------
    GlobalBackground
    """
    ny = mesh_row_count(shape, params)
    _, bh, _, _ = _mesh_geometry(shape, params["BACK_SIZE"], params["BACK_FILTERSIZE"])
    if strip_meshes is None:
        strip_meshes = max(1, int(64e6 // (4 * shape[1] * bh)))
    rows = [mesh_rows(read_rows, shape, params, j0, min(ny, j0 + strip_meshes))
            for j0 in range(0, ny, strip_meshes)]
    return finish_mesh(rows, shape, params)


# --------------------------------------------------------------------------- splines
@numba.njit(cache=True)
def _column_table(width, bw, nbx):
    """Per column: the spline segment and its ``dx``, accumulated in single
    precision along the row exactly as sep's loop does."""
    seg = np.zeros(width, np.int64)
    dxs = np.zeros(width, np.float32)
    xstep = F32(1.0 / bw)
    changepoint = bw // 2
    dx = (xstep - F32(1.0)) / F32(2.0)
    dx0 = F32((bw + 1) % 2) * xstep / F32(2.0)
    blo = 0
    x = 0
    i = 0
    for j in range(width):
        if i == changepoint and x > 0 and x < nbx - 1:
            blo += 1
            dx = dx0
        seg[j] = blo
        dxs[j] = dx
        if i == bw:
            x += 1
            i = 0
        i += 1
        dx = dx + xstep
    return seg, dxs


@numba.njit(cache=True)
def _eval_rows(values, dvalues, bh, y0, y1, x0, x1, seg, dxs, out):
    """Bicubic-spline background on rows y0..y1, columns x0..x1 (sep's
    ``bkg_line_flt_internal``, single precision throughout)."""
    nby, nbx = values.shape
    node = np.empty(nbx, np.float32)
    dnode = np.zeros(nbx, np.float32)
    u = np.zeros(max(nbx - 1, 1), np.float32)
    for y in range(y0, y1):
        if nby > 1:
            dy = F32(np.float64(F32(y) / F32(bh)) - 0.5)
            yl = int(dy)
            dy = dy - F32(yl)
            if yl < 0:
                yl = 0
                dy = F32(np.float64(dy) - 1.0)
            elif yl >= nby - 1:
                yl = 0 if nby < 2 else nby - 2
                dy = F32(np.float64(dy) + 1.0)
            cdy = F32(1.0) - dy
            dy3 = dy * dy * dy - dy
            cdy3 = cdy * cdy * cdy - cdy
            for x in range(nbx):
                node[x] = (cdy * values[yl, x] + dy * values[yl + 1, x]
                           + cdy3 * dvalues[yl, x] + dy3 * dvalues[yl + 1, x])
            if nbx > 1:
                dnode[0] = F32(0.0)
                u[0] = F32(0.0)
                for x in range(1, nbx - 1):
                    temp = F32(-1.0) / (dnode[x - 1] + F32(4.0))
                    dnode[x] = temp
                    temp = temp * (u[x - 1] - F32(6.0) * (node[x + 1] + node[x - 1]
                                                          - F32(2.0) * node[x]))
                    u[x] = temp
                dnode[nbx - 1] = F32(0.0)
                for x in range(nbx - 2, 0, -1):
                    dnode[x] = F32(np.float64(dnode[x] * dnode[x + 1] + u[x]) / 6.0)
        else:
            # one mesh row: the node values, and sep's (zero) y derivatives
            for x in range(nbx):
                node[x] = values[0, x]
                dnode[x] = dvalues[0, x]
        r = y - y0
        if nbx > 1:
            for x in range(x0, x1):
                b = seg[x]
                dx = dxs[x]
                cdx = F32(1.0) - dx
                out[r, x - x0] = (cdx * (node[b] + (cdx * cdx - F32(1.0)) * dnode[b])
                                  + dx * (node[b + 1] + (dx * dx - F32(1.0)) * dnode[b + 1]))
        else:
            for x in range(x0, x1):
                out[r, x - x0] = node[0]


@dataclass
class SplineGrid:
    """A mesh grid ready for spline evaluation (node values + y derivatives)."""

    values: np.ndarray
    dvalues: np.ndarray
    mesh_size: tuple[int, int]
    width: int

    @classmethod
    def from_mesh(cls, grid, mesh_size, width) -> "SplineGrid":
        v = np.ascontiguousarray(grid, dtype=np.float32)
        return cls(v, _spline_y(v), (int(mesh_size[0]), int(mesh_size[1])), int(width))

    def evaluate(self, y0, y1, x0, x1) -> np.ndarray:
        """The interpolated map on rows ``y0..y1``, columns ``x0..x1`` (float32)."""
        bw, bh = self.mesh_size
        nbx = self.values.shape[1]
        seg, dxs = _column_table(self.width, bw, nbx)
        out = np.empty((y1 - y0, x1 - x0), np.float32)
        _eval_rows(self.values, self.dvalues, bh, int(y0), int(y1), int(x0), int(x1),
                   seg, dxs, out)
        return out


def background_window(glob: GlobalBackground, params, y0, y1, x0, x1, *, rms=False):
    """The background (or background-rms) map the engine subtracts, on a window.

    ``BACK_TYPE MANUAL``: the constant ``BACK_VALUE``.  ``AUTO``: the spline
    interpolation of the global mesh grid, identical to sep's full-image map
    on the same pixels.  ``rms=True`` gives the interpolated mesh-sigma map
    (needed for ``WEIGHT_TYPE BACKGROUND``), whatever ``BACK_TYPE``.
    """
    back_type = params["BACK_TYPE"][0].upper()
    mesh = glob.image_mesh
    if not rms and back_type == "MANUAL":
        value = float(params["BACK_VALUE"][0]) if params["BACK_VALUE"] else 0.0
        return np.full((y1 - y0, x1 - x0), np.float32(value), dtype=np.float32)
    if not rms and back_type != "AUTO":
        raise ValueError(f"BACK_TYPE must be AUTO or MANUAL, got {params['BACK_TYPE'][0]!r}")
    grid = SplineGrid.from_mesh(mesh.sigma if rms else mesh.back, mesh.mesh_size,
                                glob.shape[1])
    return grid.evaluate(y0, y1, x0, x1)
