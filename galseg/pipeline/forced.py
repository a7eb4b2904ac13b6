"""Forced photometry: every band measured on the detection band's sources.

This is SExtractor's dual-image mode (``sex det.fits,band.fits``) as galfind
runs it: the *detection band* (one band, or a stack, see
`galseg.pipeline.stack`) is segmented once; then each *measurement band* is
measured with the detection band's segmentation map and objects:

* positions, shapes (A, B, THETA, the Kron ellipse), bounding boxes,
  detection flags and the pixel footprints are the detection band's;
* the Kron radius is measured on the detection image (as SExtractor does);
* fluxes (APER, AUTO, ISO on the detection footprint), FLUX_RADIUS, windowed
  positions, FWHM, CLASS_STAR and their errors use the measurement band's
  background-subtracted pixels and its own noise map, background and global
  noise level, its zero point and its apertures;
* neighbours are masked (``MASK_TYPE``) with the detection band's pixels.

Caching
-------
The detection band's segmentation is an ordinary cached product
(`Band_Data.segment`).  What measurement needs beyond it (sep's object list,
the pre-CLEAN footprints, the blanking mask, the background-subtracted
detection image and its noise) is kept next to it as memory-mappable ``.npy``
files, the *detection state*, keyed on the detection product's key, in
``{work}/{instrument}/{version}/{survey}/{weight_type}/forced_phot/detections/``.
Each band's forced catalogue is cached in
``{work}/{instrument}/{version}/{survey}/{weight_type}/forced_phot/``
as ``{survey}_{filt}_{detection}_{hash}_cat.fits`` (galfind's folder), keyed on
the detection product's key hash, the band's input files' content and every
parameter.  Each cached file set has a JSON sidecar as commit marker.

Bands run in worker processes (`galseg.parallel.map_bands`): each worker
maps the detection state read-only from disk, so N workers share one copy of
it in the page cache.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table

from ..extract._parallel import readonly
from ..extract.params import Params
from ..io.atomic import atomic_write_bytes, atomic_write_npy
from ..io.fitstable import meta_cards, table_file_bytes
from ..products import make_key
from ..products.fileset import FileSet
from .band import (
    WEIGHT_TYPES,
    _config_label,
    _inputs,
    _measurement_key_fields,
    band_params,
    read_inputs,
)

__all__ = [
    "DetectionState",
    "ForcedPhotResult",
    "ForcedTask",
    "detection_state",
    "forced_entry",
    "forced_params",
    "forced_task",
    "measure_forced",
    "perform_forced_phot",
    "read_catalog",
    "sextractor_dual",
    "FORCED_METHODS",
]

log = logging.getLogger("galseg.pipeline")

FORCED_METHODS = ("sep", "sextractor")
_FORMAT = 2  # 2: CLEAN-merged pixels SExtractor leaves blanked (engine.stuck_rows)
_STATE_KIND = "detection_state:2"  # the blank map changed with _FORMAT 2
DETECTION_PARTS = {
    "objects": "_objects.npy",
    "segmap": "_segmap.npy",
    "own_segmap": "_ownseg.npy",
    "blank": "_blank.npy",
    "data": "_data.npy",
    "rms": "_rms.npy",
}


def _forced_dir(work_dir, instrument, version, survey, err_type) -> Path:
    return (Path(work_dir) / instrument / version / survey / WEIGHT_TYPES[err_type]
            / "forced_phot")


# ---------------------------------------------------------------- detection state
@dataclass(frozen=True)
class DetectionState:
    """Where a detection band's state lives (picklable; arrays are opened on demand).

    Attributes
    ----------
    directory, stem : str
        The `FileSet` holding the ``.npy`` files.
    key_sha256 : str
        Key of the detection band's segmentation product.
    filt : str
        The detection band's filter name (e.g. ``"F277W+F356W+F444W"``).
    shape : tuple of int
    """

    directory: str
    stem: str
    key_sha256: str
    filt: str
    shape: tuple

    def fileset(self) -> FileSet:
        return FileSet(self.directory, self.stem, DETECTION_PARTS, _STATE_KIND)

    def load(self) -> dict[str, np.ndarray]:
        """The arrays, memory-mapped copy-on-write (shared page cache, never written back).

        In the process that made the state while its files are still being
        written (``detection_state(..., wait=False)``), the arrays it made
        (read-only).
        """
        pending = _WRITING.get(self._token)
        if pending is not None:
            return pending.arrays
        fs = self.fileset()
        if not fs.is_valid(self.key_sha256):
            raise FileNotFoundError(f"detection state {fs.path('sidecar')} is not valid "
                                    f"({fs.why_invalid}); run perform_forced_phot again")
        out = {}
        for part in DETECTION_PARTS:
            out[part] = np.load(fs.path(part), mmap_mode=None if part == "objects" else "c",
                                allow_pickle=False)
        return out

    @property
    def _token(self) -> tuple:
        return (self.directory, self.stem, self.key_sha256)

    def wait_written(self) -> None:
        """Wait until the state's files are committed, if this process is
        writing them (``detection_state(..., wait=False)``); re-raise a
        failure of that write.  The arrays are then read from disk again."""
        pending = _WRITING.get(self._token)
        if pending is None:
            return
        pending.thread.join()
        _WRITING.pop(self._token, None)
        if pending.error:
            raise pending.error[0]


@dataclass
class _PendingState:
    arrays: dict                # what `DetectionState.load` gives meanwhile
    thread: threading.Thread    # writing the files
    error: list                 # the write's exception, if it failed


#: Detection states this process is writing on a helper thread: token -> _PendingState.
_WRITING: dict[tuple, _PendingState] = {}


def detection_state(det_band, err_type="rms_err", config="galfind_default", *,
                    overwrite=False, wait=True, **overrides) -> DetectionState:
    """Segment the detection band (cached) and keep what forced photometry needs.

    Parameters
    ----------
    det_band : `Band_Data`
        The detection band (a band or a stack).
    err_type, config, **overrides
        As for `Band_Data.segment`; ``method`` is always ``"sep"``.
    overwrite : bool
        Recompute the detection state (the segmentation product itself is
        reused when valid).
    wait : bool
        Return once the state's files are committed (default).  ``False``:
        a newly made state's files (~100 MB for a 2600 x 2600 band) are
        written on a helper thread while this process goes on; `load` gives
        the arrays from memory meanwhile, and `DetectionState.wait_written`
        must be called before other processes use the state and before
        returning.

    Returns
    -------
    DetectionState

    Notes
    -----
    The state is made by running galseg's detection once more on the
    detection band, and its segmentation map is checked to be identical to
    the cached product's, so that forced catalogues always refer to the
    segmentation map that was saved.
    """
    from ..extract.engine import detect_sources

    outcome = det_band._segment(err_type, "sep", config, False, **overrides)
    entry = outcome.entry
    key_sha = entry.key.sha256
    directory = _forced_dir(det_band.work_dir, det_band.instrument, det_band.version,
                            det_band.survey, err_type) / "detections"
    state = DetectionState(str(directory), entry.stem, key_sha, det_band.filt,
                           tuple(det_band.shape))
    fs = state.fileset()
    if not overwrite and fs.is_valid(key_sha):
        return state
    lock = fs.lock().acquire()
    try:
        if not overwrite and fs.is_valid(key_sha):
            lock.release()
            return state
        t0 = time.perf_counter()
        # The detection the product was just made from, when segment() ran it
        # here; else detect again and check it against the saved map.
        src = outcome.result.sources if outcome.result is not None else None
        if src is None:
            params = band_params(det_band, err_type, config, **overrides)
            sci, header, noise = read_inputs(det_band, err_type)
            src = detect_sources(sci, params=params, header=header, **noise)
            if not np.array_equal(entry.load_seg(), src.segmap):
                raise RuntimeError(
                    f"detection band {det_band.filt}: the cached segmentation map "
                    f"{entry.seg_path} differs from a fresh detection with the same "
                    "parameters; remove it (galseg cache clean) or segment with overwrite=True")
        arrays = {"objects": src.objects, "segmap": src.segmap, "own_segmap": src.own_segmap,
                  "blank": src.blank, "data": src.data, "rms": src.rms}
    except BaseException:
        lock.release()
        raise

    def write(error=None):
        try:
            fs.begin()
            written = {part: atomic_write_npy(arrays[part], fs.path(part), sha256=True)
                       for part in DETECTION_PARTS}
            fs.commit(key_sha, written, {"filt": det_band.filt, "product": entry.stem,
                                         "nobj": int(len(src.objects)),
                                         "seconds": round(time.perf_counter() - t0, 4)})
            log.info("detection state of %s: %d objects", det_band.filt, len(src.objects))
        except BaseException as exc:  # noqa: BLE001 - raised by wait_written
            if error is None:
                raise
            error.append(exc)
        finally:
            lock.release()

    if wait:
        write()
        return state
    error: list = []
    pending = _PendingState({k: readonly(v) for k, v in arrays.items()},
                            threading.Thread(target=write, args=(error,),
                                             name="galseg-detection-state"), error)
    _WRITING[state._token] = pending
    pending.thread.start()
    return state


# ---------------------------------------------------------------- forced catalogues
def forced_params(band, err_type="rms_err", config="galfind_default", **overrides) -> Params:
    """The measurement band's parameters (its apertures, zero point and pixel scale)."""
    return band_params(band, err_type, config, **overrides)


