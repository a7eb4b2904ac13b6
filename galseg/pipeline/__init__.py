"""Running bands through the engine and the product cache."""

from .band import band_params, segment_band

__all__ = ["segment_band", "band_params"]
