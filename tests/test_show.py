"""`flowdiff tables` / `flowdiff show` and the store API under them (Store.describe, Store.totals), on a
real store collected from a generated capture, checked against pandas reading the Parquet files directly."""

from __future__ import annotations

import csv
import io
import json

import pandas as pd
import pytest
from click.testing import CliRunner

from flowdiff.cli import main
from flowdiff.collect import collect
from flowdiff.config import parse_config
from flowdiff.demo import frames as fb
from flowdiff.store import Store

T0 = 1_700_000_040  # a minute boundary
CLIENTS = ("192.0.2.10", "192.0.2.11", "192.0.2.12")
KEYS = ["client", "server", "proto", "service_port"]


def _frames() -> list[fb.Frame]:
    """Five minutes of DNS from three clients, each a different amount per minute, plus one client whose
    total ties with another's (the key order must break the tie)."""
    out: list[fb.Frame] = []
    for minute in range(5):
        for i, client in enumerate(CLIENTS):
            for q in range(i + 1 + minute % 2):
                t = (T0 + minute * 60 + 5 + q) * 10**9
                out += fb.udp_exchange(
                    t,
                    client_mac="02:00:00:00:00:0a",
                    server_mac="02:00:00:00:00:01",
                    client=client,
                    server="198.51.100.53",
                    cport=40000 + q,
                    sport=53,
                    request=b"q" * (10 + i),
                    response=b"r" * 40,
                )
    out += fb.udp_exchange(
        (T0 + 10) * 10**9,
        client_mac="02:00:00:00:00:0b",
        server_mac="02:00:00:00:00:01",
        client="192.0.2.9",
        server="198.51.100.123",
        cport=123,
        sport=123,
        request=b"n" * 48,
        response=None,
    )
    return sorted(out, key=lambda f: f.ts_ns)


@pytest.fixture
def site(tmp_path):
    cap = fb.write_pcap(tmp_path / "dns.pcap", _frames())
    cfg = tmp_path / "flowdiff.toml"
    cfg.write_text(f'store = "{tmp_path / "store"}"\ninterval = 60\nsensor = "s1"\n', encoding="utf-8")
    config = parse_config({"store": str(tmp_path / "store"), "interval": 60, "sensor": "s1"})
    assert not collect([cap], config).errors
    return Store(tmp_path / "store"), cfg


