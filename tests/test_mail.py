"""Mail against a real aiosmtpd server on loopback: plain, STARTTLS + AUTH, implicit TLS; the outbox."""

from __future__ import annotations

import asyncio
import email.policy
import io
import json
import logging
import time
from email.parser import BytesParser
from pathlib import Path

import pandas as pd
import pytest
import smtp_server
from fixtures_mail import make_result
from smtp_server import PASSWORD

import flowdiff.mail as mail
from flowdiff.config import Config, MailConfig
from flowdiff.deliver import deliver
from flowdiff.durable import file_lock
from flowdiff.errors import MailError
from flowdiff.mail import (
    SENT_RECORD,
    backoff,
    build_message,
    enqueue,
    flush_outbox,
    list_outbox,
    queue_report,
    send,
    send_async,
    test_mail,
)
from flowdiff.report import render_report

# the real SMTP server fixtures (tests/smtp_server.py)
smtp_down = smtp_server.smtp_down
smtp_implicit = smtp_server.smtp_implicit
smtp_plain = smtp_server.smtp_plain
smtp_starttls_auth = smtp_server.smtp_starttls_auth


def config_for(server, tmp_path: Path, **mail_overrides) -> Config:
    kw = server.mail_kwargs()
    kw.update(mail_overrides)
    return Config(reports=tmp_path / "reports", sensor="sensor1", max_rows=4, mail=MailConfig(**kw))


def parse(data: bytes):
    return BytesParser(policy=email.policy.default).parsebytes(data)


def report_into_outbox(config: Config, result=None):
    result = result or make_result(services=7, hosts=2)
    delivery = deliver(result, config)  # render -> archive -> queue: the one delivery path
    return result, delivery.rendered, delivery


def check_report_message(msg, result, rendered, config: Config) -> None:
    assert msg["Subject"] == rendered.subject
    assert msg["Message-ID"] == rendered.message_id
    assert msg["X-Flowdiff-Report"] == result.report_id
    assert [a.addr_spec for a in msg["To"].addresses] == list(config.mail.to)
    assert msg.get_content_type() == "multipart/mixed"
    alternative = msg.get_payload()[0]
    assert alternative.get_content_type() == "multipart/alternative"
    text = msg.get_body(preferencelist=("plain",)).get_content().replace("\r\n", "\n")
    html = msg.get_body(preferencelist=("html",)).get_content().replace("\r\n", "\n")
    assert text == rendered.text and html == rendered.html
    shown = result.rows["services"].sort_values("bytes", ascending=False).iloc[: config.max_rows]
    for _, row in shown.iterrows():
        assert row["accept_cmd"] in text and row["client"] in text
    for _, row in result.rows["hosts"].iterrows():
        assert row["accept_cmd"] in text and row["src"] in html
    attachments = list(msg.iter_attachments())
    assert [a.get_filename() for a in attachments] == [f"services-{result.report_id}.csv.gz"]
    assert attachments[0].get_content_type() == "application/gzip"
    csv = pd.read_csv(io.BytesIO(attachments[0].get_payload(decode=True)), compression="gzip")
    assert sorted(csv["client"]) == sorted(result.rows["services"]["client"])


def test_report_is_delivered_and_parsed_back(smtp_plain, tmp_path):
    config = config_for(smtp_plain, tmp_path)
    result, rendered, entry = report_into_outbox(config)
    assert [e.message_id for e in list_outbox(config)] == [rendered.message_id]
    res = flush_outbox(config)
    assert res.sent == [rendered.message_id] and not res.failed and not res.deferred
    (got,) = smtp_plain.inbox.wait(1)
    assert got.mail_from == config.mail.from_addr
    assert sorted(got.rcpt_tos) == sorted(config.mail.to)
    check_report_message(got.message, result, rendered, config)
    assert list_outbox(config) == []
    record = json.loads((tmp_path / "reports" / result.report_id / SENT_RECORD).read_text(encoding="utf-8"))
    assert record["message_id"] == rendered.message_id and record["reply"].startswith("2.0.0")


