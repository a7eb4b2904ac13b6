"""Running galseg's numba kernels on several threads.

The row kernels (filtering, mesh statistics, background splines) are
compiled ``nogil`` and work on a range of rows; `ranges` runs them on
``numba.get_num_threads()`` Python threads (the limit `galseg.parallel` sets
for its workers), handing out chunks as threads become free: a numba
``parallel=True`` kernel costs a second, longer compilation on a fresh
install.  The measurement kernel is the exception (`numba_parallel`): there
the parallel compilation buys ~20 % of run time.  `readonly` gives kernels one argument type
per array; `small_pages` keeps NumPy off transparent huge pages; `UINDEX` is the index
type that lets kernel loops vectorise.
"""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

__all__ = ["ranges", "nthreads", "numba_parallel", "readonly", "small_pages", "warm_numba",
           "warming_numba", "meanwhile", "UINDEX"]

#: Index type for array indices a numba kernel knows to be non-negative.  numba
#: wraps negative indices around, and that test in a loop keeps LLVM from
#: vectorising it (a row scan costs ~8x more); kernels index with ``_U(i)``
#: (``_U = UINDEX``) where ``i`` cannot be negative (boxes clipped to the image,
#: mirror pixels checked first).  Loops over ``range(n)`` from 0 need nothing.
UINDEX = np.uint64

_LOCK = threading.Lock()
_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0
_POOL_PID = 0


def nthreads() -> int:
    """Threads the kernels may use (numba's thread count)."""
    return max(1, int(numba.get_num_threads()))


def _pool(n: int) -> ThreadPoolExecutor:
    global _POOL, _POOL_SIZE, _POOL_PID
    with _LOCK:
        # a forked child inherits the pool without its threads: a new one
        if _POOL is None or _POOL_SIZE != n or _POOL_PID != os.getpid():
            if _POOL is not None and _POOL_PID == os.getpid():
                _POOL.shutdown(wait=False)
            _POOL = ThreadPoolExecutor(max_workers=n, thread_name_prefix="galseg-kernel")
            _POOL_SIZE = n
            _POOL_PID = os.getpid()
        return _POOL


