"""The benchmark's capture generator: millions of packets, built by numpy a whole chunk of records at a time.

``synthetic_bulk`` writes a large Ethernet/IPv4 TCP+UDP pcap whose bytes depend only on its arguments
(``bench_collect.py`` caches the files by their parameters). It lives with the benchmark, not in the
package: flowdiff never generates traffic at run time. Frame constants and the atomic writer come from
``flowdiff.demo.frames``, so both generators agree on what a frame looks like.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flowdiff.demo.frames import (
    ETH_IPV4,
    NS,
    PCAP_MAGIC_US,
    PROTO_TCP,
    PROTO_UDP,
    TCP_ACK,
    TCP_FIN,
    TCP_SYN,
    atomic_write,
)

__all__ = ["BULK_CHUNK", "BulkInfo", "synthetic_bulk"]

BULK_CHUNK = 1 << 16  # packets per chunk; part of the output definition (each chunk has its own RNG)
_HDR = 16 + 54  # pcap record header + Ethernet + IPv4 + TCP (UDP uses the first 8 bytes of the TCP slot)
_TCP_PORTS = np.array([80, 443, 443, 443, 25, 22, 993, 8080, 3306, 5432], dtype=np.uint16)
_UDP_PORTS = np.array([53, 53, 123, 443, 514, 161], dtype=np.uint16)


@dataclass(frozen=True)
class BulkInfo:
    path: Path
    packets: int
    file_bytes: int  # size of the capture file
    wire_bytes: int  # sum of the original lengths (what a count table's ``bytes`` adds up to)
    flows: int
    snaplen: int
    full_size: bool
    seed: int


@dataclass(frozen=True)
class _Flows:
    src: np.ndarray  # uint32 IPv4
    dst: np.ndarray
    proto: np.ndarray  # uint8
    sport: np.ndarray  # uint16
    dport: np.ndarray
    smac: np.ndarray  # uint64
    dmac: np.ndarray


def _bulk_flows(flows: int, seed: int) -> _Flows:
    rng = np.random.default_rng([seed, 0xF10F])
    tcp = rng.random(flows) < 0.8
    dport = np.where(tcp, rng.choice(_TCP_PORTS, flows), rng.choice(_UDP_PORTS, flows)).astype(np.uint16)
    hosts = 0x0A000000 + rng.integers(1, 1 << 16, flows, dtype=np.uint32)  # 10.0.0.0/16 inside
    remote = rng.integers(0x0B000000, 0xDF000000, flows, dtype=np.uint32)  # unicast outside
    host_mac = np.uint64(0x001B21000000) + rng.integers(1, 4096, flows, dtype=np.uint64)
    router_mac = np.full(flows, 0x00005E000101, dtype=np.uint64)
    return _Flows(
        src=hosts.astype(np.uint32),
        dst=remote.astype(np.uint32),
        proto=np.where(tcp, PROTO_TCP, PROTO_UDP).astype(np.uint8),
        sport=rng.integers(32768, 61000, flows, dtype=np.uint16),
        dport=dport,
        smac=host_mac,
        dmac=router_mac,
    )


def _put(mat: np.ndarray, col: int, values: np.ndarray, dtype: str) -> None:
    """Store ``values`` (one per row) at byte column ``col`` of ``mat`` with the given byte layout."""
    b = np.ascontiguousarray(values.astype(dtype)).view(np.uint8).reshape(len(values), -1)
    mat[:, col : col + b.shape[1]] = b


def _bulk_chunk(
    fl: _Flows,
    first: int,
    n: int,
    total: int,
    *,
    seed: int,
    snaplen: int,
    full_size: bool,
    start_ns: int,
    span_ns: int,
) -> tuple[np.ndarray, int]:
    """The bytes of ``n`` consecutive pcap records (global index ``first``...) and their wire bytes."""
    rng = np.random.default_rng([seed, first // BULK_CHUNK])
    nflows = len(fl.src)
    f = np.minimum((nflows * rng.random(n) ** 3).astype(np.int64), nflows - 1)  # heavy-tailed flow sizes
    rev = rng.random(n) < 0.45
    u = rng.random(n)
    wirelen = np.where(
        u < 0.45,
        rng.integers(60, 80, n),
        np.where(u < 0.85, 1514, rng.integers(60, 1515, n)),
    ).astype(np.int64)
    caplen = wirelen if full_size else np.minimum(wirelen, snaplen)
    idx = np.arange(first, first + n, dtype=np.int64)
    # idx * span_ns overflows int64 for long, big captures: split span_ns into whole and remainder parts
    q, r = divmod(span_ns, max(total, 1))
    ts = start_ns + idx * q + (idx * r) // max(total, 1)

    proto = fl.proto[f]
    a_ip, b_ip = fl.src[f], fl.dst[f]
    src = np.where(rev, b_ip, a_ip)
    dst = np.where(rev, a_ip, b_ip)
    sport = np.where(rev, fl.dport[f], fl.sport[f])
    dport = np.where(rev, fl.sport[f], fl.dport[f])
    smac = np.where(rev, fl.dmac[f], fl.smac[f])
    dmac = np.where(rev, fl.smac[f], fl.dmac[f])
    r = rng.random(n)
    flags = np.where(
        r < 0.02, TCP_SYN, np.where(r < 0.04, TCP_FIN | TCP_ACK, np.where(r < 0.5, TCP_ACK, 0x18))
    )

    H = np.zeros((n, _HDR), dtype=np.uint8)
    _put(H, 0, ts // NS, "<u4")
    _put(H, 4, (ts % NS) // 1000, "<u4")
    _put(H, 8, caplen, "<u4")
    _put(H, 12, wirelen, "<u4")
    _put(H, 16, dmac, ">u8")  # 8 bytes; the 2 high (zero) bytes are overwritten by the next field
    H[:, 16:22] = H[:, 18:24].copy()
    _put(H, 22, smac, ">u8")
    H[:, 22:28] = H[:, 24:30].copy()
    _put(H, 28, np.full(n, ETH_IPV4), ">u2")
    ipo = 30
    H[:, ipo] = 0x45
    _put(H, ipo + 2, wirelen - 14, ">u2")
    _put(H, ipo + 4, idx & 0xFFFF, ">u2")
    _put(H, ipo + 6, np.full(n, 0x4000), ">u2")
    H[:, ipo + 8] = 64
    H[:, ipo + 9] = proto
    _put(H, ipo + 12, src, ">u4")
    _put(H, ipo + 16, dst, ">u4")
    words = np.ascontiguousarray(H[:, ipo : ipo + 20]).view(">u2").astype(np.uint32).sum(axis=1)
    words = (words & 0xFFFF) + (words >> 16)
    words = (words & 0xFFFF) + (words >> 16)
    _put(H, ipo + 10, ~words & 0xFFFF, ">u2")
    l4 = ipo + 20
    _put(H, l4, sport, ">u2")
    _put(H, l4 + 2, dport, ">u2")
    is_tcp = proto == PROTO_TCP
    seq = (idx * 1460) & 0xFFFFFFFF
    T = np.zeros((n, 16), dtype=np.uint8)
    _put(T, 0, seq, ">u4")
    _put(T, 4, seq ^ 0x5A5A5A5A, ">u4")
    T[:, 8] = 0x50
    T[:, 9] = flags
    _put(T, 10, np.full(n, 64240), ">u2")
    U = np.zeros((n, 16), dtype=np.uint8)
    _put(U, 0, wirelen - 34, ">u2")  # UDP length (checksum 0: not computed, as allowed for IPv4)
    H[:, l4 + 4 :] = np.where(is_tcp[:, None], T, U)

    reclen = 16 + caplen
    off = np.zeros(n, dtype=np.int64)
    np.cumsum(reclen[:-1], out=off[1:])
    out = np.zeros(int(off[-1] + reclen[-1]), dtype=np.uint8)
    cols = np.arange(_HDR)
    mask = cols[None, :] < reclen[:, None]
    out[(off[:, None] + cols[None, :])[mask]] = H[mask]
    return out, int(wirelen.sum())


def synthetic_bulk(
    path: str | os.PathLike,
    packets: int,
    *,
    snaplen: int = 96,
    flows: int = 20000,
    seed: int = 0,
    full_size: bool = False,
    start: int = 1767225600,  # 2026-01-01T00:00:00Z
    duration: float = 3600.0,
) -> BulkInfo:
    """A large Ethernet/IPv4 TCP+UDP capture for the benchmark, built chunk by chunk (memory is bounded
    by ``BULK_CHUNK`` records whatever ``packets`` is). Header-only by default: ``caplen =
    min(orig_len, snaplen)`` with realistic original lengths 60..1514; ``full_size`` keeps whole frames
    (zero payload). Packets are evenly spaced over ``duration`` seconds from ``start`` (epoch seconds).
    The output depends only on the arguments."""
    if packets < 0 or flows < 1 or snaplen < 1:
        raise ValueError("packets >= 0, flows >= 1, snaplen >= 1")
    fl = _bulk_flows(flows, seed)
    start_ns, span_ns = int(start) * NS, int(duration * NS)
    wire = 0

    def chunks() -> Iterator[bytes]:
        nonlocal wire
        yield struct.pack("<IHHiIII", PCAP_MAGIC_US, 2, 4, 0, 0, snaplen if not full_size else 65535, 1)
        for first in range(0, packets, BULK_CHUNK):
            n = min(BULK_CHUNK, packets - first)
            buf, w = _bulk_chunk(
                fl,
                first,
                n,
                packets,
                seed=seed,
                snaplen=snaplen,
                full_size=full_size,
                start_ns=start_ns,
                span_ns=span_ns,
            )
            wire += w
            yield buf.tobytes()

    out = atomic_write(path, chunks())
    return BulkInfo(out, packets, out.stat().st_size, wire, flows, snaplen, full_size, seed)
