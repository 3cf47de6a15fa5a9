"""NetFlow v5, v9 and IPFIX (RFC 7011) export datagrams -> per-record arrays for the Aggregator.

Two steps, so that the per-record work is vectorised:

1. :meth:`FlowDecoder.add` (once per datagram, plain Python, a few microseconds): the header and the
   set headers are checked, templates are learnt (and withdrawn), and the records of each data set are
   appended, as raw bytes, to a group of records of the same layout, with the datagram's export time.
   Variable-length records are re-laid out to a fixed layout (their variable fields dropped) here.
2. :meth:`FlowDecoder.take` (once per chunk): each group becomes a 2-D byte array and every field is
   read for all its records at once (numpy), into the columns of ``schema.PACKET_FIELDS`` plus the
   flow's own counters (``packets``, ``bytes``), ``ts_end_ns``, ``exporter``, ``input_if``,
   ``output_if``.

Templates are per (exporter address, observation domain / source id, template id), so several
exporters and domains never mix. :class:`TemplateCache` is JSON (kept by collect next to the ledger,
``<store>/_flow_templates.json``), so a template sent once survives file rotation and restarts.
Data sets whose template is unknown wait (at most ``pending_limit`` sets per decoder) until it
arrives; the rest, and those still waiting at the end of a file, are counted as dropped.

Bad input never raises and never makes a row: every problem is counted under a skip reason
(:data:`REASONS`) and the rest of the datagram is used only when its framing is still trustworthy
(a set length past the end stops the datagram; an unknown template skips just its set).

Times: a record's start (``flowStart*``, or the v5/v9 ``First`` uptime against the header's
sysUpTime and export time, or IPFIX ``flowStartSysUpTime`` against the exporter's
``systemInitTimeMilliseconds`` option) is ``ts_ns``; records without any start time use their
export time (counted as ``flow-no-start-time``). Bytes are the IP-layer octets the exporter counted.
"""

from __future__ import annotations

import functools
import json
import os
import struct
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flowdiff.schema import PACKET_FIELDS

__all__ = ["FLOW_FIELDS", "REASONS", "FlowDecoder", "Template", "TemplateCache"]

# Skip reasons (counted, never raised). Datagram-level reasons count datagrams, set-level ones sets,
# record-level ones records.
REASONS = (
    "flow-short-datagram",  # shorter than its version's header
    "flow-unknown-version",  # not 5, 9 or 10
    "flow-bad-length",  # a header or set length that does not fit the datagram
    "flow-bad-template",  # zero-length field, too many fields, scope count wrong: template ignored
    "flow-template-changed",  # a template id redefined with another layout (the new one is used)
    "flow-template-limit",  # template flood: more than the per-domain limit; not learnt
    "flow-bad-set",  # reserved set id (4..255)
    "flow-no-template",  # data sets dropped because their template never came (within the bound)
    "flow-bad-record",  # a variable-length record running past its set
    "flow-no-address",  # records without IPv4/IPv6 source and destination addresses
    "flow-sequence-gap",  # export datagrams (v9) or records (v5, IPFIX) the sequence numbers say are missing
    "flow-no-start-time",  # records without a start time: attributed to their export time
)

# Extra per-record columns besides schema.PACKET_FIELDS
FLOW_FIELDS: dict[str, np.dtype] = {
    "packets": np.dtype(np.uint64),
    "bytes": np.dtype(np.uint64),
    "ts_end_ns": np.dtype(np.int64),
    "exporter": np.dtype(np.uint32),  # 1-based index into FlowDecoder.exporters
    "input_if": np.dtype(np.uint32),
    "output_if": np.dtype(np.uint32),
    "client_is_src": np.dtype(np.uint8),  # 1: the source is the client, whatever the ports say (Zeek)
}

VARLEN = 0xFFFF
MAX_FIELDS = 512  # per template
MAX_TEMPLATES_PER_DOMAIN = 1024  # template flood bound per (exporter, domain)
MAX_DOMAINS = 4096

# Information elements read (IPFIX numbers; NetFlow v9 uses the same numbers for these).
IE_BYTES, IE_PACKETS = 1, 2
IE_PROTO, IE_TOS, IE_FLAGS, IE_SPORT, IE_SRC4 = 4, 5, 6, 7, 8
IE_IN_IF, IE_DPORT, IE_DST4, IE_OUT_IF = 10, 11, 12, 14
IE_LAST_UP, IE_FIRST_UP = 21, 22
IE_SRC6, IE_DST6 = 27, 28
IE_ICMP4, IE_SRC_MAC, IE_VLAN, IE_IP_VERSION = 32, 56, 58, 60
IE_DST_MAC, IE_OUT_SRC_MAC, IE_BYTES_TOTAL, IE_PACKETS_TOTAL = 80, 81, 85, 86
IE_ICMP6 = 139
IE_START_S, IE_END_S, IE_START_MS, IE_END_MS = 150, 151, 152, 153
IE_START_US, IE_END_US, IE_START_NS, IE_END_NS = 154, 155, 156, 157
IE_INIT_MS = 160
IE_ICMP4_TYPE, IE_ICMP4_CODE, IE_ICMP6_TYPE, IE_ICMP6_CODE = 176, 177, 178, 179
IE_DOT1Q_VLAN, IE_ETHERTYPE = 243, 256
IE_PAD = 210

_NTP_EPOCH = 2_208_988_800  # seconds from 1900 to 1970

# NetFlow v5 as a fixed template: (element, length)
_V5_FIELDS = (
    (IE_SRC4, 4), (IE_DST4, 4), (15, 4), (IE_IN_IF, 2), (IE_OUT_IF, 2), (IE_PACKETS, 4), (IE_BYTES, 4),
    (IE_FIRST_UP, 4), (IE_LAST_UP, 4), (IE_SPORT, 2), (IE_DPORT, 2), (IE_PAD, 1), (IE_FLAGS, 1),
    (IE_PROTO, 1), (IE_TOS, 1), (16, 2), (17, 2), (9, 1), (13, 1), (IE_PAD, 2),
)  # fmt: skip


