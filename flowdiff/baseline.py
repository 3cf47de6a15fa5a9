"""Frozen baselines: what "normal" is, versioned and immutable.

Layout under ``config.baselines`` (see ``baselines/README.md``)::

    versions/v0001.json            one manifest per version (never rewritten): parent, who, when, why,
                                   and per table the data file, its content hash, table definition,
                                   learning window and thresholds
    data/<table>/<hash>.parquet    baseline rows (content addressed, immutable, shared between versions):
                                   key columns + first_seen, last_seen, intervals, packets, bytes
    state/, CURRENT.json, .lock    the diff state and the current version (flowdiff.state)
    rules.toml                     allow/deny rules (flowdiff.rules)

This module makes versions (learn, rollback, and :func:`add_keys`, the one way to add keys to a new
version, which ``accept`` uses) and reads them (history, show, diff between versions). What diff has
reported lives in :mod:`flowdiff.state`; accept, deny and ignore in :mod:`flowdiff.triage`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flowdiff.canon import FINGERPRINT, canonical_keys, definition, key_hashes
from flowdiff.config import Config, TableConfig, parse_duration
from flowdiff.durable import atomic_write_parquet, atomic_write_text
from flowdiff.errors import BaselineError, ConfigError, LearnRefused, StoreError
from flowdiff.exitcodes import ExitCode
from flowdiff.netmap import NetworkMap
from flowdiff.rules import current_user, parse_where, where_mask
from flowdiff.schema import INTERVAL, PARTITION, TIMESTAMP, key_type
from flowdiff.sensors import claim_baselines
from flowdiff.state import commit_state, load_state, lock
from flowdiff.store import Store
from flowdiff.vocab import iso_time, now_iso, utc_timestamp

log = logging.getLogger(__name__)

BASELINE_METRICS: dict[str, pa.DataType] = {
    "first_seen": TIMESTAMP,
    "last_seen": TIMESTAMP,
    "intervals": pa.uint32(),
    "packets": pa.uint64(),
    "bytes": pa.uint64(),
}
_META_KEY = b"flowdiff.baseline"
_VERSION_RE = re.compile(r"^v?(\d{1,9})$")
_CHUNK_INTERVALS = 48  # intervals read at once while learning: bounds memory on long windows
_CHUNK_ONE_SENSOR = 288  # one sensor's day (one day file once compacted) in one scan
_LEARN_THREADS = 2  # chunks learned at once (each is mostly Arrow work that runs without the GIL)

__all__ = [
    "Version",
    "TableEntry",
    "LearnedTable",
    "LearnResult",
    "KeysAdded",
    "VersionDiff",
    "Versions",
    "BaselineRows",
    "learn",
    "add_keys",
    "history",
    "show",
    "diff_versions",
    "rollback",
    "current_version",
    "get_version",
    "baseline_entry",
    "read_baseline",
    "iter_baseline",
    "iter_fingerprints",
    "check_definition",
    "baseline_schema",
    "anti_join",
]


# ------------------------------------------------------------------ data classes


@dataclass(frozen=True)
class TableEntry:
    """One table of one baseline version."""

    table: str
    file: str  # relative to config.baselines
    hash: str  # "sha256:<hex>" of the rows (sorted), independent of Parquet encoding
    rows: int
    definition: dict[str, Any]  # canon.definition(): keys + canonicalisation
    window: dict[str, Any]  # since, until (ISO or None), intervals
    thresholds: dict[str, Any]  # min_intervals, min_packets, both_directions
    created_in: str  # version that first wrote this content

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "table"}


@dataclass(frozen=True)
class Version:
    """A baseline version: immutable once written."""

    id: str
    parent: str | None
    created_at: str
    by: str
    action: str  # learn | accept | rollback
    reason: str
    tables: dict[str, TableEntry]

    @property
    def number(self) -> int:
        return int(self.id[1:])

    @property
    def exit_code(self) -> ExitCode:
        """A version written (rollback) or read is a success."""
        return ExitCode.OK


@dataclass
class LearnedTable:
    table: str
    rows: int  # keys in the new baseline
    candidates: int  # keys seen in the window before the thresholds
    below_threshold: int  # keys seen but not frozen (too few intervals/packets, one direction only)
    intervals: int  # intervals learned from
    since: pd.Timestamp | None
    until: pd.Timestamp | None
    hash: str
    keys_before: int | None = None  # keys of the previous baseline of this table (None: none comparable)
    forced: bool = False  # learned with force although it empties or more than halves the table


@dataclass
class LearnResult:
    version: str
    parent: str | None
    tables: dict[str, LearnedTable]

    @property
    def exit_code(self) -> ExitCode:
        """A refused learn raises (LearnRefused, exit 2); a version written is a success."""
        return ExitCode.OK


@dataclass
class KeysAdded:
    """What :func:`add_keys` wrote (``accept`` returns it as ``AcceptResult``)."""

    version: str | None  # None when every row was already in the baseline
    parent: str | None
    added: dict[str, pd.DataFrame]  # table -> key rows added
    already: dict[str, int] = field(default_factory=dict)  # table -> rows that were already in it

    @property
    def total(self) -> int:
        return sum(len(df) for df in self.added.values())

    @property
    def exit_code(self) -> ExitCode:
        """Keys added, or nothing to add: both are a success (a refusal raises)."""
        return ExitCode.OK


@dataclass
class VersionDiff:
    v1: str
    v2: str
    added: dict[str, pd.DataFrame]  # table -> key rows in v2 and not in v1
    removed: dict[str, pd.DataFrame]

    @property
    def total(self) -> int:
        return sum(len(d) for d in self.added.values()) + sum(len(d) for d in self.removed.values())

    @property
    def exit_code(self) -> ExitCode:
        """Comparing two versions succeeds whether or not they differ."""
        return ExitCode.OK


# ------------------------------------------------------------------ store


def _check_store_keys(store: Store, tc: TableConfig) -> None:
    stored = store.table_keys(tc.name)
    if stored is not None and tuple(stored) != tuple(tc.keys):
        raise BaselineError(
            f"table {tc.name!r} in the store has keys {list(stored)}, the config says {list(tc.keys)}: "
            "use another table name for the new definition"
        )


# ------------------------------------------------------------------ paths, lock, versions


def _versions_dir(config: Config) -> Path:
    return config.baselines / "versions"


def _version_ids(config: Config) -> list[str]:
    d = _versions_dir(config)
    if not d.is_dir():
        return []
    ids = [p.stem for p in d.glob("v*.json") if _VERSION_RE.match(p.stem)]
    return sorted(ids, key=lambda v: int(v[1:]))


def _normalise_id(config: Config, version: str | int) -> str:
    m = _VERSION_RE.match(str(version).strip())
    if not m:
        raise BaselineError(
            f"{version!r} is not a baseline version (like v3 or 3; see `flowdiff baseline history`)"
        )
    vid = f"v{int(m.group(1)):04d}"
    if not (_versions_dir(config) / f"{vid}.json").is_file():
        have = _version_ids(config)
        hint = f"versions: {have[0]} .. {have[-1]}" if have else "no baseline yet: run `flowdiff learn`"
        raise BaselineError(f"no baseline version {vid} in {config.baselines} ({hint})")
    return vid


def get_version(config: Config, version: str | int | None = None) -> Version:
    """A version by id (``v3``, ``3``), or the current one when ``version`` is None."""
    if version is None:
        vid = load_state(config).version
        if vid is None:
            raise BaselineError(f"no baseline in {config.baselines}: run `flowdiff learn` first")
    else:
        vid = _normalise_id(config, version)
    path = _versions_dir(config) / f"{vid}.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BaselineError(f"{path}: unreadable baseline manifest: {e}") from None
    tables = {t: TableEntry(table=t, **e) for t, e in raw["tables"].items()}
    return Version(
        id=raw["id"],
        parent=raw.get("parent"),
        created_at=raw["created_at"],
        by=raw["by"],
        action=raw["action"],
        reason=raw.get("reason", ""),
        tables=tables,
    )


def current_version(config: Config) -> str | None:
    return load_state(config).version


def _write_version(
    config: Config,
    parent: str | None,
    action: str,
    reason: str,
    by: str | None,
    tables: Mapping[str, TableEntry],
) -> Version:
    ids = _version_ids(config)
    vid = f"v{(int(ids[-1][1:]) + 1 if ids else 1):04d}"
    v = Version(
        id=vid,
        parent=parent,
        created_at=now_iso(),
        by=by or current_user(),
        action=action,
        reason=reason or "",
        tables=dict(tables),
    )
    doc = {
        "id": v.id,
        "parent": v.parent,
        "created_at": v.created_at,
        "by": v.by,
        "action": v.action,
        "reason": v.reason,
        "tables": {t: e.to_json() for t, e in v.tables.items()},
    }
    path = _versions_dir(config) / f"{vid}.json"
    if path.exists():  # pragma: no cover - the lock makes this impossible
        raise BaselineError(f"{path} already exists; another flowdiff changed the baseline concurrently")
    atomic_write_text(path, json.dumps(doc, indent=1, sort_keys=False) + "\n")
    return v


# ------------------------------------------------------------------ baseline data files


def baseline_schema(keys: Sequence[str]) -> pa.Schema:
    """Key columns, evidence, and the key fingerprint ``_h1``/``_h2`` (canon.key_hashes) that lets diff
    compare keys without decoding the baseline's strings."""
    fields = [pa.field(k, key_type(k), nullable=False) for k in keys]
    fields += [pa.field(m, t, nullable=False) for m, t in BASELINE_METRICS.items()]
    fields += [pa.field(h, pa.uint64(), nullable=False) for h in FINGERPRINT]
    return pa.schema(fields)


