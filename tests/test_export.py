"""Exports read back: DS9 regions via `regions`, index PNG + JSON, GeoJSON, areas."""

import json
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from matplotlib.path import Path as MplPath
from PIL import Image
from regions import CirclePixelRegion, EllipsePixelRegion, EllipseSkyRegion, Regions

from galseg import Band_Data, Data
from galseg.export import FORMATS, export
from galseg.export.ds9 import catalog_regions
from galseg.export.index_png import read_index_png, write_index_png
from galseg.imaging.layout import demo_dir

from _util import des_r_band  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DES_R = DATA / "des_sn2006bh" / "DES_r.fits"


def _demo_band(filt, zp, work_dir, instrument="ACS_WFC", sci=None, wht=None, ext=1):
    d = demo_dir()
    name = filt.lower()
    return Band_Data("XDF", "v1", instrument, filt, sci or d / f"xdf_{name}_sci.fits", ext,
                     wht_path=wht or d / f"xdf_{name}_wht.fits", wht_ext=ext, pix_scale=0.06,
                     zp=zp, work_dir=work_dir)


@pytest.fixture(scope="module")
def f606w(tmp_path_factory):
    return _demo_band("F606W", 26.51, tmp_path_factory.mktemp("exp606")).segment()


@pytest.fixture(scope="module")
def des(tmp_path_factory):
    return des_r_band(tmp_path_factory.mktemp("expdes")).segment()


def _angle_diff(a, b, period=180.0):
    d = (np.asarray(a) - np.asarray(b)) % period
    return np.minimum(d, period - d)


# ------------------------------------------------------------------ ds9
def test_ds9_pixel_regions_parse_back_to_the_catalogue(f606w, tmp_path):
    cat = f606w.load_cat()
    path = f606w.export(tmp_path / "f606w.reg", format="ds9")
    assert path.read_text().splitlines()[3] == "image"
    regs = Regions.read(path, format="ds9")
    ellipses = [r for r in regs if isinstance(r, EllipsePixelRegion)]
    circles = [r for r in regs if isinstance(r, CirclePixelRegion)]
    diams = f606w.aper_diams_pix
    assert len(ellipses) == len(cat) and len(circles) == len(cat) * len(diams)
    by_number = {int(r.meta["text"]): r for r in ellipses}
    assert sorted(by_number) == list(cat["NUMBER"])
    for row in cat:
        r = by_number[int(row["NUMBER"])]
        # ds9 image coordinates are 1-based, regions' are 0-based
        assert r.center.x == pytest.approx(row["X_IMAGE"] - 1, abs=1e-4)
        assert r.center.y == pytest.approx(row["Y_IMAGE"] - 1, abs=1e-4)
        assert r.width == pytest.approx(2 * row["KRON_RADIUS"] * row["A_IMAGE"], rel=1e-4)
        assert r.height == pytest.approx(2 * row["KRON_RADIUS"] * row["B_IMAGE"], rel=1e-4)
        assert _angle_diff(r.angle.to_value("deg"), row["THETA_IMAGE"]) < 1e-3
    radii = np.array([c.radius for c in circles]).reshape(len(cat), len(diams))
    np.testing.assert_allclose(radii, np.tile(diams / 2, (len(cat), 1)), rtol=1e-4)


def test_ds9_sky_regions_round_trip_through_the_wcs(des, tmp_path):
    cat = des.load_cat()
    wcs = des.load_wcs()
    path = des.export(tmp_path / "des.reg", format="ds9", shapes=("kron",))
    assert "icrs" in path.read_text().splitlines()
    regs = Regions.read(path, format="ds9")
    assert len(regs) == len(cat) and all(isinstance(r, EllipseSkyRegion) for r in regs)
    for reg, row in zip(regs, cat):
        assert int(reg.meta["text"]) == row["NUMBER"]
        pix = reg.to_pixel(wcs)
        assert pix.center.x == pytest.approx(row["X_IMAGE"] - 1, abs=2e-3)
        assert pix.center.y == pytest.approx(row["Y_IMAGE"] - 1, abs=2e-3)
        assert pix.width == pytest.approx(2 * row["KRON_RADIUS"] * row["A_IMAGE"], rel=1e-4)
        assert pix.height == pytest.approx(2 * row["KRON_RADIUS"] * row["B_IMAGE"], rel=1e-4)
        assert _angle_diff(pix.angle.to_value("deg"), row["THETA_IMAGE"]) < 1e-2
    # catalog_regions builds the same shapes as regions objects
    objs = catalog_regions(des, shapes=("kron",))
    for a, b in zip(objs, regs):
        assert a.center.separation(b.center).arcsec < 1e-5
        assert a.width.to_value("arcsec") == pytest.approx(b.width.to_value("arcsec"), rel=1e-5)


def test_ds9_without_wcs_cannot_be_sky(f606w, tmp_path):
    with pytest.raises(ValueError, match="no WCS"):
        f606w.export(tmp_path / "x.reg", format="ds9", coords="sky")


