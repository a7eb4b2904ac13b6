"""The extraction engine (``method="sep"``) end to end, against SExtractor 2.25.

Each comparison runs the real binary on the same pixels with the same
configuration and checks detections, ``NUMBER`` order, positions, isophotal
areas and segmentation footprints.  Run with ``pytest -s`` to see the numbers.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from scipy.spatial import cKDTree

from _util import SEX, SEXDIR, sextractor_arrays

from galseg.extract import ExtractionResult, Params, detect_sources, load_config, run
from galseg.extract.engine import METHODS

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SEPREF = DATA / "sep_reference"
XDF = DATA / "xdf"
KIDS = DATA / "kids_viking"
GAUSS = SEXDIR / "gauss_2.5_5x5.conv"

needs_sex = pytest.mark.skipif(SEX is None, reason="SExtractor binary (source-extractor or "
                                                   "sex) not installed")

#: galfind's default.sex detection settings (BACK_TYPE MANUAL 0).
GALFIND = {"DETECT_MINAREA": 9, "DETECT_THRESH": 1.8, "ANALYSIS_THRESH": 1.8,
           "PHOT_APERTURES": "10.67,16.67,33.33,50,66.67,83.33",
           "FILTER_NAME": GAUSS, "DEBLEND_NTHRESH": 32, "DEBLEND_MINCONT": 0.005,
           "CLEAN": "Y", "CLEAN_PARAM": 1.0, "BACK_TYPE": "MANUAL", "BACK_VALUE": 0,
           "MEMORY_OBJSTACK": 65000, "MEMORY_PIXSTACK": 5000000, "SATUR_LEVEL": 1e10}

SEXCOLS = ("NUMBER", "X_IMAGE", "Y_IMAGE", "ISOAREA_IMAGE", "ISOAREAF_IMAGE", "FLAGS",
           "FLUX_ISO", "FLUXERR_ISO", "A_IMAGE")


def _need(path: Path):
    if not path.exists():
        pytest.skip(f"shared test data {path} absent")


def _getdata(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with fits.open(path) as hdul:
            return next(h for h in hdul if h.data is not None).data.copy()


def _sextractor(tmp, sci, config, *, weight=None, checks=("SEGMENTATION",)):
    # all apertures, as in galseg's catalogue: SExtractor's output order
    # depends on the largest aperture it measures
    naper = len(str(config.get("PHOT_APERTURES", "5")).split(","))
    out = sextractor_arrays(tmp, sci, config, weight=weight, checks=checks, verbose="QUIET",
                            params=SEXCOLS + (f"FLUX_APER({naper})",))
    return out["cat"], {c: out[c] for c in checks}


def _params(config):
    cfg = dict(config)
    if "FILTER_NAME" in cfg:
        cfg["FILTER_NAME"] = str(cfg["FILTER_NAME"])
    return Params(cfg)


def _iou_per_label(sexseg, seg, nlab):
    """IoU of SExtractor's label i with our label i (i = 1..nlab)."""
    m = (sexseg > 0) | (seg > 0)
    a = sexseg[m].astype(np.int64)
    b = seg[m].astype(np.int64)
    size = nlab + 1
    both = np.bincount(a[a == b], minlength=size)[:size]
    sa = np.bincount(sexseg.ravel(), minlength=size)[:size]
    sb = np.bincount(seg.ravel(), minlength=size)[:size]
    with np.errstate(invalid="ignore"):
        iou = both / (sa + sb - both)
    return iou[1:]


def _isoarea(src, params):
    """ISOAREA_IMAGE from the sources' own (pre-CLEAN) pixels, as examineiso:
    pixels above ANALYSIS_THRESH times the local (or global) noise."""
    ath = np.float32(params["ANALYSIS_THRESH"])
    backsig = np.float32(src.meta["backsig"])
    absolute = params["THRESH_TYPE"].upper() == "ABSOLUTE"
    if params["WEIGHT_TYPE"][0].upper() == "NONE":
        thr = ath if absolute else np.float32(ath * backsig)
    else:
        fac = float(ath) / float(backsig) if absolute else float(ath)
        thr = (fac * src.rms.astype(np.float64)).astype(np.float32)
    above = (src.data > thr) & (src.own_segmap > 0)
    return np.bincount(src.own_segmap[above], minlength=len(src.objects) + 1)[1:]


