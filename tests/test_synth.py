"""Generated captures (flowdiff.demo.frames and .scenario, benchmarks/synth_bulk.py) read back with dpkt
(an independent parser) give exactly what was asked for, and the same arguments give the same bytes."""

from __future__ import annotations

import gzip
import hashlib
import ipaddress
import struct
import sys
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

import dpkt
import numpy as np
import pytest

from flowdiff.demo import frames as synth
from flowdiff.demo import scenario as enclave
from flowdiff.demo.frames import Frame, Interface

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import synth_bulk  # noqa: E402  (benchmarks/: the bulk generator is not part of the package)

T0 = 1_700_000_000_123_456_789  # ns, with sub-microsecond digits on purpose


class Rec(NamedTuple):
    tv_sec: int
    tv_usec: int  # the fraction in the file's unit (micro- or nanoseconds)
    caplen: int
    len: int


def _records(path: Path) -> list[tuple[Rec, bytes]]:
    """Raw pcap records (header fields, captured bytes): dpkt's Reader hides the original length, so
    the four header integers are read with struct; the frames themselves go to dpkt."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    big = struct.unpack(">I", data[:4])[0] in (dpkt.pcap.TCPDUMP_MAGIC, dpkt.pcap.TCPDUMP_MAGIC_NANO)
    fmt = ">IIII" if big else "<IIII"
    out, pos = [], 24
    while pos < len(data):
        ph = Rec(*struct.unpack(fmt, data[pos : pos + 16]))
        out.append((ph, data[pos + 16 : pos + 16 + ph.caplen]))
        pos += 16 + ph.caplen
    return out


def _valid_checksums(eth: dpkt.ethernet.Ethernet) -> bool:
    """Let dpkt recompute the IP and TCP/UDP checksums and compare with what synth wrote."""
    ip = eth.data
    got = (ip.sum, ip.data.sum) if isinstance(ip, dpkt.ip.IP) else (None, ip.data.sum)
    fresh = type(ip)(bytes(ip))
    if isinstance(fresh, dpkt.ip.IP):
        fresh.sum = 0
    fresh.data.sum = 0
    again = type(ip)(bytes(fresh))
    want = (again.sum, again.data.sum) if isinstance(ip, dpkt.ip.IP) else (None, again.data.sum)
    return got == want


# ---------------------------------------------------------------------------------------------- frames


def test_tcp_frame_fields_and_checksums():
    raw = synth.tcp_frame(
        "00:11:22:33:44:55",
        "66:77:88:99:aa:bb",
        "192.0.2.1",
        "198.51.100.2",
        40000,
        25,
        synth.TCP_PSH | synth.TCP_ACK,
        b"EHLO x\r\n",
        seq=7,
        ack=9,
    )
    eth = dpkt.ethernet.Ethernet(raw)
    assert eth.src == bytes.fromhex("001122334455") and eth.dst == bytes.fromhex("66778899aabb")
    ip = eth.data
    assert isinstance(ip, dpkt.ip.IP) and ip.len == len(raw) - 14
    tcp = ip.data
    assert (tcp.sport, tcp.dport, tcp.flags, tcp.seq, tcp.ack, tcp.data) == (
        40000,
        25,
        0x18,
        7,
        9,
        b"EHLO x\r\n",
    )
    assert _valid_checksums(eth)


def test_short_frames_are_padded_and_ipv6_udp_checksum():
    raw = synth.udp_frame(
        "00:00:00:00:00:01", "00:00:00:00:00:02", "2001:db8::1", "2001:db8::2", 5353, 53, b"q"
    )
    eth = dpkt.ethernet.Ethernet(raw)
    assert eth.type == synth.ETH_IPV6 and isinstance(eth.data, dpkt.ip6.IP6)
    assert (eth.data.data.sport, eth.data.data.dport, eth.data.data.data) == (5353, 53, b"q")
    assert _valid_checksums(eth)
    small = synth.arp_frame("00:00:00:00:00:01", "10.0.0.1", "10.0.0.2")
    assert len(small) == 60  # Ethernet minimum without FCS


def test_vlan_stack_icmp_arp_lldp():
    inner = synth.ipv4("10.0.0.1", "10.0.0.2", 1, synth.icmp_echo(3, 4, b"ping"))
    raw = synth.ethernet(
        "00:00:00:00:00:01", "00:00:00:00:00:02", synth.ETH_IPV4, inner, vlan=(100, 200), qinq=True
    )
    eth = dpkt.ethernet.Ethernet(raw)
    assert [t.id for t in eth.vlan_tags] == [100, 200]
    assert struct.unpack("!H", raw[12:14])[0] == 0x88A8
    icmp = eth.data.data
    assert (icmp.type, icmp.data.id, icmp.data.seq, icmp.data.data) == (8, 3, 4, b"ping")
    assert synth.checksum(bytes(icmp)) == 0

    v6 = dpkt.ethernet.Ethernet(
        synth.icmp_echo_frame(
            "00:00:00:00:00:01", "00:00:00:00:00:02", "fe80::1", "fe80::2", 1, 2, reply=True
        )
    )
    assert v6.data.nxt == 58 and v6.data.data.type == 129

    reply = dpkt.ethernet.Ethernet(
        synth.arp_frame(
            "00:00:00:00:00:02", "10.0.0.2", "10.0.0.1", reply_to="00:00:00:00:00:01", reply_ip="10.0.0.1"
        )
    )
    a = reply.data
    assert isinstance(a, dpkt.arp.ARP) and a.op == 2
    assert (a.sha, a.spa, a.tha, a.tpa) == (
        bytes.fromhex("000000000002"),
        bytes([10, 0, 0, 2]),
        bytes.fromhex("000000000001"),
        bytes([10, 0, 0, 1]),
    )

    lldp = synth.lldp_frame("00:00:00:00:00:09", "ge-0/0/1")
    eth = dpkt.ethernet.Ethernet(lldp)
    assert eth.type == synth.ETH_LLDP and eth.dst == bytes.fromhex("0180c200000e")
    tlv_type, tlv_len = lldp[14] >> 1, ((lldp[14] & 1) << 8) | lldp[15]
    assert (tlv_type, lldp[16:17], lldp[17 : 16 + tlv_len]) == (1, b"\x04", bytes.fromhex("000000000009"))


def test_tcp_session_handshake_and_sequence_numbers():
    frames = synth.tcp_session(
        T0,
        client_mac="00:00:00:00:00:01",
        server_mac="00:00:00:00:00:02",
        client="10.0.0.1",
        server="10.0.0.2",
        cport=50000,
        sport=22,
        exchanges=[(False, b"SSH-2.0-x\r\n"), (True, b"SSH-2.0-y\r\n")],
        rtt_ns=10_000_000,
        isn=(100, 900),
    )
    segs = [dpkt.ethernet.Ethernet(f.data).data.data for f in frames]
    assert [s.flags for s in segs] == [0x02, 0x12, 0x10, 0x18, 0x10, 0x18, 0x10, 0x11, 0x11, 0x10]
    assert [f.ts_ns - T0 for f in frames] == [i * 5_000_000 for i in range(10)]
    assert segs[0].seq == 100 and segs[1].seq == 900 and segs[1].ack == 101
    assert segs[3].seq == 901 and segs[4].ack == 901 + len(b"SSH-2.0-x\r\n")
    assert segs[-1].ack == segs[-2].seq + 1  # the last ACK acknowledges the server's FIN
    assert all(s.sport == 50000 for s, i in zip(segs, range(10), strict=True) if i in (0, 2))


# --------------------------------------------------------------------------------------------- writers


@pytest.mark.parametrize("nanosecond", [False, True])
@pytest.mark.parametrize("byteorder", ["little", "big"])
@pytest.mark.parametrize("compress", [False, True])
def test_write_pcap_round_trip(tmp_path, nanosecond, byteorder, compress):
    frames = [
        Frame(
            T0 + i * 1_001,
            synth.tcp_frame(
                "00:00:00:00:00:01",
                "00:00:00:00:00:02",
                "10.0.0.1",
                "10.0.0.2",
                1000 + i,
                80,
                synth.TCP_ACK,
                b"x" * (i * 50),
            ),
        )
        for i in range(5)
    ]
    path = tmp_path / ("a.pcap.gz" if compress else "a.pcap")
    synth.write_pcap(
        path, frames, nanosecond=nanosecond, byteorder=byteorder, snaplen=96, linktype=1, compress=compress
    )
    recs = _records(path)
    assert len(recs) == 5
    for f, (ph, data) in zip(frames, recs, strict=True):
        assert ph.caplen == min(len(f.data), 96) and ph.len == len(f.data)
        assert data == f.data[:96]
        frac = f.ts_ns % 10**9 if nanosecond else (f.ts_ns % 10**9) // 1000
        assert (ph.tv_sec, ph.tv_usec) == (f.ts_ns // 10**9, frac)
    opener = gzip.open if compress else open
    with opener(path, "rb") as fh:
        reader = dpkt.pcap.Reader(fh)
        assert reader.datalink() == 1 and reader.snaplen == 96
        got = [dpkt.ethernet.Ethernet(b).data.data.sport for _, b in reader]
    assert got == [1000 + i for i in range(5)]


def test_write_pcap_keeps_explicit_wire_length_and_linktype(tmp_path):
    path = synth.write_pcap(
        tmp_path / "raw.pcap", [Frame(T0, b"\x45" + b"\0" * 19, wirelen=1500)], linktype=101
    )
    ((ph, data),) = _records(path)
    assert (ph.caplen, ph.len, len(data)) == (20, 1500, 20)
    with open(path, "rb") as f:
        assert dpkt.pcap.Reader(f).datalink() == 101


@pytest.mark.parametrize("tsresol", [6, 9, 0x80 | 20])
def test_write_pcapng_single_interface_read_by_dpkt(tmp_path, tsresol):
    frames = [
        Frame(
            T0 + i * 2_000_000,
            synth.udp_frame(
                "00:00:00:00:00:01", "00:00:00:00:00:02", "10.0.0.1", "10.0.0.2", 4000 + i, 53, b"q" * 30
            ),
        )
        for i in range(3)
    ]
    path = synth.write_pcapng(tmp_path / "a.pcapng", frames, interfaces=[Interface(1, 128, tsresol, "eth0")])
    with open(path, "rb") as f:
        reader = dpkt.pcapng.Reader(f)
        got = list(reader)
    assert len(got) == 3
    for f, (ts, buf) in zip(frames, got, strict=True):
        assert abs(ts - f.ts_ns / 1e9) < 2e-6  # dpkt returns float seconds
        assert buf == f.data[:128]


def test_write_pcapng_several_interfaces(tmp_path):
    itfs = [Interface(1, 0, 6), Interface(101, 64, 9), Interface(1, 0, None)]
    frames = [Frame(T0 + i, bytes([i]) * 100, interface=i % 3) for i in range(6)]
    path = synth.write_pcapng(tmp_path / "m.pcapng", frames, interfaces=itfs, byteorder="big")
    data = path.read_bytes()
    pos, blocks = 0, []
    while pos < len(data):
        btype, blen = struct.unpack(">II", data[pos : pos + 8])
        blocks.append((btype, data[pos : pos + blen]))
        pos += blen
    assert [b for b, _ in blocks] == [0x0A0D0D0A, 1, 1, 1] + [6] * 6
    idbs = [dpkt.pcapng.InterfaceDescriptionBlock(b) for t, b in blocks if t == 1]
    assert [i.linktype for i in idbs] == [1, 101, 1]
    for i, (_, raw) in enumerate(blocks[4:]):
        epb = dpkt.pcapng.EnhancedPacketBlock(raw)
        ts = (epb.ts_high << 32) | epb.ts_low
        want_ts = {0: (T0 + i) // 1000, 1: T0 + i, 2: (T0 + i) // 1000}[i % 3]
        assert (epb.iface_id, ts, epb.pkt_len) == (i % 3, want_ts, 100)
        assert epb.caplen == (64 if i % 3 == 1 else 100)


def test_write_pcapng_sections_restart_interface_numbering(tmp_path):
    f0 = [Frame(T0, b"a" * 60)]
    f1 = [Frame(T0 + 1, b"b" * 70, interface=1)]
    path = synth.write_pcapng_sections(
        tmp_path / "s.pcapng.gz",
        [(f0, [Interface(1)]), (f1, [Interface(1), Interface(101, 0, 9)])],
        compress=True,
    )
    data = gzip.decompress(path.read_bytes())
    pos, types, epbs = 0, [], []
    while pos < len(data):
        btype, blen = struct.unpack("<II", data[pos : pos + 8])
        types.append(btype)
        if btype == 6:
            epbs.append(dpkt.pcapng.EnhancedPacketBlockLE(data[pos : pos + blen]))
        pos += blen
    assert types == [0x0A0D0D0A, 1, 6, 0x0A0D0D0A, 1, 1, 6]
    assert [(e.iface_id, e.pkt_len, (e.ts_high << 32) | e.ts_low) for e in epbs] == [
        (0, 60, T0 // 1000),
        (1, 70, T0 + 1),
    ]


def test_pcap_gzip_is_reproducible(tmp_path):
    frames = [Frame(T0, synth.arp_frame("00:00:00:00:00:01", "10.0.0.1", "10.0.0.2"))]
    a = synth.write_pcap(tmp_path / "a.pcap.gz", frames, compress=True).read_bytes()
    b = synth.write_pcap(tmp_path / "b.pcap.gz", frames, compress=True).read_bytes()
    assert a == b


# ------------------------------------------------------------------------------------------------ bulk


def test_synthetic_bulk_reads_back(tmp_path):
    n = synth_bulk.BULK_CHUNK + 1234  # crosses a chunk boundary
    info = synth_bulk.synthetic_bulk(
        tmp_path / "b.pcap", n, flows=500, seed=3, start=1_767_225_600, duration=60
    )
    recs = _records(info.path)
    assert len(recs) == n == info.packets
    caplen = np.array([ph.caplen for ph, _ in recs])
    wire = np.array([ph.len for ph, _ in recs])
    ts = np.array([ph.tv_sec * 10**6 + ph.tv_usec for ph, _ in recs])
    assert (caplen == np.minimum(wire, 96)).all()
    assert wire.min() >= 60 and wire.max() <= 1514 and (wire == 1514).any() and (wire < 100).any()
    assert int(wire.sum()) == info.wire_bytes and info.file_bytes == info.path.stat().st_size
    want_ts = 1_767_225_600 * 10**6 + (np.arange(n) * 60 * 10**9 // n) // 1000
    assert (ts == want_ts).all()
    five = set()
    protos = defaultdict(int)
    boundary = range(synth_bulk.BULK_CHUNK - 50, synth_bulk.BULK_CHUNK + 50)
    for i, (ph, data) in enumerate(recs):
        if i % 5 and i not in boundary:
            continue  # dpkt is slow: every 5th frame and the ones around the chunk boundary
        eth = dpkt.ethernet.Ethernet(data)
        ip = eth.data
        assert isinstance(ip, dpkt.ip.IP) and ip.len == ph.len - 14
        protos[ip.p] += 1
        if i % 97 == 0:
            assert synth.checksum(bytes(data[14:34])) == 0
        five.add((ip.src, ip.dst, ip.p, ip.data.sport, ip.data.dport))
    assert set(protos) == {6, 17} and protos[6] > protos[17]
    assert 100 < len(five) <= 2 * 500  # a flow shows in one or both directions


def test_synthetic_bulk_full_size_and_determinism(tmp_path):
    a = synth_bulk.synthetic_bulk(tmp_path / "a.pcap", 3000, full_size=True, seed=1)
    b = synth_bulk.synthetic_bulk(tmp_path / "b.pcap", 3000, full_size=True, seed=1)
    c = synth_bulk.synthetic_bulk(tmp_path / "c.pcap", 3000, full_size=True, seed=2)
    assert a.path.read_bytes() == b.path.read_bytes() != c.path.read_bytes()
    recs = _records(a.path)
    assert all(ph.caplen == ph.len == len(d) for ph, d in recs)
    tcp = [dpkt.ethernet.Ethernet(d).data.data for _, d in recs]
    flags = {t.flags for t in tcp if isinstance(t, dpkt.tcp.TCP)}
    assert {0x02, 0x10, 0x18} <= flags


# -------------------------------------------------------------------------------------------- scenario


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    return enclave.enclave_scenario(tmp_path_factory.mktemp("enclave"))


@pytest.fixture(scope="module")
def decoded(scenario) -> dict[Path, list[tuple[Rec, dpkt.ethernet.Ethernet]]]:
    """Every frame of the scenario decoded once by dpkt (shared by the tests below)."""
    return {p: [(ph, dpkt.ethernet.Ethernet(d)) for ph, d in _records(p)] for p in scenario.files}


def _label(addr: str, nets: list[tuple[ipaddress._BaseNetwork, str]]) -> str | None:
    a = ipaddress.ip_address(addr)
    best = None
    for net, label in nets:
        if a.version == net.version and a in net and (best is None or net.prefixlen > best[0]):
            best = (net.prefixlen, label)
    return best[1] if best else None


def _canon(addr: str, spec: dict, nets) -> str:
    if _label(addr, nets) in spec.get("collapse", ()):
        return _label(addr, nets)
    if ipaddress.ip_address(addr).version == 6 and spec.get("ipv6_prefix"):
        return str(ipaddress.ip_network(f"{addr}/{spec['ipv6_prefix']}", strict=False))
    return addr


def _reference_keys(scn: enclave.Scenario, decoded: dict, files) -> dict:
    """table -> key -> (set of hour intervals, packets): an independent dpkt implementation of the
    scenario's tables (TCP client = sender of the SYN; UDP service = the port below 1024)."""
    nets = [(ipaddress.ip_network(c), lab) for c, lab in scn.networks.items()]
    out: dict = {t: defaultdict(lambda: [set(), 0]) for t in scn.tables}
    clients: dict = {}
    for path in files:
        for ph, eth in decoded[path]:
            hour = ph.tv_sec // scn.interval
            mac = lambda b: ":".join(f"{x:02x}" for x in b)  # noqa: E731
            row = out["link"][(eth.type, mac(eth.src), mac(eth.dst))]
            row[0].add(hour)
            row[1] += 1
            ip = eth.data
            if not isinstance(ip, dpkt.ip.IP | dpkt.ip6.IP6):
                continue
            src = str(ipaddress.ip_address(ip.src))
            dst = str(ipaddress.ip_address(ip.dst))
            proto = ip.p if isinstance(ip, dpkt.ip.IP) else ip.nxt
            l4 = ip.data
            sport, dport = (l4.sport, l4.dport) if proto in (6, 17) else (0, 0)
            conn = frozenset([(src, sport), (dst, dport)])
            if proto == 6 and l4.flags & 0x12 == 0x02:
                clients[conn] = (src, sport)
            if proto == 6 and conn in clients:
                is_client = clients[conn] == (src, sport)
            else:
                is_client = dport < 1024 if proto in (6, 17) else True
            client, server, port = (src, dst, dport) if is_client else (dst, src, sport)
            h = scn.tables["hosts"]
            s = scn.tables["services"]
            for table, key in (
                ("hosts", (_canon(src, h, nets),)),
                ("pairs", (_canon(src, h, nets), _canon(dst, h, nets), proto)),
                ("services", (_canon(client, s, nets), _canon(server, s, nets), proto, port)),
            ):
                row = out[table][key]
                row[0].add(hour)
                row[1] += 1
    return out


