"""Readers and writers for SExtractor's own configuration files.

* ``.conv`` -- detection filter kernels (:func:`read_conv`);
* ``.sex``  -- configuration files (:func:`read_sex`, :func:`write_sex`);
* ``.param`` -- lists of output catalogue columns (:func:`read_param`,
  :func:`expand_columns`, :func:`column_shapes`).

The parsers follow SExtractor 2.25's own (``filter.c:getconv``,
``prefs.c:readprefs``, ``catout.c:readcatparams``) so that a file SExtractor
accepts is read to the same values, with two deliberate differences: an unknown
keyword is an error here (SExtractor only warns and ignores it, which hides
typos), and keywords are matched in any case.  Errors name the file and line.

Catalogue column naming scheme
------------------------------
A ``.param`` entry ``FLUX_APER(6)`` asks SExtractor for a vector quantity.  In
its ``FITS_1.0`` output (the format galfind reads) that is *one* column named
``FLUX_APER`` whose cells are vectors: an array of shape ``(N, 6)``.  galseg
catalogues use the same scheme: a column keeps its base name and the aperture
columns (``FLUX_APER``, ``FLUXERR_APER``, ``MAG_APER``, ``MAGERR_APER``) have
shape ``(N, naper)`` with ``naper = len(PHOT_APERTURES)``, so
``cat["FLUX_APER"][:, 0]`` is the first aperture for every object.  galfind
rewrites its ``.param`` file as ``FLUX_APER(1)``, ``FLUX_APER(2)`` ... one line
per aperture; those repeated entries name the same single column.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .params import PARAMETER_SPEC, Params

__all__ = [
    "read_conv",
    "read_sex",
    "write_sex",
    "read_param",
    "expand_columns",
    "column_shapes",
    "APERTURE_COLUMNS",
]

# SExtractor's limit on the number of filter-mask elements (filter.h: MAXMASK).
_MAXMASK = 1024

# Token separators of SExtractor's configuration parser (preflist.h: notokstr).
_SEX_SEPARATORS = re.compile(r'[ \t=,;\n\r"]+')

# Vector output parameters whose length is the number of PHOT_APERTURES.
APERTURE_COLUMNS = frozenset({"FLUX_APER", "FLUXERR_APER", "MAG_APER", "MAGERR_APER"})

_PARAM_ENTRY = re.compile(r"^([A-Za-z][A-Za-z0-9_]*)(?:\s*[\(\[\{]\s*([^\)\]\}]*)[\)\]\}])?$")


def _where(path: Path | str, lineno: int) -> str:
    return f"{path}, line {lineno}"


# --------------------------------------------------------------------------- .conv
def read_conv(path: str | os.PathLike) -> tuple[np.ndarray, bool]:
    """Read a SExtractor convolution-mask (``.conv``) file.

    Parameters
    ----------
    path : str or path-like
        The file.  Its first line is ``CONV NORM`` or ``CONV NONORM``; lines
        whose first token starts with ``#`` are comments; every other non-blank
        line is one kernel row of numbers separated by blanks or tabs.

    Returns
    -------
    kernel : ndarray of float32, 2-D
        The kernel exactly as written (not normalised), first row first.
    normalise : bool
        True for ``CONV NORM`` (SExtractor then divides the kernel by the sum
        of its absolute values before filtering, see
        `galseg.extract.presets.filter_kernel`), False for ``CONV NONORM``.

    Raises
    ------
    ValueError
        If the file is not a convolution mask, a value is not a number, rows
        differ in length, or the mask exceeds SExtractor's 1024 elements; the
        message names the file and line.
    FileNotFoundError
        If the file does not exist.
    """
    path = Path(path)
    with open(path, encoding="latin-1") as fh:
        lines = fh.read().splitlines()
    if not lines or not lines[0].startswith("CONV"):
        raise ValueError(
            f"{_where(path, 1)}: not a SExtractor convolution mask "
            "(the first line must be 'CONV NORM' or 'CONV NONORM')"
        )
    head = lines[0]
    # SExtractor (filter.c) treats a bare 'CONV' header as NORM, with a warning.
    normalise = "NONORM" not in head
    rows: list[list[float]] = []
    width = None
    for lineno, line in enumerate(lines[1:], start=2):
        tokens = line.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        try:
            row = [float(t) for t in tokens]
        except ValueError:
            bad = next(t for t in tokens if not _is_float(t))
            raise ValueError(
                f"{_where(path, lineno)}: {bad!r} is not a number in convolution mask"
            ) from None
        if width is None:
            width = len(row)
        elif len(row) != width:
            raise ValueError(
                f"{_where(path, lineno)}: kernel row has {len(row)} values, "
                f"previous rows have {width}"
            )
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: convolution mask has no rows of numbers")
    kernel = np.array(rows, dtype=np.float32)
    if kernel.size > _MAXMASK:
        raise ValueError(
            f"{path}: convolution mask has {kernel.size} elements; "
            f"SExtractor allows at most {_MAXMASK}"
        )
    return kernel, normalise


def _is_float(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------- .sex
_ENV = re.compile(r"\$\{([^}]*)\}|\$([^}/:\"'\\$]+)")


def _expand_env(value: str, where: str) -> str:
    """Expand ``$NAME`` / ``${NAME}`` as SExtractor does; unknown names are errors."""
    def sub(match: re.Match) -> str:
        name = match.group(1) if match.group(1) is not None else match.group(2)
        if name not in os.environ:
            raise ValueError(f"{where}: environment variable {name!r} not found")
        return os.environ[name]

    return _ENV.sub(sub, value) if "$" in value else value


def _value_tokens(text: str) -> list[str]:
    """SExtractor's value tokens: separators `` \\t=,;"``, stop at a ``#`` token."""
    out = []
    for tok in _SEX_SEPARATORS.split(text):
        if not tok:
            continue
        if tok.startswith("#"):
            break
        out.append(tok)
    return out


