"""Frozen baselines: what "normal" is, versioned and immutable, plus the diff state.

Layout under ``config.baselines`` (see ``baselines/README.md``)::

    versions/v0001.json            one manifest per version (never rewritten): parent, who, when, why,
                                   and per table the data file, its content hash, table definition,
                                   learning window and thresholds
    data/<table>/<hash>.parquet    baseline rows (content addressed, immutable, shared between versions):
                                   key columns + first_seen, last_seen, intervals, packets, bytes
    state/<table>-*.parquet        diff state: intervals already diffed, keys already reported
    CURRENT.json                   the one mutable file, replaced atomically: current version + state files
    rules.toml                     allow/deny rules (flowdiff.rules)
    .lock                          serialises learn, accept, rollback and diff

Everything that changes the current version and the diff state together is one ``CURRENT.json`` replace,
so a crash leaves either the old or the new state, never a mixture.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import logging
import os
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from flowdiff.canon import FINGERPRINT, aggregate, canonicalise, definition, key_hashes
from flowdiff.config import Config, TableConfig, parse_duration
from flowdiff.durable import atomic_write_parquet, atomic_write_text, file_lock
from flowdiff.errors import BaselineError, StoreError
from flowdiff.netmap import NetworkMap
from flowdiff.schema import INTERVAL, METRICS, TIMESTAMP, key_type
from flowdiff.store import Store
from flowdiff.vocab import iso_time, now_iso

log = logging.getLogger(__name__)

CURRENT = "CURRENT.json"
BASELINE_METRICS: dict[str, pa.DataType] = {
    "first_seen": TIMESTAMP,
    "last_seen": TIMESTAMP,
    "intervals": pa.uint32(),
    "packets": pa.uint64(),
    "bytes": pa.uint64(),
}
REPORTED_COLUMNS: dict[str, pa.DataType] = {
    "reason": pa.string(),
    "first_reported": TIMESTAMP,  # interval in which the key was first reported
    "last_reported": TIMESTAMP,  # interval of the latest report (re-arm counts from here)
    "report_id": pa.string(),
    "first_seen": TIMESTAMP,
    "last_seen": TIMESTAMP,
    "packets": pa.uint64(),
    "bytes": pa.uint64(),
}
_META_KEY = b"flowdiff.baseline"
_VERSION_RE = re.compile(r"^v?(\d{1,9})$")
_CHUNK_INTERVALS = 48  # intervals read at once while learning: bounds memory on long windows

__all__ = [
    "Version",
    "TableEntry",
    "LearnedTable",
    "LearnResult",
    "AcceptResult",
    "VersionDiff",
    "State",
    "learn",
    "accept",
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
    "load_state",
    "commit_state",
    "open_store",
    "interval_tokens",
    "read_intervals",
    "lock",
    "deny",
    "ignore",
    "is_report_id",
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


@dataclass
class LearnResult:
    version: str
    parent: str | None
    tables: dict[str, LearnedTable]


@dataclass
class AcceptResult:
    version: str | None  # None when every row was already in the baseline
    parent: str | None
    added: dict[str, pd.DataFrame]  # table -> key rows added
    already: dict[str, int] = field(default_factory=dict)  # table -> rows that were already in it

    @property
    def total(self) -> int:
        return sum(len(df) for df in self.added.values())


@dataclass
class VersionDiff:
    v1: str
    v2: str
    added: dict[str, pd.DataFrame]  # table -> key rows in v2 and not in v1
    removed: dict[str, pd.DataFrame]

    @property
    def total(self) -> int:
        return sum(len(d) for d in self.added.values()) + sum(len(d) for d in self.removed.values())


# ------------------------------------------------------------------ store access (the one place)


def open_store(config: Config) -> Store:
    """Every sensor of the store: the baseline is the union of what all sensors saw."""
    return Store(config.store)


def interval_tokens(store: Store, table: str) -> dict[pd.Timestamp, str]:
    """Interval start -> a token that changes whenever the interval's data changes (Store.interval_tokens)."""
    return {pd.Timestamp(k): v for k, v in store.interval_tokens(table).items()}


