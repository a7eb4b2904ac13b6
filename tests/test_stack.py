"""Stacked detection bands: the XDF reference stack, unit conversion, masking, caching."""

import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from galseg.imaging.band import Band_Data
from galseg.imaging.data import Data
from galseg.pipeline.stack import _accumulate_rows, _Reader, parse_band_list, stack_bands, stack_name

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
XDF = SHARED / "xdf"
WFC3 = ["F105W", "F125W", "F140W", "F160W"]

pytestmark = pytest.mark.skipif(not XDF.is_dir(), reason=f"shared XDF data not found at {XDF}")


@pytest.fixture
def xdf(tmp_path):
    return Data.from_survey_version("XDF", "v1", data_dir=SHARED, work_dir=tmp_path / "work")


def _xdf_band(filt, tmp_path, *, sci=None, wht=None, zp=25.94, pix_scale=0.06, rms=None,
              name=None):
    """A band from XDF files, or from modified copies written into tmp_path."""
    src = filt.lower()
    paths = {}
    for kind, arr in (("sci", sci), ("wht", wht), ("rms", rms)):
        if arr is None:
            paths[kind] = XDF / f"{src}_{kind}.fits" if kind != "rms" else None
        else:
            p = tmp_path / f"{name or filt}_{kind}.fits"
            fits.PrimaryHDU(np.asarray(arr, dtype=np.float32)).writeto(p)
            paths[kind] = p
    if rms is not None:
        paths["wht"] = None
    return Band_Data("XDF", "v1", "WFC3_IR", name or filt, paths["sci"], 0,
                     rms_err_path=paths["rms"], wht_path=paths["wht"], pix_scale=pix_scale,
                     zp=zp, work_dir=tmp_path / "work")


def test_reproduces_the_xdf_detection_stack(xdf):
    ref_sci = fits.getdata(XDF / "detection_sci.fits")
    ref_wht = fits.getdata(XDF / "detection_wht.fits")
    # The reference was made without zero-point conversion: the bands' ZPs differ.
    with pytest.warns(UserWarning, match="different zero points"):
        exact = xdf.stack(WFC3, common_zp=None, dtype="float64")
    sci = fits.getdata(exact.im_path)
    wht = fits.getdata(exact.wht_path)
    assert sci.dtype == np.dtype(">f8")
    np.testing.assert_array_equal(sci, ref_sci)
    np.testing.assert_array_equal(wht, ref_wht)

    with pytest.warns(UserWarning, match="different zero points"):
        st = xdf.stack("F160W+F105W+F140W+F125W", common_zp=None)  # any order, as a string
    assert isinstance(st, Band_Data)
    assert st.filt == "F105W+F125W+F140W+F160W" and st.stack_of == WFC3
    s32 = fits.getdata(st.im_path)
    assert s32.dtype == np.dtype(">f4")
    nz = ref_sci != 0
    assert np.all(np.abs(s32[nz] - ref_sci[nz]) <= 6.0e-8 * np.abs(ref_sci[nz]))  # float32 rounding
    np.testing.assert_allclose(st.load_wht(), ref_wht, rtol=6e-8, atol=0)
    np.testing.assert_allclose(st.load_rms_err(), 1 / np.sqrt(ref_wht), rtol=2e-7)
    assert st.zp == xdf["F105W"].zp and st.shape == (500, 500)
    assert st.pix_scale.value == pytest.approx(0.06)
    # Files live in the work directory's stacks folder, named after the bands.
    assert st.im_path.parent == xdf["F105W"].work_dir / "WFC3_IR" / "v1" / "XDF" / "stacks"
    assert st.im_path.name.startswith("XDF_F105W+F125W+F140W+F160W_")


