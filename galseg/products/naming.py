"""Product paths: a readable tree like galfind's, built only from safe names.

Layout::

    {work_dir}/{instrument}/{version}/{survey}/{weight_type}/segmentation/
        {survey}_{filt}[_{label}]_{hash}_seg.fits    segmentation map (int32)
        {survey}_{filt}[_{label}]_{hash}_bkg.fits    background map (float32)
        {survey}_{filt}[_{label}]_{hash}_cat.fits    catalogue (FITS binary table, HDU 1)
        {survey}_{filt}[_{label}]_{hash}.json        sidecar: the commit marker
        {survey}_{filt}[_{label}]_{hash}.lock        present only while a run holds it

``hash`` is the 10-hex short hash of the product key, so products made with
different inputs or parameters sit side by side and never overwrite each other.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = [
    "safe_component",
    "product_dir",
    "product_stem",
    "WEIGHT_TYPES",
    "SUFFIXES",
]

# SExtractor WEIGHT_TYPE values (for the detection image).
WEIGHT_TYPES = ("NONE", "BACKGROUND", "MAP_RMS", "MAP_VAR", "MAP_WEIGHT")

# part name -> file suffix
SUFFIXES = {"seg": "_seg.fits", "bkg": "_bkg.fits", "cat": "_cat.fits"}
SIDECAR_SUFFIX = ".json"
LOCK_SUFFIX = ".lock"

# A plain name: starts with a letter or digit, then letters, digits, ``._+-``.
_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+\-]*")
_MAX_LEN = 128


def safe_component(value, what: str) -> str:
    """Check that ``value`` can be used as one path component, and return it.

    Parameters
    ----------
    value : str
        A survey, version, instrument, filter or label name.
    what : str
        What the value is (``"survey"``, ``"filt"`` ...), for the error.

    Returns
    -------
    str
        ``value`` unchanged.

    Raises
    ------
    ValueError
        If ``value`` is empty, contains a path separator, ``..``, NUL or other
        characters outside ``A-Z a-z 0-9 . _ + -``, starts with ``.`` or
        ``-``, or is longer than 128 characters.  The message names ``what``
        and the value.
    """
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, not {type(value).__name__} ({value!r})")
    problem = None
    if value == "":
        problem = "is empty"
    elif "/" in value or "\\" in value or (os.sep in value) or (os.altsep and os.altsep in value):
        problem = "contains a path separator"
    elif "\x00" in value:
        problem = "contains a NUL character"
    elif ".." in value:
        problem = "contains '..'"
    elif value[0] in ".-":
        problem = f"starts with {value[0]!r}"
    elif len(value) > _MAX_LEN:
        problem = f"is longer than {_MAX_LEN} characters"
    elif not _PLAIN.fullmatch(value):
        bad = sorted({c for c in value if not re.fullmatch(r"[A-Za-z0-9._+\-]", c)})
        problem = f"contains characters not allowed in a file name: {''.join(bad)!r}"
    if problem:
        raise ValueError(
            f"invalid {what} {value!r}: it {problem} (use letters, digits and . _ + -)"
        )
    return value


def check_weight_type(weight_type: str) -> str:
    """Return ``weight_type`` upper-cased if it is a SExtractor WEIGHT_TYPE."""
    wt = str(weight_type).upper()
    if wt not in WEIGHT_TYPES:
        raise ValueError(
            f"invalid weight_type {weight_type!r}: expected one of {', '.join(WEIGHT_TYPES)}"
        )
    return wt


def product_dir(work_dir, instrument: str, version: str, survey: str, weight_type: str) -> Path:
    """The folder that holds a band's segmentation products.

    ``{work_dir}/{instrument}/{version}/{survey}/{weight_type}/segmentation``;
    every component is checked with `safe_component`.  Nothing is created.
    """
    return (
        Path(work_dir)
        / safe_component(instrument, "instrument")
        / safe_component(version, "version")
        / safe_component(survey, "survey")
        / check_weight_type(weight_type)
        / "segmentation"
    )


def product_stem(survey: str, filt: str, short_hash: str, label: str | None = None) -> str:
    """File-name stem ``{survey}_{filt}[_{label}]_{hash}`` shared by a product's files."""
    parts = [safe_component(survey, "survey"), safe_component(filt, "filt")]
    if label is not None:
        parts.append(safe_component(label, "label"))
    if not re.fullmatch(r"[0-9a-f]{10}", short_hash or ""):
        raise ValueError(f"invalid short hash {short_hash!r}: expected 10 hex digits")
    parts.append(short_hash)
    return "_".join(parts)
