"""Count tables from packet field arrays: exact roles, labels and nets, and invariants checked against a
plain pandas/ipaddress reference implementation of the documented rules."""

from __future__ import annotations

import ipaddress
import socket

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowdiff.aggregate import Aggregator, aggregate
from flowdiff.config import TableConfig
from flowdiff.errors import ConfigError
from flowdiff.schema import DEFAULT_TABLES, INTERVAL, PACKET_FIELDS, DecodeStatus, is_ip_table, table_schema

NS = 1_000_000_000
SYN, ACK, FIN, PSH = 0x02, 0x10, 0x01, 0x08
NETWORKS = {
    "0.0.0.0/0": "internet",
    "10.0.0.0/8": "corp",
    "10.1.0.0/24": "dmz",
    "10.1.0.7/32": "mailhost",
    "2001:db8::/32": "v6corp",
    "2001:db8:1::/48": "v6lab",
    "2001:db8:1::5/128": "v6host",
}
ALL_TABLES = {
    "t5": ("src", "dst", "proto", "sport", "dport"),
    "services": ("client", "server", "proto", "service_port"),
    "labels": ("src_label", "dst_label", "client_label", "server_label"),
    "nets": ("src_net/24", "dst_net/64", "client_net/16", "server_net/120"),
    "link": ("ethertype", "src_mac", "dst_mac", "vlan"),
    "misc": ("ip_version", "icmp_type", "icmp_code", "tcp_flags"),
    "linkver": ("vlan", "ip_version"),
}


# ------------------------------------------------------------------------------------------------
# building packet arrays


def _addr(text: str) -> tuple[int, int, int]:
    ip = ipaddress.ip_address(text)
    n = int(ip)
    return ip.version, n >> 64, n & (2**64 - 1)


def packets(rows: list[dict]) -> dict[str, np.ndarray]:
    """Field arrays from readable rows: ``src``/``dst`` as text, ``t`` in seconds, the rest by field name.
    Rows default to decoded IPv4 Ethernet frames of 100 bytes."""
    cols: dict[str, list] = {k: [] for k in PACKET_FIELDS}
    for r in rows:
        r = dict(r)
        ver, shi, slo = _addr(r.pop("src", "10.0.0.1"))
        _, dhi, dlo = _addr(r.pop("dst", "10.0.0.2"))
        status = r.get("status", DecodeStatus.OK)
        ip = status == DecodeStatus.OK
        base = {
            "ts_ns": int(round(r.pop("t", 0.0) * NS)),
            "wirelen": 100,
            "status": status,
            "ethertype": (0x800 if ver == 4 else 0x86DD) if ip else 0x806,
            "src_mac": 0x020000000001,
            "dst_mac": 0x020000000002,
            "ip_version": ver if ip else 0,
            "src_hi": shi if ip else 0,
            "src_lo": slo if ip else 0,
            "dst_hi": dhi if ip else 0,
            "dst_lo": dlo if ip else 0,
            "proto": 6 if ip else 0,
        }
        base.update(r)
        for k in PACKET_FIELDS:
            cols[k].append(base.get(k, 0))
    return {k: np.array(v, dtype=PACKET_FIELDS[k]) for k, v in cols.items()}


def concat(*parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in PACKET_FIELDS}


def take(p: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[idx] for k, v in p.items()}


def rows_of(table: pa.Table, *cols: str) -> list[tuple]:
    d = table.to_pydict()
    return list(zip(*(d[c] for c in cols), strict=True))


def services(p: dict[str, np.ndarray], **kw) -> list[tuple]:
    t = aggregate(p, {"s": DEFAULT_TABLES["services"]}, interval=kw.pop("interval", 300), **kw)["s"]
    return sorted(set(rows_of(t, "client", "server", "proto", "service_port")))


# ------------------------------------------------------------------------------------------------
# client / server / service_port


