"""The product store: save, validate and load segmentation products on disk.

A product is four files sharing a stem (see `galseg.products.naming`): the
segmentation map, the background map, the catalogue and a JSON *sidecar*.
The sidecar is written last and is the commit marker: a product is trusted
only if its sidecar says ``"status": "complete"``, its key hash is the one
asked for, every product file still has the size/mtime/inode recorded (or,
if its stat changed, still has the recorded SHA-256) and -- when the current
inputs are known -- the inputs still hold the content the product was made
from.

Protocol of a write (`ProductEntry.save`): remove the old sidecar, write the
three FITS files atomically (temp file, fsync, rename), then write the
sidecar atomically.  A run killed at any point leaves either no sidecar or an
old sidecar whose checksums do not match, so the next run recomputes.
`get_or_compute` wraps this in the entry's lock with a double check, so that
concurrent runs of the same band compute it once.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import getpass
import json
import logging
import os
import platform
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from astropy.io import fits
from astropy.table import Table

from galseg.extract.result import ExtractionResult
from galseg.io.atomic import (
    atomic_write_bytes,
    atomic_write_fits_image,
    atomic_write_json,
    discard_file,
    file_sha256_stat,
    fsync_dir,
)
from galseg.io.fitstable import meta_cards, table_file_bytes

from .fingerprint import RACY_NS, adopt_recorded_data_sha256, input_fingerprint
from .key import IDENTITY_FIELDS, ProductKey, _jsonable, describe_difference, library_versions
from .lock import FileLock, LockLost
from .naming import (
    LOCK_SUFFIX,
    SIDECAR_SUFFIX,
    SUFFIXES,
    check_weight_type,
    product_dir,
    product_stem,
    safe_component,
)
from .provenance import apply_provenance, wcs_cards

__all__ = [
    "ProductStore",
    "ProductEntry",
    "CacheOutcome",
    "InputChangedError",
    "get_or_compute",
    "SIDECAR_FORMAT",
    "SIDECAR_VERSION",
]

log = logging.getLogger("galseg.products")

SIDECAR_FORMAT = "galseg-product"
SIDECAR_VERSION = 1

PRODUCT_TYPES = {"seg": "SEGMENTATION", "bkg": "BACKGROUND", "cat": "CATALOG"}


class InputChangedError(RuntimeError):
    """An input file changed between making the key and saving the product."""


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return str(os.getuid()) if hasattr(os, "getuid") else "unknown"


def _environment_versions() -> dict[str, str]:
    import astropy

    v = library_versions()
    v.update(numpy=np.__version__, astropy=astropy.__version__,
             python=platform.python_version())
    return v


def _write_part(path: Path, *, data: bytes | None = None, image=None, header=None,
                dtype=None) -> dict[str, Any]:
    """Write one product file atomically (the FITS bytes ``data``, or ``image``
    with ``header``); its file record for the sidecar."""
    if image is not None:
        info = atomic_write_fits_image(image, path, header, dtype=dtype, sha256=True)
    else:
        info = atomic_write_bytes(data, path, sha256=True)
    # The rename changed the ctime; take it from the path, but only if the
    # file there is still ours (same inode), else leave it unknown so that a
    # file renamed over ours can never pass the stat check.
    try:
        st = os.stat(path)
    except FileNotFoundError:  # another (unlocked) writer already moved it aside
        st = None
    ctime = st.st_ctime_ns if st is not None and st.st_ino == info["ino"] else None
    return {"name": path.name, **info, "ctime_ns": ctime}


def _band_sidecars(directory: Path, survey: str, filt: str) -> list[tuple[Path, dict]]:
    """The readable sidecars of one band's products in ``directory``, newest
    first, as ``(path, parsed sidecar)``."""
    found = []
    for p in directory.glob(f"{survey}_{filt}_*{SIDECAR_SUFFIX}"):
        try:
            with open(p, "rb") as f:
                sc = json.load(f)
        except (OSError, ValueError):
            continue
        got = sc.get("product") if isinstance(sc, dict) else None
        if isinstance(got, dict) and got.get("survey") == survey and got.get("filt") == filt:
            found.append((sc.get("written_ns", 0), p, sc))
    found.sort(key=lambda t: t[0], reverse=True)
    return [(p, sc) for _, p, sc in found]


def _file_stat_same(rec: dict, st: os.stat_result) -> bool:
    return (st.st_size == rec.get("size") and st.st_mtime_ns == rec.get("mtime_ns")
            and st.st_ctime_ns == rec.get("ctime_ns") and st.st_ino == rec.get("ino"))


_STAT_FIELDS = ("path", "size", "mtime_ns", "ctime_ns", "ino")


def _input_stat_same(rec: dict, cur: dict) -> bool:
    """Same path and stat as recorded, and the record was not taken in the racy window."""
    if any(rec.get(f) is None or rec.get(f) != cur.get(f) for f in _STAT_FIELDS):
        return False
    return rec.get("recorded_ns", 0) - max(rec["mtime_ns"], rec["ctime_ns"]) >= RACY_NS


class ProductEntry:
    """One product (one band, one key): its paths, validity, save and load.

    Made by `ProductStore.entry` (with a key: can be saved and checked
    against the current inputs) or `ProductEntry.from_sidecar` (no key: can be
    checked and loaded).

    Attributes
    ----------
    directory : Path
        The ``.../segmentation`` folder.
    stem : str
        ``{survey}_{filt}[_{label}]_{hash}``.
    identity : dict
        ``instrument``, ``version``, ``survey``, ``filt``, ``weight_type``, ``label``.
    key : ProductKey or None
    why_invalid : str or None
        Why the last `is_valid` call returned False (None after a True).
    """

    def __init__(self, directory, stem: str, identity: dict[str, Any],
                 key: ProductKey | None = None, key_sha256: str | None = None):
        self.directory = Path(directory)
        self.stem = stem
        self.identity = dict(identity)
        self.key = key
        self._key_sha256 = key.sha256 if key is not None else key_sha256
        self.why_invalid: str | None = None

    @classmethod
    def from_sidecar(cls, sidecar_path) -> "ProductEntry":
        """An entry for an existing product, from its sidecar (no current key)."""
        sidecar_path = Path(sidecar_path)
        with open(sidecar_path, "rb") as f:
            sc = json.load(f)
        if sc.get("format") != SIDECAR_FORMAT:
            raise ValueError(f"{sidecar_path} is not a galseg product sidecar")
        stem = sidecar_path.name[: -len(SIDECAR_SUFFIX)]
        return cls(sidecar_path.parent, stem, sc.get("product", {}),
                   key_sha256=sc.get("key", {}).get("sha256"))

    # ------------------------------------------------------------------ paths
    def path(self, part: str) -> Path:
        """Path of ``part``: ``"seg"``, ``"bkg"``, ``"cat"``, ``"sidecar"`` or ``"lock"``."""
        if part == "sidecar":
            return self.directory / (self.stem + SIDECAR_SUFFIX)
        if part == "lock":
            return self.directory / (self.stem + LOCK_SUFFIX)
        return self.directory / (self.stem + SUFFIXES[part])

    seg_path = property(lambda self: self.path("seg"), doc="Segmentation map path.")
    bkg_path = property(lambda self: self.path("bkg"), doc="Background map path.")
    cat_path = property(lambda self: self.path("cat"), doc="Catalogue path.")
    sidecar_path = property(lambda self: self.path("sidecar"), doc="Sidecar JSON path.")
    lock_path = property(lambda self: self.path("lock"), doc="Lock file path.")

    @property
    def short_hash(self) -> str:
        return self.stem.rsplit("_", 1)[-1]

    def __repr__(self) -> str:
        return f"ProductEntry({str(self.directory / self.stem)!r})"

    # -------------------------------------------------------------- sidecar
    def read_sidecar(self) -> dict[str, Any] | None:
        """The parsed sidecar, or None if it is absent or unreadable."""
        try:
            with open(self.sidecar_path, "rb") as f:
                sc = json.load(f)
        except (FileNotFoundError, ValueError, OSError):
            return None
        return sc if isinstance(sc, dict) else None

    @property
    def provenance(self) -> dict[str, Any] | None:
        """The sidecar content (parameters, versions, inputs, time, host ...)."""
        return self.read_sidecar()

    # ------------------------------------------------------------- validity
    def is_valid(self, *, check_inputs: bool = True, full: bool = False) -> bool:
        """Whether the product on disk can be trusted; sets `why_invalid` if not.

        Parameters
        ----------
        check_inputs : bool
            Also check that the inputs still hold the content the product was
            made from.  With a key this compares the key's (current) input
            fingerprints with the recorded ones and reads nothing unless a
            path or stat differs; without a key the recorded input paths are
            checked.
        full : bool
            Recompute the SHA-256 of every product file even when its stat
            matches (`verify`).

        Notes
        -----
        Costs one small JSON read and three ``stat`` calls when nothing
        changed.  If a product or input file's stat changed but its content
        is the same (touched, copied, moved), the sidecar's records are
        refreshed so that the next check is cheap again.
        """
        try:
            reason = self._check(check_inputs=check_inputs, full=full)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            reason = f"sidecar malformed ({type(exc).__name__}: {exc})"
        self.why_invalid = reason
        return reason is None

    def verify(self, *, check_inputs: bool = True) -> bool:
        """`is_valid` with full SHA-256 checks of every product file."""
        return self.is_valid(check_inputs=check_inputs, full=True)

    def _check(self, *, check_inputs: bool, full: bool) -> str | None:
        sc = self.read_sidecar()
        if sc is None:
            if self.sidecar_path.exists():
                return "sidecar unreadable (interrupted write or corrupted)"
            leftovers = [p.name for p in (self.seg_path, self.bkg_path, self.cat_path)
                         if p.exists()]
            if leftovers:
                return ("incomplete: " + ", ".join(leftovers)
                        + " present without a sidecar (interrupted run)")
            return "missing"
        if sc.get("format") != SIDECAR_FORMAT or sc.get("format_version") != SIDECAR_VERSION:
            return (f"sidecar format {sc.get('format')!r} v{sc.get('format_version')} is not "
                    f"{SIDECAR_FORMAT!r} v{SIDECAR_VERSION}")
        if sc.get("status") != "complete":
            return f"sidecar status is {sc.get('status')!r}, not 'complete'"
        recorded_key = sc.get("key", {}).get("sha256")
        if self._key_sha256 is not None and recorded_key != self._key_sha256:
            return (f"sidecar key {str(recorded_key)[:16]}... differs from the requested key "
                    f"{self._key_sha256[:16]}... (hash-prefix collision or edited sidecar)")

        file_updates: dict[str, dict] = {}
        for part in ("seg", "bkg", "cat"):
            rec = sc.get("files", {}).get(part)
            if not rec:
                return f"sidecar lists no {part} file"
            if rec.get("name") != self.path(part).name:
                return f"sidecar names {rec.get('name')!r} as the {part} file, not {self.path(part).name!r}"
            path = self.directory / rec["name"]
            try:
                st = os.stat(path)
            except FileNotFoundError:
                return f"{part} file {rec['name']} is missing"
            same = _file_stat_same(rec, st)
            if same and not full:
                continue
            if st.st_size != rec["size"]:
                return (f"{part} file {rec['name']} has {st.st_size} bytes, "
                        f"sidecar says {rec['size']}")
            digest, st = file_sha256_stat(path)
            if digest != rec["sha256"]:
                return f"{part} file {rec['name']} checksum mismatch"
            if not same:
                file_updates[part] = {"name": rec["name"], "size": st.st_size,
                                      "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
                                      "ino": st.st_ino, "sha256": digest}

        input_updates: dict[str, dict] = {}
        if check_inputs:
            reason = self._check_inputs(sc, input_updates)
            if reason:
                return reason
        if file_updates or input_updates:
            self._refresh_sidecar(sc, file_updates, input_updates)
        return None

    def _check_inputs(self, sc: dict, updates: dict[str, dict]) -> str | None:
        recorded = sc.get("inputs", {})
        current = self.key.inputs if self.key is not None else None
        for role, rec in recorded.items():
            if current is not None:
                cur = current.get(role)
                if cur is None:
                    return f"input {role} is not in the requested key"
                if _input_stat_same(rec, cur):
                    continue
                path, ext = cur["path"], cur["ext"]
            else:
                path, ext = rec["path"], rec["ext"]
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    return f"input {role} {path} no longer exists"
                cur = {"path": os.path.abspath(path), "size": st.st_size,
                       "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino}
                if _input_stat_same(rec, cur):
                    continue
            # The stat differs (touched, moved, edited) or is racy: content decides.
            try:
                fp = input_fingerprint(path, ext, full=True)
            except (OSError, KeyError, ValueError) as exc:
                return f"input {role} {path} cannot be read: {exc}"
            if fp["header_sha256"] != rec.get("header_sha256"):
                return f"input {role} changed: {path} (header differs from when the product was made)"
            if fp["data_sha256"] != rec.get("data_sha256"):
                return f"input {role} changed: {path} (data differ from when the product was made)"
            if fp["recorded_ns"] - max(fp["mtime_ns"], fp["ctime_ns"]) >= RACY_NS:
                updates[role] = fp
            log.debug("input %s of %s: stat changed (%s), content identical", role, self.stem, path)
        return None

    def _refresh_sidecar(self, seen: dict, file_updates: dict, input_updates: dict) -> None:
        """Record new stats for unchanged content, if nobody else holds the lock."""
        lock = FileLock(self.lock_path, timeout=0, stale_after=None)
        try:
            lock.acquire()
        except (TimeoutError, OSError):
            return
        try:
            sc = self.read_sidecar()
            if sc is None or sc.get("written_ns") != seen.get("written_ns"):
                return  # rewritten meanwhile
            for part, rec in file_updates.items():
                sc["files"][part] = rec
            for role, fp in input_updates.items():
                # Same content, new place or stat: keep the hashes, update the rest.
                sc["inputs"][role].update(
                    {k: fp[k] for k in ("path", "ext", "hdu", "size", "mtime_ns", "ctime_ns",
                                        "ino", "recorded_ns")})
            atomic_write_json(sc, self.sidecar_path)
            log.debug("refreshed stats in %s", self.sidecar_path.name)
        except OSError as exc:  # read-only copy of a product tree: fine, just slower
            log.debug("could not refresh %s: %s", self.sidecar_path, exc)
        finally:
            lock.release()

    def explain_missing(self) -> str:
        """Why there is no product for this key: what differs from the newest sibling."""
        if self.key is None:
            return "missing"
        best, best_sc = None, None
        pattern = f"{self.identity['survey']}_{self.identity['filt']}_*{SIDECAR_SUFFIX}"
        for p in self.directory.glob(pattern):
            if p == self.sidecar_path:
                continue
            try:
                with open(p, "rb") as f:
                    sc = json.load(f)
            except (OSError, ValueError):
                continue
            ident = sc.get("product", {})
            if (ident.get("filt"), ident.get("survey"), ident.get("label")) != (
                    self.identity["filt"], self.identity["survey"], self.identity.get("label")):
                continue
            if best_sc is None or sc.get("written_ns", 0) > best_sc.get("written_ns", 0):
                best, best_sc = p, sc
        if best_sc is None:
            return "no product for this band yet"
        old = {"fields": best_sc.get("key", {}).get("fields", {}),
               "inputs": {r: {f: rec.get(f) for f in IDENTITY_FIELDS}
                          for r, rec in best_sc.get("inputs", {}).items()}}
        paths = {r: fp.get("path") for r, fp in self.key.inputs.items()}
        diff = describe_difference(old, self.key.identity(), paths=paths)
        return f"no product with key {self.short_hash}; differs from {best.stem}: {diff}"

    # ------------------------------------------------------------------ lock
    def lock(self, *, timeout: float | None = None, stale_after: float | None = 600.0) -> FileLock:
        """The entry's inter-process lock (use as ``with entry.lock(): ...``)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        return FileLock(self.lock_path, timeout=timeout, stale_after=stale_after)

    # ------------------------------------------------------------------ save
    def snapshot_inputs(self, *, full: bool = True,
                        expect: dict[str, dict] | None = None) -> dict[str, dict]:
        """Fingerprints of the key's inputs, checked against the key.

        Parameters
        ----------
        full : bool
            Include the hash of all data bytes (``data_sha256``; taken from the
            in-process memo when a reader already hashed the file at this stat,
            see `galseg.products.fingerprint.remember_data_sha256`).
        expect : dict, optional
            An earlier snapshot: every input must still have its stat.

        Raises
        ------
        InputChangedError
            If an input's content no longer matches the key, or its stat moved
            since ``expect``.
        """
        if self.key is None:
            raise ValueError(f"{self}: an entry without a key cannot be saved")
        snap = {}
        for role, fp in self.key.inputs.items():
            cur = input_fingerprint(fp["path"], fp["ext"], full=full)
            changed = [f for f in IDENTITY_FIELDS if cur[f] != fp[f]]
            if changed:
                raise InputChangedError(
                    f"input {role} {fp['path']} changed since the product key was made "
                    f"({', '.join(changed)} differ); make the key again")
            if expect is not None and any(cur[f] != expect[role][f] for f in _STAT_FIELDS):
                raise InputChangedError(
                    f"input {role} {fp['path']} was modified while the product was computed; "
                    "the result is not cached")
            snap[role] = cur
        return snap

    def reuse_recorded_input_hashes(self) -> list[str]:
        """Take the inputs' full data hashes from earlier products of the band.

        Before a computation (an ``overwrite=True`` rerun, new parameters),
        the inputs' ``data_sha256`` that the save records would cost a read
        of every input (0.4 s of CPU for two 8192x8192 float32 maps).  This
        entry's own sidecar and those of the band's other products record
        them; an input whose path and stat are those recorded (and whose
        record was not taken in the racy window) is the one that was hashed,
        by the same rule with which `is_valid` trusts a product's inputs, so
        its recorded hash is used (see
        `~galseg.products.fingerprint.adopt_recorded_data_sha256`).

        Returns
        -------
        list of str
            The roles whose hash was taken.
        """
        todo = {} if self.key is None else {
            role: fp for role, fp in self.key.inputs.items() if "data_sha256" not in fp}
        if not todo:
            return []
        taken: list[str] = []
        for _, sc in _band_sidecars(self.directory, self.identity["survey"],
                                    self.identity["filt"]):
            recorded = sc.get("inputs")
            if not isinstance(recorded, dict):
                continue
            for role in list(todo):
                rec = recorded.get(role)
                if (isinstance(rec, dict) and _input_stat_same(rec, todo[role])
                        and adopt_recorded_data_sha256(rec)):
                    taken.append(role)
                    del todo[role]
            if not todo:
                break
        if taken:
            log.debug("%s: input data hashes of %s taken from earlier products", self.stem,
                      ", ".join(taken))
        return taken

    def check_inputs_unchanged(self, snapshot: dict[str, dict]) -> None:
        """Raise `InputChangedError` if an input's stat moved since ``snapshot``."""
        for role, fp in snapshot.items():
            try:
                st = os.stat(fp["path"])
            except FileNotFoundError:
                raise InputChangedError(f"input {role} {fp['path']} disappeared during the run") from None
            if (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) != (
                    fp["size"], fp["mtime_ns"], fp["ctime_ns"], fp["ino"]):
                raise InputChangedError(
                    f"input {role} {fp['path']} was modified while the product was computed; "
                    "the result is not cached")

    def save(self, result: ExtractionResult, provenance: dict[str, Any] | None = None,
             wcs_header=None, *, inputs_snapshot: dict[str, dict] | None = None,
             lock: FileLock | None = None) -> None:
        """Write the product: seg, bkg and catalogue FITS atomically, then the sidecar.

        Parameters
        ----------
        result : ExtractionResult
            ``segmap`` (integer, >= 0, 2-D; stored as int32), ``background``
            (same shape; stored as float32), ``catalog`` (Table), ``meta``
            (JSON-able; stored in the sidecar and headers).  Never modified.
        provenance : dict, optional
            More JSON-able information to record (caller's context).
        wcs_header : Header or WCS, optional
            World coordinates copied onto the seg and bkg maps.
        inputs_snapshot : dict, optional
            Full input fingerprints (`snapshot_inputs`) of the data the result
            was computed from (made here if omitted).
        lock : FileLock, optional
            The held entry lock; the sidecar is not committed if it was broken.

        Raises
        ------
        InputChangedError
            If an input no longer matches the key.
        LockLost
            If ``lock`` was broken by another process during the save.
        """
        if self.key is None:
            raise ValueError(f"{self}: an entry without a key cannot be saved")
        seg, bkg, cat = self._checked_arrays(result)
        user_prov = _jsonable(provenance or {}, "provenance")
        meta = _jsonable(result.meta or {}, "result.meta")
        snap = inputs_snapshot if inputs_snapshot is not None else self.snapshot_inputs()

        self.directory.mkdir(parents=True, exist_ok=True)
        # Withdraw the commit marker first: from here until the new sidecar
        # lands, the product is "incomplete" for every reader.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.sidecar_path)
            fsync_dir(self.directory)
        # the old files go in the background (freeing a big file can be slow)
        for part in ("seg", "bkg", "cat"):
            discard_file(self.path(part))

        prov = {
            "product": self.identity | {"stem": self.stem},
            "key": {"sha256": self.key.sha256, "short": self.key.short,
                    "fields": self.key.fields},
            "inputs": snap,
            "versions": _environment_versions(),
            "created": _now_iso(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "user": _user(),
            "nobj": len(cat),
            "shape": list(seg.shape),
            "meta": meta,
            "provenance": user_prov,
        }
        primary = fits.Header()
        apply_provenance(primary, prov, PRODUCT_TYPES["cat"])
        cat_bytes = table_file_bytes(cat, primary=primary, cards=meta_cards(cat))
        wcs = wcs_cards(wcs_header)
        # The two images are written at once (conversion, hashing and I/O
        # release the GIL), the catalogue meanwhile; any failure propagates
        # before the sidecar is written.
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="galseg-save") as pool:
            futures = {}
            for part, data, dtype in (("seg", seg, np.int32), ("bkg", bkg, np.float32)):
                hdr = wcs.copy()
                apply_provenance(hdr, prov, PRODUCT_TYPES[part])
                futures[part] = pool.submit(_write_part, self.path(part), image=data, header=hdr,
                                            dtype=dtype)
            files = {"cat": _write_part(self.cat_path, data=cat_bytes)}
            files.update((part, f.result()) for part, f in futures.items())

        if lock is not None and not lock.still_held():
            raise LockLost(f"lock {self.lock_path} was broken during the save of {self.stem}; "
                           "not committing")
        sidecar = dict(prov, format=SIDECAR_FORMAT, format_version=SIDECAR_VERSION,
                       status="complete", files=files, written_ns=time.time_ns())
        atomic_write_json(sidecar, self.sidecar_path)

    @staticmethod
    def _checked_arrays(result: ExtractionResult):
        seg = np.asarray(result.segmap)
        if seg.ndim != 2:
            raise ValueError(f"segmap must be 2-D, got shape {seg.shape}")
        if seg.dtype.kind not in "iu":
            raise TypeError(f"segmap must be an integer array, got dtype {seg.dtype}")
        # (one pass over the map: an int32 map cannot exceed the bound)
        if seg.size and (seg.min() < 0 or (np.iinfo(seg.dtype).max > np.iinfo(np.int32).max
                                           and seg.max() > np.iinfo(np.int32).max)):
            raise ValueError("segmap values must lie in 0..2**31-1")
        bkg = np.asarray(result.background)
        if bkg.shape != seg.shape:
            raise ValueError(f"background shape {bkg.shape} differs from segmap shape {seg.shape}")
        if not isinstance(result.catalog, Table):
            raise TypeError(f"catalog must be an astropy Table, got {type(result.catalog).__name__}")
        # Written by atomic_write_fits_image, which converts block by block:
        # astropy's writeto would byte-swap the caller's arrays in place.
        return seg, bkg, result.catalog

    # ------------------------------------------------------------------ load
    def _require(self, path: Path) -> Path:
        if not path.exists():
            raise FileNotFoundError(f"product file {path} does not exist; run segment() first")
        return path

    def load_seg(self, *, header: bool = False):
        """The segmentation map (native int32), and its header if ``header``."""
        # memmap + one native copy: a single full-size allocation for big maps
        with fits.open(self._require(self.seg_path), memmap=True) as hdul:
            data = np.array(hdul[0].data, dtype=np.int32)
            hdr = hdul[0].header
        return (data, hdr) if header else data

    def load_bkg(self, *, header: bool = False):
        """The background map (native float32), and its header if ``header``."""
        with fits.open(self._require(self.bkg_path), memmap=True) as hdul:
            data = np.array(hdul[0].data, dtype=np.float32)
            hdr = hdul[0].header
        return (data, hdr) if header else data

    def load_cat(self) -> Table:
        """The catalogue as an astropy Table (units kept)."""
        return Table.read(self._require(self.cat_path), format="fits", hdu=1)

    def load(self) -> ExtractionResult:
        """All products as an `ExtractionResult` (``rms`` is not stored: None)."""
        sc = self.read_sidecar() or {}
        return ExtractionResult(segmap=self.load_seg(), background=self.load_bkg(),
                                catalog=self.load_cat(), rms=None, meta=sc.get("meta", {}))

    # ---------------------------------------------------------------- remove
    def remove(self, *, dry_run: bool = False) -> list[Path]:
        """Delete the product's files (sidecar first); return what was (or would be) removed."""
        removed = []
        for part in ("sidecar", "seg", "bkg", "cat"):
            p = self.path(part)
            if p.exists():
                removed.append(p)
                if not dry_run:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(p)
        return removed


