"""Compaction: the interval files of a complete UTC day become one day file per table and sensor.

A week of 5-minute intervals is 2,016 files per table and sensor; a year is 100,000. ``compact``
merges the interval files of each complete UTC day older than ``compact_after`` into
``<table>/sensor=<name>/<YYYYMMDD>.parquet``: whole intervals in time order, gathered into row groups of
about 64k rows (``store.DAY_ROW_GROUP_ROWS``: far fewer, larger row groups read 3 to 5 times faster than
one per interval, and the ``interval_start`` statistics still let an interval filter skip the others).
Collect writes the same day files directly when a capture spans many intervals (flowdiff/dayfile.py).

The day file's footer records, per interval, the sources (capture parts) it holds and the data token the
interval had (see :meth:`flowdiff.store.Store.interval_tokens`), so that

* re-collecting an old capture after compaction counts nothing twice (the writer looks in the day file),
* a late part for a compacted day goes to a fresh interval file beside the day file; readers add the two
  up, and the next compaction merges it into a rewritten day file,
* diff does not see a compacted interval as changed (its token is kept).

Crash safety, kill -9 at any step: the day file is written under a temp name readers ignore, made
durable, renamed into place, then the interval files are removed. The day file's footer is the intent
record: an interval file whose sources are all in the day file is a leftover that every reader ignores
and the next compaction (or writer) removes. So readers see the old files or the day file, never both
and never neither, and a re-run finishes the job. Compaction holds the sensor's store lock, as collect
does, so nothing merges into a day while it is rewritten.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flowdiff.config import Config
from flowdiff.errors import StoreError
from flowdiff.exitcodes import ExitCode
from flowdiff.objstore import is_remote
from flowdiff.schema import INTERVAL, PARTITION, table_schema
from flowdiff.store import (
    SensorDir,
    Store,
    _reaggregate,
    day_file_name,
    day_meta,
    file_sources,
    file_token,
    interval_file_name,
)

log = logging.getLogger(__name__)

MARKER = "_compacted.json"  # the UTC day `run` last compacted the store (it compacts once a day)
_DAY = timedelta(days=1)

__all__ = ["CompactResult", "compact", "compact_if_due", "store_sensors"]


@dataclass
class CompactResult:
    """What a compaction did: day files written, interval files merged into them, leftovers removed."""

    days: int = 0
    merged: int = 0
    leftovers: int = 0
    rows: int = 0
    tables: dict[str, int] = field(default_factory=dict)  # table -> day files written
    cutoff: datetime | None = None

    def line(self) -> str:
        if not self.days and not self.leftovers:
            when = f" before {self.cutoff:%Y-%m-%d}" if self.cutoff else ""
            return f"compact: nothing to compact (no interval files of a complete day{when})"
        per = ", ".join(f"{t} {n}" for t, n in sorted(self.tables.items()))
        extra = (
            f", {self.leftovers} leftover file(s) of an interrupted compaction removed"
            if self.leftovers
            else ""
        )
        return (
            f"compact: {self.merged} interval file(s) merged into {self.days} day file(s) ({per}), "
            f"{self.rows} rows{extra}"
        )

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.OK


def local_only(config: Config, what: str) -> None:
    """Day files and expiry rewrite and remove files in place: on an object store they are refused in
    one line rather than reported as "nothing to do"."""
    if is_remote(config.store):
        raise StoreError(
            f"store {config.store}: `flowdiff {what}` works on a local store only "
            "(an object store keeps one object per interval; use the bucket's lifecycle rules to expire)"
        )


def store_sensors(root: Path, tables: Sequence[str] | None = None) -> list[str]:
    """Names of the sensors with a partition in any (or the given) table of the store."""
    store = Store(root)
    names: set[str] = set()
    for t in tables or store.tables():
        d = store.root / t
        names.update(p.name.split("=", 1)[1] for p in d.glob(f"{PARTITION}=*") if p.is_dir())
    return sorted(names)


def compact(
    config: Config,
    *,
    older_than: int | None = None,
    now: datetime | None = None,
    sensors: Sequence[str] | None = None,
) -> CompactResult:
    """Compact every complete UTC day that ended at least ``older_than`` seconds ago (default: config
    ``compact_after``; 0 compacts every complete day), for every table and sensor (or the given sensors)."""
    now = now or datetime.now(UTC)
    wait = config.compact_after if older_than is None else older_than
    cutoff = now - timedelta(seconds=wait)
    result = CompactResult(cutoff=cutoff)
    local_only(config, "compact")
    root = Path(config.store)
    if not root.is_dir():
        return result
    for sensor in sensors or store_sensors(root):
        store = Store(root, sensor)
        with store.lock():
            store.remove_stale_temp_files()
            for table in store.tables():
                for sd in store.sensor_dirs(table):
                    _compact_dir(store, table, sd, cutoff, result)
    return result


def compact_if_due(config: Config, now: datetime | None = None) -> CompactResult | None:
    """`run`'s daily compaction: compacts when the store was not compacted yet this UTC day."""
    now = now or datetime.now(UTC)
    if is_remote(config.store):  # an object store keeps one object per interval (README: Object storage)
        return None
    root = Path(config.store)
    marker = root / MARKER
    today = now.strftime("%Y-%m-%d")
    try:
        if json.loads(marker.read_text(encoding="utf-8")).get("day") == today:
            return None
    except (OSError, ValueError, AttributeError):
        pass
    if not root.is_dir():
        return None
    result = compact(config, now=now)
    from flowdiff.durable import atomic_write_text

    atomic_write_text(marker, json.dumps({"day": today}) + "\n")
    return result


