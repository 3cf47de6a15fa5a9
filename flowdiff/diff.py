"""diff: new rows of the stored intervals against the current baseline and the rules.

For every table: the intervals not diffed yet (or changed since: a late capture can add to an interval)
are canonicalised exactly like ``learn`` did, anti-joined with the baseline (a hash index of the
interval's 128-bit key fingerprints probed with the fingerprints the baseline stores, streamed in
batches: memory is bounded by one interval chunk plus one baseline batch, not by the baseline size),
then the rules decide: ``deny`` always reports (reason ``deny-rule NAME``), ``allow`` makes a key normal,
everything else not in the baseline is grey (reason ``new``).

A key is reported once. The reported-keys state remembers it; it comes back only after it was accepted
and later removed from the baseline, or after ``rearm`` seconds (counted in capture time: between the
interval it was last reported in and the interval it is seen in now). Re-running diff finds nothing,
because the diffed intervals are remembered too. Both live in the diff state (``flowdiff.state``); the
rows found are archived as a report (``flowdiff.archive``, which also defines ``DiffResult``).
"""

from __future__ import annotations

import contextlib
import logging
import shlex
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from flowdiff._jit import njit
from flowdiff.archive import (
    ROW_COLUMNS,
    ROW_NUMBER,
    DiffResult,
    empty_rows,
    finish_pending_report,
    list_reports,
    load_report,
    new_report_id,
    publish_report,
    report_dir,
    row_records,
    typed_rows,
    write_report_tmp,
)
from flowdiff.baseline import TableEntry, baseline_entry, get_version, iter_baseline, iter_fingerprints
from flowdiff.canon import canonicalise, column_hashes, combine_hashes, key_hashes, string_buffers
from flowdiff.config import Config, TableConfig
from flowdiff.errors import BaselineError
from flowdiff.incidents import candidates, group_incidents, known_entities, station_reasons
from flowdiff.netmap import NetworkMap, reduce_ipv6_text
from flowdiff.rules import RuleSet, apply_rules, load_rules
from flowdiff.schema import INTERVAL, STATIONS, STATIONS_KEYS, key_type
from flowdiff.state import commit_state, load_state, lock
from flowdiff.store import Store
from flowdiff.vocab import format_value, utc_timestamp

log = logging.getLogger(__name__)

# DiffResult and the report archive live in flowdiff.archive; their names stay importable from here.
__all__ = [
    "ROW_COLUMNS",
    "DiffResult",
    "diff",
    "find_new",
    "neighbours",
    "commands",
    "empty_rows",
    "list_reports",
    "load_report",
    "report_dir",
    "row_records",
]

SENSOR = "_sensor"  # the store's sensor of each pending row, while diff needs it (read_intervals)
SENSORS = "sensors"  # the row field: sorted distinct sensors that saw the key, "gw1, gw2"
_CHUNK_INTERVALS = 12  # intervals per anti-join pass: bounds memory when many intervals wait
_BATCH_ROWS = 1 << 20  # baseline rows per streamed batch


# ------------------------------------------------------------------ frames
# ------------------------------------------------------------------ the anti-join


def _key_table(df: pd.DataFrame, keys: Sequence[str]) -> pa.Table:
    schema = pa.schema([pa.field(k, key_type(k)) for k in keys])
    return pa.Table.from_pandas(df[list(keys)], preserve_index=False).cast(schema)


def _in_baseline(
    uk: pd.DataFrame, keys: Sequence[str], fingerprints: Iterable[tuple[np.ndarray, np.ndarray]]
) -> np.ndarray:
    """True for each distinct key of ``uk`` present in the baseline.

    Keys are compared by their 128-bit fingerprint (``canon.key_hashes``; the baseline stores it, so
    no baseline string is decoded): a hash index of the interval's fingerprints is probed with each
    streamed baseline batch. Memory is one interval plus one batch, whatever the size of the baseline.
    Two different keys with equal 128-bit fingerprints (odds around 1e-25 for 1M rows against 10M keys)
    would hide a new row; a collision of one half only can at worst report a known key."""
    found = np.zeros(len(uk), dtype=bool)
    if not len(uk):
        return found
    p1, p2 = key_hashes(_key_table(uk, keys), keys)
    index = pd.Index(p1)
    unique = index.is_unique
    order = s1 = None
    if not unique:  # astronomically rare: fall back to a sorted search
        order = np.argsort(p1, kind="stable")
        s1 = p1[order]
    for b1, b2 in fingerprints:
        if not len(b1):
            continue
        if unique:
            pos = index.get_indexer(b1)
            m = pos >= 0
            pm = pos[m]
            found[pm[p2[pm] == b2[m]]] = True
        else:
            assert order is not None and s1 is not None
            pos = np.minimum(np.searchsorted(s1, b1), len(s1) - 1)
            hit = (s1[pos] == b1) & (p2[order[pos]] == b2)
            found[order[pos[hit]]] = True
    return found