def _compare(name, cat, checks, src, params):
    """The agreement numbers between SExtractor's catalogue/segmentation and ours."""
    ob = src.objects
    sx, sy = np.asarray(cat["X_IMAGE"], float) - 1, np.asarray(cat["Y_IMAGE"], float) - 1
    d, j = cKDTree(np.c_[ob["x"], ob["y"]]).query(np.c_[sx, sy]) if len(ob) else \
        (np.full(len(cat), np.inf), np.zeros(len(cat), int))
    snr = np.asarray(cat["FLUX_ISO"]) / np.asarray(cat["FLUXERR_ISO"])
    bright = snr > 5
    matched = d < 0.5
    n = min(len(cat), len(ob))
    same_number = np.zeros(len(cat), bool)
    same_number[:n] = (np.abs(sx[:n] - ob["x"][:n]) < 1e-3) & (np.abs(sy[:n] - ob["y"][:n]) < 1e-3)
    unblended = (np.asarray(cat["FLAGS"]) & 2) == 0
    isoarea_eq = matched & (np.asarray(cat["ISOAREA_IMAGE"]) == _isoarea(src, params)[j])
    isoaf_eq = matched & (np.asarray(cat["ISOAREAF_IMAGE"]) == ob["npix"][j])
    sexseg = checks["SEGMENTATION"]
    # SExtractor 2.25 renumbers its segmentation map in place and can give
    # pixels of one object to another (astromatic/sextractor#66): compare
    # only the labels whose pixel count is the catalogue's ISOAREAF_IMAGE
    count = np.bincount(sexseg.ravel(), minlength=len(cat) + 1)[1:len(cat) + 1]
    consistent = count == np.asarray(cat["ISOAREAF_IMAGE"])
    iou = _iou_per_label(sexseg, src.segmap, len(cat))[consistent]
    bad = np.r_[False, ~consistent]
    px = ~(bad[sexseg] | bad[np.clip(src.segmap, 0, len(cat))])
    res = {
        "n_sex": len(cat), "n_galseg": len(ob),
        "matched_snr5": float(matched[bright].mean()) if bright.any() else 1.0,
        "same_NUMBER": float(same_number.mean()) if len(cat) else 1.0,
        "isoarea_unblended": float(isoarea_eq[unblended].mean()) if unblended.any() else 1.0,
        "isoareaf_all": float(isoaf_eq.mean()) if len(cat) else 1.0,
        "iou>=0.98": float(np.mean(iou >= 0.98)) if len(cat) else 1.0,
        "iou_min": float(np.nanmin(iou)) if len(cat) else 1.0,
        "segmap_identical_px": float(np.mean(sexseg[px] == src.segmap[px])),
        "sex_map_inconsistent": int(np.count_nonzero(~consistent)),
    }
    numbers = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in res.items())
    print(f"\n[{name}] {numbers}"
          + f"; merged {src.meta['nmerged']}, re-shared {src.meta['deblend_reshared']}, "
            f"timings {({k: round(v, 3) for k, v in src.meta['timings'].items()})}")
    return res


def _assert_agreement(res, count_tol=0.01):
    assert abs(res["n_galseg"] - res["n_sex"]) <= max(1, count_tol * res["n_sex"])
    assert res["matched_snr5"] >= 0.99
    assert res["same_NUMBER"] >= 0.99
    assert res["isoarea_unblended"] >= 0.95
    assert res["iou>=0.98"] >= 0.99


