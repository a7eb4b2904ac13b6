"""The data model: bands (`Band_Data`), band sets (`Data`), layouts and zero points."""

from .band import Band_Data
from .data import Data

__all__ = ["Band_Data", "Data"]
