"""One window of a tiled extraction: the engine's steps, with global inputs.

Each task reads its window from the input files and reproduces, on the
window's pixels, what `galseg.extract.engine.detect_sources` computes on the
whole image, but with the image-wide quantities handed in from the global
pass (`galseg.tiling.background.GlobalBackground`): the background map
evaluated from the global mesh, ``backsig``, the weight rescaling factor.
Detection (sep), SExtractor's pixel lists and pixel sharing, the per-object
analysis and the measurement then run on the window.

Three task bodies, one per round of `galseg.tiling.run`:

`scan_window`
    Detect; report the detections the window owns (complete, anchored in its
    core) with their number of children and the number of ``rand()`` draws
    SExtractor's pixel sharing makes for them, and the incomplete ones.
`analyse_window`
    Detect again; share the pixels of the owned detections with the random
    stream positioned where the untiled run has it (known once every
    detection's number of draws is known); return the per-object analysis
    CLEAN needs, in image coordinates.
`finish_window`
    Detect again; relabel every complete detection with the catalogue
    ``NUMBER`` of its final object (after the global CLEAN); write the owned
    detections into the segmentation map and the core's background; measure
    the objects this window is responsible for, checking that everything each
    measurement reads lies in the window's reliable zone (otherwise the object
    is handed back, to be measured in a larger window).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np

from ..extract.background import BIG, MeshStatistics
from ..extract.clean import analyse_detections
from ..extract.detect import _glibc_srand as _srand
from ..extract.detect import _share_pixels, detect_image
from ..extract.params import Params
from ..extract.weights import interpolate_bad, noise_map, rescale_variance
from .background import GlobalBackground, background_window, prepare_pixels
from .io import FitsOutput, ImageSource
from .plan import Margins, TilePlan, Window

__all__ = ["TileContext", "ScanTask", "AnalyseTask", "FinishTask", "scan_window",
           "analyse_window", "finish_window", "glibc_state", "advance_state",
           "POSITION_COLUMNS", "PROPS_POSITION_FIELDS"]

F32 = np.float32
_F32_CENTRES = True

#: Catalogue columns holding pixel x / y positions (shifted between frames).
POSITION_COLUMNS = {
    "x": ("X_IMAGE", "XWIN_IMAGE", "XMIN_IMAGE", "XMAX_IMAGE", "XPEAK_IMAGE",
          "XCPEAK_IMAGE", "X_IMAGE_DBL", "XPSF_IMAGE", "XMODEL_IMAGE"),
    "y": ("Y_IMAGE", "YWIN_IMAGE", "YMIN_IMAGE", "YMAX_IMAGE", "YPEAK_IMAGE",
          "YCPEAK_IMAGE", "Y_IMAGE_DBL", "YPSF_IMAGE", "YMODEL_IMAGE"),
}
#: Fields of the analysis / object tables holding pixel positions.
PROPS_POSITION_FIELDS = {
    "x": ("x", "xmin", "xmax", "xcpeak", "xpeak"),
    "y": ("y", "ymin", "ymax", "ycpeak", "ypeak"),
}


# --------------------------------------------------------------------------- context
@dataclass
class TileContext:
    """Everything a window task needs besides its window (picklable)."""

    params: Params
    shape: tuple[int, int]
    sci: ImageSource
    weight: ImageSource | None
    mask: ImageSource | None
    glob: GlobalBackground
    margins: Margins
    plan: TilePlan
    kernel: np.ndarray | None
    gain: float
    header: Any = None
    measure_params: Params | None = None
    seg_out: FitsOutput | None = None
    bkg_out: FitsOutput | None = None


@dataclass
class _State:
    """A window after detection (window coordinates)."""

    win: Window
    data: np.ndarray
    varmap: np.ndarray | None
    rms: np.ndarray
    hard: np.ndarray
    background: np.ndarray
    det: Any
    weighted: bool
    boxes: np.ndarray        # per chain: ymin, ymax, xmin, xmax, xr (window coordinates)
    keys: np.ndarray         # per chain: global anchor key
    complete: np.ndarray     # per chain
    nchild: np.ndarray       # per chain
    first_obj: np.ndarray    # per chain: first object index (or -1)


def _read(ctx: TileContext, win: Window):
    sci = ctx.sci.read(win.y0, win.y1, win.x0, win.x1)
    wmap = None if ctx.weight is None else ctx.weight.read(win.y0, win.y1, win.x0, win.x1)
    mask = None if ctx.mask is None else ctx.mask.read(win.y0, win.y1, win.x0, win.x1, bool)
    return sci, wmap, mask


@numba.njit(cache=True)
def _chain_boxes(coff, cpix, width):
    """Per chain: ymin, ymax, xmin, xmax and the anchor x (rightmost pixel of
    the last row, where SExtractor's scan completes the detection)."""
    n = coff.size - 1
    out = np.empty((n, 5), np.int64)
    for k in range(n):
        y0 = 1 << 40
        y1 = -1
        x0 = 1 << 40
        x1 = -1
        for q in range(coff[k], coff[k + 1]):
            p = cpix[q]
            y = p // width
            x = p - y * width
            y0 = min(y0, y)
            x0 = min(x0, x)
            x1 = max(x1, x)
            y1 = max(y1, y)
        xr = -1
        for q in range(coff[k], coff[k + 1]):
            p = cpix[q]
            y = p // width
            if y == y1:
                xr = max(xr, p - y * width)
        out[k, 0] = y0
        out[k, 1] = y1
        out[k, 2] = x0
        out[k, 3] = x1
        out[k, 4] = xr
    return out


def _extract(ctx: TileContext, win: Window) -> _State:
    """Background, weights, filtering, threshold and sep detection on a window,
    as `~galseg.extract.engine.detect_sources` does on the whole image."""
    params = ctx.params
    glob = ctx.glob
    wtype = glob.weight_type
    sci, wmap, mask = _read(ctx, win)
    image, hard, wvar0, nodata = prepare_pixels(sci, wmap, mask, wtype)
    del sci
    background = background_window(glob, params, win.y0, win.y1, win.x0, win.x1)
    wthresh = glob.wthresh
    data = image
    data -= background
    varmap = None
    need_rms_map = wtype == "BACKGROUND"
    if wmap is not None:
        varmap = rescale_variance(wtype, wvar0, wmap, nodata, glob.sigfac)
    elif need_rms_map:
        bkg_rms = background_window(glob, params, win.y0, win.y1, win.x0, win.x1, rms=True)
        varmap = np.square(bkg_rms, dtype=np.float32)
    del wmap, wvar0, nodata
    if varmap is not None:
        varmap[hard] = F32(BIG)
        interp = params["INTERP_TYPE"][0].upper() if params["INTERP_TYPE"] else "NONE"
        if interp not in ("NONE", "VAR_ONLY", "ALL"):
            raise ValueError(f"INTERP_TYPE must be NONE, VAR_ONLY or ALL, got {interp!r}")
        if interp != "NONE" and wtype != "BACKGROUND":
            interpolate_bad(data, varmap, wthresh, xlag=params["INTERP_MAXXLAG"],
                            ylag=params["INTERP_MAXYLAG"], with_data=(interp == "ALL"))
        rms = noise_map(varmap, hard)
    else:
        rms = np.full(data.shape, F32(glob.backsig), dtype=np.float32)
        rms[hard] = np.inf
    data[hard] = 0.0
    weighted = varmap is not None
    det, _, _ = detect_image(data, params, kernel=ctx.kernel, var=varmap, backsig=glob.backsig)

    h, w = ctx.shape
    boxes = _chain_boxes(det.chain_off, det.chain_pix, data.shape[1])
    keys = (boxes[:, 1] + win.y0) * np.int64(w) + (boxes[:, 4] + win.x0)
    ylo, yhi, xlo, xhi = win.inner(ctx.shape, ctx.margins)
    gy0, gy1 = boxes[:, 0] + win.y0, boxes[:, 1] + win.y0
    gx0, gx1 = boxes[:, 2] + win.x0, boxes[:, 3] + win.x0
    complete = (gy0 >= ylo) & (gy1 <= yhi) & (gx0 >= xlo) & (gx1 <= xhi)
    nchains = len(boxes)
    nchild = np.bincount(det.parent, minlength=nchains).astype(np.int64) if nchains else \
        np.zeros(0, np.int64)
    first_obj = np.full(nchains, -1, np.int64)
    if len(det.parent):
        starts = np.flatnonzero(np.r_[True, det.parent[1:] != det.parent[:-1]])
        first_obj[det.parent[starts]] = starts
    return _State(win, data, varmap, rms, hard, background, det, weighted, boxes, keys,
                  complete, nchild, first_obj)


# --------------------------------------------------------------------------- random stream
@numba.njit(cache=True)
def _advance(state, count):
    """Draw ``count`` numbers from glibc's ``random()`` ring (the state layout of
    `galseg.extract.detect`: the last 34 values and the ring position)."""
    pos = state[34]
    for _ in range(count):
        v = (state[(pos + 3) % 34] + state[(pos + 31) % 34]) & 0xFFFFFFFF
        state[pos] = v
        pos = (pos + 1) % 34
    state[34] = pos


def glibc_state(seed: int = 1) -> np.ndarray:
    """glibc's ``random()`` state after ``srand(seed)`` (35 int64)."""
    return _srand(int(seed))


@numba.njit(cache=True)
def _states_at(offsets):
    """States of the stream after ``offsets[i]`` draws (offsets increasing)."""
    n = offsets.size
    out = np.zeros((n, 35), np.int64)
    st = _srand(1)
    done = 0
    for i in range(n):
        _advance(st, offsets[i] - done)
        done = offsets[i]
        out[i] = st
    return out


def advance_state(offsets: np.ndarray) -> np.ndarray:
    """The random-stream state before each of a sorted list of draw counts."""
    return _states_at(np.ascontiguousarray(offsets, dtype=np.int64))


# --------------------------------------------------------------------------- pixel sharing
def _share(st: _State, params, states: dict[int, np.ndarray] | None):
    """SExtractor's pixel lists and sharing for every object of the window.

    As `~galseg.extract.detect.sextractor_pixel_lists`, except that each
    deblended detection draws from the random stream at its own position in
    the untiled run's sequence: ``states[chain]`` (a state array), or from a
    fresh stream when it is not given (then only the number of draws is of
    use).  ``st.det.segmap`` is relabelled in place.

    Returns
    -------
    offsets, index, chain_index, centre, ncalls, ok : ndarrays
        The CSR pixel lists (pixels and their places in ``det.chain_pix``),
        core barycentres, the number of draws of each detection (on its first
        object) and the sharing status per object.
    """
    det = st.det
    objs = det.objects
    n = len(objs)
    width = det.segmap.shape[1]
    if n == 0:
        return (np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64),
                np.zeros((0, 2)), np.zeros(0, np.int64), np.zeros(0, np.int64))
    seg = det.segmap.reshape(-1)
    if not np.shares_memory(seg, det.segmap):
        raise RuntimeError("segmentation map must be C-contiguous")
    data = np.ascontiguousarray(st.data, np.float32).reshape(-1)
    coff, cpix = det.chain_off, det.chain_pix
    pk = np.ascontiguousarray(det.parent, np.int64)
    objx = np.ascontiguousarray(objs["x"], np.float64)
    objy = np.ascontiguousarray(objs["y"], np.float64)
    xn = int(params["DEBLEND_NTHRESH"])
    weighted = bool(st.weighted)

    starts = np.flatnonzero(np.r_[True, pk[1:] != pk[:-1]])
    stops = np.r_[starts[1:], n]
    multi = (stops - starts) > 1
    # segments: each deblended detection alone, runs of single-object ones together
    bounds = np.unique(np.r_[0, starts[multi], stops[multi], n])
    chain_size = coff[1:] - coff[:-1]
    out_off = np.zeros(n + 1, np.int64)
    out_idx = np.zeros(int(coff[-1]), np.int64)
    out_q = np.zeros(int(coff[-1]), np.int64)
    centre = np.full((n, 2), np.nan)
    ok = np.zeros(n, np.int64)
    ncalls = np.zeros(n, np.int64)
    multi_start = set(starts[multi].tolist())
    fill = 0
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        chains = np.unique(pk[a:b])
        size = int(chain_size[chains].sum())
        o_off = np.zeros(b - a + 1, np.int64)
        is_multi = a in multi_start
        if is_multi:
            k = int(pk[a])
            rng = states.get(k) if states else None
            rng = _srand(1) if rng is None else np.array(rng, dtype=np.int64, copy=True)
            pix = cpix[coff[k]:coff[k + 1]]
            lab = seg[pix]
            seg[pix] = np.where(lab > 0, lab - a, 0)  # labels local to the call
        else:
            rng = _srand(1)
        _share_pixels(seg, width, det.chain_filtered, data, det.chain_thresh, weighted, coff,
                      cpix, pk[a:b], objx[a:b], objy[a:b], xn, rng, o_off,
                      out_idx[fill:fill + size], out_q[fill:fill + size], centre[a:b], ok[a:b],
                      ncalls[a:b])
        if is_multi:
            lab = seg[pix]
            seg[pix] = np.where(lab > 0, lab + a, 0)
        out_off[a:b + 1] = o_off + fill
        fill += int(o_off[-1])
    return out_off, out_idx[:fill], out_q[:fill], centre, ncalls, ok


