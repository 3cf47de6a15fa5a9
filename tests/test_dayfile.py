"""collect's day files (flowdiff/dayfile.py): a capture of many intervals writes one file per table and
UTC day; the store reads the same rows as with interval files, re-collecting and crashes count nothing
twice, compaction and diff tokens keep working."""

from __future__ import annotations

import functools
import importlib
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from crash_steps import kill_at_every_step
from test_collect import long_frames

from flowdiff.collect import collect
from flowdiff.compact import compact
from flowdiff.config import parse_config
from flowdiff.demo import frames as synth
from flowdiff.store import Store, day_meta

fc = importlib.import_module("flowdiff.collect")  # the package exports a function of that name
dayfile = importlib.import_module("flowdiff.dayfile")

MIDNIGHT = 1_700_006_400  # 2023-11-15T00:00:00Z
TABLES = ("hosts", "pairs", "services", "link")


def _capture(tmp_path: Path) -> Path:
    """Twelve 60 s intervals across a UTC midnight, with a frame of the first interval arriving last."""
    return synth.write_pcap(tmp_path / "night.pcap", long_frames(t0=MIDNIGHT - 6 * 60, minutes=12))


def _config(store: Path):
    return parse_config({"sensor": "s", "store": str(store), "interval": 60})


def _read(store: Path) -> dict[str, pd.DataFrame]:
    out = {}
    for t in TABLES:
        df = Store(store).read(t)
        out[t] = df.sort_values(list(df.columns)).reset_index(drop=True)
    return out


@pytest.fixture
def day_mode(monkeypatch):
    """Many small parts (a late frame among them), and day files from the first part on."""
    monkeypatch.setattr(fc, "_CHUNK_BYTES", 2048)  # inherited by forked children
    monkeypatch.setattr(fc, "_DRAIN_ROWS", 0)  # a part whenever an interval closes
    monkeypatch.setattr(dayfile, "MIN_INTERVALS", 1)


def _reference(tmp_path: Path, cap: Path) -> dict[str, pd.DataFrame]:
    ref = tmp_path / "ref"
    old = dayfile.MIN_INTERVALS
    dayfile.MIN_INTERVALS = 10**9  # interval files only, as before day files
    try:
        collect([cap], _config(ref))
    finally:
        dayfile.MIN_INTERVALS = old
    assert not [p for p in ref.rglob("*.parquet") if len(p.stem) == 8]
    return _read(ref)


def test_day_files_hold_what_interval_files_held_and_recollecting_changes_nothing(tmp_path, day_mode):
    cap = _capture(tmp_path)
    want = _reference(tmp_path, cap)
    store = tmp_path / "days"
    res = collect([cap], _config(store))
    assert res.files[0].status == "ok"
    for t in TABLES:
        d = store / t / "sensor=s"
        assert {p.name for p in d.glob("????????.parquet")} == {"20231114.parquet", "20231115.parquet"}
        # the late frame of the first interval: an interval file beside the day file holding it
        late = [p.name for p in d.glob("*T*.parquet")]
        assert late in ([], ["20231114T235400Z.parquet"])
        pd.testing.assert_frame_equal(_read(store)[t], want[t], obj=t)
    late = store / "hosts" / "sensor=s" / "20231114T235400Z.parquet"
    assert late.exists() and "20231114T235400Z.parquet" in day_meta(late.with_name("20231114.parquet"))
    assert Store(store, "s").intervals("hosts") == sorted(
        pd.Timestamp(MIDNIGHT - 6 * 60 + 60 * i, unit="s", tz="UTC") for i in range(12)
    )
    snapshot = {p: p.read_bytes() for p in store.rglob("*.parquet")}
    copy = tmp_path / "renamed.pcap"
    shutil.copy(cap, copy)
    again = collect([cap, copy], _config(store))
    assert [f.status for f in again.files] == ["known", "known"]
    assert {p: p.read_bytes() for p in store.rglob("*.parquet")} == snapshot


def test_a_short_capture_keeps_writing_interval_files(tmp_path, monkeypatch):
    """The cron case: a capture whose parts hold fewer than MIN_INTERVALS intervals writes interval files
    (a day file would only be added to by every later pass)."""
    monkeypatch.setattr(fc, "_CHUNK_BYTES", 2048)
    monkeypatch.setattr(fc, "_DRAIN_ROWS", 0)
    cap = synth.write_pcap(tmp_path / "short.pcap", long_frames(t0=MIDNIGHT + 600, minutes=4))
    collect([cap], _config(tmp_path / "s"))
    names = [p.stem for p in (tmp_path / "s").rglob("*.parquet")]
    assert names and all(len(n) == 16 for n in names)


