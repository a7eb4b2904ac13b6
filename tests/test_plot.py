"""Plots on real products: pixels drawn, colour maps, zooms, overlays, differences, grids."""


import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from astropy.coordinates import SkyCoord  # noqa: E402
from matplotlib.collections import EllipseCollection  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from galseg import Data  # noqa: E402
from galseg.plot.images import segmap_cmap  # noqa: E402
from galseg.plot.overlay import difference, plot_difference  # noqa: E402

from _util import demo_band, des_r_band  # noqa: E402



def _demo_band(filt, zp, work_dir, instrument="WFC3_IR"):
    return demo_band(filt, zp, work_dir, instrument)


@pytest.fixture(scope="module")
def f160w(tmp_path_factory):
    return _demo_band("F160W", 25.94, tmp_path_factory.mktemp("plot160")).segment()


@pytest.fixture(scope="module")
def des(tmp_path_factory):
    return des_r_band(tmp_path_factory.mktemp("plotdes")).segment()


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.mark.parametrize("ext", ["SCI", "RMS_ERR", "WHT", "SEG", "BKG", "MASK"])
def test_every_extension_draws_its_pixels(f160w, tmp_path, ext):
    expected = {"SCI": f160w.load_im, "RMS_ERR": f160w.load_rms_err, "WHT": f160w.load_wht,
                "SEG": f160w.load_seg, "BKG": f160w.load_bkg}.get(ext)
    out = tmp_path / f"{ext}.png"
    ax = f160w.plot(ext, save=out, show=False)
    shown = np.asarray(ax.images[0].get_array())
    if expected is not None:
        np.testing.assert_array_equal(shown, expected())
    else:
        mask = ~np.isfinite(f160w.load_rms_err()) | ~np.isfinite(f160w.load_im())
        np.testing.assert_array_equal(shown, mask.astype(np.uint8))
    # pixel centres on 0-based integers
    assert ax.images[0].get_extent() == [-0.5, 499.5, -0.5, 499.5]
    assert out.stat().st_size > 5_000
    assert ax.get_xlabel() == "x [pix]"


def test_seg_colour_map_black_sky_and_neighbours_differ(f160w):
    seg = f160w.load_seg()
    ax = f160w.plot("SEG", show=False)
    im = ax.images[0]
    rgba = im.cmap(im.norm(seg.astype(float)))
    assert np.all(rgba[seg == 0][:, :3] == 0)  # black sky
    # every label gets its own colour slot, and touching labels clearly different colours
    cmap = segmap_cmap(int(seg.max()))
    assert cmap.N == seg.max() + 1
    pairs = set()
    for a, b in ((seg[:, :-1], seg[:, 1:]), (seg[:-1, :], seg[1:, :])):
        touch = (a != b) & (a > 0) & (b > 0)
        pairs |= set(zip(a[touch].tolist(), b[touch].tolist()))
    colours = cmap(np.arange(cmap.N))[:, :3]
    for a, b in pairs:
        assert np.abs(colours[a] - colours[b]).sum() > 0.2
    # consecutive labels (deblended siblings are numbered together) differ too
    assert np.abs(np.diff(colours[1:], axis=0)).sum(axis=1).min() > 0.2
    # all segment colours are bright enough to see on black
    assert colours[1:].max(axis=1).min() >= 0.75


def test_galfind_lognorm_vmin_zero_does_not_raise(f160w, tmp_path):
    norm = LogNorm(vmin=0)
    ax = f160w.plot("SCI", norm=norm, save=tmp_path / "log.png", show=False)
    ax.figure.canvas.draw()
    used = ax.images[0].norm
    assert isinstance(used, LogNorm) and used.vmin > 0 and used.vmax > used.vmin
    assert norm.vmin == 0  # the caller's object is untouched
    sci = f160w.load_im()
    assert used.vmin == pytest.approx(np.median(sci[sci > 0]))
    # named stretches
    for name in ("asinh", "zscale", "linear", "sqrt", "log"):
        f160w.plot("SCI", norm=name, show=False).figure.canvas.draw()
    with pytest.raises(ValueError, match="norm must be"):
        f160w.plot("SCI", norm="cubic", show=False)


def test_region_zoom_by_pixels_and_by_sky(f160w, des):
    ax = f160w.plot("SEG", region=(100, 180, 300, 420), show=False)
    shown = np.asarray(ax.images[0].get_array())
    np.testing.assert_array_equal(shown, f160w.load_seg()[300:420, 100:180])
    assert ax.get_xlim() == (99.5, 179.5)
    src = f160w.source(1)
    ax = f160w.plot("SCI", region=src, show=False)
    x0, x1 = ax.get_xlim()
    assert x0 < src.bbox[1].start and x1 > src.bbox[1].stop - 1
    # sky zoom on a band with a WCS: RA/Dec axes, centred on the position
    import astropy.units as u

    row = des.load_cat()[2]
    c = SkyCoord(row["ALPHA_J2000"], row["DELTA_J2000"], unit="deg")
    ax = des.plot("SEG", region=(c, 20 * u.arcsec), show=False)
    assert hasattr(ax, "coords")  # WCSAxes
    assert ax.coords[0].get_axislabel() == "RA"
    n = round(20 / 0.263)
    shown = np.asarray(ax.images[0].get_array())
    assert abs(shown.shape[0] - n) <= 2 and abs(shown.shape[1] - n) <= 2
    xc = np.mean(ax.get_xlim())
    assert xc == pytest.approx(row["X_IMAGE"] - 1, abs=1.0)
    with pytest.raises(ValueError, match="does not overlap"):
        f160w.plot("SCI", region=(600, 700, 0, 10), show=False)