def forced_entry(band, det_filt: str, det_key_sha256: str, err_type="rms_err", method="sep",
                 config="galfind_default", **overrides):
    """(FileSet, key, params) of a band's forced catalogue; nothing is computed."""
    if method not in FORCED_METHODS:
        raise ValueError(f"forced photometry method must be one of {', '.join(FORCED_METHODS)}, "
                         f"got {method!r}")
    params = forced_params(band, err_type, config, **overrides)
    key = make_key(
        _inputs(band, err_type),
        kind="forced_catalog",
        format=_FORMAT,
        detection_key=det_key_sha256,
        detection_filt=det_filt,
        err_type=err_type,
        method=method,
        params=params,
        **_measurement_key_fields(band, params),
    )
    label = _config_label(config)
    parts = [band.survey, band.filt, det_filt] + ([label] if label else [])
    parts += ([method] if method != "sep" else []) + [key.short]
    fs = FileSet(_forced_dir(band.work_dir, band.instrument, band.version, band.survey, err_type),
                 "_".join(parts), {"cat": "_cat.fits"}, "forced_catalog")
    return fs, key, params


def measure_forced(band, state: dict, params: Params, err_type="rms_err") -> Table:
    """Measure ``band`` on the detection state's sources (dual-image mode).

    Parameters
    ----------
    band : `Band_Data`
        Measurement band; same shape as the detection band.
    state : dict
        `DetectionState.load` arrays.
    params : Params
        The measurement band's parameters (`forced_params`).
    err_type : {"rms_err", "wht"}

    Returns
    -------
    `~astropy.table.Table`
        `galseg.extract.measure.measure`'s columns, one row per detected
        object, ``NUMBER`` equal to the detection catalogue's.
    """
    from ..extract.engine import prepare_image
    from ..extract.measure import measure

    shape = tuple(state["segmap"].shape)
    if tuple(band.shape) != shape:
        raise ValueError(f"band {band.filt} has shape {band.shape[1]}x{band.shape[0]} but the "
                         f"detection image has {shape[1]}x{shape[0]}; forced photometry needs "
                         "pixel-aligned images")
    sci, header, noise = read_inputs(band, err_type)
    prep = prepare_image(sci, params=params, **noise)
    return measure(prep.data, prep.rms, state["segmap"], state["objects"], params,
                   wcs=band.load_wcs(), header=header, mask=prep.mask,
                   detection=state["data"], detection_rms=state["rms"],
                   background=prep.background.background, backsig=prep.meta["backsig"],
                   blank=state["blank"], iso_segmap=state["own_segmap"])


