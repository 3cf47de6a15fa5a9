"""Reference decoder: one frame at a time with dpkt's declared header layouts.

It exists to check the compiled fast path (``flowdiff.decode``): the tests feed both the same random
frames and demand identical arrays. It is slow (tens of µs per frame) and never used by collect, so it
lives with the tests, not in the package (``test_decode.py`` and ``test_oracle.py`` import it).

dpkt's own payload dispatch is not trusted (``ethernet.py`` keeps an undecodable payload as bytes,
stops after two VLAN tags, and ``ip6.py`` treats AH as an extension header), so each layer is unpacked
with ``_hdr``: dpkt's ``__hdr__`` fields of exactly one header, and the walk from layer to layer is
written out here following ``../shared/pcaps/ORACLE.md``. Headers dpkt does not declare (PPI, radiotap
flags, NFLOG TLVs, IPoIB, DSA, PBB, VN-Tag) are read with ``struct``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, fields
from typing import Any

import dpkt
import dpkt.arp
import dpkt.ethernet
import dpkt.icmp
import dpkt.ip
import dpkt.ip6
import dpkt.pppoe
import dpkt.sll
import dpkt.sll2
import dpkt.tcp
import dpkt.udp
import numpy as np

from flowdiff.decode import LINKTYPES
from flowdiff.schema import PACKET_FIELDS, DecodeStatus

__all__ = ["decode_reference"]

VLAN_TYPES = (0x8100, 0x88A8, 0x9100, 0x9200)
IPV6_SKIPPED = (0, 43, 44, 60)  # the only extension headers the oracle walks over
PPP_TO_ETHERTYPE = {0x0021: 0x0800, 0x0057: 0x86DD, 0x0281: 0x8847, 0x0283: 0x8848}


class _Stop(Exception):
    """Decoding of this frame ends with ``status``; fields set so far stay."""

    def __init__(self, status: int):
        self.status = status


@dataclass
class _Frame:
    status: int = DecodeStatus.OK
    ethertype: int = 0
    src_mac: int = 0
    dst_mac: int = 0
    vlan: int = -1  # -1: no tag seen yet (written as 0)
    ip_version: int = 0
    src_hi: int = 0
    src_lo: int = 0
    dst_hi: int = 0
    dst_lo: int = 0
    proto: int = 0
    sport: int = 0
    dport: int = 0
    icmp_type: int = 0
    icmp_code: int = 0
    tcp_flags: int = 0


def _hdr(cls: type, data: bytes) -> Any:
    """One dpkt header (its ``__hdr__`` fields only, payload left alone); None when not captured."""
    obj = cls.__new__(cls)
    try:
        dpkt.Packet.unpack(obj, data)
    except (dpkt.NeedData, struct.error):
        return None
    return obj


def _need(data: bytes, n: int) -> None:
    if len(data) < n:
        raise _Stop(DecodeStatus.TRUNCATED_LINK)


def _mac(b: bytes) -> int:
    return int.from_bytes(b[:6], "big")


def _be16(b: bytes, p: int) -> int:
    return struct.unpack_from(">H", b, p)[0]


# ----------------------------------------------------------------- link layers -> (ethertype, payload)
# Each returns (type, payload, is_ethertype): is_ethertype False means "type" is already 0x0800/0x86dd
# chosen by the link itself, True means an Ethernet type to walk (tags, PBB, PPPoE, MPLS, LLC).


def _llc(f: _Frame, data: bytes) -> tuple[int, bytes]:
    _need(data, 3)
    dsap, ssap, ctrl = data[0], data[1], data[2]
    if dsap == 0xAA and ssap == 0xAA and ctrl == 0x03:
        _need(data, 8)
        if data[3:5] == b"\0\0" and data[5] in (0x00, 0xF8):
            return _be16(data, 6), data[8:]
        raise _Stop(DecodeStatus.NOT_IP)
    if dsap == 0x06 and ssap == 0x06 and ctrl == 0x03:
        return 0x0800, data[3:]
    raise _Stop(DecodeStatus.NOT_IP)


def _ethernet(f: _Frame, data: bytes, tag_len: int = 0) -> tuple[int, bytes, bool]:
    _need(data, 14)
    eth = _hdr(dpkt.ethernet.Ethernet, data[:14])
    f.dst_mac, f.src_mac = _mac(eth.dst), _mac(eth.src)
    rest = data[12:]
    if tag_len:  # Marvell DSA / EDSA tag between the source MAC and the type
        _need(rest, tag_len + 2)
        tag = rest[tag_len - 4 : tag_len]
        if tag[0] & 0x20:
            f.vlan = ((tag[2] & 0x0F) << 8) | tag[3]
        rest = rest[tag_len:]
    etype = _be16(rest, 0)
    rest = rest[2:]
    if etype < 0x0600 and rest[:2] == b"\xff\xff":
        raise _Stop(DecodeStatus.NOT_IP)  # Novell raw 802.3
    return etype, rest, True


def _raw(f: _Frame, data: bytes) -> tuple[int, bytes, bool]:
    _need(data, 1)
    version = data[0] >> 4
    if version not in (4, 6):
        raise _Stop(DecodeStatus.BAD_IP)
    return (0x0800 if version == 4 else 0x86DD), data, False


def _null(f: _Frame, data: bytes) -> tuple[int, bytes, bool]:
    _need(data, 4)
    if data[:2] == b"\xff\x03":
        return _ppp(f, data)
    (af,) = struct.unpack("<I", data[:4])
    if af & 0xFFFF0000 and not af & 0xFFFF:
        (af,) = struct.unpack(">I", data[:4])
    if af == 2:
        return 0x0800, data[4:], False
    if af in (10, 24, 28, 30):
        return 0x86DD, data[4:], False
    if 0x0600 <= af <= 0xFFFF:
        return af, data[4:], True
    raise _Stop(DecodeStatus.NOT_IP)


def _ppp(f: _Frame, data: bytes) -> tuple[int, bytes, bool]:
    _need(data, 2)
    if data[0] in (0x0F, 0x8F) and data[1] == 0:  # Cisco HDLC framing
        return _chdlc(f, data)
    if data[:2] == b"\xff\x03":
        data = data[2:]
    _need(data, 1)
    if data[0] & 1:
        proto, data = data[0], data[1:]
    else:
        _need(data, 2)
        proto, data = _be16(data, 0), data[2:]
    if proto not in PPP_TO_ETHERTYPE:
        raise _Stop(DecodeStatus.NOT_IP)
    return PPP_TO_ETHERTYPE[proto], data, True


def _chdlc(f: _Frame, data: bytes) -> tuple[int, bytes, bool]:
    _need(data, 4)
    return _be16(data, 2), data[4:], True


def _pppoe(f: _Frame, data: bytes) -> tuple[int, bytes, bool]:
    _need(data, 8)
    proto = _be16(data, 6)
    if proto not in PPP_TO_ETHERTYPE:
        raise _Stop(DecodeStatus.NOT_IP)
    return PPP_TO_ETHERTYPE[proto], data[8:], True


def _sll_common(f: _Frame, hatype: int, halen: int, addr: bytes, proto: int, rest: bytes):
    if halen == 6:
        f.src_mac = _mac(addr)
    if hatype == 824:
        raise _Stop(DecodeStatus.NOT_IP)
    if proto >= 0x0600:
        return proto, rest, True
    if proto == 4:
        etype, rest = _llc(f, rest)
        if etype < 0x0600:
            raise _Stop(DecodeStatus.NOT_IP)
        return etype, rest, True
    raise _Stop(DecodeStatus.NOT_IP)


def _sll(f: _Frame, data: bytes) -> tuple[int, bytes, bool]:
    _need(data, 16)
    h = _hdr(dpkt.sll.SLL, data)
    return _sll_common(f, h.hrd, h.hlen, h.hdr, h.ethtype, data[16:])


def _sll2(f: _Frame, data: bytes) -> tuple[int, bytes, bool]:
    _need(data, 20)
    h = _hdr(dpkt.sll2.SLL2, data)
    return _sll_common(f, h.hrd, h.hlen, h.hdr, h.ethtype, data[20:])


def _nflog(f: _Frame, data: bytes) -> tuple[int, bytes, bool]:
    _need(data, 4)
    family = data[0]
    p = 4
    order = "<"
    if len(data) >= 8:
        (ln,) = struct.unpack_from("<H", data, p)
        if ln < 4 or p + ln > len(data):
            (ln2,) = struct.unpack_from(">H", data, p)
            if 4 <= ln2 and p + ln2 <= len(data):
                order = ">"
    hwproto = 0
    payload = None
    while p + 4 <= len(data):
        ln, tlv_type = struct.unpack_from(order + "HH", data, p)
        tlv_type &= 0x7FFF
        if ln < 4 or p + ln > len(data):
            break
        if tlv_type == 1 and ln >= 6:
            hwproto = _be16(data, p + 4)
        if tlv_type == 9:
            payload = data[p + 4 : p + ln]
            break
        p += (ln + 3) & ~3
    if payload is None:
        raise _Stop(DecodeStatus.NOT_IP)
    if family == 2:
        return 0x0800, payload, False
    if family == 10:
        return 0x86DD, payload, False
    if hwproto >= 0x0600:
        return hwproto, payload, True
    raise _Stop(DecodeStatus.NOT_IP)


def _ieee80211(f: _Frame, data: bytes, pad: bool = False) -> tuple[int, bytes, bool]:
    _need(data, 10)
    fc0, fc1 = data[0], data[1]
    ftype, subtype = (fc0 >> 2) & 3, fc0 >> 4
    if ftype == 1:
        f.dst_mac = _mac(data[4:])
        raise _Stop(DecodeStatus.NOT_IP)
    if len(data) < 24:
        f.dst_mac = _mac(data[4:])
        raise _Stop(DecodeStatus.TRUNCATED_LINK)
    a1, a2, a3 = _mac(data[4:]), _mac(data[10:]), _mac(data[16:])
    if ftype != 2:
        f.dst_mac, f.src_mac = a1, a2
        raise _Stop(DecodeStatus.NOT_IP)
    tods, fromds = fc1 & 1, (fc1 >> 1) & 1
    hdr = 24
    if tods and fromds:
        if len(data) < 30:
            f.dst_mac = a3
            raise _Stop(DecodeStatus.TRUNCATED_LINK)
        f.dst_mac, f.src_mac, hdr = a3, _mac(data[24:]), 30
    elif tods:
        f.dst_mac, f.src_mac = a3, a2
    elif fromds:
        f.dst_mac, f.src_mac = a1, a3
    else:
        f.dst_mac, f.src_mac = a1, a2
    amsdu = False
    if subtype & 8:
        _need(data, hdr + 2)
        amsdu = bool(data[hdr] & 0x80)
        hdr += 2 + (4 if fc1 & 0x80 else 0)
    if pad:
        hdr = (hdr + 3) & ~3
    if subtype & 4 or fc1 & 0x40 or amsdu:
        raise _Stop(DecodeStatus.NOT_IP)
    etype, rest = _llc(f, data[hdr:])
    if etype < 0x0600:
        raise _Stop(DecodeStatus.NOT_IP)
    return etype, rest, True


def _radiotap(f: _Frame, data: bytes) -> tuple[int, bytes, bool]:
    _need(data, 8)
    hlen, present = struct.unpack_from("<HI", data, 2)
    p, ext = 8, present
    while ext & 0x80000000:
        _need(data, p + 4)
        (ext,) = struct.unpack_from("<I", data, p)
        p += 4
    pad = False
    if present & 2:
        if present & 1:
            p = ((p + 7) & ~7) + 8
        if p < len(data) and p < hlen:
            pad = bool(data[p] & 0x20)
    _need(data, hlen)
    return _ieee80211(f, data[hlen:], pad)


def _ppi(f: _Frame, data: bytes) -> tuple[int, bytes, bool]:
    _need(data, 8)
    hlen, dlt = struct.unpack_from("<HI", data, 2)
    _need(data, hlen)
    inner = LINKTYPES.get(dlt)
    link = _LINKS.get(inner.kind) if inner else None
    if link is None or link in (_ppi, _radiotap, _prism):
        raise _Stop(DecodeStatus.UNKNOWN_LINKTYPE)
    return link(f, data[hlen:])


def _prism(f: _Frame, data: bytes) -> tuple[int, bytes, bool]:
    _need(data, 8)
    (hlen,) = struct.unpack_from("<I", data, 4)
    _need(data, hlen)
    return _ieee80211(f, data[hlen:])


def _ipoib(f: _Frame, data: bytes) -> tuple[int, bytes, bool]:
    _need(data, 44)
    return _be16(data, 40), data[44:], True


def _fddi(f: _Frame, data: bytes) -> tuple[int, bytes, bool]:
    _need(data, 13)
    f.dst_mac, f.src_mac = _mac(data[1:]), _mac(data[7:])
    if data[0] & 0x30 != 0x10:
        raise _Stop(DecodeStatus.NOT_IP)
    etype, rest = _llc(f, data[13:])
    if etype < 0x0600:
        raise _Stop(DecodeStatus.NOT_IP)
    return etype, rest, True


def _tokenring(f: _Frame, data: bytes) -> tuple[int, bytes, bool]:
    _need(data, 14)
    f.dst_mac, f.src_mac = _mac(data[2:]), _mac(data[8:])
    p = 14
    if data[8] & 0x80:
        _need(data, 15)
        p += data[14] & 0x1F
    f.src_mac &= 0x7FFFFFFFFFFF
    if data[1] & 0xC0 != 0x40:
        raise _Stop(DecodeStatus.NOT_IP)
    etype, rest = _llc(f, data[p:])
    if etype < 0x0600:
        raise _Stop(DecodeStatus.NOT_IP)
    return etype, rest, True


def _kind_links() -> dict[int, Any]:
    import flowdiff.decode as d

    return {
        d.K_ETHERNET: _ethernet,
        d.K_DSA: lambda f, b: _ethernet(f, b, 4),
        d.K_EDSA: lambda f, b: _ethernet(f, b, 8),
        d.K_RAW: _raw,
        d.K_NULL: _null,
        d.K_PPP: _ppp,
        d.K_PPPOE: _pppoe,
        d.K_CHDLC: _chdlc,
        d.K_SLL: _sll,
        d.K_SLL2: _sll2,
        d.K_NFLOG: _nflog,
        d.K_PPI: _ppi,
        d.K_RADIOTAP: _radiotap,
        d.K_PRISM: _prism,
        d.K_80211: _ieee80211,
        d.K_IPOIB: _ipoib,
        d.K_FDDI: _fddi,
        d.K_TOKENRING: _tokenring,
    }


_LINKS = _kind_links()


# ----------------------------------------------------------------- Ethernet-type chain and IP


def _ether_chain(f: _Frame, etype: int, data: bytes) -> tuple[int, bytes]:
    """Tags (VLAN, VN-Tag) -> reported ethertype; then PBB / PPPoE / MPLS -> network type."""
    for _ in range(64):
        if etype in VLAN_TYPES:
            f.ethertype = etype
            tag = _hdr(dpkt.ethernet.VLANtag8021Q, data)
            if tag is None:
                raise _Stop(DecodeStatus.TRUNCATED_LINK)
            if f.vlan < 0:
                f.vlan = tag.id
            etype, data = tag.type, data[4:]
        elif etype == 0x8926:
            f.ethertype = etype
            if len(data) < 6:
                raise _Stop(DecodeStatus.TRUNCATED_LINK)
            etype, data = _be16(data, 4), data[6:]
        else:
            break
    f.ethertype = 0
    if etype < 0x0600:
        etype, data = _llc(f, data)
    f.ethertype = etype
    for _ in range(64):
        if etype == 0x88E7:
            _need(data, 18)
            etype, data = _be16(data, 16), data[18:]
            while etype in (0x8100, 0x88A8, 0x9100) and len(data) >= 4:
                etype, data = _be16(data, 2), data[4:]
        elif etype == 0x8864:
            h = _hdr(dpkt.pppoe.PPPoE, data)
            _need(data, 8)
            proto = _be16(data, h.__hdr_len__)
            if proto not in PPP_TO_ETHERTYPE:
                raise _Stop(DecodeStatus.NOT_IP)
            etype, data = PPP_TO_ETHERTYPE[proto], data[8:]
        elif etype in (0x8847, 0x8848):
            while True:
                label = _hdr(dpkt.ethernet.MPLSlabel, data)
                if label is None:
                    raise _Stop(DecodeStatus.TRUNCATED_LINK)
                data = data[4:]
                if label.s:
                    break
            if not data or data[0] >> 4 not in (4, 6):
                raise _Stop(DecodeStatus.NOT_IP)
            etype = 0x0800 if data[0] >> 4 == 4 else 0x86DD
        else:
            break
    return etype, data


def _upper(f: _Frame, proto: int, data: bytes) -> None:
    """Ports, flags, ICMP type/code from the header right after the outermost IP header."""
    if proto in (6, 17):
        cls = dpkt.tcp.TCP if proto == 6 else dpkt.udp.UDP
        h = _hdr(cls, data)
        if h is not None:
            f.sport, f.dport = h.sport, h.dport
            if proto == 6:
                f.tcp_flags = h.flags & 0xFF
        elif len(data) >= 4:  # tshark shows ports as soon as 4 bytes are captured
            f.sport, f.dport = struct.unpack_from(">HH", data)
            if proto == 6 and len(data) >= 14:
                f.tcp_flags = data[13]
    elif proto in (1, 58):
        h = _hdr(dpkt.icmp.ICMP, data)
        if h is not None:
            f.icmp_type, f.icmp_code = h.type, h.code
        elif data:
            f.icmp_type = data[0]
            if len(data) > 1:
                f.icmp_code = data[1]


def _ipv4(f: _Frame, data: bytes) -> None:
    ip = _hdr(dpkt.ip.IP, data)
    if ip is None or ip.hl < 5:
        raise _Stop(DecodeStatus.BAD_IP)
    f.ip_version, f.proto = 4, ip.p
    f.src_lo = int.from_bytes(ip.src, "big")
    f.dst_lo = int.from_bytes(ip.dst, "big")
    if ip.offset == 0:
        _upper(f, ip.p, data[ip.hl * 4 :])


def _ipv6(f: _Frame, data: bytes) -> None:
    ip6 = _hdr(dpkt.ip6.IP6, data)
    if ip6 is None:
        raise _Stop(DecodeStatus.BAD_IP)
    f.ip_version = 6
    f.src_hi, f.src_lo = struct.unpack(">QQ", ip6.src)
    f.dst_hi, f.dst_lo = struct.unpack(">QQ", ip6.dst)
    nh, rest = ip6.nxt, data[40:]
    while nh in IPV6_SKIPPED:
        if not rest:
            f.proto = nh
            return
        nxt = rest[0]
        if nh == 44:
            frag = _hdr(dpkt.ip6.IP6FragmentHeader, rest)
            if len(rest) < 4 or (frag is not None and frag.frag_off) or _be16(rest, 2) >> 3:
                f.proto = nxt
                return
            rest = rest[8:]
        else:
            if len(rest) < 2:
                f.proto = nxt
                return
            rest = rest[(rest[1] + 1) * 8 :]
        nh = nxt
    f.proto = nh
    _upper(f, nh, rest)


def _frame(data: bytes, linktype: int) -> _Frame:
    f = _Frame()
    try:
        lt = LINKTYPES.get(linktype)
        link = _LINKS.get(lt.kind) if lt else None
        if link is None:
            raise _Stop(DecodeStatus.UNKNOWN_LINKTYPE)
        etype, rest, walk = link(f, data)
        if walk:
            etype, rest = _ether_chain(f, etype, rest)
        else:
            f.ethertype = etype
        if etype == 0x0806 and len(rest) >= 28 and rest[:6] == b"\x00\x01\x08\x00\x06\x04":
            arp = dpkt.arp.ARP(rest[:28])
            f.status, f.src_lo = DecodeStatus.NOT_IP, int.from_bytes(arp.spa, "big")
            return f  # stations: the sender protocol address of Ethernet/IPv4 ARP (IP fields stay 0)
        if etype not in (0x0800, 0x86DD):
            raise _Stop(DecodeStatus.NOT_IP)
        version = rest[0] >> 4 if rest else 0
        if version == 6:  # also behind an IPv4 type: tshark hands it to IPv6
            _ipv6(f, rest)
        elif version == 4 and etype == 0x0800:
            _ipv4(f, rest)
        else:
            raise _Stop(DecodeStatus.BAD_IP)
    except _Stop as stop:
        f.status = stop.status
        if stop.status == DecodeStatus.UNKNOWN_LINKTYPE:
            f = _Frame(status=stop.status)
        f.ip_version = f.src_hi = f.src_lo = f.dst_hi = f.dst_lo = f.proto = 0
        f.sport = f.dport = f.icmp_type = f.icmp_code = f.tcp_flags = 0
    return f


def decode_reference(batch: Any) -> dict[str, np.ndarray]:
    """Same contract as ``flowdiff.decode.decode``, computed frame by frame (slow, for tests)."""
    n = len(batch.offset)
    cols = {f.name: np.zeros(n, dtype=PACKET_FIELDS[f.name]) for f in fields(_Frame)}
    buf = np.asarray(batch.buf, dtype=np.uint8)
    for i in range(n):
        start = int(batch.offset[i])
        end = min(start + int(batch.caplen[i]), len(buf))
        data = buf[start:end].tobytes() if 0 <= start <= end else b""
        fr = _frame(data, int(batch.linktype[i]))
        fr.vlan = max(fr.vlan, 0)
        for name in cols:
            cols[name][i] = getattr(fr, name)
    out = {
        "ts_ns": np.asarray(batch.ts_ns, dtype=np.int64),
        "wirelen": np.asarray(batch.wirelen, dtype=np.uint32),
    }
    out.update(cols)
    return {name: out[name] for name in PACKET_FIELDS}
