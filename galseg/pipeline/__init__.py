"""Running bands through the engine and the product cache."""

from .band import band_params, segment_band
from .catalog import SHARED_COLUMNS, join_forced, multiband_catalog
from .forced import (DetectionState, ForcedPhotResult, detection_state, perform_forced_phot,
                     read_catalog, sextractor_dual)
from .stack import parse_band_list, stack_bands, stack_name

__all__ = [
    "segment_band",
    "band_params",
    "stack_bands",
    "stack_name",
    "parse_band_list",
    "perform_forced_phot",
    "detection_state",
    "DetectionState",
    "ForcedPhotResult",
    "sextractor_dual",
    "read_catalog",
    "join_forced",
    "multiband_catalog",
    "SHARED_COLUMNS",
]
