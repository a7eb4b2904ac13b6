"""Segments over the image, Kron ellipses and apertures; differences of two segmentations."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .images import extent_of, new_axes, region_slices, resolve_norm, segmap_cmap

__all__ = ["SegDifference", "difference", "plot_difference", "plot_overlay"]


def _catalogue_in_view(cat, ys, xs, margin):
    """Rows whose centroid lies within the view (plus ``margin`` px)."""
    x = np.asarray(cat["X_IMAGE"], dtype=float) - 1.0
    y = np.asarray(cat["Y_IMAGE"], dtype=float) - 1.0
    keep = ((x >= xs.start - margin) & (x < xs.stop + margin)
            & (y >= ys.start - margin) & (y < ys.stop + margin))
    return np.flatnonzero(keep), x, y


def plot_overlay(band, alpha=0.5, ax=None, region=None, *, kron=True, apertures=False,
                 labels=True, norm=None, cmap="gray", seg_cmap=None, coords="auto",
                 max_labels=150, kron_color="white", aper_color="yellow", label_color="white",
                 linewidth=0.8, title=None, save=None, show=True):
    """Colour-coded segments over the science image.

    Parameters
    ----------
    band : `~galseg.Band_Data`
        A segmented band.
    alpha : float
        Opacity of the segment colours (0: image only, 1: segments opaque).
    ax, region, coords, title, save, show
        As in `~galseg.plot.images.plot_band`.
    kron : bool
        Draw each source's Kron (AUTO) ellipse: semi-axes
        ``KRON_RADIUS * A_IMAGE`` and ``KRON_RADIUS * B_IMAGE`` at ``THETA_IMAGE``.
    apertures : bool
        Draw the fixed circular apertures (the band's ``aper_diams``) at
        ``X_IMAGE, Y_IMAGE``; needs a pixel scale.
    labels : bool
        Write each source's NUMBER at its centroid; at most ``max_labels``
        (the brightest by FLUX_AUTO) so crowded views stay legible.
    norm, cmap
        Of the science image (default z-scale + asinh, grey).
    seg_cmap : Colormap, optional
        Default `~galseg.plot.images.segmap_cmap`, the same colours as
        ``band.plot("SEG")``.

    Returns
    -------
    ax : matplotlib Axes
    """
    import matplotlib.pyplot as plt
    from matplotlib.collections import EllipseCollection

    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    sci = band.load_im()
    seg = band.load_seg()
    cat = band.load_cat()
    ys, xs, (x0, y0) = region_slices(band, region, sci.shape)
    image = np.asarray(sci[ys, xs])
    segv = np.asarray(seg[ys, xs])
    ax = new_axes(band, ax, coords)
    extent = extent_of(x0, y0, image.shape)
    ax.imshow(image, origin="lower", cmap=cmap, norm=resolve_norm(norm, "SCI", image),
              extent=extent, interpolation="nearest")
    seg_cmap = seg_cmap or segmap_cmap(int(seg.max()) if seg.size else 0)
    rgba = seg_cmap(np.clip(segv, 0, seg_cmap.N - 1))
    rgba[..., 3] = np.where(segv > 0, alpha, 0.0)
    ax.imshow(rgba, origin="lower", extent=extent, interpolation="nearest")

    rows, x, y = _catalogue_in_view(cat, ys, xs, margin=0)
    if kron and len(rows) and all(c in cat.colnames for c in ("KRON_RADIUS", "A_IMAGE", "B_IMAGE",
                                                               "THETA_IMAGE")):
        k = np.asarray(cat["KRON_RADIUS"], dtype=float)[rows]
        a = np.asarray(cat["A_IMAGE"], dtype=float)[rows] * k
        b = np.asarray(cat["B_IMAGE"], dtype=float)[rows] * k
        theta = np.asarray(cat["THETA_IMAGE"], dtype=float)[rows]
        ok = np.isfinite(a) & np.isfinite(b) & np.isfinite(theta) & (a > 0)
        if ok.any():
            ax.add_collection(EllipseCollection(
                2 * a[ok], 2 * b[ok], theta[ok], units="xy",
                offsets=np.column_stack([x[rows][ok], y[rows][ok]]),
                offset_transform=ax.transData, facecolors="none", edgecolors=kron_color,
                linewidths=linewidth))
    if apertures and len(rows):
        diams = np.atleast_1d(band.aper_diams_pix)
        n = len(rows)
        offsets = np.tile(np.column_stack([x[rows], y[rows]]), (len(diams), 1))
        widths = np.repeat(diams, n)
        ax.add_collection(EllipseCollection(
            widths, widths, np.zeros_like(widths), units="xy", offsets=offsets,
            offset_transform=ax.transData, facecolors="none", edgecolors=aper_color,
            linewidths=linewidth * 0.6, linestyles="--"))
    if labels and len(rows):
        chosen = rows
        if len(rows) > max_labels:
            flux = np.nan_to_num(np.asarray(cat["FLUX_AUTO"], dtype=float)[rows], nan=-np.inf)
            chosen = rows[np.argsort(flux)[::-1][:max_labels]]
        numbers = np.asarray(cat["NUMBER"])[chosen]
        for num, xi, yi in zip(numbers, x[chosen], y[chosen]):
            ax.text(xi, yi, str(int(num)), color=label_color, fontsize=7, ha="center",
                    va="center", clip_on=True)
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    what = ", ".join(w for w, on in (("Kron", kron), ("apertures", apertures)) if on)
    ax.set_title(title if title is not None else
                 f"{band.survey} {band.filt}: {len(rows)} sources" + (f" ({what})" if what else ""))
    if save is not None:
        ax.figure.savefig(save, dpi=120, bbox_inches="tight")
    if show:
        plt.show()
    return ax


# ----------------------------------------------------------------- difference
@dataclass(frozen=True, eq=False)
class SegDifference:
    """Pixels in one segmentation's footprint and not the other's.

    Attributes
    ----------
    only_a, only_b, both : ndarray of bool
        Footprint pixels (segment value > 0) in ``a`` only, ``b`` only, both.
    """

    only_a: np.ndarray = field(repr=False)
    only_b: np.ndarray = field(repr=False)
    both: np.ndarray = field(repr=False)

    @property
    def n_only_a(self) -> int:
        return int(self.only_a.sum())

    @property
    def n_only_b(self) -> int:
        return int(self.only_b.sum())

    @property
    def n_both(self) -> int:
        return int(self.both.sum())

    @property
    def jaccard(self) -> float:
        """|A and B| / |A or B| of the two footprints (1 when identical)."""
        union = self.n_only_a + self.n_only_b + self.n_both
        return self.n_both / union if union else 1.0

    def __repr__(self):
        return (f"SegDifference(only_a={self.n_only_a} px, only_b={self.n_only_b} px, "
                f"both={self.n_both} px, jaccard={self.jaccard:.4f})")


def _as_seg(x, what):
    if hasattr(x, "load_seg"):
        return x.load_seg()
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{what} must be a 2-D segmentation map or a Band_Data, got shape {arr.shape}")
    return arr


def difference(a, b) -> SegDifference:
    """Compare the footprints of two segmentations of the same image.

    Parameters
    ----------
    a, b : 2-D int arrays or `~galseg.Band_Data`
        Segmentation maps (or bands, whose current ``load_seg()`` is used),
        e.g. the ``err_type="wht"`` and ``"rms_err"`` runs of one band, or two
        configs.

    Returns
    -------
    `SegDifference`
    """
    sa, sb = _as_seg(a, "a"), _as_seg(b, "b")
    if sa.shape != sb.shape:
        raise ValueError(f"segmentations differ in shape: {sa.shape} and {sb.shape}")
    fa, fb = sa > 0, sb > 0
    return SegDifference(only_a=fa & ~fb, only_b=fb & ~fa, both=fa & fb)


def plot_difference(a, b, band=None, ax=None, labels=("A", "B"), region=None, *, alpha=0.8,
                    colors=("tab:red", "tab:cyan", "0.55"), coords="auto", title=None,
                    save=None, show=True):
    """Show where two segmentations' footprints differ.

    Pixels only in ``a`` are drawn in ``colors[0]``, only in ``b`` in
    ``colors[1]``, in both in ``colors[2]``; over the science image when
    ``band`` is given (else on black).

    Returns
    -------
    ax : matplotlib Axes
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba
    from matplotlib.patches import Patch

    diff = difference(a, b)
    shape = diff.both.shape
    band = band if band is not None else (a if hasattr(a, "load_im") else None)
    if band is not None:
        ys, xs, (x0, y0) = region_slices(band, region, shape)
        ax = new_axes(band, ax, coords)
    else:
        if region is not None and not (isinstance(region, (tuple, list)) and len(region) == 4):
            raise ValueError("without a band, region must be (x0, x1, y0, y1) pixels")
        x0, x1, y0, y1 = region if region is not None else (0, shape[1], 0, shape[0])
        ys, xs = slice(max(y0, 0), min(y1, shape[0])), slice(max(x0, 0), min(x1, shape[1]))
        x0, y0 = xs.start, ys.start
        if ax is None:
            _, ax = plt.subplots(figsize=(6, 6))
        ax.set_xlabel("x [pix]")
        ax.set_ylabel("y [pix]")
    view = (ys, xs)
    extent = extent_of(x0, y0, diff.both[view].shape)
    if band is not None:
        image = np.asarray(band.load_im()[view])
        ax.imshow(image, origin="lower", cmap="gray", norm=resolve_norm(None, "SCI", image),
                  extent=extent, interpolation="nearest")
    else:
        ax.set_facecolor("black")
    rgba = np.zeros(diff.both[view].shape + (4,))
    for mask, colour in zip((diff.both, diff.only_a, diff.only_b), (colors[2], colors[0], colors[1])):
        rgba[mask[view]] = to_rgba(colour, alpha)
    ax.imshow(rgba, origin="lower", extent=extent, interpolation="nearest")
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.legend(handles=[Patch(color=colors[0], label=f"only {labels[0]}: {diff.n_only_a} px"),
                       Patch(color=colors[1], label=f"only {labels[1]}: {diff.n_only_b} px"),
                       Patch(color=colors[2], label=f"both: {diff.n_both} px")],
              loc="upper right", fontsize=7, framealpha=0.7)
    ax.set_title(title if title is not None else
                 f"footprints {labels[0]} vs {labels[1]} (Jaccard {diff.jaccard:.3f})")
    if save is not None:
        ax.figure.savefig(save, dpi=120, bbox_inches="tight")
    if show:
        plt.show()
    return ax
