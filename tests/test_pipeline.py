"""run / watch end to end: real captures (flowdiff.demo), a real store and baseline, a real SMTP server.

The learned site (two normal days of the synthetic mail enclave) is built once per module and copied
into each test, because collecting and learning it is the slow part.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import smtp_server
from click.testing import CliRunner

from flowdiff.baseline import learn
from flowdiff.cli import main
from flowdiff.collect import collect
from flowdiff.config import Config, MailConfig, parse_config
from flowdiff.demo.frames import pcap_bytes
from flowdiff.demo.scenario import enclave_scenario
from flowdiff.durable import file_lock
from flowdiff.errors import LockError, ReportError
from flowdiff.mail import list_outbox
from flowdiff.pipeline import EXIT_DEFERRED, EXIT_NEW, EXIT_OK, run, run_lock_path, unrendered_reports, watch

ROOT = Path(__file__).resolve().parents[1]
ROTATE = 4 * 3600


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Two renderings of the same site: ``normal`` (its last day is an ordinary day) and ``anomalous``
    (the same last day plus the injected anomalies); store and baseline learned from the normal days."""
    base = tmp_path_factory.mktemp("site")
    # 4-hour captures (6 files a day) rather than hourly ones: the same packets, fewer files to read
    normal = enclave_scenario(base / "normal", days=2, anomaly_day=False, rotate=ROTATE)
    anomalous = enclave_scenario(base / "anomalous", days=2, anomaly_day=True, rotate=ROTATE)
    config = parse_config(normal.config_dict(base / "learned"))
    collect([str(p) for p in normal.normal_files], config)
    learn(config)
    return {"normal": normal, "anomalous": anomalous, "learned": base / "learned"}


# the real SMTP server fixtures (tests/smtp_server.py)
smtp_down = smtp_server.smtp_down
smtp_plain = smtp_server.smtp_plain


def site_config(site, tmp_path: Path, server=None) -> Config:
    shutil.copytree(site["learned"], tmp_path / "site")
    # the synthetic captures are years old: the stale-spool health check is tested in test_health.py
    config = replace(parse_config(site["normal"].config_dict(tmp_path / "site")), stale_after=0)
    if server is not None:
        config = replace(config, mail=MailConfig(**server.mail_kwargs()))
    return config