def _raw(store: Store, table: str) -> pd.DataFrame:
    """The table straight from its Parquet files (pandas' own reader, not the store API)."""
    files = sorted((store.root / table).rglob("*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def _expected_totals(raw: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    g = raw.groupby(keys, observed=True)
    want = pd.DataFrame(
        {
            "packets": g["packets"].sum(),
            "bytes": g["bytes"].sum(),
            "intervals": g["interval_start"].nunique(),
            "first_seen": g["first_seen"].min(),
            "last_seen": g["last_seen"].max(),
        }
    ).reset_index()
    return want.sort_values(["bytes", *keys], ascending=[False] + [True] * len(keys)).reset_index(drop=True)


def test_totals_are_the_groupby_of_the_stored_rows(site):
    store, _ = site
    got = store.totals("services")
    want = _expected_totals(_raw(store, "services"), KEYS)
    assert len(got) == 4 and list(got.columns) == [
        *KEYS,
        "packets",
        "bytes",
        "intervals",
        "first_seen",
        "last_seen",
    ]
    pd.testing.assert_frame_equal(got, want, check_dtype=False, check_categorical=False)
    assert list(got["bytes"]) == sorted(got["bytes"], reverse=True)
    assert got.loc[got.client == CLIENTS[0], "intervals"].item() == 5


def test_totals_window_where_top_and_by_interval(site):
    store, _ = site
    raw = _raw(store, "services")
    start = pd.Timestamp(T0 + 120, unit="s", tz="UTC")
    window = store.totals("services", since=start, until=start + pd.Timedelta(minutes=2))
    in_window = raw[(raw.interval_start >= start) & (raw.interval_start < start + pd.Timedelta(minutes=2))]
    pd.testing.assert_frame_equal(
        window, _expected_totals(in_window, KEYS), check_dtype=False, check_categorical=False
    )
    assert set(window["intervals"]) == {2}

    top = store.totals("services", top=2)
    assert len(top) == 2 and top.equals(store.totals("services").head(2))

    one = store.totals("services", where={"client": CLIENTS[1]})
    assert list(one["client"]) == [CLIENTS[1]]

    rows = store.totals("services", by_interval=True)
    assert len(rows) == len(raw) and "interval_start" in rows.columns
    assert list(rows["bytes"]) == sorted(rows["bytes"], reverse=True)

    empty = store.totals("services", since="2030-01-01")
    assert empty.empty and list(empty.columns) == list(window.columns)


def test_describe_counts_what_is_on_disk(site):
    store, _ = site
    desc = store.describe().set_index("table")
    assert sorted(desc.index) == sorted(p.name for p in store.root.iterdir() if (p / "_table.json").exists())
    for table, row in desc.iterrows():
        raw = _raw(store, table)
        assert row["rows"] == len(raw)
        assert row["intervals"] == raw["interval_start"].nunique()
        assert row["first"] == raw["interval_start"].min() and row["last"] == raw["interval_start"].max()
        assert row["interval"] == 60
    assert desc.loc["services", "keys"] == ",".join(KEYS)
    assert Store(store.root / "nothing-here").describe().empty


def _cli(*args: str):
    r = CliRunner().invoke(main, list(args))
    assert r.exit_code == 0, r.output
    return r.output


def test_cli_tables_formats(site, tmp_path):
    store, cfg = site
    cfg.write_text(cfg.read_text() + '\n[tables.later]\nkeys = ["src", "dport"]\n', encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(_cli("tables", "--config", str(cfg), "--format", "csv"))))
    by_name = {r["table"]: r for r in rows}
    desc = store.describe().set_index("table")
    for table in desc.index:
        assert int(by_name[table]["rows"]) == desc.loc[table, "rows"]
        assert int(by_name[table]["intervals"]) == desc.loc[table, "intervals"]
        # the config names only `later` (and the always-collected stations)
        assert by_name[table]["defined_in"] == ("config, store" if table == "stations" else "store")
    assert by_name["later"] == {
        "table": "later",
        "keys": "src,dport",
        "interval": "60",
        "intervals": "0",
        "first": "",
        "last": "",
        "rows": "0",
        "defined_in": "config",
    }
    assert rows[0]["table"] == "later"  # config tables first

    lines = [json.loads(x) for x in _cli("tables", "--config", str(cfg), "--format", "json").splitlines()]
    assert [x["table"] for x in lines] == [r["table"] for r in rows]
    text = _cli("tables", "--config", str(cfg))
    assert text.splitlines()[0].split() == [
        "table",
        "keys",
        "interval",
        "intervals",
        "first",
        "last",
        "rows",
        "defined_in",
    ]


def test_cli_show_prints_the_store_totals(site):
    store, cfg = site
    lines = _cli("show", "services", "--config", str(cfg), "--top", "3", "--format", "json").splitlines()
    got = [json.loads(x) for x in lines]
    want = store.totals("services", top=3)
    assert [(g["client"], g["bytes"], g["intervals"]) for g in got] == [
        (r.client, r.bytes, r.intervals) for r in want.itertuples()
    ]
    assert "sensor" not in got[0]  # one sensor: the column says nothing
    assert got[0]["proto"] == 17

    by_interval = _cli("show", "services", "--config", str(cfg), "--by-interval", "--format", "csv")
    header = by_interval.splitlines()[0].split(",")
    assert header[0] == "interval_start" and "sensor" not in header

    table = _cli("show", "services", "--config", str(cfg), "--since", "2030-01-01")
    assert table.strip() == "(no rows)"
    shown = _cli("show", "services", "--config", str(cfg), "--top", "1")
    assert "udp" in shown.splitlines()[1]  # people read protocols by name


def test_cli_show_unknown_table_is_one_line(site):
    _, cfg = site
    r = CliRunner().invoke(main, ["show", "nosuch", "--config", str(cfg)])
    assert (
        r.exit_code == 2
        and r.output.startswith("Error: no table 'nosuch'")
        and len(r.output.splitlines()) == 1
    )
