"""Band_Data.segment(): engine + product cache, end to end on real FITS files."""

import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits

from galseg import Band_Data, Data
from galseg.imaging.layout import demo_dir

from _util import tree_checksums


@pytest.fixture
def band(tmp_path):
    """The demo F160W band, copied so that tests may change its inputs."""
    for kind in ("sci", "wht"):
        shutil.copy(demo_dir() / f"xdf_f160w_{kind}.fits", tmp_path / f"f160w_{kind}.fits")
    return Band_Data("XDF", "v1", "WFC3_IR", "F160W", tmp_path / "f160w_sci.fits", 1,
                     wht_path=tmp_path / "f160w_wht.fits", wht_ext=1, pix_scale=0.06, zp=25.94,
                     work_dir=tmp_path / "work")


def test_segment_writes_products_and_rerun_loads_them(band, tmp_path):
    inputs_before = tree_checksums(band.im_path) | tree_checksums(band.wht_path)
    band.segment()
    assert band.seg_args["from_cache"] is False
    seg, hdr = band.load_seg(incl_hdr=True)
    cat = band.load_cat()
    assert seg.dtype == np.int32 and seg.shape == band.shape
    assert len(cat) > 20
    np.testing.assert_array_equal(cat["NUMBER"], np.arange(1, len(cat) + 1))
    assert set(np.unique(seg)) - {0} == set(cat["NUMBER"])
    # Products live in galfind's tree, named after survey, filter, config and key.
    assert band.seg_path.parent == tmp_path / "work/WFC3_IR/v1/XDF/MAP_RMS/segmentation"
    assert band.seg_path.name.startswith("XDF_F160W_galfind_default_")
    assert band.bkg_path.is_file() and band.cat_path.is_file()
    # The background subtracted: BACK_TYPE MANUAL 0 in galfind's preset.
    assert np.all(band.load_bkg() == 0)
    # Provenance in the FITS header of a product.
    text = repr(hdr)
    assert "galfind_default" in text or "DETECT_THRESH" in text
    mtime = band.seg_path.stat().st_mtime_ns
    band.segment()
    assert band.seg_args["from_cache"] is True
    assert band.seg_path.stat().st_mtime_ns == mtime
    assert tree_checksums(band.im_path) | tree_checksums(band.wht_path) == inputs_before


@pytest.mark.parametrize("racy", [False, True])
def test_sidecar_records_the_inputs_data_hashes(band, monkeypatch, racy):
    """The inputs' full data hashes in the product record: hashed on a helper
    thread while the engine runs (inputs older than RACY_NS), or by the store
    itself (files just written: not memoised)."""
    import hashlib

    from galseg.products import fingerprint
    from galseg.products.provenance import read_provenance

    for path in (band.im_path, band.wht_path):  # plain images: read and hashed by galseg
        with fits.open(path) as hdul:
            plain = fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(hdul[1].data,
                                                                    hdul[1].header)])
        plain.writeto(path, overwrite=True)
    if not racy:
        monkeypatch.setattr(fingerprint, "RACY_NS", 0)
    fingerprint.clear_fingerprint_cache()
    band.segment()
    inputs = read_provenance(band.seg_path)["inputs"]
    assert set(inputs) == {"sci", "wht"}
    for role, path in (("sci", band.im_path), ("wht", band.wht_path)):
        with fits.open(path) as hdul:
            info = hdul.fileinfo(1)
            nbytes = hdul[1].data.nbytes
        start = info["datLoc"]
        assert inputs[role]["data_nbytes"] == nbytes, role
        raw = open(path, "rb").read()[start:start + nbytes]
        assert inputs[role]["data_sha256"] == hashlib.sha256(raw).hexdigest(), role


