"""Tests of the product cache (galseg.products, galseg.io.atomic).

Everything runs on real FITS files in tmp_path and, for locking and crash
safety, in real child processes (this file doubles as the child's script:
``python tests/test_products.py MODE ...``).  The "extraction" here is a tiny
threshold-and-label stand-in built with scipy.ndimage: the cache must not care
what made a product.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

REPO = Path(__file__).resolve().parents[1]

from galseg.extract.params import Params  # noqa: E402
from galseg.extract.result import ExtractionResult  # noqa: E402
from galseg.io.atomic import (  # noqa: E402
    TEMP_PATTERN,
    atomic_write,
    atomic_write_fits,
    atomic_write_fits_image,
    atomic_write_json,
    discard_file,
    is_orphan_temp,
)
from galseg.products import (  # noqa: E402
    FileLock,
    InputChangedError,
    LockTimeout,
    ProductStore,
    clean,
    clear_fingerprint_cache,
    get_or_compute,
    input_fingerprint,
    list_products,
    make_key,
    product_dir,
    read_provenance,
    safe_component,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BAND = ("NIRCam", "v11", "JADES-GS", "F444W", "MAP_RMS")
HOUR_NS = 3600 * 10**9


# --------------------------------------------------------------------------- helpers
def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _age(path, seconds: float = 7200) -> None:
    """Make a file look old, as real survey images are (outside the racy window)."""
    t = time.time_ns() - int(seconds * 1e9)
    os.utime(path, ns=(t, t))


def _wait_not_racy(*paths) -> None:
    """Sleep until the files' last change is older than the racy window (2 s)."""
    from galseg.products.fingerprint import RACY_NS

    last = max(max(p.stat().st_ctime_ns, p.stat().st_mtime_ns) for p in map(Path, paths))
    delay = (last + RACY_NS - time.time_ns()) / 1e9 + 0.05
    if delay > 0:
        time.sleep(delay)


