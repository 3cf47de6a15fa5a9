"""Benchmark: diff one interval of N rows against a baseline of M keys (default 1M vs 10M).

    python benchmarks/bench_diff.py [--rows 1000000] [--baseline 10000000] [--new 0.01] [--dir DIR]

The setup (a ``services`` baseline of M distinct keys, one stored interval of N rows of which a fraction
``--new`` is not in the baseline) runs in this process; the diff itself runs in a fresh child process,
so the peak RSS printed is the diff's own (canonicalise, streamed anti-join, rules, neighbours, report).
Not a test: it prints seconds and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

KEYS = ("client", "server", "proto", "service_port")
T0 = "2026-11-30T00:00:00Z"


def _addresses(idx: np.ndarray, first: int) -> pa.Array:
    """Distinct dotted quads ``first.x.y.z`` for integer ids, built with Arrow string kernels."""
    idx = idx.astype(np.uint32)
    parts = [pa.array(np.full(len(idx), first, dtype=np.uint32))]
    parts += [pa.array((idx >> s) & 0xFF) for s in (16, 8, 0)]
    return pc.binary_join_element_wise(*[p.cast(pa.string()) for p in parts], ".")


def _keys(ids: np.ndarray) -> dict[str, pa.Array]:
    """Key k: client 10.<k // 40>, one of 1000 servers, one of 40 ports: distinct ids -> distinct keys."""
    client = ids // 40
    return {
        "client": _addresses(client, 10),
        "server": _addresses(1 + (ids % 1000), 172),
        "proto": pa.array(np.full(len(ids), 6, dtype=np.uint8)),
        "service_port": pa.array((1000 + (ids % 40)).astype(np.uint16)),
    }


def setup(root: Path, rows: int, baseline: int, new_frac: float) -> dict:
    from flowdiff.baseline import _store_table, _write_version, baseline_table
    from flowdiff.config import parse_config
    from flowdiff.schema import table_schema
    from flowdiff.state import commit_state, load_state, lock
    from flowdiff.store import Store

    config = parse_config(
        {
            "store": str(root / "store"),
            "baselines": str(root / "baselines"),
            "reports": str(root / "reports"),
            "sensor": "bench",
            "interval": 300,
            "tables": {"services": {"keys": list(KEYS)}},
        }
    )
    tc = config.tables["services"]
    t = time.perf_counter()
    ids = np.arange(baseline, dtype=np.int64)
    cols = _keys(ids)
    n = len(ids)
    ts = pa.array(np.full(n, np.datetime64(T0.rstrip("Z"), "us")), pa.timestamp("us", tz="UTC"))
    base = pa.table(
        {
            **cols,
            "first_seen": ts,
            "last_seen": ts,
            "intervals": pa.array(np.full(n, 2, np.uint32)),
            "packets": pa.array(np.full(n, 10, np.uint64)),
            "bytes": pa.array(np.full(n, 1000, np.uint64)),
        }
    )
    base = baseline_table(base, KEYS)
    with lock(config):
        entry = _store_table(
            config,
            tc,
            base,
            window={"since": None, "until": None, "intervals": 0},
            thresholds={},
            created_in="v0001",
        )
        v = _write_version(config, None, "learn", "benchmark", "bench", {"services": entry})
        commit_state(config, load_state(config), version=v.id)
    del base, cols
    t_base = time.perf_counter() - t

    t = time.perf_counter()
    rng = np.random.default_rng(1)
    n_new = int(rows * new_frac)
    known = rng.choice(baseline, size=rows - n_new, replace=False)
    fresh = baseline + np.arange(n_new, dtype=np.int64)
    ids = np.concatenate([known, fresh])
    m = len(ids)
    start = pa.array(np.full(m, np.datetime64(T0.rstrip("Z"), "us")), pa.timestamp("us", tz="UTC"))
    interval = pa.table(
        {
            "interval_start": start,
            **_keys(ids),
            "packets": pa.array(rng.integers(1, 1000, m).astype(np.uint64)),
            "bytes": pa.array(rng.integers(60, 10**6, m).astype(np.uint64)),
            "first_seen": start,
            "last_seen": start,
        }
    )
    store = Store(config.store, "bench")
    store.ensure_table("services", KEYS, config.interval)
    store.write_interval_rows("services", KEYS, interval.cast(table_schema(KEYS)), "bench-interval")
    assert len(Store(config.store).interval_tokens("services")) == 1
    t_int = time.perf_counter() - t
    return {"setup_baseline_s": round(t_base, 2), "setup_interval_s": round(t_int, 2), "expected_new": n_new}


def _peak_rss_mb() -> float:
    """Peak RSS of this process. VmHWM belongs to the address space made by exec; ru_maxrss would
    inherit the setup process's peak across fork + exec on Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(root: Path) -> dict:
    from flowdiff.config import parse_config
    from flowdiff.diff import diff

    config = parse_config(
        {
            "store": str(root / "store"),
            "baselines": str(root / "baselines"),
            "reports": str(root / "reports"),
            "sensor": "bench",
            "interval": 300,
            "tables": {"services": {"keys": list(KEYS)}},
        }
    )
    t = time.perf_counter()
    res = diff(config)
    secs = time.perf_counter() - t
    rss_mb = _peak_rss_mb()
    return {
        "diff_s": round(secs, 2),
        "new_rows": res.total,
        "peak_rss_mb": round(rss_mb),
        "report": res.report_id,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows in the diffed interval")
    ap.add_argument("--baseline", type=int, default=10_000_000, help="keys in the baseline")
    ap.add_argument("--new", type=float, default=0.01, help="fraction of interval rows not in the baseline")
    ap.add_argument("--dir", type=Path, help="work directory (default: a temporary one)")
    ap.add_argument("--run", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run:
        print(json.dumps(run(args.run)))
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        info = setup(root, args.rows, args.baseline, args.new)
        out = subprocess.run([sys.executable, __file__, "--run", str(root)], capture_output=True, text=True)
        if out.returncode:
            sys.exit(out.stderr)
        res = json.loads(out.stdout.strip().splitlines()[-1])
    ok = res["new_rows"] == info["expected_new"]
    print(
        f"diff of one interval with {args.rows:,} rows against a {args.baseline:,}-key baseline: "
        f"{res['diff_s']} s, peak RSS {res['peak_rss_mb']} MB, {res['new_rows']:,} new rows "
        f"({'as expected' if ok else 'EXPECTED ' + str(info['expected_new'])}); "
        f"setup {info['setup_baseline_s']} s + {info['setup_interval_s']} s"
    )
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
