"""Header decoding: RecordBatch -> per-frame field arrays (flowdiff.schema.PACKET_FIELDS).

One numba-compiled pass walks every record of a batch and writes all output columns into preallocated
arrays: no per-packet Python and no per-field numpy temporaries, because collect has to keep up with a
busy span port (the budget is well under 0.15 µs per frame).

The semantics follow the tshark oracle (``../shared/pcaps/ORACLE.md``), so that a 5-tuple table built
from these arrays reproduces tshark's reference tables:

* the *outermost* IPv4/IPv6 header is the one reported (GRE, IP-in-IP, 6in4, Teredo, VXLAN show as
  their outer protocol);
* IPv4 needs a valid version and IHL (else ``BAD_IP``); a version-6 packet behind an IPv4 type is
  decoded as IPv6, as tshark hands it over;
* IPv6 walks Hop-by-Hop (0), Routing (43), Fragment (44), Destination Options (60) only; an extension
  header that was not captured is itself the protocol;
* ports come from the TCP/UDP header right after that IP header, as soon as its first 4 bytes are
  captured, and never from non-first fragments;
* ``ethertype`` is the type after the VLAN tag stack (802.1Q, 802.1ad, 0x9100, VN-Tag, DSA tags), so
  MPLS, PPPoE, PBB, ARP and LLDP frames show up as themselves in link tables; for link layers without
  an Ethernet type it is derived (raw IP -> 0x0800/0x86dd, PPP 0x0021 -> 0x0800, ...).

The link layer is table driven: ``LINKTYPES`` maps a LINKTYPE_* number to a name and a decoder kind;
each kind is one short branch of ``_decode_batch`` that either names the network protocol or hands an
Ethernet type (or an LLC header) to the shared tag / PBB / PPPoE / MPLS walk. numba does not
bounds-check, so every read is guarded by the record's end (offset + caplen, clamped to the buffer).

``decode_reference`` of ``tests/decode_ref.py`` computes the same columns frame by frame with dpkt; the tests
require both to agree on real captures and on generated, truncated and mutated frames.

Choices where the oracle leaves room (none changes a row of the 62 oracle tables):

* MPLS payload: first nibble 4 / 6 is IP, anything else (Ethernet pseudowires, control words) NOT_IP.
* IPv4 with a valid IHL whose options run past the capture still reports addresses and protocol
  (20 bytes are enough); the total length field is never checked (BIG TCP, padding, bogus lengths).
* 802.11: only unprotected data frames that are not A-MSDU aggregates carry IP; FDDI and Token Ring
  MACs are kept in the order they are on the wire.
* NULL / LOOP: AF 2 is IPv4; 10, 24, 28, 30 are IPv6 (Linux, NetBSD/OpenBSD, FreeBSD, Darwin); a value
  of 0x0600 or more is taken as an Ethernet type; either byte order is accepted.
* A DSA tag that says "tagged" supplies the VLAN id; otherwise the first 802.1Q/802.1ad tag does.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from flowdiff._jit import njit
from flowdiff.schema import PACKET_FIELDS, DecodeStatus

__all__ = ["LINKTYPES", "LINKTYPE_NAMES", "decode", "linktype_name", "decoded_linktypes"]

# Status codes as plain ints so the compiled code sees constants.
_OK = DecodeStatus.OK
_NOT_IP = DecodeStatus.NOT_IP
_UNKNOWN = DecodeStatus.UNKNOWN_LINKTYPE
_TRUNC = DecodeStatus.TRUNCATED_LINK
_BAD_IP = DecodeStatus.BAD_IP

# Decoder kinds (one link-layer branch of _decode_batch each).
K_NONE = 0
K_ETHERNET = 1
K_RAW = 2  # first nibble says 4 or 6
K_NULL = 3  # 4-byte AF value in either byte order (NULL and LOOP)
K_PPP = 4  # optional FF 03, PPP protocol; Cisco HDLC framing accepted too
K_PPPOE = 5  # PPPoE session header then PPP protocol
K_CHDLC = 6
K_SLL = 7
K_SLL2 = 8
K_NFLOG = 9
K_PPI = 10
K_RADIOTAP = 11
K_80211 = 12
K_IPOIB = 13
K_FDDI = 14
K_DSA = 15
K_EDSA = 16
K_PRISM = 17
K_TOKENRING = 18


class LinkType(NamedTuple):
    name: str
    kind: int  # K_NONE: known name, not decoded


# LINKTYPE_* numbers (tcpdump.org/linktypes.html). Kinds other than K_NONE are decoded by the fast path.
LINKTYPES: dict[int, LinkType] = {
    0: LinkType("NULL", K_NULL),
    1: LinkType("ETHERNET", K_ETHERNET),
    3: LinkType("AX25", K_NONE),
    6: LinkType("IEEE802_5", K_TOKENRING),
    7: LinkType("ARCNET_BSD", K_NONE),
    8: LinkType("SLIP", K_NONE),
    9: LinkType("PPP", K_PPP),
    10: LinkType("FDDI", K_FDDI),
    12: LinkType("RAW (DLT 12)", K_RAW),
    14: LinkType("RAW (OpenBSD DLT 14)", K_RAW),
    50: LinkType("PPP_HDLC", K_PPP),
    51: LinkType("PPP_ETHER", K_PPPOE),
    100: LinkType("ATM_RFC1483", K_NONE),
    101: LinkType("RAW", K_RAW),
    104: LinkType("C_HDLC", K_CHDLC),
    105: LinkType("IEEE802_11", K_80211),
    106: LinkType("ATM_CLIP", K_NONE),
    107: LinkType("FRELAY", K_NONE),
    108: LinkType("LOOP", K_NULL),
    113: LinkType("LINUX_SLL", K_SLL),
    114: LinkType("LTALK", K_NONE),
    117: LinkType("PFLOG", K_NONE),
    119: LinkType("IEEE802_11_PRISM", K_PRISM),
    122: LinkType("IP_OVER_FC", K_NONE),
    123: LinkType("SUNATM", K_NONE),
    127: LinkType("IEEE802_11_RADIOTAP", K_RADIOTAP),
    138: LinkType("APPLE_IP_OVER_IEEE1394", K_NONE),
    139: LinkType("MTP2_WITH_PHDR", K_NONE),
    140: LinkType("MTP2", K_NONE),
    141: LinkType("MTP3", K_NONE),
    142: LinkType("SCCP", K_NONE),
    143: LinkType("DOCSIS", K_NONE),
    144: LinkType("LINUX_IRDA", K_NONE),
    **{147 + i: LinkType(f"USER{i}", K_NONE) for i in range(16)},
    163: LinkType("IEEE802_11_AVS", K_NONE),
    165: LinkType("BACNET_MS_TP", K_NONE),
    166: LinkType("PPP_PPPD", K_PPP),
    169: LinkType("GPRS_LLC", K_NONE),
    177: LinkType("LINUX_LAPD", K_NONE),
    187: LinkType("BLUETOOTH_HCI_H4", K_NONE),
    189: LinkType("USB_LINUX", K_NONE),
    192: LinkType("PPI", K_PPI),
    195: LinkType("IEEE802_15_4_WITHFCS", K_NONE),
    201: LinkType("BLUETOOTH_HCI_H4_WITH_PHDR", K_NONE),
    204: LinkType("PPP_WITH_DIR", K_NONE),
    209: LinkType("IPMB_LINUX", K_NONE),
    215: LinkType("IEEE802_15_4_NONASK_PHY", K_NONE),
    220: LinkType("USB_LINUX_MMAPPED", K_NONE),
    224: LinkType("FC_2", K_NONE),
    227: LinkType("CAN_SOCKETCAN", K_NONE),
    228: LinkType("IPV4", K_RAW),
    229: LinkType("IPV6", K_RAW),
    230: LinkType("IEEE802_15_4_NOFCS", K_NONE),
    231: LinkType("DBUS", K_NONE),
    235: LinkType("DVB_CI", K_NONE),
    239: LinkType("NFLOG", K_NFLOG),
    240: LinkType("NETANALYZER", K_NONE),
    242: LinkType("IPOIB", K_IPOIB),
    247: LinkType("NETLINK", K_NONE),
    249: LinkType("USBPCAP", K_NONE),
    251: LinkType("BLUETOOTH_LE_LL", K_NONE),
    253: LinkType("NETLINK", K_NONE),
    254: LinkType("BLUETOOTH_LINUX_MONITOR", K_NONE),
    256: LinkType("BLUETOOTH_LE_LL_WITH_PHDR", K_NONE),
    258: LinkType("PKTAP", K_NONE),
    263: LinkType("WIRESHARK_UPPER_PDU", K_NONE),
    264: LinkType("ZWAVE_R1_R2", K_NONE),
    276: LinkType("LINUX_SLL2", K_SLL2),
    284: LinkType("DSA_TAG_DSA", K_DSA),
    285: LinkType("DSA_TAG_EDSA", K_EDSA),
    290: LinkType("ETW", K_NONE),
}
LINKTYPE_NAMES: dict[int, str] = {n: lt.name for n, lt in LINKTYPES.items()}

# Dense lookup table the compiled loop indexes by link type (uint16 -> kind).
_KIND_TABLE = np.zeros(65536, dtype=np.uint8)
for _n, _lt in LINKTYPES.items():
    _KIND_TABLE[_n] = _lt.kind


def linktype_name(n: int) -> str:
    """Name of LINKTYPE ``n`` for messages such as "unknown link type 147 (USER0)"."""
    return LINKTYPE_NAMES.get(int(n), "unassigned")


def decoded_linktypes() -> list[int]:
    """Link types the decoder turns into rows (everything else is UNKNOWN_LINKTYPE)."""
    return sorted(n for n, lt in LINKTYPES.items() if lt.kind != K_NONE)


# --------------------------------------------------------------------------- compiled pass
#
# The whole walk lives in one function on purpose: numba calls between large compiled functions
# cost ~40 ns each here (zero-initialised stack temporaries, reference counts of the array
# arguments), more than the decoding itself. Only tiny byte readers are inlined helpers. The walk is
# a sequence of stages guarded by ``st < 0`` ("still going"): wrappers (PPI, radiotap, Prism) ->
# link header -> LLC -> tag stack (reported ethertype) -> PBB / PPPoE / MPLS -> IP -> TCP/UDP/ICMP.

_JIT = {"cache": True, "nogil": True}


@njit(inline="always", **_JIT)
def _be16(buf, p):
    return (np.int64(buf[p]) << 8) | np.int64(buf[p + 1])


@njit(inline="always", **_JIT)
def _le16(buf, p):
    return (np.int64(buf[p + 1]) << 8) | np.int64(buf[p])


@njit(inline="always", **_JIT)
def _be32(buf, p):
    return (
        (np.int64(buf[p]) << 24)
        | (np.int64(buf[p + 1]) << 16)
        | (np.int64(buf[p + 2]) << 8)
        | np.int64(buf[p + 3])
    )


@njit(inline="always", **_JIT)
def _le32(buf, p):
    return (
        (np.int64(buf[p + 3]) << 24)
        | (np.int64(buf[p + 2]) << 16)
        | (np.int64(buf[p + 1]) << 8)
        | np.int64(buf[p])
    )


@njit(inline="always", **_JIT)
def _mac(buf, p):
    return np.uint64((_be16(buf, p) << 32) | _be32(buf, p + 2))


@njit(inline="always", **_JIT)
def _be64(buf, p):
    return (np.uint64(_be32(buf, p)) << np.uint64(32)) | np.uint64(_be32(buf, p + 4))


@njit(inline="always", **_JIT)
def _ppp_to_ethertype(proto):
    """PPP protocol number -> Ethernet type (0 when the PPP payload is not a network protocol we follow)."""
    if proto == 0x0021:
        return 0x0800
    if proto == 0x0057:
        return 0x86DD
    if proto == 0x0281:
        return 0x8847
    if proto == 0x0283:
        return 0x8848
    return 0


@njit(**_JIT)
def _decode_batch(
    buf,
    offset,
    caplen,
    linktype,
    kinds,
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
):
    n = offset.shape[0]
    blen = buf.shape[0]
    z = np.uint64(0)
    for i in range(n):
        pos = offset[i]
        end = pos + np.int64(caplen[i])
        if end > blen:
            end = blen
        if pos < 0 or pos > end:
            pos = end
        kind = np.int64(kinds[linktype[i]])
        st = -1  # final status once >= 0
        et = -1  # Ethernet type for the tag stage; -1: the link layer named the network type itself
        net = 0  # network type once known (0x0800 / 0x86dd lead to IP)
        rep = 0  # ethertype reported
        llc = False  # an 802.2 LLC header starts at pos
        vl = -1  # outermost VLAN id, -1 until a tag is seen
        pad = False  # radiotap: 802.11 header padded to 32 bits
        smac = z
        dmac = z

        # ---- capture headers wrapping another link layer
        if kind == K_PPI:
            if pos + 8 > end:
                st = _TRUNC
            else:
                dlt = _le32(buf, pos + 4)
                pos += _le16(buf, pos + 2)
                kind = np.int64(kinds[dlt]) if dlt < 65536 else K_NONE
                if kind == K_PPI or kind == K_RADIOTAP or kind == K_PRISM:
                    kind = K_NONE  # capture headers do not nest
        if st < 0 and kind == K_RADIOTAP:
            if pos + 8 > end:
                st = _TRUNC
            else:
                hlen = _le16(buf, pos + 2)
                present = _le32(buf, pos + 4)
                p = pos + 8
                ext = present
                while ext & 0x80000000 and st < 0:
                    if p + 4 > end:
                        st = _TRUNC
                    else:
                        ext = _le32(buf, p)
                        p += 4
                if present & 2:  # Flags present; TSFT (8 bytes, 8-aligned) may precede it
                    if present & 1:
                        p = pos + (((p - pos) + 7) & ~7) + 8
                    if p < end and p < pos + hlen:
                        pad = (buf[p] & 0x20) != 0
                pos += hlen
                kind = K_80211
        if st < 0 and kind == K_PRISM:
            if pos + 8 > end:
                st = _TRUNC
            else:
                pos += _le32(buf, pos + 4)
                kind = K_80211
        if st < 0 and pos > end:
            st = _TRUNC

        # ---- link layer header
        if st >= 0:
            pass
        elif kind == K_ETHERNET or kind == K_DSA or kind == K_EDSA:
            if pos + 14 > end:
                st = _TRUNC
            else:
                dmac = _mac(buf, pos)
                smac = _mac(buf, pos + 6)
                tp = pos + 12
                if kind != K_ETHERNET:  # Marvell DSA tag (4 bytes) / EDSA (0xDADA, 2 reserved, 4 tag)
                    tag = tp if kind == K_DSA else tp + 4
                    if tag + 6 > end:
                        st = _TRUNC
                    else:
                        if buf[tag] & 0x20:  # the frame was VLAN tagged: the tag carries the VID
                            vl = ((np.int64(buf[tag + 2]) & 0x0F) << 8) | np.int64(buf[tag + 3])
                        tp = tag + 4
                if st < 0:
                    et = _be16(buf, tp)
                    pos = tp + 2
                    if et < 0x0600 and pos + 2 <= end and buf[pos] == 0xFF and buf[pos + 1] == 0xFF:
                        st = _NOT_IP  # Novell raw 802.3 (IPX)
        elif kind == K_RAW:
            if pos >= end:
                st = _TRUNC
            else:
                nib = buf[pos] >> 4
                if nib == 4:
                    net = 0x0800
                elif nib == 6:
                    net = 0x86DD
                else:
                    st = _BAD_IP
        elif kind == K_NULL:
            if pos + 4 > end:
                st = _TRUNC
            elif buf[pos] == 0xFF and buf[pos + 1] == 0x03:
                kind = K_PPP  # PPP in HDLC-like framing, handled below
            else:
                af = _le32(buf, pos)
                if af & 0xFFFF0000 and not af & 0x0000FFFF:  # written by a host of the other byte order
                    af = _be32(buf, pos)
                pos += 4
                if af == 2:
                    net = 0x0800
                elif af == 10 or af == 24 or af == 28 or af == 30:
                    net = 0x86DD
                elif 0x0600 <= af <= 0xFFFF:
                    et = af
                else:
                    st = _NOT_IP
        elif kind == K_CHDLC:
            if pos + 4 > end:
                st = _TRUNC
            else:
                et = _be16(buf, pos + 2)
                pos += 4
        elif kind == K_PPPOE:
            if pos + 8 > end:
                st = _TRUNC
            else:
                et = _ppp_to_ethertype(_be16(buf, pos + 6))
                pos += 8
                if et == 0:
                    st = _NOT_IP
        elif kind == K_SLL or kind == K_SLL2:
            hl = 16 if kind == K_SLL else 20
            if pos + hl > end:
                st = _TRUNC
            else:
                if kind == K_SLL:
                    hatype = _be16(buf, pos + 2)
                    halen = _be16(buf, pos + 4)
                    addr = pos + 6
                    sproto = _be16(buf, pos + 14)
                else:
                    sproto = _be16(buf, pos)
                    hatype = _be16(buf, pos + 8)
                    halen = np.int64(buf[pos + 11])
                    addr = pos + 12
                if halen == 6:
                    smac = _mac(buf, addr)
                pos += hl
                if hatype == 824:  # netlink messages, not packets
                    st = _NOT_IP
                elif sproto >= 0x0600:
                    et = sproto
                elif sproto == 4:  # ETH_P_802_2: an LLC frame
                    llc = True
                else:
                    st = _NOT_IP
        elif kind == K_NFLOG:
            if pos + 4 > end:
                st = _TRUNC
            else:
                family = buf[pos]
                p = pos + 4
                payload = -1
                hwproto = 0
                # TLV lengths are in the capturing host's byte order: decide once from the first TLV.
                little = True
                if p + 4 <= end:
                    ln = _le16(buf, p)
                    if ln < 4 or p + ln > end:
                        ln = _be16(buf, p)
                        if 4 <= ln and p + ln <= end:
                            little = False
                while p + 4 <= end:
                    ln = _le16(buf, p) if little else _be16(buf, p)
                    tlv = (_le16(buf, p + 2) if little else _be16(buf, p + 2)) & 0x7FFF
                    if ln < 4 or p + ln > end:
                        break
                    if tlv == 1 and ln >= 6:  # NFULA_PACKET_HDR: hw_protocol in network order
                        hwproto = _be16(buf, p + 4)
                    if tlv == 9:  # NFULA_PAYLOAD
                        payload = p + 4
                        end = p + ln
                        break
                    p += (ln + 3) & ~3
                if payload < 0:
                    st = _NOT_IP
                else:
                    pos = payload
                    if family == 2:
                        net = 0x0800
                    elif family == 10:
                        net = 0x86DD
                    elif hwproto >= 0x0600:
                        et = hwproto
                    else:
                        st = _NOT_IP
        elif kind == K_80211:
            if pos + 10 > end:
                st = _TRUNC
            else:
                fc0 = buf[pos]
                fc1 = buf[pos + 1]
                ftype = (fc0 >> 2) & 3
                if ftype == 1:  # control frame: receiver address only
                    dmac = _mac(buf, pos + 4)
                    st = _NOT_IP
                elif pos + 24 > end:
                    dmac = _mac(buf, pos + 4)
                    st = _TRUNC
                elif ftype != 2:  # management / extension
                    dmac = _mac(buf, pos + 4)
                    smac = _mac(buf, pos + 10)
                    st = _NOT_IP
                else:
                    tods = fc1 & 1
                    fromds = fc1 & 2
                    hdr = 24
                    if tods and fromds:
                        dmac = _mac(buf, pos + 16)
                        if pos + 30 > end:
                            st = _TRUNC
                        else:
                            smac = _mac(buf, pos + 24)
                            hdr = 30
                    elif tods:
                        smac = _mac(buf, pos + 10)
                        dmac = _mac(buf, pos + 16)
                    elif fromds:
                        smac = _mac(buf, pos + 16)
                        dmac = _mac(buf, pos + 4)
                    else:
                        smac = _mac(buf, pos + 10)
                        dmac = _mac(buf, pos + 4)
                    subtype = fc0 >> 4
                    amsdu = False
                    if st < 0 and subtype & 8:  # QoS control (+ HT control when the order bit is set)
                        if pos + hdr + 2 > end:
                            st = _TRUNC
                        else:
                            amsdu = (buf[pos + hdr] & 0x80) != 0
                            hdr += 2
                            if fc1 & 0x80:
                                hdr += 4
                    if pad:
                        hdr = (hdr + 3) & ~3
                    if st < 0:
                        pos += hdr
                        if subtype & 4 or fc1 & 0x40 or amsdu:  # no data / protected / A-MSDU
                            st = _NOT_IP
                        else:
                            llc = True
        elif kind == K_IPOIB:
            if pos + 44 > end:
                st = _TRUNC
            else:
                et = _be16(buf, pos + 40)
                pos += 44
        elif kind == K_FDDI:
            if pos + 13 > end:
                st = _TRUNC
            else:
                dmac = _mac(buf, pos + 1)
                smac = _mac(buf, pos + 7)
                if buf[pos] & 0x30 != 0x10:  # not an LLC frame (SMT, MAC, void)
                    st = _NOT_IP
                pos += 13
                llc = True
        elif kind == K_TOKENRING:
            if pos + 14 > end:
                st = _TRUNC
            else:
                dmac = _mac(buf, pos + 2)
                smac = _mac(buf, pos + 8)
                p = pos + 14
                if buf[pos + 8] & 0x80:  # source routing information present
                    if p >= end:
                        st = _TRUNC
                    else:
                        p += np.int64(buf[p]) & 0x1F  # int64 interpreted too (flowdiff/_jit.py)
                if st < 0:
                    smac = smac & np.uint64(0x7FFFFFFFFFFF)
                    if buf[pos + 1] & 0xC0 != 0x40:  # MAC frame, not LLC
                        st = _NOT_IP
                    pos = p
                    llc = True
        elif kind != K_PPP:
            st = _UNKNOWN
        if st < 0 and kind == K_PPP:
            if pos + 2 > end:
                st = _TRUNC
            elif (buf[pos] == 0x0F or buf[pos] == 0x8F) and buf[pos + 1] == 0x00:  # Cisco HDLC framing
                if pos + 4 > end:
                    st = _TRUNC
                else:
                    et = _be16(buf, pos + 2)
                    pos += 4
            else:
                if buf[pos] == 0xFF and buf[pos + 1] == 0x03:
                    pos += 2
                pp = -1
                if pos >= end:
                    st = _TRUNC
                elif buf[pos] & 1:  # protocol field compression
                    pp = np.int64(buf[pos])
                    pos += 1
                elif pos + 2 > end:
                    st = _TRUNC
                else:
                    pp = _be16(buf, pos)
                    pos += 2
                if st < 0:
                    et = _ppp_to_ethertype(pp)
                    if et == 0:
                        st = _NOT_IP

        # ---- 802.2 LLC after 802.11 / FDDI / Token Ring / SLL: SNAP gives the Ethernet type
        if st < 0 and llc:
            et = -2
            if pos + 3 > end:
                st = _TRUNC
            elif buf[pos] == 0xAA and buf[pos + 1] == 0xAA and buf[pos + 2] == 0x03:
                if pos + 8 > end:
                    st = _TRUNC
                elif buf[pos + 3] == 0 and buf[pos + 4] == 0 and (buf[pos + 5] == 0 or buf[pos + 5] == 0xF8):
                    et = _be16(buf, pos + 6)
                    pos += 8
                else:
                    st = _NOT_IP
            elif buf[pos] == 0x06 and buf[pos + 1] == 0x06 and buf[pos + 2] == 0x03:
                et = 0x0800
                pos += 3
            else:
                st = _NOT_IP
            if st < 0 and et < 0x0600:
                st = _NOT_IP
                et = 0

        # ---- tag stack: the type after it is the reported ethertype
        if st < 0 and et < 0:
            rep = net
        elif st < 0:
            for _ in range(64):  # deeper stacks are garbage
                if et == 0x8100 or et == 0x88A8 or et == 0x9100 or et == 0x9200:
                    if pos + 4 > end:
                        st = _TRUNC
                        break
                    if vl < 0:
                        vl = _be16(buf, pos) & 0x0FFF
                    et = _be16(buf, pos + 2)
                    pos += 4
                elif et == 0x8926:  # Cisco VN-Tag: 4 tag bytes then the next type
                    if pos + 6 > end:
                        st = _TRUNC
                        break
                    et = _be16(buf, pos + 4)
                    pos += 6
                else:
                    break
            rep = et
            if st < 0 and et < 0x0600:  # an 802.3 length field: LLC follows
                rep = 0
                et = -2
                if pos + 3 > end:
                    st = _TRUNC
                elif buf[pos] == 0xAA and buf[pos + 1] == 0xAA and buf[pos + 2] == 0x03:
                    if pos + 8 > end:
                        st = _TRUNC
                    elif (
                        buf[pos + 3] == 0
                        and buf[pos + 4] == 0
                        and (buf[pos + 5] == 0 or buf[pos + 5] == 0xF8)
                    ):
                        et = _be16(buf, pos + 6)
                        rep = et
                        pos += 8
                    else:
                        st = _NOT_IP
                elif buf[pos] == 0x06 and buf[pos + 1] == 0x06 and buf[pos + 2] == 0x03:
                    et = 0x0800
                    rep = et
                    pos += 3
                else:
                    st = _NOT_IP
            # ---- encapsulations below the reported type: PBB, PPPoE, MPLS
            net = et
            for _ in range(64):
                if st >= 0:
                    break
                if net == 0x88E7:  # 802.1ah PBB: I-TAG, customer MACs, type (customer tags skipped)
                    if pos + 18 > end:
                        st = _TRUNC
                        break
                    net = _be16(buf, pos + 16)
                    pos += 18
                    while (net == 0x8100 or net == 0x88A8 or net == 0x9100) and pos + 4 <= end:
                        net = _be16(buf, pos + 2)
                        pos += 4
                elif net == 0x8864:  # PPPoE session: 6-byte header, PPP protocol
                    if pos + 8 > end:
                        st = _TRUNC
                        break
                    net = _ppp_to_ethertype(_be16(buf, pos + 6))
                    pos += 8
                elif net == 0x8847 or net == 0x8848:  # MPLS labels; payload guessed like tshark
                    while pos + 4 <= end and not buf[pos + 2] & 1:
                        pos += 4
                    if pos + 4 > end:
                        st = _TRUNC
                        break
                    pos += 4
                    nib = buf[pos] >> 4 if pos < end else 0
                    if nib == 4:
                        net = 0x0800
                    elif nib == 6:
                        net = 0x86DD
                    else:
                        st = _NOT_IP
                else:
                    break

        # ---- outermost IP header
        ver = 0
        s_hi = z
        s_lo = z
        d_hi = z
        d_lo = z
        pr = 0
        sp = 0
        dp = 0
        it = 0
        ic = 0
        fl = 0
        if st < 0:
            up = -1  # upper-layer header position; -1: nothing to read there
            st = _NOT_IP
            if net == 0x0806 and pos + 28 <= end and _be32(buf, pos) == 0x00010800:
                if _be16(buf, pos + 4) == 0x0604:
                    s_lo = np.uint64(_be32(buf, pos + 14))  # ARP over Ethernet/IPv4: sender protocol address
            if net == 0x0800 or net == 0x86DD:
                st = _BAD_IP
                v = buf[pos] >> 4 if pos < end else 0
                if v == 4 and net == 0x0800:
                    ihl = (np.int64(buf[pos]) & 0x0F) * 4
                    if ihl >= 20 and pos + 20 <= end:
                        st = _OK
                        ver = 4
                        s_lo = np.uint64(_be32(buf, pos + 12))
                        d_lo = np.uint64(_be32(buf, pos + 16))
                        pr = np.int64(buf[pos + 9])
                        if _be16(buf, pos + 6) & 0x1FFF == 0:  # first fragment or whole datagram
                            up = pos + ihl
                elif v == 6 and pos + 40 <= end:  # also behind an IPv4 type, as tshark does
                    st = _OK
                    ver = 6
                    s_hi = _be64(buf, pos + 8)
                    s_lo = _be64(buf, pos + 16)
                    d_hi = _be64(buf, pos + 24)
                    d_lo = _be64(buf, pos + 32)
                    nh = np.int64(buf[pos + 6])
                    p = pos + 40
                    up = p
                    while nh == 0 or nh == 43 or nh == 44 or nh == 60:
                        if p >= end:  # extension header not captured: its number is the answer
                            up = -1
                            break
                        nxt = np.int64(buf[p])
                        if nh == 44:
                            if p + 4 > end or _be16(buf, p + 2) & 0xFFF8 != 0:  # later fragment
                                nh = nxt
                                up = -1
                                break
                            p += 8
                        else:
                            if p + 2 > end:
                                nh = nxt
                                up = -1
                                break
                            p += (np.int64(buf[p + 1]) + 1) * 8
                        nh = nxt
                        up = p
                    pr = nh
            if st == _OK and up >= 0:
                if pr == 6 or pr == 17:
                    if up + 4 <= end:  # tshark shows ports once 4 bytes are captured
                        sp = _be16(buf, up)
                        dp = _be16(buf, up + 2)
                    if pr == 6 and up + 14 <= end:
                        fl = np.int64(buf[up + 13])
                elif pr == 1 or pr == 58:
                    if up < end:
                        it = np.int64(buf[up])
                    if up + 1 < end:
                        ic = np.int64(buf[up + 1])
        if st == _UNKNOWN:
            rep = 0
            smac = z
            dmac = z
            vl = 0
        status[i] = st
        ethertype[i] = rep if rep > 0 else 0
        src_mac[i] = smac
        dst_mac[i] = dmac
        vlan[i] = vl if vl > 0 else 0
        ip_version[i] = ver
        src_hi[i] = s_hi
        src_lo[i] = s_lo
        dst_hi[i] = d_hi
        dst_lo[i] = d_lo
        proto[i] = pr
        sport[i] = sp
        dport[i] = dp
        icmp_type[i] = it
        icmp_code[i] = ic
        tcp_flags[i] = fl


def decode(batch: Any) -> dict[str, np.ndarray]:
    """Decode every record of ``batch`` (a ``flowdiff.capture.RecordBatch`` or anything with the same
    six arrays) into the per-frame columns of ``flowdiff.schema.PACKET_FIELDS``.

    ``ts_ns`` and ``wirelen`` pass through (bytes are always the original length on the wire). Frames
    that carry no IP header keep ``ip_version`` 0 and say why in ``status``.
    """
    offset = np.ascontiguousarray(batch.offset, dtype=np.int64)
    n = offset.shape[0]
    out = {
        name: np.empty(n, dtype=dt) for name, dt in PACKET_FIELDS.items() if name not in ("ts_ns", "wirelen")
    }
    out["ts_ns"] = np.asarray(batch.ts_ns, dtype=np.int64)
    out["wirelen"] = np.asarray(batch.wirelen, dtype=np.uint32)
    buf = np.ascontiguousarray(batch.buf, dtype=np.uint8)
    if not buf.flags.writeable:  # one compiled specialisation (writable arrays) is enough to cache
        buf = buf.copy()
    if n:
        _decode_batch(
            buf,
            offset,
            np.ascontiguousarray(batch.caplen, dtype=np.uint32),
            np.ascontiguousarray(batch.linktype, dtype=np.uint16),
            _KIND_TABLE,
            out["status"],
            out["ethertype"],
            out["src_mac"],
            out["dst_mac"],
            out["vlan"],
            out["ip_version"],
            out["src_hi"],
            out["src_lo"],
            out["dst_hi"],
            out["dst_lo"],
            out["proto"],
            out["sport"],
            out["dport"],
            out["icmp_type"],
            out["icmp_code"],
            out["tcp_flags"],
        )
    return {name: out[name] for name in PACKET_FIELDS}
