"""Forced photometry (dual-image mode) and the multi-band catalogue.

The reference is SExtractor 2.25 run in dual-image mode on the same files, as
galfind runs it (``source-extractor det.fits,band.fits -c default.sex ...``).
"""

import os
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from galseg.extract.engine import detect_sources, prepare_image
from galseg.extract.presets import filter_path, nnw_path, param_path, preset_path
from galseg.imaging.band import Band_Data
from galseg.imaging.data import Data
from galseg.pipeline.band import band_params
from galseg.pipeline.catalog import SHARED_COLUMNS, join_forced
from galseg.pipeline.forced import perform_forced_phot, read_catalog

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
XDF = SHARED / "xdf"
WFC3 = ["F105W", "F125W", "F140W", "F160W"]

pytestmark = pytest.mark.skipif(not XDF.is_dir(), reason=f"shared XDF data not found at {XDF}")


@pytest.fixture(scope="module")
def xdf_forced(tmp_path_factory):
    """All nine XDF bands measured on the WFC3 stack (galseg, serial)."""
    work = tmp_path_factory.mktemp("forced")
    data = Data.from_survey_version("XDF", "v1", data_dir=SHARED, work_dir=work)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the stack's differing zero points
        det = data.stack(WFC3, common_zp=None)
        data.perform_forced_phot(det, workers=1, progress=False)
    return data, det


