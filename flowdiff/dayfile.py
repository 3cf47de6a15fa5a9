"""Day files written by collect: a capture that spans many intervals writes one file per table and UTC day.

A week-long capture at 5-minute intervals is 2,017 intervals; one file per interval and table is 10,000
small files, and their per-file cost (open, footer, rename, sync) was most of collect's time. The store
already reads day files (the compaction format, see :mod:`flowdiff.compact`): one row group per interval,
and a footer recording, per interval, the sources (capture parts) it holds and its data token. So while
a capture is drained part by part, the rows of a day go straight into that day's file, written under a
temp name readers ignore; once the capture moved past the day (or ends), the footer is written, the file
made durable and renamed into place.

When a day file is written (else the part goes to interval files, exactly as before):

* only once the capture has drained a part holding at least :data:`MIN_INTERVALS` intervals: a cron pass
  over a five-minute capture, or a capture that makes huge intervals (high cardinality), keeps writing
  interval files (a day file would be rewritten by every later pass, and interval files of big
  intervals already amortise their cost);
* only for a day that has no day file yet when the capture reaches it, and only for intervals that have
  no interval file: an existing interval file is merged into as before, so an interval is never split
  between a new day file and an older interval file.

Rows arriving for an interval the open day file already holds (a late frame) wait in memory and, once the
day file is in place, go to an interval file beside it, which readers add up (the compaction format's
"late part"). A re-run after a crash at any step finds the parts already in the store either in the day
file's footer or in an interval file's sources list, and skips exactly those: the store is that of an
uninterrupted run. A day file of an interrupted run that never got its footer is a temp file, removed by
the next collect.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from flowdiff.durable import crash_point, fsync_dir
from flowdiff.errors import StoreError
from flowdiff.schema import INTERVAL, PARTITION, table_schema
from flowdiff.store import (
    _DAY_KEY,
    _EPOCH,
    _SOURCES_KEY,
    DAY_ROW_GROUP_ROWS,
    Store,
    WriteBatch,
    _file_name_us,
    _parquet_options,
    int64_values,
    write_row_group,
)

__all__ = ["MIN_INTERVALS", "DayFiles"]

# A capture writes day files once one of its parts holds this many intervals (see the module docstring).
MIN_INTERVALS = 8
_DAY_US = 86_400_000_000


@dataclass
class _OpenDay:
    """A day file being written: its temp file, the intervals it holds and the sources of each."""

    path: Path
    tmp: str
    writer: pq.ParquetWriter
    record: dict[str, dict[str, Any]] = field(default_factory=dict)
    rows: int = 0
    held: list[pa.Table] = field(default_factory=list)  # the next row group (DAY_ROW_GROUP_ROWS)
    held_rows: int = 0
    pending: Future | None = None  # the row group being encoded (row groups of a file go in order)


class DayFiles:
    """The day files of one capture, fed part by part (one instance per capture, one thread at a time).

    ``write`` takes the place of ``WriteBatch.write_interval_rows``; ``close`` finishes every open day
    file and writes the late rows held back; ``abort`` drops the temp files (nothing of them counted)."""

    def __init__(self, store: Store, min_intervals: int | None = None):
        self.store = store
        self.min_intervals = MIN_INTERVALS if min_intervals is None else min_intervals
        # day files on an object store are refused by compaction: keep one object per interval there
        self.enabled = type(store) is Store
        self.on = False  # a part held min_intervals intervals: day files from now on
        self._open: dict[tuple[str, int], _OpenDay] = {}
        self._closed: set[tuple[str, int]] = set()  # (table, day) written by others or already finished
        self._late: list[tuple[str, Sequence[str], pa.Table, str]] = []
        self._files: dict[Path, set[str]] = {}  # folder -> names of its files, listed once
        self._encoders: ThreadPoolExecutor | None = None

    def write(self, batch: WriteBatch, table: str, keys: Sequence[str], rows: pa.Table, source: str) -> int:
        """Merge the rows of one part (sorted by interval, unique per key, as the Aggregator drains them)
        into the store: into day files when the capture writes them, else through ``batch``."""
        if not rows.num_rows:
            return 0
        if not self.enabled:
            return batch.write_interval_rows(table, keys, rows, source, presorted=True)
        starts = int64_values(rows[INTERVAL])
        bounds = np.r_[0, np.flatnonzero(np.diff(starts)) + 1, len(starts)]
        if len(bounds) - 1 >= self.min_intervals:
            self.on = True
        if not self.on:
            return batch.write_interval_rows(table, keys, rows, source, presorted=True)
        schema = table_schema(keys)
        rows = rows.select(schema.names)
        if rows.schema != schema:
            rows = rows.cast(schema)
        first_day = int(starts[0]) // _DAY_US
        for key in [k for k in self._open if k[0] == table and k[1] < first_day]:
            self._finish(key)  # the capture has moved past that day
        folder = self.store.interval_path(table, _EPOCH).parent
        written = 0
        plain: list[pa.Table] = []
        plain_names: list[str] = []
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            start = int(starts[lo])
            name = _file_name_us(start)
            piece = rows.slice(int(lo), int(hi - lo))
            day = self._day(table, folder, start // _DAY_US, schema)
            if day is None or name in self._listing(folder):
                plain.append(piece)
                plain_names.append(name)
            elif name in day.record:  # a late frame: beside the day file, once it is in place
                self._late.append((table, keys, piece, source))
            else:
                day.held.append(piece.replace_schema_metadata(None))
                day.held_rows += piece.num_rows
                if day.held_rows >= DAY_ROW_GROUP_ROWS:
                    self._flush(day)
                day.record[name] = {"sources": [source], "token": ""}
                day.rows += piece.num_rows
                written += piece.num_rows
        if plain:
            self._listing(folder).update(plain_names)
            merged = plain[0] if len(plain) == 1 else pa.concat_tables(plain)
            written += batch.write_interval_rows(table, keys, merged, source, presorted=True)
        return written

    def _listing(self, folder: Path) -> set[str]:
        """The files of a sensor's table folder, listed on first use: one listing instead of a stat per
        interval (a week is 2,016 intervals per table). The store lock keeps other writers out, and the
        interval files this capture writes are added as it writes them."""
        got = self._files.get(folder)
        if got is None:
            try:
                got = self._files[folder] = set(os.listdir(folder))
            except FileNotFoundError:
                got = self._files[folder] = set()
        return got

    def _day(self, table: str, folder: Path, day: int, schema: pa.Schema) -> _OpenDay | None:
        """The open day file of ``day``, opened now when the day has no day file yet; None when the
        day's rows go to interval files (a day file exists)."""
        key = (table, day)
        if key in self._closed:
            return None
        if (got := self._open.get(key)) is not None:
            return got
        path = folder / (_file_name_us(day * _DAY_US)[:8] + ".parquet")
        if path.exists():
            self._closed.add(key)
            return None
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            writer = pq.ParquetWriter(tmp, schema, **_parquet_options(schema))
        except (OSError, pa.ArrowException) as e:
            os.unlink(tmp)
            raise StoreError(f"{path}: cannot write the day file: {e}") from None
        got = self._open[key] = _OpenDay(path, tmp, writer)
        return got

    def _finish(self, key: tuple[str, int]) -> None:
        """Footer (what the day holds), durable, renamed into place: the step that makes it count."""
        day = self._open.pop(key)
        self._closed.add(key)
        sensor = f"{PARTITION}={self.store.sensor}"
        for name, rec in day.record.items():
            # the token of a fresh interval: new whenever the interval's data is (diff re-reads it)
            rec["token"] = f"{sensor}:{day.path.name}:{name}:{','.join(rec['sources'])}"
        sources = sorted({s for rec in day.record.values() for s in rec["sources"]})
        try:
            self._flush(day)
            if day.pending is not None:
                day.pending.result()
            day.writer.add_key_value_metadata(
                {
                    _DAY_KEY: json.dumps(day.record, sort_keys=True).encode(),
                    _SOURCES_KEY: json.dumps(sources).encode(),
                }
            )
            day.writer.close()
            with open(day.tmp, "rb+") as f:
                os.fsync(f.fileno())
            crash_point()
            os.replace(day.tmp, day.path)
        except (OSError, pa.ArrowException) as e:
            _unlink(day.tmp)
            raise StoreError(f"{day.path}: cannot write the day file: {e}") from None
        fsync_dir(day.path.parent)
        crash_point()

    def close(self) -> int:
        """Put every open day file in place, then the late rows held back beside them (rows written)."""
        try:
            for day in self._open.values():  # the last row groups of every table encode side by side
                self._flush(day)
            for key in sorted(self._open):
                self._finish(key)
        except BaseException:
            self.abort()
            raise
        self._stop_encoders()
        late, self._late = self._late, []
        written = 0
        if late:
            with self.store.batch() as batch:
                for table, keys, rows, source in late:
                    written += batch.write_interval_rows(table, keys, rows, source, presorted=True)
        return written

    def abort(self) -> None:
        """Drop the day files not yet in place (their parts are not in the store; a re-run writes them)."""
        for day in self._open.values():
            if day.pending is not None:
                with contextlib.suppress(Exception):  # the error that brought us here is raised already
                    day.pending.result()
            try:
                day.writer.close()
            except (OSError, pa.ArrowException):
                pass
            _unlink(day.tmp)
        self._open.clear()
        self._late.clear()
        self._stop_encoders()

    def _flush(self, day: _OpenDay) -> None:
        """Hand the held pieces to an encoder thread as the day file's next row group. Parquet encoding
        and zstd release the GIL: the row groups of different tables encode on both cores while the
        store thread goes on, which was the critical path of a long capture's collect. The row groups
        of one file stay in order (each waits for the one before), and nothing is renamed into place
        before every row group of the file is written (``_finish`` waits)."""
        if not day.held:
            return
        held, day.held, day.held_rows = day.held, [], 0
        if self._encoders is None:
            self._encoders = ThreadPoolExecutor(2, thread_name_prefix="flowdiff-encode")
        day.pending = self._encoders.submit(_encode_after, day.pending, day.writer, held)

    def _stop_encoders(self) -> None:
        if self._encoders is not None:
            self._encoders.shutdown(wait=True)
            self._encoders = None


def _encode_after(before: Future | None, writer: pq.ParquetWriter, held: list[pa.Table]) -> None:
    """A row group, once the file's previous one is written. Jobs wait only on jobs submitted before
    them and the pool takes jobs in order, so the oldest unfinished job is always running: no deadlock."""
    if before is not None:
        before.result()
    write_row_group(writer, held)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