def spool_with(files, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy2(f, directory / Path(f).name)  # keeps the (past) mtimes: every file is closed
    return directory


def capture_of(files, when) -> Path:
    """The rotated capture (named after the start of its period) that holds the moment ``when``."""
    name = when.strftime("%Y%m%d%H%M%S.pcap")
    return max((f for f in files if f.name <= name), key=lambda f: f.name)


def anomaly_files(site) -> list[Path]:
    """Only the captures in which the anomalies happen (fewer files: faster tests)."""
    files = site["anomalous"].last_day_files
    return sorted({capture_of(files, a.time) for a in site["anomalous"].anomalies})


def expected_accept_commands(result) -> list[str]:
    return [cmd for df in result.rows.values() for cmd in df["accept_cmd"]]


def test_run_mails_one_digest_for_an_anomaly_and_nothing_for_a_normal_day(site, smtp_plain, tmp_path):
    config = site_config(site, tmp_path, smtp_plain)
    quiet = run(config, spool_with(site["normal"].last_day_files, tmp_path / "spool-normal"))
    assert quiet.new_rows == 0 and quiet.summary() == "" and quiet.exit_code(True) == EXIT_OK
    assert quiet.collect.files_ok == len(site["normal"].last_day_files)

    res = run(config, spool_with(site["anomalous"].last_day_files, tmp_path / "spool"))
    expected = site["anomalous"].expected_rows()
    found = {
        (t, tuple(zip(res.diff.keys[t], r, strict=True)))
        for t, df in res.diff.rows.items()
        for r in df[list(res.diff.keys[t])].itertuples(index=False)
    }
    assert {(e.table, e.key) for e in expected} <= found
    assert res.exit_code() == EXIT_OK and res.exit_code(exit_on_new=True) == EXIT_NEW
    assert res.outbox.sent == [res.message_id] and not res.deferred
    (got,) = smtp_plain.inbox.wait(1)
    msg = got.message
    assert msg["Message-ID"] == res.message_id
    assert msg["Subject"] == f"[flowdiff demo] {len(res.diff.incidents)} incidents, {res.new_rows} new rows"
    text = msg.get_body(preferencelist=("plain",)).get_content()
    html = msg.get_body(preferencelist=("html",)).get_content()
    for cmd in expected_accept_commands(res.diff):
        assert cmd in text
    for e in expected:
        assert all(str(v) in html for _, v in e.key if not isinstance(v, int))
    assert (res.report_dir / "report.html").is_file() and (res.report_dir / "rows.parquet").is_file()

    again = run(config, tmp_path / "spool")  # same captures: nothing new, no second mail
    assert again.new_rows == 0 and again.summary() == ""
    time.sleep(0.3)
    assert len(smtp_plain.inbox.messages) == 1


def test_run_without_mail_still_archives_the_report(site, tmp_path):
    config = site_config(site, tmp_path)
    res = run(config, spool_with(anomaly_files(site), tmp_path / "spool"))
    assert res.new_rows and not res.mail_enabled and res.exit_code() == EXIT_OK
    assert (res.report_dir / "report.txt").read_text(encoding="utf-8").count("accept:") == res.new_rows
    assert "mail is not configured" in res.summary()
    assert list_outbox(config) == []


def make_due(config: Config) -> None:
    """Time passes: every waiting message is due for its next attempt."""
    for state in config.outbox_path.glob("*.json"):
        data = json.loads(state.read_text(encoding="utf-8"))
        data["next_attempt"] = time.time() - 1
        state.write_text(json.dumps(data), encoding="utf-8")


def test_mail_outage_defers_and_the_next_run_delivers_exactly_once(site, smtp_down, tmp_path):
    config = site_config(site, tmp_path, smtp_down)
    spool = spool_with(anomaly_files(site), tmp_path / "spool")
    res = run(config, spool)
    assert res.new_rows and res.deferred and res.exit_code() == EXIT_DEFERRED
    assert "waiting in the outbox" in res.summary()
    assert [e.message_id for e in list_outbox(config)] == [res.message_id]
    still_down = run(config, None)  # a cron run before the backoff passed: quiet, but exit status 3
    assert still_down.summary() == "" and still_down.exit_code() == EXIT_DEFERRED
    smtp_down.start()
    make_due(config)  # the backoff has passed
    later = run(config, spool)
    assert later.new_rows == 0 and later.outbox.sent == [res.message_id] and later.exit_code() == EXIT_OK
    run(config, spool)
    time.sleep(0.3)
    assert [m.message["Message-ID"] for m in smtp_down.inbox.messages] == [res.message_id]


def test_a_template_error_fails_the_run_and_the_next_run_catches_up(site, smtp_plain, tmp_path):
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "subject.txt").write_text("{{ sensor }} {{ no_such_variable }}", encoding="utf-8")
    config = replace(site_config(site, tmp_path, smtp_plain), templates=templates)
    spool = spool_with(anomaly_files(site), tmp_path / "spool")
    with pytest.raises(ReportError, match="no_such_variable"):
        run(config, spool)
    (report_id,) = unrendered_reports(config)  # diff archived the rows; nothing was rendered or sent
    assert smtp_plain.inbox.messages == []
    (templates / "subject.txt").write_text("fixed: {{ total }} new rows on {{ sensor }}", encoding="utf-8")
    res = run(config, spool)
    assert res.new_rows == 0 and res.caught_up == [report_id] and report_id in res.summary()
    (got,) = smtp_plain.inbox.wait(1)
    assert got.message["X-Flowdiff-Report"] == report_id and got.message["Subject"].startswith("fixed: ")
    assert unrendered_reports(config) == []


def test_run_before_any_baseline_only_collects(site, tmp_path):
    config = replace(parse_config(site["normal"].config_dict(tmp_path / "fresh")), stale_after=0)
    res = run(config, spool_with(site["normal"].last_day_files[:3], tmp_path / "spool"))
    assert res.no_baseline and res.diff is None and res.collect.files_ok == 3
    assert res.exit_code(exit_on_new=True) == EXIT_OK
    # not silent: one line saying how much is collected and that learning is due (daily, not every pass)
    assert (
        res.summary() == "health no-baseline: no baseline yet: 12 intervals collected (0.5 days); "
        "flowdiff learn is due"
    )
    assert run(config, tmp_path / "spool").summary() == ""


