"""diff: quiet on a normal day, each anomaly exactly once, rules, accept, re-arm, reports, CLI contract."""

from __future__ import annotations

import json
import shlex

import fixtures_baseline as fx
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowdiff.baseline import learn, rollback
from flowdiff.cli import main as flowdiff_main
from flowdiff.config import TableConfig
from flowdiff.diff import ROW_COLUMNS, diff, find_new, key_hashes, list_reports, load_report
from flowdiff.errors import BaselineError
from flowdiff.rules import RuleSet, add_rule
from flowdiff.state import load_state
from flowdiff.triage import accept


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """A store with one normal day (plus a one-packet scan) and a baseline learned from it."""
    root = tmp_path_factory.mktemp("learned")
    config = fx.write_config(root)
    fx.write(config, fx.day(0) + fx.scan(0), "day0")
    learn(config)
    return root


@pytest.fixture
def site(learned, tmp_path):
    return fx.copy_site(learned, tmp_path)


def _cli():
    return flowdiff_main


def _run(*args: str):
    return CliRunner().invoke(_cli(), list(args))


def _keys(res, table):
    keys = list(res.keys[table])
    return sorted(tuple(r) for r in res.rows[table][keys].itertuples(index=False, name=None))


def test_normal_days_give_zero_new_rows(site):
    # new client ports, DHCP leases, IPv6 temporary addresses and random MACs every day
    for n in (1, 2, 3):
        fx.write(site, fx.day(n), f"day{n}")
        res = diff(site)
        # a report footer counts intervals, not (table, interval) pairs
        assert res.intervals == fx.INTERVALS and res.table_intervals == fx.INTERVALS * len(site.tables)
        assert res.total == 0, {t: df.to_dict("records") for t, df in res.rows.items() if len(df)}
        assert res.report_id is None
        assert set(res.rows) == set(site.tables)
        for _t, df in res.rows.items():  # full schema even when empty
            assert list(df.columns)[-len(ROW_COLUMNS) - 1 : -1] == list(ROW_COLUMNS)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("new_host", {"hosts": [("10.1.0.77",)], "services": [("10.1.0.77", "10.1.0.10", 6, 443)]}),
        ("new_service", {"services": [("dhcp", "10.1.0.25", 6, 8080)]}),
        (
            "new_pair",
            {
                "pairs": [("10.1.0.10", "10.1.0.53", 17), ("10.1.0.53", "10.1.0.10", 17)],
                "services": [("10.1.0.10", "10.1.0.53", 17, 53)],
            },
        ),
        ("lldp", {"link": [(0x88CC, "00:1b:21:aa:bb:cc", "01:80:c2:00:00:0e")]}),
    ],
)
def test_each_anomaly_is_reported_exactly_once(site, kind, expected):
    fx.write(site, fx.day(1) + fx.anomaly(kind, 1, interval=1) + fx.anomaly(kind, 1, interval=3), "day1")
    res = diff(site)
    for table, rows in expected.items():
        assert _keys(res, table) == sorted(rows)
        df = res.rows[table]
        assert (df["reason"] == "new").all()
        # seen in intervals 1 and 3: one row, first interval, counts of both
        assert (df["interval_start"] == fx.DAY0 + pd.Timedelta(days=1, seconds=fx.INTERVAL_S)).all()
    if kind == "lldp":  # a non-IP frame shows in the link table only
        assert res.counts() == {"link": 1}
        assert int(res.rows["link"]["packets"].iloc[0]) == 2
    # re-running finds nothing; the same anomaly on the next day is not reported again
    assert diff(site).total == 0
    fx.write(site, fx.day(2) + fx.anomaly(kind, 2), "day2")
    assert diff(site).total == 0


def test_one_packet_scan_during_learning_is_not_normal(site):
    fx.write(site, fx.day(1) + fx.scan(1), "day1")
    res = diff(site)
    assert _keys(res, "hosts") == [("198.51.100.7",)]
    assert _keys(res, "services") == [("198.51.100.7", "10.1.0.10", 6, 22)]


