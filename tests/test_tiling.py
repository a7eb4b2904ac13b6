"""Tiled extraction (galseg.tiling) gives the untiled engine's result.

A deterministic synthetic JWST-like mosaic (benchmarks/make_mosaic.py: Sersic
galaxies with close companions, a giant galaxy, bright stars, a depth map
with chip gaps, an irregular no-data footprint) is extracted in one piece by
`galseg.extract.run` and in tiles by `galseg.tiling.extract_tiled`, and the
two are compared object by object and pixel by pixel.
"""

import importlib.util
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from galseg.extract import run
from galseg.extract.background import estimate_background, mesh_statistics
from galseg.extract.presets import load_config
from galseg.tiling import extract_tiled
from galseg.tiling.background import background_window, global_mesh, prepare_pixels
from galseg.tiling.band import band_tile_size
from galseg.tiling.plan import TilePlan, parse_memory, tile_size_for_memory
from galseg.tiling.window import advance_state, glibc_state

REPO = Path(__file__).resolve().parents[1]
SIZE = 2048


def _load_make_mosaic():
    spec = importlib.util.spec_from_file_location("make_mosaic", REPO / "benchmarks" /
                                                  "make_mosaic.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


make_mosaic = _load_make_mosaic()


def _params(**kw):
    base = {"WEIGHT_TYPE": "MAP_RMS", "MAG_ZEROPOINT": 28.0}
    return load_config("galfind_default").replace(**(base | kw))


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory):
    """A 2048^2 mosaic on disk (sci.fits, rms.fits) and in memory."""
    folder = make_mosaic.make_mosaic(tmp_path_factory.mktemp("mosaic"), SIZE, density=1000)
    sci = fits.getdata(folder / "sci.fits").astype(np.float32)
    rms = fits.getdata(folder / "rms.fits").astype(np.float32)
    hdr = fits.getheader(folder / "sci.fits")
    return folder, sci, rms, hdr


@pytest.fixture(scope="module")
def untiled(mosaic):
    _, sci, rms, hdr = mosaic
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run(sci, rms=rms, params=_params(), header=hdr, wcs=WCS(hdr))


@pytest.fixture(scope="module")
def tiled(mosaic, tmp_path_factory):
    """2 local worker processes, 512-pixel cores (16 tiles), read from the FITS files."""
    folder, _, _, hdr = mosaic
    out = tmp_path_factory.mktemp("out")
    res = extract_tiled(folder / "sci.fits", rms=folder / "rms.fits", params=_params(),
                        header=hdr, wcs=WCS(hdr), tile_size=512, workers=2,
                        seg_path=out / "seg.fits", bkg_path=out / "bkg.fits")
    return res, out


def _same_catalogue(c1, c2, *, rtol_flux=1e-4):
    """Counts, NUMBERs, positions, FLUX_AUTO and apertures agree."""
    assert len(c1) == len(c2)
    np.testing.assert_array_equal(np.asarray(c2["NUMBER"]), np.arange(1, len(c2) + 1))
    for col in ("X_IMAGE", "Y_IMAGE"):
        np.testing.assert_allclose(np.asarray(c2[col]), np.asarray(c1[col]), rtol=0, atol=1e-9)
    f1, f2 = np.asarray(c1["FLUX_AUTO"], float), np.asarray(c2["FLUX_AUTO"], float)
    rel = np.abs(f2 - f1) / np.maximum(np.abs(f1), 1e-30)
    assert np.mean(rel <= rtol_flux) >= 0.999
    return rel


