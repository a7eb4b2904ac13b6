"""Source extraction: SExtractor 2.25 science, in process.

The entry point is :func:`run` (see :mod:`galseg.extract.engine`)::

    from galseg.extract import run, load_config
    params = load_config("galfind_default")
    result = run(sci, rms=rms, params=params)        # method="sep"
    result.segmap, result.catalog
"""

from .engine import detect_sources, run
from .params import Params
from .presets import load_config
from .result import ExtractionResult

__all__ = ["run", "detect_sources", "Params", "ExtractionResult", "load_config"]