def _write_catalog(fs: FileSet, key_sha: str, cat: Table, header: dict, info: dict) -> None:
    data = table_file_bytes(cat, cards=meta_cards(cat, header))
    fs.begin()
    written = {"cat": atomic_write_bytes(data, fs.path("cat"), sha256=True)}
    fs.commit(key_sha, written, info)


def read_catalog(path) -> Table:
    """A cached catalogue FITS file as an astropy Table (units kept)."""
    return Table.read(path, format="fits", hdu=1)


@dataclass(frozen=True)
class ForcedTask:
    """One band's forced photometry, for a worker process."""

    spec: Any                      # BandSpec of the measurement band
    det_spec: Any                  # BandSpec of the detection band
    det_filt: str
    det_key_sha256: str
    state: DetectionState | None   # None for method="sextractor"
    err_type: str = "rms_err"
    method: str = "sep"
    config: Any = "galfind_default"
    overwrite: bool = False
    overrides: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.spec.filt


def _run_forced(band, det_band, task: ForcedTask) -> dict:
    t0, c0 = time.perf_counter(), time.process_time()
    fs, key, params = forced_entry(band, task.det_filt, task.det_key_sha256, task.err_type,
                                   task.method, task.config, **task.overrides)
    computed, reason, cat = False, "cached", None
    if task.overwrite or not fs.is_valid(key.sha256):
        with fs.lock():
            if task.overwrite or not fs.is_valid(key.sha256):
                reason = "overwrite requested" if task.overwrite else fs.why_invalid
                if task.method == "sep":
                    cat = measure_forced(band, task.state.load(), params, task.err_type)
                else:
                    cat = sextractor_dual(det_band, band, task.err_type, params)
                header = {"FILTER": band.filt, "DETBAND": task.det_filt,
                          "MAGZERO": float(params["MAG_ZEROPOINT"]), "METHOD": task.method,
                          "ERRTYPE": task.err_type, "KEY": key.short}
                for i, d in enumerate(band.aper_diams.to_value("arcsec"), start=1):
                    header[f"APER{i}"] = (float(d), "aperture diameter [arcsec]")
                _write_catalog(fs, key.sha256, cat, header, {
                    "filt": band.filt, "detection": task.det_filt, "method": task.method,
                    "nobj": len(cat), "zero_point": band.zp,
                    "aper_diams_arcsec": [float(d) for d in band.aper_diams.to_value("arcsec")],
                    "aper_diams_pix": [float(d) for d in params["PHOT_APERTURES"]],
                    "seconds": round(time.perf_counter() - t0, 4),
                })
                computed = True
            else:
                reason = "cached (made by another process)"
    return {"filt": band.filt, "cat_path": str(fs.path("cat")), "key": key.short,
            "computed": computed, "reason": reason, "seconds": time.perf_counter() - t0,
            "cpu_seconds": time.process_time() - c0, "nobj": (fs.info or {}).get("nobj"),
            "table": cat}


