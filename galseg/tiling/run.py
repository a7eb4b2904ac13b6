"""Tiled extraction of a mosaic: bounded memory, parallel, same catalogue.

`extract_tiled` gives the catalogue and segmentation map of
`galseg.extract.run` (``method="sep"``) without ever holding the image in
memory, with the tiles processed by local worker processes or a Dask cluster.
It is built so that the result *equals* the untiled run's, not approximates
it: every step that depends on the whole image is done once, globally, and
every step that depends on a neighbourhood is done where the whole
neighbourhood is reliable.

Rounds (each a map over tasks, see `galseg.parallel.tiles.TileExecutor`):

0. **mesh**: SExtractor's background mesh statistics over full-width strips;
   the parent filters the global mesh grid and derives ``backsig``, the
   global background and the weight-map rescaling factor
   (`galseg.tiling.background`).  Tiles evaluate the splines of this one grid:
   no seams, and bit for bit the map the untiled run subtracts.
1. **scan**: each tile (core + overlap) detects; each detection is owned by
   the tile whose core holds its anchor (the pixel where SExtractor's scan
   completes it) if it is complete there (`galseg.tiling.plan`).  Detections
   no tile sees whole are found again in larger windows built around them,
   grown until they are complete.  Each owner reports how many random draws
   SExtractor's pixel sharing makes for the detection.
2. **analyse**: with every detection's draws known, each deblended detection
   gets the random-stream state the untiled run has when it reaches it (the
   stream runs over the whole image in scan order), so its faint pixels are
   shared exactly as in one piece; owners return SExtractor's per-object
   analysis.  The parent then replays CLEAN over the whole catalogue at once
   (its clean list spans the whole image width) and numbers the objects:
   NUMBERs, merges and catalogue order are the untiled run's.
3. **finish**: each owner relabels its detections with their final NUMBERs,
   writes them into the memory-mapped segmentation map, writes its core of
   the background map, and measures the objects it owns, with all their
   neighbours' segments around them.  An object whose apertures, Kron
   ellipse, growth curve or windowed centroid reach outside the window's
   reliable zone (or touch a detection the window does not see whole) is
   measured again in a window grown around it.

Two things cannot be reproduced exactly and are reported in ``meta``: the
children of a deblended detection where galseg has to keep sep's own pixel
sharing (``deblend_kept_sep``; sep draws from its own generator, restarted per
call), and, for images wider than 16384 pixels with ``BACK_TYPE AUTO``, the
untiled engine's background, which sep computes without SExtractor's
line sub-sampling of wide images while the tiled mesh follows SExtractor.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from astropy.table import vstack

from ..extract.clean import clean_and_order
from ..extract.detect import detection_kernel
from ..extract.params import Params
from ..extract.result import ExtractionResult
from ..extract.weights import WEIGHT_TYPES
from .background import finish_mesh, mesh_row_count, mesh_rows
from .io import FitsOutput, ImageSource, as_source
from .plan import BYTES_PER_PIXEL, MAIN_OVERHEAD, WORKER_OVERHEAD, Margins, TilePlan, Window, \
    default_overlap, parse_memory, tile_size_for_memory
from .window import AnalyseTask, FinishTask, ScanTask, TileContext, advance_state, \
    analyse_window, finish_window, scan_window

__all__ = ["extract_tiled", "MAX_GROW_ROUNDS"]

log = logging.getLogger("galseg.tiling")

#: Rounds of window growth around large objects before giving up.
MAX_GROW_ROUNDS = 12
#: Extra memory planned for a Dask run (per worker, and for the scheduler and
#: client): on the 32768^2 benchmark a LocalCluster peaked about 0.5 GB above
#: the local process pool at the same tile size (results held by workers and
#: client, the cluster's own processes).
DASK_WORKER_OVERHEAD = 160 * 2**20
DASK_MAIN_OVERHEAD = 320 * 2**20


# --------------------------------------------------------------------------- mesh round
@dataclass
class MeshTask:
    """Round 0: raw mesh statistics of mesh rows ``j0..j1``."""

    sci: ImageSource
    weight: ImageSource | None
    mask: ImageSource | None
    params: Params
    shape: tuple[int, int]
    j0: int
    j1: int

    @property
    def label(self) -> str:
        return f"mesh rows {self.j0}:{self.j1}"


def mesh_task(task: MeshTask):
    """Round 0 task body."""
    def read_rows(y0, y1):
        sci = task.sci.read_rows(y0, y1)
        wmap = None if task.weight is None else task.weight.read_rows(y0, y1)
        mask = None if task.mask is None else task.mask.read_rows(y0, y1, bool)
        return sci, wmap, mask

    return mesh_rows(read_rows, task.shape, task.params, task.j0, task.j1)


# --------------------------------------------------------------------------- windows
def _grow_windows(boxes, shape, pad, margins: Margins, first_index, kind):
    """Windows around boxes ``(ymin, ymax, xmin, xmax)`` (inclusive), grown by
    ``pad`` plus the reliability margins, overlapping ones merged.

    Returns the windows and, for each box, the index of its window.
    """
    h, w = shape
    boxes = np.asarray(boxes, np.int64).reshape(-1, 4)
    g = margins.largest + 2 + int(pad)
    rects = [[max(0, b[0] - g), min(h, b[1] + 1 + g), max(0, b[2] - g), min(w, b[3] + 1 + g),
              [i]] for i, b in enumerate(boxes)]
    merged = True
    while merged:
        merged = False
        out = []
        for r in rects:
            for q in out:
                if r[0] < q[1] and q[0] < r[1] and r[2] < q[3] and q[2] < r[3]:
                    q[0], q[1] = min(q[0], r[0]), max(q[1], r[1])
                    q[2], q[3] = min(q[2], r[2]), max(q[3], r[3])
                    q[4] = q[4] + r[4]
                    merged = True
                    break
            else:
                out.append(r)
        rects = out
    windows = []
    which = np.zeros(len(boxes), np.int64)
    for k, (y0, y1, x0, x1, members) in enumerate(rects):
        mb = boxes[members]
        focus = (int(mb[:, 0].min()), int(mb[:, 1].max()), int(mb[:, 2].min()),
                 int(mb[:, 3].max()))
        windows.append(Window(first_index + k, int(y0), int(y1), int(x0), int(x1), None,
                              kind, focus))
        which[members] = k
    return windows, which


def _warn_large(windows, budget_per_worker: float) -> None:
    """Windows around very large objects can exceed a worker's share of max_memory."""
    for win in windows:
        need = win.npix * BYTES_PER_PIXEL + WORKER_OVERHEAD
        if need > budget_per_worker:
            log.warning("window %d [%d:%d, %d:%d] around a large object needs about %.2f GB, "
                        "more than a worker's share of max_memory (%.2f GB)", win.index,
                        win.y0, win.y1, win.x0, win.x1, need / 1e9, budget_per_worker / 1e9)


