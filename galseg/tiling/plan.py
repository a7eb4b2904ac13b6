"""Tile plans: cores, overlapping windows, reliable zones, and the memory budget.

A mosaic is cut into *cores* that partition it; each core is processed in a
*window*, the core grown by ``overlap`` pixels on every side (clipped to the
image).  Inside a window, a pixel is *reliable* when everything the engine
computes there (interpolated data, filtered image, threshold) equals the
untiled run's value: pixels closer to a window edge than the detection
filter's half-size (plus the ``INTERP_MAXXLAG`` / ``INTERP_MAXYLAG`` reach of
weight-map interpolation on the left / top) are not, unless that edge is the
image's own edge.

A detection (8-connected group of detected pixels, SExtractor's "parent") is
*complete* in a window when its bounding box lies one pixel inside the
reliable zone: then its pixels, their values and its neighbours are the
untiled run's, so sep deblends it identically.  A detection belongs to the
tile whose core holds its *anchor*, the last pixel SExtractor's scan reaches
(last row, rightmost pixel on it), if it is complete there; otherwise to a
larger window built around it (see `galseg.tiling.run`).

Tile size: `tile_size_for_memory` turns a memory budget (``max_memory``) into
a core size, from the engine's measured memory per pixel of a window.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

__all__ = ["TilePlan", "Window", "Margins", "parse_memory", "tile_size_for_memory",
           "BYTES_PER_PIXEL", "WHOLE_IMAGE_BYTES_PER_PIXEL", "WORKER_OVERHEAD", "MAIN_OVERHEAD", "default_overlap"]

#: Peak memory of one window's extraction per window pixel (bytes): about 40
#: measured (peak RSS of a window task against the window's area, synthetic
#: JWST-like mosaics; float32 image, noise, data, filtered image, threshold,
#: int32 segmentation maps, masks, sep's and the measurement's buffers), with
#: a 1.6x margin for crowded fields; see ``benchmarks/bench_mosaic.py``.
BYTES_PER_PIXEL = 64
#: Peak memory of the one-piece engine per image pixel, inputs included: about
#: 21.5-24 bytes measured at 8192^2 (benchmarks/bench_extract.py), with a margin.
#: Decides whether an image is tiled at all.
WHOLE_IMAGE_BYTES_PER_PIXEL = 32
#: Fixed memory of a worker process (Python, numpy, numba, sep, astropy and
#: the compiled kernels): about 270 MiB measured.
WORKER_OVERHEAD = 320 * 2**20
#: Memory the parent process keeps for the per-object tables and the plan.
MAIN_OVERHEAD = 500 * 2**20

_UNITS = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9,
          "GB": 10**9, "T": 10**12, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30,
          "TIB": 2**40}


def parse_memory(value) -> int:
    """Bytes from ``4e9``, ``"4GB"``, ``"4 GiB"``, ``"512MB"`` ...

    Decimal units (``kB``, ``MB``, ``GB``, also ``K``/``M``/``G``) are powers
    of 1000, binary ones (``KiB``, ``MiB``, ``GiB``) powers of 1024, as in Dask.

    Raises
    ------
    ValueError
        For anything else (the message quotes the value).
    """
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError(f"max_memory must be positive, got {value!r}")
        return int(value)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", value)
        if m:
            unit = m.group(2).upper()
            if unit in _UNITS:
                n = float(m.group(1)) * _UNITS[unit]
                if n > 0:
                    return int(n)
    raise ValueError(f"max_memory must be a positive number of bytes or a string such as "
                     f"'4GB' or '512MiB', got {value!r}")


@dataclass(frozen=True)
class Margins:
    """Widths (pixels) next to a window edge where values are not the untiled ones."""

    left: int
    right: int
    top: int
    bottom: int

    @classmethod
    def for_params(cls, params, kernel_shape, weighted: bool) -> "Margins":
        """From the detection kernel and, for weighted runs, the interpolation lags."""
        kh, kw = kernel_shape if kernel_shape is not None else (1, 1)
        left, right = kw // 2, kw - 1 - kw // 2
        top, bottom = kh // 2, kh - 1 - kh // 2
        interp = params["INTERP_TYPE"][0].upper() if params["INTERP_TYPE"] else "NONE"
        if weighted and interp != "NONE":
            # a pixel's interpolated value comes from up to INTERP_MAXXLAG
            # pixels on its left or INTERP_MAXYLAG lines above it
            left += int(params["INTERP_MAXXLAG"])
            top += int(params["INTERP_MAXYLAG"])
        return cls(left, right, top, bottom)

    @property
    def largest(self) -> int:
        return max(self.left, self.right, self.top, self.bottom)


@dataclass(frozen=True)
class Window:
    """A rectangle of the image processed as one task.

    ``y0:y1, x0:x1`` (half-open) is the window; ``core`` ``(cy0, cy1, cx0,
    cx1)`` the part a tile is responsible for (``None`` for a window built
    around large objects, whose ``focus`` ``(ymin, ymax, xmin, xmax)``,
    inclusive, is the region it was built for).
    """

    index: int
    y0: int
    y1: int
    x0: int
    x1: int
    core: tuple[int, int, int, int] | None = None
    kind: str = "tile"
    focus: tuple[int, int, int, int] | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return (self.y1 - self.y0, self.x1 - self.x0)

    @property
    def npix(self) -> int:
        return (self.y1 - self.y0) * (self.x1 - self.x0)

    def reliable(self, shape, margins: Margins) -> tuple[int, int, int, int]:
        """``(ry0, ry1, rx0, rx1)``: the reliable zone, in image coordinates."""
        h, w = shape
        ry0 = self.y0 + margins.top if self.y0 > 0 else 0
        ry1 = self.y1 - margins.bottom if self.y1 < h else h
        rx0 = self.x0 + margins.left if self.x0 > 0 else 0
        rx1 = self.x1 - margins.right if self.x1 < w else w
        return ry0, ry1, rx0, rx1

    def inner(self, shape, margins: Margins) -> tuple[int, int, int, int]:
        """Bounds ``(ylo, yhi, xlo, xhi)`` (inclusive) a complete detection's
        bounding box must lie within: one pixel inside the reliable zone, or
        anywhere up to an image edge."""
        h, w = shape
        ry0, ry1, rx0, rx1 = self.reliable(shape, margins)
        ylo = ry0 + 1 if self.y0 > 0 else 0
        yhi = ry1 - 2 if self.y1 < h else h - 1
        xlo = rx0 + 1 if self.x0 > 0 else 0
        xhi = rx1 - 2 if self.x1 < w else w - 1
        return ylo, yhi, xlo, xhi


def _edges(n: int, size: int) -> np.ndarray:
    k = max(1, math.ceil(n / size))
    return np.round(np.linspace(0, n, k + 1)).astype(np.int64)


@dataclass(frozen=True)
class TilePlan:
    """Cores partitioning an image and their overlapping windows.

    Parameters
    ----------
    shape : (int, int)
        Image shape.
    tile_size : int
        Largest core side (cores are as equal as possible).
    overlap : int
        Window margin around each core.
    """

    shape: tuple[int, int]
    tile_size: int
    overlap: int

    def __post_init__(self):
        if int(self.tile_size) < 16:
            raise ValueError(f"tile size must be at least 16 pixels, got {self.tile_size}")
        if int(self.overlap) < 0:
            raise ValueError(f"overlap must be >= 0, got {self.overlap}")

    @property
    def y_edges(self) -> np.ndarray:
        return _edges(self.shape[0], int(self.tile_size))

    @property
    def x_edges(self) -> np.ndarray:
        return _edges(self.shape[1], int(self.tile_size))

    @property
    def grid(self) -> tuple[int, int]:
        return len(self.y_edges) - 1, len(self.x_edges) - 1

    def __len__(self) -> int:
        ny, nx = self.grid
        return ny * nx

    def windows(self) -> list[Window]:
        """The tiles' windows, in raster order (``index = row * ncols + col``)."""
        h, w = self.shape
        ye, xe = self.y_edges, self.x_edges
        o = int(self.overlap)
        out = []
        for j in range(len(ye) - 1):
            for i in range(len(xe) - 1):
                cy0, cy1, cx0, cx1 = int(ye[j]), int(ye[j + 1]), int(xe[i]), int(xe[i + 1])
                out.append(Window(len(out), max(0, cy0 - o), min(h, cy1 + o), max(0, cx0 - o),
                                  min(w, cx1 + o), (cy0, cy1, cx0, cx1), "tile"))
        return out

    def tile_of(self, y, x) -> np.ndarray:
        """Index of the tile whose core holds pixel(s) ``(y, x)``."""
        ye, xe = self.y_edges, self.x_edges
        j = np.searchsorted(ye, np.asarray(y), side="right") - 1
        i = np.searchsorted(xe, np.asarray(x), side="right") - 1
        return j * (len(xe) - 1) + i

    def tile_complete(self, tiles, ymin, ymax, xmin, xmax, margins: Margins) -> np.ndarray:
        """Whether detections with these bounding boxes are complete in the
        windows of ``tiles`` (vectorised)."""
        h, w = self.shape
        o = int(self.overlap)
        ye, xe = self.y_edges, self.x_edges
        nxt = len(xe) - 1
        tiles = np.asarray(tiles)
        j, i = tiles // nxt, tiles % nxt
        y0 = np.maximum(ye[j] - o, 0)
        y1 = np.minimum(ye[j + 1] + o, h)
        x0 = np.maximum(xe[i] - o, 0)
        x1 = np.minimum(xe[i + 1] + o, w)
        ylo = np.where(y0 > 0, y0 + margins.top + 1, 0)
        yhi = np.where(y1 < h, y1 - margins.bottom - 2, h - 1)
        xlo = np.where(x0 > 0, x0 + margins.left + 1, 0)
        xhi = np.where(x1 < w, x1 - margins.right - 2, w - 1)
        return (np.asarray(ymin) >= ylo) & (np.asarray(ymax) <= yhi) & \
            (np.asarray(xmin) >= xlo) & (np.asarray(xmax) <= xhi)


