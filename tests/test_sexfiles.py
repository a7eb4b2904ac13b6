"""SExtractor file readers/writers and the shipped presets, on real files."""

from __future__ import annotations

import filecmp
import os
from pathlib import Path

import numpy as np
import pytest

from galseg.extract import presets
from galseg.extract.params import PARAMETER_SPEC, Params
from galseg.extract.sexfiles import (
    column_shapes,
    expand_columns,
    read_conv,
    read_param,
    read_sex,
    write_sex,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SEPREF = DATA / "sep_reference"
SEXSHARE = Path("/usr/share/source-extractor")
SHIPPED = presets.configs_dir()

needs_sepref = pytest.mark.skipif(
    not (SEPREF / "default.sex").is_file(), reason="shared test data sep_reference/ absent"
)
needs_sexshare = pytest.mark.skipif(
    not SEXSHARE.is_dir(), reason="SExtractor's config folder /usr/share/source-extractor absent"
)

GALFIND_PARAM = [
    "NUMBER", "X_IMAGE", "Y_IMAGE", "ALPHA_J2000", "DELTA_J2000",
    "MAG_APER(1)", "FLUX_APER(1)", "MAGERR_APER(1)", "FLUXERR_APER(1)",
    "MAG_AUTO", "MAGERR_AUTO", "FLUX_AUTO", "FLUXERR_AUTO", "MAG_BEST", "MAGERR_BEST",
    "MAG_ISO", "MAGERR_ISO", "KRON_RADIUS", "FLUX_RADIUS", "FWHM_IMAGE", "CLASS_STAR",
    "SNR_WIN", "ELONGATION", "THETA_IMAGE", "A_IMAGE", "B_IMAGE", "FLAGS", "ISOAREA_IMAGE",
]


# ----------------------------------------------------------------------- read_conv
def test_read_conv_shipped_default_values():
    kernel, norm = read_conv(SHIPPED / "kernels" / "default.conv")
    assert norm is True
    assert kernel.dtype == np.float32
    np.testing.assert_array_equal(kernel, [[1, 2, 1], [2, 4, 2], [1, 2, 1]])
    k, _ = read_conv(SHIPPED / "kernels" / "gauss_2.5_5x5.conv")
    assert k.shape == (5, 5)
    assert k[2, 2] == np.float32(0.930649) and k[0, 0] == np.float32(0.034673)
    np.testing.assert_array_equal(k, k.T)


@needs_sexshare
def test_read_conv_all_sextractor_kernels_and_shipped_copies():
    files = sorted(SEXSHARE.glob("*.conv"))
    assert len(files) >= 20
    for f in files:
        kernel, norm = read_conv(f)
        side = int(f.stem.split("x")[-1]) if "x" in f.stem else 3
        assert kernel.shape == (side, side), f.name
        assert norm is True
        # Shipped kernels are byte-identical copies.
        assert filecmp.cmp(f, SHIPPED / "kernels" / f.name, shallow=False), f.name
    assert filecmp.cmp(SEXSHARE / "default.nnw", SHIPPED / "default.nnw", shallow=False)


@needs_sepref
def test_read_conv_sep_reference():
    kernel, norm = read_conv(SEPREF / "default.conv")
    assert norm and kernel.sum() == 16


def test_read_conv_nonorm_and_comments(tmp_path):
    f = tmp_path / "k.conv"
    f.write_text("CONV NONORM\n# a comment\n\n 0 -1 0\n-1 4 -1\n0 -1 0  \n")
    kernel, norm = read_conv(f)
    assert norm is False
    np.testing.assert_array_equal(kernel, [[0, -1, 0], [-1, 4, -1], [0, -1, 0]])
    # NONORM kernels are used as written.
    np.testing.assert_array_equal(presets.filter_kernel({"FILTER_NAME": str(f)}), kernel)


@pytest.mark.parametrize(
    "text, line, fragment",
    [
        ("CONV NORM\n1 2 1\n2 x 2\n1 2 1\n", 3, "'x' is not a number"),
        ("CONV NORM\n1 2 1\n# c\n2 4\n", 4, "has 2 values"),
        ("NOT A MASK\n1 2 1\n", 1, "not a SExtractor convolution mask"),
    ],
)
def test_read_conv_errors_name_file_and_line(tmp_path, text, line, fragment):
    f = tmp_path / "bad.conv"
    f.write_text(text)
    with pytest.raises(ValueError) as err:
        read_conv(f)
    msg = str(err.value)
    assert str(f) in msg and f"line {line}" in msg and fragment in msg


def test_read_conv_empty_mask(tmp_path):
    f = tmp_path / "empty.conv"
    f.write_text("CONV NORM\n# nothing\n")
    with pytest.raises(ValueError, match="no rows"):
        read_conv(f)


# ------------------------------------------------------------------- filter_kernel
def test_filter_kernel_norm_divides_by_sum_of_absolute_values():
    k = presets.filter_kernel({"FILTER": "Y", "FILTER_NAME": "default.conv"})
    np.testing.assert_allclose(k, np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16.0)
    # A mexican hat: SExtractor normalises by sum(|k|), not sum(k) (filter.c getconv).
    raw, _ = read_conv(SHIPPED / "kernels" / "mexhat_2.5_7x7.conv")
    mex = presets.filter_kernel({"FILTER_NAME": "mexhat_2.5_7x7.conv"})
    assert abs(np.abs(mex).sum() - 1) < 1e-6
    assert abs(mex.sum() - raw.sum() / np.abs(raw).sum()) < 1e-7
    assert mex.dtype == np.float32 and mex.flags.c_contiguous


def test_filter_kernel_none_when_filter_off():
    assert presets.filter_kernel(presets.load_config(FILTER="N")) is None


def test_filter_name_resolution_next_to_sex_file(tmp_path):
    (tmp_path / "mine.conv").write_text("CONV NORM\n0 1 0\n1 2 1\n0 1 0\n")
    sex = tmp_path / "my.sex"
    sex.write_text("FILTER Y\nFILTER_NAME mine.conv\nSTARNNW_NAME default.nnw\n")
    p = read_sex(sex)
    assert p["FILTER_NAME"] == str((tmp_path / "mine.conv").resolve())
    # Not next to the .sex file: kept as written, found among the shipped files.
    assert p["STARNNW_NAME"] == "default.nnw"
    assert presets.nnw_path(p) == SHIPPED / "default.nnw"
    np.testing.assert_allclose(
        presets.filter_kernel(p), np.array([[0, 1, 0], [1, 2, 1], [0, 1, 0]]) / 6.0
    )


def test_filter_name_missing_absolute_falls_back_to_shipped_with_warning(tmp_path):
    # galfind's own .sex files name kernels by absolute paths on its authors' disks.
    p = Params(FILTER_NAME="/nvme/scratch/work/x/GALFIND/configs/SExtractor/gauss_2.5_5x5.conv")
    with pytest.warns(UserWarning, match="does not exist"):
        k = presets.filter_kernel(p)
    np.testing.assert_array_equal(k, presets.filter_kernel(Params(FILTER_NAME="gauss_2.5_5x5.conv")))


def test_filter_name_not_found_names_parameter_and_places(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        presets.filter_kernel(Params(FILTER_NAME="no_such_kernel.conv"))
    msg = str(err.value)
    assert "FILTER_NAME" in msg and "no_such_kernel.conv" in msg
    assert str(SHIPPED / "kernels") in msg
    with pytest.raises(FileNotFoundError, match="STARNNW_NAME"):
        presets.nnw_path(Params(STARNNW_NAME=str(tmp_path / "none.nnw")))


# ------------------------------------------------------------------------ read_sex
@needs_sepref
def test_read_sex_sep_reference_default():
    p = read_sex(SEPREF / "default.sex")
    assert p["DEBLEND_MINCONT"] == 1.0
    assert p["MASK_TYPE"] == "NONE"
    assert p["PHOT_APERTURES"] == (10.0,)
    assert p["PHOT_AUTOPARAMS"] == (2.5, 0.0)
    assert p["PHOT_FLUXFRAC"] == (0.1, 0.5, 0.6)
    assert p["CHECKIMAGE_TYPE"] == ("BACKGROUND", "BACKGROUND_RMS")
    assert p["CHECKIMAGE_NAME"] == ("back.fits", "rms.fits")
    assert p["BACK_TYPE"] == ("AUTO",) and p["BACK_SIZE"] == 64
    assert p["PIXEL_SCALE"] == 1.0 and p["CATALOG_TYPE"] == "ASCII_HEAD"
    assert p["FILTER_NAME"] == str((SEPREF / "default.conv").resolve())
    assert presets.filter_kernel(p).sum() == pytest.approx(1.0)


@needs_sexshare
def test_read_sex_sextractor_default_with_command_line_overrides():
    p = read_sex(SEXSHARE / "default.sex")
    assert p["DETECT_MINAREA"] == 3
    assert p["FLAG_TYPE"] == ("OR",) and p["ASSOC_DATA"] == ("2", "3", "4")
    assert p["FILTER_NAME"] == str(SEXSHARE / "default.conv")
    q = read_sex(
        SEXSHARE / "default.sex",
        ["-DETECT_THRESH", "2.5", "-FILTER", "N", "-PHOT_APERTURES", "3,4.5,10"],
    )
    assert q["DETECT_THRESH"] == 2.5 and q["FILTER"] is False
    assert q["PHOT_APERTURES"] == (3.0, 4.5, 10.0)
    r = read_sex(SEXSHARE / "default.sex", {"detect_thresh": 3, "BACK_TYPE": "MANUAL"})
    assert r["DETECT_THRESH"] == 3.0 and r["BACK_TYPE"] == ("MANUAL",)


def test_read_sex_galfind_style_file(tmp_path):
    # The layout of galfind's configs/SExtractor/default.sex: quoted option
    # lists in comments, absolute machine-specific paths, trailing comments.
    sex = tmp_path / "default.sex"
    sex.write_text(
        "#------ Catalog ------\n\n"
        "CATALOG_NAME    COSMOS_J_T6.cat # name of the output catalog\n"
        'CATALOG_TYPE    FITS_1.0      # "NONE","ASCII_HEAD","ASCII","FITS_1.0"\n'
        '                                # or "FITS_LDAC"\n'
        "PARAMETERS_NAME /nvme/scratch/work/nadams/SExtractor/uvista_dr3.param   # name\n"
        "FLAG_IMAGE      flag.fits       # filename for an input FLAG-image\n"
        "DETECT_MINAREA  9               # minimum number of pixels above threshold\n"
        "FILTER_NAME    /nvme/scratch/work/austind/GALFIND/configs/SExtractor/gauss_2.5_5x5.conv # f\n"
        "PHOT_APERTURES  10.67, 16.67, 33.33, 50, 66.67, 83.33              # MAG_APER\n"
        "GAIN            0       # detector gain in e-/ADU.2.460669879E+02\n"
        "#BACK_SIZE       64              # Background mesh\n"
        "BACK_TYPE       MANUAL\n"
        "BACK_VALUE      0\n"
        "WEIGHT_TYPE     MAP_RMS    # variance map derived from external weight map.\n"
        "WEIGHT_IMAGE    /local/scratch1/SExtractor/UVISTA_J_dr3_v5_wht.fits\n"
    )
    p = read_sex(sex)
    assert p["PHOT_APERTURES"] == (10.67, 16.67, 33.33, 50.0, 66.67, 83.33)
    assert p["DETECT_MINAREA"] == 9 and p["GAIN"] == 0.0 and p["BACK_SIZE"] == 64
    assert p["BACK_TYPE"] == ("MANUAL",) and p["BACK_VALUE"] == (0.0,)
    assert p["WEIGHT_TYPE"] == ("MAP_RMS",)
    assert p["FILTER_NAME"].startswith("/nvme/")
    with pytest.warns(UserWarning):
        assert presets.filter_kernel(p).shape == (5, 5)


@pytest.mark.parametrize(
    "text, line, fragment",
    [
        ("DETECT_THRESH 1.5\n\n# c\nDETECT_THRES 2  # typo\n", 4, "unknown SExtractor keyword 'DETECT_THRES'"),
        ("DETECT_MINAREA 5\nFILTER maybe\n", 2, "FILTER"),
        ("DETECT_MINAREA  # nothing\n", 1, "has no value"),
        ("DETECT_MINAREA 5.5\n", 1, "DETECT_MINAREA"),
        ("CATALOG_NAME a.cat b.cat\n", 1, "takes one value"),
    ],
)
def test_read_sex_errors_name_file_and_line(tmp_path, text, line, fragment):
    f = tmp_path / "bad.sex"
    f.write_text(text)
    with pytest.raises(ValueError) as err:
        read_sex(f)
    msg = str(err.value)
    assert str(f) in msg and f"line {line}" in msg and fragment in msg


def test_read_sex_override_errors(tmp_path):
    f = tmp_path / "ok.sex"
    f.write_text("DETECT_THRESH 1.5\n")
    with pytest.raises(ValueError, match="'-KEYWORD'"):
        read_sex(f, ["DETECT_THRESH", "2"])
    with pytest.raises(ValueError, match="unknown SExtractor keyword 'FOO'"):
        read_sex(f, ["-FOO", "1"])
    with pytest.raises(ValueError, match="has no value"):
        read_sex(f, ["-DETECT_THRESH"])
    with pytest.raises(ValueError, match="DETECT_THRESH"):
        read_sex(f, {"DETECT_THRESH": "high"})


def test_read_sex_environment_variables(tmp_path, monkeypatch):
    (tmp_path / "k.conv").write_text("CONV NORM\n1\n")
    monkeypatch.setenv("GALSEG_TEST_DIR", str(tmp_path))
    f = tmp_path / "env.sex"
    f.write_text("FILTER_NAME ${GALSEG_TEST_DIR}/k.conv\nCATALOG_NAME $GALSEG_TEST_DIR/x.cat\n")
    p = read_sex(f)
    assert p["FILTER_NAME"] == f"{tmp_path}/k.conv"
    assert p["CATALOG_NAME"] == f"{tmp_path}/x.cat"
    f.write_text("FILTER_NAME $GALSEG_UNSET_VARIABLE_XYZ/k.conv\n")
    monkeypatch.delenv("GALSEG_UNSET_VARIABLE_XYZ", raising=False)
    with pytest.raises(ValueError, match="GALSEG_UNSET_VARIABLE_XYZ"):
        read_sex(f)


@pytest.mark.parametrize("name", ["galfind_default", "test", "epochs-v2_deblend"])
def test_write_sex_round_trip(tmp_path, name):
    p = presets.load_config(
        name, PHOT_APERTURES=[10.666666666666666, 16.67, 33.33], MAG_ZEROPOINT=28.0865,
        WEIGHT_TYPE="MAP_WEIGHT", CHECKIMAGE_NAME=[], FILTER_THRESH=[],
    )
    out = write_sex(p, tmp_path / "rt.sex")
    q = read_sex(out)
    assert q.to_dict() == p.to_dict()
    assert q.canonical() == p.canonical()
    text = out.read_text()
    # Every keyword written once (except empty strings, left to SExtractor's default).
    for key, (kind, _) in PARAMETER_SPEC.items():
        if kind == "str" and p[key] == "":
            continue
        assert sum(line.split()[0] == key for line in text.splitlines() if line.strip()
                   and not line.startswith("#")) == 1, key


def test_write_sex_refuses_unwritable_value(tmp_path):
    with pytest.raises(ValueError, match="CATALOG_NAME"):
        write_sex(Params(CATALOG_NAME="my catalogue.fits"), tmp_path / "x.sex")


# ----------------------------------------------------------------------- read_param
@needs_sepref
def test_read_param_sep_reference():
    entries = read_param(SEPREF / "default.param")
    assert entries[:3] == ["NUMBER", "X_IMAGE", "Y_IMAGE"]
    assert "FLUX_APER(1)" in entries and "FLUX_RADIUS(3)" in entries
    assert len(entries) == 19 and entries[-1] == "FLAGS"
    assert column_shapes(entries, naper=1)["FLUX_RADIUS"] == (3,)


@needs_sexshare
def test_read_param_all_commented_is_empty():
    assert read_param(SEXSHARE / "default.param") == []


def test_shipped_param_files():
    assert read_param(presets.param_path("galfind_default")) == GALFIND_PARAM
    extra = ["FLUX_ISO", "FLUXERR_ISO", "XWIN_IMAGE", "YWIN_IMAGE",
             "XMIN_IMAGE", "XMAX_IMAGE", "YMIN_IMAGE", "YMAX_IMAGE"]
    assert read_param(presets.param_path("galseg")) == GALFIND_PARAM + extra
    with pytest.raises(ValueError, match="unknown .param"):
        presets.param_path("nope")


def test_expand_columns_galfind_rewritten_param(tmp_path):
    # galfind rewrites its .param to MAG_APER(1), MAG_APER(2), ... one per aperture.
    f = tmp_path / "g.param"
    f.write_text("NUMBER\n  MAG_APER(1)\nMAG_APER(2)\nMAG_APER(3)\nFLUX_APER(1)  # c\n"
                 "# FLUX_AUTO\n\nFLUX_RADIUS (2)\nflags\n")
    entries = read_param(f)
    assert entries == ["NUMBER", "MAG_APER(1)", "MAG_APER(2)", "MAG_APER(3)",
                       "FLUX_APER(1)", "FLUX_RADIUS(2)", "FLAGS"]
    assert expand_columns(entries, naper=3) == ["NUMBER", "MAG_APER", "FLUX_APER",
                                                "FLUX_RADIUS", "FLAGS"]
    shapes = column_shapes(entries, naper=3)
    assert shapes == {"NUMBER": (), "MAG_APER": (3,), "FLUX_APER": (3,),
                      "FLUX_RADIUS": (2,), "FLAGS": ()}
    assert column_shapes(entries, naper=1)["FLUX_APER"] == ()
    with pytest.raises(ValueError, match="naper"):
        expand_columns(entries, naper=0)


def test_read_param_malformed_names_line(tmp_path):
    f = tmp_path / "bad.param"
    f.write_text("NUMBER\nFLUX_APER(x)\n")
    with pytest.raises(ValueError) as err:
        read_param(f)
    assert str(f) in str(err.value) and "line 2" in str(err.value)


# -------------------------------------------------------------------------- presets
def test_list_presets():
    assert {"galfind_default", "test", "epochs-v2_deblend"} <= set(presets.list_presets())


def test_galfind_default_values():
    p = presets.load_config()
    expected = {
        "DETECT_MINAREA": 9, "DETECT_THRESH": 1.8, "ANALYSIS_THRESH": 1.8,
        "FILTER": True, "FILTER_NAME": "gauss_2.5_5x5.conv",
        "DEBLEND_NTHRESH": 32, "DEBLEND_MINCONT": 0.005,
        "CLEAN": True, "CLEAN_PARAM": 1.0, "MASK_TYPE": "CORRECT",
        "PHOT_AUTOPARAMS": (2.5, 4.0), "PHOT_AUTOAPERS": (3.5, 3.5),
        "PHOT_FLUXFRAC": (0.5,), "SATUR_LEVEL": 500000.0, "GAIN": 0.0,
        "SEEING_FWHM": 0.05, "BACK_TYPE": ("MANUAL",), "BACK_VALUE": (0.0,),
        "STARNNW_NAME": "default.nnw", "PARAMETERS_NAME": "galfind_default.param",
        "MEMORY_OBJSTACK": 65000, "MEMORY_PIXSTACK": 5000000,
        "BACK_SIZE": 64, "BACK_FILTERSIZE": 3, "BACKPHOTO_TYPE": "GLOBAL",
    }
    for key, value in expected.items():
        assert p[key] == value, key
    k = presets.filter_kernel(p)
    assert k.shape == (5, 5) and abs(float(k.sum()) - 1) < 1e-6
    assert presets.nnw_path(p) == SHIPPED / "default.nnw"
    # Shipped presets keep bare names: parameter values do not depend on the install.
    assert "/" not in p.canonical().split('"FILTER_NAME":')[1].split(",")[0]


def test_variant_presets():
    base = presets.load_config("galfind_default").to_dict()
    t = presets.load_config("test").to_dict()
    e = presets.load_config("epochs-v2_deblend").to_dict()
    assert {k for k in base if base[k] != t[k]} == {"DETECT_MINAREA", "DETECT_THRESH", "ANALYSIS_THRESH"}
    assert (t["DETECT_MINAREA"], t["DETECT_THRESH"], t["ANALYSIS_THRESH"]) == (15, 2.5, 2.5)
    assert {k for k in base if base[k] != e[k]} == {"DEBLEND_NTHRESH", "DEBLEND_MINCONT"}
    assert (e["DEBLEND_NTHRESH"], e["DEBLEND_MINCONT"]) == (64, 0.0001)


def test_load_config_sources_and_overrides(tmp_path):
    p = presets.load_config("galfind_default", detect_thresh=2.5, FILTER="N")
    assert p["DETECT_THRESH"] == 2.5 and p["FILTER"] is False and p["DETECT_MINAREA"] == 9
    assert presets.load_config(p) is p
    assert presets.load_config(p, DETECT_MINAREA=4)["DETECT_MINAREA"] == 4
    d = presets.load_config({"detect_minarea": 7}, CLEAN="N")
    assert d["DETECT_MINAREA"] == 7 and d["CLEAN"] is False
    path = write_sex(p, tmp_path / "mine.sex")
    assert presets.load_config(str(path)).to_dict() == p.to_dict()
    assert presets.load_config(path, deblend_mincont=0.01)["DEBLEND_MINCONT"] == 0.01
    with pytest.raises(ValueError, match="shipped presets: .*galfind_default"):
        presets.load_config("galfind_defualt")
    with pytest.raises(FileNotFoundError):
        presets.load_config(str(tmp_path / "missing.sex"))
    with pytest.raises(KeyError):
        presets.load_config({"NOT_A_KEY": 1})
    with pytest.raises(TypeError):
        presets.load_config(3.0)


def test_configs_dir_is_the_package_data():
    assert (SHIPPED / "__init__.py").is_file()
    assert (SHIPPED / "kernels" / "gauss_2.5_5x5.conv").is_file()
    assert os.path.samefile(presets.preset_path("galfind_default").parent, SHIPPED)


def test_load_config_python_paths_relative_to_cwd(tmp_path, monkeypatch):
    (tmp_path / "mine.conv").write_text("CONV NONORM\n1 1\n1 1\n")
    monkeypatch.chdir(tmp_path)
    p = presets.load_config("galfind_default", filter_name="mine.conv")
    assert p["FILTER_NAME"] == str(tmp_path / "mine.conv")
    np.testing.assert_array_equal(presets.filter_kernel(p), np.ones((2, 2)))
    d = presets.load_config({"FILTER_NAME": "mine.conv"})
    assert d["FILTER_NAME"] == str(tmp_path / "mine.conv")
