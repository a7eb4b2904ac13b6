"""``method="sextractor"``: the SExtractor 2.25 binary as a backend, on real data."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits

from galseg.extract import presets
from galseg.extract.backends import sextractor as sx
from galseg.extract.sexfiles import expand_columns, read_param, read_sex

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SEPREF = DATA / "sep_reference"
XDF = DATA / "xdf"
KIDS = DATA / "kids_viking"

pytestmark = [
    pytest.mark.sextractor,
    pytest.mark.skipif(
        shutil.which("source-extractor") is None and shutil.which("sex") is None,
        reason="SExtractor binary (source-extractor or sex) not installed",
    ),
]


def _need(path: Path):
    if not path.exists():
        pytest.skip(f"shared test data {path} absent")


def _getdata(path, ext=0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with fits.open(path) as hdul:
            return hdul[ext].data.copy(), hdul[ext].header.copy()


@pytest.fixture(scope="module")
def sepref_run():
    _need(SEPREF / "image.cat")
    sci, hdr = _getdata(SEPREF / "image.fits")
    params = read_sex(SEPREF / "default.sex")
    res = sx.run(sci, params=params, header=hdr, param_file=SEPREF / "default.param")
    return res, np.loadtxt(SEPREF / "image.cat")


@pytest.fixture(scope="module")
def xdf_run():
    _need(XDF / "f160w_sci.fits")
    sci, _ = _getdata(XDF / "f160w_sci.fits")
    wht, _ = _getdata(XDF / "f160w_wht.fits")
    params = presets.load_config(
        "galfind_default", WEIGHT_TYPE="MAP_WEIGHT", MAG_ZEROPOINT=25.94,
        PIXEL_SCALE=0.06, PHOT_APERTURES=[5.0, 10.0, 20.0],
    )
    sci0, wht0 = sci.copy(), wht.copy()
    res = sx.run(sci, wht=wht, params=params)
    assert np.array_equal(sci, sci0) and np.array_equal(wht, wht0)
    return res, params, sci


def test_find_binary_and_version():
    path = sx.find_binary()
    assert Path(path).is_file()
    assert sx.sextractor_version(path)[0].isdigit()


# The columns of sep_reference/default.param, in image.cat's column order.
_SEPREF_COLS = [
    "NUMBER", "X_IMAGE", "Y_IMAGE", "XWIN_IMAGE", "YWIN_IMAGE", "X2_IMAGE", "Y2_IMAGE",
    "XY_IMAGE", "ERRX2_IMAGE", "ERRY2_IMAGE", "ERRXY_IMAGE", "A_IMAGE", "FLUX_APER",
    "FLUXERR_APER", "KRON_RADIUS", "FLUX_AUTO", "FLUXERR_AUTO",
]


def test_sep_reference_reproduces_image_cat(sepref_run):
    res, ref = sepref_run
    cat = res.catalog
    assert len(cat) == len(ref) == 65
    assert cat.colnames == _SEPREF_COLS + ["FLUX_RADIUS", "FLAGS"]
    col = {name: ref[:, i] for i, name in enumerate(_SEPREF_COLS)}
    np.testing.assert_array_equal(cat["NUMBER"], np.arange(1, 66))
    # image.cat prints positions with 4 decimals ...
    for name in ("X_IMAGE", "Y_IMAGE"):
        np.testing.assert_allclose(cat[name], col[name], rtol=0, atol=6e-5)
    # ... second moments with 11 significant digits, fluxes with 7 (%12.7g).
    for name in ("X2_IMAGE", "Y2_IMAGE", "XY_IMAGE", "ERRX2_IMAGE", "ERRY2_IMAGE", "ERRXY_IMAGE"):
        np.testing.assert_allclose(cat[name], col[name], rtol=1e-9)
    for name in ("FLUX_APER", "FLUXERR_APER", "FLUX_AUTO", "FLUXERR_AUTO"):
        np.testing.assert_allclose(cat[name], col[name], rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(cat["A_IMAGE"], col["A_IMAGE"], atol=5.01e-4)
    np.testing.assert_allclose(cat["KRON_RADIUS"], col["KRON_RADIUS"], atol=5.01e-3)
    assert cat["FLUX_RADIUS"].shape == (65, 3)
    np.testing.assert_allclose(cat["FLUX_RADIUS"], ref[:, 17:20], atol=5.01e-4)
    np.testing.assert_array_equal(cat["FLAGS"], ref[:, 20].astype(int))


def test_sep_reference_windowed_positions(sepref_run):
    # image.cat was made by an older SExtractor: 2.25's WIN iteration leaves
    # objects 18 and 31 at their isophotal position (XWIN == X_IMAGE) where the
    # reference moved them by 2-5 px.  All other objects agree to print precision.
    res, ref = sepref_run
    cat = res.catalog
    d = np.hypot(np.asarray(cat["XWIN_IMAGE"]) - ref[:, 3],
                 np.asarray(cat["YWIN_IMAGE"]) - ref[:, 4])
    differ = set(np.asarray(cat["NUMBER"])[d > 1e-4].tolist())
    assert differ == {18, 31}
    for n in differ:
        row = cat[n - 1]
        assert abs(row["XWIN_IMAGE"] - row["X_IMAGE"]) < 1e-4


def test_sep_reference_products(sepref_run):
    res, _ = sepref_run
    back, _ = _getdata(SEPREF / "back.fits")
    assert res.background.dtype == np.float32 and res.background.shape == (256, 256)
    # back.fits is SExtractor's BACKGROUND check image from the same config.
    np.testing.assert_allclose(res.background, back, rtol=1e-6)
    assert res.segmap.dtype == np.int32
    assert set(np.unique(res.segmap)) == set(range(66))
    assert res.rms is None
    m = res.meta
    assert m["method"] == "sextractor" and m["nobj"] == 65 and m["weight_type"] == "NONE"
    assert m["version"].startswith("2.") and m["command"][1:] == ["sci.fits", "-c", "run.sex"]
    assert m["segmap_numbers"] == "consistent"
    assert res.catalog["X_IMAGE"].unit == u.pix
    assert res.catalog["FLUX_AUTO"].unit == u.count


def test_xdf_map_weight_products(xdf_run):
    res, params, sci = xdf_run
    cat, seg = res.catalog, res.segmap
    assert res.meta["weight_type"] == "MAP_WEIGHT"
    assert seg.shape == sci.shape and seg.dtype == np.int32
    assert res.background.dtype == np.float32
    assert np.all(res.background == 0)  # BACK_TYPE MANUAL, BACK_VALUE 0
    entries = read_param(presets.param_path("galseg"))
    assert cat.colnames == expand_columns(entries, naper=3)
    n = len(cat)
    assert n > 20
    assert cat["FLUX_APER"].shape == (n, 3) and cat["MAGERR_APER"].shape == (n, 3)
    assert cat["MAG_AUTO"].unit == u.mag and cat["THETA_IMAGE"].unit == u.deg
    np.testing.assert_array_equal(cat["NUMBER"], np.arange(1, n + 1))
    # MAG_AUTO uses the zero point given.
    good = np.asarray(cat["FLUX_AUTO"]) > 0
    np.testing.assert_allclose(
        np.asarray(cat["MAG_AUTO"])[good],
        25.94 - 2.5 * np.log10(np.asarray(cat["FLUX_AUTO"])[good]), atol=2e-4,
    )
    # With MASK_TYPE CORRECT, SExtractor replaces neighbours' pixels by their
    # mirror image also in FLUX_APER; isolated objects get the plain circle sum.
    x = np.asarray(cat["X_IMAGE"], float) - 1
    y = np.asarray(cat["Y_IMAGE"], float) - 1
    for j, diam in enumerate((5.0, 10.0)):
        flux = _circle_sums(sci, x, y, diam)
        ref = np.asarray(cat["FLUX_APER"])[:, j]
        isolated = np.array([_isolated(seg, x[k], y[k], diam / 2 + 1, k + 1) for k in range(n)])
        assert isolated.sum() > 0.8 * n
        np.testing.assert_allclose(ref[isolated], flux[isolated], rtol=1e-6, atol=1e-6)
        assert np.any(np.abs(ref[~isolated] - flux[~isolated]) > 1e-3 * np.abs(flux[~isolated]))


def _isolated(seg, x, y, r, label):
    """No other object's pixel within ``r`` of (x, y) (0-based)."""
    y0, x0 = max(int(y - r), 0), max(int(x - r), 0)
    win = seg[y0:int(y + r) + 2, x0:int(x + r) + 2]
    yy, xx = np.indices(win.shape)
    near = np.hypot(xx + x0 - x, yy + y0 - y) < r
    return not np.any((win[near] > 0) & (win[near] != label))


