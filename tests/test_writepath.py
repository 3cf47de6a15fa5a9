"""The back half of collect: how often flows drain, and the tables stage 2 builds (against pandas)."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowdiff.aggregate import Aggregator
from flowdiff.netflow import empty_records
from flowdiff.schema import DEFAULT_TABLES

fc = importlib.import_module("flowdiff.collect")  # the module (flowdiff.collect is also the function)


def _dense_flows(n: int, t0: int, seconds: int) -> dict[str, np.ndarray]:
    """n distinct TCP flow records spread over ``seconds`` from ``t0``, in time order."""
    out = empty_records(n)
    i = np.arange(n)
    out["ip_version"][:] = 4
    out["src_lo"][:] = 0x0A000000 + i % 97
    out["dst_lo"][:] = 0xC0000200 + i % 13
    out["proto"][:] = 6
    out["sport"][:] = 1024 + i % 60000
    out["dport"][:] = 443
    out["tcp_flags"][:] = 0x18
    out["ts_ns"][:] = out["ts_end_ns"][:] = (t0 + i * seconds // n) * 10**9
    out["packets"][:], out["bytes"][:] = 1, 100
    return out


def test_dense_flows_drain_when_the_rows_held_doubled_not_on_every_closed_interval(monkeypatch):
    """A lateness window denser than _FLOW_DRAIN_ROWS: each drain reads every row kept open, so the next
    one waits until the rows held are half as many again as it kept (work per record stays constant), yet every
    interval is handed over and the counts are those of one pass."""
    monkeypatch.setattr(fc, "_FLOW_DRAIN_ROWS", 500)
    tables = {k: v for k, v in DEFAULT_TABLES.items()}
    agg = Aggregator(tables, interval=60)
    keep = fc._flow_keep(60)
    records = _dense_flows(60_000, 1_700_000_000, 3600)
    drains, parts = 0, []
    for lo in range(0, 60_000, 1000):  # 60 chunks, one a minute
        agg.add_flows({k: v[lo : lo + 1000] for k, v in records.items()})
        if fc._drain_due(agg, keep, True):
            held = agg.fine_rows
            d = agg.drain_deferred(keep)
            if d is not None:
                drains += 1
                parts.append(d.tables())
                assert held >= 500 and agg.rows_kept < held
    parts.append(agg.finish())
    # keep = 11 intervals of 1,000 rows: a drain every closed interval would be about 49
    assert 2 <= drains <= 12
    hosts = [p["hosts"] for p in parts if p["hosts"].num_rows]
    total = sum(int(np.asarray(t["packets"]).sum()) for t in hosts)
    assert total == 60_000
    one = Aggregator(tables, interval=60)
    one.add_flows(records)
    want = one.finish()
    import pyarrow as pa

    got = pa.concat_tables([p["services"] for p in parts if p["services"].num_rows])
    key = [(c, "ascending") for c in ("interval_start", "client", "server", "proto", "service_port")]
    assert got.sort_by(key).equals(want["services"].sort_by(key))


def _random_packets(n: int, seed: int) -> dict[str, np.ndarray]:
    from flowdiff.schema import PACKET_FIELDS

    rng = np.random.default_rng(seed)
    cols = {k: np.zeros(n, dtype=t) for k, t in PACKET_FIELDS.items()}
    cols["ts_ns"][:] = np.sort(1_700_000_000 * 10**9 + rng.integers(0, 1800 * 10**9, n))
    cols["wirelen"][:] = rng.integers(60, 1500, n)
    cols["ethertype"][:] = 0x0800
    cols["src_mac"][:] = rng.integers(1, 40, n)
    cols["dst_mac"][:] = rng.integers(1, 40, n)
    v6 = rng.random(n) < 0.3
    cols["ip_version"][:] = np.where(v6, 6, 4)
    cols["src_hi"][:] = np.where(v6, 0x20010DB800000000, 0)
    cols["dst_hi"][:] = np.where(v6, 0x20010DB800000000, 0)
    cols["src_lo"][:] = 0x0A000000 + rng.integers(0, 300, n)
    cols["dst_lo"][:] = 0x0A000000 + rng.integers(0, 3000, n)
    cols["proto"][:] = rng.choice([6, 17, 1], n)
    cols["sport"][:] = rng.integers(0, 2000, n)
    cols["dport"][:] = rng.choice([22, 53, 80, 443, 5000], n)
    cols["tcp_flags"][:] = rng.choice([0x02, 0x10, 0x12, 0x18], n)
    return cols


def test_tables_by_direct_addressing_equal_the_sorted_runs(monkeypatch):
    """Small key spaces are grouped in one pass by direct addressing: the same rows, in the same order,
    as sorting and reducing runs (the path of large key spaces), on every default table and a 5-tuple."""
    import flowdiff.aggregate as fa

    tables = {**DEFAULT_TABLES, "t5": ("src", "dst", "proto", "sport", "dport")}
    packets = _random_packets(20_000, 3)
    fast = fa.aggregate(packets, tables, interval=300, networks={"10.0.0.0/8": "corp"})
    monkeypatch.setattr(fa, "_group_reduce", lambda *a: None)
    slow = fa.aggregate(packets, tables, interval=300, networks={"10.0.0.0/8": "corp"})
    for name in tables:
        assert fast[name].num_rows > 0
        assert fast[name].equals(slow[name]), name


def test_address_order_of_mixed_ipv4_ipv6_and_none_is_the_order_of_the_text():
    """Distinct addresses are ordered without sorting all their text: IPv4 by octet ranks, IPv6 by
    text, merged; the empty text (no address) first, or last as stations' ``internet``."""
    import pyarrow.compute as pc

    from flowdiff.aggregate import (
        _address_order,
        _address_order_text,
        _fill_empty,
        _station_order,
        _value_order,
    )
    from flowdiff.netmap import address_array, mac_array

    rng = np.random.default_rng(11)
    n = 3000
    ver = rng.choice([4, 6, 0], n, p=[0.6, 0.35, 0.05]).astype(np.uint64)
    hi = np.where(ver == 6, rng.choice([0, 0x20010DB800000000, 0xFE80000000000000, 1], n), 0).astype(
        np.uint64
    )
    lo = rng.integers(0, 1 << 32, n, dtype=np.uint64)
    lo = np.where(rng.random(n) < 0.3, lo & np.uint64(0xFF), lo)  # short texts, "::1"-like IPv6
    lo = np.where(ver == 0, 0, lo).astype(np.uint64)
    hi = np.where(ver == 0, 0, hi).astype(np.uint64)
    uniq = np.unique(np.stack([ver, hi, lo], axis=1), axis=0)
    text = address_array(uniq[:, 0], uniq[:, 1], uniq[:, 2])
    want = text.take(pc.sort_indices(text)).to_pylist()
    assert text.take(_address_order(uniq)).to_pylist() == want
    stations = _fill_empty(text, b"internet")
    want = stations.take(pc.sort_indices(stations)).to_pylist()
    assert stations.take(_station_order(uniq)).to_pylist() == want and want[-1] == "internet"
    # the order that makes the text on the way gives that text, IPv6 with or without IPv4 and others
    for part in (uniq, uniq[uniq[:, 0] != 4], uniq[uniq[:, 0] == 6], uniq[uniq[:, 0] == 4]):
        for last in (False, True):
            order, made = _address_order_text(part, last)
            assert order.tolist() == _address_order(part, last).tolist()
            expect = address_array(part[order, 0], part[order, 1], part[order, 2]).to_pylist()
            assert made is None if (part[:, 0] != 6).all() else made.to_pylist() == expect
    macs = np.unique(rng.integers(0, 1 << 48, 2000, dtype=np.uint64))[::-1].copy()
    m = np.stack([macs, macs, macs], axis=1)
    mt = mac_array(macs)
    assert mt.take(_value_order(m)).to_pylist() == mt.take(pc.sort_indices(mt)).to_pylist()


