"""Canonicalisation: DHCP pools, IPv6 temporary addresses and random MACs stop looking new."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowdiff.canon import RANDOM_MAC, canonicalise, definition, is_identity, key_hashes, random_mac_mask
from flowdiff.config import TableConfig

T0 = pd.Timestamp("2026-11-30T01:00:00Z")
NETS = {"10.2.0.0/24": "dhcp", "10.1.0.0/24": "servers", "0.0.0.0/0": "internet"}


def _frame(**cols) -> pd.DataFrame:
    n = len(next(iter(cols.values())))
    df = pd.DataFrame({"interval_start": [T0] * n, **cols})
    df["packets"] = np.arange(1, n + 1, dtype=np.uint64)
    df["bytes"] = df["packets"] * np.uint64(100)
    df["first_seen"] = [T0 + pd.Timedelta(seconds=i) for i in range(n)]
    df["last_seen"] = [T0 + pd.Timedelta(seconds=10 + i) for i in range(n)]
    for c in ("interval_start", "first_seen", "last_seen"):
        df[c] = df[c].astype("datetime64[us, UTC]")
    return df


def test_collapse_turns_a_pool_into_its_label_and_adds_up():
    tc = TableConfig("services", ("client", "server", "proto", "service_port"), collapse=("dhcp",))
    df = _frame(
        client=["10.2.0.17", "10.2.0.99", "10.1.0.5"],
        server=["10.1.0.10"] * 3,
        proto=np.array([6, 6, 6], np.uint8),
        service_port=np.array([443, 443, 443], np.uint16),
    )
    out = canonicalise(df, tc, NETS)
    assert sorted(out["client"]) == ["10.1.0.5", "dhcp"]
    pool = out[out["client"] == "dhcp"].iloc[0]
    assert int(pool["packets"]) == 3 and int(pool["bytes"]) == 300
    assert pool["first_seen"] == T0 and pool["last_seen"] == T0 + pd.Timedelta(seconds=11)
    assert out["packets"].dtype == np.uint64 and out["service_port"].dtype == np.uint16
    assert int(out["packets"].sum()) == int(df["packets"].sum())


def test_ipv6_prefix_reduces_temporary_addresses_to_their_64():
    tc = TableConfig("hosts", ("src",), ipv6_prefix=64)
    df = _frame(src=["2001:db8:1::a1b2:c3d4", "2001:db8:1:0:ffff::1", "10.1.0.5", "2001:db8:2::1"])
    out = canonicalise(df, tc, {})
    assert sorted(out["src"]) == ["10.1.0.5", "2001:db8:1::/64", "2001:db8:2::/64"]
    assert int(out.loc[out["src"] == "2001:db8:1::/64", "packets"].iloc[0]) == 3


def test_collapse_applies_before_the_ipv6_prefix():
    tc = TableConfig("hosts", ("src",), collapse=("v6pool",), ipv6_prefix=64)
    out = canonicalise(_frame(src=["2001:db8:9::1", "2001:db8:1::1"]), tc, {"2001:db8:9::/48": "v6pool"})
    assert sorted(out["src"]) == ["2001:db8:1::/64", "v6pool"]


def test_random_macs_collapse_but_group_and_global_macs_stay():
    macs = [
        "da:00:00:00:00:01",
        "02:11:22:33:44:55",
        "00:16:3e:00:00:01",
        "ff:ff:ff:ff:ff:ff",
        "33:33:00:00:00:01",
        "01:80:c2:00:00:0e",
    ]
    assert random_mac_mask(np.array(macs, dtype=object)).tolist() == [True, True, False, False, False, False]
    tc = TableConfig("link", ("ethertype", "src_mac", "dst_mac"))
    df = _frame(ethertype=np.array([0x800] * 6, np.uint16), src_mac=macs, dst_mac=["ff:ff:ff:ff:ff:ff"] * 6)
    out = canonicalise(df, tc, {})
    assert sorted(out["src_mac"]) == sorted([RANDOM_MAC, *macs[2:]])
    assert int(out.loc[out["src_mac"] == RANDOM_MAC, "packets"].iloc[0]) == 3


def test_identity_tables_come_back_unchanged():
    tc = TableConfig("t5", ("src", "dst", "proto"))
    assert is_identity(tc)
    df = _frame(
        src=["10.2.0.1", "2001:db8::1"], dst=["10.1.0.1", "10.1.0.1"], proto=np.array([6, 17], np.uint8)
    )
    pd.testing.assert_frame_equal(canonicalise(df, tc, NETS), df)


def test_definition_names_every_setting_that_changes_keys():
    a = TableConfig("hosts", ("src",), collapse=("dhcp",), ipv6_prefix=64, min_packets=5)
    assert definition(a) == {
        "keys": ["src"],
        "collapse": ["dhcp"],
        "ipv6_prefix": 64,
        "collapse_random_macs": False,
    }
    # thresholds are not part of it, MAC collapsing only matters with MAC keys
    assert definition(a) == definition(TableConfig("hosts", ("src",), collapse=("dhcp",), ipv6_prefix=64))
    assert definition(TableConfig("link", ("src_mac",)))["collapse_random_macs"] is True


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.sampled_from(["10.2.0.1", "10.2.0.2", "10.1.0.1", "2001:db8::1", "2001:db8::2", "2001:db8:1::9"]),
        min_size=1,
        max_size=40,
    )
)
def test_canonicalise_keeps_totals_and_is_idempotent(addresses):
    tc = TableConfig("hosts", ("src",), collapse=("dhcp",), ipv6_prefix=64)
    df = _frame(src=addresses).drop_duplicates("src")
    once = canonicalise(df, tc, NETS)
    twice = canonicalise(once, tc, NETS)
    assert int(once["packets"].sum()) == int(df["packets"].sum())
    assert not once.duplicated(["interval_start", "src"]).any()
    pd.testing.assert_frame_equal(
        once.sort_values("src").reset_index(drop=True), twice.sort_values("src").reset_index(drop=True)
    )


def test_fingerprints_are_distinct_for_distinct_keys():
    n = 200_000
    t = pa.table(
        {
            "a": pa.array([f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(n)]),
            "p": pa.array(np.arange(n) % 7, pa.uint16()),
        }
    )
    h1, h2 = key_hashes(t, ["a", "p"])
    assert len(np.unique(h1)) == n and len(np.unique(h2)) == n
    # column order is part of the key
    u = pa.table({"x": ["a", "b"], "y": ["b", "a"]})
    assert key_hashes(u, ["x", "y"])[0][0] != key_hashes(u, ["x", "y"])[0][1]


def test_learns_arrow_path_collapses_the_same_macs_as_the_pandas_path():
    """canonical_keys (learn, in Arrow) and canonicalise (diff, in pandas) agree MAC by MAC, odd text too."""
    from flowdiff.canon import canonical_keys

    macs = [
        "da:00:00:00:00:01",
        "0E:00:00:00:00:02",
        "02:11:22:33:44:55",
        "00:16:3e:00:00:01",
        "03:00:00:00:00:00",
        "06:00:00:00:00:0",
        "zz:00:00:00:00:00",
        "",
        "da:00:00:00:00:01",
    ]
    tc = TableConfig("stations", ("src_mac", "src"))
    table = pa.table(
        {"src_mac": macs, "src": ["192.0.2.1"] * len(macs), "packets": pa.array([1] * len(macs), pa.uint64())}
    )
    arrow = canonical_keys(table, tc, None).column("src_mac").to_pylist()
    want = [
        RANDOM_MAC if r else m
        for m, r in zip(macs, random_mac_mask(np.array(macs, dtype=object)), strict=True)
    ]
    assert arrow == want and arrow.count(RANDOM_MAC) == 4
    # learn reads text keys dictionary-encoded, as Parquet stores them: the same collapse
    encoded = table.set_column(0, "src_mac", table["src_mac"].dictionary_encode())
    assert canonical_keys(encoded, tc, None).column("src_mac").to_pylist() == want
    only_global = pa.table({"src_mac": macs[3:5], "src": ["192.0.2.1"] * 2})
    assert canonical_keys(only_global, tc, None) is only_global  # nothing to collapse: the same table


texts = st.lists(st.text(max_size=80) | st.sampled_from(["", "10.0.0.1", "2001:db8::1"]), max_size=60)


@settings(max_examples=60, deadline=None)
@given(texts, st.lists(st.integers(0, 2**63 - 1), max_size=60), st.booleans())
def test_fingerprints_are_the_same_in_numpy_and_compiled(words, numbers, encoded):
    """Small inputs hash with numpy (no numba to load: learn never needs it), large ones with the
    compiled kernels; a baseline written one way is read the other, so both give the same bits."""
    from flowdiff import canon

    n = min(len(words), len(numbers))
    text = pa.array(words[:n], pa.string())
    table = pa.table(
        {"t": text.dictionary_encode() if encoded else text, "n": pa.array(numbers[:n], pa.uint64())}
    )
    ways = []
    for vectorised in (True, False):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(canon, "_vectorised", lambda work, v=vectorised: v)
            ways.append(key_hashes(table, ["t", "n"]))
    (a1, a2), (b1, b2) = ways
    assert a1.dtype == b1.dtype == np.uint64
    assert a1.tolist() == b1.tolist() and a2.tolist() == b2.tolist()


def test_fingerprints_keep_their_bits():
    """Stored baselines hold fingerprints: a change of the hash would make every key of every existing
    baseline look new. These bits are what the compiled kernels have given since fingerprints exist."""
    table = pa.table({"src": ["10.0.0.1", ""], "proto": pa.array([6, 17], pa.uint8())})
    h1, h2 = key_hashes(table, ["src", "proto"])
    assert [f"{x:016x}" for x in h1] == ["a02063321c7b946d", "7e284244e841f4b9"]
    assert [f"{x:016x}" for x in h2] == ["62b70dbed8b4049f", "6cd5e186600f915e"]
