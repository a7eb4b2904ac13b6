"""One source at a time: the segment under a point, candidate masks and cutouts.

A *prompt* is a pixel position, a sky position or a box; the answer is a
`Source`: the catalogue row and the boolean mask of the segment there, cut to
its bounding box.  `candidates` gives several masks for one prompt (the
deblended object, its parent blend before deblending, a dilated footprint),
each with a score, and `cutout` writes a FITS cutout with WCS and a PNG whose
alpha channel is the mask.

Conventions
-----------
Pixel positions are 0-based ``(x, y)`` with pixel centres on integers, as in
numpy (``image[y, x]``) and astropy's ``WCS.world_to_pixel``.  SExtractor's
``X_IMAGE``/``Y_IMAGE`` are 1-based: ``x = X_IMAGE - 1``.

Everything here reads the band's cached products (``band.segment()`` first);
nothing is recomputed except the parent blend, which the products do not
store (see `candidates`).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

__all__ = [
    "Candidate", "Cutout", "NoSourceError", "Source", "candidates", "cutout",
    "source_at", "source_in_box", "source_by_number",
]

# 8-connectivity: SExtractor and sep grow detections through diagonal neighbours.
_CONN8 = np.ones((3, 3), dtype=bool)


class NoSourceError(LookupError):
    """A prompt that lands on sky (segmentation value 0) or finds no segment.

    Attributes
    ----------
    x, y : float
        The prompt, in 0-based pixels.
    nearest : int or None
        NUMBER of the source whose catalogue centroid is nearest.
    distance : float or None
        Its distance in pixels.
    """

    def __init__(self, message, x=None, y=None, nearest=None, distance=None):
        super().__init__(message)
        self.x, self.y, self.nearest, self.distance = x, y, nearest, distance


# ----------------------------------------------------------------- the index
class _SegIndex:
    """Segmentation map, catalogue and per-label slices of one product, loaded once."""

    def __init__(self, band, entry):
        self.entry = entry
        seg = band.load_seg()
        seg.setflags(write=False)
        self.seg = seg
        self.cat = band.load_cat()
        # find_objects is one C pass over the map; per-source work then only touches bboxes.
        self.slices = ndimage.find_objects(seg)
        numbers = np.asarray(self.cat["NUMBER"], dtype=np.int64)
        size = max(int(numbers.max(initial=0)), len(self.slices)) + 1
        self.row_of = np.full(size, -1, dtype=np.int64)
        self.row_of[numbers] = np.arange(len(numbers))
        self._images = None

    def images(self, band):
        """Background-subtracted science image and the rms map (finite or inf)."""
        if self._images is None:
            sci = np.asarray(band.load_im(), dtype=np.float32)
            bkg = band.load_bkg()
            rms = band.load_rms_err()
            sub = sci - bkg
            sub.setflags(write=False)
            self._images = (sub, rms)
        return self._images


_INDEX_CACHE: OrderedDict = OrderedDict()
_INDEX_CACHE_SIZE = 3


def _index(band) -> _SegIndex:
    entry = band._product_entry()
    seg_path, cat_path = Path(entry.path("seg")), Path(entry.path("cat"))
    try:
        st_seg, st_cat = seg_path.stat(), cat_path.stat()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"band {band.filt}: segmentation product {seg_path} is missing; call segment()"
        ) from None
    key = (str(seg_path), st_seg.st_mtime_ns, st_seg.st_size, st_cat.st_mtime_ns,
           str(band.im_path))
    idx = _INDEX_CACHE.get(key)
    if idx is None:
        idx = _SegIndex(band, entry)
        _INDEX_CACHE[key] = idx
        while len(_INDEX_CACHE) > _INDEX_CACHE_SIZE:
            _INDEX_CACHE.popitem(last=False)
    else:
        _INDEX_CACHE.move_to_end(key)
    return idx


# ----------------------------------------------------------------- Source
@dataclass(frozen=True, eq=False)
class Source:
    """One segment of a band's segmentation map, with its catalogue row.

    Attributes
    ----------
    number : int
        The catalogue NUMBER, equal to the segmentation value.
    row : `~astropy.table.Row`
        Its catalogue row.
    mask : ndarray of bool
        The segment's pixels within ``bbox``: ``seg[bbox] == number``.
    bbox : tuple of slice
        ``(slice_y, slice_x)`` placing ``mask`` in the full frame.
    band : `~galseg.Band_Data`
        The band it comes from.
    """

    number: int
    row: object = field(repr=False)
    mask: np.ndarray = field(repr=False)
    bbox: tuple
    band: object = field(repr=False)

    @property
    def x(self) -> float:
        """Isophotal barycentre, 0-based x (``X_IMAGE - 1``)."""
        return float(self.row["X_IMAGE"]) - 1.0

    @property
    def y(self) -> float:
        """Isophotal barycentre, 0-based y (``Y_IMAGE - 1``)."""
        return float(self.row["Y_IMAGE"]) - 1.0

    @property
    def npix(self) -> int:
        """Number of pixels in the segment."""
        return int(self.mask.sum())

    @property
    def sky(self):
        """Centroid as a `~astropy.coordinates.SkyCoord`, or None without a WCS."""
        wcs = self.band.load_wcs()
        return None if wcs is None else wcs.pixel_to_world(self.x, self.y)

    def full_mask(self) -> np.ndarray:
        """The mask in the full frame (allocates an image-sized array)."""
        out = np.zeros(self.band.shape, dtype=bool)
        out[self.bbox] = self.mask
        return out

    def candidates(self, dilate: float = 3.0):
        """See `candidates`."""
        return candidates(self, dilate=dilate)

    def cutout(self, size=None, mask=True, save=None):
        """See `cutout`."""
        return cutout(self.band, self, size=size, mask=mask, save=save)


@dataclass(frozen=True, eq=False)
class Candidate:
    """One candidate mask for a prompt, with its score.

    Attributes
    ----------
    kind : {"object", "parent", "dilated"}
        The deblended segment, the blend it was deblended from, or the
        segment grown into the surrounding sky.
    mask, bbox
        As for `Source`.
    numbers : tuple of int
        The segmentation values the mask covers (the parent may hold several).
    npix : int
    flux, flux_err : float
        Sum of the background-subtracted image over the mask and its error
        from the rms map (uncorrelated noise assumed), in image units.
    snr : float
        ``flux / flux_err``; also the ``score``.
    flux_fraction : float
        ``flux`` over the flux of the parent blend: the share of the blend
        this mask holds (1 for the parent itself).
    source : `Source`
        The prompt's answer the candidate belongs to.
    """

    kind: str
    mask: np.ndarray = field(repr=False)
    bbox: tuple
    numbers: tuple
    npix: int
    flux: float
    flux_err: float
    snr: float
    flux_fraction: float
    source: Source = field(repr=False)

    @property
    def score(self) -> float:
        """The S/N of the mask (higher is a more significant mask)."""
        return self.snr

    @property
    def x(self) -> float:
        return self.source.x

    @property
    def y(self) -> float:
        return self.source.y

    @property
    def band(self):
        return self.source.band

    def full_mask(self) -> np.ndarray:
        """The mask in the full frame."""
        out = np.zeros(self.source.band.shape, dtype=bool)
        out[self.bbox] = self.mask
        return out


# ----------------------------------------------------------------- positions
def _pixel_position(band, position, y=None) -> tuple[float, float]:
    """``(x, y)`` 0-based pixels from ``(x, y)``, ``x, y`` or a SkyCoord."""
    from astropy.coordinates import SkyCoord

    if y is not None:
        return float(position), float(y)
    if isinstance(position, SkyCoord):
        wcs = band.load_wcs()
        if wcs is None:
            raise ValueError(
                f"band {band.filt} has no WCS: give the position in pixels, not as a SkyCoord"
            )
        if not position.isscalar:
            raise ValueError("give one sky position (a scalar SkyCoord)")
        px, py = wcs.world_to_pixel(position)
        return float(px), float(py)
    if isinstance(position, (Source, Candidate)):
        return position.x, position.y
    try:
        px, py = position
        return float(px), float(py)
    except (TypeError, ValueError):
        raise TypeError(
            f"position must be (x, y) in 0-based pixels, x and y, or a SkyCoord; got {position!r}"
        ) from None


def _pixel_length(band, size, what="size") -> float:
    """A length in pixels from a number of pixels or an angle."""
    import astropy.units as u

    if isinstance(size, u.Quantity):
        if size.unit.physical_type == "angle":
            if band.pix_scale is None:
                raise ValueError(f"band {band.filt} has no pixel scale: give {what} in pixels")
            return float((size / band.pix_scale).to_value(u.dimensionless_unscaled))
        if size.unit == u.pix:
            return float(size.value)
        raise ValueError(f"{what} must be a number of pixels or an angle, got {size!r}")
    return float(size)


def _pixel_index(band, x, y) -> tuple[int, int]:
    ix, iy = int(math.floor(x + 0.5)), int(math.floor(y + 0.5))
    ny, nx = band.shape
    if not (0 <= ix < nx and 0 <= iy < ny):
        raise ValueError(
            f"position ({x:.2f}, {y:.2f}) px is outside the {nx} x {ny} image of band {band.filt}"
        )
    return ix, iy


def _make_source(band, idx: _SegIndex, number: int) -> Source:
    number = int(number)
    if not (1 <= number <= len(idx.slices)) or idx.slices[number - 1] is None:
        raise NoSourceError(f"band {band.filt}: no segment with NUMBER {number}")
    sl = idx.slices[number - 1]
    row = idx.row_of[number] if number < len(idx.row_of) else -1
    if row < 0:
        raise NoSourceError(
            f"band {band.filt}: segment {number} has no catalogue row (products inconsistent?)"
        )
    mask = idx.seg[sl] == number
    return Source(number=number, row=idx.cat[int(row)], mask=mask, bbox=sl, band=band)


def _nearest(idx: _SegIndex, x, y):
    if len(idx.cat) == 0:
        return None, None
    dx = np.asarray(idx.cat["X_IMAGE"], dtype=float) - 1.0 - x
    dy = np.asarray(idx.cat["Y_IMAGE"], dtype=float) - 1.0 - y
    d2 = dx * dx + dy * dy
    i = int(np.argmin(d2))
    return int(idx.cat["NUMBER"][i]), float(np.sqrt(d2[i]))


# ----------------------------------------------------------------- prompts
def source_by_number(band, number: int) -> Source:
    """The `Source` with catalogue NUMBER ``number``."""
    return _make_source(band, _index(band), number)


def source_at(band, x, y=None, *, nearest: bool = False) -> Source:
    """The segment under a point.

    Parameters
    ----------
    band : `~galseg.Band_Data`
        A segmented band.
    x, y : float
        0-based pixel position; or ``x`` alone as an ``(x, y)`` pair or a
        `~astropy.coordinates.SkyCoord` (needs a WCS).
    nearest : bool
        When the point is on sky, return the source whose centroid is nearest
        instead of raising.

    Returns
    -------
    `Source`

    Raises
    ------
    NoSourceError
        The point is on sky (segmentation value 0); the message names the
        nearest source and its distance, and says whether the pixel is masked.
    ValueError
        The point is outside the image.
    """
    px, py = _pixel_position(band, x, y)
    ix, iy = _pixel_index(band, px, py)
    idx = _index(band)
    number = int(idx.seg[iy, ix])
    if number == 0:
        near, dist = _nearest(idx, px, py)
        if nearest and near is not None:
            return _make_source(band, idx, near)
        _, rms = idx.images(band)
        masked = not np.isfinite(rms[iy, ix])
        where = "a masked pixel (no valid noise)" if masked else "sky"
        hint = "" if near is None else (
            f"; the nearest source is NUMBER {near}, {dist:.1f} px away "
            "(source_at(..., nearest=True) returns it)")
        raise NoSourceError(
            f"band {band.filt}: pixel ({ix}, {iy}) is {where}: segmentation value 0{hint}",
            x=px, y=py, nearest=near, distance=dist,
        )
    return _make_source(band, idx, number)


def _box_slices(band, x, y, width, height):
    ny, nx = band.shape
    w = _pixel_length(band, width, "width")
    h = w if height is None else _pixel_length(band, height, "height")
    if not (w > 0 and h > 0):
        raise ValueError(f"box width and height must be positive, got {w} x {h} px")
    x0, x1 = int(math.floor(x - w / 2 + 0.5)), int(math.floor(x + w / 2 + 0.5))
    y0, y1 = int(math.floor(y - h / 2 + 0.5)), int(math.floor(y + h / 2 + 0.5))
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    cx0, cx1, cy0, cy1 = max(x0, 0), min(x1, nx), max(y0, 0), min(y1, ny)
    if cx0 >= cx1 or cy0 >= cy1:
        raise ValueError(
            f"box centred on ({x:.2f}, {y:.2f}) px, {w:g} x {h:g} px, is outside the "
            f"{nx} x {ny} image of band {band.filt}"
        )
    return slice(cy0, cy1), slice(cx0, cx1)


def source_in_box(band, x, y=None, width=None, height=None) -> Source:
    """The brightest segment inside a box.

    Parameters
    ----------
    band : `~galseg.Band_Data`
    x, y : float
        Box centre, 0-based pixels; or ``x`` alone as ``(x, y)`` or a SkyCoord
        (then pass ``width`` by keyword).
    width, height : float or Quantity
        Box size in pixels or as an angle; ``height`` defaults to ``width``.

    Returns
    -------
    `Source`
        The segment with the largest background-subtracted flux *inside the
        box* (a huge neighbour that only grazes the box does not win).

    Raises
    ------
    NoSourceError
        No segment pixel in the box.
    """
    if width is None:
        raise TypeError("source_in_box needs a box width")
    px, py = _pixel_position(band, x, y)
    box = _box_slices(band, px, py, width, height)
    idx = _index(band)
    labels = idx.seg[box]
    sub, _ = idx.images(band)
    flux = sub[box]
    use = (labels > 0) & np.isfinite(flux)
    if not use.any():
        near, dist = _nearest(idx, px, py)
        hint = "" if near is None else (
            f"; the nearest source is NUMBER {near}, {dist:.1f} px from the centre")
        raise NoSourceError(
            f"band {band.filt}: no segment in the box y {box[0].start}:{box[0].stop}, "
            f"x {box[1].start}:{box[1].stop}{hint}", x=px, y=py, nearest=near, distance=dist)
    sums = np.bincount(labels[use], weights=flux[use].astype(np.float64))
    present = np.unique(labels[use])
    number = int(present[np.argmax(sums[present])])
    return _make_source(band, idx, number)


# ----------------------------------------------------------------- candidates
def _parent_blend(seg, bbox, number):
    """The 8-connected components of ``seg > 0`` that hold segment ``number``.

    Deblended children partition the connected above-threshold region they
    came from, and separate detections never touch (they would have been one
    region), so the component holding the object is its blend before
    deblending.  A segment can be in several pieces -- cleaning merges a
    spurious detection into its bright neighbour, in SExtractor too -- so
    every component touching any of its pixels is taken.  The window starts
    at the object's bbox and grows only while the components reach its edge,
    so the work stays local.
    """
    ny, nx = seg.shape
    ys, xs = bbox
    pad = 2
    y0, y1 = max(ys.start - pad, 0), min(ys.stop + pad, ny)
    x0, x1 = max(xs.start - pad, 0), min(xs.stop + pad, nx)
    while True:
        win = seg[y0:y1, x0:x1]
        lab, _ = ndimage.label(win > 0, structure=_CONN8)
        comp = np.isin(lab, np.unique(lab[win == number]))
        rows = np.flatnonzero(comp.any(axis=1))
        cols = np.flatnonzero(comp.any(axis=0))
        cy0, cy1 = y0 + int(rows[0]), y0 + int(rows[-1]) + 1
        cx0, cx1 = x0 + int(cols[0]), x0 + int(cols[-1]) + 1
        touches = ((cy0 == y0 and y0 > 0) or (cy1 == y1 and y1 < ny)
                   or (cx0 == x0 and x0 > 0) or (cx1 == x1 and x1 < nx))
        if not touches:
            break
        pad *= 2
        y0, y1 = max(cy0 - pad, 0), min(cy1 + pad, ny)
        x0, x1 = max(cx0 - pad, 0), min(cx1 + pad, nx)
    sl = (slice(cy0, cy1), slice(cx0, cx1))
    mask = comp[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
    return mask, sl


def _dilated(seg, valid, bbox, number, radius):
    """The segment grown by a disc of ``radius`` px into sky (never into other segments)."""
    ny, nx = seg.shape
    r = int(math.ceil(radius))
    ys, xs = bbox
    y0, y1 = max(ys.start - r, 0), min(ys.stop + r, ny)
    x0, x1 = max(xs.start - r, 0), min(xs.stop + r, nx)
    win = seg[y0:y1, x0:x1]
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    disc = (xx * xx + yy * yy) <= radius * radius
    grown = ndimage.binary_dilation(win == number, structure=disc)
    grown &= ((win == 0) & valid[y0:y1, x0:x1]) | (win == number)
    return grown, (slice(y0, y1), slice(x0, x1))


def _trim(mask, bbox):
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return mask, bbox
    ys, xs = bbox
    sl = (slice(ys.start + int(rows[0]), ys.start + int(rows[-1]) + 1),
          slice(xs.start + int(cols[0]), xs.start + int(cols[-1]) + 1))
    return mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1], sl


def _measure(sub, rms, mask, bbox):
    s, r = sub[bbox][mask], rms[bbox][mask]
    good = np.isfinite(s) & np.isfinite(r)
    flux = float(np.sum(s[good], dtype=np.float64))
    err = float(np.sqrt(np.sum(np.square(r[good], dtype=np.float64))))
    return flux, err


def candidates(target, y=None, *, band=None, dilate: float = 3.0) -> list[Candidate]:
    """Candidate masks for one prompt, like a multi-mask answer.

    Parameters
    ----------
    target : `Source`, or a position for `source_at` (then give ``band``)
    y : float, optional
        With a pixel ``x`` as ``target``.
    band : `~galseg.Band_Data`, optional
        Needed when ``target`` is a position.
    dilate : float
        Radius in pixels of the disc by which the ``"dilated"`` candidate grows
        the segment.

    Returns
    -------
    list of `Candidate`
        ``"object"`` (the deblended segment), ``"parent"`` (the blend before
        deblending) and ``"dilated"`` (the segment grown by ``dilate`` px into
        unmasked sky, never into a neighbour), in that order.  Each carries
        ``snr`` (its ``score``) and ``flux_fraction`` of the parent's flux.

    Notes
    -----
    The parent blend is not stored by the products; it is recomputed as the
    8-connected components of all segment pixels (``seg > 0``) that hold the
    object.  Deblended children share their parent's connected region while
    separate detections never touch, so this is the parent's footprint at the
    detection threshold.  Segments can be in several pieces (cleaning merges
    a spurious detection into its neighbour, as in SExtractor); every piece's
    component is included.  For an isolated object it equals the object.
    Other segments inside it are listed in ``numbers``.
    """
    if isinstance(target, Source):
        src = target
    else:
        if band is None:
            raise TypeError("candidates(position, ...) needs band=")
        src = source_at(band, target, y)
    band = src.band
    idx = _index(band)
    sub, rms = idx.images(band)
    seg = idx.seg

    parent_mask, parent_bbox = _parent_blend(seg, src.bbox, src.number)
    parent_numbers = tuple(int(n) for n in np.unique(seg[parent_bbox][parent_mask]))
    grown, grown_bbox = _dilated(seg, np.isfinite(rms), src.bbox, src.number, dilate)
    grown, grown_bbox = _trim(grown, grown_bbox)

    parent_flux, _ = _measure(sub, rms, parent_mask, parent_bbox)
    out = []
    for kind, mask, bbox, numbers in (
        ("object", src.mask, src.bbox, (src.number,)),
        ("parent", parent_mask, parent_bbox, parent_numbers),
        ("dilated", grown, grown_bbox, (src.number,)),
    ):
        flux, err = _measure(sub, rms, mask, bbox)
        snr = flux / err if err > 0 else float("nan")
        frac = flux / parent_flux if parent_flux != 0 else float("nan")
        out.append(Candidate(kind=kind, mask=mask, bbox=bbox, numbers=numbers,
                             npix=int(mask.sum()), flux=flux, flux_err=err, snr=snr,
                             flux_fraction=frac, source=src))
    return out


# ----------------------------------------------------------------- cutouts
@dataclass(eq=False)
class Cutout:
    """A cutout of a band around a source or position.

    Attributes
    ----------
    data : ndarray of float32
        The science image (not background-subtracted); NaN outside the frame.
    mask : ndarray of bool or None
        The source's mask in the cutout frame (None for ``mask=False``).
    seg : ndarray of int32
        The segmentation map in the cutout frame (0 outside the frame).
    wcs : `~astropy.wcs.WCS` or None
    origin : (int, int)
        Full-frame 0-based ``(x, y)`` of cutout pixel ``[0, 0]`` (may be
        negative when the cutout runs off the frame).
    source : `Source` or `Candidate` or None
    band : `~galseg.Band_Data`
    fits_path, png_path : Path or None
        Set by ``save``.
    """

    data: np.ndarray = field(repr=False)
    mask: np.ndarray | None = field(repr=False)
    seg: np.ndarray = field(repr=False)
    wcs: object = field(repr=False)
    origin: tuple
    source: object = field(repr=False)
    band: object = field(repr=False)
    fits_path: Path | None = None
    png_path: Path | None = None

    @property
    def shape(self):
        return self.data.shape

    def header(self):
        """FITS header: the cutout WCS, IRAF LTV/LTM back to the full frame, provenance."""
        from astropy.io import fits

        hdr = fits.Header()
        if self.wcs is not None:
            hdr.update(self.wcs.to_header(relax=True))
        x0, y0 = self.origin
        # IRAF physical coordinates: full-frame pixel = cutout pixel - LTV.
        hdr["LTV1"] = (-float(x0), "cutout offset: full-frame x = x - LTV1")
        hdr["LTV2"] = (-float(y0), "cutout offset: full-frame y = y - LTV2")
        hdr["LTM1_1"], hdr["LTM2_2"] = 1.0, 1.0
        b = self.band
        hdr["SURVEY"], hdr["VERSION"] = b.survey, b.version
        hdr["INSTRUME"], hdr["FILTER"] = b.instrument, b.filt
        if b.zp is not None:
            hdr["MAGZERO"] = (float(b.zp), "AB zero point")
        num = getattr(self.source, "number", None)
        if num is None and isinstance(self.source, Candidate):
            num = self.source.source.number
        if num is not None:
            hdr["NUMBER"] = (int(num), "catalogue NUMBER of the source")
        if isinstance(self.source, Candidate):
            hdr["MASKKIND"] = (self.source.kind, "candidate mask kind")
        hdr["ORIGFILE"] = Path(b.im_path).name[:68]
        return hdr

    def write_fits(self, path, overwrite: bool = True) -> Path:
        """Write SCI (primary), SEG and, with a mask, MASK (uint8) extensions."""
        from astropy.io import fits

        from .io.atomic import atomic_write_fits

        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"cutout {path} exists (overwrite=False)")
        hdr = self.header()
        hdus = [fits.PrimaryHDU(self.data.astype(np.float32), header=hdr)]
        seg_hdr = hdr.copy()
        hdus.append(fits.ImageHDU(self.seg.astype(np.int32), header=seg_hdr, name="SEG"))
        if self.mask is not None:
            hdus.append(fits.ImageHDU(self.mask.astype(np.uint8), header=hdr.copy(), name="MASK"))
        atomic_write_fits(fits.HDUList(hdus), path)
        self.fits_path = path
        return path

    def rgba(self, norm=None) -> np.ndarray:
        """The PNG pixels: grey science image, alpha = mask.

        Rows run top to bottom as in a PNG, i.e. flipped from the FITS array so
        the image looks as in ds9 or ``imshow(origin="lower")``.  Alpha is 255
        on the mask and 0 elsewhere (without a mask: 255 on valid pixels).
        """
        from .plot.images import default_norm

        data = self.data
        finite = np.isfinite(data)
        norm = norm if norm is not None else default_norm("SCI", data)
        if norm is None:
            grey = np.zeros(data.shape, dtype=np.uint8)
        else:
            scaled = np.ma.filled(norm(np.where(finite, data, 0.0)), 0.0)
            grey = np.clip(np.round(np.asarray(scaled, dtype=float) * 255), 0, 255).astype(np.uint8)
        grey[~finite] = 0
        alpha = (self.mask if self.mask is not None else finite).astype(np.uint8) * 255
        out = np.dstack([grey, grey, grey, alpha])
        return np.ascontiguousarray(out[::-1])

    def write_png(self, path, norm=None) -> Path:
        """Write the RGBA PNG (see `rgba`)."""
        import io

        from PIL import Image

        from .io.atomic import atomic_write_bytes

        buf = io.BytesIO()
        Image.fromarray(self.rgba(norm)).save(buf, format="PNG")
        path = Path(path)
        atomic_write_bytes(buf.getvalue(), path)
        self.png_path = path
        return path


def _default_size(bbox, x, y) -> int:
    ys, xs = bbox
    half = max(x - xs.start, xs.stop - 1 - x, y - ys.start, ys.stop - 1 - y, 0.0)
    margin = max(4.0, 0.25 * half)
    return 2 * int(math.ceil(half + margin)) + 1


def _paste(mask, bbox, cut_orig, cut_cut, shape):
    """``mask`` (placed at ``bbox`` in the full frame) in cutout coordinates."""
    out = np.zeros(shape, dtype=bool)
    (by, bx), (oy, ox), (cy, cx) = bbox, cut_orig, cut_cut
    ya, yb = max(by.start, oy.start), min(by.stop, oy.stop)
    xa, xb = max(bx.start, ox.start), min(bx.stop, ox.stop)
    if ya < yb and xa < xb:
        out[cy.start + ya - oy.start:cy.start + yb - oy.start,
            cx.start + xa - ox.start:cx.start + xb - ox.start] = \
            mask[ya - by.start:yb - by.start, xa - bx.start:xb - bx.start]
    return out


def cutout(band, target, size=None, mask=True, save=None) -> Cutout:
    """Cut a square (or rectangular) stamp around a source or position.

    Parameters
    ----------
    band : `~galseg.Band_Data`
    target : `Source`, `Candidate`, ``(x, y)`` pixels or SkyCoord
        A position is answered with `source_at` when ``mask`` is True.
    size : int, (ny, nx), or Quantity angle, optional
        Default for a source: its bounding box plus a margin, centred on its
        centroid.  Needed for a bare position with ``mask=False``.
    mask : bool
        Attach the source's mask (the candidate's mask for a `Candidate`).
    save : path-like, optional
        Write ``<save>.fits`` (SCI, SEG, MASK with the cutout WCS) and
        ``<save>.png`` (grey image, alpha = mask); a ``.fits``/``.png``
        suffix on ``save`` is dropped first.

    Returns
    -------
    `Cutout`
    """
    from astropy.nddata import Cutout2D

    src = None
    if isinstance(target, (Source, Candidate)):
        src = target
        px, py = target.x, target.y
    else:
        px, py = _pixel_position(band, target)
        if mask:
            src = source_at(band, px, py)
    if size is None:
        if src is None:
            raise TypeError("cutout of a bare position needs size=")
        ny_cut = nx_cut = _default_size(src.bbox, px, py)
    elif isinstance(size, (tuple, list)):
        ny_cut, nx_cut = (max(int(round(_pixel_length(band, s))), 1) for s in size)
    else:
        ny_cut = nx_cut = max(int(round(_pixel_length(band, size))), 1)

    ny, nx = band.shape
    if not (-nx_cut / 2 < px < nx - 1 + nx_cut / 2 and -ny_cut / 2 < py < ny - 1 + ny_cut / 2):
        raise ValueError(f"cutout at ({px:.1f}, {py:.1f}) px does not overlap band {band.filt}")
    wcs = band.load_wcs()
    sci = band.load_im()
    cut = Cutout2D(sci, (px, py), (ny_cut, nx_cut), wcs=wcs, mode="partial",
                   fill_value=np.nan, copy=True)
    idx = _index(band)
    seg_cut = np.zeros(cut.shape, dtype=np.int32)
    seg_cut[cut.slices_cutout] = idx.seg[cut.slices_original]
    mask_cut = None
    if mask and src is not None:
        mask_cut = _paste(src.mask, src.bbox, cut.slices_original, cut.slices_cutout, cut.shape)
    ox = cut.slices_original[1].start - cut.slices_cutout[1].start
    oy = cut.slices_original[0].start - cut.slices_cutout[0].start
    out = Cutout(data=np.asarray(cut.data, dtype=np.float32), mask=mask_cut, seg=seg_cut,
                 wcs=cut.wcs if wcs is not None else None, origin=(int(ox), int(oy)),
                 source=src, band=band)
    if save is not None:
        stem = Path(save)
        if stem.suffix.lower() in (".fits", ".png", ".fit"):
            stem = stem.with_suffix("")
        stem.parent.mkdir(parents=True, exist_ok=True)
        out.write_fits(stem.with_name(stem.name + ".fits"))
        out.write_png(stem.with_name(stem.name + ".png"))
    return out
