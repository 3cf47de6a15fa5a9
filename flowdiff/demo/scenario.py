"""The demo scenario: a normal week of a small mail enclave, then a day with known anomalies.

``enclave_scenario`` writes the captures (rotated like ``tcpdump -G``) and returns a :class:`Scenario`:
what was written, the config that suits it, and the exact new rows (:class:`ExpectedRow`) a diff of the
last day against a baseline of the week must report. Every draw comes from a per-day RNG seeded by
``seed``, so the same arguments give the same bytes and the demo must find exactly what it injected.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from flowdiff import vocab
from flowdiff.demo.frames import (
    BROADCAST,
    ETH_ARP,
    ETH_IPV4,
    NS,
    PROTO_TCP,
    PROTO_UDP,
    Frame,
    arp_frame,
    ethernet,
    icmp_echo_frame,
    tcp_session,
    udp_exchange,
    write_pcap,
)
from flowdiff.schema import STATIONS, STATIONS_KEYS

__all__ = [
    "Scenario",
    "Anomaly",
    "ExpectedRow",
    "SCENARIO_START",
    "SCENARIO_INTERVAL",
    "SCENARIO_NETWORKS",
    "SCENARIO_TABLES",
    "ROUTER",
    "MAILHOST",
    "RESOLVER",
    "ADMIN",
    "NEW_TALKER",
    "ODD_ETHERTYPE",
    "format_value",
    "enclave_scenario",
]

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
        keys = STATIONS_KEYS if table == STATIONS else SCENARIO_TABLES[table]["keys"]
        return cls(table, tuple((k, key[k]) for k in keys))

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
        if server is None or cip is None:
            raise ValueError(f"{client.mac} or the resolver has no IPv6 address")
        self.frames += udp_exchange(
            t,
            client_mac=client.mac,
            server_mac=RESOLVER.mac,
            client=cip,
            server=server,
            cport=self.eph(),
            sport=53,
            request=query,
            response=answer,
            rtt_ns=18_000_000,
        )
        if upstream if upstream is not None else self.rng.random() < 0.5:
            self.frames += udp_exchange(
                t + 500_000,
                client_mac=RESOLVER.mac,
                server_mac=ROUTER.mac,
                client=RESOLVER.ip,
                server=UPSTREAM_DNS[int(self.rng.integers(0, 2))],
                cport=self.eph(),
                sport=53,
                request=query,
                response=answer,
                rtt_ns=15_000_000,
            )

    def session(self, t: int, client: tuple[str, str], server: tuple[str, str], port: int, ex: list) -> None:
        """TCP conversation; ``client``/``server`` are (MAC at the capture point, address)."""
        isn = (int(self.rng.integers(0, 2**32)), int(self.rng.integers(0, 2**32)))
        self.frames += tcp_session(
            t,
            client_mac=client[0],
            server_mac=server[0],
            client=client[1],
            server=server[1],
            cport=self.eph(),
            sport=port,
            exchanges=ex,
            rtt_ns=int(self.rng.integers(2, 60)) * 1_000_000,
            isn=isn,
        )

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
                t,
                client_mac=host.mac,
                server_mac=ROUTER.mac,
                client=host.ip,
                server=NTP_SERVERS[int(rng.integers(0, 3))],
                cport=day.eph(),
                sport=123,
                request=_ntp(3),
                response=_ntp(4),
                rtt_ns=25_000_000,
            )
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
    out.append(
        Anomaly(
            "mail-outbound",
            "the mail server opens a connection to an IRC server on the internet (tcp/6667)",
            ts(t),
            (
                ExpectedRow.of(
                    "services", client=MAILHOST.ip, server="internet", proto=PROTO_TCP, service_port=6667
                ),
            ),
        )
    )

    t = at(11, 5)
    day.arp(t, NEW_TALKER, RESOLVER)
    for i in range(3):
        day.dns(t + (5 + i * 600) * NS, NEW_TALKER, "pool.ntp.org", upstream=False)
    out.append(
        Anomaly(
            "new-talker",
            f"a device never seen before ({NEW_TALKER.ip}, {NEW_TALKER.mac}) appears and uses the resolver",
            ts(t),
            (
                ExpectedRow.of("hosts", src=NEW_TALKER.ip),
                ExpectedRow.of("pairs", src=NEW_TALKER.ip, dst=RESOLVER.ip, proto=PROTO_UDP),
                ExpectedRow.of("pairs", src=RESOLVER.ip, dst=NEW_TALKER.ip, proto=PROTO_UDP),
                ExpectedRow.of(
                    "services", client=NEW_TALKER.ip, server=RESOLVER.ip, proto=PROTO_UDP, service_port=53
                ),
                ExpectedRow.of("link", ethertype=ETH_ARP, src_mac=NEW_TALKER.mac, dst_mac=BROADCAST),
                ExpectedRow.of("link", ethertype=ETH_ARP, src_mac=RESOLVER.mac, dst_mac=NEW_TALKER.mac),
                ExpectedRow.of("link", ethertype=ETH_IPV4, src_mac=NEW_TALKER.mac, dst_mac=RESOLVER.mac),
                ExpectedRow.of("link", ethertype=ETH_IPV4, src_mac=RESOLVER.mac, dst_mac=NEW_TALKER.mac),
                ExpectedRow.of(STATIONS, src_mac=NEW_TALKER.mac, src=NEW_TALKER.ip),
            ),
        )
    )

    t = at(15, 32)
    ex = [(False, b"\xff\xfd\x18\xff\xfd\x20"), (True, b"\xff\xfc\x18\xff\xfc\x20"), (False, b"login: ")]
    ex += [
        (True, b"root\r\n"),
        (False, b"Password: "),
        (True, b"123456\r\n"),
        (False, b"Login incorrect\r\n"),
    ]
    day.session(t, (ROUTER.mac, "203.0.113.66"), mail, 23, ex)
    out.append(
        Anomaly(
            "telnet",
            "someone on the internet logs in to the mail server with telnet (tcp/23)",
            ts(t),
            (
                ExpectedRow.of(
                    "services", client="internet", server=MAILHOST.ip, proto=PROTO_TCP, service_port=23
                ),
            ),
        )
    )

    t = at(19, 10)
    odd_mac = WORKSTATION_MACS[2]
    for i in range(5):
        payload = b"FDX-TEST" + struct.pack("!I", i) + b"\0" * 40
        day.frames.append(Frame(t + i * 2 * NS, ethernet(odd_mac, BROADCAST, ODD_ETHERTYPE, payload)))
    out.append(
        Anomaly(
            "odd-ethertype",
            f"a workstation ({odd_mac}) broadcasts frames of ethertype {vocab.ethertype_text(ODD_ETHERTYPE)}",
            ts(t),
            (ExpectedRow.of("link", ethertype=ODD_ETHERTYPE, src_mac=odd_mac, dst_mac=BROADCAST),),
        )
    )
    return tuple(out)


def _daily_addresses(rng: np.random.Generator) -> tuple[list[str], str]:
    leases = rng.choice(np.arange(100, 200), size=len(WORKSTATION_MACS), replace=False)
    iid = int(rng.integers(1, 2**63)) & ~(0x02 << 56)  # RFC 4941: random, universal/local bit clear
    v6 = str(ipaddress.ip_address(f"{LAPTOP6_PREFIX}::") + iid)
    return [f"10.20.100.{int(x)}" for x in leases], v6


def _scenario_roles() -> dict[str, str]:
    roles = {
        ROUTER.ip: "router",
        ROUTER.mac: "router",
        MAILHOST.ip: "mail server",
        MAILHOST.mac: "mail server",
        RESOLVER.ip: "DNS resolver",
        RESOLVER.mac: "DNS resolver",
        str(RESOLVER.ip6): "DNS resolver (IPv6)",
        ADMIN.ip: "admin workstation",
        ADMIN.mac: "admin workstation",
        VPN_CLIENT: "VPN client",
        LAPTOP6_MAC: "IPv6 laptop",
        f"{LAPTOP6_PREFIX}::/64": "IPv6 laptop (temporary addresses)",
        "dhcp": "DHCP pool (workstations)",
        "internet": "the internet",
    }
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
        directory=directory,
        start=start,
        days=days,
        rotate=rotate,
        seed=seed,
        normal_files=tuple(normal),
        last_day_files=tuple(last),
        anomalies=anomalies,
        packets=packets,
        roles=_scenario_roles(),
        interval=interval,
    )


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