def test_overlapping_runs_wait_then_fail_clearly(site, tmp_path):
    config = site_config(site, tmp_path)
    with file_lock(run_lock_path(config), wait=0):
        t0 = time.monotonic()
        with pytest.raises(LockError, match=r"busy \(locked by pid \d+\)"):
            run(config, None, lock_wait=0.5)
        assert 0.4 <= time.monotonic() - t0 < 5
    assert run(config, None).new_rows == 0  # free again


def test_watch_mails_within_seconds_of_rotation_and_survives_a_bad_capture(site, smtp_plain, tmp_path):
    config = replace(site_config(site, tmp_path, smtp_plain), settle=3600)  # only a newer file closes one
    anomaly = next(a for a in site["anomalous"].anomalies if a.name == "odd-ethertype")
    hour = capture_of(site["anomalous"].last_day_files, anomaly.time).name
    # before the watch starts: the ordinary captures of the day up to that hour, and a broken one
    spool = spool_with([f for f in site["normal"].last_day_files if f.name < hour], tmp_path / "spool")
    broken = spool / "20240305235959.pcap"
    broken.write_bytes(pcap_bytes([], snaplen=96) + b"\xff" * 20)  # a record header with a bogus length
    os.utime(broken, (0, 0))
    stop = threading.Event()
    passes = []
    thread = threading.Thread(
        target=watch, args=(config, spool), kwargs={"poll": 0.1, "stop_event": stop, "on_pass": passes.append}
    )
    thread.start()
    try:
        deadline = time.time() + 30
        while not passes and time.time() < deadline:  # the start-up pass
            time.sleep(0.05)
        assert passes and passes[0].new_rows == 0 and passes[0].errors  # broken capture reported, no rows
        shutil.copy(site["anomalous"].directory / hour, spool / hour)  # tcpdump writes the anomaly's hour
        time.sleep(0.5)
        assert smtp_plain.inbox.messages == [] and len(passes) == 1  # still open: nothing yet
        rotated = time.time()
        (spool / "20240307000000.pcap").write_bytes(pcap_bytes([], snaplen=96))  # tcpdump rotates
        (got,) = smtp_plain.inbox.wait(1, timeout=30)
        latency = got.when - rotated
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    text = got.message.get_body(preferencelist=("plain",)).get_content()
    for row in anomaly.rows:
        assert all(f"{k}=" in text for k, _ in row.key)
        assert f"--where src_mac={dict(row.key)['src_mac']}" in text
    print(f"\nrotation-to-inbox: {latency:.2f} s (poll 0.1 s)")
    assert latency < 10


def test_watch_retries_a_failed_pass(site, tmp_path, caplog):
    config = site_config(site, tmp_path)
    (tmp_path / "spool").mkdir()
    stop = threading.Event()
    passes = []
    with file_lock(run_lock_path(config), wait=0):  # a long cron run holds the lock
        thread = threading.Thread(
            target=watch,
            args=(config, tmp_path / "spool"),
            kwargs={"poll": 0.05, "stop_event": stop, "lock_wait": 0.2, "on_pass": passes.append},
        )
        thread.start()
        time.sleep(0.6)
        assert passes == []
    deadline = time.time() + 10
    while not passes and time.time() < deadline:
        time.sleep(0.05)
    stop.set()
    thread.join(10)
    assert len(passes) == 1 and not thread.is_alive()
    assert "busy" in caplog.text and "next try in 2 s" in caplog.text


def test_sigterm_stops_the_watch_cleanly(site, tmp_path):
    config_file = write_config(site, tmp_path)
    lock = tmp_path / "site" / "reports" / ".run.lock"
    spool = tmp_path / "spool"
    spool.mkdir()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flowdiff",
            "watch",
            str(spool),
            "--config",
            str(config_file),
            "--poll",
            "0.1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        deadline = time.time() + 30
        while time.time() < deadline and not lock.exists():  # the start-up pass has begun
            time.sleep(0.1)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert out.startswith("watch stopped: 1 passes, 0 reports, 0 failed passes")


# ---------------------------------------------------------------- CLI


def cli():
    import click

    from flowdiff.cli.mail_cmds import register

    @click.group()
    def main() -> None:
        """test group"""

    register(main)
    return main


def _toml(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return str(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml(str(k))} = {_toml(x)}" for k, x in v.items()) + "}"
    return json.dumps(str(v))  # a TOML basic string is a JSON string for these values


