"""Running bands in parallel: local worker processes or a Dask cluster.

See `map_bands`.  Tasks are small picklable descriptions (`BandSpec` plus the
run's arguments); each worker opens its band, writes the products into the
cache and returns a summary, and the parent loads the cached products.
"""

from .executor import BandTaskError, default_workers, map_bands, runs_in_process, shutdown_pools
from .tasks import BandSpec, SegmentTask, segment_entry, segment_task

__all__ = [
    "BandSpec",
    "BandTaskError",
    "SegmentTask",
    "default_workers",
    "map_bands",
    "runs_in_process",
    "segment_entry",
    "segment_task",
    "shutdown_pools",
]
