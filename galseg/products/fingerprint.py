"""Cheap, content-based fingerprints of FITS inputs.

A fingerprint identifies *what one HDU of a file contains* without reading the
whole file: the SHA-256 of the HDU's header bytes as they are on disk, plus a
SHA-256 of its raw data bytes -- all of them up to 8 MiB, otherwise 64 blocks of
64 KiB spread evenly over the data (first and last included).  It works on the
bytes as stored, so tile-compressed HDUs are fingerprinted as their compressed
binary table (nothing is decompressed).

The HDU structure is read directly from the 2880-byte FITS blocks (no astropy
parsing), so a fingerprint costs a few ``pread`` calls.  Results are memoised
in-process on ``(path, ext, device, inode, size, mtime_ns, ctime_ns)``: a rerun
with untouched inputs reads nothing at all.

Because the sampled hash can miss a local edit of a large image (a few masked
pixels), the product store also records the *full* data hash
(``full=True``) when it saves a product, and checks it whenever the file's
``stat`` differs from what was recorded.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import OrderedDict
from typing import Any

__all__ = ["input_fingerprint", "clear_fingerprint_cache", "remember_data_sha256",
           "adopt_recorded_data_sha256", "RACY_NS"]

_BLOCK = 2880
_CARD = 80
_FULL_LIMIT = 8 * 1024 * 1024
_SAMPLE_BLOCKS = 64
_SAMPLE_SIZE = 64 * 1024
_READ_CHUNK = 8 * 1024 * 1024

# A stat recorded less than this after the file's last change (mtime or
# ctime) is not trusted on its own: file-system timestamps are coarse (a few ms
# on Linux, 2 s on FAT), so a same-size rewrite within one tick would keep the
# same stat.  Such files are re-read (memo) or re-hashed (sidecar check).
RACY_NS = 2_000_000_000

_MEMO: OrderedDict[tuple, dict] = OrderedDict()
_MEMO_MAX = 512
_MEMO_LOCK = threading.Lock()


def clear_fingerprint_cache() -> None:
    """Forget all memoised fingerprints (mainly for tests and benchmarks)."""
    with _MEMO_LOCK:
        _MEMO.clear()


def remember_data_sha256(path, hdu: int, stat: tuple, sha256: str) -> bool:
    """Record the full data hash of an HDU that a reader computed on the way.

    ``stat`` is ``(st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns)`` of the
    file, unchanged over the read (`galseg.io.fits.RawDigest`).  Memoised
    fingerprints of that HDU at that stat gain ``data_sha256``, so that
    ``input_fingerprint(..., full=True)`` need not read the file again.
    Returns whether one was found (none is, e.g., for a file fingerprinted
    within `RACY_NS` of its last change).
    """
    return _give_data_sha256(path, tuple(stat), {"hdu": hdu}, sha256, replace=True)


def _give_data_sha256(path, stat: tuple, same: dict, sha256: str, *, replace: bool) -> bool:
    """``data_sha256`` for the memoised fingerprints of ``path`` at ``stat``
    (the tail of `_stat_key`: with or without ``st_dev``) whose fields
    ``same`` match (``replace``: also where one is known); whether there
    was one."""
    apath = os.path.abspath(os.fspath(path))
    found = False
    with _MEMO_LOCK:
        for key, fp in _MEMO.items():
            if (key[0] == apath and key[len(key) - len(stat):] == stat
                    and all(fp.get(f) == v for f, v in same.items())):
                if replace or "data_sha256" not in fp:
                    fp["data_sha256"] = sha256
                found = True
    return found


def adopt_recorded_data_sha256(record: dict) -> bool:
    """Take the full data hash from a fingerprint recorded earlier (a product's
    sidecar), so that ``input_fingerprint(..., full=True)`` need not read the
    file again.

    Only for a file whose memoised fingerprint (made at a stat outside the
    racy window, see `RACY_NS`) has the record's path, inode, size, mtime and
    ctime, HDU, header hash and sampled data hash: the product store trusts
    the same unchanged stat to mean unchanged data when it checks a product
    (the caller also checks that the *record* was not taken in the racy
    window).  Returns whether one was found.
    """
    try:
        path, sha256 = record["path"], record["data_sha256"]
        stat = (record["ino"], record["size"], record["mtime_ns"], record["ctime_ns"])
        same = {f: record[f] for f in ("hdu", "header_sha256", "data_nbytes",
                                       "data_sample_sha256")}
    except (KeyError, TypeError):
        return False
    if not isinstance(sha256, str) or len(sha256) != 64:
        return False
    return _give_data_sha256(path, stat, same, sha256, replace=False)


def _card_value(card: str) -> str | None:
    if card[8:10] != "= ":
        return None
    raw = card[10:].strip()
    if raw.startswith("'"):
        # FITS string: '' is an escaped quote; the string ends at a lone quote.
        out, i = [], 1
        while i < len(raw):
            if raw[i] == "'":
                if i + 1 < len(raw) and raw[i + 1] == "'":
                    out.append("'")
                    i += 2
                    continue
                break
            out.append(raw[i])
            i += 1
        return "".join(out).rstrip()
    return raw.split("/", 1)[0].strip()


def _read_header(fd: int, offset: int, path: str) -> tuple[dict[str, str], int]:
    """Parse the header starting at ``offset``; return (cards we need, header length)."""
    wanted = {"SIMPLE", "XTENSION", "BITPIX", "NAXIS", "PCOUNT", "GCOUNT", "GROUPS",
              "EXTNAME", "EXTVER"}
    cards: dict[str, str] = {}
    pos = offset
    while True:
        block = os.pread(fd, _BLOCK, pos)
        if len(block) < _BLOCK:
            raise ValueError(f"{path}: truncated FITS header at byte {pos}")
        pos += _BLOCK
        text = block.decode("ascii", errors="replace")
        for i in range(0, _BLOCK, _CARD):
            card = text[i:i + _CARD]
            key = card[:8].rstrip()
            if key == "END":
                return cards, pos - offset
            if key in wanted or (key.startswith("NAXIS") and key[5:].isdigit()):
                val = _card_value(card)
                if val is not None and key not in cards:
                    cards[key] = val
        if pos - offset > 100 * 1024 * 1024:
            raise ValueError(f"{path}: no END card in the first 100 MiB of a header")


def _data_nbytes(cards: dict[str, str], path: str, index: int) -> int:
    try:
        bitpix = int(cards["BITPIX"])
        naxis = int(cards["NAXIS"])
        axes = [int(cards[f"NAXIS{i}"]) for i in range(1, naxis + 1)]
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{path}: HDU {index} has an invalid or missing {exc} card") from None
    if naxis == 0:
        return 0
    pcount = int(cards.get("PCOUNT", "0") or 0)
    gcount = int(cards.get("GCOUNT", "1") or 1)
    if cards.get("GROUPS", "F") == "T" and axes and axes[0] == 0:
        axes = axes[1:]  # random groups: NAXIS1 = 0 is a placeholder
    n = 1
    for a in axes:
        n *= a
    return abs(bitpix) // 8 * gcount * (pcount + n)


def _locate_hdu(fd: int, ext, path: str, file_size: int) -> tuple[int, int, int, int]:
    """Find HDU ``ext``; return (index, header offset, data offset, data bytes)."""
    want_name = want_ver = None
    if isinstance(ext, (tuple, list)):
        want_name, want_ver = str(ext[0]).upper(), int(ext[1])
    elif isinstance(ext, str):
        want_name = ext.upper()
    elif not isinstance(ext, int) or isinstance(ext, bool) or ext < 0:
        raise ValueError(f"invalid extension {ext!r} for {path}: use an index >= 0, a name "
                         "or a (name, version) pair")
    offset, index = 0, 0
    while offset < file_size:
        cards, hlen = _read_header(fd, offset, path)
        nbytes = _data_nbytes(cards, path, index)
        name = cards.get("EXTNAME", "PRIMARY" if index == 0 else "").strip().upper()
        ver = int(cards.get("EXTVER", "1") or 1)
        hit = (index == ext) if want_name is None else (
            name == want_name and (want_ver is None or ver == want_ver))
        if hit:
            return index, offset, offset + hlen, nbytes
        padded = -(-nbytes // _BLOCK) * _BLOCK
        offset += hlen + padded
        index += 1
    raise KeyError(f"extension {ext!r} not found in {path} ({index} HDUs)")


def _hash_range(fd: int, start: int, nbytes: int) -> str:
    h = hashlib.sha256()
    pos, end = start, start + nbytes
    while pos < end:
        chunk = os.pread(fd, min(_READ_CHUNK, end - pos), pos)
        if not chunk:
            raise ValueError("file shorter than its FITS header says")
        h.update(chunk)
        pos += len(chunk)
    return h.hexdigest()


def _hash_sample(fd: int, start: int, nbytes: int) -> str:
    h = hashlib.sha256(b"galseg-sample-v1:%d:%d:%d:" % (nbytes, _SAMPLE_BLOCKS, _SAMPLE_SIZE))
    last = nbytes - _SAMPLE_SIZE
    for i in range(_SAMPLE_BLOCKS):
        off = (last * i) // (_SAMPLE_BLOCKS - 1)
        chunk = os.pread(fd, _SAMPLE_SIZE, start + off)
        if len(chunk) != _SAMPLE_SIZE:
            raise ValueError("file shorter than its FITS header says")
        h.update(chunk)
    return h.hexdigest()


def _ext_json(ext) -> Any:
    return list(ext) if isinstance(ext, tuple) else ext


def _stat_key(st: os.stat_result) -> tuple:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def input_fingerprint(path, ext=0, *, full: bool = False) -> dict[str, Any]:
    """Fingerprint one HDU of a FITS file.

    Parameters
    ----------
    path : path-like
        The FITS file (plain or tile-compressed; ``.fz`` is fine).
    ext : int, str or (str, int)
        The HDU: index, ``EXTNAME`` (case-insensitive, ``"PRIMARY"`` for 0)
        or ``(EXTNAME, EXTVER)``, as for astropy.
    full : bool
        Also hash all data bytes (``data_sha256``).  Costs one read of the
        HDU; done by the product store when it saves a product.

    Returns
    -------
    dict
        ``path`` (absolute), ``ext`` (as given), ``hdu`` (index), ``size``,
        ``mtime_ns``, ``ctime_ns``, ``ino``, ``recorded_ns`` (when the stat was taken),
        ``header_sha256``, ``data_nbytes``, ``data_sample_sha256``, ``sample``
        (``"full"`` or ``"64x65536"``) and, when known, ``data_sha256``.
        A new dict each call: callers may modify it.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    KeyError
        If the extension is not in the file.
    ValueError
        If the file is not a valid FITS file or changes while it is read.
    """
    apath = os.path.abspath(os.fspath(path))
    ext = tuple(ext) if isinstance(ext, list) else ext
    try:
        fd = os.open(apath, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise FileNotFoundError(f"input file not found: {apath}") from None
    try:
        for _attempt in range(3):
            st = os.fstat(fd)
            now = time.time_ns()
            memo_key = (apath, repr(ext)) + _stat_key(st)
            with _MEMO_LOCK:
                cached = _MEMO.get(memo_key)
                if cached is not None:
                    _MEMO.move_to_end(memo_key)
            if cached is not None and (not full or "data_sha256" in cached):
                return _public(cached)
            if cached is not None:
                fp = dict(cached)
                fp["data_sha256"] = _hash_range(fd, fp["_data_offset"], fp["data_nbytes"])
            else:
                fp = _fingerprint_fd(fd, apath, ext, st.st_size, full)
            fp.update(path=apath, ext=_ext_json(ext), size=st.st_size,
                      mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns, ino=st.st_ino,
                      recorded_ns=now)
            st2 = os.fstat(fd)
            if _stat_key(st2) != _stat_key(st):
                continue  # changed while we read it: try again
            if now - st.st_mtime_ns >= RACY_NS and now - st.st_ctime_ns >= RACY_NS:
                with _MEMO_LOCK:
                    _MEMO[memo_key] = fp
                    while len(_MEMO) > _MEMO_MAX:
                        _MEMO.popitem(last=False)
            return _public(fp)
        raise ValueError(f"input file {apath} kept changing while it was fingerprinted")
    finally:
        os.close(fd)


def _public(fp: dict) -> dict:
    return {k: v for k, v in fp.items() if not k.startswith("_")}


def _fingerprint_fd(fd: int, path: str, ext, size: int, full: bool) -> dict[str, Any]:
    index, hoff, doff, nbytes = _locate_hdu(fd, ext, path, size)
    if doff + nbytes > size:
        raise ValueError(f"{path}: HDU {index} data run past the end of the file "
                         f"({doff + nbytes} > {size} bytes)")
    header_sha = hashlib.sha256(os.pread(fd, doff - hoff, hoff)).hexdigest()
    fp: dict[str, Any] = {"hdu": index, "header_sha256": header_sha, "data_nbytes": nbytes,
                          "_data_offset": doff}
    if nbytes <= _FULL_LIMIT:
        digest = _hash_range(fd, doff, nbytes)
        fp.update(data_sample_sha256=digest, sample="full", data_sha256=digest)
    else:
        fp.update(data_sample_sha256=_hash_sample(fd, doff, nbytes),
                  sample=f"{_SAMPLE_BLOCKS}x{_SAMPLE_SIZE}")
        if full:
            fp["data_sha256"] = _hash_range(fd, doff, nbytes)
    return fp