def test_syn_sender_is_client_even_against_the_port_rule():
    # the client happens to use port 80, the server listens on 5000: only the SYN tells
    c, s = "10.0.0.1", "10.0.0.2"
    p = packets(
        [
            {"t": 1, "src": c, "dst": s, "sport": 80, "dport": 5000, "tcp_flags": SYN},
            {"t": 2, "src": s, "dst": c, "sport": 5000, "dport": 80, "tcp_flags": SYN | ACK},
            {"t": 3, "src": c, "dst": s, "sport": 80, "dport": 5000, "tcp_flags": ACK},
        ]
    )
    assert services(p) == [(c, s, 6, 5000)]


def test_syn_knowledge_spans_chunks_and_intervals():
    c, s = "10.0.0.1", "10.0.0.2"
    agg = Aggregator({"s": DEFAULT_TABLES["services"]}, interval=60)
    agg.add(packets([{"t": 10, "src": c, "dst": s, "sport": 80, "dport": 5000, "tcp_flags": SYN}]))
    # later intervals, other chunk: only the server's replies
    agg.add(
        packets(
            [
                {"t": 70 + i, "src": s, "dst": c, "sport": 5000, "dport": 80, "tcp_flags": ACK}
                for i in range(3)
            ]
        )
    )
    agg.add(packets([{"t": 130, "src": s, "dst": c, "sport": 5000, "dport": 80, "tcp_flags": ACK}]))
    t = agg.finish()["s"]
    got = rows_of(t, INTERVAL, "client", "server", "service_port", "packets")
    assert [(g[0].timestamp(), *g[1:]) for g in got] == [
        (0.0, c, s, 5000, 1),
        (60.0, c, s, 5000, 3),
        (120.0, c, s, 5000, 1),
    ]


def test_first_syn_wins_when_both_sides_sent_one():
    a, b = "10.0.0.1", "10.0.0.2"
    p = packets(
        [
            {"t": 2, "src": b, "dst": a, "sport": 7000, "dport": 6000, "tcp_flags": SYN},
            {"t": 1, "src": a, "dst": b, "sport": 6000, "dport": 7000, "tcp_flags": SYN},
        ]
    )
    assert services(p) == [(a, b, 6, 7000)]


def test_syn_ack_does_not_make_a_client():
    # only the SYN+ACK was captured: the port rule decides (443 is the service)
    c, s = "10.0.0.1", "10.0.0.2"
    p = packets([{"t": 1, "src": s, "dst": c, "sport": 443, "dport": 50000, "tcp_flags": SYN | ACK}])
    assert services(p) == [(c, s, 6, 443)]


@pytest.mark.parametrize(
    ("sport", "dport", "service_ports", "client_is_src", "service"),
    [
        (40000, 443, (), True, 443),  # well-known port is the service
        (443, 40000, (), False, 443),
        (3000, 8080, (8080,), True, 8080),  # listed in service_ports, although the higher port
        (8080, 3000, (8080,), False, 8080),
        (53, 123, (), False, 53),  # both below 1024: the lower port (53) is the service
        (123, 53, (), True, 53),
        (5000, 40000, (), False, 5000),  # neither: the lower port
        (40000, 5000, (), True, 5000),
        (5353, 5353, (), True, 5353),  # equal: the sender is the client
    ],
)
@pytest.mark.parametrize("proto", [6, 17])
def test_port_rule_without_syn(sport, dport, service_ports, client_is_src, service, proto):
    a, b = "2001:db8::1", "2001:db8::9"
    p = packets([{"src": a, "dst": b, "sport": sport, "dport": dport, "proto": proto, "tcp_flags": ACK}])
    expected = (a, b) if client_is_src else (b, a)
    assert services(p, service_ports=service_ports) == [(*expected, proto, service)]


def test_equal_ports_both_directions_give_two_rows():
    a, b = "10.0.0.1", "10.0.0.2"
    p = packets(
        [
            {"src": a, "dst": b, "sport": 500, "dport": 500, "proto": 17},
            {"src": b, "dst": a, "sport": 500, "dport": 500, "proto": 17},
        ]
    )
    assert services(p) == [(a, b, 17, 500), (b, a, 17, 500)]


