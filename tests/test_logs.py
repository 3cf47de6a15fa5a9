"""Syslog files through collect, learn, diff, accept, deny and the report (the messages table), and
`flowdiff logs parse`: the user's exact commands with CliRunner, the store read back with pandas."""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from flowdiff.cli import main as flowdiff_main
from flowdiff.collect import collect
from flowdiff.config import load_config
from flowdiff.errors import ConfigError
from flowdiff.store import Store

CONFIG = """\
interval = "1h"
sensor = "s1"
[logs]
[tables.messages]
keys = ["host", "program", "template"]
min_intervals = 1
min_packets = 1
"""

MON = [
    "Dec  1 08:00:01 mx postfix/smtpd[100]: connect from unknown[192.0.2.10]",
    "Dec  1 08:00:02 mx postfix/smtpd[100]: 4F1A2B3C4D: client=unknown[192.0.2.10]",
    "Dec  1 08:10:00 gw sshd[2001]: Accepted publickey for alice from 10.0.0.5 port 50122 ssh2",
    "Dec  1 08:20:00 gw sshd[2002]: Failed password for root from 203.0.113.9 port 52144 ssh2",
    "Dec  1 09:00:00 gw CRON[3000]: (root) CMD (run-parts /etc/cron.hourly)",
    "this line is not syslog at all",
]
FRI = [
    "Dec  5 10:00:01 mx postfix/smtpd[900]: connect from unknown[198.51.100.7]",
    "Dec  5 10:10:00 gw sshd[7001]: Accepted publickey for bob from 10.0.0.9 port 61001 ssh2",
    "Dec  5 10:20:00 gw sshd[7002]: Failed password for root from 198.51.100.66 port 40000 ssh2",
    "Dec  5 10:30:00 gw sudo[7003]: pam_unix(sudo:auth): authentication failure; logname=eve uid=1001",
]
DENIED = "Failed password for <USER> from <IP> port <NUM> <NUM>"


def run(*args: str):
    return CliRunner().invoke(flowdiff_main, list(args), catch_exceptions=False)


def write_log(
    path: Path, lines: list[str], *, gz: bool = False, mtime: str = "2026-12-06T00:00:00+00:00"
) -> Path:
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    t = pd.Timestamp(mtime).value
    os.utime(path, ns=(t, t))
    return path


@pytest.fixture
def cfg(write_config) -> Path:
    return write_config(CONFIG)


def messages(cfg: Path) -> pd.DataFrame:
    return Store(load_config(cfg).store).read("messages")


def test_collect_plain_gzip_and_rotated_files_then_nothing_twice(cfg, tmp_path):
    logs = tmp_path / "remote"
    logs.mkdir()
    write_log(logs / "syslog.2.gz", MON[:3], gz=True, mtime="2026-12-01T12:00:00+00:00")
    write_log(logs / "syslog.1", MON[3:], mtime="2026-12-02T00:00:00+00:00")
    write_log(logs / "syslog", FRI, mtime="2026-12-06T00:00:00+00:00")
    r = run("collect", "--config", str(cfg), "--all", str(logs))
    assert r.exit_code == 0, r.output
    assert "3 files collected, 10 packets" in r.output
    df = messages(cfg)
    assert int(df["packets"].sum()) == len(MON) + len(FRI)  # the bad line too
    bad = df[df["host"] == "-"]
    assert bad["program"].tolist() == ["-"] and bad["template"].tolist() == ["this line is not syslog at all"]
    assert int(df["bytes"].sum()) == sum(len(x.encode()) for x in MON + FRI)
    connect = df[df["template"] == "connect from <HOST>[<IP>]"]
    assert connect["packets"].tolist() == [1, 1] and set(connect["program"]) == {"postfix/smtpd"}
    before = sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "store").rglob("*.parquet"))
    again = run("collect", "--config", str(cfg), "--all", str(logs))
    assert "0 files collected" in again.output and "3 already collected" in again.output
    after = sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "store").rglob("*.parquet"))
    assert after == before


