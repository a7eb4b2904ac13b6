"""Images of one band: SCI, RMS_ERR, WHT, SEG, BKG and MASK."""

from __future__ import annotations

import numpy as np

__all__ = ["plot_band", "segmap_cmap", "EXTENSIONS"]

EXTENSIONS = ("SCI", "RMS_ERR", "WHT", "SEG", "BKG", "MASK")


def segmap_cmap(nlabels: int, seed: int = 0):
    """A categorical colour map for a segmentation map: black sky, random bright colours.

    Random (seeded) hues make neighbouring segments differ, which an ordered
    colour map does not.
    """
    from matplotlib.colors import ListedColormap

    rng = np.random.default_rng(seed)
    n = max(int(nlabels), 1)
    hsv = np.column_stack([rng.uniform(0, 1, n), rng.uniform(0.45, 1, n), rng.uniform(0.6, 1, n)])
    from matplotlib.colors import hsv_to_rgb

    colours = np.vstack([[0.0, 0.0, 0.0], hsv_to_rgb(hsv)])
    return ListedColormap(colours)


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
        rms = band.load_rms_err()
        return (~np.isfinite(rms) | ~np.isfinite(band.load_im())).astype(np.uint8)
    raise ValueError(f"ext must be one of {', '.join(EXTENSIONS)}, got {ext!r}")


def _default_norm(ext: str, image: np.ndarray):
    from astropy.visualization import AsinhStretch, ImageNormalize, LinearStretch, ZScaleInterval

    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return None
    if ext == "SCI":
        # z-scale limits with an asinh stretch: faint structure and bright cores both visible.
        vmin, vmax = ZScaleInterval().get_limits(finite)
        vmax = max(vmax, np.percentile(finite, 99.8))
        return ImageNormalize(vmin=vmin, vmax=vmax, stretch=AsinhStretch(0.1), clip=True)
    if ext in ("RMS_ERR", "WHT", "BKG"):
        vmin, vmax = ZScaleInterval().get_limits(finite)
        if vmin == vmax:
            vmax = vmin + 1.0
        return ImageNormalize(vmin=vmin, vmax=vmax, stretch=LinearStretch(), clip=True)
    return None


def _region_slices(band, region, shape):
    if region is None:
        return slice(None), slice(None), (0, 0)
    if isinstance(region, (tuple, list)) and len(region) == 4:
        x0, x1, y0, y1 = (int(round(v)) for v in region)
    else:
        # (SkyCoord, size) with size an angle or a pixel count
        import astropy.units as u

        centre, size = region
        wcs = band.load_wcs()
        if wcs is None:
            raise ValueError(f"band {band.filt} has no WCS: give region as (x0, x1, y0, y1) pixels")
        x, y = wcs.world_to_pixel(centre)
        half = (size / band.pix_scale).to_value(u.dimensionless_unscaled) / 2 if hasattr(size, "unit") else size / 2
        x0, x1, y0, y1 = int(x - half), int(x + half) + 1, int(y - half), int(y + half) + 1
    ny, nx = shape
    x0, x1, y0, y1 = max(x0, 0), min(x1, nx), max(y0, 0), min(y1, ny)
    if x0 >= x1 or y0 >= y1:
        raise ValueError(f"region {region} does not overlap the {nx} x {ny} image")
    return slice(y0, y1), slice(x0, x1), (x0, y0)


def plot_band(band, ext="SEG", ax=None, norm=None, cmap=None, region=None, save=None, show=True):
    """Show one extension of a band.

    Parameters
    ----------
    band : `~galseg.Band_Data`
    ext : {"SCI", "RMS_ERR", "WHT", "SEG", "BKG", "MASK"}
        SEG and BKG need a previous ``band.segment()``.
    ax : matplotlib Axes, optional
    norm, cmap : optional
        Override the defaults (z-scale + asinh for SCI, z-scale for maps,
        a categorical colour map on black for SEG).
    region : (x0, x1, y0, y1) in pixels, or (SkyCoord, size), optional
        Zoom.
    save : path-like, optional
        Write the figure (PNG, PDF ...).
    show : bool
        Call ``plt.show()`` (ignored by non-interactive backends).

    Returns
    -------
    ax : matplotlib Axes
    """
    import matplotlib.pyplot as plt

    ext = str(ext).upper()
    image = _image_for(band, ext)
    ys, xs, (x0, y0) = _region_slices(band, region, image.shape)
    image = np.asarray(image[ys, xs])
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 6))
    if ext == "SEG":
        labels = int(image.max()) if image.size else 0
        cmap = cmap or segmap_cmap(int(np.max(band.load_seg())))
        norm = norm
        kwargs = dict(vmin=-0.5, vmax=cmap.N - 0.5) if norm is None else {}
        title = f"{band.filt} SEG ({labels} max label)"
    else:
        norm = norm if norm is not None else _default_norm(ext, image)
        cmap = cmap or ("gray_r" if ext == "MASK" else "gray" if ext == "SCI" else "viridis")
        kwargs = {}
        title = f"{band.filt} {ext}"
    extent = (x0 + 0.5, x0 + image.shape[1] + 0.5, y0 + 0.5, y0 + image.shape[0] + 0.5)
    im = ax.imshow(image, origin="lower", cmap=cmap, norm=norm, extent=extent,
                   interpolation="nearest", **kwargs)
    ax.set_title(f"{band.survey} {band.version} {title}")
    ax.set_xlabel("x [pix]")
    ax.set_ylabel("y [pix]")
    if ext not in ("SEG", "MASK"):
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if save is not None:
        ax.figure.savefig(save, dpi=120, bbox_inches="tight")
    if show:
        plt.show()
    return ax
