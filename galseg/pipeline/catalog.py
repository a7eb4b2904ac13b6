"""The multi-band catalogue: per-band forced catalogues joined by ``NUMBER``.

Naming scheme
-------------
Every per-band forced catalogue has the same objects (the detection band's),
with the same ``NUMBER``.  The joined catalogue has one row per object,
sorted by ``NUMBER``, and

* the *detection columns* `SHARED_COLUMNS` once, without suffix: ``NUMBER``,
  positions (``X_IMAGE``, ``Y_IMAGE``, ``ALPHA_J2000``, ``DELTA_J2000``),
  shape (``A_IMAGE``, ``B_IMAGE``, ``THETA_IMAGE``, ``ELONGATION``) and the
  bounding box -- they come from the detection band and are identical in
  every band (this is checked);
* every other column once per band, named ``{COLUMN}_{FILTER}``:
  ``FLUX_APER_F444W``, ``MAGERR_AUTO_F090W``, ``FLAGS_F277W`` ...  Aperture
  columns keep their ``(N, naper)`` shape; the diameters are in the header
  (``APER{i}``, arcsec) and the README.

Rows are matched by ``NUMBER``, never by row order: each band's catalogue is
sorted by ``NUMBER`` and its set of numbers must equal the detection's.
Fluxes are in each band's image units (``MAG_*`` use the band's zero point,
recorded as ``ZP_{FILTER}`` in the header).  Units are kept on the columns,
the FITS header carries ``TCOMMn`` descriptions, and a ``_README.txt`` next to
the catalogue describes every column.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from astropy.table import Table

from ..io.atomic import atomic_write_bytes
from ..io.fitstable import table_file_bytes
from ..products.fileset import FileSet

__all__ = ["SHARED_COLUMNS", "COLUMN_DESCRIPTIONS", "describe_column", "join_forced",
           "multiband_catalog", "multiband_fileset", "multiband_key", "write_multiband"]

#: Detection-band columns, kept once without a band suffix.
SHARED_COLUMNS = ("NUMBER", "X_IMAGE", "Y_IMAGE", "ALPHA_J2000", "DELTA_J2000",
                  "A_IMAGE", "B_IMAGE", "THETA_IMAGE", "ELONGATION",
                  "XMIN_IMAGE", "XMAX_IMAGE", "YMIN_IMAGE", "YMAX_IMAGE")

#: SExtractor's meaning of each catalogue column (SExtractor 2.25 manual wording, shortened).
COLUMN_DESCRIPTIONS = {
    "NUMBER": "Running object number (segmentation-map label of the detection band)",
    "X_IMAGE": "Object position along x (1-based pixels, detection band)",
    "Y_IMAGE": "Object position along y (1-based pixels, detection band)",
    "ALPHA_J2000": "Right ascension of barycenter (J2000)",
    "DELTA_J2000": "Declination of barycenter (J2000)",
    "MAG_APER": "Fixed aperture magnitude vector (one per aperture diameter)",
    "MAGERR_APER": "RMS error vector for fixed aperture magnitudes",
    "FLUX_APER": "Flux vector within fixed circular apertures (image units)",
    "FLUXERR_APER": "RMS error vector for aperture fluxes",
    "MAG_AUTO": "Kron-like elliptical aperture magnitude",
    "MAGERR_AUTO": "RMS error for AUTO magnitude",
    "FLUX_AUTO": "Flux within a Kron-like elliptical aperture (detection-band ellipse)",
    "FLUXERR_AUTO": "RMS error for AUTO flux",
    "MAG_BEST": "Best of MAG_AUTO and MAG_ISOCOR",
    "MAGERR_BEST": "RMS error for MAG_BEST",
    "MAG_ISO": "Isophotal magnitude (detection-band footprint)",
    "MAGERR_ISO": "RMS error for isophotal magnitude",
    "FLUX_ISO": "Isophotal flux (sum over the detection-band footprint)",
    "FLUXERR_ISO": "RMS error for isophotal flux",
    "KRON_RADIUS": "Kron apertures in units of A or B (measured on the detection image)",
    "FLUX_RADIUS": "Fraction-of-light radius (PHOT_FLUXFRAC)",
    "FWHM_IMAGE": "FWHM assuming a gaussian core",
    "CLASS_STAR": "S/G classifier output (1 = star-like)",
    "SNR_WIN": "Gaussian-weighted signal-to-noise ratio",
    "XWIN_IMAGE": "Windowed position estimate along x (1-based pixels)",
    "YWIN_IMAGE": "Windowed position estimate along y (1-based pixels)",
    "ELONGATION": "A_IMAGE/B_IMAGE",
    "THETA_IMAGE": "Position angle (CCW/x)",
    "A_IMAGE": "Profile RMS along major axis",
    "B_IMAGE": "Profile RMS along minor axis",
    "FLAGS": "Extraction flags (SExtractor bits: 1 crowded, 2 deblended, 4 saturated, "
             "8 truncated, 16 aperture data incomplete, 32 isophotal data incomplete, "
             "64 deblending overflow, 128 extraction overflow)",
    "ISOAREA_IMAGE": "Isophotal area above analysis threshold",
    "ISOAREAF_IMAGE": "Isophotal area (filtered) above detection threshold",
    "XMIN_IMAGE": "Minimum x-coordinate among detected pixels",
    "XMAX_IMAGE": "Maximum x-coordinate among detected pixels",
    "YMIN_IMAGE": "Minimum y-coordinate among detected pixels",
    "YMAX_IMAGE": "Maximum y-coordinate among detected pixels",
}

_JOIN_FORMAT = 1


def describe_column(name: str, bands: Sequence[str] = ()) -> str:
    """Description of a joined-catalogue column (``FLUX_APER_F444W`` -> ``"F444W: Flux ..."``)."""
    if name in COLUMN_DESCRIPTIONS:
        return COLUMN_DESCRIPTIONS[name]
    for band in sorted(bands, key=len, reverse=True):
        suffix = f"_{band}"
        if name.endswith(suffix) and name[: -len(suffix)]:
            base = name[: -len(suffix)]
            return f"{band}: {COLUMN_DESCRIPTIONS.get(base, f'SExtractor {base}')}"
    return f"SExtractor {name}"


def _sorted_by_number(cat: Table, filt: str) -> Table:
    if "NUMBER" not in cat.colnames:
        raise ValueError(f"catalogue of {filt} has no NUMBER column")
    number = np.asarray(cat["NUMBER"])
    if len(np.unique(number)) != len(number):
        raise ValueError(f"catalogue of {filt} has repeated NUMBER values")
    return cat[np.argsort(number, kind="stable")]


def _same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return False
    if a.dtype.kind == "f":
        return bool(np.array_equal(a, b, equal_nan=True))
    return bool(np.array_equal(a, b))


def join_forced(cats: Mapping[str, Table], *, shared: Sequence[str] = SHARED_COLUMNS) -> Table:
    """Join per-band forced catalogues by ``NUMBER``.

    Parameters
    ----------
    cats : mapping
        Filter name -> that band's forced catalogue (any row order), in the
        column order wanted for the bands (usually wavelength order).
    shared : sequence of str
        Columns kept once without suffix; they must be identical in every
        band (same detection).

    Returns
    -------
    `~astropy.table.Table`
        See the module docstring for the naming scheme.

    Raises
    ------
    ValueError
        When the bands do not have the same set of ``NUMBER`` values, or a
        shared column differs between bands (catalogues of different
        detections).
    """
    if not cats:
        raise ValueError("join_forced needs at least one catalogue")
    items = [(f, _sorted_by_number(c, f)) for f, c in cats.items()]
    ref_filt, ref = items[0]
    number = np.asarray(ref["NUMBER"])
    for filt, cat in items[1:]:
        if not _same(cat["NUMBER"], number):
            raise ValueError(f"catalogues of {ref_filt} and {filt} do not have the same objects "
                             "(NUMBER values differ): were they made with the same detection band?")
    out = Table(meta={})
    for name in shared:
        if name not in ref.colnames:
            continue
        for filt, cat in items[1:]:
            if name in cat.colnames and not _same(cat[name], ref[name]):
                raise ValueError(f"column {name} differs between {ref_filt} and {filt}: the "
                                 "catalogues do not share one detection")
        out[name] = ref[name]
    for filt, cat in items:
        for name in cat.colnames:
            if name in shared:
                continue
            new = f"{name}_{filt}"
            out[new] = cat[name]
            out[new].description = describe_column(new, [filt])
    for name in out.colnames:
        if name in shared:
            out[name].description = describe_column(name)
    return out


def multiband_fileset(work_dir, instruments: Sequence[str], version: str, survey: str,
                      weight_type: str, det_filt: str, key_sha: str) -> FileSet:
    """Where the joined catalogue of a detection lives (``..._multiband_cat.fits`` + README)."""
    instrument = "+".join(dict.fromkeys(instruments))
    directory = Path(work_dir) / instrument / version / survey / weight_type / "forced_phot"
    return FileSet(directory, f"{survey}_{det_filt}_{key_sha[:10]}_multiband",
                   {"cat": "_cat.fits", "readme": "_README.txt"}, "multiband_catalog")


def multiband_key(band_keys: Mapping[str, str], det_filt: str) -> str:
    """Key of a joined catalogue: its bands' forced-catalogue keys, in order."""
    text = json.dumps({"format": _JOIN_FORMAT, "detection": det_filt,
                       "bands": [[f, k] for f, k in band_keys.items()],
                       "shared": list(SHARED_COLUMNS)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _unit(col) -> str:
    unit = getattr(col, "unit", None)
    return "" if unit is None else unit.to_string()


def _readme(table: Table, bands: list[dict], det: dict, cat_name: str) -> str:
    lines = [
        f"galseg multi-band catalogue: {cat_name}",
        "",
        f"Detection band: {det['filt']}" + (f" (stack of {', '.join(det['stack_of'])})"
                                              if det.get("stack_of") else ""),
        f"Objects: {len(table)} (one row per detection, sorted by NUMBER)",
        "",
        "Forced photometry (SExtractor dual-image mode): every band is measured with the",
        "detection band's segmentation map, positions and Kron ellipses; fluxes and errors",
        "come from that band's own pixels and noise map.",
        "",
        "Column naming: the detection columns " + ", ".join(SHARED_COLUMNS),
        "appear once without suffix (identical in every band). Every other column appears",
        "once per band as {COLUMN}_{FILTER}, e.g. FLUX_APER_F444W. Aperture columns are",
        "(N, naper) arrays, one entry per aperture diameter below. Fluxes are in each band's",
        "image units; magnitudes are AB with the band's zero point (99 = no positive flux).",
        "",
        "Bands:",
    ]
    for b in bands:
        zp = "unknown" if b.get("zp") is None else f"{b['zp']:.4f}"
        diam = ", ".join(f"{d:g}" for d in b["aper_diams_arcsec"])
        pix = ", ".join(f"{d:.3f}" for d in b["aper_diams_pix"])
        lines.append(f"  {b['filt']}: zero point {zp}; apertures {diam} arcsec ({pix} px); "
                     f"forced catalogue {b['cat_name']}")
    lines += ["", "Columns (name, unit, shape, description):"]
    width = max(len(n) for n in table.colnames)
    for name in table.colnames:
        col = table[name]
        shape = "x".join(str(s) for s in col.shape[1:]) or "1"
        lines.append(f"  {name:<{width}}  {_unit(col) or '-':<8}  {shape:<3}  "
                     f"{col.description or ''}")
    return "\n".join(lines) + "\n"


def write_multiband(fs: FileSet, key_sha: str, table: Table, bands: list[dict],
                    det: dict) -> None:
    """Write the joined catalogue (FITS with TCOMMn descriptions) and its README atomically."""
    cards = [(f"TCOMM{i}", table[name].description[:68])
             for i, name in enumerate(table.colnames, start=1) if table[name].description]
    cards += [("DETBAND", det["filt"], "detection band"),
              ("NBANDS", len(bands), "number of measured bands")]
    for i, b in enumerate(bands, start=1):
        cards.append((f"BAND{i}", b["filt"], "measured band (column suffix)"))
        if b.get("zp") is not None:
            cards.append((f"HIERARCH ZP_{b['filt']}", float(b["zp"]), "AB zero point"))
    cards += [(f"APER{i}", float(d), "aperture diameter [arcsec]")
              for i, d in enumerate(bands[0]["aper_diams_arcsec"], start=1)]
    cards.append(("JOINKEY", "NUMBER", "per-band catalogues joined on this column"))
    data = table_file_bytes(table, cards=cards)
    readme = _readme(table, bands, det, fs.path("cat").name)
    fs.begin()
    written = {"cat": atomic_write_bytes(data, fs.path("cat"), sha256=True),
               "readme": atomic_write_bytes(readme.encode("utf-8"), fs.path("readme"),
                                            sha256=True)}
    fs.commit(key_sha, written, {"detection": det["filt"], "nobj": len(table),
                                 "bands": [b["filt"] for b in bands]})


def multiband_catalog(bands: Sequence, forced, err_type: str = "rms_err", *,
                      overwrite: bool = False) -> Path:
    """Join the forced catalogues of `perform_forced_phot` into the cached multi-band catalogue.

    Parameters
    ----------
    bands : sequence of `Band_Data`
        The measured bands, in the order of the catalogue's column groups.
    forced : `~galseg.pipeline.forced.ForcedPhotResult`
    err_type : {"rms_err", "wht"}
    overwrite : bool
        Rewrite even when a valid joined catalogue exists.

    Returns
    -------
    Path
        The joined catalogue (its README is next to it, ``..._README.txt``).
    """
    from .band import WEIGHT_TYPES
    from .forced import read_catalog

    bands = list(bands)
    rows = {r["filt"]: r for r in forced.rows}
    missing = [b.filt for b in bands if b.filt not in rows]
    if missing:
        raise ValueError(f"no forced catalogue for {', '.join(missing)}")
    det = forced.det_band
    key_sha = multiband_key({b.filt: rows[b.filt]["key"] for b in bands}, det.filt)
    first = bands[0]
    fs = multiband_fileset(first.work_dir, [b.instrument for b in bands], first.version,
                           first.survey, WEIGHT_TYPES[err_type], det.filt, key_sha)
    if not overwrite and fs.is_valid(key_sha):
        return fs.path("cat")
    with fs.lock():
        if overwrite or not fs.is_valid(key_sha):
            cats, info = {}, []
            for b in bands:
                path = Path(rows[b.filt]["cat_path"])
                made = forced.tables.pop(b.filt, None)  # just written: no need to read back
                cats[b.filt] = made if made is not None else read_catalog(path)
                sc = FileSet(path.parent, path.name[: -len("_cat.fits")], {"cat": "_cat.fits"},
                             "forced_catalog").info
                info.append({"filt": b.filt, "zp": b.zp, "cat_name": path.name,
                             "aper_diams_arcsec": sc.get("aper_diams_arcsec", []),
                             "aper_diams_pix": sc.get("aper_diams_pix", [])})
            table = join_forced(cats)
            write_multiband(fs, key_sha, table, info,
                            {"filt": det.filt, "stack_of": getattr(det, "stack_of", None)})
    return fs.path("cat")
