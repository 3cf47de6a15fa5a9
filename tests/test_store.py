from __future__ import annotations

import multiprocessing
import time

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowdiff.errors import LockError, StoreError
from flowdiff.schema import table_schema
from flowdiff.store import LedgerEntry, Store, open_store

KEYS = ("src", "proto")


def rows(*items) -> pa.Table:
    """items: (interval 'HH:MM', src, proto, packets, bytes, first 'HH:MM:SS', last)."""
    day = "2026-11-30 "
    return pa.table(
        {
            "interval_start": pd.to_datetime([day + i[0] for i in items], utc=True),
            "src": [i[1] for i in items],
            "proto": [i[2] for i in items],
            "packets": [i[3] for i in items],
            "bytes": [i[4] for i in items],
            "first_seen": pd.to_datetime([day + i[5] for i in items], utc=True),
            "last_seen": pd.to_datetime([day + i[6] for i in items], utc=True),
        }
    ).cast(table_schema(KEYS))


@pytest.fixture
def store(tmp_path) -> Store:
    s = Store(tmp_path / "store", "s1")
    s.ensure_table("t", KEYS, 60)
    return s


def test_merge_adds_counts_and_keeps_min_max(store):
    store.write_interval_rows(
        "t", KEYS, rows(("10:00", "10.0.0.1", 6, 2, 100, "10:00:05", "10:00:30")), "cap-a"
    )
    store.write_interval_rows(
        "t",
        KEYS,
        rows(
            ("10:00", "10.0.0.1", 6, 3, 50, "10:00:01", "10:00:20"),
            ("10:00", "10.0.0.2", 17, 1, 60, "10:00:02", "10:00:02"),
        ),
        "cap-b",
    )
    df = store.read("t")
    one = df[df.src == "10.0.0.1"].iloc[0]
    assert (one.packets, one.bytes) == (5, 150)
    assert one.first_seen == pd.Timestamp("2026-11-30 10:00:01", tz="UTC")
    assert one.last_seen == pd.Timestamp("2026-11-30 10:00:30", tz="UTC")
    assert len(df) == 2


def test_same_source_twice_changes_nothing(store):
    r = rows(
        ("10:00", "10.0.0.1", 6, 2, 100, "10:00:05", "10:00:30"),
        ("10:01", "10.0.0.1", 6, 1, 10, "10:01:00", "10:01:00"),
    )
    assert store.write_interval_rows("t", KEYS, r, "cap-a") == 2
    files = {p: p.read_bytes() for p in store.files("t")}
    assert store.write_interval_rows("t", KEYS, r, "cap-a") == 0
    assert {p: p.read_bytes() for p in store.files("t")} == files


def test_dtypes_and_direct_readers(store):
    store.write_interval_rows("t", KEYS, rows(("10:00", "::1", 58, 1, 70, "10:00:05", "10:00:05")), "a")
    root = store.root / "t"
    for df in (store.read("t"), pd.read_parquet(root)):
        assert str(df["interval_start"].dtype) == "datetime64[us, UTC]"
        assert str(df["proto"].dtype) == "uint8"
        assert str(df["packets"].dtype) == "uint64"
        assert df["src"].tolist() == ["::1"]
    assert duckdb.sql(f"SELECT sum(bytes) AS b FROM '{root}/**/*.parquet'").fetchall()[0][0] == 70
    assert pl.read_parquet(f"{root}/**/*.parquet", hive_partitioning=True)["sensor"].to_list() == ["s1"]


def test_read_filters_and_empty(store):
    store.write_interval_rows(
        "t",
        KEYS,
        rows(
            ("10:00", "a", 6, 1, 1, "10:00:00", "10:00:00"),
            ("10:05", "b", 6, 1, 1, "10:05:00", "10:05:00"),
            ("10:10", "a", 17, 1, 1, "10:10:00", "10:10:00"),
        ),
        "x",
    )
    assert store.read("t", since="2026-11-30 10:05").src.tolist() == ["b", "a"]
    assert store.read("t", until="2026-11-30 10:05").src.tolist() == ["a"]
    assert store.read("t", where={"src": "a", "proto": [17]}).proto.tolist() == [17]
    empty = store.read("t", since="2030-01-01")
    assert empty.empty and list(empty.columns) == [*table_schema(KEYS).names, "sensor"]
    assert str(empty["packets"].dtype) == "uint64"
    assert store.intervals("t") == [pd.Timestamp(f"2026-11-30 10:{m}", tz="UTC") for m in ("00", "05", "10")]
    assert list(store.read("t", columns=["src"]).columns) == ["src"]


def test_errors_are_store_errors(store):
    with pytest.raises(StoreError, match="no table 'nope'"):
        store.read("nope")
    with pytest.raises(StoreError, match="has keys"):
        store.ensure_table("t", ("dst",), 60)
    with pytest.raises(StoreError, match="interval"):
        store.ensure_table("t", KEYS, 300)
    with pytest.raises(StoreError, match="no column"):
        store.read("t", columns=["nope"])


def test_ledger_ignores_torn_line(store):
    store.ledger_append(LedgerEntry("/x.pcap", 10, 1, "ab", 3, "ok"))
    with open(store.ledger_path, "a") as f:
        f.write('{"path": "/y.pc')  # a crash mid-append
    assert [e.path for e in store.ledger()] == ["/x.pcap"]