def test_starttls_with_private_ca_and_auth(smtp_starttls_auth, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    config = config_for(smtp_starttls_auth, tmp_path)
    result, rendered, _ = report_into_outbox(config)
    assert flush_outbox(config).sent == [rendered.message_id]
    (got,) = smtp_starttls_auth.inbox.wait(1)
    check_report_message(got.message, result, rendered, config)
    assert smtp_starttls_auth.auth.attempts[-1].endswith(":ok")
    assert PASSWORD not in caplog.text


def test_password_from_a_file(smtp_starttls_auth, tmp_path, monkeypatch):
    monkeypatch.delenv("FLOWDIFF_TEST_SMTP_PASSWORD")
    secret = tmp_path / "smtp-password"
    secret.write_text(PASSWORD + "\n", encoding="utf-8")
    config = config_for(smtp_starttls_auth, tmp_path, password_env=None, password_file=str(secret))
    mid = test_mail(config)
    (got,) = smtp_starttls_auth.inbox.wait(1)
    assert got.message["Message-ID"] == mid and "test message" in got.message["Subject"]


def test_wrong_password_fails_without_showing_it(smtp_starttls_auth, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-" + PASSWORD
    monkeypatch.setenv("FLOWDIFF_TEST_SMTP_PASSWORD", wrong)
    config = config_for(smtp_starttls_auth, tmp_path)
    _, rendered, _ = report_into_outbox(config)
    res = flush_outbox(config)
    assert res.failed and res.failed[0][0] == rendered.message_id
    error = res.failed[0][1]
    assert "535" in error or "Authentication" in error
    assert wrong not in error and wrong not in caplog.text and PASSWORD not in caplog.text
    (entry,) = list_outbox(config)
    assert entry.attempts == 1 and wrong not in entry.last_error
    assert smtp_starttls_auth.inbox.messages == []
    assert "fail" in smtp_starttls_auth.auth.attempts[-1]


def test_missing_password_variable_is_a_clear_error(smtp_starttls_auth, tmp_path, monkeypatch):
    monkeypatch.delenv("FLOWDIFF_TEST_SMTP_PASSWORD")
    config = config_for(smtp_starttls_auth, tmp_path)
    with pytest.raises(MailError, match="FLOWDIFF_TEST_SMTP_PASSWORD is not set"):
        test_mail(config)


def test_certificate_is_verified_by_default(smtp_starttls_auth, tmp_path):
    config = config_for(smtp_starttls_auth, tmp_path, cafile=None)  # the private CA is not trusted
    with pytest.raises(MailError, match="(?i)certificate"):
        test_mail(config)
    assert smtp_starttls_auth.inbox.messages == []


def test_implicit_tls(smtp_implicit, tmp_path):
    config = config_for(smtp_implicit, tmp_path)
    result, rendered, _ = report_into_outbox(config)
    assert flush_outbox(config).sent == [rendered.message_id]
    (got,) = smtp_implicit.inbox.wait(1)
    check_report_message(got.message, result, rendered, config)


def test_server_down_keeps_the_report_then_delivers_it_exactly_once(smtp_down, tmp_path, caplog):
    config = config_for(smtp_down, tmp_path)
    _, rendered, _ = report_into_outbox(config)
    caplog.set_level(logging.WARNING, logger="flowdiff.mail")
    before = time.time()
    res = flush_outbox(config)
    assert res.sent == [] and res.deferred and res.failed[0][0] == rendered.message_id
    lines = [r for r in caplog.records if r.name == "flowdiff.mail"]
    assert len(lines) == 1 and "attempt 1" in lines[0].getMessage() and "\n" not in lines[0].getMessage()
    (entry,) = list_outbox(config)
    assert entry.attempts == 1 and entry.last_error
    assert before + backoff(1) - 1 <= entry.next_attempt <= time.time() + backoff(1)
    # not due yet: a normal flush leaves it alone even though the server is back
    smtp_down.start()
    res = flush_outbox(config)
    assert res.sent == [] and res.failed == [] and res.waiting == [rendered.message_id]
    assert smtp_down.inbox.messages == []
    res = flush_outbox(config, force=True)
    assert res.sent == [rendered.message_id]
    flush_outbox(config, force=True)
    time.sleep(0.2)
    got = smtp_down.inbox.wait(1)
    assert len(got) == 1 and got[0].message["Message-ID"] == rendered.message_id
    assert list_outbox(config) == []


def test_due_message_is_sent_by_a_normal_flush(smtp_down, tmp_path):
    config = config_for(smtp_down, tmp_path)
    _, rendered, _ = report_into_outbox(config)
    flush_outbox(config)
    (entry,) = list_outbox(config)
    state = tmp_path / "reports" / "outbox" / f"{entry.name}.json"
    data = json.loads(state.read_text(encoding="utf-8"))
    data["next_attempt"] = time.time() - 1  # the backoff has passed
    state.write_text(json.dumps(data), encoding="utf-8")
    smtp_down.start()
    assert flush_outbox(config).sent == [rendered.message_id]


def test_backoff_doubles_and_is_capped():
    delays = [backoff(n) for n in range(1, 10)]
    assert delays[:3] == [60, 120, 240]
    assert all(b >= a for a, b in zip(delays, delays[1:], strict=False))
    assert max(delays) == mail.BACKOFF_MAX


class Crash(BaseException):
    """Stands for the process dying (kill -9) right after the server said 250."""


def test_crash_between_send_and_removal_resends_the_same_message_id(smtp_plain, tmp_path, monkeypatch):
    config = config_for(smtp_plain, tmp_path)
    _, rendered, _ = report_into_outbox(config)

    def crash(*args, **kwargs):
        raise Crash

    monkeypatch.setattr(mail, "_remove_entry", crash)
    with pytest.raises(Crash):
        flush_outbox(config)
    assert len(smtp_plain.inbox.wait(1)) == 1
    assert [e.message_id for e in list_outbox(config)] == [rendered.message_id]
    monkeypatch.undo()
    assert flush_outbox(config, force=True).sent == [rendered.message_id]
    first, second = smtp_plain.inbox.wait(2)
    assert first.message["Message-ID"] == second.message["Message-ID"] == rendered.message_id
    assert first.data == second.data  # byte for byte the same message: recognisably a duplicate
    assert list_outbox(config) == []


def test_hostile_sensor_and_labels_cannot_inject_headers_or_html(smtp_plain, tmp_path):
    config = config_for(smtp_plain, tmp_path)
    result = make_result(
        client="<script>alert(1)</script>", sensor="evil\r\nBcc: victim@example.test\r\nX-Evil: 1"
    )
    rendered = render_report(result, config)
    queue_report(rendered, config)
    flush_outbox(config)
    (got,) = smtp_plain.inbox.wait(1)
    msg = got.message
    assert msg["Bcc"] is None and msg["X-Evil"] is None
    assert sorted(got.rcpt_tos) == sorted(config.mail.to)
    assert "victim@example.test" in msg["Subject"]  # harmless text in the subject line
    html = msg.get_body(preferencelist=("html",)).get_content()
    assert "<script>" not in html and "&lt;script&gt;" in html
    head = got.data.split(b"\r\n\r\n", 1)[0]
    assert not any(line.startswith((b"Bcc:", b"X-Evil:")) for line in head.split(b"\r\n"))


def test_crlf_in_a_rendered_subject_is_folded(tmp_path):
    rendered = render_report(make_result(), Config(reports=tmp_path, sensor="s"))
    evil = type(rendered)(**{**rendered.__dict__, "subject": "hi\r\nBcc: x@y", "message_id": "<a@b>\r\nX: y"})
    msg = parse(build_message(evil, MailConfig(host="h", to=("a@b.test",))).as_bytes())
    assert msg["Bcc"] is None and msg["X"] is None and msg["Subject"] == "hi Bcc: x@y"


def test_enqueue_twice_keeps_one_message(tmp_path):
    config = Config(
        reports=tmp_path / "reports", sensor="s", mail=MailConfig(host="127.0.0.1", to=("a@b.test",))
    )
    rendered = render_report(make_result(), config)
    a = queue_report(rendered, config)
    b = enqueue(build_message(rendered, config.mail), config)
    assert a.name == b.name and len(list_outbox(config)) == 1
    assert len(list((tmp_path / "reports" / "outbox").glob("*.eml"))) == 1


def test_lost_state_file_is_rebuilt_from_the_message(tmp_path):
    config = Config(
        reports=tmp_path / "reports", sensor="s", mail=MailConfig(host="127.0.0.1", to=("a@b.test",))
    )
    rendered = render_report(make_result(), config)
    entry = queue_report(rendered, config)
    (tmp_path / "reports" / "outbox" / f"{entry.name}.json").unlink()
    (again,) = list_outbox(config)
    assert again.message_id == rendered.message_id and again.subject == rendered.subject


def test_a_second_flush_does_not_run_while_one_holds_the_outbox(smtp_plain, tmp_path):
    config = config_for(smtp_plain, tmp_path)
    report_into_outbox(config)
    with file_lock(config.outbox_path / mail.FLUSH_LOCK, wait=0):
        res = flush_outbox(config, wait=0.1)
    assert res.busy and res.waiting and smtp_plain.inbox.messages == []


def test_flush_without_mail_config_keeps_everything(tmp_path):
    config = Config(
        reports=tmp_path / "reports", sensor="s", mail=MailConfig(host="127.0.0.1", to=("a@b.test",))
    )
    rendered = render_report(make_result(), config)
    queue_report(rendered, config)
    unconfigured = Config(reports=tmp_path / "reports", sensor="s")
    res = flush_outbox(unconfigured)
    assert res.waiting == [rendered.message_id] and not res.failed


def test_send_works_inside_a_running_event_loop(smtp_plain, tmp_path):
    config = config_for(smtp_plain, tmp_path)
    rendered = render_report(make_result(), config)

    async def notebook_cell():
        send(build_message(rendered, config.mail), config.mail)  # sync call, like in Jupyter
        await send_async(build_message(rendered, config.mail), config.mail)

    asyncio.run(notebook_cell())
    assert len(smtp_plain.inbox.wait(2)) == 2


def test_test_mail_requires_mail_config(tmp_path):
    with pytest.raises(MailError, match="not configured"):
        test_mail(Config(reports=tmp_path))


# ---------------------------------------------------------------- CLI


def cli():
    import click

    from flowdiff.cli.mail_cmds import register

    @click.group()
    def main() -> None:
        """test group"""

    register(main)
    return main


def write_mail_config(tmp_path: Path, server, **extra) -> Path:
    kw = server.mail_kwargs()
    lines = [
        f'reports = "{tmp_path / "reports"}"',
        'sensor = "sensor1"',
        "[mail]",
        f'host = "{kw["host"]}"',
        f"port = {kw['port']}",
        f'tls = "{kw["tls"]}"',
        f'from = "{kw["from_addr"]}"',
        "to = [" + ", ".join(f'"{a}"' for a in kw["to"]) + "]",
    ]
    lines += [f'{k} = "{v}"' for k, v in extra.items()]
    path = tmp_path / "flowdiff.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_cli_test_mail(smtp_plain, tmp_path):
    from click.testing import CliRunner

    cfg = write_mail_config(tmp_path, smtp_plain)
    r = CliRunner().invoke(cli(), ["test-mail", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    (got,) = smtp_plain.inbox.wait(1)
    assert f"sent {got.message['Message-ID']} to ops@example.test, noc@example.test" in r.output


def test_cli_outbox_list_and_retry(smtp_down, tmp_path):
    from click.testing import CliRunner

    from flowdiff.config import load_config

    cfg = write_mail_config(tmp_path, smtp_down)
    config = load_config(cfg)
    _, rendered, _ = report_into_outbox(config)
    r = CliRunner().invoke(cli(), ["outbox", "retry", "--config", str(cfg)])
    assert r.exit_code == 3 and "not sent" in r.output
    r = CliRunner().invoke(cli(), ["outbox", "--config", str(cfg)])
    assert r.exit_code == 0
    assert rendered.message_id in r.output and "waiting" in r.output and "Connect" in r.output
    assert r.output == CliRunner().invoke(cli(), ["outbox", "list", "--config", str(cfg)]).output
    r = CliRunner().invoke(cli(), ["outbox", "list", "--format", "json", "--config", str(cfg)])
    (row,) = [json.loads(line) for line in r.output.splitlines()]
    assert row["state"] == "waiting" and row["attempts"] == 1 and row["message_id"] == rendered.message_id
    smtp_down.start()
    r = CliRunner().invoke(cli(), ["outbox", "retry", "--config", str(cfg)])
    assert r.exit_code == 0 and f"sent {rendered.message_id}" in r.output
    assert len(smtp_down.inbox.wait(1)) == 1
    r = CliRunner().invoke(cli(), ["outbox", "--config", str(cfg)])
    assert r.output == "outbox is empty\n"
