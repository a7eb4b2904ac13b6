"""``method="sextractor"``: run the SExtractor 2.25 binary as a backend.

The arrays are written as uncompressed float32 FITS files into a private
folder together with the ``.sex``, ``.param``, ``.conv`` and ``.nnw`` files, and
SExtractor runs there (argument list, no shell).  It is asked for a ``FITS_1.0``
catalogue and the ``SEGMENTATION`` and ``BACKGROUND`` check images, which come
back as an `~galseg.extract.result.ExtractionResult`.

Segmentation labels and ``NUMBER``
----------------------------------
SExtractor 2.25 paints each object into the segmentation check image with a
provisional number (``++ndetect`` in ``analyse.c:analyse``) and, when the object
leaves the cleaning stack and is written to the catalogue, renames the pixels
equal to that provisional number *inside the object's bounding box* to its
final ``NUMBER`` (``++ntotal``, ``analyse.c:endobject``); discarded objects
rename theirs to 0 and CLEAN merges rename the slave's to the master's number
(``clean.c:mergeobject``), all in place.  Provisional and final numbers share
one range, so when an object B is written after an object A whose final number
equals B's provisional number, B's renaming also takes A's pixels inside B's
bounding box (and a discarded object's clean-up can erase them).  The
catalogue is unaffected; the map then has A's label short of pixels and B's
with extra ones (astromatic/sextractor issue #66).  On the KiDS/VIKING test
tiles this hits one or two deblended pairs in about one run in six; on the
XDF and sep test images it did not occur.

The backend checks every object: its label must cover exactly
``ISOAREAF_IMAGE`` pixels (SExtractor paints an object's detection pixels,
which is what ``ISOAREAF_IMAGE`` counts; they agreed for every unaffected
object of every test run) with the catalogue's ``XMIN_IMAGE``..``YMAX_IMAGE``
bounding box (these columns are requested internally and dropped again unless
the ``.param`` asked for them).  When all agree, ``NUMBER == label`` for every
object and ``meta["segmap_numbers"]`` is ``"consistent"``.  Otherwise the map
is repaired only when it can be done faithfully: for each object short of
pixels, the pixels in its bounding box that carry an over-full label must be
exactly as many as it lacks, and afterwards every object must match its count
and box (``"repaired"``, ``meta["segmap_repaired"]``).  In the usual case the
over-full neighbour also has pixels of its own in that box, the split is not
determined by the catalogue, and the map is returned as SExtractor wrote it with
``meta["segmap_numbers"] = "inconsistent"`` and the affected ``NUMBER`` values
in ``meta["segmap_inconsistent"]``.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning
from astropy.table import Table
from astropy.utils.exceptions import AstropyUserWarning
from scipy import ndimage

from ..params import Params
from ..presets import filter_path, load_config, nnw_path, param_path
from ..result import ExtractionResult
from ..sexfiles import APERTURE_COLUMNS, _parse_param_entry, read_param, write_sex

__all__ = ["find_binary", "sextractor_version", "run"]

_BINARIES = ("source-extractor", "sex")
_BBOX = ("XMIN_IMAGE", "XMAX_IMAGE", "YMIN_IMAGE", "YMAX_IMAGE")
# Header keywords that describe the data array itself: they must come from the
# array we write, never from the caller's header.
_STRUCTURAL = {
    "SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "EXTEND",
    "BSCALE", "BZERO", "BLANK", "PCOUNT", "GCOUNT", "XTENSION", "TFIELDS",
    "CHECKSUM", "DATASUM", "ZIMAGE", "ZBITPIX", "ZNAXIS", "ZNAXIS1", "ZNAXIS2",
    "ZTILE1", "ZTILE2", "ZCMPTYPE", "ZNAME1", "ZVAL1", "ZNAME2", "ZVAL2",
    "ZQUANTIZ", "ZDITHER0", "ZSIMPLE", "ZEXTEND", "ZTENSION", "ZPCOUNT", "ZGCOUNT",
}
_WCS_KEY = re.compile(
    r"^(WCSAXES|CTYPE|CRPIX|CRVAL|CDELT|CUNIT|CROTA|CD\d_\d|PC\d_\d|PV\d_\d|PS\d_\d"
    r"|LONPOLE|LATPOLE|RADESYS|EQUINOX|EPOCH|A_|B_|AP_|BP_)"
)
_WEIGHT_INPUT = {"MAP_RMS": "rms", "MAP_WEIGHT": "wht", "MAP_VAR": "var"}


def find_binary() -> str:
    """Path of the SExtractor executable (``source-extractor`` or ``sex``).

    Raises
    ------
    FileNotFoundError
        If neither is on ``PATH``.
    """
    for name in _BINARIES:
        found = shutil.which(name)
        if found:
            return found
    raise FileNotFoundError(
        "SExtractor not found: neither 'source-extractor' nor 'sex' is on PATH "
        "(install it, e.g. `apt-get install source-extractor`, to use method='sextractor')"
    )


def sextractor_version(binary: str | None = None) -> str:
    """The version string of the SExtractor binary, e.g. ``"2.25.0"``."""
    binary = binary or find_binary()
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
    text = (out.stdout + out.stderr).strip()
    for word in text.split():
        if word[:1].isdigit() and "." in word:
            return word
    return text


def _image_header(header, wcs) -> fits.Header:
    """A header for a written image: the caller's cards (minus structural ones) + WCS."""
    # Real headers carry non-standard cards (e.g. ESO-LOG); SExtractor ignores
    # them and so do we, without astropy's verification chatter.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VerifyWarning)
        warnings.simplefilter("ignore", AstropyUserWarning)
        return _image_header_cards(header, wcs)


