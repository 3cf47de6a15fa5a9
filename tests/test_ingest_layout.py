"""The memory layout the ingest loop relies on for speed: fine rows on whole cache lines (also after the
row store grows), and the prefetch hints that change no value (flowdiff/_prefetch.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from flowdiff._jit import njit
from flowdiff._prefetch import prefetch1, prefetch2
from flowdiff.aggregate import Aggregator
from flowdiff.schema import PACKET_FIELDS

NS = 1_000_000_000


@njit(cache=False)
def _sum_with_hints(a, b, idx):
    s = 0
    for t in range(idx.shape[0]):
        if t + 8 < idx.shape[0]:
            prefetch1(a, idx[t + 8])
            prefetch2(b, idx[t + 8] % b.shape[0], 1)
        s += a[idx[t]] + b[idx[t] % b.shape[0], 1]
    return s


def test_prefetch_hints_change_no_value():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 1000, 10_000)
    b = rng.integers(0, 1000, (333, 4))
    idx = rng.integers(0, len(a), 5_000)
    assert _sum_with_hints(a, b, idx) == int(a[idx].sum() + b[idx % 333, 1].sum())


def _packets(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    p = {k: np.zeros(n, dtype=d) for k, d in PACKET_FIELDS.items()}
    p["ts_ns"] = np.sort(rng.integers(0, 300 * NS, n))
    p["wirelen"] = rng.integers(60, 1500, n).astype(np.uint32)
    p["ip_version"][:] = 4
    p["src_lo"] = rng.integers(0x0A000000, 0x0A000000 + 3_000, n).astype(np.uint64)
    p["dst_lo"] = rng.integers(0xC0000200, 0xC0000240, n).astype(np.uint64)
    p["proto"][:] = 6
    p["sport"] = rng.integers(1024, 1100, n).astype(np.uint16)
    p["dport"][:] = 443
    p["tcp_flags"] = rng.choice(np.array([0x02, 0x10, 0x12], dtype=np.uint8), n)
    p["status"][rng.random(n) < 0.05] = 3  # truncated frames: counted nowhere, reported as skipped
    return p


def test_rows_on_cache_lines_while_growing_and_counts_exact(monkeypatch):
    """Rows and index grow many times in the middle of the ingest's 64-frame blocks (tiny initial
    sizes): every row store starts on a 64-byte boundary, and the counts are those of pandas."""
    monkeypatch.setattr(Aggregator, "_INITIAL_ROWS", 40)
    monkeypatch.setattr(Aggregator, "_INITIAL_CAPACITY", 16)
    rng = np.random.default_rng(8)
    n = 30_000
    p = _packets(rng, n)
    agg = Aggregator({"t5": ("src", "dst", "proto", "sport", "dport")}, interval=60)
    assert agg._rows.ctypes.data % 64 == 0
    for lo in range(0, n, 4_999):  # chunks that do not line up with the blocks
        agg.add({k: v[lo : lo + 4_999] for k, v in p.items()})
        assert agg._rows.ctypes.data % 64 == 0
    assert agg._rows.shape[0] > 40  # it did grow
    out = agg.finish()["t5"].to_pandas()
    ok = p["status"] == 0
    df = pd.DataFrame({k: p[k][ok] for k in ("ts_ns", "wirelen", "src_lo", "dst_lo", "sport")})
    df["iv"] = df.ts_ns // (60 * NS)
    exp = df.groupby(["iv", "src_lo", "dst_lo", "sport"]).agg(
        packets=("wirelen", "size"), bytes=("wirelen", "sum")
    )
    assert len(out) == len(exp)
    assert sorted(out.packets.tolist()) == sorted(exp.packets.tolist())
    assert int(out.bytes.sum()) == int(p["wirelen"][ok].sum())
    assert agg.skipped == {"truncated-link": int((~ok).sum())}
    assert agg.packets_seen == n
