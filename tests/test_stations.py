"""The stations table (issue 14 item 2): which MAC carries which address, learned like arpwatch."""

from __future__ import annotations

import pandas as pd
import pytest
from click.testing import CliRunner
from fixtures_enclave import copy_site, learned_enclave
from test_decode import one

from flowdiff.cli import main as flowdiff_main
from flowdiff.collect import collect
from flowdiff.config import parse_config
from flowdiff.demo.frames import (
    BROADCAST,
    ETH_ARP,
    ETH_IPV6,
    Frame,
    arp,
    arp_frame,
    ethernet,
    ipv6,
    tcp_frame,
    udp_frame,
    write_pcap,
)
from flowdiff.demo.scenario import MAILHOST, ROUTER, WORKSTATION_MACS
from flowdiff.diff import diff
from flowdiff.errors import ConfigError
from flowdiff.incidents import CHANGED_MAC, NEW_ADDRESS, NEW_STATION
from flowdiff.schema import STATIONS, STATIONS_KEYS

NETWORKS = {"10.20.0.0/16": "own", "2001:db8::/32": "own6", "0.0.0.0/0": "internet", "::/0": "internet"}
MAC_A, MAC_B, MAC_C, ROUTER_MAC = (
    "02:00:00:00:00:0a",
    "02:00:00:00:00:0b",
    "02:00:00:00:00:0c",
    "02:00:00:00:00:01",
)


@pytest.fixture(scope="module")
def enclave(tmp_path_factory):
    return learned_enclave(tmp_path_factory.mktemp("enclave"))


@pytest.fixture
def site(enclave, tmp_path):
    return copy_site(enclave, tmp_path / "site")


def _nd(mac: str, src: str, icmp_type: int = 135, vlan: int | None = None) -> bytes:
    """A neighbour solicitation (135) or advertisement (136) from ``src`` (checksum left 0: not checked)."""
    body = bytes([icmp_type, 0, 0, 0]) + b"\0" * 4 + bytes(16)
    return ethernet(mac, "33:33:ff:00:00:01", ETH_IPV6, ipv6(src, "ff02::1:ff00:1", 58, body), vlan=vlan)


# ------------------------------------------------------------------ decode and aggregate


def test_arp_sender_address_is_decoded_like_the_reference():
    """The fast decoder and the dpkt reference agree (``one`` checks every field) on the ARP sender."""
    got = one(1, arp_frame(MAC_A, "10.20.0.5", "10.20.0.1"))
    assert got["status"] == 1 and got["ethertype"] == ETH_ARP and got["ip_version"] == 0
    assert got["src_lo"] == 0x0A140005 and got["dst_lo"] == 0
    tagged = one(
        1, ethernet(MAC_B, BROADCAST, ETH_ARP, arp(2, MAC_B, "10.20.0.6", MAC_A, "10.20.0.5"), vlan=7)
    )
    assert tagged["src_lo"] == 0x0A140006 and tagged["vlan"] == 7


def _table(tmp_path, frames: list[bytes], networks=NETWORKS) -> pd.DataFrame:
    """Collect a real pcap of ``frames`` and read the stations table back from the Parquet store."""
    path = write_pcap(tmp_path / "s.pcap", [Frame(i * 1_000_000, f) for i, f in enumerate(frames)])
    cfg = parse_config({"networks": networks, "tables": {"hosts": {"keys": ["src"]}}}, base=tmp_path)
    res = collect([path], cfg, all_files=True)
    assert not res.errors
    return pd.read_parquet(tmp_path / "store" / STATIONS)


def test_stations_come_from_arp_nd_and_own_networks_and_the_internet_is_one_row(tmp_path):
    frames = [
        arp_frame(MAC_A, "10.20.0.5", "10.20.0.1"),  # ARP sender
        ethernet(
            MAC_B, BROADCAST, ETH_ARP, arp(1, MAC_B, "10.20.0.6", "00:00:00:00:00:00", "10.20.0.1"), vlan=9
        ),
        arp_frame(MAC_C, "0.0.0.0", "10.20.0.7"),  # ARP probe: no sender address yet
        udp_frame(MAC_A, ROUTER_MAC, "10.20.0.5", "9.9.9.9", 40000, 53),  # own network
        udp_frame(ROUTER_MAC, MAC_A, "9.9.9.9", "10.20.0.5", 53, 40000),  # the internet via the router
        tcp_frame(ROUTER_MAC, MAC_A, "198.51.100.7", "10.20.0.5", 443, 40001, 0x12),
        _nd(MAC_C, "fe80::c"),  # neighbour discovery from a link-local address
        _nd(MAC_C, "::"),  # duplicate address detection: no address
        udp_frame(MAC_C, ROUTER_MAC, "2001:db8::c", "2001:4860::8888", 40002, 53),
    ]
    got = _table(tmp_path, frames)
    pairs = set(zip(got["src_mac"], got["src"], strict=True))
    assert pairs == {
        (MAC_A, "10.20.0.5"),
        (MAC_B, "10.20.0.6"),
        (ROUTER_MAC, "internet"),
        (MAC_C, "fe80::c"),
        (MAC_C, "2001:db8::c"),
    }
    by = got.groupby(["src_mac", "src"]).packets.sum()
    assert by[(MAC_A, "10.20.0.5")] == 2 and by[(ROUTER_MAC, "internet")] == 2