@pytest.mark.parametrize("intervals", [1, 40, 3000])
def test_stations_groups_sort_by_interval_mac_and_address_in_one_word_or_by_lexsort(intervals):
    """Stations groups are ordered by interval, MAC value (its text is fixed-width hex) and address
    rank: packed into one word when they fit in it (one interval, or 40 with a few addresses), else by
    a lexsort (3,000 intervals); the groups are distinct, so the order is the same either way."""
    from flowdiff.aggregate import _station_sort

    rng = np.random.default_rng(intervals)
    n, addresses = 5000, 37
    inum = rng.integers(1000, 1000 + intervals, n).astype(np.int64)
    mac = rng.integers(0, 1 << 48, n // 10, dtype=np.uint64)[rng.integers(0, n // 10, n)]
    rank = rng.integers(0, addresses, n).astype(np.uint64)
    keep = np.unique(np.stack([inum.view(np.uint64), mac, rank], axis=1), axis=0, return_index=True)[1]
    inum, mac, rank = inum[keep], mac[keep], rank[keep]
    order = _station_sort(inum, mac, rank, addresses)
    assert order.tolist() == np.lexsort((rank, mac, inum)).tolist()


def test_stored_files_are_delta_encoded_where_it_pays_and_read_the_same_everywhere(tmp_path):
    """first_seen, last_seen, bytes and packets are DELTA_BINARY_PACKED, all but packets left un-
    compressed: pandas (pyarrow), DuckDB and polars read back exactly the rows written, values at the
    extremes of their types included."""
    import duckdb
    import pandas as pd
    import polars as pl
    import pyarrow as pa
    import pyarrow.parquet as pq

    from flowdiff.schema import table_schema
    from flowdiff.store import Store, _write_options

    keys = ("src", "dst", "proto", "sport", "dport")
    n = 5000
    rng = np.random.default_rng(5)
    start = 1_700_000_040 * 10**6
    first = start + np.sort(rng.integers(0, 60 * 10**6, n))
    cols = {
        "interval_start": np.full(n, start),
        "src": [f"10.0.{i // 256}.{i % 256}" for i in range(n)],
        "dst": ["192.0.2.1"] * n,
        "proto": np.full(n, 6),
        "sport": rng.integers(0, 65536, n),
        "dport": np.full(n, 443),
        "packets": np.r_[rng.integers(1, 10, n - 2).astype(np.uint64), np.array([2**64 - 1, 1], np.uint64)],
        "bytes": np.r_[rng.integers(40, 10**6, n - 2).astype(np.uint64), np.array([0, 2**64 - 1], np.uint64)],
        "first_seen": first,
        "last_seen": first + rng.integers(0, 10**6, n),
    }
    schema = table_schema(keys)
    rows = pa.Table.from_arrays([pa.array(cols[f.name], type=f.type) for f in schema], schema=schema).sort_by(
        [("src", "ascending")]
    )
    store = Store(tmp_path / "store", "s")
    store.ensure_table("t5", keys, 60)
    assert store.write_interval_rows("t5", keys, rows, "cap#0") == n
    (path,) = store.files("t5")
    meta = pq.ParquetFile(path).metadata.row_group(0)
    enc = {meta.column(i).path_in_schema: meta.column(i).encodings for i in range(meta.num_columns)}
    for col in ("first_seen", "last_seen", "bytes", "packets"):
        assert "DELTA_BINARY_PACKED" in enc[col], enc[col]
    codec = {meta.column(i).path_in_schema: meta.column(i).compression for i in range(meta.num_columns)}
    assert {c for c, z in codec.items() if z != "ZSTD"} == {"first_seen", "last_seen", "bytes"}, codec
    log_options = _write_options(table_schema(("host", "program", "template")))["compression"]
    assert set(log_options.values()) == {"zstd"}  # whole seconds: zstd pays on log tables' times
    want = rows.to_pandas(coerce_temporal_nanoseconds=False)
    got = store.read("t5").drop(columns=["sensor"])
    pd.testing.assert_frame_equal(got, want)
    by_duck = duckdb.sql(f"SELECT bytes, epoch_us(first_seen), packets FROM '{path}' ORDER BY src").fetchall()
    assert [b for b, _, _ in by_duck] == want["bytes"].tolist()
    assert [f for _, f, _ in by_duck] == (want["first_seen"].astype("int64")).tolist()
    assert [p for _, _, p in by_duck] == want["packets"].tolist()
    by_polars = pl.read_parquet(path).sort("src")
    assert by_polars["bytes"].to_list() == want["bytes"].tolist()
    assert by_polars["packets"].to_list() == want["packets"].tolist()
    assert by_polars["last_seen"].dt.epoch("us").to_list() == want["last_seen"].astype("int64").tolist()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet="0123456789abcdef:.zé€", max_size=39), max_size=60), st.integers(0, 3))
def test_text_sorted_by_numpy_is_the_byte_order_of_the_strings(words, cut):
    """Small inputs are sorted as fixed-width bytes (no pyarrow.compute import), and by the compiled
    kernel once numba is loaded (interpreted as well): prefixes first, equal strings in input order,
    whatever the lengths; a sliced array takes Arrow's sort."""
    import pyarrow as pa

    from flowdiff.aggregate import _fixed_width_sorted, _string_buffers, _text_order, _text_sorted

    text = pa.array(words, type=pa.string())
    want = sorted(range(len(words)), key=lambda i: words[i].encode())
    assert _fixed_width_sorted(text).tolist() == want
    assert _text_sorted(text).tolist() == want
    assert _text_order(*_string_buffers(text)).tolist() == want
    with np.errstate(over="ignore"):
        assert _text_order.py_func(*_string_buffers(text)).tolist() == want
    tail = text.slice(min(cut, len(words)))
    assert _text_sorted(tail).tolist() == sorted(range(len(tail)), key=lambda i: tail[i].as_py().encode())
