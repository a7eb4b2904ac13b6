"""Read-only access to 2-D images in FITS files.

Every image galseg reads goes through :func:`read_image`: it opens the file
memory-mapped and read-only, resolves the extension by index or ``EXTNAME``,
checks the data is a 2-D image, and hands back a native-byte-order array (FITS
is big-endian; sep needs native order).  Errors name the file and extension.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from astropy.io import fits

__all__ = ["FitsInputError", "read_image", "read_header", "resolve_ext", "to_native"]


class FitsInputError(ValueError):
    """A FITS input is missing, unreadable or not what galseg needs.

    The message always names the file and, where relevant, the extension.
    """


def _open(path: str | os.PathLike, what: str) -> fits.HDUList:
    path = Path(path)
    if not path.exists():
        raise FitsInputError(f"{what}: file not found: {path}")
    if not path.is_file():
        raise FitsInputError(f"{what}: not a regular file: {path}")
    try:
        return fits.open(path, mode="readonly", memmap=True, lazy_load_hdus=True)
    except (OSError, ValueError, TypeError) as exc:
        raise FitsInputError(f"{what}: cannot read FITS file {path}: {exc}") from None


def resolve_ext(hdul: fits.HDUList, ext: int | str | None, path, what: str) -> int:
    """The index of extension ``ext`` (index or EXTNAME) in ``hdul``.

    ``ext=None`` means the first HDU holding image data (HDU 0, or HDU 1 for
    tile-compressed files, whose primary HDU is empty).
    """
    if ext is None:
        for i, hdu in enumerate(hdul):
            if hdu.is_image and hdu.header.get("NAXIS", 0) > 0:
                return i
        raise FitsInputError(f"{what}: no image extension in {path}")
    if isinstance(ext, (int, np.integer)):
        n = len(hdul)
        if not -n <= int(ext) < n:
            raise FitsInputError(
                f"{what}: extension {ext} does not exist in {path} (it has {n} HDUs)"
            )
        return int(ext) % n
    if isinstance(ext, str):
        wanted = ext.strip().upper()
        names = []
        for i, hdu in enumerate(hdul):
            name = str(hdu.name).strip().upper()
            names.append(name)
            if name == wanted:
                return i
        raise FitsInputError(
            f"{what}: extension {ext!r} not found in {path}; it has: "
            + ", ".join(f"{i}:{n or '(unnamed)'}" for i, n in enumerate(names))
        )
    raise FitsInputError(f"{what}: extension must be an index or EXTNAME, got {ext!r}")


def to_native(arr: np.ndarray, dtype=None) -> np.ndarray:
    """``arr`` in native byte order (and ``dtype`` if given), copying only if needed."""
    dtype = np.dtype(dtype or arr.dtype).newbyteorder("=")
    if arr.dtype == dtype:
        return arr
    return arr.astype(dtype)


def read_header(path, ext=None, *, what: str = "image") -> fits.Header:
    """The header of extension ``ext`` of ``path``."""
    with _open(path, what) as hdul:
        i = resolve_ext(hdul, ext, path, what)
        try:
            return hdul[i].header.copy()
        except Exception as exc:  # corrupt header blocks surface here
            raise FitsInputError(f"{what}: cannot read header of {path}[{ext}]: {exc}") from None


def read_image(path, ext=None, *, what: str = "image", dtype=np.float32, header: bool = False):
    """Read the 2-D image in extension ``ext`` of ``path``.

    Parameters
    ----------
    path : path-like
        FITS file.
    ext : int, str or None
        Extension index or EXTNAME; None for the first image HDU.
    what : str
        What the image is (``"science image"``, ``"rms_err map"`` ...), for error messages.
    dtype : dtype or None
        Data type of the returned array, in native byte order; None keeps the
        file's type (still native order).
    header : bool
        Also return the header.

    Returns
    -------
    data : ndarray
        Read-only 2-D array.  Uncompressed native-typed data stay memory-mapped;
        big-endian data are converted (FITS is big-endian) before reaching sep.
    header : `~astropy.io.fits.Header`
        Only if ``header=True``.
    """
    hdul = _open(path, what)
    try:
        i = resolve_ext(hdul, ext, path, what)
        hdu = hdul[i]
        try:
            data = hdu.data
        except Exception as exc:
            raise FitsInputError(
                f"{what}: cannot read data of {path}[{ext if ext is not None else i}]: {exc}"
            ) from None
        if data is None:
            raise FitsInputError(f"{what}: extension {ext if ext is not None else i} of {path} holds no data")
        if data.ndim != 2:
            raise FitsInputError(
                f"{what}: {path}[{ext if ext is not None else i}] is {data.ndim}-D "
                f"with shape {data.shape}; a 2-D image is needed"
            )
        out = to_native(data, dtype)
        if out is data and not isinstance(hdu, fits.CompImageHDU):
            # Same dtype and native order: keep the memmap but never let a caller write to it.
            out = out.view()
        out.flags.writeable = False
        hdr = hdu.header.copy() if header else None
    finally:
        # Closing the HDUList does not invalidate a memmap that is still referenced.
        hdul.close()
    return (out, hdr) if header else out
