"""Segmenting one band: parameters + inputs -> cache key -> cached or fresh products.

This is the glue behind `Band_Data.segment`: it fills the band's own numbers
into the SExtractor parameters (as galfind does on SExtractor's command line),
builds the product key from everything that changes the result, and asks the
product cache for the product, running the extraction engine only on a miss.
"""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..extract.params import Params
from ..extract.presets import filter_kernel, load_config, nnw_path
from ..products import ProductStore, get_or_compute, make_key

__all__ = ["segment_band", "band_entry", "band_params", "read_inputs", "WEIGHT_TYPES",
           "METHODS"]

log = logging.getLogger("galseg.pipeline")

#: err_type -> SExtractor WEIGHT_TYPE
WEIGHT_TYPES = {"rms_err": "MAP_RMS", "wht": "MAP_WEIGHT"}
METHODS = ("sep", "sextractor", "photutils")


def _config_label(config) -> str | None:
    """A readable product label: the preset name or the .sex file's stem."""
    if isinstance(config, str) and os.sep not in config and "/" not in config and not config.endswith(".sex"):
        return config
    if isinstance(config, (str, os.PathLike)):
        return Path(config).stem
    return None


def band_params(band, err_type: str, config="galfind_default", **overrides) -> Params:
    """The parameters a band is segmented with.

    The band supplies what galfind passes on SExtractor's command line:
    ``PHOT_APERTURES`` (the band's aperture diameters in pixels),
    ``MAG_ZEROPOINT`` (its zero point), ``PIXEL_SCALE`` and ``WEIGHT_TYPE``
    (``MAP_RMS`` for ``err_type="rms_err"``, ``MAP_WEIGHT`` for ``"wht"``).
    Explicit ``overrides`` win over both the band and the config.
    """
    if err_type not in WEIGHT_TYPES:
        raise ValueError(f"err_type must be one of {', '.join(WEIGHT_TYPES)}, got {err_type!r}")
    params = load_config(config)
    from_band = {"WEIGHT_TYPE": WEIGHT_TYPES[err_type]}
    if band.pix_scale is not None:
        from_band["PHOT_APERTURES"] = tuple(float(d) for d in band.aper_diams_pix)
        from_band["PIXEL_SCALE"] = float(band.pix_scale.to_value("arcsec"))
    if band.zp is not None:
        from_band["MAG_ZEROPOINT"] = float(band.zp)
    else:
        log.warning("band %s has no zero point: MAG_ZEROPOINT stays %s", band.filt,
                    params["MAG_ZEROPOINT"])
    return params.replace(from_band).replace({k.upper(): v for k, v in overrides.items()})


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _measurement_key_fields(band, params) -> dict:
    """What a catalogue's numbers depend on besides the inputs and parameters:
    the star/galaxy network, the band's apertures and zero point."""
    return {"nnw_sha256": _file_sha256(nnw_path(params)),
            "aper_diams_arcsec": [float(d) for d in band.aper_diams.to_value("arcsec")],
            "zero_point": band.zp}


def _inputs(band, err_type: str) -> dict:
    """The input files of a segmentation, by role, as (resolved path, HDU index)."""
    from ..io.fits import image_ext

    inputs = {"sci": (band.im_path, band.im_ext)}
    path, ext = band._map_location(err_type)
    if path is not None:
        inputs[err_type] = (path, ext)
    else:  # derived from the other map
        other = "wht" if err_type == "rms_err" else "rms_err"
        inputs[other] = band._map_location(other)
    # ext None means "the first image HDU": fingerprint that one, not HDU 0
    return {role: (str(Path(p).resolve()), e if e is not None else image_ext(p, None))
            for role, (p, e) in inputs.items()}


def read_inputs(band, err_type: str, *, hash_inputs: bool = True):
    """The science image, its header and the noise map for the engine.

    Reads the files of the product key (`_inputs`) once, hashing them on the
    way for the product cache (`remember_data_sha256`) unless ``hash_inputs``
    is false (see `_hashing_inputs`).  A noise map present on
    disk is passed on raw: the engine treats non-finite, zero or negative rms
    (and non-finite or non-positive weights) as "no data" itself.  A missing
    map is derived from the other one, as `Band_Data.load_err` does.

    Returns
    -------
    sci : ndarray of float32
    header : `~astropy.io.fits.Header`
    noise : dict
        ``{"rms": ...}`` or ``{"wht": ...}``, the engine's keyword.
    """
    from ..imaging.band import _rms_from_wht, _wht_from_rms
    from ..io.fits import read_image
    from ..products.fingerprint import remember_data_sha256

    def read(role, what):
        path, ext = inputs[role]
        if not hash_inputs:
            return read_image(path, ext, what=f"{band.filt} {what}")
        data, digest = read_image(path, ext, what=f"{band.filt} {what}", sha256=True)
        if digest is not None:
            remember_data_sha256(digest.path, digest.hdu, digest.stat, digest.sha256)
        return data

    inputs = _inputs(band, err_type)
    noise_role = err_type if err_type in inputs else ("wht" if err_type == "rms_err" else "rms_err")
    # both files at once: reading, hashing and byte-swapping release the GIL
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="galseg-read") as pool:
        sci_f = pool.submit(read, "sci", "science image")
        err = read(noise_role, f"{noise_role} map")
        sci = sci_f.result()
    if noise_role != err_type:  # derived from the other map
        err = _rms_from_wht(err) if err_type == "rms_err" else _wht_from_rms(err)
    return sci, band.header, ({"rms": err} if err_type == "rms_err" else {"wht": err})