def test_logrotate_rename_and_compression_are_recognised(cfg, tmp_path):
    d = tmp_path / "log"
    d.mkdir()
    first = write_log(d / "syslog", MON)
    assert run("collect", "--config", str(cfg), str(first)).exit_code == 0
    first.rename(d / "syslog.1")  # logrotate: rename, then compress the next day
    run("collect", "--config", str(cfg), str(d / "syslog.1"))
    (d / "syslog.2.gz").write_bytes(gzip.compress((d / "syslog.1").read_bytes()))
    (d / "syslog.1").unlink()
    r = run("collect", "--config", str(cfg), str(d / "syslog.2.gz"))
    assert "1 already collected" in r.output
    assert int(messages(cfg)["packets"].sum()) == len(MON)


def test_the_newest_log_of_a_spool_waits_until_it_is_closed(write_config, tmp_path):
    cfg = write_config(CONFIG.replace('sensor = "s1"', 'sensor = "s1"\nsettle = "10m"'))
    spool = tmp_path / "spool"
    spool.mkdir()
    write_log(spool / "syslog-20261201T08.log", MON, mtime="2026-12-01T09:00:00+00:00")
    newest = spool / "syslog-20261201T09.log"
    newest.write_text(FRI[0] + "\n")  # just written: rsyslog or the listener is still at it
    res = collect([spool], load_config(cfg))
    assert [Path(f.path).name for f in res.files] == ["syslog-20261201T08.log"]
    assert res.deferred == [str(newest)]


def test_a_syslog_file_without_a_log_table_is_named_not_dropped(tmp_path, caplog):
    log = write_log(tmp_path / "messages.log", MON)
    r = run("collect", str(log))  # built-in defaults: no [logs], no messages table
    assert r.exit_code == 0
    assert "1 not captures" in r.output
    assert any("no log table is configured" in m for m in caplog.messages)


def test_learn_diff_accept_deny_on_messages(write_config, tmp_path):
    cfg = write_config(CONFIG.replace('sensor = "s1"', 'sensor = "s1"\nrearm = "1h"'))
    mon = write_log(tmp_path / "mon.log", MON, mtime="2026-12-02T00:00:00+00:00")
    fri = write_log(tmp_path / "fri.log", FRI)
    assert run("collect", "--config", str(cfg), str(mon)).exit_code == 0
    r = run("learn", "--config", str(cfg), "--table", "messages")
    assert r.exit_code == 0, r.output
    # the failed root logins were part of Monday's normal: deny makes them always reported
    r = run(
        "deny", "messages", "--config", str(cfg), "--where", "program=sshd", "--where", f"template={DENIED}"
    )
    assert r.exit_code == 0, r.output
    assert run("collect", "--config", str(cfg), str(fri)).exit_code == 0
    r = run("diff", "--config", str(cfg), "--format", "json")
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in r.output.splitlines() if x.startswith("{")]
    got = {(x["program"], x["template"], x["reason"].split(" ")[0]) for x in rows}
    assert ("sshd", DENIED, "deny-rule") in got
    assert ("sudo", "pam_unix(sudo:auth): authentication failure; logname=eve uid=<*>", "new") in got
    assert not any(t.startswith("Accepted publickey") for _, t, _ in got)  # Monday's kind on Friday
    assert not any(t.startswith("connect from") for _, t, _ in got)
    report = next((tmp_path / "reports").glob("*/report.txt")).read_text()
    assert "example:    Dec  5 10:30:00 gw sudo[7003]: pam_unix(sudo:auth)" in report
    accept = next(
        line.split("accept:", 1)[1].strip()
        for line in report.splitlines()
        if "accept:" in line and "sudo" in line
    )
    assert accept.startswith(
        "flowdiff accept messages --where host=gw --where program=sudo --where 'template="
    )
    import shlex

    r = run(*shlex.split(accept)[1:])
    assert r.exit_code == 0, r.output
    # the next day: the accepted kind is quiet, the denied one is reported again (rearm)
    write_log(
        tmp_path / "sat.log", [x.replace("Dec  5", "Dec  6") for x in FRI], mtime="2026-12-07T00:00:00+00:00"
    )
    run("collect", "--config", str(cfg), str(tmp_path / "sat.log"))
    r = run("diff", "--config", str(cfg), "--format", "json")
    rows = [json.loads(x) for x in r.output.splitlines() if x.startswith("{")]
    assert [(x["program"], x["template"]) for x in rows] == [("sshd", DENIED)]


