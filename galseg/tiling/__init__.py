"""Tiled extraction of survey mosaics: bounded memory, parallel, the untiled result.

`extract_tiled` processes an image in overlapping tiles read from its files,
on local worker processes or a Dask cluster, and returns what
`galseg.extract.run` returns for the whole image: the same catalogue, the
same segmentation map (written straight into a memory-mapped FITS file) and
the same background.  `Band_Data.segment(tiles="auto", max_memory="4GB")`
uses it when an image does not fit the memory budget.

Modules: `~galseg.tiling.plan` (tiles, windows, reliable zones, memory
budget), `~galseg.tiling.background` (the global background mesh, evaluated
on any window), `~galseg.tiling.io` (window reads, memory-mapped outputs),
`~galseg.tiling.window` (the per-window tasks), `~galseg.tiling.run` (the
driver and the global passes), `~galseg.tiling.band` (`Band_Data` glue).
"""

from .plan import TilePlan, parse_memory, tile_size_for_memory
from .run import extract_tiled

__all__ = ["extract_tiled", "TilePlan", "parse_memory", "tile_size_for_memory"]