def _parse_entry(key: str, tokens: Sequence[str], where: str) -> tuple[str, Any]:
    """Validate one ``KEY value...`` entry and return (canonical name, coerced value)."""
    name = key.upper()
    if name not in PARAMETER_SPEC:
        raise ValueError(f"{where}: unknown SExtractor keyword {key!r}")
    kind = PARAMETER_SPEC[name][0]
    tokens = [_expand_env(t, where) for t in tokens]
    if kind in ("floats", "strs"):
        value: Any = tuple(tokens)
    else:
        if not tokens:
            raise ValueError(f"{where}: keyword {name} has no value")
        if len(tokens) > 1:
            raise ValueError(
                f"{where}: keyword {name} takes one value, got {len(tokens)}: "
                + ", ".join(tokens)
            )
        value = tokens[0]
    try:
        Params({name: value})
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    return name, value


def _overrides_items(overrides, source: str) -> list[tuple[str, Any, str, bool]]:
    """Normalise overrides (dict or ``["-KEY", "value", ...]``).

    Returns (key, value, where, is_tokens) tuples: command-line values are
    SExtractor token lists, dict values Python values (or SExtractor strings).
    """
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return [(k, v, f"{source} {k}", False) for k, v in overrides.items()]
    if isinstance(overrides, str):
        raise TypeError("overrides must be a dict or a list of command-line tokens, not a str")
    items = list(overrides)
    out = []
    i = 0
    while i < len(items):
        key = str(items[i])
        if not key.startswith("-") or len(key) < 2:
            raise ValueError(
                f"{source}: expected '-KEYWORD' at position {i}, got {key!r}"
            )
        if i + 1 >= len(items):
            raise ValueError(f"{source}: keyword {key} has no value")
        out.append((key[1:], _value_tokens(str(items[i + 1])), f"{source} {key}", True))
        i += 2
    return out