# --------------------------------------------------------------------------- pieces
def test_background_window_is_seps_map_bit_for_bit():
    sci, rms, _ = make_mosaic.mosaic_arrays(700, density=800, sky=20.0)
    p = _params(BACK_TYPE="AUTO", BACK_SIZE=50)
    image, hard, wvar0, _ = prepare_pixels(sci, rms, None, "MAP_RMS")
    mesh, _ = mesh_statistics(image, valid=~hard, wvar=wvar0, back_size=50, filter_size=3)
    full = estimate_background(image, p, valid=~hard, mesh=mesh).background
    # the global mesh from strips of 3 mesh rows, evaluated on two windows
    g = global_mesh(lambda y0, y1: (sci[y0:y1], rms[y0:y1], None), sci.shape, p,
                    strip_meshes=3)
    np.testing.assert_array_equal(g.image_mesh.back, mesh.back)
    assert g.backsig == mesh.backsig
    np.testing.assert_array_equal(background_window(g, p, 0, 700, 0, 700), full)
    np.testing.assert_array_equal(background_window(g, p, 123, 401, 57, 650), full[123:401, 57:650])
    # the sky varies: a background of zeros would pass the equalities trivially
    assert np.ptp(full) > 0.2


def test_random_stream_jumps_match_sequential_draws():
    import numba

    from galseg.extract.detect import _glibc_rand, _glibc_srand

    @numba.njit
    def draws(n):
        st = _glibc_srand(1)
        out = np.empty(n, np.int64)
        for i in range(n):
            out[i] = _glibc_rand(st)
        return out, st

    seq, st_end = draws(1000)
    states = advance_state(np.array([0, 7, 500, 1000]))
    np.testing.assert_array_equal(states[0], glibc_state(1))
    np.testing.assert_array_equal(states[3], st_end)
    st = states[2].copy()
    np.testing.assert_array_equal(draws_from(st, 3), seq[500:503])


def draws_from(state, n):
    from galseg.extract.detect import _glibc_rand

    return np.array([_glibc_rand(state) for _ in range(n)])


def test_parse_memory_and_tile_size_from_budget():
    assert parse_memory("4GB") == 4 * 10**9
    assert parse_memory("512MiB") == 512 * 2**20
    assert parse_memory(1e9) == 10**9
    for bad in ("4 parsecs", -1, "0GB", True):
        with pytest.raises(ValueError, match="max_memory"):
            parse_memory(bad)
    # a 2048^2 image fits 4 GB in one piece; a 32768^2 mosaic does not
    assert tile_size_for_memory((2048, 2048), "4GB", workers=2) is None
    t1 = tile_size_for_memory((32768, 32768), "4GB", workers=1)
    t2 = tile_size_for_memory((32768, 32768), "4GB", workers=2)
    t8 = tile_size_for_memory((32768, 32768), "8GB", workers=2)
    assert 256 <= t2 < t1 and t2 < t8 and t2 % 16 == 0
    with pytest.raises(MemoryError, match="too small"):
        tile_size_for_memory((32768, 32768), "600MB", workers=4)


def test_plan_cores_partition_the_image():
    plan = TilePlan((1000, 777), 256, 64)
    cover = np.zeros((1000, 777), np.int32)
    for w in plan.windows():
        cy0, cy1, cx0, cx1 = w.core
        cover[cy0:cy1, cx0:cx1] += 1
        assert w.y0 == max(0, cy0 - 64) and w.x1 == min(777, cx1 + 64)
        assert plan.tile_of(cy0, cx1 - 1) == w.index
    assert np.all(cover == 1)