def write_config(site, tmp_path: Path, server=None) -> Path:
    """The site's config as a TOML file (store, baselines, reports copied under tmp_path), plus [mail]."""
    shutil.copytree(site["learned"], tmp_path / "site")
    raw = site["normal"].config_dict(tmp_path / "site")
    tables = raw.pop("tables")
    lines = [f"{k} = {_toml(v)}" for k, v in raw.items()] + ["stale_after = 0"]
    if server is not None:
        kw = server.mail_kwargs()
        lines += [
            "[mail]",
            f"host = {_toml(kw['host'])}",
            f"port = {kw['port']}",
            'tls = "none"',
            f"from = {_toml(kw['from_addr'])}",
            f"to = {_toml(kw['to'])}",
        ]
    for name, spec in tables.items():
        lines += [f"[tables.{name}]", *(f"{k} = {_toml(v)}" for k, v in spec.items())]
    path = tmp_path / "flowdiff.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_cli_run_reports_new_rows_and_is_quiet_when_nothing_is_new(site, smtp_plain, tmp_path):
    cfg_file = write_config(site, tmp_path, smtp_plain)
    spool = spool_with(anomaly_files(site), tmp_path / "spool")
    args = ["run", "--config", str(cfg_file), "--spool", str(spool), "--exit-code"]
    r = CliRunner().invoke(cli(), args)
    assert r.exit_code == 1, r.output
    assert "new rows" in r.output and "1 message sent" in r.output and len(r.output.splitlines()) == 1
    assert len(smtp_plain.inbox.wait(1)) == 1
    r = CliRunner().invoke(cli(), args)  # the same spool again: nothing new, nothing printed
    assert r.exit_code == 0 and r.output == ""
    r = CliRunner().invoke(cli(), ["outbox", "--config", str(cfg_file)])
    assert r.exit_code == 0 and "outbox is empty" in r.output


def test_cli_notify_sends_what_diff_produced(site, smtp_plain, tmp_path):
    from flowdiff.config import load_config
    from flowdiff.diff import diff

    cfg_file = write_config(site, tmp_path, smtp_plain)
    config = load_config(cfg_file)
    collect([str(p) for p in anomaly_files(site)], config)
    result = diff(config)
    assert result.report_id
    r = CliRunner().invoke(cli(), ["notify", "--config", str(cfg_file)])
    assert r.exit_code == 0, r.output
    assert f"report {result.report_id}: queued" in r.output and "sent <" in r.output
    (got,) = smtp_plain.inbox.wait(1)
    assert got.message["X-Flowdiff-Report"] == result.report_id
    r = CliRunner().invoke(cli(), ["notify", "--config", str(cfg_file)])
    assert r.exit_code == 0 and "queued" not in r.output
    time.sleep(0.2)
    assert len(smtp_plain.inbox.messages) == 1


def test_cli_errors_are_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[mail]\nhots = 'x'\n", encoding="utf-8")
    r = CliRunner().invoke(cli(), ["test-mail", "--config", str(bad)])
    assert r.exit_code == 2 and r.output.startswith("Error: config ") and "mail.hots" in r.output
    r = CliRunner().invoke(cli(), ["outbox", "retry"])
    assert r.exit_code == 2 and "mail is not configured" in r.output


def test_cli_run_a_report_refused_for_good_alerts_in_the_same_pass(site, tmp_path, monkeypatch, caplog):
    """Issue 8 item 6: a 552 (size) moves the report to outbox/failed and the outbox-failed health
    alert is printed and mailed by the same run, not one cron pass later; the drop hint carries --config."""
    srv = smtp_server.make_server(tmp_path, "none", size_limit=4000)  # health mails fit, the report does not
    try:
        cfg_file = write_config(site, tmp_path, srv)
        spool = spool_with(anomaly_files(site), tmp_path / "spool")
        monkeypatch.chdir(tmp_path / "spool")
        args = ["run", "--config", str(cfg_file), "--spool", str(spool)]
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 0, r.output
        assert "health outbox-failed:" in r.output and "552" in r.output
        assert f"--config {cfg_file.resolve()} removes it" in caplog.text  # the one warning line
        subjects = [m.message["X-Flowdiff-Health"] for m in srv.inbox.wait(1)]
        assert "outbox-failed" in subjects
        assert len(list((tmp_path / "site" / "reports" / "outbox" / "failed").glob("*.eml"))) == 1
    finally:
        srv.stop()