def read_sex(
    path: str | os.PathLike,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
) -> Params:
    """Read a SExtractor configuration (``.sex``) file into `Params`.

    Parameters
    ----------
    path : str or path-like
        The configuration file: ``KEYWORD value[,value...]  # comment`` lines.
        Values are separated by blanks, tabs, commas, ``;`` or ``=``; a token
        starting with ``#`` ends the line; ``$NAME`` / ``${NAME}`` expand
        environment variables.  Keywords missing from the file take the
        `Params` defaults (SExtractor 2.25's built-in ones except
        ``PIXEL_SCALE`` 0 and ``CATALOG_TYPE`` FITS_1.0); a keyword given twice
        keeps the last value (as in SExtractor).
    overrides : dict or sequence of str, optional
        Values applied after the file, like SExtractor's command line: a dict
        ``{"DETECT_THRESH": 2.5}`` or tokens
        ``["-DETECT_THRESH", "2.5", "-FILTER", "N"]``.

    Returns
    -------
    Params
        The parameters.  When ``FILTER_NAME`` or ``STARNNW_NAME`` is a relative
        path that exists relative to the directory of ``path``, it is stored as
        that file's absolute path (SExtractor would look in the current
        directory instead; galseg resolves the rest in
        `galseg.extract.presets.filter_kernel`).  Absolute paths are kept as
        written, even when they do not exist.

    Raises
    ------
    ValueError
        For an unknown keyword, a missing or invalid value (message names file
        and line).
    FileNotFoundError
        If ``path`` does not exist.
    """
    return _read_sex(path, overrides, anchor=True)


def _read_sex(path, overrides, anchor: bool) -> Params:
    path = Path(path)
    with open(path, encoding="latin-1") as fh:
        text = fh.read()
    values: dict[str, Any] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        tokens = _value_tokens(line)
        stripped = line.strip()
        if not tokens or stripped.startswith("#"):
            continue
        where = _where(path, lineno)
        name, value = _parse_entry(tokens[0], tokens[1:], where)
        values[name] = value
    for key, value, where, is_tokens in _overrides_items(overrides, "overrides"):
        if is_tokens:
            name, value = _parse_entry(key, value, where)
        else:
            name = key.upper()
            if name not in PARAMETER_SPEC:
                raise ValueError(f"{where}: unknown SExtractor keyword {key!r}")
            try:
                Params({name: value})
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
        values[name] = value
    try:
        params = Params(values)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return _anchor_paths(params, path.resolve().parent) if anchor else params


def _anchor_paths(params: Params, directory: Path) -> Params:
    """Make FILTER_NAME / STARNNW_NAME absolute when they exist relative to ``directory``."""
    changes = {}
    for key in ("FILTER_NAME", "STARNNW_NAME"):
        value = params[key]
        if value and not os.path.isabs(value):
            candidate = directory / value
            if candidate.is_file():
                changes[key] = str(candidate.resolve())
    return params.replace(**changes) if changes else params


def _format_value(name: str, value: Any) -> str:
    kind = PARAMETER_SPEC[name][0]
    if kind == "bool":
        return "Y" if value else "N"
    if kind == "float":
        return repr(float(value))
    if kind == "int":
        return str(int(value))
    if kind == "floats":
        return ",".join(repr(float(v)) for v in value)
    if kind == "strs":
        items = [str(v) for v in value]
    else:
        items = [str(value)]
    for item in items:
        if _SEX_SEPARATORS.search(item) or item.startswith("#"):
            raise ValueError(
                f"cannot write {name}={item!r} to a .sex file: SExtractor values "
                "cannot contain blanks, tabs, ',', ';', '=', quotes or start with '#'"
            )
    return ",".join(items)