def read_intervals(store: Store, tc: TableConfig, starts: Sequence[pd.Timestamp]) -> pd.DataFrame:
    """Rows of the given intervals only (key columns, interval_start, metrics)."""
    cols = [INTERVAL, *tc.keys, *METRICS]
    if not starts:
        return _empty_counts(tc.keys)
    lo, hi = min(starts), max(starts) + pd.Timedelta(microseconds=1)
    df = store.read(tc.name, since=lo, until=hi, columns=cols + ["sensor"])
    sensors = df.pop("sensor").nunique() if "sensor" in df.columns else 1
    mask = df[INTERVAL].isin(pd.DatetimeIndex(list(starts))).to_numpy()
    if not mask.all():
        df = df[mask].reset_index(drop=True)
    df.attrs["sensors"] = sensors
    return df


def _empty_counts(keys: Sequence[str]) -> pd.DataFrame:
    from flowdiff.schema import empty_frame

    return empty_frame(keys)


def _check_store_keys(store: Store, tc: TableConfig) -> None:
    stored = store.table_keys(tc.name)
    if stored is not None and tuple(stored) != tuple(tc.keys):
        raise BaselineError(
            f"table {tc.name!r} in the store has keys {list(stored)}, the config says {list(tc.keys)}: "
            "use another table name for the new definition"
        )


# ------------------------------------------------------------------ paths, lock, versions


def lock(config: Config, wait: float = 60.0) -> contextlib.AbstractContextManager[None]:
    """Serialise every change of the baselines directory (learn, accept, rollback, diff)."""
    return file_lock(config.baselines / ".lock", wait=wait, what="baselines")


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
        id=raw["id"], parent=raw.get("parent"), created_at=raw["created_at"], by=raw["by"],
        action=raw["action"], reason=raw.get("reason", ""), tables=tables,
    )  # fmt: skip


def current_version(config: Config) -> str | None:
    return load_state(config).version


def _write_version(config: Config, parent: str | None, action: str, reason: str, by: str | None,
                   tables: Mapping[str, TableEntry]) -> Version:  # fmt: skip
    ids = _version_ids(config)
    vid = f"v{(int(ids[-1][1:]) + 1 if ids else 1):04d}"
    v = Version(
        id=vid, parent=parent, created_at=_now_iso(), by=by or _user(), action=action, reason=reason or "",
        tables=dict(tables),
    )  # fmt: skip
    doc = {
        "id": v.id, "parent": v.parent, "created_at": v.created_at, "by": v.by, "action": v.action,
        "reason": v.reason, "tables": {t: e.to_json() for t, e in v.tables.items()},
    }  # fmt: skip
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


def _store_table(config: Config, tc: TableConfig, table: pa.Table, *, window: dict[str, Any],
                 thresholds: dict[str, Any], created_in: str) -> TableEntry:  # fmt: skip
    digest = _content_hash(table)
    rel = f"data/{tc.name}/{digest.split(':', 1)[1][:32]}.parquet"
    entry = TableEntry(
        table=tc.name, file=rel, hash=digest, rows=table.num_rows, definition=definition(tc), window=window,
        thresholds=thresholds, created_in=created_in,
    )  # fmt: skip
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


def iter_baseline(config: Config, entry: TableEntry, columns: Sequence[str] | None = None,
                  batch_rows: int = 1 << 21, *, dictionary: bool = False) -> Iterator[pa.Table]:  # fmt: skip
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


# ------------------------------------------------------------------ diff state (CURRENT.json)


@dataclass
class State:
    """The current version and, per table, the diff state files (relative to config.baselines)."""

    root: Path
    version: str | None = None
    files: dict[str, dict[str, str]] = field(default_factory=dict)  # table -> {"diffed": f, "reported": f}
    last_report: str | None = None

    def _read(self, table: str, what: str) -> pa.Table | None:
        rel = self.files.get(table, {}).get(what)
        if not rel:
            return None
        try:
            return pq.read_table(self.root / rel)
        except (OSError, pa.ArrowInvalid) as e:
            raise BaselineError(f"{self.root / rel}: unreadable diff state: {e}") from None

    def diffed(self, table: str) -> dict[pd.Timestamp, str]:
        """Interval start -> data token at the time it was diffed (or learned from)."""
        t = self._read(table, "diffed")
        if t is None:
            return {}
        df = t.to_pandas(coerce_temporal_nanoseconds=False)
        return dict(zip(df[INTERVAL], df["token"], strict=True))

    def reported(self, table: str, keys: Sequence[str]) -> pd.DataFrame:
        t = self._read(table, "reported")
        schema = reported_schema(keys)
        if t is None or list(t.schema.names) != list(schema.names):
            return schema.empty_table().to_pandas(coerce_temporal_nanoseconds=False)
        return t.to_pandas(coerce_temporal_nanoseconds=False)


