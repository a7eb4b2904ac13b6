"""galseg: SExtractor-faithful source extraction for survey imaging, in-process on sep.

The public entry points are `Band_Data` (one band) and `Data` (the bands of a
survey/version); see the README for a tour.
"""

from ._version import __version__
from .imaging import Band_Data, Data

__all__ = ["Band_Data", "Data", "__version__"]
