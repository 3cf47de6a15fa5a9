"""Many sensors, one store: partitions, ledgers and locks per sensor; learn/diff/show/status --sensor."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from flowdiff.baseline import get_version, read_baseline
from flowdiff.cli import main
from flowdiff.config import load_config
from flowdiff.demo import frames as synth
from flowdiff.store import LedgerEntry, Store

T0 = 1_700_000_000


def capture(path: Path, clients: list[int], t0: int = T0) -> Path:
    """SMTP sessions from 192.0.2.<c> for each c in ``clients`` to one server, over two intervals."""
    frames = []
    for k, c in enumerate(clients):
        for rep in range(2):  # two intervals: enough evidence to be learned
            frames += synth.tcp_session(
                (t0 + 10 * k + 300 * rep) * 10**9,
                client_mac="02:00:00:00:00:01",
                server_mac="00:00:5e:00:53:01",
                client=f"192.0.2.{c}",
                server="198.51.100.25",
                cport=40000 + c,
                sport=25,
                exchanges=[(True, b"EHLO x\r\n"), (False, b"250 ok\r\n")],
            )
    frames.sort(key=lambda f: f.ts_ns)
    return synth.write_pcap(path, frames)


def write_config(root: Path, sensor: str, extra: str = "") -> Path:
    p = root / f"{sensor}.toml"
    p.write_text(
        f'store = "store"\nbaselines = "baselines"\nreports = "reports"\ninterval = 300\nsensor = "{sensor}"\n'
        f'{extra}\n[tables.hosts]\nkeys = ["src"]\n[tables.services]\n'
        'keys = ["client", "server", "proto", "service_port"]\n',
        encoding="utf-8",
    )
    return p


def run(*args: str):
    res = CliRunner().invoke(main, list(args))
    return res


@pytest.fixture
def two(tmp_path) -> dict[str, Path]:
    """One store, two sensors: a saw clients .10 and .11, b saw .10 and .20."""
    cfg = {s: write_config(tmp_path, s) for s in ("a", "b")}
    for s, clients in (("a", [10, 11]), ("b", [10, 20])):
        cap = capture(tmp_path / f"{s}.pcap", clients)
        res = run("collect", str(cap), "--config", str(cfg[s]))
        assert res.exit_code == 0, res.output
    return cfg


def _hosts(config_path: Path, sensor: str | None = None) -> set[str]:
    config = load_config(config_path)
    if sensor:
        config = config.for_sensor(sensor)
    entry = get_version(config).tables["hosts"]
    return set(read_baseline(config, entry).column("src").to_pylist()) - {"198.51.100.25"}  # the server


def test_each_sensor_writes_its_own_partition_ledger_and_lock(two, tmp_path):
    store = tmp_path / "store"
    assert sorted(p.name for p in (store / "hosts").iterdir() if p.is_dir()) == ["sensor=a", "sensor=b"]
    assert sorted(p.name for p in (store / "_ledger").glob("*.jsonl")) == ["a.jsonl", "b.jsonl"]
    assert [e.sensor for e in Store(store, "a").ledger()] == ["a"]
    assert len(Store(store).ledger()) == 2
    with Store(store, "a").lock(), Store(store, "b").lock(wait=0.1):  # sensors never wait for each other
        pass


def test_the_old_single_ledger_is_still_read(two, tmp_path):
    store = tmp_path / "store"
    old = LedgerEntry("/old/x.pcap", 10, 1, None, 5, "ok", collected_at="2026-01-01T00:00:00Z", sensor="a")
    (store / "_ledger.jsonl").write_text(json.dumps(old.__dict__) + "\n", encoding="utf-8")
    for s in ("a", "b", None):
        assert "/old/x.pcap" in [e.path for e in Store(store, s).ledger()]
    before = Store(store).read("hosts")
    res = run("collect", str(tmp_path / "a.pcap"), "--config", str(two["a"]))  # known to a's own ledger
    assert res.exit_code == 0, res.output
    assert len(Store(store, "a").ledger()) == 2  # the old line and a's first collect: nothing new
    assert Store(store).read("hosts").equals(before)


def test_learn_per_sensor_by_default_and_diff_names_the_sensor(two, tmp_path):
    res = run("learn", "--sensor", "all", "--config", str(two["a"]))
    assert res.exit_code == 0, res.output
    assert "sensor a:" in res.output and "sensor b:" in res.output
    assert _hosts(two["a"]) == {"192.0.2.10", "192.0.2.11"}
    assert _hosts(two["a"], "b") == {"192.0.2.10", "192.0.2.20"}
    assert (tmp_path / "baselines" / "sensors" / "b" / "CURRENT.json").is_file()
    # b sees a new client; a sees only what it knows
    cap = capture(tmp_path / "b2.pcap", [10, 20, 30], t0=T0 + 3600)
    assert run("collect", str(cap), "--config", str(two["b"])).exit_code == 0
    cap = capture(tmp_path / "a2.pcap", [10, 11], t0=T0 + 3600)
    assert run("collect", str(cap), "--config", str(two["a"])).exit_code == 0
    res = run("diff", "--sensor", "b", "--format", "json", "--config", str(two["a"]))
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.output.splitlines() if line.startswith("{")]
    assert {r.get("src") for r in rows if r["table"] == "hosts"} == {"192.0.2.30"}
    report = next((tmp_path / "reports" / "sensors" / "b").glob("*/report.json"))
    assert json.loads(report.read_text())["sensor"] == "b"
    res = run("diff", "--sensor", "a", "--config", str(two["a"]))
    assert res.exit_code == 0 and "sensor a:" in res.output and "192.0.2" not in res.output
    res = run("diff", "--config", str(two["b"]))  # b's own config: the same baseline and state as above
    assert res.exit_code == 0 and "192.0.2.30" not in res.output


def test_shared_baseline_with_scope_all(tmp_path):
    cfg = {s: write_config(tmp_path, s, 'baseline_scope = "all"') for s in ("a", "b")}
    for s, clients in (("a", [10, 11]), ("b", [10, 20])):
        assert (
            run("collect", str(capture(tmp_path / f"{s}.pcap", clients)), "--config", str(cfg[s])).exit_code
            == 0
        )
    res = run("learn", "--config", str(cfg["a"]))
    assert res.exit_code == 0, res.output
    assert _hosts(cfg["a"]) == {"192.0.2.10", "192.0.2.11", "192.0.2.20"}
    assert _hosts(cfg["b"]) == _hosts(cfg["a"])  # one baseline, whichever sensor's config reads it
    res = run("diff", "--sensor", "a", "--config", str(cfg["a"]))
    assert res.exit_code == 2 and 'baseline_scope = "all"' in res.output


def test_show_and_status_take_sensor(two):
    res = run("show", "hosts", "--sensor", "b", "--config", str(two["a"]))
    assert res.exit_code == 0 and "192.0.2.20" in res.output and "192.0.2.11" not in res.output
    res = run("show", "hosts", "--sensor", "all", "--by-interval", "--config", str(two["a"]))
    assert "192.0.2.20" in res.output and "192.0.2.11" in res.output and "sensor" in res.output
    res = run("status", "--sensor", "all", "--format", "json", "--config", str(two["a"]))
    docs = json.loads("[" + res.output.replace("}\n{", "},\n{") + "]")
    assert [d["sensor"] for d in docs] == ["a", "b"]
    res = run("status", "--sensor", "b", "--config", str(two["a"]))
    assert res.exit_code in (0, 1) and " b" in res.output


def _rows(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_shared_baseline_rows_name_the_sensors_that_saw_them(tmp_path):
    """baseline_scope = "all": a key seen by both sensors names both, one seen by one names it alone, in
    every place a row is shown: diff json/csv/table, rows.json/rows.parquet, report.json, report text/HTML."""
    cfg = {s: write_config(tmp_path, s, 'baseline_scope = "all"') for s in ("a", "b")}
    for s, clients in (("a", [10, 11]), ("b", [10, 20])):
        assert (
            run("collect", str(capture(tmp_path / f"{s}.pcap", clients)), "--config", str(cfg[s])).exit_code
            == 0
        )
    assert run("learn", "--config", str(cfg["a"])).exit_code == 0
    # later: a sees the new client .30; b sees .30 and .40
    for s, clients in (("a", [10, 30]), ("b", [30, 40])):
        cap = capture(tmp_path / f"{s}2.pcap", clients, t0=T0 + 3600)
        assert run("collect", str(cap), "--config", str(cfg[s])).exit_code == 0
    dry = run("diff", "--dry-run", "--format", "csv", "--config", str(cfg["a"]))
    assert dry.exit_code == 0, dry.output
    table = pd.read_csv(io.StringIO(dry.output), dtype=str, keep_default_na=False)
    hosts = table[table["table"] == "hosts"].set_index("src")["sensors"].to_dict()
    assert hosts == {"192.0.2.30": "a, b", "192.0.2.40": "b"}
    res = run("diff", "--format", "json", "--config", str(cfg["a"]))
    assert res.exit_code == 0, res.output
    rows = _rows(res.output)
    assert {r["src"]: r["sensors"] for r in rows if r["table"] == "hosts"} == hosts
    services = {r["client"]: r["sensors"] for r in rows if r["table"] == "services"}
    assert services == {"192.0.2.30": "a, b", "192.0.2.40": "b"}
    report = next((tmp_path / "reports").glob("*/report.json")).parent
    assert json.loads((report / "report.json").read_text())["sensors"] == ["a", "b"]
    saved = {r["src"]: r["sensors"] for r in json.loads((report / "rows.json").read_text()) if "src" in r}
    assert saved == hosts
    back = pd.read_parquet(report / "rows.parquet")
    assert dict(zip(back["src"].dropna(), back.loc[back["src"].notna(), "sensors"], strict=True)) == hosts
    run("notify", "--config", str(cfg["a"]))  # no [mail]: rendered and archived
    text = (report / "report.txt").read_text()
    assert "seen by:    a, b" in text and "seen by:    b" in text
    assert "seen by a, b" in (report / "report.html").read_text()


def test_per_sensor_rows_name_their_sensor(two, tmp_path):
    assert run("learn", "--sensor", "all", "--config", str(two["a"])).exit_code == 0
    cap = capture(tmp_path / "b2.pcap", [10, 30], t0=T0 + 3600)
    assert run("collect", str(cap), "--config", str(two["b"])).exit_code == 0
    res = run("diff", "--sensor", "b", "--format", "json", "--config", str(two["a"]))
    assert res.exit_code == 0, res.output
    rows = _rows(res.output)
    assert rows and {r["sensors"] for r in rows} == {"b"}
    res = run("diff", "--sensor", "a", "--dry-run", "--config", str(two["a"]))
    assert res.exit_code == 0 and "192.0.2.30" not in res.output


def test_sensor_sets_merge_names_and_joined_sets():
    from flowdiff.diff import sensor_sets

    gid = np.array([0, 1, 0, 2, 1, 2])
    names = np.array(["gw2", "gw1", "gw1", "gw1, gw3", "gw1", None], dtype=object)
    assert sensor_sets(gid, 3, names).tolist() == ["gw1, gw2", "gw1", "gw1, gw3"]
    many = np.array([f"s{i:02d}" for i in range(70)], dtype=object)  # beyond one int64 mask
    out = sensor_sets(np.arange(70) % 2, 2, many)
    assert out[0] == ", ".join(f"s{i:02d}" for i in range(0, 70, 2))
    assert out[1] == ", ".join(f"s{i:02d}" for i in range(1, 70, 2))


def test_shared_baseline_counts_an_interval_seen_by_two_sensors_once(tmp_path, monkeypatch):
    """Both sensors saw 192.0.2.10 in the same two intervals: 2 intervals, not 4 (learn counts rows
    only where a key's rows are its intervals, one sensor)."""
    from flowdiff import baseline

    cfg = {s: write_config(tmp_path, s, 'baseline_scope = "all"') for s in ("a", "b")}
    for s, clients in (("a", [10, 11]), ("b", [10, 20])):
        res = run("collect", str(capture(tmp_path / f"{s}.pcap", clients)), "--config", str(cfg[s]))
        assert res.exit_code == 0, res.output
    config = load_config(cfg["a"])
    counted = {}
    for by_rows in (True, False):
        monkeypatch.setattr(baseline, "_COUNT_ROWS", by_rows)
        baseline.learn(config, force=True, reason=f"by rows: {by_rows}")
        entry = get_version(config).tables["hosts"]
        t = read_baseline(config, entry).to_pandas()
        counted[by_rows] = (entry.hash, dict(zip(t["src"], t["intervals"], strict=True)))
    assert counted[True] == counted[False]
    assert counted[True][1]["192.0.2.10"] == 2