def reported_schema(keys: Sequence[str]) -> pa.Schema:
    fields = [pa.field(k, key_type(k), nullable=False) for k in keys]
    fields += [pa.field(c, t, nullable=False) for c, t in REPORTED_COLUMNS.items()]
    return pa.schema(fields)


def load_state(config: Config) -> State:
    path = config.baselines / CURRENT
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return State(config.baselines)
    except (OSError, ValueError) as e:
        raise BaselineError(f"{path}: unreadable: {e}") from None
    return State(config.baselines, raw.get("version"), raw.get("files", {}), raw.get("last_report"))


def commit_state(
    config: Config,
    state: State,
    *,
    version: str | None = None,
    diffed: Mapping[str, Mapping[pd.Timestamp, str]] | None = None,
    reported: Mapping[str, tuple[Sequence[str], pd.DataFrame]] | None = None,
    last_report: str | None = None,
) -> State:
    """Write the changed state tables as new files, then replace CURRENT.json in one atomic step.
    Call with the lock held. Unreferenced state files are removed afterwards."""
    files = {t: dict(v) for t, v in state.files.items()}
    tag = uuid.uuid4().hex[:12]
    for table, tokens in (diffed or {}).items():
        items = sorted(tokens.items())
        t = pa.table(
            {
                INTERVAL: pa.array([k for k, _ in items], type=TIMESTAMP),
                "token": pa.array([v for _, v in items], pa.string()),
            }
        )
        rel = f"state/{table}-diffed-{tag}.parquet"
        atomic_write_parquet(config.baselines / rel, t)
        files.setdefault(table, {})["diffed"] = rel
    for table, (keys, df) in (reported or {}).items():
        schema = reported_schema(keys)
        t = pa.Table.from_pandas(df[list(schema.names)], preserve_index=False).cast(schema)
        rel = f"state/{table}-reported-{tag}.parquet"
        atomic_write_parquet(config.baselines / rel, t)
        files.setdefault(table, {})["reported"] = rel
    new = State(
        config.baselines,
        version if version is not None else state.version,
        files,
        last_report if last_report is not None else state.last_report,
    )
    doc = {
        "version": new.version,
        "files": new.files,
        "last_report": new.last_report,
        "updated_at": _now_iso(),
    }
    atomic_write_text(config.baselines / CURRENT, json.dumps(doc, indent=1) + "\n")
    _gc_state(config, new)
    return new


def _gc_state(config: Config, state: State) -> None:
    keep = {f for v in state.files.values() for f in v.values()}
    d = config.baselines / "state"
    if not d.is_dir():
        return
    for p in d.glob("*.parquet"):
        if f"state/{p.name}" not in keep:
            with contextlib.suppress(OSError):
                p.unlink()


# ------------------------------------------------------------------ learn


def _window(
    starts: list[pd.Timestamp], interval: int, since: Any, until: Any, last: Any
) -> tuple[list[pd.Timestamp], pd.Timestamp | None, pd.Timestamp | None]:
    """Intervals inside the learning window. ``last`` counts back from the end of the newest stored
    interval (not from the wall clock), so that replayed or old captures learn the same way."""
    lo = _ts(since)
    hi = _ts(until)
    if last is not None:
        secs = parse_duration(last, "last")
        if secs <= 0:
            raise BaselineError("--last must be a positive duration like 7d")
        end = hi if hi is not None else (starts[-1] + pd.Timedelta(seconds=interval) if starts else None)
        if end is not None:
            lo = end - pd.Timedelta(seconds=secs) if lo is None else max(lo, end - pd.Timedelta(seconds=secs))
    chosen = [s for s in starts if (lo is None or s >= lo) and (hi is None or s < hi)]
    return chosen, lo, hi