def test_without_own_networks_only_arp_and_nd_name_addresses(tmp_path):
    got = _table(
        tmp_path,
        [arp_frame(MAC_A, "10.20.0.5", "10.20.0.1"), udp_frame(MAC_A, MAC_B, "10.20.0.5", "10.20.0.9", 1, 2)],
        {},
    )
    assert set(zip(got["src_mac"], got["src"], strict=True)) == {(MAC_A, "10.20.0.5"), (MAC_A, "internet")}


# ------------------------------------------------------------------ configuration


def test_stations_is_always_configured_and_collapses_like_the_other_tables():
    cfg = parse_config(
        {
            "networks": {"10.20.100.0/24": "dhcp", "0.0.0.0/0": "internet"},
            "tables": {
                "services": {
                    "keys": ["client", "server", "proto", "service_port"],
                    "collapse": ["dhcp"],
                    "ipv6_prefix": 64,
                }
            },
        }
    )
    st = cfg.tables[STATIONS]
    assert st.keys == STATIONS_KEYS and st.collapse == ("dhcp",) and st.ipv6_prefix == 64
    own = parse_config({"tables": {"stations": {"keys": ["src_mac", "src"], "min_intervals": 3}}})
    assert own.tables[STATIONS].min_intervals == 3 and set(own.tables) == {STATIONS}
    with pytest.raises(ConfigError, match="keyed by src_mac, src"):
        parse_config({"tables": {"stations": {"keys": ["src"]}}})


def test_a_stations_table_with_other_keys_is_refused_in_one_line(tmp_path):
    (tmp_path / "f.toml").write_text('[tables.stations]\nkeys = ["src"]\n')
    out = CliRunner().invoke(flowdiff_main, ["tables", "--config", str(tmp_path / "f.toml")])
    assert out.exit_code == 2
    assert out.output.strip().count("\n") == 0 and "stations" in out.output and "src_mac, src" in out.output


# ------------------------------------------------------------------ learned and diffed


def test_a_replayed_normal_day_gives_no_new_station_rows(site):
    """The demo's generated normal days: DHCP leases and RFC 4941 addresses change daily, the internet
    comes through the router: the stations table must not churn."""
    res = diff(site.config, since=site.scenario.last_day)
    assert res.intervals > 0
    assert len(res.rows[STATIONS]) == 0
    learned = pd.read_parquet(site.root / "store" / STATIONS)
    assert "internet" in set(learned["src"]) and len(learned) > 0


def test_a_known_address_with_another_mac_is_a_changed_ethernet_address_and_nothing_else(site):
    """ARP spoofing: a workstation answers for the mail server's address. Its frames are ordinary for the
    link table (it answers the router every day), so the one row is the stations row."""
    spoofer = WORKSTATION_MACS[2]
    frames = [Frame(site.at(9, 1), arp_frame(spoofer, MAILHOST.ip, ROUTER.ip, reply_to=ROUTER.mac))]
    frames.append(Frame(site.at(9, 2), arp_frame(spoofer, MAILHOST.ip, ROUTER.ip, reply_to=ROUTER.mac)))
    site.inject(frames)
    res = diff(site.config, since=site.scenario.last_day)
    assert res.counts() == {STATIONS: 1}
    row = res.rows[STATIONS].iloc[0]
    assert (row["src_mac"], row["src"], row["reason"]) == (spoofer, MAILHOST.ip, CHANGED_MAC)
    (inc,) = res.incidents
    assert inc.title == f"{CHANGED_MAC} {MAILHOST.ip} {spoofer}" and inc.kind == "station"
    # remembered with its words: the next diff does not report it again
    site.inject(
        [Frame(site.at(13, 1), arp_frame(spoofer, MAILHOST.ip, ROUTER.ip, reply_to=ROUTER.mac))], "more"
    )
    assert diff(site.config, since=site.scenario.last_day).total == 0


def test_new_address_for_a_known_mac_and_new_station(site):
    ws = WORKSTATION_MACS[0]
    site.inject(
        [
            Frame(site.at(10), arp_frame(ws, "10.20.1.77", MAILHOST.ip)),
            Frame(site.at(10, 1), arp_frame("b8:27:eb:00:00:01", "10.20.1.78", MAILHOST.ip)),
        ]
    )
    res = diff(site.config, since=site.scenario.last_day)
    st = res.rows[STATIONS].set_index("src")
    assert st.loc["10.20.1.77", "reason"] == NEW_ADDRESS and st.loc["10.20.1.77", "src_mac"] == ws
    assert st.loc["10.20.1.78", "reason"] == NEW_STATION
    titles = {i.title.split(",")[0] for i in res.incidents}
    assert f"{NEW_ADDRESS} 10.20.1.77 {ws}" in titles
    assert f"{NEW_STATION} 10.20.1.78 b8:27:eb:00:00:01" in titles
