"""galseg's own settings: work directory, data directory, apertures, layouts.

Defaults live in the shipped ``configs/galseg.yaml``.  A user file
(``$GALSEG_CONFIG``, else ``~/.config/galseg/config.yaml``) overrides them key
by key, and ``$GALSEG_WORK_DIR`` / ``$GALSEG_DATA_DIR`` override the two
directories.  Files are read with ``yaml.safe_load`` only.
"""

from __future__ import annotations

import copy
import os
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

__all__ = ["settings", "read_yaml", "shipped_path", "ConfigError"]

_ENV_CONFIG = "GALSEG_CONFIG"
_ENV_WORK = "GALSEG_WORK_DIR"
_ENV_DATA = "GALSEG_DATA_DIR"


class ConfigError(ValueError):
    """A configuration file is missing or malformed (the message names it)."""


def shipped_path(*parts: str) -> Path:
    """Path of a file shipped in the ``configs/`` folder (package ``galseg.configs``).

    Installed, ``configs/`` is the package ``galseg.configs``; when galseg is
    imported straight from a source checkout it is the sibling folder.
    """
    try:
        root = Path(str(resources.files("galseg.configs")))
    except ModuleNotFoundError:
        root = Path(__file__).resolve().parents[1] / "configs"
    return root.joinpath(*parts)


def read_yaml(path: str | os.PathLike) -> dict:
    """Read a YAML mapping with ``yaml.safe_load``; errors name the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML in {path}: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping, not {type(data).__name__}")
    return data


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, val in override.items():
        if isinstance(val, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], val)
        else:
            out[key] = copy.deepcopy(val)
    return out


def _user_config_path() -> Path | None:
    env = os.environ.get(_ENV_CONFIG)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise ConfigError(f"${_ENV_CONFIG} points to {path}, which does not exist")
        return path
    path = Path("~/.config/galseg/config.yaml").expanduser()
    return path if path.is_file() else None


def settings(**overrides: Any) -> dict:
    """The effective settings: shipped defaults < user file < environment < ``overrides``.

    Returns a fresh dict; ``work_dir`` and ``data_dir`` are `~pathlib.Path`.
    """
    conf = read_yaml(shipped_path("galseg.yaml"))
    user = _user_config_path()
    if user is not None:
        conf = _merge(conf, read_yaml(user))
        conf["_user_config"] = str(user)
    if os.environ.get(_ENV_WORK):
        conf["work_dir"] = os.environ[_ENV_WORK]
    if os.environ.get(_ENV_DATA):
        conf["data_dir"] = os.environ[_ENV_DATA]
    conf = _merge(conf, {k: v for k, v in overrides.items() if v is not None})
    for key in ("work_dir", "data_dir"):
        conf[key] = Path(conf[key]).expanduser()
    return conf