def test_ledger_records_sorted_tables_and_keeps_lines_with_unknown_fields(store):
    store.ledger_append(LedgerEntry("/x.pcap", 10, 1, "ab", 3, "ok", tables=["t", "a", "t"], capture_id="h1"))
    with open(store.ledger_path, "a") as f:  # a line from a newer flowdiff, with a field unknown here
        f.write(
            '{"path": "/z.pcap", "size": 5, "mtime_ns": 2, "sha256": null, "records": 0, '
            '"status": "failed", "future_field": 1}\n'
        )
    entries = store.ledger()
    assert [(e.path, e.tables, e.capture_id) for e in entries] == [
        ("/x.pcap", ["a", "t"], "h1"),
        ("/z.pcap", None, None),
    ]
    assert store.tables_filled(entries[0]) == {"a", "t"} and store.tables_filled(entries[1]) == set()


def test_old_ledger_lines_count_the_tables_that_existed_then(tmp_path):
    """Lines written before `tables` existed: a table counts as filled when its definition is older
    than the entry (plus the second collected_at drops); a table created later was not filled."""
    import os

    s = Store(tmp_path / "store", "s1")
    s.ensure_table("old", KEYS, 60)
    s.ensure_table("new", KEYS, 60)
    t0 = 1_800_000_000
    os.utime(s.root / "old" / "_table.json", (t0 - 100, t0 - 100))
    os.utime(s.root / "new" / "_table.json", (t0 + 3600, t0 + 3600))
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0))
    entry = LedgerEntry("/x.pcap", 10, 1, "ab", 3, "ok", collected_at=at)
    assert s.tables_filled(entry) == {"old"}
    os.utime(s.root / "new" / "_table.json", (t0 + 0.7, t0 + 0.7))  # created in the same second: filled
    assert s.tables_filled(entry) == {"old", "new"}
    assert [t for _, t in s.ledger_tables()] == []
    assert s.tables_filled(LedgerEntry("/x.pcap", 10, 1, None, 0, "failed", collected_at=at)) == set()
    os.utime(s.root / "new" / "_table.json", (t0 + 3600, t0 + 3600))
    s.ledger_append(entry)
    s.ledger_append(LedgerEntry("/y.pcap", 10, 1, "cd", 3, "ok", tables=["old"]))  # a line of this version
    assert [t for _, t in s.ledger_tables()] == [{"old"}, {"old"}]
    # a store copied without its times: every definition is younger than every line, none can be
    # trusted, so every table counts as filled (reading a capture again could count it twice)
    for t in ("old", "new"):
        os.utime(s.root / t / "_table.json", (t0 + 7200, t0 + 7200))
    assert [t for _, t in s.ledger_tables()] == [{"old", "new"}, {"old"}]
    assert s.tables_filled(entry) == {"old", "new"}


def test_store_that_is_a_plain_file_is_refused_by_readers_and_writers(tmp_path):
    (tmp_path / "afile").write_text("x")
    for make in (
        lambda: Store(tmp_path / "afile"),
        lambda: open_store(tmp_path / "afile"),
        lambda: Store(tmp_path / "afile", "s1"),
    ):
        with pytest.raises(StoreError, match=r"afile is not a folder"):
            make()
    assert Store(tmp_path / "not-yet").tables() == []  # a store that does not exist yet is fine


def _hold_lock(root, seconds):
    with Store(root, "s").lock():
        time.sleep(seconds)


def test_lock_excludes_second_writer(tmp_path):
    p = multiprocessing.get_context("fork").Process(target=_hold_lock, args=(tmp_path, 3))
    p.start()
    time.sleep(0.8)
    try:
        with pytest.raises(LockError, match="busy"), Store(tmp_path, "s").lock(wait=0.5):
            pass
    finally:
        p.join()
    with Store(tmp_path, "s").lock(wait=0.5):
        pass


def test_open_store_reads_all_sensors(tmp_path):
    for sensor in ("a", "b"):
        s = Store(tmp_path, sensor)
        s.ensure_table("t", KEYS, 60)
        s.write_interval_rows("t", KEYS, rows(("10:00", "h", 6, 1, 5, "10:00:00", "10:00:00")), "x")
    df = open_store(tmp_path).read("t")
    assert sorted(df.sensor) == ["a", "b"] and df.bytes.sum() == 10
    assert len(Store(tmp_path, "a").read("t")) == 1


row_strategy = st.tuples(
    st.sampled_from(["10:00", "10:01", "10:02"]),
    st.sampled_from(["a", "b", "c"]),
    st.sampled_from([6, 17]),
    st.integers(1, 1000),
    st.integers(1, 10**6),
    st.sampled_from(["10:00:00", "10:00:10"]),
    st.sampled_from(["10:00:20", "10:00:30"]),
)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(row_strategy, min_size=1, max_size=8), min_size=1, max_size=4))
def test_merge_equals_total(tmp_path_factory, batches):
    """Writing batches one by one (as separate captures) gives the same totals as one groupby."""
    s = Store(tmp_path_factory.mktemp("s"), "s")
    s.ensure_table("t", KEYS, 60)
    for n, b in enumerate(batches):
        s.write_interval_rows("t", KEYS, rows(*b), f"cap{n}")
    got = s.read("t").groupby(["interval_start", "src", "proto"])[["packets", "bytes"]].sum()
    ref = (
        pd.concat([rows(*b).to_pandas() for b in batches])
        .groupby(["interval_start", "src", "proto"])[["packets", "bytes"]]
        .sum()
    )
    pd.testing.assert_frame_equal(got, ref, check_dtype=False)