def test_scenario_files_are_rotated_captures(scenario, decoded):
    assert len(scenario.normal_files) == 7 * 24 and len(scenario.last_day_files) == 24
    total = 0
    for path in scenario.files:
        recs = decoded[path]
        total += len(recs)
        stamp = path.stem
        t0 = int(
            np.datetime64(
                f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}T{stamp[8:10]}:{stamp[10:12]}:00", "s"
            ).astype(int)
        )
        assert all(t0 <= ph.tv_sec < t0 + scenario.rotate for ph, _ in recs)
        assert all(ph.caplen == min(ph.len, 96) for ph, _ in recs)
        assert path.stat().st_mtime == t0 + scenario.rotate
    assert total == scenario.packets
    assert 2000 < scenario.packets / 8 < 8000  # a few thousand packets a day: the demo stays fast


def test_scenario_new_keys_are_exactly_the_injected_anomalies(scenario, decoded):
    week = _reference_keys(scenario, decoded, scenario.normal_files)
    last = _reference_keys(scenario, decoded, scenario.last_day_files)
    found = set()
    for table, keys in last.items():
        names = scenario.tables[table]["keys"]
        for key in keys:
            if key in week[table]:
                hours, packets = week[table][key]
                assert len(hours) >= 2 and packets >= 2, (table, key)  # enough evidence to be learned
            else:
                found.add(enclave.ExpectedRow(table, tuple(zip(names, key, strict=True))))
    # the reference computes the scenario's own tables (the stations table is flowdiff's addition)
    assert found == {r for r in scenario.expected_rows() if r.table in scenario.tables}
    assert {a.name for a in scenario.anomalies} == {"mail-outbound", "new-talker", "telnet", "odd-ethertype"}
    assert all(scenario.last_day <= a.time < scenario.last_day_end for a in scenario.anomalies)