def test_icmp_echo_roles():
    h, r, gw = "10.0.0.1", "8.8.8.8", "10.0.0.254"
    p = packets(
        [
            {"src": h, "dst": r, "proto": 1, "icmp_type": 8},  # echo request
            {"src": r, "dst": h, "proto": 1, "icmp_type": 0},  # echo reply: its sender is the server
            {"src": gw, "dst": h, "proto": 1, "icmp_type": 3, "icmp_code": 1},  # unreachable: sender = client
            {"src": "2001:db8::1", "dst": "2001:db8::2", "proto": 58, "icmp_type": 128},
            {"src": "2001:db8::2", "dst": "2001:db8::1", "proto": 58, "icmp_type": 129},
            {"src": h, "dst": r, "proto": 47},  # GRE: sender = client, no port
        ]
    )
    assert services(p) == sorted(
        [(h, r, 1, 0), (gw, h, 1, 0), ("2001:db8::1", "2001:db8::2", 58, 0), (h, r, 47, 0)]
    )


@pytest.mark.parametrize("syn_seen", [True, False])
def test_client_ephemeral_ports_never_key_services(syn_seen):
    """Thousands of client ports against a few services; without SYNs the service ports are below 1024
    or configured, with SYNs any port works (8443 here is neither, and client ports go below it)."""
    rng = np.random.default_rng(7)
    n = 3000
    clients = [f"10.1.{i // 250}.{i % 250 + 1}" for i in range(40)]
    server_ports = [443, 25, 8443] if syn_seen else [443, 25, 9000]
    rows = []
    for i in range(n):
        c = clients[rng.integers(len(clients))]
        s = f"192.0.2.{rng.integers(1, 4)}"
        sp = server_ports[rng.integers(len(server_ports))]
        cp = int(rng.integers(1024, 65536)) if not syn_seen else int(rng.integers(1024, 65536))
        if not syn_seen and sp == 9000:
            cp = int(rng.integers(9001, 65536))  # the documented rule needs the lower port here
        t = i * 0.01
        if syn_seen:
            rows.append({"t": t, "src": c, "dst": s, "sport": cp, "dport": sp, "tcp_flags": SYN})
        rows.append({"t": t + 0.001, "src": s, "dst": c, "sport": sp, "dport": cp, "tcp_flags": ACK | PSH})
        rows.append({"t": t + 0.002, "src": c, "dst": s, "sport": cp, "dport": sp, "tcp_flags": ACK})
    p = packets(rows)
    t = aggregate(p, {"s": DEFAULT_TABLES["services"]}, interval=3600, service_ports=[9000])["s"]
    assert set(t.column("service_port").to_pylist()) <= set(server_ports)
    assert set(t.column("client").to_pylist()) <= set(clients)
    assert sum(t.column("packets").to_pylist()) == len(rows)


# ------------------------------------------------------------------------------------------------
# labels, nets, text forms, which frames count


def test_labels_longest_prefix_ipv4_and_ipv6():
    p = packets(
        [
            {"src": "10.1.0.7", "dst": "10.1.0.8", "sport": 40000, "dport": 25},
            {"src": "10.2.0.1", "dst": "8.8.8.8", "sport": 40000, "dport": 53, "proto": 17},
            {"src": "2001:db8:1::5", "dst": "2001:db8:1::6", "sport": 40000, "dport": 22},
            {"src": "2001:db8:2::1", "dst": "fe80::1", "sport": 40000, "dport": 22},
        ]
    )
    t = aggregate(p, {"l": ("src_label", "dst_label")}, interval=60, networks=NETWORKS)["l"]
    assert sorted(rows_of(t, "src_label", "dst_label")) == sorted(
        [
            ("mailhost", "dmz"),
            ("corp", "internet"),
            ("v6host", "v6lab"),
            ("v6corp", "other"),
        ]
    )
    t = aggregate(p, {"l": ("client_label", "server_label")}, interval=60)["l"]
    assert set(rows_of(t, "client_label", "server_label")) == {("other", "other")}


