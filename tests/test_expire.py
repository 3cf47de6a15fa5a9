"""Retention: `flowdiff expire --keep DURATION` removes stored intervals older than the window."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import fixtures_baseline as fx
import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from flowdiff.baseline import history, learn
from flowdiff.cli import main
from flowdiff.compact import compact
from flowdiff.config import parse_config
from flowdiff.errors import ConfigError
from flowdiff.retention import expire
from flowdiff.store import open_store

NOW = datetime(2026, 12, 2, 12, tzinfo=UTC)
N = len(fx.TABLES) + 1  # the configured tables and the always-collected stations


@pytest.fixture(scope="module")
def learned(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("expire")
    config = fx.write_config(root)
    for n in range(3):
        fx.write(config, fx.day(n), f"day{n}")
    learn(config, until="2026-11-04")
    return root


@pytest.fixture
def site(learned, tmp_path):
    return fx.copy_site(learned, tmp_path)


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def _seconds_to(edge: str) -> int:
    return int((datetime.now(UTC) - pd.Timestamp(edge).to_pydatetime()).total_seconds())


def test_expire_removes_old_intervals_files_and_row_groups_and_leaves_baselines(site):
    compact(site, older_than=0, now=datetime(2026, 11, 4, 12, tzinfo=UTC))  # Nov 2 and 3: day files
    st = open_store(site.store)
    before = {t: st.read(t) for t in st.tables()}
    baselines = _digest(Path(site.baselines))
    windows = [(v.id, e.window) for v in history(site) for e in v.tables.values()]
    edge = pd.Timestamp("2026-11-03T08:10:00Z")  # the interval 08:05-08:10 ends on the edge: it goes
    res = expire(site, keep=int((NOW - edge.to_pydatetime()).total_seconds()), now=NOW)
    assert res.intervals == N * (fx.INTERVALS + 2) and res.rewritten == N
    assert res.line().startswith(f"expire: removed {res.intervals} interval(s) before 2026-11-03T08:10:00Z")
    d = Path(site.store) / "services" / "sensor=s1"
    assert not (d / "20261102.parquet").exists()
    kept = pq.read_table(d / "20261103.parquet", columns=["interval_start"]).column(0)
    assert len(set(kept.to_pylist())) == fx.INTERVALS - 2
    for t, df in before.items():
        want = df[df.interval_start >= edge].reset_index(drop=True)
        pd.testing.assert_frame_equal(st.read(t).reset_index(drop=True), want)
        assert st.intervals(t)[0] == edge
    assert _digest(Path(site.baselines)) == baselines
    assert [(v.id, e.window) for v in history(site) for e in v.tables.values()] == windows
    again = expire(site, keep=int((NOW - edge.to_pydatetime()).total_seconds()), now=NOW)
    assert again.intervals == 0 and again.line().startswith("expire: nothing stored before")


def test_expire_on_interval_files_and_a_late_part(site):
    compact(site, older_than=0, now=datetime(2026, 11, 4, 12, tzinfo=UTC))
    fx.write(site, fx.anomaly("new_service", 1, interval=0), "late")  # late part beside the Nov 3 day file
    res = expire(site, keep=int((NOW - datetime(2026, 11, 4, tzinfo=UTC)).total_seconds()), now=NOW)
    assert res.intervals == N * 2 * fx.INTERVALS
    st = open_store(site.store)
    for t in st.tables():
        assert st.intervals(t)[0] == pd.Timestamp("2026-11-04T08:00:00Z")
    assert sorted(p.name for p in (Path(site.store) / "services" / "sensor=s1").iterdir())[0] == (
        "20261104T080000Z.parquet"
    )


def test_cli_expire_says_what_it_removed(site):
    keep = str(_seconds_to("2026-11-03T00:00:00Z"))
    res = CliRunner().invoke(main, ["expire", "--keep", keep, "--config", str(site.source)])
    assert res.exit_code == 0, res.output
    assert res.output.count("\n") == 1 and res.output.startswith(
        f"expire: removed {N * fx.INTERVALS} interval(s) before"
    )
    assert "baselines and reports untouched" in res.output
    hist = CliRunner().invoke(main, ["baseline", "history", "--config", str(site.source)])
    assert hist.exit_code == 0 and "2026-11-02" in hist.output


def test_cli_expire_without_a_window_refuses(site):
    res = CliRunner().invoke(main, ["expire", "--config", str(site.source)])
    assert res.exit_code == 2
    assert "no retention window" in res.output
    assert len(open_store(site.store).intervals("services")) == 3 * fx.INTERVALS


def test_keep_from_the_config(tmp_path):
    assert parse_config({"keep": "400d"}, base=tmp_path).keep == 400 * 86400
    assert parse_config({"keep": "off"}, base=tmp_path).keep is None
    assert parse_config({}, base=tmp_path).keep is None
    with pytest.raises(ConfigError, match="keep"):
        parse_config({"keep": "forever"}, base=tmp_path)
    with pytest.raises(ConfigError, match="compact_after"):
        parse_config({"compact_after": "soon"}, base=tmp_path)
    assert parse_config({"compact_after": "1d"}, base=tmp_path).compact_after == 86400
