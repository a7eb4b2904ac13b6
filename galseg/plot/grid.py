"""All bands of a `~galseg.Data` side by side."""

from __future__ import annotations

import math

__all__ = ["plot_data"]


def plot_data(data, ext="SEG", ncols=None, region=None, *, overlay=False, panel_size=3.6,
              coords="auto", norm=None, cmap=None, save=None, show=True, **overlay_kwargs):
    """A grid with one panel per band, in wavelength order.

    Parameters
    ----------
    data : `~galseg.Data`
    ext : {"SCI", "RMS_ERR", "WHT", "SEG", "BKG", "MASK"}
        What each panel shows (see `~galseg.plot.images.plot_band`).
    ncols : int, optional
        Panels per row; default one row up to 5 bands, else a near-square grid.
    region : optional
        The same zoom for every band (pixels, or sky position + size, which
        follows each band's own WCS).
    overlay : bool
        Draw `~galseg.plot.overlay.plot_overlay` panels instead (segments over
        SCI); ``overlay_kwargs`` go to it (``alpha``, ``kron``, ``labels`` ...).
    panel_size : float
        Inches per panel.
    coords : {"auto", "sky", "pixel"}
        RA/Dec panels for bands with a WCS.
    norm, cmap, save, show
        As in `~galseg.plot.images.plot_band`.

    Returns
    -------
    fig : matplotlib Figure
    """
    import matplotlib.pyplot as plt

    from .images import _use_sky, plot_band
    from .overlay import plot_overlay

    bands = list(data)
    n = len(bands)
    ncols = (n if n <= 5 else math.ceil(math.sqrt(n))) if ncols is None else max(1, int(ncols))
    nrows = math.ceil(n / ncols)
    fig = plt.figure(figsize=(panel_size * ncols + 0.4, panel_size * nrows + 0.3))
    for i, band in enumerate(bands):
        wcs = _use_sky(band, None, coords)
        ax = fig.add_subplot(nrows, ncols, i + 1, projection=wcs)
        if overlay:
            plot_overlay(band, ax=ax, region=region, coords=coords, norm=norm, show=False,
                         title=band.filt, **overlay_kwargs)
        else:
            plot_band(band, ext, ax=ax, norm=norm, cmap=cmap, region=region, show=False,
                      coords=coords, colorbar=False, title=f"{band.filt} {str(ext).upper()}")
        if i % ncols:
            # shared look: only the first column keeps its y label
            if hasattr(ax, "coords"):
                ax.coords[1].set_axislabel(" ")
            else:
                ax.set_ylabel("")
    first = bands[0]
    fig.suptitle(f"{first.survey} {first.version}: {n} bands", fontsize=11)
    fig.tight_layout()
    if save is not None:
        fig.savefig(save, dpi=110, bbox_inches="tight")
    if show:
        plt.show()
    return fig