def ranges(kernel, n, chunk, *args):
    """``kernel(lo, hi, *args)`` over ``range(n)`` cut into ``chunk``-long
    pieces, on `nthreads` threads (the kernel must release the GIL and write
    only its own part of the outputs)."""
    n = int(n)
    chunk = max(int(chunk), 1)
    workers = min(nthreads(), (n + chunk - 1) // chunk)
    if workers <= 1:
        if n > 0:
            kernel(0, n, *args)
        return
    pool = _pool(nthreads())
    futures = [pool.submit(kernel, lo, min(lo + chunk, n), *args) for lo in range(0, n, chunk)]
    for f in futures:
        f.result()


_NUMBA_LOCK = threading.Lock()
_NUMBA_THREADSAFE = False


def numba_parallel(kernel, *args):
    """Call a ``parallel=True`` kernel, one prange iteration at a time per
    thread (dynamic scheduling), serialised between threads while numba's
    threading layer may be ``workqueue`` (which aborts on concurrent use)."""
    global _NUMBA_THREADSAFE
    with numba.parallel_chunksize(1):
        if _NUMBA_THREADSAFE:
            return kernel(*args)
        with _NUMBA_LOCK:
            out = kernel(*args)
            _NUMBA_THREADSAFE = numba.threading_layer() in ("omp", "tbb")
        return out


def readonly(a):
    """A read-only view of ``a``.

    numba compiles a kernel once per argument type, and a read-only array is
    another type than a writeable one: passing the arrays a kernel only reads
    as read-only views, whatever the caller's flags, compiles each kernel
    once (a cold compile of the measurement kernel alone takes ~10 s).
    """
    v = a.view()
    v.flags.writeable = False
    return v


_PAGES_LOCK = threading.Lock()
_PAGES_DEPTH = 0
_PAGES_SAVED = True


@contextlib.contextmanager
def small_pages():
    """NumPy allocations on ordinary pages (no transparent huge pages) for the
    duration.

    NumPy asks Linux for transparent huge pages for large arrays.  On a
    machine whose memory is fragmented (long-running, busy) each such page
    fault may cost the kernel a compaction: measured on the benchmark host,
    the engine's full-frame arrays spent ~0.3-0.8 s more in the kernel per
    8192x8192 run, sep's sparsely filled segmentation map alone up to 0.7 s.
    NumPy's switch is process-wide; nested and concurrent uses restore it
    once the last one ends, and other threads' allocations meanwhile only
    change page size.
    """
    global _PAGES_DEPTH, _PAGES_SAVED
    try:
        from numpy._core import multiarray as ma
        switch = ma._set_madvise_hugepage
    except (ImportError, AttributeError):  # another NumPy: leave it be
        yield
        return
    with _PAGES_LOCK:
        if _PAGES_DEPTH == 0:
            _PAGES_SAVED = switch(False)
        _PAGES_DEPTH += 1
    try:
        yield
    finally:
        with _PAGES_LOCK:
            _PAGES_DEPTH -= 1
            if _PAGES_DEPTH == 0:
                switch(_PAGES_SAVED)


_WARM = threading.Event()


def warm_numba() -> None:
    """numba's one-time set-up (its typing and lowering registries: ~0.3 s on
    the first call of any compiled function in a process).  Runs no kernel and
    starts no thread, so a process may fork safely afterwards."""
    if _WARM.is_set():
        return
    try:
        from numba.core.registry import cpu_target

        cpu_target.typing_context.refresh()
        cpu_target.target_context.refresh()
    except Exception:  # noqa: BLE001 - only an optimisation
        pass
    _WARM.set()


def load_cached_kernels(prefix: str = "galseg.") -> int:
    """Load every compiled kernel that numba's on-disk cache holds for the
    imported modules named ``prefix...`` (no compilation, no kernel run).

    A process pool's forkserver does this once, so that its workers start
    with the kernels in memory instead of each loading them on its first
    band (~0.2-0.3 s a worker and a pipeline stage).  Nothing runs, so no
    thread of numba's threading layer exists yet and forking stays safe.
    Returns the number of kernels loaded; 0 when it cannot (numba's cache
    layout is not public API: this is only an optimisation).
    """
    import sys

    try:
        from numba.core.caching import FunctionCache
        from numba.core.dispatcher import Dispatcher
    except ImportError:
        return 0
    loaded = 0
    for name, mod in list(sys.modules.items()):
        if not name.startswith(prefix) or mod is None:
            continue
        for obj in list(vars(mod).values()):
            if not (isinstance(obj, Dispatcher) and obj.py_func.__module__ == name):
                continue
            if obj.targetoptions.get("parallel"):
                # loading one initialises numba's threading layer, after
                # which GNU OpenMP forbids forking
                continue
            try:
                cache = obj._cache
                if not isinstance(cache, FunctionCache):
                    continue
                codegen = obj.targetctx.codegen()
                for key in list(cache._cache_file._load_index()):
                    sig = key[0]
                    # only entries of this source, this machine and numba
                    if key != cache._index_key(sig, codegen) or tuple(sig) in obj.overloads:
                        continue
                    cres = cache.load_overload(sig, obj.targetctx)
                    if cres is None or cres.objectmode:
                        continue
                    obj.targetctx.insert_user_function(cres.entry_point, cres.fndesc,
                                                       [cres.library])
                    obj.add_overload(cres)
                    loaded += 1
            except Exception:  # noqa: BLE001 - only an optimisation
                continue
    return loaded


@contextlib.contextmanager
def meanwhile(target, *, name: str):
    """Run ``target()`` on a helper thread while the body runs, and wait for
    it on exit (also when the body raises): no thread outlives the block."""
    t = threading.Thread(target=target, name=name, daemon=True)
    t.start()
    try:
        yield
    finally:
        t.join()


@contextlib.contextmanager
def warming_numba():
    """Do `warm_numba` on a helper thread while the body runs (e.g. while
    inputs are read), and wait for it on exit: no thread outlives the block,
    so the engine may fork afterwards."""
    if _WARM.is_set():
        yield
        return
    with meanwhile(warm_numba, name="galseg-numba-warm"):
        yield
