"""The Parquet store: every file access of the count tables goes through this module.

Layout (hive-partitioned, opens directly in pandas, DuckDB, polars and pyarrow.dataset)::

    <store>/<table>/_table.json                          key columns and interval of the table
    <store>/<table>/sensor=<name>/<YYYYMMDDTHHMMSSZ>.parquet   one file per interval
    <store>/<table>/sensor=<name>/<YYYYMMDD>.parquet     a compacted UTC day (flowdiff.compact), one row
                                                         group per interval
    <store>/_ledger/<name>.jsonl, .<name>.lock           each sensor's ledger and writer lock
    <store>/_ledger.jsonl                                the single ledger of older stores (read, never written)

One file per (table, sensor, interval) keeps merges cheap: a capture that adds to an interval rewrites only
that interval's file. Each file records in its Parquet metadata which sources it holds (the numbered
parts of captures that collect streams in, see flowdiff.collect), so re-collecting a capture after a
crash never counts any part twice, whatever moment the crash hit.

The ledger (one JSON object per line, appended after the data is durable) says which captures were
collected and which tables each one filled (``tables``, a sorted list): a table added to the config
later, or left out by ``collect --table``, is filled from a capture already collected by reading it
again for that table only. The tables a capture has filled are the union over its entries (a capture
read again for a new table gets an entry of its own). ``capture_id`` is the prefix of the source ids
its parts carry in the interval files, reused when it is read again, so that a crash during any read
can never make a part count twice. Lines written before ``tables`` existed have none: for them a table
counts as filled when its ``_table.json`` is older than the entry's ``collected_at`` (plus the second
that ``collected_at`` drops), i.e. when the table existed when the capture was collected; a table
created later was never filled by it and is filled now. When every ``_table.json`` is younger than the
oldest such line (a store copied without its times), every table counts as filled. The rule errs only
towards "filled" (a capture collected with ``--table`` by an older flowdiff while other tables existed
counts for those too): a count is never doubled, at worst a table lacks an old capture.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from flowdiff._lazy import lazy
from flowdiff.durable import atomic_write_text, crash_point, file_lock, fsync_dir, replace_atomically, syncfs
from flowdiff.errors import StoreError
from flowdiff.objstore import (
    ENDPOINT_ENV,
    LEDGER_PREFIX,
    SCHEME,
    explain,
    is_remote,
    parse_url,
    s3_filesystem,
)
from flowdiff.schema import INTERVAL, LOG_KEYS, PARTITION, table_schema
from flowdiff.vocab import now_iso, utc_timestamp

pc = lazy("pyarrow.compute")

if TYPE_CHECKING:  # imported where used: collect needs neither (0.4 s and 0.2 s of start-up time)
    import pandas as pd
    import pyarrow.dataset as ds

TABLE_META = "_table.json"
LEDGER = "_ledger.jsonl"  # the single ledger of stores written before ledgers were per sensor (read only)
LEDGERS = "_ledger"  # <store>/_ledger/<sensor>.jsonl, and <store>/_ledger/.<sensor>.lock
LOCK = ".lock"
_SOURCES_KEY = b"flowdiff.sources"
_DAY_KEY = b"flowdiff.day"  # a day file: interval file name -> {"sources": [...], "token": "..."}
_FILE_FMT = "%Y%m%dT%H%M%SZ"
_DAY_FMT = "%Y%m%d"
_DAY = timedelta(days=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# ---------------------------------------------------------------- ledger


@dataclass
class LedgerEntry:
    """One collected capture. ``status``: ok, damaged (good records kept, rest unreadable), failed."""

    path: str
    size: int
    mtime_ns: int
    sha256: str | None
    records: int
    status: str
    message: str = ""
    collected_at: str = ""
    sensor: str = ""
    # Sorted names of the tables this read filled; None on lines written before the field existed
    # (see Store.tables_filled).
    tables: list[str] | None = None
    capture_id: str | None = None  # source-id prefix of its parts in the interval files


_LEDGER_TIME_FMT = "%Y-%m-%dT%H:%M:%SZ"
_LEDGER_FIELDS = frozenset(LedgerEntry.__dataclass_fields__)


# ---------------------------------------------------------------- the store


def interval_file_name(start: pd.Timestamp | datetime) -> str:
    """File name of the interval starting at ``start`` (an aware datetime or pandas Timestamp)."""
    if start.tzinfo is None:
        raise ValueError(f"interval start {start} has no time zone")
    return start.astimezone(UTC).strftime(_FILE_FMT) + ".parquet"


@functools.lru_cache(maxsize=1 << 17)
def _interval_of_file(name: str) -> pd.Timestamp | None:
    """Interval start of an interval file name (cached: a week of day files names 2,016 intervals per
    table, read at every listing; strptime was a second of learn's time)."""
    import pandas as pd

    stem = name.removesuffix(".parquet")
    if len(stem) != 16 or stem[8] != "T" or stem[15] != "Z" or not (stem[:8] + stem[9:15]).isdigit():
        return None
    try:
        start = datetime(
            int(stem[:4]),
            int(stem[4:6]),
            int(stem[6:8]),
            int(stem[9:11]),
            int(stem[11:13]),
            int(stem[13:15]),
            tzinfo=UTC,
        )
    except ValueError:
        return None
    return pd.Timestamp(start)


def _day_of_file(name: str) -> pd.Timestamp | None:
    import pandas as pd

    stem = name.removesuffix(".parquet")
    if len(stem) != 8:
        return None
    try:
        return pd.Timestamp(datetime.strptime(stem, _DAY_FMT).replace(tzinfo=UTC))
    except ValueError:
        return None


def day_file_name(day: pd.Timestamp | datetime) -> str:
    """File name of the compacted day starting at ``day`` (UTC midnight)."""
    return day.astimezone(UTC).strftime(_DAY_FMT) + ".parquet"


_day_meta_cache: dict[tuple[str, int, int], dict[str, dict[str, Any]]] = {}


def day_meta(path: Path) -> dict[str, dict[str, Any]]:
    """What a day file holds: interval file name -> {"sources": [...], "token": "..."} (its footer only,
    cached while the file is unchanged)."""
    try:
        st = path.stat()
        key = (str(path), st.st_mtime_ns, st.st_size)
        if (hit := _day_meta_cache.get(key)) is not None:  # one lookup: learn's threads share the cache
            return hit
        meta = file_metadata(path)
        out = json.loads(meta.get(_DAY_KEY, b"{}"))
    except (OSError, ValueError, pa.ArrowInvalid) as e:
        raise StoreError(f"{path}: unreadable day file: {e}") from None
    if len(_day_meta_cache) > 4096:
        _day_meta_cache.clear()
    _day_meta_cache[key] = out
    return out


# Rows of a day file's row group: whole intervals, in time order, gathered up to about this many rows.
# A row group per 5-minute interval (a few hundred rows each) made reading a day 3 to 5 times slower
# (per row group and page costs); an interval filter still skips the row groups of other intervals.
DAY_ROW_GROUP_ROWS = 1 << 16


def write_row_group(writer: pq.ParquetWriter, pieces: list[pa.Table]) -> None:
    """One row group holding ``pieces`` (whole intervals) of a day file."""
    if not pieces:
        return
    t = pieces[0] if len(pieces) == 1 else pa.concat_tables(pieces)
    writer.write_table(t, row_group_size=max(t.num_rows, 1))


def file_metadata(path: Path | str) -> dict[bytes, bytes]:
    """The key-value metadata of a store file's footer. Not ``schema_arrow.metadata``: a day file
    written by collect gets its record when it is closed, after its schema (flowdiff/dayfile.py); the
    footer has both kinds (Arrow copies a schema's metadata into it)."""
    with pq.ParquetFile(path) as f:
        return dict(f.metadata.metadata or {})


def file_sources(path: Path) -> list[str]:
    """The sources an interval file records (empty for a file written before sources were recorded)."""
    try:
        return list(json.loads(file_metadata(path).get(_SOURCES_KEY, b"[]")))
    except (OSError, ValueError, pa.ArrowInvalid) as e:
        raise StoreError(f"{path}: unreadable interval file: {e}") from None


def file_token(path: Path) -> str | None:
    """The data token of one interval file (changes whenever the file is rewritten)."""
    try:
        st = path.stat()
    except OSError:  # replaced under our feet: the next diff sees the new file
        return None
    return f"{path.parent.name}:{st.st_size}:{st.st_mtime_ns}"


@dataclass
class SensorDir:
    """One ``sensor=`` folder of a table, resolved: day files, and the interval files that count.

    An interval file beside a day file that covers its interval is either a leftover of a compaction
    that stopped before removing it (its sources are all in the day file: it is ignored, and removed by
    the next compaction or writer) or a late part collected after the day was compacted (sources the day
    file does not hold: readers add it to the day file's rows). The rule needs no intent record: the day
    file's footer is the record, so a reader decides the same way at every moment of a compaction."""

    path: Path
    intervals: dict[Any, Path]  # interval start -> interval file that counts
    days: dict[Any, Path]  # day start -> day file
    leftovers: list[Path]
    overlap: set[Any]  # interval starts held by a day file and a late interval file

    def day_intervals(self) -> dict[Any, tuple[Path, dict[str, Any]]]:
        """Interval start -> (day file, its record) for every interval held by a day file."""
        out = {}
        for p in self.days.values():
            for name, rec in day_meta(p).items():
                start = _interval_of_file(name)
                if start is not None:
                    out[start] = (p, rec)
        return out


def scan_sensor_dir(d: Path) -> SensorDir:
    intervals: dict[Any, Path] = {}
    days: dict[Any, Path] = {}
    for p in sorted(d.glob("*.parquet")):
        if (start := _interval_of_file(p.name)) is not None:
            intervals[start] = p
        elif (day := _day_of_file(p.name)) is not None:
            days[day] = p
    out = SensorDir(d, intervals, days, [], set())
    if not days:
        return out
    for start, p in list(intervals.items()):
        day = start.normalize()
        if day not in days:
            continue
        rec = day_meta(days[day]).get(p.name)
        if rec is None:
            continue
        if set(file_sources(p)) <= set(rec.get("sources", ())):
            out.leftovers.append(p)
            del intervals[start]
        else:
            out.overlap.add(start)
    return out


def _time_order(sd: SensorDir, files: list[tuple[Any, Path]]) -> tuple[list[Path], bool]:
    """The files of one sensor folder in time order, so rows read in interval order as they did from
    interval files alone: a day file sorts by its first interval when interval files of its day are
    beside it (a capture collected straight into a day file after its first parts went to interval
    files). True when an interval file falls between the intervals of its day file: readers then merge
    the rows (as for a late part), which puts them in order."""
    beside = {start.normalize() for start, p in files if p.name[8:9] == "T" and start.normalize() in sd.days}
    keyed: list[tuple[Any, Path]] = []
    spans: dict[Any, tuple[Any, Any]] = {}
    for start, p in files:
        if start in sd.days and sd.days[start] == p and start in beside:
            held = sorted(s for name in day_meta(p) if (s := _interval_of_file(name)) is not None)
            if held:
                spans[start] = (held[0], held[-1])
                start = held[0]
        keyed.append((start, p))
    mixed = any(
        p.name[8:9] == "T" and (span := spans.get(start.normalize())) and span[0] < start < span[1]
        for start, p in files
    )
    return [p for _, p in sorted(keyed, key=lambda sp: (sp[0], len(sp[1].name)))], mixed


class Store:
    """A directory of count tables. ``sensor=None`` reads every sensor; writes need a sensor.
    ``Store("s3://bucket/prefix")`` is a store on object storage (flowdiff.objstore.S3Store)."""

    _filesystem: Any = None  # a pyarrow filesystem for the reads (None: the local one)

    def __new__(cls, root: Any = None, sensor: str | None = None, *args: Any) -> Store:
        if cls is Store and is_remote(root):  # "s3://bucket/prefix" (a str or a config.StoreUrl)
            return super().__new__(S3Store)
        return super().__new__(cls)

    def __init__(self, root: str | os.PathLike, sensor: str | None = None):
        self.root = Path(root)
        self.sensor = sensor
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(
                f"store {self.root} is not a folder (a file of that name is in the way): "
                "set `store` to a folder, or move the file"
            )

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r}, sensor={self.sensor!r})"

    def exists(self) -> bool:
        """Whether anything was ever stored (a local folder exists; objects exist under the prefix)."""
        return self.root.is_dir()

    # -- table definitions
    def tables(self) -> list[str]:
        """Names of the tables that have a definition in the store."""
        if not self.root.is_dir():
            return []
        return sorted(p.parent.name for p in self.root.glob(f"*/{TABLE_META}"))

    def table_meta(self, table: str) -> dict[str, Any] | None:
        p = self.root / table / TABLE_META
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise StoreError(f"{p}: unreadable table definition: {e}") from None

    def table_keys(self, table: str) -> tuple[str, ...] | None:
        meta = self.table_meta(table)
        return tuple(meta["keys"]) if meta else None

    def ensure_table(self, table: str, keys: Sequence[str], interval: int) -> None:
        """Record a table's definition, or refuse a definition that differs from the stored one:
        mixing key sets or interval lengths in one table would make every count meaningless."""
        meta = self.table_meta(table)
        want = {"keys": list(keys), "interval": int(interval)}
        if meta is None:
            atomic_write_text(self.root / table / TABLE_META, json.dumps(want, indent=1) + "\n")
            return
        if list(meta.get("keys", [])) != list(keys):
            raise StoreError(
                f"table {table!r} in {self.root} has keys {meta.get('keys')}, the config says {list(keys)}: "
                "give the new definition another table name, or use another store"
            )
        if int(meta.get("interval", interval)) != int(interval):
            raise StoreError(
                f"table {table!r} in {self.root} was collected with interval {meta.get('interval')} s, "
                f"not {interval} s: use another store or keep the interval"
            )

    # -- files
    def _table_dir(self, table: str) -> Path:
        return self.root / table

    def _sensor_dirs(self, table: str) -> list[Path]:
        base = self._table_dir(table)
        if self.sensor is not None:
            d = base / f"{PARTITION}={self.sensor}"
            return [d] if d.is_dir() else []
        return sorted(p for p in base.glob(f"{PARTITION}=*") if p.is_dir())

    def sensor_dirs(self, table: str) -> list[SensorDir]:
        """The selected ``sensor=`` folders of a table, each resolved (see :class:`SensorDir`)."""
        return [scan_sensor_dir(d) for d in self._sensor_dirs(table)]

    def files(self, table: str, since: Any = None, until: Any = None) -> list[Path]:
        """Interval and day files of a table, pruned by file name (only the footers of day files that
        have interval files beside them are opened)."""
        return self._files(table, since, until)[0]

    def _files(self, table: str, since: Any, until: Any) -> tuple[list[Path], bool]:
        """(files, whether a late interval file overlaps a day file in the range)."""
        lo, hi = utc_timestamp(since), utc_timestamp(until)

        def wanted(start: Any, length: timedelta) -> bool:
            return not ((lo is not None and start + length <= lo) or (hi is not None and start >= hi))

        out: list[Path] = []
        overlap = False
        for sd in self.sensor_dirs(table):
            mine = [(start, p) for start, p in sd.days.items() if wanted(start, _DAY)]
            mine += [
                (start, p) for start, p in sd.intervals.items() if wanted(start, timedelta(microseconds=1))
            ]
            order, mixed = _time_order(sd, mine)
            out += order
            overlap = (
                overlap or mixed or any(wanted(start, timedelta(microseconds=1)) for start in sd.overlap)
            )
        return out, overlap

    def interval_tokens(self, table: str) -> dict[Any, str]:
        """Interval start -> a token that changes whenever that interval's data changes (a later
        capture can add to an interval that diff has already seen; it must then be diffed again).
        Compaction keeps each interval's token: the day file records the token its interval had."""
        out: dict[Any, list[str]] = {}
        for sd in self.sensor_dirs(table):
            mine: dict[Any, str] = {
                start: rec.get("token", "") for start, (_, rec) in sd.day_intervals().items()
            }
            for start, p in sd.intervals.items():
                if (tok := file_token(p)) is None:
                    continue
                mine[start] = f"{mine[start]}+{tok}" if start in mine else tok
            for start, tok in mine.items():
                out.setdefault(start, []).append(tok)
        return {k: "|".join(sorted(v)) for k, v in sorted(out.items())}

    def intervals(self, table: str) -> list[pd.Timestamp]:
        """Interval starts present for a table (UTC, sorted, over the selected sensor(s))."""
        seen: set[Any] = set()
        for sd in self.sensor_dirs(table):
            seen.update(sd.intervals)
            seen.update(sd.day_intervals())
        return sorted(seen)

    # -- reading
    def read(
        self,
        table: str,
        since: Any = None,
        until: Any = None,
        columns: Sequence[str] | None = None,
        where: Mapping[str, Any] | None = None,
    ) -> pd.DataFrame:
        """Rows of ``table`` with ``since <= interval_start < until``; ``where`` maps a column to a value
        or a list of values. Filters are pushed down to Parquet; the result always has the full dtypes."""
        return _to_pandas(self.read_table(table, since, until, columns, where))

    def read_table(
        self,
        table: str,
        since: Any = None,
        until: Any = None,
        columns: Sequence[str] | None = None,
        where: Mapping[str, Any] | None = None,
        *,
        dictionary: Sequence[str] = (),
    ) -> pa.Table:
        """:meth:`read` as an Arrow table (learn reduces it in Arrow, without a pandas copy).

        ``dictionary``: text columns returned dictionary-encoded, as Parquet stores them: each distinct
        string is decoded once per row group instead of once per row (learn reads 2x faster so)."""
        keys = self.table_keys(table)
        if keys is None:
            raise StoreError(
                f"no table {table!r} in store {self.root} (tables: {', '.join(self.tables()) or 'none'})"
            )
        schema = table_schema(keys).append(pa.field(PARTITION, pa.string()))
        if columns is not None:
            unknown = [c for c in columns if c not in schema.names]
            if unknown:
                raise StoreError(f"table {table!r} has no column {unknown[0]!r}")
        expr = _filter_expr(since, until, where, schema)
        for attempt in range(3):
            files, overlap = self._files(table, since, until)
            if not files:  # the types of a read that found rows
                empty = _dictionary_schema(schema, dictionary).empty_table()
                return empty.select(list(columns)) if columns else empty
            try:
                return self._read_files(
                    table, files, schema, expr, columns, keys if overlap else None, dictionary
                )
            except FileNotFoundError:  # a compaction replaced the files since they were listed
                if attempt == 2:
                    raise StoreError(
                        f"cannot read table {table!r} in {self.root}: files keep changing"
                    ) from None
            except (OSError, pa.ArrowInvalid) as e:
                raise StoreError(f"cannot read table {table!r} in {self.root}: {e}") from None
        raise AssertionError("unreachable")

    def _read_files(
        self,
        table: str,
        files: list[Path],
        schema: pa.Schema,
        expr: ds.Expression | None,
        columns: Sequence[str] | None,
        merge_keys: Sequence[str] | None,
        dictionary: Sequence[str] = (),
    ) -> pa.Table:
        """Read the files; with ``merge_keys`` (a late interval file beside a day file holding the same
        interval) the rows of each sensor, interval and key are added up, as if the day were one file."""
        import pyarrow.dataset as ds

        text = [c for c in dictionary if pa.types.is_string(schema.field(c).type)]
        if merge_keys is None and text:
            schema = _dictionary_schema(schema, text)
            options = ds.ParquetReadOptions(dictionary_columns=text)
            fmt: Any = ds.ParquetFileFormat(read_options=options)
        else:
            fmt = "parquet"
        dataset = ds.dataset(
            [str(f) for f in files],
            format=fmt,
            partitioning=ds.partitioning(pa.schema([(PARTITION, pa.string())]), flavor="hive"),
            partition_base_dir=str(self._table_dir(table)),
            schema=schema,
            filesystem=self._filesystem,
        )
        if merge_keys is None:
            return dataset.to_table(columns=list(columns) if columns else None, filter=expr)
        full = dataset.to_table(filter=expr)
        merged = _reaggregate(full, [PARTITION, *merge_keys], schema)
        for c in text:  # the same types as the files alone would give
            i = merged.schema.get_field_index(c)
            merged = merged.set_column(i, c, merged[c].dictionary_encode())
        return merged.select(list(columns)) if columns else merged

    def read_intervals(
        self, table: str, keys: Sequence[str], starts: Sequence[Any], *, sensor_column: str | None = None
    ) -> pd.DataFrame:
        """Rows of exactly the given intervals (interval_start, key columns, metrics), every sensor's rows
        kept apart; ``df.attrs["sensors"]`` says how many sensors they came from (learn and diff add up
        rows of several sensors after canonicalisation). With ``sensor_column`` the sensor of each row is
        kept under that name, as a categorical (one small code per row: diff names the sensors of a row)."""
        import pandas as pd

        cols = [INTERVAL, *keys, "packets", "bytes", "first_seen", "last_seen"]
        if not starts:
            df = table_schema(keys).empty_table().select(cols).to_pandas(coerce_temporal_nanoseconds=False)
            if sensor_column:
                df[sensor_column] = pd.Categorical([])
            return df
        lo, hi = min(starts), max(starts) + pd.Timedelta(microseconds=1)
        df = self.read(table, since=lo, until=hi, columns=cols + [PARTITION])
        part = df.pop(PARTITION) if PARTITION in df.columns else None
        sensors = part.nunique() if part is not None else 1
        if sensor_column:
            df[sensor_column] = (
                part.fillna("").astype("category") if part is not None else pd.Categorical([""] * len(df))
            )
        mask = df[INTERVAL].isin(pd.DatetimeIndex(list(starts))).to_numpy()
        if not mask.all():
            df = df[mask].reset_index(drop=True)
        df.attrs["sensors"] = sensors
        return df

    def interval_table(self, table: str, keys: Sequence[str], starts: Sequence[Any]) -> pa.Table:
        """Rows of exactly the given intervals as Arrow (interval_start, key columns, metrics, and the
        ``sensor`` partition): one dataset scan for all of them (learn's read). Text key columns come
        dictionary-encoded (their chunks' dictionaries differ: ``unify_dictionaries`` before grouping)."""
        import pandas as pd

        cols = [INTERVAL, *keys, "packets", "bytes", "first_seen", "last_seen", PARTITION]
        if not starts:  # the types of a read that found rows
            schema = table_schema(keys).append(pa.field(PARTITION, pa.string()))
            return _dictionary_schema(schema, keys).empty_table().select(cols)
        lo, hi = min(starts), max(starts) + pd.Timedelta(microseconds=1)
        t = self.read_table(table, since=lo, until=hi, columns=cols, dictionary=keys)
        want = pa.array(pd.DatetimeIndex(list(starts)).as_unit("us"), type=t.schema.field(INTERVAL).type)
        mask = pc.is_in(t[INTERVAL], value_set=want)
        return t if pc.all(mask).as_py() is not False else t.filter(mask)

    # -- writing
    def write_interval_rows(
        self, table: str, keys: Sequence[str], rows: pa.Table, source_id: str, *, presorted: bool = False
    ) -> int:
        """Merge aggregated rows (schema.table_schema(keys), any number of intervals) into the store.

        Counts add, first/last seen take min/max. An interval file that already holds ``source_id`` is
        left alone, which makes re-collecting a capture after a crash exact. ``presorted``: the rows
        are already sorted by (interval_start, keys) and unique per key (as the Aggregator gives them),
        so a new interval file is written without sorting again. Returns rows written."""
        with self.batch() as batch:
            return batch.write_interval_rows(table, keys, rows, source_id, presorted=presorted)

    def batch(self) -> WriteBatch:
        """Stage many interval files and make them durable with one filesystem sync (``with`` block)."""
        if self.sensor is None:
            raise StoreError("a sensor name is needed to write to the store")
        return WriteBatch(self)

    def interval_path(self, table: str, start: pd.Timestamp | datetime) -> Path:
        return self._table_dir(table) / f"{PARTITION}={self.sensor}" / interval_file_name(start)

    def write_day_file(
        self,
        path: Path,
        schema: pa.Schema,
        pieces: Iterable[pa.Table],
        record: Mapping[str, Mapping[str, Any]],
    ) -> int:
        """Write a day file, pieces (an interval each, in time order) gathered into row groups of about
        :data:`DAY_ROW_GROUP_ROWS` rows, under a temp name readers ignore;
        make it durable, then rename it into place. ``record`` (interval file name -> sources and token) goes
        in the footer: it is what tells readers which interval files the day file replaces. Returns rows."""
        sources = sorted({s for rec in record.values() for s in rec.get("sources", ())})
        meta = {
            _DAY_KEY: json.dumps(record, sort_keys=True).encode(),
            _SOURCES_KEY: json.dumps(sources).encode(),
        }
        schema = schema.with_metadata(meta)
        rows = 0

        def fill(tmp: str) -> None:
            nonlocal rows
            with pq.ParquetWriter(tmp, schema, **_parquet_options(schema)) as w:
                held: list[pa.Table] = []
                for piece in pieces:
                    if piece.num_rows:
                        held.append(piece.replace_schema_metadata(meta))
                        rows += piece.num_rows
                        if sum(t.num_rows for t in held) >= DAY_ROW_GROUP_ROWS:
                            write_row_group(w, held)
                            held = []
                write_row_group(w, held)

        replace_atomically(path, fill)
        return rows

    def remove_files(self, paths: Iterable[Path]) -> int:
        """Remove files the store no longer needs (a crash point after each: a re-run removes the rest)."""
        n = 0
        dirs = set()
        for p in paths:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                n += 1
            dirs.add(p.parent)
            crash_point()
        for d in sorted(dirs):
            fsync_dir(d)
        return n

    def fold_ledger(self, at: int | None = None) -> int:
        """Nothing to fold: a local ledger is one file per sensor (see S3Store.fold_ledger)."""
        return 0

    def remove_stale_temp_files(self) -> int:
        """Temp files left by a killed writer (readers never see them: their names start with '.')."""
        n = 0
        for p in self.root.rglob(".*.tmp"):
            with contextlib.suppress(OSError):
                p.unlink()
                n += 1
        return n

    def lock(self, wait: float = 60.0) -> contextlib.AbstractContextManager[None]:
        """Serialise the writers of one sensor (two collects merging into one interval file would lose
        counts); sensors write to their own partitions and never wait for each other."""
        if self.sensor is None:
            return file_lock(self.root / LOCK, wait=wait, what="store")
        return file_lock(
            self.root / LEDGERS / f".{self.sensor}.lock", wait=wait, what=f"store (sensor {self.sensor})"
        )

    # -- ledger
    @property
    def ledger_path(self) -> Path:
        """Where this sensor's ledger lines are appended (the old single ledger without a sensor)."""
        if self.sensor is None:
            return self.root / LEDGER
        return self.root / LEDGERS / f"{self.sensor}.jsonl"

    def ledger(self) -> list[LedgerEntry]:
        """Entries in order: the old single ledger (a store written before ledgers were per sensor; its
        entries count for every sensor, as they did), then the sensor's own ledger, or every sensor's
        ledger in the order the captures were collected. A torn last line (crash mid-append) is
        ignored, its capture is simply redone."""
        out = self._read_ledger(self.root / LEDGER)
        if self.sensor is not None:
            return out + self._read_ledger(self.ledger_path)
        others: list[LedgerEntry] = []
        for p in sorted((self.root / LEDGERS).glob("*.jsonl")):
            others += self._read_ledger(p)
        return out + sorted(others, key=lambda e: e.collected_at)

    @staticmethod
    def _read_ledger(path: Path) -> list[LedgerEntry]:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            try:
                fields = json.loads(line)
                # fields of a newer flowdiff are dropped, not the line: a lost line means a capture
                # read (and counted) again
                out.append(LedgerEntry(**{k: v for k, v in fields.items() if k in _LEDGER_FIELDS}))
            except (ValueError, TypeError, AttributeError):
                continue
        return out

    def ledger_append(self, entry: LedgerEntry) -> None:
        self.ledger_path.parent.mkdir(parents=True, exist_ok=True)
        if not entry.collected_at:
            entry.collected_at = now_iso()
        if entry.tables is not None:
            entry.tables = sorted(set(entry.tables))
        line = json.dumps(asdict(entry), sort_keys=True) + "\n"
        crash_point()
        with open(self.ledger_path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def tables_filled(self, entry: LedgerEntry) -> set[str]:
        """Tables a ledger entry filled: its ``tables``, or for a line written before that field
        existed, the tables whose definition is older than the entry (see the module doc)."""
        if entry.tables is not None:
            return set(entry.tables)
        return self._legacy_rule([*self.ledger(), entry])(entry)

    def ledger_tables(self) -> list[tuple[LedgerEntry, set[str]]]:
        """Every ledger entry with the tables it filled (one pass over the table definitions)."""
        entries = self.ledger()
        rule = self._legacy_rule(entries)
        return [(e, set(e.tables) if e.tables is not None else rule(e)) for e in entries]

    def _legacy_rule(self, entries: Sequence[LedgerEntry]) -> Callable[[LedgerEntry], set[str]]:
        """The tables filled by a line without ``tables``: those defined before it was written. The
        first collect defines its tables before its first ledger line, so when every definition is
        younger than the oldest such line, the times cannot be trusted (a store copied without its
        times): then every table counts as filled, and no capture is read again into a table that may
        hold it already."""
        created = self._table_created()
        times = [t for e in entries if e.tables is None and (t := _entry_time(e)) is not None]
        trusted = bool(created) and bool(times) and min(created.values()) < min(times) + 1

        def rule(entry: LedgerEntry) -> set[str]:
            if entry.status not in ("ok", "damaged"):
                return set()
            at = _entry_time(entry)
            if at is None or not trusted:  # never a count twice
                return set(created)
            # collected_at drops the fraction of its second: a table defined in that second counts
            return {t for t, when in created.items() if when < at + 1}

        return rule

    def _table_created(self) -> dict[str, float]:
        """Table -> modification time of its ``_table.json`` (written once, when the table is created)."""
        out = {}
        for t in self.tables():
            with contextlib.suppress(OSError):
                out[t] = (self.root / t / TABLE_META).stat().st_mtime
        return out

    def row_count(self, table: str) -> int:
        return sum(pq.ParquetFile(p).metadata.num_rows for p in self.files(table))

    # -- summaries (what `flowdiff tables` and `flowdiff show` print; a notebook gets the same frames)
    def describe(self) -> pd.DataFrame:
        """One row per table of the store: ``table``, ``keys`` (comma separated, in key order),
        ``interval`` (seconds), ``intervals`` (how many are stored), ``first``/``last`` (the first and
        the last interval start, NaT when empty) and ``rows``. Reads file names and Parquet footers only."""
        import pandas as pd

        records = []
        for name in self.tables():
            meta = self.table_meta(name) or {}
            starts = self.intervals(name)
            records.append(
                {
                    "table": name,
                    "keys": ",".join(meta.get("keys", [])),
                    "interval": int(meta.get("interval", 0)),
                    "intervals": len(starts),
                    "first": starts[0] if starts else pd.NaT,
                    "last": starts[-1] if starts else pd.NaT,
                    "rows": self.row_count(name),
                }
            )
        columns = ["table", "keys", "interval", "intervals", "first", "last", "rows"]
        out = pd.DataFrame.from_records(records, columns=columns)
        for col in ("first", "last"):
            out[col] = pd.to_datetime(out[col], utc=True)
        return out.astype({"interval": "int64", "intervals": "int64", "rows": "int64"})

    def totals(
        self,
        table: str,
        since: Any = None,
        until: Any = None,
        where: Mapping[str, Any] | None = None,
        top: int | None = None,
        by_interval: bool = False,
        scheduler: str | None = None,
    ) -> pd.DataFrame:
        """The biggest rows of ``table`` over ``since <= interval_start < until``, by bytes.

        Totals per key (``packets``, ``bytes``, ``intervals`` it was seen in, ``first_seen``,
        ``last_seen``; summed over sensors when the store reads several), or with ``by_interval`` the
        stored rows themselves. Sorted by bytes, largest first, then by the key columns, so that equal
        totals come out in the same order on every run; ``top`` keeps the first rows only. ``where`` as
        for :meth:`read`. ``scheduler``: read and add up on that dask.distributed cluster, same frame."""
        keys = list(self.table_keys(table) or ())
        if scheduler:
            from flowdiff import distributed

            read = distributed.by_interval_frame if by_interval else distributed.totals_frame
            df = read(self, scheduler, table, since, until, where)
        else:
            df = self.read(table, since=since, until=until, where=where)
        if not by_interval and not scheduler:
            df = (
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
        order = ["bytes", *keys]
        df = df.sort_values(order, ascending=[False] + [True] * len(keys), kind="stable")
        df = df.reset_index(drop=True)
        return df if top is None else df.head(top)


class WriteBatch:
    """Interval files written as temp files first; on exit one ``syncfs`` makes them all durable, then
    each is renamed into place. A crash before a rename leaves the old file (and a temp file that the next
    collect removes); the per-file sources list keeps every merge exact either way."""

    def __init__(self, store: Store):
        self.store = store
        self.pending: list[tuple[str, Path]] = []
        self._dirs: set[Path] = set()  # sensor folders known to exist (one mkdir each, not one per file)

    def __enter__(self) -> WriteBatch:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            for tmp, _ in self.pending:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            return
        self.commit()

    def write_interval_rows(
        self, table: str, keys: Sequence[str], rows: pa.Table, source_id: str, *, presorted: bool = False
    ) -> int:
        if rows.num_rows == 0:
            return 0
        schema = table_schema(keys)
        rows = rows.select(schema.names)
        if rows.schema != schema:
            rows = rows.cast(schema)
        if not presorted:
            rows = rows.take(pc.sort_indices(rows, sort_keys=[(INTERVAL, "ascending")]))
        starts = int64_values(rows[INTERVAL])
        bounds = np.flatnonzero(np.diff(starts)) + 1
        folder = self.store.interval_path(table, _EPOCH).parent
        merged: list[tuple[Path, pa.Table]] = []
        for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(starts)], strict=True):
            path = folder / _file_name_us(int(starts[lo]))
            part = self._merge(path, keys, schema, rows.slice(int(lo), int(hi - lo)), source_id, presorted)
            if part is not None:
                merged.append((path, part))
        # Parquet encoding (zstd) runs in C++ without the GIL: the files of a batch are encoded on two
        # threads, then written one after the other on this one (the crash points stay in order)
        written = 0
        for (path, part), data in zip(merged, _encode_all([t for _, t in merged]), strict=True):
            self._put(path, data)
            written += part.num_rows
        return written

    def _merge(
        self, path: Path, keys: Sequence[str], schema: pa.Schema, part: pa.Table, source: str, presorted: bool
    ) -> pa.Table | None:
        """The rows ``path`` must hold once ``part`` is merged in, with their sources list; None when
        the file holds ``source`` already."""
        compacted = self._compacted_sources(path)
        if source in compacted:  # this part is already in the day file
            return None
        # a leftover of an interrupted compaction (all its sources in the day file) is replaced, not added to
        old = path if path.exists() and not (compacted and set(file_sources(path)) <= compacted) else None
        return _merged(old, str(path), keys, schema, part, source, presorted)

    def _put(self, path: Path, data: pa.Buffer) -> None:
        """An encoded interval file as the temp file that commit renames to ``path``: one open and
        one write(2)."""
        if path.parent not in self._dirs:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._dirs.add(path.parent)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        self.pending.append((tmp, path))  # removed on error (__exit__), and by the next collect
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        crash_point()

    def _compacted_sources(self, path: Path) -> set[str]:
        """Sources of the interval in its day file, when the day was compacted: a part collected again
        after compaction must not count twice, and a late part goes to an interval file beside it."""
        stem = path.name.removesuffix(".parquet")  # YYYYMMDDTHHMMSSZ; parsed without pandas (start-up)
        if len(stem) != 16 or stem[8] != "T":
            return set()
        day = path.with_name(stem[:8] + ".parquet")  # day_file_name of its UTC day
        if not day.exists():
            return set()
        return set(day_meta(day).get(path.name, {}).get("sources", ()))

    def commit(self) -> None:
        if not self.pending:
            return
        syncfs(self.store.root)
        dirs = set()
        for tmp, final in self.pending:
            os.replace(tmp, final)
            dirs.add(final.parent)
            crash_point()
        for d in sorted(dirs):
            fsync_dir(d)
        self.pending.clear()


