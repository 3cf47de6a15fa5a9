"""Deterministic capture generation: frame builders, pcap/pcapng writers, a bulk generator for the
benchmark and a small-enclave week for the demo.

Everything here is a pure function of its arguments and a seed: no wall clock, no global random state,
so a test or a benchmark can regenerate a capture and get the same bytes (the benchmark caches files
by their parameters, the demo must find exactly the anomalies it injected).

Three layers:

* frame builders (``ethernet``, ``ipv4``, ``ipv6``, ``tcp``, ``udp``, ``icmp_echo``, ``arp`` ...) that
  return ``bytes`` with correct lengths and checksums, and ``tcp_session`` for a whole conversation;
* writers: ``write_pcap`` and ``write_pcapng`` for lists of ``Frame`` (small files, tests), atomic;
* generators: ``synthetic_bulk`` (millions of packets, numpy builds whole chunks of records at once)
  and ``enclave_scenario`` (a normal week of a small network, then a day with known anomalies).
"""

from __future__ import annotations

import functools
import gzip
import ipaddress
import os
import struct
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from flowdiff import vocab

__all__ = [
    "Frame",
    "Interface",
    "BulkInfo",
    "Scenario",
    "Anomaly",
    "ExpectedRow",
    "LINKTYPE_ETHERNET",
    "ETH_IPV4",
    "ETH_IPV6",
    "ETH_ARP",
    "ETH_VLAN",
    "ETH_LLDP",
    "TCP_FIN",
    "TCP_SYN",
    "TCP_RST",
    "TCP_PSH",
    "TCP_ACK",
    "format_value",
    "mac_bytes",
    "mac_str",
    "checksum",
    "ethernet",
    "ipv4",
    "ipv6",
    "ip",
    "tcp",
    "udp",
    "icmp_echo",
    "icmpv6_echo",
    "arp",
    "lldp",
    "tcp_frame",
    "udp_frame",
    "icmp_echo_frame",
    "arp_frame",
    "lldp_frame",
    "tcp_session",
    "udp_exchange",
    "pcap_bytes",
    "write_pcap",
    "pcapng_block",
    "pcapng_section",
    "write_pcapng",
    "write_pcapng_sections",
    "synthetic_bulk",
    "enclave_scenario",
]

LINKTYPE_ETHERNET = 1
ETH_IPV4 = 0x0800
ETH_ARP = 0x0806
ETH_VLAN = 0x8100
ETH_QINQ = 0x88A8
ETH_IPV6 = 0x86DD
ETH_LLDP = 0x88CC
TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x04, 0x08, 0x10
PROTO_ICMP, PROTO_TCP, PROTO_UDP, PROTO_ICMPV6 = 1, 6, 17, 58

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
NS = 1_000_000_000


# --------------------------------------------------------------------------------------------------
# frames and addresses


@dataclass(frozen=True)
class Frame:
    """One captured frame: timestamp (UTC ns), the bytes, the length on the wire (default: the bytes),
    and the pcapng interface it was captured on."""

    ts_ns: int
    data: bytes
    wirelen: int | None = None
    interface: int = 0

    @property
    def orig_len(self) -> int:
        return len(self.data) if self.wirelen is None else self.wirelen


def _frame(item: Frame | tuple[int, bytes]) -> Frame:
    return item if isinstance(item, Frame) else Frame(int(item[0]), bytes(item[1]))


def mac_bytes(mac: str | bytes | int) -> bytes:
    """``"aa:bb:cc:dd:ee:ff"`` (or ``-`` separated), 6 bytes or an int -> 6 bytes."""
    if isinstance(mac, bytes):
        if len(mac) != 6:
            raise ValueError(f"a MAC has 6 bytes, got {len(mac)}")
        return mac
    if isinstance(mac, int):
        return mac.to_bytes(6, "big")
    return _parse_mac(mac)


@functools.lru_cache(maxsize=4096)
def _parse_mac(mac: str) -> bytes:
    parts = mac.replace("-", ":").split(":")
    if len(parts) != 6:
        raise ValueError(f"not a MAC address: {mac!r}")
    return bytes(int(p, 16) for p in parts)


def mac_str(mac: str | bytes | int) -> str:
    return ":".join(f"{b:02x}" for b in mac_bytes(mac))


def _ip(addr: str | bytes) -> bytes:
    if isinstance(addr, bytes):
        return addr
    return _packed(addr)


@functools.lru_cache(maxsize=65536)
def _packed(addr: str) -> bytes:
    """Parsing addresses dominates frame building; the scenario reuses a few hundred of them."""
    return ipaddress.ip_address(addr).packed