def test_report_html_shows_the_example_escaped(cfg, tmp_path):
    write_log(tmp_path / "a.log", MON[:1], mtime="2026-12-02T00:00:00+00:00")
    run("collect", "--config", str(cfg), str(tmp_path / "a.log"))
    run("learn", "--config", str(cfg), "--table", "messages")
    write_log(tmp_path / "b.log", ['Dec  5 10:00:00 web app[1]: bad input <script>x</script> from "q"'])
    run("collect", "--config", str(cfg), str(tmp_path / "b.log"))
    assert run("diff", "--config", str(cfg)).exit_code == 0
    html = next((tmp_path / "reports").glob("*/report.html")).read_text()
    assert "example: <code>Dec  5 10:00:00 web app[1]: bad input &lt;script&gt;" in html


@pytest.mark.parametrize("fmt", ["table", "csv", "json"])
def test_logs_parse(tmp_path, fmt):
    log = write_log(tmp_path / "x.log.gz", MON, gz=True)
    r = run("logs", "parse", str(log), "--format", fmt)
    assert r.exit_code == 0, r.output
    if fmt == "json":
        rows = [json.loads(x) for x in r.output.splitlines()]
        assert [x["line"] for x in rows] == list(range(1, len(MON) + 1))
        assert rows[2] == {
            "line": 3,
            "host": "gw",
            "program": "sshd",
            "template": "Accepted publickey for <USER> from <IP> port <NUM> <NUM>",
        }
        assert rows[5]["host"] == "-" and rows[5]["program"] == "-"
    elif fmt == "csv":
        lines = r.output.splitlines()
        assert lines[0] == "line,host,program,template" and len(lines) == len(MON) + 1
        assert lines[4].startswith("4,gw,sshd,Failed password for <USER> from <IP>")
    else:
        assert "postfix/smtpd" in r.output and "connect from <HOST>[<IP>]" in r.output


def test_logs_parse_of_a_missing_file_is_one_line(tmp_path):
    r = CliRunner().invoke(flowdiff_main, ["logs", "parse", str(tmp_path / "nope.log")])
    assert r.exit_code == 2 and "nope.log" in r.output and "Traceback" not in r.output


def test_config_refuses_mixing_log_and_packet_keys(write_config):
    p = write_config('[tables.bad]\nkeys = ["src", "template"]\n')
    with pytest.raises(ConfigError, match="cannot be mixed"):
        load_config(p)


def test_logs_section_adds_the_messages_table_and_checks_the_timezone(write_config):
    c = load_config(write_config('[logs]\npaths = ["remote"]\ntimezone = "Europe/Berlin"\n'))
    assert c.tables["messages"].keys == ("host", "program", "template")
    assert "hosts" in c.tables and c.logs.paths[0].name == "remote"
    with pytest.raises(ConfigError, match="time zone"):
        load_config(write_config('[logs]\ntimezone = "Mars/Olympus"\n', name="b.toml"))


def test_a_capture_and_a_log_in_one_collect(cfg, tmp_path, data_dir):
    pcap = next(p for p in sorted(data_dir.rglob("*.pcap")) if p.stat().st_size > 1000)
    shutil.copy(pcap, tmp_path / "c.pcap")
    write_log(tmp_path / "m.log", MON)
    cfg.write_text(CONFIG.replace("[tables.messages]", '[tables.hosts]\nkeys = ["src"]\n[tables.messages]'))
    r = run("collect", "--config", str(cfg), str(tmp_path / "c.pcap"), str(tmp_path / "m.log"))
    assert "2 files collected" in r.output, r.output
    assert run(
        "collect", "--config", str(cfg), str(tmp_path / "c.pcap"), str(tmp_path / "m.log")
    ).output.count("2 already collected")


