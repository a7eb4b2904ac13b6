"""Band_Data, Data, layouts, zero points and settings on real FITS files."""

import math

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits

from galseg import Band_Data, Data
from galseg.config import ConfigError, settings
from galseg.imaging.layout import LayoutError
from galseg.imaging.zeropoint import zero_point_from_header
from galseg.io.fits import FitsInputError, read_image

from _util import tree_checksums

XDF_ZP = {"F435W": 25.68, "F606W": 26.51, "F850LP": 24.87, "F125W": 26.23, "F160W": 25.94}


# ----------------------------------------------------------------- Band_Data
def test_xdf_band_derives_rms_from_weights(shared_data):
    before = tree_checksums(shared_data / "xdf")
    band = Band_Data("XDF", "v1", "WFC3_IR", "f160w", shared_data / "xdf/f160w_sci.fits",
                     wht_path=shared_data / "xdf/f160w_wht.fits", pix_scale=0.06, zp=25.94)
    assert band.filt == "F160W"
    wht = fits.getdata(shared_data / "xdf/f160w_wht.fits").astype(np.float64)
    rms = band.load_rms_err()
    assert np.all(wht > 0)
    np.testing.assert_allclose(rms, 1 / np.sqrt(wht), rtol=1e-6)
    assert rms.dtype == np.float32 and rms.dtype.isnative
    sci = band.load_im()
    assert sci.dtype.isnative and not sci.flags.writeable
    np.testing.assert_array_equal(sci, fits.getdata(shared_data / "xdf/f160w_sci.fits"))
    np.testing.assert_allclose(band.aper_diams_pix, np.array([0.32, 0.5, 1, 1.5, 2]) / 0.06)
    assert tree_checksums(shared_data / "xdf") == before


def test_wht_derived_from_rms_handles_bad_values(tmp_path):
    rms = np.array([[1.0, 2.0], [0.0, np.nan]], dtype=">f4")
    fits.writeto(tmp_path / "sci.fits", np.zeros((2, 2), dtype=">f4"))
    fits.writeto(tmp_path / "rms.fits", rms)
    band = Band_Data("S", "v", "I", "F444W", tmp_path / "sci.fits", rms_err_path=tmp_path / "rms.fits")
    np.testing.assert_array_equal(band.load_wht(), [[1.0, 0.25], [0.0, 0.0]])
    out = band.load_rms_err()
    assert out[0, 1] == 2.0 and np.isinf(out[1, 0]) and np.isinf(out[1, 1])


def test_des_named_extensions_wcs_and_header_zero_point(shared_data):
    path = shared_data / "des_sn2006bh/DES_r.fits"
    band = Band_Data("DES", "Y3", "DECam", "r", path, im_ext="SCI", wht_path=path, wht_ext="WGT")
    assert band.pix_scale.to_value(u.arcsec) == pytest.approx(0.263, abs=5e-4)
    assert band.pix_scale_source == "WCS"
    assert band.zp == 30.0 and "MAGZERO" in band.zp_source
    wcs = band.load_wcs()
    ra, dec = wcs.pixel_to_world_values(120, 120)
    assert ra == pytest.approx(27.95203, abs=0.01) and dec == pytest.approx(0.26352, abs=0.01)
    assert np.all(np.isfinite(band.load_rms_err()[band.load_wht() > 0]))
    text = repr(band)
    assert "from WCS" in text and "header MAGZERO" in text


def test_argument_zero_point_wins_and_repr_says_so(shared_data):
    path = shared_data / "des_sn2006bh/DES_g.fits"
    band = Band_Data("DES", "Y3", "DECam", "g", path, "SCI", wht_path=path, wht_ext="WGT", zp=31.0)
    assert band.zp == 31.0 and band.zp_source == "argument"


