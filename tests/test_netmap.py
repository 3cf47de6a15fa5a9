"""Address text and longest-prefix labels, checked against the standard library (ipaddress, socket)."""

from __future__ import annotations

import ipaddress
import socket

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from flowdiff.netmap import (
    NetworkMap,
    address_text,
    is_local_mac,
    mac_text,
    network_text,
    parse_addresses,
    reduce_ipv6_text,
)

NETWORKS = {
    "0.0.0.0/0": "internet",
    "10.0.0.0/8": "corp",
    "10.1.0.0/24": "dmz",
    "10.1.0.7/32": "mailhost",
    "2001:db8::/32": "v6corp",
    "2001:db8:1::/48": "v6lab",
    "2001:db8:1::/120": "v6tiny",
    "2001:db8:1::5/128": "v6host",
}


def _ints(addrs: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ver = np.array([ipaddress.ip_address(a).version for a in addrs], dtype=np.uint8)
    n = [int(ipaddress.ip_address(a)) for a in addrs]
    hi = np.array([x >> 64 for x in n], dtype=np.uint64)
    lo = np.array([x & (2**64 - 1) for x in n], dtype=np.uint64)
    return ver, hi, lo


def _reference_label(addr: str) -> str:
    """Longest prefix by brute force over every network."""
    ip = ipaddress.ip_address(addr)
    best, label = -1, "other"
    for cidr, lab in NETWORKS.items():
        net = ipaddress.ip_network(cidr)
        if net.version == ip.version and ip in net and net.prefixlen > best:
            best, label = net.prefixlen, lab
    return label


def test_longest_prefix_ipv4_and_ipv6_mixed():
    nm = NetworkMap(NETWORKS)
    addrs = [
        "10.1.0.7",
        "10.1.0.8",
        "10.2.3.4",
        "8.8.8.8",
        "2001:db8:1::5",
        "2001:db8:1::6",
        "2001:db8:1::1:0",
        "2001:db8:2::1",
        "2001:db9::1",
        "fe80::1",
    ]
    got = nm.labels_for_ints(*_ints(addrs))
    assert list(got) == [
        "mailhost",
        "dmz",
        "corp",
        "internet",
        "v6host",
        "v6tiny",
        "v6lab",
        "v6corp",
        "other",
        "other",
    ]
    assert list(nm.labels_for_text(addrs)) == list(got)


def test_no_networks_everything_is_other():
    nm = NetworkMap({})
    assert list(nm.labels_for_text(["10.0.0.1", "::1"])) == ["other", "other"]
    assert nm.labels == ("other",)


def test_text_that_is_not_an_address_is_other():
    nm = NetworkMap(NETWORKS)
    values = ["dmz", "10.1.0.0/24", "", None, "01.2.3.4", "1.2.3", "256.1.1.1", "2001:db8::/64", "10.1.0.9"]
    assert list(nm.labels_for_text(values)) == ["other"] * 8 + ["dmz"]
    assert list(nm.contains("dmz", values)) == [False] * 8 + [True]
    assert list(nm.contains_any(["corp", "dmz"], ["10.9.9.9", "10.1.0.1", "1.1.1.1"])) == [True, True, False]


ipv4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
# bias IPv6 towards the configured networks so that every prefix table gets hits
ipv6 = st.one_of(
    st.integers(0, 2**128 - 1),
    st.integers(0, 2**16 - 1).map(lambda n: int(ipaddress.IPv6Address("2001:db8:1::")) + n),
    st.integers(0, 2**80 - 1).map(lambda n: int(ipaddress.IPv6Address("2001:db8::")) + n),
).map(lambda n: str(ipaddress.IPv6Address(n)))
near_v4 = st.integers(0, 2**16 - 1).map(lambda n: str(ipaddress.IPv4Address(0x0A010000 + n)))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(ipv4, ipv6, near_v4), min_size=1, max_size=50))
def test_labels_match_bruteforce_reference(addrs):
    nm = NetworkMap(NETWORKS)
    assert list(nm.labels_for_ints(*_ints(addrs))) == [_reference_label(a) for a in addrs]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(ipv4, ipv6), min_size=1, max_size=50), st.integers(0, 128))
def test_text_round_trip_matches_socket(addrs, prefix):
    ver, hi, lo = _ints(addrs)
    text = address_text(ver, hi, lo)
    expected = [
        socket.inet_ntop(socket.AF_INET6 if v == 6 else socket.AF_INET, ipaddress.ip_address(a).packed)
        for a, v in zip(addrs, ver, strict=True)
    ]
    assert list(text) == expected
    pv, phi, plo = parse_addresses(text)
    assert (pv == ver).all() and (phi == hi).all() and (plo == lo).all()
    nets = network_text(ver, hi, lo, prefix)
    for a, v, got in zip(addrs, ver, nets, strict=True):
        p = min(prefix, 32) if v == 4 else prefix
        net = ipaddress.ip_network(f"{a}/{p}", strict=False)
        addr_txt = socket.inet_ntop(socket.AF_INET6 if v == 6 else socket.AF_INET, net.network_address.packed)
        assert got == f"{addr_txt}/{p}"


def test_text_forms():
    ver, hi, lo = _ints(["10.1.2.3", "2001:db8:1:0:abcd::1", "::ffff:1.2.3.4", "::"])
    assert list(address_text(ver, hi, lo)) == ["10.1.2.3", "2001:db8:1:0:abcd::1", "::ffff:1.2.3.4", "::"]
    assert list(network_text(ver, hi, lo, 64)) == ["10.1.2.3/32", "2001:db8:1::/64", "::/64", "::/64"]
    assert list(network_text(ver, hi, lo, 24)) == ["10.1.2.0/24", "2001:d00::/24", "::/24", "::/24"]
    zero = np.zeros(2, dtype=np.uint64)
    assert list(address_text(np.zeros(2, np.uint8), zero, zero)) == ["", ""]
    assert list(network_text(np.zeros(2, np.uint8), zero, zero, 24)) == ["", ""]
    assert len(address_text(np.zeros(0, np.uint8), zero[:0], zero[:0])) == 0


def test_mac_text_and_local_bit():
    macs = np.array([0xAABBCCDDEEFF, 0, 0x0200000000FF, 0x001122334455], dtype=np.uint64)
    text = mac_text(macs)
    assert list(text) == ["aa:bb:cc:dd:ee:ff", "00:00:00:00:00:00", "02:00:00:00:00:ff", "00:11:22:33:44:55"]
    assert list(is_local_mac(text)) == [True, False, True, False]
    assert list(is_local_mac(["random", None])) == [False, False]
    assert len(mac_text(np.zeros(0, np.uint64))) == 0


def test_reduce_ipv6_text_leaves_ipv4_and_labels():
    got = reduce_ipv6_text(["2001:db8:1:0:1234:5678:9abc:def0", "10.1.2.3", "dmz"], 64)
    assert list(got) == ["2001:db8:1::/64", "10.1.2.3", "dmz"]