def test_net_keys():
    p = packets(
        [
            {"src": "2001:db8:1:2:3::4", "dst": "2001:db8:1:2:ffff::1", "sport": 40000, "dport": 443},
            {"src": "2001:db8:1:2:3::5", "dst": "2001:db8:7::1", "sport": 40001, "dport": 443},
        ]
    )
    keys = ("src_net/24", "src_net/64", "server_net/120", "client_net/48")
    t = aggregate(p, {"n": keys}, interval=60)["n"]
    assert rows_of(t, *keys, "packets") == [
        ("2001:d00::/24", "2001:db8:1:2::/64", "2001:db8:1:2:ffff::/120", "2001:db8:1::/48", 1),
        ("2001:d00::/24", "2001:db8:1:2::/64", "2001:db8:7::/120", "2001:db8:1::/48", 1),
    ]
    q = packets([{"src": "10.1.2.3", "dst": "10.9.9.9"}, {"src": "10.1.2.200", "dst": "10.9.9.9"}])
    t = aggregate(q, {"n": ("src_net/24", "src_net/64", "dst_net/8")}, interval=60)["n"]
    assert rows_of(t, "src_net/24", "src_net/64", "dst_net/8") == [
        ("10.1.2.0/24", "10.1.2.200/32", "10.0.0.0/8"),
        ("10.1.2.0/24", "10.1.2.3/32", "10.0.0.0/8"),
    ]


def test_non_ip_frames_counted_by_link_tables_only():
    p = packets(
        [
            {
                "t": 1,
                "src_mac": 0xAABBCCDDEEFF,
                "dst_mac": 0xFFFFFFFFFFFF,
                "status": DecodeStatus.NOT_IP,
                "wirelen": 60,
            },
            {
                "t": 2,
                "src_mac": 0x001122334455,
                "status": DecodeStatus.BAD_IP,
                "ethertype": 0x800,
                "wirelen": 70,
            },
            {"t": 3, "status": DecodeStatus.UNKNOWN_LINKTYPE, "wirelen": 1000},
            {"t": 4, "status": DecodeStatus.TRUNCATED_LINK, "wirelen": 1000},
            {"t": 5, "src": "10.0.0.1", "dst": "10.0.0.2", "wirelen": 80},
        ]
    )
    p["ethertype"][0] = 0x88CC
    agg = Aggregator(dict(DEFAULT_TABLES), interval=60)
    agg.add(p)
    out = agg.finish()
    assert sorted(rows_of(out["link"], "ethertype", "src_mac", "dst_mac", "packets", "bytes")) == [
        (0x800, "00:11:22:33:44:55", "02:00:00:00:00:02", 1, 70),
        (0x800, "02:00:00:00:00:01", "02:00:00:00:00:02", 1, 80),
        (0x88CC, "aa:bb:cc:dd:ee:ff", "ff:ff:ff:ff:ff:ff", 1, 60),
    ]
    for name in ("hosts", "pairs", "services"):
        assert rows_of(out[name], "packets", "bytes") == [(1, 80)]
    assert agg.skipped == {"unknown-linktype": 1, "truncated-link": 1}
    assert agg.packets_seen == 5

    ip_only = Aggregator({"hosts": ("src",)}, interval=60)
    ip_only.add(p)
    assert ip_only.skipped == {"unknown-linktype": 1, "truncated-link": 1, "not-ip": 1, "bad-ip-header": 1}


def test_empty_input_gives_empty_tables_with_full_schema():
    agg = Aggregator(ALL_TABLES, interval=60, networks=NETWORKS)
    agg.add(packets([]))
    out = agg.finish()
    assert set(out) == set(ALL_TABLES)
    for name, keys in ALL_TABLES.items():
        assert out[name].num_rows == 0
        assert out[name].schema == table_schema(keys)
    # only frames an IP table cannot count: still an empty table, not an error
    out = aggregate(packets([{"status": DecodeStatus.NOT_IP}]), {"h": ("src",)}, interval=60)
    assert out["h"].num_rows == 0 and out["h"].schema == table_schema(("src",))


