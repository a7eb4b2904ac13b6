"""``method="photutils"``: detection and measurement with photutils 3.

This backend reproduces galseg's SExtractor-named catalogue with the
`photutils.segmentation` tools, as an independent cross-check of the sep
engine and as a pure-Python alternative:

* background: ``BACK_TYPE MANUAL`` subtracts ``BACK_VALUE``; ``AUTO`` uses
  `photutils.background.Background2D` on ``BACK_SIZE`` boxes with the
  SExtractor mode estimator and a ``BACK_FILTERSIZE`` median filter;
* detection: the background-subtracted image is correlated with the
  ``FILTER_NAME`` kernel (zero outside the image, as SExtractor's filter) and
  `~photutils.segmentation.detect_sources` keeps ``DETECT_MINAREA``
  8-connected pixels where the *filtered* image exceeds ``DETECT_THRESH``
  times the square root of the variance map filtered with the same kernel
  (``THRESH_TYPE RELATIVE``, as SExtractor's ``scan.c``) or ``DETECT_THRESH``
  itself (``ABSOLUTE``);
* deblending: `~photutils.segmentation.deblend_sources` on the filtered image
  with ``DEBLEND_NTHRESH`` exponentially spaced levels and contrast
  ``DEBLEND_MINCONT``;
* measurement: `~photutils.segmentation.SourceCatalog`: photometry on the
  unfiltered background-subtracted image, centroids and shape moments
  (X/Y_IMAGE, A/B/THETA_IMAGE, hence the Kron ellipse) on the *filtered*
  image, as SExtractor (``scan.c`` ``preanalyse`` weights the moments with
  the filtered values), neighbours handled per ``MASK_TYPE`` (``CORRECT`` ->
  ``"correct"``, ``BLANK`` -> ``"mask"``, ``NONE`` -> ``"none"``).  Error
  maps are turned into variances, and ``MAP_WEIGHT``/``MAP_VAR`` rescaled,
  by galseg's SExtractor-faithful :mod:`galseg.extract.weights`.

Known differences from SExtractor 2.25
--------------------------------------
* No ``CLEAN`` step (photutils has none): spurious detections in the wings of
  bright objects are kept.
* photutils' deblending tree differs in detail from SExtractor's
  (``deblend.c``), so close pairs may split differently.
* ``FLUX_RADIUS`` is photutils' circular radius enclosing the fraction of the
  Kron flux (SExtractor integrates over the same kind of profile but with its
  own sub-pixel scheme); Kron radii above 6 are NaN in photutils.
* ``FWHM_IMAGE`` and ``ISOAREA_IMAGE`` follow SExtractor's definitions
  (``analyse.c``: a Gaussian fit of ``log(I)`` against ``r**2`` over pixels
  above ``max(peak/5, threshold)``, and the count of segment pixels whose
  unfiltered value exceeds the analysis threshold), computed here with
  per-label sums.
* ``FLAGS`` carries 2 (deblended), 4 (saturated), 8 (touches the border)
  and 16 (a circular aperture, the Kron search/measurement ellipse or the
  FLUX_RADIUS growth-curve disc leaves the image, by SExtractor's integer
  box rules); 1 (crowded) is never set.
* ``BACK_TYPE AUTO`` uses photutils' `Background2D` (SExtractor mode
  estimator, median-filtered mesh), not SExtractor's exact histogram mode and
  spline: on sep's reference image the two maps differ by up to 0.2 sigma.
* Pixels without weight (or non-finite) are masked, never interpolated
  (SExtractor's ``INTERP_TYPE``), and ``WEIGHT_THRESH`` is not applied.
* ``CLASS_STAR`` and ``SNR_WIN`` are not computed (NaN, listed in
  ``meta["missing_columns"]``); ``XWIN_IMAGE``/``YWIN_IMAGE`` are photutils'
  windowed centroids.
* With ``GAIN > 0`` the Poisson term is added per pixel to the error map
  (`photutils.utils.calc_total_error`), without SExtractor's
  ``WEIGHT_GAIN`` rescaling.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
from astropy import units as u
from astropy.table import Table
from scipy import ndimage

from ..params import Params
from ..presets import filter_kernel, load_config
from ..result import ExtractionResult

__all__ = ["run", "CATALOG_COLUMNS", "MISSING_COLUMNS"]

#: Columns this backend cannot compute: filled with NaN.
MISSING_COLUMNS = ("CLASS_STAR", "SNR_WIN")

#: Output columns in order: name -> (dtype, unit).  Aperture columns are 2-D.
CATALOG_COLUMNS: dict[str, tuple[str, Any]] = {
    "NUMBER": ("i4", None),
    "X_IMAGE": ("f8", u.pix),
    "Y_IMAGE": ("f8", u.pix),
    "XWIN_IMAGE": ("f8", u.pix),
    "YWIN_IMAGE": ("f8", u.pix),
    "ALPHA_J2000": ("f8", u.deg),
    "DELTA_J2000": ("f8", u.deg),
    "FLUX_APER": ("f4", u.ct),
    "FLUXERR_APER": ("f4", u.ct),
    "MAG_APER": ("f4", u.mag),
    "MAGERR_APER": ("f4", u.mag),
    "FLUX_AUTO": ("f4", u.ct),
    "FLUXERR_AUTO": ("f4", u.ct),
    "MAG_AUTO": ("f4", u.mag),
    "MAGERR_AUTO": ("f4", u.mag),
    "KRON_RADIUS": ("f4", None),
    "FLUX_ISO": ("f4", u.ct),
    "FLUXERR_ISO": ("f4", u.ct),
    "MAG_ISO": ("f4", u.mag),
    "MAGERR_ISO": ("f4", u.mag),
    "FLUX_RADIUS": ("f4", u.pix),
    "FWHM_IMAGE": ("f4", u.pix),
    "A_IMAGE": ("f4", u.pix),
    "B_IMAGE": ("f4", u.pix),
    "THETA_IMAGE": ("f4", u.deg),
    "ELONGATION": ("f4", None),
    "ISOAREA_IMAGE": ("i4", u.pix ** 2),
    "CLASS_STAR": ("f4", None),
    "SNR_WIN": ("f4", None),
    "FLAGS": ("i2", None),
    "XMIN_IMAGE": ("i4", u.pix),
    "YMIN_IMAGE": ("i4", u.pix),
    "XMAX_IMAGE": ("i4", u.pix),
    "YMAX_IMAGE": ("i4", u.pix),
}

_APERTURE = ("FLUX_APER", "FLUXERR_APER", "MAG_APER", "MAGERR_APER")
_WEIGHT_INPUT = {"MAP_RMS": "rms", "MAP_WEIGHT": "wht", "MAP_VAR": "var"}
_MASK_METHOD = {"CORRECT": "correct", "BLANK": "mask", "NONE": "none"}

# SExtractor flag bits (define.h / types.h)
_OBJ_MERGED = 2
_OBJ_SATUR = 4
_OBJ_TRUNC = 8
_OBJ_APERT_PB = 16

#: SExtractor's "no data" variance (define.h BIG), as galseg.extract.background.
_BIG = 1e30
#: SExtractor's MAG_AUTO search radius in sigmas (photom.h KRON_NSIG).
_KRON_NSIG = 6.0


def _float_image(arr, what: str, shape=None) -> np.ndarray:
    """A native-order float32 *copy* of a 2-D input (the caller's array is never touched)."""
    out = np.array(arr, dtype=np.float32, copy=True, order="C")
    if out.ndim != 2:
        raise ValueError(f"{what} must be a 2-D image, got shape {out.shape}")
    if shape is not None and out.shape != shape:
        raise ValueError(f"{what} map shape {out.shape} differs from sci shape {shape}")
    return out


def _require_skimage() -> None:
    """photutils deblends with scikit-image's watershed: fail early and clearly."""
    import importlib.util

    if importlib.util.find_spec("skimage") is None:
        raise ImportError(
            "method='photutils' needs scikit-image for deblending "
            "(pip install scikit-image), or DEBLEND_MINCONT 1 to switch deblending off"
        )


def _weight_type(params: Params) -> str:
    types = params["WEIGHT_TYPE"] or ("NONE",)
    wtype = types[0].upper()
    if wtype not in (*_WEIGHT_INPUT, "NONE", "BACKGROUND"):
        raise ValueError(
            f"unsupported WEIGHT_TYPE {wtype!r} for method='photutils' "
            "(use NONE, BACKGROUND, MAP_RMS, MAP_WEIGHT or MAP_VAR)"
        )
    return wtype


def _background2d(data: np.ndarray, valid: np.ndarray, params: Params):
    """photutils `Background2D` with SExtractor's estimators and mesh settings."""
    from astropy.stats import SigmaClip
    from photutils.background import Background2D, SExtractorBackground, StdBackgroundRMS

    size = int(params["BACK_SIZE"])
    box = (min(size, data.shape[0]), min(size, data.shape[1]))
    fsize = max(1, int(params["BACK_FILTERSIZE"]))
    fthresh = params["BACK_FILTTHRESH"] or None
    clip = SigmaClip(sigma=3.0, maxiters=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return Background2D(
            data,
            box,
            mask=~valid,
            filter_size=(fsize, fsize),
            filter_threshold=fthresh,
            sigma_clip=clip,
            bkg_estimator=SExtractorBackground(sigma_clip=None),
            bkg_rms_estimator=StdBackgroundRMS(sigma_clip=None),
            exclude_percentile=50.0,
        )


def _error_map(sci, valid, weight_type, maps, params, timings) -> tuple[np.ndarray, dict]:
    """(absolute per-pixel variance, info); ``BIG`` where a pixel has no weight.

    The weight-to-variance conversion and the ``RESCALE_WEIGHTS`` factor are
    galseg's SExtractor-faithful ones (:mod:`galseg.extract.weights`,
    :mod:`galseg.extract.background`), so that this backend and the sep
    engine see the same noise.
    """
    from ..background import BIG, mesh_statistics
    from ..weights import raw_variance, rescale_factor, weight_threshold

    info: dict[str, Any] = {"weight_type": weight_type}
    t0 = time.perf_counter()
    mesh_kw = dict(back_size=params["BACK_SIZE"], filter_size=params["BACK_FILTERSIZE"],
                   filter_thresh=params["BACK_FILTTHRESH"])
    if weight_type in _WEIGHT_INPUT:
        key = _WEIGHT_INPUT[weight_type]
        if maps[key] is None:
            raise ValueError(
                f"WEIGHT_TYPE {weight_type} needs the {key!r} error map, which was not given"
            )
        arr = np.asarray(maps[key])
        if arr.shape != sci.shape:
            raise ValueError(f"{key} map shape {arr.shape} differs from sci shape {sci.shape}")
        var, nodata = raw_variance(weight_type, arr)
        var = var.copy() if np.shares_memory(var, arr) else var
        if weight_type != "MAP_RMS" and params["RESCALE_WEIGHTS"]:
            wthresh = weight_threshold(weight_type, params)
            image_mesh, weight_mesh = mesh_statistics(
                sci, valid=valid & ~nodata, wvar=var, wthresh=wthresh, **mesh_kw)
            sigfac = rescale_factor(image_mesh, weight_mesh)
            good = ~nodata
            var[good] *= np.float32(sigfac * sigfac)
            info["weight_scale"] = sigfac
        info["bad_weight_pixels"] = int(nodata.sum())
    elif weight_type == "BACKGROUND":
        sky = _background2d(np.where(valid, sci, 0.0), valid, params)
        var = np.asarray(sky.background_rms, dtype=np.float32) ** 2
    else:
        # No error map: SExtractor's global background sigma for every pixel.
        image_mesh, _ = mesh_statistics(sci, valid=valid, **mesh_kw)
        sigma = float(image_mesh.backsig)
        var = np.full(sci.shape, np.float32(sigma) ** 2, dtype=np.float32)
        info["global_rms"] = sigma
    var[~valid] = np.float32(BIG)
    timings["weights_s"] = time.perf_counter() - t0
    return var, info


def _magnitudes(flux, fluxerr, zeropoint: float) -> tuple[np.ndarray, np.ndarray]:
    """SExtractor magnitudes: 99 where the flux is not positive; NaN stays NaN."""
    flux = np.asarray(flux, dtype=np.float64)
    fluxerr = np.asarray(fluxerr, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        pos = flux > 0
        mag = np.where(pos, zeropoint - 2.5 * np.log10(np.where(pos, flux, 1.0)), 99.0)
        magerr = np.where(pos, 1.086 * fluxerr / np.where(pos, flux, 1.0), 99.0)
    nan = np.isnan(flux)
    mag[nan] = np.nan
    magerr[nan] = np.nan
    return mag, magerr


def _empty_catalog(naper: int, nfrac: int) -> Table:
    cat = Table()
    for name, (dtype, unit) in CATALOG_COLUMNS.items():
        shape = (0, naper) if name in _APERTURE else (0,)
        if name == "FLUX_RADIUS" and nfrac > 1:
            shape = (0, nfrac)
        cat[name] = np.zeros(shape, dtype=dtype)
        if unit is not None:
            cat[name].unit = unit
    return cat


def _label_sums(labels_flat, weights, n):
    return np.bincount(labels_flat, weights=weights, minlength=n + 1)[1:]


def _sextractor_shape_extras(data, err, seg, nlab, xc, yc, a, b, params):
    """ISOAREA_IMAGE, FWHM_IMAGE, peak and per-object threshold, SExtractor's way.

    All per-object reductions are ``np.bincount`` / ``ndimage`` sums over the
    segment pixels (compiled), never a loop over objects.
    """
    sel = seg > 0
    lab = seg[sel].astype(np.int64)
    pix = data[sel].astype(np.float64)
    noise = err[sel].astype(np.float64)
    relative = params["THRESH_TYPE"].upper() != "ABSOLUTE"
    athresh = params["ANALYSIS_THRESH"]
    pthresh = athresh * noise if relative else np.full_like(pix, athresh)

    isoarea = _label_sums(lab, (pix > pthresh).astype(np.float64), nlab).astype(np.int64)
    index = np.arange(1, nlab + 1)
    peak = np.asarray(ndimage.maximum(data, seg, index), dtype=np.float64)
    finite_thresh = np.where(np.isfinite(pthresh), pthresh, np.inf)
    thresh = np.asarray(ndimage.minimum(finite_thresh, lab, index), dtype=np.float64)

    # FWHM (analyse.c): weighted LSQ fit of log(I) = c - b r^2 over pixels
    # brighter than max(peak/5, threshold) and below saturation.
    thresh0 = np.maximum(peak / 5.0, thresh)
    sat = params["SATUR_LEVEL"]
    i = lab - 1
    use = (pix > thresh0[i]) & (pix < sat) & (thresh0[i] > 0)
    ys, xs = np.nonzero(sel)
    lu = lab[use]
    pu = pix[use]
    d2 = (xs[use] - xc[lu - 1]) ** 2 + (ys[use] - yc[lu - 1]) ** 2
    w = pu * pu
    lp = np.log(pu)
    s = _label_sums(lu, w, nlab)
    sx = _label_sums(lu, d2 * w, nlab)
    sxx = _label_sums(lu, d2 * d2 * w, nlab)
    sy = _label_sums(lu, lp * w, nlab)
    sxy = _label_sums(lu, lp * d2 * w, nlab)
    det = s * sxx - sx * sx
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = -(s * sxy - sx * sy) / det
        bmax = 1.0 / (13.0 * a * b)
        slope = np.where(slope < bmax, bmax, slope)
        fwhm = 1.6651 / np.sqrt(slope)
        fwhm = np.where(fwhm > 0, fwhm - 1.0 / (4.0 * fwhm), fwhm)
    fwhm = np.where((np.abs(det) > 0) & (thresh0 > 0) & np.isfinite(fwhm), fwhm, 0.0)
    return isoarea, fwhm, peak


def _world(x0, y0, wcs, header):
    """(ra, dec) in degrees from 0-based pixels, or None without a celestial WCS."""
    if wcs is None and header is not None:
        from astropy.wcs import WCS, FITSFixedWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            try:
                candidate = WCS(header)
            except Exception:  # a malformed header simply has no usable WCS
                candidate = None
        if candidate is not None and candidate.has_celestial:
            wcs = candidate.celestial
    if wcs is None:
        return None
    if getattr(wcs, "has_celestial", True) is False:
        return None
    ra, dec = wcs.pixel_to_world_values(x0, y0)
    return np.asarray(ra, dtype=np.float64), np.asarray(dec, dtype=np.float64)


def run(
    sci,
    *,
    rms=None,
    wht=None,
    var=None,
    params: Params | str | Mapping[str, Any],
    header=None,
    wcs=None,
    mask=None,
) -> ExtractionResult:
    """Detect and measure sources with photutils, SExtractor-named.

    Parameters
    ----------
    sci : 2-D array
        Science image (any numeric dtype or byte order; never modified).
    rms, wht, var : 2-D array, optional
        Error maps; the one used follows ``params["WEIGHT_TYPE"][0]``:
        ``MAP_RMS`` -> ``rms``; ``MAP_WEIGHT`` -> ``wht`` (converted to
        ``1/sqrt(wht)`` and, with ``RESCALE_WEIGHTS Y``, scaled to the measured
        sky noise as SExtractor does); ``MAP_VAR`` -> ``var``.  ``NONE`` and
        ``BACKGROUND`` use the global background sigma of the image.
        Pixels with zero weight (infinite or non-finite noise) are masked.
    params : Params, preset name, .sex path or mapping
        SExtractor parameters (through `~galseg.extract.presets.load_config`).
    header : `~astropy.io.fits.Header`, optional
        Used for the WCS when ``wcs`` is not given.
    wcs : `~astropy.wcs.WCS`, optional
        Celestial WCS for ``ALPHA_J2000``/``DELTA_J2000`` (NaN without one).
    mask : 2-D bool array, optional
        True where pixels must be ignored (in addition to non-finite ``sci``).

    Returns
    -------
    ExtractionResult
        ``segmap`` (int32, label == ``NUMBER``, 1..N), ``background``
        (float32 map), ``catalog`` (columns of :data:`CATALOG_COLUMNS`, the
        aperture columns with one entry per ``PHOT_APERTURES`` diameter),
        ``rms`` (the float32 noise map used, ``inf`` where masked) and
        ``meta`` with ``method``, ``version``, ``timings``, ``nobj``,
        ``weight_type``, ``missing_columns`` and ``deviations``.

    Raises
    ------
    ValueError
        For a missing or mis-shaped error map, an unsupported ``WEIGHT_TYPE``
        or ``BACK_TYPE``, or a mask of the wrong shape.
    """
    import photutils
    from photutils.segmentation import SegmentationImage, SourceCatalog, deblend_sources
    from photutils.segmentation import detect_sources
    from photutils.utils import NoDetectionsWarning, calc_total_error

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    params = load_config(params)
    image = _float_image(sci, "sci")
    shape = image.shape
    valid = np.isfinite(image)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != shape:
            raise ValueError(f"mask shape {mask.shape} differs from sci shape {shape}")
        valid &= ~mask
    image[~valid] = 0.0

    weight_type = _weight_type(params)
    variance, winfo = _error_map(image, valid, weight_type,
                                 {"rms": rms, "wht": wht, "var": var}, params, timings)
    valid &= variance < np.float32(_BIG)
    with np.errstate(invalid="ignore"):
        err = np.where(valid, np.sqrt(variance), np.float32(np.inf)).astype(np.float32)

    # Background
    t0 = time.perf_counter()
    back_type = (params["BACK_TYPE"] or ("AUTO",))[0].upper()
    if back_type == "MANUAL":
        background = np.full(shape, params["BACK_VALUE"][0] if params["BACK_VALUE"] else 0.0,
                             dtype=np.float32)
    elif back_type == "AUTO":
        if valid.any():
            bkg = _background2d(np.where(valid, image, 0.0), valid, params)
            background = np.asarray(bkg.background, dtype=np.float32)
        else:
            background = np.zeros(shape, dtype=np.float32)
    else:
        raise ValueError(f"unsupported BACK_TYPE {back_type!r} (use AUTO or MANUAL)")
    data = image - background
    data[~valid] = 0.0
    timings["background_s"] = time.perf_counter() - t0

    # Detection on the filtered image
    t0 = time.perf_counter()
    kernel = filter_kernel(params)
    if kernel is not None:
        # SExtractor correlates (no kernel flip) and treats outside pixels as 0.
        conv = ndimage.correlate(data, kernel, mode="constant", cval=0.0)
    else:
        conv = data
    relative = params["THRESH_TYPE"].upper() != "ABSOLUTE"
    if relative:
        # SExtractor (scan.c) filters the variance map with the same kernel and
        # thresholds the filtered image at DETECT_THRESH * sqrt(filtered var);
        # unweighted pixels carry BIG variance, which keeps detections off them.
        fvar = variance if kernel is None else ndimage.correlate(
            variance, kernel, mode="constant", cval=0.0)
        with np.errstate(invalid="ignore"):
            threshold = np.float32(params["DETECT_THRESH"]) * np.sqrt(fvar)
        threshold[~np.isfinite(threshold)] = np.inf
    else:
        threshold = np.full(shape, params["DETECT_THRESH"], dtype=np.float32)
    timings["filter_s"] = time.perf_counter() - t0
    minarea = max(1, int(params["DETECT_MINAREA"]))

    t0 = time.perf_counter()
    segm = None
    if valid.any():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NoDetectionsWarning)
            segm = detect_sources(conv, threshold, n_pixels=minarea, connectivity=8,
                                  mask=~valid)
    timings["detect_s"] = time.perf_counter() - t0
    naper = len(params["PHOT_APERTURES"])
    fractions = params["PHOT_FLUXFRAC"] or (0.5,)
    meta: dict[str, Any] = {
        "method": "photutils",
        "version": photutils.__version__,
        "weight_type": weight_type,
        **winfo,
        "back_type": back_type,
        "filter": None if kernel is None else params["FILTER_NAME"],
        "missing_columns": list(MISSING_COLUMNS),
        "deviations": ["no CLEAN", "photutils deblending", "FLAGS bit 1 never set"],
    }

    if segm is None:
        timings["total_s"] = time.perf_counter() - t_start
        meta.update(nobj=0, timings=timings)
        return ExtractionResult(
            segmap=np.zeros(shape, dtype=np.int32), background=background,
            catalog=_empty_catalog(naper, len(fractions)), rms=err, meta=meta,
        )

    # Deblending
    t0 = time.perf_counter()
    parents = segm.data.copy()
    mincont = float(params["DEBLEND_MINCONT"])
    if 0.0 <= mincont < 1.0 and params["DEBLEND_NTHRESH"] > 1:
        _require_skimage()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NoDetectionsWarning)
            segm = deblend_sources(conv, segm, n_pixels=minarea,
                                   n_levels=int(params["DEBLEND_NTHRESH"]),
                                   contrast=mincont, mode="exponential", connectivity=8,
                                   relabel=True, progress_bar=False)
    segm = SegmentationImage(np.ascontiguousarray(segm.data, dtype=np.int32))
    segm.relabel_consecutive()
    seg = np.ascontiguousarray(segm.data, dtype=np.int32)
    nlab = int(segm.n_labels)
    timings["deblend_s"] = time.perf_counter() - t0

    # Measurement
    t0 = time.perf_counter()
    if params["GAIN"] > 0:
        err_phot = calc_total_error(data, np.where(valid, err, 0.0), params["GAIN"])
    else:
        err_phot = np.where(valid, err, 0.0)
    mask_type = params["MASK_TYPE"].upper()
    if mask_type not in _MASK_METHOD:
        raise ValueError(f"unsupported MASK_TYPE {mask_type!r} (use NONE, BLANK or CORRECT)")
    kfact, kmin = (list(params["PHOT_AUTOPARAMS"]) + [2.5, 3.5])[:2]
    autoapers = list(params["PHOT_AUTOAPERS"]) + [0.0, 0.0]
    # SExtractor clamps the *scaled* Kron factor at PHOT_AUTOPARAMS[1]; photutils
    # clamps the unscaled radius, hence the division.  Below half the
    # PHOT_AUTOAPERS estimation diameter both switch to a circular aperture.
    kron_params = (float(kfact), float(kmin) / float(kfact), max(autoapers[1] / 2.0, 0.0))
    cat = SourceCatalog(
        data, segm, convolved_data=conv, error=err_phot, mask=~valid, wcs=None,
        aperture_mask_method=_MASK_METHOD[mask_type], kron_params=kron_params,
        progress_bar=False,
    )
    x0 = np.asarray(cat.x_centroid, dtype=np.float64)
    y0 = np.asarray(cat.y_centroid, dtype=np.float64)
    a = np.asarray(cat.semimajor_axis.value, dtype=np.float64)
    b = np.asarray(cat.semiminor_axis.value, dtype=np.float64)
    theta = np.asarray(cat.orientation.value, dtype=np.float64) % 180.0
    theta = np.where(theta > 90.0, theta - 180.0, theta)

    out = Table()
    out["NUMBER"] = np.asarray(cat.labels, dtype=np.int32)
    out["X_IMAGE"] = x0 + 1.0
    out["Y_IMAGE"] = y0 + 1.0
    out["XWIN_IMAGE"] = np.asarray(cat.x_centroid_win, dtype=np.float64) + 1.0
    out["YWIN_IMAGE"] = np.asarray(cat.y_centroid_win, dtype=np.float64) + 1.0
    world = _world(x0, y0, wcs, header)
    if world is None:
        out["ALPHA_J2000"] = np.full(nlab, np.nan)
        out["DELTA_J2000"] = np.full(nlab, np.nan)
        meta["missing_columns"] += ["ALPHA_J2000", "DELTA_J2000"]
    else:
        out["ALPHA_J2000"], out["DELTA_J2000"] = world

    zp = params["MAG_ZEROPOINT"]
    fa = np.empty((nlab, naper))
    fea = np.empty((nlab, naper))
    for j, diameter in enumerate(params["PHOT_APERTURES"]):
        f, fe = cat.circular_photometry(diameter / 2.0)
        fa[:, j] = np.asarray(f, dtype=np.float64)
        fea[:, j] = np.asarray(fe, dtype=np.float64)
    ma, mea = _magnitudes(fa, fea, zp)
    out["FLUX_APER"], out["FLUXERR_APER"] = fa, fea
    out["MAG_APER"], out["MAGERR_APER"] = ma, mea

    fauto = np.asarray(cat.kron_flux, dtype=np.float64)
    feauto = np.asarray(cat.kron_flux_err, dtype=np.float64)
    out["FLUX_AUTO"], out["FLUXERR_AUTO"] = fauto, feauto
    out["MAG_AUTO"], out["MAGERR_AUTO"] = _magnitudes(fauto, feauto, zp)
    out["KRON_RADIUS"] = kfact * np.asarray(cat.kron_radius.value, dtype=np.float64)

    fiso = np.asarray(cat.segment_flux, dtype=np.float64)
    feiso = np.asarray(cat.segment_flux_err, dtype=np.float64)
    out["FLUX_ISO"], out["FLUXERR_ISO"] = fiso, feiso
    out["MAG_ISO"], out["MAGERR_ISO"] = _magnitudes(fiso, feiso, zp)

    radii = [np.asarray(cat.flux_radius(frac).value, dtype=np.float64) for frac in fractions]
    out["FLUX_RADIUS"] = radii[0] if len(radii) == 1 else np.column_stack(radii)

    isoarea, fwhm, peak = _sextractor_shape_extras(
        data, err, seg, nlab, x0, y0, a, b, params)
    out["FWHM_IMAGE"] = fwhm
    out["A_IMAGE"] = a
    out["B_IMAGE"] = b
    out["THETA_IMAGE"] = theta
    out["ELONGATION"] = np.asarray(cat.elongation, dtype=np.float64)
    out["ISOAREA_IMAGE"] = isoarea
    out["CLASS_STAR"] = np.full(nlab, np.nan)
    out["SNR_WIN"] = np.full(nlab, np.nan)

    xmin = np.asarray(cat.bbox_xmin, dtype=np.int64)
    xmax = np.asarray(cat.bbox_xmax, dtype=np.int64)
    ymin = np.asarray(cat.bbox_ymin, dtype=np.int64)
    ymax = np.asarray(cat.bbox_ymax, dtype=np.int64)
    out["FLAGS"] = _flags(seg, parents, nlab, peak, background, x0, y0, a, b, theta,
                          out["KRON_RADIUS"], xmin, xmax, ymin, ymax, shape, params)
    out["XMIN_IMAGE"], out["YMIN_IMAGE"] = xmin + 1, ymin + 1
    out["XMAX_IMAGE"], out["YMAX_IMAGE"] = xmax + 1, ymax + 1

    for name, (dtype, unit) in CATALOG_COLUMNS.items():
        col = out[name]
        if col.dtype != np.dtype(dtype):
            out[name] = np.asarray(col).astype(dtype)
        if unit is not None:
            out[name].unit = unit
    timings["measure_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start
    meta.update(nobj=nlab, timings=timings)
    return ExtractionResult(
        segmap=seg, background=background, catalog=out,
        rms=err, meta=meta,
    )


def _flags(seg, parents, nlab, peak, background, x0, y0, a, b, theta_deg, kron,
           xmin, xmax, ymin, ymax, shape, params) -> np.ndarray:
    """SExtractor FLAGS bits 2, 4, 8 and 16, vectorised over objects."""
    h, w = shape
    flags = np.zeros(nlab, dtype=np.int16)

    # 2: the object shares its detection segment with another one.
    sel = seg > 0
    stride = np.int64(nlab + 1)
    pairs = np.unique(parents[sel].astype(np.int64) * stride + seg[sel])
    parent_ids, child_ids = pairs // stride, pairs % stride
    children = np.bincount(parent_ids, minlength=int(parents.max()) + 1)
    parent_of = np.zeros(nlab + 1, dtype=np.int64)
    parent_of[child_ids] = parent_ids
    flags[children[parent_of[1:]] > 1] |= _OBJ_MERGED

    # 4: a pixel reaches the saturation level (in sky-subtracted units).
    back_peak = np.asarray(
        ndimage.maximum(background, seg, np.arange(1, nlab + 1)), dtype=np.float64)
    flags[peak + back_peak >= params["SATUR_LEVEL"]] |= _OBJ_SATUR

    # 8: the isophotal footprint touches the image border.
    trunc = (xmin == 0) | (ymin == 0) | (xmax == w - 1) | (ymax == h - 1)
    flags[trunc] |= _OBJ_TRUNC

    # 16: the largest circular aperture or the Kron ellipse leaves the image
    # (photom.c: integer pixel limits of the integration box).
    # Circular integrations (photom.c computeaperflux; growth.c, which builds
    # the FLUX_RADIUS growth curve out to max(6 A, PHOT_AUTOAPERS[0]) + 1.5)
    # test C-truncated integer limits.
    autoapers = list(params["PHOT_AUTOAPERS"]) + [0.0, 0.0]
    radii = [np.full(nlab, max(params["PHOT_APERTURES"]) / 2.0)] if params["PHOT_APERTURES"] else []
    radii.append(np.maximum(_KRON_NSIG * a, autoapers[0]) + 1.5)
    for r in radii:
        with np.errstate(invalid="ignore"):
            pb = (np.trunc(x0 - r + 0.499999) < 0) | (np.trunc(x0 + r + 1.499999) > w) \
                | (np.trunc(y0 - r + 0.499999) < 0) | (np.trunc(y0 + r + 1.499999) > h)
        flags[pb] |= _OBJ_APERT_PB
    # computeautoflux: the 6-sigma search ellipse (circle of PHOT_AUTOAPERS[0]/2
    # when smaller), then the Kron ellipse (circle of PHOT_AUTOAPERS[1]/2 when
    # KRON_RADIUS is 0); each box is [RINT(x - dx), RINT(x + dx) + 1).
    kr = np.asarray(kron, dtype=np.float64)
    t = np.deg2rad(theta_deg)
    with np.errstate(invalid="ignore"):
        half_x = np.sqrt((a * np.cos(t)) ** 2 + (b * np.sin(t)) ** 2)
        half_y = np.sqrt((a * np.sin(t)) ** 2 + (b * np.cos(t)) ** 2)
        root_ab = np.sqrt(a * b)
        search_ellipse = _KRON_NSIG * root_ab > autoapers[0] / 2.0
        kron_ellipse = kr > 0
        for use_ellipse, scale, circle in (
            (search_ellipse, _KRON_NSIG, autoapers[0] / 2.0),
            (kron_ellipse, kr, autoapers[1] / 2.0),
        ):
            dx = np.where(use_ellipse, scale * half_x, circle)
            dy = np.where(use_ellipse, scale * half_y, circle)
            out = np.isfinite(dx) & np.isfinite(dy) & (
                (_rint(x0 - dx) < 0) | (_rint(x0 + dx) + 1 > w)
                | (_rint(y0 - dy) < 0) | (_rint(y0 + dy) + 1 > h))
            flags[out] |= _OBJ_APERT_PB
    return flags


def _rint(x):
    """SExtractor's ``RINT``: ``floor(x + 0.5)`` (NaN stays NaN, compares False)."""
    return np.floor(x + 0.5)