def write_sex(params: Params | Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write parameters as a SExtractor configuration file.

    Every keyword is written (SExtractor 2.25 accepts them all), so the file is
    complete and :func:`read_sex` reads back an equal `Params`.  Empty strings
    are left out (SExtractor refuses an empty string value; its built-in
    default then applies).

    Parameters
    ----------
    params : Params or mapping
        The parameters (a mapping is converted with ``Params(mapping)``).
    path : str or path-like
        Output file, overwritten.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    if not isinstance(params, Params):
        params = Params(params)
    path = Path(path)
    width = max(len(k) for k in PARAMETER_SPEC) + 1
    lines = ["# SExtractor configuration written by galseg"]
    for name in PARAMETER_SPEC:
        value = params[name]
        if PARAMETER_SPEC[name][0] == "str" and value == "":
            continue
        text = _format_value(name, value)
        lines.append(f"{name:<{width}} {text}".rstrip())
    path.write_text("\n".join(lines) + "\n", encoding="latin-1")
    return path


# --------------------------------------------------------------------------- .param
def read_param(path: str | os.PathLike) -> list[str]:
    """Read a SExtractor output-parameter (``.param``) file.

    Parameters
    ----------
    path : str or path-like
        One output parameter per line, optionally with a vector size:
        ``NUMBER``, ``FLUX_APER(6)``.  Lines starting with ``#`` and blank lines
        are ignored, as is anything after the entry (SExtractor reads only the
        first word of a line).

    Returns
    -------
    list of str
        The entries as written, upper case, e.g. ``["NUMBER", "FLUX_APER(5)"]``.
        Repeated entries are kept (see :func:`expand_columns`).

    Raises
    ------
    ValueError
        If an entry is malformed (e.g. ``FLUX_APER(x)``); names file and line.
    """
    path = Path(path)
    with open(path, encoding="latin-1") as fh:
        lines = fh.read().splitlines()
    entries = []
    for lineno, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        # The entry is the first word, with an optional (n) glued or spaced.
        m = re.match(r"^([A-Za-z0-9_]+\s*(?:[\(\[\{][^\)\]\}]*[\)\]\}])?)", text)
        entry = re.sub(r"\s+", "", m.group(1)) if m else text.split()[0]
        _parse_param_entry(entry, _where(path, lineno))
        entries.append(entry.upper())
    return entries


def _parse_param_entry(entry: str, where: str) -> tuple[str, tuple[int, ...]]:
    m = _PARAM_ENTRY.match(entry.strip())
    if not m:
        raise ValueError(f"{where}: malformed catalogue parameter {entry!r}")
    name, dims = m.group(1).upper(), m.group(2)
    if dims is None:
        return name, ()
    parts = [p for p in re.split(r"[\s,;.]+", dims) if p]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if not shape or any(n < 1 for n in shape):
        raise ValueError(f"{where}: wrong array syntax in catalogue parameter {entry!r}")
    return name, shape


def expand_columns(entries: Sequence[str], naper: int) -> list[str]:
    """Catalogue column names that galseg produces for ``.param`` entries.

    Parameters
    ----------
    entries : sequence of str
        Entries as returned by :func:`read_param`.
    naper : int
        Number of photometric apertures (``len(PHOT_APERTURES)``); the width of
        the aperture columns (see the module docstring for the scheme).

    Returns
    -------
    list of str
        Base column names in first-seen order, each once:
        ``["NUMBER", "FLUX_APER(1)", "FLUX_APER(2)"]`` -> ``["NUMBER", "FLUX_APER"]``.
        Each aperture column holds an ``(N, naper)`` array; see
        :func:`column_shapes` for every column's per-row shape.
    """
    return list(column_shapes(entries, naper))


def column_shapes(entries: Sequence[str], naper: int) -> dict[str, tuple[int, ...]]:
    """Per-row shape of each catalogue column for ``.param`` entries.

    Parameters
    ----------
    entries : sequence of str
        Entries as returned by :func:`read_param`.
    naper : int
        ``len(PHOT_APERTURES)``: aperture columns (`APERTURE_COLUMNS`) have
        per-row shape ``(naper,)`` whatever vector size the ``.param`` gives.

    Returns
    -------
    dict
        Column name -> per-row shape in first-seen order.  Other vector
        columns (e.g. ``FLUX_RADIUS(3)``) take the size written in the file,
        the last one when an entry is repeated (as SExtractor does).  A size of
        one is a scalar column, ``()``, as in SExtractor's FITS output.
    """
    naper = int(naper)
    if naper < 1:
        raise ValueError(f"naper must be >= 1, got {naper}")
    shapes: dict[str, tuple[int, ...]] = {}
    for i, entry in enumerate(entries):
        name, shape = _parse_param_entry(entry, f"entry {i} ({entry!r})")
        if name in APERTURE_COLUMNS:
            shape = (naper,)
        if len(shape) == 1 and shape[0] == 1:
            shape = ()
        shapes[name] = shape
    return shapes
