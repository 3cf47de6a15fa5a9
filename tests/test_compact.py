"""Compaction: interval files of complete UTC days -> one day file per table and sensor (flowdiff.compact)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import fixtures_baseline as fx
import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from flowdiff.baseline import get_version, learn
from flowdiff.cli import main
from flowdiff.compact import compact, compact_if_due
from flowdiff.diff import diff
from flowdiff.schema import STATIONS
from flowdiff.store import Store, open_store

NOW = datetime(2026, 12, 2, 12, tzinfo=UTC)
TABLES = sorted([*fx.TABLES, STATIONS])  # the configured tables and the always-collected stations
N = len(TABLES)


@pytest.fixture(scope="module")
def three_days(tmp_path_factory) -> Path:
    """Three days of traffic (4 intervals each), collected from two sources, an anomaly on day 2."""
    root = tmp_path_factory.mktemp("three_days")
    config = fx.write_config(root)
    for n in range(3):
        fx.write(config, fx.day(n), f"day{n}")
    fx.write(config, fx.anomaly("new_host", 2), "late-anomaly")
    return root


@pytest.fixture
def site(three_days, tmp_path):
    return fx.copy_site(three_days, tmp_path)


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.parquet"))


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    for c in df.columns:
        if isinstance(df[c].dtype, pd.CategoricalDtype):
            df[c] = df[c].astype(str)
    return df.sort_values(list(df.columns), kind="stable").reset_index(drop=True)


def _snapshot(config) -> dict:
    """Everything a reader sees: rows, intervals, tokens, totals, row-group-pruned interval reads."""
    st = open_store(config.store)
    out: dict = {}
    for t in st.tables():
        out[t] = _sorted(st.read(t))
        out[t + ":intervals"] = st.intervals(t)
        out[t + ":tokens"] = st.interval_tokens(t)
        out[t + ":totals"] = st.totals(t)
        starts = st.intervals(t)
        out[t + ":one"] = _sorted(st.read_intervals(t, config.tables[t].keys, starts[1:2]))
        out[t + ":since"] = _sorted(st.read(t, since=starts[5], until=starts[9]))
    out["describe"] = st.describe().drop(columns="rows")
    from flowdiff.status import status

    out["status"] = {k: status(config).to_json()[k] for k in ("last_interval", "intervals", "last_collected")}
    return out


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], pd.DataFrame):
            pd.testing.assert_frame_equal(a[k], b[k], obj=k)
        else:
            assert a[k] == b[k], k


def test_compact_merges_each_day_into_one_file_and_readers_see_the_same(site):
    before = _snapshot(site)
    n_before = len(_files(site.store))
    res = compact(site, older_than=0, now=NOW)
    assert res.days == 3 * N and res.merged == n_before
    files = _files(site.store)
    assert files == sorted(f"{t}/sensor=s1/2026110{d}.parquet" for t in TABLES for d in (2, 3, 4))
    _same(before, _snapshot(site))
    assert f"merged into {3 * N} day file(s)" in res.line()


def test_day_file_row_groups_hold_whole_intervals_and_a_filter_skips_the_others(site, monkeypatch):
    """Row groups gather whole intervals in time order up to DAY_ROW_GROUP_ROWS rows: a filter on
    interval_start reads only the row groups of its interval, and no interval is split across two."""
    import flowdiff.store as fs

    day = Store(site.store, "s1").read(
        "services", since=pd.Timestamp("2026-11-03T00:00Z"), until=pd.Timestamp("2026-11-04T00:00Z")
    )
    sizes = day.groupby("interval_start").size()
    assert len(sizes) == fx.INTERVALS
    monkeypatch.setattr(fs, "DAY_ROW_GROUP_ROWS", int(sizes.max()) + 1)  # two intervals or more a group
    compact(site, older_than=0, now=NOW)
    path = Path(site.store) / "services" / "sensor=s1" / "20261103.parquet"
    f = pq.ParquetFile(path)
    assert 1 < f.metadata.num_row_groups < fx.INTERVALS
    seen: list = []
    for i in range(f.metadata.num_row_groups):
        starts = sorted(set(f.read_row_group(i, columns=["interval_start"]).column(0).to_pylist()))
        assert not set(starts) & set(seen)  # an interval is in one row group only
        assert not seen or starts[0] > seen[-1]  # time order
        seen += starts
    assert len(seen) == fx.INTERVALS
    one = pd.Timestamp("2026-11-03T08:05:00Z")
    frag = next(ds.dataset(path, format="parquet").get_fragments())
    hit = frag.split_by_row_group(filter=ds.field("interval_start") == one.to_pydatetime())
    assert len(hit) == 1 < f.metadata.num_row_groups
    assert one.to_pydatetime() in set(hit[0].to_table().column("interval_start").to_pylist())


def test_compact_is_idempotent_and_respects_the_age(site):
    res = compact(site, now=datetime(2026, 11, 5, 11, tzinfo=UTC))  # 2d: days that ended by Nov 3 11:00
    assert res.days == N and all(f.endswith("20261102.parquet") for f in _files(site.store) if "T" not in f)
    compact(site, older_than=0, now=NOW)
    files = {p: Path(site.store, p).stat().st_mtime_ns for p in _files(site.store)}
    again = compact(site, older_than=0, now=NOW)
    assert again.days == 0 and "nothing to compact" in again.line()
    assert {p: Path(site.store, p).stat().st_mtime_ns for p in _files(site.store)} == files


def test_learn_diff_and_state_are_the_same_after_compaction(site, tmp_path):
    other = fx.copy_site(Path(site.store).parent, tmp_path / "other")
    first = learn(site, until="2026-11-04")
    compact(other, older_than=0, now=NOW)
    second = learn(other, until="2026-11-04")
    h1 = {t: (e.hash, e.rows, e.window) for t, e in get_version(site).tables.items()}
    h2 = {t: (e.hash, e.rows, e.window) for t, e in get_version(other).tables.items()}
    assert h1 == h2 and first.version == second.version
    d1, d2 = diff(site), diff(other)
    assert d1.total == d2.total > 0
    for t in fx.TABLES:
        cols = [c for c in d1.rows[t].columns if not c.endswith("_cmd")]
        pd.testing.assert_frame_equal(_sorted(d1.rows[t][cols]), _sorted(d2.rows[t][cols]))
    # compacting after a diff changes no token: nothing is diffed (or reported) again
    compact(site, older_than=0, now=NOW)
    again = diff(site)
    assert again.total == 0 and again.intervals == 0


def test_recollecting_after_compaction_counts_nothing_twice_and_a_late_part_adds(site):
    before = _snapshot(site)
    compact(site, older_than=0, now=NOW)
    fx.write(site, fx.day(1), "day1")  # the same capture parts again: already in the day file
    _same(before, _snapshot(site))
    fx.write(site, fx.anomaly("new_service", 1), "late")  # a late part for a compacted day
    d = Path(site.store) / "services" / "sensor=s1"
    assert (d / "20261103T080500Z.parquet").is_file() and (d / "20261103.parquet").is_file()
    late = _snapshot(site)
    st = open_store(site.store)
    rows = st.read("services", where={"service_port": 8080})
    assert len(rows) == 1
    tokens_before = before["services:tokens"]
    changed = {k for k, v in late["services:tokens"].items() if tokens_before.get(k) != v}
    assert changed == {pd.Timestamp("2026-11-03T08:05:00Z")}
    # per key and interval, one row, counts added up
    full = st.read("services")
    assert not full.duplicated(["sensor", "interval_start", *fx.TABLES["services"]["keys"]]).any()
    fx.write(site, fx.anomaly("new_service", 1), "late")  # the late part again: nothing changes
    _same(late, _snapshot(site))
    res = compact(site, older_than=0, now=NOW)  # rewrites the day file with the late part in it
    assert res.days == N and not (d / "20261103T080500Z.parquet").exists()
    _same(late, _snapshot(site))


@pytest.mark.parametrize("lib", ["pandas", "duckdb", "polars"])
def test_readme_lines_give_the_same_result_after_compaction(site, lib):
    pytest.importorskip(lib)
    store = Path(site.store)

    def query() -> pd.DataFrame:
        if lib == "pandas":
            df = pd.read_parquet(store / "services")
        elif lib == "duckdb":
            import duckdb

            df = duckdb.sql(
                f"SELECT server, service_port, sum(bytes) AS b FROM '{store}/services/**/*.parquet' GROUP BY ALL"
            ).df()
        else:
            import polars as pl

            df = pl.read_parquet(f"{store}/services/**/*.parquet", hive_partitioning=True).to_pandas()
        return _sorted(df.astype({c: str for c in df.columns if df[c].dtype == object}))

    before = query()
    compact(site, older_than=0, now=NOW)
    pd.testing.assert_frame_equal(before, query(), check_dtype=False, check_categorical=False)


def test_cli_compact_prints_one_line(site):
    res = CliRunner().invoke(main, ["compact", "--older-than", "0", "--config", str(site.source)])
    assert res.exit_code == 0, res.output
    per_table = ", ".join(f"{t} 3" for t in TABLES)
    assert res.output.startswith(
        f"compact: {12 * N} interval file(s) merged into {3 * N} day file(s) ({per_table})"
    )
    res = CliRunner().invoke(main, ["compact", "--config", str(site.source)])
    assert res.exit_code == 0 and "nothing to compact" in res.output


def test_run_compacts_once_a_day(site):
    res = compact_if_due(site, now=NOW)
    assert res is not None and res.days == 3 * N
    fx.write(site, fx.anomaly("new_service", 1), "late")
    assert compact_if_due(site, now=NOW) is None  # already done today
    assert compact_if_due(site, now=NOW.replace(day=3)).tables == {t: 1 for t in TABLES}


# ---------------------------------------------------------------- kill -9 at every step


def _compact_cli(config_path: Path, crash_at: int | None) -> subprocess.CompletedProcess:
    env = dict(os.environ, FLOWDIFF_CRASH_AT=str(crash_at) if crash_at else "")
    return subprocess.run(
        [sys.executable, "-m", "flowdiff", "compact", "--older-than", "0", "--config", str(config_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _contents(store: Path) -> dict[str, pd.DataFrame]:
    st = Store(store)
    return {t: _sorted(st.read(t)) for t in st.tables()}


@pytest.mark.parametrize("late", [False, True], ids=["fresh", "late-part"])
def test_kill_9_at_every_compaction_step_leaves_a_complete_store_and_a_rerun_finishes(tmp_path, late):
    tables = {"services": fx.TABLES["services"]}
    template = tmp_path / "template"
    template.mkdir()
    config = fx.write_config(template, tables=tables)
    for n in range(2):
        fx.write(config, fx.day(n, intervals=2), f"day{n}")
    if late:
        compact(config, older_than=0, now=NOW)
        fx.write(config, fx.anomaly("new_host", 1), "late")
    want = _contents(config.store)
    tables = config.tables  # services and the always-collected stations
    want_tokens = {t: Store(config.store).interval_tokens(t) for t in tables}
    clean = tmp_path / "clean"
    shutil.copytree(template, clean)
    cfg_clean = fx.write_config(clean, tables={"services": fx.TABLES["services"]})
    assert _compact_cli(cfg_clean.source, None).returncode == 0
    clean_files = _files(clean / "store")
    steps = 0
    for n in range(1, 40):
        root = tmp_path / f"crash{n}"
        shutil.copytree(template, root)
        cfg = fx.write_config(root, tables={"services": fx.TABLES["services"]})
        proc = _compact_cli(cfg.source, n)
        if proc.returncode == 0:
            break
        assert proc.returncode == -9, proc.stderr
        steps = n
        got = _contents(cfg.store)  # readers: the old files or the new one, never both, never neither
        for t in tables:
            pd.testing.assert_frame_equal(got[t], want[t], obj=f"crash at {n}: {t}")
            assert Store(cfg.store).interval_tokens(t) == want_tokens[t]
        assert _compact_cli(cfg.source, None).returncode == 0  # the re-run finishes the job
        assert _files(cfg.store) == clean_files
        for t in tables:
            pd.testing.assert_frame_equal(_contents(cfg.store)[t], want[t])
        shutil.rmtree(root)
    # each day file: before and after its rename, and one step per interval file removed
    assert steps == len(tables) * (2 + 1 if late else 2 * (2 + 2))


def test_flowdiff_run_compacts_the_store(site):
    res = CliRunner().invoke(main, ["run", "--config", str(site.source)])
    assert res.exit_code in (0, 1), res.output  # 1: the health check misses a baseline
    assert len([f for f in _files(site.store) if "T" not in Path(f).name]) == 3 * N
    assert (Path(site.store) / "_compacted.json").is_file()
