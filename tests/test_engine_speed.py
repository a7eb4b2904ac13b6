"""What makes the sep engine fast and lean, checked for giving the same results.

* the mesh background's ``backguess`` (prefix sums and a binary-searched
  median walk) against a line-by-line transcription of SExtractor's loop;
* sep run on horizontal strips in forked processes against one run, and
  apart on the single-peaked detections (without deblending sub-thresholds)
  against one run;
* zero-copy inputs (the science and rms arrays used as they are) and the
  pixel-flag map against the ``blank`` / ``iso_segmap`` / ``mask`` maps;
* one compiled measurement kernel whatever the caller's array flags;
* the peak of NumPy memory during a run, in full-frame float32 arrays.

Timings are not asserted here (see ``benchmarks/bench_extract.py``).
"""

from __future__ import annotations

import math
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from galseg.extract import detect_sources, load_config, run
from galseg.extract import _kernels
from galseg.extract._sort import argsort_small, sort_inplace
from galseg.extract.background import _backguess
from galseg.extract.detect import _filter, detect, detection_kernel, sextractor_pixel_lists, \
    threshold_map
from galseg.extract.measure import measure

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SEPREF = DATA / "sep_reference"


def _need(path: Path):
    if not path.exists():
        pytest.skip(f"shared test data {path} absent")


def _dense(ntile):
    """sep's reference image minus its SExtractor background, tiled (the
    benchmark's dense field)."""
    _need(SEPREF / "image.fits")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = fits.getdata(SEPREF / "image.fits").astype(np.float32)
        back = fits.getdata(SEPREF / "back.fits").astype(np.float32)
        rms = fits.getdata(SEPREF / "rms.fits").astype(np.float32)
    return (np.ascontiguousarray(np.tile(img - back, (ntile, ntile))),
            np.ascontiguousarray(np.tile(rms, (ntile, ntile))))


def _params(**kw):
    return load_config("galfind_default", WEIGHT_TYPE="MAP_RMS", PIXEL_SCALE=0.1, **kw)


# --------------------------------------------------------------------------- backguess
def _backguess_c(histo, nlevels, bmean, qscale, qzero):
    """back.c's backguess, line by line (pure Python)."""
    hcut = nlevelsm1 = nlevels - 1
    lcut = 0
    sig = 10.0 * nlevelsm1
    sig1 = 1.0
    mea = med = float(bmean)
    n = 100
    while n > 0 and sig >= 0.1 and abs(sig / sig1 - 1.0) > 1e-4:
        n -= 1
        sig1 = sig
        total = 0
        mea = sig = 0.0
        lowsum = highsum = 0
        hilow, hihigh = lcut, hcut
        for i in range(lcut, hcut + 1):
            if lowsum < highsum:
                lowsum += int(histo[hilow])
                hilow += 1
            else:
                highsum += int(histo[hihigh])
                hihigh -= 1
            pix = int(histo[i])
            total += pix
            mea += float(pix) * i
            sig += float(pix) * i * i
        if hihigh >= 0:
            lo = int(histo[hilow]) if hilow < nlevels else 0
            hi = int(histo[hihigh])
            med = hihigh + 0.5 + (highsum - lowsum) / (2.0 * max(lo, hi))
        else:
            med = 0.0
        if total:
            mea /= total
            sig = sig / total - mea * mea
        sig = math.sqrt(sig) if sig > 0.0 else 0.0
        ftemp = med - 3.0 * sig
        lcut = int(ftemp + 0.5) if ftemp > 0.0 else 0
        ftemp = med + 3.0 * sig
        hcut = (int(ftemp + 0.5) if ftemp > 0.0 else int(ftemp - 0.5)) \
            if ftemp < nlevelsm1 else nlevelsm1
    if abs(sig) > 0.0:
        mean = qzero + ((2.5 * med - 1.5 * mea) if abs((mea - med) / sig) < 0.3 else med) * qscale
    else:
        mean = qzero + mea * qscale
    return np.float32(mean), np.float32(sig * qscale)