def test_interval_start_and_timestamps_are_exact():
    p = packets(
        [
            {"t": 0},
            {"t": 299.999999999},
            {"t": 300},
            {"t": -0.000001},
        ]
    )
    p["ts_ns"][:] = [1_767_225_600 * NS, 1_767_225_899_999_999_999, 1_767_225_900 * NS, -1000]
    t = aggregate(p, {"h": ("src",)}, interval=300)["h"]
    d = t.to_pydict()
    assert [x.timestamp() for x in d[INTERVAL]] == [-300.0, 1_767_225_600.0, 1_767_225_900.0]
    assert d["packets"] == [1, 2, 1]
    first_us = t.column("first_seen").cast(pa.int64()).to_pylist()
    last_us = t.column("last_seen").cast(pa.int64()).to_pylist()
    assert first_us == [-1, 1_767_225_600_000_000, 1_767_225_900_000_000]
    assert last_us == [-1, 1_767_225_899_999_999, 1_767_225_900_000_000]
    assert t.schema == table_schema(("src",))


def test_rows_are_sorted_like_arrow_sorts_the_stored_columns():
    rng = np.random.default_rng(3)
    p = random_packets(rng, 3000)
    out = aggregate(p, ALL_TABLES, interval=60, networks=NETWORKS)
    for name, keys in ALL_TABLES.items():
        t = out[name]
        order = pc.sort_indices(t, sort_keys=[(c, "ascending") for c in (INTERVAL, *keys)])
        assert t.take(order).equals(t), name


def test_bad_table_definition_is_a_config_error():
    with pytest.raises(ConfigError, match="nonsense"):
        Aggregator({"x": ("src", "nonsense")}, interval=60)
    with pytest.raises(ConfigError, match="interval"):
        Aggregator({"x": ("src",)}, interval=0)


def test_accepts_table_configs():
    tc = {"h": TableConfig(name="h", keys=("src", "dst_label"))}
    t = aggregate(packets([{"src": "10.1.0.7"}]), tc, interval=60, networks=NETWORKS)["h"]
    assert rows_of(t, "src", "dst_label") == [("10.1.0.7", "corp")]


# ------------------------------------------------------------------------------------------------
# the reference: the documented rules written the obvious way, row by row


V4_POOL = ["10.1.0.7", "10.1.0.8", "10.2.3.4", "8.8.8.8", "192.0.2.1"]
V6_POOL = ["2001:db8:1::5", "2001:db8:1::6", "2001:db8:2::1", "fe80::1", "::ffff:1.2.3.4"]
PORTS = np.array([0, 22, 53, 80, 443, 1023, 1024, 5000, 8080, 40000, 50000], dtype=np.uint16)


def random_packets(rng: np.random.Generator, n: int, span_s: float = 200.0) -> dict[str, np.ndarray]:
    """Random frames over a few addresses and ports, so that keys repeat and connections form."""
    p = {k: np.zeros(n, dtype=d) for k, d in PACKET_FIELDS.items()}
    p["ts_ns"] = rng.integers(int(-span_s * NS / 4), int(span_s * NS), n)
    p["wirelen"] = rng.integers(40, 2000, n).astype(np.uint32)
    p["status"] = rng.choice([0, 0, 0, 0, 1, 2, 3, 4], n).astype(np.uint8)
    p["ethertype"] = rng.choice([0x800, 0x86DD, 0x806, 0x88CC], n).astype(np.uint16)
    p["src_mac"] = rng.choice([0x020000000001, 0xAABBCCDDEEFF, 0x001122334455], n).astype(np.uint64)
    p["dst_mac"] = rng.choice([0x020000000002, 0xFFFFFFFFFFFF], n).astype(np.uint64)
    p["vlan"] = rng.choice([0, 10, 4095], n).astype(np.uint16)
    v6 = rng.random(n) < 0.3
    p["ip_version"] = np.where(v6, 6, 4).astype(np.uint8)
    for side in ("src", "dst"):
        a4 = np.array([_addr(a) for a in V4_POOL], dtype=np.uint64)[rng.integers(len(V4_POOL), size=n)]
        a6 = np.array([_addr(a) for a in V6_POOL], dtype=np.uint64)[rng.integers(len(V6_POOL), size=n)]
        p[f"{side}_hi"] = np.where(v6, a6[:, 1], a4[:, 1]).astype(np.uint64)
        p[f"{side}_lo"] = np.where(v6, a6[:, 2], a4[:, 2]).astype(np.uint64)
    p["proto"] = rng.choice([6, 6, 6, 17, 17, 1, 58, 47], n).astype(np.uint8)
    p["sport"] = rng.choice(PORTS, n)
    p["dport"] = rng.choice(PORTS, n)
    p["icmp_type"] = rng.choice([0, 3, 8, 128, 129], n).astype(np.uint8)
    p["icmp_code"] = rng.choice([0, 1], n).astype(np.uint8)
    p["tcp_flags"] = rng.choice([SYN, SYN | ACK, ACK, ACK | PSH, FIN | ACK], n).astype(np.uint8)
    return p


