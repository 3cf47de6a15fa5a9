"""Drill-down: the packets behind one row of a count table, for Wireshark or as one line each.

Triage needs evidence: a report row says "20 packets, 1.2 kB"; this module finds exactly those packets
again in the captures they were counted from.

Which captures. Every interval file of the store records which captures fed it (the ``sources`` of
``flowdiff.store``), and the ledger says where each capture was and what it looked like (path, size,
mtime, content hash, and the id its parts carry in the interval files). So the captures are known
exactly, not guessed from file names or times; a ledger capture that fed the window but is gone or
changed since it was collected is *named* (a triage that silently skips a capture would show less than
the row counted). Ledger lines written before they recorded the id are recognised by recomputing it
from the file, visited in modification-time order from the window's start.

How packets are matched. Exactly as they were counted: the compiled decoder gives per-packet columns,
the key fields are computed per packet with the aggregator's own rules (which frames a table counts,
IP fields as 0 on non-IP frames, ``client_is_src`` for the client/server roles, with the TCP SYNs of the
whole capture as context) and compared in the table's canonical form (``canon.canon_values`` on the
distinct values only, then gathered). Nothing runs per packet in Python except for the packets that
matched: dpkt decodes those for the one-line summaries.

Limits: a report remembers the span of the intervals it diffed, not each one; a row is searched in
``[first_seen, last_seen]`` within that span. Captures collected after the report was made are not
searched (they may have added to an interval since); they are listed.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from flowdiff.config import Config, TableConfig
from flowdiff.errors import BadValueError, ConfigError, FlowdiffError, ReportError, StoreError
from flowdiff.exitcodes import ExitCode
from flowdiff.schema import INTERVAL, DecodeStatus, is_ip_table, parse_net_key
from flowdiff.store import LedgerEntry, Store
from flowdiff.vocab import ethertype_text, iso_time

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "Packet",
    "MissingCapture",
    "PacketsResult",
    "find_packets",
    "write_pcap",
    "describe",
    "parse_where",
]

_NS = 1_000_000_000
_INT64_MAX = np.iinfo(np.int64).max
_INT64_MIN = np.iinfo(np.int64).min
_ROLE_KEYS = ("client", "server", "service_port", "client_label", "server_label")
_IP_INT_FIELDS = ("proto", "sport", "dport", "icmp_type", "icmp_code", "tcp_flags", "ip_version")


# ------------------------------------------------------------------ results


@dataclass(frozen=True)
class Packet:
    """One matched frame: what a pcap record needs, plus the fast path's fields (for the summary line
    when dpkt cannot walk the frame's link layer)."""

    ts_ns: int
    linktype: int
    data: bytes  # the captured bytes (may be shorter than ``wirelen``: header-only captures)
    wirelen: int
    capture: str
    fields: tuple[tuple[str, int], ...] = ()

    @property
    def field_map(self) -> dict[str, int]:
        return dict(self.fields)


@dataclass(frozen=True)
class MissingCapture:
    """A capture the ledger says fed the window that cannot be searched now."""

    path: str
    reason: str  # "no longer on disk", "changed since it was collected (...)", ...
    collected_at: str = ""

    def __str__(self) -> str:
        when = f" (collected {self.collected_at})" if self.collected_at else ""
        return f"{self.path}: {self.reason}{when}; its packets cannot be shown"


@dataclass
class PacketsResult:
    """What a drill-down found. ``exit_code`` is ERROR when captures fed the window but none of them
    could be searched (``error`` says which), OK otherwise (missing captures are in ``missing``)."""

    table: str
    key: dict[str, list[Any]]  # field -> accepted values
    packets: list[Packet]
    searched: list[str]  # captures read
    missing: list[MissingCapture] = field(default_factory=list)
    unaccounted: int = 0  # captures that fed the window with no ledger entry left to name them
    late: list[str] = field(default_factory=list)  # collected after the report: not searched
    report_id: str | None = None
    row: int | None = None
    expected_packets: int | None = None  # the row's counts (report mode)
    expected_bytes: int | None = None
    show_macs: bool = False  # the table is keyed by MACs: lines show them for IP packets too
    since: pd.Timestamp | None = None  # the time window searched (UTC, None = open)
    until: pd.Timestamp | None = None

    @property
    def matched(self) -> int:
        return len(self.packets)

    @property
    def bytes(self) -> int:
        return sum(p.wirelen for p in self.packets)

    @property
    def linktypes(self) -> list[int]:
        return sorted({p.linktype for p in self.packets})

    @property
    def error(self) -> str | None:
        if self.searched or not (self.missing or self.unaccounted):
            return None
        n = len(self.missing) + self.unaccounted
        names = ", ".join(f"{m.path} ({m.reason})" for m in self.missing)
        what = (
            f"none of the {n} captures that fed {self._what()} can be read any more"
            if n != 1
            else f"the capture that fed {self._what()} can no longer be read"
        )
        return what + (f": {names}" if names else "")

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.ERROR if self.error else ExitCode.OK

    def _what(self) -> str:
        if self.report_id is not None:
            return f"report {self.report_id} row {self.row}"
        return f"table {self.table} in that window"

    def key_text(self) -> str:
        return " ".join(f"{k}={'|'.join(_value_text(k, v) for v in vals)}" for k, vals in self.key.items())

    def warnings(self) -> list[str]:
        """One line per capture that could not be searched, and one if the counts disagree."""
        out = [str(m) for m in self.missing]
        if self.unaccounted:
            out.append(
                f"{self.unaccounted} more capture{'s' if self.unaccounted != 1 else ''} fed "
                f"{self._what()} but {'are' if self.unaccounted != 1 else 'is'} neither in the ledger "
                "nor on disk; their packets cannot be shown"
            )
        if self.late:
            out.append(
                f"{len(self.late)} capture{'s' if len(self.late) != 1 else ''} collected after the "
                f"report also fed these intervals and {'were' if len(self.late) != 1 else 'was'} not "
                f"searched: {', '.join(self.late)}"
            )
        complete = not self.missing and not self.unaccounted
        if (
            self.expected_packets is not None
            and complete
            and (self.matched != self.expected_packets or self.bytes != self.expected_bytes)
        ):
            out.append(
                f"found {self.matched:,} packets ({self.bytes:,} bytes), the row counts "
                f"{self.expected_packets:,} ({self.expected_bytes:,} bytes)"
            )
        return out

    def summary(self) -> str:
        what = f"report {self.report_id} row {self.row}, " if self.report_id is not None else ""
        counts = f"{self.matched:,} packet{'s' if self.matched != 1 else ''}, {self.bytes:,} bytes"
        if self.expected_packets is not None:
            counts += f" (the row counts {self.expected_packets:,}, {self.expected_bytes:,} bytes)"
        n_missing = len(self.missing) + self.unaccounted
        caps = f"{len(self.searched)} capture{'s' if len(self.searched) != 1 else ''} searched"
        caps += f", {n_missing} missing" if n_missing else ""
        return f"{counts}: {what}{self.table} {self.key_text()}; {caps}"

    def lines(self) -> Iterator[str]:
        """One tcpdump-like line per packet (dpkt decodes each)."""
        for p in self.packets:
            yield describe(p, macs=self.show_macs)


