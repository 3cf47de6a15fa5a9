"""numba start-up: the BLAS probe of numba's first compile, skipped where flowdiff owns the process.

numba's first compile (or first cache load) in a process imports ``numba.np.arraymath``, which imports
all of ``scipy.linalg`` (0.4 s on the 2-core box, a fifth of a whole `flowdiff collect` run) only to learn
whether BLAS can serve its inner products (``np.cov``, ``np.corrcoef``). flowdiff's compiled code uses no
BLAS, so the probe can fail fast:
while ``numba.np.arraymath`` is being imported, ``scipy.linalg.cython_blas`` is marked "import halted"
(``sys.modules[name] = None``, an ImportError without touching scipy); right after, the mark is removed,
so ``scipy.linalg`` stays importable as usual.

The second start-up cost is numba's ``Cache.load_overload``: before it loads the first cached function
it "refreshes" the CPU target, which imports and registers every typing and lowering implementation
numba has (0.3-0.4 s, a third of a small `flowdiff collect`). Loading machine code from the cache
needs none of them, only the runtime (NRT) symbols: :func:`lean_cache_load` makes the load do just
that. A cache miss still compiles as before, because numba's compiler refreshes the target itself
(``compile_extra``), and so does a lowering lookup that misses (``BaseContext.get_function``).

Both matter only once numba is imported: a collect of a tiny input runs its kernels as plain Python and
never imports numba at all (flowdiff/_jit.py). This module imports nothing heavy: :func:`skip_blas_probe` only installs an import hook, and
:func:`lean_cache_load` patches numba only once numba is imported (another import hook).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

__all__ = ["lean_cache_load", "skip_blas_probe"]

_ARRAYMATH = "numba.np.arraymath"
_BLAS = "scipy.linalg.cython_blas"


def skip_blas_probe() -> None:
    """Make numba's first compile in this process skip its BLAS probe (see the module docstring).

    Called by the CLI entry point, before any command runs compiled code. It installs a one-shot import
    hook and returns at once: numba is not imported here, so a command that never compiles (``status``,
    ``outbox``, ``tables``) pays nothing, and every command that does (collect, learn, diff, run, demo,
    packets) gets the skip wherever its first compiled function is.

    Trade-off: afterwards, numba code compiled in the same process computes the inner products of
    ``np.cov`` and ``np.corrcoef`` with a plain loop instead of BLAS (other rounding, slower on large
    inputs); ``np.dot`` and ``np.linalg`` still compile with BLAS, as they probe again themselves
    (tests/test_numba_startup.py). That is why the library does not call it (not in
    ``import flowdiff.capture`` as before, nor in ``collect()``): a notebook's own numba code is not ours
    to change, and the 0.4 s matter only to short processes such as cron runs of the CLI. A program that
    wants the faster start-up may call it itself, before its first flowdiff call. Nothing happens when
    numba has compiled already or ``scipy.linalg`` is loaded."""
    if _ARRAYMATH in sys.modules or "scipy.linalg" in sys.modules:
        return
    if not any(isinstance(f, _ProbeSkipper) for f in sys.meta_path):
        sys.meta_path.insert(0, _ProbeSkipper())


_CACHING = "numba.core.caching"


def lean_cache_load() -> None:
    """Make numba's on-disk cache loads skip the target refresh (see the module docstring).

    Called by the CLI entry point, like :func:`skip_blas_probe`, and for the same reason not by the
    library: it changes a numba internal for the whole process (harmless, as a compile or a missing
    lowering still refreshes, but a notebook's process is not ours to change). Idempotent; does
    nothing on a numba without the patched method (it then loads as usual)."""
    mod = sys.modules.get(_CACHING)
    if mod is not None:
        _patch_caching(mod)
    elif not any(isinstance(f, _CachingPatcher) for f in sys.meta_path):
        sys.meta_path.insert(0, _CachingPatcher())


def _patch_caching(mod: ModuleType) -> None:
    cache = getattr(mod, "Cache", None)
    original = getattr(cache, "load_overload", None)
    if cache is None or original is None or getattr(original, "_flowdiff_lean", False):
        return

    def load_overload(self: Any, sig: Any, target_context: Any) -> Any:
        try:
            from numba.core.runtime import rtsys

            rtsys.initialize(target_context)  # the NRT symbols cached code links against
            guard = self._guard_against_spurious_io_errors
            load = self._load_overload
        except (ImportError, AttributeError):  # a numba laid out otherwise: its own way
            return original(self, sig, target_context)
        with guard():
            return load(sig, target_context)
        return None  # the guard swallowed a spurious I/O error: compile instead

    load_overload._flowdiff_lean = True  # type: ignore[attr-defined]
    cache.load_overload = load_overload


class _CachingPatcher(importlib.abc.MetaPathFinder):
    """Patches ``numba.core.caching`` right after it is first imported (then leaves ``sys.meta_path``)."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != _CACHING:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _ThenPatch(spec.loader)
        return spec


class _ThenPatch(importlib.abc.Loader):
    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._inner.exec_module(module)
        _patch_caching(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _ProbeSkipper(importlib.abc.MetaPathFinder):
    """Finds ``numba.np.arraymath`` once (then leaves ``sys.meta_path``) and runs it with BLAS halted."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != _ARRAYMATH:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None or "scipy.linalg" in sys.modules:
            return spec
        spec.loader = _BlasHalted(spec.loader)
        return spec


class _BlasHalted(importlib.abc.Loader):
    """Executes a module with ``scipy.linalg.cython_blas`` unimportable, and only for that long."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        sys.modules[_BLAS] = None  # type: ignore[assignment]  # "import halted": ImportError, no scipy
        try:
            self._inner.exec_module(module)
        finally:
            if _BLAS in sys.modules and sys.modules[_BLAS] is None:
                del sys.modules[_BLAS]

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename ... for inspect and tracebacks
        return getattr(self._inner, name)
