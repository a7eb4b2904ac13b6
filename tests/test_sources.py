"""One source at a time: source_at / source_in_box / candidates / cutout on real products."""


import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from PIL import Image
from scipy import ndimage

from galseg.sources import Candidate, NoSourceError, Source

from _util import demo_band, des_r_band  # noqa: E402



def _demo_band(filt, zp, work_dir, instrument="ACS_WFC"):
    return demo_band(filt, zp, work_dir, instrument)


@pytest.fixture(scope="module")
def f606w(tmp_path_factory):
    """Demo F606W: has deblended pairs and segments that cleaning left in pieces."""
    return _demo_band("F606W", 26.51, tmp_path_factory.mktemp("src606")).segment()


@pytest.fixture(scope="module")
def des(tmp_path_factory):
    return des_r_band(tmp_path_factory.mktemp("srcdes")).segment()


def _inside_pixel(seg, number):
    """A pixel of segment ``number`` (its first in row-major order), as (x, y)."""
    iy, ix = np.argwhere(seg == number)[0]
    return float(ix), float(iy)


def test_source_at_mask_equals_the_segmentation_label(f606w):
    seg = f606w.load_seg()
    cat = f606w.load_cat()
    assert len(cat) > 50
    for number in cat["NUMBER"]:
        x, y = _inside_pixel(seg, number)
        src = f606w.source_at(x, y)
        assert isinstance(src, Source) and src.number == number
        assert src.row["NUMBER"] == number
        np.testing.assert_array_equal(src.mask, seg[src.bbox] == number)
        # the bbox holds the whole segment: nothing of it outside
        np.testing.assert_array_equal(src.full_mask(), seg == number)
        assert src.npix == np.count_nonzero(seg == number)
        assert src.x == pytest.approx(cat["X_IMAGE"][number - 1] - 1)


def test_source_at_on_sky_says_so_and_names_the_nearest(f606w):
    seg = f606w.load_seg()
    cat = f606w.load_cat()
    iy, ix = np.argwhere(seg == 0)[1000]
    msg = r"is sky: segmentation value 0.*nearest source is NUMBER"
    with pytest.raises(NoSourceError, match=msg) as err:
        f606w.source_at(ix, iy)
    d = np.hypot(cat["X_IMAGE"] - 1 - ix, cat["Y_IMAGE"] - 1 - iy)
    assert err.value.nearest == cat["NUMBER"][np.argmin(d)]
    assert err.value.distance == pytest.approx(d.min())
    assert f606w.source_at(ix, iy, nearest=True).number == err.value.nearest
    with pytest.raises(ValueError, match="outside the 500 x 500 image"):
        f606w.source_at(600, 10)
    # (x, y) as a pair, rounding to the nearest pixel centre
    x, y = _inside_pixel(seg, 5)
    assert f606w.source_at((x + 0.4, y - 0.4)).number == 5


def test_source_at_sky_position(des):
    seg = des.load_seg()
    cat = des.load_cat()
    hits = 0
    for row in cat:
        ix, iy = int(round(row["X_IMAGE"] - 1)), int(round(row["Y_IMAGE"] - 1))
        if seg[iy, ix] != row["NUMBER"]:
            continue  # centroid outside its own (non-convex) segment
        src = des.source_at(SkyCoord(row["ALPHA_J2000"], row["DELTA_J2000"], unit="deg"))
        assert src.number == row["NUMBER"]
        assert src.sky.separation(SkyCoord(row["ALPHA_J2000"], row["DELTA_J2000"],
                                           unit="deg")).arcsec < 1e-3
        hits += 1
    assert hits >= 3


def test_sky_position_without_wcs_is_refused(f606w):
    with pytest.raises(ValueError, match="no WCS"):
        f606w.source_at(SkyCoord(10, 10, unit="deg"))


def test_source_in_box_picks_the_most_flux_inside_the_box(f606w):
    seg = f606w.load_seg()
    sub = f606w.load_im() - f606w.load_bkg()
    cat = f606w.load_cat()
    checked = 0
    for row in cat[:40]:
        cx, cy = row["X_IMAGE"] - 1, row["Y_IMAGE"] - 1
        src = f606w.source_in_box(cx, cy, width=30, height=20)
        x0, x1 = int(np.floor(cx - 15 + 0.5)), int(np.floor(cx + 15 + 0.5))
        y0, y1 = int(np.floor(cy - 10 + 0.5)), int(np.floor(cy + 10 + 0.5))
        box = (slice(max(y0, 0), y1), slice(max(x0, 0), x1))
        labels, flux = seg[box], sub[box]
        sums = {n: flux[labels == n].sum() for n in np.unique(labels) if n}
        assert src.number == max(sums, key=sums.get)
        checked += len(sums) > 1
    assert checked >= 3  # boxes with a real choice between segments
    iy, ix = np.argwhere(ndimage.distance_transform_edt(seg == 0) > 6)[0]
    with pytest.raises(NoSourceError, match="no segment in the box"):
        f606w.source_in_box(ix, iy, width=5)


def _components(seg, number):
    """Independent full-frame reference: 8-connected components of seg>0 touching ``number``."""
    lab, _ = ndimage.label(seg > 0, structure=np.ones((3, 3)))
    return np.isin(lab, np.unique(lab[seg == number]))


