"""Benchmark: a store of many sensors and days, before and after compaction (issue 10).

    python benchmarks/bench_store.py                        # 10 sensors x 7 days x 288 intervals x 4 tables
    python benchmarks/bench_store.py --scale 0.05 --sensors 2 --days 2   # small, to check it works
    python benchmarks/bench_store.py --dir /var/tmp/fdstore --keep       # keep the generated store
    python benchmarks/bench_store.py --days 1 --after-only               # full-size rows, one day, learn after compaction only

Writes the Parquet files directly (the store's own layout, schema and sources metadata; 1,000 to 5,000
rows per interval and table at --scale 1), then reports:

* file count and bytes before and after ``compact --older-than 0`` (target: at least 100x fewer files);
* ``learn`` over all the days for one sensor and for all sensors (``baseline_scope = "all"``), before
  and after compaction, each in a fresh child process with its wall and CPU seconds and peak RSS (target
  for all sensors: under 2 GB; learn streams one day of one sensor, or 48 intervals of all sensors, at a
  time, each read in one dataset scan and reduced in Arrow);
* DuckDB's ``GROUP BY`` over the same files (the keys with their interval count and sums: what learn
  computes before its thresholds), one sensor, in the same run (target: learn of one sensor after
  compaction within 2x of it);
* ``--scheduler tcp://HOST:PORT``: the same learns on a dask.distributed cluster, when this flowdiff's
  ``learn`` takes a ``scheduler`` argument (the Dask engine of issue 10 item 5); otherwise says so.

Not a test: it prints seconds, files, bytes and peak RSS.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC
from pathlib import Path

import numpy as np
import pyarrow as pa

TABLES = {
    "hosts": ["src"],
    "pairs": ["src", "dst", "proto"],
    "services": ["client", "server", "proto", "service_port"],
    "link": ["ethertype", "src_mac", "dst_mac"],
}
DAY0 = np.datetime64("2026-11-01T00:00:00", "us")
INTERVAL_S = 300


def _ips(ids: np.ndarray, first: int) -> np.ndarray:
    ids = ids.astype(np.int64)
    return np.char.add(
        np.char.add(np.char.add(f"{first}.", ((ids >> 16) & 255).astype(str)), "."),
        np.char.add(np.char.add(((ids >> 8) & 255).astype(str), "."), (ids & 255).astype(str)),
    )


def _macs(ids: np.ndarray) -> np.ndarray:
    return np.array([f"02:00:00:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}" for i in ids])


def _pool(table: str, n: int, sensor: int) -> dict[str, np.ndarray]:
    """``n`` distinct keys of a table for one sensor (most shared with the other sensors)."""
    ids = np.arange(n, dtype=np.int64) + (sensor * n // 10)  # sensors overlap by 90 %
    if table == "hosts":
        return {"src": _ips(ids, 10)}
    if table == "pairs":
        return {"src": _ips(ids // 8, 10), "dst": _ips(ids % 997, 172), "proto": np.where(ids % 5, 6, 17)}
    if table == "services":
        return {
            "client": _ips(ids // 4, 10),
            "server": _ips(ids % 1000, 172),
            "proto": np.where(ids % 5, 6, 17),
            "service_port": np.array([22, 25, 53, 80, 443, 993, 3306, 8080])[ids % 8],
        }
    return {
        "ethertype": np.where(ids % 7, 0x0800, 0x86DD),
        "src_mac": _macs(ids // 16),
        "dst_mac": _macs(ids % 1024),
    }


def generate(root: Path, sensors: int, days: int, intervals: int, scale: float, seed: int = 7) -> None:
    from flowdiff.schema import INTERVAL, table_schema
    from flowdiff.store import _SOURCES_KEY, Store, _write_parquet, interval_file_name

    rng = np.random.default_rng(seed)
    lo, hi = max(1, int(1000 * scale)), max(2, int(5000 * scale))
    for table, keys in TABLES.items():
        Store(root / "store", "s00").ensure_table(table, keys, INTERVAL_S)
        schema = table_schema(keys)
        for s in range(sensors):
            pool = _pool(table, 2 * hi, s)
            d = root / "store" / table / f"sensor=s{s:02d}"
            d.mkdir(parents=True, exist_ok=True)
            for day in range(days):
                for i in range(intervals):
                    n = int(rng.integers(lo, hi + 1))
                    pick = np.sort(rng.choice(2 * hi, n, replace=False))
                    start = DAY0 + np.timedelta64((day * 86400 + i * INTERVAL_S) * 10**6, "us")
                    packets = rng.integers(1, 2000, n)
                    cols = {INTERVAL: np.full(n, start)}
                    cols.update({k: v[pick] for k, v in pool.items()})
                    cols.update(
                        packets=packets,
                        bytes=packets * rng.integers(60, 1500, n),
                        first_seen=np.full(n, start),
                        last_seen=np.full(n, start + np.timedelta64(299 * 10**6, "us")),
                    )
                    t = pa.table({f.name: pa.array(cols[f.name]).cast(f.type) for f in schema}, schema=schema)
                    t = t.replace_schema_metadata({_SOURCES_KEY: json.dumps([f"bench{day}#{i}"]).encode()})
                    name = interval_file_name(start.item().replace(tzinfo=UTC))
                    _write_parquet(t, str(d / name))


def write_config(root: Path, scope: str, baselines: str) -> Path:
    lines = [
        f'store = "{root / "store"}"',
        f'baselines = "{root / baselines}"',
        f'reports = "{root / "reports"}"',
        f"interval = {INTERVAL_S}",
        'sensor = "s00"',
        f'baseline_scope = "{scope}"',
    ]
    for t, keys in TABLES.items():
        lines += [f"[tables.{t}]", f"keys = {json.dumps(keys)}"]
    p = root / f"{baselines}.toml"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def store_size(store: Path) -> tuple[int, int]:
    files = [p for p in store.rglob("*.parquet")]
    return len(files), sum(p.stat().st_size for p in files)


def child_learn(config_path: str, scheduler: str | None) -> None:
    """Runs in a fresh process: one learn, then its seconds and peak RSS as one JSON line."""
    from flowdiff._numba import skip_blas_probe
    from flowdiff.baseline import learn
    from flowdiff.config import load_config

    skip_blas_probe()  # as the CLI does
    t0 = time.perf_counter()
    from flowdiff.canon import key_hashes

    key_hashes(pa.table({"s": ["x"], "i": pa.array([1], pa.uint16())}), ["s", "i"])  # numba cache load
    warm = time.perf_counter() - t0
    config = load_config(config_path)
    kw = {"force": True}
    if scheduler:
        kw["scheduler"] = scheduler
    t0, c0 = time.perf_counter(), time.process_time()
    res = learn(config, **kw)
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    keys = sum(t.rows for t in res.tables.values())
    print(json.dumps({"seconds": secs, "cpu": cpu, "rss": rss, "keys": keys, "startup": warm}))


def learn_in_child(root: Path, scope: str, tag: str, scheduler: str | None = None) -> dict:
    cfg = write_config(root, scope, f"baselines-{tag}")
    cmd = [sys.executable, __file__, "--child-learn", str(cfg)]
    if scheduler:
        cmd += ["--scheduler", scheduler]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=dict(os.environ))
    if out.returncode != 0:
        raise SystemExit(f"learn ({tag}) failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def duckdb_group_by(store: Path, sensor: str) -> tuple[float, float] | None:
    """The learn-equivalent aggregation of one sensor's files, every table, in DuckDB (wall and CPU
    seconds: the machine may be shared, CPU seconds compare runs under different loads)."""
    try:
        import duckdb
    except ImportError:
        return None
    con = duckdb.connect()
    t0, c0 = time.perf_counter(), time.process_time()
    for table, keys in TABLES.items():
        k = ", ".join(keys)
        con.sql(
            f"SELECT {k}, count(DISTINCT interval_start) AS intervals, sum(packets), sum(bytes), "
            f"min(first_seen), max(last_seen) FROM read_parquet('{store}/{table}/sensor={sensor}/*.parquet') "
            "GROUP BY ALL"
        ).to_arrow_table()
    return time.perf_counter() - t0, time.process_time() - c0


def dask_supported() -> bool:
    from flowdiff.baseline import learn

    return "scheduler" in inspect.signature(learn).parameters


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sensors", type=int, default=10)
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--intervals", type=int, default=288, help="per day (288: 5-minute intervals)")
    ap.add_argument("--scale", type=float, default=1.0, help="rows per interval: 1,000..5,000 times this")
    ap.add_argument("--dir", help="work folder (default: a temp folder, removed unless --keep)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--scheduler", help="dask.distributed scheduler for the Dask figures (tcp://HOST:PORT)")
    ap.add_argument(
        "--after-only",
        action="store_true",
        help="learn only after compaction (the targets' phase; learning 80,000 interval files is slow)",
    )
    ap.add_argument("--child-learn", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_learn:
        child_learn(args.child_learn, args.scheduler)
        return
    root = Path(args.dir or tempfile.mkdtemp(prefix="fdbench-store-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        run(root, args)
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(root, ignore_errors=True)


def run(root: Path, args: argparse.Namespace) -> None:
    from datetime import datetime

    from flowdiff.compact import compact
    from flowdiff.config import load_config

    store = root / "store"
    shape = f"{args.sensors} sensors x {args.days} days x {args.intervals} intervals x {len(TABLES)} tables"
    print(
        f"store: {shape}, {int(1000 * args.scale)}..{int(5000 * args.scale)} rows per interval (--scale {args.scale})"
    )
    t0 = time.perf_counter()
    if not any(store.rglob("*.parquet")):
        generate(root, args.sensors, args.days, args.intervals, args.scale)
    print(f"generated in {time.perf_counter() - t0:.1f} s")
    figures: dict[str, dict] = {}
    dask = args.scheduler and dask_supported()
    if args.scheduler and not dask:
        print("dask: skipped (this flowdiff's learn takes no scheduler: the Dask engine is not installed)")
    for phase in ("before", "after"):
        if phase == "after":
            t0 = time.perf_counter()
            res = compact(
                load_config(write_config(root, "sensor", "baselines-compact")),
                older_than=0,
                now=datetime.now(UTC),
            )
            print(f"compact: {time.perf_counter() - t0:.1f} s; {res.line()}")
        files, size = store_size(store)
        figures[phase] = {"files": files, "bytes": size}
        if phase == "before" and args.after_only:
            continue
        figures[phase]["duckdb_one"] = duckdb_group_by(store, "s00")
        figures[phase]["learn_one"] = learn_in_child(root, "sensor", f"one-{phase}")
        figures[phase]["learn_all"] = learn_in_child(root, "all", f"all-{phase}")
        if dask:
            figures[phase]["dask_one"] = learn_in_child(root, "sensor", f"dask-one-{phase}", args.scheduler)
            figures[phase]["dask_all"] = learn_in_child(root, "all", f"dask-all-{phase}", args.scheduler)
    report(figures)


def report(f: dict[str, dict]) -> None:
    b, a = f["before"], f["after"]
    print(f"files: {b['files']:,} -> {a['files']:,} ({b['files'] / max(a['files'], 1):.0f}x fewer)")
    print(f"bytes: {b['bytes'] / 1e6:,.1f} MB -> {a['bytes'] / 1e6:,.1f} MB")
    for phase in ("before", "after"):
        x = f[phase]
        if "learn_one" not in x:
            print(f"{phase} compaction: not learned (--after-only)")
            continue
        one, alls = x["learn_one"], x["learn_all"]
        dw, dc = x["duckdb_one"] or (None, None)
        duck = f"{dw:.2f} s ({dc:.2f} s CPU)" if dw is not None else "n/a (no duckdb)"
        ratio = f" ({one['seconds'] / dw:.1f}x DuckDB)" if dw else ""
        print(
            f"{phase} compaction: learn one sensor {one['seconds']:.2f} s{ratio}, {one['cpu']:.2f} s CPU"
            f" (+{one['startup']:.1f} s "
            f"process start-up: numba cache), peak RSS "
            f"{one['rss'] / 1e6:,.0f} MB; learn all sensors {alls['seconds']:.2f} s, peak RSS "
            f"{alls['rss'] / 1e6:,.0f} MB; DuckDB GROUP BY one sensor {duck}"
        )
        for k in ("dask_one", "dask_all"):
            if k in x:
                print(f"{phase} compaction: {k.replace('_', ' ')} {x[k]['seconds']:.2f} s")


if __name__ == "__main__":
    main()