def _learn_table(store: Store, tc: TableConfig, starts: list[pd.Timestamp], nmap: NetworkMap,
                 min_intervals: int, min_packets: int, both: bool) -> tuple[pd.DataFrame, int]:  # fmt: skip
    """Per-key evidence over the window: (rows meeting the thresholds, candidates before thresholds)."""
    keys = list(tc.keys)
    parts: list[pd.DataFrame] = []
    for i in range(0, len(starts), _CHUNK_INTERVALS):
        chunk = read_intervals(store, tc, starts[i : i + _CHUNK_INTERVALS])
        canon = canonicalise(chunk, tc, nmap, force_aggregate=chunk.attrs.get("sensors", 1) > 1)
        canon["intervals"] = np.ones(len(canon), dtype=np.uint32)
        parts.append(aggregate(canon.drop(columns=[INTERVAL]), keys))
        if len(parts) > 8:
            parts = [aggregate(pd.concat(parts, ignore_index=True), keys)]
    if not parts:
        empty = _empty_counts(keys).drop(columns=[INTERVAL])
        empty["intervals"] = np.zeros(0, dtype=np.uint32)
        return empty, 0
    allrows = aggregate(pd.concat(parts, ignore_index=True), keys) if len(parts) > 1 else parts[0]
    candidates = len(allrows)
    ok = (allrows["intervals"].to_numpy() >= min_intervals) & (allrows["packets"].to_numpy() >= min_packets)
    if both:
        ok &= _both_directions(allrows, keys)
    return allrows[ok].reset_index(drop=True), candidates


_SWAP = {"src": "dst", "dst": "src", "sport": "dport", "dport": "sport", "src_mac": "dst_mac", "dst_mac": "src_mac",
         "src_label": "dst_label", "dst_label": "src_label"}  # fmt: skip


def _both_directions(df: pd.DataFrame, keys: list[str]) -> np.ndarray:
    """True where the reverse key (src<->dst, sport<->dport, ...) was also seen. Tables without a
    direction (services: client/server rows already hold both directions) pass unchanged."""
    if not any(k in _SWAP for k in keys) or not all(_SWAP.get(k, k) in keys for k in keys):
        return np.ones(len(df), dtype=bool)
    rev = df[keys].rename(columns={k: _SWAP.get(k, k) for k in keys})[keys].drop_duplicates()
    rev["_hit"] = True
    m = df[keys].merge(rev, on=keys, how="left")
    return m["_hit"].fillna(False).to_numpy(dtype=bool)


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
) -> LearnResult:
    """Freeze, per table, the keys seen in the window into a new baseline version.

    Without window arguments every stored interval is used. A key enters the baseline only with enough
    evidence: seen in at least ``min_intervals`` intervals and ``min_packets`` packets (defaults 2 and 2,
    per table in the config, overridden by the arguments), so a one-packet scan during learning is not
    "normal". Tables not named keep their previous baseline. The intervals learned from count as diffed.
    """
    selected = config.select_tables(tables)
    store = open_store(config)
    nmap = NetworkMap(config.networks)
    with lock(config):
        state = load_state(config)
        parent = state.version
        base_tables: dict[str, TableEntry] = dict(get_version(config).tables) if parent else {}
        next_id = _next_id(config)
        learned: dict[str, LearnedTable] = {}
        diffed: dict[str, dict[pd.Timestamp, str]] = {}
        for name, tc in selected.items():
            _check_store_keys(store, tc)
            tokens = interval_tokens(store, name) if store.table_keys(name) else {}
            chosen, lo, hi = _window(sorted(tokens), config.interval, since, until, last)
            mi = min_intervals if min_intervals is not None else tc.min_intervals
            mp = min_packets if min_packets is not None else tc.min_packets
            both = both_directions if both_directions is not None else tc.both_directions
            try:
                rows, candidates = _learn_table(store, tc, chosen, nmap, mi, mp, both)
            except StoreError as e:
                raise BaselineError(f"cannot learn table {name!r}: {e}") from None
            table = _to_baseline_table(rows, tc.keys)
            window = {
                "since": _iso(chosen[0]) if chosen else _iso(lo),
                "until": _iso(chosen[-1] + pd.Timedelta(seconds=config.interval)) if chosen else _iso(hi),
                "intervals": len(chosen),
            }
            thresholds = {"min_intervals": mi, "min_packets": mp, "both_directions": both}
            entry = _store_table(config, tc, table, window=window, thresholds=thresholds, created_in=next_id)
            base_tables[name] = entry
            learned[name] = LearnedTable(
                table=name, rows=table.num_rows, candidates=candidates, below_threshold=candidates - table.num_rows,
                intervals=len(chosen), since=chosen[0] if chosen else None,
                until=chosen[-1] + pd.Timedelta(seconds=config.interval) if chosen else None, hash=entry.hash,
            )  # fmt: skip
            done = state.diffed(name)
            done.update({s: tokens[s] for s in chosen})
            diffed[name] = done
            log.info(
                "learned %s: %d keys of %d seen in %d intervals",
                name,
                table.num_rows,
                candidates,
                len(chosen),
            )
        v = _write_version(config, parent, "learn", reason or _learn_reason(learned), by, base_tables)
        commit_state(config, state, version=v.id, diffed=diffed)
    return LearnResult(version=v.id, parent=parent, tables=learned)


