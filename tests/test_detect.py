"""Detection building blocks against SExtractor 2.25: background, weights,
filtering, thresholds, Lutz pixel order, pixel sharing, CLEAN.

Run with ``pytest -s`` to see the measured numbers.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import sep
from astropy.io import fits
from scipy import ndimage

from _util import SEX, SEXDIR, sextractor_arrays

from galseg.extract.background import BIG, estimate_background, mesh_statistics
from galseg.extract.clean import clean_and_order
from galseg.extract.detect import (
    _glibc_rand, _glibc_srand, detect, filter_image, lutz_pixel_order, normalise_kernel,
    threshold_map,
)
from galseg.extract.engine import detect_sources
from galseg.extract.params import Params
from galseg.extract.sexfiles import read_conv
from galseg.extract.weights import interpolate_bad, raw_variance, rescale_factor, \
    weight_threshold

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SEPREF = DATA / "sep_reference"
XDF = DATA / "xdf"
KIDS = DATA / "kids_viking"


def _need(path: Path):
    if not path.exists():
        pytest.skip(f"shared test data {path} absent")


def _kernel_file(name):
    path = SEXDIR / name
    if not path.exists():
        pytest.skip(f"SExtractor kernel {path} absent")
    return path


def _getdata(path, ext=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with fits.open(path) as hdul:
            hdu = hdul[ext] if ext is not None else next(h for h in hdul if h.data is not None)
            return hdu.data.copy()


_sextractor = sextractor_arrays


# --------------------------------------------------------------------------- background
@pytest.mark.sextractor
@pytest.mark.skipif(SEX is None, reason="SExtractor binary (source-extractor or sex) "
                                        "not installed")
@pytest.mark.parametrize("name", ["sepref", "kids_r", "xdf"])
def test_background_matches_sextractor(tmp_path, name):
    cfg = {"FILTER": "N", "DETECT_THRESH": 5}
    if name == "sepref":
        _need(SEPREF / "image.fits")
        sci = _getdata(SEPREF / "image.fits")
    elif name == "kids_r":
        _need(KIDS / "r.fits")
        sci = _getdata(KIDS / "r.fits")
    else:
        _need(XDF / "detection_sci.fits")
        sci = _getdata(XDF / "detection_sci.fits")
        cfg.update(BACK_SIZE=32, BACK_FILTERSIZE=5)
    sci = np.asarray(sci, np.float32)
    out = _sextractor(tmp_path, sci, cfg, checks=("BACKGROUND", "BACKGROUND_RMS"))
    line = next(ln for ln in out["log"].splitlines() if "Background:" in ln)
    sback, srms = (float(v) for v in re.findall(r"Background:\s*(\S+)\s+RMS:\s*(\S+)", line)[0])
    params = Params(**{k: v for k, v in cfg.items() if k.startswith("BACK")})
    mesh, _ = mesh_statistics(sci, back_size=params["BACK_SIZE"],
                              filter_size=params["BACK_FILTERSIZE"])
    bkg = estimate_background(sci, params, mesh=mesh, want_rms=True)
    dback = np.abs(bkg.background - out["BACKGROUND"]).max()
    drms = np.abs(bkg.rms - out["BACKGROUND_RMS"]).max()
    print(f"\n[{name}] backmean {mesh.backmean:.7g} (SExtractor {sback}), backsig "
          f"{mesh.backsig:.7g} (SExtractor {srms}); max |map - BACKGROUND| = {dback:.3g}, "
          f"max |rms - BACKGROUND_RMS| = {drms:.3g}")
    assert mesh.backmean == pytest.approx(sback, rel=1e-5, abs=1e-9 * abs(srms))
    assert mesh.backsig == pytest.approx(srms, rel=1e-5)
    assert dback <= 1e-6 * max(abs(sback), srms)
    assert drms <= 1e-6 * srms


def test_background_manual_is_constant_and_keeps_mesh_rms():
    rng = np.random.default_rng(3)
    sci = rng.normal(10.0, 2.0, (200, 300)).astype(np.float32)
    params = Params(BACK_TYPE="MANUAL", BACK_VALUE=4.5)
    bkg = estimate_background(sci, params)
    assert bkg.background.dtype == np.float32
    assert np.all(bkg.background == np.float32(4.5))
    assert bkg.globalback == 4.5
    # the mesh statistics still run (SExtractor's threshold uses their rms)
    assert bkg.globalrms == pytest.approx(2.0, rel=0.05)
    assert bkg.mesh.backmean == pytest.approx(10.0, abs=0.1)


def test_mesh_statistics_constant_and_masked():
    const = np.full((130, 140), 7.0, np.float32)
    mesh, _ = mesh_statistics(const)
    assert mesh.backmean == pytest.approx(7.0)
    assert mesh.backsig == 1.0  # SExtractor's fallback for constant data
    valid = np.zeros(const.shape, bool)
    mesh, _ = mesh_statistics(const, valid=valid)  # no usable pixel at all
    assert np.isfinite(mesh.backmean) and mesh.backsig == 1.0


# --------------------------------------------------------------------------- filtering
@pytest.mark.sextractor
@pytest.mark.skipif(SEX is None, reason="SExtractor binary not installed")
def test_filter_is_bit_identical_to_sextractor(tmp_path):
    _need(XDF / "detection_sci.fits")
    sci = _getdata(XDF / "detection_sci.fits")  # big-endian float64 on disk
    assert not sci.dtype.isnative
    kfile = _kernel_file("gauss_2.5_5x5.conv")
    raw, norm = read_conv(kfile)
    k = normalise_kernel(raw, norm)
    out = _sextractor(tmp_path, sci, {"FILTER_NAME": kfile, "BACK_TYPE": "MANUAL",
                                      "BACK_VALUE": 0}, checks=("FILTERED",))
    mine = filter_image(sci, k)
    ndiff = int(np.count_nonzero(mine != out["FILTERED"]))
    print(f"\nfiltered image: {ndiff} of {mine.size} pixels differ from SExtractor's FILTERED")
    assert ndiff == 0


def test_filter_is_a_zero_padded_correlation():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(40, 50)).astype(np.float32)
    k = rng.random((3, 5)).astype(np.float32)
    ref = ndimage.correlate(img.astype(np.float64), k.astype(np.float64), mode="constant")
    np.testing.assert_allclose(filter_image(img, k), ref, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- weights
def test_raw_variance_and_thresholds():
    w = np.array([[4.0, 0.0, -1.0, np.nan, np.inf]], np.float32)
    var, nod = raw_variance("MAP_WEIGHT", w)
    assert var[0, 0] == np.float32(0.25)
    assert nod.tolist() == [[False, True, True, True, True]]
    assert np.all(var[nod] == np.float32(BIG))
    r = np.array([[2.0, 0.0, np.nan]], np.float32).astype(">f8")
    var, nod = raw_variance("MAP_RMS", r)
    assert var.dtype == np.float32 and var[0, 0] == 4.0 and nod.tolist() == [[False, True, True]]
    assert weight_threshold("MAP_WEIGHT", Params()) == float(np.float32(BIG))
    assert weight_threshold("MAP_WEIGHT", Params(WEIGHT_THRESH=0.5)) == 2.0
    assert weight_threshold("MAP_RMS", Params(WEIGHT_THRESH=3.0)) == 9.0


def test_interpolation_lags():
    var = np.ones((4, 8), np.float32)
    data = np.arange(32, dtype=np.float32).reshape(4, 8)
    bad = np.float32(BIG)
    var[0, 3:8] = bad       # after 2 good pixels: xlag 2 fills two, then stops
    var[1:4, 0] = bad       # first column: no left neighbour, fills from above
    var[2, 5] = bad
    d = data.copy()
    v = var.copy()
    interpolate_bad(d, v, BIG, xlag=2, ylag=1, with_data=True)
    assert v[0, 3] == 1.0 and v[0, 4] == 1.0 and v[0, 5] == bad
    assert d[0, 3] == data[0, 2] and d[0, 4] == data[0, 2]
    assert v[1, 0] == 1.0 and d[1, 0] == data[0, 0]  # from the line above
    assert v[2, 0] == bad  # ylag 1 exhausted
    assert v[2, 5] == 1.0 and d[2, 5] == data[2, 4]
    d2 = data.copy()
    v2 = var.copy()
    interpolate_bad(d2, v2, BIG, xlag=2, ylag=1, with_data=False)
    assert np.array_equal(d2, data) and v2[0, 3] == 1.0


def test_rescale_factor_recovers_relative_weights():
    # relative weights = 7.3 / true variance: SExtractor's factor rescales them
    # back to the measured pixel noise (sigfac = sqrt(7.3) * noise / noise)
    rng = np.random.default_rng(5)
    rms = np.ones((256, 384), np.float32)
    rms[:, 192:] = 3.0
    sci = (rng.standard_normal(rms.shape) * rms).astype(np.float32)
    wht = (7.3 / rms ** 2).astype(np.float32)
    wvar, _ = raw_variance("MAP_WEIGHT", wht)
    image, weight = mesh_statistics(sci, wvar=wvar, wthresh=BIG)
    sigfac = rescale_factor(image, weight)
    print(f"\nMAP_WEIGHT rescaling factor {sigfac:.4f} (expected ~{np.sqrt(7.3):.4f})")
    assert sigfac == pytest.approx(np.sqrt(7.3), rel=0.03)


# --------------------------------------------------------------------------- Lutz order
def test_lutz_chains_are_the_8_connected_detections():
    rng = np.random.default_rng(1)
    for trial in range(3):
        m = ndimage.binary_opening(rng.random((200, 300)) > 0.55)
        off, pix = lutz_pixel_order(m, 1)
        lab, n = ndimage.label(m, structure=np.ones((3, 3)))
        assert len(off) - 1 == n
        assert np.unique(pix).size == pix.size == m.sum()
        for k in range(n):
            labs = np.unique(lab.ravel()[pix[off[k]:off[k + 1]]])
            assert labs.size == 1
            assert np.count_nonzero(lab == labs[0]) == off[k + 1] - off[k]
        # completion order is sep's order of detections
        objs = sep.extract(m.astype(np.float32), 0.5, minarea=1, deblend_cont=1.0,
                           filter_kernel=None, clean=False)
        firsts = np.array([np.unravel_index(pix[off[k]:off[k + 1]], m.shape)[0].max()
                           for k in range(n)])
        assert np.array_equal(firsts, objs["ymax"])


@pytest.mark.skipif(ctypes.util.find_library("c") is None, reason="no C library")
def test_glibc_rand_sequence():
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.srand(1)
    try:
        ref = [libc.rand() for _ in range(1000)]
    finally:
        libc.srand(1)
    state = _glibc_srand(1)
    mine = [int(_glibc_rand(state)) for _ in range(1000)]
    if ref[:3] != [1804289383, 846930886, 1681692777]:
        pytest.skip("C library is not glibc")
    assert mine == ref


# --------------------------------------------------------------------------- thresholds
def _step_field(seed=11, shape=(240, 320)):
    rng = np.random.default_rng(seed)
    rms = np.ones(shape, np.float32)
    rms[:, shape[1] // 2:] = 4.0
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    img = np.zeros(shape)
    for x0, y0, f in zip(rng.uniform(5, shape[1] - 5, 120), rng.uniform(5, shape[0] - 5, 120),
                         10 ** rng.uniform(1.5, 3.5, 120)):
        img += f / (2 * np.pi * 2.0) * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / 4.0)
    return (img + rng.standard_normal(shape) * rms).astype(np.float32), rms


@pytest.mark.sextractor
@pytest.mark.skipif(SEX is None, reason="SExtractor binary not installed")
def test_threshold_uses_filtered_variance_next_to_an_rms_step(tmp_path):
    sci, rms = _step_field()
    kfile = _kernel_file("gauss_2.5_5x5.conv")
    cfg = {"FILTER_NAME": kfile, "BACK_TYPE": "MANUAL", "BACK_VALUE": 0,
           "WEIGHT_TYPE": "MAP_RMS", "DETECT_MINAREA": 1, "DETECT_THRESH": 1.8,
           "DEBLEND_MINCONT": 1.0, "CLEAN": "N"}
    out = _sextractor(tmp_path, sci, cfg, weight=rms, checks=("SEGMENTATION", "FILTERED"))
    k = normalise_kernel(*read_conv(kfile))
    filt = filter_image(sci, k)
    var, _ = raw_variance("MAP_RMS", rms)
    params = Params({k_: v for k_, v in cfg.items() if k_ != "FILTER_NAME"})
    thr = threshold_map(params, fvar=filter_image(var, k))
    ours = filt > thr
    naive = filt > np.float32(1.8) * rms  # sep's filter_type="conv" with err=rms
    sexmask = out["SEGMENTATION"] > 0
    near = np.abs(np.arange(sci.shape[1]) - sci.shape[1] // 2) <= 3
    print(f"\ndetected pixels: SExtractor {sexmask.sum()}, filtered-variance threshold "
          f"{ours.sum()} ({np.count_nonzero(ours != sexmask)} differ), unfiltered-rms "
          f"threshold {naive.sum()} ({np.count_nonzero(naive != sexmask)} differ, "
          f"{np.count_nonzero((naive != sexmask)[:, near])} of them within 3 px of the step)")
    assert np.array_equal(ours, sexmask)
    assert np.count_nonzero((naive != sexmask)[:, near]) > 0
    # and through sep: the same pixels end up in the segmentation
    det = detect(filt, thr, params)
    assert np.array_equal(det.segmap > 0, sexmask)
    assert len(det.objects) == len(out["cat"])


# --------------------------------------------------------------------------- sep limits
def test_pixel_stack_and_sub_object_limit_grow():
    # one detection of 600x600 pixels holding 30x30 = 900 peaks: far beyond a
    # 1000-pixel stack, and beyond a sub-object limit of 32 per level
    y, x = np.mgrid[0:600, 0:600]
    img = (5.0 + 2.0 * (np.cos(2 * np.pi * x / 20.0) + 1) * (np.cos(2 * np.pi * y / 20.0) + 1)
           ).astype(np.float32)
    params = Params(MEMORY_PIXSTACK=1000, DETECT_MINAREA=5, DEBLEND_NTHRESH=32,
                    DEBLEND_MINCONT=0.0001, CLEAN="N")
    pix0, sub0 = sep.get_extract_pixstack(), sep.get_sub_object_limit()
    sep.set_sub_object_limit(32)
    try:
        det = detect(img, 1.0, params)
        assert sep.get_sub_object_limit() == 32  # sep's globals are restored
    finally:
        sep.set_sub_object_limit(sub0)
    print(f"\ngiant detection: {len(det.objects)} objects, pixel stack {det.pixstack}, "
          f"sub-object limit {det.sub_object_limit}")
    assert det.pixstack > 1000
    assert det.sub_object_limit > 32
    assert len(det.objects) >= 900
    assert sep.get_extract_pixstack() == pix0


# --------------------------------------------------------------------------- CLEAN
@pytest.mark.sextractor
@pytest.mark.skipif(SEX is None, reason="SExtractor binary not installed")
def test_clean_merges_like_sextractor_on_sep_reference(tmp_path):
    _need(SEPREF / "image.cat")
    sci = _getdata(SEPREF / "image.fits")
    cfg = {"FILTER_NAME": SEPREF / "default.conv", "DETECT_MINAREA": 5, "DETECT_THRESH": 1.5,
           "DEBLEND_MINCONT": 1.0, "CLEAN": "Y", "CLEAN_PARAM": 1.0}
    out = _sextractor(tmp_path, sci, cfg,
                      params=("NUMBER", "X_IMAGE", "Y_IMAGE", "ISOAREAF_IMAGE"),
                      checks=("SEGMENTATION",))
    params = Params({k: v for k, v in cfg.items() if k != "FILTER_NAME"},
                    FILTER_NAME=str(SEPREF / "default.conv"))
    src = detect_sources(sci, params=params)
    cat = out["cat"]
    ref = np.loadtxt(SEPREF / "image.cat")
    print(f"\nsep_reference CLEAN Y: {src.meta['ndetect']} detections, {src.meta['nmerged']} "
          f"merged, {len(src.objects)} kept; SExtractor {len(cat)}, image.cat {len(ref)}")
    assert src.meta["nmerged"] > 0
    assert len(src.objects) == len(cat) == len(ref)
    # same NUMBER order and positions (X_IMAGE is single precision in SExtractor)
    assert np.array_equal(cat["X_IMAGE"], (src.objects["x"] + 1).astype(np.float32))
    assert np.array_equal(cat["Y_IMAGE"], (src.objects["y"] + 1).astype(np.float32))
    np.testing.assert_allclose(ref[:, 1:3], np.c_[src.objects["x"], src.objects["y"]] + 1,
                               atol=1e-3)
    # merged objects: the absorber keeps its position, gains the pixels
    assert np.array_equal(cat["ISOAREAF_IMAGE"], src.objects["npix"])
    assert np.array_equal(out["SEGMENTATION"], src.segmap)


def test_clean_replay_small_case():
    # a bright object and a faint one in its wings: the faint one is merged
    # into the bright one whatever their order
    objs = np.zeros(2, dtype=[("x", "f8"), ("y", "f8"), ("a", "f4"), ("b", "f4"),
                              ("cxx", "f4"), ("cyy", "f4"), ("cxy", "f4"),
                              ("ymin", "i8"), ("ymax", "i8")])
    props = np.zeros(2, dtype=[("abcor", "f4"), ("fdflux", "f4"), ("fdnpix", "i8"),
                               ("dthresh", "f4"), ("mthresh", "f4")])
    objs[:] = [(50, 50, 3, 3, 1 / 9, 1 / 9, 0, 40, 60), (55, 50, 1, 1, 1, 1, 0, 48, 52)]
    props[:] = [(1.0, 1e5, 400, 1.0, 200.0), (1.0, 50.0, 9, 1.0, 0.5)]
    for order in ([0, 1], [1, 0]):
        o, p = objs[order], props[order]
        absorber, out = clean_and_order(p, o, np.array([61, 61]), Params(), 100)
        faint = order.index(1)
        assert absorber[faint] == order.index(0) and absorber[1 - faint] == -1
        assert out.tolist() == [order.index(0)]
        absorber, out = clean_and_order(p, o, np.array([61, 61]), Params(CLEAN="N"), 100)
        assert (absorber == -1).all() and sorted(out.tolist()) == [0, 1]
