"""The product cache: segmentation/background maps and catalogues on disk, rerun-safe.

Products live in a readable tree under a work directory (see
`galseg.products.naming`), keyed by everything that changes them (input
content, parameters, versions: `make_key`).  Writes are atomic, the JSON
sidecar is the commit marker, an inter-process lock makes concurrent runs of
one band compute it once, and a cached rerun costs a sidecar read and a few
``stat`` calls.  Nothing here computes anything scientific.

Typical use::

    key = make_key({"sci": (sci_path, 0), "rms": (rms_path, 0)},
                   err_type="rms_err", method="sep", params=params)
    entry = ProductStore(work_dir).entry("NIRCam", "v11", "JADES", "F444W", "MAP_RMS", key)
    out = get_or_compute(entry, lambda: run_extraction(...), overwrite=False)
    seg = out.entry.load_seg()
"""

from .fingerprint import clear_fingerprint_cache, input_fingerprint
from .key import ProductKey, describe_difference, library_versions, make_key
from .lock import FileLock, LockLost, LockTimeout
from .manage import clean, list_products, parse_age
from .naming import product_dir, product_stem, safe_component
from .provenance import read_provenance
from .store import CacheOutcome, InputChangedError, ProductEntry, ProductStore, get_or_compute

__all__ = [
    "CacheOutcome",
    "FileLock",
    "InputChangedError",
    "LockLost",
    "LockTimeout",
    "ProductEntry",
    "ProductKey",
    "ProductStore",
    "clean",
    "clear_fingerprint_cache",
    "describe_difference",
    "get_or_compute",
    "input_fingerprint",
    "library_versions",
    "list_products",
    "make_key",
    "parse_age",
    "product_dir",
    "product_stem",
    "read_provenance",
    "safe_component",
]
