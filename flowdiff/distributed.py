"""The big reads (learn, show, diff's anti-join) on an existing dask.distributed cluster.

A site with many sensors and years of intervals already runs a Dask cluster next to its central store;
flowdiff hands it the per-chunk work instead of growing an engine of its own. The unit of work is the
same chunk of intervals the local engine reads in one go (``baseline._CHUNK_INTERVALS``): a worker
reads it (from a local folder every worker sees, or from object storage), canonicalises and reduces
it, and the client combines the partial results in chunk order with exactly the code the local engine
uses. So the results are the same bytes: a baseline learned on the cluster has the content hash of the
one learned locally (tests/test_dask.py checks it).

Nothing here is imported unless a scheduler is given (``--scheduler`` or ``[dask] scheduler``): Dask
costs a second of start-up and the local path must stay as fast as it was.

Faults: a worker that dies mid-task has its chunks recomputed elsewhere by the scheduler (chunks are
pure reads); when that is not possible (every worker gone, a task killed too often, the scheduler
lost) the command fails with one line (:class:`ClusterError`, exit 2) before anything is written,
because every write of learn and diff happens after the last chunk came back.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from flowdiff.errors import ClusterError, FlowdiffError

CONNECT_TIMEOUT = 10.0  # seconds to reach the scheduler before giving up with one line
_DELAY_ENV = "FLOWDIFF_TEST_TASK_DELAY"  # tests: seconds each task sleeps (to kill a worker mid-learn)
_STARTED_ENV = "FLOWDIFF_TEST_TASK_STARTED"  # tests: a folder where a delayed task leaves its worker's pid


@contextlib.contextmanager
def connect(address: str) -> Iterator[Any]:
    """A client of the scheduler at ``address`` (``tcp://HOST:PORT``), closed on exit."""
    try:
        from distributed import Client
    except ImportError:
        raise ClusterError(
            f"scheduler {address}: dask.distributed is not installed (pip install 'dask[distributed]')",
            address=address,
        ) from None
    try:
        client = Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as e:
        raise ClusterError(f"scheduler {address}: cannot connect: {_one_line(e)}", address=address) from None
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            client.close()


def map_chunks(
    address: str,
    fn: Callable[..., Any],
    chunks: Sequence[Any],
    *args: Any,
    broadcast: Any = None,
) -> Iterator[Any]:
    """``fn(*args, chunk)`` for every chunk on the cluster, yielded in chunk order (the order the local
    engine combines them in). ``broadcast``, when given, is sent once to every worker and passed to
    ``fn`` as the keyword ``shared`` (diff's baseline fingerprints). A chunk that fails for a flowdiff
    reason raises that error; a cluster failure raises :class:`ClusterError`."""
    with connect(address) as client:
        try:
            kwargs = {}
            if broadcast is not None:
                kwargs["shared"] = client.scatter(broadcast, broadcast=True, hash=False)
            task = functools.partial(_run, fn, *args)
            futures = client.map(task, list(chunks), pure=False, **kwargs)
            for fut in futures:
                yield fut.result()
        except FlowdiffError:
            raise
        except Exception as e:  # KilledWorker, CommClosedError, CancelledError, TimeoutError, ...
            raise ClusterError(
                f"scheduler {address}: the cluster failed ({type(e).__name__}: {_one_line(e)}); "
                "nothing was written",
                address=address,
            ) from None


def _run(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Runs on a worker."""
    delay = os.environ.get(_DELAY_ENV)
    if delay:
        started = os.environ.get(_STARTED_ENV)
        if started:  # the test kills exactly the worker that is inside a task
            open(os.path.join(started, str(os.getpid())), "w").close()
        time.sleep(float(delay))
    return fn(*args, **kwargs)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:300] or type(e).__name__


# ------------------------------------------------------------------ show


def totals_frame(store: Any, address: str, table: str, since: Any, until: Any, where: Any) -> Any:
    """``Store.totals``' grouped frame (before sorting), read and reduced per chunk of intervals on the
    cluster. An interval lies in one chunk only (all its sensors' files together), so per-chunk counts
    of intervals add up to the distinct count."""
    import pandas as pd

    starts = store.intervals(table)
    lo, hi = _bounds(since, until)
    starts = [s for s in starts if (lo is None or s >= lo) and (hi is None or s < hi)]
    keys = list(store.table_keys(table) or ())
    chunks = [starts[i : i + _SHOW_CHUNK] for i in range(0, len(starts), _SHOW_CHUNK)]
    parts = list(map_chunks(address, _totals_chunk, chunks, store, table, since, until, where, keys))
    if not parts:
        return _totals_local(store.read(table, since=since, until=until, where=where), keys)
    allp = pd.concat(parts, ignore_index=True)
    out = (
        allp.groupby(keys, observed=True, sort=False)
        .agg(
            packets=("packets", "sum"),
            bytes=("bytes", "sum"),
            intervals=("intervals", "sum"),
            first_seen=("first_seen", "min"),
            last_seen=("last_seen", "max"),
        )
        .reset_index()
    )
    template = parts[0]
    for c in out.columns:
        if out[c].dtype != template[c].dtype:
            out[c] = out[c].astype(template[c].dtype)
    return out


_SHOW_CHUNK = 48


def _bounds(since: Any, until: Any) -> tuple[Any, Any]:
    from flowdiff.vocab import utc_timestamp

    return utc_timestamp(since), utc_timestamp(until)


def _totals_chunk(
    store: Any, table: str, since: Any, until: Any, where: Any, keys: list[str], starts: list[Any]
) -> Any:
    import pandas as pd

    lo, hi = min(starts), max(starts) + pd.Timedelta(microseconds=1)
    if since is not None:
        lo = max(lo, _bounds(since, None)[0])
    if until is not None:
        hi = min(hi, _bounds(None, until)[1])
    return _totals_local(store.read(table, since=lo, until=hi, where=where), keys)


def _totals_local(df: Any, keys: list[str]) -> Any:
    from flowdiff.schema import INTERVAL

    return (
        df.groupby(keys, observed=True, sort=False)
        .agg(
            packets=("packets", "sum"),
            bytes=("bytes", "sum"),
            intervals=(INTERVAL, "nunique"),
            first_seen=("first_seen", "min"),
            last_seen=("last_seen", "max"),
        )
        .reset_index()
    )


def by_interval_frame(store: Any, address: str, table: str, since: Any, until: Any, where: Any) -> Any:
    """``Store.read`` of the window: runs of one sensor's intervals read in parallel on the cluster and
    joined in the order the local read returns them (sensor by sensor, interval by interval)."""
    import pandas as pd

    runs: list[tuple[str, list[Any]]] = []
    for f in store.files(table, since, until):
        sensor = f.parent.name.split("=", 1)[1]
        if not runs or runs[-1][0] != sensor or len(runs[-1][1]) >= _SHOW_CHUNK:
            runs.append((sensor, []))
        runs[-1][1].append(_start_of(f.name))
    parts = list(map_chunks(address, _read_run, runs, store, table, since, until, where))
    if not parts:
        return store.read(table, since=since, until=until, where=where)
    out = pd.concat(parts, ignore_index=True)
    return out


def _start_of(name: str) -> Any:
    """Interval start of an interval file name (the store's ``YYYYMMDDTHHMMSSZ.parquet``)."""
    import pandas as pd

    return pd.Timestamp(name.removesuffix(".parquet")).tz_convert("UTC")


def _read_run(store: Any, table: str, since: Any, until: Any, where: Any, run: tuple[str, list[Any]]) -> Any:
    import copy

    import pandas as pd

    sensor, starts = run
    one = copy.copy(store)
    one.sensor = sensor
    lo, hi = min(starts), max(starts) + pd.Timedelta(microseconds=1)
    slo, shi = _bounds(since, until)
    lo = lo if slo is None else max(lo, slo)
    hi = hi if shi is None else min(hi, shi)
    return one.read(table, since=lo, until=hi, where=where)