def _content_hash(table: pa.Table) -> str:
    """sha256 over the rows (sorted by key: fingerprints and evidence): the same content gives the same
    hash whatever the Parquet writer, so an unchanged table is stored once and shared by versions."""
    names = ",".join(f"{n}:{t}" for n, t in zip(table.schema.names, table.schema.types, strict=True))
    d = hashlib.sha256(names.encode())
    for name in (*FINGERPRINT, *BASELINE_METRICS):
        col = table[name].combine_chunks()
        if pa.types.is_timestamp(col.type):
            col = col.cast(pa.int64())
        d.update(np.ascontiguousarray(col.to_numpy(zero_copy_only=False)).tobytes())
    return "sha256:" + d.hexdigest()


def _to_baseline_table(df: pd.DataFrame, keys: Sequence[str]) -> pa.Table:
    names = [n for n in baseline_schema(keys).names if n not in FINGERPRINT]
    return baseline_table(pa.Table.from_pandas(df[names], preserve_index=False), keys)


def baseline_table(table: pa.Table, keys: Sequence[str]) -> pa.Table:
    """Rows (key columns + first_seen, last_seen, intervals, packets, bytes) in the stored form: cast,
    sorted by key, with the key fingerprint appended."""
    schema = baseline_schema(keys)
    names = [n for n in schema.names if n not in FINGERPRINT]
    t = table.select(names).cast(pa.schema([schema.field(n) for n in names]))
    if t.num_rows:
        t = t.sort_by([(k, "ascending") for k in keys])
    h1, h2 = key_hashes(t, keys)
    t = t.append_column(FINGERPRINT[0], pa.array(h1)).append_column(FINGERPRINT[1], pa.array(h2))
    return t.cast(schema)


