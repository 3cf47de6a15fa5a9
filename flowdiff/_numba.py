"""numba start-up: the BLAS probe of numba's first compile, skipped where flowdiff owns the process.

numba's first compile (or first cache load) in a process imports ``numba.np.arraymath``, which imports
all of ``scipy.linalg`` (0.4 s on the 2-core box, a fifth of a whole `flowdiff collect` run) only to learn
whether ``np.dot`` can be compiled. flowdiff's compiled code uses no BLAS, so the probe can fail fast:
while ``numba.np.arraymath`` is being imported, ``scipy.linalg.cython_blas`` is marked "import halted"
(``sys.modules[name] = None``, an ImportError without touching scipy); right after, the mark is removed,
so ``scipy.linalg`` stays importable as usual.

This module imports nothing heavy: :func:`skip_blas_probe` only installs an import hook.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

__all__ = ["skip_blas_probe"]

_ARRAYMATH = "numba.np.arraymath"
_BLAS = "scipy.linalg.cython_blas"


def skip_blas_probe() -> None:
    """Make numba's first compile in this process skip its BLAS probe (see the module docstring).

    Called by the CLI entry point, before any command runs compiled code. It installs a one-shot import
    hook and returns at once: numba is not imported here, so a command that never compiles (``status``,
    ``outbox``, ``tables``) pays nothing, and every command that does (collect, learn, diff, run, demo,
    packets) gets the skip wherever its first compiled function is.

    Trade-off: afterwards, numba code compiled in the same process cannot use ``np.dot`` or
    ``np.linalg`` (numba believes there is no BLAS). That is why the library does not call it (not in
    ``import flowdiff.capture`` as before, nor in ``collect()``): a notebook may compile its own numba
    code that needs BLAS, and the 0.4 s matter only to short processes such as cron runs of the CLI.
    A program that wants the faster start-up and uses no numba BLAS may call it itself, before its first
    flowdiff call. Nothing happens when numba has compiled already or ``scipy.linalg`` is loaded."""
    if _ARRAYMATH in sys.modules or "scipy.linalg" in sys.modules:
        return
    if not any(isinstance(f, _ProbeSkipper) for f in sys.meta_path):
        sys.meta_path.insert(0, _ProbeSkipper())


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
