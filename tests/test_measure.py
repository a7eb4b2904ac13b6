"""The measurement half of the engine (`galseg.extract.measure`) against SExtractor 2.25.

Measurement is tested independently of detection: the real SExtractor binary
runs on real images and its own segmentation map and isophotal shapes
(positions, A, B, CXX...) are fed to :func:`measure`; every catalogue column is
then compared object by object with SExtractor's.  One test drives
:func:`measure` with ``sep.extract`` detections instead and checks sep's own
golden catalogue (``sep_reference/image.cat``) with sep's tolerances.

Run with ``pytest -s`` to see the agreement rates and timings.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from scipy import ndimage

from galseg.extract.classstar import NeuralNetwork, class_star, read_nnw
from galseg.extract.measure import (CATALOG_COLUMNS, measure, resolve_gain_saturation,
                                    sep_flags_to_sextractor)
from galseg.extract.params import Params

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REPO = Path(__file__).resolve().parents[1]
SEPREF = DATA / "sep_reference"
XDF = DATA / "xdf"
DES = DATA / "des_sn2006bh"
KERNELS = REPO / "configs" / "kernels"
NNW = REPO / "configs" / "default.nnw"
if not NNW.is_file():
    NNW = Path("/usr/share/source-extractor/default.nnw")
SEX = shutil.which("source-extractor") or shutil.which("sex")

needs_sex = pytest.mark.skipif(SEX is None, reason="SExtractor binary (source-extractor "
                                                   "or sex) not installed")

#: SExtractor columns read back for the comparisons.
SEXPARAMS = """NUMBER X_IMAGE Y_IMAGE A_IMAGE B_IMAGE THETA_IMAGE CXX_IMAGE CYY_IMAGE
CXY_IMAGE XMIN_IMAGE XMAX_IMAGE YMIN_IMAGE YMAX_IMAGE THRESHOLD FLAGS ISOAREA_IMAGE
FLUX_ISO FLUXERR_ISO MAG_ISO MAGERR_ISO FLUX_APER({naper}) FLUXERR_APER({naper})
MAG_APER({naper}) MAGERR_APER({naper}) FLUX_AUTO FLUXERR_AUTO MAG_AUTO MAGERR_AUTO
KRON_RADIUS FLUX_RADIUS({nfrac}) FWHM_IMAGE CLASS_STAR XWIN_IMAGE YWIN_IMAGE SNR_WIN
MAG_BEST MAGERR_BEST ELONGATION ALPHA_J2000 DELTA_J2000""".split()

#: galfind's settings for an XDF band (0.06"/px): apertures 0.32..2.0" diameter.
XDF_CONFIG = {
    "DETECT_MINAREA": 9, "DETECT_THRESH": 1.8, "ANALYSIS_THRESH": 1.8, "FILTER": "Y",
    "FILTER_NAME": KERNELS / "gauss_2.5_5x5.conv", "DEBLEND_NTHRESH": 32,
    "DEBLEND_MINCONT": 0.005, "CLEAN": "Y", "CLEAN_PARAM": 1.0, "MASK_TYPE": "CORRECT",
    "PHOT_APERTURES": ",".join(f"{d / 0.06:.6f}" for d in (0.32, 0.5, 1.0, 1.5, 2.0)),
    "PHOT_AUTOPARAMS": "2.5,4.0", "PHOT_AUTOAPERS": "3.5,3.5", "PHOT_FLUXFRAC": 0.5,
    "SATUR_LEVEL": 500000, "MAG_ZEROPOINT": 25.94, "GAIN": 0, "PIXEL_SCALE": 0.06,
    "SEEING_FWHM": 0.18, "BACK_TYPE": "MANUAL", "BACK_VALUE": 0, "BACKPHOTO_TYPE": "GLOBAL",
    "WEIGHT_TYPE": "MAP_RMS", "MEMORY_OBJSTACK": 65000, "MEMORY_PIXSTACK": 5000000,
    "MEMORY_BUFSIZE": 1024,
}

# Config keys that exist only on SExtractor's command line, not in `Params`.
_SEX_ONLY = {"WEIGHT_IMAGE", "CATALOG_NAME", "CATALOG_TYPE", "PARAMETERS_NAME",
             "CHECKIMAGE_TYPE", "CHECKIMAGE_NAME", "VERBOSE_TYPE"}


def _need(path: Path):
    if not path.exists():
        pytest.skip(f"shared test data {path} absent")


def _getdata(path, ext=0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with fits.open(path) as hdul:
            return hdul[ext].data.copy()


def _params(config: dict, **extra) -> Params:
    values = {k: (str(v) if isinstance(v, Path) else v)
              for k, v in config.items() if k not in _SEX_ONLY}
    values.update(extra)
    values.setdefault("STARNNW_NAME", str(NNW))
    return Params(values)


def _sextractor(tmp: Path, name: str, image, config: dict, *, checks=(), weight=None):
    """Run SExtractor; returns (catalogue, {SEXBKDEV...}, {check type: array})."""
    naper = len(str(config.get("PHOT_APERTURES", "5")).split(","))
    nfrac = len(str(config.get("PHOT_FLUXFRAC", "0.5")).split(","))
    param = tmp / f"{name}.param"
    param.write_text("\n".join(p.format(naper=naper, nfrac=nfrac) for p in SEXPARAMS) + "\n")
    cat = tmp / f"{name}.cat"
    args = [SEX, str(image), "-c", "/dev/null", "-PARAMETERS_NAME", str(param),
            "-CATALOG_TYPE", "FITS_LDAC", "-CATALOG_NAME", str(cat), "-VERBOSE_TYPE", "QUIET",
            "-STARNNW_NAME", str(NNW)]
    for key, value in config.items():
        args += [f"-{key}", str(value)]
    if weight is not None:
        args += ["-WEIGHT_IMAGE", str(weight)]
    names = [str(tmp / f"{name}_{c.lower()}.fits") for c in checks]
    if checks:
        args += ["-CHECKIMAGE_TYPE", ",".join(checks), "-CHECKIMAGE_NAME", ",".join(names)]
    else:
        args += ["-CHECKIMAGE_TYPE", "NONE"]
    subprocess.run(args, check=True, cwd=tmp, capture_output=True)
    raw = cat.read_bytes()
    head = {}
    for key in ("SEXBKDEV", "SEXBKGND", "SEXGAIN", "SEXSATLV"):
        m = re.search(key.ljust(8).encode() + rb"=\s*([-+0-9.E]+)", raw)
        if m:
            head[key] = float(m.group(1))
    with fits.open(cat) as hdul:
        table = Table(hdul[2].data)
    images = {c: _getdata(n) for c, n in zip(checks, names)}
    return table, head, images


def _objects_from_catalog(cat) -> np.ndarray:
    """A sep-like object array holding SExtractor's own isophotal analysis."""
    dt = [("x", "f8"), ("y", "f8"), ("a", "f8"), ("b", "f8"), ("theta", "f8"),
          ("cxx", "f8"), ("cyy", "f8"), ("cxy", "f8"), ("flag", "i2"), ("xmin", "i8"),
          ("xmax", "i8"), ("ymin", "i8"), ("ymax", "i8"), ("thresh", "f8")]
    o = np.zeros(len(cat), dtype=dt)
    o["x"] = cat["X_IMAGE"] - 1.0
    o["y"] = cat["Y_IMAGE"] - 1.0
    o["a"] = cat["A_IMAGE"]
    o["b"] = cat["B_IMAGE"]
    o["theta"] = np.radians(cat["THETA_IMAGE"])
    for k in ("cxx", "cyy", "cxy"):
        o[k] = cat[k.upper() + "_IMAGE"]
    f = np.asarray(cat["FLAGS"])
    # detection bits back to sep's: merged 2->1, truncated 8->2, deblend overflow 64->4
    o["flag"] = (f & 2 > 0) * 1 + (f & 8 > 0) * 2 + (f & 64 > 0) * 4
    for k in ("xmin", "xmax", "ymin", "ymax"):
        o[k] = cat[k.upper() + "_IMAGE"] - 1
    o["thresh"] = cat["THRESHOLD"]
    return o


