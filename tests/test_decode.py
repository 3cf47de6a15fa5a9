"""Header decoding: hand-built frames per link type, the dpkt reference cross-check, robustness.

Frames are built byte by byte (dpkt packs the IP/TCP/UDP/ICMP parts) so each test states the exact
header it feeds the decoder and the fields it expects back.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from types import SimpleNamespace

import dpkt
import numpy as np
import pytest
from decode_ref import decode_reference  # tests/decode_ref.py
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowdiff.capture import open_capture
from flowdiff.decode import LINKTYPE_NAMES, decode, decoded_linktypes, linktype_name
from flowdiff.schema import PACKET_FIELDS, DecodeStatus

DATA = Path(__file__).resolve().parent / "data"
ROOT = Path(__file__).resolve().parents[1]

MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")
IP_A, IP_B = bytes([10, 0, 0, 1]), bytes([192, 168, 1, 2])
IP6_A = bytes.fromhex("20010db8000000000000000000000001")
IP6_B = bytes.fromhex("fe800000000000000000000000000002")


def make_batch(frames: list[tuple[int, bytes]], caplens: list[int] | None = None) -> SimpleNamespace:
    """A RecordBatch-like object over ``frames`` ((linktype, bytes)); wirelen = full length."""
    caplens = caplens if caplens is not None else [len(b) for _, b in frames]
    offsets = np.zeros(len(frames), dtype=np.int64)
    if frames:
        offsets[1:] = np.cumsum([len(b) for _, b in frames])[:-1]
    return SimpleNamespace(
        buf=np.frombuffer(b"".join(b for _, b in frames), dtype=np.uint8),
        offset=offsets,
        caplen=np.array(caplens, dtype=np.uint32),
        wirelen=np.array([len(b) + 4 for _, b in frames], dtype=np.uint32),
        ts_ns=np.arange(len(frames), dtype=np.int64) * 1_000_000_007,
        linktype=np.array([lt for lt, _ in frames], dtype=np.uint16),
    )


def one(linktype: int, frame: bytes, caplen: int | None = None) -> dict[str, int]:
    """Decode one frame; also insist the reference decoder agrees on every field."""
    batch = make_batch([(linktype, frame)], None if caplen is None else [caplen])
    fast, ref = decode(batch), decode_reference(batch)
    for name in PACKET_FIELDS:
        assert fast[name].tolist() == ref[name].tolist(), name
    return {name: int(fast[name][0]) for name in PACKET_FIELDS}


def ipv4(proto: int = 6, payload: bytes = b"", off: int = 0, opts: bytes = b"", src=IP_A, dst=IP_B) -> bytes:
    """IPv4 header (+ options, whose length must be a multiple of 4) and payload; ``off`` = flags|offset."""
    ip = dpkt.ip.IP(src=src, dst=dst, p=proto, opts=opts, data=payload)
    ip._flags_offset = off
    ip.hl = 5 + len(opts) // 4
    ip.len = 20 + len(opts) + len(payload)
    return bytes(ip)


def ipv6(nxt: int, payload: bytes) -> bytes:
    return struct.pack(">IHBB", 0x60000000, len(payload), nxt, 64) + IP6_A + IP6_B + payload


def tcp(sport=1234, dport=80, flags=dpkt.tcp.TH_SYN) -> bytes:
    return bytes(dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags))


def udp(sport=5353, dport=53) -> bytes:
    return bytes(dpkt.udp.UDP(sport=sport, dport=dport, data=b"q"))


def eth(etype: int, payload: bytes, dst=MAC_B, src=MAC_A) -> bytes:
    return dst + src + struct.pack(">H", etype) + payload


MAC_A_INT = int.from_bytes(MAC_A, "big")
MAC_B_INT = int.from_bytes(MAC_B, "big")
TCP_V4 = {"status": 0, "ip_version": 4, "src_lo": 0x0A000001, "dst_lo": 0xC0A80102, "proto": 6, "sport": 1234}


def assert_fields(got: dict[str, int], **want: int) -> None:
    assert {k: got[k] for k in want} == want


# ------------------------------------------------------------------------ contract


def test_output_has_exactly_the_schema_columns():
    out = decode(make_batch([(1, eth(0x0800, ipv4(6, tcp())))]))
    assert list(out) == list(PACKET_FIELDS)
    assert all(out[k].dtype == dt and out[k].shape == (1,) for k, dt in PACKET_FIELDS.items())


def test_empty_batch():
    out = decode(make_batch([]))
    assert all(out[k].dtype == dt and len(out[k]) == 0 for k, dt in PACKET_FIELDS.items())


def test_timestamps_and_wire_length_pass_through():
    batch = make_batch([(1, eth(0x0800, ipv4(17, udp())))] * 3, caplens=[20, 30, 40])
    out = decode(batch)
    assert out["wirelen"].tolist() == batch.wirelen.tolist()
    assert out["ts_ns"].tolist() == batch.ts_ns.tolist()


def test_linktype_names():
    assert linktype_name(147) == "USER0"
    assert linktype_name(1) == "ETHERNET"
    assert linktype_name(64000) == "unassigned"
    assert LINKTYPE_NAMES[276] == "LINUX_SLL2"
    assert {0, 1, 9, 10, 50, 51, 101, 104, 105, 108, 113, 127, 192, 228, 229, 239, 242, 276, 284, 285} <= set(
        decoded_linktypes()
    )


# ------------------------------------------------------------------------ Ethernet and below


def test_ethernet_ipv4_tcp():
    got = one(1, eth(0x0800, ipv4(6, tcp(flags=dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK))))
    assert_fields(got, **TCP_V4, dport=80, tcp_flags=0x12, ethertype=0x0800, vlan=0)
    assert_fields(got, src_mac=MAC_A_INT, dst_mac=MAC_B_INT, src_hi=0, dst_hi=0)


def test_ipv4_options_shift_the_ports():
    got = one(1, eth(0x0800, ipv4(17, udp(7, 9), opts=b"\x01\x01\x01\x00")))
    assert_fields(got, status=0, proto=17, sport=7, dport=9)


def test_ipv4_later_fragment_has_no_ports():
    assert_fields(one(1, eth(0x0800, ipv4(17, udp(), off=185))), status=0, proto=17, sport=0, dport=0)
    first = one(1, eth(0x0800, ipv4(17, udp(), off=dpkt.ip.IP_MF)))
    assert_fields(first, sport=5353, dport=53)


def test_bad_ihl_and_version_are_bad_ip():
    frame = bytearray(eth(0x0800, ipv4(6, tcp())))
    frame[14] = 0x44  # IHL 4 < 5
    assert_fields(one(1, bytes(frame)), status=DecodeStatus.BAD_IP, ethertype=0x0800, ip_version=0)
    frame[14] = 0x55  # version 5
    assert_fields(one(1, bytes(frame)), status=DecodeStatus.BAD_IP, src_mac=MAC_A_INT)


def test_version_6_behind_ipv4_type_is_decoded_as_ipv6():
    got = one(1, eth(0x0800, ipv6(17, udp())))
    assert_fields(got, status=0, ip_version=6, ethertype=0x0800, proto=17, sport=5353)


def test_qinq_stack_reports_outer_vlan_and_inner_type():
    frame = eth(0x88A8, struct.pack(">HH", 100, 0x8100) + struct.pack(">HH", 0x2000 | 200, 0x9100))
    frame += struct.pack(">HH", 300, 0x0806) + b"\x00" * 28
    assert_fields(one(1, frame), status=DecodeStatus.NOT_IP, vlan=100, ethertype=0x0806, src_mac=MAC_A_INT)


def test_vlan_ipv4():
    got = one(1, eth(0x8100, struct.pack(">HH", 0xE000 | 42, 0x0800) + ipv4(6, tcp())))
    assert_fields(got, **TCP_V4, vlan=42, ethertype=0x0800)


def test_mpls_stack_reports_mpls_and_finds_ip():
    labels = struct.pack(">II", (16 << 12) | 64, (17 << 12) | 0x100 | 64)
    got = one(1, eth(0x8847, labels + ipv4(17, udp())))
    assert_fields(got, status=0, ethertype=0x8847, proto=17, sport=5353)
    eompls = one(1, eth(0x8847, labels + b"\x00\x00\x00\x00" + eth(0x0800, ipv4(6, tcp()))))
    assert_fields(eompls, status=DecodeStatus.NOT_IP, ethertype=0x8847)


def test_pppoe_session():
    got = one(1, eth(0x8864, struct.pack(">BBHHH", 0x11, 0, 7, 42, 0x0021) + ipv4(6, tcp())))
    assert_fields(got, **TCP_V4, ethertype=0x8864)
    lcp = one(1, eth(0x8864, struct.pack(">BBHHH", 0x11, 0, 7, 42, 0xC021) + b"\x01" * 8))
    assert_fields(lcp, status=DecodeStatus.NOT_IP, ethertype=0x8864)


def test_8023_llc_snap_and_plain_llc():
    body = b"\xaa\xaa\x03\x00\x00\x00\x08\x00" + ipv4(6, tcp())
    assert_fields(one(1, eth(len(body), body)), **TCP_V4, ethertype=0x0800)
    stp = b"\x42\x42\x03" + b"\x00" * 35
    assert_fields(one(1, eth(len(stp), stp)), status=DecodeStatus.NOT_IP, ethertype=0, dst_mac=MAC_B_INT)


def test_pbb_and_vntag():
    inner = MAC_B + MAC_A + struct.pack(">HHH", 0x8100, 5, 0x0800) + ipv4(6, tcp())
    pbb = eth(0x8100, struct.pack(">HH", 4051, 0x88E7) + b"\x00\x01\x02\x03" + inner)
    assert_fields(one(1, pbb), **TCP_V4, vlan=4051, ethertype=0x88E7)
    vntag = eth(0x8926, b"\x00" * 4 + struct.pack(">HHH", 0x8100, 11, 0x0800) + ipv4(6, tcp()))
    assert_fields(one(1, vntag), **TCP_V4, vlan=11, ethertype=0x0800)


def test_ipv6_extension_walk():
    hbh = bytes([43, 0]) + b"\x00" * 6
    rth = bytes([44, 0]) + b"\x00" * 6
    frag = struct.pack(">BBHI", 17, 0, 0x0001, 1)  # offset 0, M=1: first fragment keeps ports
    got = one(1, eth(0x86DD, ipv6(0, hbh + rth + frag + udp(1, 2))))
    assert_fields(got, status=0, ip_version=6, proto=17, sport=1, dport=2, ethertype=0x86DD)
    assert got["src_hi"] == 0x20010DB800000000 and got["src_lo"] == 1 and got["dst_hi"] == 0xFE80000000000000
    later = struct.pack(">BBHI", 17, 0, 185 << 3, 1)
    assert_fields(one(1, eth(0x86DD, ipv6(44, later + b"\x00" * 16))), proto=17, sport=0)
    ah = bytes([89, 4]) + b"\x00" * 22
    assert_fields(one(1, eth(0x86DD, ipv6(51, ah))), proto=51, sport=0)


def test_ipv6_extension_header_not_captured_is_the_protocol():
    frame = eth(0x86DD, ipv6(60, bytes([6, 0]) + b"\x00" * 6 + tcp()))
    assert_fields(one(1, frame, caplen=14 + 40), status=0, proto=60, sport=0)
    assert_fields(one(1, frame, caplen=14 + 41), proto=6, sport=0)  # its Next Header byte was captured
    assert_fields(one(1, frame, caplen=14 + 48 + 4), proto=6, sport=1234, dport=80, tcp_flags=0)


def test_ports_need_four_captured_bytes():
    frame = eth(0x0800, ipv4(6, tcp()))
    assert_fields(one(1, frame, caplen=14 + 20 + 3), status=0, proto=6, sport=0, dport=0)
    assert_fields(one(1, frame, caplen=14 + 20 + 4), sport=1234, dport=80, tcp_flags=0)
    assert_fields(one(1, frame, caplen=14 + 20 + 14), tcp_flags=dpkt.tcp.TH_SYN)
    assert_fields(one(1, frame, caplen=14 + 19), status=DecodeStatus.BAD_IP, ethertype=0x0800)
    assert_fields(one(1, frame, caplen=13), status=DecodeStatus.TRUNCATED_LINK, src_mac=0)


def test_icmp_and_sctp():
    icmp = bytes(dpkt.icmp.ICMP(type=3, code=3, data=dpkt.icmp.ICMP.Unreach(data=ipv4(17, udp()))))
    assert_fields(one(1, eth(0x0800, ipv4(1, icmp))), proto=1, icmp_type=3, icmp_code=3, sport=0, dport=0)
    icmp6 = bytes([128, 0, 0, 0])
    assert_fields(one(1, eth(0x86DD, ipv6(58, icmp6))), proto=58, icmp_type=128, icmp_code=0)
    sctp = struct.pack(">HHII", 2905, 2905, 0, 0)
    assert_fields(one(1, eth(0x0800, ipv4(132, sctp))), proto=132, sport=0, dport=0)


def test_outer_header_of_a_tunnel_counts():
    gre = struct.pack(">HH", 0, 0x0800) + ipv4(6, tcp(), src=IP_B, dst=IP_A)
    assert_fields(one(1, eth(0x0800, ipv4(47, gre))), src_lo=0x0A000001, proto=47, sport=0)
    assert_fields(one(1, eth(0x0800, ipv4(41, ipv6(6, tcp())))), ip_version=4, proto=41, sport=0)


def test_arp_is_not_ip_but_keeps_link_fields():
    got = one(1, eth(0x0806, b"\x00\x01\x08\x00\x06\x04\x00\x01" + b"\x00" * 20))
    assert_fields(got, status=DecodeStatus.NOT_IP, ethertype=0x0806, src_mac=MAC_A_INT, ip_version=0)


# ------------------------------------------------------------------------ other link types


@pytest.mark.parametrize(
    ("linktype", "header"),
    [
        (101, b""),
        (228, b""),
        (12, b""),
        (0, struct.pack("<I", 2)),
        (0, struct.pack(">I", 2)),  # written on a big-endian host
        (108, struct.pack(">I", 2)),
        (9, b"\xff\x03\x00\x21"),
        (9, b"\x21"),  # protocol field compression
        (9, b"\x0f\x00\x08\x00"),  # Cisco HDLC framing in a PPP file
        (50, b"\xff\x03\x00\x21"),
        (51, struct.pack(">BBHHH", 0x11, 0, 1, 40, 0x0021)),
        (104, b"\x0f\x00\x08\x00"),
        (242, b"\x00" * 40 + b"\x08\x00\x00\x00"),
        (113, struct.pack(">HHH", 0, 1, 6) + MAC_A + b"\x00\x00" + b"\x08\x00"),
        (276, b"\x08\x00\x00\x00" + struct.pack(">IHBB", 3, 1, 0, 6) + MAC_A + b"\x00\x00"),
    ],
)
def test_ipv4_behind_link_header(linktype: int, header: bytes):
    assert_fields(one(linktype, header + ipv4(6, tcp())), **TCP_V4, ethertype=0x0800, dport=80)


@pytest.mark.parametrize("af", [24, 28, 30, 10])
def test_null_ipv6_address_families(af: int):
    assert_fields(one(0, struct.pack("<I", af) + ipv6(17, udp())), status=0, ip_version=6, ethertype=0x86DD)


def test_sll_source_mac_and_ipv6():
    sll = struct.pack(">HHH", 4, 1, 6) + MAC_A + b"\x00\x00" + b"\x86\xdd"
    assert_fields(one(113, sll + ipv6(17, udp())), status=0, ip_version=6, src_mac=MAC_A_INT, dst_mac=0)


def test_mpls_over_ppp():
    frame = b"\xff\x03\x02\x81" + struct.pack(">I", (18 << 12) | 0x100 | 1) + ipv4(17, udp())
    assert_fields(one(9, frame), status=0, ethertype=0x8847, proto=17, sport=5353)


def test_nflog_payload_tlv():
    pkt = ipv4(6, tcp())
    tlvs = struct.pack("<HH", 8, 1) + b"\x08\x00\x03\x00"  # NFULA_PACKET_HDR
    tlvs += struct.pack("<HH", 4 + len(pkt), 9) + pkt
    assert_fields(one(239, b"\x02\x00\x00\x2a" + tlvs), **TCP_V4, ethertype=0x0800)
    assert_fields(one(239, b"\x02\x00\x00\x2a" + tlvs[:8]), status=DecodeStatus.NOT_IP)


def _wifi_data(fc1: int, subtype: int = 0, body: bytes | None = None) -> bytes:
    hdr = (
        bytes([0x08 | (subtype << 4), fc1, 0, 0])
        + MAC_B
        + MAC_A
        + bytes.fromhex("0200000000aa")
        + b"\x00\x00"
    )
    if fc1 & 3 == 3:
        hdr += bytes.fromhex("0200000000bb")
    if subtype & 8:
        hdr += b"\x00\x00"
    return hdr + (body if body is not None else b"\xaa\xaa\x03\x00\x00\x00\x08\x00" + ipv4(6, tcp()))


def test_80211_data_frames():
    a3 = 0x0200000000AA
    assert_fields(one(105, _wifi_data(0)), **TCP_V4, src_mac=MAC_A_INT, dst_mac=MAC_B_INT)
    assert_fields(one(105, _wifi_data(1)), **TCP_V4, src_mac=MAC_A_INT, dst_mac=a3)  # ToDS
    assert_fields(one(105, _wifi_data(2)), **TCP_V4, src_mac=a3, dst_mac=MAC_B_INT)  # FromDS
    assert_fields(one(105, _wifi_data(3, subtype=8)), **TCP_V4, src_mac=0x0200000000BB, dst_mac=a3)
    assert_fields(one(105, _wifi_data(0x41)), status=DecodeStatus.NOT_IP, src_mac=MAC_A_INT)  # protected
    beacon = bytes([0x80, 0]) + b"\x00" * 22 + b"\x00" * 12
    assert_fields(one(105, beacon), status=DecodeStatus.NOT_IP, ethertype=0)


def test_radiotap_ppi_and_prism_wrap_80211():
    radiotap = struct.pack("<BBHI", 0, 0, 8, 0)
    assert_fields(one(127, radiotap + _wifi_data(1)), **TCP_V4)
    padded = struct.pack("<BBHIB", 0, 0, 12, 2, 0x20) + b"\x00" * 3  # Flags: header padded to 32 bits
    qos = _wifi_data(1, subtype=8, body=b"")
    assert_fields(one(127, padded + qos + b"\x00\x00" + _wifi_data(1)[24:]), **TCP_V4)
    ppi = struct.pack("<BBHI", 0, 0, 8, 105)
    assert_fields(one(192, ppi + _wifi_data(1)), **TCP_V4)
    assert_fields(
        one(192, struct.pack("<BBHI", 0, 0, 8, 147) + b"\x00" * 40), status=DecodeStatus.UNKNOWN_LINKTYPE
    )
    prism = struct.pack("<II", 0x41, 144) + b"\x00" * 136
    assert_fields(one(119, prism + _wifi_data(2)), **TCP_V4)


def test_fddi_and_token_ring_llc_snap():
    snap = b"\xaa\xaa\x03\x00\x00\x00\x08\x00" + ipv4(6, tcp())
    assert_fields(one(10, b"\x50" + MAC_B + MAC_A + snap), **TCP_V4, src_mac=MAC_A_INT, dst_mac=MAC_B_INT)
    assert_fields(one(6, b"\x10\x40" + MAC_B + MAC_A + snap), **TCP_V4, src_mac=MAC_A_INT)
    routed = bytes([MAC_A[0] | 0x80]) + MAC_A[1:]
    assert_fields(one(6, b"\x10\x40" + MAC_B + routed + b"\x02\x00" + snap), **TCP_V4, src_mac=MAC_A_INT)


def test_dsa_tags():
    dsa = MAC_B + MAC_A + bytes([0x20 | 0x03, 0, 0x0F, 0xFE]) + b"\x08\x00" + ipv4(6, tcp())
    assert_fields(one(284, dsa), **TCP_V4, vlan=0xFFE, src_mac=MAC_A_INT)
    edsa = MAC_B + MAC_A + b"\xda\xda\x00\x00" + bytes([0xC0, 0, 0, 0]) + b"\x08\x00" + ipv4(6, tcp())
    assert_fields(one(285, edsa), **TCP_V4, vlan=0)


def test_real_dsa_capture():
    """tcpdump's dsa.pcap (tshark cannot read link type 284): six pings and two ARP frames."""
    out = [decode(b) for b in open_capture(str(DATA / "tcpdump__dsa.pcap")).batches()]
    status = np.concatenate([o["status"] for o in out])
    ethertype = np.concatenate([o["ethertype"] for o in out])
    ok = status == DecodeStatus.OK
    assert ok.sum() == 6 and set(ethertype[~ok].tolist()) == {0x0806}
    src = np.concatenate([o["src_lo"] for o in out])[ok]
    assert set(src.tolist()) == {0xC0A81E01, 0xC0A81E02}
    assert set(np.concatenate([o["proto"] for o in out])[ok].tolist()) == {1}


