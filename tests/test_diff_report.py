"""`flowdiff diff` archives the rendered report (issue 8 item 10), on a real store and baseline.

The learned site and its helpers come from test_pipeline (real captures of the synthetic enclave).
"""

from __future__ import annotations

import json

import smtp_server
from click.testing import CliRunner
from test_pipeline import anomaly_files, site, spool_with, write_config  # noqa: F401 (site: fixture)

from flowdiff.config import load_config
from flowdiff.mail import list_outbox
from flowdiff.report import REPORT_EML, REPORT_HTML, REPORT_META, REPORT_TEXT

smtp_plain = smtp_server.smtp_plain


def flowdiff(*args: str):
    from flowdiff.cli import main

    return CliRunner().invoke(main, list(args))


def collect_anomalies(site, tmp_path, server=None):  # noqa: F811 (site: the fixture's value)
    cfg = write_config(site, tmp_path, server)
    spool = spool_with(anomaly_files(site), tmp_path / "spool")
    r = flowdiff("collect", str(spool), "--config", str(cfg))
    assert r.exit_code == 0, r.output
    return cfg, load_config(cfg)


def test_cli_diff_archives_the_rendered_report_without_mail(site, tmp_path):  # noqa: F811
    cfg, config = collect_anomalies(site, tmp_path)
    r = flowdiff("diff", "--config", str(cfg))
    assert r.exit_code == 0, r.output
    (rid,) = [p.name for p in config.reports.iterdir() if (p / "report.json").is_file()]
    d = config.reports / rid
    for name in (REPORT_TEXT, REPORT_HTML, REPORT_EML, REPORT_META):
        assert (d / name).is_file(), name
    assert f"report archived: {d / REPORT_TEXT}" in r.output and "queued" not in r.output
    assert not config.outbox_path.exists()  # no [mail]: nothing queued
    # notify without [mail]: nothing left to render; says once that mail is not configured (exit 2)
    r = flowdiff("notify", "--config", str(cfg))
    assert r.exit_code == 2 and f"report {rid}:" not in r.output  # already rendered by diff
    assert r.output.count("mail is not configured") == 1 and len(r.output.splitlines()) == 1


def test_cli_diff_dry_run_writes_no_report(site, tmp_path):  # noqa: F811
    cfg, config = collect_anomalies(site, tmp_path)
    r = flowdiff("diff", "--dry-run", "--config", str(cfg))
    assert r.exit_code == 0 and "report archived" not in r.output
    assert not any(p.is_dir() for p in config.reports.iterdir()) if config.reports.exists() else True


def test_cli_diff_json_output_stays_json_and_the_report_is_queued_with_mail(site, smtp_plain, tmp_path):  # noqa: F811
    cfg, config = collect_anomalies(site, tmp_path, smtp_plain)
    r = flowdiff("diff", "--format", "json", "--config", str(cfg))
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.output.splitlines()]  # only data, even with stderr mixed in
    assert rows and (config.reports / rows[0]["report_id"] / "report.txt").is_file()
    (entry,) = list_outbox(config)
    assert entry.report_id == rows[0]["report_id"]
    assert smtp_plain.inbox.messages == []  # diff queues; sending is run / notify / outbox retry
    r = flowdiff("notify", "--config", str(cfg))
    assert r.exit_code == 0 and "queued" not in r.output and "sent <" in r.output
    (got,) = smtp_plain.inbox.wait(1)
    assert got.message["X-Flowdiff-Report"] == entry.report_id


def test_cli_diff_into_a_closed_pipe_still_archives_the_rendered_report(site, tmp_path, monkeypatch):  # noqa: F811
    """`flowdiff diff | head`: the reader goes away while the rows print; the report is already rendered."""
    import flowdiff.cli.baseline_cmds as cmds

    def closed_pipe(*_a, **_k):
        raise BrokenPipeError(32, "Broken pipe")

    cfg, config = collect_anomalies(site, tmp_path)
    monkeypatch.setattr(cmds, "_print_diff", closed_pipe)
    r = flowdiff("diff", "--config", str(cfg))
    assert r.exit_code != 0
    (d,) = [p for p in config.reports.iterdir() if (p / "report.json").is_file()]
    for name in (REPORT_TEXT, REPORT_HTML, REPORT_EML):
        assert (d / name).is_file(), name
