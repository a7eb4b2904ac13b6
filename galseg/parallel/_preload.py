"""Imported once by the forkserver, so that worker processes start with galseg loaded."""

import galseg.extract.engine  # noqa: F401
import galseg.extract.measure  # noqa: F401
import galseg.parallel.tasks  # noqa: F401
import galseg.pipeline  # noqa: F401
from galseg.extract._parallel import load_cached_kernels, warm_numba

# once for all workers (see warm_numba: forking stays safe)
warm_numba()
load_cached_kernels()
