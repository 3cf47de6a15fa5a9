"""Sensor health: every kind is reported once when it starts and once when it clears, as a line and as a
mail to a real SMTP server on loopback; a mail server that is down keeps the alert in the outbox.

The learned site of tests/test_pipeline.py (module-scoped: collecting and learning is the slow part) is
reused here, copied into each test.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import pytest
import smtp_server
import test_pipeline
from click.testing import CliRunner
from test_pipeline import cli, make_due, site_config, spool_with, write_config

from flowdiff.baseline import learn
from flowdiff.config import parse_config
from flowdiff.diff import diff
from flowdiff.health import HEALTH_FILE, check, load_state
from flowdiff.mail import list_outbox
from flowdiff.pipeline import EXIT_DEFERRED, EXIT_OK, health_pass, run

DATA = Path(__file__).resolve().parent / "data"
UNREADABLE = DATA / "bad" / "libpcap__linktype-reserved-field-not-zero.pcap"  # fails at byte 20

site = test_pipeline.site  # the learned site, built once per module
smtp_plain = smtp_server.smtp_plain
smtp_down = smtp_server.smtp_down


def health_mails(server, n: int, kind: str | None = None):
    """The health mails the server received (waits for ``n``), optionally of one kind."""
    got = [r.message for r in server.inbox.wait(n)]
    return [m for m in got if m["X-Flowdiff-Health"] and (kind is None or m["X-Flowdiff-Health"] == kind)]


def hlines(res) -> list[str]:
    """The health lines of a run's summary (the first line says how many messages were sent)."""
    return [line for line in res.summary().splitlines() if line.startswith("health")]


def quiet_after(server, n: int) -> None:
    """No more than ``n`` messages arrive."""
    time.sleep(0.3)
    assert len(server.inbox.messages) == n, [r.message["Subject"] for r in server.inbox.messages]


def old_spool(site, tmp_path: Path, hours: float = 2.0) -> Path:
    """A spool whose newest capture (an ordinary one) closed ``hours`` ago: tcpdump died."""
    spool = tmp_path / "spool"
    spool.mkdir()
    f = spool / "20261201120000.pcap"
    shutil.copy(site["normal"].last_day_files[0], f)
    t = time.time() - hours * 3600
    os.utime(f, (t, t))
    return spool


def test_stale_spool_alerts_once_and_clears_once(site, smtp_plain, tmp_path):
    config = replace(site_config(site, tmp_path, smtp_plain), stale_after=3600)
    spool = old_spool(site, tmp_path)
    res = run(config, spool)
    assert res.exit_code() == EXIT_OK
    (line,) = hlines(res)
    assert line.startswith(f"health stale-spool: no new capture in {spool} for 2 h 0 min")
    (msg,) = health_mails(smtp_plain, 1)
    assert msg["X-Flowdiff-Health"] == "stale-spool"
    assert msg["Subject"].startswith("[flowdiff demo] health: stale-spool: no new capture in ")
    assert msg["From"] == "flowdiff@sensor.test" and "ops@example.test" in msg["To"]
    assert msg["Message-ID"].startswith("<health.stale-spool.") and msg["Auto-Submitted"] == "auto-generated"
    assert "tcpdump" in msg.get_content()

    again = run(config, spool)  # still stale: nothing printed, nothing sent
    assert again.summary() == ""
    quiet_after(smtp_plain, 1)

    shutil.copy(
        site["normal"].last_day_files[1], spool / "20261201140000.pcap"
    )  # tcpdump is back: a fresh capture
    time.sleep(0.05)
    (spool / "20261201140500.pcap").write_bytes(b"")  # and the next rotation, still empty
    cleared = run(config, spool)
    (line,) = hlines(cleared)
    assert line.startswith(f"health stale-spool cleared: no new capture in {spool}")
    msgs = health_mails(smtp_plain, 2)
    assert msgs[1]["Subject"].startswith("[flowdiff demo] health: stale-spool cleared: ")
    assert run(config, spool).summary() == ""
    quiet_after(smtp_plain, 2)


def test_stale_spool_off_with_zero_and_seen_by_watch_between_passes(site, tmp_path):
    config = replace(site_config(site, tmp_path), stale_after=0)
    spool = old_spool(site, tmp_path, hours=30)
    assert check(config, spool).lines() == []
    config = replace(config, stale_after=3600)
    health = health_pass(config, spool)  # what watch does every 30 s when no capture closes
    assert [line.split(" for ")[0] for line in health.lines()] == [
        f"health stale-spool: no new capture in {spool}"
    ]
    assert health_pass(config, spool).lines() == []