def _sextractor_dual(binary, det, band, workdir: Path) -> Table:
    """SExtractor 2.25 dual-image mode on the band's and the detection's files."""
    params = band_params(band, "rms_err", "galfind_default")
    naper = len(params["PHOT_APERTURES"])
    param_file = workdir / "cols.param"
    lines = [ln.replace("(1)", f"({naper})") for ln in param_path("galseg").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    param_file.write_text("\n".join(lines) + "\n")
    det_rms = workdir / "det_rms.fits"
    if not det_rms.exists():
        shutil.copyfile(det.write_derived("rms_err"), det_rms)
    meas_rms = band.write_derived("rms_err")
    cat = workdir / f"{band.filt}.fits"
    command = [
        binary, f"{det.im_path},{band.im_path}", "-c", str(preset_path("galfind_default")),
        "-PARAMETERS_NAME", str(param_file), "-CATALOG_NAME", str(cat),
        "-CATALOG_TYPE", "FITS_1.0", "-CHECKIMAGE_TYPE", "NONE", "-VERBOSE_TYPE", "QUIET",
        "-WEIGHT_TYPE", "MAP_RMS,MAP_RMS", "-WEIGHT_IMAGE", f"{det_rms},{meas_rms}",
        "-PHOT_APERTURES", ",".join(repr(float(d)) for d in params["PHOT_APERTURES"]),
        "-MAG_ZEROPOINT", repr(band.zp), "-PIXEL_SCALE", "0.06",
        "-FILTER_NAME", str(filter_path(params)), "-STARNNW_NAME", str(nnw_path(params)),
    ]
    proc = subprocess.run(command, cwd=workdir, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    with fits.open(cat) as hdul:
        return Table(hdul[1].data)


@pytest.mark.sextractor
def test_forced_photometry_matches_sextractor_dual_mode(xdf_forced, sextractor_binary, tmp_path):
    data, det = xdf_forced
    assert len(data) == 9
    for band in data:
        ours = read_catalog(data.forced_phot.cat_paths[band.filt])
        ref = _sextractor_dual(sextractor_binary, det, band, tmp_path)
        assert len(ref) > 40
        # Match by NUMBER, and check that NUMBER means the same object.
        common, io, ir = np.intersect1d(ours["NUMBER"], ref["NUMBER"], return_indices=True)
        assert len(common) >= 0.99 * len(ref), band.filt
        o, r = ours[io], ref[ir]
        dpos = np.hypot(np.asarray(o["X_IMAGE"]) - r["X_IMAGE"],
                        np.asarray(o["Y_IMAGE"]) - r["Y_IMAGE"])
        same = dpos < 0.01
        assert same.mean() >= 0.99, band.filt
        fo = np.asarray(o["FLUX_APER"], dtype=float)
        fr = np.asarray(r["FLUX_APER"], dtype=float)
        assert fo.shape == fr.shape == (len(common), 5)
        close = np.all(np.abs(fo - fr) <= 0.005 * np.abs(fr), axis=1) & same
        assert close.sum() >= 0.99 * len(ref), (band.filt, close.mean())
        # AUTO (detection-band Kron ellipse) and ISO (detection footprint) too.
        for col in ("FLUX_AUTO", "FLUX_ISO", "FLUXERR_APER"):
            a, b = np.asarray(o[col], dtype=float), np.asarray(r[col], dtype=float)
            ok = np.abs(a - b) <= 0.005 * np.abs(b)
            ok = ok.all(axis=1) if ok.ndim == 2 else ok
            assert (ok & same).sum() >= 0.99 * len(ref), (band.filt, col)


@pytest.mark.sextractor
def test_forced_photometry_with_weight_maps_matches_sextractor(sextractor_binary, tmp_path):
    """MAP_WEIGHT for both images (galfind's err_type="wht").

    The rescaled weights give a lower threshold than the rms maps, hence many
    more faint detections and CLEAN merges: F814W as the detection band has
    ~240 merges.  SExtractor leaves the last rows of a merged detection
    blanked (`galseg.extract.engine.stuck_rows`), which changes the
    apertures of the objects around them.
    """
    from galseg.pipeline.forced import detection_state, forced_params, measure_forced, \
        sextractor_dual

    data = Data.from_survey_version("XDF", "v1", data_dir=SHARED, work_dir=tmp_path,
                                    filters=["F814W", "F160W"])
    det = data["F814W"]
    state = detection_state(det, "wht")
    arrays = state.load()
    assert (np.asarray(arrays["blank"]) & (np.asarray(arrays["own_segmap"]) == 0)
            & (np.asarray(arrays["segmap"]) > 0)).sum() > 100  # merged, still blanked
    for band in data:
        params = forced_params(band, "wht")
        ours = measure_forced(band, arrays, params, "wht")
        ref = sextractor_dual(det, band, "wht", params, binary=sextractor_binary)
        assert len(ref) == len(ours) > 150
        np.testing.assert_array_equal(np.asarray(ours["NUMBER"]), np.asarray(ref["NUMBER"]))
        for col in ("FLUX_APER", "FLUXERR_APER", "FLUX_AUTO", "FLUX_RADIUS", "FLUX_ISO"):
            a, b = np.asarray(ours[col], dtype=float), np.asarray(ref[col], dtype=float)
            ok = np.abs(a - b) <= 0.005 * np.abs(b)
            ok = ok.all(axis=1) if ok.ndim == 2 else ok
            assert ok.mean() >= 0.99, (band.filt, col, ok.mean())


def test_forced_catalogues_share_the_detection(xdf_forced):
    data, det = xdf_forced
    cats = {b.filt: read_catalog(data.forced_phot.cat_paths[b.filt]) for b in data}
    det_cat = det.load_cat()  # the detection band's own segmentation catalogue
    n = len(det_cat)
    assert n > 40
    for filt, cat in cats.items():
        np.testing.assert_array_equal(cat["NUMBER"], np.arange(1, n + 1))
        # (KRON_RADIUS is measured on the detection image, but SExtractor reports 0
        # where the band's AUTO flux is not positive, so it is not shared.)
        for col in ("X_IMAGE", "Y_IMAGE", "A_IMAGE", "THETA_IMAGE", "XMIN_IMAGE", "YMAX_IMAGE"):
            np.testing.assert_array_equal(cat[col], det_cat[col], err_msg=f"{filt} {col}")
        assert cat.meta["MAGZERO"] == pytest.approx(data[filt].zp)
    # Each band's own pixels: the fluxes differ from band to band.
    f435, f160 = cats["F435W"]["FLUX_AUTO"], cats["F160W"]["FLUX_AUTO"]
    assert np.median(np.abs(f435 - f160) / np.abs(f160)) > 0.2
    assert data.forced_phot_band is det
    # The detection segmentation map is the one the catalogues refer to.
    seg = det.load_seg()
    assert seg.max() == n


def test_detection_band_measured_on_itself_is_its_own_catalogue(tmp_path):
    data = Data.from_survey_version("XDF", "v1", data_dir=SHARED, work_dir=tmp_path,
                                    filters=["F125W", "F160W"])
    res = perform_forced_phot(list(data), data["F160W"], workers=1, progress=False)
    forced = read_catalog(res.cat_paths["F160W"])
    single = data["F160W"].load_cat()  # segmented as the detection band
    assert forced.colnames == single.colnames and len(forced) == len(single) > 30
    for col in single.colnames:
        np.testing.assert_array_equal(forced[col], single[col], err_msg=col)
    assert res.rows[1]["status"] == "computed"
    # measured from memory while the detection state was written: committed on return
    from galseg.pipeline.forced import _WRITING
    assert not _WRITING and res.state.fileset().is_valid(res.state.key_sha256)
    assert res.state.load()["segmap"].max() == len(single)

    again = perform_forced_phot(list(data), data["F160W"], workers=1, progress=False)
    assert [r["status"] for r in again.rows] == ["cached", "cached"]
    assert again.cat_paths == res.cat_paths
    # Other apertures: a new product beside the old one.
    wide = Band_Data("XDF", "v1", "WFC3_IR", "F125W", XDF / "f125w_sci.fits",
                     wht_path=XDF / "f125w_wht.fits", pix_scale=0.06, zp=26.23,
                     aper_diams=[0.5, 1.0], work_dir=tmp_path)
    other = perform_forced_phot([wide], data["F160W"], workers=1, progress=False)
    assert other.rows[0]["status"] == "computed"
    assert other.cat_paths["F125W"] != res.cat_paths["F125W"]
    assert read_catalog(other.cat_paths["F125W"])["FLUX_APER"].shape[1] == 2
    redo = perform_forced_phot([wide], data["F160W"], workers=1, progress=False, overwrite=True)
    assert redo.rows[0]["status"] == "computed"


def test_measurement_image_is_the_engines(tmp_path):
    """The measurement band's pixels, noise and background are those of a full
    extraction (with and without masked pixels), without running a detection."""
    for err_type, filt, masked in (("rms_err", "f435w", False), ("wht", "f160w", False),
                                   ("wht", "f160w", True)):
        band = Band_Data("XDF", "v1", "ACS_WFC", filt, XDF / f"{filt}_sci.fits",
                         wht_path=XDF / f"{filt}_wht.fits", pix_scale=0.06, zp=25.0,
                         work_dir=tmp_path)
        params = band_params(band, err_type, "galfind_default", BACK_TYPE="AUTO")
        kw = {"rms": band.load_rms_err()} if err_type == "rms_err" else {"wht": band.load_wht()}
        if masked:
            mask = np.zeros(band.shape, bool)
            mask[100:160, 200:300] = True
            kw["mask"] = mask
        full = detect_sources(band.load_im(), params=params, **kw)
        prep = prepare_image(band.load_im(), params=params, **kw)
        assert len(full.objects) > 30
        np.testing.assert_array_equal(prep.data, full.data)
        np.testing.assert_array_equal(prep.rms, full.rms)
        np.testing.assert_array_equal(prep.background.background, full.background.background)
        np.testing.assert_array_equal(prep.mask, full.mask)
        assert prep.mask.any() == masked and not prep.data.flags.writeable
        assert prep.meta["backsig"] == full.meta["backsig"]
        assert prep.meta["weight_scale"] == full.meta["weight_scale"]


def test_multiband_catalogue_of_the_demo(tmp_path):
    data = Data.from_survey_version("XDF-demo", "v1", work_dir=tmp_path)
    data.perform_forced_phot("F125W+F160W", workers=1, progress=False)
    cat = data.load_cat()
    assert data.cat_path.is_file() and data.cat_path.name.endswith("_multiband_cat.fits")
    assert data.cat_path.parent.parent.parent.parent.parent.name == "ACS_WFC+WFC3_IR"
    per_band = {b.filt: read_catalog(data.forced_phot.cat_paths[b.filt]) for b in data}
    n = len(per_band["F160W"])
    assert len(cat) == n > 30
    # Naming scheme: detection columns once, the rest per band with a _{FILTER} suffix.
    assert cat.colnames[: len(SHARED_COLUMNS)] == list(SHARED_COLUMNS)
    for b in data:
        for col in per_band[b.filt].colnames:
            name = col if col in SHARED_COLUMNS else f"{col}_{b.filt}"
            np.testing.assert_array_equal(cat[name], per_band[b.filt][col], err_msg=name)
            assert cat[name].unit == per_band[b.filt][col].unit
    assert cat["FLUX_APER_F435W"].shape == (n, 5) and str(cat["MAG_AUTO_F160W"].unit) == "mag"
    assert cat["ALPHA_J2000"].unit == "deg"
    # Descriptions: FITS TCOMMn cards and the README list every column.
    hdr = fits.getheader(data.cat_path, 1)
    assert hdr["DETBAND"] == "F125W+F160W" and hdr["APER1"] == pytest.approx(0.32)
    assert hdr[f"TCOMM{cat.colnames.index('FLUX_AUTO_F606W') + 1}"].startswith("F606W: Flux within")
    readme = data.cat_path.with_name(data.cat_path.name.replace("_cat.fits", "_README.txt"))
    text = readme.read_text()
    assert all(f"  {c} " in text for c in cat.colnames)
    assert "F125W+F160W (stack of F125W, F160W)" in text and "FLUX_APER_F444W" in text
    # A rerun reuses everything.
    mtime = data.cat_path.stat().st_mtime_ns
    data.perform_forced_phot("F125W+F160W", workers=1, progress=False)
    assert data.cat_path.stat().st_mtime_ns == mtime


def test_cache_list_and_clean_cover_stacks_and_catalogues(tmp_path):
    """`galseg cache list|clean` see the pipeline's file sets, not only segmentation products."""
    from galseg.products import clean, list_products

    data = Data.from_survey_version("XDF-demo", "v1", work_dir=tmp_path)
    data.perform_forced_phot("F125W+F160W", workers=1, progress=False)
    table = list_products(tmp_path)
    kinds = sorted(set(table["kind"]))
    assert kinds == ["detection_state", "forced_catalog", "multiband_catalog", "segmentation",
                     "stack"]
    forced = table[table["kind"] == "forced_catalog"]
    assert sorted(forced["filt"]) == sorted(b.filt for b in data)
    assert set(forced["detection"]) == {"F125W+F160W"} and all(table["valid"])
    state = table[table["kind"] == "detection_state"][0]
    assert state["nobj"] == len(data.load_cat()) and state["size"] > 0
    assert clean(tmp_path) == []                       # nothing invalid

    # A damaged forced catalogue: listed invalid with the reason, cleaned alone.
    path = data.forced_phot.cat_paths["F606W"]
    with open(path, "r+b") as f:
        f.seek(-10, os.SEEK_END)
        f.write(b"0123456789")
    table = list_products(tmp_path)
    bad = table[~table["valid"]]
    assert list(bad["filt"]) == ["F606W"] and "checksum mismatch" in bad["reason"][0]
    removed = clean(tmp_path)
    sidecar = path.with_name(path.name[: -len("_cat.fits")] + ".json")
    assert sorted(removed) == sorted([path, sidecar]) and not path.exists()
    assert len(list_products(tmp_path)) == len(table) - 1 and all(list_products(tmp_path)["valid"])
    # The pipeline makes it again; everything else is reused.
    data.perform_forced_phot("F125W+F160W", workers=1, progress=False)
    rows = {r["filt"]: r["status"] for r in data.forced_phot.rows}
    assert rows["F606W"] == "computed" and list(rows.values()).count("computed") == 1

    # invalid_only=False with a filter removes that band's valid sets only.
    removed = clean(tmp_path, invalid_only=False, filt="F435W")
    left = list_products(tmp_path)
    assert removed and "F435W" not in set(left["filt"]) and len(left) == len(table) - 1


def test_join_is_by_number_not_row_order():
    rng = np.random.default_rng(3)
    n = 20
    base = Table({"NUMBER": np.arange(1, n + 1), "X_IMAGE": rng.random(n)})
    a = base.copy()
    a["FLUX_APER"] = rng.random((n, 3))
    b = base.copy()
    b["FLUX_APER"] = rng.random((n, 3))
    joined = join_forced({"F1": a, "F2": b})
    shuffled = b[rng.permutation(n)]
    again = join_forced({"F1": a, "F2": shuffled})
    for col in joined.colnames:
        np.testing.assert_array_equal(joined[col], again[col])
    np.testing.assert_array_equal(joined["FLUX_APER_F2"], b["FLUX_APER"])
    with pytest.raises(ValueError, match="do not have the same objects"):
        join_forced({"F1": a, "F2": b[1:]})
    moved = b.copy()
    moved["X_IMAGE"][4] += 1
    with pytest.raises(ValueError, match="X_IMAGE differs between F1 and F2"):
        join_forced({"F1": a, "F2": moved})


def test_bands_must_be_aligned_with_the_detection(tmp_path):
    xdf = Data.from_survey_version("XDF", "v1", data_dir=SHARED, work_dir=tmp_path,
                                   filters=["F160W"])
    if not (SHARED / "des_sn2006bh").is_dir():
        pytest.skip("DES data not found")
    des = Data.from_survey_version("DES-SN2006bh", "Y3", data_dir=SHARED, work_dir=tmp_path,
                                   filters=["g"])
    with pytest.raises(ValueError, match=r"band g has shape 241x241 .* F160W has 500x500"):
        perform_forced_phot(list(des), xdf["F160W"], workers=1, progress=False)
    with pytest.raises(ValueError, match="method must be one of"):
        perform_forced_phot(list(xdf), xdf["F160W"], method="photutils")