def default_overlap(params, margins: Margins) -> int:
    """Window margin: room for the largest aperture and typical objects.

    At least the reliability margins plus the largest ``PHOT_APERTURES``
    radius and 64 pixels, and 128 pixels; objects that need more are handled
    in larger windows, so this only trades work between tiles and those.
    """
    aper = max([float(d) for d in params["PHOT_APERTURES"]] + [0.0]) / 2.0
    need = margins.largest + int(math.ceil(aper)) + 64
    return int(max(128, 16 * math.ceil(need / 16)))


def tile_size_for_memory(shape, max_memory, *, workers: int = 1, overlap: int = 128,
                         bytes_per_pixel: float = BYTES_PER_PIXEL,
                         worker_overhead: int = WORKER_OVERHEAD,
                         main_overhead: int = MAIN_OVERHEAD) -> int | None:
    """The largest core side whose windows fit the memory budget.

    The budget covers the parent process (``main_overhead``) and ``workers``
    worker processes, each holding one window's extraction
    (``bytes_per_pixel`` per window pixel) plus ``worker_overhead``.

    Parameters
    ----------
    shape : (int, int)
        Image shape.
    max_memory : int or str
        Total budget (see `parse_memory`).
    workers : int
        Windows processed at the same time.
    overlap : int
        Window margin (pixels).

    Returns
    -------
    int or None
        The core side in pixels (a multiple of 16), or None when the whole
        image fits the budget in one piece (no tiling needed).

    Raises
    ------
    MemoryError
        When even a small tile does not fit (the message gives the minimum).
    """
    budget = parse_memory(max_memory)
    workers = max(1, int(workers))
    h, w = shape
    # untiled: one process holds the whole image
    if h * w * WHOLE_IMAGE_BYTES_PER_PIXEL + main_overhead + worker_overhead <= budget:
        return None
    per_worker = (budget - main_overhead) / workers - worker_overhead
    min_side = 256 + 2 * overlap
    need_min = min_side * min_side * bytes_per_pixel
    if per_worker < need_min:
        total = main_overhead + workers * (worker_overhead + need_min)
        raise MemoryError(
            f"max_memory={max_memory!r} is too small for {workers} worker(s): a {min_side}^2-pixel "
            f"window needs about {total / 1e9:.2f} GB in all; raise max_memory or use fewer "
            "workers")
    side = int(math.sqrt(per_worker / bytes_per_pixel)) - 2 * overlap
    side = 16 * (side // 16)
    return max(256, min(side, max(h, w)))
