"""glibc's malloc, told to keep the memory a collect frees and allocates again at once.

A collect drains its aggregator every few megabytes of capture, and each drain allocates tens of
megabytes of numpy arrays on the build and store threads, then frees them. glibc serves blocks above
its mmap threshold (128 KiB at first, raised as it sees large frees) with fresh mappings and hands the
top of a heap back to the kernel once more than 128 KiB is free there; the next drain then faults every
page in again (zero-filled by the kernel). Measured on the issue 11 captures: 45-60k minor faults and
0.9 s of system time per high-cardinality collect, a tenth of its CPU, and how much of it depends on the
exact pattern of allocations. With large blocks on the heap and up to 512 MiB of free heap kept, the
same memory is reused: peak RSS does not change (it is set by what is live at the peak), the system
time halves.

Process-wide, so only the CLI calls it (like the BLAS probe in flowdiff/_numba.py): a notebook or a
program embedding flowdiff keeps its allocator as it is. Does nothing where ``mallopt`` is not glibc's.
"""

from __future__ import annotations

import ctypes
import sys

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 32 << 20  # glibc's maximum on 64-bit (HEAP_MAX_SIZE / 2): larger blocks are still mapped
_TRIM_THRESHOLD = 512 << 20


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; True when they were set."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) == 1
    return mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1 and ok
