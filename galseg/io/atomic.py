"""Atomic file writes: a reader sees the old file or the complete new one, never a part.

Every writer here follows the same protocol: write into a temporary file in the
*same directory* as the target (so that the final rename never crosses a file
system), flush and ``fsync`` it, ``os.replace`` it onto the target, then
``fsync`` the directory so that the rename itself survives a power cut.  If the
body raises, or the process is killed, only the temporary file is left; its
name (``.{target}.{pid}.{random}.tmp``) says which process made it, so that
`is_orphan_temp` and ``galseg cache clean`` can remove it later.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_fits",
    "atomic_write_fits_image",
    "file_sha256",
    "file_sha256_stat",
    "fsync_dir",
    "is_orphan_temp",
    "discard_file",
    "atomic_write_npy",
    "TEMP_PATTERN",
]

# ".{target name}.{host tag}.{pid}.{16 hex}.tmp": host tag and pid let a cleaner
# see whether the writer is still alive (pids mean nothing on another host of a
# shared file system).
TEMP_PATTERN = re.compile(
    r"^\.(?P<target>.+)\.(?P<host>[0-9a-f]{8})\.(?P<pid>\d+)\.(?P<rand>[0-9a-f]{16})\.tmp$"
)
_HOST_TAG = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]

_HASH_CHUNK = 8 * 1024 * 1024


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{_HOST_TAG}.{os.getpid()}.{secrets.token_hex(8)}.tmp")


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def discard_file(path: str | os.PathLike) -> None:
    """Remove a file that is about to be rewritten, without waiting for it.

    The file is renamed at once to a temporary name (see `is_orphan_temp`)
    and unlinked on a helper thread.  Freeing a large file's blocks takes up
    to a second on some systems (online discard, journal flushes), and an
    atomic write renamed over the old file would wait for it; the new file
    then lands on a free name.  The thread is not a daemon (the interpreter
    waits for it at exit); if the process dies first, ``galseg cache clean``
    removes the orphan.  Only for files whose readers are already told that
    they are being replaced (a withdrawn sidecar).
    """
    p = Path(path)
    tmp = _temp_path(p)
    try:
        os.rename(p, tmp)
    except FileNotFoundError:
        return
    threading.Thread(target=_unlink_quietly, args=(tmp,), name="galseg-discard").start()


def fsync_dir(directory: str | os.PathLike) -> None:
    """``fsync`` a directory so that renames and unlinks in it are durable.

    Silently does nothing on platforms or file systems that cannot open a
    directory for syncing.
    """
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", *, fsync: bool = True,
                 encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file that replaces ``path`` when the block ends cleanly.

    Parameters
    ----------
    path : path-like
        The final file.  Its directory must exist.
    mode : {"wb", "w"}
        Binary or text mode.
    fsync : bool
        Flush the data and the directory entry to stable storage before
        returning (default).  Only turn off for scratch files.
    encoding : str, optional
        Text encoding for ``mode="w"`` (default UTF-8).

    Yields
    ------
    file object
        Write the whole content into it.  On an exception the temporary file
        is removed and ``path`` is left untouched.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write mode must be 'wb' or 'w', not {mode!r}")
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"directory of {path} does not exist")
    tmp = _temp_path(path)
    kwargs = {"encoding": encoding or "utf-8"} if mode == "w" else {}
    # O_EXCL: never write into a file someone else created under our name.
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
    f = os.fdopen(fd, mode, **kwargs)
    try:
        yield f
        f.flush()
        if fsync:
            os.fsync(f.fileno())
        f.close()
        os.replace(tmp, path)
    except BaseException:
        f.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if fsync:
        fsync_dir(path.parent)


def _record(st: os.stat_result, digest: str | None) -> dict[str, Any]:
    """A written file's record: ``size``, ``mtime_ns``, ``ino`` (taken before the
    rename, which keeps all three) and ``sha256`` (None when not computed)."""
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino, "sha256": digest}


def atomic_write_bytes(data: bytes, path: str | os.PathLike, *, fsync: bool = True,
                       sha256: bool = False) -> dict[str, Any]:
    """Write ``data`` to ``path`` atomically.

    Returns the file's ``size``, ``mtime_ns``, ``ino`` and ``sha256`` (None
    unless requested), as `atomic_write_fits` does.
    """
    with atomic_write(path, "wb", fsync=fsync) as f:
        f.write(data)
        f.flush()
        st = os.fstat(f.fileno())
    return _record(st, hashlib.sha256(data).hexdigest() if sha256 else None)


def atomic_write_json(obj: Any, path: str | os.PathLike, *, fsync: bool = True,
                      indent: int | None = 1) -> None:
    """Write ``obj`` as JSON (sorted keys, ASCII) to ``path`` atomically.

    The document is serialised completely before the file is opened, so a
    value that is not JSON-able raises without touching the disk.
    """
    text = json.dumps(obj, indent=indent, sort_keys=True, ensure_ascii=True, allow_nan=False)
    atomic_write_bytes((text + "\n").encode("ascii"), path, fsync=fsync)


def atomic_write_fits(hdus, path: str | os.PathLike, *, fsync: bool = True,
                      sha256: bool = False) -> dict[str, Any]:
    """Write FITS HDUs to ``path`` atomically.

    Parameters
    ----------
    hdus : `~astropy.io.fits.HDUList` or HDU
        What to write; a single HDU is written as a one-HDU file (an image HDU
        that is not primary is converted by astropy as usual).
    path : path-like
        The final file.
    fsync : bool
        See `atomic_write`.
    sha256 : bool
        Also compute the SHA-256 of the bytes written (read back from the
        temporary file while it is hot in the page cache, before the rename).

    Returns
    -------
    dict
        ``size``, ``mtime_ns``, ``ino`` of the file as committed (taken from
        the temporary file before the rename, which keeps all three, so they
        describe *our* file even if another process renames over it at once)
        and ``sha256`` (None unless requested).
    """
    from astropy.io import fits

    if not isinstance(hdus, fits.HDUList):
        if isinstance(hdus, fits.ImageHDU):
            hdus = fits.PrimaryHDU(data=hdus.data, header=hdus.header)
        hdus = fits.HDUList([hdus])
    with atomic_write(path, "wb", fsync=fsync) as f:
        # astropy closes the file object it is given; hand it a duplicate
        # descriptor so that ours stays open for the fsync and the rename.
        with os.fdopen(os.dup(f.fileno()), "wb") as g:
            hdus.writeto(g)
        digest = _fd_sha256(f.fileno()) if sha256 else None
        st = os.fstat(f.fileno())
    return _record(st, digest)


def atomic_write_fits_image(data, path: str | os.PathLike, header=None, *,
                            dtype=None, fsync: bool = True, sha256: bool = False,
                            chunk_bytes: int = 8 * 1024 * 1024) -> dict[str, Any]:
    """Write one image as a single-HDU FITS file atomically, streaming.

    Unlike ``HDUList.writeto`` this never byte-swaps the caller's array in
    place and never makes a full-size big-endian copy: rows are converted in
    blocks of about ``chunk_bytes`` and hashed as they are written.

    Parameters
    ----------
    data : array-like, 2-D (any number of axes works)
        The image; not modified.
    path : path-like
        The final file.
    header : `~astropy.io.fits.Header`, optional
        Extra cards (structural keywords are set from ``data``).
    dtype : dtype, optional
        Type to store (e.g. ``np.int32``); default ``data.dtype``.  Must be a
        FITS image type (uint8, int16, int32, int64, float32, float64).
    fsync, sha256 : bool
        See `atomic_write_fits`.

    Returns
    -------
    dict
        ``size``, ``mtime_ns``, ``ino``, ``sha256`` as for `atomic_write_fits`.
    """
    import numpy as np
    from astropy.io import fits

    arr = np.asarray(data)
    out_dtype = np.dtype(dtype or arr.dtype)
    if out_dtype.kind not in "iuf" or (out_dtype.kind == "u" and out_dtype.itemsize > 1):
        raise TypeError(f"cannot store {out_dtype} as a FITS image without scaling; "
                        "use uint8, int16/32/64 or float32/64")
    be = out_dtype.newbyteorder(">")
    # An empty array of the stored type lets astropy set BITPIX/NAXISn; we
    # overwrite the axis lengths with the real shape.
    hdu = fits.PrimaryHDU(data=np.zeros((1,) * arr.ndim, dtype=be),
                          header=header.copy() if header is not None else None)
    for i, n in enumerate(arr.shape[::-1], start=1):
        hdu.header[f"NAXIS{i}"] = n
    head = hdu.header.tostring().encode("ascii")
    h = hashlib.sha256() if sha256 else None
    rows = max(1, chunk_bytes // max(1, be.itemsize * int(np.prod(arr.shape[1:], dtype=np.int64))))
    nrows = arr.shape[0] if arr.ndim else 1
    nbytes = arr.size * be.itemsize
    total = len(head) + nbytes + (-nbytes % 2880)
    # rows that are all the same (a broadcast constant map, e.g. a MANUAL
    # background): convert one block and use it again and again
    same_rows = arr.ndim > 0 and arr.strides[0] == 0
    first = np.ascontiguousarray(arr[:rows], dtype=be) if same_rows else None
    with atomic_write(path, "wb", fsync=fsync) as f, _Hasher(h) as hasher:
        f.write(head)
        f.flush()
        hasher.update(head)
        fd = f.fileno()
        offset = len(head)
        for start in range(0, nrows, rows):
            block = (first[:min(rows, nrows - start)] if same_rows
                     else np.ascontiguousarray(arr[start:start + rows], dtype=be))
            hasher.update(block)
            _write_sparse(fd, offset, block.view(np.uint8).reshape(-1))
            offset += block.nbytes
        hasher.update(b"\0" * (total - offset))
        # the padding, and any trailing hole, are zeros
        os.ftruncate(fd, total)
        f.seek(0, os.SEEK_END)
        st = os.fstat(fd)
    return _record(st, h.hexdigest() if h is not None else None)


def atomic_write_npy(arr, path: str | os.PathLike, *, fsync: bool = True,
                     sha256: bool = False) -> dict[str, Any]:
    """Write ``arr`` as a ``.npy`` file atomically (no pickles), hashing it on
    the way; returns the file record, as `atomic_write_fits` does."""
    import numpy as np

    class _Out:  # np.save writes a non-file object in chunks: hash each on the way
        def write(self, data):
            hasher.update(data)
            return f.write(data)

    h = hashlib.sha256() if sha256 else None
    with atomic_write(path, "wb", fsync=fsync) as f, _Hasher(h) as hasher:
        np.save(_Out(), np.ascontiguousarray(arr), allow_pickle=False)
        f.flush()
        st = os.fstat(f.fileno())  # the rename keeps size, mtime and inode
    return _record(st, h.hexdigest() if h is not None else None)


class _Hasher:
    """``hashlib`` updates on a helper thread, in order, while the caller
    writes the same blocks (hashing and writing a large image take about as
    long; both release the GIL).  At most two blocks wait, so memory stays
    bounded.  A None hash does nothing."""

    def __init__(self, h):
        self._h = h
        self._pool = None
        self._pending: list = []

    def __enter__(self):
        if self._h is not None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="galseg-hash")
        return self

    def update(self, data) -> None:
        if self._pool is None:
            return
        # one worker runs the updates first in, first out
        self._pending.append(self._pool.submit(self._h.update, data))
        while len(self._pending) > 2:
            self._pending.pop(0).result()

    def __exit__(self, *exc):
        if self._pool is not None:
            try:
                for fut in self._pending:
                    fut.result()
            finally:
                self._pool.shutdown(wait=True)
        return False


_PAGE = 4096


def _write_sparse(fd: int, offset: int, data) -> None:
    """``pwrite`` the bytes ``data`` at ``offset``, leaving file-system pages
    that would hold only zeros unwritten (holes: they read back as zeros).

    Segmentation maps are mostly 0 and a MANUAL background of 0 is all zeros:
    not writing those pages spares the page-cache copies and disk blocks.
    Pages are aligned to the file offset; partial pages at the ends are
    written.  The caller extends the file to its full size at the end.
    """
    import numpy as np

    n = data.shape[0]
    lead = min(n, -offset % _PAGE)
    npage = (n - lead) // _PAGE
    if npage < 4:
        _pwrite_all(fd, data, offset)
        return
    pages = data[lead:lead + npage * _PAGE].reshape(npage, _PAGE)
    nonzero = pages.view(np.uint64).any(axis=1) if _PAGE % 8 == 0 else pages.any(axis=1)
    if nonzero.all():
        _pwrite_all(fd, data, offset)
        return
    # runs of pages to write: [lo, hi) in page units, the partial ends included
    edges = np.flatnonzero(np.diff(np.r_[False, nonzero, False].astype(np.int8)))
    runs = [(lead + a * _PAGE, lead + b * _PAGE) for a, b in zip(edges[::2], edges[1::2])]
    if lead and data[:lead].any():
        runs.insert(0, (0, lead))
    tail = lead + npage * _PAGE
    if tail < n and data[tail:].any():
        runs.append((tail, n))
    for lo, hi in runs:
        _pwrite_all(fd, data[lo:hi], offset + lo)


def _pwrite_all(fd: int, data, offset: int) -> None:
    view = memoryview(data).cast("B")
    while view.nbytes:
        k = os.pwrite(fd, view, offset)
        view = view[k:]
        offset += k


def _fd_sha256(fd: int) -> str:
    h = hashlib.sha256()
    offset = 0
    while True:
        block = os.pread(fd, _HASH_CHUNK, offset)
        if not block:
            break
        h.update(block)
        offset += len(block)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a whole file (read in 8 MiB blocks)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        return _fd_sha256(fd)
    finally:
        os.close(fd)


def file_sha256_stat(path: str | os.PathLike) -> tuple[str, os.stat_result]:
    """Hex SHA-256 of a whole file and the ``fstat`` of the very file that was hashed."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        return _fd_sha256(fd), os.fstat(fd)
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def is_orphan_temp(path: str | os.PathLike, *, min_age_s: float = 3600.0) -> bool:
    """Whether ``path`` is a temporary file left by a dead or long-gone writer.

    A temp file counts as an orphan when it was written on this host by a
    pid that is no longer running, or when it has not been modified for
    ``min_age_s`` seconds (a writer on another host of a shared file system,
    whose pid cannot be checked from here).
    """
    path = Path(path)
    m = TEMP_PATTERN.match(path.name)
    if m is None:
        return False
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return False
    if age > min_age_s:
        return True
    return m["host"] == _HOST_TAG and not _pid_alive(int(m["pid"]))
