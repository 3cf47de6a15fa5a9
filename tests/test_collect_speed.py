"""The pieces collect's speed work added: address text made in one compiled pass, interval file names
without datetime, integer columns without pandas, interval files encoded in memory on two threads.
Each is checked against the slower reference it replaced."""

from __future__ import annotations

import socket
from datetime import timedelta

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import given, settings
from hypothesis import strategies as st

from flowdiff.aggregate import _address_arrow, _arrow
from flowdiff.netmap import address_text
from flowdiff.schema import METRICS, table_schema
from flowdiff.store import (
    _EPOCH,
    _encode_all,
    _file_name_us,
    _write_parquet,
    int64_values,
    interval_file_name,
)

_GROUP = st.one_of(st.just(0), st.just(1), st.just(0xFFFF), st.integers(0, 0xFFFF))


def _v6(groups: list[int]) -> tuple[int, int]:
    hi = lo = 0
    for g in groups[:4]:
        hi = (hi << 16) | g
    for g in groups[4:]:
        lo = (lo << 16) | g
    return hi, lo


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(_GROUP, min_size=8, max_size=8), min_size=1, max_size=40))
def test_ipv6_text_is_inet_ntop(addresses):
    """Runs of zero groups of every length and place, and the IPv4-compatible / mapped forms."""
    rows = [_v6(g) for g in addresses]
    hi = np.array([h for h, _ in rows], dtype=np.uint64)
    lo = np.array([w for _, w in rows], dtype=np.uint64)
    ver = np.full(len(rows), 6, dtype=np.uint8)
    want = [socket.inet_ntop(socket.AF_INET6, int.to_bytes((h << 64) | w, 16, "big")) for h, w in rows]
    assert _address_arrow(ver, hi, lo).to_pylist() == want


def test_special_ipv6_forms_and_mixed_versions():
    cases = [
        [0] * 8,
        [0] * 7 + [1],
        [0] * 6 + [0x0A00, 1],  # ::10.0.0.1
        [0] * 5 + [0xFFFF, 0xC000, 0x0201],  # ::ffff:192.0.2.1
        [0] * 5 + [0xFFFF, 0, 0],
        [0x2001, 0xDB8, 0, 0, 1, 0, 0, 1],  # the first of two equal runs
        [0x2001, 0xDB8, 0, 1, 0, 0, 0, 1],  # the longer run, not the first
        [1, 0, 1, 0, 1, 0, 1, 0],  # single zero groups stay
        [0xFE80, 0, 0, 0, 0, 0, 0, 0],
    ]
    rows = [_v6(g) for g in cases]
    ver = np.array([6] * len(rows) + [4, 4, 0], dtype=np.uint8)
    hi = np.array([h for h, _ in rows] + [0, 0, 0], dtype=np.uint64)
    lo = np.array([w for _, w in rows] + [0x0A000001, 0xFFFFFFFF, 5], dtype=np.uint64)
    got = _address_arrow(ver, hi, lo).to_pylist()
    assert got == list(address_text(ver, hi, lo))
    assert got[-3:] == ["10.0.0.1", "255.255.255.255", ""]
    assert got[2:4] == ["::10.0.0.1", "::ffff:192.0.2.1"]


def test_file_names_without_datetime():
    rng = np.random.default_rng(3)
    starts = [0, 1_767_225_600_000_000, -86_400_000_000, 4_102_444_800_000_000]
    starts += [int(x) * 1_000_000 for x in rng.integers(-(10**9), 4 * 10**9, 2000)]
    for us in starts:
        assert _file_name_us(us) == interval_file_name(_EPOCH + timedelta(microseconds=us))


def test_int64_values_of_chunked_sliced_and_timestamp_columns():
    ts = pa.chunked_array([[1, 2, 3], [4, 5]], type=pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    assert int64_values(ts).tolist() == [1, 2, 3, 4, 5]
    sliced = pa.array(np.arange(10, dtype=np.uint16)).slice(3, 4)
    assert int64_values(sliced).tolist() == [3, 4, 5, 6]


def test_arrow_columns_keep_values_and_types():
    v = np.array([0, 1, 255], dtype=np.uint64)
    for typ in (pa.uint8(), pa.uint16(), pa.uint64(), pa.int64(), METRICS["first_seen"]):
        col = _arrow(v, typ)
        assert col.type == typ and col.cast(pa.int64()).to_pylist() == [0, 1, 255]


def test_encoded_files_read_back_as_written(tmp_path):
    """The in-memory encoding, on two threads, makes the file _write_parquet writes (same rows,
    schema and sources metadata)."""
    keys = ("src", "proto")
    schema = table_schema(keys)
    tables = []
    for k in range(5):
        n = 50 + k
        cols = [
            _arrow(np.full(n, 1_700_000_000_000_000 + k * 60_000_000), schema.field(0).type),
            pa.array([f"10.0.0.{i}" for i in range(n)], type=pa.string()),
            _arrow(np.full(n, 6), pa.uint8()),
            _arrow(np.arange(n), pa.uint64()),
            _arrow(np.arange(n) * 100, pa.uint64()),
            _arrow(np.full(n, 5), METRICS["first_seen"]),
            _arrow(np.full(n, 9), METRICS["last_seen"]),
        ]
        t = pa.Table.from_arrays(cols, schema=schema)
        tables.append(t.replace_schema_metadata({b"flowdiff.sources": f'["c#{k}"]'.encode()}))
    for k, (t, data) in enumerate(zip(tables, _encode_all(tables), strict=True)):
        mem = tmp_path / f"mem{k}.parquet"
        mem.write_bytes(data.to_pybytes())
        ref = tmp_path / f"ref{k}.parquet"
        _write_parquet(t, str(ref))
        got, want = pq.read_table(mem), pq.read_table(ref)
        assert got.equals(want) and got.equals(t)
        assert got.schema.metadata[b"flowdiff.sources"] == f'["c#{k}"]'.encode()
