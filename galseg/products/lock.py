"""An inter-process lock file with holder information and stale-lock recovery.

The lock is an ``fcntl.flock`` on ``{stem}.lock``.  The kernel drops a flock
when its process dies, so a lock left by a crashed or killed run is recovered
at once on the same host.  The file also holds the holder's pid, host and start
time (for messages), and the holder touches it every ``heartbeat`` seconds
from a background thread; a lock whose file has not been touched for
``stale_after`` seconds (a holder hung, or on another host whose lock the
shared file system lost) is broken with a warning.

The holder removes the file when it releases the lock.  Releasing and
breaking both happen under a second, per-directory flock
(``.galseg-lock-guard``), so that a breaker can never remove a lock file that
a newer run has just created.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

__all__ = ["FileLock", "LockTimeout", "LockLost", "GUARD_NAME"]

log = logging.getLogger("galseg.products")

GUARD_NAME = ".galseg-lock-guard"


class LockTimeout(TimeoutError):
    """The lock could not be taken within the timeout."""


class LockLost(RuntimeError):
    """The lock was broken by another process while this one held it."""


@contextlib.contextmanager
def _guard(directory: Path):
    fd = os.open(directory / GUARD_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the flock


def read_lock_info(path) -> dict | None:
    """The holder information in a lock file (None if absent or unreadable)."""
    try:
        with open(path, "rb") as f:
            text = f.read(4096)
        info = json.loads(text.decode() or "null")
        return info if isinstance(info, dict) else None
    except (OSError, ValueError):
        return None


def lock_is_held(path) -> bool:
    """Whether some process currently holds the flock on ``path``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


class FileLock:
    """Exclusive lock on a file path, usable as a context manager.

    Parameters
    ----------
    path : path-like
        The lock file; created on acquire, removed on release.
    timeout : float or None
        Seconds to wait for the lock; None waits forever, 0 tries once.
    stale_after : float or None
        Break a held lock whose file has not been touched for this many
        seconds (default 600).  None never breaks a held lock.
    heartbeat : float or None
        Touch the lock file this often while holding it (default
        ``stale_after / 10``), so a live holder is never taken for stale.
    poll : float
        Seconds between attempts while waiting.
    """

    def __init__(self, path, *, timeout: float | None = None,
                 stale_after: float | None = 600.0, heartbeat: float | None = None,
                 poll: float = 0.05):
        self.path = Path(path)
        self.timeout = timeout
        self.stale_after = stale_after
        self.heartbeat = heartbeat if heartbeat is not None else (
            stale_after / 10 if stale_after else None)
        self.poll = poll
        self._fd: int | None = None
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ state
    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def still_held(self) -> bool:
        """Whether the lock file we hold is still the one at `path` (not broken)."""
        if self._fd is None:
            return False
        try:
            return os.fstat(self._fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            return False

    # ---------------------------------------------------------------- acquire
    def acquire(self) -> "FileLock":
        """Take the lock, waiting, breaking a stale one, or raising `LockTimeout`."""
        if self._fd is not None:
            raise RuntimeError(f"lock {self.path} is already held by this object")
        start = time.monotonic()
        announced = False
        while True:
            fd = self._try_once()
            if fd is not None:
                self._fd = fd
                self._write_info()
                self._start_heartbeat()
                return self
            if self._break_if_stale():
                continue
            waited = time.monotonic() - start
            if self.timeout is not None and waited >= self.timeout:
                raise LockTimeout(
                    f"could not lock {self.path} within {self.timeout:g} s; "
                    f"held by {self._describe_holder()}"
                )
            if not announced:
                log.info("waiting for %s (held by %s)", self.path.name, self._describe_holder())
                announced = True
            time.sleep(self.poll)

    def _try_once(self) -> int | None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP):
                raise OSError(exc.errno, f"file locking is not supported for {self.path} "
                              "(file system without flock)") from None
            raise
        # The file may have been released (unlinked) between our open and our
        # flock; then we hold a lock on a dead inode and must start again.
        try:
            same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            return None
        return fd

    def _write_info(self) -> None:
        now = time.time()
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "created": _dt.datetime.fromtimestamp(now, _dt.timezone.utc).isoformat(),
            "created_ts": now,
        }
        data = json.dumps(info).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def _describe_holder(self) -> str:
        info = read_lock_info(self.path)
        if not info:
            return "an unknown process"
        return f"pid {info.get('pid')} on {info.get('host')} since {info.get('created')}"

    def _break_if_stale(self) -> bool:
        if self.stale_after is None:
            return False
        try:
            if time.time() - os.stat(self.path).st_mtime <= self.stale_after:
                return False
        except FileNotFoundError:
            return True
        with _guard(self.path.parent):
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                return True  # released meanwhile: try again at once
            age = time.time() - st.st_mtime
            if age <= self.stale_after or not lock_is_held(self.path):
                return False
            info = read_lock_info(self.path) or {}
            log.warning(
                "breaking stale lock %s: held by pid %s on %s, not refreshed for %.0f s "
                "(stale_after=%g s)", self.path, info.get("pid"), info.get("host"), age,
                self.stale_after)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            return True

    # -------------------------------------------------------------- heartbeat
    def _start_heartbeat(self) -> None:
        if not self.heartbeat:
            return
        self._stop = threading.Event()
        fd, stop, period = self._fd, self._stop, self.heartbeat

        def beat():
            while not stop.wait(period):
                with contextlib.suppress(OSError):
                    os.utime(fd)

        self._thread = threading.Thread(target=beat, name=f"lock-heartbeat:{self.path.name}",
                                        daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- release
    def release(self) -> None:
        """Remove the lock file (if still ours) and drop the lock."""
        if self._fd is None:
            return
        if self._stop is not None:
            self._stop.set()
            self._thread.join()
            self._stop = self._thread = None
        try:
            with _guard(self.path.parent):
                if self.still_held():
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.path)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"FileLock({str(self.path)!r}, held={self.held})"