def test_zero_points_from_instrument_headers():
    # HST: ABMAG = -2.5 log10(PHOTFLAM) - 5 log10(PHOTPLAM) - 2.408 (STScI definition);
    # WFC3/IR F160W: PHOTFLAM 1.9275e-20, PHOTPLAM 15369.2 -> 25.946
    hst = fits.Header({"PHOTFLAM": 1.9275e-20, "PHOTPLAM": 15369.176})
    zp, src = zero_point_from_header(hst)
    assert zp == pytest.approx(25.946, abs=2e-3) and "PHOTFLAM" in src
    # JWST i2d in MJy/sr at 0.03"/px: ZP = -2.5 log10(1e6 Jy/MJy * pixar) + 8.90 = 28.087,
    # the value every 30 mas NIRCam mosaic catalogue quotes.
    pixar = (0.03 / 206264.806) ** 2
    jwst = fits.Header({"BUNIT": "MJy/sr", "PIXAR_SR": pixar})
    zp, src = zero_point_from_header(jwst)
    assert zp == pytest.approx(-2.5 * math.log10(1e6 * pixar) + 2.5 * math.log10(3631), abs=1e-9)
    assert zp == pytest.approx(28.087, abs=1e-3) and "MJy/sr" in src
    # Same without PIXAR_SR: uses the pixel scale
    zp2, _ = zero_point_from_header(fits.Header({"BUNIT": "MJy/sr"}), 0.03)
    assert zp2 == pytest.approx(zp, abs=1e-6)
    assert zero_point_from_header(fits.Header({"BUNIT": "nJy"}))[0] == pytest.approx(31.4, abs=1e-3)
    assert zero_point_from_header(fits.Header({"OBJECT": "x"})) == (None, None)


def test_big_endian_integer_and_float_data_become_native(tmp_path):
    fits.writeto(tmp_path / "i.fits", np.arange(12, dtype=">i2").reshape(3, 4))
    data = read_image(tmp_path / "i.fits")
    assert data.dtype == np.float32 and data.dtype.isnative
    np.testing.assert_array_equal(data, np.arange(12).reshape(3, 4))


# ------------------------------------------------------------------ bad input
def _write(path, data):
    fits.writeto(path, np.asarray(data, dtype=np.float32), overwrite=True)
    return path


def test_missing_file_names_it(tmp_path):
    with pytest.raises(FitsInputError, match="nope.fits"):
        Band_Data("S", "v", "I", "F444W", tmp_path / "nope.fits", wht_path=tmp_path / "nope.fits")


def test_missing_extension_names_file_and_extension(shared_data):
    path = shared_data / "des_sn2006bh/DES_r.fits"
    with pytest.raises(FitsInputError, match=r"'ERR' not found in .*DES_r.fits.*0:SCI, 1:WGT"):
        Band_Data("DES", "Y3", "DECam", "r", path, "SCI", rms_err_path=path, rms_err_ext="ERR")
    with pytest.raises(FitsInputError, match=r"extension 5 does not exist"):
        Band_Data("DES", "Y3", "DECam", "r", path, 5, wht_path=path, wht_ext="WGT")


def test_shape_mismatch_names_both_files(tmp_path):
    sci = _write(tmp_path / "sci.fits", np.zeros((10, 12)))
    rms = _write(tmp_path / "rms.fits", np.ones((10, 11)))
    with pytest.raises(FitsInputError, match=r"rms_err map .*rms.fits.*\(10, 11\).*sci.fits.*\(10, 12\)"):
        Band_Data("S", "v", "I", "F444W", sci, rms_err_path=rms)


def test_non_2d_data_rejected(tmp_path):
    cube = _write(tmp_path / "cube.fits", np.zeros((2, 5, 5)))
    with pytest.raises(FitsInputError, match=r"cube.fits.*3-D"):
        Band_Data("S", "v", "I", "F444W", cube, rms_err_path=cube)


def test_unreadable_fits_names_file(tmp_path):
    bad = tmp_path / "garbage.fits"
    bad.write_bytes(b"this is not a FITS file" * 200)
    with pytest.raises(FitsInputError, match="garbage.fits"):
        Band_Data("S", "v", "I", "F444W", bad, rms_err_path=bad)


def test_band_needs_an_error_map(tmp_path):
    sci = _write(tmp_path / "sci.fits", np.zeros((4, 4)))
    with pytest.raises(ValueError, match="rms_err_path and/or wht_path"):
        Band_Data("S", "v", "I", "F444W", sci)