def _merged(
    old: Any, label: str, keys: Sequence[str], schema: pa.Schema, part: pa.Table, source: str, presorted: bool
) -> pa.Table | None:
    """The rows an interval file must hold once ``part`` is merged into ``old`` (a path or buffer, None
    for a new file), with its sources list; None when ``old`` holds ``source`` already."""
    sources: list[str] = []
    if old is not None:
        try:
            with pq.ParquetFile(old) as f:  # not read_table: that imports pyarrow.dataset (0.2 s)
                meta = f.schema_arrow.metadata or {}
                rows = f.read().select(schema.names)
            if rows.schema != schema:
                rows = rows.cast(schema)
        except (OSError, KeyError, pa.ArrowInvalid) as e:
            raise StoreError(f"{label}: unreadable interval file: {e}") from None
        sources = json.loads(meta.get(_SOURCES_KEY, b"[]"))
        if source in sources:
            return None
        part = _reaggregate(pa.concat_tables([rows, part]), keys, schema)
    elif not presorted:
        part = _sort(part, keys)
    sources = sorted({*sources, source})
    return part.replace_schema_metadata({_SOURCES_KEY: json.dumps(sources).encode()})


def _entry_time(entry: LedgerEntry) -> float | None:
    try:
        return datetime.strptime(entry.collected_at, _LEDGER_TIME_FMT).replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def open_store(path: str | os.PathLike = "store", sensor: str | None = None) -> Store:
    """Open a store for reading from a notebook: ``open_store("store").read("services")``."""
    return Store(path, sensor)


