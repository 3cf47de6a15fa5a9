"""learn, show and diff on a real dask.distributed cluster (a scheduler and two worker processes on
loopback) give the same results as the local engine; without a scheduler Dask is never imported."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import fixtures_baseline as fx
import pandas as pd
import pyarrow as pa
import pytest
from click.testing import CliRunner

from flowdiff import distributed as fdist
from flowdiff.baseline import get_version, history, learn
from flowdiff.cli import main as flowdiff_main
from flowdiff.diff import diff
from flowdiff.errors import ClusterError
from flowdiff.schema import table_schema
from flowdiff.store import Store

pytest.importorskip(
    "distributed", reason="dask.distributed is not installed (pip install 'dask[distributed]')"
)

DAYS = 2


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    c = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=":0",
        silence_logs=40,
    )
    yield c.scheduler_address
    c.close()


def _write_sensor(config, flows, source: str, sensor: str) -> None:
    store = Store(config.store, sensor)
    for name, df in fx.tables_of(flows, config).items():
        tc = config.tables[name]
        store.ensure_table(name, tc.keys, config.interval)
        schema = table_schema(tc.keys)
        t = pa.Table.from_pandas(df[schema.names], preserve_index=False).cast(schema)
        store.write_interval_rows(name, tc.keys, t, source)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A store of two sensors over several days (many chunks once the chunk size is made small)."""
    root = tmp_path_factory.mktemp("dask-site")
    config = fx.write_config(root)
    for n in range(DAYS):
        fx.write(config, fx.day(n), f"day{n}")
        _write_sensor(config, fx.day(n + 10) + fx.scan(n), f"b-day{n}", "s2")
    return root


@pytest.fixture
def site(template, tmp_path, monkeypatch):
    """Two copies of the same store: one learns locally, the other on the cluster."""
    monkeypatch.setattr(sys.modules["flowdiff.baseline"], "_CHUNK_INTERVALS", 3)
    monkeypatch.setattr(sys.modules["flowdiff.diff"], "_CHUNK_INTERVALS", 2)
    monkeypatch.setattr(fdist, "_SHOW_CHUNK", 3)
    return fx.copy_site(template, tmp_path / "local"), fx.copy_site(template, tmp_path / "dask")


def _hashes(config) -> dict[str, str]:
    if isinstance(config, Path):
        from flowdiff.config import load_config

        config = load_config(config)
    return {t: e.hash for t, e in get_version(config).tables.items()}


def _cli(config, *args: str):
    return CliRunner().invoke(flowdiff_main, [*args, "--config", str(config.source)])


def test_learn_on_the_cluster_equals_the_local_learn(site, cluster):
    local, remote = site
    res_local = learn(local)
    r = _cli(remote, "learn", "--scheduler", cluster)
    assert r.exit_code == 0, r.output
    assert _hashes(remote) == _hashes(local)
    # [dask] scheduler in the config does the same; the printed counts are the same too
    remote = fx.write_config(Path(remote.source).parent, extra=f'[dask]\nscheduler = "{cluster}"')
    r = _cli(remote, "learn", "--format", "json", "--force")
    assert r.exit_code == 0, r.output
    recs = {json.loads(x)["table"]: json.loads(x) for x in r.output.splitlines()}
    assert {t: (rec["keys"], rec["seen"]) for t, rec in recs.items()} == {
        t: (lt.rows, lt.candidates) for t, lt in res_local.tables.items()
    }
    assert _hashes(remote) == _hashes(local)
    # the rows themselves, read back from the Parquet files
    for t, e in get_version(local).tables.items():
        a = pd.read_parquet(local.baselines / e.file)
        b = pd.read_parquet(remote.baselines / get_version(remote).tables[t].file)
        pd.testing.assert_frame_equal(a, b)
        assert len(a) > 0


def test_diff_on_the_cluster_equals_the_local_diff(site, cluster):
    local, _ = site
    learn(local)
    fx.write(local, fx.day(DAYS) + fx.anomaly("new_host", DAYS) + fx.anomaly("lldp", DAYS), "new")
    _write_sensor(local, fx.anomaly("new_service", DAYS, 2), "new-b", "s2")
    a = diff(local, dry_run=True)
    b = diff(local, dry_run=True, scheduler=cluster)
    assert sum(len(df) for df in a.rows.values()) > 0
    assert a.rows.keys() == b.rows.keys()
    for t in a.rows:
        pd.testing.assert_frame_equal(a.rows[t], b.rows[t])
    r = _cli(local, "diff", "--format", "csv", "--scheduler", cluster)  # the user's command, recorded
    assert r.exit_code == 0, r.output
    assert "10.1.0.77" in r.output and r.output.count("\n") == 1 + sum(len(df) for df in a.rows.values())


