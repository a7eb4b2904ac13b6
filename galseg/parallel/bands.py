"""Segmenting many bands: skip the cached ones, run the rest in parallel, summarise."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from .executor import default_workers, map_bands
from .tasks import BandSpec, SegmentTask, segment_entry, segment_task

__all__ = ["segment_bands", "format_summary", "SEGMENT_OPTIONS"]

#: `Band_Data.segment` keywords that are not SExtractor parameters (nor part of the key).
SEGMENT_OPTIONS = ("tiles", "max_memory")

log = logging.getLogger("galseg.pipeline")


def _nobj(band):
    sc = band._product.read_sidecar() or {}
    return sc.get("nobj")


def segment_bands(bands: Sequence, err_type="rms_err", method="sep", config="galfind_default",
                  overwrite=False, *, workers=None, scheduler=None, progress=True,
                  **overrides) -> list[dict]:
    """Segment every band (see `Band_Data.segment`), computing only what is not cached.

    ``overrides`` are SExtractor parameters; `SEGMENT_OPTIONS` among them
    (``tiles``, ``max_memory``) go to `Band_Data.segment` as keywords.
    Cached bands are recognised in this process (a key and a sidecar check
    each) and never reach a worker; the others run through `map_bands` (local
    processes, or the Dask ``scheduler``).  Afterwards every band object has
    its ``seg_path``, ``bkg_path``, ``cat_path`` and ``seg_args`` set, as if
    ``band.segment(...)`` had been called on it.

    Returns
    -------
    list of dict
        One summary row per band: ``filt``, ``status`` (``"computed"`` or
        ``"cached"``), ``nobj``, ``seconds`` (wall time of the band's task),
        ``cpu_seconds`` (CPU time of the process that ran it, during the task;
        None when cached), ``reason``, ``stem``.
    """
    bands = list(bands)
    overrides = dict(overrides)
    options = {k: overrides.pop(k) for k in SEGMENT_OPTIONS if k in overrides}
    rows: dict[str, dict] = {}
    pending = []
    for band in bands:
        if not overwrite:
            t0 = time.perf_counter()
            entry = segment_entry(band, err_type, method, config, **overrides)
            if entry.is_valid():
                band.segment(err_type, method, config, False, **options, **overrides)
                rows[band.filt] = {"filt": band.filt, "status": "cached", "nobj": _nobj(band),
                                   "seconds": time.perf_counter() - t0, "cpu_seconds": None,
                                   "reason": "cached", "stem": band._product.stem}
                continue
        pending.append(band)

    nworkers = default_workers(len(pending)) if workers is None else int(workers)
    if pending and scheduler is None and min(nworkers, len(pending)) <= 1:
        # No pool for one process: run on the caller's band objects directly.
        tasks = [_Direct(b, err_type, method, config, overwrite, {**options, **overrides})
                 for b in pending]
        results = map_bands(_run_direct, tasks, workers=1, progress=progress, desc="segment")
    elif pending:
        tasks = [SegmentTask(BandSpec.from_band(b), err_type, method, config, overwrite,
                             dict(overrides), options) for b in pending]
        results = map_bands(segment_task, tasks, workers=workers, scheduler=scheduler,
                            progress=progress, desc="segment")
    else:
        results = []
    for band, res in zip(pending, results):
        if "direct" not in res:
            # Made by a worker: load the cached product into the caller's band object.
            band.segment(err_type, method, config, False, **options, **overrides)
            if band._product.stem != res["stem"]:
                raise RuntimeError(f"band {band.filt}: the worker made {res['stem']} but this "
                                   f"process expects {band._product.stem}")
            band.seg_args.update(from_cache=not res["computed"], reason=res["reason"])
        rows[band.filt] = {"filt": band.filt,
                           "status": "computed" if res["computed"] else "cached",
                           "nobj": _nobj(band), "seconds": res["seconds"],
                           "cpu_seconds": res.get("cpu_seconds"), "reason": res["reason"],
                           "stem": band._product.stem}
    return [rows[b.filt] for b in bands]


class _Direct:
    """An in-process task on the caller's own band object."""

    def __init__(self, band, err_type, method, config, overwrite, overrides):
        self.band, self.err_type, self.method, self.config = band, err_type, method, config
        self.overwrite, self.overrides = overwrite, overrides
        self.label = band.filt


def _run_direct(task: _Direct) -> dict:
    t0, c0 = time.perf_counter(), time.process_time()
    b = task.band
    b.segment(task.err_type, task.method, task.config, task.overwrite, **task.overrides)
    return {"direct": True, "computed": not b.seg_args["from_cache"],
            "reason": b.seg_args["reason"], "seconds": time.perf_counter() - t0,
            "cpu_seconds": time.process_time() - c0}


def format_summary(rows: list[dict], elapsed: float, where: str) -> str:
    """A short table of a multi-band run, for the terminal and the log."""
    ncomp = sum(r["status"] == "computed" for r in rows)
    lines = [f"{len(rows)} bands in {elapsed:.2f} s ({where}): {ncomp} computed, "
             f"{len(rows) - ncomp} cached"]
    width = max([len(r["filt"]) for r in rows] + [6])
    for r in rows:
        nobj = "?" if r.get("nobj") is None else str(r["nobj"])
        cpu = r.get("cpu_seconds")
        lines.append(f"  {r['filt']:<{width}}  {r['status']:<8}  {nobj:>7} objects  "
                     f"{r['seconds']:7.2f} s" + ("" if cpu is None else f"  ({cpu:.2f} CPU s)"))
    return "\n".join(lines)