def test_rerun_in_a_fresh_process_loads_from_disk(band):
    band.segment()
    nobj = len(band.load_cat())
    code = f"""
import json
from galseg import Band_Data
b = Band_Data("XDF", "v1", "WFC3_IR", "F160W", {str(band.im_path)!r}, 1,
              wht_path={str(band.wht_path)!r}, wht_ext=1, pix_scale=0.06, zp=25.94,
              work_dir={str(band.work_dir)!r})
fresh = len(b.load_cat())
b.segment()
print(json.dumps({{"fresh": fresh, "rerun": len(b.load_cat()), "cached": b.seg_args["from_cache"],
                  "seg": str(b.seg_path)}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"fresh": nobj, "rerun": nobj, "cached": True, "seg": str(band.seg_path)}


def test_other_config_is_kept_side_by_side(band):
    band.segment()
    default_seg, default_n = band.seg_path, len(band.load_cat())
    band.segment(config="test")
    test_seg, test_n = band.seg_path, len(band.load_cat())
    assert test_seg != default_seg and test_seg.name.startswith("XDF_F160W_test_")
    assert test_n < default_n  # MINAREA 15 and THRESH 2.5 find fewer objects
    band.segment(DETECT_THRESH=3.0)
    assert band.seg_path not in (default_seg, test_seg)
    assert len(band.load_cat()) < default_n
    band.segment()
    assert band.seg_path == default_seg and band.seg_args["from_cache"]
    assert len(band.load_cat()) == default_n


def test_rerun_takes_the_inputs_data_hashes_from_the_earlier_product(band, monkeypatch):
    """A recomputation in a fresh process (overwrite, or other parameters)
    does not read an input again for its full data hash when the file's stat
    is the one an earlier product recorded; a file touched since is hashed
    again (and its content still gives the same hash)."""
    from galseg.products import fingerprint, store
    from galseg.products.provenance import read_provenance

    # the demo images are small: fingerprint them by samples, as large ones
    monkeypatch.setattr(fingerprint, "_FULL_LIMIT", 4096)
    for module in (fingerprint, store):  # inputs copied just now: trust their stat
        monkeypatch.setattr(module, "RACY_NS", 0)
    fingerprint.clear_fingerprint_cache()
    band.segment()
    first = read_provenance(band.seg_path)["inputs"]
    assert {r: len(first[r]["data_sha256"]) for r in first} == {"sci": 64, "wht": 64}

    hashed = []
    real_hash_range = fingerprint._hash_range

    def counting_hash_range(fd, start, nbytes):
        hashed.append(nbytes)
        return real_hash_range(fd, start, nbytes)

    monkeypatch.setattr(fingerprint, "_hash_range", counting_hash_range)
    for overrides in ({"overwrite": True}, {"DETECT_THRESH": 2.5}):
        fingerprint.clear_fingerprint_cache()  # a fresh process
        hashed.clear()
        band.segment(**overrides)
        assert band.seg_args["from_cache"] is False
        assert hashed == [], overrides
        again = read_provenance(band.seg_path)["inputs"]
        assert {r: again[r]["data_sha256"] for r in again} == \
            {r: first[r]["data_sha256"] for r in first}

    st = band.wht_path.stat()
    os.utime(band.wht_path, ns=(st.st_atime_ns, st.st_mtime_ns - 10**9))
    fingerprint.clear_fingerprint_cache()
    hashed.clear()
    band.segment(overwrite=True)
    touched = read_provenance(band.seg_path)["inputs"]["wht"]
    assert hashed == [touched["data_nbytes"]]  # the touched weight map only, once
    assert touched["data_sha256"] == first["wht"]["data_sha256"]
    assert touched["mtime_ns"] == st.st_mtime_ns - 10**9


def test_rerun_hashes_inputs_recorded_in_the_racy_window_again(band, monkeypatch):
    """A record taken within RACY_NS of the file's last change proves nothing
    (a same-size rewrite in the same timestamp tick keeps the stat): such
    inputs are hashed again."""
    from galseg.products import fingerprint, store

    monkeypatch.setattr(fingerprint, "_FULL_LIMIT", 4096)
    monkeypatch.setattr(fingerprint, "RACY_NS", 0)  # memoised in-process
    monkeypatch.setattr(store, "RACY_NS", 10**15)  # every record is racy for the store
    fingerprint.clear_fingerprint_cache()
    band.segment()
    hashed = []
    real_hash_range = fingerprint._hash_range
    monkeypatch.setattr(fingerprint, "_hash_range",
                        lambda fd, start, nbytes: hashed.append(nbytes)
                        or real_hash_range(fd, start, nbytes))
    fingerprint.clear_fingerprint_cache()
    band.segment(overwrite=True)
    assert len(hashed) == 2  # sci and wht, once each


def test_overwrite_recomputes(band):
    band.segment()
    mtime = band.seg_path.stat().st_mtime_ns
    band.segment(overwrite=True)
    assert band.seg_args["from_cache"] is False and band.seg_args["reason"] == "overwrite requested"
    assert band.seg_path.stat().st_mtime_ns > mtime


def test_changed_input_is_detected_and_recomputed(band, caplog):
    band.segment()
    n_before = len(band.load_cat())
    with fits.open(band.im_path) as hdul:
        data = hdul[1].data.copy()
        hdr = hdul[1].header
    data[200:260, 200:260] += 5.0  # a bright new square source
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, hdr, compression_type="GZIP_2",
                                                       quantize_level=0.0)]).writeto(
        band.im_path, overwrite=True)
    with caplog.at_level(logging.INFO, logger="galseg"):
        band.segment()
    assert band.seg_args["from_cache"] is False
    assert "sci" in band.seg_args["reason"] or "input" in band.seg_args["reason"]
    assert any("computing" in r.message for r in caplog.records)
    seg = band.load_seg()
    assert seg[230, 230] > 0
    assert len(band.load_cat()) != n_before or seg[230, 230] > 0


def test_err_types_give_separate_products(band, tmp_path):
    band.segment(err_type="rms_err")
    rms_seg, n_rms = band.seg_path, len(band.load_cat())
    band.segment(err_type="wht")
    assert "MAP_WEIGHT" in band.seg_path.parts and band.seg_path != rms_seg
    # XDF noise is correlated: the measured noise is well below 1/sqrt(wht), so
    # SExtractor's MAP_WEIGHT rescaling lowers the threshold and finds more objects.
    assert len(band.load_cat()) > n_rms


def test_unknown_method_and_err_type(band):
    with pytest.raises(ValueError, match="unknown method 'sex'.*sep, sextractor, photutils"):
        band.segment(method="sex")
    with pytest.raises(ValueError, match="err_type must be one of rms_err, wht"):
        band.segment(err_type="var")


def test_load_before_segment_says_what_to_do(band):
    with pytest.raises(FileNotFoundError, match="call segment\\(\\) first"):
        band.load_seg()
