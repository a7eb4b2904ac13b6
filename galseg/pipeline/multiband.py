"""The multi-band pipeline behind `Data`'s methods: segment, stack, forced photometry."""

from __future__ import annotations

import logging
import sys
import time

from .catalog import multiband_catalog
from .forced import perform_forced_phot
from .stack import parse_band_list, stack_bands, stack_name

__all__ = ["segment_data", "stack_data", "forced_phot_data", "resolve_detection_band"]

log = logging.getLogger("galseg.pipeline")


def _defaults(err_type, method, config):
    from ..config import settings

    seg = settings().get("segmentation") or {}
    return (err_type or seg.get("err_type", "rms_err"), method or seg.get("method", "sep"),
            config or seg.get("config", "galfind_default"))


def _where(workers, scheduler) -> str:
    if scheduler is not None:
        return "Dask"
    return "local processes" if workers is None else f"{workers} local worker(s)"


def _report(text: str, progress: bool) -> None:
    log.info("%s", text)
    if progress:
        print(text, file=sys.stderr)


def segment_data(data, err_type=None, method=None, config=None, overwrite=False, *,
                 workers=None, scheduler=None, progress=True, **overrides):
    """`Data.segment`: every band, cached ones skipped, in parallel, with a summary."""
    from ..parallel.bands import format_summary, segment_bands

    err_type, method, config = _defaults(err_type, method, config)
    t0 = time.perf_counter()
    rows = segment_bands(list(data), err_type, method, config, overwrite, workers=workers,
                         scheduler=scheduler, progress=progress, **overrides)
    data.segment_summary = rows
    _report(format_summary(rows, time.perf_counter() - t0, _where(workers, scheduler)), progress)
    return data


def stack_data(data, bands, *, common_zp="auto", overwrite=False, dtype="float32"):
    """`Data.stack`: the stack of ``bands`` (names from ``data``), or the band itself for one."""
    names = parse_band_list(bands)
    members = [data[n] for n in names]
    if len(members) == 1:
        return members[0]
    stacks = data.__dict__.setdefault("stacks", {})
    stack = stack_bands(members, common_zp=common_zp, overwrite=overwrite, dtype=dtype)
    stacks[stack_name(names)] = stack
    return stack


def resolve_detection_band(data, forced_phot_band, *, common_zp="auto"):
    """A `Band_Data` for ``forced_phot_band``: a band, a band name, or bands to stack."""
    from ..imaging.band import Band_Data

    if isinstance(forced_phot_band, Band_Data):
        return forced_phot_band
    return stack_data(data, forced_phot_band, common_zp=common_zp)


def forced_phot_data(data, forced_phot_band, err_type=None, method="sep", config=None,
                     overwrite=False, *, common_zp="auto", workers=None, scheduler=None,
                     progress=True, **overrides):
    """`Data.perform_forced_phot`: forced catalogues of every band, joined."""
    err_type, _, config = _defaults(err_type, None, config)
    t0 = time.perf_counter()
    det = resolve_detection_band(data, forced_phot_band, common_zp=common_zp)
    result = perform_forced_phot(list(data), det, err_type=err_type, method=method,
                                 config=config, overwrite=overwrite, workers=workers,
                                 scheduler=scheduler, progress=progress, **overrides)
    path = multiband_catalog(list(data), result, err_type, overwrite=overwrite)
    data.forced_phot_band = det
    data.forced_phot = result
    data._cat_path = path
    from ..parallel.bands import format_summary

    text = format_summary(result.rows, time.perf_counter() - t0, _where(workers, scheduler))
    _report(f"forced photometry on {det.filt}: " + text + f"\n  catalogue: {path}", progress)
    return data
