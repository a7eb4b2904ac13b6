"""Imported once by the forkserver, so that worker processes start with galseg loaded."""

import galseg.extract.engine  # noqa: F401
import galseg.extract.measure  # noqa: F401
import galseg.parallel.tasks  # noqa: F401
import galseg.pipeline  # noqa: F401


def _warm_numba():
    """numba's one-time set-up (its typing and lowering registries, ~0.3 s on
    the first call of any compiled function), done here once for all workers.
    It starts no thread, so forking stays safe; no kernel is run."""
    try:
        from numba.core.registry import cpu_target

        cpu_target.typing_context.refresh()
        cpu_target.target_context.refresh()
    except Exception:  # noqa: BLE001 - only an optimisation
        pass


_warm_numba()