def test_capture_errors_once_per_file(site, smtp_plain, tmp_path):
    config = site_config(site, tmp_path, smtp_plain)
    spool = tmp_path / "spool"
    spool.mkdir()
    bad = spool / "20261201120000.pcap"
    shutil.copy(UNREADABLE, bad)
    os.utime(bad, (time.time() - 7200, time.time() - 7200))  # closed long ago
    res = run(config, spool)
    assert res.collect.files_failed == 1
    lines = hlines(res)
    assert lines == [
        f"health capture-errors: {bad} at byte 20: reserved bits set in the pcap link-type field "
        "(0x00300000): unknown format extension"
    ]
    (msg,) = health_mails(smtp_plain, 1)
    assert msg["X-Flowdiff-Health"] == "capture-errors"
    assert msg["Subject"].startswith("[flowdiff demo] health: capture-errors: ")
    assert str(bad) in msg.get_content()
    assert run(config, spool).summary() == ""  # the same file: not again
    quiet_after(smtp_plain, 1)
    bad.unlink()  # the operator removed it
    assert hlines(run(config, spool))[0].startswith("health capture-errors cleared: ")
    assert health_mails(smtp_plain, 2)[1]["Subject"].startswith(
        "[flowdiff demo] health: capture-errors cleared"
    )


def test_no_baseline_daily_then_cleared_by_learn(site, smtp_plain, tmp_path):
    raw = site["normal"].config_dict(tmp_path / "fresh")
    config = replace(parse_config(raw), stale_after=0)
    config = replace(config, mail=site_config(site, tmp_path, smtp_plain).mail)
    spool = spool_with(site["normal"].normal_files[:6], tmp_path / "spool")
    res = run(config, spool)
    assert res.no_baseline
    expected = "health no-baseline: no baseline yet: 24 intervals collected (1.0 days); flowdiff learn is due"
    assert hlines(res) == [expected]
    (msg,) = health_mails(smtp_plain, 1)
    assert msg["X-Flowdiff-Health"] == "no-baseline" and "flowdiff learn" in msg.get_content()
    assert run(config, spool).summary() == ""  # the same day: quiet
    quiet_after(smtp_plain, 1)

    state = json.loads((config.baselines / HEALTH_FILE).read_text())  # a day passes
    for p in state["problems"]:
        p["reported"] = "2020-01-01T00:00:00Z"
    (config.baselines / HEALTH_FILE).write_text(json.dumps(state))
    assert hlines(run(config, spool)) == [expected]  # said again, once
    assert len(health_mails(smtp_plain, 2, "no-baseline")) == 2
    assert run(config, spool).summary() == ""

    learn(config)
    assert hlines(run(config, spool))[0].startswith("health no-baseline cleared: ")
    assert health_mails(smtp_plain, 3)[2]["Subject"].startswith("[flowdiff demo] health: no-baseline cleared")
    assert load_state(config).problems == {}


def test_a_table_without_baseline_is_a_no_baseline_problem(site, tmp_path):
    config = site_config(site, tmp_path)
    result = diff(config, record=False)
    result.skipped = {
        "link": "table link has no baseline yet: flowdiff learn --table link"
    }  # DiffResult.skipped
    health = check(config, diff=result)
    assert health.lines() == [
        "health no-baseline: table link has no baseline yet: flowdiff learn --table link"
    ]
    assert check(config, diff=result).lines() == []
    result.skipped = {}
    assert check(config).lines() == []  # not diffed: what is known about the table stays
    assert check(config, diff=result).lines() == [
        "health no-baseline cleared: table link has no baseline yet: flowdiff learn --table link"
    ]


def test_store_low_disk_alert_and_a_server_down_keeps_it_in_the_outbox(site, smtp_down, tmp_path):
    config = replace(site_config(site, tmp_path, smtp_down), min_free=10**18)  # 1 EB: never there
    res = run(config, None)
    (line,) = hlines(res)[-1:]
    assert line.startswith("health store: only ") and "min_free 1000000.0 TB" in line
    assert res.deferred and res.exit_code() == EXIT_DEFERRED
    (entry,) = list_outbox(config)
    assert entry.subject.startswith("[flowdiff demo] health: store: only ")
    assert "health" not in run(config, None).summary()  # reported once, even while it cannot be mailed
    smtp_down.start()
    make_due(config)
    later = run(config, None)
    assert later.outbox.sent == [entry.message_id] and later.exit_code() == EXIT_OK
    (msg,) = health_mails(smtp_down, 1, "store")
    assert msg["Message-ID"] == entry.message_id
    config = replace(config, min_free=1)
    assert hlines(run(config, None))[0].startswith("health store cleared: only ")
    assert len(health_mails(smtp_down, 2, "store")) == 2


