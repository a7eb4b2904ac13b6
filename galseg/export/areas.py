"""Sky-area statistics per band: total, unmasked and segmented, in arcmin^2."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["area_stats", "area_table", "write_areas"]


def _pixel_area_arcsec2(band):
    """Pixel solid angle in arcsec^2 and where it came from."""
    wcs = band.load_wcs()
    if wcs is not None:
        from astropy.wcs.utils import proj_plane_pixel_area

        return float(proj_plane_pixel_area(wcs)) * 3600.0 ** 2, "WCS"
    if band.pix_scale is not None:
        return float(band.pix_scale.to_value("arcsec")) ** 2, f"pix_scale ({band.pix_scale_source})"
    raise ValueError(
        f"band {band.filt}: no WCS and no pixel scale, so no sky area; pass pix_scale to Band_Data"
    )


def area_stats(band) -> dict:
    """Total, unmasked and segmented sky area of a band.

    Parameters
    ----------
    band : `~galseg.Band_Data`
        ``segmented_*`` needs a previous ``band.segment()``.

    Returns
    -------
    dict
        ``filter``; ``npix_total``, ``npix_unmasked``, ``npix_segmented``;
        the same as ``*_arcmin2``; ``segmented_fraction`` (of the unmasked
        area); ``pixel_area_arcsec2`` and its ``pixel_area_source``.

    Notes
    -----
    *Unmasked* pixels have a finite science value and a finite, positive
    noise (non-zero weight): the pixels SExtractor can detect in.
    *Segmented* pixels are unmasked pixels with a segmentation value > 0.
    The pixel area is the projection-plane area at the WCS reference point
    (exact for TAN images of survey size; distortion terms are ignored) or
    ``pix_scale**2``.
    """
    pix_area, source = _pixel_area_arcsec2(band)
    rms = band.load_rms_err()
    valid = np.isfinite(rms) & np.isfinite(band.load_im())
    seg = band.load_seg()
    n_total = int(valid.size)
    n_valid = int(np.count_nonzero(valid))
    n_seg = int(np.count_nonzero((seg > 0) & valid))
    to_arcmin2 = pix_area / 3600.0
    return {
        "filter": band.filt,
        "npix_total": n_total,
        "npix_unmasked": n_valid,
        "npix_segmented": n_seg,
        "total_arcmin2": n_total * to_arcmin2,
        "unmasked_arcmin2": n_valid * to_arcmin2,
        "segmented_arcmin2": n_seg * to_arcmin2,
        "segmented_fraction": n_seg / n_valid if n_valid else float("nan"),
        "pixel_area_arcsec2": pix_area,
        "pixel_area_source": source,
    }


def area_table(bands):
    """`area_stats` of several bands (a `~galseg.Data` or a list) as an astropy Table."""
    import astropy.units as u
    from astropy.table import Table

    rows = [area_stats(b) for b in bands]
    table = Table(rows=rows, names=list(rows[0]))
    for name in ("total_arcmin2", "unmasked_arcmin2", "segmented_arcmin2"):
        table[name].unit = u.arcmin ** 2
    table["pixel_area_arcsec2"].unit = u.arcsec ** 2
    return table


def write_areas(bands, path) -> Path:
    """Write `area_table` as ECSV (``.ecsv``/``.csv``) or JSON (``.json``)."""
    import json

    from ..io.atomic import atomic_write_bytes

    bands = [bands] if hasattr(bands, "load_seg") else list(bands)
    table = area_table(bands)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".json":
        text = json.dumps([dict(zip(table.colnames, [v.item() if hasattr(v, "item") else v
                                                      for v in row])) for row in table],
                          indent=1)
    else:
        import io

        buf = io.StringIO()
        table.write(buf, format="ascii.ecsv")
        text = buf.getvalue()
    atomic_write_bytes(text.encode("utf-8"), path)
    return path
