"""Window reads from the inputs and memory-mapped writes into the outputs.

Inputs are read a rectangle at a time: from a FITS file through astropy's
``section`` (an uncompressed image is memory-mapped and only the rows of the
rectangle are touched; a tile-compressed one decompresses only the tiles it
needs), from a ``.npy`` file memory-mapped, or from an in-memory array.  A
source is a small picklable object, so a worker process or a Dask worker
opens the file itself: no image ever travels between processes.

Outputs (`FitsOutput`) are single-image FITS files created at their final
size in a temporary file next to the target (named as
`galseg.io.atomic` names its temporary files, so ``galseg cache clean``
recognises orphans), filled by the workers through ``numpy.memmap`` (each
writes disjoint pixels), then flushed and renamed atomically onto the
target.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits

from ..io.atomic import _temp_path, fsync_dir
from ..io.fits import FitsInputError, resolve_ext

__all__ = ["ImageSource", "as_source", "FitsOutput"]


@dataclass(frozen=True)
class ImageSource:
    """A 2-D image that windows are read from.

    ``kind`` is ``"fits"`` (``path``, ``ext``), ``"npy"`` (``path``) or
    ``"array"`` (``array``: in-process use only).  ``transform``, a
    module-level function, is applied to every block read (e.g. deriving an
    rms map from a weight map pixel by pixel).
    """

    kind: str
    shape: tuple[int, int]
    path: str | None = None
    ext: int | str | None = None
    what: str = "image"
    array: np.ndarray | None = field(default=None, repr=False, compare=False)
    transform: Callable[[np.ndarray], np.ndarray] | None = None

    def read(self, y0, y1, x0, x1, dtype=np.float32) -> np.ndarray:
        """Rows ``y0:y1``, columns ``x0:x1`` as a new native-order array."""
        if self.kind == "array":
            block = self.array[y0:y1, x0:x1]
        elif self.kind == "npy":
            mm = np.load(self.path, mmap_mode="r")
            block = mm[y0:y1, x0:x1]
        else:
            with fits.open(self.path, mode="readonly", memmap=True, lazy_load_hdus=True,
                           do_not_scale_image_data=True) as hdul:
                hdu = hdul[resolve_ext(hdul, self.ext, self.path, self.what)]
                hdr = hdu.header
                plain = not isinstance(hdu, fits.CompImageHDU) and \
                    float(hdr.get("BSCALE", 1)) == 1 and float(hdr.get("BZERO", 0)) == 0
                if plain:
                    # the memory-mapped array: only the window's rows are read
                    block = np.array(hdu.data[y0:y1, x0:x1], copy=True)
                else:
                    hdul.close()
                    with fits.open(self.path, mode="readonly", memmap=True) as hdul2:
                        hdu2 = hdul2[resolve_ext(hdul2, self.ext, self.path, self.what)]
                        # tile-compressed: only the tiles the window meets; scaled
                        # data: scaled on the window only
                        block = np.array(hdu2.section[y0:y1, x0:x1], copy=True)
        if self.transform is not None:
            block = self.transform(np.asarray(block, dtype=np.float32))
        return np.array(block, dtype=np.dtype(dtype).newbyteorder("="), copy=True)

    def read_rows(self, y0, y1, dtype=np.float32) -> np.ndarray:
        return self.read(y0, y1, 0, self.shape[1], dtype)

    def picklable(self) -> bool:
        return self.kind != "array"


def as_source(value, what: str, scratch: Path | None = None,
              transform=None) -> ImageSource | None:
    """An `ImageSource` from a path, ``(path, ext)``, an `ImageSource` or an array.

    Arrays are written to a ``.npy`` file in ``scratch`` when it is given
    (for worker processes), else kept in memory.  ``transform`` is applied to
    every block read (see `ImageSource`).
    """
    if value is None:
        return None
    if isinstance(value, ImageSource):
        return value
    if isinstance(value, (str, os.PathLike)) or (isinstance(value, tuple) and len(value) == 2
                                                 and isinstance(value[0], (str, os.PathLike))):
        path, ext = (value if isinstance(value, tuple) else (value, None))
        path = str(Path(path).resolve())
        if not Path(path).is_file():
            raise FitsInputError(f"{what}: file not found: {path}")
        if path.endswith(".npy"):
            mm = np.load(path, mmap_mode="r")
            if mm.ndim != 2:
                raise FitsInputError(f"{what}: {path} holds a {mm.ndim}-D array; need 2-D")
            return ImageSource("npy", tuple(int(n) for n in mm.shape), path, None, what,
                               transform=transform)
        with fits.open(path, mode="readonly", memmap=True, lazy_load_hdus=True) as hdul:
            i = resolve_ext(hdul, ext, path, what)
            hdr = hdul[i].header
            naxis = int(hdr.get("ZNAXIS", hdr.get("NAXIS", 0)))
            if naxis != 2:
                raise FitsInputError(f"{what}: {path}[{ext if ext is not None else i}] is not a "
                                     "2-D image")
            pre = "ZNAXIS" if "ZNAXIS" in hdr else "NAXIS"
            shape = (int(hdr[f"{pre}2"]), int(hdr[f"{pre}1"]))
        return ImageSource("fits", shape, path, i, what, transform=transform)
    arr = np.asarray(value)
    if arr.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array, got shape {arr.shape}")
    if scratch is not None:
        path = Path(scratch) / f"{what.replace(' ', '_')}.npy"
        np.save(path, np.ascontiguousarray(arr))
        return ImageSource("npy", tuple(int(n) for n in arr.shape), str(path), None, what,
                           transform=transform)
    return ImageSource("array", tuple(int(n) for n in arr.shape), None, None, what, arr,
                       transform)


@dataclass
class FitsOutput:
    """A single-image FITS file filled through memory maps, then renamed atomically.

    Create it with `create`; workers call `open_memmap` (any process on the
    same file system); the owner calls `commit` (or `abort`).
    """

    path: str
    tmp: str
    shape: tuple[int, int]
    dtype: str
    offset: int

    @classmethod
    def create(cls, path, shape, dtype, header=None) -> "FitsOutput":
        """Write the header and size the data (zeros) in a temporary file beside ``path``."""
        path = Path(path)
        if not path.parent.is_dir():
            raise FileNotFoundError(f"directory of {path} does not exist")
        be = np.dtype(dtype).newbyteorder(">")
        hdu = fits.PrimaryHDU(data=np.zeros((1, 1), dtype=be),
                              header=header.copy() if header is not None else None)
        hdu.header["NAXIS1"] = int(shape[1])
        hdu.header["NAXIS2"] = int(shape[0])
        head = hdu.header.tostring().encode("ascii")
        nbytes = int(shape[0]) * int(shape[1]) * be.itemsize
        tmp = _temp_path(path)
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            os.write(fd, head)
            # sparse zeros up to the padded FITS size
            os.ftruncate(fd, len(head) + nbytes + (-nbytes % 2880))
        finally:
            os.close(fd)
        return cls(str(path), str(tmp), (int(shape[0]), int(shape[1])), be.str, len(head))

    def open_memmap(self, mode="r+") -> np.memmap:
        return np.memmap(self.tmp, dtype=np.dtype(self.dtype), mode=mode, offset=self.offset,
                         shape=self.shape)

    def write_block(self, y0, x0, block, where=None) -> None:
        """Write ``block`` at ``(y0, x0)``; only where ``where`` is True if given."""
        mm = self.open_memmap()
        try:
            h, w = block.shape
            view = mm[y0:y0 + h, x0:x0 + w]
            if where is None:
                view[...] = block
            else:
                np.copyto(view, block.astype(view.dtype, copy=False), where=where)
            mm.flush()
        finally:
            del mm

    def commit(self) -> None:
        """fsync and rename onto the target (atomic for readers)."""
        fd = os.open(self.tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self.tmp, self.path)
        fsync_dir(Path(self.path).parent)

    def abort(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)
