"""SExtractor 2.25 catalogue measurements of detected objects.

`measure` turns a segmentation map and sep's object list into SExtractor's
catalogue: aperture, AUTO (Kron), isophotal and "best" photometry, flux radii,
FWHM, CLASS_STAR, windowed positions and SExtractor's flags.  It follows
SExtractor's source (``photom.c``, ``growth.c``, ``winpos.c``, ``analyse.c``,
``neurro.c``, ``back.c``) including its neighbour masking (``MASK_TYPE``), so
that catalogues agree with SExtractor's to float precision when given the same
detections.  The pixel work runs in compiled kernels
(`galseg.extract._kernels`), one pass per object, in parallel over objects.

The same function serves dual-image mode: ``segmap``/``objects`` come from the
detection band, ``data``/``rms`` from the measured band, and ``detection`` (the
detection image) is only used where SExtractor uses it (the Kron radius).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from astropy import units as u
from astropy.table import Table

from . import _kernels, _parallel
from .classstar import class_star, load_nnw
from .params import Params
from .presets import filter_kernel, nnw_path

__all__ = ["measure", "CATALOG_COLUMNS", "resolve_gain_saturation", "sep_flags_to_sextractor"]

#: Columns of the catalogue, in order.
CATALOG_COLUMNS = (
    "NUMBER", "X_IMAGE", "Y_IMAGE", "ALPHA_J2000", "DELTA_J2000",
    "MAG_APER", "FLUX_APER", "MAGERR_APER", "FLUXERR_APER",
    "MAG_AUTO", "MAGERR_AUTO", "FLUX_AUTO", "FLUXERR_AUTO",
    "MAG_BEST", "MAGERR_BEST", "MAG_ISO", "MAGERR_ISO", "FLUX_ISO", "FLUXERR_ISO",
    "KRON_RADIUS", "FLUX_RADIUS", "FWHM_IMAGE", "CLASS_STAR", "SNR_WIN",
    "XWIN_IMAGE", "YWIN_IMAGE", "ELONGATION", "THETA_IMAGE", "A_IMAGE", "B_IMAGE",
    "FLAGS", "ISOAREA_IMAGE", "XMIN_IMAGE", "XMAX_IMAGE", "YMIN_IMAGE", "YMAX_IMAGE",
)

_MASK_TYPES = {"NONE": _kernels.MODE_NONE, "BLANK": _kernels.MODE_BLANK,
               "CORRECT": _kernels.MODE_CORRECT}

_REQUIRED_FIELDS = ("x", "y", "a", "b", "theta", "cxx", "cyy", "cxy", "flag",
                    "xmin", "xmax", "ymin", "ymax", "thresh")

# sep object flag bit -> SExtractor FLAGS bit
_SEP_TO_SEX_FLAGS = ((0x0001, 2),    # SEP_OBJ_MERGED    -> OBJ_MERGED
                     (0x0002, 8),    # SEP_OBJ_TRUNC     -> OBJ_TRUNC
                     (0x0004, 64))   # SEP_OBJ_DOVERFLOW -> OBJ_DOVERFLOW


def sep_flags_to_sextractor(flag) -> np.ndarray:
    """Map sep's object flag bits onto SExtractor's ``FLAGS`` bits.

    sep: 1 merged, 2 truncated, 4 deblending overflow (8 = singular moments,
    not a SExtractor flag).  SExtractor: 2 merged (deblended), 8 truncated,
    64 deblending overflow.  Other bits are dropped.
    """
    flag = np.asarray(flag).astype(np.int64)
    out = np.zeros(flag.shape, dtype=np.int64)
    for sep_bit, sex_bit in _SEP_TO_SEX_FLAGS:
        out |= np.where(flag & sep_bit, sex_bit, 0)
    return out


def _header_float(header, key: str):
    if header is None or not key:
        return None
    try:
        value = header.get(key)
    except Exception:  # noqa: BLE001 - any header-like object
        return None
    if isinstance(value, bool) or value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def resolve_gain_saturation(params: Params, header=None) -> tuple[float, float]:
    """``(gain, saturation level)`` as SExtractor 2.25 takes them.

    SExtractor (``field.c``) reads the keywords named by ``GAIN_KEY`` and
    ``SATUR_KEY`` from the image header and uses them when present, whatever
    ``GAIN``/``SATUR_LEVEL`` say; the configuration values are used only when
    the keywords are absent.
    """
    gain = _header_float(header, params["GAIN_KEY"])
    satur = _header_float(header, params["SATUR_KEY"])
    return (params["GAIN"] if gain is None else gain,
            params["SATUR_LEVEL"] if satur is None else satur)


def _pixel_scale(params: Params, wcs, shape) -> float:
    """Pixel scale in arcsec: PIXEL_SCALE, else from the WCS at the image centre, else 0."""
    if params["PIXEL_SCALE"] > 0:
        return float(params["PIXEL_SCALE"])
    if wcs is None or not getattr(wcs, "has_celestial", False):
        return 0.0
    # SExtractor: sqrt of the pixel's solid angle at the image centre (fitswcs.c).
    cw = wcs.celestial
    yc, xc = (shape[0] - 1) / 2.0, (shape[1] - 1) / 2.0
    px = np.array([xc, xc + 0.5, xc - 0.5, xc, xc])
    py = np.array([yc, yc, yc, yc + 0.5, yc - 0.5])
    lon, lat = cw.all_pix2world(px, py, 0)
    cosd = np.cos(np.deg2rad(lat[0]))
    dlon = ((lon[1] - lon[2] + 180.0) % 360.0 - 180.0) * cosd
    dlon_y = ((lon[3] - lon[4] + 180.0) % 360.0 - 180.0) * cosd
    area = abs(dlon * (lat[3] - lat[4]) - dlon_y * (lat[1] - lat[2]))
    return float(np.sqrt(area) * 3600.0)


def _world_j2000(wcs, x, y):
    """ALPHA_J2000, DELTA_J2000 of 0-based pixel positions (NaN without a celestial WCS).

    Like SExtractor, coordinates in an FK4/FK5 frame of another equinox are
    precessed to FK5 J2000; ICRS and FK5 J2000 coordinates are returned as they
    are (SExtractor applies no frame tie).  Distortions in the header (SIP, TPV)
    are applied.
    """
    n = len(x)
    if wcs is None or not getattr(wcs, "has_celestial", False) or n == 0:
        return np.full(n, np.nan), np.full(n, np.nan)
    cw = wcs.celestial
    lon, lat = cw.all_pix2world(x, y, 0)
    lon = np.asarray(lon, dtype=np.float64)
    lat = np.asarray(lat, dtype=np.float64)
    radesys = (cw.wcs.radesys or "").strip().upper()
    equinox = cw.wcs.equinox
    if radesys.startswith("FK") and np.isfinite(equinox) and abs(equinox - 2000.0) > 0.003:
        from astropy.coordinates import FK4, FK5, SkyCoord
        from astropy.time import Time

        if radesys.startswith("FK4"):
            frame = FK4(equinox=Time(equinox, format="byear"))
        else:
            frame = FK5(equinox=Time(equinox, format="jyear"))
        c = SkyCoord(lon, lat, unit="deg", frame=frame).transform_to(FK5(equinox="J2000"))
        lon, lat = c.ra.deg, c.dec.deg
    return lon, lat


def _native(arr, name: str, dtype) -> np.ndarray:
    if arr is None:
        raise ValueError(f"{name} is required")
    a = np.asarray(arr)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D image, got shape {a.shape}")
    # read-only views: one compiled kernel whatever the caller's arrays
    return _parallel.readonly(np.ascontiguousarray(a, dtype=np.dtype(dtype).newbyteorder("=")))


def _blank_lag(params: Params) -> int:
    """Rows by which SExtractor's blanking trails its detection scan (scan.c).

    With filtering, detected pixels are blanked ``kernel height // 2 + 1``
    rows late (the filter still needs them); without, at once.
    """
    kernel = filter_kernel(params)
    if kernel is None:
        return 0
    return int(np.shape(kernel)[0]) // 2 + 1


def _flag_map(shape, seg, mask, blank, iso_segmap, pixel_flags):
    """The kernels' pixel-flag map (`galseg.extract._kernels`): ``(pf, has_pf)``."""
    if pixel_flags is not None:
        pf = np.asarray(pixel_flags)
        if pf.shape != shape:
            raise ValueError(f"pixel_flags shape {pf.shape} differs from data shape {shape}")
        return _parallel.readonly(np.ascontiguousarray(pf, dtype=np.uint8)), True
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != shape:
            raise ValueError(f"mask shape {mask.shape} differs from data shape {shape}")
        if not mask.any():
            mask = None
    if blank is not None:
        blank = np.asarray(blank)
        if blank.shape != shape:
            raise ValueError(f"blank shape {blank.shape} differs from data shape {shape}")
    if iso_segmap is not None:
        iso_segmap = np.asarray(iso_segmap)
        if iso_segmap.shape != shape:
            raise ValueError(f"iso_segmap shape {iso_segmap.shape} differs from data shape "
                             f"{shape}")
    dummy8 = _parallel.readonly(np.zeros((1, 1), np.uint8))
    if mask is None and blank is None and iso_segmap is None:
        return dummy8, False

    def u8(a):
        if a is None:
            return dummy8
        a = np.asarray(a)
        if a.dtype == np.bool_:
            return _parallel.readonly(np.ascontiguousarray(a).view(np.uint8))
        return _parallel.readonly(np.ascontiguousarray(a != 0).view(np.uint8))

    oseg = (_parallel.readonly(np.zeros((1, 1), np.int32)) if iso_segmap is None
            else _native(iso_segmap, "iso_segmap", np.int32))
    pf = np.empty(shape, np.uint8)
    _kernels.build_pixel_flags(seg, u8(mask), mask is not None, u8(blank), blank is not None,
                               oseg, iso_segmap is not None, pf)
    return _parallel.readonly(pf), True