def _learn_reason(learned: Mapping[str, LearnedTable]) -> str:
    return "learn " + ", ".join(f"{t} ({lt.intervals} intervals)" for t, lt in learned.items())


def _next_id(config: Config) -> str:
    ids = _version_ids(config)
    return f"v{(int(ids[-1][1:]) + 1 if ids else 1):04d}"


# ------------------------------------------------------------------ accept


def coerce_where(tc: TableConfig, where: Mapping[str, Any] | Sequence[str] | None) -> dict[str, Any]:
    """``field=value`` strings or a mapping, checked against the table's key fields."""
    if where is None:
        return {}
    items: list[tuple[str, Any]]
    if isinstance(where, Mapping):
        items = list(where.items())
    else:
        items = []
        for w in where:
            if "=" not in w:
                raise BaselineError(f"--where {w!r}: expected field=value")
            k, v = w.split("=", 1)
            items.append((k.strip(), v.strip()))
    out: dict[str, Any] = {}
    for k, v in items:
        if k not in tc.keys:
            raise BaselineError(f"table {tc.name!r} has no key field {k!r} (keys: {', '.join(tc.keys)})")
        out[k] = v
    return out


def _where_mask(df: pd.DataFrame, where: Mapping[str, Any], nmap: NetworkMap | None) -> np.ndarray:
    from flowdiff.rules import field_mask

    mask = np.ones(len(df), dtype=bool)
    for k, v in where.items():
        try:
            mask &= field_mask(df[k], k, v, nmap)
        except ValueError as e:
            raise BaselineError(f"--where {k}={v}: {e}") from None
    return mask


def _exact_key(tc: TableConfig, where: Mapping[str, Any]) -> pd.DataFrame | None:
    """A single key row when ``where`` names every key field with one exact value."""
    from flowdiff.rules import _compile

    if set(where) != set(tc.keys):
        return None
    row: dict[str, Any] = {}
    for k in tc.keys:
        kind, value = _compile(k, where[k]) if not isinstance(where[k], list) else ("list", None)
        if kind not in ("eq", "label"):
            return None
        row[k] = [value]
    return pd.DataFrame(row)


