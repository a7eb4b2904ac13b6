"""Tiling for `Band_Data.segment`: when to tile, and the tiled computation of a band.

``tiles=None`` never tiles; ``tiles="auto"`` tiles when the band's image does
not fit the memory budget ``max_memory`` in one piece (core size from
`galseg.tiling.plan.tile_size_for_memory`); an integer forces that core size.
The tiled run reads the band's files a window at a time (a derived noise map
is derived window by window) and gives the untiled run's products, so the
product cache treats both alike: ``tiles`` and ``max_memory`` say how a
product is computed, not what it is, and stay out of its key (the product's
provenance records the tiling).
"""

from __future__ import annotations

import multiprocessing as mp
import os

from ..extract.detect import detection_kernel
from .plan import Margins, default_overlap, parse_memory, tile_size_for_memory

__all__ = ["band_tile_size", "compute_band_tiled", "band_shape", "tile_workers"]


def band_shape(band) -> tuple[int, int]:
    """The science image shape, from its header (the image is not read)."""
    hdr = band.header
    pre = "ZNAXIS" if "ZNAXIS1" in hdr else "NAXIS"
    return int(hdr[f"{pre}2"]), int(hdr[f"{pre}1"])


def tile_workers() -> int:
    """Tile worker processes for a band: one per CPU, or 1 inside a worker
    process (bands already running in parallel)."""
    if mp.parent_process() is not None:
        return 1
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def band_tile_size(band, params, method: str, tiles, max_memory) -> int | None:
    """Core size to segment ``band`` with, or None for one piece.

    Raises
    ------
    ValueError
        For a bad ``tiles``, or tiles asked of a method that cannot tile.
    """
    parse_memory(max_memory)
    if tiles is None:
        return None
    if isinstance(tiles, str):
        if tiles != "auto":
            raise ValueError(f"tiles must be None, 'auto' or a tile size in pixels, got {tiles!r}")
        if method != "sep":
            return None  # only galseg's own engine tiles; the others run in one piece
        kernel = detection_kernel(params)
        weighted = params["WEIGHT_TYPE"][0].upper() not in ("NONE", "BACKGROUND")
        margins = Margins.for_params(params, None if kernel is None else kernel.shape, weighted)
        return tile_size_for_memory(band_shape(band), max_memory, workers=tile_workers(),
                                    overlap=default_overlap(params, margins))
    if isinstance(tiles, bool) or not isinstance(tiles, int):
        raise ValueError(f"tiles must be None, 'auto' or a tile size in pixels, got {tiles!r}")
    if tiles < 16:
        raise ValueError(f"tiles (tile size) must be at least 16 pixels, got {tiles}")
    if method != "sep":
        raise ValueError(f"method={method!r} cannot run tiled; use method='sep' or tiles=None")
    return int(tiles)


def compute_band_tiled(band, err_type: str, params, tile_size: int, max_memory="4GB", *,
                       workers=None, scheduler=None):
    """The band's `ExtractionResult`, computed tile by tile from its files.

    Its ``segmap``/``background`` are read-only memory maps of temporary files
    in the band's work directory (already unlinked: they vanish when released).
    """
    from ..imaging.band import _rms_from_wht, _wht_from_rms
    from .io import as_source
    from .run import extract_tiled

    path, ext = band._map_location(err_type)
    if path is not None:
        err = as_source((path, ext), f"{band.filt} {err_type} map")
    else:  # derived from the other map, window by window
        other = "wht" if err_type == "rms_err" else "rms_err"
        opath, oext = band._map_location(other)
        err = as_source((opath, oext), f"{band.filt} {err_type} map",
                        transform=_rms_from_wht if err_type == "rms_err" else _wht_from_rms)
    sci = as_source((band.im_path, band.im_ext), f"{band.filt} science image")
    kwargs = {"rms": err} if err_type == "rms_err" else {"wht": err}
    scratch = band.work_dir
    os.makedirs(scratch, exist_ok=True)
    return extract_tiled(sci, params=params, header=band.header, wcs=band.load_wcs(),
                         tile_size=tile_size, max_memory=max_memory,
                         workers=tile_workers() if workers is None and scheduler is None
                         else workers, scheduler=scheduler, scratch_dir=scratch, **kwargs)
