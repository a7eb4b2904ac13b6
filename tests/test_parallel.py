"""Bands in parallel: local processes and Dask give the serial run's products."""

import math
import os
import pickle

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from galseg.imaging.data import Data
from galseg.parallel import (BandSpec, BandTaskError, SegmentTask, map_bands, segment_entry,
                             segment_task)
from galseg.pipeline.forced import read_catalog

DET = "F125W+F160W"


def _run(work, **kw):
    data = Data.from_survey_version("XDF-demo", "v1", work_dir=work)
    data.segment(progress=False, **kw)
    data.perform_forced_phot(DET, progress=False, **kw)
    return data


def _same_products(a: Data, b: Data):
    for ba, bb in zip(a, b):
        assert ba.seg_path.name == bb.seg_path.name  # same key: same inputs and parameters
        np.testing.assert_array_equal(ba.load_seg(), bb.load_seg())
        np.testing.assert_array_equal(ba.load_bkg(), bb.load_bkg())
        _same_table(ba.load_cat(), bb.load_cat())
        _same_table(read_catalog(a.forced_phot.cat_paths[ba.filt]),
                    read_catalog(b.forced_phot.cat_paths[bb.filt]))
    _same_table(a.load_cat(), b.load_cat())
    np.testing.assert_array_equal(a.forced_phot_band.load_seg(), b.forced_phot_band.load_seg())


def _same_table(x: Table, y: Table):
    assert x.colnames == y.colnames and len(x) == len(y) > 0
    for c in x.colnames:
        np.testing.assert_array_equal(np.asarray(x[c]), np.asarray(y[c]), err_msg=c)


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("serial"), workers=1)


def test_two_local_workers_match_serial(serial, tmp_path):
    pooled = _run(tmp_path, workers=2)
    assert all(r["status"] == "computed" for r in pooled.segment_summary)
    # Every band was computed (by the workers, or here while the new pool started).
    assert all(not b.seg_args["from_cache"] for b in pooled)
    _same_products(serial, pooled)


@pytest.mark.timeout(300)
def test_dask_local_cluster_matches_serial(serial, tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            dasked = _run(tmp_path, scheduler=client)
            pids = set(client.run(os.getpid).values())
    assert len(pids) == 2
    assert all(r["status"] == "computed" for r in dasked.segment_summary)
    _same_products(serial, dasked)


def test_cached_bands_never_reach_a_worker(serial, capsys):
    data = Data.from_survey_version("XDF-demo", "v1", work_dir=serial[0].work_dir)
    data.segment(workers=2)
    data.perform_forced_phot(DET, workers=2)
    # Recognised as cached in this process: no task was sent to a worker.
    assert [r["status"] for r in data.segment_summary] == ["cached"] * 5
    assert [r["status"] for r in data.forced_phot.rows] == ["cached"] * 5
    assert all(b.seg_args["from_cache"] for b in data)
    _same_products(serial, data)
    err = capsys.readouterr().err
    assert "5 bands in" in err and "0 computed, 5 cached" in err and "F850LP" in err


def test_segment_entry_names_the_product_segment_makes(serial):
    for band in serial:
        entry = segment_entry(band, "rms_err", "sep", "galfind_default")
        assert entry.stem == band._product.stem and entry.is_valid()
    other = segment_entry(serial["F160W"], "rms_err", "sep", "galfind_default", DETECT_THRESH=3)
    assert other.stem != serial["F160W"]._product.stem and not other.is_valid()


def test_band_spec_rebuilds_the_band(serial):
    band = serial["F850LP"]
    spec = pickle.loads(pickle.dumps(BandSpec.from_band(band)))
    again = spec.open()
    assert (again.filt, again.zp, again.zp_source, again.shape) == (
        band.filt, band.zp, band.zp_source, band.shape)
    assert again.pix_scale == band.pix_scale and list(again.aper_diams) == list(band.aper_diams)
    assert again.im_path == band.im_path.resolve() and again.work_dir == band.work_dir.resolve()
    np.testing.assert_array_equal(again.load_wht(), band.load_wht())
    stack = serial.forced_phot_band
    assert BandSpec.from_band(stack).open().stack_of == ["F125W", "F160W"]


def test_a_failing_band_is_named(serial, tmp_path):
    band = serial["F606W"]
    sci = fits.getdata(band.im_path, 1)
    bad = tmp_path / "sci.fits"
    fits.PrimaryHDU(sci).writeto(bad)
    spec = BandSpec.from_band(band)
    good = SegmentTask(spec)
    broken = SegmentTask(BandSpec(**{**spec.__dict__, "im_path": str(bad), "im_ext": 0}))
    bad.unlink()  # gone before the worker opens it
    with pytest.raises(BandTaskError, match=r"F606W failed: FitsInputError: .*file not found"):
        map_bands(segment_task, [good, broken], workers=1, progress=False)
    with pytest.raises(ValueError, match="workers must be >= 1"):
        map_bands(segment_task, [good], workers=0)
    assert map_bands(segment_task, [], workers=2) == []


def test_a_new_pool_starts_while_this_process_works():
    """While a new pool's processes start, this process runs tasks from the end
    of the list: the results are the same, in task order, and a failure is named."""
    from galseg.parallel.executor import shutdown_pools

    shutdown_pools()
    tasks = [float(-i) for i in range(20)]
    assert map_bands(abs, tasks, workers=2, progress=False) == [abs(t) for t in tasks]
    shutdown_pools()
    with pytest.raises(BandTaskError, match=r"task 19 failed.*ValueError"):
        map_bands(math.sqrt, [1.0] * 19 + [-1.0], workers=2, progress=False)


def test_forkserver_preloads_only_the_galseg_in_use(tmp_path, monkeypatch):
    from galseg.parallel.executor import _preload_is_safe

    monkeypatch.chdir(tmp_path)
    assert _preload_is_safe()
    # Another galseg in the current directory would be what the forkserver imports.
    (tmp_path / "galseg").mkdir()
    (tmp_path / "galseg" / "__init__.py").write_text("")
    assert not _preload_is_safe()


def test_runs_in_process_follows_map_bands():
    # forced photometry writes the detection state before tasks leave this process
    from galseg.parallel import runs_in_process

    assert runs_in_process(0) and runs_in_process(1) and runs_in_process(5, workers=1)
    assert runs_in_process(1, workers=4)             # one task: never a pool
    assert not runs_in_process(5, workers=2)
    assert not runs_in_process(1, scheduler="tcp://127.0.0.1:1")
    with pytest.raises(ValueError, match="workers must be >= 1"):
        runs_in_process(3, workers=0)
