"""Shipped SExtractor configurations (presets) and the files they name.

Presets are ``.sex`` files in the ``galseg.configs`` package (the repository's
``configs/`` folder): ``galfind_default`` (galfind's ``default.sex``),
``test`` and ``epochs-v2_deblend`` (galfind's variants).  The package also
ships SExtractor 2.25's convolution kernels (``configs/kernels/*.conv``, copied
unchanged from SExtractor's ``config/`` folder as installed in
``/usr/share/source-extractor``) and its star/galaxy neural network
``configs/default.nnw``.

Files named by ``FILTER_NAME`` and ``STARNNW_NAME`` are found in this order:

1. the path itself when it is absolute and exists (`read_sex` has already
   made names relative to the ``.sex`` file's folder absolute when the file is
   there);
2. the shipped file with the same base name (``configs/kernels/`` for
   kernels, ``configs/`` for ``.nnw``).  An absolute path that does not exist
   also falls back to the shipped file of the same name, with a warning: galfind
   ``.sex`` files carry absolute paths from their authors' machines, and must
   run unchanged.

The current directory is deliberately *not* searched when a name is resolved
(SExtractor would): a parameter set must mean the same kernel wherever it runs.
Names given from Python (``load_config(..., FILTER_NAME="my.conv")`` or in a
dict) are relative to the current directory as usual in Python, and are stored
as absolute paths when the file exists there.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from .params import Params
from .sexfiles import _read_sex, read_conv

__all__ = [
    "load_config",
    "filter_kernel",
    "filter_path",
    "nnw_path",
    "list_presets",
    "preset_path",
    "param_path",
    "configs_dir",
]


def configs_dir() -> Path:
    """The folder of the shipped ``galseg.configs`` files."""
    try:
        return Path(str(resources.files("galseg.configs")))
    except ModuleNotFoundError:
        # Running from a source checkout that is not pip-installed: the
        # package-dir mapping configs/ -> galseg.configs exists only once installed.
        here = Path(__file__).resolve().parents[2] / "configs"
        if (here / "__init__.py").is_file():
            return here
        raise


def list_presets() -> list[str]:
    """Names of the shipped ``.sex`` presets, sorted."""
    return sorted(p.stem for p in configs_dir().glob("*.sex"))


def preset_path(name: str) -> Path:
    """Path of the shipped preset ``name`` (``configs/<name>.sex``).

    Raises
    ------
    ValueError
        If there is no such preset (the message lists those shipped).
    """
    path = configs_dir() / f"{name}.sex"
    if not path.is_file():
        raise ValueError(
            f"unknown preset {name!r}; shipped presets: {', '.join(list_presets())}"
        )
    return path


def param_path(name: str = "galseg") -> Path:
    """Path of a shipped ``.param`` column list (``configs/<name>.param``).

    ``galseg`` lists the columns of galseg's catalogues; ``galfind_default`` is
    galfind's ``default.param``.
    """
    path = configs_dir() / f"{name}.param"
    if not path.is_file():
        names = sorted(p.stem for p in configs_dir().glob("*.param"))
        raise ValueError(f"unknown .param {name!r}; shipped: {', '.join(names)}")
    return path


def _is_preset_name(config: str) -> bool:
    return os.sep not in config and "/" not in config and not config.endswith(".sex")


def load_config(
    config: str | os.PathLike | Params | Mapping[str, Any] = "galfind_default",
    **overrides: Any,
) -> Params:
    """Build a `Params` from a preset, a ``.sex`` file, a `Params` or a dict.

    Parameters
    ----------
    config : str, path-like, Params or mapping, optional
        A preset name (see :func:`list_presets`), the path of a ``.sex`` file,
        a `Params`, or a mapping of SExtractor names to values.
    **overrides
        Parameter values applied last, by SExtractor name in any case:
        ``load_config("galfind_default", detect_thresh=2.5, FILTER="N")``.

    Returns
    -------
    Params

    Raises
    ------
    ValueError
        For an unknown preset, or bad values (names the file and line).
    FileNotFoundError
        If a ``.sex`` path does not exist.
    KeyError
        For an unknown parameter name in ``overrides`` or a mapping.
    """
    # File names given from Python are relative to the current directory, as
    # usual in Python; they are stored absolute when they exist there.
    given = {k.upper(): v for k, v in overrides.items()}
    if isinstance(config, Mapping) and not isinstance(config, Params):
        given = {**{k.upper(): v for k, v in config.items()}, **given}
    if isinstance(config, Params):
        params = config.replace(**overrides) if overrides else config
    elif isinstance(config, Mapping):
        params = Params(config, **overrides)
    elif isinstance(config, (str, os.PathLike)):
        text = os.fspath(config)
        if isinstance(config, str) and _is_preset_name(text):
            # Shipped presets keep FILTER_NAME/STARNNW_NAME as bare names (found
            # in the package by filter_kernel/nnw_path) so that their values,
            # and so cache keys, do not depend on where galseg is installed.
            params = _read_sex(preset_path(text), overrides, anchor=False)
        else:
            path = Path(text).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"SExtractor configuration file not found: {path}")
            params = _read_sex(path, overrides, anchor=True)
    else:
        raise TypeError(
            "config must be a preset name, a .sex path, a Params or a dict, "
            f"not {type(config).__name__}"
        )
    changes = {}
    for key in ("FILTER_NAME", "STARNNW_NAME"):
        value = given.get(key)
        if isinstance(value, (str, os.PathLike)):
            candidate = Path(value).expanduser()
            if not candidate.is_absolute() and candidate.is_file():
                changes[key] = str(candidate.resolve())
    return params.replace(**changes) if changes else params


def _resolve(value: str, parameter: str, shipped_dir: Path) -> Path:
    """Find the file named by ``parameter`` (see the module docstring)."""
    if not value:
        raise FileNotFoundError(f"{parameter} is empty")
    path = Path(value).expanduser()
    searched = []
    if path.is_absolute():
        if path.is_file():
            return path
        searched.append(str(path))
    shipped = shipped_dir / path.name
    if shipped.is_file():
        if path.is_absolute():
            warnings.warn(
                f"{parameter} {value} does not exist; using galseg's shipped "
                f"{path.name} ({shipped})",
                UserWarning,
                stacklevel=3,
            )
        return shipped
    searched.append(str(shipped))
    raise FileNotFoundError(
        f"{parameter} {value!r} not found; searched: {'; '.join(searched)} "
        "(relative names are found next to the .sex file they come from, "
        "or among galseg's shipped files)"
    )


def filter_kernel(params: Params | Mapping[str, Any]) -> np.ndarray | None:
    """The detection filter kernel of ``params``, ready for convolution.

    Parameters
    ----------
    params : Params or mapping
        Uses ``FILTER`` and ``FILTER_NAME``.

    Returns
    -------
    ndarray of float32 or None
        None when ``FILTER`` is N.  Otherwise the ``.conv`` kernel; for a
        ``CONV NORM`` file it is divided by the sum of the absolute values of
        its elements, as SExtractor does (filter.c ``getconv``; a kernel whose
        absolute values sum to zero is divided by its quadratic norm instead).
        ``CONV NONORM`` kernels are returned as written.

    Raises
    ------
    FileNotFoundError
        If ``FILTER_NAME`` cannot be found (names the places searched).
    ValueError
        If the file is not a valid convolution mask.
    """
    if not isinstance(params, Params):
        params = Params(params)
    if not params["FILTER"]:
        return None
    path = _resolve(params["FILTER_NAME"], "FILTER_NAME", configs_dir() / "kernels")
    kernel, normalise = read_conv(path)
    kernel = kernel.astype(np.float64)
    if normalise:
        total = np.abs(kernel).sum()
        if total == 0.0:
            total = np.sqrt((kernel ** 2).sum())
        if total == 0.0:
            raise ValueError(f"{path}: convolution mask is all zeros")
        kernel = kernel / total
    return np.ascontiguousarray(kernel, dtype=np.float32)


def filter_path(params: Params | Mapping[str, Any]) -> Path | None:
    """The resolved ``FILTER_NAME`` file, or None when ``FILTER`` is N."""
    if not isinstance(params, Params):
        params = Params(params)
    if not params["FILTER"]:
        return None
    return _resolve(params["FILTER_NAME"], "FILTER_NAME", configs_dir() / "kernels")


def nnw_path(params: Params | Mapping[str, Any]) -> Path:
    """The resolved ``STARNNW_NAME`` file (shipped ``default.nnw`` by default).

    Raises
    ------
    FileNotFoundError
        If it cannot be found (names the places searched).
    """
    if not isinstance(params, Params):
        params = Params(params)
    return _resolve(params["STARNNW_NAME"], "STARNNW_NAME", configs_dir())