@pytest.mark.parametrize("bad", ["../up", "a/b", "..", "", ".hidden", "a\\b"])
def test_path_like_names_rejected(tmp_path, bad):
    sci = _write(tmp_path / "sci.fits", np.zeros((4, 4)))
    with pytest.raises(ValueError, match="invalid survey"):
        Band_Data(bad, "v", "I", "F444W", sci, rms_err_path=sci)


# ---------------------------------------------------------------------- Data
def test_demo_sample_shipped_in_package():
    data = Data.from_survey_version("XDF-demo", "v1")
    assert data.filters == ["F435W", "F606W", "F850LP", "F125W", "F160W"]
    assert len(data) == 5 and data.instruments == ["ACS_WFC", "WFC3_IR"]
    for band in data:
        assert band.zp == XDF_ZP[band.filt] and band.pix_scale.to_value(u.arcsec) == 0.06
    assert data["f850lp"] is data["F850LP"] is data[2]
    assert "F160W" in repr(data) and "header MAGZERO" in repr(data)


def test_shared_xdf_layout_matches_the_files(shared_data):
    data = Data.from_survey_version("XDF", "v1", data_dir=shared_data)
    assert len(data) == 9 and data.filters[0] == "F435W" and data.filters[-1] == "F160W"
    np.testing.assert_array_equal(
        data["F125W"].load_im(), fits.getdata(shared_data / "xdf/f125w_sci.fits"))
    sub = Data.from_survey_version("XDF", "v1", "WFC3_IR", data_dir=shared_data)
    assert sub.filters == ["F105W", "F125W", "F140W", "F160W"]


def test_unknown_filter_lists_available():
    data = Data.from_survey_version("XDF-demo", "v1")
    with pytest.raises(KeyError, match="F999W.*F435W, F606W, F850LP, F125W, F160W"):
        data["F999W"]
    with pytest.raises(KeyError, match="F999W not found.*available"):
        Data.from_survey_version("XDF-demo", "v1", filters=["F160W", "F999W"])


def test_unknown_survey_and_version():
    with pytest.raises(LayoutError, match="survey 'NOPE' is in no layout; known surveys: .*XDF-demo"):
        Data.from_survey_version("NOPE", "v1")
    with pytest.raises(LayoutError, match="version 'v9' of survey 'XDF-demo'.*v1"):
        Data.from_survey_version("XDF-demo", "v9")


def _galfind_tree(root, filters, mef=True):
    """A galfind-style tree {data}/JWST/{survey}/NIRCam/{version}/30mas with real FITS files."""
    d = root / "JWST" / "CEERS" / "NIRCam" / "v9" / "30mas"
    d.mkdir(parents=True)
    rng = np.random.default_rng(1)
    pixar = (0.03 / 206264.806) ** 2
    for i, filt in enumerate(filters):
        sci = rng.normal(0, 1, (40, 50)).astype(np.float32)
        hdr = fits.Header({"BUNIT": "MJy/sr", "PIXAR_SR": pixar})
        if mef:
            fits.HDUList([
                fits.PrimaryHDU(),
                fits.ImageHDU(sci, hdr, name="SCI"),
                fits.ImageHDU(np.full_like(sci, 0.5 + i), name="ERR"),
                fits.ImageHDU(np.full_like(sci, 4.0), name="WHT"),
            ]).writeto(d / f"ceers_nircam_{filt.lower()}_v9_i2d.fits")
        else:
            fits.writeto(d / f"ceers_{filt}_sci.fits", sci, hdr)
            fits.writeto(d / f"ceers_{filt}_wht.fits", np.full_like(sci, 4.0))
    return d


GALFIND_LAYOUT = {
    "CEERS": {"v9": {"NIRCam": {
        "dir": "{data}/{facility}/{survey}/{instrument}/{version}/{pixscale}mas",
        "vars": {"facility": "JWST", "pixscale": 30},
        "sci": "*_{filt}_v9_i2d.fits", "sci_ext": "SCI",
        "rms_err": "*_{filt}_v9_i2d.fits", "rms_err_ext": "ERR",
        "wht": "*_{filt}_v9_i2d.fits", "wht_ext": "WHT",
    }}}
}


