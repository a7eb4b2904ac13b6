"""Small helpers for tests: file checksums to prove inputs are never modified."""

import hashlib
from pathlib import Path


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