def test_backguess_is_back_c():
    rng = np.random.default_rng(11)
    checked = 0
    for t in range(400):
        nl = int(rng.integers(2, 300))
        kind = t % 4
        if kind == 0:      # a mesh: clipped Gaussian noise
            v = rng.normal(nl / 2, nl / 10, int(rng.integers(50, 3000)))
            h = np.bincount(np.clip(v, 0, nl - 1).astype(int), minlength=nl)
        elif kind == 1:    # sparse, with ties between the two ends
            h = rng.integers(0, 3, nl) * (rng.random(nl) < 0.3)
        elif kind == 2:    # skewed (sources in the mesh)
            v = np.concatenate([rng.normal(nl / 3, nl / 15, 800),
                                rng.exponential(nl / 4, 200) + nl / 3])
            h = np.bincount(np.clip(v, 0, nl - 1).astype(int), minlength=nl)
        else:              # a few spikes
            h = np.zeros(nl, int)
            h[rng.integers(0, nl, 4)] = rng.integers(1, 50, 4)
        h = h.astype(np.int64)
        try:
            want = _backguess_c(h, nl, np.float32(nl / 2), 0.01, -1.5)
        except ZeroDivisionError:
            with pytest.raises(ZeroDivisionError):
                _backguess(h, nl, np.float32(nl / 2), np.float32(1), 0.01, -1.5)
            continue
        got = _backguess(h, nl, np.float32(nl / 2), np.float32(1), 0.01, -1.5)
        np.testing.assert_array_equal(np.array(got), np.array(want), err_msg=str(h.tolist()))
        checked += 1
    assert checked > 350


def test_sort_helpers_match_numpy():
    rng = np.random.default_rng(3)
    for n in (0, 1, 2, 9, 16, 17, 100, 1000):
        a = rng.normal(size=n).astype(np.float32)
        a[rng.random(n) < 0.1] = np.nan
        a[rng.random(n) < 0.2] = 1.5  # ties
        b = a.copy()
        sort_inplace(b)
        np.testing.assert_array_equal(b, np.sort(a))
    v = rng.permutation(12) * 7
    np.testing.assert_array_equal(argsort_small(v), np.argsort(v))


# --------------------------------------------------------------------------- sep strips
def test_sep_on_strips_is_one_run(monkeypatch):
    """The whole extraction with sep run on 3 strips at once (each run apart
    on its single-peaked detections) is the one-run extraction (sep's own
    random sharing differs, galseg redoes it)."""
    from galseg.extract import detect as detect_module

    sci, rms = _dense(3)
    params = _params()
    out = {}
    for n in (1, 3):
        monkeypatch.setattr(detect_module, "_default_strips", lambda shape, nd, n=n: n)
        monkeypatch.setattr(detect_module, "_SPLIT_MARGIN", float("inf") if n == 1 else 0.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out[n] = run(sci, rms=rms, params=params)
    one, three = out[1], out[3]
    assert one.meta["sep_strips"] == 1 and three.meta["sep_strips"] == 3
    assert three.meta["deblend_kept_sep"] == 0 and three.meta["deblend_reshared"] > 20
    assert len(one.catalog) > 300
    np.testing.assert_array_equal(three.segmap, one.segmap)
    for c in one.catalog.colnames:
        np.testing.assert_array_equal(np.asarray(three.catalog[c]), np.asarray(one.catalog[c]),
                                      err_msg=c)


def test_single_peaked_detections():
    """A detection with one pixel above all its neighbours in the detection
    cannot be split by deblending; two peaks, or a flat top of two pixels,
    can (or might).  Pixels outside the detection do not count, however
    bright."""
    from galseg.extract.detect import _single_peaked

    yy, xx = np.mgrid[:14, :30]

    def blob(x0, y0):
        return np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / 4.0)

    values = (blob(5, 5) + 0.6 * blob(12, 6) + blob(24, 5)).astype(np.float32)
    above = values > 0.3
    # beside the single blob's peak, a bright pixel that is not detected
    # (a higher threshold there)
    values[5, 25], above[5, 25] = 9.0, False
    # a flat top of two equal pixels, apart from the rest
    values[12, 24:26], above[12, 24:26] = 5.0, True
    pix = [np.flatnonzero((above & (xx < 18)).ravel()),             # two peaks
           np.flatnonzero((above & (xx >= 18) & (yy < 10)).ravel()),  # one peak
           np.flatnonzero((above & (yy == 12)).ravel())]              # flat top
    assert [len(p) for p in pix[2:]] == [2] and above[5, 24]
    lcoff = np.cumsum([0] + [len(p) for p in pix])
    got = _single_peaked(lcoff, np.concatenate(pix), values.ravel(), above.ravel(), 30)
    assert got.tolist() == [False, True, False]


