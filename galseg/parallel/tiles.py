"""Running tile tasks: in this process, on local worker processes, or on Dask.

A tiled extraction runs several rounds of tile tasks (see
`galseg.tiling.run`); `TileExecutor` keeps one pool of worker processes for
all of them, so workers start (and load galseg's compiled kernels) once per
run rather than once per round.  Tasks are small picklable descriptions: each
worker reads its window from the input files itself.

Backends
--------
``workers=1`` (and no scheduler)
    Tasks run in this process, one after the other.
``workers=N``
    A `concurrent.futures.ProcessPoolExecutor` of N processes (``forkserver``
    start method where available, galseg preloaded), each limited to its share
    of numba threads, as `galseg.parallel.map_bands` does for bands.
``scheduler=`` a `distributed.Client` or a scheduler address
    Tasks go to the Dask cluster (``Client.map``, ``pure=False``).  Workers
    must see the input files and the output directory at the same paths (a
    `distributed.LocalCluster`, or a cluster on a shared file system), since
    they read their windows and write into the memory-mapped outputs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from .executor import (
    _cpu_count,
    _mp_context,
    _progress,
    _dask_client,
    _dask_worker_threads,
    _run_on_dask,
    _run_on_pool,
    _run_serial,
)

__all__ = ["TileExecutor", "TileTaskError"]

log = logging.getLogger("galseg.parallel")

_PRELOAD = ["galseg.parallel._preload", "galseg.tiling.window"]


class TileTaskError(RuntimeError):
    """A tile task failed; the message names the task."""


class TileExecutor:
    """Maps tile tasks onto this process, a local process pool or a Dask cluster.

    Parameters
    ----------
    workers : int, optional
        Local worker processes (default: one per CPU).  ``1`` runs tasks here.
    scheduler : `distributed.Client` or str, optional
        Run on this Dask cluster instead (``workers`` is then ignored).
    progress : bool
        Show a tqdm progress bar per round (when tqdm is installed).

    Use as a context manager, or call `close`.
    """

    def __init__(self, workers: int | None = None, scheduler=None, progress: bool = False):
        self.scheduler = scheduler
        self.progress = progress
        self._pool = None
        self._client = None
        self._own_client = False
        if scheduler is not None:
            self._client, self._own_client = _dask_client(scheduler)
            self.workers = _dask_worker_threads(self._client)
        else:
            n = _cpu_count() if workers is None else int(workers)
            if n < 1:
                raise ValueError(f"workers must be >= 1, got {workers!r}")
            self.workers = n
        self._threads = max(1, _cpu_count() // self.workers)

    # ------------------------------------------------------------------ context
    def __enter__(self) -> "TileExecutor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._own_client and self._client is not None:
            self._client.close()
            self._client = None

    @property
    def backend(self) -> str:
        if self._client is not None:
            return "dask"
        return "serial" if self.workers == 1 else "processes"

    # ------------------------------------------------------------------ map
    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any], desc: str = "tiles") -> list:
        """``fn(task)`` for every task, results in task order.

        Raises
        ------
        TileTaskError
            When a task fails (the original exception is chained); pending
            tasks are cancelled.
        """
        tasks = list(tasks)
        if not tasks:
            return []
        t0 = time.perf_counter()
        if self._client is not None:
            out = self._map_dask(fn, tasks, desc)
        elif self.workers == 1 or len(tasks) == 1:
            out = self._map_serial(fn, tasks, desc)
        else:
            out = self._map_pool(fn, tasks, desc)
        log.info("%d %s (%s, %d workers) in %.2f s", len(tasks), desc, self.backend,
                 self.workers, time.perf_counter() - t0)
        return out

    def _bar(self, n, desc):
        return _progress(n, desc, self.progress, unit="tile")

    def _map_serial(self, fn, tasks, desc):
        bar = self._bar(len(tasks), desc)
        try:
            return _run_serial(fn, tasks, bar, TileTaskError, f"{desc} ")
        finally:
            if bar is not None:
                bar.close()

    def _ensure_pool(self):
        if self._pool is None:
            ctx = _mp_context()
            try:
                ctx.set_forkserver_preload(_PRELOAD)
            except Exception:  # noqa: BLE001 - spawn context, or preloading refused
                pass
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx)
        return self._pool

    def _map_pool(self, fn, tasks, desc):
        bar = self._bar(len(tasks), desc)
        try:
            return _run_on_pool(self._ensure_pool(), fn, tasks, self._threads, bar,
                               TileTaskError, f"{desc} ")
        finally:
            if bar is not None:
                bar.close()

    def _map_dask(self, fn, tasks, desc):
        bar = self._bar(len(tasks), desc)
        try:
            return _run_on_dask(self._client, fn, tasks, self._threads, bar, TileTaskError,
                               f"{desc} ", desc)
        finally:
            if bar is not None:
                bar.close()