def _store_table(
    config: Config,
    tc: TableConfig,
    table: pa.Table,
    *,
    window: dict[str, Any],
    thresholds: dict[str, Any],
    created_in: str,
) -> TableEntry:
    digest = _content_hash(table)
    rel = f"data/{tc.name}/{digest.split(':', 1)[1][:32]}.parquet"
    entry = TableEntry(
        table=tc.name,
        file=rel,
        hash=digest,
        rows=table.num_rows,
        definition=definition(tc),
        window=window,
        thresholds=thresholds,
        created_in=created_in,
    )
    path = config.baselines / rel
    if not path.exists():
        meta = {_META_KEY: json.dumps({"table": tc.name, **entry.to_json()}).encode()}
        atomic_write_parquet(path, table.replace_schema_metadata(meta))
    return entry


def _entry_path(config: Config, entry: TableEntry) -> Path:
    return config.baselines / entry.file


def check_definition(entry: TableEntry, tc: TableConfig, version: str = "") -> None:
    """Refuse a baseline frozen for another table definition: its keys would never match."""
    want = definition(tc)
    have = dict(entry.definition)
    if have != want:
        diffs = [
            f"{k}: baseline {have.get(k)!r}, config {want.get(k)!r}"
            for k in want
            if have.get(k) != want.get(k)
        ]
        raise BaselineError(
            f"the baseline {version or ''} of table {tc.name!r} was learned for another table definition "
            f"({'; '.join(diffs)}): run `flowdiff learn --table {tc.name}` to freeze a new one"
        )


def baseline_entry(
    config: Config, tc: TableConfig, version: Version | None = None
) -> tuple[Version, TableEntry]:
    """The current (or given) version's entry for a table, checked against the config's definition."""
    v = version or get_version(config)
    entry = v.tables.get(tc.name)
    if entry is None:
        raise BaselineError(
            f"baseline {v.id} has no table {tc.name!r}: run `flowdiff learn --table {tc.name}` first"
        )
    check_definition(entry, tc, v.id)
    return v, entry


def read_baseline(config: Config, entry: TableEntry, columns: Sequence[str] | None = None) -> pa.Table:
    path = _entry_path(config, entry)
    try:
        return pq.read_table(path, columns=list(columns) if columns else None)
    except (OSError, pa.ArrowInvalid) as e:
        raise BaselineError(f"{path}: unreadable baseline file: {e}") from None


