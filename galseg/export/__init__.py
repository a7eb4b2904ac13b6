"""Sharing segmentations: DS9 regions, index PNG + JSON, GeoJSON, area statistics.

One entry point, `export`, behind ``band.export(path, format=...)`` and
``data.export(directory, format=...)``.  Everything reads the cached
products of ``segment()``; nothing is recomputed.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["FORMATS", "export", "export_band", "export_data"]

#: format name -> default file suffix
FORMATS = {"ds9": ".reg", "index-png": ".png", "geojson": ".geojson", "areas": ".ecsv"}
_ALIASES = {"reg": "ds9", "regions": "ds9", "index_png": "index-png", "png": "index-png",
            "json": "geojson", "area": "areas"}


def _format(name) -> str:
    key = str(name).lower().strip()
    key = _ALIASES.get(key, key)
    if key not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {name!r}")
    return key


def export_band(band, path, format="ds9", **kwargs) -> Path:
    """Export one band's segmentation products.

    Parameters
    ----------
    band : `~galseg.Band_Data`
        A segmented band.
    path : path-like
        Output file (for ``"index-png"`` the PNG, its JSON written alongside).
    format : {"ds9", "index-png", "geojson", "areas"}
        ``"ds9"``: Kron ellipses and apertures (`galseg.export.ds9.write_ds9`);
        ``"index-png"``: label PNG(s) + JSON of segments
        (`galseg.export.index_png.write_index_png`); ``"geojson"``: outline
        polygons in RA/Dec (`galseg.export.geojson.write_geojson`);
        ``"areas"``: total/unmasked/segmented area (`galseg.export.areas.write_areas`).
    **kwargs
        Passed to the writer.

    Returns
    -------
    Path
        The file written (the JSON for ``"index-png"``).
    """
    fmt = _format(format)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "ds9":
        from .ds9 import write_ds9

        return write_ds9(band, path, **kwargs)
    if fmt == "index-png":
        from .index_png import write_index_png

        return write_index_png(band, path, **kwargs)["json_path"]
    if fmt == "geojson":
        from .geojson import write_geojson

        return write_geojson(band, path, **kwargs)
    from .areas import write_areas

    return write_areas([band], path, **kwargs)


def export_data(data, directory, format="ds9", **kwargs):
    """Export every band of a `~galseg.Data` into ``directory``.

    Files are named ``<survey>_<version>_<filter><suffix>``; ``"areas"``
    writes one table ``<survey>_<version>_areas.ecsv`` with a row per band.

    Returns
    -------
    dict or Path
        ``filter -> file`` (for ``"areas"``: the one table's path).
    """
    fmt = _format(format)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if fmt == "areas":
        from .areas import write_areas

        return write_areas(list(data), directory / f"{data.survey}_{data.version}_areas.ecsv",
                           **kwargs)
    suffix = FORMATS[fmt]
    out = {}
    for band in data:
        name = f"{band.survey}_{band.version}_{band.filt}{suffix}"
        out[band.filt] = export_band(band, directory / name, fmt, **kwargs)
    return out


def export(obj, path, format="ds9", **kwargs):
    """Export a `~galseg.Band_Data` (to a file) or a `~galseg.Data` (to a directory)."""
    if hasattr(obj, "load_seg"):
        return export_band(obj, path, format, **kwargs)
    return export_data(obj, path, format, **kwargs)