def accept(
    config: Config,
    report_id: str | None = None,
    rows: Sequence[int] | None = None,
    table: str | None = None,
    where: Mapping[str, Any] | Sequence[str] | None = None,
    reason: str | None = None,
    by: str | None = None,
) -> AcceptResult:
    """Add rows to a new baseline version (who, when, why recorded).

    Either ``report_id`` (with ``rows``: the row numbers printed in the report; all rows when omitted), or
    ``table`` with ``where`` filters (rule syntax: exact, CIDR, range, label): the reported, not yet
    accepted keys that match; when ``where`` names every key field exactly, that key is added even if it
    was never reported. Accepted keys leave the reported state, so if a later version drops them again
    they are reported again."""
    nmap = NetworkMap(config.networks)
    picks: dict[str, pd.DataFrame] = {}
    with lock(config):
        state = load_state(config)
        version = get_version(config)
        if report_id is not None:
            from flowdiff.diff import load_report

            rep = load_report(config, report_id)
            for t, df in rep.rows.items():
                if rows:
                    df = df[df["row"].isin([int(r) for r in rows])]
                if table is not None and t != table:
                    continue
                if len(df):
                    picks[t] = df
            if rows:
                found = {int(r) for df in picks.values() for r in df["row"]}
                missing = [r for r in rows if int(r) not in found]
                if missing:
                    raise BaselineError(f"report {report_id} has no row {missing[0]}")
        elif table is not None:
            tc = config.select_tables([table])[table]
            w = coerce_where(tc, where)
            rep_df = state.reported(table, tc.keys)
            rep_df = rep_df[_where_mask(rep_df, w, nmap)]
            if len(rep_df):
                picks[table] = rep_df
            else:
                exact = _exact_key(tc, w)
                if exact is None:
                    raise BaselineError(
                        f"no reported row of {table!r} matches {_where_text(w)}; to add a key that was never "
                        f"reported, give every key field exactly ({', '.join(tc.keys)})"
                    )
                picks[table] = _coerce_keys(exact, tc.keys)
        else:
            raise BaselineError("accept needs a report id or a table with --where filters")
        if not picks:
            raise BaselineError("nothing to accept: no rows matched")

        new_tables = dict(version.tables)
        added: dict[str, pd.DataFrame] = {}
        already: dict[str, int] = {}
        reported_updates: dict[str, tuple[Sequence[str], pd.DataFrame]] = {}
        next_id = _next_id(config)
        for t, df in picks.items():
            tc = config.select_tables([t])[t]
            _, entry = baseline_entry(config, tc, version)
            keys = list(tc.keys)
            new_rows = _baseline_rows_from(df, keys)
            base = _frame(read_baseline(config, entry))
            fresh = _anti_join(new_rows, base[keys], keys)
            already[t] = len(new_rows) - len(fresh)
            if len(fresh):
                merged = pd.concat([base, fresh], ignore_index=True)
                table_pa = _to_baseline_table(merged, keys)
                new_tables[t] = _store_table(
                    config, tc, table_pa, window=entry.window, thresholds=entry.thresholds, created_in=next_id
                )
                added[t] = fresh[keys].reset_index(drop=True)
            rep_state = state.reported(t, keys)
            if len(rep_state):
                keep = _anti_join(rep_state, new_rows[keys], keys)
                if len(keep) != len(rep_state):
                    reported_updates[t] = (keys, keep)
        if not added:
            if reported_updates:
                commit_state(config, state, reported=reported_updates)
            return AcceptResult(version=None, parent=version.id, added={}, already=already)
        why = reason or "accepted " + ", ".join(f"{t} {len(df)}" for t, df in added.items())
        if report_id:
            why += f" (report {report_id})"
        v = _write_version(config, version.id, "accept", why, by, new_tables)
        commit_state(config, state, version=v.id, reported=reported_updates)
    return AcceptResult(version=v.id, parent=version.id, added=added, already=already)


def _where_text(w: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in w.items()) or "(no filter)"


def _coerce_keys(df: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    schema = pa.schema([pa.field(k, key_type(k)) for k in keys])
    try:
        return pa.Table.from_pandas(df[list(keys)], preserve_index=False).cast(schema).to_pandas()
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError, OverflowError) as e:
        raise BaselineError(f"bad key value: {e}") from None


