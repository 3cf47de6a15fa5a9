"""The loop of the kill -9 tests: crash a run at every durable step, re-run it, check the store."""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Callable
from pathlib import Path

Run = Callable[..., None]  # run(store, crash_at=N or None): a collect with FLOWDIFF_CRASH_AT set


def forked(run: Run, store: Path, crash_at: int | None) -> int | None:
    """``run`` in a forked child (modules and numba code already loaded, so each run takes
    milliseconds); the fault-injection point sends it SIGKILL at the chosen durable step."""
    child = multiprocessing.get_context("fork").Process(
        target=run, args=(str(store),), kwargs={"crash_at": crash_at}
    )
    child.start()
    child.join(120)
    return child.exitcode


def kill_at_every_step(root: Path, run: Run, check: Callable[[Path, int], None]) -> int:
    """Step 1, 2, ...: a fresh store under ``root`` is killed at that step, then a re-run without a
    crash point must finish and ``check(store, step)`` compares what it holds. Ends at the first step
    past the last durable one (the run finishes); returns how many runs were killed."""
    step, crashed = 1, 0
    while True:
        store = root / f"crash{step}"
        rc = forked(run, store, step)
        if rc == 0:
            return crashed
        assert rc == -signal.SIGKILL
        crashed += 1
        assert forked(run, store, None) == 0
        check(store, step)
        step += 1