def _image_header_cards(header, wcs) -> fits.Header:
    out = fits.Header()
    if header is not None:
        src = header if isinstance(header, fits.Header) else fits.Header(dict(header))
        for card in src.cards:
            key = card.keyword
            if key in _STRUCTURAL or key in ("", "COMMENT", "HISTORY"):
                continue
            # An explicit wcs replaces the header's own, wholesale (mixing a
            # CD matrix from one with a PC matrix from the other would be wrong).
            if wcs is not None and _WCS_KEY.match(key):
                continue
            out.append(card, end=True)
    if wcs is not None:
        out.update(wcs.to_header(relax=True))
    return out


def _write_image(path: Path, data, header: fits.Header) -> None:
    arr = np.ascontiguousarray(data, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"{path.name}: images must be 2-D, got shape {arr.shape}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VerifyWarning)
        warnings.simplefilter("ignore", AstropyUserWarning)
        fits.PrimaryHDU(arr, header=header).writeto(
            path, overwrite=True, output_verify="silentfix+ignore"
        )


def _param_entries(param_file, naper: int) -> tuple[list[str], list[str]]:
    """(entries to write, column names the caller asked for)."""
    entries = read_param(param_file if param_file is not None else param_path("galseg"))
    names: list[str] = []
    sizes: dict[str, tuple[int, ...]] = {}
    for i, entry in enumerate(entries):
        name, shape = _parse_param_entry(entry, f"{param_file}: entry {i}")
        if name not in sizes:
            names.append(name)
        sizes[name] = (naper,) if name in APERTURE_COLUMNS else shape
    wanted = list(names)
    for extra in ("NUMBER", "ISOAREAF_IMAGE", *_BBOX):
        if extra not in sizes:
            names.append(extra)
            sizes[extra] = ()
    out = []
    for name in names:
        shape = sizes[name]
        out.append(f"{name}({','.join(str(n) for n in shape)})" if shape else name)
    return out, wanted


def _read_catalog(path: Path) -> Table:
    with fits.open(path) as hdul:
        hdu = next(h for h in hdul if isinstance(h, fits.BinTableHDU))
        cat = Table(hdu.data.copy())
        units = {}
        for i, col in enumerate(hdu.columns):
            if col.unit:
                units[col.name] = col.unit
    for name in cat.colnames:
        col = cat[name]
        if col.dtype.byteorder not in ("=", "|"):
            cat[name] = col.astype(col.dtype.newbyteorder("="))
        if name in units:
            cat[name].unit = u.Unit(units[name], parse_strict="silent")
    return cat


def _read_check(path: Path, dtype) -> np.ndarray:
    with fits.open(path, memmap=False) as hdul:
        return np.ascontiguousarray(hdul[0].data, dtype=dtype)


def _label_stats(seg: np.ndarray, maxlab: int):
    """Pixel count and FITS (1-based) bounding box of every label 1..maxlab."""
    npix = np.bincount(seg.ravel(), minlength=maxlab + 1)[: maxlab + 1]
    box = np.zeros((maxlab + 1, 4), dtype=np.int64)  # xmin, xmax, ymin, ymax
    for lab, sl in enumerate(ndimage.find_objects(seg, max_label=maxlab), start=1):
        if sl is not None:
            box[lab] = (sl[1].start + 1, sl[1].stop, sl[0].start + 1, sl[0].stop)
    return npix, box


def _consistency(seg, number, area, catbox, maxlab):
    """Per-object agreement of the map with the catalogue, and orphan labels."""
    npix, box = _label_stats(seg, maxlab)
    ok = (npix[number] == area) & np.all(box[number] == catbox, axis=1)
    orphans = np.setdiff1d(np.flatnonzero(npix[1:]) + 1, number)
    return ok, orphans, npix


def _check_segmap(seg: np.ndarray, cat: Table) -> tuple[np.ndarray, dict[str, Any]]:
    """Make ``label == NUMBER`` where SExtractor's map can be repaired faithfully.

    Each object's label must cover exactly ``ISOAREAF_IMAGE`` pixels (the
    object's detection pixels, which is what SExtractor paints) and have the
    catalogue's ``XMIN_IMAGE``..``YMAX_IMAGE`` bounding box.  Objects that lost
    pixels to a neighbour's label (the renaming bug, see the module docstring)
    get them back when, for each such object, the pixels inside its bounding box
    carrying an over-full or orphan label are exactly as many as it lost; the
    result must then satisfy the count and box of every object, else the map
    is returned unchanged and reported ``"inconsistent"``.
    """
    info: dict[str, Any] = {"segmap_numbers": "consistent"}
    if len(cat) == 0:
        if seg.any():
            info["segmap_numbers"] = "inconsistent"
            info["segmap_inconsistent"] = []
        return seg, info
    number = np.asarray(cat["NUMBER"], dtype=np.int64)
    area = np.asarray(cat["ISOAREAF_IMAGE"], dtype=np.int64)
    catbox = np.stack(
        [np.asarray(cat[k], dtype=np.int64) for k in _BBOX], axis=1
    )
    maxlab = int(max(seg.max(initial=0), number.max()))
    ok, orphans, npix = _consistency(seg, number, area, catbox, maxlab)
    if ok.all() and orphans.size == 0:
        return seg, info

    fixed = seg.copy()
    deficit = np.flatnonzero(npix[number] < area)
    surplus = set(number[npix[number] > area].tolist()) | set(orphans.tolist())
    taken = np.zeros(maxlab + 1, dtype=np.int64)
    claimed = np.zeros(seg.shape, dtype=bool)
    feasible = bool(surplus) and deficit.size > 0
    for i in deficit if feasible else ():
        x0, x1, y0, y1 = catbox[i] - np.array([1, 0, 1, 0])
        sub = seg[y0:y1, x0:x1]
        cand = np.isin(sub, list(surplus)) & ~claimed[y0:y1, x0:x1]
        if int(cand.sum()) != area[i] - npix[number[i]]:
            feasible = False
            break
        taken += np.bincount(sub[cand], minlength=maxlab + 1)
        claimed[y0:y1, x0:x1] |= cand
        fixed[y0:y1, x0:x1][cand] = number[i]
    if feasible:
        ok2, orphans2, _ = _consistency(fixed, number, area, catbox, maxlab)
        if ok2.all() and orphans2.size == 0:
            info["segmap_numbers"] = "repaired"
            info["segmap_repaired"] = sorted(int(v) for v in number[~ok])
            return fixed, info
    info["segmap_numbers"] = "inconsistent"
    info["segmap_inconsistent"] = sorted(int(v) for v in number[~ok])
    if orphans.size:
        info["segmap_orphan_labels"] = [int(v) for v in orphans]
    return seg, info


@contextlib.contextmanager
def _run_folder(workdir, prefix: str):
    """A folder for one SExtractor run: ``workdir`` (kept) or a temporary one (removed)."""
    if workdir is not None:
        work = Path(workdir)
        work.mkdir(parents=True, exist_ok=True)
        yield work
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


def _write_run_files(work: Path, params: Params, entries, changes: dict[str, Any]) -> None:
    """Write ``run.sex`` (params + ``changes``), ``run.param`` and the kernel and network
    files it names into ``work``, so that the run depends on nothing outside it."""
    changes = dict(changes, CATALOG_NAME="cat.fits", CATALOG_TYPE="FITS_1.0",
                   PARAMETERS_NAME="run.param", WRITE_XML=False, VERBOSE_TYPE="QUIET",
                   XSL_URL="")
    fpath = filter_path(params)
    if fpath is not None:
        shutil.copyfile(fpath, work / "filter.conv")
        changes["FILTER_NAME"] = "filter.conv"
    shutil.copyfile(nnw_path(params), work / "star.nnw")
    changes["STARNNW_NAME"] = "star.nnw"
    write_sex(params.replace(changes), work / "run.sex")
    (work / "run.param").write_text("\n".join(entries) + "\n")


def _execute(command: list[str], work: Path, products) -> tuple[float, str]:
    """Run SExtractor (no shell) in ``work``; a clear error unless ``products`` appear.

    Returns the wall time in seconds and SExtractor's stderr (its warnings).
    """
    t0 = time.perf_counter()
    proc = subprocess.run(command, cwd=work, capture_output=True, text=True, errors="replace",
                          check=False)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0 or not all((work / p).is_file() for p in products):
        raise RuntimeError(
            f"SExtractor failed (exit status {proc.returncode}) running "
            f"{' '.join(command)} in {work}:\n{proc.stderr.strip() or proc.stdout.strip()}"
        )
    return elapsed, proc.stderr


def run(
    sci,
    *,
    rms=None,
    wht=None,
    var=None,
    params,
    header=None,
    wcs=None,
    workdir=None,
    param_file=None,
    binary: str | None = None,
) -> ExtractionResult:
    """Extract sources by running the SExtractor binary.

    Parameters
    ----------
    sci : 2-D array
        Science image (any float or integer dtype; not modified).
    rms, wht, var : 2-D array, optional
        Error maps; the one used follows ``params["WEIGHT_TYPE"]``
        (``MAP_RMS`` -> ``rms``, ``MAP_WEIGHT`` -> ``wht``, ``MAP_VAR`` ->
        ``var``; ``NONE`` and ``BACKGROUND`` use none).
    params : Params, preset name, .sex path or mapping
        SExtractor parameters (passed through `~galseg.extract.presets.load_config`).
        ``CATALOG_*``, ``CHECKIMAGE_*``, ``PARAMETERS_NAME``, ``WEIGHT_IMAGE``,
        ``WRITE_XML`` and ``VERBOSE_TYPE`` are set by this function.
    header : `~astropy.io.fits.Header` or mapping, optional
        Cards written into the image headers.  SExtractor reads the gain and
        saturation level from the ``GAIN_KEY`` / ``SATUR_KEY`` cards when
        present, in preference to ``GAIN`` / ``SATUR_LEVEL``.
    wcs : `~astropy.wcs.WCS`, optional
        Written into the headers (for ``ALPHA_J2000`` etc.).
    workdir : path-like, optional
        Folder to write the run's files into and keep (created if needed).
        By default a temporary folder is used and removed.
    param_file : path-like, optional
        ``.param`` file of output columns (default: galseg's
        ``configs/galseg.param``).  Aperture columns are sized to the number
        of ``PHOT_APERTURES``.
    binary : str, optional
        SExtractor executable (default: :func:`find_binary`).

    Returns
    -------
    ExtractionResult
        ``segmap`` (int32), ``background`` (float32, SExtractor's BACKGROUND
        check image), ``catalog`` (astropy Table with the ``.param`` columns
        and their FITS units), ``rms=None`` and ``meta`` with ``method``,
        ``version``, ``command``, ``weight_type``, ``nobj``, ``elapsed_s`` and
        the segmentation-map check (see the module docstring).

    Raises
    ------
    ValueError
        If the error map that ``WEIGHT_TYPE`` needs is missing, or shapes differ.
    RuntimeError
        If SExtractor fails (the message includes its stderr).
    FileNotFoundError
        If SExtractor, the filter or the NNW file cannot be found.
    """
    binary = binary or find_binary()
    params = load_config(params)
    sci = np.asarray(sci)
    if sci.ndim != 2:
        raise ValueError(f"sci must be a 2-D image, got shape {sci.shape}")

    weight_types = params["WEIGHT_TYPE"] or ("NONE",)
    weight_type = weight_types[0].upper()
    maps = {"rms": rms, "wht": wht, "var": var}
    weight = None
    if weight_type in _WEIGHT_INPUT:
        key = _WEIGHT_INPUT[weight_type]
        weight = maps[key]
        if weight is None:
            raise ValueError(
                f"WEIGHT_TYPE {weight_type} needs the {key!r} error map, which was not given"
            )
        weight = np.asarray(weight)
        if weight.shape != sci.shape:
            raise ValueError(
                f"{key} map shape {weight.shape} differs from sci shape {sci.shape}"
            )
    elif weight_type not in ("NONE", "BACKGROUND"):
        raise ValueError(f"unsupported WEIGHT_TYPE {weight_type!r}")

    naper = len(params["PHOT_APERTURES"])
    entries, wanted = _param_entries(param_file, naper)

    with _run_folder(workdir, "galseg_sex_") as work:
        hdr = _image_header(header, wcs)
        _write_image(work / "sci.fits", sci, hdr)
        changes: dict[str, Any] = {
            "CHECKIMAGE_TYPE": ("SEGMENTATION", "BACKGROUND"),
            "CHECKIMAGE_NAME": ("seg.fits", "bkg.fits"),
        }
        if weight is not None:
            _write_image(work / "weight.fits", weight, hdr)
            changes["WEIGHT_IMAGE"] = ("weight.fits",)
            changes["WEIGHT_TYPE"] = (weight_type,)
        _write_run_files(work, params, entries, changes)
        command = [binary, "sci.fits", "-c", "run.sex"]
        elapsed, stderr = _execute(command, work, ("cat.fits", "seg.fits", "bkg.fits"))
        # SExtractor copies the input header (non-standard cards included)
        # into its outputs.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", VerifyWarning)
            warnings.simplefilter("ignore", AstropyUserWarning)
            cat = _read_catalog(work / "cat.fits")
            seg = _read_check(work / "seg.fits", np.int32)
            bkg = _read_check(work / "bkg.fits", np.float32)

    seg, seginfo = _check_segmap(seg, cat)
    seg = np.ascontiguousarray(seg, dtype=np.int32)
    dropped = [c for c in cat.colnames if c not in wanted]
    if dropped:
        cat.remove_columns(dropped)

    meta: dict[str, Any] = {
        "method": "sextractor",
        "binary": binary,
        "version": sextractor_version(binary),
        "command": command,
        "weight_type": weight_type,
        "nobj": len(cat),
        "elapsed_s": round(elapsed, 4),
        "workdir": None if workdir is None else str(work),
        **seginfo,
    }
    for key, kw in (("header_gain", params["GAIN_KEY"]), ("header_satur", params["SATUR_KEY"])):
        if kw and kw in hdr:
            meta[key] = float(hdr[kw])
    warnings_text = [line.strip() for line in stderr.splitlines() if "WARNING" in line.upper()]
    if warnings_text:
        meta["warnings"] = warnings_text
    return ExtractionResult(segmap=seg, background=bkg, catalog=cat, rms=None, meta=meta)


def run_dual(det_sci, det_weight, sci, weight, *, params: Params, weight_type: str,
             det_header=None, header=None, det_wcs=None, wcs=None, workdir=None,
             param_file=None, binary: str | None = None) -> Table:
    """SExtractor 2.25 in dual-image mode: detect on ``det_sci``, measure ``sci``.

    ``source-extractor det.fits,meas.fits -c run.sex`` with ``WEIGHT_TYPE``
    given for both images (``WEIGHT_IMAGE det_w.fits,meas_w.fits``), as galfind
    runs forced photometry.  Images are written as uncompressed float32 FITS
    into ``workdir`` (a temporary folder by default).

    Returns
    -------
    `~astropy.table.Table`
        SExtractor's catalogue (FITS units kept), restricted to the columns of
        ``param_file`` (default galseg's ``galseg.param``).
    """
    binary = binary or find_binary()
    entries, wanted = _param_entries(param_file, len(params["PHOT_APERTURES"]))
    with _run_folder(workdir, "galseg_dual_") as work:
        for name, image, wmap, hdr, w in (("det", det_sci, det_weight, det_header, det_wcs),
                                          ("meas", sci, weight, header, wcs)):
            h = _image_header(hdr, w)
            _write_image(work / f"{name}.fits", image, h)
            _write_image(work / f"{name}_w.fits", wmap, h)
        _write_run_files(work, params, entries, {
            "CHECKIMAGE_TYPE": ("NONE",), "WEIGHT_TYPE": (weight_type, weight_type),
            "WEIGHT_IMAGE": ("det_w.fits", "meas_w.fits")})
        _execute([binary, "det.fits,meas.fits", "-c", "run.sex"], work, ("cat.fits",))
        cat = _read_catalog(work / "cat.fits")
    drop = [c for c in cat.colnames if c not in wanted]
    if drop:
        cat.remove_columns(drop)
    return cat
