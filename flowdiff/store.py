"""The Parquet store: every file access of the count tables goes through this module.

Layout (hive-partitioned, opens directly in pandas, DuckDB, polars and pyarrow.dataset)::

    <store>/<table>/_table.json                          key columns and interval of the table
    <store>/<table>/sensor=<name>/<YYYYMMDDTHHMMSSZ>.parquet   one file per interval
    <store>/_ledger.jsonl                                the captures already collected

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
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flowdiff.durable import atomic_write_text, crash_point, file_lock, fsync_dir, syncfs
from flowdiff.errors import StoreError
from flowdiff.schema import INTERVAL, PARTITION, table_schema
from flowdiff.vocab import now_iso, utc_timestamp

if TYPE_CHECKING:  # imported where used: collect needs neither (0.4 s and 0.2 s of start-up time)
    import pandas as pd
    import pyarrow.dataset as ds

TABLE_META = "_table.json"
LEDGER = "_ledger.jsonl"
LOCK = ".lock"
_SOURCES_KEY = b"flowdiff.sources"
_FILE_FMT = "%Y%m%dT%H%M%SZ"
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


def _interval_of_file(name: str) -> pd.Timestamp | None:
    import pandas as pd

    try:
        return pd.Timestamp(datetime.strptime(name.removesuffix(".parquet"), _FILE_FMT).replace(tzinfo=UTC))
    except ValueError:
        return None


class Store:
    """A directory of count tables. ``sensor=None`` reads every sensor; writes need a sensor."""

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

    def files(self, table: str, since: Any = None, until: Any = None) -> list[Path]:
        """Interval files of a table, pruned by file name (no file is opened)."""
        lo, hi = utc_timestamp(since), utc_timestamp(until)
        out = []
        for d in self._sensor_dirs(table):
            for p in sorted(d.glob("*.parquet")):
                start = _interval_of_file(p.name)
                if start is None:
                    continue
                if (lo is not None and start < lo) or (hi is not None and start >= hi):
                    continue
                out.append(p)
        return out

    def interval_tokens(self, table: str) -> dict[Any, str]:
        """Interval start -> a token that changes whenever that interval's files are rewritten (a later
        capture can add to an interval that diff has already seen; it must then be diffed again)."""
        out: dict[Any, list[str]] = {}
        for p in self.files(table):
            start = _interval_of_file(p.name)
            try:
                st = p.stat()
            except OSError:  # replaced under our feet: the next diff sees the new file
                continue
            out.setdefault(start, []).append(f"{p.parent.name}:{st.st_size}:{st.st_mtime_ns}")
        return {k: "|".join(sorted(v)) for k, v in sorted(out.items())}

    def intervals(self, table: str) -> list[pd.Timestamp]:
        """Interval starts present for a table (UTC, sorted, over the selected sensor(s))."""
        seen = {_interval_of_file(p.name) for p in self.files(table)}
        return sorted(t for t in seen if t is not None)

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
        files = self.files(table, since, until)
        if not files:
            return _empty(schema, columns)
        import pyarrow.dataset as ds

        dataset = ds.dataset(
            [str(f) for f in files],
            format="parquet",
            partitioning=ds.partitioning(pa.schema([(PARTITION, pa.string())]), flavor="hive"),
            partition_base_dir=str(self._table_dir(table)),
            schema=schema,
        )
        expr = _filter_expr(since, until, where, schema)
        try:
            result = dataset.to_table(columns=list(columns) if columns else None, filter=expr)
        except (OSError, pa.ArrowInvalid) as e:
            raise StoreError(f"cannot read table {table!r} in {self.root}: {e}") from None
        return _to_pandas(result)

    def read_intervals(self, table: str, keys: Sequence[str], starts: Sequence[Any]) -> pd.DataFrame:
        """Rows of exactly the given intervals (interval_start, key columns, metrics), every sensor's rows
        kept apart; ``df.attrs["sensors"]`` says how many sensors they came from (learn and diff add up
        rows of several sensors after canonicalisation)."""
        import pandas as pd

        cols = [INTERVAL, *keys, "packets", "bytes", "first_seen", "last_seen"]
        if not starts:
            return table_schema(keys).empty_table().select(cols).to_pandas(coerce_temporal_nanoseconds=False)
        lo, hi = min(starts), max(starts) + pd.Timedelta(microseconds=1)
        df = self.read(table, since=lo, until=hi, columns=cols + [PARTITION])
        sensors = df.pop(PARTITION).nunique() if PARTITION in df.columns else 1
        mask = df[INTERVAL].isin(pd.DatetimeIndex(list(starts))).to_numpy()
        if not mask.all():
            df = df[mask].reset_index(drop=True)
        df.attrs["sensors"] = sensors
        return df

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

    def remove_stale_temp_files(self) -> int:
        """Temp files left by a killed writer (readers never see them: their names start with '.')."""
        n = 0
        for p in self.root.rglob(".*.tmp"):
            with contextlib.suppress(OSError):
                p.unlink()
                n += 1
        return n

    def lock(self, wait: float = 60.0) -> contextlib.AbstractContextManager[None]:
        """Serialise writers: two collects merging into one interval file would lose counts."""
        return file_lock(self.root / LOCK, wait=wait, what="store")

    # -- ledger
    @property
    def ledger_path(self) -> Path:
        return self.root / LEDGER

    def ledger(self) -> list[LedgerEntry]:
        """Entries in order; a torn last line (crash mid-append) is ignored, its capture is simply redone."""
        try:
            text = self.ledger_path.read_text(encoding="utf-8")
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
        self.root.mkdir(parents=True, exist_ok=True)
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
    ) -> pd.DataFrame:
        """The biggest rows of ``table`` over ``since <= interval_start < until``, by bytes.

        Totals per key (``packets``, ``bytes``, ``intervals`` it was seen in, ``first_seen``,
        ``last_seen``; summed over sensors when the store reads several), or with ``by_interval`` the
        stored rows themselves. Sorted by bytes, largest first, then by the key columns, so that equal
        totals come out in the same order on every run; ``top`` keeps the first rows only. ``where`` as
        for :meth:`read`."""
        df = self.read(table, since=since, until=until, where=where)
        keys = list(self.table_keys(table) or ())
        if not by_interval:
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
        sources: list[str] = []
        if path.exists():
            try:
                with pq.ParquetFile(path) as f:  # not read_table: that imports pyarrow.dataset (0.2 s)
                    meta = f.schema_arrow.metadata or {}
                    old = f.read().select(schema.names)
                if old.schema != schema:
                    old = old.cast(schema)
            except (OSError, KeyError, pa.ArrowInvalid) as e:
                raise StoreError(f"{path}: unreadable interval file: {e}") from None
            sources = json.loads(meta.get(_SOURCES_KEY, b"[]"))
            if source in sources:
                return None
            part = _reaggregate(pa.concat_tables([old, part]), keys, schema)
        elif not presorted:
            part = _sort(part, keys)
        sources = sorted({*sources, source})
        return part.replace_schema_metadata({_SOURCES_KEY: json.dumps(sources).encode()})

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
    col = col.cast(pa.int64())
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


def _write_options(schema: pa.Schema) -> tuple[list[str], list[str]]:
    """(columns with a dictionary, columns with statistics) of a count table, see _write_parquet."""
    key = tuple(schema.names)
    got = _WRITE_OPTIONS.get(key)
    if got is None:
        small = [
            f.name
            for f in schema
            if f.name == INTERVAL or (pa.types.is_integer(f.type) and f.type.bit_width <= 8)
        ]
        stats = [
            f.name for f in schema if not (pa.types.is_string(f.type) or pa.types.is_large_string(f.type))
        ]
        got = _WRITE_OPTIONS[key] = (small, stats)
    return got


_WRITE_OPTIONS: dict[tuple[str, ...], tuple[list[str], list[str]]] = {}  # column names fix the types


def _write_parquet(table: pa.Table, path: str | pa.NativeFile) -> None:
    """zstd, with dictionary encoding only where values repeat (the interval, 8-bit keys): on count
    tables it is both faster to write and smaller than Arrow's dictionary-for-every-column default
    (measured on 5-tuple intervals: 0.14 s / 5.1 MB against 0.23 s / 6.9 MB for 221k rows). No min/max
    statistics for text columns: a file holds one interval, so the range of its addresses prunes
    nothing, and they cost a fifth of the write time."""
    small, stats = _write_options(table.schema)
    pq.write_table(table, path, compression="zstd", use_dictionary=small, write_statistics=stats)


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


def _empty(schema: pa.Schema, columns: Sequence[str] | None) -> pd.DataFrame:
    t = schema.empty_table()
    if columns:
        t = t.select(list(columns))
    return _to_pandas(t)


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    # Keep the stored units (timestamp[us, UTC]); pandas would otherwise pick its own defaults.
    return table.to_pandas(coerce_temporal_nanoseconds=False)
