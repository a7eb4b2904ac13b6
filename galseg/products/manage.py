"""Show and prune the products under a work directory (``galseg cache list|clean``).

Two kinds of cached things live under a work directory: segmentation products
(`ProductEntry`: seg/bkg/cat + sidecar, in ``.../segmentation/`` folders) and
file sets (`FileSet`: stacks, detection states, forced and joined catalogues).
Both are listed and cleaned here, told apart by the ``kind`` column.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from astropy.table import Table

from galseg.io.atomic import TEMP_PATTERN, is_orphan_temp

from .fileset import FileSet
from .lock import FileLock, LockTimeout, lock_is_held
from .naming import LOCK_SUFFIX, SIDECAR_SUFFIX, SUFFIXES
from .store import SIDECAR_FORMAT, ProductEntry

__all__ = ["list_products", "clean", "parse_age"]

_COLUMNS = ("kind", "instrument", "version", "survey", "weight_type", "filt", "label",
            "detection", "hash", "created", "nobj", "valid", "reason", "locked", "size", "stem",
            "directory")
_WEIGHT_TYPES = ("MAP_RMS", "MAP_WEIGHT")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(value) -> float | None:
    """Seconds from a number, a `~datetime.timedelta` or a string like ``"7d"``, ``"12h"``.

    Units: s, m, h, d, w.  None stays None.
    """
    if value is None:
        return None
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, (int, float)):
        return float(value)
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([smhdw]?)\s*", str(value))
    if not m:
        raise ValueError(f"invalid age {value!r}: use a number of seconds or e.g. 30m, 12h, 7d, 2w")
    return float(m[1]) * _UNITS[m[2] or "s"]


def _segmentation_dirs(work_dir: Path):
    # {work}/{instrument}/{version}/{survey}/{weight_type}/segmentation
    return sorted(p for p in work_dir.glob("*/*/*/*/segmentation") if p.is_dir())


def _scan(directory: Path) -> list[dict[str, Any]]:
    """One record per product stem in ``directory`` (with or without a sidecar)."""
    instrument, version, survey, weight_type = directory.parts[-5:-1]
    stems: dict[str, dict[str, Any]] = {}
    for p in directory.iterdir():
        name = p.name
        if name.startswith("."):
            continue
        if name.endswith(SIDECAR_SUFFIX):
            stems.setdefault(name[: -len(SIDECAR_SUFFIX)], {})["sidecar"] = p
            continue
        for part, suffix in SUFFIXES.items():
            if name.endswith(suffix):
                stems.setdefault(name[: -len(suffix)], {})[part] = p
    records = []
    for stem, parts in sorted(stems.items()):
        files = [p for p in parts.values()]
        sizes, mtimes = [], []
        for p in files:
            with contextlib.suppress(FileNotFoundError):
                st = p.stat()
                sizes.append(st.st_size)
                mtimes.append(st.st_mtime)
        rec: dict[str, Any] = {
            "kind": "segmentation", "detection": "",
            "instrument": instrument, "version": version, "survey": survey,
            "weight_type": weight_type, "filt": "", "label": "", "hash": stem.rsplit("_", 1)[-1],
            "created": "", "nobj": -1, "valid": False, "reason": "", "stem": stem,
            "directory": str(directory), "size": int(sum(sizes)),
            "mtime": max(mtimes) if mtimes else 0.0, "sidecar": None,
            "locked": lock_is_held(directory / (stem + LOCK_SUFFIX)),
        }
        sc = None
        if "sidecar" in parts:
            with contextlib.suppress(OSError, ValueError):
                sc = json.loads(parts["sidecar"].read_bytes())
        if isinstance(sc, dict) and sc.get("format") == SIDECAR_FORMAT:
            ident = sc.get("product", {})
            rec.update(filt=ident.get("filt") or "", label=ident.get("label") or "",
                       created=sc.get("created", ""), nobj=int(sc.get("nobj", -1)),
                       sidecar=sc)
            written = sc.get("written_ns")
            if written:
                rec["mtime"] = written / 1e9
        else:
            # No usable sidecar: recover what the name says.  "filt" may then
            # still include a label (names cannot be split unambiguously).
            body = stem[len(survey) + 1:] if stem.startswith(survey + "_") else stem
            rec["filt"] = body.rsplit("_", 1)[0]
        records.append(rec)
    return records


def _filesets(work_dir: Path):
    """The file sets (stacks, detection states, forced and joined catalogues)
    under ``work_dir``, found by their sidecars."""
    for p in sorted(work_dir.rglob("*.json")):
        if p.parent.name == "segmentation":
            continue  # segmentation products: see _scan
        fs = FileSet.from_sidecar(p)
        if fs is not None:
            yield fs


def _fileset_record(work_dir: Path, fs: FileSet) -> dict[str, Any]:
    sc = fs.read_sidecar() or {}
    info = sc.get("info") or {}
    rel = list(fs.directory.relative_to(work_dir).parts) + ["", "", ""]
    files = [fs.path(p) for p in fs.parts] + [fs.path("sidecar")]
    size = 0
    for p in files:
        with contextlib.suppress(FileNotFoundError):
            size += p.stat().st_size
    filt = info.get("filt") or ("+".join(info["filters"]) if info.get("filters") else "")
    detection = info.get("detection") or ""
    valid = fs.is_intact()
    return {
        "kind": fs.kind.split(":")[0], "instrument": rel[0], "version": rel[1],
        "survey": rel[2], "weight_type": rel[3] if rel[3] in _WEIGHT_TYPES else "",
        "filt": filt or detection, "label": "", "detection": detection,
        "hash": str(sc.get("key_sha256") or "")[:10], "created": sc.get("created", ""),
        "nobj": int(info.get("nobj", -1)), "valid": valid, "reason": fs.why_invalid or "",
        "locked": lock_is_held(fs.path("lock")), "size": int(size), "stem": fs.stem,
        "directory": str(fs.directory), "mtime": (sc.get("written_ns") or 0) / 1e9,
        "fileset": fs,
    }


def _entry(rec: dict) -> ProductEntry:
    sc = rec["sidecar"] or {}
    return ProductEntry(rec["directory"], rec["stem"], sc.get("product", {}),
                        key_sha256=sc.get("key", {}).get("sha256"))


def _matches(rec: dict, filters: dict[str, str | None]) -> bool:
    return all(v is None or rec[k] == v for k, v in filters.items())


def list_products(work_dir, *, check_inputs: bool = False, survey: str | None = None,
                  instrument: str | None = None, version: str | None = None,
                  filt: str | None = None) -> Table:
    """A table of the products under ``work_dir``.

    Parameters
    ----------
    work_dir : path-like
    check_inputs : bool
        Also require the recorded inputs to be unchanged for ``valid``
        (reads input files whose stat changed).  Default: products only.
    survey, instrument, version, filt : str, optional
        Only these.

    Returns
    -------
    `~astropy.table.Table`
        Columns kind (``segmentation``, ``stack``, ``detection_state``,
        ``forced_catalog``, ``multiband_catalog``), instrument, version, survey,
        weight_type, filt, label, detection (the detection band of forced and
        joined catalogues), hash, created (ISO UTC), nobj, valid (a file set:
        complete and unchanged), reason (why not valid), locked (a run holds it
        now), size (bytes, all files), stem, directory.  Sorted by survey,
        kind, filter, created.
    """
    filters = {"survey": survey, "instrument": instrument, "version": version, "filt": filt}
    rows = [rec for rec in (_fileset_record(Path(work_dir), fs) for fs in _filesets(Path(work_dir)))
            if _matches(rec, filters)]
    for d in _segmentation_dirs(Path(work_dir)):
        for rec in _scan(d):
            if not _matches(rec, filters):
                continue
            entry = _entry(rec)
            if rec["locked"] and rec["sidecar"] is None:
                rec["valid"], rec["reason"] = False, "being written"
            else:
                rec["valid"] = entry.is_valid(check_inputs=check_inputs)
                rec["reason"] = entry.why_invalid or ""
            rows.append(rec)
    rows.sort(key=lambda r: (r["survey"], r["kind"] != "segmentation", r["kind"], r["filt"],
                             r["created"]))
    table = Table(rows=[[r[c] for c in _COLUMNS] for r in rows] or None,
                  names=_COLUMNS,
                  dtype=[str, str, str, str, str, str, str, str, str, str, int, bool, str, bool,
                         int, str, str])
    table["size"].unit = "byte"
    return table


def clean(work_dir, *, invalid_only: bool = True, older_than=None, survey: str | None = None,
          instrument: str | None = None, version: str | None = None, filt: str | None = None,
          dry_run: bool = False) -> list[Path]:
    """Prune the product tree.

    Always removes temporary files left by killed writers, lock files no
    process holds, and invalid or incomplete products (missing sidecar,
    checksum mismatch ...) and file sets (stacks, detection states, forced and
    joined catalogues whose files changed or went missing).  Valid ones are
    removed only with ``invalid_only=False``.  Anything some run is writing now
    (lock held) is never touched.

    Parameters
    ----------
    work_dir : path-like
    invalid_only : bool
        Keep valid products (default).  False also removes the valid
        products in the selection -- with no filters, every product.
    older_than : float, timedelta or str, optional
        Only products made (or last written) longer ago than this
        (``"7d"``, ``"12h"``, seconds ...).
    survey, instrument, version, filt : str, optional
        Only products of these.
    dry_run : bool
        Report what would be removed without removing anything.

    Returns
    -------
    list of Path
        The files removed (or that would be).
    """
    max_age = parse_age(older_than)
    now = time.time()
    filters = {"survey": survey, "instrument": instrument, "version": version, "filt": filt}
    removed: list[Path] = []
    set_dirs = set()
    for fs in list(_filesets(Path(work_dir))):
        rec = _fileset_record(Path(work_dir), fs)
        set_dirs.add((fs.directory, all(v is None or v == rec[k] for k, v in filters.items()
                                        if k != "filt")))
        if not _matches(rec, filters):
            continue
        if max_age is not None and now - rec["mtime"] <= max_age:
            continue
        removed.extend(_clean_fileset(fs, invalid_only, dry_run))
    for d, selected in sorted(set_dirs):
        if selected:
            removed.extend(_clean_leftovers(d, dry_run))
    for d in _segmentation_dirs(Path(work_dir)):
        instrument_d, version_d, survey_d, _ = d.parts[-5:-1]
        dir_selected = all(v is None or v == got for v, got in
                           ((instrument, instrument_d), (version, version_d), (survey, survey_d)))
        for rec in _scan(d):
            if not _matches(rec, filters):
                continue
            if max_age is not None and now - rec["mtime"] <= max_age:
                continue
            removed.extend(_clean_product(rec, invalid_only, dry_run))
        if dir_selected:
            removed.extend(_clean_leftovers(d, dry_run))
    return sorted(set(removed))


def _clean_leftovers(directory: Path, dry_run: bool) -> list[Path]:
    """Temporary files of killed writers and lock files no process holds."""
    removed = []
    for p in sorted(directory.iterdir()):
        if TEMP_PATTERN.match(p.name) and is_orphan_temp(p):
            removed.append(p)
            if not dry_run:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)
        elif p.name.endswith(LOCK_SUFFIX) and p.exists() and not lock_is_held(p):
            if dry_run:
                removed.append(p)
                continue
            # Take the lock to remove it: a run that opened the same file
            # then finds it gone and makes a new one.
            lock = FileLock(p, timeout=0, stale_after=None)
            with contextlib.suppress(LockTimeout, FileNotFoundError):
                lock.acquire()
                lock.release()
                removed.append(p)
    return removed


def _clean_fileset(fs: FileSet, invalid_only: bool, dry_run: bool) -> list[Path]:
    lock = FileLock(fs.path("lock"), timeout=0, stale_after=None)
    try:
        if not dry_run:
            lock.acquire()
        elif lock_is_held(fs.path("lock")):
            return []
    except (LockTimeout, FileNotFoundError):
        return []  # a run is writing it now
    try:
        if fs.is_intact() and invalid_only:
            return []
        # the sidecar first: from then on no reader trusts the rest
        paths = [fs.path("sidecar")] + [fs.path(p) for p in fs.parts]
        removed = [p for p in paths if p.exists()]
        if not dry_run:
            for p in removed:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)
        return removed
    finally:
        if not dry_run:
            lock.release()


def _clean_product(rec: dict, invalid_only: bool, dry_run: bool) -> list[Path]:
    entry = _entry(rec)
    lock = FileLock(entry.lock_path, timeout=0, stale_after=None)
    try:
        if not dry_run:
            lock.acquire()
    except (LockTimeout, FileNotFoundError):
        return []  # a run is writing it now
    try:
        if rec["locked"] and dry_run:
            return []
        valid = entry.is_valid(check_inputs=False)
        if valid and invalid_only:
            return []
        return entry.remove(dry_run=dry_run)
    finally:
        lock.release()
