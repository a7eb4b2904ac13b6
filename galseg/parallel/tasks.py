"""Picklable band tasks: what a worker process needs to open a band and run it.

A task never carries image data: it carries a `BandSpec` (the band's
constructor arguments, a few hundred bytes) and the run's arguments.  The
worker opens the band itself (reading its inputs memory-mapped), writes the
products into the cache and returns a small summary; the parent then loads
the cached products, which costs a sidecar read.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


__all__ = ["BandSpec", "SegmentTask", "segment_task", "segment_entry"]


@dataclass(frozen=True)
class BandSpec:
    """Everything needed to rebuild a `~galseg.imaging.Band_Data` in another process."""

    survey: str
    version: str
    instrument: str
    filt: str
    im_path: str
    im_ext: Any
    rms_err_path: str | None
    rms_err_ext: Any
    wht_path: str | None
    wht_ext: Any
    pix_scale: float | None
    zp: float | None
    aper_diams: tuple[float, ...]
    work_dir: str
    zp_source: str | None = None
    pix_scale_source: str | None = None
    extra: dict = field(default_factory=dict, compare=False)

    @classmethod
    def from_band(cls, band) -> "BandSpec":
        """The spec of ``band`` (its resolved zero point and pixel scale included)."""
        import astropy.units as u

        def p(path):
            return None if path is None else str(Path(path).resolve())

        extra = {k: getattr(band, k) for k in ("stack_of", "stack_scales") if hasattr(band, k)}
        return cls(
            band.survey, band.version, band.instrument, band.filt, p(band.im_path), band.im_ext,
            p(band.rms_err_path), band.rms_err_ext, p(band.wht_path), band.wht_ext,
            None if band.pix_scale is None else float(band.pix_scale.to_value(u.arcsec)),
            band.zp, tuple(float(d) for d in band.aper_diams.to_value(u.arcsec)),
            str(Path(band.work_dir).resolve()), band.zp_source, band.pix_scale_source, extra,
        )

    def open(self):
        """A new `Band_Data` equal to the one the spec was made from."""
        from ..imaging.band import Band_Data

        band = Band_Data(
            self.survey, self.version, self.instrument, self.filt, self.im_path, self.im_ext,
            rms_err_path=self.rms_err_path, rms_err_ext=self.rms_err_ext,
            wht_path=self.wht_path, wht_ext=self.wht_ext, pix_scale=self.pix_scale,
            zp=self.zp, aper_diams=list(self.aper_diams), work_dir=self.work_dir,
        )
        # Keep the provenance of the original band (recorded with products).
        band.zp_source = self.zp_source
        band.pix_scale_source = self.pix_scale_source
        for k, v in self.extra.items():
            setattr(band, k, v)
        return band


@dataclass(frozen=True)
class SegmentTask:
    """One band to segment: its spec and `Band_Data.segment`'s arguments."""

    spec: BandSpec
    err_type: str = "rms_err"
    method: str = "sep"
    config: Any = "galfind_default"
    overwrite: bool = False
    overrides: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)  # segment() keywords that are not parameters

    @property
    def label(self) -> str:
        return self.spec.filt


def segment_entry(band, err_type="rms_err", method="sep", config="galfind_default", **overrides):
    """The product entry `segment_band` would use, without computing anything.

    Lets the parent skip cached bands before starting any worker process.
    ``tiles``/``max_memory`` do not change the product, so they are ignored.
    """
    from ..pipeline.band import band_entry

    overrides.pop("tiles", None)
    overrides.pop("max_memory", None)
    return band_entry(band, err_type, method, config, **overrides)[0]


def segment_task(task: SegmentTask) -> dict:
    """Worker body: open the band, segment it (or find it cached), summarise.

    Returns
    -------
    dict
        ``filt``, ``stem``, ``computed``, ``reason``, ``seconds`` (wall),
        ``cpu_seconds`` (this process, all threads), ``nobj``, ``pid`` and ``host``.
    """
    import socket

    t0, c0 = time.perf_counter(), time.process_time()
    band = task.spec.open()
    band.segment(task.err_type, task.method, task.config, task.overwrite, **task.options,
                 **task.overrides)
    sc = band._product.read_sidecar() or {}
    return {
        "filt": band.filt,
        "stem": band._product.stem,
        "computed": not band.seg_args["from_cache"],
        "reason": band.seg_args["reason"],
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - c0,
        "nobj": sc.get("nobj"),
        "pid": os.getpid(),
        "host": socket.gethostname(),
    }