def test_unknown_linktype_produces_no_fields():
    got = one(147, eth(0x0800, ipv4(6, tcp())))
    assert got["status"] == DecodeStatus.UNKNOWN_LINKTYPE
    assert all(got[k] == 0 for k in PACKET_FIELDS if k not in ("status", "ts_ns", "wirelen"))


def test_offsets_outside_the_buffer_are_truncated_not_read():
    batch = make_batch([(1, eth(0x0800, ipv4(6, tcp())))])
    batch.offset = np.array([10_000], dtype=np.int64)
    assert decode(batch)["status"].tolist() == [DecodeStatus.TRUNCATED_LINK]
    batch.offset = np.array([0], dtype=np.int64)
    batch.caplen = np.array([4_000_000_000], dtype=np.uint32)  # bogus caplen: clamp to the buffer
    assert decode(batch)["sport"].tolist() == [1234]


# ------------------------------------------------------------------------ fast path == reference

u8, u16 = st.integers(0, 255), st.integers(0, 0xFFFF)
PORT = st.integers(1, 0xFFFF)  # never 0, so a lost port shows up as a difference


@st.composite
def l4(draw, proto: int) -> bytes:
    if proto == 6:
        return tcp(draw(PORT), draw(PORT), draw(u8)) + draw(st.binary(max_size=8))
    if proto == 17:
        return udp(draw(PORT), draw(PORT))
    if proto in (1, 58):
        return bytes([draw(u8), draw(u8), 0, 0]) + draw(st.binary(max_size=8))
    return draw(st.binary(max_size=24))


