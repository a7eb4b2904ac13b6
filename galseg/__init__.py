"""galseg: SExtractor-faithful source extraction for survey imaging, in-process on sep.

The public entry points are `Band_Data` (one band) and `Data` (the bands of a
survey/version); see the README for a tour.
"""

from ._version import __version__

__all__ = ["Band_Data", "Data", "__version__"]


def __getattr__(name):
    # Band_Data and Data import astropy (units, wcs, io.fits: ~0.3 s): only
    # when asked for, so that `import galseg.extract` or the CLI do not pay it
    if name in ("Band_Data", "Data"):
        from . import imaging

        value = getattr(imaging, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | {"Band_Data", "Data"})
