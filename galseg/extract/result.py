"""The output of one extraction run, whatever the backend."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from astropy.table import Table

__all__ = ["ExtractionResult"]


@dataclass
class ExtractionResult:
    """Products of one single-band extraction.

    Attributes
    ----------
    segmap : ndarray of int32
        Segmentation map; pixel value = catalogue ``NUMBER`` (0 = sky).
    background : ndarray of float32
        The background that was subtracted from the science image
        (SExtractor's ``BACKGROUND`` check image; a constant map for
        ``BACK_TYPE MANUAL``).
    catalog : `~astropy.table.Table`
        One row per object, SExtractor column names and units, ``NUMBER``
        1..N in row order.
    rms : ndarray of float32 or None
        The absolute per-pixel noise used for detection and errors (after
        MAP_WEIGHT rescaling); ``inf`` where the pixel has no weight.
    meta : dict
        JSON-able run information (backend, timings, weight scale factor,
        counts ...), written into product headers and sidecars.
    sources : `galseg.extract.engine.Sources` or None
        The sep engine's detection behind this result, when it was just
        computed in this process (forced photometry continues from it instead
        of detecting again); None otherwise.  Never stored.
    """

    segmap: np.ndarray
    background: np.ndarray
    catalog: Table
    rms: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    sources: Any = field(default=None, repr=False, compare=False)

    @property
    def nobj(self) -> int:
        """Number of catalogued objects."""
        return len(self.catalog)
