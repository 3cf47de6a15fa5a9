"""Frame builders and capture writers: the bytes of Ethernet/IP frames and the pcap/pcapng files that hold
them, for the demo scenario and the tests.

Everything here is a pure function of its arguments: no wall clock, no global random state, so a test
can regenerate a capture and get the same bytes.

* frame builders (``ethernet``, ``ipv4``, ``ipv6``, ``tcp``, ``udp``, ``icmp_echo``, ``arp`` ...) that
  return ``bytes`` with correct lengths and checksums, and ``tcp_session`` for a whole conversation;
* writers: ``write_pcap`` and ``write_pcapng`` for lists of ``Frame`` (small files), atomic.

The demo scenario (``flowdiff.demo.scenario``) is built from these; the benchmark's bulk generator
(``benchmarks/synth_bulk.py``) builds whole chunks of records with numpy instead and only shares the
constants and ``atomic_write``.
"""

from __future__ import annotations

import functools
import gzip
import ipaddress
import os
import struct
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Frame",
    "Interface",
    "LINKTYPE_ETHERNET",
    "ETH_IPV4",
    "ETH_IPV6",
    "ETH_ARP",
    "ETH_VLAN",
    "ETH_QINQ",
    "ETH_LLDP",
    "TCP_FIN",
    "TCP_SYN",
    "TCP_RST",
    "TCP_PSH",
    "TCP_ACK",
    "PROTO_ICMP",
    "PROTO_TCP",
    "PROTO_UDP",
    "PROTO_ICMPV6",
    "PCAP_MAGIC_US",
    "PCAP_MAGIC_NS",
    "NS",
    "BROADCAST",
    "LLDP_MULTICAST",
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
    "atomic_write",
    "pcap_bytes",
    "write_pcap",
    "pcapng_block",
    "pcapng_section",
    "write_pcapng",
    "write_pcapng_sections",
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


def atomic_write(path: str | os.PathLike, chunks: Iterable[bytes], *, compress: bool = False) -> Path:
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
    return atomic_write(path, [data], compress=compress)


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
    return atomic_write(path, [pcapng_section(frames, interfaces, byteorder=byteorder)], compress=compress)


def write_pcapng_sections(
    path: str | os.PathLike,
    sections: Sequence[tuple[Iterable[Frame | tuple[int, bytes]], Sequence[Interface]]],
    *,
    byteorder: str = "little",
    compress: bool = False,
) -> Path:
    """Several sections in one file, each ``(frames, interfaces)`` with its own interface numbering."""
    data = [pcapng_section(frames, itfs, byteorder=byteorder) for frames, itfs in sections]
    return atomic_write(path, data, compress=compress)
