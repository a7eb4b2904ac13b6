"""Images of one band: SCI, RMS_ERR, WHT, SEG, BKG and MASK.

Axes are in 0-based pixel coordinates (pixel centres on integers, as in numpy
and astropy.wcs; SExtractor's ``X_IMAGE`` is ``x + 1``), drawn as RA/Dec
ticks when the band has a WCS and galseg creates the axes.  Overlays
(`galseg.plot.overlay`) use the same data coordinates.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["EXTENSIONS", "NORMS", "default_norm", "extent_of", "mask_image", "new_axes",
           "plot_band", "region_slices", "resolve_norm", "segmap_cmap"]

EXTENSIONS = ("SCI", "RMS_ERR", "WHT", "SEG", "BKG", "MASK")
NORMS = ("asinh", "zscale", "linear", "sqrt", "log")

_GOLDEN = 0.6180339887498949


def segmap_cmap(nlabels: int, seed: int = 0):
    """A categorical colour map for a segmentation map: black sky, bright colours.

    Label ``n`` gets hue ``frac(h0 + n * 0.618...)`` (the golden-ratio
    sequence), so consecutive labels -- deblended siblings are usually
    numbered close together -- get hues far apart; saturation and value are
    drawn at random (seeded) to separate labels whose hues happen to be near.
    Index 0 (sky) is black.
    """
    from matplotlib.colors import ListedColormap, hsv_to_rgb

    rng = np.random.default_rng(seed)
    n = max(int(nlabels), 1)
    hue = (rng.uniform() + np.arange(1, n + 1) * _GOLDEN) % 1.0
    hsv = np.column_stack([hue, rng.uniform(0.55, 1.0, n), rng.uniform(0.75, 1.0, n)])
    colours = np.vstack([[0.0, 0.0, 0.0], hsv_to_rgb(hsv)])
    return ListedColormap(colours, name="galseg_segmap")


def _image_for(band, ext: str):
    if ext == "SCI":
        return band.load_im()
    if ext == "RMS_ERR":
        return band.load_rms_err()
    if ext == "WHT":
        return band.load_wht()
    if ext == "SEG":
        return band.load_seg()
    if ext == "BKG":
        return band.load_bkg()
    if ext == "MASK":
        return mask_image(band)
    raise ValueError(f"ext must be one of {', '.join(EXTENSIONS)}, got {ext!r}")


def mask_image(band) -> np.ndarray:
    """1 where a pixel has no valid data (non-finite science, or no noise/weight), else 0."""
    rms = band.load_rms_err()
    return (~np.isfinite(rms) | ~np.isfinite(band.load_im())).astype(np.uint8)


def _finite_sample(image: np.ndarray, nmax: int = 1_000_000) -> np.ndarray:
    finite = image[np.isfinite(image)]
    if finite.size > nmax:
        # limits from a regular subsample: the same answer to a few 1e-3, much faster
        finite = finite[:: finite.size // nmax + 1]
    return finite


def default_norm(ext: str, image: np.ndarray, kind: str | None = None):
    """The default normalisation for ``ext`` (or the named ``kind``) of ``image``.

    ``"asinh"`` (SCI default): z-scale lower limit, upper limit the larger of
    the z-scale one and the 99.8th percentile, asinh stretch -- faint
    structure and bright cores both visible.  ``"zscale"`` (RMS_ERR, WHT, BKG
    default): linear between the z-scale limits.  ``"linear"``: min to max.
    ``"sqrt"``: like asinh limits with a square-root stretch.  ``"log"``:
    log stretch above the smallest positive value (never a zero or negative
    lower limit, which matplotlib's LogNorm rejects).  Returns None for
    SEG/MASK or an image with no finite pixel.
    """
    from astropy.visualization import (AsinhStretch, ImageNormalize, LinearStretch, LogStretch,
                                       SqrtStretch, ZScaleInterval)

    kind = kind or {"SCI": "asinh", "RMS_ERR": "zscale", "WHT": "zscale", "BKG": "zscale"}.get(ext)
    if kind is None:
        return None
    finite = _finite_sample(np.asarray(image))
    if finite.size == 0:
        return None
    if kind not in NORMS:
        raise ValueError(f"norm must be a matplotlib Normalize or one of {NORMS}, got {kind!r}")
    if kind == "linear":
        vmin, vmax = float(finite.min()), float(finite.max())
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            vmin, vmax = ZScaleInterval().get_limits(finite)
        if kind in ("asinh", "sqrt", "log"):
            vmax = max(vmax, float(np.percentile(finite, 99.8)))
    if kind == "log":
        positive = finite[finite > 0]
        if positive.size == 0:
            return default_norm(ext, image, "zscale")
        vmin = max(vmin, float(positive.min()))
        vmax = max(vmax, vmin * 10)
    if not vmax > vmin:
        vmax = vmin + (abs(vmin) if vmin else 1.0)
    stretch = {"asinh": AsinhStretch(0.1), "sqrt": SqrtStretch(), "log": LogStretch(1000),
               "zscale": LinearStretch(), "linear": LinearStretch()}[kind]
    return ImageNormalize(vmin=vmin, vmax=vmax, stretch=stretch, clip=True)


def resolve_norm(norm, ext: str, image: np.ndarray):
    """Turn ``norm`` (None, a name from `NORMS`, or a Normalize) into one safe to draw.

    A `matplotlib.colors.LogNorm` whose ``vmin`` is None, zero or negative (as
    galfind's default ``LogNorm(vmin=0)``) makes matplotlib raise
    ``ValueError: Invalid vmin or vmax``; it is replaced by a clipping copy
    with ``vmin`` the median of the positive finite pixels (about the sky
    noise level on a sky-dominated image, so noise does not fill the
    frame) and ``vmax`` the largest pixel.  The caller's object is never
    modified.
    """
    from matplotlib.colors import LogNorm

    if norm is None:
        return default_norm(ext, image)
    if isinstance(norm, str):
        return default_norm(ext, image, norm.lower())
    if isinstance(norm, LogNorm):
        vmin, vmax = norm.vmin, norm.vmax
        if vmin is None or not vmin > 0 or vmax is None or not vmax > (vmin or 0):
            finite = _finite_sample(np.asarray(image, dtype=float))
            positive = finite[finite > 0]
            lo = float(np.median(positive)) if positive.size else 1e-10
            hi = float(positive.max()) if positive.size else 1.0
            vmin = vmin if (vmin is not None and vmin > 0) else lo
            vmax = vmax if (vmax is not None and vmax > vmin) else max(hi, vmin * 10)
            return LogNorm(vmin=vmin, vmax=vmax, clip=True)
    return norm


def region_slices(band, region, shape=None):
    """``(slice_y, slice_x)`` and ``(x0, y0)`` of a zoom region, clipped to the image.

    ``region`` is ``(x0, x1, y0, y1)`` in 0-based pixels (half-open, as
    slices), ``(SkyCoord, size)`` with ``size`` an angle or pixels, or a
    `~galseg.sources.Source`/``Candidate`` (its box plus a margin).
    """
    shape = band.shape if shape is None else shape
    if region is None:
        return slice(0, shape[0]), slice(0, shape[1]), (0, 0)
    bbox = getattr(region, "bbox", None)
    if bbox is not None:
        ys, xs = bbox
        pad = max(5, int(0.25 * max(ys.stop - ys.start, xs.stop - xs.start)))
        x0, x1, y0, y1 = xs.start - pad, xs.stop + pad, ys.start - pad, ys.stop + pad
    elif isinstance(region, (tuple, list)) and len(region) == 4:
        x0, x1, y0, y1 = (int(round(float(v))) for v in region)
    elif isinstance(region, (tuple, list)) and len(region) == 2:
        from ..sources import _pixel_length, _pixel_position

        centre, size = region
        x, y = _pixel_position(band, centre)
        half = _pixel_length(band, size, "region size") / 2
        x0, x1 = int(np.floor(x - half + 0.5)), int(np.floor(x + half + 0.5)) + 1
        y0, y1 = int(np.floor(y - half + 0.5)), int(np.floor(y + half + 0.5)) + 1
    else:
        raise ValueError(
            "region must be (x0, x1, y0, y1) pixels, (SkyCoord or (x, y), size) or a Source; "
            f"got {region!r}"
        )
    ny, nx = shape
    cx0, cx1, cy0, cy1 = max(x0, 0), min(x1, nx), max(y0, 0), min(y1, ny)
    if cx0 >= cx1 or cy0 >= cy1:
        raise ValueError(f"region {region!r} does not overlap the {nx} x {ny} image")
    return slice(cy0, cy1), slice(cx0, cx1), (cx0, cy0)


# Kept for callers of the first version.
_region_slices = region_slices


def _use_sky(band, ax, coords):
    if coords not in ("auto", "sky", "pixel"):
        raise ValueError(f"coords must be 'auto', 'sky' or 'pixel', got {coords!r}")
    if coords == "pixel":
        return None
    wcs = band.load_wcs()
    if wcs is None:
        if coords == "sky":
            raise ValueError(f"band {band.filt} has no WCS: use coords='pixel'")
        return None
    if ax is not None and not hasattr(ax, "coords"):
        # a plain Axes from the caller: cannot switch it to a WCS projection
        return None
    return wcs


def new_axes(band, ax=None, coords="auto", figsize=(6, 6)):
    """``ax`` or new axes (a WCSAxes with RA/Dec ticks when the band has a WCS)."""
    import matplotlib.pyplot as plt

    wcs = _use_sky(band, ax, coords)
    if ax is None:
        fig = plt.figure(figsize=figsize)
        ax = fig.add_subplot(111, projection=wcs) if wcs is not None else fig.add_subplot(111)
    label_axes(ax, wcs is not None)
    return ax


def label_axes(ax, sky: bool):
    if sky and hasattr(ax, "coords"):
        ax.coords[0].set_axislabel("RA")
        ax.coords[1].set_axislabel("Dec")
        ax.coords[0].set_major_formatter("hh:mm:ss.s")
        ax.coords[1].set_major_formatter("dd:mm:ss")
    else:
        ax.set_xlabel("x [pix]")
        ax.set_ylabel("y [pix]")


def extent_of(x0, y0, shape):
    """imshow extent of an array whose pixel [0, 0] is full-frame pixel (x0, y0)."""
    return (x0 - 0.5, x0 + shape[1] - 0.5, y0 - 0.5, y0 + shape[0] - 0.5)


def plot_band(band, ext="SEG", ax=None, norm=None, cmap=None, region=None, save=None, show=True,
              *, coords="auto", colorbar=True, title=None):
    """Show one extension of a band.

    Parameters
    ----------
    band : `~galseg.Band_Data`
    ext : {"SCI", "RMS_ERR", "WHT", "SEG", "BKG", "MASK"}
        SEG and BKG need a previous ``band.segment()``.  MASK is 1 (black)
        where a pixel has no valid data.
    ax : matplotlib Axes, optional
        Draw there; by default new axes, with RA/Dec ticks when a WCS exists.
    norm : Normalize or {"asinh", "zscale", "linear", "sqrt", "log"}, optional
        Default z-scale + asinh for SCI, z-scale for RMS_ERR/WHT/BKG.  A
        ``LogNorm`` with a non-positive ``vmin`` is made safe (see
        `resolve_norm`).
    cmap : colormap or name, optional
        Default grey for SCI, viridis for maps, a categorical map on black
        for SEG (`segmap_cmap`).
    region : optional
        Zoom: ``(x0, x1, y0, y1)`` 0-based pixels, ``(SkyCoord or (x, y), size)``
        with ``size`` in pixels or an angle, or a `~galseg.sources.Source`.
    save : path-like, optional
        Write the figure (PNG, PDF ...).
    show : bool
        Call ``plt.show()`` (a no-op with non-interactive backends).
    coords : {"auto", "sky", "pixel"}
        Tick labels in RA/Dec (when a WCS exists and the axes are galseg's)
        or pixels.
    colorbar : bool
        Add a colour bar (not for SEG or MASK).
    title : str, optional
        Default ``"<survey> <version> <filter> <ext>"``.

    Returns
    -------
    ax : matplotlib Axes
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    ext = str(ext).upper()
    if ext not in EXTENSIONS:
        raise ValueError(f"ext must be one of {', '.join(EXTENSIONS)}, got {ext!r}")
    full = _image_for(band, ext)
    ys, xs, (x0, y0) = region_slices(band, region, full.shape)
    image = np.asarray(full[ys, xs])
    ax = new_axes(band, ax, coords)
    kwargs = {}
    if ext == "SEG":
        nmax = int(full.max()) if full.size else 0
        cmap = cmap or segmap_cmap(nmax)
        if norm is None:
            kwargs = dict(vmin=-0.5, vmax=cmap.N - 0.5)
        shown = np.unique(image)
        default_title = f"SEG ({np.count_nonzero(shown)} segments shown, max label {nmax})"
    else:
        norm = resolve_norm(norm, ext, image)
        cmap = cmap or ("gray_r" if ext == "MASK" else "gray" if ext == "SCI" else "viridis")
        if isinstance(norm, LogNorm):
            # LogNorm masks pixels <= 0: draw them as the lowest colour, not as holes
            cmap = plt.get_cmap(cmap)
            cmap = cmap.with_extremes(bad=cmap(0.0))
        if ext == "MASK":
            kwargs = dict(vmin=0, vmax=1)
            default_title = f"MASK ({100 * image.mean():.1f}% masked)"
        else:
            default_title = ext
    im = ax.imshow(image, origin="lower", cmap=cmap, norm=norm, extent=extent_of(x0, y0, image.shape),
                   interpolation="nearest", **kwargs)
    ax.set_xlim(x0 - 0.5, x0 + image.shape[1] - 0.5)
    ax.set_ylim(y0 - 0.5, y0 + image.shape[0] - 0.5)
    ax.set_title(title if title is not None else
                 f"{band.survey} {band.version} {band.filt} {default_title}")
    if colorbar and ext not in ("SEG", "MASK"):
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if save is not None:
        ax.figure.savefig(save, dpi=120, bbox_inches="tight")
    if show:
        plt.show()
    return ax