def _hashing_inputs(band, err_type):
    """Hash the inputs' data (``data_sha256``, which the product store records
    when it saves, see `get_or_compute`) on a helper thread while the body
    runs, and wait for it on exit.

    The files were just read, so the hashing reads the page cache; done
    while the engine runs, it takes the second core where the engine leaves
    it idle (sep's single-threaded extraction, cleaning) instead of
    lengthening the read.  A file that changes meanwhile is caught by the
    store's stat checks; a failure here only means the store hashes again.
    """
    from ..extract._parallel import meanwhile
    from ..products.fingerprint import input_fingerprint

    def work():
        for path, ext in _inputs(band, err_type).values():
            try:
                input_fingerprint(path, ext, full=True)
            except Exception:  # noqa: BLE001 - the store hashes again and reports
                return

    return meanwhile(work, name="galseg-hash-inputs")


def _compute(band, err_type, method, params):
    from ..extract import run
    from ..extract._parallel import warming_numba

    with warming_numba():  # numba's set-up overlaps the reading
        sci, header, noise = read_inputs(band, err_type, hash_inputs=False)
    with _hashing_inputs(band, err_type):
        return run(sci, params=params, method=method, header=header, wcs=band.load_wcs(),
                   **noise)


def band_entry(band, err_type="rms_err", method="sep", config="galfind_default", **overrides):
    """The product entry of a segmentation, and its parameters, computing nothing.

    The key covers the inputs' content, err_type, method, every parameter, the
    kernel values, the star/galaxy network, aperture diameters and zero point
    (`galseg.products.make_key` adds the library versions).  Lets a caller
    (e.g. the parallel runner) skip cached bands before starting any worker.

    Returns
    -------
    entry : `~galseg.products.ProductEntry`
    params : `~galseg.extract.params.Params`
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    params = band_params(band, err_type, config, **overrides)
    kernel = filter_kernel(params)
    key = make_key(
        _inputs(band, err_type),
        err_type=err_type,
        method=method,
        params=params,
        kernel=None if kernel is None else np.asarray(kernel, dtype=np.float64),
        **_measurement_key_fields(band, params),
    )
    entry = ProductStore(band.work_dir).entry(band.instrument, band.version, band.survey,
                                              band.filt, WEIGHT_TYPES[err_type], key,
                                              label=_config_label(config))
    return entry, params


def segment_band(band, err_type="rms_err", method="sep", config="galfind_default",
                 overwrite=False, tiles="auto", max_memory="4GB", **overrides):
    """Segment ``band`` (or load its cached products); see `Band_Data.segment`.

    ``tiles``/``max_memory`` choose between one piece and a tiled run
    (`galseg.tiling.band`); both give the same products, so they are not
    part of the product key (the provenance records the tiling).

    Returns
    -------
    CacheOutcome
        ``.entry`` is the product, ``.computed`` whether the engine ran.
    """
    entry, params = band_entry(band, err_type, method, config, **overrides)
    provenance = {
        "band": {"survey": band.survey, "version": band.version, "instrument": band.instrument,
                 "filt": band.filt, "zp_source": band.zp_source,
                 "pix_scale_source": band.pix_scale_source},
        "config": str(config) if not isinstance(config, (Params, dict)) else "<parameters>",
        "overrides": {k.upper(): str(v) for k, v in overrides.items()},
    }
    from ..tiling.band import band_tile_size, compute_band_tiled

    tile_size = band_tile_size(band, params, method, tiles, max_memory)
    if tile_size is None:
        compute = lambda: _compute(band, err_type, method, params)  # noqa: E731
    else:
        provenance["tiling"] = {"tile_size": int(tile_size), "max_memory": str(max_memory)}
        compute = lambda: compute_band_tiled(band, err_type, params, tile_size,  # noqa: E731
                                             max_memory)
    from ..extract._parallel import small_pages

    # reading, computing and writing full frames on ordinary pages: see small_pages
    with small_pages():
        outcome = get_or_compute(entry, compute, overwrite=overwrite, provenance=provenance,
                                 wcs_header=band.load_wcs())
    if outcome.computed:
        log.info("%s %s: %s", band.survey, band.filt, outcome.reason)
    return outcome