def _mags(flux, err, zp):
    flux = np.asarray(flux, dtype=np.float64)
    pos = flux > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.where(pos, -2.5 * np.log10(np.where(pos, flux, 1.0)) + zp, 99.0)
        magerr = np.where(pos, 1.086 * err / np.where(pos, flux, 1.0), 99.0)
    return mag.astype(np.float32), magerr.astype(np.float32)


def _isocor(flux, fluxvar, npix, dthresh):
    """MAG_ISOCOR flux and error (photom.c: computeisocorflux)."""
    flux = np.asarray(flux, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ati = np.where(flux > 0, npix * dthresh / np.where(flux > 0, flux, 1.0), 0.0)
        ati = np.clip(ati, 0.0, 1.0)
        fcor = flux / (1.0 - 0.196099 * ati - 0.751208 * ati * ati)
        sigtv = fluxvar / (flux * flux)
        dati = np.where(npix > 0, ati * np.sqrt(sigtv + 1.0 / np.maximum(npix, 1)), 0.0)
        dati = 0.196099 * dati + 0.751208 * 2 * ati * dati
        ecor = np.where(flux > 0, np.sqrt(sigtv + dati * dati) * flux, np.sqrt(fluxvar))
    return fcor, ecor


def measure(data, rms, segmap, objects, params, *, wcs=None, header=None, mask=None,
            detection=None, detection_rms=None, background=None, backsig=None,
            blank=None, iso_segmap=None, local_blank_rows=None, pixel_flags=None) -> Table:
    """Measure detected objects as SExtractor 2.25 does.

    Parameters
    ----------
    data : 2-D array
        Background-subtracted science image of the measured band (masked
        pixels 0).  Any float dtype and byte order; it is not modified.
    rms : 2-D array
        Absolute per-pixel noise of ``data``; ``inf`` (or NaN) where there is
        no data.  Errors are ``sqrt(sum(rms**2))`` plus the Poisson term.
    segmap : 2-D int array
        Segmentation map; label ``i + 1`` is ``objects[i]``, 0 is sky.
    objects : structured array
        sep's object list (``sep.extract``), one row per label.  Positions,
        shapes (``a``, ``b``, ``theta``, ``cxx``, ``cyy``, ``cxy``), bounding
        boxes, ``thresh`` (detection threshold, for MAG_ISOCOR) and ``flag``
        (sep bits, mapped onto SExtractor's) are taken from it; a
        ``sexflags`` field (SExtractor's detection FLAGS bits, as galseg's
        engine provides) is used instead of ``flag`` when present.
    params : `Params` or mapping
        SExtractor parameters.  Used: PHOT_APERTURES (diameters, pixels),
        PHOT_AUTOPARAMS, PHOT_AUTOAPERS, PHOT_FLUXFRAC, MASK_TYPE,
        MAG_ZEROPOINT, GAIN/GAIN_KEY, SATUR_LEVEL/SATUR_KEY, WEIGHT_TYPE,
        WEIGHT_GAIN, ANALYSIS_THRESH, THRESH_TYPE, SEEING_FWHM, PIXEL_SCALE,
        STARNNW_NAME, BACKPHOTO_TYPE, BACKPHOTO_THICK.
    wcs : `~astropy.wcs.WCS`, optional
        Celestial WCS of ``data``; gives ALPHA_J2000/DELTA_J2000 (NaN without;
        see `_world_j2000`) and the pixel scale when PIXEL_SCALE is 0.
    header : `~astropy.io.fits.Header` or mapping, optional
        Header of the measured image.  As SExtractor does, the keywords named
        by GAIN_KEY (default ``GAIN``) and SATUR_KEY (default ``SATURATE``)
        override GAIN and SATUR_LEVEL when present (even when GAIN is 0).
    mask : 2-D bool array, optional
        Extra bad pixels (treated like pixels with no weight).
    detection, detection_rms : 2-D arrays, optional
        Dual-image mode: the background-subtracted detection image and its
        rms, in which SExtractor measures the Kron radius.  Default: ``data``
        and ``rms``.
    background : float or 2-D array, optional
        The background that was subtracted from ``data`` (default 0); its value
        at the object's centre pixel enters the saturation test
        (``peak + background >= SATUR_LEVEL`` sets flag 4) and FWHM_IMAGE.
    backsig : float, optional
        Global background RMS of the measured image (SExtractor's ``backsig``):
        sets the global analysis threshold used by CLASS_STAR and the weighted
        Poisson term.  Default: the median of the finite ``rms``.
    blank : 2-D bool array, optional
        Pixels SExtractor blanks while measuring neighbours (all pixels above
        the detection threshold, minus objects removed by CLEAN).  Default:
        ``segmap != 0``.  A pixel that CLEAN merged into its object (where
        ``iso_segmap`` differs from ``segmap``) and that ``blank`` marks is
        one SExtractor blanked again for good: blanked for its own object
        too (see `galseg.extract.engine.stuck_rows`).
    iso_segmap : 2-D int array, optional
        The objects' own pixels before CLEAN merged swallowed detections into
        them (label ``i + 1`` on object ``i``'s own pixels; anything else on
        swallowed ones).  SExtractor measures ISOAREA_IMAGE, FWHM_IMAGE and the
        isophotal areas of CLASS_STAR before cleaning, on these pixels only;
        FLUX_ISO and the peak cover the merged object.  Default: ``segmap``.
    local_blank_rows : 1-D int array, optional
        BACKPHOTO_TYPE LOCAL only: for each object, the last image row (0-based)
        in which SExtractor had blanked detected pixels when it estimated the
        object's local background (SExtractor measures it during its scan, when
        the detection island completes): ``island_ymax + 1 - (kernel height // 2
        + 1)`` with filtering, ``island_ymax`` without.  Default: that formula
        with the object's own ``ymax`` for ``island_ymax``.
    pixel_flags : 2-D uint8 array, optional
        ``mask``, ``blank`` and ``iso_segmap`` in one map, as galseg's engine
        makes it (`galseg.extract.engine.Sources.pixel_flags`): bit
        ``PF_BLANK`` (1) on the pixels ``blank`` would mark, ``PF_MASK`` (2)
        on masked pixels, ``PF_MERGED`` (4) on the pixels that CLEAN merged
        into their object (where ``iso_segmap`` differs from ``segmap``),
        ``PF_STUCK`` (8) on merged pixels blanked for their own object too.
        When given, ``mask``, ``blank`` and ``iso_segmap`` are ignored.

    Returns
    -------
    `~astropy.table.Table`
        One row per object, columns `CATALOG_COLUMNS` with SExtractor's names,
        units and conventions: 1-based pixel positions, THETA_IMAGE in degrees,
        MAG_APER/FLUX_APER/... of shape ``(N, naper)``, FLUX_RADIUS of shape
        ``(N,)`` for one PHOT_FLUXFRAC and ``(N, nfrac)`` for several,
        magnitudes 99 where the flux is not positive.  ``meta`` records the
        gain, saturation level, pixel scale and background RMS used.

    Notes
    -----
    MASK_TYPE CORRECT replaces pixels of other objects (and bad pixels) in the
    APER, AUTO, FLUX_RADIUS and WIN sums by the pixel symmetric through the
    object's centre, or 0 if that one belongs to another object; BLANK counts
    them 0; NONE keeps them.  FLAGS bit 1 (crowded: more than 10% of the AUTO
    aperture replaced) makes MAG_BEST the corrected isophotal magnitude,
    otherwise MAG_BEST is MAG_AUTO.
    """
    params = params if isinstance(params, Params) else Params(params)
    data = _native(data, "data", np.float32)
    rms = _native(rms, "rms", np.float32)
    seg = _native(segmap, "segmap", np.int32)
    shape = data.shape
    for name, arr in (("rms", rms), ("segmap", seg)):
        if arr.shape != shape:
            raise ValueError(f"{name} shape {arr.shape} differs from data shape {shape}")
    if detection is None:
        ddata = data
        drms = rms if detection_rms is None else _native(detection_rms, "detection_rms", np.float32)
    else:
        ddata = _native(detection, "detection", np.float32)
        drms = rms if detection_rms is None else _native(detection_rms, "detection_rms", np.float32)
    for name, arr in (("detection", ddata), ("detection_rms", drms)):
        if arr.shape != shape:
            raise ValueError(f"{name} shape {arr.shape} differs from data shape {shape}")
    pf, has_pf = _flag_map(shape, seg, mask, blank, iso_segmap, pixel_flags)

    objects = np.asarray(objects)
    if objects.dtype.names is None:
        raise TypeError("objects must be sep's structured array (sep.extract output)")
    missing = [f for f in _REQUIRED_FIELDS if f not in objects.dtype.names]
    if missing:
        raise ValueError(f"objects lacks the field(s) {', '.join(missing)}")
    n = len(objects)

    mask_type = params["MASK_TYPE"].upper()
    if mask_type not in _MASK_TYPES:
        raise ValueError(f"MASK_TYPE must be NONE, BLANK or CORRECT, got {params['MASK_TYPE']!r}")
    mode = _MASK_TYPES[mask_type]
    weight_types = params["WEIGHT_TYPE"]
    weighted = bool(weight_types) and weight_types[-1].upper() != "NONE"
    gain, satur = resolve_gain_saturation(params, header)
    gainflag = weighted and params["WEIGHT_GAIN"]
    if backsig is None:
        step = max(1, int(math.sqrt(rms.size / 1e6)))
        sample = rms[::step, ::step]
        sample = sample[np.isfinite(sample)]
        backsig = float(np.median(sample)) if sample.size else 1.0
    backsig = float(backsig)
    backnoise2 = float(np.float32(backsig) * np.float32(backsig))
    athresh = float(params["ANALYSIS_THRESH"])
    if params["THRESH_TYPE"].upper().startswith("ABS"):
        field_thresh = athresh
        threshfac = athresh / backsig if backsig > 0 else 1.0
    else:
        field_thresh = athresh * backsig
        threshfac = athresh
    apertures = np.asarray(params["PHOT_APERTURES"], dtype=np.float64)
    radii = apertures / 2.0
    autoparams = tuple(params["PHOT_AUTOPARAMS"]) + (3.5,)
    autoapers = tuple(params["PHOT_AUTOAPERS"]) or (0.0,)
    if len(autoapers) == 1:
        autoapers = autoapers * 2
    fluxfrac = np.asarray(params["PHOT_FLUXFRAC"] or (0.5,), dtype=np.float64)
    backphoto = params["BACKPHOTO_TYPE"].upper()
    if backphoto not in ("GLOBAL", "LOCAL"):
        raise ValueError("BACKPHOTO_TYPE must be GLOBAL or LOCAL, "
                         f"got {params['BACKPHOTO_TYPE']!r}")
    local_back = backphoto == "LOCAL"

    x = np.ascontiguousarray(objects["x"], dtype=np.float64)
    y = np.ascontiguousarray(objects["y"], dtype=np.float64)
    a = np.ascontiguousarray(objects["a"], dtype=np.float64)
    b = np.ascontiguousarray(objects["b"], dtype=np.float64)
    cxx = np.ascontiguousarray(objects["cxx"], dtype=np.float64)
    cyy = np.ascontiguousarray(objects["cyy"], dtype=np.float64)
    cxy = np.ascontiguousarray(objects["cxy"], dtype=np.float64)
    bxmin, bxmax, bymin, bymax, _npix = _kernels.label_boxes(seg, n, pf, False)
    if local_back and has_pf:
        # the local background is measured around the object's own pixels
        oxmin, oxmax, oymin, oymax, _onpix = _kernels.label_boxes(seg, n, pf, True)
    else:
        oxmin, oxmax, oymin, oymax = bxmin, bxmax, bymin, bymax
    if not local_back:
        yblank = np.zeros(n, dtype=np.int64)
    elif local_blank_rows is not None:
        yblank = np.ascontiguousarray(local_blank_rows, dtype=np.int64)
        if yblank.shape != (n,):
            raise ValueError(f"local_blank_rows must have one entry per object ({n}), "
                             f"got shape {yblank.shape}")
    else:
        yblank = np.asarray(objects["ymax"], dtype=np.int64) + 1 - _blank_lag(params)

    # background at the centre pixel, as SExtractor's back(field, (int)(mx+0.5), ...)
    if background is None:
        bkg_center = np.zeros(n)
    elif np.ndim(background) == 0:
        bkg_center = np.full(n, float(background))
    else:
        bk = np.asarray(background)
        if bk.shape != shape:
            raise ValueError(f"background shape {bk.shape} differs from data shape {shape}")
        ix = np.clip((x + 0.5).astype(np.int64), 0, shape[1] - 1)
        iy = np.clip((y + 0.5).astype(np.int64), 0, shape[0] - 1)
        bkg_center = bk[iy, ix].astype(np.float64)

    (flux_aper, var_aper, flux_auto, var_auto, kron, flux_iso, var_iso, isoarea, npix,
     peak, thresh, fwhm, iso, flux_radius, xwin, ywin, snr_win, dbkg,
     mflags) = _kernels.measure_objects(
        data, rms, ddata, drms, seg, pf, has_pf,
        x, y, a, b, cxx, cyy, cxy, bxmin, bxmax, bymin, bymax, bkg_center,
        mode, weighted, backnoise2, gainflag, float(gain), backnoise2, float(threshfac),
        float(np.float32(field_thresh)), float(satur), radii, float(autoparams[0]),
        float(autoparams[1]), float(autoapers[0]), float(autoapers[1]), fluxfrac,
        local_back, int(params["BACKPHOTO_THICK"]), oxmin, oxmax, oymin, oymax, yblank)

    zp = float(params["MAG_ZEROPOINT"])
    err_aper = np.sqrt(var_aper)
    err_auto = np.sqrt(var_auto)
    err_iso = np.sqrt(var_iso)
    # SExtractor stores these fluxes in single precision
    flux_auto32 = flux_auto.astype(np.float32).astype(np.float64)
    flux_iso32 = flux_iso.astype(np.float32).astype(np.float64)
    mag_aper, magerr_aper = _mags(flux_aper.astype(np.float32), err_aper, zp)
    mag_auto, magerr_auto = _mags(flux_auto32, err_auto, zp)
    mag_iso, magerr_iso = _mags(flux_iso32, err_iso, zp)
    if "sexflags" in objects.dtype.names:
        # galseg's engine gives SExtractor's detection bits (incl. 32) directly
        det_flags = np.asarray(objects["sexflags"]).astype(np.int64)
    else:
        det_flags = sep_flags_to_sextractor(objects["flag"])
    flags = det_flags | mflags
    crowded = (flags & _kernels.FLAG_CROWDED) != 0
    fcor, ecor = _isocor(flux_iso, var_iso, npix, np.asarray(objects["thresh"], dtype=np.float64))
    flux_best = np.where(crowded, fcor.astype(np.float32), flux_auto32)
    err_best = np.where(crowded, ecor, err_auto)
    mag_best, magerr_best = _mags(flux_best, err_best, zp)

    pixscale = _pixel_scale(params, wcs, shape)
    seeing = float(params["SEEING_FWHM"])
    if n == 0:
        cstar = np.zeros(0, dtype=np.float32)
    elif pixscale > 0 and seeing > 0:
        network = load_nnw(nnw_path(params))
        cstar = class_star(iso, peak, field_thresh, seeing, pixscale, network)
    else:
        warnings.warn("CLASS_STAR set to NaN: it needs SEEING_FWHM > 0 and a pixel scale "
                      "(PIXEL_SCALE > 0 or a celestial WCS)", stacklevel=2)
        cstar = np.full(n, np.nan, dtype=np.float32)

    ra, dec = _world_j2000(wcs, x, y)

    theta = np.degrees(np.asarray(objects["theta"], dtype=np.float64))
    af = a.astype(np.float32)
    bf = b.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        elong = (af / bf).astype(np.float32)
    if len(fluxfrac) == 1:
        fr = flux_radius[:, 0].astype(np.float32)
    else:
        fr = flux_radius.astype(np.float32)

    pix = u.pix
    t = Table()
    t["NUMBER"] = np.arange(1, n + 1, dtype=np.int32)
    t["X_IMAGE"] = u.Quantity(x + 1.0, pix)
    t["Y_IMAGE"] = u.Quantity(y + 1.0, pix)
    t["ALPHA_J2000"] = u.Quantity(ra, u.deg)
    t["DELTA_J2000"] = u.Quantity(dec, u.deg)
    t["MAG_APER"] = u.Quantity(mag_aper, u.mag)
    t["FLUX_APER"] = u.Quantity(flux_aper.astype(np.float32), u.ct)
    t["MAGERR_APER"] = u.Quantity(magerr_aper, u.mag)
    t["FLUXERR_APER"] = u.Quantity(err_aper.astype(np.float32), u.ct)
    t["MAG_AUTO"] = u.Quantity(mag_auto, u.mag)
    t["MAGERR_AUTO"] = u.Quantity(magerr_auto, u.mag)
    t["FLUX_AUTO"] = u.Quantity(flux_auto.astype(np.float32), u.ct)
    t["FLUXERR_AUTO"] = u.Quantity(err_auto.astype(np.float32), u.ct)
    t["MAG_BEST"] = u.Quantity(mag_best, u.mag)
    t["MAGERR_BEST"] = u.Quantity(magerr_best, u.mag)
    t["MAG_ISO"] = u.Quantity(mag_iso, u.mag)
    t["MAGERR_ISO"] = u.Quantity(magerr_iso, u.mag)
    t["FLUX_ISO"] = u.Quantity(flux_iso.astype(np.float32), u.ct)
    t["FLUXERR_ISO"] = u.Quantity(err_iso.astype(np.float32), u.ct)
    t["KRON_RADIUS"] = kron.astype(np.float32)
    t["FLUX_RADIUS"] = u.Quantity(fr, pix)
    t["FWHM_IMAGE"] = u.Quantity(fwhm.astype(np.float32), pix)
    t["CLASS_STAR"] = cstar
    t["SNR_WIN"] = snr_win.astype(np.float32)
    t["XWIN_IMAGE"] = u.Quantity(xwin + 1.0, pix)
    t["YWIN_IMAGE"] = u.Quantity(ywin + 1.0, pix)
    t["ELONGATION"] = elong
    t["THETA_IMAGE"] = u.Quantity(theta.astype(np.float32), u.deg)
    t["A_IMAGE"] = u.Quantity(af, pix)
    t["B_IMAGE"] = u.Quantity(bf, pix)
    t["FLAGS"] = flags.astype(np.int16)
    t["ISOAREA_IMAGE"] = u.Quantity(isoarea.astype(np.int32), pix ** 2)
    for name, fld in (("XMIN_IMAGE", "xmin"), ("XMAX_IMAGE", "xmax"),
                      ("YMIN_IMAGE", "ymin"), ("YMAX_IMAGE", "ymax")):
        t[name] = u.Quantity(np.asarray(objects[fld], dtype=np.int32) + 1, pix)
    t.meta.update({
        "GAIN": float(gain), "SATURATE": float(satur), "PIXSCALE": float(pixscale),
        "BACKSIG": backsig, "MASKTYPE": mask_type, "BACKPHOT": backphoto,
        "MAGZERO": zp, "APERTURES": list(map(float, apertures)),
        "FLUXFRAC": list(map(float, fluxfrac)),
    })
    return t