# --------------------------------------------------------------------------- tiled == untiled
def test_tiled_catalogue_and_segmap_equal_untiled(untiled, tiled):
    res, out = tiled
    c1, c2 = untiled.catalog, res.catalog
    assert len(c1) > 1000
    rel = _same_catalogue(c1, c2)
    # not just 99.9 %: every FLUX_AUTO and aperture flux is the untiled one
    assert rel.max() == 0.0
    np.testing.assert_array_equal(np.asarray(c2["FLUX_APER"]), np.asarray(c1["FLUX_APER"]))
    for col in ("ISOAREA_IMAGE", "FLUX_ISO", "FLAGS", "KRON_RADIUS", "CLASS_STAR"):
        np.testing.assert_array_equal(np.asarray(c2[col]), np.asarray(c1[col]), err_msg=col)
    np.testing.assert_allclose(np.asarray(c2["ALPHA_J2000"]), np.asarray(c1["ALPHA_J2000"]),
                               rtol=0, atol=1e-12)
    # the segmentation map: identical, and labels == catalogue NUMBERs
    seg = np.asarray(res.segmap)
    np.testing.assert_array_equal(seg, untiled.segmap)
    assert set(np.unique(seg)) - {0} == set(np.asarray(c2["NUMBER"]).tolist())
    np.testing.assert_array_equal(np.asarray(res.background), untiled.background)
    # written straight into FITS files
    with fits.open(out / "seg.fits") as hdul:
        assert hdul[0].header["BITPIX"] == 32
        np.testing.assert_array_equal(hdul[0].data, untiled.segmap)
        assert "CRVAL1" in hdul[0].header
    assert not list(out.glob(".*.tmp"))
    tiling = res.meta["tiling"]
    assert tiling["tiles"] == 16 and tiling["backend"] == "processes"
    assert res.meta["nobj"] == len(c1) and res.meta["deblend_kept_sep"] == 0


def test_objects_straddling_tile_borders(untiled, tiled):
    """Objects whose segments cross core borders are neither split, duplicated nor lost."""
    res, _ = tiled
    c1, c2 = untiled.catalog, res.catalog
    edges = TilePlan((SIZE, SIZE), 512, 128).x_edges[1:-1]
    xmin, xmax = np.asarray(c1["XMIN_IMAGE"]) - 1, np.asarray(c1["XMAX_IMAGE"]) - 1
    ymin, ymax = np.asarray(c1["YMIN_IMAGE"]) - 1, np.asarray(c1["YMAX_IMAGE"]) - 1
    cross = np.zeros(len(c1), bool)
    for e in edges:
        cross |= ((xmin < e) & (xmax >= e)) | ((ymin < e) & (ymax >= e))
    big = cross & ((xmax - xmin) > 128)  # larger than the overlap
    assert cross.sum() > 50 and big.sum() >= 1
    np.testing.assert_allclose(np.asarray(c2["X_IMAGE"])[cross],
                               np.asarray(c1["X_IMAGE"])[cross], rtol=0, atol=1e-9)
    for col in ("FLUX_AUTO", "ISOAREA_IMAGE", "XMIN_IMAGE", "YMAX_IMAGE"):
        np.testing.assert_array_equal(np.asarray(c2[col])[cross], np.asarray(c1[col])[cross],
                                      err_msg=col)
    # each straddling segment is one label, with all its pixels
    seg = np.asarray(res.segmap)
    for n in np.asarray(c1["NUMBER"])[big]:
        assert np.count_nonzero(seg == n) == np.count_nonzero(untiled.segmap == n) > 0
    # the object larger than the overlap needed a larger window
    assert res.meta["tiling"]["large_windows"] + res.meta["tiling"]["measure_windows"] >= 1


def test_auto_background_and_weight_scale_without_seams(tmp_path):
    """BACK_TYPE AUTO on a sky-gradient mosaic, MAP_WEIGHT with its global rescaling."""
    sci, rms, hdr = make_mosaic.mosaic_arrays(1536, density=1000, sky=30.0, seed=3)
    wht = np.where(rms < 1e9, 0.25 / np.square(rms, dtype=np.float32), 0).astype(np.float32)
    # masked pixels and NaNs across tile borders (cores end at 384, 768, 1152)
    sci[700:712, 300:900] = np.nan
    mask = np.zeros(sci.shape, bool)
    mask[370:400, 200:1300] = True
    p = _params(BACK_TYPE="AUTO", BACK_SIZE=64, WEIGHT_TYPE="MAP_WEIGHT")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r1 = run(sci, wht=wht, params=p, header=hdr, mask=mask)
        r2 = extract_tiled(sci, wht=wht, params=p, header=hdr, mask=mask, tile_size=400,
                           workers=1)
    assert r2.meta["weight_scale"] == r1.meta["weight_scale"] != 1.0
    assert r2.meta["backsig"] == r1.meta["backsig"]
    bkg = np.asarray(r2.background)
    np.testing.assert_array_equal(bkg, r1.background)
    assert np.ptp(bkg) > 0.3  # a real sky gradient, no seams at the 400-pixel tile edges
    np.testing.assert_array_equal(np.asarray(r2.segmap), r1.segmap)
    rel = _same_catalogue(r1.catalog, r2.catalog)
    assert rel.max() == 0.0