def test_galfind_tree_with_multi_extension_files(tmp_path):
    filters = ["F444W", "F150W2", "F150W", "F322W2", "F090W"]
    d = _galfind_tree(tmp_path, filters)
    before = tree_checksums(tmp_path)
    data = Data.from_survey_version("CEERS", "v9", layout=GALFIND_LAYOUT, data_dir=tmp_path,
                                    work_dir=tmp_path / "work")
    assert data.filters == ["F090W", "F150W", "F150W2", "F322W2", "F444W"]
    assert data["F150W"].im_path.name == "ceers_nircam_f150w_v9_i2d.fits"
    assert data["F150W2"].im_path.name == "ceers_nircam_f150w2_v9_i2d.fits"
    # ERR extension of F150W (index 2 in `filters`) is 2.5 everywhere
    assert np.all(data["F150W"].load_rms_err() == 2.5)
    assert data["F150W"].zp == pytest.approx(28.087, abs=1e-3)
    assert data["F150W"].zp_source.startswith("header BUNIT")
    assert tree_checksums(tmp_path) == before, "discovery must not modify the input tree"
    assert not (d / "work").exists() and not (tmp_path / "work").exists()


def test_ambiguous_files_list_candidates(tmp_path):
    d = _galfind_tree(tmp_path, ["F444W"])
    fits.writeto(d / "other_f444w_v9_i2d.fits", np.zeros((40, 50), np.float32))
    with pytest.raises(LayoutError, match=r"2 science files match filter F444W.*"
                       r"ceers_nircam_f444w_v9_i2d.fits, other_f444w_v9_i2d.fits"):
        Data.from_survey_version("CEERS", "v9", layout=GALFIND_LAYOUT, data_dir=tmp_path)


def test_layout_without_error_map_files(tmp_path):
    d = _galfind_tree(tmp_path, ["F444W"], mef=False)
    (d / "ceers_F444W_wht.fits").unlink()
    layout = {"CEERS": {"v9": {"NIRCam": {
        "dir": str(d), "sci": "ceers_{filt}_sci.fits", "wht": "ceers_{filt}_wht.fits"}}}}
    with pytest.raises(LayoutError, match="F444W has a science file .* but no rms_err or wht"):
        Data.from_survey_version("CEERS", "v9", layout=layout)


def test_hand_made_data_and_duplicates(shared_data):
    bands = [Band_Data("XDF", "v1", "WFC3_IR", f, shared_data / f"xdf/{f}_sci.fits",
                       wht_path=shared_data / f"xdf/{f}_wht.fits", pix_scale=0.06)
             for f in ("f160w", "f105w")]
    data = Data(bands)
    assert data.filters == ["F105W", "F160W"]
    with pytest.raises(ValueError, match="two bands with filter F160W"):
        Data(bands + [bands[0]])


# ------------------------------------------------------------------ settings
def test_settings_user_file_and_environment(tmp_path, monkeypatch):
    user = tmp_path / "user.yaml"
    user.write_text("aper_diams: [0.5, 1.0]\nsegmentation: {method: sextractor}\n")
    monkeypatch.setenv("GALSEG_CONFIG", str(user))
    monkeypatch.setenv("GALSEG_WORK_DIR", str(tmp_path / "w"))
    conf = settings()
    assert conf["aper_diams"] == [0.5, 1.0]
    assert conf["segmentation"] == {"config": "galfind_default", "method": "sextractor",
                                    "err_type": "rms_err"}
    assert conf["work_dir"] == tmp_path / "w"
    data = Data.from_survey_version("XDF-demo", "v1")
    np.testing.assert_allclose(data["F160W"].aper_diams.to_value(u.arcsec), [0.5, 1.0])
    assert data["F160W"].work_dir == tmp_path / "w"


def test_settings_bad_yaml_names_file(tmp_path, monkeypatch):
    user = tmp_path / "broken.yaml"
    user.write_text("work_dir: [unclosed\n")
    monkeypatch.setenv("GALSEG_CONFIG", str(user))
    with pytest.raises(ConfigError, match="broken.yaml"):
        settings()
    user.write_text("!!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        settings()
