"""Provenance in FITS headers, so a product copied elsewhere still says how it was made.

Each product file gets short ``GS*`` keywords (product type, key hash, versions,
date, host, band), ``HISTORY`` lines a person can read, and the complete
provenance as one JSON string in ``GSPROV`` (a FITS long string spread over
``CONTINUE`` cards, read back by `read_provenance`).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from astropy.io import fits

__all__ = ["apply_provenance", "read_provenance", "wcs_cards"]

_STRUCTURAL = re.compile(
    r"^(SIMPLE|XTENSION|BITPIX|NAXIS\d*|EXTEND|PCOUNT|GCOUNT|GROUPS|BSCALE|BZERO|BLANK|"
    r"CHECKSUM|DATASUM|EXTNAME|EXTVER|END|TFIELDS|TTYPE\d+|TFORM\d+|TUNIT\d+|TDIM\d+|"
    r"Z[A-Z0-9_]*|THEAP)$"
)
# World-coordinate keywords worth carrying from the science header onto maps:
# the WCS standard (incl. distortion: SIP A_/B_/AP_/BP_, TPV/ZPN PVi_m, TNX WAT)
# and the observation epoch that celestial frames refer to.
_WCS_KEY = re.compile(
    r"^(WCSAXES[A-Z]?|CTYPE\d+[A-Z]?|CRVAL\d+[A-Z]?|CRPIX\d+[A-Z]?|CDELT\d+[A-Z]?|"
    r"CUNIT\d+[A-Z]?|CROTA\d+|CD\d+_\d+[A-Z]?|PC\d+_\d+[A-Z]?|PV\d+_\d+[A-Z]?|"
    r"PS\d+_\d+[A-Z]?|LONPOLE[A-Z]?|LATPOLE[A-Z]?|RADESYS[A-Z]?|RADECSYS|EQUINOX[A-Z]?|"
    r"EPOCH|WCSNAME[A-Z]?|MJD-OBS|MJDREF|DATE-OBS|MJD-AVG|DATE-AVG|"
    r"A_ORDER|B_ORDER|AP_ORDER|BP_ORDER|A_\d+_\d+|B_\d+_\d+|AP_\d+_\d+|BP_\d+_\d+|"
    r"A_DMAX|B_DMAX|WAT\d_\d+)$"
)


def wcs_cards(source) -> fits.Header:
    """The WCS cards of ``source`` as a new header.

    Parameters
    ----------
    source : `~astropy.io.fits.Header`, `~astropy.wcs.WCS` or None
        A science header (only world-coordinate and epoch keywords are kept,
        so distortion terms such as SIP or TPV survive as written) or a WCS
        object (``to_header(relax=True)``).
    """
    out = fits.Header()
    if source is None:
        return out
    if hasattr(source, "to_header") and not isinstance(source, fits.Header):
        source = source.to_header(relax=True)
    if not isinstance(source, fits.Header):
        raise TypeError(f"wcs_header must be an astropy Header or WCS, not {type(source).__name__}")
    for card in source.cards:
        key = card.keyword
        if key and _WCS_KEY.match(key) and not _STRUCTURAL.match(key):
            out.append((key, card.value, card.comment))
    return out


def apply_provenance(header: fits.Header, prov: dict[str, Any], product_type: str) -> None:
    """Add galseg provenance keywords, HISTORY and the ``GSPROV`` JSON to ``header``."""
    ident = prov.get("product", {})
    key = prov.get("key", {})
    versions = prov.get("versions", {})
    header["GSPRODUC"] = (product_type, "galseg product type")
    header["GSKEY"] = (key.get("short", ""), "galseg product key (short hash)")
    header["GSKEYSHA"] = key.get("sha256", "")  # 64 characters: no room for a comment
    header["GSVERS"] = (versions.get("galseg", ""), "galseg version")
    header["SEPVERS"] = (versions.get("sep", ""), "sep version")
    header["GSDATE"] = (prov.get("created", ""), "UTC time the product was made")
    header["GSHOST"] = str(prov.get("host", ""))[:68]
    for card, name, comment in (("GSINSTR", "instrument", "instrument"),
                                ("GSVERSN", "version", "data version"),
                                ("GSSURVEY", "survey", "survey"),
                                ("GSFILT", "filt", "filter"),
                                ("GSWTYPE", "weight_type", "weight type"),
                                ("GSLABEL", "label", "product label")):
        if ident.get(name) is not None:
            header[card] = (str(ident[name]), comment)
    if "nobj" in prov:
        header["GSNOBJ"] = (int(prov["nobj"]), "number of catalogued objects")
    header.add_history(
        f"galseg {versions.get('galseg', '?')} (sep {versions.get('sep', '?')}) "
        f"{product_type.lower()} for {ident.get('survey')} {ident.get('filt')}"
    )
    fields = key.get("fields", {})
    for name in ("method", "err_type"):
        if name in fields:
            header.add_history(f"{name} = {fields[name]}")
    for role, fp in prov.get("inputs", {}).items():
        header.add_history(f"input {role}: {os.path.basename(str(fp.get('path', '')))} "
                           f"[{fp.get('ext')}] data sha256 {str(fp.get('data_sha256', ''))[:16]}")
    header.add_history("full provenance: JSON in GSPROV (galseg.products.read_provenance)")
    text = json.dumps(prov, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False)
    header["GSPROV"] = (text, "galseg provenance JSON")


def read_provenance(source, ext: int = 0) -> dict[str, Any] | None:
    """The provenance recorded in a galseg product.

    Parameters
    ----------
    source : path-like or `~astropy.io.fits.Header`
        A product file (its HDU ``ext``) or a header.

    Returns
    -------
    dict or None
        None if the header has no ``GSPROV`` card.
    """
    if isinstance(source, fits.Header):
        header = source
    else:
        header = fits.getheader(os.fspath(source), ext)
    text = header.get("GSPROV")
    if not text:
        return None
    return json.loads(text)