def _text(ver: int, n: int) -> str:
    if ver == 4:
        return str(ipaddress.IPv4Address(n))
    return socket.inet_ntop(socket.AF_INET6, n.to_bytes(16, "big"))


def _net_text(ver: int, n: int, prefix: int) -> str:
    p = min(prefix, 32) if ver == 4 else prefix
    net = (
        ipaddress.ip_network((n, p), strict=False)
        if ver == 4
        else ipaddress.IPv6Network((n, p), strict=False)
    )
    return f"{_text(ver, int(net.network_address))}/{p}"


def _label(ver: int, n: int, networks: dict[str, str]) -> str:
    best, label = -1, "other"
    for cidr, lab in networks.items():
        net = ipaddress.ip_network(cidr)
        if net.version == ver and (int(net.network_address) == n & int(net.netmask)) and net.prefixlen > best:
            best, label = net.prefixlen, lab
    return label


def reference(
    p: dict[str, np.ndarray], tables: dict, interval: int, networks: dict, service_ports=()
) -> dict:
    """pandas DataFrames, one per table, computed without any of flowdiff's machinery."""
    df = pd.DataFrame({k: v.tolist() for k, v in p.items()})
    ok = df["status"] == DecodeStatus.OK
    for col in (
        "ip_version",
        "src_hi",
        "src_lo",
        "dst_hi",
        "dst_lo",
        "proto",
        "sport",
        "dport",
        "icmp_type",
        "icmp_code",
        "tcp_flags",
    ):
        df.loc[~ok, col] = 0
    df["src_n"] = [
        (h << 64) | lo if v == 6 else lo for v, h, lo in zip(df.ip_version, df.src_hi, df.src_lo, strict=True)
    ]
    df["dst_n"] = [
        (h << 64) | lo if v == 6 else lo for v, h, lo in zip(df.ip_version, df.dst_hi, df.dst_lo, strict=True)
    ]

    # first SYN without ACK per TCP connection (unordered endpoints), over all frames
    first_syn: dict = {}
    for r in df[ok & (df.proto == 6)].itertuples():
        if r.tcp_flags & 0x12 != 0x02:
            continue
        sender = (r.src_n, r.sport)
        conn = (r.ip_version, frozenset([sender, (r.dst_n, r.dport)]))
        side = first_syn.setdefault(conn, {})
        side[sender] = min(side.get(sender, r.ts_ns), r.ts_ns)
    sp = set(service_ports)

    def client_is_src(r) -> bool:
        if r.proto == 6:
            side = first_syn.get((r.ip_version, frozenset([(r.src_n, r.sport), (r.dst_n, r.dport)])), {})
            if side:
                me = side.get((r.src_n, r.sport))
                other = side.get((r.dst_n, r.dport))
                times = [t for t in (me, other) if t is not None]
                if (r.src_n, r.sport) == (r.dst_n, r.dport):
                    return True
                if me is not None and (other is None or me < other):
                    return True
                if other is not None and (me is None or other < me):
                    return False
                assert times  # tie: fall through to the port rule
        if r.proto in (6, 17):
            qs, qd = r.sport < 1024 or r.sport in sp, r.dport < 1024 or r.dport in sp
            if qs != qd:
                return qd
            return r.dport <= r.sport
        return not ((r.proto == 1 and r.icmp_type == 0) or (r.proto == 58 and r.icmp_type == 129))

    cis = [client_is_src(r) if o else True for r, o in zip(df.itertuples(), ok, strict=True)]
    df["cis"] = cis
    df["client_n"] = np.where(df.cis, df.src_n, df.dst_n)
    df["server_n"] = np.where(df.cis, df.dst_n, df.src_n)
    df["service_port"] = [
        (d if c else s) if pr in (6, 17) else 0
        for c, s, d, pr in zip(df.cis, df.sport, df.dport, df.proto, strict=True)
    ]
    df["interval_no"] = df.ts_ns // (interval * NS)
    out = {}
    for name, keys in tables.items():
        sel = df[ok] if is_ip_table(keys) else df[df.status.isin([0, 1, 4])]
        sel = sel.copy()
        for k in keys:
            sel[k] = [_key_value(k, r, networks) for r in sel.itertuples()]
        g = sel.groupby(["interval_no", *keys], sort=True).agg(
            packets=("wirelen", "size"),
            bytes=("wirelen", "sum"),
            first=("ts_ns", "min"),
            last=("ts_ns", "max"),
        )
        out[name] = g.reset_index()
    return out


