"""One delivery path (render -> archive -> queue), huge reports, permanent refusals, `outbox drop`.

Issue 9 item 2 (one `deliver` for run, notify, diff and the demo) and issue 8 items 6 and 10, against a
real aiosmtpd on loopback (tests/smtp_server.py): a 552 refusal, a size limit, a server that is down.
"""

from __future__ import annotations

import email
import email.policy
import gzip
import io
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import smtp_server
from click.testing import CliRunner
from fixtures_mail import big_result, make_result

from flowdiff.config import Config, MailConfig, load_config, parse_config
from flowdiff.deliver import deliver, notify, pending_reports
from flowdiff.errors import ConfigError, MailError
from flowdiff.exitcodes import ExitCode
from flowdiff.mail import FAILED_DIR, drop_message, flush_outbox, list_failed, list_outbox
from flowdiff.report import REPORT_EML, REPORT_META

smtp_down = smtp_server.smtp_down
smtp_plain = smtp_server.smtp_plain
smtp_refusing = smtp_server.smtp_refusing
smtp_small = smtp_server.smtp_small


def config_for(server, tmp_path: Path, **kw) -> Config:
    return Config(
        reports=tmp_path / "reports",
        sensor="sensor1",
        max_rows=4,
        mail=MailConfig(**server.mail_kwargs()),
        **kw,
    )


