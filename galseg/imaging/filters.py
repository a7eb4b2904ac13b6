"""Filter names and their pivot wavelengths, for ordering bands.

Names are matched case-insensitively and exactly: ``F150W2`` is never taken
for ``F150W``.  Unknown filters are allowed; they sort after the known ones.
"""

from __future__ import annotations

__all__ = ["canonical_filter", "filter_wavelength"]

# Approximate pivot wavelengths in Angstrom.
_WAVELENGTHS: dict[str, float] = {
    # HST ACS/WFC, WFC3/UVIS, WFC3/IR
    "F225W": 2372, "F275W": 2710, "F336W": 3355, "F390W": 3924, "F435W": 4330,
    "F475W": 4747, "F555W": 5361, "F606W": 5922, "F625W": 6312, "F775W": 7693,
    "F814W": 8046, "F850LP": 9055, "F098M": 9864, "F105W": 10552, "F110W": 11534,
    "F125W": 12486, "F140W": 13923, "F160W": 15369,
    # JWST NIRCam
    "F070W": 7040, "F090W": 9023, "F115W": 11543, "F140M": 14043, "F150W": 15007,
    "F162M": 16272, "F182M": 18451, "F200W": 19886, "F210M": 20954, "F250M": 25033,
    "F277W": 27617, "F300M": 29891, "F335M": 33621, "F356W": 35684, "F360M": 36241,
    "F410M": 40822, "F430M": 42812, "F444W": 44043, "F460M": 46299, "F480M": 48165,
    "F150W2": 16592, "F322W2": 32320, "F164N": 16448, "F187N": 18739, "F212N": 21213,
    "F323N": 32369, "F405N": 40517, "F466N": 46544, "F470N": 47078,
    # JWST MIRI
    "F560W": 56335, "F770W": 77007, "F1000W": 99530, "F1130W": 113091,
    "F1280W": 128100, "F1500W": 150638, "F1800W": 179837, "F2100W": 207950,
    "F2550W": 253646,
    # Ground-based: SDSS/KiDS/DES/HSC ugrizy, VISTA ZYJHKs
    "u": 3550, "g": 4750, "r": 6250, "i": 7700, "z": 9100, "y": 9750,
    "Z": 8780, "Y": 10210, "J": 12520, "H": 16450, "Ks": 21470, "K": 21900,
}
_BY_UPPER = {}
for _name in _WAVELENGTHS:
    # Ground-based z (SDSS/DES) and Z (VISTA) differ only by case: keep both.
    _BY_UPPER.setdefault(_name.upper(), _name)


def canonical_filter(name: str) -> str:
    """The canonical spelling of a filter name (``f444w`` -> ``F444W``).

    Exact-case matches win (``Z`` stays VISTA Z, ``z`` stays SDSS z); otherwise
    a case-insensitive match; otherwise the name is returned upper-cased if it
    looks like an HST/JWST filter (starts with F and a digit), else unchanged.
    """
    name = str(name).strip()
    if name in _WAVELENGTHS:
        return name
    if name.upper() in _BY_UPPER:
        return _BY_UPPER[name.upper()]
    if len(name) > 1 and name[0] in "fF" and name[1].isdigit():
        return name.upper()
    return name


def filter_wavelength(name: str) -> float:
    """Pivot wavelength in Angstrom, or ``inf`` for an unknown filter."""
    return float(_WAVELENGTHS.get(canonical_filter(name), float("inf")))