PROTOS = st.sampled_from([6, 17, 1, 58, 132, 47, 50, 51, 4, 41, 59]) | u8


@st.composite
def ipv4_packets(draw) -> bytes:
    proto = draw(PROTOS)
    opts = draw(st.binary(max_size=40).map(lambda b: b[: len(b) // 4 * 4]))
    off = draw(st.sampled_from([0, 0x4000, dpkt.ip.IP_MF, 1, 185]) | st.integers(0, 0xFFFF))
    pkt = bytearray(ipv4(proto, draw(l4(proto)), off=off, opts=opts))
    if draw(st.booleans()) and draw(st.booleans()) and draw(st.booleans()):  # bad version or IHL now and then
        pkt[0] = draw(u8)
    return bytes(pkt)


@st.composite
def ipv6_packets(draw) -> bytes:
    chain = draw(st.lists(st.sampled_from([0, 43, 44, 60, 51]), max_size=4))
    proto = draw(PROTOS)
    payload = draw(l4(proto))
    nxt = proto
    for kind in reversed(chain):
        if kind == 44:
            frag = draw(st.sampled_from([0, 1, 8, 0x1FF9]) | u16)
            payload = struct.pack(">BBHI", nxt, 0, frag, draw(st.integers(0, 2**32 - 1))) + payload
        else:
            units = draw(st.integers(0, 2))
            payload = (
                bytes([nxt, units])
                + draw(st.binary(min_size=6 + 8 * units, max_size=6 + 8 * units))
                + payload
            )
        nxt = kind
    return ipv6(nxt, payload)


@st.composite
def network(draw) -> tuple[int, bytes]:
    kind = draw(st.sampled_from(["v4", "v6", "arp", "other"]))
    if kind == "v4":
        return 0x0800, draw(ipv4_packets())
    if kind == "v6":
        return 0x86DD, draw(ipv6_packets())
    if kind == "arp":
        return 0x0806, b"\x00\x01\x08\x00\x06\x04\x00\x01" + b"\x00" * 20
    return draw(u16), draw(st.binary(max_size=40))


@st.composite
def ethernet_frames(draw) -> bytes:
    etype, payload = draw(network())
    wrap = draw(st.sampled_from(["none", "mpls", "pppoe", "snap", "pbb"]))
    if wrap == "mpls" and etype in (0x0800, 0x86DD):
        n = draw(st.integers(1, 3))
        labels = b"".join(
            struct.pack(">I", (draw(st.integers(0, 2**20 - 1)) << 12) | (0x100 if i == n - 1 else 0))
            for i in range(n)
        )
        etype, payload = 0x8847, labels + payload
    elif wrap == "pppoe":
        ppp = {0x0800: 0x0021, 0x86DD: 0x0057}.get(etype, draw(u16))
        etype, payload = 0x8864, struct.pack(">BBHHH", 0x11, 0, draw(u16), len(payload) + 2, ppp) + payload
    elif wrap == "snap":
        body = b"\xaa\xaa\x03\x00\x00\x00" + struct.pack(">H", etype) + payload
        etype, payload = min(len(body), 1500), body
    elif wrap == "pbb":
        etype, payload = 0x88E7, b"\x00\x00\x00\x01" + MAC_B + MAC_A + struct.pack(">H", etype) + payload
    tags = draw(st.lists(st.tuples(st.sampled_from([0x8100, 0x88A8, 0x9100, 0x8926]), u16), max_size=3))
    for tpid, tci in reversed(tags):
        if tpid == 0x8926:
            payload = struct.pack(">IH", tci, etype) + payload
        else:
            payload = struct.pack(">HH", tci, etype) + payload
        etype = tpid
    return eth(
        etype,
        payload,
        dst=draw(st.binary(min_size=6, max_size=6)),
        src=draw(st.binary(min_size=6, max_size=6)),
    )


@st.composite
def any_frames(draw) -> tuple[int, bytes]:
    """Frames of several link types around the same network layer, then cut by a random snaplen."""
    linktype = draw(st.sampled_from([1, 1, 1, 113, 276, 0, 101, 9, 51, 104, 284]))
    if linktype in (1, 284):
        frame = draw(ethernet_frames())
        if linktype == 284:
            frame = frame[:12] + bytes([draw(u8), draw(u8), draw(u8), draw(u8)]) + frame[12:]
    else:
        etype, pkt = draw(network())
        if linktype == 113:
            frame = struct.pack(">HHH", 0, 1, 6) + MAC_A + b"\x00\x00" + struct.pack(">H", etype) + pkt
        elif linktype == 276:
            frame = struct.pack(">HHIHBB", etype, 0, 1, 1, 0, 6) + MAC_A + b"\x00\x00" + pkt
        elif linktype == 0:
            frame = struct.pack("<I", {0x0800: 2, 0x86DD: 30}.get(etype, etype)) + pkt
        elif linktype == 101:
            frame = pkt
        elif linktype in (9, 51):
            ppp = {0x0800: 0x0021, 0x86DD: 0x0057}.get(etype, 0xC021)
            frame = (
                (b"\xff\x03" if linktype == 9 else struct.pack(">BBHH", 0x11, 0, 1, 0))
                + struct.pack(">H", ppp)
                + pkt
            )
        else:
            frame = b"\x0f\x00" + struct.pack(">H", etype) + pkt
    return linktype, frame


def _assert_same(batch) -> None:
    fast, ref = decode(batch), decode_reference(batch)
    assert set(np.unique(fast["status"]).tolist()) <= set(DecodeStatus.NAMES)
    for name in PACKET_FIELDS:
        np.testing.assert_array_equal(fast[name], ref[name], err_msg=name)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(any_frames(), st.floats(0, 1)), min_size=1, max_size=12))
def test_fast_path_equals_reference(frames):
    caplens = [int(len(f) * cut) if cut < 0.7 else len(f) for (_, f), cut in frames]
    _assert_same(make_batch([f for f, _ in frames], caplens))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(decoded_linktypes() + [147, 65535]), st.binary(max_size=96)),
        min_size=1,
        max_size=12,
    )
)
def test_garbage_for_every_link_type(frames):
    _assert_same(make_batch(frames))