class ProductStore:
    """Products under one work directory.

    Parameters
    ----------
    work_dir : path-like
        Root of the product tree (created on the first save).
    """

    def __init__(self, work_dir):
        self.work_dir = Path(work_dir)

    def __repr__(self) -> str:
        return f"ProductStore({str(self.work_dir)!r})"

    def band_dir(self, instrument: str, version: str, survey: str, weight_type: str) -> Path:
        """The segmentation folder of a survey/version/instrument/weight type."""
        return product_dir(self.work_dir, instrument, version, survey, weight_type)

    def entry(self, instrument: str, version: str, survey: str, filt: str, weight_type: str,
              key: ProductKey, label: str | None = None) -> ProductEntry:
        """The product of one band for one key (it need not exist yet).

        Raises
        ------
        ValueError
            If a name is not a plain path component (``/``, ``..`` ...).
        """
        if not isinstance(key, ProductKey):
            raise TypeError(f"key must be a ProductKey from make_key(), not {type(key).__name__}")
        identity = self._identity(instrument, version, survey, filt, weight_type, label)
        directory = self.band_dir(instrument, version, survey, weight_type)
        stem = product_stem(survey, filt, key.short, label)
        return ProductEntry(directory, stem, identity, key=key)

    @staticmethod
    def _identity(instrument, version, survey, filt, weight_type, label) -> dict[str, Any]:
        return {
            "instrument": safe_component(instrument, "instrument"),
            "version": safe_component(version, "version"),
            "survey": safe_component(survey, "survey"),
            "filt": safe_component(filt, "filt"),
            "weight_type": check_weight_type(weight_type),
            "label": None if label is None else safe_component(label, "label"),
        }

    def entries(self, instrument: str, version: str, survey: str, filt: str,
                weight_type: str, label: str | None = None, *,
                any_label: bool = False) -> list[ProductEntry]:
        """Existing products (with a sidecar) of one band, newest first."""
        ident = self._identity(instrument, version, survey, filt, weight_type, label)
        directory = self.band_dir(instrument, version, survey, weight_type)
        return [ProductEntry(directory, p.name[: -len(SIDECAR_SUFFIX)], sc["product"],
                             key_sha256=sc.get("key", {}).get("sha256"))
                for p, sc in _band_sidecars(directory, survey, filt)
                if any_label or sc["product"].get("label") == ident["label"]]

    def latest(self, instrument: str, version: str, survey: str, filt: str, weight_type: str,
               label: str | None = None, *, any_label: bool = False,
               check_inputs: bool = True) -> ProductEntry | None:
        """The newest valid product of a band, without knowing its key.

        For a fresh process that wants a band's products without recomputing
        the key.  ``check_inputs`` also requires the recorded inputs to be
        unchanged.  None if there is none.
        """
        for entry in self.entries(instrument, version, survey, filt, weight_type, label,
                                  any_label=any_label):
            if entry.is_valid(check_inputs=check_inputs):
                return entry
            log.debug("skipping %s: %s", entry.stem, entry.why_invalid)
        return None


