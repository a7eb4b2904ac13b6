"""Small helpers for tests: file checksums to prove inputs are never modified."""

import hashlib
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np

SEX = shutil.which("source-extractor") or shutil.which("sex")
SEXDIR = Path("/usr/share/source-extractor")


def tree_checksums(root) -> dict:
    """sha256 and mtime of every file under ``root`` (or of one file)."""
    root = Path(root)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {
        str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in files
    }


def demo_band(filt, zp, work_dir, instrument="WFC3_IR"):
    """A band of the demo sample shipped in the package (0.06"/px, weights in HDU 1)."""
    from galseg import Band_Data
    from galseg.imaging.layout import demo_dir

    d, name = demo_dir(), filt.lower()
    return Band_Data("XDF", "v1", instrument, filt, d / f"xdf_{name}_sci.fits", 1,
                     wht_path=d / f"xdf_{name}_wht.fits", wht_ext=1, pix_scale=0.06, zp=zp,
                     work_dir=work_dir)


def des_r_band(work_dir):
    """The shared DES r cutout (SCI/WGT extensions, real WCS); skips when absent."""
    import pytest

    from galseg import Band_Data

    path = Path(__file__).resolve().parents[1].parent / "shared/data/des_sn2006bh/DES_r.fits"
    if not path.is_file():
        pytest.skip(f"DES cutout not found at {path}")
    return Band_Data("DES", "Y3", "DECam", "r", path, "SCI", wht_path=path, wht_ext="WGT",
                     work_dir=work_dir)


def sextractor_arrays(tmp, sci, config, *, weight=None, params=("NUMBER",), checks=(),
                      verbose="NORMAL") -> dict:
    """Run the real SExtractor binary on arrays written to ``tmp``.

    ``config``: SExtractor keywords given on its command line; ``params``:
    the output columns; ``checks``: CHECKIMAGE_TYPEs to read back.  Returns
    ``{"cat": Table, "log": stderr, <check>: array, ...}``.
    """
    from astropy.io import fits
    from astropy.table import Table

    tmp = Path(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    fits.writeto(tmp / "sci.fits", np.asarray(sci, np.float32), overwrite=True)
    (tmp / "p.param").write_text("\n".join(params) + "\n")
    conf = {"CATALOG_TYPE": "FITS_1.0", "CATALOG_NAME": str(tmp / "cat.fits"),
            "PARAMETERS_NAME": str(tmp / "p.param"),
            "STARNNW_NAME": str(SEXDIR / "default.nnw"), "VERBOSE_TYPE": verbose,
            "CHECKIMAGE_TYPE": ",".join(checks) or "NONE",
            "CHECKIMAGE_NAME": ",".join(str(tmp / f"{c}.fits") for c in checks) or "x.fits"}
    conf.update({k: str(v) for k, v in config.items()})
    if weight is not None:
        fits.writeto(tmp / "w.fits", np.asarray(weight, np.float32), overwrite=True)
        conf["WEIGHT_IMAGE"] = str(tmp / "w.fits")
    (tmp / "c.sex").write_text("")
    args = [SEX, str(tmp / "sci.fits"), "-c", str(tmp / "c.sex")]
    for k, v in conf.items():
        args += ["-" + k, v]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=tmp, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cat = Table.read(tmp / "cat.fits", hdu=1)
    out = {"cat": cat, "log": proc.stderr}
    for c in checks:
        out[c] = fits.getdata(tmp / f"{c}.fits")
    return out