def test_a_long_capture_writes_day_files_by_default(tmp_path):
    """With the default threshold, a capture drained in parts of many intervals gets day files (the
    week workload of benchmarks/bench_cardinality.py: 40 files instead of 10,000)."""
    cap = synth.write_pcap(tmp_path / "long.pcap", long_frames(t0=MIDNIGHT - 6 * 60, minutes=30))
    old = fc._CHUNK_BYTES, fc._DRAIN_ROWS
    fc._CHUNK_BYTES = 64 * 1024  # a part every ~15 intervals of this sparse capture (4 kB a minute)
    fc._DRAIN_ROWS = 0
    try:
        collect([cap], _config(tmp_path / "s"))
    finally:
        fc._CHUNK_BYTES, fc._DRAIN_ROWS = old
    days = sorted(p.name for p in (tmp_path / "s" / "hosts" / "sensor=s").glob("????????.parquet"))
    assert days == ["20231114.parquet", "20231115.parquet"]
    assert len(day_meta(tmp_path / "s" / "hosts" / "sensor=s" / days[1])) >= dayfile.MIN_INTERVALS


def _child(store: str, cap: str, crash_at: int | None) -> None:
    if crash_at:
        os.environ["FLOWDIFF_CRASH_AT"] = str(crash_at)
    dayfile.MIN_INTERVALS = 1
    collect([cap], _config(Path(store)))


def test_kill_minus_9_at_every_step_then_rerun_is_exact(tmp_path, day_mode):
    cap = _capture(tmp_path)
    want = _reference(tmp_path, cap)

    def check(store: Path, step: int) -> None:
        got = _read(store)
        for t in TABLES:
            pd.testing.assert_frame_equal(got[t], want[t], obj=f"{t} after crash at step {step}")
        assert not list(store.rglob(".*.tmp"))

    crashed = kill_at_every_step(tmp_path, functools.partial(_child, cap=str(cap)), check)
    assert crashed >= 10


def test_compacting_a_collected_day_keeps_rows_and_tokens(tmp_path, day_mode):
    cap = _capture(tmp_path)
    store = tmp_path / "days"
    cfg = _config(store)
    collect([cap], cfg)
    before = _read(store)
    tokens = Store(store, "s").interval_tokens("hosts")
    assert len(set(tokens.values())) == len(tokens) == 12
    res = compact(cfg, older_than=0, now=datetime(2023, 11, 17, tzinfo=UTC))
    assert res.days >= 1
    after = _read(store)
    for t in TABLES:
        pd.testing.assert_frame_equal(after[t], before[t], obj=t)
        assert not list((store / t / "sensor=s").glob("*T*.parquet"))  # the late file merged in
    late = pd.Timestamp(MIDNIGHT - 6 * 60, unit="s", tz="UTC")
    now = Store(store, "s").interval_tokens("hosts")
    assert {k: v for k, v in now.items() if k != late} == {k: v for k, v in tokens.items() if k != late}
    assert now[late].startswith(tokens[late].split("+")[0])
    # the compacted day file: whole intervals per row group, readable by plain pyarrow
    f = pq.ParquetFile(store / "hosts" / "sensor=s" / "20231114.parquet")
    assert f.metadata.num_rows == len(
        before["hosts"][before["hosts"].interval_start < pd.Timestamp(MIDNIGHT, unit="s", tz="UTC")]
    )


def test_learn_counts_intervals_by_rows_and_the_late_file_once(tmp_path, day_mode, monkeypatch):
    """learn counts a key's intervals by its rows when each sensor, interval and key is one row (the
    store merges a late interval file into its day file's interval as it reads): the baseline is the
    one counting distinct intervals gives."""
    from flowdiff import baseline

    cap = _capture(tmp_path)
    store = tmp_path / "st"
    hashes, intervals = {}, {}
    for by_rows in (True, False):
        monkeypatch.setattr(baseline, "_COUNT_ROWS", by_rows)
        cfg = parse_config(
            {"sensor": "s", "store": str(store), "baselines": str(tmp_path / f"b{by_rows}"), "interval": 60}
        )
        if by_rows:
            collect([cap], cfg)
            assert (store / "hosts" / "sensor=s" / "20231114T235400Z.parquet").exists()
        baseline.learn(cfg, min_intervals=1, min_packets=1)
        version = baseline.get_version(cfg)
        hashes[by_rows] = {t: e.hash for t, e in version.tables.items()}
        entry = version.tables["hosts"]
        intervals[by_rows] = baseline.read_baseline(cfg, entry).column("intervals").to_pylist()
    assert hashes[True] == hashes[False] and len(hashes[True]) >= 4
    assert intervals[True] == intervals[False] and max(intervals[True]) == 12