def test_candidates_object_parent_dilated(f606w):
    seg = f606w.load_seg()
    sub = f606w.load_im() - f606w.load_bkg()
    rms = f606w.load_rms_err()
    blends = partitioned = 0
    for number in f606w.load_cat()["NUMBER"]:
        obj, parent, grown = f606w.candidates(f606w.source(number), dilate=3)
        assert (obj.kind, parent.kind, grown.kind) == ("object", "parent", "dilated")
        assert all(isinstance(c, Candidate) for c in (obj, parent, grown))
        np.testing.assert_array_equal(obj.full_mask(), seg == number)
        ref = _components(seg, number)
        np.testing.assert_array_equal(parent.full_mask(), ref)
        assert set(parent.numbers) == set(np.unique(seg[ref])) and number in parent.numbers
        # scores: sums over the mask of the background-subtracted image and the rms
        m = obj.full_mask()
        assert obj.flux == pytest.approx(sub[m].sum(dtype=np.float64), rel=1e-9, abs=1e-9)
        assert obj.flux_err == pytest.approx(np.sqrt(np.sum(rms[m].astype(float) ** 2)), rel=1e-9)
        assert obj.score == obj.snr == pytest.approx(obj.flux / obj.flux_err)
        assert parent.flux_fraction == pytest.approx(1.0)
        # dilated: holds the object, grows by at most 3 px, only into sky
        g = grown.full_mask()
        assert np.all(g[m])
        assert ndimage.distance_transform_edt(~m)[g].max() <= 3.0
        assert np.all((seg[g] == 0) | (seg[g] == number))
        assert grown.npix > obj.npix
        if len(parent.numbers) > 1:
            blends += 1
            # the children partition the parent: when every child lies wholly inside it
            # (no piece elsewhere), their fluxes add up to the parent's
            pm = parent.full_mask()
            if all(np.all(pm[seg == n]) for n in parent.numbers):
                total = sum(f606w.candidates(f606w.source(n))[0].flux for n in parent.numbers)
                assert total == pytest.approx(parent.flux, rel=1e-6)
                partitioned += 1
    assert blends >= 4 and partitioned >= 4


def test_candidates_of_a_segment_in_pieces(f606w):
    seg = f606w.load_seg()
    pieces = [n for n in f606w.load_cat()["NUMBER"]
              if ndimage.label(seg == n, structure=np.ones((3, 3)))[1] > 1]
    assert pieces, "the demo F606W map has segments split by cleaning"
    for n in pieces:
        parent = f606w.candidates(f606w.source(n))[1]
        np.testing.assert_array_equal(parent.full_mask(), _components(seg, n))


def test_cutout_fits_and_png_with_wcs(des, tmp_path):
    seg = des.load_seg()
    sci = des.load_im()
    wcs = des.load_wcs()
    src = des.source(3)
    cut = des.cutout(src, save=tmp_path / "n3")
    assert cut.fits_path == tmp_path / "n3.fits" and cut.png_path == tmp_path / "n3.png"
    with fits.open(cut.fits_path) as hdul:
        data, hdr = hdul[0].data, hdul[0].header
        seg_cut, mask = hdul["SEG"].data, hdul["MASK"].data.astype(bool)
    ox, oy = int(-hdr["LTV1"]), int(-hdr["LTV2"])
    assert (ox, oy) == cut.origin
    ny, nx = data.shape
    np.testing.assert_array_equal(data, sci[oy:oy + ny, ox:ox + nx])
    np.testing.assert_array_equal(seg_cut, seg[oy:oy + ny, ox:ox + nx])
    np.testing.assert_array_equal(mask, seg_cut == 3)
    assert mask.sum() == src.npix  # the default size holds the whole segment
    # the cutout WCS is the full WCS shifted by the origin
    from astropy.wcs import WCS

    cw = WCS(hdr)
    jj, ii = np.mgrid[0:ny:7, 0:nx:7]
    a = cw.pixel_to_world_values(ii, jj)
    b = wcs.pixel_to_world_values(ii + ox, jj + oy)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-10)
    assert hdr["NUMBER"] == 3 and hdr["FILTER"] == "r"
    # PNG: RGBA, alpha = mask (255 object, 0 elsewhere), rows top-down
    with Image.open(cut.png_path) as im:
        assert im.mode == "RGBA"
        rgba = np.asarray(im)
    np.testing.assert_array_equal(rgba[..., 3], np.where(mask[::-1], 255, 0))
    assert rgba[..., :3][mask[::-1]].std() > 10  # the object is drawn, not blank


def test_cutout_off_the_edge_and_of_a_position(f606w, tmp_path):
    seg = f606w.load_seg()
    sci = f606w.load_im()
    cut = f606w.cutout((3.0, 4.0), size=21, mask=False, save=tmp_path / "corner.png")
    assert cut.mask is None and cut.shape == (21, 21) and cut.origin == (-7, -6)
    assert np.isnan(cut.data[:6]).all() and np.isnan(cut.data[:, :7]).all()
    np.testing.assert_array_equal(cut.data[6:, 7:], sci[:15, :14])
    with Image.open(tmp_path / "corner.png") as im:
        alpha = np.asarray(im)[..., 3][::-1]
    np.testing.assert_array_equal(alpha, np.where(np.isfinite(cut.data), 255, 0))
    # a position with mask=True is answered by source_at
    x, y = _inside_pixel(seg, 7)
    cut = f606w.cutout((x, y), size=41)
    assert cut.source.number == 7
    np.testing.assert_array_equal(cut.mask, cut.seg == 7)
    # a candidate's mask (the parent blend) in the cutout
    blend = next(c for n in f606w.load_cat()["NUMBER"]
                 for c in f606w.candidates(f606w.source(n))[1:2] if len(c.numbers) > 1)
    cut = f606w.cutout(blend, size=81)
    np.testing.assert_array_equal(cut.mask, np.isin(cut.seg, blend.numbers) & cut.mask)
    assert cut.mask.sum() == blend.npix
    with pytest.raises(TypeError, match="needs size"):
        f606w.cutout((x, y), mask=False)
