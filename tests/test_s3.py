"""The store on object storage (``store = "s3://bucket/prefix"``), against a real S3-compatible server
on loopback (moto's server mode): collect, learn, diff, show and status end to end give what a local
store gives; an unreachable endpoint, wrong credentials and a missing bucket are one line, exit 2."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import fixtures_baseline as fx
import pandas as pd
import pytest
from click.testing import CliRunner

from flowdiff.baseline import get_version
from flowdiff.cli import main as flowdiff_main
from flowdiff.config import load_config
from flowdiff.store import LedgerEntry, Store

moto_server = pytest.importorskip(
    "moto.server", reason="moto[server] is not installed (pip install 'moto[server]')"
)

BUCKET = "flows"
CAPTURES = ["tcpdump__LINKTYPE_IPV4.pcap", "zeek__dns__ech.pcap", "zeek__nflog-http.pcap"]


@pytest.fixture(scope="module")
def s3_server():
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    srv = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    host, port = srv.get_host_and_port()
    yield f"http://{host}:{port}"
    srv.stop()


@pytest.fixture
def s3(s3_server, monkeypatch):
    """Credentials and endpoint in the standard AWS environment, a fresh bucket; returns the endpoint."""
    from pyarrow import fs

    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    host = s3_server.split("://", 1)[1]
    admin = fs.S3FileSystem(
        endpoint_override=host,
        scheme="http",
        region="us-east-1",
        allow_bucket_creation=True,
        allow_bucket_deletion=True,
    )
    admin.delete_dir(BUCKET) if admin.get_file_info(BUCKET).type != fs.FileType.NotFound else None
    admin.create_dir(BUCKET)
    return admin


def _config(root: Path, store: str, extra: str = "", interval: int = fx.INTERVAL_S) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    text = fx.config_toml(root, extra).replace(f'store = "{root / "store"}"', f'store = "{store}"')
    text = text.replace(f"interval = {fx.INTERVAL_S}\n", f"interval = {interval}\n")
    (root / "flowdiff.toml").write_text(text, encoding="utf-8")
    return root / "flowdiff.toml"


def _cli(cfg: Path, *args: str):
    return CliRunner().invoke(flowdiff_main, [*args, "--config", str(cfg)])


def _keys(admin, prefix: str) -> list[str]:
    from pyarrow import fs

    infos = admin.get_file_info(fs.FileSelector(f"{BUCKET}/{prefix}", recursive=True, allow_not_found=True))
    return sorted(i.path for i in infos if i.type == fs.FileType.File)


def test_collect_learn_diff_show_status_end_to_end(s3, tmp_path, data_dir):
    s3cfg = _config(tmp_path / "s3site", f"s3://{BUCKET}/site1", interval=60)
    localcfg = _config(tmp_path / "localsite", str(tmp_path / "localsite" / "store"), interval=60)
    caps = [str(data_dir / c) for c in CAPTURES]
    for cfg in (s3cfg, localcfg):
        r = _cli(cfg, "collect", *caps)
        assert r.exit_code == 0, r.output
    # what is stored is the same, read back by the library and by pyarrow straight from the bucket
    s3store, local = Store(load_config(s3cfg).store), Store(load_config(localcfg).store)
    assert s3store.tables() == local.tables() and s3store.tables()
    for t in local.tables():
        pd.testing.assert_frame_equal(s3store.read(t), local.read(t))
        assert s3store.interval_tokens(t).keys() == local.interval_tokens(t).keys()
    assert pd.testing.assert_frame_equal(s3store.describe(), local.describe()) is None
    keys = _keys(s3, "site1")
    assert any("/pairs/sensor=s1/" in k and k.endswith(".parquet") for k in keys)
    assert not any(".tmp" in k for k in keys)
    # the ledger: one object per capture, after the data; a second collect skips them all
    ledger = _keys(s3, "site1/_ledger")
    assert len(ledger) == len(CAPTURES)
    assert [e.path for e in s3store.ledger()] == [e.path for e in local.ledger()]
    r = _cli(s3cfg, "collect", *caps)
    assert r.exit_code == 0 and len(_keys(s3, "site1/_ledger")) == len(CAPTURES)
    pd.testing.assert_frame_equal(s3store.read("pairs"), local.read("pairs"))
    # learn, show, diff, status
    for cfg in (s3cfg, localcfg):
        r = _cli(cfg, "learn", "--min-intervals", "1", "--min-packets", "1")
        assert r.exit_code == 0, r.output
    assert {t: e.hash for t, e in get_version(load_config(s3cfg)).tables.items()} == {
        t: e.hash for t, e in get_version(load_config(localcfg)).tables.items()
    }
    a, b = _cli(s3cfg, "show", "pairs", "--format", "csv"), _cli(localcfg, "show", "pairs", "--format", "csv")
    assert a.exit_code == 0 and a.output == b.output and a.output.count("\n") > 2
    r = _cli(s3cfg, "diff")
    assert r.exit_code == 0, r.output
    r = _cli(s3cfg, "status", "--format", "json")
    assert r.exit_code in (0, 1), r.output
    assert CAPTURES[-1] in r.output or "zeek__" in r.output
    # --store s3://... on the command line opens the same store (endpoint from $AWS_ENDPOINT_URL)
    a = _cli(localcfg, "tables", "--store", f"s3://{BUCKET}/site1", "--format", "csv")
    b = _cli(localcfg, "tables", "--format", "csv")
    assert a.exit_code == 0 and a.output == b.output


def test_rewriting_an_interval_is_exact_and_leaves_no_temp_object(s3, tmp_path):
    cfg = load_config(_config(tmp_path, f"s3://{BUCKET}/p2"))
    fx.write(cfg, fx.day(0), "a")
    before = Store(cfg.store).read("pairs")
    fx.write(cfg, fx.day(0), "a")  # the same source again (a re-collect after a crash): no double count
    pd.testing.assert_frame_equal(Store(cfg.store).read("pairs"), before)
    fx.write(cfg, fx.day(0), "b")  # another source into the same intervals: counts add up
    after = Store(cfg.store).read("pairs")
    assert after["packets"].sum() == 2 * before["packets"].sum()
    assert len(_keys(s3, "p2/pairs")) == fx.INTERVALS + 1  # one object per interval + _table.json


def _bad(cfg: Path, *args: str) -> str:
    r = _cli(cfg, *args)
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: store s3://"), r.output
    assert "Traceback" not in r.output and "testing" not in r.output  # no secret in the line
    return lines[0]


def test_missing_bucket_is_one_line_and_nothing_is_written(s3, tmp_path, data_dir):
    from pyarrow import fs

    cfg = _config(tmp_path, "s3://no-such-bucket/x")
    line = _bad(cfg, "collect", str(data_dir / CAPTURES[0]))
    assert "bucket 'no-such-bucket' does not exist" in line
    assert s3.get_file_info("no-such-bucket").type == fs.FileType.NotFound
    assert "does not exist" in _bad(cfg, "learn")
    assert "does not exist" in _bad(cfg, "show", "pairs")


def test_wrong_credentials_are_one_line_and_nothing_is_written(s3, tmp_path, data_dir, monkeypatch):
    import moto.settings

    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # the server checks keys now
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG0")
    cfg = _config(tmp_path, f"s3://{BUCKET}/p3")
    line = _bad(cfg, "collect", str(data_dir / CAPTURES[0]))
    assert "access denied" in line and "AKIAWRONG" not in line
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", float("inf"))
    assert _keys(s3, "p3") == []


def test_unreachable_endpoint_is_one_line(s3, tmp_path, data_dir, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    cfg = _config(tmp_path, f"s3://{BUCKET}/p4", f'[s3]\nendpoint_url = "http://127.0.0.1:{port}"')
    line = _bad(cfg, "collect", str(data_dir / CAPTURES[0]))
    assert f"cannot reach the endpoint http://127.0.0.1:{port}" in line
    assert _keys(s3, "p4") == []


def test_config_keeps_the_url_and_the_endpoint(tmp_path):
    cfg = load_config(_config(tmp_path, "s3://b/some/prefix/", '[s3]\nendpoint_url = "http://minio:9000"'))
    assert str(cfg.store) == "s3://b/some/prefix"
    assert cfg.store.endpoint_url == "http://minio:9000"
    assert repr(Store(cfg.store)) == "Store('s3://b/some/prefix', sensor=None)"
    assert json.loads(json.dumps(str(cfg.store))) == "s3://b/some/prefix"


def test_collect_killed_mid_write_then_rerun_gives_the_clean_store(s3, tmp_path, data_dir):
    """kill -9 between two object writes: readers see whole objects, and the next collect finishes the
    job with every count once (the sources lists; the ledger entry is written after the data)."""
    cap = str(data_dir / CAPTURES[1])
    clean = _config(tmp_path / "clean", f"s3://{BUCKET}/clean")
    crashed = _config(tmp_path / "crashed", f"s3://{BUCKET}/crashed")
    assert _cli(clean, "collect", cap).exit_code == 0
    env = {**os.environ, "FLOWDIFF_CRASH_AT": "3"}
    run = subprocess.run(
        [sys.executable, "-m", "flowdiff", "collect", cap, "--config", str(crashed)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == -9, run.stderr
    assert _keys(s3, "crashed/_ledger") == []  # killed before its ledger entry
    a, b = Store(load_config(crashed).store), Store(load_config(clean).store)
    assert 0 < sum(len(a.files(t)) for t in a.tables()) < sum(len(b.files(t)) for t in b.tables())
    r = _cli(crashed, "collect", cap)
    assert r.exit_code == 0, r.output
    for t in b.tables():
        pd.testing.assert_frame_equal(a.read(t), b.read(t))
    assert len(_keys(s3, "crashed/_ledger")) == 1


def _entry(i: int) -> LedgerEntry:
    return LedgerEntry(
        f"/caps/{i}.pcap", 100 + i, i, f"{i:064x}", 10, "ok", tables=["pairs"], capture_id=f"c{i}"
    )


def _ledger_objects(admin, prefix: str) -> tuple[list[str], list[str]]:
    keys = _keys(admin, f"{prefix}/_ledger")
    return [k for k in keys if k.endswith(".fold.jsonl")], [k for k in keys if k.endswith(".json")]


def test_collect_folds_the_ledger_and_reads_it_back_the_same(s3, tmp_path, data_dir, monkeypatch):
    """Every collect reads the whole ledger: one object per capture would be one GET per capture ever
    collected. Past LEDGER_FOLD new objects, collect folds them into one; the ledger reads the same."""
    import flowdiff.store

    monkeypatch.setattr(flowdiff.store, "LEDGER_FOLD", 2)
    s3cfg = _config(tmp_path / "s3site", f"s3://{BUCKET}/fold", interval=60)
    localcfg = _config(tmp_path / "localsite", str(tmp_path / "localsite" / "store"), interval=60)
    for cap in CAPTURES:
        for cfg in (s3cfg, localcfg):
            r = _cli(cfg, "collect", str(data_dir / cap))
            assert r.exit_code == 0, r.output
    folds, entries = _ledger_objects(s3, "fold")
    assert len(folds) == 1 and len(entries) == 1  # folded at the second capture, the third one after
    s3store, local = Store(load_config(s3cfg).store, "s1"), Store(load_config(localcfg).store, "s1")

    def seen(store):  # collected_at differs: the two collects ran at different times
        return [dataclasses.replace(e, collected_at="") for e in store.ledger()]

    assert seen(s3store) == seen(local) and len(local.ledger()) == len(CAPTURES)
    for cfg in (s3cfg, localcfg):  # every capture known: nothing collected again
        r = _cli(cfg, "collect", *(str(data_dir / c) for c in CAPTURES))
        assert r.exit_code == 0 and "0 files collected" in r.output, r.output
    for t in local.tables():
        pd.testing.assert_frame_equal(s3store.read(t), local.read(t))


def test_a_fold_cut_short_leaves_every_entry_once(s3):
    """Killed between the PUT of the fold and the deletes: the objects it holds stay behind, readers
    skip them by name, the next fold deletes them."""
    url = f"s3://{BUCKET}/cut"
    writer = Store(url, "s1")
    for i in range(5):
        writer.ledger_append(_entry(i))
    with pytest.MonkeyPatch.context() as mp:  # the deletes never happen
        mp.setattr(type(writer), "_delete_if_there", lambda self, key: None)
        assert writer.fold_ledger(at=1) == 5
    folds, entries = _ledger_objects(s3, "cut")
    assert len(folds) == 1 and len(entries) == 5
    assert [e.path for e in Store(url, "s1").ledger()] == [f"/caps/{i}.pcap" for i in range(5)]
    writer = Store(url, "s1")
    writer.ledger()
    writer.ledger_append(_entry(5))
    assert writer.fold_ledger(at=1) == 1
    folds, entries = _ledger_objects(s3, "cut")
    assert len(folds) == 1 and entries == []
    assert [e.path for e in Store(url, "s1").ledger()] == [f"/caps/{i}.pcap" for i in range(6)]
    assert Store(url).ledger() == Store(url, "s1").ledger()  # every sensor's: the same one here


def test_an_entry_written_after_a_fold_by_a_clock_stepped_back_still_counts(s3):
    import flowdiff.store

    url = f"s3://{BUCKET}/clock"
    writer = Store(url, "s1")
    for i in range(3):
        writer.ledger_append(_entry(i))
    assert writer.fold_ledger(at=1) == 3
    writer = Store(url, "s1")
    writer.ledger()  # collect reads the ledger before it writes
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(flowdiff.store.time, "time_ns", lambda: 1_000_000_000)  # 1970
        writer.ledger_append(_entry(3))
    assert [e.path for e in Store(url, "s1").ledger()] == [f"/caps/{i}.pcap" for i in range(4)]


def test_a_reader_racing_a_fold_reads_every_entry(s3, monkeypatch):
    """A reader lists the entries, the writer folds and deletes them, the reader's GETs miss: it reads
    the ledger again rather than losing them."""
    url = f"s3://{BUCKET}/race"
    writer = Store(url, "s1")
    for i in range(4):
        writer.ledger_append(_entry(i))
    reader = Store(url, "s1")
    plans = reader._ledger_plans
    calls = []

    def listed_then_folded(*args, **kw):
        out = plans(*args, **kw)
        if not calls:
            assert writer.fold_ledger(at=1) == 4
        calls.append(1)
        return out

    monkeypatch.setattr(reader, "_ledger_plans", listed_then_folded)
    assert [e.path for e in reader.ledger()] == [f"/caps/{i}.pcap" for i in range(4)]
    assert len(calls) == 2


def test_a_fold_that_fails_is_one_warning_and_the_collect_stands(s3, tmp_path, data_dir, monkeypatch, caplog):
    """A bucket that refuses the fold (say, no delete permission) must not stop collection: the captures
    collected stand, the warning names the store, the next collect tries again."""
    import flowdiff.store
    from flowdiff.errors import StoreError

    def refused(self, at=None):
        raise StoreError(f"store {self.url}: access denied (check the credentials)")

    monkeypatch.setattr(flowdiff.store.S3Store, "fold_ledger", refused)
    cfg = _config(tmp_path, f"s3://{BUCKET}/refused", interval=60)
    r = CliRunner().invoke(flowdiff_main, ["collect", str(data_dir / CAPTURES[0]), "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    assert "1 file collected" in r.output
    (warning,) = [r for r in caplog.records if r.levelname == "WARNING"]
    assert "store s3://flows/refused: access denied" in warning.getMessage()
    assert "folding the ledger" in warning.getMessage()
    assert len(Store(load_config(cfg).store, "s1").ledger()) == 1
