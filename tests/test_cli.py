"""The ``galseg`` command, driven for real in subprocesses."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table


def _galseg(*args, work=None, cwd=None):
    exe = shutil.which("galseg")
    cmd = [exe, *args] if exe else [sys.executable, "-m", "galseg.cli", *args]
    env = dict(os.environ)
    if work is not None:
        env["GALSEG_WORK_DIR"] = str(work)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


def test_demo_json_and_cached_rerun(tmp_path):
    first = _galseg("demo", "--json", "--workers", "1", work=tmp_path / "work", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    out = json.loads(first.stdout)
    assert [b["filter"] for b in out["bands"]] == ["F435W", "F606W", "F850LP", "F125W", "F160W"]
    assert all(b["detections"] > 10 and not b["from_cache"] for b in out["bands"])
    assert os.path.getsize(out["plot"]) > 10_000
    for b in out["bands"]:
        seg = fits.getdata(b["seg_path"])
        assert seg.max() == b["detections"] == len(Table.read(b["cat_path"]))
    again = json.loads(_galseg("demo", "--json", "--no-plot", work=tmp_path / "work").stdout)
    assert all(b["from_cache"] for b in again["bands"])
    assert [b["detections"] for b in again["bands"]] == [b["detections"] for b in out["bands"]]


def test_segment_with_overrides_stack_forced_plot_export_cache(tmp_path):
    work = tmp_path / "work"
    seg = _galseg("segment", "XDF-demo", "v1", "--bands", "F125W", "F160W", "--set",
                  "DETECT_THRESH=3", "--workers", "1", "--json", work=work)
    assert seg.returncode == 0, seg.stderr
    rows = json.loads(seg.stdout)["bands"]
    default = json.loads(_galseg("segment", "XDF-demo", "v1", "--bands", "F160W", "--json",
                                 work=work).stdout)["bands"][0]
    assert rows[1]["detections"] < default["detections"]   # a higher threshold finds fewer
    assert rows[1]["seg_path"] != default["seg_path"]       # and is kept side by side

    st = _galseg("stack", "XDF-demo", "v1", "F125W+F160W", "--segment", "--json", work=work)
    assert st.returncode == 0, st.stderr
    stack = json.loads(st.stdout)
    assert stack["band"] == "F125W+F160W" and stack["detections"] > 0
    assert np.all(fits.getdata(stack["wht"]) > 0)

    fo = _galseg("forced", "XDF-demo", "v1", "--detection", "F125W+F160W", "--workers", "1",
                 "--json", work=work)
    assert fo.returncode == 0, fo.stderr
    forced = json.loads(fo.stdout)
    cat = Table.read(forced["catalogue"])
    assert len(cat) == forced["objects"] == stack["detections"]
    assert "FLUX_AUTO_F435W" in cat.colnames and "FLUX_AUTO_F160W" in cat.colnames

    png = tmp_path / "overlay.png"
    pl = _galseg("plot", "XDF-demo", "v1", "--bands", "F160W", "--overlay", "-o", str(png), work=work)
    assert pl.returncode == 0, pl.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    ex = _galseg("export", "XDF-demo", "v1", "--bands", "F160W", "--format", "ds9",
                 "-o", str(tmp_path / "exp"), "--json", work=work)
    assert ex.returncode == 0, ex.stderr
    (reg,) = json.loads(ex.stdout)["files"]
    assert open(reg).read().count("ellipse(") >= default["detections"]

    listed = json.loads(_galseg("cache", "list", "--json", work=work).stdout)
    assert {r["filt"] for r in listed} >= {"F125W", "F160W", "F125W+F160W"}
    assert all(r["valid"] for r in listed)
    dry = _galseg("cache", "clean", "--all", "--dry-run", "--filt", "F125W", work=work)
    assert dry.returncode == 0 and "would remove" in dry.stdout
    assert os.path.exists(rows[0]["seg_path"])      # a dry run removes nothing
    gone = _galseg("cache", "clean", "--all", "--filt", "F125W", work=work)
    assert gone.returncode == 0 and not os.path.exists(rows[0]["seg_path"])
    assert os.path.exists(default["seg_path"])


def test_errors_are_one_line_with_nonzero_exit(tmp_path):
    res = _galseg("segment", "NOPE", "v1", work=tmp_path)
    assert res.returncode == 1
    assert res.stderr.strip().count("\n") == 0 and "survey 'NOPE' is in no layout" in res.stderr
    assert "Traceback" not in res.stderr
    bad = _galseg("segment", "XDF-demo", "v1", "--bands", "F160W", "--set", "NOT_A_PARAM=1",
                  work=tmp_path)
    assert bad.returncode == 1 and "unknown SExtractor parameter 'NOT_A_PARAM'" in bad.stderr
    debug = _galseg("--debug", "segment", "NOPE", "v1", work=tmp_path)
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    usage = _galseg("segment", work=tmp_path)
    assert usage.returncode == 2
    ver = _galseg("--version")
    assert ver.returncode == 0 and ver.stdout.startswith("galseg ")
    helptext = _galseg("--help").stdout
    assert "examples:" in helptext and "galseg forced" in helptext