@settings(max_examples=200, deadline=None)
@given(any_frames(), st.lists(st.tuples(st.integers(0, 200), u8), min_size=1, max_size=6))
def test_mutated_frames(frame, flips):
    linktype, data = frame
    data = bytearray(data)
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    _assert_same(make_batch([(linktype, bytes(data))]))


# ------------------------------------------------------------------------ memory safety

BOUNDSCHECK_SCRIPT = textwrap.dedent(
    """
    import numpy as np
    from types import SimpleNamespace
    from flowdiff.decode import decode, decoded_linktypes

    rng = np.random.default_rng(7)
    seeds = [bytes.fromhex(h) for h in {seeds!r}]
    frames = []
    for lt in decoded_linktypes() + [147]:
        for seed in seeds:
            for cut in range(0, len(seed) + 1):  # every truncation of a plausible frame
                frames.append((lt, seed[:cut]))
        for _ in range(300):
            frames.append((lt, rng.integers(0, 256, rng.integers(0, 120), dtype=np.uint8).tobytes()))
    buf = b"".join(f for _, f in frames)
    off = np.cumsum([0] + [len(f) for _, f in frames[:-1]]).astype(np.int64)
    cap = np.array([len(f) for _, f in frames], dtype=np.uint32)
    cap[::97] = 0xFFFFFFFF  # bogus caplen running past the buffer
    batch = SimpleNamespace(buf=np.frombuffer(buf, np.uint8), offset=off, caplen=cap,
        wirelen=cap, ts_ns=np.zeros(len(frames), np.int64), linktype=np.array([lt for lt, _ in frames], np.uint16))
    out = decode(batch)
    print("decoded", len(out["status"]))
    """
)