# ------------------------------------------------------------------ the API


def find_packets(
    config: Config,
    report_id: str | None = None,
    row: int | None = None,
    table: str | None = None,
    where: Mapping[str, Any] | Sequence[str] | None = None,
    since: Any = None,
    until: Any = None,
) -> PacketsResult:
    """The packets behind row ``row`` of report ``report_id``, or behind the key ``where`` of ``table``
    (``{"client": "internet"}`` or ``["client=internet"]``; a value matches the raw or the canonical
    form; a CIDR takes the addresses inside it) with ``since <= t < until``. Raises ReportError (bad
    report or row), BadValueError (a --where value), ConfigError (unknown table), StoreError."""
    if report_id is not None:
        if table is not None or where:
            raise ReportError("give either a report row or --table/--where, not both")
        if row is None:
            raise ReportError(f"which row of report {report_id}? (give its number)")
        q = _row_query(config, report_id, int(row))
    else:
        if table is None or not where:
            raise ReportError("give a report id and a row, or --table with at least one --where FIELD=VALUE")
        q = _where_query(config, table, where, since, until)
    feeders, missing, unaccounted, late = _captures_for(
        Store(config.store), q.tc.name, q.start, q.end, q.created
    )
    matcher = _Matcher(q.tc, q.values, config, canonical_only=q.report_id is not None, lo=q.lo, hi=q.hi)
    found: list[Packet] = []
    searched: list[str] = []
    for entry in feeders:
        try:
            found += matcher.scan(entry.path)
        except FlowdiffError as e:  # unreadable now although the ledger says it was fine
            missing.append(MissingCapture(entry.path, f"cannot be read: {e}", entry.collected_at))
            continue
        searched.append(entry.path)
    found.sort(key=lambda p: p.ts_ns)
    return PacketsResult(
        table=q.tc.name,
        key=q.values,
        packets=found,
        searched=searched,
        missing=missing,
        unaccounted=unaccounted,
        late=late,
        report_id=q.report_id,
        row=row,
        expected_packets=q.expected[0] if q.expected else None,
        expected_bytes=q.expected[1] if q.expected else None,
        since=_utc(q.lo),
        until=_utc(q.hi),
        show_macs=any(k in ("src_mac", "dst_mac") for k in q.tc.keys),
    )


@dataclass(frozen=True)
class _Query:
    """What to look for: a key of a table, packets with ``lo <= ts < hi`` (ns), in the intervals
    ``[start, end)`` (None: open), from captures collected by ``created`` (report mode)."""

    tc: TableConfig
    values: dict[str, list[Any]]
    lo: int
    hi: int
    start: int | None
    end: int | None
    created: str | None = None
    report_id: str | None = None
    expected: tuple[int, int] | None = None  # the row's packets and bytes