def test_show_on_the_cluster_equals_the_local_show(site, cluster):
    local, _ = site
    store = Store(local.store)
    for kw in ({}, {"by_interval": True}, {"since": "2026-11-03T08:05:00Z", "until": "2026-11-04T08:10:00Z"}):
        a = store.totals("pairs", **kw)
        b = store.totals("pairs", scheduler=cluster, **kw)
        assert len(a) > 0
        pd.testing.assert_frame_equal(a, b)
    for args in (["show", "services"], ["show", "pairs", "--by-interval", "--top", "50"]):
        ra = _cli(local, *args, "--format", "csv")
        rb = _cli(local, *args, "--format", "csv", "--scheduler", cluster)
        assert ra.exit_code == rb.exit_code == 0, rb.output
        assert ra.output == rb.output


def test_without_a_scheduler_nothing_imports_dask(site):
    local, _ = site
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from flowdiff.cli import main\n"
        f"r = CliRunner().invoke(main, ['learn', '--config', {str(local.source)!r}])\n"
        f"s = CliRunner().invoke(main, ['show', 'pairs', '--config', {str(local.source)!r}])\n"
        "print(r.exit_code, s.exit_code, 'dask' in sys.modules, 'distributed' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["0", "0", "False", "False"], out.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_scheduler_is_one_line_and_writes_nothing(site, monkeypatch):
    local, _ = site
    monkeypatch.setattr(fdist, "CONNECT_TIMEOUT", 1.0)
    address = f"tcp://127.0.0.1:{_free_port()}"
    r = _cli(local, "learn", "--scheduler", address)
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert (
        len(lines) == 1
        and lines[0].startswith("Error: scheduler tcp://127.0.0.1:")
        and "cannot connect" in lines[0]
    )
    assert list(history(local)) == []
    r = _cli(local, "show", "pairs", "--scheduler", address)
    assert r.exit_code == 2 and "cannot connect" in r.output


def test_learn_from_a_store_on_s3_on_the_cluster(site, cluster, tmp_path, monkeypatch):
    """Workers read the partitions straight from object storage (a moto server on loopback)."""
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed")
    from pyarrow import fs

    local, _ = site
    monkeypatch.setattr(sys.modules["flowdiff.baseline"], "_CHUNK_INTERVALS", 8)  # fewer S3 round trips
    srv = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    try:
        host, port = srv.get_host_and_port()
        aws = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        for k, v in aws.items():
            monkeypatch.setenv(k, v)
        admin = fs.S3FileSystem(
            endpoint_override=f"{host}:{port}",
            scheme="http",
            allow_bucket_creation=True,
            allow_delayed_open=True,
        )
        admin.create_dir("flows")
        fs.copy_files(str(local.store), "flows/site", destination_filesystem=admin)
        extra = f'[s3]\nendpoint_url = "http://{host}:{port}"'
        (tmp_path / "s3site").mkdir()
        remote = fx.write_config(tmp_path / "s3site", extra=extra)
        text = (
            Path(remote.source).read_text().replace(f'store = "{remote.store}"', 'store = "s3://flows/site"')
        )
        Path(remote.source).write_text(text)
        _set_worker_env(cluster, aws)  # the workers' credentials come from their environment
        learn(local)
        r = _cli(remote, "learn", "--scheduler", cluster)
        assert r.exit_code == 0, r.output
        assert _hashes(Path(remote.source)) == _hashes(local)
    finally:
        srv.stop()


def test_worker_killed_during_learn_fails_cleanly_or_completes_correctly(site, cluster, tmp_path):
    """Last in the module: it kills a worker of the shared cluster (its nanny starts a new one).

    The worker to kill is the one that reports (through a file) that it is inside a learn task, which
    the task delay keeps busy long enough."""
    local, remote = site
    expected = _hashes_after_learn(local)
    started = tmp_path / "started"
    started.mkdir()
    env = {fdist._DELAY_ENV: "1.5", fdist._STARTED_ENV: str(started)}  # long enough to be killed mid-task
    _set_worker_env(cluster, env)
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = learn(remote, scheduler=cluster)
        except ClusterError as e:
            outcome["error"] = e

    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 120
    while not any(started.iterdir()) and t.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    inside = [int(p.name) for p in started.iterdir()]
    assert inside, f"no learn task reached a worker: {outcome}"
    os.kill(inside[0], signal.SIGKILL)
    t.join(180)
    assert not t.is_alive()
    _set_worker_env(cluster, dict.fromkeys(env))
    if "error" in outcome:  # failed cleanly: one line, nothing written
        assert "\n" not in str(outcome["error"]) and "nothing was written" in str(outcome["error"])
        assert list(history(remote)) == []
        assert not (remote.baselines / "data").exists()
    else:
        assert _hashes(remote) == expected
        assert outcome["result"].version == "v0001"


def _set_worker_env(cluster: str, items: dict) -> None:
    """Sets (or, for None, removes) environment variables in every worker process.

    Not ``client.run(os.environ.update, ...)``: that pickles a copy of this process's ``os.environ``
    and updates the copy. A local function is sent by value and runs on the worker itself."""
    from distributed import Client

    def setenv(items: dict) -> dict:
        for k, v in items.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        return {k: os.environ.get(k) for k in items}

    with Client(cluster, set_as_default=False) as client:
        seen = client.run(setenv, items)
    assert seen and all(v == items for v in seen.values()), seen


def _hashes_after_learn(config) -> dict[str, str]:
    learn(config)
    return _hashes(config)