def find_new(
    df: pd.DataFrame,
    tc: TableConfig,
    baseline_fingerprints: Iterable[tuple[np.ndarray, np.ndarray]],
    rules: RuleSet,
    nmap: NetworkMap | None,
) -> pd.DataFrame:
    """Candidate rows of canonical count rows ``df`` (interval_start, keys, metrics): keys neither in the
    baseline nor allowed (reason ``new``) plus deny-rule hits (reason ``deny-rule NAME``). One row per
    key and reason, aggregated over the intervals of ``df``; ``last_interval`` is the latest interval seen.
    ``baseline_fingerprints`` yields ``(h1, h2)`` arrays (``baseline.iter_fingerprints``). Pure function (no
    I/O besides iterating), so tests call it directly.

    With a ``_sensor`` column (rows of each sensor kept apart) every row found gets ``sensors``: the
    sensors that saw its key, sorted and comma-joined."""
    keys = list(tc.keys)
    cols = [*keys, "interval_start", "first_seen", "last_seen", "packets", "bytes", "reason", "last_interval"]
    by_sensor = SENSOR in df.columns
    if by_sensor:
        cols.append(SENSORS)
    if not len(df):
        return pd.DataFrame({c: pd.Series(dtype=object) for c in cols}).iloc[0:0]
    if df[INTERVAL].nunique() == 1 and (not by_sensor or df[SENSOR].nunique() <= 1):
        # canonical rows of one interval: every key is already unique (the usual cron case)
        gid = np.arange(len(df))
        uk = df[keys].reset_index(drop=True)
    else:
        group = df.groupby(keys, sort=False, observed=True, dropna=False)
        gid = group.ngroup().to_numpy()
        uk = df[keys].iloc[_first_index(gid, group.ngroups)].reset_index(drop=True)
    present = _in_baseline(uk, keys, baseline_fingerprints)
    allowed, deny = apply_rules(uk, tc.name, keys, rules, nmap)
    reason = np.where(deny != "", "deny-rule " + deny.astype(str), np.where(~present & ~allowed, "new", ""))
    row_reason = reason[gid]
    hit = row_reason != ""
    if not hit.any():
        return pd.DataFrame({c: pd.Series(dtype=object) for c in cols}).iloc[0:0]
    extra = [SENSOR] if by_sensor else []
    sub = df.loc[hit, [INTERVAL, *keys, "first_seen", "last_seen", "packets", "bytes", *extra]].copy()
    sub["reason"] = row_reason[hit]
    group = sub.groupby([*keys, "reason"], sort=False, observed=True, dropna=False)
    out = group.agg(
        interval_start=(INTERVAL, "min"),
        first_seen=("first_seen", "min"),
        last_seen=("last_seen", "max"),
        packets=("packets", "sum"),
        bytes=("bytes", "sum"),
        last_interval=(INTERVAL, "max"),
    ).reset_index()
    if by_sensor:  # groupby keeps the order of first appearance: ngroup numbers the rows of ``out``
        names = sub[SENSOR].astype(object).to_numpy()
        out[SENSORS] = sensor_sets(group.ngroup().to_numpy(), len(out), names)
    return out[cols]