def _key_value(k: str, r, networks: dict):
    if "_net/" in k:
        side, prefix = k.split("_net/")
        return _net_text(r.ip_version, getattr(r, f"{side}_n"), int(prefix))
    if k in ("src", "dst", "client", "server"):
        return _text(r.ip_version, getattr(r, f"{k}_n"))
    if k.endswith("_label"):
        return _label(r.ip_version, getattr(r, f"{k.removesuffix('_label')}_n"), networks)
    if k in ("src_mac", "dst_mac"):
        return ":".join(f"{b:02x}" for b in int(getattr(r, k)).to_bytes(6, "big"))
    return int(getattr(r, k))


def assert_matches_reference(out: dict[str, pa.Table], ref: dict, tables: dict, interval: int) -> None:
    for name, keys in tables.items():
        got = out[name].to_pandas()
        exp = ref[name]
        assert out[name].schema == table_schema(keys)
        got_rows = sorted(
            zip(
                (got[INTERVAL].astype("int64") // 10**6 if len(got) else got[INTERVAL]).tolist(),
                *(got[k].tolist() for k in keys),
                got.packets.tolist(),
                got.bytes.tolist(),
                out[name].column("first_seen").cast(pa.int64()).to_pylist(),
                out[name].column("last_seen").cast(pa.int64()).to_pylist(),
                strict=True,
            )
        )
        exp_rows = sorted(
            zip(
                (exp.interval_no * interval).tolist(),
                *(exp[k].tolist() for k in keys),
                exp.packets.tolist(),
                exp.bytes.tolist(),
                (exp["first"] // 1000).tolist(),
                (exp["last"] // 1000).tolist(),
                strict=True,
            )
        )
        assert [tuple(r) for r in got_rows] == [tuple(r) for r in exp_rows], name


def test_equals_reference_on_random_packets():
    rng = np.random.default_rng(11)
    p = random_packets(rng, 4000)
    out = aggregate(p, ALL_TABLES, interval=60, networks=NETWORKS, service_ports=[8080])
    ref = reference(p, ALL_TABLES, 60, NETWORKS, service_ports=[8080])
    assert_matches_reference(out, ref, ALL_TABLES, 60)


@settings(max_examples=12, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 200), st.sampled_from([1, 60, 300]))
def test_reference_hypothesis(seed, n, interval):
    p = random_packets(np.random.default_rng(seed), n)
    tables = {k: ALL_TABLES[k] for k in ("t5", "services", "labels", "link", "linkver")}
    out = aggregate(p, tables, interval=interval, networks=NETWORKS)
    assert_matches_reference(out, reference(p, tables, interval, NETWORKS), tables, interval)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 400), st.lists(st.integers(0, 400), max_size=6))
