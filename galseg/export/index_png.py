"""Index-PNG segmentation with a JSON list of segments (one per instance).

Files
-----
``<stem>.png`` (or ``<stem>_tXXX_YYY.png`` tiles) holds small integers, one
per segment: 0 is sky, value ``v`` is the ``v``-th segment present in that
PNG (ordered by NUMBER).  ``<stem>.json`` maps values to catalogue NUMBERs
and lists each segment once with a label and its catalogue metadata::

    {"format": "galseg-index-png", "format_version": 1,
     "shape": [ny, nx], "flipped_vertically": true,
     "tiles": [{"file": "x.png", "x0": 0, "y0": 0, "width": nx, "height": ny,
                "bit_depth": 8, "png_mode": "L", "numbers": [1, 2, ...]}],
     "segments": [{"number": 1, "value": 1, "label": "galaxy", "class_star": 0.03,
                   "flux_auto": ..., "mag_auto": ..., "flags": 0, ...}], ...}

In tile ``t``, pixel value ``v > 0`` is segment ``tiles[t]["numbers"][v - 1]``.
A PNG holding at most 255 segments is 8-bit (mode ``"L"``), at most 65535
16-bit (mode ``"I;16"``); when even that is not enough the map is cut into a
grid of tiles, each with its own values and bit depth, halving the tile
size until every tile fits.  ``"value"`` in a segment entry is given only
when there is a single PNG.

Rows are stored top-down as image viewers show them: PNG row 0 is image row
``ny - 1`` (``flipped_vertically``), so the PNG looks like ds9 or
``imshow(origin="lower")``.  `read_index_png` undoes all of this and returns
the segmentation map (values = NUMBER) exactly.

Label rule
----------
``"star"`` if ``CLASS_STAR >= star_threshold`` (default 0.8), ``"galaxy"`` if
below, ``"unknown"`` if CLASS_STAR is missing or NaN.  CLASS_STAR is
SExtractor's neural-network stellarity (1 = point source).  0.8 is a common
cut in the literature; stricter ones (0.9, 0.95) lose real stars when
``SEEING_FWHM`` does not match the PSF -- the saturated star of the XDF demo
scores 0.82-0.84 with galfind's configuration, in SExtractor as in galseg.
For faint sources (S/N below ~10-20) CLASS_STAR drifts towards 0.5 and the
label is unreliable; filter on ``snr_win`` or ``mag_auto`` if that matters.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np

__all__ = ["DEFAULT_STAR_THRESHOLD", "read_index_png", "segment_records", "star_galaxy_label",
           "table_records", "write_index_png"]

DEFAULT_STAR_THRESHOLD = 0.8
_MAX_16BIT = 65535

# catalogue column -> JSON key, copied into each segment when present
_META_COLUMNS = {
    "X_IMAGE": "x_image", "Y_IMAGE": "y_image", "ALPHA_J2000": "ra", "DELTA_J2000": "dec",
    "FLUX_AUTO": "flux_auto", "FLUXERR_AUTO": "fluxerr_auto", "MAG_AUTO": "mag_auto",
    "MAGERR_AUTO": "magerr_auto", "FLUX_ISO": "flux_iso", "MAG_ISO": "mag_iso",
    "FLUX_APER": "flux_aper", "MAG_APER": "mag_aper", "CLASS_STAR": "class_star",
    "FLAGS": "flags", "ISOAREA_IMAGE": "isoarea_image", "A_IMAGE": "a_image",
    "B_IMAGE": "b_image", "THETA_IMAGE": "theta_image", "KRON_RADIUS": "kron_radius",
    "FLUX_RADIUS": "flux_radius", "SNR_WIN": "snr_win",
}


def _column_values(col) -> list:
    """A table column as JSON-able Python values: NaN/inf -> None, vector cells -> lists."""
    arr = np.asarray(col)
    if arr.dtype.kind == "S":
        arr = np.char.decode(arr)
    if arr.dtype.kind == "f":
        obj = arr.astype(object)
        obj[~np.isfinite(arr)] = None
        return obj.tolist()
    return arr.tolist()


def table_records(cat, columns=None, names=None) -> list[dict]:
    """Rows of ``cat`` as dicts (column-wise conversion: no per-cell numpy work)."""
    columns = list(cat.colnames) if columns is None else list(columns)
    names = columns if names is None else list(names)
    values = [_column_values(cat[c]) for c in columns]
    return [dict(zip(names, row)) for row in zip(*values)] if values else [{} for _ in range(len(cat))]


def star_galaxy_label(class_star, threshold=DEFAULT_STAR_THRESHOLD) -> np.ndarray:
    """``"star"``, ``"galaxy"`` or ``"unknown"`` per source (see the module notes)."""
    cs = np.asarray(class_star, dtype=float)
    return np.where(~np.isfinite(cs), "unknown", np.where(cs >= threshold, "star", "galaxy"))


def segment_records(band, star_threshold=DEFAULT_STAR_THRESHOLD, cat=None, seg=None) -> list[dict]:
    """One JSON-able dict per catalogue source: number, label, npix and metadata."""
    cat = band.load_cat() if cat is None else cat
    seg = band.load_seg() if seg is None else seg
    numbers = np.asarray(cat["NUMBER"], dtype=np.int64)
    npix = np.bincount(seg.ravel(), minlength=int(numbers.max(initial=0)) + 1)
    if "CLASS_STAR" in cat.colnames:
        labels = star_galaxy_label(cat["CLASS_STAR"], star_threshold)
    else:
        labels = np.full(len(cat), "unknown")
    present = [c for c in _META_COLUMNS if c in cat.colnames]
    meta = table_records(cat, present, [_META_COLUMNS[c] for c in present])
    records = []
    for num, label, extra in zip(numbers.tolist(), labels.tolist(), meta):
        rec = {"number": num, "label": str(label), "npix": int(npix[num])}
        rec.update(extra)
        records.append(rec)
    return records


def _tiles(seg, max_values):
    """``(y0, y1, x0, x1)`` tiles each holding at most ``max_values`` segments."""
    ny, nx = seg.shape

    def count(y0, y1, x0, x1):
        return np.count_nonzero(np.bincount(seg[y0:y1, x0:x1].ravel())[1:])

    if count(0, ny, 0, nx) <= max_values:
        return [(0, ny, 0, nx)]
    size = 1 << int(math.ceil(math.log2(max(ny, nx))))
    while size >= 1:
        size //= 2
        tiles = [(y0, min(y0 + size, ny), x0, min(x0 + size, nx))
                 for y0 in range(0, ny, size) for x0 in range(0, nx, size)]
        if all(count(*t) <= max_values for t in tiles):
            return tiles
    raise ValueError(f"cannot tile the segmentation map to {max_values} segments per PNG")


def _png_bytes(values: np.ndarray, bit_depth: int) -> tuple[bytes, str]:
    from PIL import Image

    arr = np.ascontiguousarray(values[::-1], dtype=np.uint8 if bit_depth == 8 else np.uint16)
    img = Image.fromarray(arr)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue(), img.mode


def write_index_png(band, path, *, star_threshold=DEFAULT_STAR_THRESHOLD,
                    max_values_per_png=_MAX_16BIT) -> dict:
    """Write the segmentation as index PNG(s) plus a JSON segment list.

    Parameters
    ----------
    band : `~galseg.Band_Data`
        A segmented band.
    path : path-like
        ``<stem>.png`` (or the stem, or ``<stem>.json``); the JSON goes next
        to it as ``<stem>.json``.
    star_threshold : float
        CLASS_STAR cut of the star/galaxy label.
    max_values_per_png : int
        At most this many segments per PNG (at most 65535, the 16-bit limit);
        more are tiled.  Lower it to force tiling.

    Returns
    -------
    dict
        The JSON document, plus ``"json_path"`` and ``"png_paths"``
        (``Path`` objects; not written to the file).
    """
    from ..io.atomic import atomic_write_bytes, atomic_write_json

    if not 1 <= int(max_values_per_png) <= _MAX_16BIT:
        raise ValueError(f"max_values_per_png must be in 1..{_MAX_16BIT}, got {max_values_per_png}")
    path = Path(path)
    stem = path.with_suffix("") if path.suffix.lower() in (".png", ".json") else path
    stem.parent.mkdir(parents=True, exist_ok=True)
    seg = band.load_seg()
    cat = band.load_cat()
    records = segment_records(band, star_threshold, cat=cat, seg=seg)
    tiles = _tiles(seg, int(max_values_per_png))
    tiled = len(tiles) > 1
    tile_docs, png_paths, files = [], [], []
    for y0, y1, x0, x1 in tiles:
        block = seg[y0:y1, x0:x1]
        # a lookup table from bincount: O(npix), unlike np.unique's sort
        counts = np.bincount(block.ravel())
        counts[0] = 0
        numbers = np.flatnonzero(counts)
        lut = np.zeros(len(counts), dtype=np.int64)
        lut[numbers] = np.arange(1, len(numbers) + 1)
        values = lut[block]
        bit_depth = 8 if len(numbers) <= 255 else 16
        data, mode = _png_bytes(values, bit_depth)
        name = f"{stem.name}_t{y0:05d}_{x0:05d}.png" if tiled else f"{stem.name}.png"
        files.append((stem.parent / name, data))
        tile_docs.append({"file": name, "x0": x0, "y0": y0, "width": x1 - x0, "height": y1 - y0,
                          "bit_depth": bit_depth, "png_mode": mode,
                          "numbers": [int(n) for n in numbers]})
    if not tiled:
        value_of = {n: v + 1 for v, n in enumerate(tile_docs[0]["numbers"])}
        for rec in records:
            rec["value"] = value_of.get(rec["number"], 0)
    doc = {
        "format": "galseg-index-png",
        "format_version": 1,
        "band": {"survey": band.survey, "version": band.version, "instrument": band.instrument,
                 "filter": band.filt, "image": str(band.im_path), "image_ext": str(band.im_ext),
                 "segmentation": str(band.seg_path) if band.seg_path else None,
                 "pixel_scale_arcsec": None if band.pix_scale is None
                 else float(band.pix_scale.to_value("arcsec")),
                 "zero_point": band.zp},
        "shape": [int(seg.shape[0]), int(seg.shape[1])],
        "background_value": 0,
        "flipped_vertically": True,
        "orientation": "PNG row 0 is image row ny-1 (as displayed by ds9 / imshow origin='lower'); "
                       "tile y0 counts image rows from the bottom, 0-based",
        "value_rule": "in tile t, pixel value v > 0 is segment tiles[t]['numbers'][v-1]; 0 is sky",
        "bit_depth_rule": "8-bit (mode L) for <= 255 segments in a PNG, 16-bit (mode I;16) for "
                          "<= 65535, more are tiled",
        "tiled": tiled,
        "tiles": tile_docs,
        "label_rule": {"field": "CLASS_STAR", "star_threshold": float(star_threshold),
                       "labels": {"star": f"CLASS_STAR >= {star_threshold:g}",
                                  "galaxy": f"CLASS_STAR < {star_threshold:g}",
                                  "unknown": "CLASS_STAR missing or NaN"}},
        "n_segments": len(records),
        "segments": records,
    }
    for file_path, data in files:
        atomic_write_bytes(data, file_path)
    json_path = stem.parent / f"{stem.name}.json"
    atomic_write_json(doc, json_path, indent=1)
    return dict(doc, json_path=json_path, png_paths=[p for p, _ in files])


def read_index_png(json_path, *, with_doc: bool = False):
    """Rebuild the segmentation map (values = NUMBER) from an index-PNG export.

    Parameters
    ----------
    json_path : path-like
        The ``.json`` written by `write_index_png` (or its ``.png``).
    with_doc : bool
        Also return the JSON document.

    Returns
    -------
    seg : ndarray of int32, shape ``doc["shape"]``
    """
    from PIL import Image

    json_path = Path(json_path)
    if json_path.suffix.lower() != ".json":
        json_path = json_path.with_suffix(".json")
    doc = json.loads(json_path.read_text())
    if doc.get("format") != "galseg-index-png":
        raise ValueError(f"{json_path} is not a galseg index-PNG description")
    seg = np.zeros(doc["shape"], dtype=np.int32)
    for tile in doc["tiles"]:
        with Image.open(json_path.parent / tile["file"]) as img:
            values = np.asarray(img).astype(np.int64)[::-1]
        if values.shape != (tile["height"], tile["width"]):
            raise ValueError(f"{tile['file']}: shape {values.shape} does not match its JSON entry")
        lut = np.concatenate([[0], np.asarray(tile["numbers"], dtype=np.int64)])
        if values.max(initial=0) >= len(lut):
            raise ValueError(f"{tile['file']}: pixel value {values.max()} has no segment in the JSON")
        y0, x0 = tile["y0"], tile["x0"]
        seg[y0:y0 + tile["height"], x0:x0 + tile["width"]] = lut[values]
    return (seg, doc) if with_doc else seg
