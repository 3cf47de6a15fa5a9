"""Compiled kernels without paying for numba at import, and tiny inputs without numba at all.

``numba.njit`` builds a dispatcher when a module is imported, and importing numba itself costs about
0.4 s; loading the cached machine code of the kernels a collect uses costs 0.2-0.4 s more. A cron run
or a ``watch`` pass that collects a few packets paid that every time, more than all its real work.

:func:`njit` is a drop-in for ``numba.njit`` that records the function and its options and returns a
:class:`Kernel`: importing a module builds no dispatcher and does not import numba. What a call does
depends on the process:

* compiled (the default): the first call of any kernel imports numba and turns *every* kernel made so
  far into a real dispatcher, replacing it in the globals of every flowdiff module that holds it. This
  must be all of them at once: a compiled kernel calls the other kernels through its module's globals,
  and numba can only compile a call to a dispatcher. Kernels of modules imported later are compiled
  as they are made (as ``numba.njit`` would). Once compiled, a process stays compiled.
* interpreted (inside :func:`interpreted`, while numba has not been engaged): the call runs the very
  same Python function, as ``NUMBA_DISABLE_JIT=1`` would: no second implementation. numba's unsigned
  integer arithmetic wraps silently; numpy's scalar arithmetic wraps too but warns, so overflow
  warnings are silenced for the call. flowdiff's kernels are written so that both give the same
  values (explicit ``np.uint64``/``np.int64`` casts, no mixed signed/unsigned arithmetic):
  tests/test_jit.py collects every capture, flow, Zeek and syslog sample of the tests both ways and
  compares the stored rows.

Interpreted Python is about 1000x slower per packet, so only tiny inputs are worth it:
:func:`interpreted_below` says whether an input is small enough (:data:`INTERPRET_BYTES`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

__all__ = [
    "INTERPRET_BYTES",
    "Kernel",
    "compiled",
    "engaged",
    "interpreted",
    "interpreted_below",
    "njit",
    "on_compile",
]

# Inputs up to this many bytes (all files of one collect together, gzip files by their uncompressed
# size) run interpreted when numba is not loaded yet. Measured on the 2-core box (CPU seconds, whole
# `flowdiff collect`): a 20-packet capture 0.75 interpreted against 1.5 compiled; 2,000 packets cut at
# 96 bytes (194 KB) 1.8 against 1.7, the break-even. Interpreting costs about 0.5 ms per packet (more
# when every packet makes rows in many intervals), importing numba and loading the kernels 0.7 s.
INTERPRET_BYTES = 64 * 1024

_lock = threading.RLock()
_kernels: list[Kernel] = []
_made: dict[int, Any] = {}  # id(kernel) -> its numba dispatcher, once compiled
_on_compile: list[Callable[[], None]] = []  # numba extensions to register before the first compile
_engaged = False  # numba imported and every kernel is a dispatcher: the process stays compiled
_interpret = 0  # nesting depth of interpreted() (process-wide: collect's threads share it)
_local = threading.local()  # depth of interpreted kernel calls in this thread


class Kernel:
    """A kernel of a flowdiff module: the Python function and its numba options until compiled."""

    __slots__ = ("__dict__", "dispatcher", "options", "py_func")

    def __init__(self, func: Callable[..., Any], options: dict[str, Any]) -> None:
        self.py_func = func
        self.options = options
        self.dispatcher: Any = None
        functools.update_wrapper(self, func)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        d = self.dispatcher
        if d is not None:
            return d(*args, **kwargs)
        if _interpret and not _engaged:
            return _run_interpreted(self.py_func, args, kwargs)
        compiled()
        return self.dispatcher(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<flowdiff kernel {self.py_func.__module__}.{self.py_func.__qualname__}>"


def njit(func: Callable[..., Any] | None = None, **options: Any) -> Any:
    """``numba.njit`` without importing numba: ``@njit`` and ``@njit(cache=True, ...)`` alike."""

    def make(f: Callable[..., Any]) -> Any:
        k = Kernel(f, options)
        with _lock:
            _kernels.append(k)
            if _engaged:  # a module imported after the process went compiled: a dispatcher, as numba
                _compile(k)
                return k.dispatcher
        return k

    return make(func) if func is not None else make


def compiled() -> None:
    """Import numba and make every kernel a dispatcher (see the module docstring). Idempotent."""
    global _engaged
    if _engaged:
        return
    with _lock:
        if _engaged:
            return
        from numba import njit as numba_njit

        for register in _on_compile:
            register()
        for k in _kernels:  # every dispatcher exists before any is reachable (typeof below needs it)
            _made[id(k)] = numba_njit(**k.options)(k.py_func)
        _type_kernels_as_dispatchers()
        for k in _kernels:
            k.dispatcher = _made[id(k)]
        _rebind(_kernels)
        _engaged = True


def engaged() -> bool:
    """Whether numba is loaded and the kernels are compiled (loading them is no longer a cost)."""
    return _engaged


def on_compile(register: Callable[[], None]) -> None:
    """Run ``register`` (it defines numba extensions: ``overload``, ``intrinsic``) when the process goes
    compiled, before any kernel compiles; at once if it already has. A module whose kernels call a
    helper numba must implement (an LLVM intrinsic, say) defines the helper as plain Python for the
    interpreted path and registers its compiled implementation here, so importing it imports no numba."""
    with _lock:
        if _engaged:
            register()
        else:
            _on_compile.append(register)


@contextlib.contextmanager
def interpreted(enabled: bool = True) -> Iterator[None]:
    """Run kernels as plain Python inside the block, unless numba is already engaged (then compiled
    code is cheaper). ``enabled=False`` makes it a no-op, for callers deciding by input size."""
    global _interpret
    if not enabled:
        yield
        return
    with _lock:
        _interpret += 1
    try:
        yield
    finally:
        with _lock:
            _interpret -= 1


def interpreted_below(paths: Iterable[str | os.PathLike[str]], limit: int | None = None) -> bool:
    """True when the files together are at most ``limit`` bytes (default :data:`INTERPRET_BYTES`) and
    numba is not engaged yet: worth running interpreted. A gzip file counts with its uncompressed size
    (at least 4x its own: the trailer only knows the last member). A file that cannot be read counts
    as large (the caller reports it; compiled is the safe choice)."""
    if _engaged:
        return False
    limit = INTERPRET_BYTES if limit is None else limit
    total = 0
    for p in paths:
        try:
            total += _input_size(p)
        except OSError:
            return False
        if total > limit:
            return False
    return True


def _input_size(path: str | os.PathLike[str]) -> int:
    size = os.stat(path).st_size
    with open(path, "rb") as f:
        if f.read(2) != b"\x1f\x8b" or size < 18:
            return size
        f.seek(-4, os.SEEK_END)
        return max(int.from_bytes(f.read(4), "little"), 4 * size)


def _run_interpreted(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if getattr(_local, "depth", 0):  # a kernel called by a kernel: the errstate is already set
        return func(*args, **kwargs)
    import numpy as np

    _local.depth = 1
    try:
        with np.errstate(over="ignore"):  # numba's integers wrap silently; numpy's scalars warn
            return func(*args, **kwargs)
    finally:
        _local.depth = 0


def _compile(k: Kernel) -> None:
    from numba import njit as numba_njit

    k.dispatcher = _made[id(k)] = numba_njit(**k.options)(k.py_func)


def _type_kernels_as_dispatchers() -> None:
    """A compiled kernel may still find a Kernel in some globals (one not rebound yet while another
    thread compiles, or a module outside flowdiff): numba types it as its dispatcher."""
    from numba.core import types
    from numba.extending import typeof_impl

    @typeof_impl.register(Kernel)
    def _typeof_kernel(val: Kernel, c: Any) -> Any:
        return types.Dispatcher(_made[id(val)])


def _rebind(kernels: list[Kernel]) -> None:
    """Replace each kernel by its dispatcher wherever a flowdiff module's globals hold it (its own
    module and every ``from ... import`` of it), so that compiled callers see dispatchers."""
    by_id = {id(k): k for k in kernels}
    for name, mod in list(sys.modules.items()):
        if mod is None or not (name == "flowdiff" or name.startswith("flowdiff.")):
            continue
        g = vars(mod)
        for attr, value in list(g.items()):
            k = by_id.get(id(value))
            if k is not None and k is value:
                g[attr] = k.dispatcher