def sensor_sets(gid: np.ndarray, n: int, names: np.ndarray) -> np.ndarray:
    """For each group ``0..n-1``: the distinct sensor names of its rows, sorted, joined with ", ".

    ``names`` may already be such joined sets (rows merged over chunks). Each distinct set becomes a
    bit mask and the groups OR them together, so the work per row is vectorised whatever the count."""
    codes, uniq = pd.factorize(pd.Series(names, dtype=object).fillna(""), sort=False)
    parts = [sorted({a for a in str(u).split(", ") if a}) for u in uniq]
    atoms = sorted({a for p in parts for a in p})
    if len(atoms) > 62:  # too many for one int64 mask: distinct (group, name) pairs, joined per group
        pairs = pd.DataFrame({"g": gid, "s": [parts[c] for c in codes]}).explode("s").dropna()
        pairs = pairs.drop_duplicates().sort_values(["g", "s"])
        joined = pairs.groupby("g")["s"].agg(", ".join)
        return joined.reindex(range(n), fill_value="").to_numpy(dtype=object)
    bit = {a: i for i, a in enumerate(atoms)}
    umask = np.array([sum(1 << bit[a] for a in p) for p in parts], dtype=np.int64)
    mask = np.zeros(n, dtype=np.int64)
    np.bitwise_or.at(mask, gid, umask[codes])
    um, inv = np.unique(mask, return_inverse=True)
    text = np.array(
        [", ".join(a for i, a in enumerate(atoms) if (int(m) >> i) & 1) for m in um], dtype=object
    )
    return text[inv.ravel()]


def _first_index(gid: np.ndarray, n: int) -> np.ndarray:
    first = np.full(n, len(gid), dtype=np.int64)
    np.minimum.at(first, gid, np.arange(len(gid), dtype=np.int64))
    return first


# ------------------------------------------------------------------ neighbours


_CLIENT_SIDE = ("client", "src", "src_mac")
_SERVER_SIDE = ("server", "dst", "dst_mac")
_SERVICE = ("proto", "service_port", "dport", "ethertype", "icmp_type")
_ADDR = ("client", "src", "server", "dst")


@dataclass(frozen=True)
class _Strategy:
    label: str
    join: tuple[str, ...]  # columns to join on ("_net" = prefix of ``net_of``)
    net_of: str | None = None


def _strategies(keys: Sequence[str]) -> list[_Strategy]:
    """Nearest accepted neighbours to look for, most specific first."""
    out: list[_Strategy] = []
    client = next((k for k in _CLIENT_SIDE if k in keys), None)
    server = next((k for k in _SERVER_SIDE if k in keys), None)
    if client and len(keys) > 1:
        rest = tuple(k for k in keys if k != client)
        what = "server and port" if client == "client" else " ".join(rest)
        out.append(_Strategy(f"same {what}, other {client}", rest))
    addr = next((k for k in _ADDR if k in keys), None)
    if addr:
        out.append(_Strategy(f"same network ({addr} /24 or /64)", ("_net",), addr))
    service = tuple(k for k in _SERVICE if k in keys)
    if server and service:
        out.append(_Strategy("same service on another host", service))
        out.append(_Strategy("same host, another service", (server,)))
    return out


@njit(cache=True)
def _net4_hash(offsets: np.ndarray, data: np.ndarray, h: np.ndarray, valid: np.ndarray) -> None:
    # IPv4 text "a.b.c.d": hash of "a.b.c" (its /24); anything else is left invalid
    for i in range(len(h)):
        lo, hi = offsets[i], offsets[i + 1]
        dots = 0
        last = -1
        ok = hi > lo
        for j in range(lo, hi):
            c = data[j]
            if c == 46:
                dots += 1
                last = j
            elif c < 48 or c > 57:
                ok = False
                break
        if not ok or dots != 3:
            continue
        a = np.uint64(0xCBF29CE484222325)
        for j in range(lo, last):
            a = (a ^ np.uint64(data[j])) * np.uint64(0x100000001B3)
        h[i] = a ^ np.uint64(4)
        valid[i] = True