def _circle_sums(sci, x, y, diam):
    """Exact-ish circle sums with SExtractor's 5x5 sub-sampling, via sep."""
    import sep
    flux, _, _ = sep.sum_circle(np.asarray(sci, np.float64), x, y, diam / 2, subpix=5)
    return flux


def test_xdf_flux_aper_without_masking_is_the_circle_sum():
    _need(XDF / "f160w_sci.fits")
    sci, _ = _getdata(XDF / "f160w_sci.fits")
    wht, _ = _getdata(XDF / "f160w_wht.fits")
    params = presets.load_config(
        "galfind_default", WEIGHT_TYPE="MAP_WEIGHT", MASK_TYPE="NONE",
        PHOT_APERTURES=[5.0, 10.0, 20.0],
    )
    cat = sx.run(sci, wht=wht, params=params).catalog
    x = np.asarray(cat["X_IMAGE"], float) - 1
    y = np.asarray(cat["Y_IMAGE"], float) - 1
    for j, diam in enumerate((5.0, 10.0, 20.0)):
        np.testing.assert_allclose(
            np.asarray(cat["FLUX_APER"])[:, j], _circle_sums(sci, x, y, diam),
            rtol=1e-6, atol=1e-6,
        )


def test_xdf_segmap_labels_equal_number(xdf_run):
    res, _, _ = xdf_run
    cat, seg = res.catalog, res.segmap
    assert res.meta["segmap_numbers"] == "consistent"
    labels = np.unique(seg)
    np.testing.assert_array_equal(labels[1:], cat["NUMBER"])
    # Each label's pixels span exactly the catalogue's bounding box.
    from scipy import ndimage
    for num, sl in enumerate(ndimage.find_objects(seg), start=1):
        row = cat[num - 1]
        assert (sl[1].start + 1, sl[1].stop, sl[0].start + 1, sl[0].stop) == (
            row["XMIN_IMAGE"], row["XMAX_IMAGE"], row["YMIN_IMAGE"], row["YMAX_IMAGE"]
        )