def test_deny_rule_reports_even_known_rows_once(site):
    add_rule(site, "deny", "services", {"service_port": 23}, name="telnet")
    fx.write(site, fx.day(1) + fx.anomaly("telnet", 1), "day1")
    res = diff(site)
    df = res.rows["services"]
    # the learned management session and the new one from a DHCP client: both denied
    assert _keys(res, "services") == [("10.1.0.53", "10.1.0.25", 6, 23), ("dhcp", "10.1.0.25", 6, 23)]
    assert set(df["reason"]) == {"deny-rule telnet"}
    assert res.counts() == {"services": 2}
    fx.write(site, fx.day(2) + fx.anomaly("telnet", 2), "day2")
    assert diff(site).total == 0


def test_allow_rule_makes_a_row_normal(site):
    add_rule(site, "allow", "*", {"src": "198.51.100.0/24"}, name="scanner")
    add_rule(site, "allow", "services", {"client": "*", "server": "10.1.0.10", "service_port": "1-1023"})
    fx.write(site, fx.day(1) + fx.scan(1), "day1")
    res = diff(site)
    assert res.counts() == {"link": 1}  # the gateway MAC -> web server frame is still new


def test_accept_removes_the_row_and_rollback_brings_it_back(site):
    fx.write(site, fx.day(1) + fx.anomaly("new_service", 1), "day1")
    first = diff(site)
    row = int(first.rows["services"]["row"].iloc[0])
    acc = accept(site, first.report_id, [row], reason="new admin port")
    assert acc.version == "v0002" and acc.total == 1
    fx.write(site, fx.day(2) + fx.anomaly("new_service", 2), "day2")
    assert diff(site).total == 0
    rollback(site, "v1")
    fx.write(site, fx.day(3) + fx.anomaly("new_service", 3), "day3")
    again = diff(site)
    assert _keys(again, "services") == [("dhcp", "10.1.0.25", 6, 8080)]


def test_accept_command_printed_in_the_report_works(site):
    fx.write(site, fx.day(1) + fx.anomaly("new_host", 1), "day1")
    res = diff(site)
    for _table, df in res.rows.items():
        for cmd in df["accept_cmd"]:
            argv = shlex.split(cmd)
            assert argv[:2] == ["flowdiff", "accept"]
            out = _run(*argv[1:])
            assert out.exit_code == 0, out.output
    fx.write(site, fx.day(2) + fx.anomaly("new_host", 2), "day2")
    assert diff(site).total == 0


def test_deny_command_printed_in_the_report_works(site):
    fx.write(site, fx.day(1) + fx.anomaly("new_host", 1), "day1")
    res = diff(site)
    cmd = res.rows["hosts"]["deny_cmd"].iloc[0]
    out = _run(*shlex.split(cmd)[1:])
    assert out.exit_code == 0, out.output
    fx.write(site, fx.day(2) + fx.anomaly("new_host", 2), "day2")
    res2 = diff(site)
    assert _keys(res2, "hosts") == [("10.1.0.77",)]
    assert res2.rows["hosts"]["reason"].iloc[0].startswith("deny-rule ")


def test_rearm_reports_again_after_the_period(learned, tmp_path):
    config = fx.copy_site(learned, tmp_path, 'rearm = "1d"')
    fx.write(config, fx.day(1) + fx.anomaly("new_host", 1, interval=0), "day1")
    assert diff(config).counts()["hosts"] == 1
    # 1 day + 5 minutes later in capture time: due again; the day after that: not yet
    fx.write(config, fx.day(2) + fx.anomaly("new_host", 2, interval=1), "day2")
    assert diff(config).counts().get("hosts") == 1
    fx.write(config, fx.day(2) + fx.anomaly("new_host", 2, interval=4), "day2b")
    assert diff(config).total == 0


def test_late_capture_for_a_diffed_interval_is_diffed_again(site):
    fx.write(site, fx.day(1), "day1")
    assert diff(site).total == 0
    fx.write(site, fx.anomaly("new_pair", 1, interval=2), "late")
    res = diff(site)
    assert _keys(res, "pairs") == [("10.1.0.10", "10.1.0.53", 17), ("10.1.0.53", "10.1.0.10", 17)]
    assert res.intervals == 1 and res.table_intervals == len(site.tables)  # the changed interval, per table
    assert diff(site).total == 0