def _own_segmap(seg, cat, seg_noclean, cat_noclean):
    """Each object's own pixels before CLEAN: the CLEAN=N segment at its exact position."""
    key = {(x, y): i for i, (x, y) in enumerate(zip(cat_noclean["X_IMAGE"],
                                                   cat_noclean["Y_IMAGE"]))}
    relabel = np.zeros(len(cat_noclean) + 1, dtype=np.int32)
    for i, (x, y) in enumerate(zip(cat["X_IMAGE"], cat["Y_IMAGE"])):
        relabel[key[(x, y)] + 1] = i + 1
    return relabel[seg_noclean]


def _agree(mine, ref, rtol, atol=0.0):
    mine = np.asarray(mine, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    return np.isclose(mine, ref, rtol=rtol, atol=atol)


def _report(title, rows):
    print(f"\n{title}")
    for name, value in rows:
        print(f"  {name:28s} {value}")


@pytest.fixture(scope="module")
def warm_numba():
    """Compile (or load from cache) the kernels once; report the first-call cost."""
    rng = np.random.default_rng(1)
    data = rng.normal(0, 1, (64, 64)).astype(np.float32)
    data[30:35, 30:35] += 50
    seg = np.zeros((64, 64), np.int32)
    seg[30:35, 30:35] = 1
    objs = np.zeros(1, dtype=[("x", "f8"), ("y", "f8"), ("a", "f8"), ("b", "f8"),
                              ("theta", "f8"), ("cxx", "f8"), ("cyy", "f8"), ("cxy", "f8"),
                              ("flag", "i2"), ("xmin", "i8"), ("xmax", "i8"), ("ymin", "i8"),
                              ("ymax", "i8"), ("thresh", "f8")])
    objs[0] = (32, 32, 1.5, 1.5, 0, 0.44, 0.44, 0, 0, 30, 34, 30, 34, 1.5)
    t0 = time.perf_counter()
    measure(data, np.ones_like(data), seg, objs, Params(PIXEL_SCALE=1, STARNNW_NAME=str(NNW)))
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    measure(data, np.ones_like(data), seg, objs, Params(PIXEL_SCALE=1, STARNNW_NAME=str(NNW)))
    warm = time.perf_counter() - t0
    _report("numba kernels", [("first call (compile/cache)", f"{first:.2f} s"),
                              ("warm call (1 object)", f"{warm * 1e3:.2f} ms")])
    return first


# --------------------------------------------------------------------------- CLASS_STAR


def test_read_nnw_shipped_network():
    net = read_nnw(NNW)
    assert net.layers == (10, 10, 1)
    assert net.weights[0].shape == (10, 10) and net.weights[1].shape == (10, 1)
    # default.nnw's first hidden neuron: bias -5.30052, first weight -0.32248
    assert net.biases[0][0] == pytest.approx(-5.30052)
    assert net.weights[0][0, 0] == pytest.approx(-0.32248)
    assert net.outscale[0] == 1.0
    out = net(np.zeros((3, 10)))
    assert out.shape == (3, 1) and np.all((out > 0) & (out < 1))


def test_read_nnw_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad.nnw"
    bad.write_text("not a network\n")
    with pytest.raises(ValueError, match="NOT a NNW table"):
        read_nnw(bad)
    short = tmp_path / "short.nnw"
    short.write_text("NNW\n# comment\n 3 10 10 1\n" + " 0" * 10 + "\n")
    with pytest.raises(ValueError, match="ends before the input scales"):
        read_nnw(short)
    few = tmp_path / "few.nnw"
    few.write_text("NNW\n 3 10 10 1\n" + " 0" * 9 + "\n")
    with pytest.raises(ValueError, match="line 3: expected 10 numbers"):
        read_nnw(few)
    with pytest.raises(FileNotFoundError, match="STARNNW_NAME"):
        read_nnw(tmp_path / "missing.nnw")


def test_class_star_needs_seeing_and_scale():
    net = read_nnw(NNW)
    assert isinstance(net, NeuralNetwork)
    with pytest.raises(ValueError, match="SEEING_FWHM"):
        class_star(np.ones((1, 8)), [1.0], 1.0, 0.0, 0.06, net)
    with pytest.raises(ValueError, match="pixel scale"):
        class_star(np.ones((1, 8)), [1.0], 1.0, 0.18, 0.0, net)


# ------------------------------------------------------------------- small API contracts


def test_gain_and_saturation_from_header():
    p = Params(GAIN=0, SATUR_LEVEL=50000)
    hdr = fits.Header({"GAIN": 21.1, "SATURATE": 26980.7})
    assert resolve_gain_saturation(p, hdr) == (21.1, 26980.7)
    assert resolve_gain_saturation(p, None) == (0.0, 50000.0)
    p2 = p.replace(GAIN_KEY="EGAIN", SATUR_KEY="SATLEV")
    assert resolve_gain_saturation(p2, hdr) == (0.0, 50000.0)


def test_sep_flag_mapping():
    assert list(sep_flags_to_sextractor([0, 1, 2, 4, 8, 15])) == [0, 2, 8, 64, 0, 74]


def test_inputs_not_modified_and_checked(warm_numba):
    _need(SEPREF / "image.fits")
    import sep

    img = _getdata(SEPREF / "image.fits").astype(np.float32)
    bkg = sep.Background(img)
    data = (img - bkg.back()).astype(np.float32)
    data_be = data.astype(">f4")
    objs, seg = sep.extract(data, 1.5, err=bkg.globalrms, segmentation_map=True)
    rms = np.full(data.shape, bkg.globalrms, np.float32)
    copies = [a.copy() for a in (data_be, rms, seg)]
    p = Params(PIXEL_SCALE=1.0, STARNNW_NAME=str(NNW))
    t = measure(data_be, rms, seg, objs, p)
    for a, c in zip((data_be, rms, seg), copies):
        assert np.array_equal(a, c)
    assert t.colnames == list(CATALOG_COLUMNS)
    assert len(t) == len(objs) and list(t["NUMBER"]) == list(range(1, len(objs) + 1))
    assert t["FLUX_APER"].shape == (len(objs), 1)
    assert str(t["X_IMAGE"].unit) == "pix" and str(t["MAG_AUTO"].unit) == "mag"
    assert np.all(np.isnan(t["ALPHA_J2000"]))   # no WCS
    # big-endian input gives the same numbers as native
    t2 = measure(data, rms, seg, objs, p)
    assert np.array_equal(t["FLUX_AUTO"], t2["FLUX_AUTO"])
    with pytest.raises(ValueError, match="rms shape"):
        measure(data, rms[:10], seg, objs, p)
    with pytest.raises(ValueError, match="MASK_TYPE"):
        measure(data, rms, seg, objs, p.replace(MASK_TYPE="FOO"))
    with pytest.raises(ValueError, match="lacks the field"):
        measure(data, rms, seg, objs[["x", "y"]], p)


# ----------------------------------------------------- sep_reference (MASK_TYPE NONE)


@needs_sex
def test_sep_reference_vs_sextractor(tmp_path, warm_numba):
    """sep's golden image, SExtractor's own detections: every column to float precision."""
    _need(SEPREF / "image.fits")
    config = {"DETECT_MINAREA": 5, "DETECT_THRESH": 1.5, "ANALYSIS_THRESH": 1.5,
              "FILTER": "Y", "FILTER_NAME": SEPREF / "default.conv", "DEBLEND_NTHRESH": 32,
              "DEBLEND_MINCONT": 1.0, "CLEAN": "Y", "CLEAN_PARAM": 1.0, "MASK_TYPE": "NONE",
              "PHOT_APERTURES": 10.0, "PHOT_AUTOPARAMS": "2.5,0.0",
              "PHOT_AUTOAPERS": "0.0,0.0", "PHOT_FLUXFRAC": "0.1,0.5,0.6",
              "SATUR_LEVEL": 50000.0, "MAG_ZEROPOINT": 0.0, "GAIN": 0.0,
              "PIXEL_SCALE": 1.0, "SEEING_FWHM": 1.2, "BACK_SIZE": 64,
              "BACK_FILTERSIZE": 3, "BACKPHOTO_TYPE": "GLOBAL"}
    image = SEPREF / "image.fits"
    cat, head, chk = _sextractor(tmp_path, "ref", image, config,
                                 checks=("SEGMENTATION", "BACKGROUND"))
    cat0, _, chk0 = _sextractor(tmp_path, "ref0", image, dict(config, CLEAN="N"),
                                checks=("SEGMENTATION",))
    seg = chk["SEGMENTATION"].astype(np.int32)
    own = _own_segmap(seg, cat, chk0["SEGMENTATION"], cat0)
    back = chk["BACKGROUND"]
    data = _getdata(image).astype(np.float32) - back
    backsig = head["SEXBKDEV"]
    rms = np.full(data.shape, backsig, np.float32)
    objs = _objects_from_catalog(cat)
    params = _params(config)
    t0 = time.perf_counter()
    t = measure(data, rms, seg, objs, params, background=back, backsig=backsig,
                iso_segmap=own)
    elapsed = time.perf_counter() - t0

    checks = {
        "FLUX_APER": _agree(t["FLUX_APER"][:, 0], cat["FLUX_APER"], 1e-6),
        "FLUXERR_APER": _agree(t["FLUXERR_APER"][:, 0], cat["FLUXERR_APER"], 1e-6),
        "FLUX_AUTO": _agree(t["FLUX_AUTO"], cat["FLUX_AUTO"], 1e-6),
        "FLUXERR_AUTO": _agree(t["FLUXERR_AUTO"], cat["FLUXERR_AUTO"], 1e-6),
        "KRON_RADIUS": _agree(t["KRON_RADIUS"], cat["KRON_RADIUS"], 1e-6),
        "FLUX_RADIUS": _agree(t["FLUX_RADIUS"], cat["FLUX_RADIUS"], 1e-5, 1e-5),
        "FLUX_ISO": _agree(t["FLUX_ISO"], cat["FLUX_ISO"], 1e-6),
        "FLUXERR_ISO": _agree(t["FLUXERR_ISO"], cat["FLUXERR_ISO"], 1e-6),
        "ISOAREA_IMAGE": t["ISOAREA_IMAGE"] == cat["ISOAREA_IMAGE"],
        "FWHM_IMAGE": _agree(t["FWHM_IMAGE"], cat["FWHM_IMAGE"], 1e-4),
        "CLASS_STAR": _agree(t["CLASS_STAR"], cat["CLASS_STAR"], 0, 1e-4),
        "XWIN_IMAGE": _agree(t["XWIN_IMAGE"], cat["XWIN_IMAGE"], 0, 1e-4),
        "YWIN_IMAGE": _agree(t["YWIN_IMAGE"], cat["YWIN_IMAGE"], 0, 1e-4),
        "SNR_WIN": _agree(t["SNR_WIN"], cat["SNR_WIN"], 1e-5),
        "MAG_AUTO": _agree(t["MAG_AUTO"], cat["MAG_AUTO"], 0, 1e-5),
        "MAG_BEST": _agree(t["MAG_BEST"], cat["MAG_BEST"], 0, 1e-5),
        "MAGERR_BEST": _agree(t["MAGERR_BEST"], cat["MAGERR_BEST"], 0, 1e-5),
        "MAG_ISO": _agree(t["MAG_ISO"], cat["MAG_ISO"], 0, 1e-5),
        "ELONGATION": _agree(t["ELONGATION"], cat["ELONGATION"], 1e-6),
        "FLAGS": t["FLAGS"] == cat["FLAGS"],
    }
    _report(f"sep_reference, {len(cat)} SExtractor objects, MASK_TYPE NONE "
            f"(measure: {elapsed * 1e3:.1f} ms) - fraction agreeing with SExtractor",
            [(k, f"{v.mean():.3f}") for k, v in checks.items()])
    for name, ok in checks.items():
        assert ok.all(), f"{name}: {np.count_nonzero(~ok)} of {len(ok)} objects differ"


def test_sep_reference_catalogue_with_sep_detections(warm_numba):
    """sep.extract detections measured by galseg vs sep's golden image.cat (sep's tolerances)."""
    _need(SEPREF / "image.cat")
    import sep

    img = _getdata(SEPREF / "image.fits").astype(np.float32)
    bkg = sep.Background(img, bw=64, bh=64, fw=3, fh=3)
    back = bkg.back(dtype=np.float32)
    data = img - back
    objs, seg = sep.extract(data, 1.5, err=bkg.globalrms, deblend_cont=1.0,
                            segmentation_map=True)
    ref = np.loadtxt(SEPREF / "image.cat", comments="#")
    cols = ["NUMBER", "X", "Y", "XWIN", "YWIN", "X2", "Y2", "XY", "ERRX2", "ERRY2", "ERRXY",
            "A", "FLUX_APER", "FLUXERR_APER", "KRON", "FLUX_AUTO", "FLUXERR_AUTO", "FR1",
            "FR2", "FR3", "FLAGS"]
    ref = {c: ref[:, i] for i, c in enumerate(cols)}
    params = Params(PHOT_APERTURES=10.0, PHOT_AUTOPARAMS=(2.5, 0.0), PHOT_AUTOAPERS=(0, 0),
                    PHOT_FLUXFRAC=(0.1, 0.5, 0.6), MASK_TYPE="NONE", PIXEL_SCALE=1.0,
                    SATUR_LEVEL=50000.0, STARNNW_NAME=str(NNW))
    rms = np.full(data.shape, bkg.globalrms, np.float32)
    t = measure(data, rms, seg, objs, params, background=back, backsig=bkg.globalrms)
    # match by position (sep and SExtractor detect the same 66 sources here)
    d2 = ((t["X_IMAGE"][:, None] - ref["X"][None]) ** 2
          + (t["Y_IMAGE"][:, None] - ref["Y"][None]) ** 2)
    j = np.argmin(d2, axis=1)
    assert np.all(d2[np.arange(len(t)), j] < 1e-4) and len(np.unique(j)) == len(t) == len(j)
    fr = np.stack([ref["FR1"], ref["FR2"], ref["FR3"]], axis=1)[j]
    checks = {
        "FLUX_APER (rtol 2e-4)": _agree(t["FLUX_APER"][:, 0], ref["FLUX_APER"][j], 2e-4),
        "FLUXERR_APER (rtol 1e-5)": _agree(t["FLUXERR_APER"][:, 0], ref["FLUXERR_APER"][j],
                                           1e-5),
        "FLUX_AUTO (rtol 5e-4)": _agree(t["FLUX_AUTO"], ref["FLUX_AUTO"][j], 5e-4),
        "FLUXERR_AUTO (rtol 5e-4)": _agree(t["FLUXERR_AUTO"], ref["FLUXERR_AUTO"][j], 5e-4),
        "KRON_RADIUS (atol 0.01)": _agree(t["KRON_RADIUS"], ref["KRON"][j], 0, 0.0051),
        "FLUX_RADIUS (atol 1e-3)": _agree(t["FLUX_RADIUS"], fr, 0, 0.0011).all(axis=1),
        "XWIN_IMAGE (atol 1e-3)": _agree(t["XWIN_IMAGE"], ref["XWIN"][j], 0, 1e-3),
        "YWIN_IMAGE (atol 1e-3)": _agree(t["YWIN_IMAGE"], ref["YWIN"][j], 0, 1e-3),
        "FLAGS": np.asarray(t["FLAGS"]) == ref["FLAGS"][j],
    }
    _report(f"sep_reference: {len(t)} sep.extract detections vs image.cat - fraction agreeing",
            [(k, f"{v.mean():.3f}") for k, v in checks.items()])
    for name in ("FLUX_APER (rtol 2e-4)", "FLUXERR_APER (rtol 1e-5)", "FLAGS"):
        assert checks[name].all(), name
    # sep's own test excludes one tiny object whose Kron radius changed between
    # SExtractor 2.8.6 (image.cat) and later versions
    for name in ("FLUX_AUTO (rtol 5e-4)", "FLUXERR_AUTO (rtol 5e-4)",
                 "KRON_RADIUS (atol 0.01)"):
        assert np.count_nonzero(~checks[name]) <= 1, name
    for name in ("FLUX_RADIUS (atol 1e-3)", "XWIN_IMAGE (atol 1e-3)", "YWIN_IMAGE (atol 1e-3)"):
        assert checks[name].mean() >= 0.95, name


# ------------------------------------------------------- XDF, galfind settings, CORRECT


def _xdf_inputs(tmp_path, band):
    _need(XDF / f"{band}_sci.fits")
    sci = _getdata(XDF / f"{band}_sci.fits").astype(np.float32)
    wht = _getdata(XDF / f"{band}_wht.fits").astype(np.float32)
    rms = 1.0 / np.sqrt(wht)
    z = sci / rms
    # the XDF weights overestimate the (correlated) noise: scale to the measured MAD
    rms = (rms * 1.4826 * np.median(np.abs(z - np.median(z)))).astype(np.float32)
    sci_path = tmp_path / f"{band}_sci.fits"
    rms_path = tmp_path / f"{band}_rms.fits"
    fits.writeto(sci_path, sci, overwrite=True)
    fits.writeto(rms_path, rms, overwrite=True)
    return sci, rms, sci_path, rms_path


def _blank_map(filtered, det_rms, seg, own, config):
    """SExtractor's blanked pixels: above the detection threshold, minus CLEANed ones.

    The threshold is DETECT_THRESH times the filtered detection rms (the
    variance map convolved with the normalised kernel, as SExtractor filters it).
    """
    kernel = np.loadtxt(config["FILTER_NAME"], skiprows=1)
    kernel /= np.abs(kernel).sum()
    fvar = ndimage.convolve(det_rms.astype(np.float64) ** 2, kernel, mode="constant")
    above = filtered > config["DETECT_THRESH"] * np.sqrt(fvar)
    return (above | (seg > 0)) & ~((seg > 0) & (own == 0))


def _xdf_reference(tmp_path, band, config, det_band=None):
    """SExtractor on an XDF band (dual-image mode with ``det_band``), CLEAN Y and N."""
    sci, rms, sci_path, rms_path = _xdf_inputs(tmp_path, band)
    image, weight, det_rms = sci_path, rms_path, rms
    if det_band is not None:
        _, det_rms, det_path, det_rms_path = _xdf_inputs(tmp_path, det_band)
        image, weight = f"{det_path},{sci_path}", f"{det_rms_path},{rms_path}"
    cat, head, chk = _sextractor(tmp_path, band, image, config, weight=weight,
                                 checks=("SEGMENTATION", "FILTERED"))
    cat0, _, chk0 = _sextractor(tmp_path, band + "0", image, dict(config, CLEAN="N"),
                                weight=weight, checks=("SEGMENTATION",))
    seg = chk["SEGMENTATION"].astype(np.int32)
    own = _own_segmap(seg, cat, chk0["SEGMENTATION"], cat0)
    blank = _blank_map(chk["FILTERED"], det_rms, seg, own, config)
    return sci, rms, cat, head, seg, own, blank


def _xdf_checks(t, cat):
    naper = t["FLUX_APER"].shape[1]
    out = {}
    for k in range(naper):
        out[f"FLUX_APER[{k}]"] = _agree(t["FLUX_APER"][:, k], cat["FLUX_APER"][:, k], 1e-4)
    out["FLUXERR_APER[-1]"] = _agree(t["FLUXERR_APER"][:, -1], cat["FLUXERR_APER"][:, -1],
                                     1e-4)
    out["FLUX_AUTO"] = _agree(t["FLUX_AUTO"], cat["FLUX_AUTO"], 1e-4)
    out["FLUXERR_AUTO"] = _agree(t["FLUXERR_AUTO"], cat["FLUXERR_AUTO"], 1e-4)
    out["KRON_RADIUS"] = _agree(t["KRON_RADIUS"], cat["KRON_RADIUS"], 1e-4)
    out["FLUX_RADIUS"] = _agree(t["FLUX_RADIUS"], cat["FLUX_RADIUS"], 1e-4)
    out["FLUX_ISO"] = _agree(t["FLUX_ISO"], cat["FLUX_ISO"], 1e-5)
    out["ISOAREA_IMAGE"] = np.asarray(t["ISOAREA_IMAGE"] == cat["ISOAREA_IMAGE"])
    out["FWHM_IMAGE"] = _agree(t["FWHM_IMAGE"], cat["FWHM_IMAGE"], 1e-4)
    out["CLASS_STAR"] = _agree(t["CLASS_STAR"], cat["CLASS_STAR"], 0, 1e-3)
    out["XWIN/YWIN (1e-4 px)"] = (_agree(t["XWIN_IMAGE"], cat["XWIN_IMAGE"], 0, 1e-4)
                                  & _agree(t["YWIN_IMAGE"], cat["YWIN_IMAGE"], 0, 1e-4))
    out["SNR_WIN"] = _agree(t["SNR_WIN"], cat["SNR_WIN"], 1e-4)
    out["MAG_BEST"] = _agree(t["MAG_BEST"], cat["MAG_BEST"], 0, 1e-4)
    out["FLAGS"] = np.asarray(t["FLAGS"] == cat["FLAGS"])
    return out


def _ratio_stats(t, cat):
    rows = []
    for k in range(t["FLUX_APER"].shape[1]):
        r = np.asarray(t["FLUX_APER"][:, k] / cat["FLUX_APER"][:, k])
        rows.append((f"FLUX_APER[{k}] median ratio", f"{np.median(r):.6f}"))
    r = np.asarray(t["FLUX_AUTO"] / cat["FLUX_AUTO"])
    rows.append(("FLUX_AUTO median ratio", f"{np.median(r):.6f}"))
    rows.append(("FLUX_AUTO within 2%", f"{np.mean(np.abs(r - 1) < 0.02):.3f}"))
    return rows


@needs_sex
def test_xdf_f160w_galfind_settings(tmp_path, warm_numba):
    """MASK_TYPE CORRECT, weights, galfind apertures: SExtractor's segmentation fed to measure."""
    sci, rms, cat, head, seg, own, blank = _xdf_reference(tmp_path, "f160w", XDF_CONFIG)
    objs = _objects_from_catalog(cat)
    params = _params(XDF_CONFIG)
    backsig = head["SEXBKDEV"]
    t0 = time.perf_counter()
    t = measure(sci, rms, seg, objs, params, backsig=backsig, iso_segmap=own, blank=blank)
    elapsed = time.perf_counter() - t0
    checks = _xdf_checks(t, cat)
    _report(f"XDF f160w, {len(cat)} objects, galfind settings, MASK_TYPE CORRECT "
            f"(measure: {elapsed * 1e3:.1f} ms) - fraction within 1e-4 of SExtractor",
            [(k, f"{v.mean():.3f}") for k, v in checks.items()] + _ratio_stats(t, cat))
    for k in range(t["FLUX_APER"].shape[1]):
        r = np.asarray(t["FLUX_APER"][:, k] / cat["FLUX_APER"][:, k])
        assert abs(np.median(r) - 1) < 1e-3
    r = np.asarray(t["FLUX_AUTO"] / cat["FLUX_AUTO"])
    assert abs(np.median(r) - 1) < 0.01 and np.mean(np.abs(r - 1) < 0.02) >= 0.9
    for name, ok in checks.items():
        assert ok.mean() >= 0.93, f"{name}: only {ok.mean():.3f} agree"
    for name in ("FLUX_APER[0]", "FLUX_APER[1]", "FLUX_ISO", "ISOAREA_IMAGE", "FWHM_IMAGE",
                 "CLASS_STAR", "FLAGS"):
        assert checks[name].all(), name

    # Without SExtractor's exact blanking (neighbours = the segmentation map
    # only), large apertures see a few more neighbour pixels; still SExtractor's
    # numbers in the median and for most objects.
    t2 = measure(sci, rms, seg, objs, params, backsig=backsig, iso_segmap=own)
    checks2 = _xdf_checks(t2, cat)
    _report("  same, blank = segmentation map only",
            [(k, f"{v.mean():.3f}") for k, v in checks2.items()] + _ratio_stats(t2, cat))
    for k in range(t2["FLUX_APER"].shape[1]):
        r = np.asarray(t2["FLUX_APER"][:, k] / cat["FLUX_APER"][:, k])
        assert abs(np.median(r) - 1) < 1e-3
    r = np.asarray(t2["FLUX_AUTO"] / cat["FLUX_AUTO"])
    assert abs(np.median(r) - 1) < 0.01 and np.mean(np.abs(r - 1) < 0.02) >= 0.9
    assert checks2["FLUX_APER[2]"].mean() >= 0.9

    # MASK_TYPE NONE measures neighbours' light too: the large apertures grow
    tn = measure(sci, rms, seg, objs, params.replace(MASK_TYPE="NONE"), backsig=backsig,
                 iso_segmap=own, blank=blank)
    grown = np.asarray(tn["FLUX_APER"][:, -1] > t["FLUX_APER"][:, -1] * 1.01)
    _report("  MASK_TYPE NONE instead", [("2\" aperture > 1.01 x CORRECT's",
                                         f"{grown.mean():.3f}")])
    assert grown.mean() > 0.1


@needs_sex
def test_xdf_f160w_local_background(tmp_path, warm_numba):
    """BACKPHOTO_TYPE LOCAL (galfind's nircam.sex): SExtractor's annulus mode estimate."""
    config = dict(XDF_CONFIG, BACKPHOTO_TYPE="LOCAL", BACKPHOTO_THICK=24)
    sci, rms, cat, head, seg, own, blank = _xdf_reference(tmp_path, "f160w", config)
    objs = _objects_from_catalog(cat)
    # SExtractor estimates the local background while scanning, when rows up to
    # the detection island's last row + 1 - (kernel height // 2 + 1) are blanked
    above = blank | (seg > 0)
    islands, _ = ndimage.label(above, structure=np.ones((3, 3)))
    island_ymax = np.array([s[0].stop - 1 for s in ndimage.find_objects(islands)])
    which = ndimage.maximum(islands, seg, index=np.arange(1, len(cat) + 1)).astype(int)
    rows = island_ymax[which - 1] + 1 - 3
    t = measure(sci, rms, seg, objs, _params(config), backsig=head["SEXBKDEV"],
                iso_segmap=own, blank=blank, local_blank_rows=rows)
    checks = _xdf_checks(t, cat)
    _report(f"XDF f160w, {len(cat)} objects, BACKPHOTO_TYPE LOCAL - fraction within 1e-4",
            [(k, f"{v.mean():.3f}") for k, v in checks.items()] + _ratio_stats(t, cat))
    for name, ok in checks.items():
        assert ok.mean() >= 0.9, f"{name}: only {ok.mean():.3f} agree"
    # the local background really is subtracted (GLOBAL differs)
    tg = measure(sci, rms, seg, objs, _params(XDF_CONFIG), backsig=head["SEXBKDEV"],
                 iso_segmap=own, blank=blank)
    assert np.count_nonzero(tg["FLUX_ISO"] != t["FLUX_ISO"]) > len(t) // 2


@needs_sex
def test_xdf_dual_image_mode(tmp_path, warm_numba):
    """Detection on f160w, measurement on f814w: SExtractor's dual-image mode."""
    config = dict(XDF_CONFIG, MAG_ZEROPOINT=25.94)
    sci, rms, cat, head, seg, own, blank = _xdf_reference(tmp_path, "f814w", config,
                                                          det_band="f160w")
    det = _getdata(tmp_path / "f160w_sci.fits")
    det_rms = _getdata(tmp_path / "f160w_rms.fits")
    objs = _objects_from_catalog(cat)
    t = measure(sci, rms, seg, objs, _params(config), backsig=head["SEXBKDEV"],
                iso_segmap=own, blank=blank, detection=det, detection_rms=det_rms)
    checks = _xdf_checks(t, cat)
    _report(f"XDF dual image (detect f160w, measure f814w), {len(cat)} objects - "
            "fraction within 1e-4", [(k, f"{v.mean():.3f}") for k, v in checks.items()]
            + _ratio_stats(t, cat))
    for name, ok in checks.items():
        assert ok.mean() >= 0.93, f"{name}: only {ok.mean():.3f} agree"
    # the Kron radius comes from the detection image: measuring it on f814w differs
    t_own = measure(sci, rms, seg, objs, _params(config), backsig=head["SEXBKDEV"],
                    iso_segmap=own, blank=blank)
    assert np.mean(_agree(t_own["KRON_RADIUS"], cat["KRON_RADIUS"], 1e-4)) < \
        checks["KRON_RADIUS"].mean()


@needs_sex
def test_xdf_bad_pixels_are_mirrored(tmp_path, warm_numba):
    """A stripe with no data (rms inf / a mask): SExtractor replaces it by the mirror pixels."""
    sci, rms, sci_path, rms_path = _xdf_inputs(tmp_path, "f160w")
    bad = np.zeros(sci.shape, bool)
    bad[:, 250:254] = True
    bad[180:184, :] = True
    fits.writeto(rms_path, np.where(bad, 1e15, rms).astype(np.float32), overwrite=True)
    config = dict(XDF_CONFIG, INTERP_TYPE="NONE", WEIGHT_THRESH=1e10)
    cat, head, chk = _sextractor(tmp_path, "bad", sci_path, config, weight=rms_path,
                                 checks=("SEGMENTATION", "FILTERED"))
    cat0, _, chk0 = _sextractor(tmp_path, "bad0", sci_path, dict(config, CLEAN="N"),
                                weight=rms_path, checks=("SEGMENTATION",))
    seg = chk["SEGMENTATION"].astype(np.int32)
    own = _own_segmap(seg, cat, chk0["SEGMENTATION"], cat0)
    blank = _blank_map(chk["FILTERED"], np.where(bad, 1e15, rms), seg, own, config)
    objs = _objects_from_catalog(cat)
    data = np.where(bad, 0, sci).astype(np.float32)      # masked pixels are 0
    params = _params({k: v for k, v in config.items() if k not in ("INTERP_TYPE", "WEIGHT_THRESH")})
    t = measure(data, np.where(bad, np.inf, rms), seg, objs, params,
                backsig=head["SEXBKDEV"], iso_segmap=own, blank=blank)
    # the same through ``mask`` with finite noise everywhere
    tm = measure(data, rms, seg, objs, params, backsig=head["SEXBKDEV"], iso_segmap=own,
                 blank=blank, mask=bad)
    near = np.zeros(len(cat), bool)
    for i, (x, y) in enumerate(zip(cat["X_IMAGE"] - 1, cat["Y_IMAGE"] - 1)):
        near[i] = min(abs(x - 251.5), abs(y - 181.5)) < 20
    checks = _xdf_checks(t, cat)
    _report(f"XDF f160w with a no-data cross, {len(cat)} objects ({near.sum()} within 20 px "
            "of it) - fraction within 1e-4",
            [(k, f"{v.mean():.3f} (near: {v[near].mean():.3f})") for k, v in checks.items()])
    assert near.sum() >= 5
    for name in ("FLUX_APER[0]", "FLUX_APER[1]", "FLUX_APER[2]", "FLUX_AUTO", "FLUXERR_AUTO",
                 "FLUX_RADIUS", "FLAGS"):
        assert checks[name][near].mean() >= 0.8, name
        assert checks[name].mean() >= 0.9, name
    for col in ("FLUX_APER", "FLUXERR_APER", "FLUX_AUTO", "FLUX_RADIUS", "XWIN_IMAGE"):
        assert np.array_equal(np.asarray(t[col]), np.asarray(tm[col])), col
    # treating the stripe as data instead changes the photometry of the objects on it
    tz = measure(data, rms, seg, objs, params, backsig=head["SEXBKDEV"], iso_segmap=own,
                 blank=blank)
    assert np.any(np.asarray(tz["FLUX_APER"][near, -1] != t["FLUX_APER"][near, -1]))


# ---------------------------------------------- DES: header GAIN/SATURATE, WCS, weights


@needs_sex
def test_des_header_gain_wcs_and_poisson_errors(tmp_path, warm_numba):
    """GAIN/SATURATE from the header (config GAIN 0), weighted Poisson term, sky positions."""
    path = DES / "DES_r.fits"
    _need(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with fits.open(path) as hdul:
            header = hdul["SCI"].header
            sci = hdul["SCI"].data.astype(np.float32)
            wgt = hdul["WGT"].data.astype(np.float32)
    rms = np.where(wgt > 0, 1.0 / np.sqrt(np.where(wgt > 0, wgt, 1)), np.inf).astype(np.float32)
    sci_path = tmp_path / "des_sci.fits"
    rms_path = tmp_path / "des_rms.fits"
    fits.writeto(sci_path, sci, header, overwrite=True)
    fits.writeto(rms_path, np.where(np.isfinite(rms), rms, 1e15).astype(np.float32),
                 overwrite=True)
    config = {"DETECT_MINAREA": 5, "DETECT_THRESH": 1.5, "ANALYSIS_THRESH": 1.5,
              "FILTER": "Y", "FILTER_NAME": KERNELS / "gauss_2.5_5x5.conv",
              "DEBLEND_NTHRESH": 32, "DEBLEND_MINCONT": 0.005, "CLEAN": "Y",
              "MASK_TYPE": "CORRECT", "PHOT_APERTURES": "5,10,20", "PHOT_AUTOPARAMS": "2.5,3.5",
              "PHOT_AUTOAPERS": "0,0", "PHOT_FLUXFRAC": "0.5", "MAG_ZEROPOINT": 30.0,
              "GAIN": 0, "SATUR_LEVEL": 50000, "PIXEL_SCALE": 0, "SEEING_FWHM": 1.0,
              "WEIGHT_TYPE": "MAP_RMS", "WEIGHT_GAIN": "Y", "BACK_SIZE": 64}
    cat, head, chk = _sextractor(tmp_path, "des", sci_path, config, weight=rms_path,
                                 checks=("SEGMENTATION", "BACKGROUND"))
    cat0, _, chk0 = _sextractor(tmp_path, "des0", sci_path, dict(config, CLEAN="N"),
                                weight=rms_path, checks=("SEGMENTATION",))
    assert head["SEXGAIN"] == pytest.approx(header["GAIN"])     # SExtractor took the header
    seg = chk["SEGMENTATION"].astype(np.int32)
    own = _own_segmap(seg, cat, chk0["SEGMENTATION"], cat0)
    back = chk["BACKGROUND"]
    objs = _objects_from_catalog(cat)
    wcs = WCS(header)
    t = measure(sci - back, rms, seg, objs, _params(config), wcs=wcs, header=header,
                background=back, backsig=head["SEXBKDEV"], iso_segmap=own)
    assert t.meta["GAIN"] == pytest.approx(header["GAIN"])
    assert t.meta["SATURATE"] == pytest.approx(header["SATURATE"])
    assert t.meta["PIXSCALE"] == pytest.approx(0.263, rel=1e-3)
    dra = (np.asarray(t["ALPHA_J2000"]) - cat["ALPHA_J2000"]) * 3600 * np.cos(np.radians(0.26))
    ddec = (np.asarray(t["DELTA_J2000"]) - cat["DELTA_J2000"]) * 3600
    checks = {
        "FLUX_APER": _agree(t["FLUX_APER"], cat["FLUX_APER"], 1e-4).all(axis=1),
        "FLUXERR_APER (Poisson)": _agree(t["FLUXERR_APER"], cat["FLUXERR_APER"], 1e-4).all(axis=1),
        "FLUX_AUTO": _agree(t["FLUX_AUTO"], cat["FLUX_AUTO"], 1e-4),
        "FLUXERR_AUTO (Poisson)": _agree(t["FLUXERR_AUTO"], cat["FLUXERR_AUTO"], 1e-4),
        "FLUXERR_ISO (Poisson)": _agree(t["FLUXERR_ISO"], cat["FLUXERR_ISO"], 1e-4),
        "SNR_WIN": _agree(t["SNR_WIN"], cat["SNR_WIN"], 1e-4),
        "CLASS_STAR": _agree(t["CLASS_STAR"], cat["CLASS_STAR"], 0, 1e-3),
        "ALPHA/DELTA (< 1 mas)": (np.abs(dra) < 1e-3) & (np.abs(ddec) < 1e-3),
        "FLAGS": np.asarray(t["FLAGS"] == cat["FLAGS"]),
    }
    _report(f"DES r, {len(cat)} objects, header GAIN {header['GAIN']:.2f} - fraction agreeing",
            [(k, f"{v.mean():.3f}") for k, v in checks.items()])
    for name, ok in checks.items():
        assert ok.mean() >= 0.9, f"{name}: only {ok.mean():.3f} agree"
    # without the header the Poisson term vanishes and the errors shrink
    t_nogain = measure(sci - back, rms, seg, objs, _params(config), wcs=wcs,
                       background=back, backsig=head["SEXBKDEV"], iso_segmap=own)
    bright = np.asarray(cat["FLUX_AUTO"]) > 100 * np.asarray(cat["FLUXERR_AUTO"])
    assert bright.any()
    assert np.all(t_nogain["FLUXERR_AUTO"][bright] < t["FLUXERR_AUTO"][bright])


# ------------------------------------------------------------------------------ speed


@pytest.mark.slow
def test_speed_dense_field(warm_numba):
    """~7,500 sep detections in a 2000x2000 tiling of XDF f606w, galfind apertures."""
    _need(XDF / "f606w_sci.fits")
    import sep

    sci = _getdata(XDF / "f606w_sci.fits").astype(np.float32)
    rms = 1.0 / np.sqrt(_getdata(XDF / "f606w_wht.fits").astype(np.float32))
    z = sci / rms
    rms = (rms * 1.4826 * np.median(np.abs(z - np.median(z)))).astype(np.float32)
    sci = np.tile(sci, (4, 4))
    rms = np.tile(rms, (4, 4))
    sep.set_extract_pixstack(10_000_000)
    sep.set_sub_object_limit(4096)
    objs, seg = sep.extract(sci, 1.8, err=rms, minarea=9, segmentation_map=True,
                            deblend_cont=0.005, clean=False)
    params = Params(PHOT_APERTURES=(10.67, 16.67, 33.33, 50, 66.67, 83.33),
                    PHOT_AUTOPARAMS=(2.5, 4.0), PHOT_AUTOAPERS=(3.5, 3.5), MASK_TYPE="CORRECT",
                    WEIGHT_TYPE="MAP_RMS", PIXEL_SCALE=0.06, SEEING_FWHM=0.18,
                    STARNNW_NAME=str(NNW))
    measure(sci, rms, seg, objs[:10], params)
    t0 = time.perf_counter()
    c0 = time.process_time()
    t = measure(sci, rms, seg, objs, params)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    _report("speed, dense field", [("objects", len(t)), ("wall", f"{wall:.2f} s"),
                                   ("cpu", f"{cpu:.2f} s"),
                                   ("cpu per object", f"{cpu / len(t) * 1e6:.0f} us")])
    assert len(t) > 5000
    assert cpu / len(t) < 1e-3
