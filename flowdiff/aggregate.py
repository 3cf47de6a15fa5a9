"""Per-frame field arrays -> per-interval count tables (NNstat's statistical objects).

Two stages, because the two halves of the work have very different sizes:

1. ``Aggregator.add`` (hot, once per chunk of decoded frames): one compiled pass hashes every frame
   into a *fine row* keyed by the union of the base fields the configured tables need, plus the
   interval, accumulating packets, bytes, first/last seen and the time of the first SYN without ACK.
   Fine rows persist across chunks: memory grows with distinct fine rows, never with packets, and no
   numpy temporaries are made per frame.
2. ``Aggregator.finish`` (once, on the much smaller fine table): client/server roles are decided over
   all fine rows, then, a few intervals at a time, every key value is given a dense rank in its
   stored (text) order, the ranks are combined into one integer per fine row, and sorting those
   integers groups and orders each table at once. Text is made for distinct values only.

Streaming: ``Aggregator.drain`` (or ``drain_deferred``) hands over the tables of every interval but
the newest and forgets their fine rows, so a long capture needs the memory of about two intervals
(``max_rows`` caps it in any case); ``collect`` drains after each chunk and merges the parts in the
store. Remembered across drains: the first SYN of each TCP connection (``max_syns`` of them), so a
connection that continues past a drain keeps the roles its SYN decided. A SYN seen only *after* a
drain cannot change the roles of rows already handed over (a time-ordered capture has its SYNs first).

Client/server rule (``client``, ``server``, ``service_port`` and their ``_label``/``_net`` forms):

* TCP: the side that sent the first SYN without ACK is the client, the SYN's destination port is the
  service port. SYNs are remembered for the whole Aggregator (all chunks and intervals).
* UDP, and TCP connections whose SYN was not seen: a port below 1024 or listed in ``service_ports``
  is the service; when both or neither qualify, the lower port is; equal ports make the sender the
  client. A client's ephemeral port can only become the service port when the SYN was missed and
  the server's own port is a higher one that is neither below 1024 nor listed (list it).
* Anything else: the sender is the client and ``service_port`` is 0, except ICMP/ICMPv6 echo replies
  (type 0 / 129), whose sender is the server.

Which frames a table counts: a table with any IP-only key (``schema.is_ip_table``) counts decoded IP
frames (status OK); any other table (e.g. ``link``) also counts NOT_IP and BAD_IP frames, whose IP
fields read as 0. UNKNOWN_LINKTYPE and TRUNCATED_LINK frames are counted nowhere.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from flowdiff._jit import engaged, njit
from flowdiff._lazy import lazy
from flowdiff._prefetch import prefetch1, prefetch2
from flowdiff.config import TableConfig
from flowdiff.errors import ConfigError
from flowdiff.netmap import (
    NetworkMap,
    mac_array,
    mask_address,
    network_array,
)
from flowdiff.schema import (
    KEY_FIELDS,
    METRICS,
    PACKET_FIELDS,
    STATIONS,
    STATIONS_KEYS,
    DecodeStatus,
    is_ip_table,
    parse_net_key,
    table_schema,
)

pc = lazy("pyarrow.compute")

__all__ = ["Aggregator", "Drained", "aggregate"]

# ---------------------------------------------------------------------------------------------
# fine rows: dense uint64 rows in insertion order, found through an open-addressing index of row
# numbers. The index only holds the rows made since the newest interval began: captures are
# time-ordered, so it stays small enough for the CPU cache however long the capture is. A frame
# arriving late for an older interval just starts a second fine row for its key; stage 2 merges such
# duplicates like any other rows of a group, so counts are exact in any order.
#   0 hash | 1..9 key words | 10 packets | 11 bytes | 12 first | 13 last | 14 first SYN | 15 unused
# key words:
#   k0 src_hi  k1 src_lo  k2 dst_hi  k3 dst_lo  k4 src_mac  k5 dst_mac
#   k6 proto | sport<<8 | dport<<24 | icmp_type<<40 | icmp_code<<48 | ip_version<<56 | status<<60
#   k7 vlan | ethertype<<16 | tcp_flags<<32
#   k8 interval number (floor(ts_ns / interval_ns))
# Timestamps are stored with the sign bit flipped so that unsigned min/max order equals signed order.
_NKEY = 9
_ROW = 16
_C_PKT, _C_BYTES, _C_FIRST, _C_LAST, _C_SYN = 10, 11, 12, 13, 14

_U = np.uint64
_SIGN = _U(1 << 63)
_NOSYN = _U((1 << 64) - 1)  # flipped INT64_MAX
_SEED = _U(0x9E3779B97F4A7C15)
_MULT = _U(0xFF51AFD7ED558CCD)
# odd multipliers for the key words: the products are independent, so they run in parallel
_C0, _C1, _C2, _C3 = (
    _U(0xA0761D6478BD642F),
    _U(0xE7037ED1A0B428DB),
    _U(0x8EBC6AF09C88C6E3),
    _U(0x589965CC75374CC3),
)
_C4, _C5, _C6, _C7 = (
    _U(0x1D8E4E27C47D124F),
    _U(0xD6E8FEB86659FD93),
    _U(0x9FB21C651E98DF25),
    _U(0xC2B2AE3D27D4EB4F),
)
_C8 = _U(0x165667B19E3779F9)
_S29 = _U(29)
_S32 = _U(32)
_ONE = _U(1)
_ZERO = _U(0)

# (word, shift, width) of each small field inside k6/k7
_FIELD_BITS: dict[str, tuple[int, int, int]] = {
    "proto": (6, 0, 8),
    "sport": (6, 8, 16),
    "dport": (6, 24, 16),
    "icmp_type": (6, 40, 8),
    "icmp_code": (6, 48, 8),
    "ip_version": (6, 56, 4),
    "status": (6, 60, 3),
    "vlan": (7, 0, 16),
    "ethertype": (7, 16, 16),
    "tcp_flags": (7, 32, 8),
    "exporter": (7, 40, 22),  # flow rows only (add_flows): 1-based exporter code, 0 for packets
}
# flow rows (add_flows) only: k7 bit 62 marks a flow row (never merged with a packet row in stage 1),
# k6 bit 63 says its source is the client whatever the ports say (Zeek's originator), slot 15 holds
# input_if << 32 | output_if.
_FLOW_MARK = _U(1 << 62)
_FORCED_CLIENT = _U(1 << 63)
_C_IFS = 15
_ROLE_KEYS = {"client", "server", "service_port", "client_label", "server_label"}
_ROLE_NEEDS = ("src", "dst", "proto", "sport", "dport", "icmp_type")
_COUNTED_STATUSES_IP = (DecodeStatus.OK,)
_COUNTED_STATUSES_LINK = (DecodeStatus.OK, DecodeStatus.NOT_IP, DecodeStatus.BAD_IP)
_INT64_MAX = np.iinfo(np.int64).max
_INT64_MIN = np.iinfo(np.int64).min
_HI31 = np.int64(0x7FFFFFFF << 32)
_LO32 = np.int64(0xFFFFFFFF)


@njit(inline="always")
def _mix(h, w):
    h = (h ^ w) * _MULT
    return h ^ (h >> _S32)


@njit(inline="always")
def _finalize(h):
    h ^= h >> _S29
    h *= _MULT
    h ^= h >> _S32
    return h | _ONE


@njit(inline="always")
def _l4_word(proto, sport, dport, icmp_type, icmp_code, ip_version):
    """Key word 6 of an IP frame or a flow record: protocol, ports, ICMP type and code, IP version."""
    return (
        _U(proto)
        | (_U(sport) << _U(8))
        | (_U(dport) << _U(24))
        | (_U(icmp_type) << _U(40))
        | (_U(icmp_code) << _U(48))
        | (_U(ip_version & 15) << _U(56))
    )


@njit(inline="always")
def _key_sum(k0, k1, k2, k3, k4, k5, k6, k7, k8):
    """The key words weighted by odd constants, before :func:`_finalize` (flow records add their
    interfaces' word)."""
    return k0 * _C0 + k1 * _C1 + k2 * _C2 + k3 * _C3 + k4 * _C4 + k5 * _C5 + k6 * _C6 + k7 * _C7 + k8 * _C8


@njit(inline="always")
def _put_key(kq, k0, k1, k2, k3, k4, k5, k6, k7, k8, h, syn):
    kq[0] = k0
    kq[1] = k1
    kq[2] = k2
    kq[3] = k3
    kq[4] = k4
    kq[5] = k5
    kq[6] = k6
    kq[7] = k7
    kq[8] = k8
    kq[_K_H] = h
    kq[_K_SYN] = syn


def _row_array(n: int) -> np.ndarray:
    """``n`` uninitialised fine rows, each on two whole cache lines: a large ``np.empty`` starts 16 bytes
    past a page boundary (malloc's header), which spreads every 128-byte row over three lines."""
    flat = np.empty(n * _ROW + 8, dtype=np.uint64)
    skip = (-flat.ctypes.data % 64) // 8
    return flat[skip : skip + n * _ROW].reshape(n, _ROW)


# Frames per block of _ingest: the keys of a block are made first and the index slots and rows they
# will read are asked for (prefetched), so that the cache misses of a whole block overlap; 64 frames
# of keys (6 KiB) and the lines they name stay in L1/L2.
_BLOCK = 64
_K_H, _K_SYN, _K_COUNTED = 9, 10, 11  # scratch slots of a block's keys after k0..k8


@njit(cache=True, nogil=True)
def _ingest(
    index,
    rows,
    used,
    base,
    newest,
    start,
    ts_ns,
    wirelen,
    status,
    ethertype,
    src_mac,
    dst_mac,
    vlan,
    ip_version,
    src_hi,
    src_lo,
    dst_hi,
    dst_lo,
    proto,
    sport,
    dport,
    icmp_type,
    icmp_code,
    tcp_flags,
    wm,
    interval_ns,
    count_mask,
    status_counts,
):
    """Hash frames ``start..`` into the fine rows; rows ``base..used`` are in the index, ``newest``
    is the newest interval number seen. Stops early (returning the state reached) when the rows are
    full or the index half full, so that the caller can grow them and resume.

    A block of frames at a time: (1) make every key and hash of the block and prefetch its home index
    slot, (2) prefetch the row each home slot names, (3) count the frames in order. Passes 1 and 2
    read and change no state (a hint for a slot that pass 3 rewrites is merely wasted), so the counts
    are exactly those of a frame-by-frame loop."""
    n = ts_ns.shape[0]
    cmask = _U(index.shape[0] - 1)
    half = index.shape[0] // 2
    nrows = rows.shape[0]
    use_src = wm[0] != _ZERO
    use_dst = wm[2] != _ZERO
    use_smac = wm[4] != _ZERO
    use_dmac = wm[5] != _ZERO
    m6 = wm[6]
    m7 = wm[7]
    cur = np.int64(0)
    cur_lo = np.int64(1)  # empty range: the first frame computes its interval
    cur_hi = np.int64(0)
    keys = np.empty((_BLOCK, 12), dtype=np.uint64)  # k0..k8, hash, first-SYN time, counted
    i = start
    while i < n:
        e = min(i + _BLOCK, n)
        # pass 1: keys and hashes; hint the home index slots
        for q in range(i, e):
            kq = keys[q - i]
            st = status[q]
            if st >= 64 or ((count_mask >> _U(st)) & _ONE) == _ZERO:
                kq[_K_COUNTED] = _ZERO
                continue
            ok = st == 0
            k0 = _ZERO
            k1 = _ZERO
            k2 = _ZERO
            k3 = _ZERO
            k4 = _ZERO
            k5 = _ZERO
            if use_src and (ok or ethertype[q] == 0x0806):  # ARP: the sender address (stations)
                k0 = src_hi[q]
                k1 = src_lo[q]
            if ok and use_dst:
                k2 = dst_hi[q]
                k3 = dst_lo[q]
            if use_smac:
                k4 = src_mac[q]
            if use_dmac:
                k5 = dst_mac[q]
            k6 = _U(st & 7) << _U(60)
            k7 = _U(vlan[q]) | (_U(ethertype[q]) << _U(16))
            if ok:
                k6 |= _l4_word(proto[q], sport[q], dport[q], icmp_type[q], icmp_code[q], ip_version[q])
                k7 |= _U(tcp_flags[q]) << _U(32)
            k6 &= m6
            k7 &= m7
            ts = ts_ns[q]
            if cur_lo <= ts < cur_hi:  # a 64-bit division costs more than the rest of the key
                inum = cur
            else:
                inum = ts // interval_ns
                cur = inum
                cur_lo = inum * interval_ns
                cur_hi = cur_lo + interval_ns
            k8 = _U(inum)
            h = _finalize(_key_sum(k0, k1, k2, k3, k4, k5, k6, k7, k8))
            syn = _NOSYN
            if ok and proto[q] == 6 and (tcp_flags[q] & 0x12) == 0x02:
                syn = _U(ts) ^ _SIGN
            _put_key(kq, k0, k1, k2, k3, k4, k5, k6, k7, k8, h, syn)
            kq[_K_COUNTED] = _ONE
            prefetch1(index, np.int64(h & cmask))
        _hint_rows(index, rows, keys, e - i)  # pass 2: both cache lines of the rows the home slots name
        # pass 3: count, in frame order
        for q in range(i, e):
            if used >= nrows or used - base >= half:
                return q, used, base, newest
            st = status[q]
            status_counts[st] += 1
            kq = keys[q - i]
            if kq[_K_COUNTED] == _ZERO:
                continue
            k8 = kq[8]
            inum = np.int64(k8)
            if inum > newest:
                newest = inum
                index[:] = -1
                base = used
            tsf = _U(ts_ns[q]) ^ _SIGN
            used = _count(index, rows, used, kq, _ONE, _U(wirelen[q]), tsf, tsf, _ZERO)
        i = e
    return i, used, base, newest


@njit(inline="always")
def _count(index, rows, used, kq, pk, by, tsf, tef, k15):
    """Adds one keyed frame or flow record (``kq``: k0..k8, hash, first-SYN time) to its fine row, or
    starts the row at ``used``; returns the new ``used``. Shared by ``_ingest`` and ``_ingest_flows``:
    a packet adds 1 and its wire length, first/last seen its time, and has no interfaces (k15 0)."""
    cmask = _U(index.shape[0] - 1)
    h = kq[_K_H]
    j = h & cmask
    while True:
        r = index[j]
        if r < 0:
            index[j] = used
            row = rows[used]
            row[0] = h
            row[1] = kq[0]
            row[2] = kq[1]
            row[3] = kq[2]
            row[4] = kq[3]
            row[5] = kq[4]
            row[6] = kq[5]
            row[7] = kq[6]
            row[8] = kq[7]
            row[9] = kq[8]
            row[10] = pk
            row[11] = by
            row[12] = tsf
            row[13] = tef
            row[14] = kq[_K_SYN]
            row[15] = k15
            return used + 1
        row = rows[r]
        if (
            row[0] == h
            and row[1] == kq[0]
            and row[2] == kq[1]
            and row[3] == kq[2]
            and row[4] == kq[3]
            and row[5] == kq[4]
            and row[6] == kq[5]
            and row[7] == kq[6]
            and row[8] == kq[7]
            and row[9] == kq[8]
            and row[15] == k15
        ):
            row[10] += pk
            row[11] += by
            if tsf < row[12]:
                row[12] = tsf
            if tef > row[13]:
                row[13] = tef
            if kq[_K_SYN] < row[14]:
                row[14] = kq[_K_SYN]
            return used
        j = (j + _ONE) & cmask


@njit(inline="always")
def _hint_rows(index, rows, keys, nb):
    """Pass 2 of a block: hint both cache lines of the row each home index slot names."""
    cmask = _U(index.shape[0] - 1)
    for q in range(nb):
        kq = keys[q]
        if kq[_K_COUNTED] != _ZERO:
            r = index[np.int64(kq[_K_H] & cmask)]
            if r >= 0:
                prefetch2(rows, np.int64(r), 0)
                prefetch2(rows, np.int64(r), 8)


@njit(cache=True, nogil=True)
def _ingest_flows(
    index, rows, used, base, newest, start, ts_ns, ts_end, pk, by, status, ethertype, src_mac, dst_mac,
    vlan, ip_version, src_hi, src_lo, dst_hi, dst_lo, proto, sport, dport, icmp_type, icmp_code,
    tcp_flags, exporter, input_if, output_if, forced, wm, ifs_mask, interval_ns, count_mask, status_counts,
):  # fmt: skip
    """:func:`_ingest` for flow records: each adds its own packet and byte counts, first/last seen are
    the flow's start and end, and the rows carry the flow mark, exporter and interfaces (slot 15).
    A block of records at a time, as ``_ingest`` (keys and hints, row hints, then counting in order)."""
    n = ts_ns.shape[0]
    cmask = _U(index.shape[0] - 1)
    half = index.shape[0] // 2
    nrows = rows.shape[0]
    use_src = wm[0] != _ZERO
    use_dst = wm[2] != _ZERO
    use_smac = wm[4] != _ZERO
    use_dmac = wm[5] != _ZERO
    m6 = wm[6]
    m7 = wm[7]
    keys = np.empty((_BLOCK, 12), dtype=np.uint64)
    k15s = np.empty(_BLOCK, dtype=np.uint64)
    i = start
    while i < n:
        e = min(i + _BLOCK, n)
        for q in range(i, e):  # pass 1: keys and hashes; hint the home index slots
            kq = keys[q - i]
            st = status[q]
            if st >= 64 or ((count_mask >> _U(st)) & _ONE) == _ZERO:
                kq[_K_COUNTED] = _ZERO
                continue
            ok = st == 0
            k0 = _ZERO
            k1 = _ZERO
            k2 = _ZERO
            k3 = _ZERO
            k4 = _ZERO
            k5 = _ZERO
            if ok and use_src:
                k0 = src_hi[q]
                k1 = src_lo[q]
            if ok and use_dst:
                k2 = dst_hi[q]
                k3 = dst_lo[q]
            if use_smac:
                k4 = src_mac[q]
            if use_dmac:
                k5 = dst_mac[q]
            k6 = _U(st & 7) << _U(60)
            k7 = _U(vlan[q]) | (_U(ethertype[q]) << _U(16)) | ((exporter[q] & _U(0x3FFFFF)) << _U(40))
            if ok:
                k6 |= _l4_word(proto[q], sport[q], dport[q], icmp_type[q], icmp_code[q], ip_version[q])
                k7 |= _U(tcp_flags[q]) << _U(32)
            k6 &= m6
            k7 &= m7
            k7 |= _FLOW_MARK
            if forced[q] != 0:
                k6 |= _FORCED_CLIENT
            k15 = ((input_if[q] << _S32) | (output_if[q] & _U(0xFFFFFFFF))) & ifs_mask
            k8 = _U(ts_ns[q] // interval_ns)
            h = _finalize(_key_sum(k0, k1, k2, k3, k4, k5, k6, k7, k8) + k15 * _SEED)
            syn = _NOSYN
            if ok and proto[q] == 6 and (tcp_flags[q] & 0x02) != 0:
                syn = _U(ts_ns[q]) ^ _SIGN
            _put_key(kq, k0, k1, k2, k3, k4, k5, k6, k7, k8, h, syn)
            kq[_K_COUNTED] = _ONE
            k15s[q - i] = k15
            prefetch1(index, np.int64(h & cmask))
        _hint_rows(index, rows, keys, e - i)  # pass 2
        for q in range(i, e):  # pass 3: count, in record order
            if used >= nrows or used - base >= half:
                return q, used, base, newest
            st = status[q]
            status_counts[st] += 1
            kq = keys[q - i]
            if kq[_K_COUNTED] == _ZERO:
                continue
            inum = np.int64(kq[8])
            if inum > newest:
                newest = inum
                index[:] = -1
                base = used
            ts = ts_ns[q]
            te = ts_end[q]
            tsf = _U(ts) ^ _SIGN
            tef = _U(te if te > ts else ts) ^ _SIGN
            used = _count(index, rows, used, kq, pk[q], by[q], tsf, tef, k15s[q - i])
        i = e
    return i, used, base, newest


@njit(cache=True, nogil=True)
def _reindex(rows, base, used, index):
    """Fill an empty (larger) index with rows ``base..used``."""
    cmask = _U(index.shape[0] - 1)
    for r in range(base, used):
        j = rows[r, 0] & cmask
        while index[j] >= 0:
            j = (j + _ONE) & cmask
        index[j] = r


@njit(cache=True, nogil=True)
def _split_rows(inum, base, cutoff):
    """A drain's rows: (those of intervals below ``cutoff``, the others, both in row order; the order
    that sorts the first by interval, stably, or nothing when they are in that order already; how many
    of the rows below ``base`` stay). A counting sort: the drained intervals are a few dozen."""
    n = inum.shape[0]
    ns = 0
    stay_below_base = 0
    lo = _INT64_MAX
    hi = _INT64_MIN
    in_order = True
    for r in range(n):
        v = inum[r]
        if v < cutoff:
            if ns and v < hi:
                in_order = False
            lo = min(lo, v)
            hi = max(hi, v)
            ns += 1
        elif r < base:
            stay_below_base += 1
    sel = np.empty(ns, dtype=np.int64)
    kept = np.empty(n - ns, dtype=np.int64)
    a = 0
    b = 0
    for r in range(n):
        if inum[r] < cutoff:
            sel[a] = r
            a += 1
        else:
            kept[b] = r
            b += 1
    if in_order:
        return sel, kept, np.empty(0, dtype=np.int64), stay_below_base
    if hi - lo > 4 * ns + 1024:  # intervals far apart (a late record from long ago): a comparison sort
        vals = np.empty(ns, dtype=np.int64)
        for t in range(ns):
            vals[t] = inum[sel[t]]
        return sel, kept, np.argsort(vals, kind="mergesort"), stay_below_base
    pos = np.zeros(hi - lo + 2, dtype=np.int64)
    for t in range(ns):
        pos[inum[sel[t]] - lo + 1] += 1
    for k in range(1, pos.shape[0]):
        pos[k] += pos[k - 1]
    order = np.empty(ns, dtype=np.int64)
    for t in range(ns):
        k = inum[sel[t]] - lo
        order[pos[k]] = t
        pos[k] += 1
    return sel, kept, order, stay_below_base


@njit(cache=True, nogil=True)
def _keep_rows(rows, kept):
    """Move the rows ``kept`` (increasing) to the front, in place: no temporary copy of them."""
    for t in range(kept.shape[0]):
        r = kept[t]
        if r != t:
            for c in range(rows.shape[1]):
                rows[t, c] = rows[r, c]


@njit(cache=True, nogil=True)
def _group_triples(a0, a1, a2, b0, b1, b2):
    """Distinct values among the triples (a0, a1, a2)[i] followed by (b0, b1, b2)[i]: returns the
    group of each of the 2n triples and the distinct triples (g, 3), in order of first appearance.

    Both halves are read in place (no concatenation), and group keys are kept in a compact table
    that grows with the number of groups, so it stays in cache when values repeat (addresses, MACs).
    Pass ``b*`` of length 0 for a single list; pass one array three times for single words."""
    na = a0.shape[0]
    n = na + b0.shape[0]
    cap = 1024
    while cap < n // 4 and cap < 1 << 16:  # values repeat: a quarter of the rows saves most re-hashing
        cap *= 2
    slots = np.full(2 * cap, -1, dtype=np.int64)
    gkeys = np.empty((cap, 3), dtype=np.uint64)
    ghash = np.empty(cap, dtype=np.uint64)
    inverse = np.empty(n, dtype=np.int64)
    g = 0
    for i in range(n):
        if i < na:
            k0, k1, k2 = a0[i], a1[i], a2[i]
        else:
            k0, k1, k2 = b0[i - na], b1[i - na], b2[i - na]
        h = _finalize(k0 * _C0 + k1 * _C1 + k2 * _C2)  # independent products: shorter than chained mixes
        smask = np.int64(slots.shape[0] - 1)
        j = np.int64(h) & smask
        while True:
            s = slots[j]
            if s < 0:
                if g == cap:
                    cap *= 2
                    nk = np.empty((cap, 3), dtype=np.uint64)
                    nk[:g] = gkeys[:g]
                    gkeys = nk
                    nh = np.empty(cap, dtype=np.uint64)
                    nh[:g] = ghash[:g]
                    ghash = nh
                    slots = np.full(2 * cap, -1, dtype=np.int64)
                    smask = np.int64(slots.shape[0] - 1)
                    for q in range(g):
                        jj = np.int64(ghash[q]) & smask
                        while slots[jj] >= 0:
                            jj = (jj + 1) & smask
                        slots[jj] = q
                    j = np.int64(h) & smask
                    while slots[j] >= 0:
                        j = (j + 1) & smask
                slots[j] = g
                gkeys[g, 0] = k0
                gkeys[g, 1] = k1
                gkeys[g, 2] = k2
                ghash[g] = h
                inverse[i] = g
                g += 1
                break
            if ghash[s] == h and gkeys[s, 0] == k0 and gkeys[s, 1] == k1 and gkeys[s, 2] == k2:
                inverse[i] = s
                break
            j = (j + 1) & smask
    return inverse, gkeys[:g]


@njit(cache=True, nogil=True)
def _take_strings(offsets, data, idx):
    """Arrow string gather: the values ``idx`` of a string array given by its buffers. Strings are
    copied in fixed steps of 16 bytes (a loop of known length the compiler unrolls; the bytes written
    past a string's end are overwritten by the next one, or fall in the slack at the end)."""
    m = idx.shape[0]
    out_off = np.empty(m + 1, dtype=np.int64)
    out_off[0] = 0
    for t in range(m):
        k = idx[t]
        out_off[t + 1] = out_off[t] + offsets[k + 1] - offsets[k]
    total = out_off[m]
    out = np.empty(total + 16, dtype=np.uint8)
    nd = _U(data.shape[0])
    for t in range(m):
        k = idx[t]
        # unsigned indices: no negative-index wraparound test per byte, which keeps the copy a loop
        a = _U(offsets[k])
        ln = _U(offsets[k + 1]) - a
        o = _U(out_off[t])
        if a + ln + _U(16) <= nd:
            c = _ZERO
            while c < ln:
                for j in range(16):
                    jj = _U(j)
                    out[o + c + jj] = data[a + c + jj]
                c += _U(16)
        else:  # near the end of the data: no reading past it
            for c in range(ln):
                out[o + _U(c)] = data[a + _U(c)]
    return out_off, out[:total]


@njit(cache=True, nogil=True)
def _merge_text(off_a, data_a, off_b, data_b):
    """Merge of two string lists each in byte order: True where the merged list takes from ``a``."""
    na = off_a.shape[0] - 1
    nb = off_b.shape[0] - 1
    out = np.empty(na + nb, dtype=np.bool_)
    i = 0
    j = 0
    for t in range(na + nb):
        if j >= nb:
            take_a = True
        elif i >= na:
            take_a = False
        else:
            a0, a1, b0, b1 = off_a[i], off_a[i + 1], off_b[j], off_b[j + 1]
            la, lb = a1 - a0, b1 - b0
            c = 0
            for k in range(min(la, lb)):
                x, y = data_a[a0 + k], data_b[b0 + k]
                if x != y:
                    c = -1 if x < y else 1
                    break
            if c == 0:
                c = -1 if la < lb else (1 if la > lb else 0)
            take_a = c <= 0
        out[t] = take_a
        if take_a:
            i += 1
        else:
            j += 1
    return out


@njit(inline="always")
def _put_dec(out, pos, o):
    """Decimal text of 0 <= o < 256 at ``out[pos:]``; returns the new position."""
    if o >= 100:
        out[pos] = 48 + o // 100
        pos += 1
    if o >= 10:
        out[pos] = 48 + (o // 10) % 10
        pos += 1
    out[pos] = 48 + o % 10
    return pos + 1


@njit(inline="always")
def _put_quad(out, pos, x):
    for k in range(4):
        pos = _put_dec(out, pos, (x >> (24 - 8 * k)) & 0xFF)
        if k < 3:
            out[pos] = 46  # '.'
            pos += 1
    return pos


@njit(cache=True, nogil=True)
def _address_chars(ver, hi, lo, offsets, out):
    """Canonical text of every address straight into one Arrow string buffer: dotted quads for
    version 4, ``inet_ntop``'s RFC 5952 text for version 6 (longest run of two or more zero groups,
    the first of equal ones, as ``::``; the IPv4-compatible ``::a.b.c.d`` and mapped
    ``::ffff:a.b.c.d`` forms as glibc writes them), empty text for anything else."""
    pos = 0
    words = np.empty(8, dtype=np.int64)
    for i in range(ver.shape[0]):
        offsets[i] = pos
        if ver[i] == 4:
            pos = _put_quad(out, pos, np.int64(lo[i] & _U(0xFFFFFFFF)))
        elif ver[i] == 6:
            h = hi[i]
            w = lo[i]
            for g in range(4):
                words[g] = np.int64((h >> _U(48 - 16 * g)) & _U(0xFFFF))
                words[4 + g] = np.int64((w >> _U(48 - 16 * g)) & _U(0xFFFF))
            best, best_len, cur, cur_len = -1, 0, -1, 0
            for g in range(8):
                if words[g] == 0:
                    if cur < 0:
                        cur, cur_len = g, 1
                    else:
                        cur_len += 1
                else:
                    if cur >= 0 and cur_len > best_len:
                        best, best_len = cur, cur_len
                    cur = -1
            if cur >= 0 and cur_len > best_len:
                best, best_len = cur, cur_len
            if best_len < 2:
                best = -1
            g = 0
            while g < 8:
                if best >= 0 and best <= g < best + best_len:
                    if g == best:
                        out[pos] = 58  # ':'
                        pos += 1
                    g += 1
                    continue
                if g != 0:
                    out[pos] = 58
                    pos += 1
                if g == 6 and best == 0 and (best_len == 6 or (best_len == 5 and words[5] == 0xFFFF)):
                    pos = _put_quad(out, pos, (words[6] << 16) | words[7])
                    break
                x = words[g]
                started = False
                for sh in range(12, -4, -4):
                    d = (x >> sh) & 15
                    if d or started or sh == 0:
                        out[pos] = 48 + d if d < 10 else 87 + d
                        pos += 1
                        started = True
                g += 1
            if best >= 0 and best + best_len == 8:
                out[pos] = 58
                pos += 1
    offsets[ver.shape[0]] = pos
    return pos


def _address_arrow(ver: np.ndarray, hi: np.ndarray, lo: np.ndarray) -> pa.Array:
    """``netmap.address_array`` made in one compiled pass (no Python string per IPv6 address, no
    object array: Arrow builds those through pandas, whose import alone costs a small collect 0.3 s)."""
    n = len(ver)
    offsets = np.empty(n + 1, dtype=np.int32)
    out = np.empty(45 * n, dtype=np.uint8)
    used = _address_chars(
        np.ascontiguousarray(ver, dtype=np.uint64),
        np.ascontiguousarray(hi, dtype=np.uint64),
        np.ascontiguousarray(lo, dtype=np.uint64),
        offsets,
        out,
    )
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(out[:used]))


@njit(inline="always")
def _endpoint_order(shi, slo, sp, dhi, dlo, dp):
    """True when the source endpoint sorts first: both directions of a connection share one key."""
    if shi != dhi:
        return shi < dhi
    if slo != dlo:
        return slo < dlo
    return sp <= dp


@njit(cache=True, nogil=True)
def _syn_roles(ver, shi, slo, sport, dhi, dlo, dport, proto, syn, out):
    """For TCP rows of connections whose SYN (without ACK) was seen, set ``out`` (client_is_src) from
    the side that sent the first one. Two passes: connections with a SYN into a small hash table,
    then every TCP row looks its connection up."""
    n = ver.shape[0]
    nsyn = 0
    for i in range(n):
        if proto[i] == 6 and syn[i] != _INT64_MAX:
            nsyn += 1
    if nsyn == 0:
        return
    cap = 1024
    while cap < 2 * nsyn:
        cap *= 2
    mask = cap - 1
    slots = np.full(cap, -1, dtype=np.int64)
    keys = np.empty((nsyn, 7), dtype=np.uint64)
    syn_a = np.full(nsyn, _INT64_MAX, dtype=np.int64)
    syn_b = np.full(nsyn, _INT64_MAX, dtype=np.int64)
    g = 0
    k = np.empty(7, dtype=np.uint64)
    for phase in range(2):
        for i in range(n):
            if proto[i] != 6:
                continue
            if phase == 0 and syn[i] == _INT64_MAX:
                continue
            a_first = _endpoint_order(shi[i], slo[i], sport[i], dhi[i], dlo[i], dport[i])
            k[0] = ver[i]
            if a_first:
                k[1], k[2], k[3], k[4], k[5], k[6] = shi[i], slo[i], sport[i], dhi[i], dlo[i], dport[i]
            else:
                k[1], k[2], k[3], k[4], k[5], k[6] = dhi[i], dlo[i], dport[i], shi[i], slo[i], sport[i]
            h = _SEED
            for c in range(7):
                h = _mix(h, k[c])
            j = np.int64(h & _U(mask))
            while True:
                s = slots[j]
                if s < 0:
                    if phase == 0:
                        slots[j] = g
                        keys[g, :] = k
                        s = g
                        g += 1
                    break
                same = True
                for c in range(7):
                    if keys[s, c] != k[c]:
                        same = False
                        break
                if same:
                    break
                j = (j + 1) & mask
            if s < 0:
                continue
            if phase == 0:
                if a_first:
                    syn_a[s] = min(syn_a[s], syn[i])
                else:
                    syn_b[s] = min(syn_b[s], syn[i])
            elif syn_a[s] != syn_b[s]:  # not a simultaneous open at the same instant
                out[i] = a_first == (syn_a[s] < syn_b[s])


@njit(inline="always")
def _conn_hash(w0, w1, w2, w3, w4):
    return _finalize(w0 * _C0 + w1 * _C1 + w2 * _C2 + w3 * _C3 + w4 * _C4)


@njit(inline="always")
def _conn_key(shi, slo, dhi, dlo, k6):
    """(source is side a, hash, the 5 words of the connection's key) of a TCP fine row: both
    directions of a connection share the key (sides a/b in ``_endpoint_order``)."""
    ver = (k6 >> _U(56)) & _U(15)
    sp = (k6 >> _U(8)) & _U(0xFFFF)
    dp = (k6 >> _U(24)) & _U(0xFFFF)
    a_first = _endpoint_order(shi, slo, sp, dhi, dlo, dp)
    if a_first:
        w0, w1, w2, w3, w4 = shi, slo, dhi, dlo, (ver << _S32) | (sp << _U(16)) | dp
    else:
        w0, w1, w2, w3, w4 = dhi, dlo, shi, slo, (ver << _S32) | (dp << _U(16)) | sp
    h = _conn_hash(w0, w1, w2, w3, w4)
    return a_first, h, w0, w1, w2, w3, w4


@njit(inline="always")
def _conn_find(slots, keys, h, w0, w1, w2, w3, w4, new):
    """Open-addressing lookup of a connection key: its entry, or ``new`` (>= 0: inserted as that
    entry; -1: not inserted) when absent. A slot holds the entry and 31 bits of the hash, so a probe
    reads the key only when those match (a miss touches one cache line)."""
    mask = _U(slots.shape[0] - 1)
    tag = np.int64(h >> _U(33)) << 32
    j = h & mask
    while True:
        v = slots[j]
        if v < 0:
            if new >= 0:
                slots[j] = tag | new
                keys[new, 0], keys[new, 1], keys[new, 2], keys[new, 3], keys[new, 4] = w0, w1, w2, w3, w4
            return new
        if (v & _HI31) == tag:
            s = v & _LO32
            if (
                keys[s, 0] == w0
                and keys[s, 1] == w1
                and keys[s, 2] == w2
                and keys[s, 3] == w3
                and keys[s, 4] == w4
            ):
                return s
        j = (j + _ONE) & mask


# Connection keys of a block (_conn_block): hash, w0..w4, side (0: b, 1: a, _NOCONN: not looked up), SYN
_NOCONN = _U(2)


@njit(inline="always")
def _conn_put(blk, q, rows, r, slots):
    """Row ``r``'s connection key into ``blk[q]`` and a hint for its home slot (TCP rows only)."""
    k6 = rows[r, 7]
    if (k6 & _U(0xFF)) != _U(6):
        blk[q, 6] = _NOCONN
        return
    af, h, w0, w1, w2, w3, w4 = _conn_key(rows[r, 1], rows[r, 2], rows[r, 3], rows[r, 4], k6)
    blk[q, 0], blk[q, 1], blk[q, 2], blk[q, 3], blk[q, 4], blk[q, 5] = h, w0, w1, w2, w3, w4
    blk[q, 6] = _ONE if af else _ZERO
    blk[q, 7] = rows[r, _C_SYN]
    prefetch1(slots, np.int64(h & _U(slots.shape[0] - 1)))


@njit(inline="always")
def _conn_block(slots, keys, blk, nb, g, insert, found):
    """The connections ``blk[:nb]`` looked up (and inserted as entries ``g..`` when ``insert``), in
    order: ``found[q]`` is the entry (-1: not a connection, or absent). Returns the new entry count.
    The home slots were hinted by ``_conn_put``; the keys those slots name are hinted before the
    probes, so the cache misses of a block overlap (hints change no value)."""
    mask = _U(slots.shape[0] - 1)
    for q in range(nb):
        if blk[q, 6] != _NOCONN:
            v = slots[np.int64(blk[q, 0] & mask)]
            if v >= 0:
                prefetch2(keys, np.int64(v & _LO32), 0)
    for q in range(nb):
        if blk[q, 6] == _NOCONN:
            found[q] = -1
            continue
        s = _conn_find(slots, keys, blk[q, 0], blk[q, 1], blk[q, 2], blk[q, 3], blk[q, 4], blk[q, 5],
                       g if insert else -1)  # fmt: skip
        if insert and s == g:
            g += 1
        found[q] = s
    return g


@njit(inline="always")
def _is_service(port, qualifies):
    """``port`` < 1024 or a configured service port (the port rule's qualification): one load from
    the table of :func:`_service_table`. Not a search: whether a port qualifies flips from row to row
    (a reply's source port is the request's destination), and a branch per port mispredicted that
    often cost the role kernel 35-45 ns a row."""
    return qualifies[port]


@njit(inline="always")
def _port_role(k6, qualifies):
    """client_is_src of a fine row by the port rule (TCP/UDP) and the ICMP echo rule (``_port_roles``)."""
    proto = k6 & _U(0xFF)
    if proto == _U(6) or proto == _U(17):
        sport = (k6 >> _U(8)) & _U(0xFFFF)
        dport = (k6 >> _U(24)) & _U(0xFFFF)
        qs = _is_service(sport, qualifies)
        qd = _is_service(dport, qualifies)
        return qd if qs != qd else dport <= sport
    icmp_type = (k6 >> _U(40)) & _U(0xFF)
    return not ((proto == _U(1) and icmp_type == _ZERO) or (proto == _U(58) and icmp_type == _U(129)))


@njit(cache=True, nogil=True)
def _conn_roles(rows, perm, kept, m_slots, m_keys, m_syn, qualifies, out):
    """client_is_src of the fine rows ``perm`` (``out``, in ``perm`` order): the port rule, then the
    first-SYN rule where a SYN decides (their connections in a small hash table, then the SYNs of
    those rows, of the TCP rows ``kept`` (not handed over yet) and of the drained connections
    remembered (``m_*``, a ``_SynMemory``) are folded in); flow records that name their client keep
    it (their SYNs still count for the other rows of their connection). Work in proportion to ``perm``
    and ``kept`` only; a block of rows at a time (``_conn_block``)."""
    n = perm.shape[0]
    cap = 1024
    while cap < 2 * n:
        cap *= 2
    slots = np.full(cap, -1, dtype=np.int64)
    keys = np.empty((n, 5), dtype=np.uint64)
    syn = np.full((n, 2), _NOSYN, dtype=np.uint64)
    conn = np.full(n, -1, dtype=np.int64)
    side_a = np.zeros(n, dtype=np.bool_)
    blk = np.empty((_BLOCK, 8), dtype=np.uint64)
    found = np.empty(_BLOCK, dtype=np.int64)
    g = 0
    i = 0
    while i < n:
        e = min(i + _BLOCK, n)
        for t in range(i, e):
            r = perm[t]
            k6 = rows[r, 7]
            # flow records that name their client (Zeek) keep it whatever a SYN says: decided here, in
            # the one pass over the rows, not in a second one
            out[t] = True if (k6 & _FORCED_CLIENT) != _ZERO else _port_role(k6, qualifies)
            _conn_put(blk, t - i, rows, r, slots)
        g = _conn_block(slots, keys, blk, e - i, g, True, found)
        for t in range(i, e):
            s = found[t - i]
            if s < 0:
                continue
            if (rows[perm[t], 7] & _FORCED_CLIENT) == _ZERO:  # its SYN counts, its role stays
                conn[t] = s
            af = blk[t - i, 6] == _ONE
            side_a[t] = af
            c = 0 if af else 1
            sy = blk[t - i, 7]
            if sy < syn[s, c]:
                syn[s, c] = sy
        i = e
    if g > 0:
        nk = kept.shape[0]
        i = 0
        while i < nk:
            e = min(i + _BLOCK, nk)
            for t in range(i, e):
                r = kept[t]
                if rows[r, _C_SYN] == _NOSYN:
                    blk[t - i, 6] = _NOCONN
                else:
                    _conn_put(blk, t - i, rows, r, slots)
            _conn_block(slots, keys, blk, e - i, g, False, found)
            for q in range(e - i):
                s = found[q]
                c = 0 if blk[q, 6] == _ONE else 1
                if s >= 0 and blk[q, 7] < syn[s, c]:
                    syn[s, c] = blk[q, 7]
            i = e
        if m_slots.shape[0]:
            mmask = _U(m_slots.shape[0] - 1)
            i = 0
            while i < g:
                e = min(i + _BLOCK, g)
                for s in range(i, e):
                    w0, w1, w2, w3, w4 = keys[s, 0], keys[s, 1], keys[s, 2], keys[s, 3], keys[s, 4]
                    h = _conn_hash(w0, w1, w2, w3, w4)
                    q = s - i
                    blk[q, 0], blk[q, 1], blk[q, 2], blk[q, 3], blk[q, 4], blk[q, 5] = h, w0, w1, w2, w3, w4
                    blk[q, 6] = _ONE
                    prefetch1(m_slots, np.int64(h & mmask))
                _conn_block(m_slots, m_keys, blk, e - i, 0, False, found)
                for s in range(i, e):
                    m = found[s - i]
                    if m >= 0:
                        syn[s, 0] = min(syn[s, 0], m_syn[m, 0])
                        syn[s, 1] = min(syn[s, 1], m_syn[m, 1])
                i = e
        for t in range(n):
            s = conn[t]
            if s >= 0 and syn[s, 0] != syn[s, 1]:  # not a simultaneous open at the same instant
                out[t] = side_a[t] == (syn[s, 0] < syn[s, 1])


@njit(cache=True, nogil=True)
def _conn_remember(rows, sel, slots, keys, syn, n):
    """Adds the SYNs of the TCP fine rows ``sel`` to a ``_SynMemory`` holding ``n`` connections
    (room for every row of ``sel`` is made by the caller); returns the new count."""
    blk = np.empty((_BLOCK, 8), dtype=np.uint64)
    m = sel.shape[0]
    i = 0
    while i < m:
        e = min(i + _BLOCK, m)
        for t in range(i, e):
            r = sel[t]
            if rows[r, _C_SYN] == _NOSYN:
                blk[t - i, 6] = _NOCONN
            else:
                _conn_put(blk, t - i, rows, r, slots)
        mask = _U(slots.shape[0] - 1)
        for q in range(e - i):
            if blk[q, 6] != _NOCONN:
                v = slots[np.int64(blk[q, 0] & mask)]
                if v >= 0:
                    prefetch2(keys, np.int64(v & _LO32), 0)
        for q in range(e - i):  # entries are made in order: one at a time, as the lookups find them absent
            if blk[q, 6] == _NOCONN:
                continue
            s = _conn_find(slots, keys, blk[q, 0], blk[q, 1], blk[q, 2], blk[q, 3], blk[q, 4], blk[q, 5], n)
            if s == n:
                syn[s, 0] = _NOSYN
                syn[s, 1] = _NOSYN
                n += 1
            c = 0 if blk[q, 6] == _ONE else 1
            if blk[q, 7] < syn[s, c]:
                syn[s, c] = blk[q, 7]
        i = e
    return n


@njit(cache=True, nogil=True)
def _conn_reindex(slots, keys, n):
    for s in range(n):
        w0, w1, w2, w3, w4 = keys[s, 0], keys[s, 1], keys[s, 2], keys[s, 3], keys[s, 4]
        h = _conn_hash(w0, w1, w2, w3, w4)
        _conn_find(slots, keys, h, w0, w1, w2, w3, w4, s)


class _SynMemory:
    """The earliest SYN of each side of the TCP connections of drained fine rows (a hash table kept
    across drains, updated in proportion to what is drained), at most ``cap`` connections: past
    that, those whose first SYN is oldest are forgotten (down to three quarters of ``cap``)."""

    def __init__(self, cap: int):
        self.cap = max(int(cap), 1)
        self.n = 0
        self.keys = np.empty((0, 5), dtype=np.uint64)
        self.syn = np.empty((0, 2), dtype=np.uint64)
        self.slots = np.empty(0, dtype=np.int64)

    def add(self, rows: np.ndarray, sel: np.ndarray) -> None:
        need = self.n + len(sel)
        if need > self.keys.shape[0]:
            size = max(1024, self.keys.shape[0])
            while size < need:
                size *= 2
            self._resize(size)
        self.n = _conn_remember(rows, sel, self.slots, self.keys, self.syn, self.n)
        if self.n > self.cap:
            target = self.cap - self.cap // 4
            first = np.minimum(self.syn[: self.n, 0], self.syn[: self.n, 1])
            keep = np.sort(np.argpartition(first, self.n - target)[self.n - target :])
            self.keys[:target] = self.keys[keep]
            self.syn[:target] = self.syn[keep]
            self.n = target
            self._resize(self.keys.shape[0])

    def _resize(self, size: int) -> None:
        keys = np.empty((size, 5), dtype=np.uint64)
        syn = np.empty((size, 2), dtype=np.uint64)
        keys[: self.n] = self.keys[: self.n]
        syn[: self.n] = self.syn[: self.n]
        self.keys, self.syn = keys, syn
        self.slots = np.full(2 * size, -1, dtype=np.int64)
        _conn_reindex(self.slots, self.keys, self.n)


@njit(cache=True, nogil=True)
def _runs(order, code, inum):
    """Start positions (in ``order``) of the runs of equal (interval, code)."""
    n = order.shape[0]
    starts = np.empty(n, dtype=np.int64)
    g = 0
    for t in range(n):
        r = order[t]
        if t == 0 or code[r] != code[order[t - 1]] or inum[r] != inum[order[t - 1]]:
            starts[g] = t
            g += 1
    return starts[:g]


@njit(cache=True, nogil=True)
def _reduce_runs(rows, starts, metrics):
    """Over each run of ``rows``: packets and bytes summed, first/last seen min/max. ``metrics`` is
    (n, 4) row-major (one cache line per fine row) with the timestamps sign-flipped."""
    g = starts.shape[0]
    p = np.zeros(g, dtype=np.uint64)
    b = np.zeros(g, dtype=np.uint64)
    f = np.empty(g, dtype=np.int64)
    la = np.empty(g, dtype=np.int64)
    for q in range(g):
        a = starts[q]
        e = starts[q + 1] if q + 1 < g else rows.shape[0]
        lo = metrics[rows[a], 2]
        hi = metrics[rows[a], 3]
        for t in range(a, e):
            m = metrics[rows[t]]
            p[q] += m[0]
            b[q] += m[1]
            lo = min(lo, m[2])
            hi = max(hi, m[3])
        f[q] = np.int64(lo ^ _SIGN)
        la[q] = np.int64(hi ^ _SIGN)
    return p, b, f, la


@njit(cache=True, nogil=True)
def _reduce_sorted(keys, shift, elems, sel, metrics):
    """Runs of equal key in sorted ``keys``, reduced in one sequential pass: (fine row of each run's
    first element, packets, bytes, first_seen, last_seen). Element t is ``elems[t]``, or when ``elems``
    is empty, the low ``shift`` bits of ``keys[t]`` (whose key is then the bits above); its fine row
    is ``sel[element]`` (empty ``sel``: the element itself). The metrics of the rows a few dozen
    elements ahead are prefetched: sorted order reads them at random places."""
    n = keys.shape[0]
    packed = elems.shape[0] == 0
    has_sel = sel.shape[0] > 0
    sh = _U(shift) if packed else _ZERO
    mask = (_ONE << sh) - _ONE
    # runs counted first: the results are exactly as long as they need to be (the tables keep them)
    runs = 1 if n else 0
    for t in range(1, n):
        if (keys[t] >> sh) != (keys[t - 1] >> sh):
            runs += 1
    firsts = np.empty(runs, dtype=np.int64)
    p = np.empty(runs, dtype=np.uint64)
    b = np.empty(runs, dtype=np.uint64)
    lo = np.empty(runs, dtype=np.uint64)
    hi = np.empty(runs, dtype=np.uint64)
    g = -1
    prev = _ZERO
    for t in range(n):
        ahead = t + 24
        if ahead < n:
            ea = np.int64(keys[ahead] & mask) if packed else elems[ahead]
            if has_sel:
                if ahead + 16 < n:
                    prefetch1(sel, np.int64(keys[ahead + 16] & mask) if packed else elems[ahead + 16])
                ea = sel[ea]
            prefetch2(metrics, ea, 0)
            prefetch2(metrics, ea, 3)
        v = keys[t]
        e = np.int64(v & mask) if packed else elems[t]
        r = sel[e] if has_sel else e
        k = v >> sh
        if t == 0 or k != prev:
            g += 1
            firsts[g] = r
            p[g] = metrics[r, 0]
            b[g] = metrics[r, 1]
            lo[g] = metrics[r, 2]
            hi[g] = metrics[r, 3]
            prev = k
        else:
            p[g] += metrics[r, 0]
            b[g] += metrics[r, 1]
            lo[g] = min(lo[g], metrics[r, 2])
            hi[g] = max(hi[g], metrics[r, 3])
    f = np.empty(runs, dtype=np.int64)
    la = np.empty(runs, dtype=np.int64)
    for q in range(runs):
        f[q] = np.int64(lo[q] ^ _SIGN)
        la[q] = np.int64(hi[q] ^ _SIGN)
    return firsts, p, b, f, la


@njit(inline="always")
def _acc_first(acc, g, m):
    acc[g, 0] = m[0]
    acc[g, 1] = m[1]
    acc[g, 2] = m[2]
    acc[g, 3] = m[3]


@njit(inline="always")
def _acc_add(acc, g, m):
    acc[g, 0] += m[0]
    acc[g, 1] += m[1]
    if m[2] < acc[g, 2]:
        acc[g, 2] = m[2]
    if m[3] > acc[g, 3]:
        acc[g, 3] = m[3]


@njit(cache=True, nogil=True)
def _reduce_direct(key, size, rows, metrics):
    """Groups of equal ``key`` (all below ``size``) by direct addressing, in key order: (fine row of
    each group's first element, metrics (g, 4) as in ``metrics``). ``rows``: the fine row of each
    element (empty: element t is fine row t). One sequential pass, no sort: for tables of few groups."""
    n = key.shape[0]
    first = np.full(size, -1, dtype=np.int64)
    acc = np.empty((size, 4), dtype=np.uint64)
    g = 0
    for t in range(n):
        k = key[t]
        r = rows[t] if rows.shape[0] else t
        m = metrics[r]
        if first[k] < 0:
            first[k] = r
            _acc_first(acc, k, m)
            g += 1
        else:
            _acc_add(acc, k, m)
    firsts = np.empty(g, dtype=np.int64)
    out = np.empty((g, 4), dtype=np.uint64)
    q = 0
    for k in range(size):
        if first[k] >= 0:
            firsts[q] = first[k]
            out[q] = acc[k]
            q += 1
    return firsts, out


@njit(cache=True, nogil=True)
def _hash_reduce(words, rows, metrics):
    """Groups of equal rows of ``words`` (n, m) by hashing, in order of first appearance: (the group's
    words (g, m), metrics (g, 4) as in ``metrics``). ``rows``: the fine row of each element. One pass,
    no sort: for a table whose rows are far fewer than its fine rows but whose key space is too large
    to address (stations: a MAC and an address), so that only its groups are ranked and sorted."""
    n, m = words.shape
    size = 16
    while size < 2 * n:
        size *= 2
    mask = np.int64(size - 1)
    slots = np.full(size, -1, dtype=np.int32)
    gwords = np.empty((n, m), dtype=np.uint64)
    ghash = np.empty(n, dtype=np.uint64)
    acc = np.empty((n, 4), dtype=np.uint64)
    g = 0
    for t in range(n):
        h = _ZERO
        for c in range(m):
            h = _mix(h, words[t, c])
        h = _finalize(h)
        r = rows[t]
        j = np.int64(h) & mask
        while True:
            s = slots[j]
            if s < 0:
                slots[j] = g
                for c in range(m):
                    gwords[g, c] = words[t, c]
                ghash[g] = h
                _acc_first(acc, g, metrics[r])
                g += 1
                break
            if ghash[s] == h:
                same = True
                for c in range(m):
                    if gwords[s, c] != words[t, c]:
                        same = False
                        break
                if same:
                    _acc_add(acc, s, metrics[r])
                    break
            j = (j + 1) & mask
    return gwords[:g], acc[:g]


@njit(cache=True, nogil=True)
def _gather_fine(rows, perm, which):
    """One read of the fine rows ``perm``: their columns ``which`` transposed, (len(which), len(perm)),
    and their metrics (len(perm), 4), packets, bytes, first, last (one cache line per fine row)."""
    m = perm.shape[0]
    out = np.empty((which.shape[0], m), dtype=np.uint64)
    metrics = np.empty((m, 4), dtype=np.uint64)
    for t in range(m):
        r = perm[t]
        for c in range(which.shape[0]):
            out[c, t] = rows[r, which[c]]
        metrics[t, 0] = rows[r, _C_PKT]
        metrics[t, 1] = rows[r, _C_BYTES]
        metrics[t, 2] = rows[r, _C_FIRST]
        metrics[t, 3] = rows[r, _C_LAST]
    return out, metrics


@njit(cache=True, nogil=True)
def _gather_rows(rows, perm, which):
    """Columns ``which`` of the fine rows ``perm``, transposed in one pass: (len(which), len(perm))."""
    m = perm.shape[0]
    out = np.empty((which.shape[0], m), dtype=np.uint64)
    for t in range(m):
        r = perm[t]
        for c in range(which.shape[0]):
            out[c, t] = rows[r, which[c]]
    return out


_ST_OK = np.uint64(DecodeStatus.OK)
_ST_NOT_IP = np.uint64(DecodeStatus.NOT_IP)


@njit(cache=True, nogil=True)
def _station_rows(k6, k7, src_hi, src_lo, own, inum, mac):
    """The fine rows that give a station (ARP senders, and IP sources but 0.0.0.0 / ::), and their
    stations keys (interval number, MAC, and the words of the address they carry): (4, 0, sender) for
    ARP; the source for neighbour discovery, link-local and own-network (``own``, per row; empty:
    none) sources; (0, 0, 0), ``internet``, for any other IP source. One pass over the packed key
    words, no temporary per condition; the keys are written as :func:`_hash_reduce` reads them."""
    n = k6.shape[0]
    has_own = own.shape[0] > 0
    sel = np.empty(n, dtype=np.int64)
    keys = np.empty((n, 5), dtype=np.uint64)
    m = 0
    for i in range(n):
        x = k6[i]
        status = (x >> _U(60)) & _U(7)
        ver = (x >> _U(56)) & _U(15)
        hi = src_hi[i]
        lo = src_lo[i]
        ok = status == _ST_OK
        arp = status == _ST_NOT_IP and ((k7[i] >> _U(16)) & _U(0xFFFF)) == _U(0x0806) and lo != _ZERO
        if not (arp or (ok and (hi != _ZERO or lo != _ZERO))):
            continue
        icmp_type = (x >> _U(40)) & _U(0xFF)
        nd = ok and ver == _U(6) and (x & _U(0xFF)) == _U(58) and _U(133) <= icmp_type <= _U(137)
        link_local = (ver == _U(6) and (hi >> _U(54)) == _U(0x3FA)) or (
            ver == _U(4) and (lo >> _U(16)) == _U(0xA9FE)
        )  # fe80::/10 and 169.254.0.0/16 are on the segment by definition
        real = (has_own and ok and own[i]) or nd or link_local
        keys[m, 0] = inum[i]
        keys[m, 1] = mac[i]
        keys[m, 2] = _U(4) if arp else (ver if real else _ZERO)
        keys[m, 3] = hi if real else _ZERO
        keys[m, 4] = lo if (arp or real) else _ZERO
        sel[m] = i
        m += 1
    return sel[:m], keys[:m]


# ---------------------------------------------------------------------------------------------
# planning: which base fields the configured tables need


def _table_keys(spec: TableConfig | Sequence[str]) -> tuple[str, ...]:
    keys = getattr(spec, "keys", spec)
    return tuple(keys)  # type: ignore[arg-type]


def _base_needs(key: str) -> tuple[str, ...]:
    """Packet-level base fields behind one table key."""
    net = parse_net_key(key)
    if net is not None:
        side = net.base.removesuffix("_net")
        return _ROLE_NEEDS if side in ("client", "server") else (side,)
    if key in _ROLE_KEYS:
        return _ROLE_NEEDS
    if key in ("src_label", "dst_label"):
        return (key.removesuffix("_label"),)
    return (key,)


def _word_masks(needs: set[str]) -> np.ndarray:
    wm = np.zeros(_NKEY, dtype=np.uint64)
    full = _U((1 << 64) - 1)
    if "src" in needs:
        wm[0] = wm[1] = full
    if "dst" in needs:
        wm[2] = wm[3] = full
    if "src_mac" in needs:
        wm[4] = full
    if "dst_mac" in needs:
        wm[5] = full
    wm[8] = full
    for name, (word, shift, width) in _FIELD_BITS.items():
        if name in needs:
            wm[word] |= _U(((1 << width) - 1) << shift)
    return wm


class _Fine:
    """Fine rows (a slice of them, in interval order) as named numpy columns."""

    # row slots decoded for a segment: key words, interval, metrics
    _SLOTS = np.arange(1, 10, dtype=np.int64)
    _SLOTS_IFS = np.array([*range(1, 10), _C_IFS], dtype=np.int64)  # tables keyed by input_if/output_if

    def __init__(
        self,
        cols: np.ndarray,
        metrics: np.ndarray,
        client_is_src: np.ndarray | None,
        service_ports: np.ndarray,
    ):
        self.n = cols.shape[1]
        self.src_hi, self.src_lo, self.dst_hi, self.dst_lo, self.src_mac, self.dst_mac = cols[0:6]
        self.small = _Fields(cols[6], cols[7])
        self.interval_no = cols[8].view(np.int64)
        self.ifs = cols[9] if cols.shape[0] > 9 else None  # input_if << 32 | output_if (flow rows)
        self.metrics = metrics
        ok = self.small["status"] == DecodeStatus.OK
        self.all_ok = bool(ok.all())
        self.ok_rows = None if self.all_ok else np.flatnonzero(ok)  # what IP tables count
        self.ranks: dict[str, _Ranked] = {}
        self.joint: dict[str, tuple[np.ndarray, pa.Array]] = {}
        self._cis = client_is_src
        self._roles: tuple[np.ndarray, ...] | None = None
        self._service: np.ndarray | None = None

    @property
    def ip_version(self) -> np.ndarray:
        return self.small["ip_version"]

    @property
    def client_is_src(self) -> np.ndarray:
        assert self._cis is not None
        return self._cis

    def roles(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(client_hi, client_lo, server_hi, server_lo, service_port) per fine row."""
        if self._roles is None:
            cis = self.client_is_src
            self._roles = (
                np.where(cis, self.src_hi, self.dst_hi),
                np.where(cis, self.src_lo, self.dst_lo),
                np.where(cis, self.dst_hi, self.src_hi),
                np.where(cis, self.dst_lo, self.src_lo),
                self.service_port(),
            )
        return self._roles

    def service_port(self) -> np.ndarray:
        """The server's port per fine row (0 but for TCP/UDP), without the client/server addresses,
        which only label and network keys read (client/server ranks are picked from the src/dst ones)."""
        if self._service is None:
            cis = self.client_is_src
            proto = self.small["proto"]
            sport, dport = self.small["sport"], self.small["dport"]
            tcpudp = (proto == 6) | (proto == 17)
            self._service = np.where(tcpudp, np.where(cis, dport, sport), _ZERO)
        return self._service

    def address(self, side: str) -> tuple[np.ndarray, np.ndarray]:
        if side == "src":
            return self.src_hi, self.src_lo
        if side == "dst":
            return self.dst_hi, self.dst_lo
        r = self.roles()
        return (r[0], r[1]) if side == "client" else (r[2], r[3])


class _Fields:
    """The small fields packed in key words k6/k7, unpacked on first use only (memory)."""

    def __init__(self, k6: np.ndarray, k7: np.ndarray):
        self._words = (k6, k7)
        self._cache: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        got = self._cache.get(name)
        if got is None:
            word, shift, width = _FIELD_BITS[name]
            got = self._cache[name] = (self._words[word - 6] >> _U(shift)) & _U((1 << width) - 1)
        return got


_NO_KEYS = np.empty((0, 5), dtype=np.uint64)
_NO_SYNS = np.empty((0, 2), dtype=np.uint64)


def _roles_for_rows(
    rows: np.ndarray,
    perm: np.ndarray,
    service_ports: np.ndarray,
    kept: np.ndarray | None = None,
    memory: _SynMemory | None = None,
) -> np.ndarray:
    """client_is_src for every fine row (in ``perm`` order): over all rows at once, because a SYN seen
    in one interval decides the roles of its connection in every other. The SYNs of the rows ``kept``
    (not handed over yet) and of the connections in ``memory`` (drained before) count too."""
    if memory is None or memory.n == 0:
        m_slots, m_keys, m_syn = np.empty(0, dtype=np.int64), _NO_KEYS, _NO_SYNS
    else:
        m_slots, m_keys, m_syn = memory.slots, memory.keys, memory.syn
    out = np.empty(len(perm), dtype=np.bool_)
    _conn_roles(
        rows,
        np.ascontiguousarray(perm, dtype=np.int64),
        np.empty(0, dtype=np.int64) if kept is None else np.ascontiguousarray(kept, dtype=np.int64),
        m_slots,
        m_keys,
        m_syn,
        _service_table(service_ports),
        out,
    )
    return out


def _service_table(service_ports: np.ndarray) -> np.ndarray:
    """For every port number, whether it qualifies as a service port: below 1024 or configured."""
    table = np.zeros(1 << 16, dtype=np.bool_)
    table[:1024] = True
    sp = np.asarray(service_ports, dtype=np.uint64)
    table[sp[sp < (1 << 16)].astype(np.intp)] = True
    return table


def _port_roles(
    proto: np.ndarray, sport: np.ndarray, dport: np.ndarray, icmp_type: np.ndarray, service_ports: np.ndarray
) -> np.ndarray:
    """client_is_src by the port rule (TCP/UDP) and the ICMP echo rule, before any SYN is looked at."""
    sp = np.asarray(service_ports, dtype=np.uint64)
    qual_s = (sport < 1024) | np.isin(sport, sp)
    qual_d = (dport < 1024) | np.isin(dport, sp)
    by_port = np.where(qual_s != qual_d, qual_d, dport <= sport)
    tcpudp = (proto == 6) | (proto == 17)
    echo_reply = ((proto == 1) & (icmp_type == 0)) | ((proto == 58) & (icmp_type == 129))
    return np.where(tcpudp, by_port, ~echo_reply)


def client_is_src(
    ip_version: np.ndarray,
    src_hi: np.ndarray,
    src_lo: np.ndarray,
    dst_hi: np.ndarray,
    dst_lo: np.ndarray,
    proto: np.ndarray,
    sport: np.ndarray,
    dport: np.ndarray,
    icmp_type: np.ndarray,
    syn_ts: np.ndarray,
    service_ports: np.ndarray,
) -> np.ndarray:
    """True where the sender of a (directional) row is the client; see the module docstring.

    ``syn_ts`` is the time of the row's first SYN without ACK (INT64_MAX when none): the first SYN
    of a connection, over both directions, decides its roles.
    """
    out = _port_roles(proto, sport, dport, icmp_type, service_ports)

    def u(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a, dtype=np.uint64)

    _syn_roles(
        u(ip_version),
        u(src_hi),
        u(src_lo),
        u(sport),
        u(dst_hi),
        u(dst_lo),
        u(dport),
        u(proto),
        np.ascontiguousarray(syn_ts, dtype=np.int64),
        out,
    )
    return out


# ---------------------------------------------------------------------------------------------
# the aggregator


class Drained:
    """Fine rows handed over by :meth:`Aggregator.drain_deferred`: their key columns and metrics already
    gathered in interval order (the one copy a drain makes of them, read by stage 2 as it is), with
    their client/server roles decided; :meth:`tables` builds their count tables."""

    def __init__(self, agg: Aggregator, segments: list[_Segment]):
        self._agg, self._segments = agg, segments

    def tables(self) -> dict[str, pa.Table]:
        return self._agg._tables_from(self._segments)


# stage 2 input, whole intervals of fine rows: key columns (slots, rows), metrics (rows, 4), roles or None
_Segment = tuple[np.ndarray, np.ndarray, np.ndarray | None]


class Aggregator:
    """Streams chunks of decoded frames into the configured count tables.

    ``add`` once per chunk, ``finish`` at the end (it may be called more than once; it does not
    consume the state). ``packets_seen`` counts every frame passed in, ``skipped`` the frames no
    table counts, by ``DecodeStatus`` name.
    """

    _INITIAL_CAPACITY = 1 << 14  # index slots / 2
    _INITIAL_ROWS = 1 << 20  # 128 MiB of address space, resident only as rows are written
    max_rows = 1 << 21  # drain() hands over every interval, the newest too, above this (256 MiB)
    max_syns = 1 << 21  # connections whose first SYN is remembered across drains (64 bytes each)

    def __init__(
        self,
        tables: Mapping[str, TableConfig | Sequence[str]],
        *,
        interval: int,
        networks: Mapping[str, str] | None = None,
        service_ports: Iterable[int] = (),
    ):
        if int(interval) <= 0:
            raise ConfigError("must be a positive number of seconds", key="interval")
        self.interval = int(interval)
        self.tables = {name: _table_keys(spec) for name, spec in tables.items()}
        for name, keys in self.tables.items():
            for k in keys:
                if k not in KEY_FIELDS and parse_net_key(k) is None:
                    raise ConfigError(f"unknown key field {k!r}", key=f"tables.{name}.keys")
        self.netmap = NetworkMap(networks or {})
        self.service_ports = np.array(sorted(set(int(p) for p in service_ports)), dtype=np.uint64)
        needs: set[str] = {"status"}
        for keys in self.tables.values():
            for k in keys:
                needs.update(_base_needs(k))
        # stations (arpwatch's table): ARP senders, neighbour discovery and own-network sources
        self._stations = {n for n, keys in self.tables.items() if n == STATIONS and keys == STATIONS_KEYS}
        if self._stations:
            needs.update(_STATION_NEEDS)
            self._own_codes = _own_label_codes(self.netmap)
        if needs & {"src", "dst"}:
            needs.add("ip_version")
        self._needs = needs
        self._wm = _word_masks(needs)
        self._ifs_mask = _U(
            (0xFFFFFFFF << 32 if "input_if" in needs else 0) | (0xFFFFFFFF if "output_if" in needs else 0)
        )
        self.exporters: list[str] = []  # exporter addresses of flow rows, by code - 1 (add_flows)
        counted: set[int] = set()
        for keys in self.tables.values():
            counted.update(_COUNTED_STATUSES_IP if is_ip_table(keys) else _COUNTED_STATUSES_LINK)
        if self._stations:
            counted.add(DecodeStatus.NOT_IP)  # ARP
        self._counted = counted
        self._count_mask = _U(sum(1 << s for s in counted))
        self._index = np.full(2 * self._INITIAL_CAPACITY, -1, dtype=np.int32)
        # Rows: a generous np.empty reservation. Untouched pages cost no memory, numpy asks for
        # transparent huge pages on large arrays, and every doubling copy avoided saves more time
        # than the rest of an insert; _ingest writes every slot of a row it uses.
        self._rows = _row_array(self._INITIAL_ROWS)
        self._used = 0
        self._base = 0  # rows base.. are in the index
        self._newest = _INT64_MIN  # newest interval number seen
        self._status_counts = np.zeros(256, dtype=np.int64)
        self.packets_seen = 0
        self._drained_below = _INT64_MIN  # drain has handed over every interval below this number
        self._kept = 0  # fine rows the last drain kept (the intervals it left open)
        self._needs_roles = any(
            k in _ROLE_KEYS or k.startswith(("client_net/", "server_net/")) for k in self._all_keys()
        )
        self._syns = _SynMemory(self.max_syns)  # SYNs of drained rows
        self._schemas: dict[tuple[str, ...], pa.Schema] = {}  # stage 2: each table's, made once
        keys = self._all_keys()  # stage 2: which values are ranked for both sides at once
        self._both_sides = {
            "addresses": bool(keys & {"client", "server"}) or {"src", "dst"} <= keys,
            "macs": {"src_mac", "dst_mac"} <= keys,
        }

    # -- stage 1 -------------------------------------------------------------------------------

    @property
    def fine_rows(self) -> int:
        """Distinct fine rows held (memory: about 128 bytes per row plus an 8-16 byte index slot)."""
        return self._used

    @property
    def rows_kept(self) -> int:
        """Fine rows the last drain kept (0 before any): a caller that drains on a row count waits until
        the rows held have grown well past these, since every drain reads all of them again."""
        return self._kept

    @property
    def skipped(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for st in np.flatnonzero(self._status_counts):
            if int(st) not in self._counted:
                out[DecodeStatus.NAMES.get(int(st), f"status-{int(st)}")] += int(self._status_counts[st])
        return out

    def add(self, packets: Mapping[str, np.ndarray]) -> None:
        """Count one chunk of frames (arrays keyed and typed as ``schema.PACKET_FIELDS``)."""
        cols = self._columns(packets)
        n = len(cols["ts_ns"])
        if n == 0:
            return
        start = 0
        interval_ns = np.int64(self.interval) * np.int64(1_000_000_000)
        while True:
            start, self._used, self._base, self._newest = _ingest(
                self._index,
                self._rows,
                self._used,
                self._base,
                self._newest,
                start,
                cols["ts_ns"],
                cols["wirelen"],
                cols["status"],
                cols["ethertype"],
                cols["src_mac"],
                cols["dst_mac"],
                cols["vlan"],
                cols["ip_version"],
                cols["src_hi"],
                cols["src_lo"],
                cols["dst_hi"],
                cols["dst_lo"],
                cols["proto"],
                cols["sport"],
                cols["dport"],
                cols["icmp_type"],
                cols["icmp_code"],
                cols["tcp_flags"],
                self._wm,
                interval_ns,
                self._count_mask,
                self._status_counts,
            )
            if start >= n:
                break
            self._grow()
        self.packets_seen += n

    def add_flows(self, records: Mapping[str, np.ndarray], exporters: Sequence[str] = ()) -> None:
        """Count flow records (NetFlow/IPFIX, Zeek): the columns of ``schema.PACKET_FIELDS`` for the key
        (``ts_ns`` = the flow's start, which picks the interval) plus per record ``packets`` and ``bytes``
        (the counts added), ``ts_end_ns`` (last_seen), and optionally ``exporter`` (1-based index into
        ``exporters``), ``input_if``, ``output_if``, ``client_is_src`` (1: the source is the client).
        TCP records with SYN among their flags take part in the first-SYN client rule by their start."""
        cols = self._columns(records)
        n = len(cols["ts_ns"])
        if n == 0:
            return
        if len(exporters) > len(self.exporters):
            self.exporters = list(exporters)

        def extra(name: str, dtype: type) -> np.ndarray:
            arr = records.get(name)
            return np.zeros(n, dtype=dtype) if arr is None else np.ascontiguousarray(arr, dtype=dtype)

        pk, by = extra("packets", np.uint64), extra("bytes", np.uint64)
        end = extra("ts_end_ns", np.int64) if "ts_end_ns" in records else cols["ts_ns"]
        exp, iif, oif = (
            extra("exporter", np.uint64),
            extra("input_if", np.uint64),
            extra("output_if", np.uint64),
        )
        forced = extra("client_is_src", np.uint8)
        start = 0
        interval_ns = np.int64(self.interval) * np.int64(1_000_000_000)
        while True:
            start, self._used, self._base, self._newest = _ingest_flows(
                self._index, self._rows, self._used, self._base, self._newest, start,
                cols["ts_ns"], end, pk, by, cols["status"], cols["ethertype"], cols["src_mac"],
                cols["dst_mac"], cols["vlan"], cols["ip_version"], cols["src_hi"], cols["src_lo"],
                cols["dst_hi"], cols["dst_lo"], cols["proto"], cols["sport"], cols["dport"],
                cols["icmp_type"], cols["icmp_code"], cols["tcp_flags"], exp, iif, oif, forced,
                self._wm, self._ifs_mask, interval_ns, self._count_mask, self._status_counts,
            )  # fmt: skip
            if start >= n:
                break
            self._grow()
        self.packets_seen += n

    def _columns(self, packets: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(packets["ts_ns"])
        cols = {}
        for name, dtype in PACKET_FIELDS.items():
            arr = packets.get(name)
            if arr is None:
                # a field no table needs may be absent; the kernel never reads it
                arr = np.zeros(n, dtype=dtype)
            cols[name] = np.ascontiguousarray(arr, dtype=dtype)
            if len(cols[name]) != n:
                raise ValueError(f"packet field {name!r} has {len(cols[name])} values, ts_ns has {n}")
        return cols

    def _grow(self) -> None:
        """Make room for more rows (the thresholds of ``_ingest``)."""
        if self._used >= self._rows.shape[0]:
            rows = _row_array(self._rows.shape[0] * 2)
            rows[: self._used] = self._rows[: self._used]
            self._rows = rows
        if self._used - self._base >= self._index.shape[0] // 2:
            index = np.full(self._index.shape[0] * 2, -1, dtype=np.int32)
            _reindex(self._rows, self._base, self._used, index)
            self._index = index

    # -- stage 2 -------------------------------------------------------------------------------

    def finish(self) -> dict[str, pa.Table]:
        """One pyarrow Table per configured table, schema ``schema.table_schema(keys)``, rows sorted
        by (interval_start, keys) in the order of ``pyarrow.compute.sort_indices`` on those columns.

        Covers the rows not yet taken by :meth:`drain`; it does not consume them (it may be called
        more than once). The fine rows are processed a group of whole intervals at a time
        (``_SEGMENT_ROWS``), which bounds the temporary memory; the result tables are chunked
        accordingly."""
        rows = self._rows[: self._used]
        inum = rows[:, 9].view(np.int64)
        perm = np.argsort(inum, kind="stable") if np.any(inum[1:] < inum[:-1]) else np.arange(len(inum))
        return self._tables_of(perm)

    def closed_intervals(self, keep: int = 1) -> bool:
        """True when :meth:`drain` with the same ``keep`` has intervals to hand over (cheap: no scan)."""
        if self._used == 0:
            return False
        return self._newest - keep + 1 > self._drained_below or self._used >= self.max_rows

    def drain(self, keep: int = 1) -> dict[str, pa.Table]:
        """Hand over, and forget, the rows of every interval older than the ``keep`` newest ones
        (as :meth:`finish` would give them), so that memory stays flat however long the capture.

        Captures are time-ordered in practice: a frame arriving later for an interval already drained
        simply starts new rows that a later drain (or finish) hands over; merging the two parts (the
        store adds counts) gives exactly the counts of one pass. When more than ``max_rows`` fine rows
        are held, every interval is drained, the newest too. TCP SYNs of drained rows are remembered
        (the ``max_syns`` most recent connections), so the client/server roles of a connection that
        continues past a drain are still decided by its first SYN."""
        drained = self.drain_deferred(keep)
        return {} if drained is None else drained.tables()

    def drain_deferred(self, keep: int = 1) -> Drained | None:
        """:meth:`drain`, with the tables made later by ``Drained.tables()`` (on any thread: it reads
        a copy of the drained rows and the Aggregator's settings only). None when nothing is drained."""
        if self._used == 0:
            return None
        cutoff = self._newest - keep + 1
        if self._used >= self.max_rows:
            cutoff = self._newest + 1
        self._drained_below = max(self._drained_below, cutoff)
        rows = self._rows[: self._used]
        sel, kept, order, kept_below_base = _split_rows(rows[:, 9].view(np.int64), self._base, cutoff)
        if len(sel) == 0:
            return None
        order = order if len(order) else None
        perm = sel if order is None else sel[order]
        cis = None
        if self._needs_roles:  # read in row order (memory order), handed over in interval order
            cis = _roles_for_rows(rows, sel, self.service_ports, kept, self._syns)
            cis = cis if order is None else cis[order]
        out = Drained(self, self._gathered(rows, perm, cis))
        if self._needs_roles:
            self._syns.add(rows, sel)
        self._compact(kept, int(kept_below_base))
        return out

    def _compact(self, kept: np.ndarray, new_base: int) -> None:
        """Keep rows ``kept`` (in order) at the front; re-index the ones of the newest interval."""
        n = len(kept)
        if n:
            _keep_rows(self._rows, np.ascontiguousarray(kept, dtype=np.int64))
        self._used, self._base, self._kept = n, new_base, n
        self._index[:] = -1
        _reindex(self._rows, self._base, self._used, self._index)

    def _tables_of(self, perm: np.ndarray) -> dict[str, pa.Table]:
        """Stage 2 over the fine rows ``perm`` (sorted by interval)."""
        rows = self._rows[: self._used]
        needs_roles = self._needs_roles
        cis = (
            _roles_for_rows(rows, perm, self.service_ports, None, self._syns)
            if needs_roles and len(perm)
            else None
        )
        return self._tables_from(self._gathered(rows, perm, cis))

    def _gathered(self, rows: np.ndarray, perm: np.ndarray, cis: np.ndarray | None) -> list[_Segment]:
        """The fine rows ``perm`` of ``rows`` (sorted by interval), roles ``cis`` per row, gathered for
        stage 2 in segments of whole intervals."""
        sorted_inum = rows[:, 9].view(np.int64)[perm]
        slots = _Fine._SLOTS_IFS if self._ifs_mask else _Fine._SLOTS
        return [
            (*_gather_fine(rows, perm[lo:hi], slots), None if cis is None else cis[lo:hi])
            for lo, hi in _segments(sorted_inum, self._SEGMENT_ROWS)
        ]

    def _tables_from(self, segments: list[_Segment]) -> dict[str, pa.Table]:
        parts: dict[str, list[pa.Table]] = {name: [] for name in self.tables}
        for cols, metrics, cis in segments:
            fine = _Fine(cols, metrics, cis, self.service_ports)
            for name, keys in self.tables.items():
                parts[name].append(
                    self._build_stations(fine) if name in self._stations else self._build(fine, keys)
                )
            del fine
        out = {}
        for name, keys in self.tables.items():
            tables = [t for t in parts[name] if t.num_rows]
            out[name] = pa.concat_tables(tables) if tables else table_schema(keys).empty_table()
        return out

    _SEGMENT_ROWS = 1 << 19

    def _all_keys(self) -> set[str]:
        return {k for keys in self.tables.values() for k in keys}

    def _build_stations(self, fine: _Fine) -> pa.Table:
        """The stations table: which MAC carries which address. ARP frames give their sender protocol
        address, IPv6 neighbour discovery and IP frames from the config's own networks (or link-local)
        their source; any other IP source is ``internet`` (a router's MAC carrying the internet is one
        row); a source of 0.0.0.0 or :: (DHCP discover, duplicate address detection) is no address.

        A busy segment has few stations and many fine rows: the rows are grouped by hashing (interval,
        MAC, address) first, and only the groups are ranked, sorted and turned into text (against
        ranking and sorting every fine row: a third less work on the high-cardinality capture of
        issue 11, the same rows)."""
        k6, k7 = fine.small._words
        own = _NO_OWN
        if self._own_codes.any():  # without own networks no label is looked up
            ok = fine.small["status"] == DecodeStatus.OK
            own = ok & self._own_codes[_label_codes(self.netmap, fine.ip_version, fine.src_hi, fine.src_lo)]
        inum = fine.interval_no.view(np.uint64)
        sel, words = _station_rows(k6, k7, fine.src_hi, fine.src_lo, own, inum, fine.src_mac)
        schema = table_schema(STATIONS_KEYS)
        if len(sel) == 0:
            return schema.empty_table()
        keys, acc = _hash_reduce(words, sel, fine.metrics)
        inum = keys[:, 0].view(np.int64)
        addr_rank, addresses = _text_ranking(
            (keys[:, 2], keys[:, 3], keys[:, 4]), _station_text, order=_station_order
        )
        order = _station_sort(inum, keys[:, 1], addr_rank, len(addresses))
        acc = acc[order]
        columns = [
            _ts_array(inum[order] * np.int64(self.interval * 1_000_000)),
            mac_array(keys[order, 1]),  # a MAC's text is fixed-width hex: value order is text order
            _take(addresses, addr_rank[order]),
            _arrow(acc[:, 0], METRICS["packets"]),
            _arrow(acc[:, 1], METRICS["bytes"]),
            _ts_array(np.floor_divide((acc[:, 2] ^ _SIGN).view(np.int64), 1000)),
            _ts_array(np.floor_divide((acc[:, 3] ^ _SIGN).view(np.int64), 1000)),
        ]
        return pa.Table.from_arrays(columns, schema=schema)

    def _build(self, fine: _Fine, keys: tuple[str, ...]) -> pa.Table:
        """Group and sort at once: every key becomes a dense rank in its stored order, the ranks are
        combined into one integer per fine row, and equal integers within an interval are a group (an
        IP table: of the fine rows of decoded IP frames only)."""
        schema = self._schemas.get(keys)
        if schema is None:
            schema = self._schemas[keys] = table_schema(keys)
        sel = None
        if is_ip_table(keys) and not fine.all_ok:
            sel = fine.ok_rows
            if len(sel) == 0:
                return schema.empty_table()
        ranks = [self._rank(fine, k) for k in keys]
        code = ranks[0][0].astype(np.uint64)  # a copy: _combine appends the other keys in place
        card = max(ranks[0][1], 1)
        for rank, kcard, _ in ranks[1:]:
            code, card = _combine(code, card, rank, kcard)
        inum = fine.interval_no
        if sel is not None:
            code, inum = code[sel], inum[sel]
        grouped = _group_reduce(inum, code, card, sel, fine.metrics)
        if grouped is not None:
            firsts, p, b, f, la = grouped
        else:
            firsts, p, b, f, la = _sorted_groups(inum, code, card, sel, fine.metrics)
        start_us = fine.interval_no[firsts] * np.int64(self.interval * 1_000_000)
        columns = [_ts_array(start_us)]
        columns += [build(firsts) for _, _, build in ranks]
        columns += [
            _arrow(p, METRICS["packets"]),
            _arrow(b, METRICS["bytes"]),
            _ts_array(np.floor_divide(f, 1000)),
            _ts_array(np.floor_divide(la, 1000)),
        ]
        return pa.Table.from_arrays(columns, schema=schema)

    def _rank(self, fine: _Fine, key: str) -> _Ranked:
        """Dense rank of a key's value per fine row (cached per segment: tables share keys)."""
        got = fine.ranks.get(key)
        if got is None:
            got = fine.ranks[key] = self._make_rank(fine, key)
        return got

    def _make_rank(self, fine: _Fine, key: str) -> _Ranked:
        ver = fine.ip_version
        net = parse_net_key(key)
        if net is not None:
            hi, lo = fine.address(net.base.removesuffix("_net"))
            mhi, mlo, _, _ = mask_address(ver, hi, lo, net.prefix)
            prefix = net.prefix
            return _text_rank([ver, mhi, mlo], lambda w: network_array(w[:, 0], w[:, 1], w[:, 2], prefix))
        if key in ("src", "dst", "client", "server"):
            return self._side_rank(fine, key, "addresses")
        if key.endswith("_label"):
            hi, lo = fine.address(key.removesuffix("_label"))
            codes = _label_codes(self.netmap, ver, hi, lo)
            labels = pa.array(self.netmap.labels, type=pa.string())  # sorted: code order is text order
            return (
                codes.astype(np.uint64),
                len(labels),
                lambda idx: labels.take(_arrow(codes[idx], pa.int64())),
            )
        if key in ("src_mac", "dst_mac"):
            return self._side_rank(fine, key.removesuffix("_mac"), "macs")
        if key in ("input_if", "output_if", "exporter"):
            return self._flow_rank(fine, key)
        value = fine.service_port() if key == "service_port" else fine.small[key]
        return _int_rank(value, KEY_FIELDS[key])

    def _flow_rank(self, fine: _Fine, key: str) -> _Ranked:
        """input_if / output_if (32-bit, from slot 15) and exporter (its address text, by code)."""
        if key == "exporter":
            codes = fine.small["exporter"]
            names = ["", *self.exporters]
            uniq, inv = np.unique(codes, return_inverse=True)
            text = pa.array([names[int(c)] if int(c) < len(names) else "" for c in uniq], type=pa.string())
            srt = pc.sort_indices(text).to_numpy()
            rank_of = np.empty(len(srt), dtype=np.uint64)
            rank_of[srt] = np.arange(len(srt), dtype=np.uint64)
            rank = rank_of[inv.reshape(-1)]
            ordered = text.take(pa.array(srt))
            return rank, len(uniq), lambda idx: ordered.take(pa.array(rank[idx].astype(np.int64)))
        ifs = fine.ifs if fine.ifs is not None else np.zeros(fine.n, dtype=np.uint64)
        v = (ifs >> _S32) if key == "input_if" else (ifs & _U(0xFFFFFFFF))
        uniq, inv = np.unique(v, return_inverse=True)
        return inv.reshape(-1).astype(np.uint64), len(uniq), lambda idx: pa.array(v[idx], type=pa.uint32())

    def _side_rank(self, fine: _Fine, side: str, what: str) -> _Ranked:
        """Sources and destinations share one ranking of their values (addresses or MACs), so text is
        made once for both, and client/server ranks are picked from them by role. When the tables
        need one side only (``hosts`` alone: sources), only that side is ranked."""
        both = self._both_sides[what] or side in ("client", "server")
        cache = what if both else f"{what}/{side}"
        joint = fine.joint.get(cache)
        if joint is None:
            if what == "addresses":
                ver = fine.ip_version
                src, dst = (ver, fine.src_hi, fine.src_lo), (ver, fine.dst_hi, fine.dst_lo)
                fn, order = (lambda w: _address_arrow(w[:, 0], w[:, 1], w[:, 2])), _address_order_text
            else:
                src, dst = (fine.src_mac,), (fine.dst_mac,)
                fn, order = (lambda w: mac_array(w[:, 0])), _value_order  # fixed-width hex: value order
            if both:  # the two lists are read in place, as one of 2n rows
                joint = _text_ranking(src, fn, second=dst, order=order)
            else:
                joint = _text_ranking(src if side == "src" else dst, fn, order=order)
            fine.joint[cache] = joint
        rank2, ordered = joint
        card = len(ordered)
        n = fine.n
        if not both:
            rank = rank2
        elif side == "src":
            rank = rank2[:n]
        elif side == "dst":
            rank = rank2[n:]
        else:
            cis = fine.client_is_src
            rank = (
                np.where(cis, rank2[:n], rank2[n:])
                if side == "client"
                else np.where(cis, rank2[n:], rank2[:n])
            )
        return rank, card, lambda idx: _take(ordered, rank[idx])


# per fine row: dense rank (uint64) in stored-value order, number of ranks, and a builder of the
# stored Arrow column for some fine rows
_Ranked = tuple[np.ndarray, int, Callable[[np.ndarray], pa.Array]]


_STATION_NEEDS = ("src", "src_mac", "ip_version", "ethertype", "proto", "icmp_type")


def _own_label_codes(netmap: NetworkMap) -> np.ndarray:
    """True per label code for the config's own networks: labels of networks with a prefix, except a
    label also given to a default route (``0.0.0.0/0 = "internet"``)."""
    own, default = set(), set()
    for cidr, label in netmap.networks.items():
        (default if cidr.endswith("/0") else own).add(label)
    return np.array([lab in own - default for lab in netmap.labels], dtype=bool)


def _station_text(w: np.ndarray) -> pa.Array:
    """Station addresses as text, ``internet`` for the sources off the own networks (no address)."""
    return _fill_empty(_address_arrow(w[:, 0], w[:, 1], w[:, 2]), b"internet")


def _fill_empty(text: pa.Array, word: bytes) -> pa.Array:
    """``word`` in place of every empty string, built on the buffers: pyarrow's scalar conversions import
    pandas, which a small collect must not pay for (tests/test_numba_startup.py)."""
    n = len(text)
    _, off_buf, data_buf = text.buffers()
    offsets = np.frombuffer(off_buf, dtype=np.int32)[text.offset : text.offset + n + 1]
    lengths = np.diff(offsets)
    empty = lengths == 0
    if not empty.any():
        return text
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.empty(0, np.uint8)
    new_len = np.where(empty, len(word), lengths).astype(np.int32)
    new_off = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(new_len, out=new_off[1:])
    elem = np.repeat(np.arange(n), new_len)
    within = np.arange(int(new_off[-1])) - new_off[elem]
    fill = np.frombuffer(word, dtype=np.uint8)[np.minimum(within, len(word) - 1)]
    kept = data[np.clip(offsets[elem] + within, 0, max(len(data) - 1, 0))] if len(data) else fill
    out = np.where(empty[elem], fill, kept).astype(np.uint8)
    return pa.StringArray.from_buffers(n, pa.py_buffer(new_off), pa.py_buffer(out))


def _text_rank(
    words: tuple[np.ndarray, ...],
    fn: Callable[[np.ndarray], pa.Array],
    order: Callable[[np.ndarray], np.ndarray | None] | None = None,
) -> _Ranked:
    """A key stored as text: formats distinct values only and ranks them in text (byte) order."""
    rank, ordered = _text_ranking(words, fn, order=order)
    return rank, len(ordered), lambda idx: _take(ordered, rank[idx])


def _text_ranking(
    words: tuple[np.ndarray, ...],
    fn: Callable[[np.ndarray], pa.Array],
    second: tuple[np.ndarray, ...] = (),
    order: Callable[[np.ndarray], Any] | None = None,
) -> tuple[np.ndarray, pa.Array]:
    """(rank of each row's value, the distinct values' text in rank order). ``words`` are 1 or 3
    columns; ``second`` optionally a second list of rows ranked together with the first. ``order``,
    if given, may return the text order of the distinct triples without making text (None: sort text),
    or (that order, the text in that order or None) when it made the text on the way."""
    if len(words) == 1:
        words = (words[0],) * 3
        second = (second[0],) * 3 if second else ()
    empty = np.zeros(0, dtype=np.uint64)
    b = second if second else (empty, empty, empty)
    inv, uniq = _group_triples(*(np.ascontiguousarray(w, dtype=np.uint64) for w in (*words, *b)))
    srt = order(uniq) if order is not None else None
    ordered = None
    if isinstance(srt, tuple):  # an order that made the text on the way (IPv6 addresses)
        srt, ordered = srt
    if srt is None:
        text = fn(uniq)
        srt = _text_sorted(text)
        ordered = _take(text, srt)
    elif ordered is None:
        ordered = fn(np.ascontiguousarray(uniq[srt]))  # text made in rank order: no string sort, no take
    rank_of = np.empty(len(srt), dtype=np.uint64)
    rank_of[srt] = np.arange(len(srt), dtype=np.uint64)
    return rank_of[inv], ordered


# rank of each octet's decimal text ("0", "1", "10", "100", "101", ...) in byte order
_OCTET_TEXT_RANK = np.argsort(np.argsort(np.array([str(i) for i in range(256)]), kind="stable")).astype(
    np.uint64
)


def _ipv4_text_order(uniq: np.ndarray) -> np.ndarray | None:
    """:func:`_ipv4_key_order` when every address is IPv4, else None."""
    if len(uniq) == 0 or not (uniq[:, 0] == 4).all():
        return None
    return _ipv4_key_order(uniq)


def _ipv4_key_order(uniq: np.ndarray) -> np.ndarray:
    """Order of distinct IPv4 (version, hi, lo) addresses by their text, without making or comparing
    text: dotted quads compare octet by octet in the order of the octets' own text (a shorter octet
    that is a prefix of a longer one is followed by '.' or the end, both below any digit), so the
    octets' text ranks, packed into one integer, sort like the strings."""
    v = uniq[:, 2] & _U(0xFFFFFFFF)
    r = _OCTET_TEXT_RANK
    key = (
        (r[(v >> _U(24)) & _U(255)] << _U(24))
        | (r[(v >> _U(16)) & _U(255)] << _U(16))
        | (r[(v >> _U(8)) & _U(255)] << _U(8))
        | r[v & _U(255)]
    )
    # keys are distinct 32-bit values: sorting them with the position in the low bits beats argsort
    packed = np.sort((key << _U(32)) | np.arange(len(key), dtype=np.uint64))
    return (packed & _U(0xFFFFFFFF)).astype(np.int64)


def _value_order(uniq: np.ndarray) -> np.ndarray:
    """Order of distinct single words (MACs: their text is fixed-width lowercase hex) by value."""
    return np.argsort(uniq[:, 0], kind="stable")


# Up to this many strings are sorted by numpy while numba and pyarrow.compute are not loaded: importing
# pyarrow.compute costs 0.1-0.15 s (it builds its function wrappers and their docs), half of what a cron
# collect of a small capture with IPv6 addresses otherwise spends working.
_NUMPY_TEXT_SORT = 4096


def _text_sorted(text: pa.Array) -> np.ndarray:
    """Order of the strings of ``text`` by their bytes (stable)."""
    plain = not (text.null_count or text.offset)
    if plain and engaged():
        return _text_order(*_string_buffers(text))
    if plain and len(text) <= _NUMPY_TEXT_SORT and "pyarrow.compute" not in sys.modules:
        return _fixed_width_sorted(text)
    idx = pc.sort_indices(text)  # not .to_numpy(): pyarrow imports pandas for that
    return np.frombuffer(idx.buffers()[1], dtype=np.uint64, count=len(idx), offset=idx.offset * 8).astype(
        np.int64
    )


@njit(cache=True, nogil=True)
def _text_order(offsets, data):
    """:func:`_text_sorted` compiled: each string as big-endian 64-bit words, NUL-padded (they then
    compare like the bytes: a prefix first; address and network text holds no NUL), sorted by its
    first word, then each run of equal leading words by the next word, until no run is left. Addresses
    share their leading words (an IPv6 prefix, "10.0."), so most runs end after two or three words:
    faster than Arrow's string sort (measured 0.26 against 0.36 ms for 4,200 IPv6 addresses, 1.4
    against 2.4 ms for 20,000 IPv4 ones), and a collect needs no pyarrow.compute for it."""
    n = offsets.shape[0] - 1
    longest = 0
    for i in range(n):
        longest = max(longest, offsets[i + 1] - offsets[i])
    w = max((longest + 7) // 8, 1)
    words = np.zeros((n, w), dtype=np.uint64)
    for i in range(n):
        a = offsets[i]
        for k in range(offsets[i + 1] - a):
            words[i, k >> 3] |= np.uint64(data[a + k]) << np.uint64(56 - 8 * (k & 7))
    first = np.empty(n, dtype=np.uint64)
    for i in range(n):
        first[i] = words[i, 0]
    order = np.argsort(first, kind="mergesort")  # stable: equal strings keep their input order
    starts = np.ones(n, dtype=np.bool_)  # order[q] starts a run of equal leading words
    for q in range(1, n):
        starts[q] = words[order[q], 0] != words[order[q - 1], 0]
    for c in range(1, w):
        tied = False
        i = 0
        while i < n:
            j = i + 1
            while j < n and not starts[j]:
                j += 1
            if j - i > 1:
                tied = True
                keys = np.empty(j - i, dtype=np.uint64)
                for q in range(i, j):
                    keys[q - i] = words[order[q], c]
                run = order[i:j].copy()
                by = np.argsort(keys, kind="mergesort")
                for q in range(j - i):
                    order[i + q] = run[by[q]]
                for q in range(i + 1, j):
                    starts[q] = words[order[q], c] != words[order[q - 1], c]
            i = j
        if not tied:
            break
    return order


def _fixed_width_sorted(text: pa.Array) -> np.ndarray:
    """:func:`_text_sorted` by numpy: the strings (no nulls, offset 0) as NUL-padded fixed-width bytes,
    which compare like the strings (a prefix first; address and network text holds no NUL)."""
    n = len(text)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    offsets, data = _string_buffers(text)
    lengths = np.diff(offsets)
    width = max(int(lengths.max()), 1)
    fixed = np.zeros((n, width), dtype=np.uint8)
    elem = np.repeat(np.arange(n), lengths)
    fixed[elem, np.arange(len(elem)) - offsets[elem]] = data[: offsets[-1]]
    return np.argsort(fixed.view(f"S{width}").reshape(n), kind="stable").astype(np.int64)


def _address_order(uniq: np.ndarray, empty_last: bool = False) -> np.ndarray:
    """Text order of distinct (version, hi, lo) addresses: IPv4 ones by their octets' text ranks (no
    text compared), the IPv6 ones by text, the two merged by comparing the text of the two lists once;
    anything else has the empty text, first (or last: ``empty_last``, stations' ``internet``, which
    sorts after every address text since no address character is above 'f')."""
    return _address_order_text(uniq, empty_last)[0]


def _address_order_text(uniq: np.ndarray, empty_last: bool = False) -> tuple[np.ndarray, pa.Array | None]:
    """(:func:`_address_order`, the addresses' text in that order when ordering made it: with IPv6
    addresses, which are ordered by their text, else None)."""
    ver = uniq[:, 0]
    v4 = np.flatnonzero(ver == 4)
    v6 = np.flatnonzero(ver == 6)
    other = np.flatnonzero((ver != 4) & (ver != 6))
    o4 = v4[_ipv4_key_order(uniq[v4])] if len(v4) else v4
    text = None
    if len(v6):
        t6 = _address_arrow(uniq[v6, 0], uniq[v6, 1], uniq[v6, 2])
        s6 = _text_sorted(t6)
        o6, text = v6[s6], _take(t6, s6)
        if len(o4):
            a = _address_arrow(uniq[o4, 0], uniq[o4, 1], uniq[o4, 2])
            from_a = _merge_text(*_string_buffers(a), *_string_buffers(text))
            merged = np.empty(len(o4) + len(o6), dtype=np.int64)
            merged[from_a] = o4
            merged[~from_a] = o6
            at = np.empty(len(merged), dtype=np.int64)  # where each merged address's text is in a + text
            at[from_a] = np.arange(len(o4))
            at[~from_a] = np.arange(len(o4), len(merged))
            o4, text = merged, _take(pa.concat_arrays([a, text]), at)
        else:
            o4 = o6
        if len(other):  # no address: the empty text (not pa.array of a list: that imports pandas)
            none = pa.py_buffer(np.zeros(len(other) + 1, dtype=np.int32))
            blank = pa.StringArray.from_buffers(len(other), none, pa.py_buffer(b""))
            text = pa.concat_arrays([text, blank] if empty_last else [blank, text])
    return np.concatenate([o4, other] if empty_last else [other, o4]), text


def _station_order(uniq: np.ndarray) -> np.ndarray:
    return _address_order(uniq, empty_last=True)


def _string_buffers(text: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets as int64, data) of a plain string array without nulls and offset 0."""
    bufs = text.buffers()
    offsets = np.frombuffer(bufs[1], dtype=np.int32, count=len(text) + 1).astype(np.int64)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, dtype=np.uint8)
    return offsets, data


def _take(strings: pa.Array, idx: np.ndarray) -> pa.Array:
    """``strings.take(idx)`` for a plain string array, compiled (Arrow's take is slower on strings)."""
    strings = strings.combine_chunks() if isinstance(strings, pa.ChunkedArray) else strings
    if strings.offset or strings.null_count:
        return strings.take(_arrow(idx, pa.int64()))
    bufs = strings.buffers()
    offsets = np.frombuffer(bufs[1], dtype=np.int32, count=len(strings) + 1).astype(np.int64)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, dtype=np.uint8)
    out_off, out = _take_strings(offsets, data, np.ascontiguousarray(idx, dtype=np.int64))
    if out_off[-1] >= 1 << 31:
        return pa.LargeStringArray.from_buffers(len(idx), pa.py_buffer(out_off), pa.py_buffer(out)).cast(
            pa.string()
        )
    return pa.StringArray.from_buffers(len(idx), pa.py_buffer(out_off.astype(np.int32)), pa.py_buffer(out))


def _ts_array(us: np.ndarray) -> pa.Array:
    """Microseconds since the epoch as a stored timestamp column."""
    return _arrow(us, METRICS["first_seen"])


def _arrow(values: np.ndarray, typ: pa.DataType) -> pa.Array:
    """A numpy integer array as an Arrow column of ``typ`` (integer or timestamp), without a copy
    where the width matches. Not ``pa.array(values)``: pyarrow imports pandas (0.3 s) to convert
    a numpy array, which collect otherwise never needs."""
    if pa.types.is_timestamp(typ):
        dtype = np.dtype(np.int64)
    else:
        dtype = np.dtype(("u" if pa.types.is_unsigned_integer(typ) else "i") + str(typ.bit_width // 8))
    v = np.ascontiguousarray(values, dtype=dtype)
    return pa.Array.from_buffers(typ, len(v), [None, pa.py_buffer(v)])


def _station_sort(inum: np.ndarray, mac: np.ndarray, addr_rank: np.ndarray, addresses: int) -> np.ndarray:
    """Order of the stations groups by interval, MAC and address. The groups are distinct, so when the
    three fit in one 64-bit word (a MAC is 48 bits; the intervals and addresses of a part are few) one
    unstable sort of that word orders them; otherwise a lexsort of the three does. Either way the MACs
    are not deduplicated or turned into text before the sort: on a busy segment they are nearly as many
    as the groups, and the text is made once, for the sorted rows."""
    rel = (inum - inum.min()).astype(np.uint64)
    abits = max(addresses - 1, 0).bit_length()
    if int(rel.max()).bit_length() + abits <= 16 and not (mac >> _U(48)).any():
        key = rel << _U(48 + abits)
        key |= mac << _U(abits)
        key |= addr_rank
        return np.argsort(key)
    return np.lexsort((addr_rank, mac, rel))


def _int_rank(values: np.ndarray, typ: pa.DataType) -> _Ranked:
    """A small unsigned key (at most 16 bits): dense rank through a lookup table, no sort."""
    v = values.astype(np.int64)
    present = np.zeros(1 << typ.bit_width, dtype=np.int64)
    present[v] = 1
    rank_of = np.cumsum(present) - 1
    return rank_of[v].astype(np.uint64), int(present.sum()), lambda idx: _arrow(values[idx], typ)


def _combine(key: np.ndarray, card: int, rank: np.ndarray, rank_card: int) -> tuple[np.ndarray, int]:
    """Append ``rank`` as the next (less significant) sort digit of ``key`` (changed in place): mixed
    radix while it fits in 63 bits, else ``key`` is first replaced by its dense rank (which keeps it
    injective)."""
    rank_card = max(rank_card, 1)
    if card * rank_card >= 1 << 63:
        uniq, inv = np.unique(key, return_inverse=True)
        key, card = inv.astype(np.uint64).reshape(-1), len(uniq)
    key *= np.uint64(rank_card)  # in place: the caller owns ``key``
    key += rank
    return key, card * rank_card


_NO_ROWS = np.empty(0, dtype=np.int64)
_NO_OWN = np.empty(0, dtype=np.bool_)


def _group_reduce(
    inum: np.ndarray, code: np.ndarray, card: int, sel: np.ndarray | None, metrics: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """(first fine row, packets, bytes, first_seen, last_seen) of each group of equal (interval, code),
    in that order, when the key space is small (at most about twice the rows): one sequential pass over
    the rows by direct addressing, no sort, no random reads of the metrics (hosts, pairs, link and
    stations tables, services of flows). None otherwise: the caller sorts."""
    n = len(inum)
    span = int(inum[-1]) - int(inum[0]) + 1
    size = card * span
    if size > max(2 * n, 1 << 16):
        return None
    key = (inum - inum[0]).astype(np.uint64) * np.uint64(card) + code
    rows = _NO_ROWS if sel is None else np.ascontiguousarray(sel, dtype=np.int64)
    firsts, acc = _reduce_direct(key, size, rows, metrics)
    f = (acc[:, 2] ^ _SIGN).view(np.int64)
    la = (acc[:, 3] ^ _SIGN).view(np.int64)
    return firsts, acc[:, 0], acc[:, 1], f, la


def _sorted_groups(
    inum: np.ndarray, code: np.ndarray, card: int, sel: np.ndarray | None, metrics: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_group_reduce`'s result by sorting (large key spaces). While (interval, code) and the row
    number fit in one word, the words are sorted (no argsort) and reduced in order, keys read from them."""
    span = int(inum[-1]) - int(inum[0]) + 1
    n = len(inum)
    rows = _NO_ROWS if sel is None else np.ascontiguousarray(sel, dtype=np.int64)
    if card * span < 1 << 63:
        key = code if span == 1 else (inum - inum[0]).astype(np.uint64) * np.uint64(card) + code
        bits = max(n - 1, 1).bit_length()
        if card * span < 1 << (64 - bits):
            packed = np.sort((key << np.uint64(bits)) | np.arange(n, dtype=np.uint64))
            return _reduce_sorted(packed, bits, _NO_ROWS, rows, metrics)
        order = np.argsort(key)
        return _reduce_sorted(key[order], 0, order, rows, metrics)
    order = _sort_within_intervals(inum, code, card)
    starts = _runs(order, code, inum)
    fine_rows = order if sel is None else sel[order]  # fine-row number of each sorted row
    return (fine_rows[starts], *_reduce_runs(fine_rows, starts, metrics))


def _sort_within_intervals(inum: np.ndarray, code: np.ndarray, card: int) -> np.ndarray:
    """Order of rows by (interval, code); ``inum`` is already sorted ascending."""
    span = int(inum[-1]) - int(inum[0]) + 1
    n = len(inum)
    if card * span < 1 << 63:
        key = (inum - inum[0]).astype(np.uint64) * np.uint64(card) + code
        bits = max(n - 1, 1).bit_length()
        if card * span < 1 << (64 - bits):
            # sorting values is much faster than argsort: carry the row number in the low bits
            packed = np.sort((key << np.uint64(bits)) | np.arange(n, dtype=np.uint64))
            return (packed & np.uint64((1 << bits) - 1)).astype(np.int64)
        return np.argsort(key)
    starts = np.flatnonzero(np.diff(inum)) + 1
    bounds = [0, *starts.tolist(), len(inum)]
    return np.concatenate([a + np.argsort(code[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)])


def _segments(sorted_inum: np.ndarray, target: int) -> list[tuple[int, int]]:
    """Row ranges of whole intervals, each about ``target`` rows (or one interval, if larger)."""
    n = len(sorted_inum)
    if n == 0:
        return []
    starts = np.flatnonzero(np.diff(sorted_inum) != 0) + 1
    bounds = [0]
    for s in starts.tolist():
        if s - bounds[-1] >= target:
            bounds.append(s)
    bounds.append(n)
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _label_codes(netmap: NetworkMap, ver: np.ndarray, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """Label code per address, looked up once per distinct address."""
    if len(ver) == 0:
        return np.zeros(0, dtype=np.int64)
    empty = np.zeros(0, dtype=np.uint64)
    inv, u = _group_triples(
        *(np.ascontiguousarray(w, dtype=np.uint64) for w in (ver, hi, lo)), empty, empty, empty
    )
    return netmap.codes_for_ints(u[:, 0], u[:, 1], u[:, 2])[inv]


def aggregate(
    packets: Mapping[str, np.ndarray],
    tables: Mapping[str, TableConfig | Sequence[str]],
    *,
    interval: int,
    networks: Mapping[str, str] | None = None,
    service_ports: Iterable[int] = (),
) -> dict[str, pa.Table]:
    """One-shot convenience: ``Aggregator(...).add(packets)`` then ``finish()``."""
    agg = Aggregator(tables, interval=interval, networks=networks, service_ports=service_ports)
    agg.add(packets)
    return agg.finish()
