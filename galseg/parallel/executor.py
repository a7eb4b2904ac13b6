"""Running band tasks in parallel: a local process pool, or a Dask cluster.

sep and galseg's kernels hold the GIL for most of a band's work, so bands run
in separate *processes*, never threads.  `map_bands` sends each task (a small
picklable description, see `galseg.parallel.tasks`) to a worker, which opens
the band itself and writes its products into the cache; each worker process
runs one band at a time, so memory stays at about one band per worker.

Backends
--------
``scheduler=None``
    A local `concurrent.futures.ProcessPoolExecutor` with the ``forkserver``
    start method (``spawn`` where forkserver is unavailable).  The forkserver
    imports galseg's engine once, so workers start without paying the import
    again (unless the current directory holds another galseg than the one
    imported here: then workers import it themselves, from this process's
    ``sys.path``).  ``workers=None`` uses one process per CPU (at most one per task);
    one task or ``workers=1`` runs in this process, without a pool.  While a new
    pool's processes start (~1-1.5 s), this process runs tasks itself, from the
    end of the list, one at a time (not while the kernels still have to be
    compiled).
``scheduler=distributed.Client`` or an address (``"tcp://host:8786"``)
    The tasks go to the Dask cluster (``Client.map`` with ``pure=False``);
    a client made here from an address is closed afterwards.  Workers must
    be processes (``processes=True`` for a ``LocalCluster``) with one thread
    each for the best throughput, and must see the input files and the work
    directory at the same paths.

Each worker limits numba's threads to its share of the CPUs, so that N
workers do not start N x CPU threads.

Warm workers
------------
A worker's first band pays for loading galseg's compiled (numba) kernels,
about a second.  The local pool is therefore kept after a call and reused by
the next one with the same number of workers (``Data.segment`` followed by
``Data.perform_forced_phot`` run on the same warm processes); it shuts down
after `POOL_IDLE_TIMEOUT` seconds without work, at interpreter exit, or on
`shutdown_pools`.  Set ``galseg.parallel.executor.POOL_IDLE_TIMEOUT = 0`` to
shut every pool down as soon as its call ends.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing as mp
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

__all__ = ["map_bands", "runs_in_process", "default_workers", "shutdown_pools", "BandTaskError",
           "POOL_IDLE_TIMEOUT"]

log = logging.getLogger("galseg.parallel")

# Imported by the forkserver before it forks workers.
_PRELOAD = ["galseg.parallel._preload"]

#: Seconds an idle local pool is kept for reuse (0: shut down after each call).
POOL_IDLE_TIMEOUT = 120.0

_POOLS: dict[int, ProcessPoolExecutor] = {}
_TIMERS: dict[int, threading.Timer] = {}
_POOL_LOCK = threading.Lock()


class BandTaskError(RuntimeError):
    """A band task failed in a worker; the message names the band."""


_BROKEN_HINT = (
    " (a worker process died: out of memory, or, when galseg runs from a script, "
    "a script without an `if __name__ == \"__main__\":` guard around its main code "
    "(workers import the script again); workers=1 runs in this process)")


def default_workers(ntasks: int) -> int:
    """One process per CPU available to this process, at most one per task."""
    try:
        ncpu = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        ncpu = os.cpu_count() or 1
    return max(1, min(int(ntasks), ncpu))


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _limit_threads(threads: int | None) -> None:
    """Give this worker process ``threads`` numba/BLAS threads."""
    if not threads:
        return
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    try:
        import numba

        numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))
    except Exception:  # noqa: BLE001 - numba absent or threading layer refuses: keep defaults
        pass


def _call(fn: Callable, task: Any, threads: int | None):
    """Run one task in a worker (also the Dask task body)."""
    _limit_threads(threads)
    return fn(task)


def _progress(total: int, desc: str, enabled: bool, unit: str = "band"):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional (the "parallel" extra)
        return None
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False)


def _label(task, i: int) -> str:
    return str(getattr(task, "label", None) or f"task {i}")


def _preload_is_safe() -> bool:
    """Whether the forkserver would import the same galseg as this process.

    The forkserver imports its preload modules before it takes this
    process's ``sys.path`` (CPython <= 3.12 ignores it there): it sees the
    current directory first, then the rest of ``sys.path``.  A different
    ``galseg`` found that way (a source checkout in the current directory,
    say) must not be preloaded, or workers would run other code than this
    process.
    """
    import importlib.machinery

    import galseg

    here = Path(galseg.__file__).resolve().parent
    try:
        spec = importlib.machinery.PathFinder.find_spec("galseg", [os.getcwd(), *sys.path[1:]])
    except (OSError, ValueError):
        return False
    if spec is None or spec.origin is None:
        return True  # found by a meta-path finder (e.g. an editable install), as here
    return Path(spec.origin).resolve().parent == here


def _mp_context(preload: Sequence[str] | None = None):
    """The start method for worker processes: forkserver with galseg preloaded, else spawn.

    ``preload`` lists modules for the forkserver to import (default galseg's
    engine); they are preloaded only when the forkserver would import the
    same galseg as this process (`_preload_is_safe`).  The forkserver is
    shared by the whole process: the first pool to start it decides.
    """
    methods = mp.get_all_start_methods()
    if "forkserver" in methods:
        ctx = mp.get_context("forkserver")
        try:
            ctx.set_forkserver_preload(list(preload or _PRELOAD) if _preload_is_safe() else [])
        except Exception:  # noqa: BLE001 - preloading is only an optimisation
            pass
        return ctx
    return mp.get_context("spawn")


def map_bands(fn: Callable[[Any], Any], tasks: Sequence[Any], *, workers: int | None = None,
              scheduler=None, progress: bool = True, desc: str = "bands") -> list:
    """Run ``fn(task)`` for every task, in worker processes; results in task order.

    Parameters
    ----------
    fn : callable
        A module-level function (it is pickled by reference).
    tasks : sequence
        Small picklable task descriptions; a task's ``label`` attribute names
        it in progress output and errors.
    workers : int, optional
        Local worker processes.  Default: one per CPU, at most one per task.
        ``1`` (or a single task) runs in this process.  Ignored with
        ``scheduler``.
    scheduler : `distributed.Client` or str, optional
        Run on this Dask cluster (a client, or a scheduler address).
    progress : bool
        Show a tqdm progress bar over completed tasks (when tqdm is installed).
    desc : str
        Progress-bar label.

    Returns
    -------
    list
        ``fn(task)`` for each task, in the order of ``tasks``.

    Raises
    ------
    BandTaskError
        When a task fails; the original exception is chained.  Pending tasks
        of the local pool are cancelled.
    """
    tasks = list(tasks)
    if not tasks:
        return []
    if scheduler is not None:
        return _map_dask(fn, tasks, scheduler, progress, desc)
    n = _local_workers(len(tasks), workers)
    if n == 1:
        return _map_serial(fn, tasks, progress, desc)
    return _map_pool(fn, tasks, n, progress, desc)


def _local_workers(ntasks: int, workers: int | None) -> int:
    n = default_workers(ntasks) if workers is None else int(workers)
    if n < 1:
        raise ValueError(f"workers must be >= 1, got {workers!r}")
    return min(n, ntasks)


def runs_in_process(ntasks: int, workers: int | None = None, scheduler=None) -> bool:
    """Whether `map_bands` with these arguments runs every task in this process."""
    return scheduler is None and (ntasks == 0 or _local_workers(ntasks, workers) == 1)


def _map_serial(fn, tasks, progress, desc):
    bar = _progress(len(tasks), desc, progress)
    try:
        return _run_serial(fn, tasks, bar, BandTaskError)
    finally:
        if bar is not None:
            bar.close()


def _run_serial(fn: Callable, tasks: Sequence, bar, error: type, what: str = "") -> list:
    """``fn(task)`` for every task in this process; a failure raises ``error``
    naming the task (``what`` prefixes its label)."""
    out = []
    for i, task in enumerate(tasks):
        try:
            out.append(fn(task))
        except Exception as exc:
            raise error(f"{what}{_label(task, i)} failed: {type(exc).__name__}: {exc}") from exc
        if bar is not None:
            bar.update(1)
    return out


def _run_on_pool(pool: ProcessPoolExecutor, fn: Callable, tasks: Sequence, threads: int, bar,
                error: type, what: str = "", *, starting: bool = False) -> list:
    """``fn(task)`` for every task on a process pool, each worker limited to
    ``threads`` threads; results in task order.  The first failure cancels
    the pending tasks and raises ``error`` naming the task.

    ``starting``: the pool's processes have not started yet; see
    `_submit_while_starting`.
    """
    results: list = [None] * len(tasks)
    if starting and len(tasks) > 1:
        futures = _submit_while_starting(pool, fn, tasks, threads, results, bar, error, what)
    else:
        futures = {pool.submit(_call, fn, task, threads): i for i, task in enumerate(tasks)}
    pending = set(futures)
    try:
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for fut in done:
                i = futures[fut]
                exc = fut.exception()
                if exc is not None:
                    hint = _BROKEN_HINT if isinstance(exc, BrokenProcessPool) else ""
                    raise error(f"{what}{_label(tasks[i], i)} failed in a worker process: "
                                f"{type(exc).__name__}: {exc}{hint}") from exc
                results[i] = fut.result()
                if bar is not None:
                    bar.update(1)
    except BaseException:
        for fut in pending:
            fut.cancel()
        raise
    return results


def _submit_while_starting(pool, fn, tasks, threads, results, bar, error, what) -> dict:
    """Submit ``tasks`` to a pool whose processes have not started, running
    tasks in this process until they have.

    The first submit to a new pool blocks while its processes start (the
    forkserver imports galseg: ~1-1.5 s on a small machine, a good part of a
    short run).  A helper thread submits the tasks from the front of the
    list; meanwhile this process runs them from the back (the same function:
    the same results), and stops once the pool has taken its first task.
    Fills ``results`` for the tasks run here; returns ``{future: index}`` for
    the others.
    """
    lock = threading.Lock()
    span = {"next": 0, "last": len(tasks) - 1}
    started = threading.Event()
    futures: dict = {}
    failed: list = []

    def submit_all():
        try:
            while True:
                with lock:
                    i = span["next"]
                    if i > span["last"]:
                        return
                    span["next"] = i + 1
                futures[pool.submit(_call, fn, tasks[i], threads)] = i
                started.set()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            failed.append(exc)

    submitter = threading.Thread(target=submit_all, name="galseg-pool-start", daemon=True)
    submitter.start()
    try:
        while not started.is_set() and not failed:
            with lock:
                i = span["last"]
                if i < span["next"]:
                    break
                span["last"] = i - 1
            try:
                results[i] = fn(tasks[i])
            except Exception as exc:
                raise error(f"{what}{_label(tasks[i], i)} failed: "
                            f"{type(exc).__name__}: {exc}") from exc
            if bar is not None:
                bar.update(1)
    except BaseException:
        with lock:
            span["last"] = -1  # the helper submits nothing more
        submitter.join()
        for fut in futures:
            fut.cancel()
        raise
    submitter.join()
    if failed:
        hint = _BROKEN_HINT if isinstance(failed[0], BrokenProcessPool) else ""
        raise error(f"{what}could not start the worker pool: "
                    f"{type(failed[0]).__name__}: {failed[0]}{hint}") from failed[0]
    return futures


def _dask_client(scheduler):
    """``(client, owned)`` for a `distributed.Client` or a scheduler address
    (``owned``: made here, to be closed by the caller)."""
    try:
        import distributed
    except ImportError:
        raise ImportError(
            "scheduler= needs dask.distributed: pip install 'galseg[parallel]'") from None
    if isinstance(scheduler, str):
        return distributed.Client(scheduler), True
    if isinstance(scheduler, distributed.Client):
        return scheduler, False
    raise TypeError(f"scheduler must be a distributed.Client or an address string, "
                    f"got {type(scheduler).__name__}")


def _dask_worker_threads(client) -> int:
    """Worker threads of a Dask cluster (at least 1)."""
    info = client.scheduler_info()
    return sum(w.get("nthreads", 1) for w in info.get("workers", {}).values()) or 1


def _run_on_dask(client, fn: Callable, tasks: Sequence, threads: int, bar, error: type,
                what: str = "", desc: str = "tasks") -> list:
    """``fn(task)`` for every task on a Dask cluster (``pure=False``), results
    in task order; the first failure cancels the rest and raises ``error``."""
    import distributed

    keys = [f"galseg-{desc}-{_label(t, i)}-{os.getpid()}-{time.time_ns()}"
            for i, t in enumerate(tasks)]
    futures = client.map(_call, [fn] * len(tasks), tasks, [threads] * len(tasks),
                         key=keys, pure=False)
    index = {f.key: i for i, f in enumerate(futures)}
    results: list = [None] * len(tasks)
    try:
        for fut in distributed.as_completed(futures):
            i = index[fut.key]
            if fut.status == "error":
                exc = fut.exception()
                raise error(f"{what}{_label(tasks[i], i)} failed on the Dask cluster: "
                            f"{type(exc).__name__}: {exc}") from exc
            results[i] = fut.result()
            fut.release()  # let the worker drop its copy of the result
            if bar is not None:
                bar.update(1)
    except BaseException:
        client.cancel(futures)
        raise
    return results


def shutdown_pools(wait_for_workers: bool = True) -> None:
    """Shut down the kept local worker pools now (their processes exit)."""
    with _POOL_LOCK:
        pools = list(_POOLS.values())
        _POOLS.clear()
        for timer in _TIMERS.values():
            timer.cancel()
        _TIMERS.clear()
    for pool in pools:
        pool.shutdown(wait=wait_for_workers, cancel_futures=True)


atexit.register(shutdown_pools)


def _kernels_cached() -> bool:
    """Whether numba's cache holds galseg's kernels.  With a cold cache every
    process compiles them (~30 s): this one then does not run tasks while a new
    pool starts (three compilations on two cores would cost more than it saves)."""
    from ..extract._kernels import kernels_cached

    return kernels_cached()


def _acquire_pool(n: int) -> tuple[ProcessPoolExecutor, bool]:
    """A kept pool of ``n`` workers, or a new one; and whether it is new
    (its processes start with the first task)."""
    with _POOL_LOCK:
        timer = _TIMERS.pop(n, None)
        if timer is not None:
            timer.cancel()
        pool = _POOLS.pop(n, None)
    if pool is not None and not getattr(pool, "_broken", False):
        return pool, False
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)
    return ProcessPoolExecutor(max_workers=n, mp_context=_mp_context()), True


def _release_pool(n: int, pool: ProcessPoolExecutor, healthy: bool) -> None:
    if not healthy or POOL_IDLE_TIMEOUT <= 0:
        pool.shutdown(wait=healthy, cancel_futures=True)
        return
    with _POOL_LOCK:
        old = _POOLS.pop(n, None)
        _POOLS[n] = pool
        timer = threading.Timer(POOL_IDLE_TIMEOUT, _expire, args=(n, pool))
        timer.daemon = True
        _TIMERS[n] = timer
        timer.start()
    if old is not None and old is not pool:
        old.shutdown(wait=False, cancel_futures=True)


def _expire(n: int, pool: ProcessPoolExecutor) -> None:
    with _POOL_LOCK:
        if _POOLS.get(n) is not pool:
            return
        del _POOLS[n]
        _TIMERS.pop(n, None)
    pool.shutdown(wait=False)


def _map_pool(fn, tasks, n, progress, desc):
    bar = _progress(len(tasks), desc, progress)
    t0 = time.perf_counter()
    pool, fresh = _acquire_pool(n)
    healthy = False
    try:
        results = _run_on_pool(pool, fn, tasks, max(1, _cpu_count() // n), bar, BandTaskError,
                               starting=fresh and _kernels_cached())
        healthy = True
    finally:
        if bar is not None:
            bar.close()
        # A pool whose task failed is not reused: a worker may be in a bad state.
        _release_pool(n, pool, healthy)
    log.info("%d %s on %d local processes in %.2f s", len(tasks), desc, n,
             time.perf_counter() - t0)
    return results


def _map_dask(fn, tasks, scheduler, progress, desc):
    client, owned = _dask_client(scheduler)
    try:
        nthreads = _dask_worker_threads(client)
        bar = _progress(len(tasks), desc, progress)
        t0 = time.perf_counter()
        try:
            results = _run_on_dask(client, fn, tasks, max(1, _cpu_count() // nthreads), bar,
                                  BandTaskError, desc=desc)
        finally:
            if bar is not None:
                bar.close()
        log.info("%d %s on Dask (%d worker threads) in %.2f s", len(tasks), desc, nthreads,
                 time.perf_counter() - t0)
        return results
    finally:
        if owned:
            client.close()