def test_dry_run_writes_nothing(site):
    fx.write(site, fx.day(1) + fx.anomaly("new_host", 1), "day1")
    before = (site.baselines / "CURRENT.json").read_text()
    a = diff(site, record=False)
    b = diff(site, record=False)
    assert a.total == b.total > 0 and a.report_id is None
    assert (site.baselines / "CURRENT.json").read_text() == before
    assert list_reports(site) == []


def test_report_files_and_reload(site):
    fx.write(site, fx.day(1) + fx.anomaly("new_host", 1) + fx.anomaly("lldp", 1), "day1")
    res = diff(site)
    rid = res.report_id
    assert rid and list_reports(site) == [rid]
    d = site.reports / rid
    assert {p.name for p in d.iterdir()} == {"rows.parquet", "rows.json", "report.json", "incidents.json"}
    meta = json.loads((d / "report.json").read_text())
    assert meta["counts"] == res.counts() and meta["baseline_versions"]["hosts"] == "v0001"
    rows = json.loads((d / "rows.json").read_text())
    assert len(rows) == res.total and [r["row"] for r in rows] == list(range(1, res.total + 1))
    back = load_report(site, rid)
    for t in res.rows:
        pd.testing.assert_frame_equal(back.rows[t].reset_index(drop=True), res.rows[t].reset_index(drop=True))
    assert pd.read_parquet(d / "rows.parquet")["table"].value_counts().to_dict() == res.counts()


def test_report_ids_sort_in_time_and_are_unique(site):
    ids = []
    for n, extra in ((1, fx.anomaly("new_host", 1)), (2, fx.scan(2))):
        fx.write(site, extra, f"d{n}")
        ids.append(diff(site, tables=["hosts"]).report_id)
    assert len(set(ids)) == 2 and ids == sorted(ids)
    assert all(len(i) == 23 and i[8] == "T" and i[15] == "Z" for i in ids)


def test_committed_report_left_in_temp_is_published(site):
    # crash after the state commit, before the report directory was renamed
    fx.write(site, fx.day(1) + fx.anomaly("new_host", 1), "day1")
    res = diff(site)
    d = site.reports / res.report_id
    d.rename(site.reports / f".{res.report_id}.tmp")
    (site.reports / ".20000101T000000Z-000000.tmp").mkdir()  # never committed: dropped
    assert diff(site).total == 0
    assert list_reports(site) == [res.report_id]
    assert not (site.reports / ".20000101T000000Z-000000.tmp").exists()


def test_neighbour_names_the_nearest_accepted_row(site):
    fx.write(site, fx.day(1) + fx.anomaly("new_host", 1), "day1")
    res = diff(site)
    svc = res.rows["services"].iloc[0]
    assert (
        svc["neighbour"]
        == "same server and port, other client: client=dhcp server=10.1.0.10 proto=tcp service_port=443"
    )
    host = res.rows["hosts"].iloc[0]
    assert host["neighbour"].startswith("same network (src /24 or /64): src=10.1.0.")
    fx.write(site, fx.day(2) + fx.anomaly("new_service", 2), "day2")
    svc2 = diff(site).rows["services"].iloc[0]
    assert svc2["neighbour"].startswith("same host, another service: client=dhcp server=10.1.0.25")


def test_wrong_table_definition_is_refused(site, tmp_path):
    tables = {k: dict(v) for k, v in fx.TABLES.items()}
    tables["hosts"]["ipv6_prefix"] = 48
    changed = fx.write_config(tmp_path, tables=tables)
    with pytest.raises(BaselineError, match=r"another table definition .*ipv6_prefix.*learn --table hosts"):
        diff(changed)
    out = _run("diff")
    assert out.exit_code == 2 and out.output.startswith("Error: ") and "ipv6_prefix" in out.output


def test_diff_without_baseline_is_an_error(tmp_path):
    config = fx.write_config(tmp_path)
    fx.write(config, fx.day(0), "day0")
    with pytest.raises(BaselineError, match="flowdiff learn"):
        diff(config)


# ------------------------------------------------------------------ CLI contract