def _net_hash(values: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Hash of the /24 (IPv4) or /64 (IPv6) of address text, and whether the value is an address at all
    (labels after ``collapse`` have no network: they never count as "same network")."""
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if pa.types.is_dictionary(arr.type):
        dh, dv = _net_hash(arr.dictionary)
        idx = arr.indices.to_numpy(zero_copy_only=False)
        return dh[idx], dv[idx]
    n = len(arr)
    h = np.zeros(n, dtype=np.uint64)
    valid = np.zeros(n, dtype=bool)
    offsets, data = string_buffers(arr)
    _net4_hash(offsets, data, h, valid)
    is6 = np.asarray(
        pc.fill_null(pc.match_substring(arr, ":"), False).to_numpy(zero_copy_only=False), dtype=bool
    )
    if is6.any():
        enc = pc.filter(arr, pa.array(is6)).dictionary_encode()
        uniq = np.asarray(enc.dictionary.to_pylist(), dtype=object)
        red = pa.array(reduce_ipv6_text(uniq, 64).tolist(), pa.string())
        uh, _ = key_hashes(pa.table({"n": red}), ["n"])
        h[is6] = uh[enc.indices.to_numpy(zero_copy_only=False)]
        valid[is6] = True
    return h, valid


def _strategy_hash(t: pa.Table, colh: dict, s: _Strategy) -> tuple[np.ndarray, np.ndarray]:
    if s.net_of is not None:
        return _net_hash(t[s.net_of])
    h, _ = combine_hashes(colh, s.join, t.num_rows)
    return h, np.ones(t.num_rows, dtype=bool)


def _best_rows(h: np.ndarray, packets: np.ndarray) -> np.ndarray:
    """Positions of the row with the most packets per distinct ``h`` (first one on ties)."""
    s = pd.Series(packets.astype(np.int64, copy=False))
    return s.groupby(h, sort=False).idxmax().to_numpy()


def neighbours(
    rows: pd.DataFrame,
    keys: Sequence[str],
    batches: Callable[[], Iterable[pa.Table]],
    *,
    exclude_self: bool = True,
) -> np.ndarray:
    """Text of the nearest accepted neighbour of each row ("" when none).

    One baseline pass (``batches()`` gives a fresh iterator) per strategy, most specific first, and only
    for the rows still without a neighbour: a new client of a known service usually needs one pass.
    Join values are compared by hash; each batch is reduced to its best candidate per join value right
    away, so a pass holds at most one row per distinct join value whatever the size of the baseline."""
    out = np.full(len(rows), "", dtype=object)
    keys = list(keys)
    strategies = _strategies(keys)
    if not len(rows) or not strategies:
        return out
    rt = _key_table(rows, keys)
    rcol = column_hashes(rt, keys)
    self_index = pd.Index(combine_hashes(rcol, keys, len(rows))[0])
    plain = pa.schema([*[pa.field(k, key_type(k)) for k in keys], pa.field("packets", pa.uint64())])
    for s in strategies:
        rh, rv = _strategy_hash(rt, rcol, s)
        rv = rv & (out == "")
        if not rv.any():
            continue
        probe = pd.Index(np.unique(rh[rv]))
        cols = list(keys) if exclude_self else ([] if s.net_of else list(s.join))
        found: list[pa.Table] = []
        for batch in batches():
            if not batch.num_rows:
                continue
            colh = column_hashes(batch, cols)
            jh, valid = _strategy_hash(batch, colh, s)
            if exclude_self:  # a deny row can be in the baseline itself: it is nobody's neighbour
                valid &= self_index.get_indexer(combine_hashes(colh, keys, batch.num_rows)[0]) < 0
            idx = np.flatnonzero(valid & (probe.get_indexer(jh) >= 0))
            if not len(idx):
                continue
            best = idx[_best_rows(jh[idx], batch["packets"].to_numpy()[idx])]
            part = batch.select([*keys, "packets"]).take(pa.array(best)).cast(plain)
            found.append(part.append_column("_h", pa.array(jh[best])))
        if not found:
            continue
        cand = pa.concat_tables(found)
        best = cand.take(pa.array(_best_rows(cand["_h"].to_numpy(), cand["packets"].to_numpy()))).to_pandas()
        pos = pd.Index(best["_h"].to_numpy()).get_indexer(rh)
        todo = np.flatnonzero(rv & (pos >= 0))
        vals = best[keys].to_numpy(dtype=object)[pos[todo]]
        out[todo] = [
            f"{s.label}: " + " ".join(f"{k}={format_value(k, v)}" for k, v in zip(keys, r, strict=True))
            for r in vals
        ]
    return out


# ------------------------------------------------------------------ commands


def commands(
    rows: pd.DataFrame, table: str, keys: Sequence[str], config: Config
) -> tuple[list[str], list[str]]:
    """The exact accept and deny command for each row (every key field given, values as the report
    prints them, ``proto=tcp``, ``ethertype=0x0800``; shell-quoted)."""
    cfg = config.config_arg
    acc, den = [], []
    for vals in rows[list(keys)].itertuples(index=False, name=None):
        where = " ".join(
            f"--where {shlex.quote(f'{k}={format_value(k, v)}')}" for k, v in zip(keys, vals, strict=True)
        )
        acc.append(f"flowdiff accept {shlex.quote(table)} {where}{cfg}")
        den.append(f"flowdiff deny {shlex.quote(table)} {where}{cfg}")
    return acc, den


def no_baseline_line(table: str, config: Config) -> str:
    """What diff says about a table that has no baseline yet (once per diff, and in the health alert)."""
    learn = f"flowdiff learn --table {shlex.quote(table)}{config.config_arg}"
    return f"table {table} has no baseline yet: {learn}"


# ------------------------------------------------------------------ diff


def _pending(tokens: dict[pd.Timestamp, str], done: dict[pd.Timestamp, str], since: Any, until: Any) -> list:
    lo, hi = utc_timestamp(since), utc_timestamp(until)
    return [
        s
        for s, tok in tokens.items()
        if done.get(s) != tok and (lo is None or s >= lo) and (hi is None or s < hi)
    ]


def _suppress_reported(
    cand: pd.DataFrame, reported: pd.DataFrame, keys: Sequence[str], rearm: int
) -> pd.DataFrame:
    """Drop candidates already reported (same key and reason), unless ``rearm`` seconds of capture time
    passed since they were last reported."""
    if not len(cand) or not len(reported):
        return cand
    on = [*keys, "reason"]
    r = reported[[*on, "last_reported"]]
    left = cand.copy()
    for k in keys:
        left[k] = left[k].astype(reported[k].dtype)
    m = left.merge(r, on=on, how="left")
    seen = m["last_reported"].notna().to_numpy(dtype=bool, copy=True)
    if rearm > 0:
        due = (m["last_interval"] - m["last_reported"]) >= pd.Timedelta(seconds=rearm)
        seen &= ~due.fillna(False).to_numpy(dtype=bool)
    return cand[~seen].reset_index(drop=True)


def _update_reported(
    reported: pd.DataFrame, new: pd.DataFrame, keys: Sequence[str], report_id: str
) -> pd.DataFrame:
    on = [*keys, "reason"]
    add = new[[*on, "first_seen", "last_seen", "packets", "bytes"]].copy()
    add["first_reported"] = new["interval_start"].to_numpy()
    add["last_reported"] = new["last_interval"].to_numpy()
    add["report_id"] = report_id
    if len(reported):
        old = reported.copy()
        for k in keys:
            add[k] = add[k].astype(old[k].dtype)
        firsts = old[[*on, "first_reported"]]
        add = add.drop(columns="first_reported").merge(firsts, on=on, how="left")
        add["first_reported"] = add["first_reported"].fillna(add["last_reported"])
        keep = old.merge(add[on].assign(_x=1), on=on, how="left")
        old = old[keep["_x"].isna().to_numpy()]
        add = pd.concat([old, add[old.columns]], ignore_index=True)
    return add


def diff(
    config: Config,
    *,
    tables: Sequence[str] | None = None,
    since: Any = None,
    until: Any = None,
    dry_run: bool = False,
    record: bool = True,
    now: datetime | None = None,
    scheduler: str | None = None,
) -> DiffResult:
    """Compare the stored intervals not yet diffed with the current baseline and the rules.

    The new rows are archived as a report (``reports/<id>/rows.parquet``, ``rows.json``, ``report.json``)
    and the diff state is updated, all or nothing; with ``dry_run`` (or ``record=False``) nothing is
    written and the same rows come back next time.

    A table of the config that the current baseline does not hold yet (added to the config after the
    last learn) is skipped with one line in ``result.skipped`` while the others are diffed: a new table
    must never blind the old ones. A baseline learned for another definition of a table stays an error.

    ``scheduler`` (default: the config's ``[dask] scheduler``): run the reads and the anti-join of the
    pending intervals on that dask.distributed cluster (flowdiff.distributed); the rows are the same."""
    record = record and not dry_run
    scheduler = scheduler or config.scheduler
    selected = config.select_tables(list(tables) if tables else None)
    ctx = lock(config) if record else contextlib.nullcontext()
    with ctx:
        state = load_state(config)
        finish_pending_report(config, state.last_report)
        version = get_version(config)
        skipped = {name: no_baseline_line(name, config) for name in selected if name not in version.tables}
        for line in skipped.values():
            log.info("%s", line)
        selected = {name: tc for name, tc in selected.items() if name not in skipped}
        entries = {name: baseline_entry(config, tc, version)[1] for name, tc in selected.items()}
        rules = load_rules(config)
        nmap = NetworkMap(config.networks)
        store = Store(config.store, config.data_sensor)
        found: dict[str, pd.DataFrame] = {}
        diffed: dict[str, dict[pd.Timestamp, str]] = {}
        reported_new: dict[str, tuple[Sequence[str], pd.DataFrame]] = {}
        spans: list[pd.Timestamp] = []
        for name, tc in selected.items():
            tokens = store.interval_tokens(name) if store.table_keys(name) else {}
            done = state.diffed(name)
            pending = _pending(tokens, done, since, until)
            spans += pending
            cand = _diff_table(config, tc, entries[name], pending, rules, nmap, store, scheduler)
            cand = _name_sensors(cand, config)
            if name == STATIONS and tc.keys == STATIONS_KEYS:  # arpwatch's words, before they are remembered
                cols = list(STATIONS_KEYS)
                cand = station_reasons(cand, iter_baseline(config, entries[name], cols, _BATCH_ROWS))
            reported = state.reported(name, tc.keys)
            cand = _suppress_reported(cand, reported, tc.keys, config.rearm)
            found[name] = cand
            done.update({s: tokens[s] for s in pending})
            diffed[name] = done
        rows = _finish_rows(config, selected, entries, found)
        total = sum(len(df) for df in rows.values())
        result = _result(config, rows, selected, version.id, spans, skipped)
        if total and record:
            result.report_id = new_report_id(now, state.last_report)
        if total:
            add_incidents(config, result, version)
        if not record:
            return result
        if result.report_id:
            for name, tc in selected.items():
                if len(found[name]):
                    prior = state.reported(name, tc.keys)
                    updated = _update_reported(prior, found[name], tc.keys, result.report_id)
                    reported_new[name] = (tc.keys, updated)
            write_report_tmp(config, result)
        commit_state(config, state, diffed=diffed, reported=reported_new, last_report=result.report_id)
        if result.report_id:
            publish_report(config, result.report_id)
        return result


def _result(
    config: Config,
    rows: dict[str, pd.DataFrame],
    selected: dict[str, TableConfig],
    version: str,
    spans: list[pd.Timestamp],
    skipped: dict[str, str],
) -> DiffResult:
    return DiffResult(
        report_id=None,
        rows=rows,
        keys={t: tc.keys for t, tc in selected.items()},
        baseline_versions={t: version for t in selected},
        since=min(spans) if spans else None,
        until=max(spans) + pd.Timedelta(seconds=config.interval) if spans else None,
        intervals=len(set(spans)),
        table_intervals=len(spans),
        sensor=config.sensor_name,
        skipped=dict(skipped),
    )


def _name_sensors(cand: pd.DataFrame, config: Config) -> pd.DataFrame:
    """Every candidate row names its sensor(s); rows of a store written before sensor partitions
    existed belong to this config's sensor."""
    if SENSORS not in cand.columns:
        cand = cand.assign(**{SENSORS: pd.Series([""] * len(cand), dtype=object, index=cand.index)})
    if len(cand):
        missing = (cand[SENSORS].fillna("") == "").to_numpy()
        if missing.any():
            cand = cand.copy()
            cand.loc[missing, SENSORS] = config.sensor
    return cand


def _diff_table(
    config: Config,
    tc: TableConfig,
    entry: TableEntry,
    pending: list[pd.Timestamp],
    rules: RuleSet,
    nmap: NetworkMap,
    store: Any,
    scheduler: str | None = None,
) -> pd.DataFrame:
    parts = []
    chunks = [pending[i : i + _CHUNK_INTERVALS] for i in range(0, len(pending), _CHUNK_INTERVALS)]
    if scheduler and chunks:  # the same chunks on a Dask cluster; the fingerprints sent to each worker once
        from flowdiff.distributed import map_chunks

        fps = list(iter_fingerprints(config, entry, _BATCH_ROWS))
        parts = list(map_chunks(scheduler, _diff_chunk, chunks, store, tc, rules, nmap, broadcast=fps))
    else:
        for chunk in chunks:
            fingerprints = iter_fingerprints(config, entry, _BATCH_ROWS)
            parts.append(_diff_chunk(store, tc, rules, nmap, chunk, fingerprints))
    parts = [p for p in parts if len(p)]
    if not parts:
        return find_new(pd.DataFrame(), tc, [], rules, nmap)
    if len(parts) == 1:
        return parts[0]
    allp = pd.concat(parts, ignore_index=True)
    group = allp.groupby([*tc.keys, "reason"], sort=False, observed=True, dropna=False)
    out = group.agg(
        interval_start=("interval_start", "min"),
        first_seen=("first_seen", "min"),
        last_seen=("last_seen", "max"),
        packets=("packets", "sum"),
        bytes=("bytes", "sum"),
        last_interval=("last_interval", "max"),
    ).reset_index()
    if SENSORS in allp.columns:
        out[SENSORS] = sensor_sets(group.ngroup().to_numpy(), len(out), allp[SENSORS].to_numpy(dtype=object))
    return out


def _diff_chunk(
    store: Any,
    tc: TableConfig,
    rules: RuleSet,
    nmap: NetworkMap,
    starts: list[pd.Timestamp],
    shared: Iterable[tuple[np.ndarray, np.ndarray]] = (),
) -> pd.DataFrame:
    """Candidate rows of one chunk of intervals (runs locally, or on a Dask worker with the baseline's
    fingerprints in ``shared``)."""
    raw = store.read_intervals(tc.name, tc.keys, starts, sensor_column=SENSOR)
    canon = canonicalise(raw, tc, nmap, group=(INTERVAL, SENSOR))  # each sensor's rows kept apart
    return find_new(canon, tc, shared, rules, nmap)


def _finish_rows(
    config: Config,
    selected: dict[str, TableConfig],
    entries: dict[str, TableEntry],
    found: dict[str, pd.DataFrame],
) -> dict[str, pd.DataFrame]:
    """Sort, number, add neighbour and commands; every table gets a full-schema frame."""
    out: dict[str, pd.DataFrame] = {}
    row_no = 1
    for name, tc in selected.items():
        keys = list(tc.keys)
        cand = found[name]
        if not len(cand):
            out[name] = empty_rows(keys)
            continue
        cand = cand.sort_values(["bytes", *keys], ascending=[False, *[True] * len(keys)], kind="stable")
        cand = cand.reset_index(drop=True)
        entry = entries[name]

        def batches(entry: TableEntry = entry, keys: list[str] = keys) -> Iterable[pa.Table]:
            return iter_baseline(config, entry, [*keys, "packets"], _BATCH_ROWS, dictionary=True)

        # only deny-rule rows can be in the baseline themselves
        cand["neighbour"] = neighbours(
            cand, keys, batches, exclude_self=bool(cand["reason"].str.startswith("deny-rule").any())
        )
        cand["accept_cmd"], cand["deny_cmd"] = commands(cand, name, keys, config)
        cand[ROW_NUMBER] = np.arange(row_no, row_no + len(cand), dtype=np.int64)
        row_no += len(cand)
        out[name] = typed_rows(cand, keys)
    return out


def add_incidents(config: Config, result: DiffResult, version: Any) -> None:
    """Group the result's rows into incidents (``flowdiff.incidents``): what every baseline table of
    ``version`` knows decides which addresses, MACs and services are new; each row gets its ``incident``
    and ``incident_title``, the result its ``incidents`` (with their accept/deny commands)."""
    wanted = candidates(result.rows, result.keys, config.networks.values())
    sources = []
    for name, tc in config.tables.items():
        if name not in version.tables:
            continue
        try:
            entry = baseline_entry(config, tc, version)[1]
        except BaselineError:
            continue  # another definition of the table: what it knows is not comparable

        def batches(cols: list[str], entry: TableEntry = entry) -> Iterable[pa.Table]:
            return iter_baseline(config, entry, cols, _BATCH_ROWS, dictionary=True)

        sources.append((tc.keys, batches))
    known = known_entities(wanted, sources)
    incidents = group_incidents(
        result.rows,
        result.keys,
        known,
        networks=config.networks,
        report_id=result.report_id,
        config_arg=config.config_arg,
    )
    number: dict[tuple[str, int], int] = {}
    for inc in incidents:
        number.update({r: inc.number for r in inc.rows})
    titles = {inc.number: inc.title for inc in incidents}
    for table, df in result.rows.items():
        nums = np.array([number.get((table, int(r)), 0) for r in df[ROW_NUMBER]], dtype=np.int64)
        df["incident"] = nums
        df["incident_title"] = pd.array([titles.get(int(n), "") for n in nums], dtype=object)
    result.incidents = incidents
