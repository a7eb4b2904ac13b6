"""The direct catalogue writer gives astropy's bytes, and falls back to astropy when it must."""

import io
import warnings

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.table import MaskedColumn, Table

from galseg.io.fitstable import meta_cards, table_file_bytes


def _catalogue(n=57):
    rng = np.random.default_rng(3)
    t = Table()
    t["NUMBER"] = np.arange(1, n + 1, dtype=np.int32)
    t["X_IMAGE"] = u.Quantity(rng.uniform(1, 100, n), u.pix)
    t["FLUX_APER"] = u.Quantity(rng.normal(size=(n, 5)).astype(np.float32), u.ct)
    t["MAG_AUTO"] = u.Quantity(rng.normal(25, 1, n).astype(np.float32), u.mag)
    t["ISOAREA_IMAGE"] = u.Quantity(rng.integers(9, 500, n).astype(np.int32), u.pix ** 2)
    t["FLAGS"] = rng.integers(0, 255, n).astype(np.int16)
    t["KRON_RADIUS"] = rng.uniform(3, 9, n).astype(np.float32)
    t["BIG"] = rng.integers(0, 2**40, n)
    t["STAR"] = rng.uniform(size=n) > 0.5
    t.meta.update({"GAIN": 0.0, "MAGZERO": 25.0, "MASKTYPE": "CORRECT", "LONGNAME9": 1,
                   "APERTURES": [1.0, 2.0]})
    return t


def _astropy_bytes(t, cards):
    tt = t.copy(copy_data=False)
    tt.meta = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)
        hdu = fits.table_to_hdu(tt)
        for card in cards:
            hdu.header.append(card)
    hdu.name = "CATALOG"
    buf = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(buf)
    return buf.getvalue()


def test_catalogue_bytes_are_astropys():
    t = _catalogue()
    cards = meta_cards(t, {"MAGZERO": 26.5, "APER1": (0.32, "aperture diameter [arcsec]"),
                           "HIERARCH ZP_F444W": (28.9, "AB zero point")})
    # extras replace a metadata keyword in place; lists and long keywords are left out
    assert [c[0] for c in cards] == ["GAIN", "MAGZERO", "MASKTYPE", "APER1", "HIERARCH ZP_F444W"]
    assert cards[1] == ("MAGZERO", 26.5)
    data = table_file_bytes(t, cards=cards)
    assert data == _astropy_bytes(t, cards)
    assert len(data) % 2880 == 0
    back = Table.read(io.BytesIO(data), hdu=1)
    assert back.colnames == t.colnames and back.meta["MAGZERO"] == 26.5
    for name in t.colnames:
        np.testing.assert_array_equal(back[name], t[name], err_msg=name)
        assert back[name].unit == t[name].unit
        assert back[name].dtype.newbyteorder("=") == t[name].dtype.newbyteorder("=")


def test_empty_and_primary_cards():
    t = _catalogue(0)
    primary = fits.Header([("GSPRODUC", "galseg catalogue")])
    data = table_file_bytes(t, primary=primary)
    with fits.open(io.BytesIO(data)) as hdul:
        assert hdul[0].header["GSPRODUC"] == "galseg catalogue" and hdul[0].header["EXTEND"]
        assert hdul["CATALOG"].data.shape == (0,)


def test_masked_floats_are_nan_like_astropys():
    # a catalogue read back masks its NaNs (ALPHA_J2000 without a WCS)
    t = _catalogue(6)
    t["ALPHA"] = MaskedColumn([1.0, np.nan, 3.0, 4.0, 5.0, 6.0], mask=[0, 1, 0, 0, 1, 0])
    data = table_file_bytes(t)
    assert data == _astropy_bytes(t, [])
    back = Table.read(io.BytesIO(data), hdu=1)
    assert back["ALPHA"].mask.tolist() == [False, True, False, False, True, False]


def test_columns_astropy_must_write():
    t = _catalogue(5)
    t["NAME"] = ["a", "bb", "ccc", "d", "e"]
    t["MASKED"] = MaskedColumn([1, 2, 3, 4, 5], mask=[0, 1, 0, 0, 0])
    back = Table.read(io.BytesIO(table_file_bytes(t, cards=[("DETBAND", "F444W")])), hdu=1)
    assert list(back["NAME"]) == ["a", "bb", "ccc", "d", "e"]
    assert back["MASKED"].mask.tolist() == [False, True, False, False, False]
    assert back.meta["DETBAND"] == "F444W"


def test_header_cards_are_astropys():
    # the direct card formatter against astropy's, card by card, at its edges
    from galseg.io.fitstable import _header_bytes

    cards = [("TTYPE1", "FLUX_APER"), ("TFORM1", "5E"), ("TUNIT1", "erg / (s cm2)"),
             ("SHORT", "a"), ("QUOTE", "it's"), ("QUOTES", "''''''''''"), ("LOGIC", True),
             ("LOGIC2", np.bool_(False)), ("INT", -7, "a comment"), ("NPINT", np.int64(2**40)),
             ("FLOAT", 0.1 + 0.2, "float: astropy's"), ("LONGSTR", "x" * 75),
             ("SPACES", " padded  "), ("EMPTY", ""), ("lower", 3), ("HIERARCH A_B", 1),
             ("EDGE", "y" * 40, "c" * 27), ("EDGE2", "y" * 40, "c" * 28),
             ("EDGE3", 5, "c" * 50), ("EDGE4", 5, "c" * 51),
             fits.Card("CARD", 1.5, "a Card object")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)
        expected = fits.Header([c if isinstance(c, fits.Card) else fits.Card(*c)
                                for c in cards]).tostring().encode("ascii")
    assert _header_bytes(cards) == expected
