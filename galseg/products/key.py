"""Product keys: everything that can change a product, hashed canonically.

A key has two parts:

* ``inputs`` -- one fingerprint per input role (``"sci"``, ``"rms"``, ``"wht"``,
  ``"det"`` ...) from `~galseg.products.fingerprint.input_fingerprint`;
* ``fields`` -- everything else that changes the result: err_type, method,
  all extraction parameters (a `~galseg.extract.params.Params` is stored by
  its canonical science values), kernel values, aperture diameters, zero
  point ...; plus ``versions`` (galseg, sep, key format), added automatically.

Identity is decided by *content*: the hash covers the inputs' header and data
hashes and sizes, never their paths, mtimes or inode numbers.  So an input
that is moved, copied or merely touched keeps its products; the store then
re-checks the full data hash once (the sampled hash alone could miss a local
edit) and records the new path/stat in the sidecar.  The paths and stats are
kept in the key for that check and for provenance.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import PurePath
from typing import Any

import numpy as np

from .fingerprint import input_fingerprint
from .naming import safe_component

__all__ = ["ProductKey", "make_key", "canonical_json", "library_versions", "KEY_FORMAT"]

KEY_FORMAT = 1

# Fingerprint fields that define an input's identity (content only).
IDENTITY_FIELDS = ("header_sha256", "data_nbytes", "data_sample_sha256", "sample")

_INLINE_ARRAY_MAX = 4096


def library_versions() -> dict[str, str]:
    """Versions of the code that makes products (galseg, sep): a new dict each call."""
    return dict(_library_versions())


@functools.lru_cache(maxsize=1)
def _library_versions() -> tuple[tuple[str, str], ...]:
    # Read once per process: importlib.metadata parses the dist-info (~0.5 ms),
    # and the sep version is read without importing sep.
    from galseg._version import ENGINE_REVISION, __version__

    try:
        sep_version = metadata.version("sep")
    except metadata.PackageNotFoundError:  # pragma: no cover - sep is a dependency
        sep_version = "absent"
    return (("galseg", __version__), ("galseg_engine", str(ENGINE_REVISION)),
            ("sep", sep_version))


def _jsonable(value: Any, where: str) -> Any:
    """Convert ``value`` into plain, deterministic JSON types."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        # JSON has no NaN/inf; a tagged string keeps them distinct and stable.
        return f if math.isfinite(f) else f"float:{f!r}"
    if hasattr(value, "canonical") and callable(value.canonical):
        # Params: its canonical JSON holds the science values only.
        return {"__params__": json.loads(value.canonical())}
    if isinstance(value, np.ndarray):
        arr = np.ascontiguousarray(value)
        if arr.size <= _INLINE_ARRAY_MAX and arr.dtype.kind in "biuf":
            return {"__array__": arr.dtype.str.replace(">", "<").replace("=", "<"),
                    "shape": list(arr.shape),
                    "values": _jsonable(arr.ravel().tolist(), where)}
        native = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        return {"__array__": native.dtype.str, "shape": list(arr.shape),
                "sha256": hashlib.sha256(native.tobytes()).hexdigest()}
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: mapping keys must be strings, got {k!r}")
            out[k] = _jsonable(v, f"{where}.{k}")
        return out
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, (set, frozenset)):
        return sorted(_jsonable(v, where) for v in value)
    if isinstance(value, (PurePath, os.PathLike)):
        return os.fspath(value)
    raise TypeError(
        f"{where} has a value of type {type(value).__name__} that cannot be recorded "
        "(product keys and provenance take numbers, strings, None, lists, dicts, numpy "
        "arrays or Params)"
    )


def canonical_json(obj: Any) -> str:
    """The canonical JSON text that is hashed (sorted keys, no spaces, ASCII)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False)


@dataclass(frozen=True, eq=False)
class ProductKey:
    """The identity of one product.

    Attributes
    ----------
    fields : dict
        JSON-able non-input fields (including ``versions``).
    inputs : dict
        Role -> full input fingerprint (with path, stat and hashes).
    sha256 : str
        Hex SHA-256 of the canonical identity (see `identity`).
    """

    fields: dict[str, Any]
    inputs: dict[str, dict[str, Any]]
    sha256: str

    def __eq__(self, other: object) -> bool:
        # Identity is the hash: equal keys for moved/touched identical inputs.
        return isinstance(other, ProductKey) and other.sha256 == self.sha256

    def __hash__(self) -> int:
        return hash(self.sha256)

    @property
    def short(self) -> str:
        """The first 10 hex digits of `sha256`, used in file names."""
        return self.sha256[:10]

    def identity(self) -> dict[str, Any]:
        """What is hashed: fields plus the content part of each input fingerprint."""
        return _identity(self.fields, self.inputs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (fields, full input fingerprints, hash)."""
        return {"fields": self.fields, "inputs": self.inputs, "sha256": self.sha256}

    def __iter__(self):
        # Allows ``key_dict, short_hash = make_key(...)``.
        yield self.to_dict()
        yield self.short