def write_config(tmp_path: Path, server=None, **extra) -> Path:
    lines = [f'reports = "{tmp_path / "reports"}"', 'sensor = "sensor1"', "max_rows = 4"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    if server is not None:
        kw = server.mail_kwargs()
        lines += [
            "[mail]",
            f'host = "{kw["host"]}"',
            f"port = {kw['port']}",
            f'tls = "{kw["tls"]}"',
            f'from = "{kw["from_addr"]}"',
            "to = [" + ", ".join(f'"{a}"' for a in kw["to"]) + "]",
        ]
    path = tmp_path / "flowdiff.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def cli(*args: str):
    from flowdiff.cli import main

    return CliRunner().invoke(main, list(args))


def archive_diff_report(config: Config, result) -> None:
    """What `flowdiff diff` leaves before rendering: report.json and rows.parquet (via flowdiff.archive)."""
    from flowdiff.archive import publish_report, write_report_tmp

    write_report_tmp(config, result)
    publish_report(config, result.report_id)


# ---------------------------------------------------------------- one delivery path


def test_deliver_twice_rewrites_the_same_files_and_keeps_one_outbox_entry(tmp_path):
    config = Config(
        reports=tmp_path / "reports",
        sensor="s",
        max_rows=3,
        mail=MailConfig(host="127.0.0.1", to=("a@b.test",)),
    )
    result = make_result(services=9)
    first = deliver(result, config)
    files = {p.name: p.read_bytes() for p in first.report_dir.iterdir()}
    time.sleep(1.1)  # a new Date would differ by now
    second = deliver(result, config)
    assert second.message_id == first.message_id
    assert {p.name: p.read_bytes() for p in second.report_dir.iterdir()} == files  # byte for byte
    (entry,) = list_outbox(config)
    assert entry.message_id == first.message_id
    assert (config.outbox_path / f"{entry.name}.eml").read_bytes() == files[REPORT_EML]


def test_deliver_without_queue_archives_only(tmp_path):
    config = Config(
        reports=tmp_path / "reports", sensor="s", mail=MailConfig(host="127.0.0.1", to=("a@b.test",))
    )
    d = deliver(make_result(), config, queue=False)
    assert d.message_id is None and (d.report_dir / REPORT_EML).is_file() and list_outbox(config) == []


def test_public_api_exports_deliver():
    import flowdiff

    assert flowdiff.deliver is deliver


# ---------------------------------------------------------------- huge reports (issue 8 item 6)


def test_a_400k_row_report_fits_max_message_bytes_and_says_where_the_rows_are(tmp_path):
    result = big_result(400_000)
    config = Config(reports=tmp_path / "reports", sensor="s", max_rows=25, max_message_bytes=1_000_000)
    d = deliver(result, config)
    assert d.message_bytes <= 1_000_000 and d.cut
    msg = email.message_from_bytes((d.report_dir / REPORT_EML).read_bytes(), policy=email.policy.default)
    text = msg.get_body(preferencelist=("plain",)).get_content()
    html = msg.get_body(preferencelist=("html",)).get_content()
    body_rows = [line for line in text.splitlines() if line.startswith("   accept:")]
    assert len(body_rows) == 25 + 3  # max_rows of services, and all 3 hosts
    rows_path = str(tmp_path / "reports" / result.report_id / "rows.parquet")
    assert rows_path in text and rows_path in html and "cut to keep this mail under 1.0 MB" in text
    (att,) = list(msg.iter_attachments())
    assert att.get_filename() == f"services-{result.report_id}.csv.gz"
    lines = gzip.decompress(att.get_payload(decode=True)).decode().splitlines()
    assert lines[-1].startswith("# cut: the first ") and lines[-1].endswith(f"all rows are in {rows_path}")
    shown = d.rendered.attached_rows["services"]
    assert f"{shown:,} of 400,000 rows" in lines[-1] and 1000 < shown < 400_000
    csv = pd.read_csv(io.StringIO("\n".join(lines[:-1])))
    assert len(csv) == shown
    largest = np.sort(result.rows["services"]["bytes"].to_numpy())[::-1][:shown]
    assert (csv["bytes"].to_numpy() == largest).all()  # the largest rows, in order
    assert csv["first_seen"].iloc[0] == "2026-11-30T01:00:00Z"


def test_a_report_that_fits_is_not_cut(tmp_path):
    result = make_result(services=40)
    d = deliver(result, Config(reports=tmp_path / "reports", sensor="s", max_rows=5))
    ((name, data, _),) = d.rendered.attachments
    assert not d.cut and "# cut" not in gzip.decompress(data).decode()
    assert f"all 40 rows are in the attachment {name}" in d.rendered.text


def test_max_message_bytes_too_small_for_any_attachment_still_delivers(tmp_path):
    result = make_result(services=200)
    d = deliver(
        result, Config(reports=tmp_path / "reports", sensor="s", max_rows=25, max_message_bytes=20_000)
    )
    assert d.message_bytes <= 20_000 and d.rendered.report_id == result.report_id
    assert "rows.parquet" in d.rendered.text


@pytest.mark.parametrize(
    ("value", "expected"),
    [(2_000_000, 2_000_000), ("5MB", 5_000_000), ("500kB", 500_000), ("300 kb", 300_000)],
)
def test_max_message_bytes_config(value, expected):
    assert parse_config({"max_message_bytes": value}).max_message_bytes == expected


@pytest.mark.parametrize("value", ["5 parsecs", -1, True, 100, "1kB"])
def test_max_message_bytes_bad_value_names_the_key(value):
    with pytest.raises(ConfigError, match="max_message_bytes"):
        parse_config({"max_message_bytes": value})


def test_default_max_message_bytes_is_5mb():
    assert Config().max_message_bytes == 5_000_000


def test_a_server_size_limit_is_respected_by_max_message_bytes(smtp_small, tmp_path):
    """aiosmtpd refuses (552) anything above 300 kB; with max_message_bytes below it the report arrives."""
    config = config_for(smtp_small, tmp_path, max_message_bytes=250_000)
    d = deliver(big_result(20_000), config)
    assert flush_outbox(config).sent == [d.message_id]
    (got,) = smtp_small.inbox.wait(1)
    assert len(got.data) <= 250_000


# ---------------------------------------------------------------- permanent refusal (552)


def test_a_552_refusal_moves_the_message_to_failed_once(smtp_refusing, tmp_path, caplog):
    config = config_for(smtp_refusing, tmp_path)
    caplog.set_level(logging.WARNING, logger="flowdiff.mail")
    d = deliver(make_result(services=7), config)
    res = flush_outbox(config)
    assert res.refused and res.refused[0][0] == d.message_id and "552" in res.refused[0][1]
    assert not res.waiting and not res.failed and res.exit_code == ExitCode.ERROR
    assert list_outbox(config) == []
    (failed,) = list_failed(config)
    assert failed.state == "failed" and failed.message_id == d.message_id and failed.attempts == 1
    folder = config.outbox_path / FAILED_DIR
    state = json.loads((folder / f"{failed.name}.json").read_text(encoding="utf-8"))
    for key in ("message_id", "subject", "report_id", "attempts", "last_error", "created", "failed_at"):
        assert state[key], key
    assert (folder / f"{failed.name}.eml").read_bytes() == (d.report_dir / REPORT_EML).read_bytes()
    (line,) = [r.getMessage() for r in caplog.records if r.name == "flowdiff.mail"]
    assert "refused for good" in line and "\n" not in line and "outbox drop" in line
    # never retried: the next flushes leave it alone, and notify does not queue it again
    assert flush_outbox(config, force=True).refused == [] and smtp_refusing.inbox.refused == 1
    assert pending_reports(config) == []


def test_a_4xx_reply_keeps_the_message_waiting(smtp_plain, tmp_path):
    smtp_plain.inbox.refuse = "451 4.3.0 try again later"
    config = config_for(smtp_plain, tmp_path)
    d = deliver(make_result(), config)
    res = flush_outbox(config)
    assert res.failed and not res.refused and res.waiting == [d.message_id]
    assert res.exit_code == ExitCode.DEFERRED and list_failed(config) == []


def test_cli_outbox_list_shows_failed_and_drop_removes_it(smtp_refusing, tmp_path):
    cfg = write_config(tmp_path, smtp_refusing)
    config = load_config(cfg)
    d = deliver(make_result(), config)
    r = cli("outbox", "retry", "--config", str(cfg))
    assert r.exit_code == 2 and "refused by the server for good" in r.output and "failed" in r.output
    r = cli("outbox", "list", "--config", str(cfg))
    assert r.exit_code == 0 and "failed" in r.output and d.message_id in r.output
    r = cli("outbox", "list", "--format", "csv", "--config", str(cfg))
    csv = pd.read_csv(io.StringIO(r.output))
    assert list(csv["state"]) == ["failed"] and list(csv["message_id"]) == [d.message_id]
    (entry,) = list_failed(config)
    r = cli("outbox", "drop", entry.name[:12], "--config", str(cfg))  # a unique prefix of the entry name
    assert r.exit_code == 0 and r.output.startswith(f"dropped failed message {d.message_id}")
    assert list_failed(config) == [] and not any((config.outbox_path / FAILED_DIR).iterdir())
    assert cli("outbox", "--config", str(cfg)).output == "outbox is empty\n"


def test_cli_outbox_drop_unknown_id_is_one_line_exit_2(tmp_path):
    cfg = write_config(tmp_path)
    r = cli("outbox", "drop", "<nope@x>", "--config", str(cfg))
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "no message '<nope@x>'" in r.output


def test_drop_a_waiting_message_by_message_id_and_ambiguous_prefix(smtp_down, tmp_path):
    config = config_for(smtp_down, tmp_path)
    a = deliver(make_result("20261130T010000Z-aaa111"), config)
    b = deliver(make_result("20261130T010000Z-aaa222"), config)
    with pytest.raises(MailError, match="names 2 messages"):
        drop_message(config, "20261130T010000Z-aaa")
    dropped = drop_message(config, a.message_id)
    assert dropped.state == "waiting" and [e.message_id for e in list_outbox(config)] == [b.message_id]


def test_server_down_keeps_it_waiting_exit_3(smtp_down, tmp_path):
    cfg = write_config(tmp_path, smtp_down)
    d = deliver(make_result(), load_config(cfg))
    r = cli("outbox", "retry", "--config", str(cfg))
    assert r.exit_code == 3 and "not sent" in r.output
    r = cli("outbox", "list", "--format", "json", "--config", str(cfg))
    (row,) = [json.loads(x) for x in r.output.splitlines()]
    assert row["state"] == "waiting" and row["message_id"] == d.message_id


def test_notify_names_a_refused_report_to_queue_it_again(smtp_refusing, tmp_path):
    config = config_for(smtp_refusing, tmp_path)
    result = make_result()
    archive_diff_report(config, result)
    assert notify(config).outbox.refused  # refused once: in failed/
    smtp_refusing.inbox.refuse = None
    res = notify(config, [result.report_id])  # named explicitly: queued again and sent
    assert res.outbox.sent and res.exit_code == ExitCode.OK and list_failed(config) == []


# ---------------------------------------------------------------- diff and notify without [mail] (item 10)


def test_notify_without_mail_renders_what_is_not_rendered_and_says_so(tmp_path):
    cfg = write_config(tmp_path)
    config = load_config(cfg)
    result = make_result()
    archive_diff_report(config, result)
    assert not (tmp_path / "reports" / result.report_id / REPORT_META).exists()
    r = cli("notify", "--config", str(cfg))
    assert r.exit_code == 2
    assert f"report {result.report_id}: archived in" in r.output
    assert r.output.count("mail is not configured") == 1
    assert (tmp_path / "reports" / result.report_id / "report.txt").is_file()
    assert (tmp_path / "reports" / result.report_id / REPORT_EML).is_file()


def test_notify_without_mail_and_without_reports_is_quiet_success(tmp_path):
    cfg = write_config(tmp_path)
    r = cli("notify", "--config", str(cfg))
    assert r.exit_code == 0 and r.output == "nothing to send (mail is not configured)\n"


def test_notify_with_mail_sends_and_exits_0(smtp_plain, tmp_path):
    cfg = write_config(tmp_path, smtp_plain)
    result = make_result()
    archive_diff_report(load_config(cfg), result)
    r = cli("notify", "--config", str(cfg))
    assert r.exit_code == 0 and "queued as" in r.output and "sent <" in r.output
    assert len(smtp_plain.inbox.wait(1)) == 1


def test_cli_refusal_warning_names_a_drop_command_that_works_pasted_elsewhere(
    smtp_refusing, tmp_path, monkeypatch
):
    """Issue 8 items 6/7: the hint printed with a refusal is pasted as printed, from another folder."""
    import shlex

    cfg = write_config(tmp_path, smtp_refusing)
    deliver(make_result(), load_config(cfg))
    r = cli("outbox", "retry", "--config", str(cfg))
    assert r.exit_code == 2
    hint = r.output.split("(flowdiff outbox drop ", 1)[1].split(" removes it)", 1)[0]
    assert f"--config {cfg.resolve()}" in hint
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    r = cli("outbox", "drop", *shlex.split(hint))
    assert r.exit_code == 0 and "dropped failed message" in r.output, r.output
    assert list_failed(load_config(cfg)) == []
