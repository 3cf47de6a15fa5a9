"""learn's Arrow read+reduce path (one scan per chunk, canonical keys on distinct values, Arrow hash
aggregation) gives exactly the evidence of the plain pandas definition: canonicalise each sensor's rows,
add them up per interval and key, count the intervals of each key. Two sensors, canonicalising tables,
chunks smaller than the window (so partial evidence is combined), a late interval file beside a day file."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from flowdiff import baseline
from flowdiff.canon import aggregate, canonicalise
from flowdiff.compact import compact
from flowdiff.config import TableConfig, load_config
from flowdiff.netmap import NetworkMap
from flowdiff.schema import INTERVAL, table_schema
from flowdiff.store import Store

T0 = pd.Timestamp("2026-11-01T00:00:00Z")
NETWORKS = {"10.0.0.0/16": "dhcp", "192.168.0.0/16": "lan"}
TABLES = {
    "pairs": TableConfig(name="pairs", keys=("src", "dst", "proto"), collapse=("dhcp",), ipv6_prefix=64),
    "link": TableConfig(name="link", keys=("ethertype", "src_mac", "dst_mac"), collapse_random_macs=True),
}


def _values(rng: np.random.Generator, key: str, n: int) -> list:
    if key in ("src", "dst"):
        pool = [f"10.0.{i}.{j}" for i in range(3) for j in range(4)]  # collapse to "dhcp"
        pool += [f"192.168.1.{i}" for i in range(6)] + [f"2001:db8:1::{i:x}" for i in range(5)]
        pool += [f"2001:db8:{i}::1" for i in range(3)]
        return list(rng.choice(pool, n))
    if key.endswith("_mac"):
        pool = [f"{a:02x}:00:5e:00:53:{i:02x}" for a in (0x00, 0x02, 0x06, 0x01) for i in range(4)]
        return list(rng.choice(pool, n))
    if key == "proto":
        return list(rng.choice([6, 17, 1], n))
    return list(rng.choice([0x0800, 0x86DD, 0x0806], n))


def _rows(rng: np.random.Generator, keys: tuple[str, ...], start: pd.Timestamp, n: int) -> pa.Table:
    cols = {k: _values(rng, k, n) for k in keys}
    df = pd.DataFrame(cols).drop_duplicates().reset_index(drop=True)
    m = len(df)
    df[INTERVAL] = start
    df["packets"] = rng.integers(1, 50, m).astype(np.uint64)
    df["bytes"] = (df["packets"] * 100).astype(np.uint64)
    df["first_seen"] = start + pd.to_timedelta(rng.integers(0, 100, m), unit="s")
    df["last_seen"] = df["first_seen"] + pd.Timedelta(seconds=150)
    schema = table_schema(keys)
    return pa.Table.from_pandas(df[schema.names], preserve_index=False).cast(schema)


@pytest.fixture
def store(tmp_path) -> Store:
    rng = np.random.default_rng(3)
    for sensor in ("gw1", "gw2"):
        st = Store(tmp_path / "store", sensor)
        for tc in TABLES.values():
            st.ensure_table(tc.name, tc.keys, 300)
            for i in range(30):  # some intervals seen by one sensor only
                if sensor == "gw2" and i % 4 == 0:
                    continue
                rows = _rows(rng, tc.keys, T0 + pd.Timedelta(seconds=300 * i), 25)
                st.write_interval_rows(tc.name, tc.keys, rows, f"{sensor}-{tc.name}-{i}")
    # gw1's day becomes one day file; then a late capture adds to two of its intervals
    cfg = tmp_path / "gw1.toml"
    cfg.write_text(f'store = "{tmp_path / "store"}"\nsensor = "gw1"\n', encoding="utf-8")
    compact(load_config(cfg), older_than=0, now=datetime(2026, 11, 3, tzinfo=UTC), sensors=["gw1"])
    gw1 = Store(tmp_path / "store", "gw1")
    for tc in TABLES.values():
        assert any(p.name == "20261101.parquet" for p in gw1.files(tc.name))
        for i in (5, 6):
            rows = _rows(rng, tc.keys, T0 + pd.Timedelta(seconds=300 * i), 25)
            gw1.write_interval_rows(tc.name, tc.keys, rows, f"late-{tc.name}-{i}")
        assert len(gw1.files(tc.name)) == 3  # the day file and two late interval files beside it
    return Store(tmp_path / "store")


def _reference(store: Store, tc: TableConfig, starts: list[pd.Timestamp]) -> pd.DataFrame:
    """The definition, in pandas: per sensor canonical rows, added up per interval and key, then
    one interval counted per (interval, key) and everything summed per key."""
    raw = store.read(tc.name, columns=[INTERVAL, *tc.keys, "packets", "bytes", "first_seen", "last_seen"])
    raw = raw[raw[INTERVAL].isin(starts)]
    canon = canonicalise(raw, tc, NetworkMap(NETWORKS), force_aggregate=True)
    canon["intervals"] = np.ones(len(canon), dtype=np.uint32)
    return aggregate(canon.drop(columns=[INTERVAL]), list(tc.keys))


def _sorted(df: pd.DataFrame, keys: tuple[str, ...]) -> pd.DataFrame:
    cols = [*keys, "packets", "bytes", "first_seen", "last_seen", "intervals"]
    out = df[cols].sort_values(list(keys), kind="stable").reset_index(drop=True)
    out["intervals"] = out["intervals"].astype(np.uint32)
    return out


@pytest.mark.parametrize("table", sorted(TABLES))
@pytest.mark.parametrize("sensor", [None, "gw2"])
def test_arrow_learn_equals_the_pandas_definition(store, table, sensor, monkeypatch):
    tc = TABLES[table]
    st = Store(store.root, sensor)
    starts = st.intervals(table)[3:]
    monkeypatch.setattr(baseline, "_CHUNK_INTERVALS", 7)  # several chunks, combined
    monkeypatch.setattr(baseline, "_CHUNK_ONE_SENSOR", 5)
    got, candidates = baseline._learn_table(st, tc, starts, NetworkMap(NETWORKS), 1, 1, False)
    want = _reference(st, tc, starts)
    assert candidates == len(want) and got.num_rows == len(want)
    assert "random" in set(want.get("src_mac", pd.Series(["random"])))  # canonicalisation did merge keys
    if "src" in tc.keys:
        assert "dhcp" in set(want["src"]) and "2001:db8:1::/64" in set(want["src"])
    pd.testing.assert_frame_equal(_sorted(got.to_pandas(), tc.keys), _sorted(want, tc.keys))
    assert (want["intervals"] > 1).any()  # keys seen in several intervals, by both sensors
    # the thresholds then keep what the definition keeps
    kept, _ = baseline._learn_table(st, tc, starts, NetworkMap(NETWORKS), 3, 40, False)
    ok = want[(want["intervals"] >= 3) & (want["packets"] >= 40)]
    pd.testing.assert_frame_equal(_sorted(kept.to_pandas(), tc.keys), _sorted(ok, tc.keys))


def test_reads_that_find_no_rows_have_the_types_of_reads_that_do(store):
    """No interval asked for, or a window without files: the same column types as a read with rows
    (text keys dictionary-encoded), so that callers can concatenate and cast without a special case."""

    def types(t: pa.Table) -> list[tuple[str, pa.DataType]]:
        return [(f.name, f.type) for f in t.schema]

    for tc in TABLES.values():
        full = store.interval_table(tc.name, tc.keys, store.intervals(tc.name))
        assert full.num_rows
        assert types(store.interval_table(tc.name, tc.keys, [])) == types(full)
        none = store.read_table(tc.name, since="1990-01-01", until="1990-01-02", dictionary=tc.keys)
        some = store.read_table(tc.name, dictionary=tc.keys)
        assert none.num_rows == 0 and some.num_rows and types(none) == types(some)


@pytest.mark.parametrize("sensor", [None, "gw1"])
def test_learn_reads_text_keys_dictionary_encoded_with_the_same_rows(store, sensor):
    """interval_table hands learn its text keys dictionary-encoded, as Parquet stores them (each distinct
    address decoded once): the rows are those of the plain read, also where a late interval file is
    merged into its day file (gw1)."""
    st = Store(store.root, sensor)
    for tc in TABLES.values():
        starts = st.intervals(tc.name)
        got = st.interval_table(tc.name, tc.keys, starts)
        plain = st.read_table(tc.name, columns=got.column_names)
        text = [k for k in tc.keys if k != "ethertype" and k != "proto"]
        assert all(pa.types.is_dictionary(got.schema.field(k).type) for k in text)
        order = [(c, "ascending") for c in ("sensor", INTERVAL, *tc.keys)]
        decoded = got.cast(plain.schema).sort_by(order)
        assert got.num_rows == plain.num_rows and decoded.equals(plain.sort_by(order))