def write_inputs(directory, shape=(500, 500), seed=1) -> tuple[Path, Path]:
    """A science image with a TAN WCS and its rms map, as real FITS files."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ny, nx = shape
    yy, xx = np.mgrid[:ny, :nx]
    sci = rng.normal(0.0, 1.0, shape)
    for _ in range(40):
        x0, y0 = rng.uniform(10, nx - 10), rng.uniform(10, ny - 10)
        sci += rng.uniform(5, 50) * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * 2.0**2))
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [53.16, -27.78]
    w.wcs.crpix = [nx / 2, ny / 2]
    w.wcs.cdelt = [-0.03 / 3600, 0.03 / 3600]
    hdr = w.to_header()
    hdr["BUNIT"] = "MJy/sr"
    sci_path, rms_path = directory / "sci.fits", directory / "rms.fits"
    fits.PrimaryHDU(sci.astype(np.float32), header=hdr).writeto(sci_path)
    fits.PrimaryHDU(np.ones(shape, np.float32), header=hdr).writeto(rms_path)
    for p in (sci_path, rms_path):
        _age(p)
    return sci_path, rms_path


def compute(sci_path, rms_path, *, sleep: float = 0.0, counter=None, thresh: float = 3.0):
    """Threshold + label stand-in for the extraction engine (vectorised)."""
    from scipy import ndimage

    if counter is not None:
        with open(counter, "a") as f:
            f.write(f"{os.getpid()}\n")
    sci = fits.getdata(sci_path).astype(np.float32)
    rms = fits.getdata(rms_path).astype(np.float32)
    seg, n = ndimage.label(sci > thresh * rms)
    idx = np.arange(1, n + 1)
    flux = ndimage.sum(sci, seg, idx)
    ycen, xcen = np.array(ndimage.center_of_mass(sci, seg, idx)).T if n else ([], [])
    cat = Table({"NUMBER": idx.astype(np.int32), "X_IMAGE": np.asarray(xcen) + 1.0,
                 "Y_IMAGE": np.asarray(ycen) + 1.0, "FLUX_ISO": flux})
    cat["X_IMAGE"].unit = "pix"
    cat["Y_IMAGE"].unit = "pix"
    cat["FLUX_APER"] = np.stack([flux * 0.5, flux * 0.8], axis=1)
    if sleep:
        time.sleep(sleep)
    bkg = np.full(sci.shape, float(np.median(sci)), np.float32)
    return ExtractionResult(seg.astype(np.int32), bkg, cat, meta={"nobj": int(n), "thresh": thresh})


def key_for(sci_path, rms_path, **params):
    return make_key({"sci": (sci_path, 0), "rms": (rms_path, 0)}, err_type="rms_err",
                    method="sep", params=Params(params), kernel=np.ones((3, 3)) / 9,
                    apertures=[4.0, 8.0], zero_point=28.9)


def entry_for(work, sci_path, rms_path, label=None, **params):
    return ProductStore(work).entry(*BAND, key_for(sci_path, rms_path, **params), label=label)


def _child(mode: str, *args, wait: bool = True, timeout: float = 60):
    cmd = [sys.executable, str(Path(__file__).resolve()), mode, *map(str, args)]
    env = dict(os.environ)
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.fixture
def inputs(tmp_path):
    """Inputs in their own folder, checked byte-for-byte unchanged after the test."""
    sci, rms = write_inputs(tmp_path / "inputs")
    before = {p: (_sha(p), p.stat().st_mtime_ns) for p in (sci, rms)}
    yield sci, rms
    for p, (sha, mtime) in before.items():
        assert _sha(p) == sha, f"{p} was modified"
        assert p.stat().st_mtime_ns == mtime, f"{p} was touched"


# --------------------------------------------------------------------------- naming
@pytest.mark.parametrize("bad", ["", "a/b", "../x", "..", "a..b", "a\\b", ".hidden", "-x",
                                 "a\x00b", "a b", "a*b", "x" * 129])
def test_safe_component_rejects(bad):
    with pytest.raises(ValueError) as exc:
        safe_component(bad, "survey")
    assert "survey" in str(exc.value) and repr(bad) in str(exc.value)


def test_safe_component_accepts_real_names(tmp_path):
    for good in ["JADES-GS", "v11.3", "F444W", "ACS_WFC+NIRCam", "f850lp", "CEERS1"]:
        assert safe_component(good, "x") == good
    d = product_dir(tmp_path, "NIRCam", "v11", "JADES-GS", "map_rms")
    assert d == tmp_path / "NIRCam" / "v11" / "JADES-GS" / "MAP_RMS" / "segmentation"


def test_store_rejects_unsafe_names(tmp_path, inputs):
    key = key_for(*inputs)
    store = ProductStore(tmp_path / "work")
    for i, bad in enumerate(["../escape", "a/b", ".."]):
        args = list(BAND)
        args[i % 4] = bad
        what = ["instrument", "version", "survey", "filt"][i % 4]
        with pytest.raises(ValueError, match=what):
            store.entry(*args, key)
    with pytest.raises(ValueError, match="label"):
        store.entry(*BAND, key, label="x/../y")
    with pytest.raises(ValueError, match="weight_type"):
        store.entry(*BAND[:4], "WEIGHT", key)
    assert not (tmp_path / "work").exists()


# ------------------------------------------------------------------------ atomic io
def test_atomic_write_all_or_nothing(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as f:
            f.write(b"partial new content")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]
    with atomic_write(target) as f:
        f.write(b"new")
    assert target.read_bytes() == b"new"
    with pytest.raises(ValueError):
        atomic_write_json({"x": float("nan")}, tmp_path / "n.json")
    assert not (tmp_path / "n.json").exists()
    data = np.arange(12, dtype=np.int32).reshape(3, 4)
    info = atomic_write_fits(fits.PrimaryHDU(data), tmp_path / "a.fits", sha256=True)
    assert info["sha256"] == _sha(tmp_path / "a.fits")
    st = (tmp_path / "a.fits").stat()
    assert (info["size"], info["ino"], info["mtime_ns"]) == (st.st_size, st.st_ino, st.st_mtime_ns)
    np.testing.assert_array_equal(fits.getdata(tmp_path / "a.fits"), data)
    # the streaming image writer: exact values, caller's array untouched, hash of the file
    img = np.random.default_rng(3).normal(size=(301, 207))
    img_copy = img.copy()
    info = atomic_write_fits_image(img, tmp_path / "img.fits", dtype=np.float32, sha256=True,
                                   chunk_bytes=10_000)
    np.testing.assert_array_equal(img, img_copy)
    assert info["sha256"] == _sha(tmp_path / "img.fits")
    with fits.open(tmp_path / "img.fits") as hdul:
        hdul.verify("exception")
        np.testing.assert_array_equal(hdul[0].data, img.astype(np.float32))
    with pytest.raises(TypeError, match="uint16"):
        atomic_write_fits_image(img.astype(np.uint16), tmp_path / "u.fits")
    assert not (tmp_path / "u.fits").exists()


def test_orphan_temp_detection(tmp_path):
    # A temp file whose writer pid has exited (reaped) is an orphan; ours is not.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    from galseg.io import atomic

    orphan = tmp_path / f".x_seg.fits.{atomic._HOST_TAG}.{dead}.{'0' * 16}.tmp"
    mine = tmp_path / f".x_seg.fits.{atomic._HOST_TAG}.{os.getpid()}.{'1' * 16}.tmp"
    other_host = tmp_path / f".x_seg.fits.ffffffff.{dead}.{'2' * 16}.tmp"
    for p in (orphan, mine, other_host):
        p.write_bytes(b"x")
        assert TEMP_PATTERN.match(p.name)
    assert is_orphan_temp(orphan)
    assert not is_orphan_temp(mine)
    assert not is_orphan_temp(other_host)           # pid unknowable: wait for age
    assert is_orphan_temp(other_host, min_age_s=-1)


def test_discard_file_frees_the_name_at_once(tmp_path):
    import threading

    target = tmp_path / "x_seg.fits"
    target.write_bytes(b"old" * 1000)
    keep = tmp_path / "x_cat.fits"
    keep.write_bytes(b"cat")
    discard_file(target)
    assert not target.exists()
    # the new file lands on the free name; the old one goes under a temp name
    atomic_write_json({"new": 1}, target)
    assert json.loads(target.read_text()) == {"new": 1}
    for t in threading.enumerate():
        if t.name == "galseg-discard":
            t.join()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x_cat.fits", "x_seg.fits"]
    discard_file(tmp_path / "missing.fits")  # nothing to do


# ---------------------------------------------------------------------- fingerprints
@pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared test data not found at {SHARED}")
@pytest.mark.parametrize("rel, ext", [("xdf/f160w_sci.fits", 0), ("kids_viking/r.fits", 1),
                                      ("des_sn2006bh/DES_g.fits", "WGT"),
                                      ("des_sn2006bh/DES_g.fits", ("SCI", 1))])
def test_fingerprint_matches_astropy_layout(rel, ext):
    path = SHARED / rel
    fp = input_fingerprint(path, ext)
    with fits.open(path) as hdul:
        index = hdul.index_of(ext)
        info = hdul.fileinfo(index)
        is_compressed = isinstance(hdul[index], fits.CompImageHDU)
    raw = path.read_bytes()
    assert fp["hdu"] == index
    assert fp["header_sha256"] == hashlib.sha256(raw[info["hdrLoc"]:info["datLoc"]]).hexdigest()
    # data bytes as stored (compressed table for tile-compressed HDUs), without padding
    start = info["datLoc"]
    assert fp["data_sha256"] == hashlib.sha256(raw[start:start + fp["data_nbytes"]]).hexdigest()
    assert info["datSpan"] - 2880 < fp["data_nbytes"] <= info["datSpan"]
    if rel.startswith("kids"):
        assert is_compressed


def test_fingerprint_samples_large_data_and_is_memoised(tmp_path):
    big = tmp_path / "big.fits"
    fits.PrimaryHDU(np.zeros((2048, 2048), np.float32)).writeto(big)
    _age(big)
    clear_fingerprint_cache()
    racy = input_fingerprint(big)     # just written: never memoised (racy window)
    assert input_fingerprint(big)["recorded_ns"] != racy["recorded_ns"]
    _wait_not_racy(big)
    t0 = time.perf_counter()
    fp = input_fingerprint(big)
    t1 = time.perf_counter()
    fp2 = input_fingerprint(big)
    t2 = time.perf_counter()
    print(f"\nfingerprint 16 MiB HDU: first {1e3 * (t1 - t0):.2f} ms, memoised {1e3 * (t2 - t1):.3f} ms")
    assert fp == fp2 and fp["sample"] == "64x65536" and "data_sha256" not in fp
    full = input_fingerprint(big, full=True)
    assert full["data_sha256"] == hashlib.sha256(
        big.read_bytes()[2880:2880 + 2048 * 2048 * 4]).hexdigest()
    with pytest.raises(KeyError, match="SCI"):
        input_fingerprint(big, "SCI")
    with pytest.raises(FileNotFoundError, match="nothere"):
        input_fingerprint(tmp_path / "nothere.fits")


# --------------------------------------------------------------------- save / load
def test_save_load_roundtrip_with_provenance(tmp_path, inputs):
    sci, rms = inputs
    entry = entry_for(tmp_path / "work", sci, rms)
    assert not entry.is_valid() and entry.why_invalid == "missing"
    result = compute(sci, rms)
    seg_before, bkg_before = result.segmap.copy(), result.background.copy()
    out = get_or_compute(entry, lambda: result, provenance={"notebook": "t"},
                         wcs_header=fits.getheader(sci))
    assert out.computed and out.result is result
    # the caller's arrays are untouched (astropy byte-swaps in place when writing)
    np.testing.assert_array_equal(result.segmap, seg_before)
    np.testing.assert_array_equal(result.background, bkg_before)
    assert entry.is_valid() and entry.verify()

    for part in ("seg", "bkg", "cat"):
        with fits.open(entry.path(part)) as hdul:
            hdul.verify("exception")          # standard-conforming FITS
    seg, hdr = entry.load_seg(header=True)
    assert hdr["BITPIX"] == 32 and (hdr["NAXIS1"], hdr["NAXIS2"]) == (500, 500)
    assert seg.dtype == np.int32 and seg.dtype.isnative
    np.testing.assert_array_equal(seg, result.segmap)
    bkg, bhdr = entry.load_bkg(header=True)
    assert bhdr["BITPIX"] == -32 and bhdr["GSPRODUC"] == "BACKGROUND"
    assert bkg.dtype == np.float32 and bkg.dtype.isnative
    np.testing.assert_array_equal(bkg, result.background)
    cat = entry.load_cat()
    assert cat.colnames == result.catalog.colnames and len(cat) == result.nobj > 10
    np.testing.assert_allclose(cat["FLUX_ISO"], result.catalog["FLUX_ISO"])
    np.testing.assert_allclose(cat["FLUX_APER"], result.catalog["FLUX_APER"])
    assert str(cat["X_IMAGE"].unit) == "pix"
    assert entry.load().meta == {"nobj": result.nobj, "thresh": 3.0}

    # provenance in every product header; the WCS came along on the maps
    assert hdr["GSPRODUC"] == "SEGMENTATION" and hdr["GSKEY"] == entry.key.short
    assert hdr["GSSURVEY"] == "JADES-GS" and hdr["GSFILT"] == "F444W"
    for part in ("seg", "bkg", "cat"):
        prov = read_provenance(entry.path(part))
        assert prov["key"]["sha256"] == entry.key.sha256
        assert prov["key"]["fields"]["params"]["__params__"]["DETECT_THRESH"] == 1.5
        assert prov["key"]["fields"]["apertures"] == [4.0, 8.0]
        assert prov["inputs"]["sci"]["path"] == str(sci)
        assert prov["inputs"]["sci"]["data_sha256"]
        assert prov["versions"]["sep"] and prov["provenance"]["notebook"] == "t"
    w_in, w_out = WCS(fits.getheader(sci)), WCS(hdr)
    np.testing.assert_allclose(w_out.pixel_to_world_values(10, 20), w_in.pixel_to_world_values(10, 20))
    sc = entry.read_sidecar()
    assert sc["status"] == "complete" and set(sc["files"]) == {"seg", "bkg", "cat"}
    assert sc["files"]["seg"]["sha256"] == _sha(entry.seg_path)
    assert not entry.lock_path.exists()


def test_cached_rerun_is_fast_and_runs_nothing(tmp_path, inputs, caplog):
    sci, rms = inputs
    calls = []

    def run():
        calls.append(1)
        return compute(sci, rms)

    get_or_compute(entry_for(tmp_path / "work", sci, rms), run)
    _wait_not_racy(sci, rms)          # real inputs are old; these were just written
    get_or_compute(entry_for(tmp_path / "work", sci, rms), run)   # refreshes the sidecar
    check, load = [], []
    for _ in range(20):
        t0 = time.perf_counter()
        out = get_or_compute(entry_for(tmp_path / "work", sci, rms), run)
        t1 = time.perf_counter()
        out.entry.load_seg(), out.entry.load_bkg(), out.entry.load_cat()
        t2 = time.perf_counter()
        assert not out.computed and out.reason == "cached"
        check.append(t1 - t0)
        load.append(t2 - t1)
    clear_fingerprint_cache()  # as in a fresh process: inputs fingerprinted again
    t0 = time.perf_counter()
    out = get_or_compute(entry_for(tmp_path / "work", sci, rms), run)
    cold = time.perf_counter() - t0
    assert calls == [1] and not out.computed
    print(f"\ncached rerun (500x500, key + validity): median {1e3 * np.median(check):.2f} ms, "
          f"un-memoised inputs {1e3 * cold:.2f} ms; load seg+bkg+cat "
          f"{1e3 * np.median(load):.2f} ms")


def test_parameter_change_gives_product_side_by_side(tmp_path, inputs, caplog):
    sci, rms = inputs
    e1 = entry_for(tmp_path / "work", sci, rms)
    get_or_compute(e1, lambda: compute(sci, rms))
    sha1 = {p: _sha(e1.path(p)) for p in ("seg", "bkg", "cat", "sidecar")}
    e2 = entry_for(tmp_path / "work", sci, rms, DETECT_THRESH=2.5)
    with caplog.at_level(logging.INFO, logger="galseg.products"):
        out = get_or_compute(e2, lambda: compute(sci, rms, thresh=2.5))
    assert out.computed and e2.stem != e1.stem and e2.directory == e1.directory
    assert "DETECT_THRESH: 1.5 -> 2.5" in out.reason
    assert any("DETECT_THRESH: 1.5 -> 2.5" in r.getMessage() for r in caplog.records)
    assert e1.is_valid() and e2.is_valid()
    assert {p: _sha(e1.path(p)) for p in sha1} == sha1           # first product untouched
    assert e2.load().meta["thresh"] == 2.5
    # a label gives yet another product; the same key+label is a cache hit
    e3 = entry_for(tmp_path / "work", sci, rms, label="deep")
    assert get_or_compute(e3, lambda: compute(sci, rms)).computed
    assert "_deep_" in e3.stem
    assert not get_or_compute(entry_for(tmp_path / "work", sci, rms, label="deep"),
                              lambda: 1 / 0).computed
    t = list_products(tmp_path / "work")
    assert len(t) == 3 and all(t["valid"]) and set(t["label"]) == {"", "deep"}


def test_overwrite_recomputes_and_replaces(tmp_path, inputs, caplog):
    sci, rms = inputs
    entry = entry_for(tmp_path / "work", sci, rms)
    get_or_compute(entry, lambda: compute(sci, rms))
    old = entry.seg_path.stat()
    with caplog.at_level(logging.INFO, logger="galseg.products"):
        out = get_or_compute(entry, lambda: compute(sci, rms, thresh=4.0), overwrite=True)
    assert out.computed and out.reason == "overwrite requested"
    assert any("overwrite requested" in r.getMessage() for r in caplog.records)
    # a new file (the old one's inode number may be reused once it is freed)
    new = entry.seg_path.stat()
    assert (new.st_ino, new.st_mtime_ns) != (old.st_ino, old.st_mtime_ns) and entry.is_valid()
    assert entry.load().meta["thresh"] == 4.0
    assert len(list(entry.directory.glob("*_seg.fits"))) == 1


def test_touched_moved_and_edited_inputs(tmp_path, caplog):
    """Content decides: touch/move keeps the product; an edit recomputes, naming the file."""
    sci, rms = write_inputs(tmp_path / "mutable")
    work = tmp_path / "work"
    entry = entry_for(work, sci, rms)
    get_or_compute(entry, lambda: compute(sci, rms))

    # touch: stat changes, content does not -> still valid (after a full-hash check)
    _age(sci, 3600)
    out = get_or_compute(entry_for(work, sci, rms), lambda: 1 / 0)
    assert not out.computed and out.entry.stem == entry.stem
    # moved/copied identical input -> same key, same product
    moved = tmp_path / "elsewhere" / "sci_copy.fits"
    moved.parent.mkdir()
    shutil.copy2(sci, moved)
    out = get_or_compute(entry_for(work, moved, rms), lambda: 1 / 0)
    assert not out.computed and out.entry.stem == entry.stem
    # once out of the racy window, the sidecar records the new path and stat,
    # so later checks read nothing again
    _wait_not_racy(sci, moved)
    out = get_or_compute(entry_for(work, moved, rms), lambda: 1 / 0)
    rec = out.entry.read_sidecar()["inputs"]["sci"]
    assert rec["path"] == str(moved) and rec["mtime_ns"] == moved.stat().st_mtime_ns

    # edit the pixels: small image, so the key changes -> new product, reason names the file
    with fits.open(moved, mode="update") as h:
        h[0].data[100:110, 100:110] += 100.0
    _age(moved, 1800)
    with caplog.at_level(logging.INFO, logger="galseg.products"):
        out = get_or_compute(entry_for(work, moved, rms), lambda: compute(moved, rms))
    assert out.computed and out.entry.stem != entry.stem
    assert f"input sci ({moved}) content changed" in out.reason
    assert any(str(moved) in r.getMessage() for r in caplog.records if "computing" in r.getMessage())


def test_local_edit_missed_by_sampling_is_caught_by_full_hash(tmp_path, caplog):
    """A few changed pixels of a large image keep the sampled key but fail the full check."""
    sci, rms = write_inputs(tmp_path / "big", shape=(1600, 1600))   # 10 MB > 8 MiB: sampled
    work = tmp_path / "work"
    entry = entry_for(work, sci, rms)
    assert entry.key.inputs["sci"]["sample"] == "64x65536"
    get_or_compute(entry, lambda: compute(sci, rms))
    # change 4 bytes between two sampled blocks (block 0 covers bytes 0..65535)
    nbytes = entry.key.inputs["sci"]["data_nbytes"]
    gap_start = 65536
    gap_end = (nbytes - 65536) // 63
    with fits.open(sci) as h:
        doff = h.fileinfo(0)["datLoc"]
    offset = doff + (gap_start + gap_end) // 2 // 4 * 4
    with open(sci, "r+b") as f:
        f.seek(offset)
        f.write(np.array([1e6], ">f4").tobytes())
    _age(sci, 3000)
    new_key = key_for(sci, rms)
    assert new_key.sha256 == entry.key.sha256        # the sample did not see the edit
    with caplog.at_level(logging.INFO, logger="galseg.products"):
        out = get_or_compute(ProductStore(work).entry(*BAND, new_key), lambda: compute(sci, rms))
    assert out.computed and out.entry.stem == entry.stem
    assert out.reason == f"input sci changed: {sci} (data differ from when the product was made)"
    assert any(str(sci) in r.getMessage() for r in caplog.records)
    assert out.entry.is_valid()


def test_input_changed_during_compute_is_not_cached(tmp_path):
    sci, rms = write_inputs(tmp_path / "mutable")
    entry = entry_for(tmp_path / "work", sci, rms)

    def edits_input():
        res = compute(sci, rms)
        with fits.open(sci, mode="update") as h:
            h[0].data[0, 0] = 7.0
        return res

    with pytest.raises(InputChangedError, match="sci"):
        get_or_compute(entry, edits_input)
    assert not entry.sidecar_path.exists() and not entry.is_valid()
    # and a key made before an edit cannot be used to save
    with pytest.raises(InputChangedError, match="make the key again"):
        get_or_compute(entry, lambda: compute(sci, rms))


def test_corruption_and_incomplete_products_are_not_trusted(tmp_path, inputs, caplog):
    sci, rms = inputs
    entry = entry_for(tmp_path / "work", sci, rms)
    get_or_compute(entry, lambda: compute(sci, rms))

    # flip a data byte (same size): stat changes -> full checksum -> mismatch
    raw = bytearray(entry.seg_path.read_bytes())
    raw[-100] ^= 0xFF
    entry.seg_path.write_bytes(raw)
    assert not entry.is_valid() and "checksum mismatch" in entry.why_invalid
    with caplog.at_level(logging.INFO, logger="galseg.products"):
        out = get_or_compute(entry, lambda: compute(sci, rms))
    assert out.computed and "seg file" in out.reason and "checksum mismatch" in out.reason
    assert entry.is_valid()

    # an in-place edit that restores size and mtime still moves the ctime
    st = entry.bkg_path.stat()
    with open(entry.bkg_path, "r+b") as f:
        f.seek(st.st_size - 8)
        f.write(b"\x7f" * 8)
    os.utime(entry.bkg_path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert entry.bkg_path.stat().st_mtime_ns == st.st_mtime_ns
    assert not entry.is_valid() and "bkg file" in entry.why_invalid
    get_or_compute(entry, lambda: compute(sci, rms), overwrite=True)
    assert entry.verify()

    # no sidecar -> incomplete; truncated sidecar -> unreadable; wrong status
    sidecar = entry.sidecar_path.read_bytes()
    entry.sidecar_path.unlink()
    assert not entry.is_valid() and entry.why_invalid.startswith("incomplete")
    entry.sidecar_path.write_bytes(sidecar[: len(sidecar) // 2])
    assert not entry.is_valid() and "unreadable" in entry.why_invalid
    sc = json.loads(sidecar)
    sc["status"] = "writing"
    entry.sidecar_path.write_text(json.dumps(sc))
    assert not entry.is_valid() and "status" in entry.why_invalid
    entry.sidecar_path.write_bytes(sidecar)
    assert entry.is_valid()
    entry.cat_path.unlink()
    assert not entry.is_valid() and "cat file" in entry.why_invalid


# ------------------------------------------------------------------- processes
def test_two_processes_compute_once(tmp_path, inputs):
    sci, rms = inputs
    work, counter = tmp_path / "work", tmp_path / "calls.txt"
    procs = [_child("get", work, sci, rms, counter, 1.0, wait=False) for _ in range(2)]
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=60)
        assert p.returncode == 0, stderr
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    calls = counter.read_text().split()
    assert len(calls) == 1, f"compute ran {len(calls)} times"
    assert sorted(o["computed"] for o in outs) == [False, True]
    assert outs[0]["stem"] == outs[1]["stem"]
    assert {o["seg_sha"] for o in outs} == {_sha(entry_for(work, sci, rms).seg_path)}
    entry = entry_for(work, sci, rms)
    assert entry.verify()
    leftovers = [p.name for p in entry.directory.iterdir()
                 if p.name.endswith((".tmp", ".lock"))]
    assert leftovers == []


def test_unlocked_concurrent_saves_never_yield_a_trusted_mix(tmp_path, inputs):
    """Even writers that bypass the lock can only produce valid or detectably invalid products."""
    sci, rms = inputs
    work = tmp_path / "work"
    procs = [_child("save-loop", work, sci, rms, wid, 4, wait=False) for wid in (1, 2)]
    for p in procs:
        _, stderr = p.communicate(timeout=60)
        assert p.returncode == 0, stderr
    entry = entry_for(work, sci, rms)
    if entry.is_valid():
        r = entry.load()
        writers = {int(np.unique(r.segmap)[-1]), int(r.background[0, 0]), int(r.catalog["WRITER"][0])}
        assert len(writers) == 1, f"valid product mixes writers {writers}"
        assert entry.verify()
    else:
        # (a writer moves the other's files aside before writing its own: "missing")
        assert any(w in entry.why_invalid for w in ("checksum", "incomplete", "bytes", "missing")), \
            entry.why_invalid
    print(f"\nunlocked writers: final product valid={entry.why_invalid is None} "
          f"({entry.why_invalid})")


def _kill_during_save(work, sci, rms, size):
    """Run a child that saves a big product and is SIGKILLed (by itself: the
    point is exact, not a race) after one image file is renamed into place,
    while the other is written but still under its temporary name."""
    entry = entry_for(work, sci, rms)
    proc = _child("save-big", work, sci, rms, size, wait=False)
    proc.wait(timeout=120)
    return proc.returncode == -signal.SIGKILL and not entry.sidecar_path.exists()


def test_sigkill_mid_save_is_never_trusted(tmp_path, inputs, caplog):
    sci, rms = inputs
    work = tmp_path / "work"
    entry = entry_for(work, sci, rms)
    assert _kill_during_save(work, sci, rms, 1000)
    left = sorted(p.name for p in entry.directory.iterdir())
    print(f"\nkilled mid-save; left on disk: {left}")
    temps = [p for p in entry.directory.iterdir() if TEMP_PATTERN.match(p.name)]
    # one image in place, the other written under its temporary name (and the
    # catalogue, written alongside, in place or still temporary)
    assert entry.seg_path.exists() != entry.bkg_path.exists()
    pending = "bkg" if entry.seg_path.exists() else "seg"
    assert any(p.name.startswith(f".{entry.stem}_{pending}.fits.") for p in temps)
    assert {p.name.split(".")[1].rsplit("_", 1)[1] for p in temps} <= {pending, "cat"}
    assert not entry.is_valid() and entry.why_invalid.startswith("incomplete")
    with caplog.at_level(logging.INFO, logger="galseg.products"):
        out = get_or_compute(entry, lambda: compute(sci, rms), lock_timeout=10)
    assert out.computed and out.reason.startswith("incomplete")
    assert entry.verify() and entry.load_seg().shape == (500, 500)
    assert sorted(clean(work)) == sorted(temps)  # the killed writer's partial files
    assert entry.is_valid()

    # killed while overwriting a valid product: the old sidecar is withdrawn first
    assert _kill_during_save(work, sci, rms, 1000)
    assert not entry.is_valid() and entry.why_invalid.startswith("incomplete")


def test_sigkill_while_holding_lock_is_recovered_at_once(tmp_path, inputs):
    sci, rms = inputs
    work = tmp_path / "work"
    entry = entry_for(work, sci, rms)
    proc = _child("get", work, sci, rms, tmp_path / "calls.txt", 60, wait=False)
    deadline = time.monotonic() + 30
    while not (tmp_path / "calls.txt").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    info = json.loads(entry.lock_path.read_text())
    assert info["pid"] == proc.pid
    with pytest.raises(LockTimeout, match=f"pid {proc.pid}"):
        with entry.lock(timeout=0.2):
            pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert entry.lock_path.exists()              # left behind by the dead holder
    t0 = time.perf_counter()
    out = get_or_compute(entry, lambda: compute(sci, rms), lock_timeout=5)
    assert out.computed and time.perf_counter() - t0 < 5
    assert entry.is_valid() and not entry.lock_path.exists()


def test_stale_lock_of_a_hung_holder_is_broken(tmp_path, caplog):
    lock_path = tmp_path / "x.lock"
    proc = _child("hold-lock", lock_path, 30, wait=False)
    assert proc.stdout.readline().strip() == "held"
    old = time.time() - 100
    os.utime(lock_path, (old, old))              # no heartbeat for 100 s
    with caplog.at_level(logging.WARNING, logger="galseg.products"):
        with FileLock(lock_path, timeout=5, stale_after=50) as lock:
            assert lock.still_held()
    assert any("breaking stale lock" in r.getMessage() for r in caplog.records)
    proc.kill()
    proc.communicate()


def test_fresh_process_loads_without_recomputing(tmp_path, inputs):
    sci, rms = inputs
    work = tmp_path / "work"
    entry = entry_for(work, sci, rms)
    get_or_compute(entry, lambda: compute(sci, rms))
    out = _child("rerun", work, sci, rms)
    assert out["computed"] is False and out["stem"] == entry.stem
    assert out["seg_sha"] == hashlib.sha256(entry.load_seg().tobytes()).hexdigest()
    assert out["latest_stem"] == entry.stem
    print(f"\nfresh process: key+check {out['check_ms']:.2f} ms, latest() {out['latest_ms']:.2f} ms, "
          f"load seg+bkg+cat {out['load_ms']:.2f} ms")


# ------------------------------------------------------------------ list / clean
def test_list_and_clean(tmp_path, inputs):
    sci, rms = inputs
    work = tmp_path / "work"
    good = entry_for(work, sci, rms)
    get_or_compute(good, lambda: compute(sci, rms))
    bad = entry_for(work, sci, rms, DETECT_THRESH=2.0)
    get_or_compute(bad, lambda: compute(sci, rms, thresh=2.0))
    bad.sidecar_path.unlink()                       # as if killed before the commit
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    from galseg.io import atomic

    orphan = good.directory / f".{good.stem}_bkg.fits.{atomic._HOST_TAG}.{dead}.{'a' * 16}.tmp"
    orphan.write_bytes(b"partial")
    stale_lock = good.directory / "JADES-GS_F444W_0123456789.lock"
    stale_lock.write_text("{}")

    t = list_products(work)
    assert len(t) == 2
    row = {r["hash"]: r for r in t}
    assert row[good.short_hash]["valid"] and row[good.short_hash]["nobj"] == good.load().nobj
    assert not row[bad.short_hash]["valid"]
    assert row[bad.short_hash]["reason"].startswith("incomplete")
    assert row[good.short_hash]["size"] == sum(good.path(p).stat().st_size
                                               for p in ("seg", "bkg", "cat", "sidecar"))

    would = clean(work, dry_run=True)
    assert orphan.exists() and stale_lock.exists() and bad.seg_path.exists()
    removed = clean(work)
    assert removed == would
    assert set(removed) == {orphan, stale_lock, bad.seg_path, bad.bkg_path, bad.cat_path}
    assert good.is_valid() and len(list_products(work)) == 1

    res = subprocess.run([sys.executable, "-m", "galseg.cli", "cache", "list", "--work-dir", str(work)],
                         capture_output=True, text=True, env=dict(os.environ))
    assert res.returncode == 0 and good.short_hash in res.stdout and "1 cached items, 0 invalid" in res.stdout
    assert clean(work, invalid_only=False, survey="OTHER") == []
    assert clean(work, invalid_only=False, older_than="1h") == []      # too recent
    removed = clean(work, invalid_only=False, survey="JADES-GS")
    assert good.seg_path in removed and not good.seg_path.exists()
    assert len(list_products(work)) == 0


# ------------------------------------------------------------- child processes
def _main(argv):
    mode, work = argv[0], Path(argv[1])
    if mode == "hold-lock":
        with FileLock(work, heartbeat=0):
            print("held", flush=True)
            time.sleep(float(argv[2]))
        return
    sci, rms = Path(argv[2]), Path(argv[3])
    if mode == "get":
        counter, sleep = argv[4], float(argv[5])
        out = get_or_compute(entry_for(work, sci, rms),
                             lambda: compute(sci, rms, sleep=sleep, counter=counter))
        print(json.dumps({"computed": out.computed, "reason": out.reason, "stem": out.entry.stem,
                          "seg_sha": _sha(out.entry.seg_path)}))
    elif mode == "save-loop":
        wid, n = int(argv[4]), int(argv[5])
        entry = entry_for(work, sci, rms)
        base = compute(sci, rms)
        for _ in range(n):
            seg = np.where(base.segmap > 0, wid, 0).astype(np.int32)
            cat = Table({"WRITER": np.full(5, wid)})
            entry.save(ExtractionResult(seg, np.full(seg.shape, wid, np.float32), cat))
        print(json.dumps({"ok": True}))
    elif mode == "save-big":
        n = int(argv[4])
        entry = entry_for(work, sci, rms)
        rng = np.random.default_rng(0)
        renamed = []
        real_replace = os.replace

        def replace_then_die(src, dst):
            # the second image about to land: die here, like a SIGKILL from outside
            if not str(dst).endswith(("_seg.fits", "_bkg.fits")):
                return real_replace(src, dst)
            with lock:
                if renamed:
                    os.kill(os.getpid(), signal.SIGKILL)
                real_replace(src, dst)
                renamed.append(dst)

        lock = threading.Lock()
        os.replace = replace_then_die
        seg = rng.integers(0, 1000, (n, n), dtype=np.int32)
        bkg = rng.normal(size=(n, n)).astype(np.float32)
        entry.save(ExtractionResult(seg, bkg, Table({"NUMBER": np.arange(1, 1001)})))
        print(json.dumps({"ok": True}))
    elif mode == "rerun":
        t0 = time.perf_counter()
        out = get_or_compute(entry_for(work, sci, rms), lambda: 1 / 0)
        t1 = time.perf_counter()
        seg = out.entry.load_seg()
        out.entry.load_bkg(), out.entry.load_cat()
        t2 = time.perf_counter()
        latest = ProductStore(work).latest(*BAND)
        t3 = time.perf_counter()
        print(json.dumps({"computed": out.computed, "stem": out.entry.stem,
                          "seg_sha": hashlib.sha256(seg.tobytes()).hexdigest(),
                          "latest_stem": latest.stem, "check_ms": 1e3 * (t1 - t0),
                          "load_ms": 1e3 * (t2 - t1), "latest_ms": 1e3 * (t3 - t2)}))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    _main(sys.argv[1:])