def _baseline_rows_from(df: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Baseline rows (key + evidence) from report or reported-state rows; missing metrics are zero."""
    out = _coerce_keys(df, keys)
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


def _anti_join(left: pd.DataFrame, right_keys: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
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


def history(config: Config) -> list[Version]:
    """Every version, oldest first."""
    return [get_version(config, v) for v in _version_ids(config)]


def show(
    config: Config,
    table: str | None = None,
    *,
    version: str | int | None = None,
    where: Mapping[str, Any] | Sequence[str] | None = None,
    limit: int | None = None,
) -> dict[str, pd.DataFrame]:
    """Baseline rows per table (filters in rule syntax: exact, CIDR, range, label), by packets descending."""
    v = get_version(config, version)
    names = [table] if table else list(v.tables)
    nmap = NetworkMap(config.networks)
    out: dict[str, pd.DataFrame] = {}
    for t in names:
        entry = v.tables.get(t)
        if entry is None:
            raise BaselineError(
                f"baseline {v.id} has no table {t!r} (tables: {', '.join(v.tables) or 'none'})"
            )
        df = _frame(read_baseline(config, entry))
        if where:
            tc = config.tables.get(t) or TableConfig(name=t, keys=tuple(entry.definition["keys"]))
            df = df[_where_mask(df, coerce_where(tc, where), nmap)]
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
        plus = _anti_join(db, da[keys], keys)
        minus = _anti_join(da, db[keys], keys)
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


def _ts(value: Any) -> pd.Timestamp | None:
    if value is None:
        return None
    t = pd.Timestamp(value)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


_iso = iso_time
_now_iso = now_iso


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return os.environ.get("USER", "unknown")


# ------------------------------------------------------------------ deny / ignore (rules from rows)

REPORT_ID_RE = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")


def is_report_id(text: str) -> bool:
    """Report ids look like ``20261130T015500Z-ab12cd``; anything else on the command line is a table."""
    return bool(REPORT_ID_RE.match(text))


def _report_rows(
    config: Config, report_id: str, rows: Sequence[int] | None
) -> list[tuple[str, dict[str, Any]]]:
    from flowdiff.diff import load_report

    rep = load_report(config, report_id)
    out: list[tuple[str, dict[str, Any]]] = []
    want = {int(r) for r in rows} if rows else None
    for t, df in rep.rows.items():
        for rec in df.to_dict(orient="records"):
            if want is None or int(rec["row"]) in want:
                out.append((t, {k: _plain(rec[k]) for k in rep.keys[t]}))
    if want:
        missing = sorted(want - {int(r) for _, df in rep.rows.items() for r in df["row"]})
        if missing:
            raise BaselineError(f"report {report_id} has no row {missing[0]}")
    if not out:
        raise BaselineError(f"report {report_id} has no rows")
    return out


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def deny(
    config: Config,
    report_id: str | None = None,
    rows: Sequence[int] | None = None,
    table: str | None = None,
    where: Mapping[str, Any] | Sequence[str] | None = None,
    *,
    name: str | None = None,
    reason: str | None = None,
    by: str | None = None,
) -> list[Any]:
    """Add deny rules: one per report row (every key field exact), or one from ``table`` + ``where``."""
    from flowdiff.rules import add_rule

    with lock(config):
        if report_id is not None:
            picked = _report_rows(config, report_id, rows)
            return [
                add_rule(
                    config,
                    "deny",
                    t,
                    m,
                    name=(f"{name}-{i}" if name and len(picked) > 1 else name),
                    comment=reason or f"from report {report_id}",
                    by=by,
                )  # fmt: skip
                for i, (t, m) in enumerate(picked, 1)
            ]
        if table is None:
            raise BaselineError("deny needs a report id or a table with --where filters")
        tc = config.select_tables([table])[table]
        w = coerce_where(tc, where)
        if not w:
            raise BaselineError(
                "deny TABLE needs at least one --where field=value (a rule for every row is a mistake)"
            )
        return [add_rule(config, "deny", table, w, name=name, comment=reason, by=by)]


def ignore(
    config: Config,
    report_id: str | None = None,
    rows: Sequence[int] | None = None,
    table: str | None = None,
    where: Mapping[str, Any] | Sequence[str] | None = None,
    *,
    any_fields: Sequence[str] | None = None,
    name: str | None = None,
    reason: str | None = None,
    by: str | None = None,
) -> list[Any]:
    """Add allow rules with a wildcard. From report rows: the row's key with ``any_fields`` set to ``*``
    (default: the client side, ``client``/``src``/``src_mac``, so "any client of this service" is normal).
    From ``table`` + ``where``: the fields given, every other field ``*``."""
    from flowdiff.rules import ANY, add_rule

    with lock(config):
        if report_id is not None:
            out = []
            picked = _report_rows(config, report_id, rows)
            for i, (t, m) in enumerate(picked, 1):
                keys = list(m)
                wild = list(any_fields) if any_fields else [next((k for k in ("client", "src", "src_mac") if k in keys),
                                                                 keys[0])]  # fmt: skip
                bad = [f for f in wild if f not in keys]
                if bad:
                    raise BaselineError(f"table {t!r} has no key field {bad[0]!r} (keys: {', '.join(keys)})")
                match = {k: (ANY if k in wild else v) for k, v in m.items()}
                nm = f"{name}-{i}" if name and len(picked) > 1 else name
                out.append(add_rule(config, "allow", t, match, name=nm, comment=reason or f"from report {report_id}",
                                    by=by))  # fmt: skip
            return out
        if table is None:
            raise BaselineError("ignore needs a report id or a table with --where filters")
        tc = config.select_tables([table])[table]
        w = coerce_where(tc, where)
        if not w:
            raise BaselineError(
                "ignore TABLE needs at least one --where field=value (use --where FIELD='*' for all)"
            )
        return [add_rule(config, "allow", table, w, name=name, comment=reason, by=by)]
