"""learn / accept / history / show / diff / rollback: versioned, immutable baselines."""

from __future__ import annotations

import json

import fixtures_baseline as fx
import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from flowdiff.baseline import (
    current_version,
    diff_versions,
    get_version,
    history,
    learn,
    rollback,
    show,
)
from flowdiff.cli import main as flowdiff_main
from flowdiff.diff import diff
from flowdiff.errors import BaselineError, LearnRefused
from flowdiff.state import load_state
from flowdiff.triage import accept


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A store with two normal days and a one-packet scan on day 0; nothing learned yet."""
    root = tmp_path_factory.mktemp("stored")
    config = fx.write_config(root)
    fx.write(config, fx.day(0) + fx.scan(0), "day0")
    fx.write(config, fx.day(1), "day1")
    return root


@pytest.fixture
def site(stored, tmp_path):
    return fx.copy_site(stored, tmp_path)


def _cli(*args: str):
    return CliRunner().invoke(flowdiff_main, list(args))


def test_learn_uses_every_interval_and_the_evidence_thresholds(site):
    res = learn(site, by="alice")
    assert res.version == "v0001" and res.parent is None
    hosts = res.tables["hosts"]
    assert hosts.intervals == 2 * fx.INTERVALS
    assert hosts.since == fx.DAY0 and hosts.until == fx.DAY0 + pd.Timedelta(
        days=1, seconds=fx.INTERVALS * 300
    )
    # the one-packet scan was seen, but is not frozen as normal
    assert hosts.below_threshold == 1 and hosts.rows == hosts.candidates - 1
    rows = show(site, "hosts")["hosts"]
    assert "198.51.100.7" not in set(rows["src"]) and "dhcp" in set(rows["src"])
    assert list(rows.columns) == ["src", "first_seen", "last_seen", "intervals", "packets", "bytes"]
    v = get_version(site)
    assert v.by == "alice" and v.action == "learn" and v.tables["hosts"].thresholds["min_packets"] == 2
    # the learned intervals count as diffed
    assert diff(site).total == 0


def test_thresholds_from_arguments(site):
    res = learn(site, tables=["hosts"], min_packets=1, min_intervals=1)
    assert res.tables["hosts"].below_threshold == 0
    assert "198.51.100.7" in set(show(site, "hosts")["hosts"]["src"])
    assert list(res.tables) == ["hosts"]


def test_learn_window_since_until_and_last(site):
    day1 = fx.DAY0 + pd.Timedelta(days=1)
    assert learn(site, tables=["hosts"], since=day1).tables["hosts"].intervals == fx.INTERVALS
    assert learn(site, tables=["hosts"], until=day1).tables["hosts"].intervals == fx.INTERVALS
    # --last counts back from the end of the newest stored interval, not from the wall clock
    assert learn(site, tables=["hosts"], last="10m").tables["hosts"].intervals == 2
    assert learn(site, tables=["hosts"], last="2d").tables["hosts"].intervals == 2 * fx.INTERVALS
    with pytest.raises(BaselineError, match="positive duration"):
        learn(site, last="0")


def test_only_named_tables_are_relearned_and_state_is_kept(site):
    learn(site)
    first = get_version(site)
    learn(site, tables=["link"])
    second = get_version(site)
    assert second.parent == first.id
    assert second.tables["hosts"] == first.tables["hosts"]  # same immutable file
    assert second.tables["link"].file == first.tables["link"].file  # same content, stored once
    assert sorted(p.name for p in (site.baselines / "versions").iterdir()) == ["v0001.json", "v0002.json"]


def test_versions_are_immutable_files_with_metadata(site):
    learn(site, reason="first week")
    v1 = (site.baselines / "versions" / "v0001.json").read_text()
    fx.write(site, fx.day(2) + fx.anomaly("new_host", 2), "day2")
    report = diff(site)
    accept(site, report.report_id, reason="new web server", by="bob")
    assert (site.baselines / "versions" / "v0001.json").read_text() == v1
    entry = get_version(site).tables["hosts"]
    meta = json.loads(pq.read_schema(site.baselines / entry.file).metadata[b"flowdiff.baseline"])
    assert (
        meta["table"] == "hosts" and meta["hash"] == entry.hash and meta["definition"]["collapse"] == ["dhcp"]
    )
    assert meta["window"]["intervals"] == 2 * fx.INTERVALS
    hist = history(site)
    assert [(v.id, v.parent, v.action, v.by) for v in hist] == [
        ("v0001", None, "learn", hist[0].by),
        ("v0002", "v0001", "accept", "bob"),
    ]
    assert hist[0].reason == "first week" and "new web server" in hist[1].reason
    # no temp files anywhere in the baselines directory
    assert not [p for p in site.baselines.rglob("*") if p.name.endswith(".tmp")]


def test_accept_by_table_where_and_exact_key(site):
    learn(site)
    fx.write(site, fx.day(2) + fx.anomaly("new_service", 2) + fx.anomaly("new_pair", 2), "day2")
    diff(site)
    res = accept(site, table="services", where=["server=10.1.0.0/24", "service_port=8080"], reason="ok")
    assert res.total == 1 and res.added["services"].iloc[0]["service_port"] == 8080
    # the other reported services row is still waiting
    left = load_state(site).reported("services", site.tables["services"].keys)
    assert list(left["service_port"]) == [53]
    with pytest.raises(BaselineError, match="no reported row"):
        accept(site, table="services", where={"service_port": "9999"})
    # every key field given exactly: accepted although it was never seen
    res = accept(site, table="hosts", where={"src": "10.1.0.200"}, reason="new printer")
    assert res.version == "v0003" and "10.1.0.200" in set(show(site, "hosts")["hosts"]["src"])
    with pytest.raises(BaselineError, match="no key field 'dst'"):
        accept(site, table="hosts", where={"dst": "1.2.3.4"})


def test_show_filters_and_diff_versions(site):
    learn(site)
    accept(
        site,
        table="services",
        where={"client": "10.9.9.9", "server": "10.1.0.25", "proto": "6", "service_port": "587"},
    )
    shown = show(site, "services", where=["service_port=500-600"])["services"]
    assert list(shown["client"]) == ["10.9.9.9"]
    d = diff_versions(site, 1, "v2")
    assert list(d.added) == ["services"] and not d.removed and d.total == 1
    back = diff_versions(site, "v0002", "v0001")
    assert list(back.removed) == ["services"] and len(back.removed["services"]) == 1
    with pytest.raises(BaselineError, match="no baseline version v0009"):
        diff_versions(site, 1, 9)


def test_rollback_is_a_new_version_with_old_content(site):
    learn(site)
    accept(site, table="hosts", where={"src": "10.1.0.200"})
    v = rollback(site, "v1", by="carol")
    assert v.id == "v0003" and v.parent == "v0002" and v.reason == "rollback to v0001"
    assert current_version(site) == "v0003"
    assert get_version(site).tables == get_version(site, 1).tables
    assert "10.1.0.200" not in set(show(site, "hosts")["hosts"]["src"])


def test_definition_change_is_refused_until_relearned(site, tmp_path):
    learn(site)
    tables = {k: dict(v) for k, v in fx.TABLES.items()}
    tables["services"]["collapse"] = []
    changed = fx.write_config(tmp_path, tables=tables)
    with pytest.raises(BaselineError, match=r"services.*another table definition.*collapse"):
        diff(changed)
    with pytest.raises(BaselineError, match="another table definition"):
        accept(
            changed,
            table="services",
            where={"client": "1.2.3.4", "server": "10.1.0.25", "proto": 6, "service_port": 25},
        )
    learn(changed, tables=["services"])
    assert diff(changed).total == 0


def test_both_directions_drops_one_way_keys(site):
    res = learn(site, tables=["pairs"], both_directions=True)
    pairs = show(site, "pairs")["pairs"]
    keys = set(zip(pairs["src"], pairs["dst"], strict=True))
    assert all((d, s) in keys for s, d in keys)
    assert res.tables["pairs"].below_threshold >= 1


def test_learn_with_an_empty_store_is_refused(tmp_path):
    config = fx.write_config(tmp_path)
    with pytest.raises(LearnRefused, match="hold no intervals yet") as e:
        learn(config)
    assert set(e.value.empty) == set(config.tables)
    assert _written(config) == []


# ------------------------------------------------------------------ CLI


def test_cli_learn_history_show_diff_rollback(site):
    out = _cli("learn", "--by", "dave", "--reason", "week 1")
    assert out.exit_code == 0, out.output
    assert "hosts" in out.output and "baseline v0001 (parent none)" in out.output
    assert _cli("accept", "hosts", "--where", "src=10.1.0.200").exit_code == 0
    hist = _cli("baseline", "history", "--format", "json")
    recs = [json.loads(x) for x in hist.output.splitlines()]
    # one record per version and table, with the table's learning window
    assert [(r["version"], r["table"]) for r in recs] == [
        (v, t) for v in ("v0001", "v0002") for t in [*fx.TABLES, "stations"]
    ]
    assert {r["current"] for r in recs if r["version"] == "v0002"} == {"*"}
    hosts = next(r for r in recs if r["table"] == "hosts")
    window = (hosts["since"], hosts["until"], hosts["intervals"])
    assert window == ("2026-11-02T08:00:00Z", "2026-11-03T08:20:00Z", 2 * fx.INTERVALS)
    shown = _cli("baseline", "show", "--table", "hosts", "--where", "src=10.1.0.0/24", "--format", "csv")
    assert shown.exit_code == 0 and "10.1.0.200" in shown.output and "dhcp" not in shown.output
    d = _cli("baseline", "diff", "v1", "v2")
    assert d.exit_code == 0 and "+" in d.output and "10.1.0.200" in d.output
    rb = _cli("baseline", "rollback", "1")
    assert rb.exit_code == 0 and "v0003" in rb.output
    assert "same keys" in _cli("baseline", "diff", "1", "3").output


def test_cli_errors_are_one_line_exit_2(site):
    for args in (["baseline", "show"], ["diff"], ["baseline", "rollback", "7"], ["accept", "hosts"]):
        out = _cli(*args)
        assert out.exit_code == 2, (args, out.output)
        assert out.output.startswith("Error: ") and len(out.output.strip().splitlines()) == 1


def test_every_command_has_help():
    names = ["learn", "diff", "accept", "deny", "ignore", "baseline"]
    assert set(names) <= set(flowdiff_main.commands)
    for name in names:
        assert flowdiff_main.commands[name].help
    for sub in ("history", "show", "diff", "rollback"):
        assert flowdiff_main.commands["baseline"].commands[sub].help


# ------------------------------------------------------------------ refusals (issue 8 item 5)


def _written(config) -> list[str]:
    """Every file under the baselines directory (a refused learn must leave this unchanged)."""
    if not config.baselines.is_dir():
        return []
    files = (p for p in config.baselines.rglob("*") if p.is_file() and p.name != ".lock")
    return sorted(str(p.relative_to(config.baselines)) for p in files)


def test_cli_learn_with_an_inverted_window_is_refused_and_writes_nothing(site):
    assert _cli("learn").exit_code == 0
    before = _written(site)
    out = _cli("learn", "--since", "2020-01-01", "--until", "2010-01-01")
    assert out.exit_code == 2, out.output
    assert len(out.output.strip().splitlines()) == 1
    assert out.output.startswith("Error: learn refused, nothing written: tables hosts, pairs, services, link")
    assert "since 2020-01-01T00:00:00Z is not before until 2010-01-01T00:00:00Z" in out.output
    assert _written(site) == before and current_version(site) == "v0001"
    # the next diff sees a normal day as normal (the report was 1,427 rows with an empty baseline)
    fx.write(site, fx.day(2), "day2")
    assert diff(site).total == 0


def test_learn_window_without_data_is_refused_unless_forced(site):
    with pytest.raises(LearnRefused, match=r"no interval in the window 2030-01-01T00:00:00Z \.\. end") as e:
        learn(site, since="2030-01-01")
    assert set(e.value.empty) == set(site.tables) and _written(site) == []
    assert "--force freezes an empty baseline instead" in str(e.value)
    # forced: an empty baseline on purpose (every row is new from now on)
    res = learn(site, tables=["hosts"], since="2030-01-01", force=True)
    hosts = res.tables["hosts"]
    assert (hosts.rows, hosts.intervals, hosts.forced, hosts.since) == (0, 0, True, None)
    assert get_version(site).tables["hosts"].window["since"] == "2030-01-01T00:00:00Z"


def test_learn_of_a_table_without_data_names_it_and_the_way_out(site, tmp_path):
    tables = {**fx.TABLES, "t5": {"keys": ["src", "dst", "proto", "sport", "dport"]}}
    config = fx.write_config(tmp_path, tables=tables)
    with pytest.raises(LearnRefused) as e:
        learn(config)
    assert list(e.value.empty) == ["t5"]
    assert str(e.value) == (
        "learn refused, nothing written: table t5 holds no intervals yet (collect captures for it first); "
        "to learn the other tables only: flowdiff learn --table hosts --table pairs --table services "
        "--table link --table stations (--force freezes an empty baseline instead: every row of it will be new)"
    )


def test_learn_that_drops_more_than_half_of_a_table_is_refused_unless_forced(site):
    learn(site)
    now = get_version(site).tables["hosts"].rows
    before = _written(site)
    with pytest.raises(LearnRefused) as e:
        learn(site, tables=["hosts"], min_packets=500)  # only the busiest key (dhcp) has the evidence
    after = e.value.changes["hosts"][1]
    assert 0 < after and (now - after) * 2 > now
    assert f"table hosts: keys now {now}, after {after} ({now - after} dropped" in str(e.value)
    assert "--force" in str(e.value) and _written(site) == before
    # a drop of less than half is a normal relearn
    kept = learn(site, tables=["hosts"], min_packets=200).tables["hosts"]
    assert (now - kept.rows) * 2 <= now and not kept.forced and kept.keys_before == now
    res = learn(site, tables=["hosts"], min_packets=500, force=True)
    assert res.tables["hosts"].forced and res.tables["hosts"].rows == after
    assert set(show(site, "hosts")["hosts"]["src"]) == {"dhcp"}


def test_learn_whose_keys_all_fall_below_the_thresholds_is_a_drop(site):
    learn(site)
    n_pairs = get_version(site).tables["pairs"].rows
    want = r"pairs: keys now \d+, after 0 \(none of the \d+ keys seen in 8 intervals meets min_intervals 2, "
    with pytest.raises(LearnRefused, match=want + r"min_packets 1000000\)"):
        learn(site, tables=["pairs"], min_packets=10**6)
    assert get_version(site).tables["pairs"].rows == n_pairs


def test_first_learn_with_too_little_evidence_is_refused(tmp_path):
    config = fx.write_config(tmp_path)
    fx.write(config, fx.day(0, intervals=1), "day0")  # one interval: nothing meets min_intervals 2
    out = _cli("learn")
    assert out.exit_code == 2 and len(out.output.strip().splitlines()) == 1
    assert "table hosts: keys now 0, after 0 (none of the" in out.output
    assert "in 1 intervals meets min_intervals 2, min_packets 2" in out.output
    assert current_version(config) is None
    forced = _cli("learn", "--force", "--format", "json")
    assert forced.exit_code == 0, forced.output
    recs = [json.loads(x) for x in forced.output.splitlines()]
    assert {r["table"]: (r["keys"], r["forced"]) for r in recs} == {
        t: (0, True) for t in [*fx.TABLES, "stations"]
    }


def test_cli_learn_force_and_the_previous_key_count(site):
    assert _cli("learn").exit_code == 0
    refused = _cli("learn", "--table", "hosts", "--min-packets", "500")
    assert refused.exit_code == 2 and "table hosts: keys now 6, after 1" in refused.output
    forced = _cli("learn", "--table", "hosts", "--min-packets", "500", "--force")
    assert forced.exit_code == 0, forced.output
    assert "1 keys frozen" in forced.output and "6 before" in forced.output and "(forced)" in forced.output


# ------------------------------------------------------------------ options (issue 8 item 13, issue 9 item 4)


def test_cli_bad_times_and_durations_name_the_option(site):
    out = _cli("diff", "--since", "yesterday")
    assert out.exit_code == 2
    assert out.output.startswith("Error: --since: 'yesterday' is neither a time")
    assert out.output.count("\n") == 1
    out = _cli("learn", "--until", "soon")
    assert out.exit_code == 2 and out.output.startswith("Error: --until: 'soon' is neither")
    out = _cli("learn", "--last", "7x")
    assert out.exit_code == 2
    assert out.output == "Error: --last: '7x' is not a duration (like 90s, 30m, 12h, 7d or 2w)\n"
    assert _written(site) == []


def test_cli_learn_and_diff_take_store(site, tmp_path):
    out = _cli("learn", "--store", str(tmp_path / "elsewhere"))
    assert out.exit_code == 2 and "hold no intervals yet" in out.output
    assert _cli("learn").exit_code == 0
    fx.write(site, fx.day(2) + fx.anomaly("new_host", 2), "day2")
    assert _cli("diff", "--dry-run", "--store", str(tmp_path / "elsewhere")).output == (
        "no new rows (0 intervals diffed)\n"
    )
    assert "== hosts: 1 new" in _cli("diff", "--dry-run").output


def test_cli_baseline_show_takes_the_table_as_argument_or_option(site):
    learn(site)
    pos = _cli("baseline", "show", "services", "--format", "json")
    assert pos.exit_code == 0, pos.output
    recs = [json.loads(x) for x in pos.output.splitlines()]
    assert {r["table"] for r in recs} == {"services"} and len(recs) == len(show(site, "services")["services"])
    both = _cli("baseline", "show", "services", "--table", "hosts", "--format", "csv")
    df = pd.read_csv(pd.io.common.StringIO(both.output))
    assert set(df["table"]) == {"services", "hosts"}
    table = _cli("baseline", "show", "services", "--where", "proto=tcp", "--limit", "2")
    assert table.exit_code == 0 and "== services (2 rows)" in table.output and " tcp " in table.output
    bad = _cli("baseline", "show", "nosuch")
    assert bad.exit_code == 2 and "no table 'nosuch'" in bad.output


def test_cli_history_shows_each_versions_window_per_table(site):
    learn(site)
    learn(site, tables=["hosts"], since=fx.DAY0 + pd.Timedelta(days=1))
    out = _cli("baseline", "history", "--table", "hosts", "--format", "csv")
    df = pd.read_csv(pd.io.common.StringIO(out.output), keep_default_na=False)
    assert list(df["version"]) == ["v0001", "v0002"] and set(df["table"]) == {"hosts"}
    assert list(df["intervals"]) == [2 * fx.INTERVALS, fx.INTERVALS]
    assert list(df["since"]) == ["2026-11-02T08:00:00Z", "2026-11-03T08:00:00Z"]
    assert list(df["current"]) == ["", "*"]
    text = _cli("baseline", "history").output
    assert "since" in text and "until" in text and "2026-11-03T08:20:00Z" in text
    # the version fields once per version, then one line per table
    assert sum("v0002" in line for line in text.splitlines()) == 1
    assert len(text.strip().splitlines()) == 1 + 2 * (len(fx.TABLES) + 1)  # + stations


def test_results_carry_their_exit_codes(site):
    from flowdiff.exitcodes import ExitCode

    res = learn(site)
    assert res.exit_code == ExitCode.OK
    assert history(site).exit_code == ExitCode.OK and show(site, "hosts").exit_code == ExitCode.OK
    assert diff_versions(site, 1, 1).exit_code == ExitCode.OK and rollback(site, 1).exit_code == ExitCode.OK
    fx.write(site, fx.day(2) + fx.anomaly("new_host", 2), "day2")
    found = diff(site, dry_run=True)
    assert found.exit_code(exit_on_new=True) == ExitCode.NEW_ROWS and found.exit_code() == ExitCode.OK
    assert diff(site, dry_run=True).total == found.total  # dry_run recorded nothing


def test_learn_chunks_keep_to_a_day_and_their_size():
    """A chunk never straddles a UTC midnight (a day is one day file) nor exceeds its size."""
    from flowdiff.baseline import _chunks

    starts = list(pd.date_range("2026-11-01T22:00Z", periods=40, freq="5min"))  # 22:00 .. 01:15
    chunks = _chunks(starts, 10)
    assert [s for c in chunks for s in c] == starts
    assert [len(c) for c in chunks] == [10, 10, 4, 10, 6]
    assert all(len({s.floor("D") for s in c}) == 1 for c in chunks)