def _is_v6(addr: str) -> bool:
    return len(_packed(addr)) == 16


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _pseudo(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!IxxxB", length, proto)


# --------------------------------------------------------------------------------------------------
# frame builders (scalar: small files, tests and the demo scenario)


def ethernet(
    src: str | bytes | int,
    dst: str | bytes | int,
    ethertype: int,
    payload: bytes,
    *,
    vlan: int | Sequence[int] | None = None,
    qinq: bool = False,
    pad: bool = True,
) -> bytes:
    """An Ethernet II frame without FCS. ``vlan`` adds an 802.1Q tag (a sequence: a tag stack, outermost
    first; ``qinq`` makes the outer tag 802.1ad). Short frames are padded to 60 bytes like a real NIC."""
    tags = b""
    if vlan is not None:
        vids = [vlan] if isinstance(vlan, int) else list(vlan)
        for i, vid in enumerate(vids):
            tpid = ETH_QINQ if (qinq and i == 0 and len(vids) > 1) else ETH_VLAN
            tags += struct.pack("!HH", tpid, vid & 0x0FFF)
    frame = mac_bytes(dst) + mac_bytes(src) + tags + struct.pack("!H", ethertype) + payload
    if pad and len(frame) < 60:
        frame += b"\0" * (60 - len(frame))
    return frame


def ipv4(
    src: str | bytes,
    dst: str | bytes,
    proto: int,
    payload: bytes,
    *,
    ttl: int = 64,
    ident: int = 0,
    tos: int = 0,
    dont_fragment: bool = True,
    more_fragments: bool = False,
    frag_offset: int = 0,
    options: bytes = b"",
) -> bytes:
    """An IPv4 packet with a valid header checksum; ``frag_offset`` is in bytes (multiple of 8)."""
    if len(options) % 4:
        raise ValueError("IPv4 options must be a multiple of 4 bytes")
    ihl = 5 + len(options) // 4
    flags = (0x4000 if dont_fragment else 0) | (0x2000 if more_fragments else 0) | (frag_offset // 8)
    hdr = struct.pack(
        "!BBHHHBBH4s4s",
        0x40 | ihl,
        tos,
        ihl * 4 + len(payload),
        ident,
        flags,
        ttl,
        proto,
        0,
        _ip(src),
        _ip(dst),
    )
    hdr += options
    csum = checksum(hdr)
    return hdr[:10] + struct.pack("!H", csum) + hdr[12:] + payload


def ipv6(
    src: str | bytes,
    dst: str | bytes,
    next_header: int,
    payload: bytes,
    *,
    hop_limit: int = 64,
    flow_label: int = 0,
) -> bytes:
    head = struct.pack("!IHBB", (6 << 28) | (flow_label & 0xFFFFF), len(payload), next_header, hop_limit)
    return head + _ip(src) + _ip(dst) + payload


def ip(src: str, dst: str, proto: int, payload: bytes, **kw) -> bytes:
    """IPv4 or IPv6 by the address family of ``src``."""
    if not _is_v6(src):
        return ipv4(src, dst, proto, payload, **kw)
    return ipv6(src, dst, proto, payload)


def tcp(
    sport: int,
    dport: int,
    flags: int,
    payload: bytes = b"",
    *,
    seq: int = 0,
    ack: int = 0,
    window: int = 64240,
    options: bytes = b"",
    src: str | bytes | None = None,
    dst: str | bytes | None = None,
) -> bytes:
    """A TCP segment; the checksum is filled in when ``src``/``dst`` are given (it covers a pseudo-header)."""
    if len(options) % 4:
        raise ValueError("TCP options must be a multiple of 4 bytes")
    off = (5 + len(options) // 4) << 4
    seg = struct.pack(
        "!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, off, flags, window, 0, 0
    )
    seg += options + payload
    if src is not None and dst is not None:
        s, d = _ip(src), _ip(dst)
        csum = checksum(_pseudo(s, d, PROTO_TCP, len(seg)) + seg)
        seg = seg[:16] + struct.pack("!H", csum) + seg[18:]
    return seg


def udp(
    sport: int,
    dport: int,
    payload: bytes = b"",
    *,
    src: str | bytes | None = None,
    dst: str | bytes | None = None,
) -> bytes:
    dgram = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    if src is not None and dst is not None:
        s, d = _ip(src), _ip(dst)
        csum = checksum(_pseudo(s, d, PROTO_UDP, len(dgram)) + dgram) or 0xFFFF
        dgram = dgram[:6] + struct.pack("!H", csum) + dgram[8:]
    return dgram


def icmp_echo(ident: int, seq: int, payload: bytes = b"", *, reply: bool = False) -> bytes:
    msg = struct.pack("!BBHHH", 0 if reply else 8, 0, 0, ident, seq) + payload
    return msg[:2] + struct.pack("!H", checksum(msg)) + msg[4:]


def icmpv6_echo(
    src: str, dst: str, ident: int, seq: int, payload: bytes = b"", *, reply: bool = False
) -> bytes:
    msg = struct.pack("!BBHHH", 129 if reply else 128, 0, 0, ident, seq) + payload
    csum = checksum(_pseudo(_ip(src), _ip(dst), PROTO_ICMPV6, len(msg)) + msg)
    return msg[:2] + struct.pack("!H", csum) + msg[4:]


def arp(op: int, sender_mac: str, sender_ip: str, target_mac: str, target_ip: str) -> bytes:
    """An Ethernet/IPv4 ARP message (op 1 = request, 2 = reply)."""
    return struct.pack("!HHBBH", 1, ETH_IPV4, 6, 4, op) + (
        mac_bytes(sender_mac) + _ip(sender_ip) + mac_bytes(target_mac) + _ip(target_ip)
    )


def lldp(chassis_mac: str, port_id: str, ttl: int = 120) -> bytes:
    """A minimal LLDPDU: chassis id (MAC), port id (interface name), TTL, end."""

    def tlv(t: int, value: bytes) -> bytes:
        return struct.pack("!H", (t << 9) | len(value)) + value

    return (
        tlv(1, b"\x04" + mac_bytes(chassis_mac))
        + tlv(2, b"\x05" + port_id.encode())
        + tlv(3, struct.pack("!H", ttl))
        + tlv(0, b"")
    )


def tcp_frame(
    src_mac: str,
    dst_mac: str,
    src: str,
    dst: str,
    sport: int,
    dport: int,
    flags: int,
    payload: bytes = b"",
    *,
    seq: int = 0,
    ack: int = 0,
    vlan: int | Sequence[int] | None = None,
) -> bytes:
    seg = tcp(sport, dport, flags, payload, seq=seq, ack=ack, src=src, dst=dst)
    return _ip_frame(src_mac, dst_mac, src, dst, PROTO_TCP, seg, vlan)


def udp_frame(
    src_mac: str,
    dst_mac: str,
    src: str,
    dst: str,
    sport: int,
    dport: int,
    payload: bytes = b"",
    *,
    vlan: int | Sequence[int] | None = None,
) -> bytes:
    return _ip_frame(
        src_mac, dst_mac, src, dst, PROTO_UDP, udp(sport, dport, payload, src=src, dst=dst), vlan
    )


def _ip_frame(src_mac: str, dst_mac: str, src: str, dst: str, proto: int, payload: bytes, vlan) -> bytes:
    """An Ethernet frame carrying ``payload`` in an IPv4 or IPv6 header, by the address family of ``src``."""
    ethertype = ETH_IPV6 if _is_v6(src) else ETH_IPV4
    return ethernet(src_mac, dst_mac, ethertype, ip(src, dst, proto, payload), vlan=vlan)


def icmp_echo_frame(
    src_mac: str,
    dst_mac: str,
    src: str,
    dst: str,
    ident: int,
    seq: int,
    *,
    reply: bool = False,
    payload: bytes = b"",
) -> bytes:
    if _is_v6(src):
        msg = icmpv6_echo(src, dst, ident, seq, payload, reply=reply)
        return ethernet(src_mac, dst_mac, ETH_IPV6, ipv6(src, dst, PROTO_ICMPV6, msg))
    msg = icmp_echo(ident, seq, payload, reply=reply)
    return ethernet(src_mac, dst_mac, ETH_IPV4, ipv4(src, dst, PROTO_ICMP, msg))


BROADCAST = "ff:ff:ff:ff:ff:ff"
LLDP_MULTICAST = "01:80:c2:00:00:0e"


def arp_frame(
    src_mac: str, sender_ip: str, target_ip: str, *, reply_to: str | None = None, reply_ip: str | None = None
) -> bytes:
    """A who-has request from ``src_mac`` (broadcast), or, with ``reply_to``, the reply sent to that MAC."""
    if reply_to is None:
        return ethernet(
            src_mac, BROADCAST, ETH_ARP, arp(1, src_mac, sender_ip, "00:00:00:00:00:00", target_ip)
        )
    return ethernet(src_mac, reply_to, ETH_ARP, arp(2, src_mac, sender_ip, reply_to, reply_ip or target_ip))


def lldp_frame(src_mac: str, port_id: str = "eth0") -> bytes:
    return ethernet(src_mac, LLDP_MULTICAST, ETH_LLDP, lldp(src_mac, port_id))


def tcp_session(
    t0_ns: int,
    *,
    client_mac: str,
    server_mac: str,
    client: str,
    server: str,
    cport: int,
    sport: int,
    exchanges: Sequence[tuple[bool, bytes]] = (),
    rtt_ns: int = 20_000_000,
    isn: tuple[int, int] = (1000, 5000),
) -> list[Frame]:
    """A whole TCP conversation: handshake, ``exchanges`` (from_client, payload) each acknowledged by the
    other side, then FIN/FIN/ACK. ``client_mac``/``server_mac`` are the MACs frames of each side carry
    at the capture point (the router's for a remote peer). Sequence numbers are consistent."""
    frames: list[Frame] = []
    t = t0_ns
    cseq, sseq = isn[0], isn[1]
    step = rtt_ns // 2

    def send(from_client: bool, flags: int, payload: bytes = b"") -> None:
        nonlocal t, cseq, sseq
        if from_client:
            data = tcp_frame(
                client_mac, server_mac, client, server, cport, sport, flags, payload, seq=cseq, ack=sseq
            )
            cseq += len(payload) + (1 if flags & (TCP_SYN | TCP_FIN) else 0)
        else:
            data = tcp_frame(
                server_mac, client_mac, server, client, sport, cport, flags, payload, seq=sseq, ack=cseq
            )
            sseq += len(payload) + (1 if flags & (TCP_SYN | TCP_FIN) else 0)
        frames.append(Frame(t, data))
        t += step

    send(True, TCP_SYN)
    send(False, TCP_SYN | TCP_ACK)
    send(True, TCP_ACK)
    for from_client, payload in exchanges:
        send(from_client, TCP_PSH | TCP_ACK, payload)
        send(not from_client, TCP_ACK)
    send(True, TCP_FIN | TCP_ACK)
    send(False, TCP_FIN | TCP_ACK)
    send(True, TCP_ACK)
    return frames


def udp_exchange(
    t0_ns: int,
    *,
    client_mac: str,
    server_mac: str,
    client: str,
    server: str,
    cport: int,
    sport: int,
    request: bytes,
    response: bytes | None,
    rtt_ns: int = 2_000_000,
) -> list[Frame]:
    """A request and (unless ``response`` is None) its response."""
    out = [Frame(t0_ns, udp_frame(client_mac, server_mac, client, server, cport, sport, request))]
    if response is not None:
        out.append(
            Frame(t0_ns + rtt_ns, udp_frame(server_mac, client_mac, server, client, sport, cport, response))
        )
    return out


# --------------------------------------------------------------------------------------------------
# writers


def _atomic_write(path: str | os.PathLike, chunks: Iterable[bytes], *, compress: bool = False) -> Path:
    """Write to a temp file in the target directory, then rename: a reader never sees half a capture.
    gzip output is reproducible (mtime 0, no file name in the header)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as raw:
            if compress:
                with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
                    for c in chunks:
                        gz.write(c)
            else:
                for c in chunks:
                    raw.write(c)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def pcap_bytes(
    frames: Iterable[Frame | tuple[int, bytes]],
    *,
    linktype: int = LINKTYPE_ETHERNET,
    nanosecond: bool = False,
    byteorder: str = "little",
    snaplen: int = 262144,
) -> bytes:
    """A classic pcap file as bytes. Each record keeps ``caplen = min(len(data), snaplen)`` bytes and the
    frame's original length (so ``snaplen=96`` gives a header-only capture with true wire lengths)."""
    e = "<" if byteorder == "little" else ">"
    magic = PCAP_MAGIC_NS if nanosecond else PCAP_MAGIC_US
    out = [struct.pack(e + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    div = 1 if nanosecond else 1000
    for item in frames:
        f = _frame(item)
        sec, frac = divmod(f.ts_ns, NS)
        data = f.data[:snaplen]
        out.append(struct.pack(e + "IIII", sec, frac // div, len(data), f.orig_len) + data)
    return b"".join(out)


def write_pcap(
    path: str | os.PathLike,
    frames: Iterable[Frame | tuple[int, bytes]],
    *,
    linktype: int = LINKTYPE_ETHERNET,
    nanosecond: bool = False,
    byteorder: str = "little",
    snaplen: int = 262144,
    compress: bool = False,
) -> Path:
    """Write a pcap file (gzip-compressed with ``compress``) atomically; returns the path."""
    data = pcap_bytes(frames, linktype=linktype, nanosecond=nanosecond, byteorder=byteorder, snaplen=snaplen)
    return _atomic_write(path, [data], compress=compress)


@dataclass(frozen=True)
class Interface:
    """A pcapng interface (IDB). ``tsresol`` is the raw ``if_tsresol`` byte: 6 = microseconds, 9 = ns,
    ``0x80 | n`` = 2^-n seconds; None writes no option (the pcapng default, microseconds)."""

    linktype: int = LINKTYPE_ETHERNET
    snaplen: int = 0
    tsresol: int | None = 6
    name: str | None = None

    def units(self, ts_ns: int) -> int:
        r = 6 if self.tsresol is None else self.tsresol
        if r & 0x80:
            return (ts_ns << (r & 0x7F)) // NS
        return ts_ns * 10**r // NS if r >= 9 else ts_ns // 10 ** (9 - r)


def _pad4(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def pcapng_block(block_type: int, body: bytes, *, byteorder: str = "little") -> bytes:
    """One pcapng block (type, total length, body padded to 32 bits, total length): also for unknown types."""
    e = "<" if byteorder == "little" else ">"
    body = _pad4(body)
    n = 12 + len(body)
    return struct.pack(e + "II", block_type, n) + body + struct.pack(e + "I", n)


def _option(code: int, value: bytes, e: str) -> bytes:
    return struct.pack(e + "HH", code, len(value)) + _pad4(value)


def pcapng_section(
    frames: Iterable[Frame | tuple[int, bytes]],
    interfaces: Sequence[Interface] = (Interface(),),
    *,
    byteorder: str = "little",
) -> bytes:
    """One section: SHB, one IDB per interface, one EPB per frame (``Frame.interface`` picks the IDB;
    captured bytes are cut at the interface snaplen when it is not 0)."""
    e = "<" if byteorder == "little" else ">"
    out = [pcapng_block(0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1), byteorder=byteorder)]
    for itf in interfaces:
        opts = b""
        if itf.name is not None:
            opts += _option(2, itf.name.encode(), e)
        if itf.tsresol is not None:
            opts += _option(9, bytes([itf.tsresol]), e)
        if opts:
            opts += _option(0, b"", e)
        body = struct.pack(e + "HHI", itf.linktype, 0, itf.snaplen) + opts
        out.append(pcapng_block(1, body, byteorder=byteorder))
    for item in frames:
        f = _frame(item)
        itf = interfaces[f.interface]
        data = f.data[: itf.snaplen] if itf.snaplen else f.data
        ts = itf.units(f.ts_ns)
        body = struct.pack(e + "IIIII", f.interface, ts >> 32, ts & 0xFFFFFFFF, len(data), f.orig_len) + data
        out.append(pcapng_block(6, body, byteorder=byteorder))
    return b"".join(out)


def write_pcapng(
    path: str | os.PathLike,
    frames: Iterable[Frame | tuple[int, bytes]],
    *,
    interfaces: Sequence[Interface] = (Interface(),),
    byteorder: str = "little",
    compress: bool = False,
) -> Path:
    """Write a one-section pcapng file atomically (concatenate ``pcapng_section`` results for more)."""
    return _atomic_write(path, [pcapng_section(frames, interfaces, byteorder=byteorder)], compress=compress)


def write_pcapng_sections(
    path: str | os.PathLike,
    sections: Sequence[tuple[Iterable[Frame | tuple[int, bytes]], Sequence[Interface]]],
    *,
    byteorder: str = "little",
    compress: bool = False,
) -> Path:
    """Several sections in one file, each ``(frames, interfaces)`` with its own interface numbering."""
    data = [pcapng_section(frames, itfs, byteorder=byteorder) for frames, itfs in sections]
    return _atomic_write(path, data, compress=compress)


# --------------------------------------------------------------------------------------------------
# bulk generator (benchmark): whole chunks of records built by numpy

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

    out = _atomic_write(path, chunks())
    return BulkInfo(out, packets, out.stat().st_size, wire, flows, snaplen, full_size, seed)


# --------------------------------------------------------------------------------------------------
# the demo scenario: a week of a small enclave, then a day with known anomalies

SCENARIO_START = datetime(2024, 3, 4, tzinfo=UTC)  # a Monday; in the past so no capture looks "still open"
DAY_NS = 86400 * NS


@dataclass(frozen=True)
class _Host:
    mac: str
    ip: str
    ip6: str | None = None


ROUTER = _Host("00:1b:21:0a:00:01", "10.20.0.1", "2001:db8:20::1")
MAILHOST = _Host("00:16:3e:20:00:0a", "10.20.0.10")
RESOLVER = _Host("00:16:3e:20:00:35", "10.20.0.53", "2001:db8:20::53")
ADMIN = _Host("3c:52:82:01:00:05", "10.20.1.5")
WORKSTATION_MACS = tuple(f"f4:8e:38:64:00:{i:02x}" for i in range(1, 6))
LAPTOP6_MAC = "8c:16:45:64:06:01"
LAPTOP6_PREFIX = "2001:db8:20:100"
VPN_CLIENT = "10.8.0.6"
NTP_SERVERS = ("162.159.200.1", "185.125.190.56", "194.0.5.123")
UPSTREAM_DNS = ("9.9.9.9", "149.112.112.112")
WEB6 = ("2a00:1450:4001:82a::200e", "2a03:2880:f12f:83:face:b00c:0:25de", "2606:4700::6812:1a78")
NEW_TALKER = _Host("b8:27:eb:5a:9c:01", "10.20.0.99")
ODD_ETHERTYPE = 0x88B5  # IEEE 802 "local experimental": nothing on a mail enclave speaks it
_PUBLIC_OCTETS = (23, 31, 45, 62, 77, 81, 85, 91, 104, 109, 141, 176, 185, 188, 193, 195, 212, 213, 217)

SCENARIO_NETWORKS: dict[str, str] = {
    "10.20.0.0/24": "servers",
    "10.20.1.0/24": "admin",
    "10.20.100.0/24": "dhcp",
    "10.8.0.0/24": "vpn",
    "2001:db8:20::/48": "enclave6",
    "0.0.0.0/0": "internet",
    "::/0": "internet",
}
# Canonicalisation that makes the normal churn (internet clients, DHCP leases, RFC 4941 temporary
# addresses, client ephemeral ports) stable keys, so that only the anomalies are new.
SCENARIO_TABLES: dict[str, dict] = {
    "hosts": {"keys": ["src"], "collapse": ["internet", "dhcp"], "ipv6_prefix": 64},
    "pairs": {"keys": ["src", "dst", "proto"], "collapse": ["internet", "dhcp"], "ipv6_prefix": 64},
    "services": {
        "keys": ["client", "server", "proto", "service_port"],
        "collapse": ["internet", "dhcp"],
        "ipv6_prefix": 64,
    },
    "link": {"keys": ["ethertype", "src_mac", "dst_mac"]},
}
SCENARIO_INTERVAL = 3600


@dataclass(frozen=True)
class ExpectedRow:
    """One new row a diff must report: the table and its key values, in the table's key order."""

    table: str
    key: tuple[tuple[str, object], ...]

    @classmethod
    def of(cls, table: str, **key: object) -> ExpectedRow:
        return cls(table, tuple((k, key[k]) for k in SCENARIO_TABLES[table]["keys"]))

    def as_dict(self) -> dict[str, object]:
        return dict(self.key)

    def __str__(self) -> str:
        return f"{self.table}: " + ", ".join(f"{k}={format_value(k, v)}" for k, v in self.key)


def format_value(field_name: str, value: object) -> str:
    return vocab.format_value(field_name, value)


@dataclass(frozen=True)
class Anomaly:
    name: str  # short id, e.g. "telnet"
    description: str
    time: datetime  # when it starts (UTC)
    rows: tuple[ExpectedRow, ...]  # every new row it must cause in the suggested tables


@dataclass(frozen=True)
class Scenario:
    """What ``enclave_scenario`` wrote and what a diff of its last day must find."""

    directory: Path
    start: datetime  # first interval of the normal week (UTC)
    days: int  # normal days (the learning window); the last day follows them
    rotate: int
    seed: int
    normal_files: tuple[Path, ...]
    last_day_files: tuple[Path, ...]  # the day after the week: the anomalies (if any) are in there
    anomalies: tuple[Anomaly, ...]
    packets: int
    networks: dict[str, str] = field(default_factory=lambda: dict(SCENARIO_NETWORKS))
    tables: dict[str, dict] = field(default_factory=lambda: {k: dict(v) for k, v in SCENARIO_TABLES.items()})
    interval: int = SCENARIO_INTERVAL
    roles: dict[str, str] = field(default_factory=dict)  # address or MAC -> what it is (for people)

    @property
    def anomaly_files(self) -> tuple[Path, ...]:
        return self.last_day_files

    @property
    def files(self) -> tuple[Path, ...]:
        return self.normal_files + self.last_day_files

    @property
    def last_day(self) -> datetime:
        """Start of the day after the normal week (UTC)."""
        return self.start + timedelta(days=self.days)

    @property
    def last_day_end(self) -> datetime:
        return self.start + timedelta(days=self.days + 1)

    def expected_rows(self) -> set[ExpectedRow]:
        return {r for a in self.anomalies for r in a.rows}

    def anomaly_of(self, row: ExpectedRow) -> Anomaly | None:
        return next((a for a in self.anomalies if row in a.rows), None)

    def config_dict(self, root: str | os.PathLike) -> dict:
        """A TOML-able config with the store, baselines and reports under ``root`` (absolute paths, since
        flowdiff takes them relative to the current directory)."""
        root = Path(root).resolve()
        return {
            "store": str(root / "store"),
            "baselines": str(root / "baselines"),
            "reports": str(root / "reports"),
            "interval": self.interval,
            "sensor": "demo",
            "networks": dict(self.networks),
            "tables": {k: dict(v) for k, v in self.tables.items()},
        }


class _Day:
    """Frames of one day; every draw comes from this day's own RNG."""

    def __init__(self, day_ns: int, rng: np.random.Generator):
        self.t0 = day_ns
        self.rng = rng
        self.frames: list[Frame] = []
        self.qid = 0

    # -- helpers
    def when(self, daytime: bool = True) -> int:
        """A start time, in an hour weighted to office hours, far enough from the hour's end that the
        conversation stays in one rotated file and one interval."""
        w = np.array([3.0 if (daytime and 7 <= h < 19) else 1.0 for h in range(24)])
        h = int(self.rng.choice(24, p=w / w.sum()))
        return self.t0 + h * 3600 * NS + int(self.rng.integers(30, 3500)) * NS + int(self.rng.integers(0, NS))

    def eph(self) -> int:
        return int(self.rng.integers(32768, 61000))

    def internet4(self) -> str:
        o = int(self.rng.choice(_PUBLIC_OCTETS))
        a, b, c = (int(x) for x in self.rng.integers(1, 255, 3))
        return f"{o}.{a}.{b}.{c}"

    def blob(self, lo: int, hi: int, head: bytes = b"") -> bytes:
        return head + self.rng.bytes(int(self.rng.integers(lo, hi)))

    def dns(
        self, t: int, client: _Host, name: str, *, v6: bool = False, upstream: bool | None = None
    ) -> None:
        self.qid = (self.qid + 1) & 0xFFFF
        query = _dns_query(self.qid, name)
        answer = _dns_answer(self.qid, name, self.rng.bytes(4))
        server = RESOLVER.ip6 if v6 else RESOLVER.ip
        cip = client.ip6 if v6 else client.ip
        self.frames += udp_exchange(
            t, client_mac=client.mac, server_mac=RESOLVER.mac, client=cip, server=server,
            cport=self.eph(), sport=53, request=query, response=answer, rtt_ns=18_000_000,
        )  # fmt: skip
        if upstream if upstream is not None else self.rng.random() < 0.5:
            self.frames += udp_exchange(
                t + 500_000, client_mac=RESOLVER.mac, server_mac=ROUTER.mac, client=RESOLVER.ip,
                server=UPSTREAM_DNS[int(self.rng.integers(0, 2))], cport=self.eph(), sport=53,
                request=query, response=answer, rtt_ns=15_000_000,
            )  # fmt: skip

    def session(self, t: int, client: tuple[str, str], server: tuple[str, str], port: int, ex: list) -> None:
        """TCP conversation; ``client``/``server`` are (MAC at the capture point, address)."""
        isn = (int(self.rng.integers(0, 2**32)), int(self.rng.integers(0, 2**32)))
        self.frames += tcp_session(
            t, client_mac=client[0], server_mac=server[0], client=client[1], server=server[1],
            cport=self.eph(), sport=port, exchanges=ex, rtt_ns=int(self.rng.integers(2, 60)) * 1_000_000, isn=isn,
        )  # fmt: skip

    def arp(self, t: int, asker: _Host, target: _Host, asker_ip: str | None = None) -> None:
        ip_a = asker_ip or asker.ip
        self.frames.append(Frame(t, arp_frame(asker.mac, ip_a, target.ip)))
        self.frames.append(Frame(t + 300_000, arp_frame(target.mac, target.ip, ip_a, reply_to=asker.mac)))

    # -- conversations
    def smtp_exchanges(self) -> list:
        body = []
        size = int(self.rng.integers(300, 4000))
        while size > 0:
            body.append((True, self.rng.bytes(min(size, 1448))))
            size -= 1448
        return [
            (False, b"220 mail.example.org ESMTP\r\n"),
            (True, b"EHLO client.example.net\r\n"),
            (False, b"250-mail.example.org\r\n250-STARTTLS\r\n250 8BITMIME\r\n"),
            (True, b"MAIL FROM:<a@example.net>\r\n"),
            (False, b"250 OK\r\n"),
            (True, b"RCPT TO:<b@example.org>\r\n"),
            (False, b"250 OK\r\n"),
            (True, b"DATA\r\n"),
            (False, b"354 go ahead\r\n"),
            *body,
            (True, b"\r\n.\r\n"),
            (False, b"250 queued\r\n"),
            (True, b"QUIT\r\n"),
            (False, b"221 bye\r\n"),
        ]

    def tls_exchanges(self, rounds: int) -> list:
        ex = [(True, self.blob(200, 520, b"\x16\x03\x01")), (False, self.blob(1200, 1448, b"\x16\x03\x03"))]
        for _ in range(rounds):
            ex += [(True, self.blob(40, 300, b"\x17\x03\x03")), (False, self.blob(60, 1448, b"\x17\x03\x03"))]
        return ex


def _dns_query(qid: int, name: str) -> bytes:
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + q + struct.pack("!HH", 1, 1)


def _dns_answer(qid: int, name: str, addr: bytes) -> bytes:
    q = _dns_query(qid, name)
    head = struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0)
    return head + q[12:] + struct.pack("!HHHIH", 0xC00C, 1, 1, 300, 4) + addr


def _ntp(mode: int) -> bytes:
    return bytes([(4 << 3) | mode]) + b"\0" * 47


def _normal_day(day: _Day, dhcp_ips: list[str], v6_addr: str) -> None:
    """The traffic of an ordinary day; every key it produces also appears on every other day."""
    workstations = [_Host(m, a) for m, a in zip(WORKSTATION_MACS, dhcp_ips, strict=True)]
    laptop6 = _Host(LAPTOP6_MAC, "", v6_addr)
    mail = (MAILHOST.mac, MAILHOST.ip)
    rng = day.rng
    for h in range(24):  # chrony on both servers: every hour has traffic, so every rotated file exists
        for host in (MAILHOST, RESOLVER):
            t = day.t0 + h * 3600 * NS + int(rng.integers(60, 3500)) * NS
            day.frames += udp_exchange(
                t, client_mac=host.mac, server_mac=ROUTER.mac, client=host.ip,
                server=NTP_SERVERS[int(rng.integers(0, 3))], cport=day.eph(), sport=123,
                request=_ntp(3), response=_ntp(4), rtt_ns=25_000_000,
            )  # fmt: skip
    arp_pairs = [(h, ROUTER) for h in (MAILHOST, RESOLVER, ADMIN, *workstations)]
    arp_pairs += [(ROUTER, h) for h in (MAILHOST, RESOLVER, ADMIN, *workstations)]
    arp_pairs += [(h, t) for h in (ADMIN, *workstations) for t in (MAILHOST, RESOLVER)]
    arp_pairs += [(MAILHOST, RESOLVER), (RESOLVER, MAILHOST)]
    for asker, target in arp_pairs:
        for _ in range(3):
            day.arp(day.when(daytime=False), asker, target)
    for _ in range(50):  # inbound mail from all over the internet, each client a new ephemeral port
        t = day.when()
        day.dns(t, MAILHOST, "client.example.net")
        day.session(t + 60 * 1_000_000, (ROUTER.mac, day.internet4()), mail, 25, day.smtp_exchanges())
    for _ in range(12):  # outbound mail
        t = day.when()
        day.dns(t, MAILHOST, "mx.example.com")
        day.session(t + 60 * 1_000_000, mail, (ROUTER.mac, day.internet4()), 25, day.smtp_exchanges())
    for ws in workstations:
        for _ in range(4):
            day.dns(day.when(), ws, "intranet.example.org", upstream=False)
        for _ in range(2):
            day.session(day.when(), (ws.mac, ws.ip), mail, 993, day.tls_exchanges(2))
        day.session(day.when(), (ws.mac, ws.ip), mail, 587, day.smtp_exchanges())
        for _ in range(3):
            t = day.when()
            day.dns(t, ws, "www.example.com")
            day.session(
                t + 30 * 1_000_000, (ws.mac, ws.ip), (ROUTER.mac, day.internet4()), 443, day.tls_exchanges(2)
            )
    for _ in range(4):  # the road warrior reads mail over the VPN
        day.session(day.when(), (ROUTER.mac, VPN_CLIENT), mail, 993, day.tls_exchanges(3))
    for _ in range(2):  # the admin logs in to the mail server
        ex = [(False, b"SSH-2.0-OpenSSH_9.6\r\n"), (True, b"SSH-2.0-OpenSSH_9.6\r\n")]
        ex += [(bool(i % 2), day.blob(36, 400)) for i in range(8)]
        day.session(day.when(), (ADMIN.mac, ADMIN.ip), mail, 22, ex)
    for _ in range(3):
        day.dns(day.when(), ADMIN, "mail.example.org", upstream=False)
    for target in (MAILHOST, RESOLVER):
        for _ in range(2):
            t = day.when()
            for s in range(4):
                ts = t + s * NS
                day.frames.append(
                    Frame(ts, icmp_echo_frame(ADMIN.mac, target.mac, ADMIN.ip, target.ip, 7, s))
                )
                day.frames.append(
                    Frame(
                        ts + 400_000,
                        icmp_echo_frame(target.mac, ADMIN.mac, target.ip, ADMIN.ip, 7, s, reply=True),
                    )
                )
    for _ in range(5):  # an IPv6-only laptop with an RFC 4941 temporary address that changes daily
        day.dns(day.when(), laptop6, "www.example.com", v6=True, upstream=False)
    for _ in range(4):
        web = WEB6[int(rng.integers(0, len(WEB6)))]
        day.session(day.when(), (LAPTOP6_MAC, v6_addr), (ROUTER.mac, web), 443, day.tls_exchanges(3))


def _inject_anomalies(day: _Day) -> tuple[Anomaly, ...]:
    """The last day's anomalies, at fixed times, with the rows each must cause."""
    at = lambda h, m: day.t0 + (h * 3600 + m * 60) * NS  # noqa: E731
    ts = lambda t: datetime.fromtimestamp(t / NS, UTC)  # noqa: E731
    mail = (MAILHOST.mac, MAILHOST.ip)
    out = []

    t = at(2, 47)
    day.dns(t, MAILHOST, "irc.example.net", upstream=True)
    irc = [(True, b"NICK mx01\r\nUSER mx01 0 * :mx\r\n"), (False, b":irc 001 mx01 :Welcome\r\n")]
    irc += [(True, b"JOIN #ops\r\n"), (False, b":mx01 JOIN #ops\r\n")]
    day.session(t + 40 * 1_000_000, mail, (ROUTER.mac, "198.51.100.77"), 6667, irc)
    out.append(Anomaly(
        "mail-outbound", "the mail server opens a connection to an IRC server on the internet (tcp/6667)", ts(t),
        (ExpectedRow.of("services", client=MAILHOST.ip, server="internet", proto=PROTO_TCP, service_port=6667),),
    ))  # fmt: skip

    t = at(11, 5)
    day.arp(t, NEW_TALKER, RESOLVER)
    for i in range(3):
        day.dns(t + (5 + i * 600) * NS, NEW_TALKER, "pool.ntp.org", upstream=False)
    out.append(Anomaly(
        "new-talker", f"a device never seen before ({NEW_TALKER.ip}, {NEW_TALKER.mac}) appears and uses the resolver",
        ts(t),
        (
            ExpectedRow.of("hosts", src=NEW_TALKER.ip),
            ExpectedRow.of("pairs", src=NEW_TALKER.ip, dst=RESOLVER.ip, proto=PROTO_UDP),
            ExpectedRow.of("pairs", src=RESOLVER.ip, dst=NEW_TALKER.ip, proto=PROTO_UDP),
            ExpectedRow.of("services", client=NEW_TALKER.ip, server=RESOLVER.ip, proto=PROTO_UDP, service_port=53),
            ExpectedRow.of("link", ethertype=ETH_ARP, src_mac=NEW_TALKER.mac, dst_mac=BROADCAST),
            ExpectedRow.of("link", ethertype=ETH_ARP, src_mac=RESOLVER.mac, dst_mac=NEW_TALKER.mac),
            ExpectedRow.of("link", ethertype=ETH_IPV4, src_mac=NEW_TALKER.mac, dst_mac=RESOLVER.mac),
            ExpectedRow.of("link", ethertype=ETH_IPV4, src_mac=RESOLVER.mac, dst_mac=NEW_TALKER.mac),
        ),
    ))  # fmt: skip

    t = at(15, 32)
    ex = [(False, b"\xff\xfd\x18\xff\xfd\x20"), (True, b"\xff\xfc\x18\xff\xfc\x20"), (False, b"login: ")]
    ex += [
        (True, b"root\r\n"),
        (False, b"Password: "),
        (True, b"123456\r\n"),
        (False, b"Login incorrect\r\n"),
    ]
    day.session(t, (ROUTER.mac, "203.0.113.66"), mail, 23, ex)
    out.append(Anomaly(
        "telnet", "someone on the internet logs in to the mail server with telnet (tcp/23)", ts(t),
        (ExpectedRow.of("services", client="internet", server=MAILHOST.ip, proto=PROTO_TCP, service_port=23),),
    ))  # fmt: skip

    t = at(19, 10)
    odd_mac = WORKSTATION_MACS[2]
    for i in range(5):
        payload = b"FDX-TEST" + struct.pack("!I", i) + b"\0" * 40
        day.frames.append(Frame(t + i * 2 * NS, ethernet(odd_mac, BROADCAST, ODD_ETHERTYPE, payload)))
    out.append(Anomaly(
        "odd-ethertype", f"a workstation ({odd_mac}) broadcasts frames of ethertype 0x{ODD_ETHERTYPE:04x}", ts(t),
        (ExpectedRow.of("link", ethertype=ODD_ETHERTYPE, src_mac=odd_mac, dst_mac=BROADCAST),),
    ))  # fmt: skip
    return tuple(out)


def _daily_addresses(rng: np.random.Generator) -> tuple[list[str], str]:
    leases = rng.choice(np.arange(100, 200), size=len(WORKSTATION_MACS), replace=False)
    iid = int(rng.integers(1, 2**63)) & ~(0x02 << 56)  # RFC 4941: random, universal/local bit clear
    v6 = str(ipaddress.ip_address(f"{LAPTOP6_PREFIX}::") + iid)
    return [f"10.20.100.{int(x)}" for x in leases], v6


def _scenario_roles() -> dict[str, str]:
    roles = {
        ROUTER.ip: "router", ROUTER.mac: "router", MAILHOST.ip: "mail server", MAILHOST.mac: "mail server",
        RESOLVER.ip: "DNS resolver", RESOLVER.mac: "DNS resolver", str(RESOLVER.ip6): "DNS resolver (IPv6)",
        ADMIN.ip: "admin workstation", ADMIN.mac: "admin workstation", VPN_CLIENT: "VPN client",
        LAPTOP6_MAC: "IPv6 laptop", f"{LAPTOP6_PREFIX}::/64": "IPv6 laptop (temporary addresses)",
        "dhcp": "DHCP pool (workstations)", "internet": "the internet",
    }  # fmt: skip
    roles.update({m: f"workstation {i + 1}" for i, m in enumerate(WORKSTATION_MACS)})
    return roles


def enclave_scenario(
    directory: str | os.PathLike,
    *,
    days: int = 7,
    anomaly_day: bool = True,
    rotate: int = 3600,
    seed: int = 0,
    snaplen: int = 96,
    start: datetime = SCENARIO_START,
    interval: int = SCENARIO_INTERVAL,
) -> Scenario:
    """Write ``days`` normal days of a small mail enclave, then one more day (with the anomalies when
    ``anomaly_day``), as rotated captures named like ``tcpdump -G rotate -w %Y%m%d%H%M%S.pcap``
    (header-only, ``-s 96``), into ``directory``. Returns what was written and the exact new rows a diff
    of the last day against a baseline of the week must report with the suggested tables.

    Normal churn on purpose: inbound SMTP from ever new internet addresses and ephemeral ports, DHCP
    leases that change daily inside 10.20.100.0/24, an RFC 4941 temporary IPv6 address per day.
    ``interval`` is the one the suggested config uses; conversations never cross an hour boundary, so
    any rotation or interval that divides a day into whole hours keeps each one in one file."""
    if days < 1 or rotate < 1 or interval < 1:
        raise ValueError("days, rotate and interval must be positive")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    start_ns = int(start.timestamp()) * NS
    normal: list[Path] = []
    last: list[Path] = []
    anomalies: tuple[Anomaly, ...] = ()
    packets = 0
    for d in range(days + 1):
        day = _Day(start_ns + d * DAY_NS, np.random.default_rng([seed, d]))
        dhcp_ips, v6 = _daily_addresses(day.rng)
        _normal_day(day, dhcp_ips, v6)
        if d == days and anomaly_day:
            anomalies = _inject_anomalies(day)
        written = _write_rotated(directory, day.frames, rotate, snaplen)
        packets += len(day.frames)
        (last if d == days else normal).extend(written)
    return Scenario(
        directory=directory, start=start, days=days, rotate=rotate, seed=seed, normal_files=tuple(normal),
        last_day_files=tuple(last), anomalies=anomalies, packets=packets, roles=_scenario_roles(),
        interval=interval,
    )  # fmt: skip


def _write_rotated(directory: Path, frames: list[Frame], rotate: int, snaplen: int) -> list[Path]:
    """One file per ``rotate`` seconds, like tcpdump -G; mtime = end of the period (a closed file)."""
    frames = sorted(frames, key=lambda f: f.ts_ns)
    groups: dict[int, list[Frame]] = {}
    for f in frames:
        groups.setdefault(f.ts_ns // (rotate * NS), []).append(f)
    out = []
    for period, group in sorted(groups.items()):
        begin = period * rotate
        name = datetime.fromtimestamp(begin, UTC).strftime("%Y%m%d%H%M%S") + ".pcap"
        path = write_pcap(directory / name, group, snaplen=snaplen)
        os.utime(path, (begin + rotate, begin + rotate))
        out.append(path)
    return out
