"""Deterministic count-table generators for the learn/diff tests (no captures involved).

A "site" has three servers, a DHCP pool of clients whose addresses move every day, IPv6 clients that
rotate their RFC 4941 temporary address every day, phones with randomised MACs and ephemeral client
ports that are never the same twice. ``day(n)`` returns the count tables of one day of such traffic;
``anomaly(...)`` adds the rows of one injected abnormal event.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import pyarrow as pa

from flowdiff.config import Config, load_config, parse_config
from flowdiff.schema import INTERVAL, table_schema
from flowdiff.store import Store

INTERVAL_S = 300
DAY0 = pd.Timestamp("2026-11-02T08:00:00Z")
SENSOR = "s1"

NETWORKS = {
    "10.1.0.0/24": "servers",
    "10.2.0.0/24": "dhcp",
    "2001:db8:1::/64": "v6lan",
    "0.0.0.0/0": "internet",
}
TABLES = {
    "hosts": {"keys": ["src"], "collapse": ["dhcp"], "ipv6_prefix": 64},
    "pairs": {"keys": ["src", "dst", "proto"], "collapse": ["dhcp"], "ipv6_prefix": 64},
    "services": {
        "keys": ["client", "server", "proto", "service_port"],
        "collapse": ["dhcp"],
        "ipv6_prefix": 64,
    },
    "link": {"keys": ["ethertype", "src_mac", "dst_mac"]},
}
SERVICES = [("10.1.0.10", 6, 443), ("10.1.0.10", 6, 80), ("10.1.0.25", 6, 25), ("10.1.0.53", 17, 53)]
SERVER_MAC = {
    "10.1.0.10": "00:16:3e:00:00:0a",
    "10.1.0.25": "00:16:3e:00:00:19",
    "10.1.0.53": "00:16:3e:00:00:35",
}
GATEWAY_MAC = "00:16:3e:00:00:01"
V6_SERVER = "2001:db8:1::10"
N_CLIENTS = 6
N_V6 = 3
INTERVALS = 4  # per generated day: enough for the 2-interval evidence threshold


def config_toml(root: Path, extra: str = "", tables: dict | None = None) -> str:
    """The same config as TOML text (for CLI tests, which read ./flowdiff.toml)."""
    lines = [
        f'store = "{root / "store"}"',
        f'baselines = "{root / "baselines"}"',
        f'reports = "{root / "reports"}"',
        f"interval = {INTERVAL_S}",
        f'sensor = "{SENSOR}"',
        extra,
        "[networks]",
    ]
    lines += [f'"{cidr}" = "{label}"' for cidr, label in NETWORKS.items()]
    for name, spec in (tables or TABLES).items():
        lines.append(f"[tables.{name}]")
        for k, v in spec.items():
            lines.append(f"{k} = {json.dumps(v)}")
    return "\n".join(lines) + "\n"


def write_config(root: Path, extra: str = "", tables: dict | None = None) -> Config:
    path = root / "flowdiff.toml"
    path.write_text(config_toml(root, extra, tables), encoding="utf-8")
    return load_config(path)


def copy_site(template: Path, root: Path, extra: str = "") -> Config:
    """A copy of a prepared store + baselines (file times kept, so diffed intervals stay diffed)."""
    for d in ("store", "baselines", "reports"):
        if (template / d).exists():
            shutil.copytree(template / d, root / d)
    return write_config(root, extra)


def make_config(root: Path, **overrides) -> Config:
    raw = {
        "store": str(root / "store"),
        "baselines": str(root / "baselines"),
        "reports": str(root / "reports"),
        "interval": INTERVAL_S,
        "sensor": SENSOR,
        "networks": dict(NETWORKS),
        "tables": {k: dict(v) for k, v in TABLES.items()},
    }
    raw.update(overrides)
    return parse_config(raw, base=root)


def _flow(
    rows: list[dict],
    t: pd.Timestamp,
    src: str,
    dst: str,
    proto: int,
    sport: int,
    dport: int,
    src_mac: str,
    dst_mac: str,
    packets: int,
    nbytes: int,
    client: str | None = None,
    server: str | None = None,
    service_port: int | None = None,
    ethertype: int | None = None,
) -> None:
    """One direction of traffic in one interval."""
    if ethertype is None:
        ethertype = 0x86DD if ":" in src else 0x0800
    rows.append(
        dict(
            interval_start=t,
            src=src,
            dst=dst,
            proto=proto,
            sport=sport,
            dport=dport,
            src_mac=src_mac,
            dst_mac=dst_mac,
            ethertype=ethertype,
            client=client or src,
            server=server or dst,
            service_port=service_port if service_port is not None else dport,
            packets=packets,
            bytes=nbytes,
            first_seen=t + pd.Timedelta(seconds=1),
            last_seen=t + pd.Timedelta(seconds=INTERVAL_S - 1),
        )
    )


def _conversation(
    rows: list[dict],
    t: pd.Timestamp,
    client: str,
    cmac: str,
    server: str,
    smac: str,
    proto: int,
    port: int,
    rng: random.Random,
    packets: int = 4,
) -> None:
    eph = rng.randint(32768, 60999)
    _flow(rows, t, client, server, proto, eph, port, cmac, smac, packets, 80 * packets, client, server, port)
    _flow(rows, t, server, client, proto, port, eph, smac, cmac, packets, 900 * packets, client, server, port)


def _random_mac(rng: random.Random) -> str:
    octets = [rng.randrange(256) for _ in range(6)]
    octets[0] = (octets[0] & 0xFC) | 0x02  # locally administered unicast
    return ":".join(f"{o:02x}" for o in octets)


def day(n: int, intervals: int = INTERVALS) -> list[dict]:
    """Flow rows of day ``n``: the same normal traffic, with everything that churns changed."""
    rng = random.Random(1000 + n)
    start = DAY0 + pd.Timedelta(days=n)
    # DHCP: each client gets another lease every day; IPv6: new temporary address; phones: new MAC
    pool = rng.sample(range(100, 200), N_CLIENTS)
    clients = [(f"10.2.0.{pool[i]}", _random_mac(rng)) for i in range(N_CLIENTS)]
    v6 = [
        (f"2001:db8:1::{rng.randrange(1, 1 << 16):x}:{rng.randrange(1, 1 << 16):x}", _random_mac(rng))
        for _ in range(N_V6)
    ]
    rows: list[dict] = []
    for i in range(intervals):
        t = start + pd.Timedelta(seconds=INTERVAL_S * i)
        for addr, mac in clients:
            for server, proto, port in SERVICES:
                _conversation(rows, t, addr, mac, server, SERVER_MAC[server], proto, port, rng)
        for addr, mac in v6:
            _conversation(rows, t, addr, mac, V6_SERVER, SERVER_MAC["10.1.0.10"], 6, 443, rng)
        # the mail server relays out through the gateway: the internet collapses nowhere, it is one host
        _conversation(rows, t, "10.1.0.25", SERVER_MAC["10.1.0.25"], "192.0.2.25", GATEWAY_MAC, 6, 25, rng)
        # an old telnet management session that was there during learning (deny rule test)
        _conversation(
            rows, t, "10.1.0.53", SERVER_MAC["10.1.0.53"], "10.1.0.25", SERVER_MAC["10.1.0.25"], 6, 23, rng
        )
        # ARP from the servers to broadcast: non-IP, link table only
        for mac in SERVER_MAC.values():
            _flow(rows, t, "", "", 0, 0, 0, mac, "ff:ff:ff:ff:ff:ff", 2, 120, ethertype=0x0806)
    return rows


def scan(n: int, interval: int = 0) -> list[dict]:
    """A one-packet probe from the internet: must never become "normal" through learning."""
    rows: list[dict] = []
    t = DAY0 + pd.Timedelta(days=n) + pd.Timedelta(seconds=INTERVAL_S * interval)
    _flow(rows, t, "198.51.100.7", "10.1.0.10", 6, 51515, 22, GATEWAY_MAC, SERVER_MAC["10.1.0.10"], 1, 60)
    return rows


def anomaly(kind: str, n: int, interval: int = 1) -> list[dict]:
    """Rows of one injected abnormal event on day ``n``."""
    rng = random.Random(kind)
    t = DAY0 + pd.Timedelta(days=n) + pd.Timedelta(seconds=INTERVAL_S * interval)
    rows: list[dict] = []
    if kind == "new_host":  # a static address nobody used before, talking to a known service
        _conversation(
            rows, t, "10.1.0.77", "00:16:3e:00:00:4d", "10.1.0.10", SERVER_MAC["10.1.0.10"], 6, 443, rng
        )
    elif kind == "new_service":  # a known server answers on a new port
        _conversation(
            rows, t, "10.2.0.150", _random_mac(rng), "10.1.0.25", SERVER_MAC["10.1.0.25"], 6, 8080, rng
        )
    elif kind == "new_pair":  # two known hosts that never talked
        _conversation(
            rows, t, "10.1.0.10", SERVER_MAC["10.1.0.10"], "10.1.0.53", SERVER_MAC["10.1.0.53"], 17, 53, rng
        )
    elif kind == "telnet":  # a deny-rule hit: a DHCP client opens telnet to the mail server
        _conversation(
            rows, t, "10.2.0.160", _random_mac(rng), "10.1.0.25", SERVER_MAC["10.1.0.25"], 6, 23, rng
        )
    elif kind == "lldp":  # a non-IP ethertype from a new switch
        _flow(rows, t, "", "", 0, 0, 0, "00:1b:21:aa:bb:cc", "01:80:c2:00:00:0e", 1, 200, ethertype=0x88CC)
    else:
        raise ValueError(kind)
    return rows


def tables_of(flows: Iterable[dict], config: Config) -> dict[str, pd.DataFrame]:
    """Aggregate flow rows into the config's count tables (IP tables skip non-IP rows, as collect does)."""
    df = pd.DataFrame(list(flows))
    out = {}
    for name, tc in config.tables.items():
        keys = list(tc.keys)
        part = df if name == "link" else df[df["ethertype"].isin([0x0800, 0x86DD])]
        g = (
            part.groupby([INTERVAL, *keys], sort=True)
            .agg(
                packets=("packets", "sum"),
                bytes=("bytes", "sum"),
                first_seen=("first_seen", "min"),
                last_seen=("last_seen", "max"),
            )
            .reset_index()
        )
        out[name] = g
    return out


def write(config: Config, flows: Iterable[dict], source: str) -> None:
    """Put flow rows into the store the way collect does (one source id per call)."""
    store = Store(config.store, SENSOR)
    for name, df in tables_of(flows, config).items():
        tc = config.tables[name]
        store.ensure_table(name, tc.keys, config.interval)
        schema = table_schema(tc.keys)
        t = pa.Table.from_pandas(df[schema.names], preserve_index=False).cast(schema)
        store.write_interval_rows(name, tc.keys, t, source)
