"""AB zero points and pixel scales from FITS headers.

Precedence used by `Band_Data`: an explicit argument, then the header, then
the survey layout config.  Each function returns ``(value, source)`` so that
the band can say where its numbers came from.
"""

from __future__ import annotations

import math

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

__all__ = ["zero_point_from_header", "pixel_scale_from_wcs"]

# AB magnitude of 1 Jy: m = -2.5 log10(f / 3631 Jy)
_AB_JY = 2.5 * math.log10(3631.0)  # 8.9000...
_GENERIC_ZP_KEYS = ("MAGZERO", "MAGZP", "ZP", "ZEROPNT", "MAG_ZP", "PHOTZP", "ZPTMAG")
_FLUX_UNITS_JY = {"JY": 1.0, "MJY": 1e-3, "UJY": 1e-6, "NJY": 1e-9}


def _ab_zp_for_jy_per_unit(jy_per_unit: float) -> float:
    return -2.5 * math.log10(jy_per_unit) + _AB_JY


def zero_point_from_header(header: fits.Header, pix_scale_arcsec: float | None = None):
    """The AB zero point implied by a header, or ``(None, None)``.

    Recognised, in this order:

    * JWST: ``BUNIT = 'MJy/sr'`` (or ``PHOTMJSR`` for count-rate images) with
      ``PIXAR_SR`` (or the pixel scale) -> ZP = -2.5 log10(1e6 * PIXAR_SR [* PHOTMJSR]) + 8.90.
    * Images already in Jy-based units per pixel (``BUNIT = 'nJy'``, ``'uJy'`` ...).
    * HST: ``PHOTFLAM`` and ``PHOTPLAM`` -> ZP_AB = -2.5 log10(PHOTFLAM) - 5 log10(PHOTPLAM) - 2.408.
    * Generic keywords: MAGZERO, MAGZP, ZP, ZEROPNT, MAG_ZP, PHOTZP, ZPTMAG.

    Returns
    -------
    zp : float or None
    source : str or None
        A short description such as ``"header PHOTFLAM/PHOTPLAM"``.
    """
    bunit = str(header.get("BUNIT", "")).strip().replace(" ", "").upper()
    pixar = header.get("PIXAR_SR")
    if pixar is None and pix_scale_arcsec:
        pixar = (pix_scale_arcsec / 206264.80624709636) ** 2
    if bunit in ("MJY/SR", "MJYSR-1", "MJY.SR**-1") and pixar:
        return _ab_zp_for_jy_per_unit(1e6 * float(pixar)), "header BUNIT=MJy/sr + pixel area"
    photmjsr = header.get("PHOTMJSR")
    if photmjsr and pixar and bunit not in _FLUX_UNITS_JY:
        return (
            _ab_zp_for_jy_per_unit(float(photmjsr) * 1e6 * float(pixar)),
            "header PHOTMJSR + pixel area",
        )
    if bunit in _FLUX_UNITS_JY:
        return _ab_zp_for_jy_per_unit(_FLUX_UNITS_JY[bunit]), f"header BUNIT={header['BUNIT']}"
    photflam, photplam = header.get("PHOTFLAM"), header.get("PHOTPLAM")
    if photflam and photplam and float(photflam) > 0 and float(photplam) > 0:
        zp = -2.5 * math.log10(float(photflam)) - 5.0 * math.log10(float(photplam)) - 2.408
        return zp, "header PHOTFLAM/PHOTPLAM"
    for key in _GENERIC_ZP_KEYS:
        val = header.get(key)
        if isinstance(val, (int, float)) and not isinstance(val, bool) and np.isfinite(val):
            return float(val), f"header {key}"
    return None, None


def pixel_scale_from_wcs(header: fits.Header):
    """The pixel scale in arcsec from a celestial WCS, or ``(None, None)``."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(header)
        except Exception:
            return None, None
    if not wcs.has_celestial:
        return None, None
    scales = wcs.celestial.proj_plane_pixel_scales()
    vals = [abs(s.to_value("arcsec")) for s in scales]
    if not all(np.isfinite(vals)) or min(vals) <= 0:
        return None, None
    return float(np.sqrt(vals[0] * vals[1])), "WCS"