def test_cli_json_lines_contract_and_exit_codes(site):
    fx.write(site, fx.day(1) + fx.anomaly("new_service", 1) + fx.anomaly("lldp", 1), "day1")
    out = _run("diff", "--format", "json", "--exit-code")
    assert out.exit_code == 1, out.output
    objs = [json.loads(line) for line in out.output.splitlines()]
    assert [o["table"] for o in objs] == ["services", "link"]
    svc = objs[0]
    assert {
        k: svc[k] for k in ("client", "server", "proto", "service_port", "packets", "bytes", "reason")
    } == {
        "client": "dhcp",
        "server": "10.1.0.25",
        "proto": 6,
        "service_port": 8080,
        "packets": 8,
        "bytes": 3920,
        "reason": "new",
    }
    assert svc["interval_start"] == "2026-11-03T08:05:00Z" and svc["first_seen"] == "2026-11-03T08:05:01Z"
    assert objs[1]["ethertype"] == 0x88CC
    # nothing new: no output at all, exit 0 even with --exit-code
    again = _run("diff", "--format", "json", "--exit-code")
    assert again.exit_code == 0 and again.output == ""


def test_cli_table_and_csv_formats(site):
    fx.write(site, fx.day(1) + fx.anomaly("new_host", 1), "day1")
    out = _run("diff", "--dry-run")
    assert out.exit_code == 0
    assert "== hosts: 1 new" in out.output and "flowdiff accept hosts --where src=10.1.0.77" in out.output
    csv = _run("diff", "--format", "csv")
    df = pd.read_csv(pd.io.common.StringIO(csv.output))
    assert len(df) == 7 and set(df["table"]) == {"hosts", "pairs", "services", "link", "stations"}
    assert _run("diff").output.startswith("no new rows")


def test_cli_accept_by_report_and_rows(site):
    fx.write(site, fx.day(1) + fx.anomaly("new_host", 1), "day1")
    res = diff(site)
    out = _run("accept", res.report_id, "--reason", "new web client")
    assert out.exit_code == 0 and "accepted 7 rows" in out.output and "v0002" in out.output
    bad = _run("accept", res.report_id, "99")
    assert bad.exit_code == 2 and "no row 99" in bad.output


def test_cli_ignore_from_report_wildcards_the_client(site):
    fx.write(site, fx.day(1) + fx.anomaly("new_service", 1), "day1")
    res = diff(site)
    out = _run("ignore", res.report_id, "1")
    assert out.exit_code == 0, out.output
    text = (site.rules_path).read_text()
    assert 'client = "*"' in text and "service_port = 8080" in text
    # another client of that service (not from the DHCP pool): allowed by the wildcard
    rows: list[dict] = []
    t = fx.DAY0 + pd.Timedelta(days=2)
    fx._conversation(
        rows,
        t,
        "10.1.0.99",
        "00:16:3e:00:00:63",
        "10.1.0.25",
        fx.SERVER_MAC["10.1.0.25"],
        6,
        8080,
        __import__("random").Random(1),
    )
    fx.write(site, fx.day(2) + rows, "day2")
    assert diff(site, tables=["services"]).total == 0
    assert _keys(diff(site, tables=["hosts"]), "hosts") == [("10.1.0.99",)]


# ------------------------------------------------------------------ the anti-join itself