def test_a_run_failing_on_the_store_still_reports_it(site, smtp_plain, tmp_path):
    cfg_file = write_config(site, tmp_path, smtp_plain)
    text = cfg_file.read_text().replace(f'store = "{tmp_path / "site" / "store"}"', 'store = "afile/store"')
    cfg_file.write_text(text)
    (tmp_path / "afile").write_text("not a folder")
    spool = tmp_path / "spool"
    spool.mkdir()
    r = CliRunner().invoke(cli(), ["run", "--config", str(cfg_file), "--spool", str(spool)])
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("Error: ") and len(r.stderr.splitlines()) == 1
    assert f"health store: store {tmp_path / 'afile'} is not a folder" in r.stdout.splitlines()
    assert any(line.startswith("health store: the last pass failed: ") for line in r.stdout.splitlines())
    (msg,) = health_mails(smtp_plain, 1)
    assert msg["X-Flowdiff-Health"] == "store" and "2 problems" in msg["Subject"]
    r = CliRunner().invoke(cli(), ["run", "--config", str(cfg_file), "--spool", str(spool)])
    assert r.exit_code == 2 and r.stdout == ""  # failing again: said once
    quiet_after(smtp_plain, 1)


def test_outbox_failed_open_while_a_refused_message_is_there(site, smtp_plain, tmp_path):
    config = site_config(site, tmp_path, smtp_plain)
    failed = config.outbox_path / "failed"
    failed.mkdir(parents=True)
    (failed / "r1@demo.flowdiff.eml").write_bytes(b"Subject: big report\r\n\r\nbody\r\n")
    (failed / "r1@demo.flowdiff.json").write_text(
        json.dumps(
            {
                "message_id": "<r1@demo.flowdiff>",
                "subject": "[flowdiff demo] 388873 new rows",
                "last_error": "552 5.3.4 Message size exceeds fixed limit",
            }
        )
    )
    res = run(config, None)
    assert hlines(res) == [
        (
            "health outbox-failed: message <r1@demo.flowdiff> ([flowdiff demo] 388873 new rows) "
            "was refused for good: 552 5.3.4 Message size exceeds fixed limit"
        )
    ]
    (msg,) = health_mails(smtp_plain, 1)
    assert msg["X-Flowdiff-Health"] == "outbox-failed" and "outbox drop" in msg.get_content()
    assert run(config, None).summary() == ""
    for f in failed.iterdir():  # flowdiff outbox drop
        f.unlink()
    assert hlines(run(config, None))[0].startswith("health outbox-failed cleared: ")
    assert len(health_mails(smtp_plain, 2, "outbox-failed")) == 2


def test_daily_heartbeat(site, smtp_plain, tmp_path):
    config = site_config(site, tmp_path, smtp_plain)
    config = replace(config, mail=replace(config.mail, heartbeat="daily"))
    res = run(config, None)
    assert res.summary() == "1 message sent" and res.health.heartbeat
    (msg,) = health_mails(smtp_plain, 1)
    assert msg["X-Flowdiff-Health"] == "heartbeat" and msg["Subject"] == "[flowdiff demo] health: all quiet"
    body = msg.get_content()
    assert "All quiet" in body and "baseline:" in body and "last interval:" in body
    assert run(config, None).summary() == ""
    quiet_after(smtp_plain, 1)
    state = json.loads((config.baselines / HEALTH_FILE).read_text())
    state["last_heartbeat"] = "2020-01-01T00:00:00Z"  # a day later
    (config.baselines / HEALTH_FILE).write_text(json.dumps(state))
    assert run(config, None).health.heartbeat
    assert len(health_mails(smtp_plain, 2, "heartbeat")) == 2


@pytest.mark.parametrize("value", ["off", False])
def test_heartbeat_is_off_by_default(value, tmp_path):
    from flowdiff.config import load_config

    assert load_config().mail.heartbeat == "off"
    cfg = tmp_path / "f.toml"
    cfg.write_text(f"[mail]\nheartbeat = {json.dumps(value)}\n")
    assert load_config(cfg).mail.heartbeat == "off"


def test_watch_notices_a_spool_going_quiet_between_rotations(site, tmp_path, caplog):
    import logging
    import threading

    from flowdiff.pipeline import watch

    config = replace(site_config(site, tmp_path), stale_after=2, settle=3600)
    spool = spool_with(site["normal"].last_day_files[:2], tmp_path / "spool")
    for f in spool.iterdir():  # fresh captures: the start-up pass finds the spool alive
        os.utime(f)
    stop = threading.Event()
    passes = []
    caplog.set_level(logging.INFO, logger="flowdiff")
    thread = threading.Thread(
        target=watch,
        args=(config, spool),
        kwargs={"poll": 0.05, "retry_every": 0.2, "stop_event": stop, "on_pass": passes.append},
    )
    thread.start()
    try:
        deadline = time.time() + 30
        while "health stale-spool" not in caplog.text and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # several more idle checks: said once
    finally:
        stop.set()
        thread.join(10)
    assert len(passes) == 1 and "health" not in passes[0].summary()  # no rotation, no second pass
    assert caplog.text.count(f"watch: health stale-spool: no new capture in {spool}") == 1