def _intersecting(boxes, win: Window) -> np.ndarray:
    """Rows of ``boxes`` (ymin, ymax, xmin, xmax; inclusive) meeting ``win``."""
    return np.flatnonzero((boxes[:, 1] >= win.y0) & (boxes[:, 0] < win.y1)
                          & (boxes[:, 3] >= win.x0) & (boxes[:, 2] < win.x1))


def _wcs_header(wcs):
    if wcs is None:
        return None
    try:
        return wcs.to_header(relax=True)
    except Exception:  # noqa: BLE001 - a WCS that cannot be written: maps without WCS
        return None


# --------------------------------------------------------------------------- driver
def extract_tiled(sci, *, rms=None, wht=None, var=None, mask=None, params, header=None,
                  wcs=None, tile_size=None, max_memory="4GB", overlap=None, workers=None,
                  scheduler=None, executor=None, seg_path=None, bkg_path=None,
                  scratch_dir=None, progress=False) -> ExtractionResult:
    """Extract sources from a large image tile by tile; the untiled run's result.

    Parameters
    ----------
    sci : path, (path, ext), 2-D array or `~galseg.tiling.io.ImageSource`
        Science image.  Files are read a window at a time (memory-mapped,
        or tile by tile for compressed FITS); arrays are spilled to a scratch
        ``.npy`` file when worker processes need them.
    rms, wht, var : same kinds, optional
        The noise map ``WEIGHT_TYPE`` asks for (as `galseg.extract.run`).
    mask : same kinds, optional
        Extra pixels to ignore (non-zero = masked).
    params : Params or mapping
        SExtractor-named parameters.
    header : FITS header, optional
        ``GAIN_KEY`` / ``SATUR_KEY``.
    wcs : astropy.wcs.WCS, optional
        For ALPHA/DELTA, the pixel scale (when ``PIXEL_SCALE`` is 0) and the
        output maps' headers.
    tile_size : int, optional
        Core side in pixels.  Default: chosen from ``max_memory``.
    max_memory : int or str
        Memory budget for the parent and all workers together (``"4GB"``).
    overlap : int, optional
        Window margin around each core (default `default_overlap`).
    workers : int, optional
        Local worker processes (default one per CPU; 1 runs here).
    scheduler : `distributed.Client` or str, optional
        Run the tiles on a Dask cluster.
    executor : `~galseg.parallel.tiles.TileExecutor`, optional
        An executor to reuse (then ``workers``/``scheduler`` are ignored).
    seg_path, bkg_path : path, optional
        Write the segmentation map (int32) / background map (float32) to these
        FITS files (created atomically).  Default: temporary files, unlinked
        once mapped (the result's maps stay readable until released).
    scratch_dir : path, optional
        Where temporary files go (default: next to ``seg_path``, else the
        system's temporary directory).
    progress : bool
        Progress bars per round (tqdm).

    Returns
    -------
    ExtractionResult
        ``segmap`` and ``background`` are read-only memory maps of the output
        FITS data (big-endian); ``catalog`` is the same table as
        `galseg.extract.run` gives (same rows, NUMBERs and values); ``rms`` is
        None; ``meta`` has the engine's fields and ``meta["tiling"]``.
    """
    from ..extract.measure import _pixel_scale, _world_j2000, resolve_gain_saturation
    from ..parallel.tiles import TileExecutor

    t_start = time.perf_counter()
    params = params if isinstance(params, Params) else Params(params)
    if params["DETECT_TYPE"].upper() != "CCD":
        raise ValueError("DETECT_TYPE PHOTO is not supported by the sep engine (CCD only)")
    wtype = params["WEIGHT_TYPE"][0].upper()
    if wtype not in WEIGHT_TYPES:
        raise ValueError(f"WEIGHT_TYPE {params['WEIGHT_TYPE'][0]!r} is not supported by the sep "
                         f"engine; use one of {', '.join(WEIGHT_TYPES)}")
    argname = WEIGHT_TYPES[wtype]
    given = {"rms": rms, "wht": wht, "var": var}
    if argname is not None and given[argname] is None:
        raise ValueError(f"WEIGHT_TYPE {wtype} needs the {argname!r} argument "
                         f"({argname}=None was given)")
    parse_memory(max_memory)

    own_exec = executor is None
    ex = executor or TileExecutor(workers=workers, scheduler=scheduler, progress=progress)
    remote = ex.backend != "serial"
    base = Path(scratch_dir) if scratch_dir is not None else (
        Path(seg_path).resolve().parent if seg_path is not None else None)
    scratch = Path(tempfile.mkdtemp(prefix=".galseg-tiles-", dir=base))
    outputs: list[FitsOutput] = []
    timings: dict[str, float] = {}
    try:
        src_sci = as_source(sci, "science image", scratch if remote else None)
        shape = src_sci.shape
        src_w = as_source(given[argname], f"{argname} map", scratch if remote else None) \
            if argname is not None else None
        src_m = as_source(mask, "mask", scratch if remote else None)
        for s in (src_w, src_m):
            if s is not None and s.shape != shape:
                raise ValueError(f"{s.what} shape {s.shape} differs from the science image "
                                 f"shape {shape}")
        h, w = shape
        kernel = detection_kernel(params)
        margins = Margins.for_params(params, None if kernel is None else kernel.shape,
                                     argname is not None)
        if overlap is None:
            overlap = default_overlap(params, margins)
        overlap = int(overlap)
        if overlap < margins.largest + 2:
            raise ValueError(f"overlap={overlap} is smaller than the filter/interpolation "
                             f"margins ({margins.largest + 2} pixels)")
        if tile_size is None:
            extra = {}
            if ex.backend == "dask":
                # nanny processes, the scheduler and the client need memory too
                extra = {"worker_overhead": WORKER_OVERHEAD + DASK_WORKER_OVERHEAD,
                         "main_overhead": MAIN_OVERHEAD + DASK_MAIN_OVERHEAD}
            tile_size = tile_size_for_memory(shape, max_memory, workers=ex.workers,
                                             overlap=overlap, **extra)
            if tile_size is None:
                tile_size = max(h, w)
        plan = TilePlan(shape, int(tile_size), overlap)
        share = (parse_memory(max_memory) - MAIN_OVERHEAD) / max(1, ex.workers)

        # ---- round 0: global background mesh
        t0 = time.perf_counter()
        ny = mesh_row_count(shape, params)
        bh = min(int(params["BACK_SIZE"]), h)
        per = max(1, int(96e6 // (4 * w * bh)))
        per = min(per, max(1, math.ceil(ny / max(1, ex.workers))))
        tasks = [MeshTask(src_sci, src_w, src_m, params, shape, j, min(ny, j + per))
                 for j in range(0, ny, per)]
        rows = ex.map(mesh_task, tasks, "mesh")
        glob = finish_mesh(rows, shape, params)
        timings["mesh"] = time.perf_counter() - t0

        gain, satur = resolve_gain_saturation(params, header)
        pixscale = _pixel_scale(params, wcs, shape)
        mparams = params.replace(PIXEL_SCALE=pixscale) if pixscale > 0 else params
        hdr = _wcs_header(wcs)
        seg_out = FitsOutput.create(seg_path or scratch / "seg.fits", shape, np.int32, hdr)
        outputs.append(seg_out)
        bkg_out = FitsOutput.create(bkg_path or scratch / "bkg.fits", shape, np.float32, hdr)
        outputs.append(bkg_out)
        ctx = TileContext(params, shape, src_sci, src_w, src_m, glob, margins, plan, kernel,
                          float(gain), header, mparams, seg_out, bkg_out)

        # ---- round 1: scan
        t0 = time.perf_counter()
        tiles = plan.windows()
        windows: list[Window] = list(tiles)
        scans = ex.map(scan_window, [ScanTask(ctx, win) for win in tiles], "scan")
        requests = [s.incomplete for s in scans if len(s.incomplete)]
        nbig = 0
        for rnd in range(MAX_GROW_ROUNDS + 1):
            if not requests:
                break
            if rnd == MAX_GROW_ROUNDS:
                raise RuntimeError(f"detections still incomplete after {rnd} rounds of window "
                                   "growth; an object larger than the image?")
            req = np.concatenate(requests)
            big, _ = _grow_windows(req, shape, overlap * 2 ** rnd, margins, len(windows),
                                   "large")
            _warn_large(big, share)
            windows.extend(big)
            nbig += len(big)
            res = ex.map(scan_window, [ScanTask(ctx, win) for win in big], "scan-large")
            scans.extend(res)
            requests = [s.incomplete for s in res if len(s.incomplete)]
        chains = _chain_table(scans)
        timings["scan"] = time.perf_counter() - t0

        # ---- round 2: analyse owned detections with their random-stream states
        t0 = time.perf_counter()
        nchain = len(chains["keys"])
        first_raw = np.cumsum(chains["nchild"]) - chains["nchild"]
        nraw = int(chains["nchild"].sum())
        draws = np.cumsum(chains["ncalls"]) - chains["ncalls"]
        has_state = chains["ncalls"] > 0
        states = np.zeros((nchain, 35), np.int64)
        if has_state.any():
            states[has_state] = advance_state(draws[has_state])
        owners = np.unique(chains["owner"])
        a_tasks = []
        for o in owners.tolist():
            sel = np.flatnonzero(chains["owner"] == o)
            a_tasks.append(AnalyseTask(ctx, windows[o], chains["keys"][sel], first_raw[sel],
                                       sel, states[sel], has_state[sel]))
        analysed = ex.map(analyse_window, a_tasks, "analyse")
        timings["analyse"] = time.perf_counter() - t0

        # ---- global CLEAN, numbering, merging (parent)
        t0 = time.perf_counter()
        glob_tab = _global_clean(analysed, nraw, params, shape, kernel)
        kept_sep = int(sum(a.kept_sep for a in analysed))
        del analysed, scans, a_tasks  # the parent keeps O(objects) tables only
        objects = glob_tab["objects"]
        nobj = len(objects)
        timings["clean"] = time.perf_counter() - t0

        # ---- round 3: relabel, write, measure
        t0 = time.perf_counter()
        label_off_all = np.r_[0, np.cumsum(chains["nchild"])]
        measure_owner = chains["owner"][glob_tab["object_chain"]]
        f_tasks = []
        # every tile (its core of the background map), and the larger windows owning detections
        for o in sorted(set(range(len(tiles))) | set(owners.tolist())):
            f_tasks.append(_finish_task(ctx, windows[o], chains, label_off_all, glob_tab,
                                        states, has_state,
                                        objects[measure_owner == o], owned_by=o))
        finished = ex.map(finish_window, f_tasks, "finish")
        del f_tasks
        cats = [f.catalog for f in finished if f.catalog is not None and len(f.catalog)]
        deferred = [(f.deferred, f.deferred_boxes) for f in finished if len(f.deferred)]
        nmeasure_windows = 0
        for rnd in range(MAX_GROW_ROUNDS + 1):
            if not deferred:
                break
            if rnd == MAX_GROW_ROUNDS:
                raise RuntimeError(f"objects still not measurable after {rnd} rounds of "
                                   "window growth")
            nums = np.concatenate([d[0] for d in deferred])
            boxes = np.concatenate([d[1] for d in deferred])
            mwins, which = _grow_windows(boxes, shape, overlap * 2 ** rnd, margins,
                                         len(windows), "measure")
            _warn_large(mwins, share)
            windows.extend(mwins)
            nmeasure_windows += len(mwins)
            m_tasks = []
            for k, win in enumerate(mwins):
                rows = nums[which == k] - 1
                m_tasks.append(_finish_task(ctx, win, chains, label_off_all, glob_tab, states,
                                            has_state, objects[rows], owned_by=None))
            res = ex.map(finish_window, m_tasks, "measure-large")
            cats += [f.catalog for f in res if f.catalog is not None and len(f.catalog)]
            deferred = [(f.deferred, f.deferred_boxes) for f in res if len(f.deferred)]
        timings["finish"] = time.perf_counter() - t0

        # ---- the catalogue
        t0 = time.perf_counter()
        catalog = vstack(cats, metadata_conflicts="silent") if cats else None
        if catalog is None:
            from ..extract.measure import measure

            catalog = measure(np.zeros((1, 1), np.float32), np.ones((1, 1), np.float32),
                              np.zeros((1, 1), np.int32), objects[:0], mparams,
                              header=header, backsig=glob.backsig)
        catalog = catalog[np.argsort(np.asarray(catalog["NUMBER"]), kind="stable")]
        numbers = np.asarray(catalog["NUMBER"])
        if len(catalog) != nobj or not np.array_equal(numbers, np.arange(1, nobj + 1)):
            raise RuntimeError(f"tiled catalogue has {len(catalog)} rows for {nobj} objects "
                               "(internal error)")
        if wcs is not None and "ALPHA_J2000" in catalog.colnames:
            ra, dec = _world_j2000(wcs, np.asarray(catalog["X_IMAGE"], np.float64) - 1.0,
                                   np.asarray(catalog["Y_IMAGE"], np.float64) - 1.0)
            catalog["ALPHA_J2000"] = ra * (catalog["ALPHA_J2000"].unit or 1)
            catalog["DELTA_J2000"] = dec * (catalog["DELTA_J2000"].unit or 1)
        catalog.meta["BACKSIG"] = glob.backsig
        timings["catalog"] = time.perf_counter() - t0

        # ---- outputs
        for out in outputs:
            if (out is seg_out and seg_path is not None) or (out is bkg_out and bkg_path is not None):
                out.commit()
        seg_map = _map_result(seg_out, seg_path is not None)
        bkg_map = _map_result(bkg_out, bkg_path is not None)
        outputs.clear()
        timings["total"] = time.perf_counter() - t_start
        meta = {
            "backend": "sep",
            "nobj": int(nobj),
            "ndetect": int(glob_tab["nkept"]),
            "nmerged": int(glob_tab["nmerged"]),
            "weight_type": wtype,
            "weight_scale": float(glob.sigfac),
            "weight_scale_measured": glob.sigfac_measured,
            "weight_thresh": float(glob.wthresh),
            "back_type": params["BACK_TYPE"][0].upper(),
            "backmean": float(glob.image_mesh.backmean),
            "backsig": float(glob.backsig),
            "globalback": float(params["BACK_VALUE"][0]) if params["BACK_TYPE"][0].upper()
            == "MANUAL" and params["BACK_VALUE"] else float(glob.image_mesh.backmean),
            "globalrms": float(glob.backsig),
            "gain": float(gain),
            "satur_level": float(satur),
            "deblend_kept_sep": kept_sep,
            "timings": timings,
            "tiling": {
                "tile_size": int(plan.tile_size), "overlap": int(overlap),
                "grid": list(plan.grid), "tiles": len(tiles),
                "large_windows": int(nbig), "measure_windows": int(nmeasure_windows),
                "detections": int(nchain), "workers": int(ex.workers), "backend": ex.backend,
                "max_memory": max_memory if isinstance(max_memory, str) else int(max_memory),
            },
        }
        return ExtractionResult(segmap=seg_map, background=bkg_map, catalog=catalog, rms=None,
                                meta=meta)
    finally:
        for out in outputs:
            out.abort()
        shutil.rmtree(scratch, ignore_errors=True)
        if own_exec:
            ex.close()


def _map_result(out: FitsOutput, committed: bool) -> np.memmap:
    """A read-only map of an output; a temporary one is unlinked once mapped."""
    path = out.path if committed else out.tmp
    mm = np.memmap(path, dtype=np.dtype(out.dtype), mode="r", offset=out.offset,
                   shape=out.shape)
    if not committed:
        Path(out.tmp).unlink(missing_ok=True)  # the mapping keeps the data
    return mm


def _chain_table(scans) -> dict:
    """Every detection once, in the untiled scan order, with its owner window."""
    keys = np.concatenate([s.keys for s in scans]) if scans else np.zeros(0, np.int64)
    owner = np.concatenate([np.full(len(s.keys), s.window, np.int64) for s in scans]) \
        if scans else np.zeros(0, np.int64)
    boxes = np.concatenate([s.boxes for s in scans]).reshape(-1, 4) if scans else \
        np.zeros((0, 4), np.int64)
    nchild = np.concatenate([s.nchild for s in scans]) if scans else np.zeros(0, np.int64)
    ncalls = np.concatenate([s.ncalls for s in scans]) if scans else np.zeros(0, np.int64)
    # several larger windows may see the same detection: keep the first
    order = np.lexsort((owner, keys))
    keys, owner, boxes, nchild, ncalls = (keys[order], owner[order], boxes[order],
                                          nchild[order], ncalls[order])
    first = np.r_[True, keys[1:] != keys[:-1]] if len(keys) else np.zeros(0, bool)
    return {"keys": keys[first], "owner": owner[first], "boxes": boxes[first],
            "nchild": nchild[first].astype(np.int64), "ncalls": ncalls[first].astype(np.int64)}


def _global_clean(analysed, nraw, params, shape, kernel) -> dict:
    """CLEAN, numbering and merging over the whole catalogue, as the engine does."""
    from ..extract.engine import _assemble, _roots, stuck_rows

    raw_index = np.concatenate([a.raw_index for a in analysed]) if analysed else \
        np.zeros(0, np.int64)
    if len(raw_index) != nraw or (nraw and not np.array_equal(np.sort(raw_index),
                                                              np.arange(nraw))):
        raise RuntimeError(f"analysis returned {len(raw_index)} objects for {nraw} "
                           "(internal error)")
    if not analysed:  # nothing detected anywhere
        from ..extract.clean import ANALYSIS_FIELDS

        analysed = [SimpleNamespace(props=np.zeros(0, dtype=list(ANALYSIS_FIELDS)),
                                    objects=np.zeros(0, dtype=[("flag", np.int64)]),
                                    chain_index=np.zeros(0, np.int64),
                                    parent_ymin=np.zeros(0, np.int64),
                                    parent_ymax=np.zeros(0, np.int64))]
    order = np.argsort(raw_index)
    props = np.concatenate([a.props for a in analysed])[order]
    objs = np.concatenate([a.objects for a in analysed])[order]
    parent = np.concatenate([a.chain_index for a in analysed])[order]
    pymin = np.concatenate([a.parent_ymin for a in analysed])[order]
    pymax = np.concatenate([a.parent_ymax for a in analysed])[order]
    keep = np.ones(nraw, bool)
    maxarea = int(params["DETECT_MAXAREA"])
    if maxarea > 0 and nraw:
        keep = props["fdnpix"] <= maxarea
    kidx = np.flatnonzero(keep)
    props_k, objs_k = props[kidx], objs[kidx]
    khe = None if kernel is None else kernel.shape[0]
    height = shape[0]
    absorber, cat_order = clean_and_order(props_k, props_k, pymax[kidx] + 1, params, height,
                                          kernel_height=khe)
    stuck = np.full(nraw, height, np.int64)
    if len(kidx):
        stuck[kidx] = stuck_rows(absorber, pymax[kidx] + 1, khe, height)
    det = SimpleNamespace(objects=objs_k, segmap=np.zeros((1, 1), np.int32),
                          above=np.zeros((1, 1), bool), parent=parent[kidx],
                          parent_ymin=pymin[kidx], parent_ymax=pymax[kidx])
    objects, _, _, _ = _assemble(det, props_k, absorber, cat_order, params, height, khe)
    nout = len(cat_order)
    number = np.zeros(len(kidx), np.int64)
    number[cat_order] = np.arange(1, nout + 1)
    final = np.zeros(nraw, np.int64)
    gone = np.zeros(nraw, bool)
    if len(kidx):
        final[kidx] = number[_roots(absorber)]
        gone[kidx] = absorber >= 0
    return {"objects": objects, "final": final, "swallowed": gone, "stuck_row": stuck,
            "object_chain": parent[kidx][cat_order] if nout else np.zeros(0, np.int64),
            "nkept": int(len(kidx)), "nmerged": int(np.count_nonzero(absorber >= 0))}


def _finish_task(ctx, win, chains, label_off_all, glob_tab, states, has_state, objects,
                 owned_by) -> FinishTask:
    sel = _intersecting(chains["boxes"], win)
    lo = label_off_all[sel]
    hi = label_off_all[sel + 1]
    label_off = np.r_[0, np.cumsum(hi - lo)]
    idx = np.repeat(lo - label_off[:-1], hi - lo) + np.arange(label_off[-1])
    owned = (chains["owner"][sel] == owned_by) if owned_by is not None else \
        np.zeros(len(sel), bool)
    return FinishTask(ctx, win, chains["keys"][sel], label_off, glob_tab["final"][idx],
                      glob_tab["swallowed"][idx], glob_tab["stuck_row"][idx], owned,
                      states[sel], has_state[sel], objects,
                      write_seg=owned_by is not None,
                      write_bkg=owned_by is not None and win.core is not None)
