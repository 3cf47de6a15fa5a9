"""Modules named at import time and loaded on first use.

``pyarrow.compute`` builds a Python wrapper for each of its several hundred functions when it is
imported (50-60 ms, a tenth of what cron pays to collect one small capture), and collecting a small
capture never calls it. The modules on the collect path bind ``pc = lazy("pyarrow.compute")``; the first
attribute read imports the real module and copies its namespace, so later reads are plain lookups."""

from __future__ import annotations

import importlib
import sys
from typing import Any


class _LazyModule:
    def __init__(self, name: str) -> None:
        self.__dict__["_lazy_name"] = name

    def __getattr__(self, attr: str) -> Any:  # only reached while the module is not loaded yet
        module = importlib.import_module(self.__dict__["_lazy_name"])
        self.__dict__.update(vars(module))
        return getattr(module, attr)


def lazy(name: str) -> Any:
    """``name`` itself when it is already imported, else a stand-in that imports it on first use."""
    module = sys.modules.get(name)
    return module if module is not None else _LazyModule(name)
