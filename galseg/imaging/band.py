"""`Band_Data`: one band of one survey/version/instrument."""

from __future__ import annotations

import warnings
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from ..io.fits import FitsInputError, read_header, read_image
from .filters import canonical_filter
from .zeropoint import pixel_scale_from_wcs, zero_point_from_header

__all__ = ["Band_Data", "DEFAULT_APER_DIAMS", "check_name"]

DEFAULT_APER_DIAMS = (0.32, 0.5, 1.0, 1.5, 2.0) * u.arcsec
_ERR_TYPES = ("rms_err", "wht")


def check_name(value, what: str) -> str:
    """``value`` as a name safe to use as one path component (see `safe_component`).

    Survey, version, instrument and filter names end up in product paths.
    """
    from ..products.naming import safe_component

    return safe_component(str(value).strip(), what)


def _quantity_arcsec(value, what: str):
    if value is None:
        return None
    q = value if isinstance(value, u.Quantity) else u.Quantity(value, u.arcsec)
    try:
        return q.to(u.arcsec)
    except u.UnitConversionError:
        raise ValueError(f"{what} must be an angle (e.g. arcsec), got {value!r}") from None


class Band_Data:
    """One band of one survey/version/instrument.

    Parameters
    ----------
    survey, version, instrument, filt : str
        Names; they appear in product paths, so they must be plain names.
    im_path : path-like
        Science image FITS file.
    im_ext : int or str
        Science extension, by index or EXTNAME.
    rms_err_path, wht_path : path-like, optional
        Absolute 1-sigma noise map and/or inverse-variance weight map.  At least
        one is needed; the other is derived (rms = 1/sqrt(wht)).  They may be the
        science file itself with another extension.
    rms_err_ext, wht_ext : int or str, optional
        Their extensions.  Default: the same extension index as the science
        image when the map is in a separate file; ``"ERR"`` / ``"WHT"`` when it is
        the science file itself.
    pix_scale : Quantity or float (arcsec), optional
        Pixel scale; default from the WCS.
    zp : float, optional
        AB zero point.  Default from the header (JWST MJy/sr, HST PHOTFLAM/PHOTPLAM,
        MAGZERO ...), else from the survey layout config.
    aper_diams : Quantity or sequence of float (arcsec), optional
        Aperture diameters; default 0.32, 0.5, 1.0, 1.5, 2.0 arcsec.
    work_dir : path-like, optional
        Root of the product tree; default from galseg's settings.

    Notes
    -----
    Nothing is read at construction beyond headers (to check extensions and
    shapes); images are loaded lazily with :meth:`load_im`, :meth:`load_rms_err`
    and :meth:`load_wht`.  Inputs are opened read-only and never modified.
    """

    def __init__(
        self,
        survey,
        version,
        instrument,
        filt,
        im_path,
        im_ext=0,
        rms_err_path=None,
        rms_err_ext=None,
        wht_path=None,
        wht_ext=None,
        pix_scale=None,
        zp=None,
        aper_diams=None,
        work_dir=None,
        *,
        config_zp=None,
        config_pix_scale=None,
    ):
        self.survey = check_name(survey, "survey")
        self.version = check_name(version, "version")
        self.instrument = check_name(instrument, "instrument")
        self.filt = check_name(canonical_filter(filt), "filter")
        self.im_path = Path(im_path)
        self.im_ext = im_ext
        if rms_err_path is None and wht_path is None:
            raise ValueError(
                f"band {self.filt}: give rms_err_path and/or wht_path; "
                "galseg needs a noise map to detect sources"
            )
        self.rms_err_path = Path(rms_err_path) if rms_err_path is not None else None
        self.wht_path = Path(wht_path) if wht_path is not None else None
        self.rms_err_ext = self._default_ext(self.rms_err_path, rms_err_ext, "ERR")
        self.wht_ext = self._default_ext(self.wht_path, wht_ext, "WHT")
        if work_dir is None:
            from ..config import settings

            work_dir = settings()["work_dir"]
        self.work_dir = Path(work_dir)

        self._header = read_header(self.im_path, self.im_ext, what=f"{self.filt} science image")
        self.shape = self._shape_of(self._header, self.im_path, self.im_ext, "science image")
        for kind in _ERR_TYPES:
            path, ext = self._map_location(kind)
            if path is not None:
                hdr = read_header(path, ext, what=f"{self.filt} {kind} map")
                shape = self._shape_of(hdr, path, ext, f"{kind} map")
                if shape != self.shape:
                    raise FitsInputError(
                        f"band {self.filt}: {kind} map {path}[{ext}] has shape {shape} "
                        f"but the science image {self.im_path}[{self.im_ext}] has {self.shape}"
                    )

        scale = _quantity_arcsec(pix_scale, "pix_scale")
        if scale is not None:
            self.pix_scale, self.pix_scale_source = scale, "argument"
        else:
            value, source = pixel_scale_from_wcs(self._header)
            if value is None and config_pix_scale is not None:
                value, source = _quantity_arcsec(config_pix_scale, "pix_scale").value, "layout config"
            self.pix_scale = None if value is None else value * u.arcsec
            self.pix_scale_source = source
        if zp is not None:
            self.zp, self.zp_source = float(zp), "argument"
        else:
            arcsec = None if self.pix_scale is None else self.pix_scale.to_value(u.arcsec)
            value, source = zero_point_from_header(self._header, arcsec)
            if value is None and config_zp is not None:
                value, source = float(config_zp), "layout config"
            self.zp, self.zp_source = value, source
        diams = _quantity_arcsec(aper_diams, "aper_diams")
        self.aper_diams = DEFAULT_APER_DIAMS if diams is None else np.atleast_1d(diams)

        # Products of the last segment() call (see galseg.products).
        self.seg_path = self.bkg_path = self.cat_path = None
        self.seg_args = None

    # ------------------------------------------------------------------ set-up
    def _default_ext(self, path, ext, name):
        if path is None or ext is not None:
            return ext
        if path.resolve() == self.im_path.resolve():
            return name
        return self.im_ext if isinstance(self.im_ext, int) else None

    @staticmethod
    def _shape_of(header, path, ext, what):
        naxis = header.get("ZNAXIS", header.get("NAXIS", 0))
        if naxis != 2:
            raise FitsInputError(f"{what} {path}[{ext}] is {naxis}-D; a 2-D image is needed")
        return (int(header["NAXIS2"]), int(header["NAXIS1"]))

    def _map_location(self, kind):
        if kind == "rms_err":
            return self.rms_err_path, self.rms_err_ext
        if kind == "wht":
            return self.wht_path, self.wht_ext
        raise ValueError(f"err_type must be one of {_ERR_TYPES}, got {kind!r}")

    # ------------------------------------------------------------------ loading
    @property
    def header(self) -> fits.Header:
        """Header of the science extension (a copy)."""
        return self._header.copy()

    def load_im(self, incl_hdr: bool = False):
        """The science image (float32, native byte order, read-only), optionally with header."""
        data = read_image(self.im_path, self.im_ext, what=f"{self.filt} science image")
        return (data, self.header) if incl_hdr else data

    def load_rms_err(self, incl_hdr: bool = False):
        """The 1-sigma noise map; derived as 1/sqrt(wht) when only a weight map exists.

        Pixels with zero, negative or non-finite weight (or rms) get ``inf``.
        """
        if self.rms_err_path is not None:
            rms, hdr = read_image(
                self.rms_err_path, self.rms_err_ext, what=f"{self.filt} rms_err map", header=True
            )
            bad = ~np.isfinite(rms) | (rms <= 0)
            if bad.any():
                rms = np.where(bad, np.float32(np.inf), rms)
        else:
            wht, hdr = read_image(self.wht_path, self.wht_ext, what=f"{self.filt} wht map", header=True)
            rms = _rms_from_wht(wht)
            hdr["HISTORY"] = "galseg: rms_err derived as 1/sqrt(wht); wht<=0 or non-finite -> inf"
        return (rms, hdr) if incl_hdr else rms

    def load_wht(self, incl_hdr: bool = False):
        """The inverse-variance weight map; derived as 1/rms^2 when only an rms map exists.

        Pixels with zero, negative or non-finite rms (or weight) get weight 0.
        """
        if self.wht_path is not None:
            wht, hdr = read_image(self.wht_path, self.wht_ext, what=f"{self.filt} wht map", header=True)
            bad = ~np.isfinite(wht) | (wht < 0)
            if bad.any():
                wht = np.where(bad, np.float32(0), wht)
        else:
            rms, hdr = read_image(
                self.rms_err_path, self.rms_err_ext, what=f"{self.filt} rms_err map", header=True
            )
            wht = _wht_from_rms(rms)
            hdr["HISTORY"] = "galseg: wht derived as 1/rms_err^2; rms<=0 or non-finite -> 0"
        return (wht, hdr) if incl_hdr else wht

    def load_err(self, err_type: str = "rms_err"):
        """``load_rms_err()`` or ``load_wht()`` by name."""
        self._map_location(err_type)
        return self.load_rms_err() if err_type == "rms_err" else self.load_wht()

    def load_wcs(self, incl_hdr: bool = False):
        """The celestial WCS of the science image, or None when it has none."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(self._header)
        wcs = wcs.celestial if wcs.has_celestial else None
        return (wcs, self.header) if incl_hdr else wcs

    def has_err(self, err_type: str) -> bool:
        """Whether the ``err_type`` map exists on disk (not derived)."""
        return self._map_location(err_type)[0] is not None

    def write_derived(self, err_type: str) -> Path:
        """Write the derived ``err_type`` map into the work directory and return its path.

        The input tree is never written to.  Useful for external tools that need
        the map as a file; galseg itself derives it in memory.
        """
        from ..io.atomic import atomic_write_fits_image

        data, hdr = (self.load_rms_err if err_type == "rms_err" else self.load_wht)(incl_hdr=True)
        out = (
            self.work_dir / self.instrument / self.version / self.survey / "derived"
            / f"{self.survey}_{self.filt}_{err_type}.fits"
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_fits_image(data, out, header=hdr, dtype=np.float32)
        return out

    # ------------------------------------------------------------- segmentation
    def segment(self, err_type="rms_err", method="sep", config="galfind_default",
                overwrite=False, tiles="auto", max_memory="4GB", **overrides):
        """Detect and measure sources, SExtractor-style, with cached products.

        Parameters
        ----------
        err_type : {"rms_err", "wht"}
            Noise map: ``"rms_err"`` runs SExtractor's ``MAP_RMS`` (absolute
            noise), ``"wht"`` its ``MAP_WEIGHT`` (relative weights rescaled to
            the measured image noise).  A missing map is derived from the other.
        method : {"sep", "sextractor", "photutils"}
            ``"sep"`` is galseg's in-process engine; ``"sextractor"`` runs the
            SExtractor binary with the same parameters (for comparison).
        config : str, path or Params
            A preset name (``"galfind_default"``, ``"test"``,
            ``"epochs-v2_deblend"``), a ``.sex`` file, or a parameter set.
        overwrite : bool
            Recompute even when a valid cached product exists.
        tiles : {"auto", None} or int
            ``"auto"`` processes the image in overlapping tiles (in parallel,
            memory-mapped) when it does not fit ``max_memory`` in one piece;
            ``None`` never tiles; an int forces that tile size in pixels.  A
            tiled run gives the same products (see `galseg.tiling`).
        max_memory : int or str
            Memory budget of a tiled run, e.g. ``"4GB"``.
        **overrides
            SExtractor parameters by name, e.g. ``DETECT_THRESH=2.5``.  The band
            fills ``PHOT_APERTURES`` (its aperture diameters in pixels),
            ``MAG_ZEROPOINT`` and ``PIXEL_SCALE`` unless overridden here.

        Returns
        -------
        self
            With ``seg_path``, ``bkg_path``, ``cat_path`` and ``seg_args`` set.

        Notes
        -----
        Products are keyed on the input files' content, every parameter, the
        kernel, apertures, zero point and library versions: a different
        config gives a second product side by side, changed inputs are
        detected and recomputed, and a rerun loads from disk in milliseconds.
        ``bkg_path`` is the background map that was *subtracted* (SExtractor's
        ``BACKGROUND`` check image), not galfind's background-subtracted image.
        """
        self._segment(err_type, method, config, overwrite, tiles=tiles, max_memory=max_memory,
                      **overrides)
        return self

    def _segment(self, err_type="rms_err", method="sep", config="galfind_default",
                 overwrite=False, **kwargs):
        """`segment`, returning the cache outcome (with the fresh result, if computed)."""
        from ..pipeline import segment_band

        overrides = {k: v for k, v in kwargs.items() if k not in ("tiles", "max_memory")}
        outcome = segment_band(self, err_type, method, config, overwrite, **kwargs)
        self._use_product(outcome.entry)
        self.seg_args = {
            "err_type": err_type, "method": method,
            "config": config if isinstance(config, str) else str(config),
            "overrides": overrides, "key": outcome.entry.short_hash,
            "from_cache": not outcome.computed, "reason": outcome.reason,
        }
        return outcome

    def _use_product(self, entry):
        self._product = entry
        self.seg_path, self.bkg_path, self.cat_path = (
            entry.path("seg"), entry.path("bkg"), entry.path("cat"))

    def _product_entry(self):
        entry = getattr(self, "_product", None)
        if entry is not None:
            return entry
        # A fresh process: the newest valid product of this band, any weight type.
        from ..products import ProductStore

        store = ProductStore(self.work_dir)
        for weight_type in ("MAP_RMS", "MAP_WEIGHT"):
            entry = store.latest(self.instrument, self.version, self.survey, self.filt,
                                 weight_type, any_label=True)
            if entry is not None:
                self._use_product(entry)
                return entry
        raise FileNotFoundError(
            f"band {self.filt} of {self.survey}/{self.version} has no segmentation products "
            f"under {self.work_dir}; call segment() first"
        )

    def load_seg(self, incl_hdr: bool = False):
        """The segmentation map (int32, value = catalogue NUMBER), optionally with header."""
        return self._product_entry().load_seg(header=incl_hdr)

    def load_bkg(self, incl_hdr: bool = False):
        """The background map that was subtracted, optionally with header."""
        return self._product_entry().load_bkg(header=incl_hdr)

    def load_cat(self):
        """The catalogue of the last segmentation, as an astropy Table."""
        return self._product_entry().load_cat()

    def plot(self, ext="SEG", ax=None, norm=None, cmap=None, region=None, save=None, show=True,
             **kwargs):
        """Show SCI, RMS_ERR, WHT, SEG, BKG or MASK; see `galseg.plot.images.plot_band`."""
        from ..plot.images import plot_band

        return plot_band(self, ext, ax=ax, norm=norm, cmap=cmap, region=region, save=save,
                         show=show, **kwargs)

    # ------------------------------------------------------------------ display
    @property
    def aper_diams_pix(self) -> np.ndarray:
        """Aperture diameters in pixels (needs the pixel scale)."""
        if self.pix_scale is None:
            raise ValueError(
                f"band {self.filt}: no pixel scale (no WCS, no pix_scale argument or config); "
                "aperture diameters cannot be converted to pixels"
            )
        return (self.aper_diams / self.pix_scale).to_value(u.dimensionless_unscaled)

    def _describe(self) -> list[tuple[str, str]]:
        def loc(path, ext):
            return "derived" if path is None else f"{path}[{ext}]"

        scale = "unknown" if self.pix_scale is None else f"{self.pix_scale.to_value(u.arcsec):.4g}\""
        zp = "unknown" if self.zp is None else f"{self.zp:.4f}"
        return [
            ("survey/version", f"{self.survey} / {self.version}"),
            ("instrument", self.instrument),
            ("science", loc(self.im_path, self.im_ext)),
            ("rms_err", loc(self.rms_err_path, self.rms_err_ext)),
            ("wht", loc(self.wht_path, self.wht_ext)),
            ("shape", f"{self.shape[1]} x {self.shape[0]} px"),
            ("pixel scale", f"{scale} (from {self.pix_scale_source or 'nowhere'})"),
            ("zero point", f"{zp} AB (from {self.zp_source or 'nowhere'})"),
            ("apertures", ", ".join(f"{d:g}" for d in self.aper_diams.to_value(u.arcsec)) + " arcsec"),
        ]

    def __repr__(self) -> str:
        rows = self._describe()
        width = max(len(k) for k, _ in rows)
        body = "\n".join(f"  {k:<{width}} : {v}" for k, v in rows)
        return f"Band_Data({self.filt})\n{body}"

    # ------------------------------------------- overlays, prompts, export
    def plot_overlay(self, alpha=0.5, ax=None, region=None, **kwargs):
        """Segments over the image, Kron ellipses, apertures; see `galseg.plot.overlay.plot_overlay`."""
        from ..plot.overlay import plot_overlay

        return plot_overlay(self, alpha=alpha, ax=ax, region=region, **kwargs)

    def source(self, number):
        """The `~galseg.sources.Source` with catalogue NUMBER ``number``."""
        from ..sources import source_by_number

        return source_by_number(self, number)

    def source_at(self, x, y=None, *, nearest=False):
        """The segment under a pixel or sky position; see `galseg.sources.source_at`."""
        from ..sources import source_at

        return source_at(self, x, y, nearest=nearest)

    def source_in_box(self, x, y=None, width=None, height=None):
        """The brightest segment in a box centred on (x, y); see `galseg.sources.source_in_box`."""
        from ..sources import source_in_box

        return source_in_box(self, x, y, width=width, height=height)

    def candidates(self, x, y=None, *, dilate=3.0):
        """Object / parent-blend / dilated masks for a prompt; see `galseg.sources.candidates`."""
        from ..sources import Source, candidates

        if isinstance(x, Source):
            return candidates(x, dilate=dilate)
        return candidates(x, y, band=self, dilate=dilate)

    def cutout(self, target, size=None, mask=True, save=None):
        """FITS + PNG (alpha = mask) cutout; see `galseg.sources.cutout`."""
        from ..sources import cutout

        return cutout(self, target, size=size, mask=mask, save=save)

    def export(self, path, format="ds9", **kwargs):
        """Write "ds9", "index-png", "geojson" or "areas"; see `galseg.export.export_band`."""
        from ..export import export_band

        return export_band(self, path, format, **kwargs)

    def area_stats(self):
        """Total, unmasked and segmented area (arcmin^2); see `galseg.export.areas.area_stats`."""
        from ..export.areas import area_stats

        return area_stats(self)


def _rms_from_wht(wht: np.ndarray) -> np.ndarray:
    good = np.isfinite(wht) & (wht > 0)
    rms = np.full(wht.shape, np.inf, dtype=np.float32)
    np.divide(1.0, np.sqrt(wht, where=good, out=np.ones_like(wht, dtype=np.float32)), out=rms, where=good)
    return rms


def _wht_from_rms(rms: np.ndarray) -> np.ndarray:
    good = np.isfinite(rms) & (rms > 0)
    wht = np.zeros(rms.shape, dtype=np.float32)
    np.divide(1.0, np.square(rms, dtype=np.float32), out=wht, where=good)
    return wht