def _identity(fields: dict, inputs: dict) -> dict:
    ident_inputs = {}
    for role, fp in inputs.items():
        missing = [f for f in IDENTITY_FIELDS if f not in fp]
        if missing:
            raise ValueError(f"input {role!r} fingerprint lacks {', '.join(missing)}; "
                             "make it with input_fingerprint()")
        ident_inputs[role] = {f: fp[f] for f in IDENTITY_FIELDS}
    return {"format": KEY_FORMAT, "fields": fields, "inputs": ident_inputs}


def make_key(inputs: Mapping[str, Any], **fields: Any) -> ProductKey:
    """Build the key of a product.

    Parameters
    ----------
    inputs : mapping
        Role name -> either a fingerprint dict from `input_fingerprint`, a
        path (HDU 0) or a ``(path, ext)`` pair (fingerprinted here).  Role
        names must be plain (``"sci"``, ``"rms"``, ``"wht"``, ``"det_sci"`` ...).
    **fields
        Everything else that changes the product: ``err_type``, ``method``,
        ``params`` (a `Params` or a dict), ``kernel`` (array), ``apertures``,
        ``zero_point`` ...  Values may be numbers, strings, None, lists,
        dicts, numpy arrays (inlined up to 4096 values, else hashed) or
        objects with a ``canonical()`` method.  ``versions`` is merged over
        `library_versions`.

    Returns
    -------
    ProductKey
        Also unpacks as ``key_dict, short_hash``.
    """
    if not inputs:
        raise ValueError("a product key needs at least one input file")
    fps: dict[str, dict] = {}
    for role, spec in inputs.items():
        safe_component(role, "input role")
        if isinstance(spec, Mapping):
            fp = dict(spec)
        elif isinstance(spec, (tuple, list)) and len(spec) == 2:
            fp = input_fingerprint(spec[0], spec[1])
        else:
            fp = input_fingerprint(spec, 0)
        fps[role] = fp
    versions = library_versions()
    versions.update(fields.pop("versions", None) or {})
    fields_json = _jsonable(dict(fields, versions=versions), "fields")
    digest = hashlib.sha256(canonical_json(_identity(fields_json, fps)).encode()).hexdigest()
    return ProductKey(fields=fields_json, inputs=_jsonable(fps, "inputs"), sha256=digest)


def describe_difference(old: Mapping, new: Mapping, *, limit: int = 6,
                        paths: Mapping[str, str] | None = None) -> str:
    """Human-readable list of what differs between two key identities.

    Used to log why a product is recomputed (``"params.DETECT_THRESH: 1.5 ->
    2.0"``, ``"input sci (/data/sci.fits) content changed (data)"``).
    ``paths`` (role -> file) names the files in the message.
    """
    diffs: list[str] = []

    def short(v):
        s = json.dumps(v, sort_keys=True)
        return s if len(s) <= 40 else s[:37] + "..."

    def walk(a, b, where):
        if len(diffs) > limit:
            return
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            for k in sorted(set(a) | set(b)):
                if k not in a:
                    diffs.append(f"{where}{k} added ({short(b[k])})")
                elif k not in b:
                    diffs.append(f"{where}{k} removed (was {short(a[k])})")
                else:
                    walk(a[k], b[k], f"{where}{k}.")
        elif a != b:
            name = where.rstrip(".").replace("__params__.", "")
            diffs.append(f"{name}: {short(a)} -> {short(b)}")

    ain, bin_ = old.get("inputs", {}), new.get("inputs", {})
    for role in sorted(set(ain) | set(bin_)):
        if role not in ain or role not in bin_:
            diffs.append(f"input {role} {'added' if role in bin_ else 'removed'}")
        elif ain[role] != bin_[role]:
            what = [w for w, f in (("header", "header_sha256"), ("data", "data_sample_sha256"),
                                   ("size", "data_nbytes"))
                    if ain[role].get(f) != bin_[role].get(f)]
            where = f" ({paths[role]})" if paths and paths.get(role) else ""
            diffs.append(f"input {role}{where} content changed "
                         f"({', '.join(what) or 'fingerprint'})")
    walk(old.get("fields", {}), new.get("fields", {}), "")
    if len(diffs) > limit:
        diffs = diffs[:limit] + ["..."]
    return "; ".join(diffs) if diffs else "no difference"