def test_key_hashes_ignore_chunking_and_slicing():
    t = pa.table({"a": ["10.0.0.1", "10.0.0.2", "x", ""], "p": pa.array([1, 2, 3, 4], pa.uint16())})
    h1, h2 = key_hashes(t, ["a", "p"])
    assert len(set(zip(h1.tolist(), h2.tolist(), strict=True))) == 4
    s1, s2 = key_hashes(t.slice(1, 2), ["a", "p"])
    assert s1.tolist() == h1[1:3].tolist() and s2.tolist() == h2[1:3].tolist()
    c = pa.concat_tables([t.slice(0, 1), t.slice(1)])
    assert key_hashes(c, ["a", "p"])[0].tolist() == h1.tolist()
    # a field boundary must matter: ("ab", "c") != ("a", "bc")
    u = pa.table({"x": ["ab", "a"], "y": ["c", "bc"]})
    v1, _ = key_hashes(u, ["x", "y"])
    assert v1[0] != v1[1]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["10.0.0.1", "10.0.0.2", "2001:db8::1", "dhcp"]),
            st.integers(0, 3),
            st.integers(1, 9),
        ),
        min_size=1,
        max_size=30,
    ),
    st.lists(
        st.tuples(st.sampled_from(["10.0.0.1", "10.0.0.9", "2001:db8::1"]), st.integers(0, 3)), max_size=10
    ),
)
def test_find_new_equals_a_plain_anti_join(rows, base):
    tc = TableConfig(name="t", keys=("src", "proto"))
    t0 = pd.Timestamp("2026-01-01", tz="UTC")
    df = pd.DataFrame(
        {
            "interval_start": [t0 + pd.Timedelta(minutes=5 * (i % 3)) for i in range(len(rows))],
            "src": [r[0] for r in rows],
            "proto": np.array([r[1] for r in rows], np.uint8),
            "packets": np.array([r[2] for r in rows], np.uint64),
            "bytes": np.array([r[2] * 100 for r in rows], np.uint64),
        }
    )
    df["first_seen"] = df["interval_start"]
    df["last_seen"] = df["interval_start"]
    df = df.groupby(["interval_start", "src", "proto"], as_index=False).agg(
        packets=("packets", "sum"),
        bytes=("bytes", "sum"),
        first_seen=("first_seen", "min"),
        last_seen=("last_seen", "max"),
    )
    bt = pa.table(
        {
            "src": pa.array([b[0] for b in base], pa.string()),
            "proto": pa.array([b[1] for b in base], pa.uint8()),
        }
    )
    batches = [bt.slice(0, len(base) // 2), bt.slice(len(base) // 2)]
    got = find_new(df, tc, [key_hashes(b, ["src", "proto"]) for b in batches], RuleSet([]), None)
    known = {(b[0], b[1]) for b in base}
    want = df[[(s, p) not in known for s, p in zip(df["src"], df["proto"], strict=True)]]
    exp = want.groupby(["src", "proto"]).agg(
        packets=("packets", "sum"), interval_start=("interval_start", "min")
    )
    g = got.set_index(["src", "proto"]).sort_index()
    assert sorted(g.index.tolist()) == sorted(exp.index.tolist())
    for k in exp.index:
        assert int(g.loc[k, "packets"]) == int(exp.loc[k, "packets"])
        assert g.loc[k, "interval_start"] == exp.loc[k, "interval_start"]
    assert (got["reason"] == "new").all()


def test_learned_baseline_finds_nothing_in_its_own_data(site):
    # the diff state says everything is diffed; forget it and diff the learning day again
    state = load_state(site)
    assert state.version == "v0001"
    res = diff(site, since=fx.DAY0, record=False)
    assert res.total == 0
    (site.baselines / "CURRENT.json").write_text(
        json.dumps({"version": "v0001", "files": {}, "last_report": None})
    )
    res = diff(site, record=False)
    # only the one-packet scan (below the thresholds) shows
    assert res.counts() == {"hosts": 1, "pairs": 1, "services": 1, "link": 1, "stations": 1}


# ------------------------------------------------------------------ a table added later (issue 8 item 9)


def test_cli_table_added_later_is_skipped_while_the_others_are_diffed(tmp_path):
    three = {k: v for k, v in fx.TABLES.items() if k != "link"}
    config = fx.write_config(tmp_path, tables=three)
    fx.write(config, fx.day(0), "day0")
    assert _run("learn").exit_code == 0
    config = fx.write_config(tmp_path)  # the user adds [tables.link] to flowdiff.toml
    fx.write(config, fx.day(1) + fx.anomaly("new_host", 1) + fx.anomaly("lldp", 1), "day1")
    out = _run("diff", "--format", "json")
    assert out.exit_code == 0, out.output
    cfg = tmp_path / "flowdiff.toml"
    line = f"table link has no baseline yet: flowdiff learn --table link --config {cfg}"
    assert f"Warning: {line}\n" in out.output and out.output.count("Warning:") == 1
    rows = [json.loads(x) for x in out.output.splitlines() if x.startswith("{")]
    assert {r["table"] for r in rows} == {"hosts", "pairs", "services", "stations"}
    assert ("hosts", "10.1.0.77") in {(r["table"], r.get("src")) for r in rows}
    res = load_report(config, rows[0]["report_id"])
    assert res.skipped == {"link": line} and "link" not in res.rows
    # the command in the warning works while the other tables keep their baseline
    learned = _run(*shlex.split(line.split(": ", 1)[1])[1:])
    assert learned.exit_code == 0, learned.output
    assert learned.output.startswith("link ") and "baseline v0002 (parent v0001)" in learned.output
    v2 = __import__("flowdiff.baseline", fromlist=["get_version"]).get_version(config)
    assert sorted(v2.tables) == ["hosts", "link", "pairs", "services", "stations"]
    fx.write(config, fx.day(2) + fx.anomaly("lldp", 2), "day2")
    again = _run("diff", "--format", "json")
    assert again.exit_code == 0 and "Warning" not in again.output
    # the LLDP frame was in link's learning window once only: below the thresholds, so still new
    assert [json.loads(x)["table"] for x in again.output.splitlines()] == ["link"]


def test_run_diffs_the_tables_that_have_a_baseline(tmp_path):
    from flowdiff.pipeline import run

    three = {k: v for k, v in fx.TABLES.items() if k != "link"}
    config = fx.write_config(tmp_path, tables=three)
    fx.write(config, fx.day(0), "day0")
    learn(config)
    config = fx.write_config(tmp_path)
    fx.write(config, fx.day(1) + fx.anomaly("new_host", 1), "day1")
    out = _run("run")  # the cron job: the other tables are diffed, a report is archived
    assert out.exit_code == 0, out.output
    assert "report " in out.output and "Error" not in out.output
    fx.write(config, fx.day(2) + fx.anomaly("new_pair", 2), "day2")
    res = run(config)
    assert list(res.diff.skipped) == ["link"] and res.diff.skipped["link"].startswith("table link has no")
    assert res.new_rows and set(res.diff.counts()) == {"pairs", "services"}


def test_a_baseline_for_another_definition_is_still_an_error(site, tmp_path):
    tables = {k: dict(v) for k, v in fx.TABLES.items()}
    tables["link"]["collapse_random_macs"] = False
    changed = fx.write_config(tmp_path, tables=tables)
    with pytest.raises(BaselineError, match="link.*another table definition"):
        diff(changed)


# ------------------------------------------------------------------ pasted commands (issue 8 item 7)


def test_commands_in_a_report_carry_the_config_and_work_from_another_directory(site, tmp_path, monkeypatch):
    from flowdiff.report import render_report

    fx.write(site, fx.day(1) + fx.anomaly("new_service", 1) + fx.anomaly("new_host", 1), "day1")
    res = diff(site)
    cfg = f"--config {tmp_path / 'flowdiff.toml'}"
    services = res.rows["services"]
    svc = services[services["service_port"] == 8080].iloc[0]
    assert svc["accept_cmd"] == (
        "flowdiff accept services --where client=dhcp --where server=10.1.0.25 --where proto=tcp "
        f"--where service_port=8080 {cfg}"
    )
    text = render_report(res, site).text
    assert "client=dhcp server=10.1.0.25 proto=tcp service_port=8080" in text
    assert "proto=6" not in text and "--where proto=tcp" in text
    assert f"{fx.INTERVALS} intervals from" in text  # the footer counts intervals, not table-intervals
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    out = _run(*shlex.split(svc["accept_cmd"])[1:])
    assert out.exit_code == 0, out.output
    deny = _run(*shlex.split(res.rows["hosts"]["deny_cmd"].iloc[0])[1:])
    assert deny.exit_code == 0, deny.output
    assert not (elsewhere / "baselines").exists() and not (elsewhere / "store").exists()
    fx.write(site, fx.day(2) + fx.anomaly("new_service", 2) + fx.anomaly("new_host", 2), "day2")
    again = diff(site)
    assert 8080 not in set(again.rows["services"]["service_port"])  # accepted
    assert [r.startswith("deny-rule ") for r in again.rows["hosts"]["reason"]] == [True]


def test_link_commands_print_ethertypes_as_every_command_takes_them(site):
    fx.write(site, fx.day(1) + fx.anomaly("lldp", 1), "day1")
    res = diff(site)
    cmd = res.rows["link"]["accept_cmd"].iloc[0]
    assert "--where ethertype=0x88cc" in cmd
    assert _run(*shlex.split(cmd)[1:]).exit_code == 0
    assert _run("diff", "--format", "json").output == ""


def test_cli_no_new_rows_counts_intervals(site):
    fx.write(site, fx.day(1), "day1")
    out = _run("diff")
    assert out.exit_code == 0 and out.output == f"no new rows ({fx.INTERVALS} intervals diffed)\n"