# ------------------------------------------------------------------ index PNG
def test_index_png_round_trips_to_the_segmentation(f606w, tmp_path):
    seg = f606w.load_seg()
    cat = f606w.load_cat()
    json_path = f606w.export(tmp_path / "f606w.png", format="index-png")
    assert json_path == tmp_path / "f606w.json"
    with Image.open(tmp_path / "f606w.png") as im:
        assert im.mode == "L"  # 98 segments: 8 bits
        raw = np.asarray(im)
    back, doc = read_index_png(json_path, with_doc=True)
    np.testing.assert_array_equal(back, seg)
    assert doc["tiles"][0]["bit_depth"] == 8 and doc["flipped_vertically"] is True
    # PNG row 0 is the top of the image as displayed
    np.testing.assert_array_equal(raw[::-1] > 0, seg > 0)
    segs = doc["segments"]
    assert [s["number"] for s in segs] == list(cat["NUMBER"])
    for s, row in zip(segs, cat):
        assert np.count_nonzero(raw == s["value"]) == np.count_nonzero(seg == s["number"]) == s["npix"]
        assert s["label"] == ("star" if row["CLASS_STAR"] >= 0.8 else "galaxy")
        assert s["flux_auto"] == pytest.approx(float(row["FLUX_AUTO"]))
        assert s["mag_auto"] == pytest.approx(float(row["MAG_AUTO"]))
        assert s["flags"] == row["FLAGS"]
    # the bright star of the field (CLASS_STAR 0.84) and galaxies
    assert {s["label"] for s in segs} == {"star", "galaxy"}
    assert doc["label_rule"]["star_threshold"] == 0.8
    # strict JSON: no NaN tokens
    json.loads(json_path.read_text(), parse_constant=lambda c: pytest.fail(f"JSON has {c}"))


def test_index_png_tiles_when_values_run_out(f606w, tmp_path):
    seg = f606w.load_seg()
    out = write_index_png(f606w, tmp_path / "tiled", max_values_per_png=10)
    assert out["tiled"] and len(out["png_paths"]) > 4
    for tile in out["tiles"]:
        assert len(tile["numbers"]) <= 10
    assert all("value" not in s for s in out["segments"])
    np.testing.assert_array_equal(read_index_png(out["json_path"]), seg)


def test_index_png_is_16_bit_above_255_segments(tmp_path):
    """Real XDF F606W pixels tiled 2 x 2 on disk: about 400 segments."""
    d = demo_dir()
    for kind in ("sci", "wht"):
        with fits.open(d / f"xdf_f606w_{kind}.fits") as hdul:
            img = np.asarray(hdul[1].data, dtype=np.float32)
        fits.PrimaryHDU(np.tile(img, (2, 2))).writeto(tmp_path / f"big_{kind}.fits")
    band = _demo_band("F606W", 26.51, tmp_path / "work", sci=tmp_path / "big_sci.fits",
                      wht=tmp_path / "big_wht.fits", ext=0).segment()
    seg = band.load_seg()
    assert seg.max() > 255
    json_path = band.export(tmp_path / "big.png", format="index-png")
    with Image.open(tmp_path / "big.png") as im:
        assert im.mode in ("I;16", "I;16B", "I")
        raw = np.asarray(im)
    assert raw.max() == seg.max()  # contiguous NUMBERs: value = NUMBER
    back, doc = read_index_png(json_path, with_doc=True)
    assert doc["tiles"][0]["bit_depth"] == 16 and doc["tiles"][0]["png_mode"] == "I;16"
    np.testing.assert_array_equal(back, seg)
    # tiled below 256 per PNG: each tile picks 8 bits
    out = write_index_png(band, tmp_path / "big_tiles", max_values_per_png=255)
    assert out["tiled"] and {t["bit_depth"] for t in out["tiles"]} == {8}
    np.testing.assert_array_equal(read_index_png(out["json_path"]), seg)


# ------------------------------------------------------------------ GeoJSON
def _inside(polygons, pts):
    """Points inside a GeoJSON polygon list (exterior minus holes)."""
    hit = np.zeros(len(pts), dtype=bool)
    for rings in polygons:
        inside = MplPath(np.asarray(rings[0])).contains_points(pts)
        for hole in rings[1:]:
            inside &= ~MplPath(np.asarray(hole)).contains_points(pts)
        hit |= inside
    return hit


def _polygons(feature):
    g = feature["geometry"]
    return [g["coordinates"]] if g["type"] == "Polygon" else g["coordinates"]


def _signed_area(ring):
    r = np.asarray(ring)
    return 0.5 * np.sum(r[:-1, 0] * r[1:, 1] - r[1:, 0] * r[:-1, 1])