# --------------------------------------------------------------------------- round 1
@dataclass
class ScanTask:
    """Round 1: detect in a window and report its detections."""

    ctx: TileContext
    win: Window

    @property
    def label(self) -> str:
        return f"{self.win.kind} {self.win.index} [{self.win.y0}:{self.win.y1}, " \
               f"{self.win.x0}:{self.win.x1}]"


@dataclass
class ScanResult:
    """Detections owned by a window (image coordinates) and incomplete ones."""

    window: int
    keys: np.ndarray        # owned: anchor keys
    boxes: np.ndarray       # owned: (ymin, ymax, xmin, xmax)
    nchild: np.ndarray      # owned: number of objects
    ncalls: np.ndarray      # owned: rand() draws of the pixel sharing
    incomplete: np.ndarray  # (ymin, ymax, xmin, xmax) of incomplete ones meeting the core
    nobj: int = 0


def _owned(ctx: TileContext, st: _State) -> np.ndarray:
    """Complete detections this window is responsible for."""
    win = st.win
    h, w = ctx.shape
    ay = st.keys // w
    ax = st.keys % w
    if win.core is not None:
        cy0, cy1, cx0, cx1 = win.core
        return st.complete & (ay >= cy0) & (ay < cy1) & (ax >= cx0) & (ax < cx1)
    # a larger window owns what no tile can see whole
    if not len(ay):
        return np.zeros(0, bool)
    g = st.boxes + np.array([win.y0, win.y0, win.x0, win.x0, win.x0])
    tile = ctx.plan.tile_of(ay, ax)
    seen = ctx.plan.tile_complete(tile, g[:, 0], g[:, 1], g[:, 2], g[:, 3], ctx.margins)
    return st.complete & ~seen