def test_scenario_churns_addresses_daily(scenario, decoded):
    """DHCP leases and IPv6 temporary addresses differ from day to day (the baseline must canonicalise)."""
    per_day: dict[int, set] = defaultdict(set)
    for path in scenario.files:
        for ph, eth in decoded[path]:
            ip = eth.data
            if isinstance(ip, dpkt.ip.IP | dpkt.ip6.IP6):
                a = ipaddress.ip_address(ip.src)
                if a in ipaddress.ip_network("10.20.100.0/24") or a in ipaddress.ip_network(
                    "2001:db8:20:100::/64"
                ):
                    per_day[ph.tv_sec // 86400].add(str(a))
    days = sorted(per_day)
    assert len(days) == 8
    assert all(per_day[a] != per_day[b] for a, b in zip(days, days[1:], strict=False))
    v6 = [{x for x in per_day[d] if ":" in x} for d in days]
    assert all(len(s) == 1 for s in v6) and len(set().union(*v6)) == 8


def test_scenario_is_deterministic_and_quiet_without_anomalies(tmp_path):
    a = enclave.enclave_scenario(tmp_path / "a", days=1, seed=5)
    b = enclave.enclave_scenario(tmp_path / "b", days=1, seed=5)
    quiet = enclave.enclave_scenario(tmp_path / "q", days=1, seed=5, anomaly_day=False)
    digest = lambda files: hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()  # noqa: E731
    assert [p.name for p in a.files] == [p.name for p in b.files]
    assert digest(a.files) == digest(b.files)
    assert digest(a.normal_files) == digest(quiet.normal_files)
    assert digest(a.last_day_files) != digest(quiet.last_day_files)
    assert quiet.anomalies == () and quiet.expected_rows() == set()
    decoded = {p: [(ph, dpkt.ethernet.Ethernet(d)) for ph, d in _records(p)] for p in quiet.files}
    week = _reference_keys(quiet, decoded, quiet.normal_files)
    last = _reference_keys(quiet, decoded, quiet.last_day_files)
    assert all(set(last[t]) <= set(week[t]) for t in quiet.tables)  # a normal day brings nothing new
