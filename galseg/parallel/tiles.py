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
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from typing import Any

from .executor import _cpu_count, _limit_threads, _mp_context

__all__ = ["TileExecutor", "TileTaskError"]

log = logging.getLogger("galseg.parallel")

_PRELOAD = ["galseg.parallel._preload", "galseg.tiling.window"]


class TileTaskError(RuntimeError):
    """A tile task failed; the message names the task."""


def _run_task(fn: Callable, task: Any, threads: int | None):
    _limit_threads(threads)
    return fn(task)


def _label(task, i: int) -> str:
    return str(getattr(task, "label", None) or f"task {i}")


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
            try:
                import distributed
            except ImportError:
                raise ImportError("scheduler= needs dask.distributed: "
                                  "pip install 'galseg[parallel]'") from None
            if isinstance(scheduler, str):
                self._client = distributed.Client(scheduler)
                self._own_client = True
            elif isinstance(scheduler, distributed.Client):
                self._client = scheduler
            else:
                raise TypeError("scheduler must be a distributed.Client or an address string, "
                                f"got {type(scheduler).__name__}")
            info = self._client.scheduler_info()
            self.workers = sum(w.get("nthreads", 1) for w in info.get("workers", {}).values()) or 1
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
        if not self.progress:
            return None
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return None
        return tqdm(total=n, desc=desc, unit="tile", file=sys.stderr, leave=False)

    def _map_serial(self, fn, tasks, desc):
        bar = self._bar(len(tasks), desc)
        out = []
        try:
            for i, task in enumerate(tasks):
                try:
                    out.append(fn(task))
                except Exception as exc:
                    raise TileTaskError(f"{desc} {_label(task, i)} failed: "
                                        f"{type(exc).__name__}: {exc}") from exc
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        return out

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
        pool = self._ensure_pool()
        results: list = [None] * len(tasks)
        bar = self._bar(len(tasks), desc)
        futures = {pool.submit(_run_task, fn, t, self._threads): i for i, t in enumerate(tasks)}
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for fut in done:
                    i = futures[fut]
                    exc = fut.exception()
                    if exc is not None:
                        raise TileTaskError(f"{desc} {_label(tasks[i], i)} failed in a worker "
                                            f"process: {type(exc).__name__}: {exc}") from exc
                    results[i] = fut.result()
                    if bar is not None:
                        bar.update(1)
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise
        finally:
            if bar is not None:
                bar.close()
        return results

    def _map_dask(self, fn, tasks, desc):
        import distributed

        client = self._client
        keys = [f"galseg-{desc}-{_label(t, i)}-{os.getpid()}-{time.time_ns()}"
                for i, t in enumerate(tasks)]
        futures = client.map(_run_task, [fn] * len(tasks), tasks,
                             [self._threads] * len(tasks), key=keys, pure=False)
        index = {f.key: i for i, f in enumerate(futures)}
        results: list = [None] * len(tasks)
        bar = self._bar(len(tasks), desc)
        try:
            for fut in distributed.as_completed(futures):
                i = index[fut.key]
                if fut.status == "error":
                    exc = fut.exception()
                    raise TileTaskError(f"{desc} {_label(tasks[i], i)} failed on the Dask "
                                        f"cluster: {type(exc).__name__}: {exc}") from exc
                results[i] = fut.result()
                fut.release()  # let the worker drop its copy of the result
                if bar is not None:
                    bar.update(1)
        except BaseException:
            client.cancel(futures)
            raise
        finally:
            if bar is not None:
                bar.close()
        return results