def test_overlay_alpha_ellipses_labels(f160w, tmp_path):
    seg = f160w.load_seg()
    cat = f160w.load_cat()
    ax = f160w.plot_overlay(alpha=0.3, apertures=True, save=tmp_path / "ov.png", show=False)
    overlay = ax.images[1].get_array()
    np.testing.assert_allclose(overlay[..., 3], np.where(seg > 0, 0.3, 0.0))
    # segment colours are the SEG plot's
    cmap = segmap_cmap(int(seg.max()))
    np.testing.assert_allclose(overlay[..., :3][seg > 0], cmap(seg[seg > 0])[:, :3])
    kron, aper = [c for c in ax.collections if isinstance(c, EllipseCollection)]
    assert len(kron.get_offsets()) == len(cat)
    np.testing.assert_allclose(kron.get_offsets(), np.column_stack([cat["X_IMAGE"] - 1,
                                                                   cat["Y_IMAGE"] - 1]))
    assert len(aper.get_offsets()) == len(cat) * len(f160w.aper_diams)
    texts = sorted(int(t.get_text()) for t in ax.texts)
    assert texts == sorted(cat["NUMBER"])
    # zoomed: only the sources in view, at most max_labels labels (the brightest)
    ax = f160w.plot_overlay(alpha=0.8, region=(150, 350, 150, 350), max_labels=3, show=False)
    x, y = cat["X_IMAGE"] - 1, cat["Y_IMAGE"] - 1
    inview = (x >= 150) & (x < 350) & (y >= 150) & (y < 350)
    assert len(ax.collections[0].get_offsets()) == inview.sum()
    brightest = cat[inview][np.argsort(cat["FLUX_AUTO"][inview])[::-1][:3]]["NUMBER"]
    assert sorted(int(t.get_text()) for t in ax.texts) == sorted(brightest)
    with pytest.raises(ValueError, match="alpha"):
        f160w.plot_overlay(alpha=1.5, show=False)


def test_difference_of_two_segmentations(tmp_path):
    band = _demo_band("F160W", 25.94, tmp_path / "work")
    seg_w = band.segment(err_type="wht").load_seg()
    seg_r = band.segment(err_type="rms_err").load_seg()
    diff = difference(seg_w, seg_r)
    a, b = seg_w > 0, seg_r > 0
    assert diff.n_only_a == np.count_nonzero(a & ~b)
    assert diff.n_only_b == np.count_nonzero(b & ~a)
    assert diff.n_both == np.count_nonzero(a & b)
    assert diff.n_only_a + diff.n_both == a.sum() and diff.n_only_b + diff.n_both == b.sum()
    assert diff.n_only_a + diff.n_only_b > 0  # the two noise models do differ
    assert 0 < diff.jaccard < 1
    same = difference(band, seg_r)  # a band means its current segmentation
    assert same.n_only_a == same.n_only_b == 0 and same.jaccard == 1.0
    ax = plot_difference(seg_w, seg_r, band=band, labels=("wht", "rms_err"),
                         save=tmp_path / "diff.png", show=False)
    rgba = ax.images[1].get_array()
    assert np.all(rgba[diff.only_a][:, 3] > 0) and np.all(rgba[~(a | b)][:, 3] == 0)
    assert (tmp_path / "diff.png").stat().st_size > 5_000
    with pytest.raises(ValueError, match="differ in shape"):
        difference(seg_w, seg_r[:10])


def test_data_grid_has_one_panel_per_band(tmp_path):
    bands = [_demo_band("F125W", 26.23, tmp_path / "work"),
             _demo_band("F160W", 25.94, tmp_path / "work")]
    data = Data(bands)
    for b in data:
        b.segment()
    fig = data.plot("SEG", save=tmp_path / "grid.png", show=False)
    axes = [ax for ax in fig.axes if ax.images]
    assert len(axes) == 2
    for ax, b in zip(axes, data):
        np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), b.load_seg())
        assert ax.get_title() == f"{b.filt} SEG"
    fig = data.plot(overlay=True, alpha=0.4, labels=False, show=False)
    assert all(len(ax.images) == 2 for ax in fig.axes if ax.images)
    assert (tmp_path / "grid.png").stat().st_size > 10_000