def test_shuffling_and_chunking_change_no_count(seed, n, cuts):
    rng = np.random.default_rng(seed)
    p = random_packets(rng, n)
    whole = aggregate(p, ALL_TABLES, interval=60, networks=NETWORKS)
    shuffled = take(p, rng.permutation(n))
    agg = Aggregator(ALL_TABLES, interval=60, networks=NETWORKS)
    bounds = [0, *sorted(c % (n + 1) for c in cuts), n]
    for a, b in zip(bounds, bounds[1:], strict=False):
        agg.add(take(shuffled, np.arange(a, b)))
    parts = agg.finish()
    counted_ip = int((p["status"] == 0).sum())
    counted_link = int(np.isin(p["status"], [0, 1, 4]).sum())
    for name, keys in ALL_TABLES.items():
        assert parts[name].equals(whole[name]), name  # same rows, same order: byte-identical later
        frames = counted_ip if is_ip_table(keys) else counted_link
        mask = (p["status"] == 0) if is_ip_table(keys) else np.isin(p["status"], [0, 1, 4])
        assert (pc.sum(parts[name]["packets"]).as_py() or 0) == frames
        assert (pc.sum(parts[name]["bytes"]).as_py() or 0) == int(p["wirelen"][mask].sum())
    assert agg.packets_seen == n
    assert sum(agg.skipped.values()) == int(np.isin(p["status"], [2, 3]).sum())


def test_many_keys_and_out_of_order_intervals_grow_and_merge(monkeypatch):
    """More distinct rows than the initial row store and index (made tiny here so that both grow
    many times), and a second pass over old intervals (the index only remembers the newest
    interval): counts still merge exactly."""
    monkeypatch.setattr(Aggregator, "_INITIAL_ROWS", 64)
    monkeypatch.setattr(Aggregator, "_INITIAL_CAPACITY", 32)
    rng = np.random.default_rng(5)
    n = 60_000
    p = {k: np.zeros(n, dtype=d) for k, d in PACKET_FIELDS.items()}
    p["ts_ns"] = np.sort(rng.integers(0, 600 * NS, n))
    p["wirelen"] = rng.integers(60, 1500, n).astype(np.uint32)
    p["ip_version"][:] = 4
    p["src_lo"] = rng.integers(0x0A000000, 0x0A000000 + 20_000, n).astype(np.uint64)
    p["dst_lo"] = rng.integers(0xC0000200, 0xC0000210, n).astype(np.uint64)
    p["proto"][:] = 17
    p["sport"] = rng.integers(1024, 65535, n).astype(np.uint16)
    p["dport"][:] = 53
    agg = Aggregator({"t5": ALL_TABLES["t5"], "hosts": ("src",)}, interval=60)
    agg.add(p)
    agg.add(p)  # the same traffic again: every interval is old now
    out = agg.finish()
    df = pd.DataFrame({k: p[k] for k in ("ts_ns", "wirelen", "src_lo")})
    df["iv"] = df.ts_ns // (60 * NS)
    exp = df.groupby(["iv", "src_lo"]).agg(packets=("wirelen", "size"), bytes=("wirelen", "sum"))
    got = out["hosts"].to_pandas()
    assert len(got) == len(exp)
    assert (
        got.packets.sum() == 2 * n
        and (np.sort(got.packets.to_numpy()) == np.sort(2 * exp.packets.to_numpy())).all()
    )
    assert got.bytes.sum() == 2 * int(p["wirelen"].sum())
    assert out["t5"].num_rows == len(df.assign(sp=p["sport"]).groupby(["iv", "src_lo", "sp"]))