def test_stack_is_cached_and_keyed_on_inputs(xdf, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        a = xdf.stack(WFC3, common_zp=None)
        mtime = a.im_path.stat().st_mtime_ns
        b = xdf.stack(WFC3, common_zp=None)
    assert not a.stack_from_cache and b.stack_from_cache
    assert b.im_path == a.im_path and b.im_path.stat().st_mtime_ns == mtime
    c = xdf.stack(WFC3)  # "auto": converted, so another stack side by side
    assert not c.stack_from_cache and c.im_path != a.im_path and a.im_path.exists()
    # A damaged stack file is detected and rebuilt.
    with open(a.wht_path, "r+b") as f:
        f.seek(-100, 2)
        f.write(b"\x7f" * 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        d = xdf.stack(WFC3, common_zp=None)
    assert not d.stack_from_cache
    np.testing.assert_allclose(d.load_wht(), fits.getdata(XDF / "detection_wht.fits"), rtol=6e-8)


def test_zero_point_conversion(tmp_path):
    sci = fits.getdata(XDF / "f160w_sci.fits")
    wht = fits.getdata(XDF / "f160w_wht.fits")
    a = _xdf_band("F160W", tmp_path, zp=25.94)
    # The same image in a unit 10x smaller: zero point 2.5 mag larger.
    b = _xdf_band("F160W", tmp_path, sci=sci * 10, wht=wht / 100, zp=25.94 + 2.5, name="F200W")

    auto = stack_bands([b, a])  # converted to the first band's (F160W's) zero point
    assert auto.zp == pytest.approx(25.94) and auto.stack_scales == pytest.approx([1.0, 0.1])
    np.testing.assert_allclose(auto.load_im(), sci, rtol=2e-6, atol=1e-7 * np.abs(sci).max())
    np.testing.assert_allclose(auto.load_wht(), 2 * wht, rtol=2e-6)

    njy = stack_bands([a, b], common_zp=31.4)  # nJy
    scale = 10 ** (0.4 * (31.4 - 25.94))
    assert njy.zp == pytest.approx(31.4)
    np.testing.assert_allclose(njy.load_im(), sci * scale, rtol=2e-6,
                               atol=1e-7 * np.abs(sci * scale).max())
    np.testing.assert_allclose(njy.load_wht(), 2 * wht / scale**2, rtol=2e-6)

    with pytest.warns(UserWarning, match="same flux unit"):
        raw = stack_bands([a, b], common_zp=None)
    # Unconverted: (s w + 10 s w/100) / (w + w/100) = s * 1.1 / 1.01
    np.testing.assert_allclose(raw.load_im(), sci * (1.1 / 1.01), rtol=2e-6,
                               atol=1e-7 * np.abs(sci).max())

    nozp = _xdf_band("F160W", tmp_path, zp=None, name="F150W")
    with pytest.raises(ValueError, match="no zero point for F150W"):
        stack_bands([a, b, nozp])


def test_unusable_pixels_are_masked_never_nan(tmp_path):
    sci1 = fits.getdata(XDF / "f125w_sci.fits").copy()
    wht1 = fits.getdata(XDF / "f125w_wht.fits").copy()
    sci2 = fits.getdata(XDF / "f160w_sci.fits").copy()
    wht2 = fits.getdata(XDF / "f160w_wht.fits").copy()
    wht1[:50, :50] = 0
    wht2[:50, :50] = 0          # no data in either band
    sci1[100, 100] = np.nan     # a bad pixel in one band only
    wht1[300, 300] = np.inf     # a bad weight in one band only
    wht2[200, 200] = 0          # no data in one band only
    with np.errstate(divide="ignore"):
        rms2 = np.where(wht2 > 0, 1 / np.sqrt(wht2), 0)  # F160W given as an rms map
    a = _xdf_band("F125W", tmp_path, sci=sci1, wht=wht1, zp=26.23)
    b = _xdf_band("F160W", tmp_path, sci=sci2, rms=rms2, zp=26.23)
    st = stack_bands([a, b])
    s, w = st.load_im(), st.load_wht()
    assert np.isfinite(s).all() and np.isfinite(w).all()
    assert (s[:50, :50] == 0).all() and (w[:50, :50] == 0).all()
    assert np.isinf(st.load_rms_err()[:50, :50]).all()
    assert s[100, 100] == pytest.approx(sci2[100, 100], rel=1e-6)
    assert w[100, 100] == pytest.approx(b.load_wht()[100, 100], rel=1e-6)
    assert s[200, 200] == pytest.approx(sci1[200, 200], rel=1e-6)
    assert s[300, 300] == pytest.approx(sci2[300, 300], rel=1e-6)
    # Weights from an rms map follow Band_Data.load_wht (1/rms**2, 0 where rms <= 0).
    r = _Reader(b, 1.0)
    try:
        sb, mb = r.block(0, 500)
    finally:
        r.close()
    num, wb = np.zeros(sb.shape), np.zeros(sb.shape)
    _accumulate_rows(0, 500, sb, mb, False, 1.0, num, wb)   # one band: the sums are its own
    expected = np.where(np.isfinite(sci2), b.load_wht(), 0)
    np.testing.assert_array_equal(wb.astype(np.float32), expected)


def test_incompatible_bands_are_refused(tmp_path):
    a = _xdf_band("F125W", tmp_path, zp=26.23)
    coarse = _xdf_band("F160W", tmp_path, zp=26.23, pix_scale=0.12)
    with pytest.raises(ValueError, match="pixel scales differ"):
        stack_bands([a, coarse])
    small = fits.getdata(XDF / "f160w_sci.fits")[:300, :400]
    cut = _xdf_band("F160W", tmp_path, sci=small, wht=np.ones_like(small), zp=26.23,
                    name="F140W")
    with pytest.raises(ValueError, match=r"shapes differ \(500x500 and 400x300 px\)"):
        stack_bands([a, cut])
    with pytest.raises(ValueError, match="at least two bands"):
        stack_bands([a])
    with pytest.raises(ValueError, match="given twice"):
        stack_bands([a, a])


def test_names():
    assert parse_band_list("f444w+F277W") == ["F444W", "F277W"]
    assert parse_band_list(["F356W", "f277w"]) == ["F356W", "F277W"]
    assert stack_name(["F444W", "F277W", "F356W"]) == "F277W+F356W+F444W"
    with pytest.raises(ValueError, match="empty filter name"):
        parse_band_list("F277W++F444W")


def test_data_stack_of_one_band_is_the_band(xdf):
    assert xdf.stack(["F160W"]) is xdf["F160W"]