@pytest.mark.slow
def test_tiles_on_a_dask_local_cluster(untiled, mosaic):
    distributed = pytest.importorskip("distributed")
    folder, _, _, hdr = mosaic
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        res = extract_tiled(folder / "sci.fits", rms=folder / "rms.fits", params=_params(),
                            header=hdr, wcs=WCS(hdr), tile_size=700, scheduler=client)
    assert res.meta["tiling"]["backend"] == "dask"
    _same_catalogue(untiled.catalog, res.catalog)
    np.testing.assert_array_equal(np.asarray(res.segmap), untiled.segmap)


# --------------------------------------------------------------------------- Band_Data
def test_band_segment_tiles_share_the_cache(mosaic, tmp_path):
    from galseg import Band_Data

    folder = mosaic[0]
    for name in ("sci.fits", "rms.fits"):
        shutil.copy(folder / name, tmp_path / name)

    def band(work):
        return Band_Data("MOS", "v1", "NIRCam", "F444W", tmp_path / "sci.fits", 0,
                         rms_err_path=tmp_path / "rms.fits", rms_err_ext=0, pix_scale=0.03,
                         zp=28.0, work_dir=tmp_path / work)

    b1 = band("w1").segment(tiles=None)
    b2 = band("w2").segment(tiles=700)
    assert b1.seg_args["key"] == b2.seg_args["key"]
    assert b2._product.read_sidecar()["provenance"]["tiling"]["tile_size"] == 700
    np.testing.assert_array_equal(b2.load_seg(), b1.load_seg())
    c1, c2 = b1.load_cat(), b2.load_cat()
    np.testing.assert_array_equal(np.asarray(c2["FLUX_AUTO"]), np.asarray(c1["FLUX_AUTO"]))
    # a tiled request finds the untiled product: tiling is not part of the key
    b3 = band("w1").segment(tiles=700)
    assert b3.seg_args["from_cache"] is True
    # the default budget does not tile a 2048^2 image; an int forces, None never tiles
    params = _params()
    assert band_tile_size(b1, params, "sep", "auto", "4GB") is None
    assert band_tile_size(b1, params, "sep", 300, "4GB") == 300
    assert band_tile_size(b1, params, "sep", None, "4GB") is None
    with pytest.raises(ValueError, match="cannot run tiled"):
        band_tile_size(b1, params, "sextractor", 300, "4GB")
    with pytest.raises(ValueError, match="tiles must be"):
        band_tile_size(b1, params, "sep", "yes", "4GB")


def test_real_tile_compressed_image_auto_background(shared_data):
    """KiDS/VIKING Ks (real, tile-compressed in HDU 1): windows decompress only their
    tiles; BACK_TYPE AUTO with no weight map; same result as in one piece."""
    from galseg.io.fits import read_image

    path = shared_data / "kids_viking" / "Ks.fits"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    sci = read_image(path, 1)
    p = load_config("galfind_default").replace(WEIGHT_TYPE="NONE", BACK_TYPE="AUTO",
                                               DETECT_THRESH=3.0, ANALYSIS_THRESH=3.0,
                                               PIXEL_SCALE=0.339, MAG_ZEROPOINT=30.0)
    r1 = run(sci, params=p)
    r2 = extract_tiled((path, 1), params=p, tile_size=1300, workers=1)
    assert r2.meta["tiling"]["tiles"] == 4
    assert len(r1.catalog) > 500
    np.testing.assert_array_equal(np.asarray(r2.segmap), r1.segmap)
    np.testing.assert_array_equal(np.asarray(r2.background), r1.background)
    rel = _same_catalogue(r1.catalog, r2.catalog)
    assert rel.max() == 0.0