def test_run_collects_logs_paths_and_says_when_one_matches_nothing(write_config, tmp_path, caplog):
    remote = tmp_path / "remote"
    remote.mkdir()
    write_log(remote / "20261201T08.log", MON, mtime="2026-12-01T09:00:00+00:00")
    os.utime(write_log(remote / "20261201T09.log", FRI[:1]))  # written just now
    cfg = write_config(CONFIG.replace("[logs]", '[logs]\npaths = ["remote", "gone/*.log"]'))
    r = run("run", "--config", str(cfg))
    assert r.exit_code == 0, r.output
    assert int(messages(cfg)["packets"].sum()) == len(MON)  # the newest file is still being written
    assert any("gone/*.log matches no file" in m for m in caplog.messages)


def test_lines_of_many_intervals_in_any_order_are_all_counted(cfg, tmp_path):
    """Lines out of time order (a relay's backlog): every interval file gets its rows."""
    hours = [5, 1, 3, 1, 5, 2, 4, 3, 1]
    lines = [f"Dec  1 {h:02d}:00:00 h{i % 2} p: event {i % 3}" for i, h in enumerate(hours)]
    write_log(tmp_path / "x.log", lines)
    assert run("collect", "--config", str(cfg), str(tmp_path / "x.log")).exit_code == 0
    df = messages(cfg)
    assert int(df["packets"].sum()) == len(lines)
    per_hour = df.groupby(df["interval_start"].dt.hour)["packets"].sum().to_dict()
    assert per_hour == {h: hours.count(h) for h in sorted(set(hours))}


def test_a_cut_gzip_log_keeps_its_lines_and_is_reported_once(cfg, tmp_path):
    lines = [
        f"Dec  1 08:{i // 60:02d}:{i % 60:02d} h p[{i}]: line {i} " + "x" * (i % 50) for i in range(3000)
    ]
    whole = gzip.compress(("\n".join(lines) + "\n").encode(), mtime=0)
    d = tmp_path / "logs"
    d.mkdir()
    (d / "cut.log.gz").write_bytes(whole[: len(whole) // 2])
    write_log(d / "fine.log", MON)
    r = CliRunner().invoke(flowdiff_main, ["collect", "--config", str(cfg), "--all", str(d)])
    assert r.exit_code == 0, r.output
    assert "2 files collected" in r.output
    damaged = [x for x in r.output.splitlines() if "cut.log.gz" in x]
    assert len(damaged) == 1 and "cannot read as syslog" in damaged[0] and "lines before it" in damaged[0]
    kept = int(damaged[0].split("kept the ")[1].split(" lines")[0].replace(",", ""))
    assert 0 < kept < len(lines)
    assert int(messages(cfg)["packets"].sum()) == kept + len(MON)
    again = run("collect", "--config", str(cfg), "--all", str(d))
    assert "2 already collected" in again.output and "cut.log.gz" not in again.output


def test_a_live_log_that_grew_is_read_from_where_it_was_left(cfg, tmp_path):
    live = write_log(tmp_path / "syslog", MON[:3])
    run("collect", "--config", str(cfg), str(live))
    with open(live, "a") as f:  # rsyslog appends
        f.write("\n".join(FRI) + "\n")
    r = run("collect", "--config", str(cfg), str(live))
    assert "1 file collected, 4 packets" in r.output, r.output
    assert int(messages(cfg)["packets"].sum()) == 3 + len(FRI)
    live.rename(tmp_path / "syslog.1")  # rotated: the same content, nothing new
    assert "1 already collected" in run("collect", "--config", str(cfg), str(tmp_path / "syslog.1")).output
    assert int(messages(cfg)["packets"].sum()) == 3 + len(FRI)


def test_a_log_only_listener_learns_without_naming_its_tables(write_config, tmp_path):
    """A box that only receives syslog defines only log tables: no packet tables and no stations
    table stand in the way of a plain `flowdiff learn` (they would stay empty forever)."""
    cfg = write_config(CONFIG)
    assert sorted(load_config(cfg).tables) == ["messages"]
    mon = write_log(tmp_path / "mon.log", MON, mtime="2026-12-02T00:00:00+00:00")
    assert run("collect", "--config", str(cfg), str(mon)).exit_code == 0
    r = run("learn", "--config", str(cfg))
    assert r.exit_code == 0, r.output
    assert r.output.startswith("messages ") and "stations" not in r.output