def test_weight_map_required_and_shape_checked():
    sci = np.zeros((20, 20), np.float32)
    p = presets.load_config(WEIGHT_TYPE="MAP_RMS")
    with pytest.raises(ValueError, match="MAP_RMS needs the 'rms' error map"):
        sx.run(sci, wht=np.ones_like(sci), params=p)
    with pytest.raises(ValueError, match="shape"):
        sx.run(sci, rms=np.ones((10, 10)), params=p)


def test_sextractor_failure_raises_with_stderr(tmp_path):
    bad = tmp_path / "bad.conv"
    bad.write_text("CONV NORM\n# no rows\n")  # SExtractor rejects an empty mask
    sci = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
    p = presets.load_config("galfind_default", WEIGHT_TYPE="NONE", FILTER_NAME=str(bad))
    with pytest.raises(RuntimeError, match="(?is)SExtractor failed.*convolution mask"):
        sx.run(sci, params=p)


def test_workdir_keeps_files_sextractor_reads(tmp_path):
    _need(XDF / "f435w_sci.fits")
    sci, _ = _getdata(XDF / "f435w_sci.fits")
    rms = 1 / np.sqrt(_getdata(XDF / "f435w_wht.fits")[0])
    p = presets.load_config("test", WEIGHT_TYPE="MAP_RMS", PHOT_APERTURES=[8.0])
    res = sx.run(sci[:200, :200], rms=rms[:200, :200], params=p, workdir=tmp_path / "w")
    files = {f.name for f in (tmp_path / "w").iterdir()}
    assert {"sci.fits", "weight.fits", "run.sex", "run.param", "filter.conv",
            "star.nnw", "cat.fits", "seg.fits", "bkg.fits"} <= files
    written = read_sex(tmp_path / "w" / "run.sex")
    assert written["DETECT_THRESH"] == 2.5 and written["DETECT_MINAREA"] == 15
    assert written["WEIGHT_TYPE"] == ("MAP_RMS",)
    assert res.meta["workdir"] == str(tmp_path / "w")
    with fits.open(tmp_path / "w" / "sci.fits") as h:
        assert h[0].data.dtype == np.dtype(">f4")
    assert res.catalog["FLUX_APER"].ndim == 1  # one aperture: a scalar column


