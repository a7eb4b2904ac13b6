"""GeoJSON polygons of segment outlines, one feature per source.

Outlines are traced per segment inside its bounding box with contourpy's
filled marching squares on the 0/1 mask at level 0.5 (minus 1e-6, so that
diagonal neighbours -- one segment under 8-connectivity -- stay in one
polygon).  The outline runs half-way between in- and out-pixel centres, so
a polygon contains exactly the centres of its segment's pixels; a segment in
several pieces (cleaning merges detections) is a MultiPolygon; holes are
interior rings.

Coordinates are RA, Dec in degrees (RA in [0, 360)) when the band has a WCS
-- every vertex goes through the WCS, so the outline is exact in the
projection -- else 0-based pixel ``x, y`` (as e.g. QuPath reads GeoJSON).
Rings follow RFC 7946's right-hand rule in the output coordinates: exterior
counter-clockwise, holes clockwise.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import ndimage

__all__ = ["segment_outlines", "to_geojson", "write_geojson"]

_LEVEL = 0.5 - 1e-6


def _trace(mask: np.ndarray):
    """Polygons (lists of closed rings, exterior first) of a boolean mask, in its index coords."""
    import contourpy

    z = np.zeros((mask.shape[0] + 2, mask.shape[1] + 2))
    z[1:-1, 1:-1] = mask
    gen = contourpy.contour_generator(z=z, name="serial", fill_type=contourpy.FillType.OuterOffset)
    points, offsets = gen.filled(_LEVEL, 2.0)
    polygons = []
    for pts, offs in zip(points, offsets):
        pts = np.round(pts - 1.0, 6)  # back to mask indices; drop the 1e-6 jitter
        polygons.append([pts[offs[i]:offs[i + 1]] for i in range(len(offs) - 1)])
    return polygons


def segment_outlines(seg: np.ndarray, numbers=None) -> dict:
    """Outline polygons of each segment, in 0-based pixel coordinates.

    Parameters
    ----------
    seg : 2-D int array
        Segmentation map.
    numbers : iterable of int, optional
        Segments to trace; default all present.

    Returns
    -------
    dict
        ``number -> list of polygons``; a polygon is a list of ``(n, 2)``
        arrays ``(x, y)`` (closed rings: exterior, then holes).
    """
    slices = ndimage.find_objects(seg)
    if numbers is None:
        numbers = [i + 1 for i, s in enumerate(slices) if s is not None]
    out = {}
    for num in numbers:
        num = int(num)
        sl = slices[num - 1] if 0 < num <= len(slices) else None
        if sl is None:
            out[num] = []
            continue
        polys = _trace(seg[sl] == num)
        y0, x0 = sl[0].start, sl[1].start
        out[num] = [[ring + (x0, y0) for ring in poly] for poly in polys]
    return out


def _signed_area(ring):
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


def _orient(ring, ccw: bool):
    return ring if (_signed_area(ring) > 0) == ccw else ring[::-1]


def to_geojson(band, coords="auto", numbers=None, *, star_threshold=None) -> dict:
    """A GeoJSON FeatureCollection of the band's segments.

    Parameters
    ----------
    band : `~galseg.Band_Data`
        A segmented band.
    coords : {"auto", "sky", "pixel"}
        ``"auto"``: RA/Dec when the band has a WCS, else pixels.
    numbers : iterable of int, optional
        Only these sources.
    star_threshold : float, optional
        Add a ``label`` property (star/galaxy/unknown from CLASS_STAR, see
        `galseg.export.index_png`); default 0.8.

    Returns
    -------
    dict
        One Feature per source: ``id`` = NUMBER, geometry Polygon or
        MultiPolygon, properties = its catalogue row (vector columns as
        lists, NaN as null) plus ``label`` and ``npix``.  A top-level
        ``galseg`` member records the band and the coordinate convention.
    """
    from .index_png import DEFAULT_STAR_THRESHOLD, star_galaxy_label, table_records

    if coords not in ("auto", "sky", "pixel"):
        raise ValueError(f"coords must be 'auto', 'sky' or 'pixel', got {coords!r}")
    wcs = band.load_wcs() if coords != "pixel" else None
    if coords == "sky" and wcs is None:
        raise ValueError(f"band {band.filt} has no WCS: use coords='pixel' for pixel polygons")
    sky = wcs is not None
    seg = band.load_seg()
    cat = band.load_cat()
    cat_numbers = np.asarray(cat["NUMBER"], dtype=np.int64)
    rows = np.arange(len(cat))
    if numbers is not None:
        wanted = np.asarray(list(numbers), dtype=np.int64)
        rows = rows[np.isin(cat_numbers, wanted)]
    outlines = segment_outlines(seg, cat_numbers[rows])
    npix = np.bincount(seg.ravel(), minlength=int(cat_numbers.max(initial=0)) + 1)
    threshold = DEFAULT_STAR_THRESHOLD if star_threshold is None else star_threshold
    labels = (star_galaxy_label(cat["CLASS_STAR"], threshold) if "CLASS_STAR" in cat.colnames
              else np.full(len(cat), "unknown"))

    # one WCS call for every vertex of every ring
    rings = [ring for r in rows for poly in outlines[int(cat_numbers[r])] for ring in poly]
    if sky and rings:
        allpts = np.concatenate(rings)
        ra, dec = wcs.pixel_to_world_values(allpts[:, 0], allpts[:, 1])
        world = np.column_stack([np.mod(ra, 360.0), dec])
        bounds = np.cumsum([0] + [len(r) for r in rings])
        converted = iter(world[bounds[i]:bounds[i + 1]] for i in range(len(rings)))
    else:
        converted = iter(rings)

    records = table_records(cat[rows]) if len(rows) else []
    features = []
    for r, props in zip(rows, records):
        num = int(cat_numbers[r])
        polys = []
        for poly in outlines[num]:
            out_rings = []
            for j, _ in enumerate(poly):
                ring = next(converted)
                if sky:
                    # orient in a locally unwrapped RA so rings crossing RA=0 keep their sense
                    loc = ring.copy()
                    loc[:, 0] = (loc[:, 0] - loc[0, 0] + 180.0) % 360.0 - 180.0
                    flip = (_signed_area(loc) > 0) != (j == 0)
                    ring = ring[::-1] if flip else ring
                else:
                    ring = _orient(ring, ccw=(j == 0))
                out_rings.append(np.round(ring, 10).tolist())
            polys.append(out_rings)
        if len(polys) == 1:
            geometry = {"type": "Polygon", "coordinates": polys[0]}
        else:
            geometry = {"type": "MultiPolygon", "coordinates": polys}
        props["label"] = str(labels[r])
        props["npix"] = int(npix[num])
        features.append({"type": "Feature", "id": num, "geometry": geometry, "properties": props})
    return {
        "type": "FeatureCollection",
        "galseg": {
            "survey": band.survey, "version": band.version, "instrument": band.instrument,
            "filter": band.filt, "image": str(band.im_path),
            "coordinates": "sky" if sky else "pixel",
            "convention": ("[RA, Dec] in degrees, RA in [0, 360)" if sky else
                           "[x, y] 0-based pixels, pixel centres on integers (X_IMAGE = x + 1)"),
            "outline": "half-way between segment and non-segment pixel centres "
                       "(contour of the 0/1 mask at 0.5)",
            "label_rule": f"star if CLASS_STAR >= {threshold:g}, galaxy below, unknown if NaN",
        },
        "features": features,
    }


def write_geojson(band, path, coords="auto", numbers=None, *, star_threshold=None) -> Path:
    """Write `to_geojson` to ``path`` (atomically, standard JSON: no NaN)."""
    from ..io.atomic import atomic_write_bytes

    doc = to_geojson(band, coords, numbers, star_threshold=star_threshold)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, allow_nan=False, separators=(",", ":"))
    atomic_write_bytes((text + "\n").encode("utf-8"), path)
    return path