def test_geojson_pixel_polygons_hold_exactly_the_segment_pixels(f606w, tmp_path):
    seg = f606w.load_seg()
    path = f606w.export(tmp_path / "f606w.geojson", format="geojson")
    doc = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"JSON has {c}"))
    assert doc["type"] == "FeatureCollection" and doc["galseg"]["coordinates"] == "pixel"
    cat = f606w.load_cat()
    assert [f["id"] for f in doc["features"]] == list(cat["NUMBER"])
    multi = 0
    for f in doc["features"]:
        n = f["id"]
        assert f["properties"]["NUMBER"] == n
        ys, xs = np.nonzero(seg == n)
        y0, y1, x0, x1 = ys.min() - 1, ys.max() + 2, xs.min() - 1, xs.max() + 2
        yy, xx = np.mgrid[max(y0, 0):min(y1, seg.shape[0]), max(x0, 0):min(x1, seg.shape[1])]
        pts = np.column_stack([xx.ravel(), yy.ravel()]).astype(float)
        got = _inside(_polygons(f), pts)
        np.testing.assert_array_equal(got, seg[yy.ravel(), xx.ravel()] == n)
        for rings in _polygons(f):
            assert all(r[0] == r[-1] for r in rings)  # closed
            assert _signed_area(rings[0]) > 0  # exterior counter-clockwise
            assert all(_signed_area(h) < 0 for h in rings[1:])
        multi += f["geometry"]["type"] == "MultiPolygon"
    assert multi >= 1  # segments in pieces are MultiPolygons


def test_geojson_sky_polygons_contain_the_centroids(des, tmp_path):
    seg = des.load_seg()
    wcs = des.load_wcs()
    path = des.export(tmp_path / "des.geojson", format="geojson")
    doc = json.loads(path.read_text())
    assert doc["galseg"]["coordinates"] == "sky"
    assert len(doc["features"]) == len(des.load_cat())
    for f in doc["features"]:
        p = f["properties"]
        ix, iy = int(round(p["X_IMAGE"] - 1)), int(round(p["Y_IMAGE"] - 1))
        if seg[iy, ix] == f["id"]:
            assert _inside(_polygons(f), np.array([[p["ALPHA_J2000"], p["DELTA_J2000"]]]))[0]
        # every segment pixel centre, through the WCS, is inside; neighbours outside
        ys, xs = np.nonzero(seg == f["id"])
        ra, dec = wcs.pixel_to_world_values(xs, ys)
        assert _inside(_polygons(f), np.column_stack([ra, dec])).all()
        for rings in _polygons(f):
            # RFC 7946 right-hand rule in (RA, Dec)
            assert _signed_area(rings[0]) > 0
        assert f["properties"]["label"] in ("star", "galaxy")


# ------------------------------------------------------------------ areas
def test_areas_with_wcs_and_masked_pixels(tmp_path):
    if not DES_R.is_file():
        pytest.skip(f"DES cutout not found at {DES_R}")
    # a copy of the real DES cutout with a 20 x 30 block of zero weight
    with fits.open(DES_R) as hdul:
        hdul[1].data = hdul[1].data.copy()
        hdul[1].data[10:30, 200:230] = 0
        hdul.writeto(tmp_path / "des_r.fits")
    band = Band_Data("DES", "Y3", "DECam", "r", tmp_path / "des_r.fits", "SCI",
                     wht_path=tmp_path / "des_r.fits", wht_ext="WGT", work_dir=tmp_path).segment()
    stats = band.area_stats()
    pix = 0.263 ** 2 / 3600  # arcmin^2
    assert stats["pixel_area_source"] == "WCS"
    assert stats["npix_total"] == 241 * 241
    assert stats["npix_unmasked"] == 241 * 241 - 600
    assert stats["total_arcmin2"] == pytest.approx(241 * 241 * pix, rel=1e-6)
    assert stats["unmasked_arcmin2"] == pytest.approx((241 * 241 - 600) * pix, rel=1e-6)
    seg = band.load_seg()
    assert stats["npix_segmented"] == np.count_nonzero(seg[np.isfinite(band.load_rms_err())] > 0)
    assert stats["segmented_arcmin2"] == pytest.approx(stats["npix_segmented"] * pix, rel=1e-6)


def test_data_export_writes_every_band(tmp_path):
    bands = [_demo_band("F606W", 26.51, tmp_path / "work"),
             _demo_band("F160W", 25.94, tmp_path / "work", instrument="WFC3_IR")]
    data = Data(bands)
    for b in data:
        b.segment()
    files = data.export(tmp_path / "out", format="ds9")
    assert set(files) == {"F606W", "F160W"}
    for filt, path in files.items():
        assert path.name == f"XDF_v1_{filt}.reg"
        assert len(Regions.read(path, format="ds9")) == len(data[filt].load_cat()) * 6
    table_path = data.export(tmp_path / "out", format="areas")
    from astropy.table import Table

    t = Table.read(table_path, format="ascii.ecsv")
    assert list(t["filter"]) == ["F606W", "F160W"]
    np.testing.assert_allclose(t["total_arcmin2"], 500 * 500 * 0.06 ** 2 / 3600)
    for row, b in zip(t, data):
        assert row["npix_segmented"] == np.count_nonzero(b.load_seg())
    pngs = export(data, tmp_path / "png", format="index-png")
    for filt, path in pngs.items():
        np.testing.assert_array_equal(read_index_png(path), data[filt].load_seg())
    with pytest.raises(ValueError, match="format must be one of"):
        data.export(tmp_path / "x", format="shapefile")
    assert set(FORMATS) == {"ds9", "index-png", "geojson", "areas"}