# --------------------------------------------------------------- segmap vs NUMBER
def _kids_h():
    _need(KIDS / "H.fits")
    sci, _ = _getdata(KIDS / "H.fits", 1)
    return np.ascontiguousarray(sci, np.float32)


def test_kids_segmap_renaming_bug_is_reported():
    # SExtractor 2.25 renames segmentation pixels in place (analyse.c) and on
    # this image gives two deblended objects' pixels to the wrong label.  The
    # backend must detect it and say which objects are affected.
    if not sx.sextractor_version().startswith("2.25"):
        pytest.skip("documents SExtractor 2.25 behaviour")
    sci = _kids_h()
    p = presets.load_config("epochs-v2_deblend", WEIGHT_TYPE="NONE", BACK_TYPE="AUTO")
    res = sx.run(sci, params=p)
    assert res.meta["segmap_numbers"] == "inconsistent"
    bad = res.meta["segmap_inconsistent"]
    assert 2 <= len(bad) <= 4
    npix = np.bincount(res.segmap.ravel(), minlength=len(res.catalog) + 1)
    ok = np.setdiff1d(np.asarray(res.catalog["NUMBER"]), bad)
    assert np.all(npix[ok] > 0)
    assert np.all(npix[bad] > 0)


def _simulated_bug(res):
    """A real consistent SExtractor map with the documented renaming bug applied."""
    seg = res.segmap.copy()
    cat = res.catalog
    # Largest object A, and an object B whose bounding box is disjoint from A's.
    order = np.argsort(np.asarray(cat["ISOAREAF_IMAGE"]) if "ISOAREAF_IMAGE" in cat.colnames
                       else np.bincount(seg.ravel())[1:])[::-1]
    a = int(cat["NUMBER"][order[0]])
    ax0, ax1 = int(cat["XMIN_IMAGE"][a - 1]) - 1, int(cat["XMAX_IMAGE"][a - 1])
    ay0, ay1 = int(cat["YMIN_IMAGE"][a - 1]) - 1, int(cat["YMAX_IMAGE"][a - 1])
    for b in np.asarray(cat["NUMBER"]):
        r = cat[b - 1]
        if r["XMIN_IMAGE"] - 1 >= ax1 or r["XMAX_IMAGE"] <= ax0 or \
           r["YMIN_IMAGE"] - 1 >= ay1 or r["YMAX_IMAGE"] <= ay0:
            break
    # B's renaming took A's pixels in the upper half of A's box.
    ym = (ay0 + ay1) // 2
    sub = seg[ym:ay1, ax0:ax1]
    sub[sub == a] = b
    return seg, a, int(b)


