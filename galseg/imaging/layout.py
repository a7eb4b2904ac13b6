"""Survey layouts: where the bands of a survey/version live on disk.

A layout file is YAML (read with ``yaml.safe_load``) mapping
``survey -> version -> instrument -> entry``.  An entry says::

    dir: "{data}/{facility}/{survey}/{instrument}/{version}/{pixscale}mas"
    vars: {facility: JWST, pixscale: 30}      # extra {names} for dir/patterns
    sci: "*_{filt}_*_i2d.fits"                 # science file pattern
    sci_ext: SCI                               # index or EXTNAME
    rms_err: "*_{filt}_*_i2d.fits"             # optional (same file is fine)
    rms_err_ext: ERR
    wht: "*_{filt}_*_wht.fits"                 # optional; at least one of rms_err/wht
    wht_ext: 0
    pix_scale: 0.03                            # arcsec, used when there is no WCS
    zero_points: {F444W: 28.08}                # used when the header has none
    filters: [F090W, F444W]                    # optional: restrict / declare names

Patterns may use ``*`` (any characters except ``/``) and ``{filt}``.  A file's
filter is the *longest* filter name for which the whole pattern matches, so
``F150W2`` is never read as ``F150W``.  Filter names come from galseg's filter
table (`galseg.imaging.filters`) and the entry's ``filters`` list.

Variables in ``dir``: ``{data}`` (the data directory setting), ``{demo}`` (the
sample shipped with galseg), ``{survey}``, ``{version}``, ``{instrument}`` and
``vars``.  Discovery only lists directories: nothing is created or modified.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError, read_yaml, settings, shipped_path
from .filters import _WAVELENGTHS, canonical_filter

__all__ = ["LayoutError", "BandFiles", "load_layouts", "discover_bands", "demo_dir"]


class LayoutError(ValueError):
    """A survey/version is not in any layout, or its files are missing or ambiguous."""


@dataclass
class BandFiles:
    """The files of one discovered band."""

    filt: str
    instrument: str
    im_path: Path
    im_ext: Any = 0
    rms_err_path: Path | None = None
    rms_err_ext: Any = None
    wht_path: Path | None = None
    wht_ext: Any = None
    pix_scale: float | None = None
    zp: float | None = None
    extra: dict = field(default_factory=dict)


def demo_dir() -> Path:
    """The folder of the sample field shipped inside the package."""
    from importlib import resources

    return Path(str(resources.files("galseg").joinpath("data", "demo")))


def load_layouts(extra=None) -> tuple[dict, list[str]]:
    """All layouts merged: shipped ``configs/layouts/*.yaml``, settings' ``layouts``, ``extra``.

    ``extra`` is a path, a dict, or a list of them.  Later sources override
    earlier ones per survey/version/instrument.  Returns ``(layouts, sources)``.
    """
    sources: list[Any] = sorted(shipped_path("layouts").glob("*.yaml"))
    sources += [Path(p).expanduser() for p in settings().get("layouts") or []]
    if extra is not None:
        sources += extra if isinstance(extra, (list, tuple)) else [extra]
    merged: dict = {}
    names = []
    for src in sources:
        if isinstance(src, dict):
            data, name = src, "<dict>"
        else:
            data, name = read_yaml(src), str(src)
        names.append(name)
        for survey, versions in data.items():
            if not isinstance(versions, dict):
                raise ConfigError(f"layout {name}: survey {survey!r} must map versions to instruments")
            for version, instruments in versions.items():
                if not isinstance(instruments, dict):
                    raise ConfigError(
                        f"layout {name}: {survey}/{version} must map instrument names to entries"
                    )
                slot = merged.setdefault(str(survey), {}).setdefault(str(version), {})
                for inst, entry in instruments.items():
                    if not isinstance(entry, dict) or "sci" not in entry:
                        raise ConfigError(
                            f"layout {name}: {survey}/{version}/{inst} needs at least 'dir' and 'sci'"
                        )
                    slot[str(inst)] = dict(entry, _source=name)
    return merged, names


def _pattern_regex(pattern: str, filt: str) -> re.Pattern:
    parts = re.split(r"(\*|\{filt\})", pattern)
    out = []
    for part in parts:
        if part == "*":
            out.append(r"[^/]*")
        elif part == "{filt}":
            out.append(re.escape(filt))
        else:
            out.append(re.escape(part))
    return re.compile("".join(out) + r"\Z", re.IGNORECASE)


def _format(template: str, variables: dict, what: str) -> str:
    try:
        return template.format(**variables)
    except (KeyError, IndexError) as exc:
        raise ConfigError(f"layout {what}: unknown variable {exc} in {template!r}") from None


def _match_one(files: list[str], pattern: str, filt: str) -> list[str]:
    regex = _pattern_regex(pattern, filt)
    return [f for f in files if regex.match(f)]


def discover_bands(survey: str, version: str, instruments=None, *, layout=None, data_dir=None) -> list[BandFiles]:
    """Find the bands of ``survey``/``version`` on disk from the layouts.

    Raises
    ------
    LayoutError
        Survey/version in no layout (lists the known ones), directory missing,
        no science file, several science files for one filter (lists them), or
        a band with neither rms_err nor wht map.
    """
    layouts, sources = load_layouts(layout)
    if survey not in layouts:
        raise LayoutError(
            f"survey {survey!r} is in no layout; known surveys: "
            f"{', '.join(sorted(layouts)) or 'none'} (layouts read: {', '.join(sources) or 'none'})"
        )
    if version not in layouts[survey]:
        raise LayoutError(
            f"version {version!r} of survey {survey!r} is in no layout; known versions: "
            + ", ".join(sorted(layouts[survey]))
        )
    entries = layouts[survey][version]
    if instruments is not None:
        wanted = [instruments] if isinstance(instruments, str) else list(instruments)
        unknown = [i for i in wanted if i not in entries]
        if unknown:
            raise LayoutError(
                f"instrument(s) {unknown} not in the layout of {survey}/{version}; "
                f"it has: {', '.join(entries)}"
            )
        entries = {i: entries[i] for i in wanted}

    data_root = Path(data_dir) if data_dir is not None else settings()["data_dir"]
    bands: dict[str, BandFiles] = {}
    for inst, entry in entries.items():
        where = f"{entry['_source']}: {survey}/{version}/{inst}"
        variables = dict(entry.get("vars") or {})
        variables.update(data=str(data_root), demo=str(demo_dir()), survey=survey,
                         version=version, instrument=inst)
        directory = Path(_format(str(entry.get("dir", "{data}")), variables, where)).expanduser()
        if not directory.is_dir():
            raise LayoutError(f"{where}: directory {directory} does not exist")
        files = sorted(p.name for p in directory.iterdir() if p.is_file())
        names = [canonical_filter(f) for f in entry.get("filters") or []] or list(_WAVELENGTHS)
        sci_pattern = _format(str(entry["sci"]), {**variables, "filt": "{filt}"}, where)
        regexes = [(n, _pattern_regex(sci_pattern, n)) for n in names]
        found: dict[str, list[str]] = {}
        for fname in files:
            hits = [n for n, regex in regexes if regex.match(fname)]
            if hits:
                found.setdefault(max(hits, key=len), []).append(fname)
        if entry.get("filters"):
            missing = [n for n in names if n not in found]
            if missing:
                raise LayoutError(
                    f"{where}: no science file matching {sci_pattern!r} in {directory} "
                    f"for filter(s) {', '.join(missing)}"
                )
        zps = {canonical_filter(k): v for k, v in (entry.get("zero_points") or {}).items()}
        for filt, sci_files in found.items():
            if len(sci_files) > 1:
                raise LayoutError(
                    f"{where}: {len(sci_files)} science files match filter {filt} in "
                    f"{directory}: {', '.join(sci_files)}; make the 'sci' pattern more specific"
                )
            band = BandFiles(
                filt=filt, instrument=inst, im_path=directory / sci_files[0],
                im_ext=entry.get("sci_ext", 0), pix_scale=entry.get("pix_scale"), zp=zps.get(filt),
            )
            for kind in ("rms_err", "wht"):
                pattern = entry.get(kind)
                if pattern is None:
                    continue
                pattern = _format(str(pattern), {**variables, "filt": "{filt}"}, where)
                hits = _match_one(files, pattern, filt)
                if len(hits) > 1:
                    raise LayoutError(
                        f"{where}: {len(hits)} {kind} files match filter {filt} in {directory}: "
                        f"{', '.join(hits)}; make the {kind!r} pattern more specific"
                    )
                if hits:
                    setattr(band, f"{kind}_path", directory / hits[0])
                    setattr(band, f"{kind}_ext", entry.get(f"{kind}_ext"))
            if band.rms_err_path is None and band.wht_path is None:
                raise LayoutError(
                    f"{where}: filter {filt} has a science file ({sci_files[0]}) but no rms_err "
                    f"or wht file matching {entry.get('rms_err')!r} / {entry.get('wht')!r}"
                )
            if filt in bands:
                raise LayoutError(
                    f"{survey}/{version}: filter {filt} found for two instruments "
                    f"({bands[filt].instrument} and {inst}); restrict with instruments=[...]"
                )
            bands[filt] = band
    if not bands:
        raise LayoutError(f"{survey}/{version}: no bands found by the layout ({', '.join(sources)})")
    return list(bands.values())
