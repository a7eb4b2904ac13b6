"""A small committed set of files: the cache record of stacks and catalogues.

Stacked images, detection states and forced/multi-band catalogues are not
segmentation products (they have no seg/bkg/cat triple), but they are cached
the same way as `galseg.products` caches those: every file is written
atomically, then a JSON *sidecar* is written last as the commit marker.  A set
is trusted only when its sidecar says ``"status": "complete"``, carries the
key hash asked for, and every file still has the recorded size, mtime and
inode (or, when its stat changed, the recorded SHA-256 where one was
recorded).  Writers hold the set's `~galseg.products.FileLock`, so concurrent
runs make a set once.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from ..io.atomic import atomic_write_json, discard_file, file_sha256_stat, fsync_dir
from .key import _jsonable, library_versions
from .lock import FileLock

__all__ = ["FileSet", "FILESET_FORMAT"]

FILESET_FORMAT = "galseg-fileset"
_FILESET_VERSION = 1


class FileSet:
    """Files sharing a stem in one folder, committed together by a sidecar.

    Parameters
    ----------
    directory : path-like
        The folder (created on the first write).
    stem : str
        Common file-name stem.
    parts : dict
        Part name -> file-name suffix (e.g. ``{"sci": "_sci.fits"}``).
    kind : str
        What the set is (``"stack"``, ``"forced_catalog"`` ...), recorded in
        the sidecar and checked on reading.
    """

    def __init__(self, directory, stem: str, parts: dict[str, str], kind: str):
        self.directory = Path(directory)
        self.stem = stem
        self.parts = dict(parts)
        self.kind = kind
        self.why_invalid: str | None = None

    def __repr__(self) -> str:
        return f"FileSet({str(self.directory / self.stem)!r}, {self.kind})"

    @classmethod
    def from_sidecar(cls, path) -> "FileSet | None":
        """The set a sidecar describes (its kind and parts as recorded), or None
        when ``path`` is not a readable file-set sidecar.  For listing and
        cleaning a cache without knowing what made it."""
        path = Path(path)
        if not path.name.endswith(".json"):
            return None
        stem = path.name[: -len(".json")]
        fs = cls(path.parent, stem, {}, "")
        sc = fs.read_sidecar()
        if not sc or sc.get("format") != FILESET_FORMAT or not isinstance(sc.get("files"), dict):
            return None
        parts = {}
        for part, rec in sc["files"].items():
            name = (rec or {}).get("name", "")
            if not name.startswith(stem):
                return None
            parts[part] = name[len(stem):]
        fs.parts, fs.kind = parts, str(sc.get("kind", ""))
        return fs

    def is_intact(self) -> bool:
        """Whether the committed set is complete and unchanged, for the key it
        records (`is_valid` also requires the key the caller expects)."""
        sc = self.read_sidecar() or {}
        return self.is_valid(str(sc.get("key_sha256", "")))

    def path(self, part: str) -> Path:
        """Path of ``part`` (one of `parts`, or ``"sidecar"`` / ``"lock"``)."""
        if part == "sidecar":
            return self.directory / f"{self.stem}.json"
        if part == "lock":
            return self.directory / f"{self.stem}.lock"
        try:
            return self.directory / f"{self.stem}{self.parts[part]}"
        except KeyError:
            raise KeyError(f"{self}: no part {part!r}; parts are {', '.join(self.parts)}") from None

    def read_sidecar(self) -> dict[str, Any] | None:
        """The parsed sidecar, or None when absent or unreadable."""
        try:
            with open(self.path("sidecar"), "rb") as f:
                sc = json.load(f)
        except (OSError, ValueError):
            return None
        return sc if isinstance(sc, dict) else None

    def is_valid(self, key_sha256: str) -> bool:
        """Whether the committed set on disk was made for ``key_sha256`` and is intact.

        Costs one small JSON read and one ``stat`` per file when nothing
        changed; a file whose stat changed is re-hashed when a SHA-256 was
        recorded for it, and makes the set invalid otherwise.
        """
        self.why_invalid = self._check(key_sha256)
        return self.why_invalid is None

    def _check(self, key_sha256: str) -> str | None:
        sc = self.read_sidecar()
        if sc is None:
            return "missing" if not self.path("sidecar").exists() else "sidecar unreadable"
        if sc.get("format") != FILESET_FORMAT or sc.get("format_version") != _FILESET_VERSION:
            return f"sidecar format {sc.get('format')!r} is not {FILESET_FORMAT!r}"
        if sc.get("kind") != self.kind:
            return f"sidecar kind {sc.get('kind')!r} is not {self.kind!r}"
        if sc.get("status") != "complete":
            return f"sidecar status is {sc.get('status')!r}"
        if sc.get("key_sha256") != key_sha256:
            return "made with another key (inputs or parameters changed)"
        files = sc.get("files") or {}
        for part in self.parts:
            rec = files.get(part)
            path = self.path(part)
            if not rec or rec.get("name") != path.name:
                return f"sidecar does not list {path.name}"
            try:
                st = os.stat(path)
            except FileNotFoundError:
                return f"{path.name} is missing"
            if (st.st_size, st.st_mtime_ns, st.st_ino) == (rec.get("size"), rec.get("mtime_ns"),
                                                            rec.get("ino")):
                continue
            if st.st_size != rec.get("size") or not rec.get("sha256"):
                return f"{path.name} changed since it was written"
            digest, _ = file_sha256_stat(path)
            if digest != rec["sha256"]:
                return f"{path.name} checksum mismatch"
        return None

    def lock(self, timeout: float | None = None) -> FileLock:
        """The set's inter-process lock (``with fs.lock(): ...``)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        return FileLock(self.path("lock"), timeout=timeout)

    def begin(self) -> None:
        """Withdraw the commit marker before (re)writing the files."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path("sidecar"))
            fsync_dir(self.directory)
        for part in self.parts:
            discard_file(self.path(part))

    def commit(self, key_sha256: str, written: dict[str, dict], info: dict | None = None) -> None:
        """Write the sidecar for the files just written.

        Parameters
        ----------
        key_sha256 : str
            The key the files were made for.
        written : dict
            Part -> the dict returned by the atomic writer (``size``,
            ``mtime_ns``, ``ino``, optional ``sha256``).
        info : dict, optional
            Extra JSON-able provenance.
        """
        missing = [p for p in self.parts if p not in written]
        if missing:
            raise ValueError(f"{self}: cannot commit without {', '.join(missing)}")
        files = {}
        for part, rec in written.items():
            files[part] = {"name": self.path(part).name, "size": rec["size"],
                           "mtime_ns": rec["mtime_ns"], "ino": rec["ino"],
                           "sha256": rec.get("sha256")}
        sidecar = {
            "format": FILESET_FORMAT, "format_version": _FILESET_VERSION, "kind": self.kind,
            "status": "complete", "key_sha256": key_sha256, "files": files,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"),
            "host": socket.gethostname(), "pid": os.getpid(), "versions": library_versions(),
            "written_ns": time.time_ns(), "info": _jsonable(info or {}, "info"),
        }
        atomic_write_json(sidecar, self.path("sidecar"))

    @property
    def info(self) -> dict[str, Any]:
        """The ``info`` recorded at commit (empty when there is no sidecar)."""
        return (self.read_sidecar() or {}).get("info", {})