def test_segmap_repair_of_unambiguous_renaming(xdf_run):
    res, _, _ = xdf_run
    # _check_segmap needs ISOAREAF_IMAGE and the box, which run() requests
    # internally; rebuild them from the (consistent) real map for this check.
    from astropy.table import Table
    from scipy import ndimage
    seg0 = res.segmap
    cat = Table()
    cat["NUMBER"] = res.catalog["NUMBER"]
    cat["ISOAREAF_IMAGE"] = np.bincount(seg0.ravel())[1:]
    for k in ("XMIN_IMAGE", "XMAX_IMAGE", "YMIN_IMAGE", "YMAX_IMAGE"):
        cat[k] = res.catalog[k]
    assert sx._check_segmap(seg0, cat)[1]["segmap_numbers"] == "consistent"
    bad, a, b = _simulated_bug(res)
    fixed, info = sx._check_segmap(bad, cat)
    assert info["segmap_numbers"] == "repaired"
    assert set(info["segmap_repaired"]) == {a, b}
    np.testing.assert_array_equal(fixed, seg0)
    # Lost pixels (renamed to 0, as a discarded object's clean-up does) cannot be
    # given back faithfully: the map is returned unchanged and reported.
    erased = seg0.copy()
    ys, xs = np.nonzero(erased == a)
    erased[ys[: ys.size // 3], xs[: ys.size // 3]] = 0
    out, info = sx._check_segmap(erased, cat)
    assert info["segmap_numbers"] == "inconsistent" and info["segmap_inconsistent"] == [a]
    np.testing.assert_array_equal(out, erased)


def test_des_wcs_sky_positions():
    from astropy.wcs import WCS
    path = DATA / "des_sn2006bh" / "DES_r.fits"
    _need(path)
    sci, hdr = _getdata(path, "SCI")
    wgt, _ = _getdata(path, "WGT")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wcs = WCS(hdr)
    p = presets.load_config("galfind_default", WEIGHT_TYPE="MAP_WEIGHT", MAG_ZEROPOINT=30.0,
                            PIXEL_SCALE=0.263, PHOT_APERTURES=[10.0])
    res = sx.run(sci, wht=wgt, params=p, header=hdr, wcs=wcs)
    cat = res.catalog
    assert len(cat) >= 1 and cat["ALPHA_J2000"].unit == u.deg
    sky = wcs.pixel_to_world(np.asarray(cat["X_IMAGE"]) - 1, np.asarray(cat["Y_IMAGE"]) - 1)
    np.testing.assert_allclose(cat["ALPHA_J2000"], sky.ra.deg, rtol=0, atol=1e-3 / 3600)
    np.testing.assert_allclose(cat["DELTA_J2000"], sky.dec.deg, rtol=0, atol=1e-3 / 3600)
    # The host galaxy (centre of the cutout) is the brightest detection.
    brightest = cat[np.argmax(np.asarray(cat["FLUX_AUTO"]))]
    assert abs(brightest["X_IMAGE"] - 121) < 5 and abs(brightest["Y_IMAGE"] - 121) < 8


def test_sextractor_full_default_config_reads(tmp_path):
    # `source-extractor -dd` dumps every configuration keyword with its built-in
    # default: galseg knows them all, with the same defaults except where noted.
    import subprocess
    out = subprocess.run([sx.find_binary(), "-dd"], capture_output=True, text=True, check=True)
    f = tmp_path / "dd.sex"
    f.write_text(out.stdout)
    keys = {line.split()[0] for line in out.stdout.splitlines() if line[:1].isalpha()}
    from galseg.extract.params import PARAMETER_SPEC, Params
    assert keys == set(PARAMETER_SPEC)
    dumped, default = read_sex(f), Params()
    differ = {k for k in keys if dumped[k] != default[k]}
    # Known: galseg's Params defaults PIXEL_SCALE to 0 (use the WCS) and the
    # catalogue to FITS_1.0; XSL_URL is installation-specific.
    assert differ <= {"PIXEL_SCALE", "CATALOG_TYPE", "XSL_URL", "NTHREADS"}
