"""SExtractor-named extraction parameters.

`Params` is the single parameter object of the extraction engine.  Keys and
meanings are SExtractor 2.25's (``DETECT_THRESH``, ``PHOT_APERTURES`` ...), values
are parsed into Python types (float, int, bool, str, tuple).  It is immutable
and hashable through :meth:`Params.canonical`, which the product cache uses.

Values that SExtractor expresses in other units are kept as SExtractor has them:
``PHOT_APERTURES`` are diameters in *pixels*; ``SEEING_FWHM`` is in arcsec.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["Params", "PARAMETER_SPEC"]

# name -> (kind, SExtractor 2.25 built-in default)
# kind: "float", "int", "bool", "str", "floats" (tuple of float), "strs"
PARAMETER_SPEC: dict[str, tuple[str, Any]] = {
    # detection
    "DETECT_TYPE": ("str", "CCD"),
    "DETECT_MINAREA": ("int", 5),
    "DETECT_MAXAREA": ("int", 0),
    "THRESH_TYPE": ("str", "RELATIVE"),
    "DETECT_THRESH": ("float", 1.5),
    "ANALYSIS_THRESH": ("float", 1.5),
    "FILTER": ("bool", True),
    "FILTER_NAME": ("str", "default.conv"),
    "FILTER_THRESH": ("floats", ()),
    "DEBLEND_NTHRESH": ("int", 32),
    "DEBLEND_MINCONT": ("float", 0.005),
    "CLEAN": ("bool", True),
    "CLEAN_PARAM": ("float", 1.0),
    "MASK_TYPE": ("str", "CORRECT"),
    # weighting
    "WEIGHT_TYPE": ("strs", ("NONE",)),
    "WEIGHT_GAIN": ("bool", True),
    "WEIGHT_THRESH": ("floats", ()),
    "RESCALE_WEIGHTS": ("bool", True),
    # photometry
    "PHOT_APERTURES": ("floats", (5.0,)),
    "PHOT_AUTOPARAMS": ("floats", (2.5, 3.5)),
    "PHOT_PETROPARAMS": ("floats", (2.0, 3.5)),
    "PHOT_AUTOAPERS": ("floats", (0.0, 0.0)),
    "PHOT_FLUXFRAC": ("floats", (0.5,)),
    "SATUR_LEVEL": ("float", 50000.0),
    "SATUR_KEY": ("str", "SATURATE"),
    "MAG_ZEROPOINT": ("float", 0.0),
    "MAG_GAMMA": ("float", 4.0),
    "GAIN": ("float", 0.0),
    "GAIN_KEY": ("str", "GAIN"),
    "PIXEL_SCALE": ("float", 0.0),
    # star/galaxy separation
    "SEEING_FWHM": ("float", 1.2),
    "STARNNW_NAME": ("str", "default.nnw"),
    # background
    "BACK_TYPE": ("strs", ("AUTO",)),
    "BACK_VALUE": ("floats", (0.0,)),
    "BACK_SIZE": ("int", 64),
    "BACK_FILTERSIZE": ("int", 3),
    "BACK_FILTTHRESH": ("float", 0.0),
    "BACKPHOTO_TYPE": ("str", "GLOBAL"),
    "BACKPHOTO_THICK": ("int", 24),
    # memory
    "MEMORY_OBJSTACK": ("int", 3000),
    "MEMORY_PIXSTACK": ("int", 300000),
    "MEMORY_BUFSIZE": ("int", 1024),
    # output (kept so that a galfind .sex file round-trips; not used by sep)
    "CATALOG_NAME": ("str", "test.cat"),
    "CATALOG_TYPE": ("str", "FITS_1.0"),
    "PARAMETERS_NAME": ("str", "default.param"),
    "CHECKIMAGE_TYPE": ("strs", ("NONE",)),
    "CHECKIMAGE_NAME": ("strs", ("check.fits",)),
    "VERBOSE_TYPE": ("str", "NORMAL"),
    "NTHREADS": ("int", 1),
    "INTERP_TYPE": ("strs", ("ALL",)),
    "INTERP_MAXXLAG": ("int", 16),
    "INTERP_MAXYLAG": ("int", 16),
    "WRITE_XML": ("bool", False),
    "XML_NAME": ("str", "sex.xml"),
    "HEADER_SUFFIX": ("str", ".head"),
    "FITS_UNSIGNED": ("bool", False),
    # Accepted so that any SExtractor 2.25 .sex file reads; galseg's own engine
    # does not use them (they are in NON_SCIENCE; the sextractor backend
    # passes them on).
    "WEIGHT_IMAGE": ("strs", ("weight.fits",)),
    "FLAG_IMAGE": ("strs", ("flag.fits",)),
    "FLAG_TYPE": ("strs", ("OR",)),
    "DGEO_TYPE": ("str", "NONE"),
    "DGEO_IMAGE": ("str", "dgeo.fits"),
    "ASSOC_NAME": ("str", "sky.list"),
    "ASSOC_DATA": ("strs", ("2", "3", "4")),
    "ASSOC_PARAMS": ("strs", ("2", "3", "4")),
    "ASSOCCOORD_TYPE": ("str", "PIXEL"),
    "ASSOC_RADIUS": ("float", 2.0),
    "ASSOC_TYPE": ("str", "NEAREST"),
    "ASSOCSELEC_TYPE": ("str", "MATCHED"),
    "PSF_NAME": ("strs", ("default.psf",)),
    "PSF_NMAX": ("int", 1),
    "PATTERN_TYPE": ("str", "RINGS-HARMONIC"),
    "SOM_NAME": ("str", "default.som"),
    "XSL_URL": ("str", ""),
}

# Parameters that cannot change any galseg product (file names, verbosity ...).
# They are excluded from the cache key.
NON_SCIENCE = frozenset({
    "CATALOG_NAME", "CATALOG_TYPE", "CHECKIMAGE_TYPE", "CHECKIMAGE_NAME",
    "VERBOSE_TYPE", "NTHREADS", "WRITE_XML", "XML_NAME", "HEADER_SUFFIX",
    "FITS_UNSIGNED", "PARAMETERS_NAME",
    "WEIGHT_IMAGE", "FLAG_IMAGE", "FLAG_TYPE", "DGEO_TYPE", "DGEO_IMAGE",
    "ASSOC_NAME", "ASSOC_DATA", "ASSOC_PARAMS", "ASSOCCOORD_TYPE", "ASSOC_RADIUS",
    "ASSOC_TYPE", "ASSOCSELEC_TYPE", "PSF_NAME", "PSF_NMAX", "PATTERN_TYPE",
    "SOM_NAME", "XSL_URL",
})


def _coerce(name: str, value: Any) -> Any:
    """Parse ``value`` (a Python value or a SExtractor string) into the kind of ``name``."""
    kind = PARAMETER_SPEC[name][0]
    try:
        if kind in ("floats", "strs"):
            if isinstance(value, str):
                items = [v.strip() for v in value.replace(",", " ").split()]
            elif isinstance(value, (list, tuple)):
                items = list(value)
            else:
                items = [value]
            if kind == "floats":
                return tuple(float(v) for v in items)
            return tuple(str(v).strip() for v in items)
        if isinstance(value, (list, tuple)):
            if len(value) != 1:
                raise ValueError("expected a single value")
            value = value[0]
        if kind == "float":
            return float(value)
        if kind == "int":
            f = float(value)
            if f != int(f):
                raise ValueError("expected an integer")
            return int(f)
        if kind == "bool":
            if isinstance(value, bool):
                return value
            s = str(value).strip().upper()
            if s in ("Y", "YES", "T", "TRUE", "1"):
                return True
            if s in ("N", "NO", "F", "FALSE", "0"):
                return False
            raise ValueError("expected Y or N")
        return str(value).strip()
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"invalid value {value!r} for SExtractor parameter {name} ({kind}): {exc}"
        ) from None


class Params(Mapping):
    """An immutable set of SExtractor-named extraction parameters.

    Parameters
    ----------
    values : mapping, optional
        Parameter values by SExtractor name (case-insensitive).  Values may be
        Python values or SExtractor strings (``"Y"``, ``"2.5, 4.0"``).
        Missing parameters take SExtractor 2.25's built-in defaults.
    **overrides
        More values, applied after ``values``.

    Examples
    --------
    >>> p = Params({"DETECT_THRESH": "1.8"}, FILTER="N")
    >>> p["DETECT_THRESH"], p["FILTER"]
    (1.8, False)
    >>> p.replace(DETECT_THRESH=2.5)["DETECT_THRESH"]
    2.5
    """

    __slots__ = ("_values", "_kernel")

    def __init__(self, values: Mapping[str, Any] | None = None, **overrides: Any):
        merged = {k: v for k, (_, v) in PARAMETER_SPEC.items()}
        for source in (values or {}), overrides:
            for key, val in source.items():
                name = key.upper()
                if name not in PARAMETER_SPEC:
                    raise KeyError(
                        f"unknown SExtractor parameter {key!r}; known: "
                        + ", ".join(sorted(PARAMETER_SPEC))
                    )
                merged[name] = _coerce(name, val)
        self._values = merged
        self._kernel = None

    # Mapping protocol
    def __getitem__(self, key: str) -> Any:
        try:
            return self._values[key.upper()]
        except KeyError:
            raise KeyError(f"unknown SExtractor parameter {key!r}") from None

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        changed = {
            k: v for k, v in self._values.items() if v != PARAMETER_SPEC[k][1]
        }
        body = ", ".join(f"{k}={v!r}" for k, v in changed.items())
        return f"Params({body})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Params) and self.canonical() == other.canonical()

    def __hash__(self) -> int:
        return hash(self.canonical())

    def replace(self, values: Mapping[str, Any] | None = None, **overrides: Any) -> "Params":
        """A copy with some parameters changed (SExtractor names, any case)."""
        new = Params(self._values)
        new._kernel = self._kernel
        changes = dict(values or {}, **overrides)
        for key, val in changes.items():
            name = key.upper()
            if name not in PARAMETER_SPEC:
                raise KeyError(f"unknown SExtractor parameter {key!r}")
            new._values[name] = _coerce(name, val)
            if name == "FILTER_NAME":
                new._kernel = None
        return new

    def to_dict(self) -> dict[str, Any]:
        """All values as a plain dict (tuples as lists: JSON-ready)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self._values.items()}

    def canonical(self) -> str:
        """A stable JSON string of the science parameters (for cache keys)."""
        science = {k: v for k, v in self.to_dict().items() if k not in NON_SCIENCE}
        return json.dumps(science, sort_keys=True, separators=(",", ":"))