def forced_task(task: ForcedTask) -> dict:
    """Worker body: open the bands, make (or find) the band's forced catalogue."""
    from ..extract._parallel import small_pages

    band = task.spec.open()
    det_band = task.det_spec.open() if task.method == "sextractor" else None
    with small_pages():
        return _run_forced(band, det_band, task)


@dataclass
class ForcedPhotResult:
    """What `perform_forced_phot` made.

    Attributes
    ----------
    det_band : `Band_Data`
        The detection band.
    cat_paths : dict
        Filter -> forced catalogue path, in the bands' order.
    rows : list of dict
        Per-band summary (``filt``, ``status``, ``nobj``, ``seconds``,
        ``cpu_seconds``, ``reason``, ``cat_path``, ``key``).
    state : DetectionState or None
    tables : dict
        Filter -> the catalogues this call computed, as written (cached ones
        are not here); `multiband_catalog` joins these instead of reading the
        files back, and empties the dict.
    """

    det_band: Any
    cat_paths: dict
    rows: list
    state: DetectionState | None
    tables: dict = field(default_factory=dict)


def perform_forced_phot(bands, det_band, *, err_type="rms_err", method="sep",
                        config="galfind_default", overwrite=False, workers=None,
                        scheduler=None, progress=True, **overrides) -> ForcedPhotResult:
    """Forced photometry of ``bands`` on the sources of ``det_band``.

    Parameters
    ----------
    bands : sequence of `Band_Data`
        Measurement bands, pixel-aligned with ``det_band``.
    det_band : `Band_Data`
        Detection band (a band or a stack from `galseg.pipeline.stack`).
    err_type : {"rms_err", "wht"}
        Noise map of both the detection and the measurement bands
        (SExtractor ``MAP_RMS`` / ``MAP_WEIGHT`` for both images).
    method : {"sep", "sextractor"}
        ``"sep"``: galseg's engine.  ``"sextractor"``: SExtractor 2.25's
        dual-image mode (``source-extractor det.fits,band.fits``), cached the
        same way, for comparison.
    config, **overrides
        SExtractor parameters, as for `Band_Data.segment`.
    overwrite : bool
        Remake the detection state and the forced catalogues (the detection
        band's segmentation product is reused while valid).
    workers, scheduler, progress
        Parallel execution, see `galseg.parallel.map_bands`.

    Returns
    -------
    ForcedPhotResult
    """
    from ..parallel import BandSpec, map_bands, runs_in_process, segment_entry

    if method not in FORCED_METHODS:
        raise ValueError(f"forced photometry method must be one of {', '.join(FORCED_METHODS)}, "
                         f"got {method!r}")
    if err_type not in WEIGHT_TYPES:
        raise ValueError(f"err_type must be one of {', '.join(WEIGHT_TYPES)}, got {err_type!r}")
    bands = list(bands)
    for b in bands:
        if tuple(b.shape) != tuple(det_band.shape):
            raise ValueError(f"band {b.filt} has shape {b.shape[1]}x{b.shape[0]} but the detection "
                             f"band {det_band.filt} has {det_band.shape[1]}x{det_band.shape[0]}; "
                             "forced photometry needs pixel-aligned images")
    if method == "sep":
        # its files are written while the bands are measured here (serial),
        # or before they go to other processes
        state = detection_state(det_band, err_type, config, overwrite=overwrite, wait=False,
                                **overrides)
        det_key = state.key_sha256
    else:
        state = None
        det_key = segment_entry(det_band, err_type, "sextractor", config, **overrides).key.sha256

    det_spec = BandSpec.from_band(det_band)
    try:
        rows, pending = {}, []
        for b in bands:
            task = ForcedTask(BandSpec.from_band(b), det_spec, det_band.filt, det_key, state,
                              err_type, method, config, overwrite, dict(overrides))
            if not overwrite:
                fs, key, _ = forced_entry(b, det_band.filt, det_key, err_type, method, config,
                                          **overrides)
                if fs.is_valid(key.sha256):
                    rows[b.filt] = {"filt": b.filt, "cat_path": str(fs.path("cat")),
                                    "key": key.short, "computed": False, "reason": "cached",
                                    "seconds": 0.0, "cpu_seconds": None,
                                    "nobj": fs.info.get("nobj")}
                    continue
            pending.append(task)
        if state is not None and not runs_in_process(len(pending), workers, scheduler):
            state.wait_written()
        results = map_bands(forced_task, pending, workers=workers, scheduler=scheduler,
                            progress=progress, desc="forced phot")
    except BaseException:
        if state is not None:
            with contextlib.suppress(Exception):  # the first error is the one to see
                state.wait_written()
        raise
    if state is not None:
        state.wait_written()
    for task, res in zip(pending, results):
        rows[task.spec.filt] = res
    out_rows = []
    for b in bands:
        r = rows[b.filt]
        out_rows.append({"filt": b.filt, "status": "computed" if r["computed"] else "cached",
                         "nobj": r["nobj"], "seconds": r["seconds"],
                         "cpu_seconds": r["cpu_seconds"], "reason": r["reason"],
                         "cat_path": r["cat_path"], "key": r["key"]})
    tables = {f: r["table"] for f, r in rows.items() if r.get("table") is not None}
    return ForcedPhotResult(det_band, {r["filt"]: Path(r["cat_path"]) for r in out_rows},
                            out_rows, state, tables)