def synthetic_field(seed=42, shape=(500, 600), nsrc=250):
    """Gaussian sources on noise with a step in the rms map, and no-data pixels.

    Returns sci, rms (1e16 where there is no data), wht (relative inverse
    variance: 7.3 / rms**2, 0 where there is no data) and the truth table.
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    rms = np.ones(shape, np.float32)
    rms[:, w // 2:] = 3.0                   # vertical step in the noise
    rms[h // 3: h // 3 + 60, :] *= 0.5      # and a quieter band
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros(shape)
    x0 = rng.uniform(5, w - 5, nsrc)
    y0 = rng.uniform(5, h - 5, nsrc)
    x0[:20] = w // 2 + rng.uniform(-6, 6, 20)   # sources on the step
    flux = 10 ** rng.uniform(1.8, 3.8, nsrc)
    sig = rng.uniform(1.0, 3.5, nsrc)
    q = rng.uniform(0.4, 1.0, nsrc)
    th = rng.uniform(0, np.pi, nsrc)
    for i in range(nsrc):
        r = int(6 * sig[i]) + 1
        ys = slice(max(int(y0[i]) - r, 0), min(int(y0[i]) + r + 1, h))
        xs = slice(max(int(x0[i]) - r, 0), min(int(x0[i]) + r + 1, w))
        dx, dy = xx[ys, xs] - x0[i], yy[ys, xs] - y0[i]
        c, s = np.cos(th[i]), np.sin(th[i])
        u, v = (c * dx + s * dy) / sig[i], (-s * dx + c * dy) / (sig[i] * q[i])
        img[ys, xs] += flux[i] / (2 * np.pi * sig[i] ** 2 * q[i]) * np.exp(-0.5 * (u * u + v * v))
    sci = (img + rng.standard_normal(shape) * rms).astype(np.float32)
    wht = (7.3 / rms.astype(np.float64) ** 2).astype(np.float32)
    wht[60:90, 100:160] = 0.0       # no-data patch
    wht[400:403, :] = 0.0           # dead rows
    rms_map = rms.copy()
    rms_map[wht == 0] = 1e16        # SExtractor: variance >= 1e30 is no data
    local_rms = rms[np.clip(y0.astype(int), 0, h - 1), np.clip(x0.astype(int), 0, w - 1)]
    snr = flux / (local_rms * np.sqrt(4 * np.pi * sig ** 2 * q))
    return sci, rms_map, wht, {"x": x0, "y": y0, "flux": flux, "snr": snr}


# --------------------------------------------------------------------------- vs SExtractor
@pytest.mark.sextractor
@needs_sex
@pytest.mark.parametrize("mincont", [1.0, 0.005])
def test_sep_reference(tmp_path, mincont):
    _need(SEPREF / "image.cat")
    sci = _getdata(SEPREF / "image.fits")
    cfg = {"FILTER_NAME": SEPREF / "default.conv", "DETECT_MINAREA": 5, "DETECT_THRESH": 1.5,
           "DEBLEND_MINCONT": mincont, "CLEAN": "Y", "BACK_SIZE": 64, "BACK_FILTERSIZE": 3}
    cat, checks = _sextractor(tmp_path, sci, cfg)
    src = detect_sources(sci, params=_params(cfg))
    res = _compare(f"sep_reference DEBLEND_MINCONT {mincont}", cat, checks, src, _params(cfg))
    _assert_agreement(res)
    if mincont == 1.0:  # the configuration of the shipped image.cat
        ref = np.loadtxt(SEPREF / "image.cat")
        assert len(ref) == len(src.objects)
        np.testing.assert_allclose(ref[:, 1:3], np.c_[src.objects["x"], src.objects["y"]] + 1,
                                   atol=1e-3)


@pytest.mark.sextractor
@needs_sex
@pytest.mark.parametrize("wtype", ["MAP_WEIGHT", "MAP_RMS"])
def test_xdf_galfind_settings(tmp_path, wtype):
    _need(XDF / "detection_wht.fits")
    sci = _getdata(XDF / "detection_sci.fits")   # big-endian float64
    wht = _getdata(XDF / "detection_wht.fits")
    rms = 1.0 / np.sqrt(wht.astype(np.float64))
    cfg = dict(GALFIND, WEIGHT_TYPE=wtype)
    cat, checks = _sextractor(tmp_path, sci, cfg, weight=wht if wtype == "MAP_WEIGHT" else rms)
    kw = {"wht": wht} if wtype == "MAP_WEIGHT" else {"rms": rms}
    src = detect_sources(sci, params=_params(cfg), **kw)
    res = _compare(f"XDF {wtype}", cat, checks, src, _params(cfg))
    _assert_agreement(res)
    assert res["n_galseg"] > 50
    if wtype == "MAP_WEIGHT":
        assert src.meta["weight_scale"] == pytest.approx(0.447, rel=0.01)


@pytest.mark.sextractor
@needs_sex
@pytest.mark.parametrize("wtype", ["MAP_RMS", "MAP_WEIGHT"])
def test_synthetic_step_field(tmp_path, wtype):
    sci, rms, wht, truth = synthetic_field()
    cfg = dict(GALFIND, WEIGHT_TYPE=wtype)
    cat, checks = _sextractor(tmp_path, sci, cfg, weight=wht if wtype == "MAP_WEIGHT" else rms)
    kw = {"wht": wht} if wtype == "MAP_WEIGHT" else {"rms": rms}
    src = detect_sources(sci, params=_params(cfg), **kw)
    res = _compare(f"synthetic rms step, {wtype}", cat, checks, src, _params(cfg))
    _assert_agreement(res)
    # truth: isolated bright injected sources (S/N > 20, no other source
    # within 10 px, outside the no-data pixels) are all found where injected
    xy = np.c_[truth["x"], truth["y"]]
    dn, _ = cKDTree(xy).query(xy, k=2)
    iy, ix = truth["y"].astype(int), truth["x"].astype(int)
    ok = (truth["snr"] > 20) & (dn[:, 1] > 10) & (wht[iy, ix] > 0)
    d, _ = cKDTree(np.c_[src.objects["x"], src.objects["y"]]).query(xy[ok])
    frac = float(np.mean(d < 1.0))
    print(f"  truth: {ok.sum()} isolated injected sources with S/N > 20, {frac:.3f} found "
          f"within 1 px (median offset {np.median(d):.3f} px)")
    assert ok.sum() > 50
    assert frac >= 0.98
    # beyond the interpolation lags (16 px) inside the no-data patch nothing
    # is detected and the noise is infinite
    assert not src.segmap[78:90, 118:160].any()
    assert np.isinf(src.rms[78:90, 118:160]).all()
    if wtype == "MAP_WEIGHT":
        assert src.meta["weight_scale"] == pytest.approx(np.sqrt(7.3), rel=0.03)
        assert src.meta["interpolated_pixels"] > 0


_OPTIONS = {
    "MAP_VAR": dict(WEIGHT_TYPE="MAP_VAR"),
    "MAP_WEIGHT, RESCALE_WEIGHTS N": dict(WEIGHT_TYPE="MAP_WEIGHT", RESCALE_WEIGHTS="N"),
    "MAP_WEIGHT, BACK_TYPE AUTO": dict(WEIGHT_TYPE="MAP_WEIGHT", BACK_TYPE="AUTO"),
    "MAP_WEIGHT, INTERP_TYPE NONE": dict(WEIGHT_TYPE="MAP_WEIGHT", INTERP_TYPE="NONE"),
    "MAP_WEIGHT, WEIGHT_THRESH 1": dict(WEIGHT_TYPE="MAP_WEIGHT", WEIGHT_THRESH=1.0),
    "BACKGROUND weights": dict(WEIGHT_TYPE="BACKGROUND", BACK_TYPE="AUTO", BACK_SIZE=32),
    "NONE, FILTER N": dict(WEIGHT_TYPE="NONE", FILTER="N"),
    "MAP_RMS, THRESH_TYPE ABSOLUTE": dict(WEIGHT_TYPE="MAP_RMS", THRESH_TYPE="ABSOLUTE",
                                          DETECT_THRESH=3.0, ANALYSIS_THRESH=3.0),
    "MAP_RMS, DETECT_MAXAREA 200": dict(WEIGHT_TYPE="MAP_RMS", DETECT_MAXAREA=200),
    "MAP_RMS, CLEAN N, DEBLEND_NTHRESH 16": dict(WEIGHT_TYPE="MAP_RMS", CLEAN="N",
                                                 DEBLEND_NTHRESH=16),
}


@pytest.mark.sextractor
@needs_sex
@pytest.mark.parametrize("name", list(_OPTIONS))
def test_options_match_sextractor(tmp_path, name):
    sci, rms, wht, _ = synthetic_field()
    cfg = dict(GALFIND, **_OPTIONS[name])
    wtype = cfg["WEIGHT_TYPE"]
    var = np.where(wht > 0, 3.1 / np.where(wht > 0, wht, 1), 1e31).astype(np.float32)
    maps = {"MAP_RMS": ("rms", rms), "MAP_WEIGHT": ("wht", wht), "MAP_VAR": ("var", var)}
    arg, wmap = maps.get(wtype, (None, None))
    cat, checks = _sextractor(tmp_path, sci, cfg, weight=wmap)
    src = detect_sources(sci, params=_params(cfg), **({arg: wmap} if arg else {}))
    res = _compare(f"synthetic, {name}", cat, checks, src, _params(cfg))
    _assert_agreement(res)
    assert res["segmap_identical_px"] == 1.0


@pytest.mark.sextractor
@needs_sex
def test_number_order_with_small_image_buffer(tmp_path):
    # an image taller than MEMORY_BUFSIZE and a small MEMORY_OBJSTACK: objects
    # leave SExtractor's clean list while it scans; NUMBER must follow
    _need(KIDS / "r.fits")
    sci = np.asarray(_getdata(KIDS / "r.fits"), np.float32)[:1400, :1400]
    cfg = {"FILTER_NAME": SEXDIR / "default.conv", "DETECT_MINAREA": 5, "DETECT_THRESH": 1.5,
           "DEBLEND_MINCONT": 0.005, "MEMORY_BUFSIZE": 256, "MEMORY_OBJSTACK": 120}
    cat, checks = _sextractor(tmp_path, sci, cfg)
    src = detect_sources(sci, params=_params(cfg))
    res = _compare("KiDS r 1400x1400, MEMORY_BUFSIZE 256, MEMORY_OBJSTACK 120", cat, checks,
                   src, _params(cfg))
    _assert_agreement(res)
    assert res["same_NUMBER"] == 1.0


# --------------------------------------------------------------------------- the run() API
@pytest.fixture(scope="module")
def xdf_inputs():
    _need(XDF / "detection_wht.fits")
    return _getdata(XDF / "detection_sci.fits"), _getdata(XDF / "detection_wht.fits")


def test_run_returns_consistent_result(xdf_inputs):
    sci, wht = xdf_inputs
    sci0, wht0 = sci.copy(), wht.copy()
    params = load_config("galfind_default", WEIGHT_TYPE="MAP_WEIGHT")
    res = run(sci, wht=wht, params=params)
    assert isinstance(res, ExtractionResult)
    assert np.array_equal(sci, sci0) and np.array_equal(wht, wht0)  # inputs untouched
    assert res.segmap.dtype == np.int32 and res.segmap.shape == sci.shape
    assert res.background.dtype == np.float32 and np.all(res.background == 0)
    assert res.rms.dtype == np.float32 and np.isfinite(res.rms).all()
    cat = res.catalog
    n = len(cat)
    assert n == res.meta["nobj"] > 50
    assert np.array_equal(cat["NUMBER"], np.arange(1, n + 1))
    assert set(np.unique(res.segmap)) == set(range(n + 1))
    # the label-i pixels contain object i's position
    for i in range(n):
        ys, xs = np.nonzero(res.segmap == i + 1)
        assert xs.min() <= cat["X_IMAGE"][i] - 1 <= xs.max()
        assert ys.min() <= cat["Y_IMAGE"][i] - 1 <= ys.max()
    for key in ("weight_scale", "backsig", "detect_thresh", "timings", "sep_version", "nobj"):
        assert key in res.meta
    assert {"background", "weights", "detect", "clean", "measure"} <= set(
        res.meta["timings"])


def test_unrescaled_weights_would_overdetect(xdf_inputs):
    # the relative weights scaled by 1e4: without SExtractor's rescaling the
    # noise would be taken 100x too low
    sci, wht = xdf_inputs
    params = load_config("galfind_default", WEIGHT_TYPE="MAP_WEIGHT")
    a = detect_sources(sci, wht=wht, params=params)
    b = detect_sources(sci, wht=wht * 1e4, params=params)
    c = detect_sources(sci, wht=wht * 1e4, params=params.replace(RESCALE_WEIGHTS="N"))
    print(f"\nXDF MAP_WEIGHT: {len(a.objects)} sources; weights x1e4: {len(b.objects)} "
          f"(rescaled), {len(c.objects)} without rescaling")
    assert len(b.objects) == len(a.objects)
    assert np.array_equal(a.segmap, b.segmap)
    assert len(c.objects) > 3 * len(a.objects)


def test_empty_and_constant_images():
    params = load_config("galfind_default", WEIGHT_TYPE="NONE")
    zero = run(np.zeros((120, 150)), params=params)
    assert len(zero.catalog) == 0 and "NUMBER" in zero.catalog.colnames
    assert not zero.segmap.any()
    const = run(np.full((120, 150), 3.0), params=params.replace(BACK_TYPE="AUTO"))
    assert len(const.catalog) == 0 and len(const.catalog.colnames) > 10
    assert np.allclose(const.background, 3.0)


def test_nan_and_mask_pixels_are_never_detected():
    sci, rms, wht, _ = synthetic_field(seed=3, shape=(200, 260), nsrc=60)
    sci = sci.copy()
    sci[20:40, 30:60] = np.nan
    mask = np.zeros(sci.shape, bool)
    mask[100:140, 100:160] = True
    sci[100:140, 100:160] += 1000.0  # a bright masked blob
    res = run(sci, rms=np.where(wht > 0, 1.0, np.inf), mask=mask,
              params=load_config("galfind_default"))
    assert not res.segmap[20:40, 30:60].any() and not res.segmap[mask].any()
    assert np.isinf(res.rms[20:40, 30:60]).all() and np.isinf(res.rms[mask]).all()
    for name in ("X_IMAGE", "Y_IMAGE", "FLUX_AUTO", "FLUX_ISO"):
        assert np.isfinite(np.asarray(res.catalog[name])).all(), name


def test_input_errors():
    sci = np.zeros((50, 60), np.float32)
    with pytest.raises(ValueError, match="WEIGHT_TYPE MAP_RMS.*'rms'"):
        run(sci, params=load_config("galfind_default"))
    with pytest.raises(ValueError, match="WEIGHT_TYPE MAP_WEIGHT.*'wht'"):
        run(sci, rms=sci + 1, params=load_config("galfind_default", WEIGHT_TYPE="MAP_WEIGHT"))
    with pytest.raises(ValueError, match="unknown method 'sextrator'.*sep, sextractor, "
                                         "photutils"):
        run(sci, rms=sci + 1, params=load_config("galfind_default"), method="sextrator")
    with pytest.raises(ValueError, match="rms shape"):
        run(sci, rms=np.ones((5, 5)), params=load_config("galfind_default"))
    assert METHODS == ("sep", "sextractor", "photutils")


@pytest.mark.sextractor
@needs_sex
def test_method_sextractor_dispatch(xdf_inputs):
    sci, wht = xdf_inputs
    params = load_config("galfind_default", WEIGHT_TYPE="MAP_WEIGHT")
    ours = run(sci, wht=wht, params=params)
    theirs = run(sci, wht=wht, params=params, method="sextractor")
    assert theirs.meta.get("backend", "sextractor") != "sep"
    assert len(theirs.catalog) == len(ours.catalog)
    np.testing.assert_allclose(np.asarray(theirs.catalog["X_IMAGE"]),
                               np.asarray(ours.catalog["X_IMAGE"]), atol=1e-3)


def test_method_photutils_dispatch():
    pytest.importorskip("photutils")
    y, x = np.mgrid[0:80, 0:90]
    rng = np.random.default_rng(2)
    sci = (rng.standard_normal((80, 90)) + 200 * np.exp(-((x - 40) ** 2 + (y - 30) ** 2) / 8.0)
           ).astype(np.float32)
    res = run(sci, rms=np.ones_like(sci), params=load_config("galfind_default"),
              method="photutils")
    assert isinstance(res, ExtractionResult)
    assert len(res.catalog) >= 1
    assert res.segmap[30, 40] > 0
