"""Durable writes and locks: the one place that knows how a file reaches the disk safely.

Every file flowdiff writes (interval files, baselines, state, rules, reports, the outbox) goes through
these helpers, so that a reader sees the old file or the new one, never a torn one, and so that the
crash-safety tests can stop the process at every durable step (``FLOWDIFF_CRASH_AT=N``). Locks are
``flock`` on a lock file: the kernel drops them when the holder dies, so a leftover lock *file* is never
state and never blocks a later command.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from flowdiff.errors import LockError

# ---------------------------------------------------------------- fault injection

_CRASH_ENV = "FLOWDIFF_CRASH_AT"  # tests: "N" kills the process with SIGKILL at the N-th durable step
_steps = 0


def crash_point() -> None:
    """Lets the crash-safety tests stop the process at every step that changes the store."""
    global _steps
    target = os.environ.get(_CRASH_ENV)
    if not target:
        return
    _steps += 1
    if _steps == int(target):
        os.kill(os.getpid(), 9)


# ---------------------------------------------------------------- atomic file helpers


def replace_atomically(path: Path, fill: Callable[[str], object]) -> None:
    """The one write protocol: ``fill`` writes a temp file beside ``path``; it is made durable, then
    renamed over ``path`` (readers see the old file or the new one, never a torn one) and the folder
    is synced. A crash point before and after the rename lets the kill -9 tests stop at both."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        fill(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        crash_point()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    crash_point()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    replace_atomically(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_parquet(path: Path, table: pa.Table) -> None:
    replace_atomically(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def file_lock(path: Path, *, wait: float = 60.0, what: str = "store") -> Iterator[None]:
    """An exclusive flock; waits up to ``wait`` seconds, then raises LockError naming the holder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "another process"
                    raise LockError(
                        f"{what} {path.parent} is busy (locked by pid {holder}); try again when it finishes"
                    ) from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def syncfs(path: Path) -> None:
    """Flush the filesystem holding ``path``: one call instead of an fsync per file (Linux syncfs(2))."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(path, os.O_RDONLY)
        try:
            if libc.syncfs(fd) == 0:
                return
        finally:
            os.close(fd)
    except (OSError, AttributeError):
        pass
    os.sync()