@pytest.mark.parametrize("weighted", [True, False])
def test_sep_split_by_peaks_is_one_run(monkeypatch, weighted):
    """sep run apart on the single-peaked detections (no deblending
    sub-thresholds) and on the others gives sep's objects, labels and random
    sharing of one run, in the same order."""
    from galseg.extract import detect as detect_module

    sci, rms = _dense(2)
    params = _params()
    kernel = detection_kernel(params)
    tfac = float(params["DETECT_THRESH"])
    filtered = _filter(sci, kernel)
    thresh = (_filter(rms, kernel, square=True, thresh_factor=tfac) if weighted
              else float(np.float32(tfac * np.median(rms))))
    calls = []
    real_extract = detect_module._extract_growing

    def counting_extract(image, err, minarea, nthresh, *rest):
        calls.append(nthresh)
        return real_extract(image, err, minarea, nthresh, *rest)

    monkeypatch.setattr(detect_module, "_extract_growing", counting_extract)
    out = {}
    for margin in (float("inf"), 0.0):
        monkeypatch.setattr(detect_module, "_SPLIT_MARGIN", margin)
        calls.clear()
        out[margin] = detect(filtered.copy(), thresh, params, strips=1)
        out[margin, "calls"] = list(calls)
    one, split = out[float("inf")], out[0.0]
    assert out[float("inf"), "calls"] == [32] and out[0.0, "calls"] == [32, 1]
    assert len(one.objects) > 150 and ((one.objects["flag"] & 1) != 0).sum() >= 10
    assert one.objects.dtype == split.objects.dtype
    for f in one.objects.dtype.names:
        np.testing.assert_array_equal(split.objects[f], one.objects[f], err_msg=f)
    np.testing.assert_array_equal(split.segmap, one.segmap)
    np.testing.assert_array_equal(split.parent, one.parent)
    shared = [sextractor_pixel_lists(d, sci, params, weighted=weighted) for d in (split, one)]
    for a, b in zip(shared[0][:4], shared[1][:4]):
        np.testing.assert_array_equal(a, b)
    info = [d[-1] for d in shared]
    assert info[0].keys() == info[1].keys()
    for k in info[1]:
        np.testing.assert_array_equal(info[0][k], info[1][k], err_msg=k)


def test_strip_cuts_avoid_detections():
    sci, rms = _dense(3)
    params = _params()
    kernel = detection_kernel(params)
    thresh = threshold_map(params, fvar=_filter(rms, kernel, square=True))
    det = detect(_filter(sci, kernel), thresh, params, strips=3)
    assert len(det.strips) == 2
    for cut in det.strips:
        assert not ((det.parent_ymin <= cut) & (det.parent_ymax >= cut)).any()