def _row_query(config: Config, report_id: str, row: int) -> _Query:
    """A report row is searched in ``[first_seen, last_seen]`` within the span of the report's intervals."""
    tc, values, info = _report_row(config, report_id, row)
    interval_ns = config.interval * _NS
    first_ns = _ns(info["first_seen"])
    last_ns = _ns(info["last_seen"]) + 1000  # stored in microseconds: the whole last one
    until_ns = _ns(info["until"]) if info["until"] is not None else last_ns
    end = min(until_ns, (last_ns - 1) // interval_ns * interval_ns + interval_ns)
    return _Query(
        tc,
        values,
        first_ns,
        min(last_ns, until_ns),
        _ns(info[INTERVAL]),
        end,
        created=info["created_at"],
        report_id=report_id,
        expected=(int(info["packets"]), int(info["bytes"])),
    )


def _where_query(config: Config, table: str, where: Any, since: Any, until: Any) -> _Query:
    tc = _table_config(config, table)
    values = parse_where(where, tc, config.networks)
    lo = _ns(since) if since is not None else _INT64_MIN
    hi = _ns(until) if until is not None else _INT64_MAX
    interval_ns = config.interval * _NS
    start = lo // interval_ns * interval_ns if since is not None else None
    return _Query(tc, values, lo, hi, start, hi if until is not None else None)


def _utc(v: int) -> pd.Timestamp | None:
    import pandas as pd

    return None if v in (_INT64_MIN, _INT64_MAX) else pd.Timestamp(v, unit="ns", tz="UTC")


def write_pcap(result: PacketsResult, path: str | os.PathLike) -> str:
    """Write the packets for Wireshark, atomically: a pcap with their link type, or a pcapng (one
    interface per link type) when they come from links of different types. Returns "pcap" or "pcapng"."""
    from flowdiff.durable import atomic_write_bytes

    linktypes = result.linktypes or [1]
    if len(linktypes) == 1:
        data, kind = _pcap_bytes(result.packets, linktypes[0]), "pcap"
    else:
        data, kind = _pcapng_bytes(result.packets, linktypes), "pcapng"
    atomic_write_bytes(Path(path), data)
    return kind


def parse_where(
    where: Mapping[str, Any] | Sequence[str], tc: TableConfig, networks: Mapping[str, str] | None = None
) -> dict[str, list[Any]]:
    """``FIELD=VALUE`` filters -> field -> accepted values. Each value is checked against its field by
    the one validation every ``--where`` goes through (``rules.check_where``, ``vocab.parse_spec``):
    numbers in decimal or hex, protocol names, addresses, CIDRs, ``[networks]`` labels, MACs, ``random``.
    A field given twice accepts either value. Ranges and ``*`` are refused: packets names one key."""
    from flowdiff.rules import check_where, network_labels
    from flowdiff.vocab import parse_spec

    items: list[tuple[str, Any]] = []
    if isinstance(where, Mapping):
        for k, v in where.items():
            items += [(k, x) for x in (v if isinstance(v, list | tuple | set) else [v])]
    else:
        for w in where:
            name, sep, value = str(w).partition("=")
            if not sep or not name.strip():
                raise BadValueError(f"--where {w!r}", str(w), w, "expected FIELD=VALUE")
            items.append((name.strip(), value.strip()))
    labels = network_labels(networks)
    out: dict[str, list[Any]] = {}
    for name, value in items:
        if name not in tc.keys:
            raise BadValueError(
                f"--where {name}={value}",
                name,
                value,
                f"table {tc.name} has no key field {name!r} (keys: {', '.join(tc.keys)})",
            )
        check_where(name, value, labels)
        kind, parsed = parse_spec(name, value, labels)
        if kind in ("any", "range"):
            raise BadValueError(
                f"--where {name}={value}",
                name,
                value,
                "packets takes one value per filter (no ranges or '*'); repeat --where for more",
            )
        out.setdefault(name, []).append(str(parsed) if kind == "cidr" else _plain(parsed))
    return out


def _plain(value: Any) -> Any:
    """A key value as a plain Python int or str (report frames hold numpy integers)."""
    return int(value) if isinstance(value, int | np.integer) else str(value)


# ------------------------------------------------------------------ report rows


def _table_config(config: Config, table: str) -> TableConfig:
    try:
        return config.select_tables([table])[table]
    except ConfigError:
        raise ConfigError(
            f"no table named {table!r} (tables: {', '.join(config.tables)})", key="table"
        ) from None


def _report_row(config: Config, report_id: str, row: int) -> tuple[TableConfig, dict[str, list[Any]], dict]:
    from flowdiff.archive import load_report, report_dir

    res = load_report(config, report_id)
    for table, df in res.rows.items():
        hit = df[df["row"] == row]
        if not len(hit):
            continue
        rec = hit.iloc[0]
        keys = tuple(res.keys[table])
        tc = config.tables.get(table)
        if tc is None:
            raise ReportError(f"report {report_id}: table {table!r} is no longer in the config")
        if tuple(tc.keys) != keys:
            raise ReportError(
                f"report {report_id}: table {table!r} had keys {list(keys)}, the config now says "
                f"{list(tc.keys)}"
            )
        values = {k: [_plain(rec[k])] for k in keys}
        try:
            meta = json.loads((report_dir(config, report_id) / "report.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            meta = {}
        info = {c: rec[c] for c in (INTERVAL, "first_seen", "last_seen", "packets", "bytes")}
        info.update(until=res.until, created_at=meta.get("created_at"))
        return tc, values, info
    total = res.total
    raise ReportError(
        f"report {report_id} has no row {row}" + (f" (rows 1-{total})" if total else " (no rows)")
    )


def _ns(t: Any) -> int:
    import pandas as pd

    ts = pd.Timestamp(t)
    if ts.tzinfo is None:
        ts = ts.tz_localize("UTC")
    return int(ts.value)


# ------------------------------------------------------------------ which captures


def _sources(store: Store, table: str, start: int | None, end: int | None) -> set[str] | None:
    """Capture ids that fed ``table`` in the intervals ``[start, end)`` (None: a file without the record)."""
    import pandas as pd

    from flowdiff.store import _SOURCES_KEY, file_metadata

    since = pd.Timestamp(start, unit="ns", tz="UTC") if start is not None else None
    until = pd.Timestamp(end, unit="ns", tz="UTC") if end is not None else None
    ids: set[str] = set()
    for p in store.files(table, since, until):
        try:
            meta = file_metadata(p)
        except (OSError, ValueError) as e:
            raise StoreError(f"{p}: unreadable interval file: {e}") from None
        if _SOURCES_KEY not in meta:
            return None
        ids.update(s.rsplit("#", 1)[0] for s in json.loads(meta[_SOURCES_KEY]))
    return ids


def _captures_for(
    store: Store, table: str, start: int | None, end: int | None, created: str | None
) -> tuple[list[LedgerEntry], list[MissingCapture], int, list[str]]:
    """(captures to search, captures that fed the window but cannot be searched, how many more fed it
    without a ledger entry to name, captures collected after ``created``).

    A ledger entry that records its ``capture_id`` is matched to the interval files' sources exactly
    (no file is read to know whether it fed the window, and a missing one is named for certain); older
    entries are recognised by recomputing the id from the file, walking them in time order."""
    if store.table_keys(table) is None:
        raise StoreError(f"no table {table!r} in store {store.root}")
    ids = _sources(store, table, start, end)
    if ids is not None and not ids:
        return [], [], 0, []
    entries: dict[str, LedgerEntry] = {}
    for e in store.ledger():
        if e.status in ("ok", "damaged") and e.records > 0:
            entries[e.path] = e  # the latest entry of a path wins
    feeders: list[LedgerEntry] = []
    gone: list[MissingCapture] = []
    legacy = list(entries.values())
    remaining = set(ids) if ids is not None else None
    if remaining is not None:
        known = [e for e in legacy if getattr(e, "capture_id", None)]
        legacy = [e for e in legacy if not getattr(e, "capture_id", None)]
        for e in sorted(known, key=lambda e: (e.mtime_ns, e.path)):
            if ids is None or e.capture_id not in ids:
                continue
            remaining.discard(e.capture_id)
            problem = _check_unchanged(e)
            if problem is None:
                feeders.append(e)
            else:
                gone.append(MissingCapture(e.path, problem, e.collected_at))
    more, guessed, unaccounted = _walk(legacy, remaining, start, end)
    late = [e.path for e in feeders + more if created and e.collected_at and e.collected_at > created]
    feeders = [e for e in feeders + more if e.path not in late]
    return feeders, gone + guessed, unaccounted, late


def _walk(
    entries: list[LedgerEntry], remaining: set[str] | None, start: int | None, end: int | None
) -> tuple[list[LedgerEntry], list[MissingCapture], int]:
    """Ledger entries without a recorded capture id: visited in modification-time order from the
    window's start (a capture cannot hold a packet newer than its last write), each recognised by its id
    recomputed from the file; the walk stops once every source is found, or at a capture on disk that
    begins after the window. Returns (feeders, captures gone that probably fed it, sources unexplained)."""
    if remaining is not None and not remaining:
        return [], [], 0
    ordered = sorted(entries, key=lambda e: (e.mtime_ns, e.path))
    lower = (start - _NS) if start is not None else _INT64_MIN  # mtime: a second of file system slack
    recent = [e for e in ordered if e.mtime_ns >= lower]
    older = [e for e in reversed(ordered) if e.mtime_ns < lower]
    feeders: list[LedgerEntry] = []
    gone: list[MissingCapture] = []

    def visit(e: LedgerEntry, *, may_stop: bool) -> bool:
        """False when the walk can stop."""
        problem = _check_unchanged(e)
        if problem is not None:
            gone.append(MissingCapture(e.path, problem, e.collected_at))
            return True
        if remaining is None:  # an old store without per-file sources: by time alone
            first = _first_ts(e.path)
            if end is not None and first is not None and first >= end:
                return not may_stop
            feeders.append(e)
            return True
        hit = _matching_id(e, remaining)
        if hit is not None:
            feeders.append(e)
            remaining.discard(hit)
            return bool(remaining)
        if may_stop and end is not None:
            first = _first_ts(e.path)
            if first is not None and first >= end:  # on disk and later than the window: so are the rest
                return False
        return True

    stop = len(recent)
    for i, e in enumerate(recent):
        if remaining is not None and not remaining:
            stop = i
            break
        if not visit(e, may_stop=True):
            stop = i + 1
            break
    # Captures out of time order: collected late (copied in from elsewhere), or with a modification time
    # older than their packets (copied with old times, clock steps). Visited only while some source of the
    # window is still unexplained by the captures found gone.
    for e in [*recent[stop:], *older]:
        if remaining is None or len(remaining) <= len(gone):
            break
        visit(e, may_stop=False)
    if remaining is None:
        return feeders, gone, 0
    missing = gone[: len(remaining)]  # the nearest in time to the window: the likeliest ones
    return feeders, missing, len(remaining) - len(missing)


def _check_unchanged(e: LedgerEntry) -> str | None:
    """None when the capture is on disk as collected, else why it cannot be searched."""
    try:
        st = os.stat(e.path)
    except FileNotFoundError:
        return "no longer on disk"
    except OSError as err:
        return f"cannot be read ({err.strerror})"
    if st.st_size != e.size:
        return f"changed since it was collected (size {e.size:,} -> {st.st_size:,} bytes)"
    if st.st_mtime_ns != e.mtime_ns:
        from flowdiff.capture import content_sha256

        try:
            same = e.sha256 is not None and content_sha256(e.path) == e.sha256
        except OSError as err:
            return f"cannot be read ({err.strerror})"
        if not same:
            when = iso_time(st.st_mtime_ns / _NS)
            return f"changed since it was collected (modified {when})"
    return None


def _matching_id(e: LedgerEntry, ids: set[str]) -> str | None:
    """The id under which collect stored this capture's parts, if it is one of ``ids``: its content hash
    (when a capture of the same size was known), else the hash of its size, first and last MiB."""
    if e.sha256 and e.sha256 in ids:
        return e.sha256
    from flowdiff.collect import _capture_id

    try:
        cid = _capture_id(Path(e.path), e.size, set())[0]
    except FlowdiffError:
        return None
    return cid if cid in ids else None


def _first_ts(path: str) -> int | None:
    from flowdiff.capture import open_capture

    try:
        batches = open_capture(path).batches(1 << 16, threaded=False)
        try:
            b = next(batches, None)
        finally:
            batches.close()  # type: ignore[attr-defined]  # a generator: stop the reader
    except FlowdiffError:
        return None
    return int(b.ts_ns.min()) if b is not None and len(b) else None


# ------------------------------------------------------------------ matching


class _Matcher:
    """Selects the packets of one key in one capture, vectorised per chunk (see the module docstring)."""

    def __init__(
        self,
        tc: TableConfig,
        values: dict[str, list[Any]],
        config: Config,
        *,
        canonical_only: bool,
        lo: int,
        hi: int,
    ):
        from flowdiff.netmap import NetworkMap

        self.tc = tc
        self.values = values
        self.nmap = NetworkMap(config.networks)
        self.service_ports = np.array(sorted(set(config.service_ports)), dtype=np.uint64)
        self.canonical_only = canonical_only
        self.lo, self.hi = lo, hi
        self.counted = (
            [DecodeStatus.OK]
            if is_ip_table(tc.keys)
            else [DecodeStatus.OK, DecodeStatus.NOT_IP, DecodeStatus.BAD_IP]
        )
        self.role_keys = [k for k in values if _is_role_key(k)]
        self.plain_keys = [k for k in values if not _is_role_key(k)]

    # -- per capture
    def scan(self, path: str) -> list[Packet]:
        from flowdiff.capture import open_capture
        from flowdiff.decode import decode

        reader = open_capture(path)
        cands: list[dict[str, np.ndarray]] = []
        syns: list[dict[str, np.ndarray]] = []
        for batch in reader.batches():
            pk = decode(batch)
            _zero_non_ip(pk)
            if self.role_keys:
                syns.append(self._syn_context(pk))
            sel = np.flatnonzero(
                np.isin(pk["status"], self.counted) & (pk["ts_ns"] >= self.lo) & (pk["ts_ns"] < self.hi)
            )
            for k in self.plain_keys:
                if not len(sel):
                    break
                sel = sel[self._match(k, {f: a[sel] for f, a in pk.items()})]
            cols = {f: a[sel] for f, a in pk.items()}
            for k in self.role_keys:
                if not len(sel):
                    break
                m_src, m_dst = self._sides(k, cols)
                keep = m_src | m_dst
                sel, cols = sel[keep], {f: a[keep] for f, a in cols.items()}
                cols[f"_{k}_src"], cols[f"_{k}_dst"] = m_src[keep], m_dst[keep]
            if not len(sel):
                continue
            cols["linktype"] = np.asarray(batch.linktype, dtype=np.uint16)[sel]
            cols["_data"], cols["_off"] = _gather_bytes(batch, sel)
            cands.append(cols)
        if not cands:
            return []
        c = _concat(cands)
        final = np.ones(len(c["ts_ns"]), dtype=bool)
        if self.role_keys:
            cis = self._roles(c, _concat(syns) if syns else None)
            for k in self.role_keys:
                final &= self._role_match(k, c, cis)
        return _packets(c, np.flatnonzero(final), path)

    # -- key fields
    def _match(self, key: str, cols: Mapping[str, np.ndarray]) -> np.ndarray:
        want = self.values[key]
        net = parse_net_key(key)
        if net is not None or key in ("src", "dst", "src_label", "dst_label"):
            side = (net.base if net else key).split("_")[0]
            return self._side_match(key, side, cols)
        if key in ("src_mac", "dst_mac"):
            return self._mac_match(key, cols[key])
        return np.isin(cols[key].astype(np.int64), np.asarray(want, dtype=np.int64))

    def _side_match(self, key: str, side: str, cols: Mapping[str, np.ndarray]) -> np.ndarray:
        """Does the address of ``side`` (src or dst) give ``key``'s wanted value? ``key`` is an address
        (compared canonicalised), a ``*_label`` or a ``*_net/N`` field of either side or role. Compared
        as integers over the whole chunk; text is made only for the few candidates left."""
        ver = cols["ip_version"].astype(np.uint64)
        hi, lo = cols[f"{side}_hi"].astype(np.uint64), cols[f"{side}_lo"].astype(np.uint64)
        out = np.zeros(len(ver), dtype=bool)
        net = parse_net_key(key)
        for want in self.values[key]:
            if net is not None:
                out |= _in_network(str(want), ver, hi, lo, net.prefix, exact_prefix=True)
            elif key.endswith("_label"):
                labels = self.nmap.labels
                if want in labels:
                    out |= self.nmap.codes_for_ints(ver, hi, lo) == labels.index(want)
            else:
                out |= self._address_is(str(want), ver, hi, lo)
        return out

    def _address_is(self, want: str, ver: np.ndarray, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        """Addresses whose canonical form (``canon.canon_values``) is ``want``, or (``--where``) whose
        raw text is. Candidates first, by integers: the address itself, the addresses inside a prefix
        (``ipv6_prefix``), or those the ``[networks]`` map labels ``want`` (``collapse``)."""
        import ipaddress

        try:
            one = ipaddress.ip_network(want, strict=False)
        except ValueError:
            one = None
        if one is not None:
            cand = _in_network(want, ver, hi, lo, one.prefixlen, exact_prefix=False)
        elif want in self.tc.collapse and want in self.nmap.labels:
            # canon_values' own rule: an address whose label is collapsed becomes the label
            return self.nmap.codes_for_ints(ver, hi, lo) == self.nmap.labels.index(want)
        else:
            return np.zeros(len(ver), dtype=bool)  # no address has this canonical or raw form
        idx = np.flatnonzero(cand)
        if not len(idx):
            return cand
        from flowdiff.aggregate import _group_triples
        from flowdiff.canon import canon_values
        from flowdiff.netmap import address_text

        empty = np.zeros(0, dtype=np.uint64)
        inv, uniq = _group_triples(ver[idx], hi[idx], lo[idx], empty, empty, empty)
        text = address_text(uniq[:, 0], uniq[:, 1], uniq[:, 2])
        ok = canon_values("src", text, self.tc, self.nmap) == want
        if not self.canonical_only:
            ok |= (text == want) | ("/" in want)  # --where: a CIDR takes every raw address inside it
        cand[idx] = ok[inv]
        return cand

    def _mac_match(self, key: str, macs: np.ndarray) -> np.ndarray:
        """MACs whose canonical form (``random`` for locally administered ones, with
        ``collapse_random_macs``) or, for ``--where``, whose raw text is wanted; text for distinct MACs only."""
        from flowdiff.canon import canon_values
        from flowdiff.netmap import mac_text

        uniq, inv = np.unique(macs, return_inverse=True)
        text = mac_text(uniq)
        want = np.asarray([str(v) for v in self.values[key]], dtype=object)
        hit = np.isin(canon_values(key, text, self.tc, self.nmap), want)
        if not self.canonical_only:
            hit |= np.isin(text, want)
        return hit[inv.reshape(-1)]

    # -- client / server roles
    def _sides(self, key: str, cols: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Whether the wanted value of a role key is the source's or the destination's (before roles)."""
        if key == "service_port":
            want = np.asarray(self.values[key], dtype=np.int64)
            tcpudp = (cols["proto"] == 6) | (cols["proto"] == 17)
            zero = bool((want == 0).any())
            return (
                np.where(tcpudp, np.isin(cols["sport"].astype(np.int64), want), zero),
                np.where(tcpudp, np.isin(cols["dport"].astype(np.int64), want), zero),
            )
        return self._side_match(key, "src", cols), self._side_match(key, "dst", cols)

    def _syn_context(self, pk: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """SYNs without ACK of the whole capture that could belong to a wanted connection: the first SYN
        decides a connection's roles, wherever it lies (collect remembers SYNs across intervals too)."""
        syn = (pk["status"] == DecodeStatus.OK) & (pk["proto"] == 6) & ((pk["tcp_flags"] & 0x12) == 0x02)
        sel = np.flatnonzero(syn)
        cols = {
            f: pk[f][sel]
            for f in (
                "ip_version",
                "src_hi",
                "src_lo",
                "dst_hi",
                "dst_lo",
                "proto",
                "sport",
                "dport",
                "icmp_type",
                "ts_ns",
            )
        }
        keep = np.ones(len(sel), dtype=bool)
        for k in self.role_keys:
            m_src, m_dst = self._sides(k, cols)
            keep &= m_src | m_dst
        return {f: a[keep] for f, a in cols.items()}

    def _roles(self, c: Mapping[str, np.ndarray], ctx: Mapping[str, np.ndarray] | None) -> np.ndarray:
        from flowdiff.aggregate import client_is_src

        n = len(c["ts_ns"])
        is_syn = (c["proto"] == 6) & ((c["tcp_flags"] & 0x12) == 0x02)
        syn_ts = np.where(is_syn, c["ts_ns"], _INT64_MAX).astype(np.int64)
        names = ("ip_version", "src_hi", "src_lo", "dst_hi", "dst_lo", "proto", "sport", "dport", "icmp_type")
        cols = {f: np.asarray(c[f]) for f in names}
        if ctx is not None and len(ctx["ts_ns"]):
            cols = {f: np.concatenate([cols[f], np.asarray(ctx[f], dtype=cols[f].dtype)]) for f in names}
            syn_ts = np.concatenate([syn_ts, ctx["ts_ns"].astype(np.int64)])
        u = {f: cols[f].astype(np.uint64) for f in names}
        return client_is_src(
            u["ip_version"],
            u["src_hi"],
            u["src_lo"],
            u["dst_hi"],
            u["dst_lo"],
            u["proto"],
            u["sport"],
            u["dport"],
            u["icmp_type"],
            syn_ts,
            self.service_ports,
        )[:n]

    def _role_match(self, key: str, c: Mapping[str, np.ndarray], cis: np.ndarray) -> np.ndarray:
        m_src, m_dst = c[f"_{key}_src"], c[f"_{key}_dst"]
        if key == "service_port":  # the server's port: the destination's when the source is the client
            return np.where(cis, m_dst, m_src)
        client_side = key.startswith("client")
        return np.where(cis, m_src, m_dst) if client_side else np.where(cis, m_dst, m_src)


def _is_role_key(key: str) -> bool:
    return key in _ROLE_KEYS or key.startswith(("client_net/", "server_net/"))


def _in_network(
    text: str, ver: np.ndarray, hi: np.ndarray, lo: np.ndarray, prefix: int, *, exact_prefix: bool
) -> np.ndarray:
    """Addresses inside the network ``text`` (an address is its own /32 or /128). With ``exact_prefix``
    (a ``*_net/N`` key) the network must also be written with the key's prefix (IPv4 clamped to 32)."""
    import ipaddress

    from flowdiff.netmap import mask_address

    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return np.zeros(len(ver), dtype=bool)
    if exact_prefix and net.prefixlen != min(prefix, 32 if net.version == 4 else 128):
        return np.zeros(len(ver), dtype=bool)
    mhi, mlo, _, _ = mask_address(ver, hi, lo, net.prefixlen)
    value = int(net.network_address)
    nhi, nlo = np.uint64(value >> 64), np.uint64(value & 0xFFFFFFFFFFFFFFFF)
    return (ver == net.version) & (mhi == nhi) & (mlo == nlo)


def _zero_non_ip(pk: dict[str, np.ndarray]) -> None:
    """The aggregator reads IP fields as 0 on frames without a decoded IP header (link tables count them)."""
    bad = pk["status"] != DecodeStatus.OK
    if bad.any():
        for f in ("src_hi", "src_lo", "dst_hi", "dst_lo", *_IP_INT_FIELDS):
            pk[f] = np.where(bad, 0, pk[f]).astype(pk[f].dtype)


def _gather_bytes(batch: Any, sel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The captured bytes of records ``sel`` as one array plus offsets (no Python loop)."""
    off = np.asarray(batch.offset, dtype=np.int64)[sel]
    cap = np.asarray(batch.caplen, dtype=np.int64)[sel]
    bounds = np.zeros(len(sel) + 1, dtype=np.int64)
    np.cumsum(cap, out=bounds[1:])
    idx = np.repeat(off - bounds[:-1], cap) + np.arange(bounds[-1], dtype=np.int64)
    return np.asarray(batch.buf)[idx], bounds


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(parts) == 1:
        return parts[0]
    out: dict[str, np.ndarray] = {}
    for f in parts[0]:
        if f == "_off":
            shifts = np.cumsum([0] + [len(p["_data"]) for p in parts[:-1]])
            out[f] = np.concatenate(
                [parts[0][f][:1]] + [p[f][1:] + s for p, s in zip(parts, shifts, strict=True)]
            )
        else:
            out[f] = np.concatenate([p[f] for p in parts])
    return out


_SUMMARY_FIELDS = (
    "ip_version",
    "src_hi",
    "src_lo",
    "dst_hi",
    "dst_lo",
    "proto",
    "sport",
    "dport",
    "tcp_flags",
    "icmp_type",
    "ethertype",
    "src_mac",
    "dst_mac",
)


def _packets(c: Mapping[str, np.ndarray], idx: np.ndarray, path: str) -> list[Packet]:
    """Python objects for the matched packets only."""
    data, off = c["_data"], c["_off"]
    cols = [c[f][idx].tolist() for f in _SUMMARY_FIELDS]
    starts, ends = off[idx].tolist(), off[idx + 1].tolist()
    ts, lt, wire = c["ts_ns"][idx].tolist(), c["linktype"][idx].tolist(), c["wirelen"][idx].tolist()
    blob = data.tobytes()
    out = []
    for i in range(len(idx)):
        fields = tuple(zip(_SUMMARY_FIELDS, (col[i] for col in cols), strict=True))
        out.append(Packet(ts[i], lt[i], blob[starts[i] : ends[i]], wire[i], path, fields))
    return out


# ------------------------------------------------------------------ writing


def _pcap_bytes(packets: Iterable[Packet], linktype: int) -> bytes:
    packets = list(packets)
    nanos = any(p.ts_ns % 1000 for p in packets)
    magic, div = (0xA1B23C4D, 1) if nanos else (0xA1B2C3D4, 1000)
    snaplen = max([262144, *(len(p.data) for p in packets)])
    out = [struct.pack("<IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for p in packets:
        sec, frac = divmod(p.ts_ns, _NS)
        out.append(struct.pack("<IIII", sec, frac // div, len(p.data), p.wirelen))
        out.append(p.data)
    return b"".join(out)


def _block(kind: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack("<II", kind, n) + body + struct.pack("<I", n)


def _pcapng_bytes(packets: Iterable[Packet], linktypes: list[int]) -> bytes:
    """One section; an interface per link type, time stamps in nanoseconds (if_tsresol 9)."""
    out = [_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))]
    tsresol = struct.pack("<HHB", 9, 1, 9) + b"\0" * 3 + struct.pack("<HH", 0, 0)
    for lt in linktypes:
        out.append(_block(1, struct.pack("<HHI", lt, 0, 0) + tsresol))
    iface = {lt: i for i, lt in enumerate(linktypes)}
    for p in packets:
        ts = p.ts_ns & 0xFFFFFFFFFFFFFFFF
        body = struct.pack("<IIIII", iface[p.linktype], ts >> 32, ts & 0xFFFFFFFF, len(p.data), p.wirelen)
        out.append(_block(6, body + p.data))
    return b"".join(out)


# ------------------------------------------------------------------ one line per packet


_TCP_FLAGS = (
    (0x02, "S"),
    (0x01, "F"),
    (0x04, "R"),
    (0x08, "P"),
    (0x20, "U"),
    (0x40, "E"),
    (0x80, "W"),
    (0x10, "."),
)
_ICMP_TYPES = {
    0: "echo-reply",
    3: "unreachable",
    5: "redirect",
    8: "echo-request",
    11: "time-exceeded",
    128: "echo-request",
    129: "echo-reply",
    133: "router-solicitation",
    134: "router-advertisement",
    135: "neighbor-solicitation",
    136: "neighbor-advertisement",
}


def describe(p: Packet, *, macs: bool = False) -> str:
    """``2024-03-11 15:32:00.123456 203.0.113.66:40123 > 10.20.0.10:23 tcp 74 [S]``: time, endpoints,
    protocol, length on the wire, TCP flags or ICMP type. dpkt decodes the frame; link types dpkt does not
    know fall back to the fields the fast path decoded. ``macs`` puts the MAC addresses in front of IP
    packets too (for tables keyed by MACs)."""
    sec, ns = divmod(p.ts_ns, _NS)
    when = datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%d %H:%M:%S") + f".{ns // 1000:06d}"
    body = _dpkt_line(p, macs) or _fields_line(p.field_map, macs)
    return f"{when} {body.replace('{len}', str(p.wirelen))}"


def _dpkt_line(p: Packet, want_macs: bool = False) -> str | None:
    import dpkt

    try:
        l3, macs, etype = _dpkt_link(p.linktype, p.data)
    except (dpkt.UnpackError, dpkt.NeedData, struct.error, ValueError, IndexError, KeyError):
        return None
    if l3 is None:
        return None
    if isinstance(l3, dpkt.ip.IP | dpkt.ip6.IP6):
        v6 = isinstance(l3, dpkt.ip6.IP6)
        fam = socket.AF_INET6 if v6 else socket.AF_INET
        src, dst = socket.inet_ntop(fam, l3.src), socket.inet_ntop(fam, l3.dst)
        proto = l3.p
        l4 = l3.data
        if want_macs and macs:
            src, dst = f"{_mac(macs[0])} > {_mac(macs[1])}, {src}", dst
        if isinstance(l4, dpkt.tcp.TCP | dpkt.udp.UDP):
            s, d = (_bracket(src) if v6 else src), (f"[{dst}]" if v6 else dst)
            extra = f" [{_flags(l4.flags)}]" if isinstance(l4, dpkt.tcp.TCP) else ""
            return f"{s}:{l4.sport} > {d}:{l4.dport} {_proto(proto)} {{len}}{extra}"
        if isinstance(l4, dpkt.icmp.ICMP | dpkt.icmp6.ICMP6):
            return f"{src} > {dst} {_proto(proto)} {{len}} {_ICMP_TYPES.get(l4.type, f'type {l4.type}')}"
        return f"{src} > {dst} {_proto(proto)} {{len}}"
    if isinstance(l3, dpkt.arp.ARP):
        spa, tpa = socket.inet_ntoa(l3.spa), socket.inet_ntoa(l3.tpa)
        what = f"who-has {tpa} tell {spa}" if l3.op == 1 else f"{spa} is-at {_mac(l3.sha)}"
        return f"{_mac(macs[0])} > {_mac(macs[1])} arp {{len}} {what}" if macs else f"arp {{len}} {what}"
    if macs:
        return f"{_mac(macs[0])} > {_mac(macs[1])} ethertype {ethertype_text(etype)} {{len}}"
    return None


def _dpkt_link(linktype: int, data: bytes) -> tuple[Any, tuple[bytes, bytes] | None, int]:
    """(layer-3 object or None, (src MAC, dst MAC) or None, ethertype) with dpkt's own link decoders."""
    import dpkt
    import dpkt.arp
    import dpkt.icmp6
    import dpkt.loopback
    import dpkt.sll
    import dpkt.sll2

    if linktype == 1:
        eth = dpkt.ethernet.Ethernet(data)
        return eth.data if not isinstance(eth.data, bytes) else None, (eth.src, eth.dst), eth.type
    if linktype == 113:
        sll = dpkt.sll.SLL(data)
        return (None if isinstance(sll.data, bytes) else sll.data), None, sll.ethtype
    if linktype == 276:
        sll2 = dpkt.sll2.SLL2(data)
        return (None if isinstance(sll2.data, bytes) else sll2.data), None, sll2.ptype
    if linktype in (0, 108):
        lo = dpkt.loopback.Loopback(data)
        return (None if isinstance(lo.data, bytes) else lo.data), None, 0
    if linktype in (101, 12, 14, 228, 229) and data:
        ver = data[0] >> 4
        if ver == 4:
            return dpkt.ip.IP(data), None, 0x0800
        if ver == 6:
            return dpkt.ip6.IP6(data), None, 0x86DD
    return None, None, 0


def _fields_line(f: Mapping[str, int], want_macs: bool = False) -> str:
    from flowdiff.netmap import address_text, mac_text

    if f.get("ip_version"):
        v = np.array([f["ip_version"]])
        src = address_text(v, np.array([f["src_hi"]], np.uint64), np.array([f["src_lo"]], np.uint64))[0]
        dst = address_text(v, np.array([f["dst_hi"]], np.uint64), np.array([f["dst_lo"]], np.uint64))[0]
        if want_macs and (f.get("src_mac") or f.get("dst_mac")):
            m = mac_text(np.array([f.get("src_mac", 0), f.get("dst_mac", 0)], dtype=np.uint64))
            src = f"{m[0]} > {m[1]}, {src}"
        if f["proto"] in (6, 17):
            extra = f" [{_flags(f['tcp_flags'])}]" if f["proto"] == 6 else ""
            return f"{src}:{f['sport']} > {dst}:{f['dport']} {_proto(f['proto'])} {{len}}{extra}"
        return f"{src} > {dst} {_proto(f['proto'])} {{len}}"
    macs = mac_text(np.array([f.get("src_mac", 0), f.get("dst_mac", 0)], dtype=np.uint64))
    return f"{macs[0]} > {macs[1]} ethertype {ethertype_text(f.get('ethertype', 0))} {{len}}"


def _bracket(src: str) -> str:
    """``[2001:db8::1]`` for a port to follow; a MAC prefix stays outside the brackets."""
    head, sep, addr = src.rpartition(", ")
    return f"{head}{sep}[{addr}]"


def _flags(bits: int) -> str:
    return "".join(c for b, c in _TCP_FLAGS if bits & b) or "none"


def _proto(p: int) -> str:
    from flowdiff.vocab import proto_name

    name = proto_name(int(p))
    return name if not name.isdigit() else f"proto {name}"


def _mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def _value_text(key: str, v: Any) -> str:
    from flowdiff.vocab import format_value

    return format_value(key, v)