# ---------------------------------------------------------------- helpers


def _filter_expr(
    since: Any, until: Any, where: Mapping[str, Any] | None, schema: pa.Schema
) -> ds.Expression | None:
    import pyarrow.dataset as ds

    expr = None

    def _and(e: ds.Expression) -> None:
        nonlocal expr
        expr = e if expr is None else expr & e

    ts_type = schema.field(INTERVAL).type
    if (lo := utc_timestamp(since)) is not None:
        _and(ds.field(INTERVAL) >= pa.scalar(lo.to_pydatetime(), type=ts_type))
    if (hi := utc_timestamp(until)) is not None:
        _and(ds.field(INTERVAL) < pa.scalar(hi.to_pydatetime(), type=ts_type))
    for col, value in (where or {}).items():
        if col not in schema.names:
            raise StoreError(f"cannot filter on {col!r}: no such column")
        typ = schema.field(col).type
        if isinstance(value, list | tuple | set):
            _and(ds.field(col).isin(pa.array(list(value), type=typ)))
        else:
            _and(ds.field(col) == pa.scalar(value, type=typ))
    return expr


def int64_values(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A column without nulls (integers, timestamps) as an int64 numpy array. Not ``to_numpy()``:
    pyarrow imports pandas for it (0.3 s), which collect otherwise never needs."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    # a 64-bit column is viewed as it is (cast() imports pyarrow.compute: 50 ms of a small collect)
    col = col.view(pa.int64()) if col.type.bit_width == 64 else col.cast(pa.int64())
    return np.frombuffer(col.buffers()[1], dtype=np.int64, count=len(col), offset=col.offset * 8)


def _file_name_us(start_us: int) -> str:
    """:func:`interval_file_name` of an interval start in microseconds since the epoch (no datetime)."""
    return time.strftime(_FILE_FMT, time.gmtime(start_us // 1_000_000)) + ".parquet"


# pid -> the encoding threads of that process, made on first use and shared by its batches (a forked
# child has none of its parent's threads: it makes its own)
_ENCODERS: dict[int, ThreadPoolExecutor] = {}
_ENCODE_LOCK = threading.Lock()


def _encode_all(tables: list[pa.Table]) -> list[pa.Buffer]:
    """:func:`_parquet_bytes` of every table, in order, two at a time."""
    if len(tables) < 2:
        return [_parquet_bytes(t) for t in tables]
    pid = os.getpid()
    with _ENCODE_LOCK:
        pool = _ENCODERS.get(pid)
        if pool is None:
            _ENCODERS.clear()
            pool = _ENCODERS[pid] = ThreadPoolExecutor(2, thread_name_prefix="flowdiff-encode")
    return list(pool.map(_parquet_bytes, tables))


def _parquet_bytes(table: pa.Table) -> pa.Buffer:
    """The Parquet file :func:`_write_parquet` writes, as bytes in memory."""
    sink = pa.BufferOutputStream()
    _write_parquet(table, sink)
    return sink.getvalue()


def _write_options(schema: pa.Schema) -> dict[str, Any]:
    """The Parquet writer options of a count table, see _write_parquet (cached per column names)."""
    key = tuple(schema.names)
    got = _WRITE_OPTIONS.get(key)
    if got is None:
        small = [
            f.name
            for f in schema
            if f.name == INTERVAL
            or (pa.types.is_integer(f.type) and f.type.bit_width <= 8)
            or pa.types.is_string(f.type)
        ]
        stats = [
            f.name for f in schema if not (pa.types.is_string(f.type) or pa.types.is_large_string(f.type))
        ]
        delta = {f.name: "DELTA_BINARY_PACKED" for f in schema if f.name in _DELTA_COLUMNS}
        raw = () if any(f.name in LOG_KEYS for f in schema) else _RAW_COLUMNS
        got = _WRITE_OPTIONS[key] = {
            "compression": {f.name: "none" if f.name in raw else "zstd" for f in schema},
            "use_dictionary": small,
            "write_statistics": stats,
            "column_encoding": delta,
        }
    return got


_WRITE_OPTIONS: dict[tuple[str, ...], dict[str, Any]] = {}  # column names fix the types
_DELTA_COLUMNS = ("first_seen", "last_seen", "bytes", "packets")
# left uncompressed in packet and flow tables: once delta-packed, times in microseconds and byte counts
# are as good as random bits, and zstd only spends time on them (see _write_parquet)
_RAW_COLUMNS = ("first_seen", "last_seen", "bytes")


def _write_parquet(table: pa.Table, path: str | pa.NativeFile) -> None:
    """zstd, with dictionary encoding only where values repeat (the interval, 8-bit keys, and text:
    addresses, MACs, labels): on count tables it is both faster to write and smaller than Arrow's
    dictionary-for-every-column default (measured on 5-tuple intervals: 0.14 s / 5.1 MB against
    0.23 s / 6.9 MB for 221k rows). Text columns repeat in all but scans: on a week of 2,000 hosts
    their dictionaries make the day files' row groups 20-40% faster to encode and 6-18% smaller, and
    on the high-cardinality capture of issue 11 (Arrow falls back to plain pages once a dictionary
    passes 1 MB) encoding costs within 10% of plain either way. No min/max
    statistics for text columns: a file holds one interval, so the range of its addresses prunes
    nothing, and they cost a fifth of the write time. first_seen, last_seen, bytes and packets are
    DELTA_BINARY_PACKED (standard Parquet, read by pandas, DuckDB and polars): times within one interval
    and counts pack into few bits before zstd, which then has far less to do (issue 11 and 12
    workloads: 13-34% less encode time, files within 2% of the plain ones, the IPFIX ones 8% smaller;
    packets as well: 8-12% less encode time on the week and high-cardinality captures, files 1-1.5%
    larger). Of those, first_seen, last_seen and bytes are not compressed in packet and flow tables:
    zstd made them smaller by under 0.1% on the issue 11 captures (high cardinality, the week, the busy
    port; millisecond flow times alike) and cost 7-12% of the encode time. Log tables keep it: times
    of whole seconds leave zstd 12% to take."""
    pq.write_table(table, path, **_write_options(table.schema))


def _parquet_options(schema: pa.Schema) -> dict[str, Any]:
    return dict(_write_options(schema))


def _dictionary_schema(schema: pa.Schema, dictionary: Sequence[str]) -> pa.Schema:
    """``schema`` with its text columns among ``dictionary`` dictionary-encoded, as reads return them."""
    encoded = pa.dictionary(pa.int32(), pa.string())
    return pa.schema(
        [f.with_type(encoded) if f.name in dictionary and pa.types.is_string(f.type) else f for f in schema]
    )


def _reaggregate(table: pa.Table, keys: Sequence[str], schema: pa.Schema) -> pa.Table:
    group = [INTERVAL, *keys]
    agg = table.group_by(group, use_threads=False).aggregate(
        [("packets", "sum"), ("bytes", "sum"), ("first_seen", "min"), ("last_seen", "max")]
    )
    agg = agg.rename_columns(
        [
            {
                "packets_sum": "packets",
                "bytes_sum": "bytes",
                "first_seen_min": "first_seen",
                "last_seen_max": "last_seen",
            }.get(n, n)
            for n in agg.column_names
        ]
    )
    return _sort(agg.select(schema.names).cast(schema), keys)


def _sort(table: pa.Table, keys: Sequence[str]) -> pa.Table:
    order = [(INTERVAL, "ascending")] + [(k, "ascending") for k in keys]
    return table.take(pc.sort_indices(table, sort_keys=order))


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    # Keep the stored units (timestamp[us, UTC]); pandas would otherwise pick its own defaults.
    return table.to_pandas(coerce_temporal_nanoseconds=False)


# ---------------------------------------------------------------- the store on object storage
# (added for issue 10: flowdiff.objstore says how S3 is reached and why these write rules are safe)


# Ledger objects on S3 written since the last fold before collect folds them (see S3Store.fold_ledger),
# and the GETs that read a ledger at once.
LEDGER_FOLD = 64
_LEDGER_READERS = 8
_FOLD_SUFFIX = ".fold.jsonl"
_FOLD_KEY = "ledger_key"  # the name stem of a folded entry's object, kept in its line of the fold


@dataclass
class _LedgerPlan:
    fold: Any  # file info of the newest fold, or None
    entries: list[Any]  # file infos of the entries written after it, in order
    superseded: list[str]  # keys of older folds and of entries the fold holds (left by a crash)
    newest: str  # the newest name stem seen


def _ledger_stem(key: str) -> str:
    """``<time ns>-<random>`` of a ledger object's key (an entry's or a fold's)."""
    name = PurePosixPath(key).name
    return name[: -len(_FOLD_SUFFIX)] if name.endswith(_FOLD_SUFFIX) else name.removesuffix(".json")


def _stem_ns(stem: str) -> int:
    try:
        return int(stem.split("-", 1)[0])
    except ValueError:
        return 0


def _entry_fields(body: bytes | str | None) -> dict[str, Any] | None:
    """The fields of one ledger object or fold line (None when it is gone or unreadable: its capture is
    then read again)."""
    if body is None:
        return None
    try:
        fields = json.loads(body)
    except ValueError:  # UnicodeDecodeError included
        return None
    return fields if isinstance(fields, dict) else None


def _fold_rows(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    rows = []
    for line in body.decode("utf-8", "replace").splitlines():
        fields = _entry_fields(line)
        if fields is not None and isinstance(fields.get(_FOLD_KEY), str):
            rows.append((fields[_FOLD_KEY], fields))
    return rows


class S3Store(Store):
    """A :class:`Store` whose files are objects. Same reads and results; see the module doc for the
    write rules."""

    def __init__(self, root: str | os.PathLike, sensor: str | None = None, endpoint_url: str | None = None):
        url = str(root).rstrip("/")
        self.url = url
        self.endpoint = (
            endpoint_url or getattr(root, "endpoint_url", None) or os.environ.get(ENDPOINT_ENV) or None
        )
        self.bucket, self.prefix = parse_url(url)
        self.root = PurePosixPath(self.bucket, self.prefix) if self.prefix else PurePosixPath(self.bucket)  # type: ignore[assignment]
        self.sensor = sensor
        self._filesystem = s3_filesystem(self.endpoint)
        self._checked = False
        self._newest_stem = ""  # of the ledger objects read or written by this process
        self._entries_seen: dict[str, dict[str, Any]] = {}  # key -> fields, of the entries read or written
        self._folds_seen: dict[
            str, list[tuple[str, dict[str, Any]]]
        ] = {}  # key -> rows (a fold never changes)

    def __repr__(self) -> str:
        return f"Store({self.url!r}, sensor={self.sensor!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "sensor": self.sensor, "endpoint": self.endpoint}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], state["sensor"], state["endpoint"])  # type: ignore[misc]

    # -- the one place that talks to S3: every error becomes one line naming the store
    def _fs(self) -> Any:
        if not self._checked:
            self._check_bucket()
        return self._filesystem

    def _check_bucket(self) -> None:
        from pyarrow import fs

        try:
            info = self._filesystem.get_file_info(self.bucket)
            # a HEAD on the bucket does not check the credentials on every server: list it as well
            if info.type != fs.FileType.NotFound:
                self._filesystem.get_file_info(fs.FileSelector(self.bucket, allow_not_found=True))
        except OSError as e:
            raise StoreError(explain(self.url, e, self.endpoint)) from None
        if info.type == fs.FileType.NotFound:
            raise StoreError(
                f"store {self.url}: the bucket {self.bucket!r} does not exist"
                + (f" at {self.endpoint}" if self.endpoint else "")
            )
        self._checked = True

    def _call(self, fn: Any, *args: Any, **kw: Any) -> Any:
        try:
            return fn(self._fs(), *args, **kw)
        except FileNotFoundError:
            raise
        except OSError as e:
            raise StoreError(explain(self.url, e, self.endpoint)) from None

    def _key(self, *parts: str) -> str:
        return str(PurePosixPath(self.root, *parts))

    def _list(self, sub: str, recursive: bool = True) -> list[Any]:
        from pyarrow import fs

        sel = fs.FileSelector(self._key(sub), recursive=recursive, allow_not_found=True)
        return self._call(lambda f: f.get_file_info(sel))

    def _table_metas(self) -> list[Any]:
        """File infos of the ``<table>/_table.json`` objects: one listing of the top level, then one
        request per table (never a listing of every interval object of the store)."""
        from pyarrow import fs

        dirs = [i.path for i in self._list("", recursive=False) if i.type == fs.FileType.Directory]
        if not dirs:
            return []
        infos = self._call(lambda f: f.get_file_info([f"{d}/{TABLE_META}" for d in dirs]))
        return [i for i in infos if i.type == fs.FileType.File]

    def _read_bytes(self, key: str) -> bytes:
        def read(f: Any) -> bytes:
            with f.open_input_stream(key) as s:
                return s.read()

        try:
            return self._call(read)
        except FileNotFoundError:
            raise

    def put(self, key: str, data: bytes | pa.Buffer) -> None:
        """One PUT: the object appears whole under its final key, or not at all."""

        def write(f: Any) -> None:
            with f.open_output_stream(key) as s:
                s.write(data)

        self._call(write)

    # -- table definitions
    def exists(self) -> bool:
        return bool(self._list("", recursive=False))

    def tables(self) -> list[str]:
        return sorted(PurePosixPath(i.path).parent.name for i in self._table_metas())

    def table_meta(self, table: str) -> dict[str, Any] | None:
        key = self._key(table, TABLE_META)
        try:
            return json.loads(self._read_bytes(key).decode("utf-8"))
        except FileNotFoundError:
            return None
        except ValueError as e:
            raise StoreError(f"{SCHEME}{key}: unreadable table definition: {e}") from None

    def ensure_table(self, table: str, keys: Sequence[str], interval: int) -> None:
        if self.table_meta(table) is None:
            want = {"keys": list(keys), "interval": int(interval)}
            self.put(self._key(table, TABLE_META), (json.dumps(want, indent=1) + "\n").encode())
            return
        super().ensure_table(table, keys, interval)

    # -- files
    def _table_dir(self, table: str) -> PurePosixPath:  # type: ignore[override]
        return PurePosixPath(self.root, table)

    def _interval_infos(self, table: str) -> list[Any]:
        out = []
        sub = table if self.sensor is None else f"{table}/{PARTITION}={self.sensor}"
        for info in self._list(sub):
            p = PurePosixPath(info.path)
            if not p.name.endswith(".parquet") or not p.parent.name.startswith(f"{PARTITION}="):
                continue
            if self.sensor is not None and p.parent.name != f"{PARTITION}={self.sensor}":
                continue
            if _interval_of_file(p.name) is None:
                continue
            out.append(info)
        return sorted(out, key=lambda i: (PurePosixPath(i.path).parent.name, PurePosixPath(i.path).name))

    def files(self, table: str, since: Any = None, until: Any = None) -> list[PurePosixPath]:  # type: ignore[override]
        from flowdiff.vocab import utc_timestamp

        lo, hi = utc_timestamp(since), utc_timestamp(until)
        out = []
        for info in self._interval_infos(table):
            p = PurePosixPath(info.path)
            start = _interval_of_file(p.name)
            if (lo is not None and start < lo) or (hi is not None and start >= hi):
                continue
            out.append(p)
        return out

    def _files(self, table: str, since: Any, until: Any) -> tuple[list[Path], bool]:  # type: ignore[override]
        return self.files(table, since, until), False  # type: ignore[return-value]  # no day files on S3

    def intervals(self, table: str) -> list[pd.Timestamp]:
        return sorted({_interval_of_file(PurePosixPath(i.path).name) for i in self._interval_infos(table)})

    def interval_tokens(self, table: str) -> dict[Any, str]:
        out: dict[Any, list[str]] = {}
        for info in self._interval_infos(table):
            p = PurePosixPath(info.path)
            out.setdefault(_interval_of_file(p.name), []).append(
                f"{p.parent.name}:{info.size}:{info.mtime_ns}"
            )
        return {k: "|".join(sorted(v)) for k, v in sorted(out.items())}

    def row_count(self, table: str) -> int:
        return sum(
            self._call(lambda f, p=p: pq.ParquetFile(f.open_input_file(str(p))).metadata.num_rows)
            for p in self.files(table)
        )

    def interval_path(self, table: str, start: Any) -> PurePosixPath:  # type: ignore[override]
        return PurePosixPath(self.root, table, f"{PARTITION}={self.sensor}", interval_file_name(start))

    def batch(self) -> WriteBatch:
        if self.sensor is None:
            raise StoreError("a sensor name is needed to write to the store")
        self._fs()  # bucket and credentials checked before anything is read or written
        return S3WriteBatch(self)

    def remove_stale_temp_files(self) -> int:
        return 0  # no temp objects: every object is written once under its final key

    def lock(self, wait: float = 60.0) -> contextlib.AbstractContextManager[None]:
        """A local lock per store and sensor (see the module doc: one sensor is one writer)."""
        digest = hashlib.sha256(f"{self.endpoint}|{self.url}|{self.sensor}".encode()).hexdigest()[:16]
        path = Path(tempfile.gettempdir()) / "flowdiff-locks" / f"{digest}.lock"
        return file_lock(path, wait=wait, what=f"store {self.url}")

    # -- ledger: one object per entry
    @property
    def ledger_path(self) -> PurePosixPath:  # type: ignore[override]
        return PurePosixPath(self.root, LEDGER_PREFIX)

    def ledger(self) -> list[LedgerEntry]:
        """The sensor's entries (every sensor's without one), in the order they were written; objects
        directly under ``_ledger/`` (written before ledgers were per sensor) count for every sensor."""
        out = []
        for _, fields in self._ledger_fields():
            try:
                out.append(LedgerEntry(**{k: v for k, v in fields.items() if k in _LEDGER_FIELDS}))
            except (TypeError, ValueError):  # a field missing: the capture is simply read again
                continue
        return out

    def _ledger_fields(self) -> list[tuple[str, dict[str, Any]]]:
        """(name stem, fields) of every entry in write order: the newest fold of each ledger folder,
        then the entry objects written after it, fetched in parallel. An entry that vanished between
        the listing and its GET was folded by the writer meanwhile: the ledger is then read once more."""
        for attempt in range(2):
            plans = self._ledger_plans()
            folds = [p.fold for p in plans if p.fold is not None]
            entries = [i for p in plans for i in p.entries]
            seen = self._entries_seen.keys() | self._folds_seen.keys()
            fetch = [i.path for i in [*folds, *entries] if i.path not in seen]
            with ThreadPoolExecutor(max_workers=_LEDGER_READERS) as pool:
                bodies = dict(zip(fetch, pool.map(self._read_if_there, fetch), strict=True))
            if None in bodies.values() and attempt == 0:
                continue
            out = []
            for info in folds:  # a fold gone again on the second reading (two folds in one read): empty
                body = bodies.get(info.path)
                if info.path not in self._folds_seen and body is not None:
                    self._folds_seen[info.path] = _fold_rows(body)
                out += self._folds_seen.get(info.path, [])
            for info in entries:
                fields = self._entries_seen.get(info.path) or _entry_fields(bodies.get(info.path))
                if fields is not None:
                    self._entries_seen[info.path] = fields
                    out.append((_ledger_stem(info.path), fields))
            for p in plans:  # entries this process writes next sort after every one it has read
                self._newest_stem = max(self._newest_stem, p.newest)
            out.sort(key=lambda row: row[0])
            return out
        raise AssertionError("unreachable")

    def _read_if_there(self, key: str) -> bytes | None:
        try:
            return self._read_bytes(key)
        except FileNotFoundError:
            return None

    def _ledger_plans(self, own_only: bool = False) -> list[_LedgerPlan]:
        """Per ledger folder (this sensor's and the shared top level; every sensor's without one): the
        newest fold, the entries written after it, and the objects it supersedes."""
        folders: dict[str, list[Any]] = {}
        for info in self._list(LEDGER_PREFIX):
            parent = PurePosixPath(info.path).parent.name
            if self.sensor is None or parent == self.sensor or (parent == LEDGER_PREFIX and not own_only):
                folders.setdefault(parent, []).append(info)
        plans = []
        for infos in folders.values():
            folds = sorted(
                (i for i in infos if i.path.endswith(_FOLD_SUFFIX)), key=lambda i: _ledger_stem(i.path)
            )
            fold = folds[-1] if folds else None
            cut = _ledger_stem(fold.path) if fold is not None else ""
            plan = _LedgerPlan(fold, [], [i.path for i in folds[:-1]], cut)
            for i in sorted(
                (i for i in infos if i.path.endswith(".json")), key=lambda i: _ledger_stem(i.path)
            ):
                stem = _ledger_stem(i.path)
                if stem > cut:
                    plan.entries.append(i)
                else:
                    plan.superseded.append(i.path)
                plan.newest = max(plan.newest, stem)
            plans.append(plan)
        return plans

    def ledger_append(self, entry: LedgerEntry) -> None:
        if not entry.collected_at:
            entry.collected_at = now_iso()
        if entry.tables is not None:
            entry.tables = sorted(set(entry.tables))
        crash_point()
        # the time in the name orders the entries: never before one already read (a clock stepped back
        # would otherwise put an entry behind the fold that covers its predecessors)
        at = max(time.time_ns(), _stem_ns(self._newest_stem) + 1)
        stem = f"{at:020d}-{secrets.token_hex(4)}"
        self._newest_stem = stem
        key = self._key(LEDGER_PREFIX, *([self.sensor] if self.sensor else []), stem + ".json")
        fields = asdict(entry)
        self.put(key, json.dumps(fields, sort_keys=True).encode())
        self._entries_seen[key] = fields

    def fold_ledger(self, at: int | None = None) -> int:
        """Fold this sensor's ledger objects into one once ``at`` (default ``LEDGER_FOLD``) or more were
        written since the last fold; returns how many were folded. Every collect reads the whole ledger,
        and with one object per capture that is one GET per capture ever collected (a year of 5-minute
        captures: 105,000 GETs a run). The fold (every entry, in order, one JSON line each) is PUT
        under the name of the newest entry it holds, then the objects it holds are deleted: a crash in
        between leaves them behind, and readers skip them by name (nothing older than the newest fold
        is read), the next fold deletes them. Writer only (under the sensor's lock)."""
        if self.sensor is None:
            return 0
        plans = self._ledger_plans(own_only=True)
        if not plans or len(plans[0].entries) < (LEDGER_FOLD if at is None else at):
            return 0
        plan = plans[0]
        rows = []
        if plan.fold is not None:
            rows = list(self._folds_seen.get(plan.fold.path) or _fold_rows(self._read_bytes(plan.fold.path)))
        for info in plan.entries:
            fields = self._entries_seen.get(info.path) or _entry_fields(self._read_if_there(info.path))
            if fields is not None:
                rows.append((_ledger_stem(info.path), fields))
        stem = _ledger_stem(plan.entries[-1].path)
        body = "".join(json.dumps({**f, _FOLD_KEY: k}, sort_keys=True) + "\n" for k, f in rows)
        self.put(self._key(LEDGER_PREFIX, self.sensor, stem + _FOLD_SUFFIX), body.encode())
        crash_point()
        gone = [*([plan.fold.path] if plan.fold is not None else []), *(i.path for i in plan.entries)]
        with ThreadPoolExecutor(max_workers=_LEDGER_READERS) as pool:
            list(pool.map(self._delete_if_there, [*gone, *plan.superseded]))
        for info in plan.entries:
            self._entries_seen.pop(info.path, None)
        if plan.fold is not None:
            self._folds_seen.pop(plan.fold.path, None)
        return len(plan.entries)

    def _delete_if_there(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._call(lambda f: f.delete_file(key))

    def _table_created(self) -> dict[str, float]:
        return {
            PurePosixPath(i.path).parent.name: i.mtime_ns / 1e9
            for i in self._table_metas()
            if i.mtime_ns is not None
        }


class S3WriteBatch(WriteBatch):
    """Interval files PUT under their final keys as they are merged (no temp objects, no rename): a
    crash between two PUTs leaves each object old or new, and the sources lists keep re-collection exact."""

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        return None

    def _merge(  # type: ignore[override]
        self,
        path: PurePosixPath,
        keys: Sequence[str],
        schema: pa.Schema,
        part: pa.Table,
        source: str,
        presorted: bool,
    ) -> pa.Table | None:
        store: S3Store = self.store  # type: ignore[assignment]
        try:
            old: Any = pa.BufferReader(store._read_bytes(str(path)))
        except FileNotFoundError:
            old = None
        return _merged(old, f"{SCHEME}{path}", keys, schema, part, source, presorted)

    def _put(self, path: PurePosixPath, data: pa.Buffer) -> None:  # type: ignore[override]
        """One PUT under the final key: readers see the old object or the new one."""
        self.store.put(str(path), data)  # type: ignore[attr-defined]
        crash_point()

    def commit(self) -> None:
        return None