@pytest.mark.parametrize("weighted", [True, False])
def test_streamed_detection_is_the_full_frame_one(monkeypatch, weighted):
    """`detect_streaming` (filtered image and threshold made ~40 rows at a
    time, sep on each strip) gives `detect` on the full maps, bit for bit."""
    from galseg.extract import detect as detect_module

    sci, rms = _dense(2)
    params = _params()
    kernel = detection_kernel(params)
    tfac = float(params["DETECT_THRESH"])
    if weighted:
        thresh = _filter(rms, kernel, square=True, thresh_factor=tfac)
        stream = {"noise": rms, "square": True, "thresh_factor": tfac}
    else:
        thresh = float(np.float32(tfac * np.median(rms)))
        stream = {"thresh": thresh}
    full = detect(_filter(sci, kernel), thresh, params, strips=1)
    monkeypatch.setattr(detect_module, "STREAM_STRIP_PIXELS", 40 * sci.shape[1])
    part = detect_module.detect_streaming(sci, kernel, params, strips=1, **stream)
    assert len(part.strips) > 10 and not full.strips
    assert len(full.objects) > 150
    for f in ("above", "chain_off", "chain_pix", "chain_filtered", "chain_thresh", "parent",
              "parent_ymin", "parent_ymax"):
        np.testing.assert_array_equal(getattr(part, f), getattr(full, f), err_msg=f)
    assert part.threshold == full.threshold
    single = (full.objects["flag"] & 1) == 0
    np.testing.assert_array_equal(part.objects["npix"][single], full.objects["npix"][single])
    # sep's own random sharing of deblended detections differs: galseg's is the same
    shared = [sextractor_pixel_lists(d, sci, params, weighted=weighted) for d in (part, full)]
    assert shared[1][-1]["kept"] == 0 and shared[1][-1]["reshared"] >= 20
    for a, b in zip(shared[0][:4], shared[1][:4]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(part.segmap, full.segmap)
    # the chains' values are the maps' own
    np.testing.assert_array_equal(full.chain_filtered, _filter(sci, kernel).ravel()[full.chain_pix])
    # each strip's pixel stack holds only its strip's detected pixels
    assert part.pixstack < full.pixstack


def test_run_streams_and_detect_sources_keeps_the_maps(monkeypatch):
    """`run` detects without full-frame maps (strips of ~60 rows here), the
    diagnostic `detect_sources` with them: the same sources and catalogue."""
    from galseg.extract import detect as detect_module

    sci, rms = _dense(2)
    params = _params()
    src = detect_sources(sci, rms=rms, params=params)
    assert src.filtered.shape == sci.shape and src.thresh.shape == sci.shape
    monkeypatch.setattr(detect_module, "STREAM_STRIP_PIXELS", 60 * sci.shape[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = run(sci, rms=rms, params=params)
        ref = measure(src.data, src.rms, src.segmap, src.objects, params,
                      pixel_flags=src.pixel_flags, background=src.background.background,
                      backsig=src.meta["backsig"])
    assert res.meta["sep_strips"] >= 8 and res.sources.filtered is None
    assert res.meta["detect_thresh"] == src.meta["detect_thresh"]
    np.testing.assert_array_equal(res.segmap, src.segmap)
    for c in ref.colnames:
        np.testing.assert_array_equal(np.asarray(res.catalog[c]), np.asarray(ref[c]), err_msg=c)


def test_kept_sep_sharing_after_the_first_strip_runs_sep_once_more(monkeypatch):
    """Where galseg has to keep sep's own random sharing (a child's core not
    recognised: rare, forced here) for a detection sep did not scan in its
    first strip, the engine runs sep once more on the whole image, on full
    maps: the result is the streamed one's."""
    from galseg.extract import detect as detect_module
    from galseg.extract import engine

    sci, rms = _dense(2)
    params = _params()
    monkeypatch.setattr(detect_module, "STREAM_STRIP_PIXELS", 60 * sci.shape[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = run(sci, rms=rms, params=params)
    real = engine.sextractor_pixel_lists
    strips = []

    def first_call_keeps_one(det, *args, **kw):
        *lists, centre, info = real(det, *args, **kw)
        strips.append(det.strips)
        if len(strips) == 1:  # the last object (in the last strip) "kept"
            info = dict(info, kept=1, kept_index=np.array([len(det.objects) - 1]))
        return (*lists, centre, info)

    monkeypatch.setattr(engine, "sextractor_pixel_lists", first_call_keeps_one)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = run(sci, rms=rms, params=params)
    assert len(strips) == 2 and len(strips[0]) >= 7 and strips[1] == ()
    assert got.meta["sep_strips"] == 1
    np.testing.assert_array_equal(got.segmap, want.segmap)
    for c in want.catalog.colnames:
        np.testing.assert_array_equal(np.asarray(got.catalog[c]), np.asarray(want.catalog[c]),
                                      err_msg=c)


# --------------------------------------------------------------------------- inputs, flags
def test_inputs_used_without_copies():
    sci, rms = _dense(2)
    sci0, rms0 = sci.copy(), rms.copy()
    res = run(sci, rms=rms, params=_params())
    # float32 science, zero background, no masked pixel: nothing is copied
    assert np.shares_memory(res.rms, rms) and not res.rms.flags.writeable
    np.testing.assert_array_equal(sci, sci0)
    np.testing.assert_array_equal(rms, rms0)
    # one unusable rms pixel: the noise map is galseg's own, interpolated
    # there from the pixel on its left (INTERP_TYPE ALL)
    rms[5, 7] = 0.0
    res2 = run(sci, rms=rms, params=_params())
    assert not np.shares_memory(res2.rms, rms)
    assert res2.rms[5, 7] == rms[5, 6] and res2.rms[6, 7] == rms[6, 7]


def test_pixel_flags_are_blank_iso_and_mask():
    sci, rms = _dense(2)
    sci[40:44, 300:330] = np.nan
    params = _params()
    src = detect_sources(sci, rms=rms, params=params)
    assert src.meta["nmerged"] > 0 and src.mask.sum() == 120
    common = dict(wcs=None, background=src.background.background,
                  backsig=src.meta["backsig"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = measure(src.data, src.rms, src.segmap, src.objects, params,
                    pixel_flags=src.pixel_flags, **common)
        b = measure(src.data, src.rms, src.segmap, src.objects, params, blank=src.blank,
                    iso_segmap=src.own_segmap, mask=src.mask, **common)
    for c in a.colnames:
        np.testing.assert_array_equal(np.asarray(a[c]), np.asarray(b[c]), err_msg=c)


def test_one_compiled_kernel_whatever_the_array_flags():
    sci, rms = _dense(1)
    params = _params()
    src = detect_sources(sci, rms=rms, params=params)
    writeable = [np.array(a) for a in (src.data, src.rms, src.segmap)]
    readonly = [a.view() for a in writeable]
    for a in readonly:
        a.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for arrays in (writeable, readonly):
            measure(*arrays, src.objects, params, pixel_flags=src.pixel_flags)
    assert len(_kernels._measure_chunks.signatures) == 1
    assert len(_kernels._measure_range.signatures) <= 1


# --------------------------------------------------------------------------- memory
def test_peak_memory_in_frames(monkeypatch):
    """NumPy's peak during a whole run, beyond the caller's inputs, in
    full-frame float32 arrays: the segmentation map and the bool/uint8 maps;
    the filtered image and threshold exist only a strip at a time (strips of
    128 rows here: their size is bounded by `STREAM_STRIP_PIXELS`, not by the
    image; sep's and numba's own buffers are not seen)."""
    from galseg.extract import detect as detect_module

    monkeypatch.setattr(detect_module, "STREAM_STRIP_PIXELS", 1 << 18)
    sci, rms = _dense(8)  # 2048 x 2048
    params = _params()
    run(sci[:256, :256].copy(), rms=rms[:256, :256].copy(), params=params)  # warm up
    frame = sci.nbytes
    tracemalloc.start()
    try:
        res = run(sci, rms=rms, params=params)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"\n[memory] peak {peak / frame:.2f} frames of {frame / 2**20:.0f} MiB, "
          f"{len(res.catalog)} objects")
    assert len(res.catalog) > 2000
    assert peak < 2.0 * frame


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_row_kernels_run_in_a_forked_child():
    """The kernels' thread pool is not inherited half-dead by a fork."""
    import os

    rng = np.random.default_rng(5)
    img = rng.normal(size=(300, 400)).astype(np.float32)
    kern = np.ones((3, 3), np.float32) / 9
    want = _filter(img, kern)
    pid = os.fork()
    if pid == 0:  # child: exit status says whether the result is the same
        ok = False
        try:
            ok = np.array_equal(_filter(img, kern), want)
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert status == 0