def scan_window(task: ScanTask) -> ScanResult:
    """Round 1 task body (see the module docstring)."""
    ctx, win = task.ctx, task.win
    st = _extract(ctx, win)
    *_, ncalls, _ = _share(st, ctx.params, None)
    owned = _owned(ctx, st)
    off = np.array([win.y0, win.y0, win.x0, win.x0])
    gboxes = st.boxes[:, :4] + off
    chain_calls = np.zeros(len(st.keys), np.int64)
    has = st.first_obj >= 0
    chain_calls[has] = ncalls[st.first_obj[has]]
    # incomplete detections in the region the window is responsible for
    b = gboxes[~st.complete]
    if win.core is not None:
        cy0, cy1, cx0, cx1 = win.core
        meets = (b[:, 1] >= cy0) & (b[:, 0] < cy1) & (b[:, 3] >= cx0) & (b[:, 2] < cx1)
    elif win.focus is not None:
        fy0, fy1, fx0, fx1 = win.focus
        meets = (b[:, 1] >= fy0) & (b[:, 0] <= fy1) & (b[:, 3] >= fx0) & (b[:, 2] <= fx1)
    else:
        meets = np.ones(len(b), bool)
    incomplete = b[meets]
    return ScanResult(win.index, st.keys[owned], gboxes[owned], st.nchild[owned],
                      chain_calls[owned], incomplete, len(st.det.objects))