@dataclass(frozen=True)
class Template:
    """A template's layout: (element id, enterprise number or 0, length; 0xFFFF = variable)."""

    fields: tuple[tuple[int, int, int], ...]
    options: bool = False

    @functools.cached_property
    def fixed_length(self) -> int | None:
        if any(length == VARLEN for _, _, length in self.fields):
            return None
        return sum(length for _, _, length in self.fields)

    def to_json(self) -> list:
        return [int(self.options), [list(f) for f in self.fields]]

    @classmethod
    def from_json(cls, raw: list) -> Template:
        return cls(tuple((int(a), int(b), int(c)) for a, b, c in raw[1]), bool(raw[0]))


_V5_TEMPLATE = Template(tuple((ie, 0, n) for ie, n in _V5_FIELDS))


@dataclass
class TemplateCache:
    """Templates per (exporter, domain, template id) and per-domain facts (system init time), as JSON."""

    templates: dict[tuple[str, int, int], Template] = field(default_factory=dict)
    init_ms: dict[tuple[str, int], int] = field(default_factory=dict)  # systemInitTimeMilliseconds

    def to_json(self) -> str:
        return json.dumps(
            {
                "templates": [[e, d, t, tpl.to_json()] for (e, d, t), tpl in sorted(self.templates.items())],
                "init_ms": [[e, d, v] for (e, d), v in sorted(self.init_ms.items())],
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> TemplateCache:
        raw = json.loads(text)
        cache = cls()
        for e, d, t, tpl in raw.get("templates", []):
            cache.templates[(str(e), int(d), int(t))] = Template.from_json(tpl)
        for e, d, v in raw.get("init_ms", []):
            cache.init_ms[(str(e), int(d))] = int(v)
        return cache

    def copy(self) -> TemplateCache:
        return TemplateCache(dict(self.templates), dict(self.init_ms))

    def domain_count(self, exporter: str, domain: int) -> int:
        return sum(1 for e, d, _ in self.templates if e == exporter and d == domain)


@dataclass
class _Group:
    """Records of one fixed layout waiting for :meth:`FlowDecoder.take`."""

    template: Template
    chunks: list[bytes] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    export_ns: list[int] = field(default_factory=list)
    uptime_ms: list[int] = field(default_factory=list)  # -1: no sysUpTime in the header (IPFIX)
    init_ms: list[int] = field(default_factory=list)  # -1: unknown
    exporter: list[int] = field(default_factory=list)
    n: int = 0
    # records read by the compiled fast path (FlowDecoder.add_batch), one tuple of arrays per batch:
    # (record bytes, counts, export_ns, uptime_ms, init_ms, exporter) like the lists above
    pieces: list[tuple[np.ndarray, ...]] = field(default_factory=list)


@dataclass
class _Pending:
    exporter: str
    code: int
    domain: int
    tid: int
    body: bytes
    export_ns: int
    uptime_ms: int
    version: int


class FlowDecoder:
    """Decodes export datagrams of any number of exporters; see the module docstring."""

    def __init__(self, cache: TemplateCache | None = None, *, pending_limit: int = 4096):
        self.cache = cache if cache is not None else TemplateCache()
        self.pending_limit = pending_limit
        self.skipped: Counter[str] = Counter()
        self.exporters: list[str] = []
        self._codes: dict[str, int] = {}
        self._groups: dict[Template, _Group] = {}
        self._pending: list[_Pending] = []
        self._seq: dict[tuple[str, int, int], int] = {}  # (exporter, domain, version) -> next sequence
        self.records = 0  # records decoded into rows so far (take)
        self.datagrams = 0
        self._table: tuple[np.ndarray, np.ndarray] | None = None  # add_batch's templates; None: stale
        self._slots: dict[Template, int] = {}
        self._slot_tpl: list[Template] = []

    # -- step 1 --------------------------------------------------------------------------------

    def add(self, payload: bytes, exporter: str, recv_ns: int = 0) -> None:
        """One export datagram from ``exporter`` (its address as text)."""
        self.datagrams += 1
        if len(payload) < 4:
            self.skipped["flow-short-datagram"] += 1
            return
        version = (payload[0] << 8) | payload[1]
        code = self._code(exporter)
        if version == 5:
            self._v5(payload, exporter, code)
        elif version == 9:
            self._v9(payload, exporter, code)
        elif version == 10:
            self._ipfix(payload, exporter, code)
        else:
            self.skipped["flow-unknown-version"] += 1

    def _code(self, exporter: str) -> int:
        code = self._codes.get(exporter)
        if code is None:
            self.exporters.append(exporter)
            code = self._codes[exporter] = len(self.exporters)
            self._table = None
        return code

    # -- step 1, many datagrams at once -------------------------------------------------------------

    def add_batch(
        self,
        buf: np.ndarray,
        offsets: np.ndarray,
        lengths: np.ndarray,
        exporters: Sequence[str],
        which: np.ndarray,
    ) -> None:
        """Datagrams ``buf[offsets[i] : offsets[i] + lengths[i]]`` from ``exporters[which[i]]``, in order:
        the same as ``add`` for each, with the plain datagrams (v5; v9/IPFIX data sets of known
        fixed-length templates) read by compiled code (flowdiff/_flowwalk.py) a chunk at a time and the
        rest (templates, options, unknown templates, anything odd) by ``add``."""
        from flowdiff import _flowwalk as fw

        m = len(offsets)
        if m == 0:
            return
        offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        lengths = np.ascontiguousarray(lengths, dtype=np.int64)
        which = np.ascontiguousarray(which, dtype=np.int64)
        # exporter codes, given in order of first appearance (as add does)
        present = np.zeros(len(exporters), dtype=bool)
        present[which[lengths >= 4]] = True
        firsts = np.full(len(exporters), m, dtype=np.int64)
        np.minimum.at(firsts, which, np.arange(m, dtype=np.int64))
        for k in sorted(np.flatnonzero(present).tolist(), key=lambda k: firsts[k]):
            self._code(exporters[k])
        code_of = np.array([self._codes.get(e, 0) for e in exporters], dtype=np.int64)
        codes = code_of[which]
        cap = max(16384, 2 * m)
        s_slot, s_off, s_count, s_dgram, s_init = (np.empty(cap, dtype=np.int64) for _ in range(5))
        d = [np.empty(m, dtype=np.int64) for _ in range(6)]  # export, uptime, version, domain, seq, advance
        v5_slot = self._slot(_V5_TEMPLATE)
        i = 0
        while i < m:
            tkeys, tinfo = self._fast_table()
            stop, why, ns = fw.walk(
                buf, offsets, lengths, codes, i, tkeys, tinfo, v5_slot,
                s_slot, s_off, s_count, s_dgram, s_init, *d,
            )  # fmt: skip
            if stop > i:
                self._sequences(exporters, which[i:stop], codes[i:stop], *(x[i:stop] for x in d[2:6]))
            self.datagrams += stop - i
            if ns:
                self._add_sets(
                    buf, s_slot[:ns], s_off[:ns], s_count[:ns], s_dgram[:ns], s_init[:ns], d, codes
                )
            i = stop
            if why == fw.SLOW:
                a = int(offsets[i])
                self.add(bytes(buf[a : a + int(lengths[i])]), exporters[which[i]])
                i += 1

    def _slot(self, tpl: Template) -> int:
        slot = self._slots.get(tpl)
        if slot is None:
            slot = self._slots[tpl] = len(self._slot_tpl)
            self._slot_tpl.append(tpl)
        return slot

    def _fast_table(self) -> tuple[np.ndarray, np.ndarray]:
        """add_batch's view of the templates: sorted keys (code, domain, template id) of the fixed-length
        data templates of the exporters seen so far, with (slot, record length, init ms)."""
        if self._table is None:
            keys, info = [], []
            for (exporter, domain, tid), tpl in self.cache.templates.items():
                code = self._codes.get(exporter)
                fixed = tpl.fixed_length
                if code is None or code >= 1 << 15 or tpl.options or not fixed:
                    continue
                keys.append((code << 48) | (domain << 16) | tid)
                info.append((self._slot(tpl), fixed, self.cache.init_ms.get((exporter, domain), -1)))
            order = np.argsort(np.array(keys, dtype=np.int64), kind="stable")
            self._table = (
                np.ascontiguousarray(np.array(keys, dtype=np.int64)[order]),
                np.ascontiguousarray(np.array(info, dtype=np.int64).reshape(-1, 3)[order]),
            )
        return self._table

    def _add_sets(self, buf, s_slot, s_off, s_count, s_dgram, s_init, d, codes) -> None:
        """The data sets found by the walker, into the groups of their templates (as ``_group``)."""
        from flowdiff._flowwalk import gather_records

        slots = np.unique(s_slot)
        for slot in slots.tolist():
            sel = np.flatnonzero(s_slot == slot) if len(slots) > 1 else slice(None)
            tpl = self._slot_tpl[slot]
            counts, dg = s_count[sel], s_dgram[sel]
            total = int(counts.sum())
            data = gather_records(buf, s_off[sel], counts, tpl.fixed_length, total)
            g = self._groups.get(tpl)
            if g is None:
                g = self._groups[tpl] = _Group(tpl)
            g.pieces.append((data, counts.copy(), d[0][dg], d[1][dg], s_init[sel].copy(), codes[dg]))
            g.n += total

    def _sequence(self, exporter: str, domain: int, version: int, seq: int, advance: int) -> None:
        key = (exporter, domain, version)
        expected = self._seq.get(key)
        if expected is not None and seq != expected:
            gap = (seq - expected) & 0xFFFFFFFF
            if 0 < gap < 1 << 31:  # ahead: missing; behind: a restart or reordering, not counted
                self.skipped["flow-sequence-gap"] += gap
        self._seq[key] = (seq + advance) & 0xFFFFFFFF

    def _sequences(
        self,
        exporters: Sequence[str],
        which: np.ndarray,
        codes: np.ndarray,
        version: np.ndarray,
        domain: np.ndarray,
        seq: np.ndarray,
        advance: np.ndarray,
    ) -> None:
        """``_sequence`` for many datagrams in order, vectorised per (exporter, domain, version): one
        Python step per stream, not per datagram (a spool of a million records has 30,000 datagrams)."""
        key = (codes << 40) | (domain << 8) | version  # code < 2**15, domain < 2**32, version < 2**8
        streams: list[tuple[int, slice | np.ndarray]]
        if (key == key[0]).all():
            streams = [(0, slice(None))]
        else:
            uniq, first = np.unique(key, return_index=True)
            streams = [(int(f), np.flatnonzero(key == u)) for f, u in zip(first.tolist(), uniq, strict=True)]
        gaps = 0
        for f, sel in streams:
            s, adv = seq[sel], advance[sel]
            name = (exporters[int(which[f])], int(domain[f]), int(version[f]))
            nxt = (s + adv) & 0xFFFFFFFF
            expected = np.empty_like(s)
            expected[1:] = nxt[:-1]
            prev = self._seq.get(name)
            expected[0] = s[0] if prev is None else prev
            gap = (s - expected) & 0xFFFFFFFF
            gaps += int(gap[(gap > 0) & (gap < 1 << 31)].sum())
            self._seq[name] = int(nxt[-1])
        if gaps:
            self.skipped["flow-sequence-gap"] += gaps

    def _v5(self, p: bytes, exporter: str, code: int) -> None:
        if len(p) < 24:
            self.skipped["flow-short-datagram"] += 1
            return
        _, count, uptime, secs, nsecs, seq, _, engine_id, _ = struct.unpack_from("!HHIIIIBBH", p)
        if count == 0 or 24 + 48 * count > len(p) or count > 30:
            self.skipped["flow-bad-length"] += 1
            return
        self._sequence(exporter, engine_id, 5, seq, count)
        self._group(
            _V5_TEMPLATE,
            p[24 : 24 + 48 * count],
            count,
            secs * 10**9 + min(nsecs, 999_999_999),
            uptime,
            -1,
            code,
        )

    def _v9(self, p: bytes, exporter: str, code: int) -> None:
        if len(p) < 20:
            self.skipped["flow-short-datagram"] += 1
            return
        _, _, uptime, secs, seq, domain = struct.unpack_from("!HHIIII", p)
        self._sequence(exporter, domain, 9, seq, 1)
        self._sets(p, 20, len(p), exporter, code, domain, secs * 10**9, uptime, 9)

    def _ipfix(self, p: bytes, exporter: str, code: int) -> None:
        if len(p) < 16:
            self.skipped["flow-short-datagram"] += 1
            return
        _, length, secs, seq, domain = struct.unpack_from("!HHIII", p)
        if length < 16 or length > len(p):
            self.skipped["flow-bad-length"] += 1
            return
        before = self._data_records_seen
        self._sets(p, 16, length, exporter, code, domain, secs * 10**9, -1, 10)
        self._sequence(exporter, domain, 10, seq, self._data_records_seen - before)

    _data_records_seen = 0

    def _sets(
        self,
        p: bytes,
        pos: int,
        end: int,
        exporter: str,
        code: int,
        domain: int,
        export_ns: int,
        uptime: int,
        ver: int,
    ) -> None:
        tset, oset = (0, 1) if ver == 9 else (2, 3)
        while pos + 4 <= end:
            sid, slen = struct.unpack_from("!HH", p, pos)
            if slen < 4 or pos + slen > end:
                self.skipped["flow-bad-length"] += 1
                return
            body = p[pos + 4 : pos + slen]
            pos += slen
            if sid == tset:
                self._templates(body, exporter, domain, ver, options=False)
            elif sid == oset:
                self._templates(body, exporter, domain, ver, options=True)
            elif sid < 256:
                self.skipped["flow-bad-set"] += 1
            else:
                self._data(exporter, code, domain, sid, body, export_ns, uptime, ver)
        # fewer than 4 bytes left: padding (v9 pads to 32 bits), ignored

    def _templates(self, body: bytes, exporter: str, domain: int, ver: int, options: bool) -> None:
        pos, n = 0, len(body)
        while pos + 4 <= n:
            if options:
                if ver == 9:
                    if pos + 6 > n:
                        return
                    tid, scope_len, opt_len = struct.unpack_from("!HHH", body, pos)
                    pos += 6
                    if scope_len % 4 or opt_len % 4:
                        self.skipped["flow-bad-template"] += 1
                        return
                    count, scope = (scope_len + opt_len) // 4, scope_len // 4
                else:
                    tid, count = struct.unpack_from("!HH", body, pos)
                    pos += 4
                    if count == 0:
                        self._withdraw(exporter, domain, tid)
                        continue
                    if pos + 2 > n:
                        self.skipped["flow-bad-length"] += 1
                        return
                    scope = struct.unpack_from("!H", body, pos)[0]
                    pos += 2
                    if scope == 0 or scope > count:
                        self.skipped["flow-bad-template"] += 1
                        return
            else:
                tid, count = struct.unpack_from("!HH", body, pos)
                pos += 4
                if count == 0:
                    if ver == 10:
                        self._withdraw(exporter, domain, tid)
                        continue
                    self.skipped["flow-bad-template"] += 1
                    return
            if tid < 256 or count > MAX_FIELDS:
                self.skipped["flow-bad-template"] += 1
                return
            fields = []
            for _ in range(count):
                if pos + 4 > n:
                    self.skipped["flow-bad-length"] += 1
                    return
                ie, length = struct.unpack_from("!HH", body, pos)
                pos += 4
                pen = 0
                if ver == 10 and ie & 0x8000:
                    if pos + 4 > n:
                        self.skipped["flow-bad-length"] += 1
                        return
                    pen = struct.unpack_from("!I", body, pos)[0]
                    pos += 4
                    ie &= 0x7FFF
                if ver == 9 and length == VARLEN:
                    length = 0  # v9 has no variable-length fields: a bad template
                fields.append((ie, pen, length))
            if any(length == 0 for _, _, length in fields):
                self.skipped["flow-bad-template"] += 1
                continue
            self._learn(exporter, domain, tid, Template(tuple(fields), options))

    def _learn(self, exporter: str, domain: int, tid: int, tpl: Template) -> None:
        key = (exporter, domain, tid)
        old = self.cache.templates.get(key)
        if old == tpl:
            return
        if old is None and self.cache.domain_count(exporter, domain) >= MAX_TEMPLATES_PER_DOMAIN:
            self.skipped["flow-template-limit"] += 1
            return
        if old is not None:
            self.skipped["flow-template-changed"] += 1
        self.cache.templates[key] = tpl
        self._table = None
        self._retry_pending(exporter, domain, tid)

    def _withdraw(self, exporter: str, domain: int, tid: int) -> None:
        self._table = None
        if tid == 2 or tid == 3:  # all templates (2) / all options templates (3) of the domain
            for key in [k for k, t in self.cache.templates.items() if k[:2] == (exporter, domain)]:
                if self.cache.templates[key].options == (tid == 3):
                    del self.cache.templates[key]
        else:
            self.cache.templates.pop((exporter, domain, tid), None)

    def _data(
        self,
        exporter: str,
        code: int,
        domain: int,
        tid: int,
        body: bytes,
        export_ns: int,
        uptime: int,
        ver: int,
    ) -> None:
        tpl = self.cache.templates.get((exporter, domain, tid))
        if tpl is None:
            if len(self._pending) >= self.pending_limit:
                self.skipped["flow-no-template"] += 1
            else:
                self._pending.append(_Pending(exporter, code, domain, tid, body, export_ns, uptime, ver))
            return
        fixed = tpl.fixed_length
        if fixed is not None:
            count = len(body) // fixed  # the rest (shorter than a record) is padding
            if ver == 10:
                self._data_records_seen += count
            if tpl.options:
                self._options(exporter, domain, tpl, body, count, fixed)
            elif count:
                init = self.cache.init_ms.get((exporter, domain), -1)
                self._group(tpl, body[: count * fixed], count, export_ns, uptime, init, code)
            return
        fixed_tpl, records = self._relayout(tpl, body)
        if ver == 10:
            self._data_records_seen += len(records)
        if tpl.options:
            self._options(
                exporter, domain, fixed_tpl, b"".join(records), len(records), fixed_tpl.fixed_length or 0
            )
        elif records:
            init = self.cache.init_ms.get((exporter, domain), -1)
            self._group(fixed_tpl, b"".join(records), len(records), export_ns, uptime, init, code)

    def _relayout(self, tpl: Template, body: bytes) -> tuple[Template, list[bytes]]:
        """Variable-length records -> the same records without their variable-length fields."""
        kept = Template(tuple(f for f in tpl.fields if f[2] != VARLEN), tpl.options)
        out, pos, n = [], 0, len(body)
        min_len = sum(length if length != VARLEN else 1 for _, _, length in tpl.fields)
        while pos + min_len <= n:
            rec, start = [], pos
            for _, _, length in tpl.fields:
                if length == VARLEN:
                    if pos >= n:
                        break
                    vl = body[pos]
                    pos += 1
                    if vl == 255:
                        if pos + 2 > n:
                            pos = n + 1
                            break
                        vl = (body[pos] << 8) | body[pos + 1]
                        pos += 2
                    pos += vl
                else:
                    rec.append(body[pos : pos + length])
                    pos += length
                if pos > n:
                    break
            if pos > n or len(rec) != len(kept.fields):
                self.skipped["flow-bad-record"] += 1
                break
            out.append(b"".join(rec))
            if pos == start:
                break
        return kept, out

    def _options(
        self, exporter: str, domain: int, tpl: Template, body: bytes, count: int, fixed: int
    ) -> None:
        """Options records are not flows; systemInitTimeMilliseconds is kept (IPFIX uptime fields)."""
        off = 0
        for ie, pen, length in tpl.fields:
            if ie == IE_INIT_MS and pen == 0 and length <= 8 and count:
                start = (count - 1) * fixed + off
                self.cache.init_ms[(exporter, domain)] = int.from_bytes(body[start : start + length], "big")
                self._table = None
            off += length

    def _retry_pending(self, exporter: str, domain: int, tid: int) -> None:
        waiting, self._pending = self._pending, []
        for w in waiting:
            if (w.exporter, w.domain, w.tid) == (exporter, domain, tid):
                self._data(w.exporter, w.code, w.domain, w.tid, w.body, w.export_ns, w.uptime_ms, w.version)
            else:
                self._pending.append(w)

    def drop_pending(self) -> int:
        """Data sets still waiting for a template are given up (counted); called at the end of a file."""
        n = len(self._pending)
        if n:
            self.skipped["flow-no-template"] += n
        self._pending = []
        return n

    def _group(
        self, tpl: Template, data: bytes, count: int, export_ns: int, uptime: int, init: int, code: int
    ) -> None:
        g = self._groups.get(tpl)
        if g is None:
            g = self._groups[tpl] = _Group(tpl)
        g.chunks.append(data)
        g.counts.append(count)
        g.export_ns.append(export_ns)
        g.uptime_ms.append(uptime)
        g.init_ms.append(init)
        g.exporter.append(code)
        g.n += count

    @property
    def waiting(self) -> int:
        """Records grouped and not taken yet."""
        return sum(g.n for g in self._groups.values())

    # -- step 2 --------------------------------------------------------------------------------

    def take(self) -> dict[str, np.ndarray]:
        """Every record grouped so far, as arrays (``schema.PACKET_FIELDS`` + ``FLOW_FIELDS``)."""
        parts = [_decode_group(g, self.skipped) for g in self._groups.values() if g.n]
        self._groups = {}
        out = _concat(parts)
        self.records += len(out["ts_ns"])
        return out


def empty_records(n: int = 0) -> dict[str, np.ndarray]:
    return {name: np.zeros(n, dtype=dt) for name, dt in {**PACKET_FIELDS, **FLOW_FIELDS}.items()}


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if not parts:
        return empty_records()
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _uint(arr: np.ndarray, off: int, length: int) -> np.ndarray:
    """Big-endian unsigned of ``length`` (1..8) bytes at ``off`` of every row, as uint64."""
    v = arr[:, off].astype(np.uint64)
    for k in range(1, length):
        v = (v << np.uint64(8)) | arr[:, off + k]
    return v


def _record_dtype(tpl: Template) -> np.dtype:
    """A structured dtype of the template's fixed layout: unsigned big-endian words where the length is
    1, 2, 4 or 8 bytes, raw bytes otherwise."""
    names, formats, offsets = [], [], []
    off = 0
    for k, (_, _, length) in enumerate(tpl.fields):
        names.append(f"f{k}")
        formats.append(f">u{length}" if length in (1, 2, 4, 8) else f"V{length}")
        offsets.append(off)
        off += length
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": off})


def _decode_group(g: _Group, skipped: Counter) -> dict[str, np.ndarray]:
    tpl = g.template
    reclen = tpl.fixed_length or 0
    n = g.n
    pieces = list(g.pieces)
    if g.chunks:
        pieces.insert(0, (np.frombuffer(b"".join(g.chunks), dtype=np.uint8),
                          *(np.asarray(v, dtype=np.int64) for v in (g.counts, g.export_ns, g.uptime_ms, g.init_ms, g.exporter))))  # fmt: skip
    raw, counts, export_ns, uptime, init, exporter = (
        p[0] if len(pieces) == 1 else np.concatenate(p) for p in zip(*pieces, strict=True)
    )
    arr = raw.reshape(n, reclen)
    rec = raw.view(_record_dtype(tpl))  # big-endian fields read by numpy (strided reads of whole words)
    export_ns = np.repeat(export_ns, counts)
    uptime = np.repeat(uptime, counts)
    init = np.repeat(init, counts)
    out = empty_records(n)
    out["exporter"][:] = np.repeat(exporter, counts)
    at: dict[int, tuple[int, int]] = {}
    name_of: dict[int, str] = {}
    off = 0
    for k, (ie, pen, length) in enumerate(tpl.fields):
        if pen == 0 and ie not in at:
            at[ie] = (off, length)
            name_of[ie] = f"f{k}"
        off += length

    def get(ie: int, max_len: int = 8) -> np.ndarray | None:
        spot = at.get(ie)
        if spot is None or spot[1] > max_len:
            return None
        if spot[1] in (1, 2, 4, 8):
            return rec[name_of[ie]].astype(np.uint64)
        return _uint(arr, *spot)

    def put(name: str, ie: int, max_len: int = 8) -> None:
        v = get(ie, max_len)
        if v is not None:
            out[name][:] = v.astype(out[name].dtype)

    # addresses: IPv4 or IPv6 per record (a template may carry both kinds of fields)
    ok = np.zeros(n, dtype=bool)
    if at.get(IE_SRC4, (0, 0))[1] == 4 and at.get(IE_DST4, (0, 0))[1] == 4:
        out["src_lo"][:] = get(IE_SRC4)
        out["dst_lo"][:] = get(IE_DST4)
        out["ip_version"][:] = 4
        ok[:] = True
    if at.get(IE_SRC6, (0, 0))[1] == 16 and at.get(IE_DST6, (0, 0))[1] == 16:
        s_off, d_off = at[IE_SRC6][0], at[IE_DST6][0]
        six = np.ones(n, dtype=bool)
        if ok.any():  # both kinds: a record is IPv6 when its IPv4 addresses are unset
            six = (out["src_lo"] == 0) & (out["dst_lo"] == 0)
        for name, o in (("src", s_off), ("dst", d_off)):
            out[f"{name}_hi"][six] = _uint(arr, o, 8)[six]
            out[f"{name}_lo"][six] = _uint(arr, o + 8, 8)[six]
        out["ip_version"][six] = 6
        ok |= six
    put("proto", IE_PROTO, 1)
    put("sport", IE_SPORT, 2)
    put("dport", IE_DPORT, 2)
    flags = get(IE_FLAGS, 2)
    if flags is not None:
        out["tcp_flags"][:] = (flags & np.uint64(0xFF)).astype(np.uint8)
    put("input_if", IE_IN_IF, 4)
    put("output_if", IE_OUT_IF, 4)
    vlan = get(IE_VLAN, 2)
    if vlan is None:
        vlan = get(IE_DOT1Q_VLAN, 2)
    if vlan is not None:
        out["vlan"][:] = (vlan & np.uint64(0xFFF)).astype(np.uint16)
    if at.get(IE_SRC_MAC, (0, 0))[1] == 6:
        out["src_mac"][:] = get(IE_SRC_MAC)
    if at.get(IE_DST_MAC, (0, 0))[1] == 6:
        out["dst_mac"][:] = get(IE_DST_MAC)
    eth = get(IE_ETHERTYPE, 2)
    out["ethertype"][:] = np.where(out["ip_version"] == 6, 0x86DD, 0x0800).astype(np.uint16)
    if eth is not None:
        out["ethertype"][:] = np.where(eth != 0, eth, out["ethertype"]).astype(np.uint16)
    _icmp(out, get, n)
    # counters
    for name, ies in (("packets", (IE_PACKETS, IE_PACKETS_TOTAL)), ("bytes", (IE_BYTES, IE_BYTES_TOTAL))):
        for ie in ies:
            v = get(ie)
            if v is not None:
                out[name][:] = v
                break
        else:
            out[name][:] = 1 if name == "packets" else 0
    out["wirelen"][:] = np.minimum(out["bytes"], np.uint64(0xFFFFFFFF)).astype(np.uint32)
    start, end = _times(get, export_ns, uptime, init, skipped)
    out["ts_ns"][:] = start
    out["ts_end_ns"][:] = np.maximum(end, start)
    if not ok.all():
        skipped["flow-no-address"] += int(n - ok.sum())
        out = {k: v[ok] for k, v in out.items()}
    return out


def _icmp(out: dict[str, np.ndarray], get, n: int) -> None:
    proto = out["proto"]
    is4, is6 = proto == 1, proto == 58
    icmp = is4 | is6
    if icmp.any():  # (flows of other protocols only, the common chunk: nothing below applies)
        for ie in (IE_ICMP4, IE_ICMP6):
            v = get(ie, 2)
            if v is not None:
                sel = icmp & (v != 0)
                out["icmp_type"][sel] = (v[sel] >> np.uint64(8)).astype(np.uint8)
                out["icmp_code"][sel] = (v[sel] & np.uint64(0xFF)).astype(np.uint8)
        for t_ie, c_ie in ((IE_ICMP4_TYPE, IE_ICMP4_CODE), (IE_ICMP6_TYPE, IE_ICMP6_CODE)):
            t, c = get(t_ie, 1), get(c_ie, 1)
            if t is not None:
                sel = is4 if t_ie == IE_ICMP4_TYPE else is6
                out["icmp_type"][sel] = t[sel].astype(np.uint8)
                if c is not None:
                    out["icmp_code"][sel] = c[sel].astype(np.uint8)
        # NetFlow exporters put type*256+code into the destination port of ICMP flows
        no_field = icmp & (out["icmp_type"] == 0) & (out["icmp_code"] == 0) & (out["dport"] != 0)
        out["icmp_type"][no_field] = (out["dport"][no_field] >> 8).astype(np.uint8)
        out["icmp_code"][no_field] = (out["dport"][no_field] & 0xFF).astype(np.uint8)
    # ports are 0 for protocols other than TCP/UDP (as in packet tables)
    other = ~((proto == 6) | (proto == 17))
    if other.any():
        out["sport"][other] = 0
        out["dport"][other] = 0


def _times(get, export_ns, uptime, init, skipped: Counter) -> tuple[np.ndarray, np.ndarray]:
    n = len(export_ns)
    start = np.full(n, -1, dtype=np.int64)
    end = np.full(n, -1, dtype=np.int64)

    def absolute(s_ie: int, e_ie: int, unit: str) -> None:
        for ie, target in ((s_ie, start), (e_ie, end)):
            v = get(ie)
            if v is None:
                continue
            if unit == "s":
                t = v.astype(np.int64) * 10**9
            elif unit == "ms":
                t = v.astype(np.int64) * 10**6
            else:  # NTP 64-bit: seconds since 1900 . fraction
                sec = (v >> np.uint64(32)).astype(np.int64) - _NTP_EPOCH
                frac = (v & np.uint64(0xFFFFFFFF)).astype(np.float64)
                t = sec * 10**9 + (frac * 1e9 / 2**32).astype(np.int64)
            _fill_unset(target, t)

    absolute(IE_START_NS, IE_END_NS, "ntp")
    absolute(IE_START_US, IE_END_US, "ntp")
    absolute(IE_START_MS, IE_END_MS, "ms")
    absolute(IE_START_S, IE_END_S, "s")
    for ie, target in ((IE_FIRST_UP, start), (IE_LAST_UP, end)):
        v = get(ie, 4)
        if v is None:
            continue
        v = v.astype(np.int64)
        rel = uptime >= 0  # v5/v9: against the header's sysUpTime and export time (uptime wraps)
        t_rel = export_ns - ((uptime - v) % (1 << 32)) * 10**6
        known_init = (~rel) & (init >= 0)  # IPFIX: against systemInitTimeMilliseconds
        t_init = init * 10**6 + v * 10**6
        t = np.where(rel, t_rel, np.where(known_init, t_init, -1))
        _fill_unset(target, t)
    missing = start < 0
    if missing.any():
        skipped["flow-no-start-time"] += int(missing.sum())
        start[missing] = np.where(end[missing] >= 0, end[missing], export_ns[missing])
    _fill_unset(end, start)
    return start, end


def _fill_unset(target: np.ndarray, t: np.ndarray) -> None:
    """``target`` takes ``t`` where it is still unset (negative); one copy when all of it is."""
    unset = target < 0
    if unset.all():
        target[:] = t
    elif unset.any():
        target[unset] = t[unset]


def decode_datagrams(
    datagrams: Iterable[tuple[bytes, str]], cache: TemplateCache | None = None
) -> tuple[dict[str, np.ndarray], FlowDecoder]:
    """Convenience for notebooks and tests: decode (payload, exporter) pairs in one go."""
    dec = FlowDecoder(cache)
    for payload, exporter in datagrams:
        dec.add(payload, exporter)
    dec.drop_pending()
    return dec.take(), dec


# ---------------------------------------------------------------- flows spanning intervals


def split_proportional(records: dict[str, np.ndarray], interval: int) -> dict[str, np.ndarray]:
    """``flow_split = "proportional"``: a record whose start and end fall in different intervals becomes
    one record per interval, its packets and bytes shared by the time it spent in each (integer parts
    that add up exactly to the record's counts); first/last seen are clipped to each interval."""
    start, end = records["ts_ns"], records["ts_end_ns"]
    if len(start) == 0:
        return records
    step = np.int64(interval) * 10**9
    i0, i1 = start // step, np.maximum(end, start) // step
    k = (i1 - i0 + 1).astype(np.int64)
    if (k == 1).all():
        return records
    idx = np.repeat(np.arange(len(start)), k)
    piece = np.arange(len(idx)) - np.repeat(np.cumsum(k) - k, k)
    inum = i0[idx] + piece
    s, e = start[idx], end[idx]
    lo = np.maximum(s, inum * step)
    hi = np.minimum(e, (inum + 1) * step)
    dur = np.maximum(e - s, 1).astype(np.float64)
    last = piece == k[idx] - 1
    out = {name: arr[idx] for name, arr in records.items()}
    for name in ("packets", "bytes"):
        total = records[name][idx]
        upto_hi = np.where(last, total, np.floor(total.astype(np.float64) * (hi - s) / dur).astype(np.uint64))
        upto_lo = np.where(
            piece == 0, 0, np.floor(total.astype(np.float64) * (lo - s) / dur).astype(np.uint64)
        )
        upto_hi = np.minimum(upto_hi, total)
        out[name] = (upto_hi - np.minimum(upto_lo, upto_hi)).astype(np.uint64)
    out["ts_ns"] = lo
    out["ts_end_ns"] = np.where(last, e, hi - 1)
    keep = (out["packets"] > 0) | (out["bytes"] > 0)
    return {name: arr[keep] for name, arr in out.items()} if not keep.all() else out


# ---------------------------------------------------------------- flow export inside captures


class FlowRouter:
    """Takes the flow export datagrams out of decoded capture chunks and decodes them.

    A datagram is flow export when it is UDP and either the whole file is a ``flowdiff listen`` spool
    (``all_udp``) or its destination port is one of ``ports`` (``flow_ports``). Its payload is found
    behind its UDP header in the frame (whatever the link layer); a frame cut by the snap length is
    counted (``flow-export-truncated``), never half-decoded."""

    def __init__(
        self, cache: TemplateCache, *, all_udp: bool, ports: Iterable[int], split: str, interval: int
    ):
        self.decoder = FlowDecoder(cache)
        self.all_udp = all_udp
        self.ports = np.array(sorted(set(int(p) for p in ports)), dtype=np.uint16)
        self.split = split
        self.interval = interval
        self.datagrams = 0
        self._names: dict[tuple[int, int, int], str] = {}

    @property
    def skipped(self) -> Counter[str]:
        return self.decoder.skipped

    def route(
        self, batch, packets: dict[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(the packets that are not flow export, the flow records of those that are)."""
        udp = (packets["status"] == 0) & (packets["proto"] == 17)
        mask = udp if self.all_udp else udp & np.isin(packets["dport"], self.ports)
        if not mask.any():
            return packets, empty_records()
        from flowdiff._flowwalk import udp_payloads

        sel = np.flatnonzero(mask)
        self.datagrams += len(sel)
        cut = batch.caplen[sel] < batch.wirelen[sel]
        if cut.any():
            self.decoder.skipped["flow-export-truncated"] += int(cut.sum())
            sel = sel[~cut]
        poff = np.empty(len(sel), dtype=np.int64)
        plen = np.empty(len(sel), dtype=np.int64)
        udp_payloads(
            batch.buf,
            batch.offset[sel].astype(np.int64),
            batch.caplen[sel].astype(np.int64),
            packets["sport"][sel].astype(np.int64),
            packets["dport"][sel].astype(np.int64),
            poff,
            plen,
        )
        found = poff >= 0
        if not found.all():
            self.decoder.skipped["flow-export-truncated"] += int((~found).sum())
            sel, poff, plen = sel[found], poff[found], plen[found]
        names, which = self._names_of(packets, sel)
        self.decoder.add_batch(batch.buf, poff, plen, names, which)
        rest = {k: v[~mask] for k, v in packets.items()}
        return rest, self.take()

    def take(self) -> dict[str, np.ndarray]:
        records = self.decoder.take()
        return split_proportional(records, self.interval) if self.split == "proportional" else records

    def finish(self) -> dict[str, np.ndarray]:
        """At the end of a file: data sets still waiting for their template are dropped (counted)."""
        self.decoder.drop_pending()
        return self.take()

    @property
    def exporters(self) -> list[str]:
        return self.decoder.exporters

    def _names_of(self, packets: dict[str, np.ndarray], sel: np.ndarray) -> tuple[list[str], np.ndarray]:
        """The exporters (source addresses as text) of the datagrams ``sel``: distinct names, and which
        one each datagram has."""
        if len(sel) == 0:
            return [], np.zeros(0, dtype=np.int64)
        ver, hi, lo = (packets[k][sel].astype(np.uint64) for k in ("ip_version", "src_hi", "src_lo"))
        if (ver == ver[0]).all() and (hi == hi[0]).all() and (lo == lo[0]).all():
            return [self._name(int(ver[0]), int(hi[0]), int(lo[0]))], np.zeros(len(sel), dtype=np.int64)
        keys, which = np.unique(np.stack([ver, hi, lo], axis=1), axis=0, return_inverse=True)
        return [self._name(*(int(x) for x in k)) for k in keys], which.reshape(-1).astype(np.int64)

    def _name(self, version: int, hi: int, lo: int) -> str:
        key = (version, hi, lo)
        name = self._names.get(key)
        if name is None:
            import ipaddress

            if version == 4:
                name = str(ipaddress.IPv4Address(lo & 0xFFFFFFFF))
            else:
                name = str(ipaddress.IPv6Address((hi << 64) | lo))
            self._names[key] = name
        return name


def _udp_payload(frame: bytes, sport: int, dport: int) -> bytes | None:
    """The payload behind the first UDP header with these ports whose length ends the frame (up to 64
    bytes of link-layer padding or trailer after it)."""
    want = struct.pack("!HH", sport, dport)
    n = len(frame)
    p = frame.find(want, 0, min(n, 512))
    while p >= 0 and p + 8 <= n:
        ulen = (frame[p + 4] << 8) | frame[p + 5]
        if ulen >= 8 and p + ulen <= n and n - (p + ulen) <= 64:
            return frame[p + 8 : p + ulen]
        p = frame.find(want, p + 1, min(n, 512))
    return None


# ---------------------------------------------------------------- template state kept with the ledger

TEMPLATES_FILE = "_flow_templates.json"
_MAX_SNAPSHOTS = 4096


class TemplateStore:
    """``<store>/_flow_templates.json``: the templates known now, and those known when each flow file
    was first read (by capture id), so that reading a file again (a table added later, a crash before
    its ledger entry) decodes it with exactly the templates of its first reading."""

    def __init__(self, root: str | os.PathLike):
        self.path = Path(root) / TEMPLATES_FILE
        self.current = TemplateCache()
        self.starts: dict[str, str] = {}
        try:
            raw = json.loads(self.path.read_text())
            self.current = TemplateCache.from_json(raw.get("current", "{}"))
            self.starts = dict(raw.get("starts", {}))
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, AttributeError):
            self.broken = True  # unreadable: start afresh (templates come again within minutes)

    broken = False

    def for_file(self, capture_id: str) -> tuple[TemplateCache, bool]:
        """(the templates to decode this file with, whether it was read before)."""
        snap = self.starts.get(capture_id)
        if snap is not None:
            return TemplateCache.from_json(snap), True
        self.starts[capture_id] = self.current.to_json()
        while len(self.starts) > _MAX_SNAPSHOTS:
            self.starts.pop(next(iter(self.starts)))
        return self.current.copy(), False

    def done(self, cache: TemplateCache, again: bool) -> None:
        """After a file: its templates become the current ones (not after reading an old file again)."""
        if not again:
            self.current = cache
        from flowdiff.durable import atomic_write_text

        data = {"current": self.current.to_json(), "starts": self.starts}
        atomic_write_text(self.path, json.dumps(data, separators=(",", ":")))