@dataclass
class CacheOutcome:
    """What `get_or_compute` did.

    Attributes
    ----------
    entry : ProductEntry
        The (now valid) product.
    computed : bool
        True if ``compute`` ran in this call.
    reason : str
        ``"cached"``, or why it was computed (``"overwrite requested"``,
        ``"input sci changed: ..."``, ``"no product with key ...: DETECT_THRESH: 1.5 -> 2.0"``).
    result : ExtractionResult or None
        The computed result (None when loaded from the cache: use
        ``entry.load()`` or ``entry.load_seg()``...).
    """

    entry: ProductEntry
    computed: bool
    reason: str
    result: ExtractionResult | None = None


def get_or_compute(entry: ProductEntry, compute: Callable[[], ExtractionResult], *,
                   overwrite: bool = False, provenance: dict[str, Any] | None = None,
                   wcs_header=None, lock_timeout: float | None = None,
                   stale_after: float | None = 600.0) -> CacheOutcome:
    """Return the valid product of ``entry``, computing and saving it if needed.

    Protocol: check (no lock: a cache hit costs a sidecar read and a few
    ``stat`` calls); on a miss take the entry lock, check again (another
    process may have made it while we waited), note the inputs' stat, run
    ``compute()``, check the inputs did not change meanwhile, record their full
    data hashes, save.

    Parameters
    ----------
    entry : ProductEntry
        From `ProductStore.entry` (with a key).
    compute : callable
        No arguments; returns an `ExtractionResult`.
    overwrite : bool
        Recompute and replace even a valid product.
    provenance : dict, optional
        Extra JSON-able information recorded with the product.
    wcs_header : Header or WCS, optional
        World coordinates for the seg/bkg maps.
    lock_timeout : float, optional
        Seconds to wait for another process computing the same product
        (None: wait as long as it takes).
    stale_after : float, optional
        Break a lock not refreshed for this long (its holder's heartbeat
        stopped).

    Returns
    -------
    CacheOutcome
    """
    provenance = _jsonable(provenance or {}, "provenance")  # fail before computing
    if not overwrite and entry.is_valid():
        log.debug("using cached %s", entry.stem)
        return CacheOutcome(entry, False, "cached")
    with entry.lock(timeout=lock_timeout, stale_after=stale_after) as lock:
        if not overwrite and entry.is_valid():
            log.info("using %s, made by another process while this one waited", entry.stem)
            return CacheOutcome(entry, False, "cached (made by another process)")
        if overwrite:
            reason = "overwrite requested"
        elif entry.why_invalid == "missing":
            reason = entry.explain_missing()
        else:
            reason = entry.why_invalid or "invalid"
        log.info("computing %s: %s", entry.stem, reason)
        # Stat and sampled hashes before, the full hash after the computation:
        # with the stat unchanged across it, the full hash describes the data
        # computed on, and a reader that hashed the data on the way (the
        # engine's input reader), or an earlier product's record of the
        # untouched file, spares a second read of every input.
        before = entry.snapshot_inputs(full=False)
        entry.reuse_recorded_input_hashes()
        t0 = time.perf_counter()
        result = compute()
        elapsed = time.perf_counter() - t0
        if not isinstance(result, ExtractionResult):
            raise TypeError(f"compute() must return an ExtractionResult, got {type(result).__name__}")
        entry.check_inputs_unchanged(before)
        snap = entry.snapshot_inputs(full=True, expect=before)
        prov = dict(provenance or {})
        prov.setdefault("compute_seconds", round(elapsed, 6))
        entry.save(result, prov, wcs_header, inputs_snapshot=snap, lock=lock)
    return CacheOutcome(entry, True, reason, result)