# --------------------------------------------------------------------------- round 2
@dataclass
class AnalyseTask:
    """Round 2: per-object analysis of the detections a window owns."""

    ctx: TileContext
    win: Window
    keys: np.ndarray         # owned chains (sorted)
    first_raw: np.ndarray    # their first global object index
    chain_index: np.ndarray  # their global chain index
    states: np.ndarray       # (n, 35) stream states (rows of chains with draws)
    has_state: np.ndarray    # bool per chain

    @property
    def label(self) -> str:
        return ScanTask(self.ctx, self.win).label


@dataclass
class AnalyseResult:
    raw_index: np.ndarray    # global object index of each row
    chain_index: np.ndarray  # global chain (parent) index
    parent_ymin: np.ndarray
    parent_ymax: np.ndarray
    props: np.ndarray        # analysis fields, image coordinates
    objects: np.ndarray      # sep's object rows, image coordinates
    kept_sep: int = 0


def _match(st: _State, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Window chains whose key is in ``keys`` (sorted): (window chain, row in keys)."""
    if not len(keys) or not len(st.keys):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    pos = np.searchsorted(keys, st.keys)
    pos = np.minimum(pos, len(keys) - 1)
    hit = (keys[pos] == st.keys) & st.complete
    return np.flatnonzero(hit), pos[hit]


def _shift(arr, dx, dy, fields):
    out = arr.copy()
    names = out.dtype.names
    for f in fields["x"]:
        if f in names:
            out[f] = out[f] + dx
    for f in fields["y"]:
        if f in names:
            out[f] = out[f] + dy
    return out


def _back_at(mesh: MeshStatistics, x, y):
    """Bilinear mesh background at pixels (vectorised ``back()`` of back.c, as
    `galseg.extract.clean` evaluates it for ``BACKGROUND``)."""
    back = mesh.back
    ny, nx = back.shape
    bw, bh = mesh.mesh_size
    dx = np.asarray(x, np.float64) / bw - 0.5
    dy = np.asarray(y, np.float64) / bh - 0.5
    xl = dx.astype(np.int64)
    yl = dy.astype(np.int64)
    dx = dx - xl
    dy = dy - yl
    lo_x, hi_x = xl < 0, xl >= nx - 1
    dx = np.where(lo_x, dx - 1.0, np.where(hi_x, dx + 1.0, dx))
    xl = np.where(lo_x, 0, np.where(hi_x, 0 if nx < 2 else nx - 2, xl))
    lo_y, hi_y = yl < 0, yl >= ny - 1
    dy = np.where(lo_y, dy - 1.0, np.where(hi_y, dy + 1.0, dy))
    yl = np.where(lo_y, 0, np.where(hi_y, 0 if ny < 2 else ny - 2, yl))
    cdx = 1 - dx
    b0 = back[yl, xl].astype(np.float64)
    b1 = b0 if nx < 2 else back[yl, xl + 1].astype(np.float64)
    if ny < 2:
        b2 = b1
        b3 = b1 if nx < 2 else b0
    else:
        b2 = back[yl + 1, xl + 1].astype(np.float64) if nx >= 2 else \
            back[yl + 1, xl].astype(np.float64)
        b3 = back[yl + 1, xl].astype(np.float64) if nx >= 2 else b2
    return ((1 - dy) * (cdx * b0 + dx * b1) + dy * (dx * b2 + cdx * b3)).astype(np.float32)


def analyse_window(task: AnalyseTask) -> AnalyseResult:
    """Round 2 task body (see the module docstring)."""
    ctx, win = task.ctx, task.win
    st = _extract(ctx, win)
    wc, row = _match(st, task.keys)
    if len(wc) != len(task.keys):
        missing = len(task.keys) - len(wc)
        raise RuntimeError(f"window {win.index}: {missing} owned detection(s) not found "
                           "complete on the second pass (internal error)")
    states = {int(c): task.states[int(r)] for c, r in zip(wc, row) if task.has_state[r]}
    off, idx, chain, centre, _, ok = _share(st, ctx.params, states)
    props = analyse_detections(st.det, st.data, ctx.params, backsig=ctx.glob.backsig,
                               mesh=ctx.glob.image_mesh, pixel_lists=(off, idx, chain),
                               centre=centre, gain=ctx.gain, weighted=st.weighted)
    det = st.det
    # owned objects, with their global index
    chain_row = np.full(len(st.keys), -1, np.int64)
    chain_row[wc] = row
    orow = chain_row[det.parent]
    sel = np.flatnonzero(orow >= 0)
    rank = sel - st.first_obj[det.parent[sel]]
    raw_index = task.first_raw[orow[sel]] + rank
    dx, dy = win.x0, win.y0
    props_g = _shift(props[sel], dx, dy, PROPS_POSITION_FIELDS)
    # BACKGROUND is the mesh background at the object's pixel, in image coordinates
    props_g["bkg"] = _back_at(ctx.glob.image_mesh, (props_g["x"] + 0.5).astype(np.int64),
                              (props_g["y"] + 0.5).astype(np.int64))
    objs_g = _shift(det.objects[sel], dx, dy, PROPS_POSITION_FIELDS)
    return AnalyseResult(raw_index, task.chain_index[orow[sel]], det.parent_ymin[sel] + dy,
                         det.parent_ymax[sel] + dy, props_g, objs_g,
                         int(np.count_nonzero(ok[sel] == 0)))


# --------------------------------------------------------------------------- round 3
@dataclass
class FinishTask:
    """Round 3: relabel, write the owned segments, measure.

    ``chain_keys`` (sorted) lists every detection whose box meets the window,
    with its first global object index, its objects' final labels
    (``labels[label_off[i]:label_off[i + 1]]``: the ``NUMBER`` of the object
    each was merged into, 0 if dropped), whether each was swallowed by
    CLEAN and the image row from which its pixels stay blanked all the same
    (``stuck_row``, `galseg.extract.engine.stuck_rows`); ``owned`` marks
    those this window writes.  ``objects`` are the
    catalogue rows (image coordinates) this window measures.
    """

    ctx: TileContext
    win: Window
    chain_keys: np.ndarray
    label_off: np.ndarray
    labels: np.ndarray
    swallowed: np.ndarray
    stuck_row: np.ndarray
    owned: np.ndarray
    states: np.ndarray
    has_state: np.ndarray
    objects: np.ndarray
    write_seg: bool = True
    write_bkg: bool = True

    @property
    def label(self) -> str:
        return ScanTask(self.ctx, self.win).label


@dataclass
class FinishResult:
    catalog: Any                       # astropy Table (image coordinates), or None
    deferred: np.ndarray               # NUMBERs handed back
    deferred_boxes: np.ndarray         # (ymin, ymax, xmin, xmax) each needs, image coords
    nwritten: int = 0
    info: dict = field(default_factory=dict)


def _footprints(ctx: TileContext, objs, cat):
    """Pixel box each measurement reads (window coordinates, inclusive), from
    the aperture, Kron, growth-curve and windowed-centroid radii SExtractor
    uses, and the object's (merged) segment."""
    p = ctx.params
    a = np.asarray(objs["a"], np.float64)
    x = np.asarray(objs["x"], np.float64)
    y = np.asarray(objs["y"], np.float64)
    aper = max([float(d) for d in p["PHOT_APERTURES"]] + [0.0]) / 2.0
    autop = tuple(p["PHOT_AUTOPARAMS"])
    autoapers = tuple(p["PHOT_AUTOAPERS"]) or (0.0,)
    aa0 = float(autoapers[0])
    aa1 = float(autoapers[1] if len(autoapers) > 1 else autoapers[0])
    r_first = np.maximum(6.0 * a, aa0 / 2.0)                 # Kron radius search
    r_growth = np.maximum(6.0 * a, aa0) + 1.5                # FLUX_RADIUS
    r = np.maximum(np.maximum(r_first, r_growth), aper)
    xw = x.copy()
    yw = y.copy()
    if cat is not None:
        kron = np.asarray(cat["KRON_RADIUS"], np.float64) if "KRON_RADIUS" in cat.colnames \
            else np.full(len(a), 6.0 * float(autop[0]))
        r = np.maximum(r, np.maximum(kron * a, aa1 / 2.0))   # AUTO aperture
        fr = None
        fracs = list(p["PHOT_FLUXFRAC"] or (0.5,))
        if "FLUX_RADIUS" in cat.colnames and 0.5 in fracs:
            frc = np.asarray(cat["FLUX_RADIUS"], np.float64)
            fr = frc if frc.ndim == 1 else frc[:, fracs.index(0.5)]
        hl = fr if fr is not None else r_growth
        rwin = 4.0 * 2.0 * np.abs(np.nan_to_num(hl, nan=0.0)) / 2.35
        if "XWIN_IMAGE" in cat.colnames:
            xw = np.asarray(cat["XWIN_IMAGE"], np.float64) - 1.0
            yw = np.asarray(cat["YWIN_IMAGE"], np.float64) - 1.0
            bad = ~(np.isfinite(xw) & np.isfinite(yw))
            xw = np.where(bad, x, xw)
            yw = np.where(bad, y, yw)
        r = np.maximum(r, rwin + np.hypot(xw - x, yw - y))
    else:
        r = np.maximum(r, 4.0 * 2.0 * r_growth / 2.35)
    r = r + 2.0
    x0 = np.minimum(np.floor(x - r), objs["xmin"])
    x1 = np.maximum(np.ceil(x + r), objs["xmax"])
    y0 = np.minimum(np.floor(y - r), objs["ymin"])
    y1 = np.maximum(np.ceil(y + r), objs["ymax"])
    if p["BACKPHOTO_TYPE"].upper() == "LOCAL":
        t = int(p["BACKPHOTO_THICK"]) + 2
        ox = (objs["xmax"] - objs["xmin"] + 1) // 4 + t
        oy = (objs["ymax"] - objs["ymin"] + 1) // 4 + t
        x0 = np.minimum(x0, objs["xmin"] - ox)
        x1 = np.maximum(x1, objs["xmax"] + ox)
        y0 = np.minimum(y0, objs["ymin"] - oy)
        y1 = np.maximum(y1, objs["ymax"] + oy)
    return np.stack([y0, y1, x0, x1], axis=1).astype(np.int64)


def finish_window(task: FinishTask) -> FinishResult:
    """Round 3 task body (see the module docstring)."""
    from ..extract.measure import measure

    ctx, win = task.ctx, task.win
    h, w = ctx.shape
    st = _extract(ctx, win)
    det = st.det
    nobj = len(det.objects)
    wc, row = _match(st, task.chain_keys)
    ncomplete = int(np.count_nonzero(st.complete))
    if len(wc) != ncomplete:
        raise RuntimeError(f"window {win.index}: {ncomplete - len(wc)} complete detection(s) "
                           "unknown to the global pass (internal error)")
    nlab = np.diff(task.label_off)
    if not np.array_equal(st.nchild[wc], nlab[row]):
        raise RuntimeError(f"window {win.index}: deblending differs from the owner window's "
                           "(internal error)")
    states = {int(c): task.states[int(r)] for c, r in zip(wc, row) if task.has_state[r]}
    _share(st, ctx.params, states)
    seg = det.segmap

    # final label of every object in the window (-1: its detection is incomplete here)
    final = np.full(nobj + 1, -1, np.int64)
    final[0] = 0
    gone = np.zeros(nobj + 1, bool)
    stuck = np.full(nobj + 1, h, np.int64)  # window rows
    owned_obj = np.zeros(nobj + 1, bool)
    for c, r in zip(wc.tolist(), row.tolist()):
        f = int(st.first_obj[c])
        k = int(st.nchild[c])
        a, b = task.label_off[r], task.label_off[r + 1]
        final[f + 1:f + 1 + k] = task.labels[a:b]
        gone[f + 1:f + 1 + k] = task.swallowed[a:b]
        stuck[f + 1:f + 1 + k] = task.stuck_row[a:b] - win.y0
        owned_obj[f + 1:f + 1 + k] = task.owned[r]

    nwritten = 0
    if task.write_seg and ctx.seg_out is not None and owned_obj.any():
        where = owned_obj[seg]
        nwritten = int(np.count_nonzero(where))
        if nwritten:
            ctx.seg_out.write_block(win.y0, win.x0, final[seg].astype(np.int32), where=where)
    if task.write_bkg and ctx.bkg_out is not None and win.core is not None:
        cy0, cy1, cx0, cx1 = win.core
        ctx.bkg_out.write_block(cy0, cx0, st.background[cy0 - win.y0:cy1 - win.y0,
                                                        cx0 - win.x0:cx1 - win.x0])

    objs = task.objects
    k = len(objs)
    empty = np.zeros((0, 4), np.int64)
    if k == 0:
        return FinishResult(None, np.zeros(0, np.int64), empty, nwritten)
    # measurement labels: the measured objects 1..k, everything else distinct and > k
    numbers = np.asarray(objs["number"], np.int64)
    order = np.argsort(numbers)
    nsorted = numbers[order]
    big = int(max(nsorted[-1], final.max(initial=0))) + k + 1
    lab = np.where(final > 0, final + k, 0)
    lab[1:] = np.where(final[1:] < 0, big + np.arange(1, nobj + 1), lab[1:])
    pos = np.searchsorted(nsorted, final)
    pos = np.minimum(pos, k - 1)
    mine = (final > 0) & (nsorted[pos] == final)
    lab[mine] = order[pos[mine]] + 1
    if lab.max(initial=0) >= 2**31:
        raise OverflowError("too many objects for int32 labels")
    lab32 = lab.astype(np.int32)
    own = np.where(gone, 0, lab32)
    seg_m = lab32[seg]
    own_m = own[seg]
    # a swallowed detection's pixels are not blanked, but for its last rows
    blank = det.above & (~gone[seg] | (np.arange(seg.shape[0])[:, None] >= stuck[seg]))
    local = _shift(objs, -win.x0, -win.y0, PROPS_POSITION_FIELDS)
    if _F32_CENTRES:
        # The aperture and Kron kernels round the centre to single precision,
        # SExtractor-style: in image coordinates.  Handing them the rounded
        # image-frame centre, shifted (exactly) into the window, makes their
        # pixel offsets the untiled run's to the bit.
        local["x"] = objs["x"].astype(np.float32).astype(np.float64) - win.x0
        local["y"] = objs["y"].astype(np.float32).astype(np.float64) - win.y0
    cat = measure(st.data, st.rms, seg_m, local, ctx.measure_params, header=ctx.header,
                  mask=st.hard, background=st.background, backsig=ctx.glob.backsig,
                  blank=blank, iso_segmap=own_m)
    # what each measurement read must be reliable here
    fp = _footprints(ctx, local, cat)
    fpc = fp + np.array([win.y0, win.y0, win.x0, win.x0])
    fpc[:, 0] = np.maximum(fpc[:, 0], 0)
    fpc[:, 2] = np.maximum(fpc[:, 2], 0)
    fpc[:, 1] = np.minimum(fpc[:, 1], h - 1)
    fpc[:, 3] = np.minimum(fpc[:, 3], w - 1)
    ry0, ry1, rx0, rx1 = win.reliable(ctx.shape, ctx.margins)
    good = (fpc[:, 0] >= ry0) & (fpc[:, 1] < ry1) & (fpc[:, 2] >= rx0) & (fpc[:, 3] < rx1)
    inc = st.boxes[~st.complete, :4] + np.array([win.y0, win.y0, win.x0, win.x0])
    hits = np.zeros(k, bool)
    for b in inc:  # incomplete detections: few per window
        hits |= (fpc[:, 0] <= b[1]) & (fpc[:, 1] >= b[0]) & (fpc[:, 2] <= b[3]) & \
            (fpc[:, 3] >= b[2])
    if ctx.params["BACKPHOTO_TYPE"].upper() == "LOCAL":
        # localback's annulus depends on the image size for very large objects
        ox = objs["xmax"] - objs["xmin"] + 1
        oy = objs["ymax"] - objs["ymin"] + 1
        ww, wh = win.x1 - win.x0, win.y1 - win.y0
        good &= ((ox < ww // 2) == (ox < w // 2)) & ((oy < wh // 2) == (oy < h // 2))
    good &= ~hits
    if _F32_CENTRES:
        for name, f, d in (("X_IMAGE", "x", win.x0), ("Y_IMAGE", "y", win.y0)):
            if name in cat.colnames:
                cat[name] = (np.asarray(objs[f], np.float64) + 1.0 - d) * (cat[name].unit or 1)
    # shift the catalogue to image coordinates
    for axis, d in (("x", win.x0), ("y", win.y0)):
        for name in POSITION_COLUMNS[axis]:
            if name in cat.colnames:
                cat[name] = cat[name] + d * (cat[name].unit or 1)
    cat["NUMBER"] = numbers.astype(cat["NUMBER"].dtype)
    dsel = np.flatnonzero(~good)
    deferred = numbers[dsel]
    boxes = fpc[dsel].copy()
    for b in inc:  # a deferred object also needs the incomplete detections it met
        m = (boxes[:, 0] <= b[1]) & (boxes[:, 1] >= b[0]) & (boxes[:, 2] <= b[3]) & \
            (boxes[:, 3] >= b[2])
        boxes[m, 0] = np.minimum(boxes[m, 0], b[0])
        boxes[m, 1] = np.maximum(boxes[m, 1], b[1])
        boxes[m, 2] = np.minimum(boxes[m, 2], b[2])
        boxes[m, 3] = np.maximum(boxes[m, 3], b[3])
    return FinishResult(cat[good], deferred, boxes, nwritten,
                        {"measured": int(good.sum()), "deferred": int((~good).sum())})