def _compact_dir(store: Store, table: str, sd: SensorDir, cutoff: datetime, result: CompactResult) -> None:
    keys = store.table_keys(table) or ()
    by_day: dict[Any, list[Path]] = {}
    for start, p in sd.intervals.items():
        by_day.setdefault(start.normalize(), []).append(p)
    leftovers: dict[Any, list[Path]] = {}
    for p in sd.leftovers:
        start = _start_of(p)
        leftovers.setdefault(start.normalize(), []).append(p)
    for day in sorted(set(by_day) | set(leftovers)):
        if day.to_pydatetime() + _DAY > cutoff:
            continue  # not a complete day old enough yet
        live = sorted(by_day.get(day, []))
        if live:
            rows = _write_day(store, table, keys, sd.path / day_file_name(day), live)
            result.days += 1
            result.merged += len(live)
            result.rows += rows
            result.tables[table] = result.tables.get(table, 0) + 1
        # the day file now holds every interval file of the day: they (and older leftovers) are leftovers
        result.leftovers += store.remove_files(leftovers.get(day, []))
        store.remove_files(live)


def _start_of(p: Path) -> Any:
    from flowdiff.store import _interval_of_file

    start = _interval_of_file(p.name)
    if start is None:  # pragma: no cover - scan_sensor_dir only lists interval files
        raise StoreError(f"{p}: not an interval file")
    return start


def _write_day(store: Store, table: str, keys: Sequence[str], path: Path, live: list[Path]) -> int:
    """Write the day file holding the old day file's intervals (if any) and the interval files ``live``."""
    schema = table_schema(keys)
    old = day_meta(path) if path.exists() else {}
    files = {interval_file_name(_start_of(p)): p for p in live}
    record: dict[str, dict[str, Any]] = {}
    for name in sorted(set(old) | set(files)):
        rec = old.get(name, {})
        sources = set(rec.get("sources", ()))
        token = rec.get("token")
        if name in files:
            sources |= set(file_sources(files[name]))
            tok = file_token(files[name]) or ""
            token = f"{token}+{tok}" if token else tok
        record[name] = {"sources": sorted(sources), "token": token or ""}
    groups = _row_groups(path, schema) if old else {}
    return store.write_day_file(path, schema, _pieces(record, groups, files, path, keys, schema), record)


def _row_groups(path: Path, schema: pa.Schema) -> dict[str, list[int]]:
    """Interval file name -> row groups of the day file holding it (from the row groups' statistics; a
    row group holding several intervals is listed under each, its interval column read to know them)."""
    out: dict[str, list[int]] = {}
    with pq.ParquetFile(path) as f:
        md = f.metadata
        col = f.schema_arrow.get_field_index(INTERVAL)
        for i in range(md.num_row_groups):
            stats = md.row_group(i).column(col).statistics
            if stats is not None and stats.has_min_max and stats.min == stats.max:
                starts = [stats.min]
            else:
                values = f.read_row_group(i, columns=[INTERVAL]).column(0)
                starts = pc.unique(values).to_pylist()
            for start in starts:
                name = interval_file_name(start if start.tzinfo else start.replace(tzinfo=UTC))
                out.setdefault(name, []).append(i)
    return out


def _read(path: Path, schema: pa.Schema, row_groups: list[int] | None = None) -> pa.Table:
    try:
        with pq.ParquetFile(path) as f:
            t = f.read() if row_groups is None else f.read_row_groups(row_groups)
    except (OSError, pa.ArrowInvalid) as e:
        raise StoreError(f"{path}: unreadable: {e}") from None
    t = t.select(schema.names)
    return t.cast(schema) if t.schema != schema else t


def _pieces(
    record: dict[str, Any],
    groups: dict[str, list[int]],
    files: dict[str, Path],
    day_path: Path,
    keys: Sequence[str],
    schema: pa.Schema,
) -> Iterator[pa.Table]:
    """One table per interval, in time order, streamed: a day is never held in memory at once (a row
    group holding several intervals is read once, kept while its intervals are handed out)."""
    held: dict[int, pa.Table] = {}
    for name in record:
        parts = []
        if name in groups:
            rgs = groups[name]
            for i in [i for i in held if i not in rgs]:
                del held[i]  # intervals come in time order: that row group is done
            for i in rgs:
                if i not in held:
                    held[i] = _read(day_path, schema, [i])
            got = pa.concat_tables([held[i] for i in rgs]) if len(rgs) > 1 else held[rgs[0]]
            start = _start_of(Path(name)).to_pydatetime()
            mask = pc.equal(got[INTERVAL], pa.scalar(start, type=schema.field(INTERVAL).type))
            parts.append(got if pc.all(mask).as_py() else got.filter(mask))
        if name in files:
            parts.append(_read(files[name], schema))
        if not parts:
            continue
        yield parts[0] if len(parts) == 1 else _reaggregate(pa.concat_tables(parts), keys, schema)