def iter_fingerprints(
    config: Config, entry: TableEntry, batch_rows: int = 1 << 21
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The baseline's key fingerprints in batches (computed from the keys for files without them)."""
    keys = list(entry.definition["keys"])
    path = _entry_path(config, entry)
    try:
        names = pq.read_schema(path).names
    except (OSError, pa.ArrowInvalid) as e:
        raise BaselineError(f"{path}: unreadable baseline file: {e}") from None
    stored = all(h in names for h in FINGERPRINT)
    for t in iter_baseline(config, entry, list(FINGERPRINT) if stored else keys, batch_rows):
        if stored:
            yield t[FINGERPRINT[0]].to_numpy(), t[FINGERPRINT[1]].to_numpy()
        else:
            yield key_hashes(t, keys)


def iter_baseline(
    config: Config,
    entry: TableEntry,
    columns: Sequence[str] | None = None,
    batch_rows: int = 1 << 21,
    *,
    dictionary: bool = False,
) -> Iterator[pa.Table]:
    """The baseline rows in batches: diff never holds a large baseline in memory at once. With
    ``dictionary`` string columns come back dictionary-encoded where the file stores them so (few distinct
    servers, labels, ports as text): hashing then touches each distinct string once per batch."""
    path = _entry_path(config, entry)
    try:
        strings = [k for k in entry.definition["keys"] if pa.types.is_string(key_type(k))]
        pf = pq.ParquetFile(path, read_dictionary=strings if dictionary else None)
        for batch in pf.iter_batches(batch_size=batch_rows, columns=list(columns) if columns else None):
            yield pa.Table.from_batches([batch])
    except (OSError, pa.ArrowInvalid) as e:
        raise BaselineError(f"{path}: unreadable baseline file: {e}") from None


# ------------------------------------------------------------------ learn


def _window(
    starts: list[pd.Timestamp], interval: int, since: Any, until: Any, last: Any
) -> tuple[list[pd.Timestamp], pd.Timestamp | None, pd.Timestamp | None]:
    """Intervals inside the learning window. ``last`` counts back from the end of the newest stored
    interval (not from the wall clock), so that replayed or old captures learn the same way."""
    lo = utc_timestamp(since)
    hi = utc_timestamp(until)
    if last is not None:
        secs = _last_seconds(last)
        end = hi if hi is not None else (starts[-1] + pd.Timedelta(seconds=interval) if starts else None)
        if end is not None:
            lo = end - pd.Timedelta(seconds=secs) if lo is None else max(lo, end - pd.Timedelta(seconds=secs))
    chosen = [s for s in starts if (lo is None or s >= lo) and (hi is None or s < hi)]
    return chosen, lo, hi


def _last_seconds(last: Any) -> int:
    """``last`` (the ``--last`` flag) in seconds; the error names the option, as the user typed it."""
    try:
        secs = parse_duration(last, "last")
    except ConfigError:
        raise BaselineError(f"--last: {last!r} is not a duration (like 90s, 30m, 12h, 7d or 2w)") from None
    if secs <= 0:
        raise BaselineError(f"--last: {last!r} must be a positive duration like 7d")
    return secs


def _learn_table(
    store: Store,
    tc: TableConfig,
    starts: list[pd.Timestamp],
    nmap: NetworkMap,
    min_intervals: int,
    min_packets: int,
    both: bool,
    scheduler: str | None = None,
) -> tuple[pd.DataFrame, int]:
    """Per-key evidence over the window: (rows meeting the thresholds, candidates before thresholds).

    Everything stays in Arrow: each chunk is one dataset scan, canonicalised on its distinct values and
    reduced by Arrow's hash aggregation; the partial evidence of the chunks is reduced the same way."""
    keys = list(tc.keys)
    parts: list[pa.Table] = []
    size = _CHUNK_INTERVALS if store.sensor is None else _CHUNK_ONE_SENSOR
    chunks = _chunks(starts, size)
    pool = None
    if scheduler:  # the same chunks on a Dask cluster, combined below in the same order
        from flowdiff.distributed import map_chunks

        partials: Iterable[pa.Table] = map_chunks(scheduler, _learn_chunk, chunks, store, tc, nmap)
    else:  # two chunks at a time: Arrow reads one while it groups the other, both without the GIL
        pool = ThreadPoolExecutor(_LEARN_THREADS, thread_name_prefix="flowdiff-learn")
        partials = pool.map(functools.partial(_learn_chunk, store, tc, nmap), chunks)
    try:
        for part in partials:
            parts.append(part)
            if len(parts) > 8:
                parts = [_add_evidence(pa.concat_tables(parts), keys)]
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    if not parts:
        return _evidence_schema(keys).empty_table(), 0
    allrows = _add_evidence(pa.concat_tables(parts), keys) if len(parts) > 1 else parts[0]
    candidates = allrows.num_rows
    ok = (_np(allrows["intervals"]) >= min_intervals) & (_np(allrows["packets"]) >= min_packets)
    if both:
        ok &= _both_directions(allrows.select(keys).to_pandas(), keys)
    return allrows.filter(pa.array(ok)), candidates


def _chunks(starts: list[pd.Timestamp], size: int) -> list[list[pd.Timestamp]]:
    """Runs of at most ``size`` intervals that never straddle a UTC midnight: a day's intervals are
    one day file (collect and compaction write them so), and a scan that takes the end of one day and
    the start of the next opens, decodes and filters two files for one chunk's worth of rows."""
    out: list[list[pd.Timestamp]] = []
    day = None
    for s in starts:
        d = s.value // _DAY_NS
        if not out or d != day or len(out[-1]) >= size:
            out.append([])
            day = d
        out[-1].append(s)
    return out


_DAY_NS = 86_400_000_000_000


def _np(col: pa.ChunkedArray) -> np.ndarray:
    return col.to_numpy()


def _evidence_schema(keys: Sequence[str]) -> pa.Schema:
    fields = [pa.field(k, key_type(k)) for k in keys]
    fields += [pa.field(m, BASELINE_METRICS[m]) for m in ("packets", "bytes", "first_seen", "last_seen")]
    return pa.schema([*fields, pa.field("intervals", BASELINE_METRICS["intervals"])])


_EVIDENCE = {"packets": "sum", "bytes": "sum", "first_seen": "min", "last_seen": "max"}


def _reduce(table: pa.Table, keys: Sequence[str], aggs: Mapping[str, str]) -> pa.Table:
    """One row per distinct key; column ``c`` becomes ``aggs[c]`` of its values (Arrow hash aggregation;
    null keys are a group of their own, as pandas' ``dropna=False``). Multi-threaded: the row order it
    gives varies, but sums, minima, maxima and distinct counts do not, and baseline_table sorts by key."""
    out = table.group_by(list(keys), use_threads=True).aggregate([(c, f) for c, f in aggs.items()])
    names = {f"{c}_{f}": c for c, f in aggs.items()}
    out = out.rename_columns([names.get(n, n) for n in out.column_names])
    return out.select([*keys, *aggs])


def _add_evidence(table: pa.Table, keys: Sequence[str]) -> pa.Table:
    """Evidence of several chunks added up (the chunks' intervals never overlap)."""
    return _reduce(table, keys, {**_EVIDENCE, "intervals": "sum"}).cast(_evidence_schema(keys))


def _learn_chunk(store: Store, tc: TableConfig, nmap: NetworkMap, starts: list[pd.Timestamp]) -> pa.Table:
    """Per-key evidence of one chunk of intervals (runs locally, or on a Dask worker): the number of
    distinct intervals a canonical key was seen in (by any sensor), and its summed metrics."""
    keys = list(tc.keys)
    rows = store.interval_table(tc.name, keys, starts).unify_dictionaries()  # Arrow groups one dictionary
    chunk = canonical_keys(rows, tc, nmap)
    # The store holds one row per sensor, interval and key (its writes and reads merge them): unless
    # canonical forms merged keys or several sensors share the intervals, a key's rows are its intervals,
    # and Arrow's "count" is 3-4x cheaper than the hash set per group of "count_distinct".
    one_row_each = _COUNT_ROWS and chunk is rows and (store.sensor is not None or _sensors(rows) <= 1)
    intervals = "count" if one_row_each else "count_distinct"
    return (
        _reduce(chunk, keys, {**_EVIDENCE, INTERVAL: intervals})
        .rename_columns([*keys, *_EVIDENCE, "intervals"])
        .cast(_evidence_schema(keys))
    )


_COUNT_ROWS = True  # tests turn it off to check that both ways give the same baseline


def _sensors(rows: pa.Table) -> int:
    if PARTITION not in rows.column_names or not rows.num_rows:
        return 1
    return int(pc.count_distinct(rows[PARTITION]).as_py())


_SWAP = {
    "src": "dst",
    "dst": "src",
    "sport": "dport",
    "dport": "sport",
    "src_mac": "dst_mac",
    "dst_mac": "src_mac",
    "src_label": "dst_label",
    "dst_label": "src_label",
}


def _both_directions(df: pd.DataFrame, keys: list[str]) -> np.ndarray:
    """True where the reverse key (src<->dst, sport<->dport, ...) was also seen. Tables without a
    direction (services: client/server rows already hold both directions) pass unchanged."""
    if not any(k in _SWAP for k in keys) or not all(_SWAP.get(k, k) in keys for k in keys):
        return np.ones(len(df), dtype=bool)
    rev = df[keys].rename(columns={k: _SWAP.get(k, k) for k in keys})[keys].drop_duplicates()
    rev["_hit"] = True
    m = df[keys].merge(rev, on=keys, how="left")
    return m["_hit"].fillna(False).to_numpy(dtype=bool)


@dataclass
class _Planned:
    """One table of a learn, computed but not written yet (the refusal rules look at all of them first)."""

    tc: TableConfig
    tokens: dict[pd.Timestamp, str]
    chosen: list[pd.Timestamp]
    table: pa.Table
    candidates: int
    thresholds: dict[str, Any]
    keys_now: int | None = None  # keys of the current baseline (None: none, or another definition)
    kept: int = 0  # of those, keys the new version keeps


def _no_data_reason(tokens: Mapping[pd.Timestamp, str], lo: Any, hi: Any, interval: int) -> str:
    """Why a table's window holds no interval, in words a user can act on."""
    if not tokens:
        return "holds no intervals yet (collect captures for it first)"
    first, last = min(tokens), max(tokens) + pd.Timedelta(seconds=interval)
    stored = f"the store holds {iso_time(first)} .. {iso_time(last)}"
    if lo is not None and hi is not None and lo >= hi:
        return f"has an empty window: since {iso_time(lo)} is not before until {iso_time(hi)} ({stored})"
    return f"has no interval in the window {iso_time(lo) or 'start'} .. {iso_time(hi) or 'end'} ({stored})"


def _kept_keys(config: Config, entry: TableEntry, table: pa.Table) -> int:
    """How many keys of the baseline ``entry`` are also in the new rows ``table`` (by fingerprint)."""
    n1 = table[FINGERPRINT[0]].to_numpy()
    n2 = table[FINGERPRINT[1]].to_numpy()
    index = pd.Index(n1)
    multi = None if index.is_unique else pd.MultiIndex.from_arrays([n1, n2])
    kept = 0
    for h1, h2 in iter_fingerprints(config, entry):
        if multi is not None:
            kept += int(pd.MultiIndex.from_arrays([h1, h2]).isin(multi).sum())
            continue
        pos = index.get_indexer(h1)
        hit = pos >= 0
        kept += int(np.count_nonzero(n2[pos[hit]] == h2[hit]))
    return kept


def _refusals(plans: Mapping[str, _Planned]) -> dict[str, tuple[int, int]]:
    """Tables whose new version would hold no key, or lose more than half of its current keys."""
    out: dict[str, tuple[int, int]] = {}
    for name, p in plans.items():
        after = p.table.num_rows
        now = p.keys_now or 0
        if after == 0 or (now and (now - p.kept) * 2 > now):
            out[name] = (now, after)
    return out


def _refusal_text(plans: Mapping[str, _Planned], changes: Mapping[str, tuple[int, int]]) -> str:
    parts = []
    for name, (now, after) in changes.items():
        p = plans[name]
        if after == 0:
            th = p.thresholds
            both = ", both directions" if th["both_directions"] else ""
            why = (
                f"none of the {p.candidates:,} keys seen in {len(p.chosen):,} intervals meets min_intervals "
                f"{th['min_intervals']}, min_packets {th['min_packets']}{both}"
            )
        else:
            why = f"{now - p.kept:,} dropped; {len(p.chosen):,} intervals learned from"
        parts.append(f"table {name}: keys now {now:,}, after {after:,} ({why})")
    return (
        "learn refused, nothing written: it would empty or more than halve a baseline; "
        + "; ".join(parts)
        + ". Check the window and the thresholds, or add --force"
    )


def learn(
    config: Config,
    *,
    tables: Sequence[str] | None = None,
    since: Any = None,
    until: Any = None,
    last: Any = None,
    by: str | None = None,
    min_intervals: int | None = None,
    min_packets: int | None = None,
    both_directions: bool | None = None,
    reason: str | None = None,
    force: bool = False,
    scheduler: str | None = None,
) -> LearnResult:
    """Freeze, per table, the keys seen in the window into a new baseline version.

    Without window arguments every stored interval is used. A key enters the baseline only with enough
    evidence: seen in at least ``min_intervals`` intervals and ``min_packets`` packets (defaults 2 and 2,
    per table in the config, overridden by the arguments), so a one-packet scan during learning is not
    "normal". Tables not named keep their previous baseline. The intervals learned from count as diffed.

    An empty baseline reports everything, a halved one hundreds of known rows: so, unless ``force``,
    learn refuses (:class:`LearnRefused`, nothing written) a window without data for a table, and a
    new version in which a table would hold no key or lose more than half of its current keys (keys of
    a baseline learned for another table definition do not count: it is unusable anyway).

    ``scheduler`` (default: the config's ``[dask] scheduler``): the address of a dask.distributed
    scheduler that reads and reduces the intervals (flowdiff.distributed); the baseline is the same.
    """
    selected = config.select_tables(list(tables) if tables else None)
    if last is not None:
        _last_seconds(last)  # a bad --last is a usage error, before any lock or read
    store = Store(config.store, config.data_sensor)
    nmap = NetworkMap(config.networks)
    scheduler = scheduler or config.scheduler
    with lock(config):
        state = load_state(config)
        parent = state.version
        base_tables: dict[str, TableEntry] = dict(get_version(config).tables) if parent else {}
        windows: dict[str, tuple[dict[pd.Timestamp, str], list[pd.Timestamp]]] = {}
        empty: dict[str, str] = {}
        for name, tc in selected.items():
            _check_store_keys(store, tc)
            tokens = store.interval_tokens(name) if store.table_keys(name) else {}
            chosen, lo, hi = _window(sorted(tokens), config.interval, since, until, last)
            if not chosen:
                empty[name] = _no_data_reason(tokens, lo, hi, config.interval)
            windows[name] = (tokens, chosen)
        if empty and not force:
            raise LearnRefused(_empty_text(empty, selected), empty=empty)
        plans = {
            name: _plan_table(
                config,
                store,
                tc,
                nmap,
                windows[name],
                base_tables.get(name),
                min_intervals=min_intervals,
                min_packets=min_packets,
                both_directions=both_directions,
                scheduler=scheduler,
            )
            for name, tc in selected.items()
        }
        changes = _refusals(plans)
        if changes and not force:
            raise LearnRefused(_refusal_text(plans, changes), changes=changes)
        next_id = _next_id(config)
        learned: dict[str, LearnedTable] = {}
        diffed: dict[str, dict[pd.Timestamp, str]] = {}
        for name, p in plans.items():
            since_t = p.chosen[0] if p.chosen else None
            until_t = p.chosen[-1] + pd.Timedelta(seconds=config.interval) if p.chosen else None
            window = {
                "since": iso_time(since_t if p.chosen else utc_timestamp(since)),
                "until": iso_time(until_t if p.chosen else utc_timestamp(until)),
                "intervals": len(p.chosen),
            }
            entry = _store_table(
                config, p.tc, p.table, window=window, thresholds=p.thresholds, created_in=next_id
            )
            base_tables[name] = entry
            learned[name] = LearnedTable(
                table=name,
                rows=p.table.num_rows,
                candidates=p.candidates,
                below_threshold=p.candidates - p.table.num_rows,
                intervals=len(p.chosen),
                since=since_t,
                until=until_t,
                hash=entry.hash,
                keys_before=p.keys_now,
                forced=name in changes or name in empty,
            )
            done = state.diffed(name)
            done.update({s: p.tokens[s] for s in p.chosen})
            diffed[name] = done
            log.info(
                "learned %s: %d keys of %d seen in %d intervals",
                name,
                p.table.num_rows,
                p.candidates,
                len(p.chosen),
            )
        v = _write_version(config, parent, "learn", reason or _learn_reason(learned), by, base_tables)
        commit_state(config, state, version=v.id, diffed=diffed)
        claim_baselines(config)
    return LearnResult(version=v.id, parent=parent, tables=learned)


def _plan_table(
    config: Config,
    store: Store,
    tc: TableConfig,
    nmap: NetworkMap,
    window: tuple[dict[pd.Timestamp, str], list[pd.Timestamp]],
    current: TableEntry | None,
    *,
    min_intervals: int | None,
    min_packets: int | None,
    both_directions: bool | None,
    scheduler: str | None = None,
) -> _Planned:
    tokens, chosen = window
    mi = min_intervals if min_intervals is not None else tc.min_intervals
    mp = min_packets if min_packets is not None else tc.min_packets
    both = both_directions if both_directions is not None else tc.both_directions
    try:
        rows, candidates = _learn_table(store, tc, chosen, nmap, mi, mp, both, scheduler)
    except StoreError as e:
        raise BaselineError(f"cannot learn table {tc.name!r}: {e}") from None
    table = baseline_table(rows, tc.keys)
    thresholds = {"min_intervals": mi, "min_packets": mp, "both_directions": both}
    plan = _Planned(tc, tokens, chosen, table, candidates, thresholds)
    if current is not None and dict(current.definition) == definition(tc):
        plan.keys_now = current.rows
        plan.kept = _kept_keys(config, current, table) if current.rows and table.num_rows else 0
    return plan


def _empty_text(empty: Mapping[str, str], selected: Mapping[str, TableConfig]) -> str:
    """One line for every table without data in the window (tables with the same reason together)."""
    by_reason: dict[str, list[str]] = {}
    for name, why in empty.items():
        by_reason.setdefault(why, []).append(name)
    parts = [
        f"table{'s' if len(names) > 1 else ''} {', '.join(names)} {_plural_verb(why, len(names))}"
        for why, names in by_reason.items()
    ]
    others = [n for n in selected if n not in empty]
    hint = (
        "; to learn the other tables only: flowdiff learn " + " ".join(f"--table {n}" for n in others)
        if others
        else ""
    )
    return (
        "learn refused, nothing written: "
        + "; ".join(parts)
        + hint
        + " (--force freezes an empty baseline instead: every row of it will be new)"
    )


def _plural_verb(why: str, n: int) -> str:
    if n > 1:
        for one, many in (("holds ", "hold "), ("has ", "have ")):
            if why.startswith(one):
                return many + why[len(one) :]
    return why


def _learn_reason(learned: Mapping[str, LearnedTable]) -> str:
    return "learn " + ", ".join(f"{t} ({lt.intervals} intervals)" for t, lt in learned.items())


def _next_id(config: Config) -> str:
    ids = _version_ids(config)
    return f"v{(int(ids[-1][1:]) + 1 if ids else 1):04d}"


# ------------------------------------------------------------------ adding keys (accept)


def add_keys(
    config: Config,
    version: Version,
    additions: Mapping[str, pd.DataFrame],
    *,
    action: str = "accept",
    reason: str | None = None,
    by: str | None = None,
) -> KeysAdded:
    """Write a new version = ``version`` plus the key rows of ``additions`` (table -> rows with the key
    columns and, when known, first/last seen, packets, bytes). Keys already in the baseline are counted in
    ``already`` and not added again; when nothing is new no version is written. The caller holds the
    baselines lock and commits the state (``flowdiff.state.commit_state(version=...)``)."""
    new_tables = dict(version.tables)
    added: dict[str, pd.DataFrame] = {}
    already: dict[str, int] = {}
    next_id = _next_id(config)
    for t, df in additions.items():
        tc = config.select_tables([t])[t]
        _, entry = baseline_entry(config, tc, version)
        keys = list(tc.keys)
        new_rows = baseline_rows_from(df, keys)
        base = _frame(read_baseline(config, entry))
        fresh = anti_join(new_rows, base[keys], keys)
        already[t] = len(new_rows) - len(fresh)
        if len(fresh):
            merged = pd.concat([base, fresh], ignore_index=True)
            new_tables[t] = _store_table(
                config,
                tc,
                _to_baseline_table(merged, keys),
                window=entry.window,
                thresholds=entry.thresholds,
                created_in=next_id,
            )
            added[t] = fresh[keys].reset_index(drop=True)
    if not added:
        return KeysAdded(version=None, parent=version.id, added={}, already=already)
    why = reason or f"{action}ed " + ", ".join(f"{t} {len(df)}" for t, df in added.items())
    v = _write_version(config, version.id, action, why, by, new_tables)
    return KeysAdded(version=v.id, parent=version.id, added=added, already=already)


def coerce_keys(df: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Key columns cast to their stored types; a value that does not fit its field is an error."""
    schema = pa.schema([pa.field(k, key_type(k)) for k in keys])
    try:
        return pa.Table.from_pandas(df[list(keys)], preserve_index=False).cast(schema).to_pandas()
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError, OverflowError) as e:
        raise BaselineError(f"bad key value: {e}") from None


def baseline_rows_from(df: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Baseline rows (key + evidence) from report or reported-state rows; missing metrics are zero."""
    out = coerce_keys(df, keys)
    now = pd.Timestamp.now(tz="UTC").floor("us")
    n = len(out)
    for col in ("first_seen", "last_seen"):
        out[col] = (
            df[col].to_numpy() if col in df.columns else pd.Series([now] * n, dtype="datetime64[us, UTC]")
        )
    out["intervals"] = np.ones(n, dtype=np.uint32)
    for col in ("packets", "bytes"):
        out[col] = df[col].to_numpy(dtype=np.uint64) if col in df.columns else np.zeros(n, dtype=np.uint64)
    return out.drop_duplicates(subset=list(keys)).reset_index(drop=True)


def anti_join(left: pd.DataFrame, right_keys: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Rows of ``left`` whose key is not in ``right_keys`` (hash join in Arrow)."""
    if not len(left) or not len(right_keys):
        return left.reset_index(drop=True)
    schema = pa.schema([pa.field(k, key_type(k)) for k in keys])
    lt = pa.Table.from_pandas(left[list(keys)], preserve_index=False).cast(schema)
    lt = lt.append_column("_i", pa.array(np.arange(len(left), dtype=np.int64)))
    rt = pa.Table.from_pandas(right_keys[list(keys)], preserve_index=False).cast(schema)
    kept = lt.join(rt, keys=list(keys), join_type="left anti", use_threads=True)["_i"].to_numpy()
    return left.iloc[np.sort(kept)].reset_index(drop=True)


# ------------------------------------------------------------------ history, show, diff, rollback


class Versions(list[Version]):
    """Baseline versions, oldest first (what :func:`history` returns: a list with an exit code)."""

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.OK


class BaselineRows(dict[str, pd.DataFrame]):
    """Table -> baseline rows (what :func:`show` returns: a dict with an exit code)."""

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.OK


def history(config: Config, *, tables: Sequence[str] | None = None) -> Versions:
    """Every version, oldest first; with ``tables`` each version lists only those of its tables."""
    out = Versions()
    for vid in _version_ids(config):
        v = get_version(config, vid)
        if tables:
            kept = {t: e for t, e in v.tables.items() if t in tables}
            v = Version(v.id, v.parent, v.created_at, v.by, v.action, v.reason, kept)
        out.append(v)
    return out


def show(
    config: Config,
    tables: str | Sequence[str] | None = None,
    *,
    version: str | int | None = None,
    where: Mapping[str, Any] | Sequence[str] | None = None,
    limit: int | None = None,
) -> BaselineRows:
    """Baseline rows per table (filters in rule syntax: exact, CIDR, range, label), by packets descending.
    ``tables``: one name or several (``--table``, repeatable); every table of the version when None."""
    v = get_version(config, version)
    names = [tables] if isinstance(tables, str) else list(dict.fromkeys(tables or v.tables))
    nmap = NetworkMap(config.networks)
    out = BaselineRows()
    for t in names:
        entry = v.tables.get(t)
        if entry is None:
            raise BaselineError(
                f"baseline {v.id} has no table {t!r} (tables: {', '.join(v.tables) or 'none'})"
            )
        df = _frame(read_baseline(config, entry))
        if where:
            tc = config.tables.get(t) or TableConfig(name=t, keys=tuple(entry.definition["keys"]))
            df = df[where_mask(df, parse_where(tc, where), nmap)]
        df = df.sort_values("packets", ascending=False, kind="stable")
        if limit:
            df = df.head(limit)
        out[t] = df.reset_index(drop=True)
    return out


def diff_versions(
    config: Config, v1: str | int, v2: str | int, tables: Sequence[str] | None = None
) -> VersionDiff:
    """Keys added and removed between two versions, per table."""
    a, b = get_version(config, v1), get_version(config, v2)
    names = list(tables) if tables else list(dict.fromkeys([*a.tables, *b.tables]))
    added: dict[str, pd.DataFrame] = {}
    removed: dict[str, pd.DataFrame] = {}
    for t in names:
        ea, eb = a.tables.get(t), b.tables.get(t)
        if ea is not None and eb is not None and ea.hash == eb.hash:
            continue
        keys = list((eb or ea).definition["keys"])  # type: ignore[union-attr]
        da = _frame(read_baseline(config, ea)) if ea else None
        db = _frame(read_baseline(config, eb)) if eb else None
        if ea and eb and ea.definition != eb.definition:
            added[t], removed[t] = db, da  # type: ignore[assignment]
            continue
        if da is None:
            added[t] = db  # type: ignore[assignment]
            continue
        if db is None:
            removed[t] = da
            continue
        plus = anti_join(db, da[keys], keys)
        minus = anti_join(da, db[keys], keys)
        if len(plus):
            added[t] = plus
        if len(minus):
            removed[t] = minus
    return VersionDiff(a.id, b.id, added, removed)


def rollback(
    config: Config, version: str | int, *, by: str | None = None, reason: str | None = None
) -> Version:
    """Make an older version current again by writing a new version with its content (history stays
    linear and auditable; nothing is deleted). Keys that disappear are reported again when next seen."""
    with lock(config):
        state = load_state(config)
        target = get_version(config, version)
        v = _write_version(
            config, state.version, "rollback", reason or f"rollback to {target.id}", by, target.tables
        )
        commit_state(config, state, version=v.id)
    return v


# ------------------------------------------------------------------ small helpers


def _frame(t: pa.Table) -> pd.DataFrame:
    """Baseline rows as a DataFrame without the internal fingerprint columns."""
    drop = [h for h in FINGERPRINT if h in t.column_names]
    return t.drop_columns(drop).to_pandas(coerce_temporal_nanoseconds=False)