def test_no_out_of_bounds_reads_under_numba_boundscheck():
    """numba does not bounds-check by default; recompile with NUMBA_BOUNDSCHECK=1 (own cache dir, so the
    normal cache is neither used nor polluted) and feed every truncation of real-looking frames."""
    seeds = [
        eth(
            0x8100,
            struct.pack(">HH", 5, 0x8847)
            + struct.pack(">I", 0x100)
            + ipv6(0, bytes([44, 0]) + b"\0" * 6 + struct.pack(">BBHI", 6, 0, 0, 0) + tcp()),
        ),
        eth(0x8864, struct.pack(">BBHHH", 0x11, 0, 1, 40, 0x0021) + ipv4(17, udp(), opts=b"\x01" * 8)),
        b"\xaa\xaa\x03\x00\x00\x00\x08\x00" + ipv4(1, b"\x08\x00\x00\x00"),
        _wifi_data(3, subtype=8),
        struct.pack("<BBHI", 0, 0, 8, 105) + _wifi_data(1),
        struct.pack("<BBHII", 0, 0, 16, 0x80000003, 0) + b"\x00" * 4 + _wifi_data(2),
        b"\x02\x00\x00\x2a"
        + struct.pack("<HH", 8, 1)
        + b"\x08\x00\x03\x00"
        + struct.pack("<HH", 44, 9)
        + ipv4(6, tcp()),
    ]
    env = dict(os.environ, NUMBA_BOUNDSCHECK="1")
    env["NUMBA_CACHE_DIR"] = str(Path(tempfile.gettempdir()) / "flowdiff-numba-boundscheck")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    script = BOUNDSCHECK_SCRIPT.format(seeds=[s.hex() for s in seeds])
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("decoded ")
