"""flowdiff status: the sensor on one screen, as the user runs it (CliRunner), in table and JSON form."""

from __future__ import annotations

import json
import os
import shutil
import time

import test_pipeline
from click.testing import CliRunner
from test_pipeline import anomaly_files, site_config, spool_with, write_config

from flowdiff.cli import main
from flowdiff.config import load_config
from flowdiff.exitcodes import ExitCode
from flowdiff.pipeline import run
from flowdiff.status import status
from flowdiff.store import Store
from flowdiff.vocab import iso_time

site = test_pipeline.site  # the learned site, built once per module


def test_status_of_a_healthy_sensor_then_a_stale_spool(site, tmp_path):
    cfg_file = write_config(site, tmp_path)
    cfg_file.write_text(cfg_file.read_text().replace("stale_after = 0", 'stale_after = "1h"'))
    config = load_config(cfg_file)
    spool = spool_with(anomaly_files(site), tmp_path / "spool")
    now = time.time()
    for i, f in enumerate(sorted(spool.iterdir(), reverse=True)):  # rotated every minute up to now
        os.utime(f, (now - 60 * (i + 1), now - 60 * (i + 1)))
    res = run(config, spool, all_files=True)
    assert res.new_rows and res.health.open == []

    r = CliRunner().invoke(main, ["status", "--config", str(cfg_file), "--spool", str(spool)])
    assert r.exit_code == ExitCode.OK, r.output
    lines = dict(line.split(":", 1) for line in r.output.splitlines())
    assert lines["sensor"].strip() == "demo" and lines["health"].strip() == "ok"
    assert lines["baseline"].strip().startswith("v0001, learned ")
    assert lines["last report"].strip() == f"{res.diff.report_id}, {res.new_rows} rows, not sent"
    assert lines["outbox"].strip() == "0 waiting, 0 failed"
    newest = max(spool.iterdir(), key=lambda p: p.name)
    assert lines["last capture"].strip().endswith(str(newest.resolve()))

    r = CliRunner().invoke(
        main, ["status", "--config", str(cfg_file), "--spool", str(spool), "--format", "json"]
    )
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["healthy"] is True and doc["problems"] == []
    assert doc["baseline"]["version"] == "v0001" and doc["last_report"]["id"] == res.diff.report_id
    store = Store(config.store)
    newest_interval = max(max(store.intervals(t)) for t in store.tables())
    assert doc["last_interval"] == iso_time(newest_interval)
    assert doc["outbox_waiting"] == 0 and doc["outbox_failed"] == 0

    for i, f in enumerate(sorted(spool.iterdir(), reverse=True)):  # two hours later, nothing new: tcpdump
        os.utime(f, (now - 7200 - i, now - 7200 - i))  # died (status sees it without any run)
    r = CliRunner().invoke(
        main, ["status", "--config", str(cfg_file), "--spool", str(spool), "--format", "json"]
    )
    assert r.exit_code == ExitCode.NEW_ROWS == 1
    doc = json.loads(r.output)
    assert doc["healthy"] is False and [p["kind"] for p in doc["problems"]] == ["stale-spool"]
    r = CliRunner().invoke(main, ["status", "--config", str(cfg_file)])  # the spool the last run looked at
    assert r.exit_code == 1
    assert "health:         1 problem open" in r.output
    assert f"  stale-spool: no new capture in {spool} for 2 h 0 min" in r.output


def test_status_shows_recorded_problems_and_the_outbox(site, tmp_path):
    config = site_config(site, tmp_path)
    failed = config.outbox_path / "failed"
    failed.mkdir(parents=True)
    (failed / "m1.eml").write_bytes(b"Subject: x\r\n\r\nbody\r\n")
    (failed / "m1.json").write_text(json.dumps({"subject": "x", "last_error": "552 too big"}))
    bad = tmp_path / "spool" / "20261201000000.pcap"
    bad.parent.mkdir()
    shutil.copy(test_pipeline.ROOT / "tests/data/bad/libpcap__pcapng-invalid-vers-1.pcapng", bad)
    os.utime(bad, (0, 0))
    run(config, bad.parent)  # records the unreadable capture (it is not looked at again)
    st = status(config)
    assert st.exit_code == 1 and st.outbox_failed == 1 and st.outbox_waiting == 0
    assert sorted(p.kind for p in st.problems) == ["capture-errors", "outbox-failed"]
    assert st.last_collected["status"] == "failed"
    bad.unlink()
    (failed / "m1.eml").unlink()
    assert status(config).exit_code == 0


def test_status_on_an_empty_site_says_learn_is_due(tmp_path):
    r = CliRunner().invoke(main, ["status"])
    assert r.exit_code == 1
    assert "baseline:       none yet (flowdiff learn)" in r.output
    assert "no-baseline: no baseline yet: 0 intervals collected" in r.output
    assert not (tmp_path / "store").exists() and not (tmp_path / "baselines").exists()  # writes nothing
