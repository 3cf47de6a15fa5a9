"""flowdiff demo: the whole pipeline on the generated enclave finds exactly the injected anomalies."""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner
from smtp_server import make_server

from flowdiff.cli.demo_cmds import register
from flowdiff.config import MailConfig
from flowdiff.demo import DemoResult, demo_config, run_demo
from flowdiff.demo.scenario import SCENARIO_START, Scenario, format_value
from flowdiff.errors import FlowdiffError
from flowdiff.exitcodes import ExitCode


@pytest.fixture(scope="module")
def smtp(tmp_path_factory):
    srv = make_server(tmp_path_factory.mktemp("smtp"), "none")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def demo(tmp_path_factory, smtp) -> DemoResult:
    """One demo run, with [mail] pointing at a real SMTP server on loopback."""
    mail = MailConfig(**smtp.mail_kwargs())
    return run_demo(tmp_path_factory.mktemp("demo") / "work", config_overrides={"mail": mail})


def _cli() -> click.Group:
    @click.group()
    def main() -> None:
        """test group"""

    register(main)
    return main


def test_finds_exactly_the_injected_anomalies(demo):
    found = {f.row for f in demo.findings}
    assert found == demo.scenario.expected_rows()
    assert demo.ok and not demo.missing and not demo.unexpected
    assert demo.exit_code == ExitCode.OK
    # every anomaly caused at least one row and each row is attributed to its anomaly
    for anomaly, findings in demo.by_anomaly():
        assert findings and {f.row for f in findings} == set(anomaly.rows)
    assert demo.diff.total == len(demo.scenario.expected_rows())
    assert all(f.reason in ("new", "new station") and f.packets > 0 for f in demo.findings)


def test_the_report_shows_the_4_anomalies_as_exactly_4_incidents(demo):
    """The demo groups by the report's incidents, not by what it injected (issue 14)."""
    pairs = demo.by_incident()
    assert len(demo.diff.incidents) == len(demo.scenario.anomalies) == 4
    assert [a.name for _, a, _ in pairs] == ["new-talker", "telnet", "mail-outbound", "odd-ethertype"]
    for inc, anomaly, found in pairs:
        assert {f.row for f in found} == set(anomaly.rows) and len(inc.rows) == len(anomaly.rows)
    assert [inc.title for inc, _, _ in pairs] == [
        "new station 10.20.0.99 b8:27:eb:5a:9c:01, 9 rows",
        "new service 10.20.0.10 tcp/23 from internet",
        "new service internet tcp/6667 from 10.20.0.10",
        "new ethertype 0x88b5 from f4:8e:38:64:00:03",
    ]
    saved = json.loads((demo.report_dir / "incidents.json").read_text(encoding="utf-8"))
    assert [i["title"] for i in saved] == [inc.title for inc, _, _ in pairs]


def test_learned_the_week_and_diffed_only_the_last_day(demo):
    sc = demo.scenario
    assert all(lt.intervals == sc.days * 86400 // sc.interval for lt in demo.learn.tables.values())
    assert demo.diff.since >= sc.last_day and demo.diff.until <= sc.last_day_end
    assert demo.collect.errors == []
    for f in demo.findings:
        assert sc.last_day <= f.first_seen < sc.last_day_end


def test_report_is_archived_with_the_new_rows(demo):
    assert demo.report_html is not None and demo.report_html.is_file()
    html = demo.report_html.read_text(encoding="utf-8")
    assert "10.20.0.99" in html and "6667" in html
    rows = json.loads((demo.report_dir / "rows.json").read_text(encoding="utf-8"))
    assert len(rows) == len(demo.scenario.expected_rows())
    assert {r["table"] for r in rows} == {r.table for r in demo.scenario.expected_rows()}


def test_report_is_mailed_when_mail_is_configured(demo, smtp):
    assert demo.mail_enabled and demo.message_id and demo.outbox.sent == [demo.message_id]
    (received,) = smtp.inbox.wait(1)
    msg = received.message
    assert msg["Message-ID"] == demo.message_id
    assert msg["Subject"] == "[flowdiff demo] 4 incidents, 12 new rows"
    assert received.rcpt_tos == list(demo.config.mail.to)
    body = msg.get_body(("plain",)).get_content()
    assert "10.20.0.99" in body and "6667" in body


def test_config_file_written_for_the_cli(demo):
    from flowdiff.config import load_config

    cfg = load_config(demo.workdir / "flowdiff.toml")
    assert cfg.tables == demo.config.tables and cfg.networks == demo.config.networks
    assert cfg.store == demo.config.store


def test_cli_rerun_in_the_same_workdir_names_the_same_anomalies(demo):
    """Runs last in this module: it rebuilds the fixture's work directory from scratch."""
    out = CliRunner().invoke(_cli(), ["demo", "--workdir", str(demo.workdir)], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    text = out.output
    assert "Found exactly the 4 injected anomalies, as 4 incidents:" in text
    assert "  1. new station 10.20.0.99 b8:27:eb:5a:9c:01, 9 rows" in text
    for anomaly in demo.scenario.anomalies:
        assert anomaly.name in text and anomaly.description in text
    # the rows printed are the rows of the first run: a rerun is stable
    printed = {
        ln.split()[0] + " " + " ".join(w for w in ln.split() if "=" in w)
        for ln in text.splitlines()
        if "=" in ln and not ln.startswith("Explore")
    }
    want = {
        f.row.table + " " + " ".join(f"{k}={format_value(k, v)}" for k, v in f.row.key) for f in demo.findings
    }
    assert printed == want
    assert "report.html" in text and "mail is not configured" in text
    assert len(list((demo.workdir / "reports").glob("*/report.html"))) == 1  # rebuilt, not accumulated


def test_refuses_a_directory_it_did_not_make(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(FlowdiffError, match="not made by `flowdiff demo`"):
        run_demo(tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "keep me"
    r = CliRunner().invoke(_cli(), ["demo", "--workdir", str(tmp_path)])
    assert r.exit_code == 2 and "Error:" in r.output


def test_only_mail_and_report_settings_can_be_overridden(tmp_path):
    sc = Scenario(
        directory=tmp_path,
        start=SCENARIO_START,
        days=7,
        rotate=3600,
        seed=0,
        normal_files=(),
        last_day_files=(),
        anomalies=(),
        packets=0,
    )
    cfg = demo_config(sc, tmp_path, {"max_rows": 5, "mail": None})
    assert cfg.max_rows == 5 and cfg.store == tmp_path.resolve() / "store" and not cfg.mail.enabled
    assert set(cfg.tables) == set(sc.tables) | {"stations"} and cfg.networks == sc.networks
    with pytest.raises(FlowdiffError, match="cannot override tables"):
        demo_config(sc, tmp_path, {"tables": {}})
