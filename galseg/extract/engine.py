"""The extraction engine: one entry point, three backends.

`run` takes a science image, its noise map and a `~galseg.extract.params.Params`
and returns an `~galseg.extract.result.ExtractionResult`.  ``method="sep"`` is
galseg's own in-process pipeline, faithful to SExtractor 2.25:

1. **background** (:mod:`~galseg.extract.background`): SExtractor's mesh
   statistics, ``BACK_TYPE AUTO`` (mesh map) or ``MANUAL`` (``BACK_VALUE``);
2. **weights** (:mod:`~galseg.extract.weights`): the noise map as SExtractor
   uses it (``MAP_WEIGHT``/``MAP_VAR`` rescaled to the measured noise, no-data
   pixels, ``INTERP_TYPE`` interpolation);
3. **detection** (:mod:`~galseg.extract.detect`): SExtractor's filtering and
   filtered-variance threshold, segmentation and deblending through sep;
4. **cleaning** (:mod:`~galseg.extract.clean`): SExtractor's CLEAN with merging
   and its catalogue order, so that segment label == ``NUMBER`` ==
   SExtractor's ``NUMBER``;
5. **measurement** (:func:`galseg.extract.measure.measure`): the catalogue.

Cost: the pixel work runs in numba kernels on ``numba.get_num_threads()``
threads (`galseg.extract._parallel`), sep on horizontal strips in forked
processes when it has much to do (`galseg.extract.detect.detect`), so that a
whole run costs a fraction of SExtractor's time.  Memory is the other budget:
the science and rms arrays are used as they are whenever SExtractor would not
change them (float32, zero ``BACK_VALUE``, no masked or unusable pixel); the
filtered image and the threshold map exist only a strip of rows at a time
(`galseg.extract.detect.detect_streaming`), so that besides the inputs a run
holds the segmentation map and byte maps (~2 float32 frames).  On a virtual
machine every fresh page of memory costs a page fault, 2-13 us each: at
8192 x 8192 a frame not made is 0.1-0.8 s saved.

``method="sextractor"`` runs the SExtractor binary
(:mod:`galseg.extract.backends.sextractor`) and ``method="photutils"`` the
photutils backend (:mod:`galseg.extract.backends.photutils`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np
import sep

from . import _parallel
from ._kernels import PF_BLANK, PF_MERGED, PF_STUCK
from ._parallel import readonly
from .background import BIG, BackgroundResult, estimate_background, mesh_statistics
from .clean import analyse_detections, clean_and_order, strip_geometry
from .detect import detect_image, detection_kernel, sextractor_pixel_lists
from .params import Params
from .result import ExtractionResult
from .weights import WEIGHT_TYPES, _count_ge, _noise, _scan_rms, _set_where, _variance, \
    interpolate_bad, rescale_factor, rescale_variance, weight_threshold

__all__ = ["run", "detect_sources", "prepare_image", "PreparedImage", "Sources", "METHODS",
           "OBJECT_FIELDS"]

#: Backends of `run`.
METHODS = ("sep", "sextractor", "photutils")

# sep's object flag bits (sep.OBJ_*), which `objects["flag"]` keeps
_SEP_MERGED, _SEP_TRUNC, _SEP_DOVERFLOW, _SEP_SINGU = 1, 2, 4, 8
# SExtractor FLAGS bits set at detection (types.h)
OBJ_MERGED, OBJ_TRUNC, OBJ_ISO_PB, OBJ_DOVERFLOW, OBJ_OVERFLOW = 2, 8, 32, 64, 128

#: Fields of `Sources.objects` (sep's ``extract`` fields first, then SExtractor's).
OBJECT_FIELDS = [
    ("number", np.int32),
    ("thresh", np.float32), ("npix", np.int64), ("tnpix", np.int64),
    ("xmin", np.int64), ("xmax", np.int64), ("ymin", np.int64), ("ymax", np.int64),
    ("x", np.float64), ("y", np.float64), ("x2", np.float64), ("y2", np.float64),
    ("xy", np.float64), ("errx2", np.float64), ("erry2", np.float64), ("errxy", np.float64),
    ("a", np.float32), ("b", np.float32), ("theta", np.float32),
    ("cxx", np.float32), ("cyy", np.float32), ("cxy", np.float32),
    ("cflux", np.float32), ("flux", np.float32), ("cpeak", np.float32), ("peak", np.float32),
    ("xcpeak", np.int64), ("ycpeak", np.int64), ("xpeak", np.int64), ("ypeak", np.int64),
    ("flag", np.int64), ("sexflags", np.int64), ("bkg", np.float32),
    ("abcor", np.float32), ("mthresh", np.float32), ("parent", np.int64),
    ("nmerged", np.int64),
]


@dataclass
class Sources:
    """Detected, deblended and cleaned sources, before measurement.

    Attributes
    ----------
    segmap : ndarray of int32
        Label ``i + 1`` on ``objects[i]`` (== ``NUMBER``), 0 on sky.
    objects : structured ndarray
        One row per source in ``NUMBER`` order, fields `OBJECT_FIELDS`; see
        :func:`detect_sources`.
    pixel_flags : ndarray of uint8
        Per pixel, bit ``PF_BLANK`` (1): blanked while measuring other
        sources (``MASK_TYPE`` BLANK/CORRECT): a pixel above the detection
        threshold, except those of swallowed detections; bit ``PF_MERGED``
        (4): a pixel that CLEAN merged into its source from a swallowed
        detection; bit ``PF_STUCK`` (8, with both others): a merged pixel
        that SExtractor blanks again for good, for its own source too (see
        `stuck_rows`).  `galseg.extract.measure.measure` takes it as
        ``pixel_flags``; `blank` and `own_segmap` are derived from it.
    data : ndarray of float32
        Background-subtracted, interpolated science image (0 where masked).
        Read-only, and the science image itself when nothing had to change
        (float32 input, no masked pixel, zero background, no interpolation).
    rms : ndarray of float32
        Absolute noise per pixel (``inf`` where no data).  Read-only, and the
        ``rms`` argument itself when that is exactly the noise used (float32
        absolute rms without unusable pixels).
    background : BackgroundResult
    filtered : ndarray of float32 or None
        The filtered detection image (`detect_sources`; None from `run`,
        which makes it a strip at a time).
    thresh : float or ndarray of float32 or None
        Detection threshold (per pixel, or constant; None from `run`).
    mask : ndarray of bool
        Pixels with no usable data (user mask, non-finite science value); a
        read-only all-False view when there are none.
    meta : dict
    """

    segmap: np.ndarray
    objects: np.ndarray
    pixel_flags: np.ndarray
    data: np.ndarray
    rms: np.ndarray
    background: BackgroundResult
    filtered: Any
    thresh: Any
    mask: np.ndarray
    meta: dict = field(default_factory=dict)

    @property
    def blank(self) -> np.ndarray:
        """Pixels SExtractor blanks while measuring (bool map, computed)."""
        return (self.pixel_flags & PF_BLANK) != 0

    @property
    def own_segmap(self) -> np.ndarray:
        """Like `segmap` but only on each source's own pixels: pixels that CLEAN
        merged into it from swallowed detections are 0 (int32 map, computed)."""
        return np.where((self.pixel_flags & PF_MERGED) != 0, 0, self.segmap).astype(np.int32)


def _native2d(arr, name, shape=None):
    a = np.asarray(arr)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got shape {a.shape}")
    if shape is not None and a.shape != shape:
        raise ValueError(f"{name} shape {a.shape} differs from the science image shape {shape}")
    return a


@numba.njit(cache=True)
def _nonfinite(image, out):
    """The number of non-finite pixels, and ``out = ~isfinite(image)`` unless
    ``out`` has another size (then only the count)."""
    n = image.size
    store = out.size == n
    count = 0
    for i in range(n):
        bad = not (abs(image[i]) < np.inf)  # NaN too; cheaper than isfinite
        if store:
            out[i] = bad
        count += bad
    return count


def _roots(absorber):
    """Final survivor of every raw object (pointer jumping on the absorber tree)."""
    root = np.where(absorber < 0, np.arange(absorber.size), absorber)
    while True:
        nxt = root[root]
        if np.array_equal(nxt, root):
            return root
        root = nxt


def detect_sources(sci, *, rms=None, wht=None, var=None, params, header=None, mask=None):
    """Background, weights, detection, deblending and CLEAN, SExtractor style.

    Parameters
    ----------
    sci : 2-D array
        Science image, any float dtype and byte order (not modified).
    rms, wht, var : 2-D arrays, optional
        The noise map that ``WEIGHT_TYPE`` asks for: absolute rms
        (``MAP_RMS``), relative inverse variance (``MAP_WEIGHT``) or variance
        (``MAP_VAR``).
    params : Params
    header : FITS header or mapping, optional
        ``GAIN_KEY`` / ``SATUR_KEY`` are read from it as SExtractor does.
    mask : 2-D bool array, optional
        Extra pixels to ignore (as pixels without data: never detected, left
        out of the background, noise ``inf``).

    Returns
    -------
    Sources

    Notes
    -----
    ``objects`` has sep's ``extract`` fields, with SExtractor's values
    (0-based pixel coordinates):

    - ``x``, ``y``, ``x2``, ``y2``, ``xy``, ``a``, ``b``, ``theta`` (radians,
      as sep), ``cxx``, ``cyy``, ``cxy``: the detection moments of the
      filtered image (X_IMAGE, X2_IMAGE, A_IMAGE ...); a deblended source
      keeps its core's barycentre; CLEAN merging leaves them unchanged, as
      SExtractor does;
    - ``npix`` (ISOAREAF_IMAGE), ``tnpix``, ``cflux``, ``flux``: pixel counts
      and filtered / unfiltered sums, ``cpeak`` (+ ``xcpeak``, ``ycpeak``:
      XPEAK/YPEAK_IMAGE) and ``peak``: maxima, and the bounding box, all over
      the source *including* what CLEAN merged into it;
    - ``errx2``, ``erry2``, ``errxy``: ERRX2_IMAGE ... (global noise and gain);
    - ``thresh``: THRESHOLD (the source's lowest detection threshold);
    - ``flag``: sep's bits (1 deblended, 2 truncated, 8 singular moments);
      ``sexflags``: SExtractor's FLAGS bits set at detection (2 deblended,
      8 truncated, 32 isophote incomplete in SExtractor's buffer);
    - ``bkg``: BACKGROUND (the mesh grid interpolated linearly at the centre
      pixel, as SExtractor does even for ``BACK_TYPE MANUAL``);
    - ``abcor``, ``mthresh``: SExtractor's CLEAN inputs; ``parent``: index of
      the detection (8-connected group, in completion order) the source was
      deblended from; ``nmerged``: detections CLEAN merged into it.
    """
    with _parallel.small_pages():
        return _detect_sources(sci, rms=rms, wht=wht, var=var, params=params, header=header,
                               mask=mask, keep_maps=True)


@dataclass
class PreparedImage:
    """An image as SExtractor measures it, without detection (`prepare_image`).

    Attributes
    ----------
    data : ndarray of float32
        Background-subtracted, interpolated image, 0 where masked (read-only).
    rms : ndarray of float32
        Absolute noise per pixel, ``inf`` where no data (read-only).
    background : BackgroundResult
    mask : ndarray of bool
        Pixels with no usable data (read-only; all False when none).
    meta : dict
        ``backsig`` (global background rms), ``weight_scale``,
        ``interpolated_pixels``, ``timings``.
    """

    data: np.ndarray
    rms: np.ndarray
    background: BackgroundResult
    mask: np.ndarray
    meta: dict = field(default_factory=dict)


def prepare_image(sci, *, rms=None, wht=None, var=None, params, mask=None) -> PreparedImage:
    """Background and weights only: the measurement image of dual-image mode.

    SExtractor prepares the measurement image of ``source-extractor
    det.fits,band.fits`` exactly as it prepares a detection image (background,
    ``MAP_WEIGHT`` rescaling, interpolation) and then only measures it; this
    is that preparation, the same code as `detect_sources` runs first.
    Arguments as for `detect_sources`.
    """
    if not isinstance(params, Params):
        params = Params(params)
    with _parallel.small_pages():
        prep = _prepare(sci, rms=rms, wht=wht, var=var, params=params, mask=mask)
        rmsmap = prep.noise_map()
    mask_out = np.broadcast_to(np.False_, prep.data.shape) if prep.hard is None else prep.hard
    meta = {"backsig": float(prep.backsig), "weight_scale": float(prep.sigfac),
            "interpolated_pixels": prep.n_interp, "timings": prep.timings}
    return PreparedImage(readonly(prep.data), readonly(rmsmap), prep.bkg,
                         readonly(mask_out), meta)


def _native_f32(a):
    """``a`` as native C-contiguous float32 (no copy when it already is), and
    whether that is a private copy."""
    out = np.ascontiguousarray(a, dtype=np.float32)
    return out, not np.may_share_memory(out, a)


@dataclass
class _Prepared:
    """The image as SExtractor measures it: steps 1-2 of the engine (background,
    weights), before any detection (see `_prepare`)."""

    data: np.ndarray            # background-subtracted, interpolated, 0 where masked
    hard: np.ndarray | None     # masked pixels (user mask, non-finite values), or None
    wtype: str
    rms_direct: np.ndarray | None  # the rms map itself, when it is exactly the noise
    varmap: np.ndarray | None   # absolute variance, when the rms map cannot serve
    wthresh: float
    image_mesh: Any
    backsig: float
    sigfac: float
    sigfac_measured: float | None
    bkg: BackgroundResult
    n_interp: int
    timings: dict

    @property
    def weighted(self) -> bool:
        return self.varmap is not None or self.rms_direct is not None

    def noise_map(self) -> np.ndarray:
        """The absolute rms map (``inf`` where no data): the rms map itself, or
        the variance map turned into it in place (so call it once, after any
        use of `varmap`)."""
        if self.rms_direct is not None:
            return self.rms_direct
        if self.varmap is not None:
            none = np.zeros(1, np.bool_)
            _noise(self.varmap.reshape(-1),
                   readonly(none if self.hard is None else self.hard).reshape(-1),
                   self.varmap.reshape(-1))
            rmsmap, self.varmap = self.varmap, None
            return rmsmap
        rmsmap = np.full(self.data.shape, np.float32(self.backsig), dtype=np.float32)
        if self.hard is not None:
            rmsmap[self.hard] = np.inf
        return rmsmap


def _prepare(sci, *, rms=None, wht=None, var=None, params, mask=None) -> _Prepared:
    """Background and weights (the engine's steps 1-2): what both detection
    and measurement (also dual-image mode's measurement band) start from."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    sci = _native2d(sci, "sci")
    shape = sci.shape
    # Full-frame arrays are the memory budget: the science image is copied
    # only if a pixel has to change (masked, background, interpolation), the
    # variance map is made only if the rms map cannot serve as it is.
    image, private = _native_f32(sci)
    hard = None
    nhard = int(_nonfinite(readonly(image).reshape(-1), np.zeros(1, np.bool_)))
    if nhard or mask is not None:
        hard = np.empty(shape, np.bool_)
        _nonfinite(readonly(image).reshape(-1), hard.reshape(-1))
        if mask is not None:
            m = _native2d(mask, "mask", shape)
            np.logical_or(hard, m.astype(bool, copy=False), out=hard)
            nhard = int(np.count_nonzero(hard))
    if nhard == 0:
        hard = None
    else:
        if not private:
            image = image.copy()
            private = True
        _set_where(image.reshape(-1), readonly(hard).reshape(-1), np.float32(0.0))

    wtype = params["WEIGHT_TYPE"][0].upper()
    if wtype not in WEIGHT_TYPES:
        raise ValueError(f"WEIGHT_TYPE {params['WEIGHT_TYPE'][0]!r} is not supported by the sep "
                         f"engine; use one of {', '.join(WEIGHT_TYPES)}")
    argname = WEIGHT_TYPES[wtype]
    given = {"rms": rms, "wht": wht, "var": var}
    wmap = None
    if argname is not None:
        wmap = given[argname]
        if wmap is None:
            raise ValueError(f"WEIGHT_TYPE {wtype} needs the {argname!r} argument "
                             f"({argname}=None was given)")
        wmap = _native2d(wmap, argname, shape)
    if params["DETECT_TYPE"].upper() != "CCD":
        raise ValueError("DETECT_TYPE PHOTO is not supported by the sep engine (CCD only)")

    # ---- background statistics (with the raw variance map when weighted)
    wvar0 = nodata = None
    rms_direct = None  # the rms map itself, when it is exactly the noise used
    wthresh = float(np.float32(BIG))
    rescaled = wtype in ("MAP_WEIGHT", "MAP_VAR")
    if wmap is not None:
        wthresh = weight_threshold(wtype, params)
        if wtype == "MAP_RMS" and hard is None and wmap.dtype == np.float32 \
                and wmap.dtype.isnative and wmap.flags.c_contiguous:
            nbad, ninexact = _scan_rms(readonly(wmap).reshape(-1), np.float32(wthresh))
            if nbad == 0 and ninexact == 0:
                # every variance is below WEIGHT_THRESH: nothing is left out
                # of the statistics or interpolated, and sqrt(rms**2) == rms
                rms_direct = wmap
        if rms_direct is None:
            a = wmap if (wmap.dtype.kind == "f" and wmap.dtype.isnative
                         and wmap.flags.c_contiguous) else np.ascontiguousarray(
                wmap, dtype=np.float64 if wmap.dtype.kind != "f" else
                wmap.dtype.newbyteorder("="))
            wvar0, nodata, _nbad = _variance(wtype, a, want_nodata=rescaled)
            if hard is not None:
                _set_where(wvar0.reshape(-1), readonly(hard).reshape(-1), np.float32(BIG))
    image_mesh, weight_mesh = mesh_statistics(
        image, valid=None if hard is None else ~hard, wvar=wvar0, wthresh=wthresh,
        back_size=params["BACK_SIZE"], filter_size=params["BACK_FILTERSIZE"],
        filter_thresh=params["BACK_FILTTHRESH"], weight_stats=rescaled)
    backsig = image_mesh.backsig
    sigfac = 1.0
    sigfac_measured = None
    if rescaled:
        sigfac_measured = rescale_factor(image_mesh, weight_mesh)
        if params["RESCALE_WEIGHTS"]:
            sigfac = sigfac_measured
        else:
            backsig = float(np.float32(backsig) / np.float32(sigfac_measured))
    need_rms_map = wtype == "BACKGROUND"
    bkg = estimate_background(image, params, mesh=image_mesh, want_rms=need_rms_map)
    timings["background"] = time.perf_counter() - t0

    # ---- absolute variance, interpolation of no-data pixels
    t1 = time.perf_counter()
    back = bkg.background
    const_back = back.strides == (0, 0)
    if const_back and float(back.flat[0]) == 0.0:
        data = image  # x - 0 == x: nothing to subtract
    elif private:
        data = image
        data -= back
    else:
        data = np.subtract(image, back, dtype=np.float32)
        private = True
    varmap = None
    n_interp = 0
    if wvar0 is not None:
        varmap = rescale_variance(wtype, wvar0, wmap, nodata, sigfac)
    elif need_rms_map:  # BACKGROUND: the interpolated mesh-sigma map, squared
        varmap = np.square(bkg.rms, dtype=np.float32)
    del nodata
    if varmap is not None and hard is not None:
        _set_where(varmap.reshape(-1), readonly(hard).reshape(-1), np.float32(BIG))
    if varmap is not None:
        interp = params["INTERP_TYPE"][0].upper() if params["INTERP_TYPE"] else "NONE"
        if interp not in ("NONE", "VAR_ONLY", "ALL"):
            raise ValueError(f"INTERP_TYPE must be NONE, VAR_ONLY or ALL, got {interp!r}")
        if interp != "NONE" and wtype != "BACKGROUND":
            nbad = int(_count_ge(varmap.reshape(-1), np.float32(wthresh)))
            if nbad:
                if not private and interp == "ALL":
                    data = data.copy()
                    private = True
                interpolate_bad(data, varmap, wthresh, xlag=params["INTERP_MAXXLAG"],
                                ylag=params["INTERP_MAXYLAG"], with_data=(interp == "ALL"))
                n_interp = nbad - int(_count_ge(varmap.reshape(-1), np.float32(wthresh)))
    if hard is not None:
        # masked pixels may have been interpolated: no data again (as
        # SExtractor's noise map), before filtering
        if varmap is not None:
            _set_where(varmap.reshape(-1), readonly(hard).reshape(-1), np.float32(BIG))
        if not private:
            data = data.copy()
            private = True
        _set_where(data.reshape(-1), readonly(hard).reshape(-1), np.float32(0.0))
    timings["weights"] = time.perf_counter() - t1
    return _Prepared(data, hard, wtype, rms_direct, varmap, wthresh, image_mesh, backsig,
                     sigfac, sigfac_measured, bkg, n_interp, timings)


def _detect_sources(sci, *, rms=None, wht=None, var=None, params, header=None, mask=None,
                    keep_maps=True):
    if not isinstance(params, Params):
        params = Params(params)
    prep = _prepare(sci, rms=rms, wht=wht, var=var, params=params, mask=mask)
    data, hard, wtype = prep.data, prep.hard, prep.wtype
    backsig, image_mesh, bkg, timings = prep.backsig, prep.image_mesh, prep.bkg, prep.timings
    shape = data.shape
    height = shape[0]

    # ---- filtering, threshold, segmentation + deblending (sep)
    t2 = time.perf_counter()
    kernel = detection_kernel(params)
    weighted = prep.weighted

    def detection(**kw):
        return detect_image(data, params, kernel=kernel, rms=prep.rms_direct, var=prep.varmap,
                            backsig=backsig, **kw)

    det, filtered, thresh = detection(keep_maps=keep_maps)
    timings["detect"] = time.perf_counter() - t2

    # ---- SExtractor's pixel lists and sharing, analysis, CLEAN and order
    t4 = time.perf_counter()
    from .measure import resolve_gain_saturation

    gain, satur = resolve_gain_saturation(params, header)
    *lists, centre, share = sextractor_pixel_lists(det, data, params, weighted=weighted)
    if det.strips and share["kept"] and (det.parent_ymin[share["kept_index"]]
                                         > det.strips[0]).any():
        # sep's own random sharing is kept for some children of a strip that
        # sep did not scan first: only a single run draws its numbers in
        # the whole image's order
        del lists, centre, det
        det, filtered, thresh = detection(keep_maps=True, strips=1)
        *lists, centre, share = sextractor_pixel_lists(det, data, params, weighted=weighted)
    if not keep_maps:
        filtered = thresh = None
    props = analyse_detections(det, data, params, backsig=backsig, mesh=image_mesh,
                               pixel_lists=lists, centre=centre, gain=gain,
                               weighted=weighted)
    del lists, centre
    maxarea = int(params["DETECT_MAXAREA"])
    if maxarea > 0 and len(props) and (props["fdnpix"] > maxarea).any():
        # SExtractor skips these after deblending: not catalogued, not in the map
        keep = props["fdnpix"] <= maxarea
        det, props = det.subset(keep), props[keep]
    khe = None if kernel is None else kernel.shape[0]
    absorber, order = clean_and_order(props, props, det.parent_ymax + 1, params, height,
                                      kernel_height=khe)
    objects, lut, swallowed = _assemble_objects(det, props, absorber, order, params, height,
                                                khe)
    stuck = stuck_rows(absorber, det.parent_ymax + 1, khe, height)
    segmap, pixel_flags = _final_flag_maps(det, lut, swallowed, stuck)
    ndetect = len(det.objects)
    share["pixstack"], share["sub_object_limit"] = det.pixstack, det.sub_object_limit
    share["strips"] = det.strips
    thresh_meta = det.threshold
    del det, props
    # (after detection: it turns the variance map into the rms map in place)
    rmsmap = prep.noise_map()
    timings["clean"] = time.perf_counter() - t4

    meta = {
        "backend": "sep",
        "sep_version": sep.__version__,
        "nobj": int(len(objects)),
        "ndetect": int(ndetect),
        "nmerged": int(np.count_nonzero(absorber >= 0)),
        "weight_type": wtype,
        "weight_scale": float(prep.sigfac),
        "weight_scale_measured": (None if prep.sigfac_measured is None
                                  else float(prep.sigfac_measured)),
        "weight_thresh": float(prep.wthresh),
        "interpolated_pixels": prep.n_interp,
        "back_type": params["BACK_TYPE"][0].upper(),
        "backmean": float(image_mesh.backmean),
        "backsig": float(backsig),
        "globalback": float(bkg.globalback),
        "globalrms": float(backsig),
        "gain": float(gain),
        "satur_level": float(satur),
        "detect_thresh": thresh_meta,
        "thresh_type": params["THRESH_TYPE"].upper(),
        "deblend_reshared": int(share["reshared"]),
        "deblend_kept_sep": int(share["kept"]),
        "deblend_rand_calls": int(share["rand_calls"]),
        "sep_strips": len(share["strips"]) + 1,
        "pixstack": int(share["pixstack"]),
        "sub_object_limit": int(share["sub_object_limit"]),
        "timings": timings,
    }
    mask_out = np.broadcast_to(np.False_, shape) if hard is None else hard
    return Sources(segmap, objects, pixel_flags, readonly(data), readonly(rmsmap), bkg,
                   filtered, thresh, mask_out, meta)


def _iso_pb(det, params, height, kernel_height):
    """OBJ_ISO_PB: the detection started above SExtractor's image buffer."""
    strip_h, strip_m = strip_geometry(params, height, kernel_height)
    if height <= strip_h:
        return np.zeros(len(det.objects), bool)
    # buffer's first line while line yc is scanned (readimage.c loadstrip)
    yc = det.parent_ymax + 1
    buf_ymin = np.clip(yc - strip_h + strip_m + 1, 0, height - strip_h)
    return det.parent_ymin < buf_ymin


def _group_max(idx, values, n, own):
    """Per group: max of ``values`` and which member holds it (the survivor
    ``own[g]`` unless another member is strictly higher, as mergeobject)."""
    order = np.lexsort((-values, idx))        # by group, highest first
    first = np.ones(order.size, bool)
    first[1:] = idx[order][1:] != idx[order][:-1]
    top = order[first]                         # a highest member per group
    best = np.full(n, -np.inf)
    best[idx[top]] = values[top]
    holder = own.copy()
    higher = values[top] > values[own[idx[top]]]
    holder[idx[top][higher]] = top[higher]
    return best, holder


def _assemble(det, props, absorber, order, params, height, kernel_height):
    """Merge swallowed detections into their absorbers and number the survivors.

    Returns ``(objects, segmap, own, blank)``: the catalogue rows, the
    relabelled segmentation map (``det.segmap``, relabelled in place), the
    objects' own pixels (int32 map) and the blanked pixels (``det.above``,
    changed in place).
    """
    objects, lut, swallowed = _assemble_objects(det, props, absorber, order, params, height,
                                                kernel_height)
    if len(det.objects) == 0:
        empty = np.zeros(det.segmap.shape, np.int32)
        return objects, empty, empty.copy(), det.above.copy()
    own_lut = np.where(np.r_[True, swallowed], 0, lut).astype(np.int32)
    segmap = det.segmap  # relabelled in place (with `own` and `blank`)
    own = np.empty_like(segmap)
    blank = det.above
    _final_maps(segmap.reshape(-1), lut, own_lut, blank.reshape(-1), own.reshape(-1))
    return objects, segmap, own, blank


def stuck_rows(absorber, completion_line, kernel_height, height):
    """For each raw detection, the first image row from which its pixels stay
    blanked although CLEAN merged it into another one (``height``: none).

    SExtractor blanks the detected pixels of the image buffers (the
    measurement and the detection image) while it scans: without a filter
    as soon as it reads them, with a filter of height ``kh`` only ``kh // 2
    + 1`` lines later (``scan.c``, ``blankpad``), so that filtering still
    sees the pixels.  CLEAN, however, runs when an object's island is
    complete (scan line ``completion_line``) and pastes a swallowed
    detection's pixels back into the image at once (``clean.c``,
    ``pasteimage``).  Its pixels in the last ``kh // 2`` rows before that
    line were not blanked yet: the scan blanks them afterwards, and as they
    no longer belong to any object's blanking buffer nothing restores them.
    They stay -BIG for every later measurement, the absorbing object's
    included (APER, AUTO, FLUX_RADIUS, WIN: replaced by the mirror pixel
    with MASK_TYPE CORRECT, 0 with BLANK).

    The merge happens at the later of the two completion lines (the
    newcomer's): a newcomer absorbed by a listed object, or listed objects
    absorbed by a newcomer.
    """
    absorber = np.asarray(absorber, np.int64)
    out = np.full(len(absorber), int(height), np.int64)
    if kernel_height is None or len(absorber) == 0:
        return out
    yc = np.asarray(completion_line, np.int64)
    sw = np.flatnonzero(absorber >= 0)
    merged_at = np.maximum(yc[sw], yc[absorber[sw]])
    out[sw] = merged_at - int(kernel_height) // 2
    return out


def _final_flag_maps(det, lut, swallowed, stuck=None):
    """The relabelled segmentation map and the pixel-flag map (`Sources`),
    made in place of ``det.segmap`` and ``det.above``.  ``stuck``
    (`stuck_rows`, per raw detection) marks the merged pixels SExtractor
    leaves blanked."""
    if len(det.objects) == 0:
        return (np.zeros(det.segmap.shape, np.int32),
                det.above.astype(np.uint8) * np.uint8(PF_BLANK))
    segmap = det.segmap
    flags = det.above.view(np.uint8)  # 0/1 == PF_BLANK: becomes the flag map
    swl = np.r_[False, swallowed].astype(np.bool_)
    height, width = segmap.shape
    stuck_l = np.full(len(swl), height, np.int64)
    if stuck is not None:
        stuck_l[1:] = stuck
    _flag_maps(segmap.reshape(-1), det.chain_pix, lut, swl, flags.reshape(-1), stuck_l, width)
    return segmap, flags


def _assemble_objects(det, props, absorber, order, params, height, kernel_height):
    """Catalogue rows of the survivors of CLEAN, in ``NUMBER`` order.

    Returns ``(objects, lut, swallowed)``: ``lut[i + 1]`` is the final label of
    raw object ``i`` (its survivor's ``NUMBER``), ``swallowed[i]`` whether
    CLEAN merged it into another one.
    """
    raw = det.objects
    nraw = len(raw)
    nout = len(order)
    objects = np.zeros(nout, dtype=OBJECT_FIELDS)
    if nraw == 0:
        return objects, np.zeros(1, np.int32), np.zeros(0, bool)

    root = _roots(absorber)
    number = np.zeros(nraw, np.int64)
    number[order] = np.arange(1, nout + 1)
    idx = number[root] - 1        # output row of each raw object's survivor
    src = order                   # raw object of each output row (keeps its moments)

    flag = raw["flag"].astype(np.int64)
    sexflags = (np.where(flag & _SEP_MERGED, OBJ_MERGED, 0)
                | np.where(flag & _SEP_TRUNC, OBJ_TRUNC, 0)
                | np.where(flag & _SEP_DOVERFLOW, OBJ_DOVERFLOW, 0)
                | np.where(_iso_pb(det, params, height, kernel_height), OBJ_ISO_PB, 0))
    # a swallowed detection passes on all its flags but MERGED (and CROWDED)
    swallowed = absorber >= 0
    passed = np.where(swallowed, sexflags & ~OBJ_MERGED, sexflags)
    sepflag = np.where(swallowed, flag & ~_SEP_MERGED, flag) & ~_SEP_SINGU
    agg_sex = np.zeros(nout, np.int64)
    agg_sep = np.zeros(nout, np.int64)
    np.bitwise_or.at(agg_sex, idx, passed)
    np.bitwise_or.at(agg_sep, idx, sepflag)

    for f in ("x", "y", "x2", "y2", "xy", "a", "b", "theta", "cxx", "cyy", "cxy",
              "abcor", "mthresh", "bkg"):
        objects[f] = props[f][src]
    objects["number"] = np.arange(1, nout + 1)
    objects["errx2"] = props["poserr_mx2"][src]
    objects["erry2"] = props["poserr_my2"][src]
    objects["errxy"] = props["poserr_mxy"][src]
    objects["thresh"] = props["dthresh"][src]
    objects["parent"] = det.parent[src]
    objects["nmerged"] = np.bincount(idx, minlength=nout) - 1
    for f, p in (("npix", "fdnpix"), ("tnpix", "dnpix")):
        objects[f] = np.bincount(idx, weights=props[p], minlength=nout).astype(np.int64)
    for f, p in (("cflux", "fdflux"), ("flux", "dflux")):
        # mergeobject adds single-precision fluxes one at a time; the order
        # only matters in the last bits
        objects[f] = np.bincount(idx, weights=props[p].astype(np.float64), minlength=nout)
    for p, name, pos in (("fdpeak", "cpeak", ("xcpeak", "ycpeak")),
                         ("dpeak", "peak", ("xpeak", "ypeak"))):
        best, holder = _group_max(idx, props[p].astype(np.float64), nout, src.copy())
        objects[name] = best
        objects[pos[0]] = props[pos[0]][holder]
        objects[pos[1]] = props[pos[1]][holder]
    lo = np.full(nout, np.iinfo(np.int64).max)
    hi = np.full(nout, np.iinfo(np.int64).min)
    for f in ("xmin", "ymin"):
        v = lo.copy()
        np.minimum.at(v, idx, props[f])
        objects[f] = v
    for f in ("xmax", "ymax"):
        v = hi.copy()
        np.maximum.at(v, idx, props[f])
        objects[f] = v
    objects["flag"] = agg_sep | np.where(props["singu"][src], _SEP_SINGU, 0)
    objects["sexflags"] = agg_sex

    lut = np.zeros(nraw + 1, np.int32)
    lut[1:] = idx + 1
    return objects, lut, swallowed


@numba.njit(cache=True)
def _flag_maps(seg, pixels, lut, swallowed, flags, stuck, width):
    """Relabel ``seg`` through ``lut``; ``flags`` (the detected pixels, 0/1)
    becomes the pixel-flag map: a swallowed detection's pixels are merged
    into their survivor (``PF_MERGED``) and not blanked, except from row
    ``stuck[label]`` on (`stuck_rows`: ``PF_MERGED | PF_BLANK | PF_STUCK``).
    Only the detections' ``pixels`` are labelled: the rest of the map is
    not even read (its pages of zeros need not exist)."""
    for i in pixels:
        v = seg[i]
        if v:
            seg[i] = lut[v]
            if swallowed[v]:
                if i // width >= stuck[v]:
                    flags[i] = PF_MERGED | PF_BLANK | PF_STUCK
                else:
                    flags[i] = PF_MERGED


@numba.njit(cache=True)
def _final_maps(seg, lut, own_lut, above, own):
    for i in range(seg.size):
        v = seg[i]
        if v:
            own[i] = own_lut[v]
            seg[i] = lut[v]
            if own[i] == 0:  # a swallowed detection's pixel is not blanked
                above[i] = False
        else:
            own[i] = 0


def run(sci, *, rms=None, wht=None, var=None, params, method="sep", header=None, wcs=None,
        mask=None) -> ExtractionResult:
    """Extract sources from one image, SExtractor 2.25 style.

    Parameters
    ----------
    sci : 2-D array
        Science image (any float dtype and byte order; never modified).
    rms, wht, var : 2-D arrays, optional
        The noise map ``WEIGHT_TYPE`` names: ``MAP_RMS`` uses ``rms`` (absolute
        noise), ``MAP_WEIGHT`` uses ``wht`` (relative inverse variance,
        rescaled to the measured noise as SExtractor does), ``MAP_VAR`` uses
        ``var``; ``NONE`` uses the global background rms.
    params : Params or mapping
        SExtractor-named parameters (e.g. ``load_config("galfind_default")``).
    method : {"sep", "sextractor", "photutils"}
        Backend.
    header : FITS header, optional
        Science header (``GAIN_KEY``/``SATUR_KEY``; WCS keywords for the
        sextractor backend).
    wcs : astropy.wcs.WCS, optional
        For sky coordinates.
    mask : 2-D bool array, optional
        Extra pixels to ignore.

    Returns
    -------
    ExtractionResult
        ``segmap`` (int32, label == ``NUMBER``), ``background`` (float32 map
        subtracted; a read-only constant view for ``BACK_TYPE MANUAL``),
        ``catalog`` (astropy Table), ``rms`` (float32 absolute noise used;
        ``inf`` where there is no data; read-only, and the ``rms`` argument
        itself when that is exactly the noise used) and ``meta``
        (``meta["timings"]``: seconds per stage).

    Raises
    ------
    ValueError
        For an unknown ``method``, or when the map ``WEIGHT_TYPE`` needs is
        missing.
    """
    if not isinstance(params, Params):
        params = Params(params)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "sextractor":
        from .backends import sextractor as backend

        if mask is not None:
            raise ValueError("method='sextractor' does not take a mask; fold it into the "
                             "weight map (zero weight / infinite rms)")
        return backend.run(sci, rms=rms, wht=wht, var=var, params=params, header=header,
                           wcs=wcs)
    if method == "photutils":
        from .backends import photutils as backend

        return backend.run(sci, rms=rms, wht=wht, var=var, params=params, header=header,
                           wcs=wcs, mask=mask)

    from .measure import measure

    with _parallel.small_pages():
        t0 = time.perf_counter()
        src = _detect_sources(sci, rms=rms, wht=wht, var=var, params=params, header=header,
                              mask=mask, keep_maps=False)
        t1 = time.perf_counter()
        # (the masked pixels have an infinite rms: no mask to pass on)
        catalog = measure(src.data, src.rms, src.segmap, src.objects, params, wcs=wcs,
                          header=header, background=src.background.background,
                          backsig=src.meta["backsig"], pixel_flags=src.pixel_flags)
    meta = dict(src.meta)
    meta["timings"] = dict(meta["timings"], measure=time.perf_counter() - t1,
                           total=time.perf_counter() - t0)
    return ExtractionResult(segmap=src.segmap, background=src.background.background,
                            catalog=catalog, rms=src.rms, meta=meta, sources=src)