# ---------------------------------------------------------------- SExtractor reference
def sextractor_dual(det_band, band, err_type, params: Params, *, workdir=None,
                    param_file=None, binary=None) -> Table:
    """Run SExtractor 2.25 in dual-image mode, as galfind does, and read its catalogue.

    ``source-extractor det.fits,band.fits -c run.sex`` with ``WEIGHT_TYPE``
    given for both images and ``WEIGHT_IMAGE det_noise.fits,band_noise.fits``.
    Images are written as uncompressed float32 FITS into ``workdir`` (a
    temporary folder by default).

    Parameters
    ----------
    det_band, band : `Band_Data`
        Detection and measurement bands.
    err_type : {"rms_err", "wht"}
    params : Params
        The measurement band's parameters (`forced_params`).
    workdir : path-like, optional
        Keep the run's files there.
    param_file : path-like, optional
        ``.param`` file (default galseg's ``galseg.param``).
    binary : str, optional
        SExtractor executable.

    Returns
    -------
    `~astropy.table.Table`
        SExtractor's catalogue (FITS units kept).
    """
    from ..extract.backends.sextractor import run_dual

    det_sci, det_hdr = det_band.load_im(incl_hdr=True)
    sci, hdr = band.load_im(incl_hdr=True)
    return run_dual(det_sci, det_band.load_err(err_type), sci, band.load_err(err_type),
                    params=params, weight_type=WEIGHT_TYPES[err_type], det_header=det_hdr,
                    header=hdr, det_wcs=det_band.load_wcs(), wcs=band.load_wcs(),
                    workdir=workdir, param_file=param_file, binary=binary)
