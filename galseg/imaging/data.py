"""`Data`: the bands of one survey/version, indexable by filter name."""

from __future__ import annotations

from collections.abc import Iterable

import astropy.units as u

from .band import Band_Data
from .filters import canonical_filter, filter_wavelength
from .layout import discover_bands

__all__ = ["Data"]


class Data:
    """A set of `Band_Data` of one survey/version, in wavelength order.

    Parameters
    ----------
    bands : iterable of `Band_Data`
        The bands; filter names must be unique.

    Examples
    --------
    >>> data = Data.from_survey_version("XDF-demo", "v1")      # doctest: +SKIP
    >>> data["F160W"].zp, len(data), [b.filt for b in data]   # doctest: +SKIP
    """

    def __init__(self, bands: Iterable[Band_Data]):
        bands = list(bands)
        if not bands:
            raise ValueError("Data needs at least one Band_Data")
        by_filt: dict[str, Band_Data] = {}
        for band in bands:
            if not isinstance(band, Band_Data):
                raise TypeError(f"Data takes Band_Data objects, got {type(band).__name__}")
            if band.filt in by_filt:
                raise ValueError(f"two bands with filter {band.filt} given to Data")
            by_filt[band.filt] = band
        order = sorted(by_filt, key=lambda f: (filter_wavelength(f), f))
        self._bands = {f: by_filt[f] for f in order}
        first = bands[0]
        self.survey, self.version = first.survey, first.version

    @classmethod
    def from_survey_version(
        cls,
        survey: str,
        version: str,
        instruments=None,
        *,
        filters=None,
        layout=None,
        data_dir=None,
        work_dir=None,
        aper_diams=None,
    ) -> "Data":
        """Discover the bands of ``survey``/``version`` from the YAML layouts.

        Parameters
        ----------
        survey, version : str
            As named in a layout file (see `galseg.imaging.layout`).
        instruments : str or list of str, optional
            Restrict to these instruments of the layout.
        filters : list of str, optional
            Restrict to these filters; an unknown one is an error.
        layout : path, dict or list, optional
            Extra layout(s) on top of the shipped ones and the settings' ``layouts``.
        data_dir, work_dir : path-like, optional
            Override the settings' data and work directories.
        aper_diams : Quantity or sequence of float (arcsec), optional
            Aperture diameters for every band; default from the settings.
        """
        from ..config import settings

        conf = settings()
        if aper_diams is None:
            aper_diams = conf.get("aper_diams")
        found = discover_bands(survey, version, instruments, layout=layout, data_dir=data_dir)
        if filters is not None:
            wanted = [canonical_filter(f) for f in ([filters] if isinstance(filters, str) else filters)]
            have = {b.filt: b for b in found}
            unknown = [f for f in wanted if f not in have]
            if unknown:
                raise KeyError(
                    f"filter(s) {', '.join(unknown)} not found for {survey}/{version}; "
                    f"available: {', '.join(sorted(have, key=filter_wavelength))}"
                )
            found = [have[f] for f in wanted]
        bands = [
            Band_Data(
                survey, version, b.instrument, b.filt, b.im_path, b.im_ext,
                rms_err_path=b.rms_err_path, rms_err_ext=b.rms_err_ext,
                wht_path=b.wht_path, wht_ext=b.wht_ext, aper_diams=aper_diams,
                work_dir=work_dir if work_dir is not None else conf["work_dir"],
                config_zp=b.zp, config_pix_scale=b.pix_scale,
            )
            for b in found
        ]
        return cls(bands)

    # ------------------------------------------------------------- container
    @property
    def filters(self) -> list[str]:
        """Filter names in wavelength order."""
        return list(self._bands)

    @property
    def instruments(self) -> list[str]:
        """Instrument names present, in order of first appearance."""
        return list(dict.fromkeys(b.instrument for b in self))

    def __len__(self) -> int:
        return len(self._bands)

    def __iter__(self):
        return iter(self._bands.values())

    def __contains__(self, filt) -> bool:
        return self._key(filt) is not None

    def _key(self, filt):
        name = canonical_filter(filt)
        if name in self._bands:
            return name
        matches = [f for f in self._bands if f.upper() == str(filt).strip().upper()]
        return matches[0] if len(matches) == 1 else None

    def __getitem__(self, filt) -> Band_Data:
        if isinstance(filt, int):
            return list(self._bands.values())[filt]
        key = self._key(filt)
        if key is None:
            raise KeyError(
                f"no band {filt!r} in {self.survey}/{self.version}; bands: {', '.join(self._bands)}"
            )
        return self._bands[key]

    def __repr__(self) -> str:
        header = ("filter", "instrument", "shape", "pix scale", "ZP (source)", "rms_err", "wht")
        rows = []
        for b in self:
            scale = "?" if b.pix_scale is None else f"{b.pix_scale.to_value(u.arcsec):.4g}\""
            zp = "?" if b.zp is None else f"{b.zp:.3f} ({b.zp_source})"
            rows.append((
                b.filt, b.instrument, f"{b.shape[1]}x{b.shape[0]}", scale, zp,
                "file" if b.has_err("rms_err") else "derived",
                "file" if b.has_err("wht") else "derived",
            ))
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        line = lambda r: "  ".join(f"{str(c):<{w}}" for c, w in zip(r, widths))  # noqa: E731
        lines = [f"Data({self.survey} {self.version}: {len(self)} bands)", line(header),
                 line(["-" * w for w in widths])] + [line(r) for r in rows]
        return "\n".join(lines)

    # ------------------------------------------------------ multi-band pipeline
    # Thin delegates: the logic lives in galseg.pipeline.multiband.
    def segment(self, err_type=None, method=None, config=None, overwrite=False, *,
                workers=None, scheduler=None, progress=True, **overrides) -> "Data":
        """Segment every band (`Band_Data.segment`), skipping cached ones.

        Bands that are not cached run in separate processes: a local pool by
        default (``workers``: number of processes, default one per CPU; 1 runs
        here), or a Dask cluster when ``scheduler`` is a `distributed.Client`
        or a scheduler address.  Results are identical to a serial run.
        Shows a progress bar (tqdm, when ``progress``) and a summary; the
        summary rows are kept in ``self.segment_summary``.  ``err_type``,
        ``method`` and ``config`` default to the settings' ``segmentation``
        section.  Returns ``self``.
        """
        from ..pipeline.multiband import segment_data

        return segment_data(self, err_type, method, config, overwrite, workers=workers,
                            scheduler=scheduler, progress=progress, **overrides)

    def stack(self, bands, *, common_zp="auto", overwrite=False, dtype="float32") -> Band_Data:
        """Inverse-variance weighted stack of ``bands`` as a cached `Band_Data`.

        ``bands`` is a list of filter names or a ``"F277W+F356W+F444W"``
        string; one band returns that band.  See `galseg.pipeline.stack` for
        ``common_zp`` (flux-unit conversion; default: convert to the first
        band's zero point only when zero points differ).
        """
        from ..pipeline.multiband import stack_data

        return stack_data(self, bands, common_zp=common_zp, overwrite=overwrite, dtype=dtype)

    def perform_forced_phot(self, forced_phot_band, err_type=None, method="sep", config=None,
                            overwrite=False, *, common_zp="auto", workers=None, scheduler=None,
                            progress=True, **overrides) -> "Data":
        """Forced photometry of every band on ``forced_phot_band``'s sources, joined.

        ``forced_phot_band`` is a band name, a `Band_Data`, or bands to stack
        (a list or ``"F277W+F356W+F444W"``, see `stack`).  Each band gets a
        cached forced catalogue (SExtractor's dual-image mode; see
        `galseg.pipeline.forced`), and the catalogues are joined by
        ``NUMBER`` into one multi-band catalogue (`load_cat`, `cat_path`;
        naming scheme in `galseg.pipeline.catalog`).  ``method="sextractor"``
        runs SExtractor's dual-image mode instead.  Returns ``self``.
        """
        from ..pipeline.multiband import forced_phot_data

        return forced_phot_data(self, forced_phot_band, err_type, method, config, overwrite,
                                common_zp=common_zp, workers=workers, scheduler=scheduler,
                                progress=progress, **overrides)

    @property
    def cat_path(self):
        """Path of the multi-band catalogue of the last `perform_forced_phot` (None before)."""
        return self.__dict__.get("_cat_path")

    def load_cat(self):
        """The multi-band catalogue as an astropy Table (see `perform_forced_phot`)."""
        if self.cat_path is None:
            raise FileNotFoundError(
                f"{self.survey}/{self.version} has no multi-band catalogue yet; call "
                "perform_forced_phot(forced_phot_band=...) first (it reuses cached products)")
        from ..pipeline.forced import read_catalog

        return read_catalog(self.cat_path)

    # ------------------------------------------------------ figures and export
    # Thin delegates: the logic lives in galseg.plot and galseg.export.
    def plot(self, ext="SEG", ncols=None, region=None, **kwargs):
        """A grid of all bands (one panel each); see `galseg.plot.grid.plot_data`."""
        from ..plot.grid import plot_data

        return plot_data(self, ext, ncols=ncols, region=region, **kwargs)

    def export(self, directory, format="ds9", **kwargs):
        """Export every band into ``directory``; see `galseg.export.export_data`."""
        from ..export import export_data

        return export_data(self, directory, format, **kwargs)

    def area_stats(self):
        """Total, unmasked and segmented area per band (astropy Table, arcmin^2)."""
        from ..export.areas import area_table

        return area_table(self)
