#!/usr/bin/env python3
"""Benchmark flow records: IPFIX decoding in `flowdiff collect`, and `flowdiff listen` on loopback.

    python benchmarks/bench_flows.py                         # 2M IPFIX records; listen at 50,000/s
    python benchmarks/bench_flows.py --records 5000000 --rate 80000 --datagrams 500000

1. **collect**: a `flowdiff listen` spool file of IPFIX messages (30 records of the usual IPv4 5-tuple,
   counters, interfaces and millisecond times each, one template message first, records spread over
   an hour in export order; 100 clients, 20 servers) is collected by a separate `flowdiff collect` process into
   the default tables (60 s intervals), measured whole (start-up, imports, JIT cache, writing the store):
   wall time, CPU seconds (user + system), records/s, peak RSS from wait4(2). Memory flatness in the
   number of records: the same at half the size over half the time (the same rate of records: the
   memory a collect needs follows the records per interval, which this keeps; half an hour is past the
   10 minutes flows stay open, so both runs reach their steady state), and with ``--same-span`` also a
   quarter of the size over the whole hour (a quarter of the rate).
2. **listen**: a `flowdiff listen` process on 127.0.0.1 receives ``--datagrams`` IPFIX-sized datagrams
   (1,400 bytes) from a sender in this process paced at ``--rate`` per second; the datagrams in the
   spool are counted back and the kernel's drops taken from listen's summary line.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flowdiff.listen import SpoolRecord, SpoolWriter  # noqa: E402

FIELDS = [
    (8, 4),
    (12, 4),
    (7, 2),
    (11, 2),
    (4, 1),
    (6, 1),
    (10, 4),
    (14, 4),
    (2, 8),
    (1, 8),
    (152, 8),
    (153, 8),
]
RECLEN = sum(n for _, n in FIELDS)
PER_MESSAGE = 30
T0 = 1_700_000_000


def _template() -> bytes:
    body = struct.pack("!HH", 256, len(FIELDS)) + b"".join(struct.pack("!HH", ie, n) for ie, n in FIELDS)
    tset = struct.pack("!HH", 2, 4 + len(body)) + body
    return struct.pack("!HHIII", 10, 16 + len(tset), T0, 0, 1) + tset


def _records(
    n: int, rng: np.random.Generator, t_from: float = 0.0, t_to: float = 1.0, span_ms: int = 3_600_000
) -> np.ndarray:
    """n records as a (n, RECLEN) byte array: 100 clients, 20 servers, ephemeral client ports, starts
    in the part [t_from, t_to) of the span (an hour) in export order, up to 60 s late (an active timeout)."""
    out = np.zeros((n, RECLEN), dtype=np.uint8)
    cols = [
        (0x0A000000 + rng.integers(0, 100, n)).astype(">u4"),
        (0xC0000200 + rng.integers(0, 20, n)).astype(">u4"),
        rng.integers(1024, 65536, n).astype(">u2"),
        rng.choice([53, 80, 443, 25, 22], n).astype(">u2"),
        rng.choice([6, 17], n).astype(">u1"),
        rng.integers(0, 64, n).astype(">u1"),
        rng.integers(1, 48, n).astype(">u4"),
        rng.integers(1, 48, n).astype(">u4"),
        rng.integers(1, 1000, n).astype(">u8"),
        rng.integers(40, 10**6, n).astype(">u8"),
    ]
    export = np.sort(rng.integers(int(t_from * span_ms), int(t_to * span_ms), n))
    start = (T0 * 1000 + np.maximum(export - rng.integers(0, 60_000, n), 0)).astype(">u8")
    cols += [start, (start + rng.integers(0, 30_000, n)).astype(">u8")]
    pos = 0
    for c in cols:
        w = c.dtype.itemsize
        out[:, pos : pos + w] = c.view(np.uint8).reshape(n, w)
        pos += w
    return out


def make_spool(directory: Path, records: int, span_ms: int = 3_600_000) -> Path:
    rng = np.random.default_rng(7)
    w = SpoolWriter(directory, rotate=10**9, clock=lambda: T0)
    exporter, local = ("198.51.100.1", 2055), ("127.0.0.1", 4739)
    w.write([SpoolRecord(T0 * 10**9, exporter, local, _template())])
    seq, done = 0, 0
    while done < records:
        n = min(200_000, records - done)
        recs = _records(n, rng, done / records, (done + n) / records, span_ms)
        batch = []
        for k in range(0, n, PER_MESSAGE):
            body = recs[k : k + PER_MESSAGE].tobytes()
            dset = struct.pack("!HH", 256, 4 + len(body)) + body
            msg = struct.pack("!HHIII", 10, 16 + len(dset), T0 + 3600, seq, 1) + dset
            seq += min(PER_MESSAGE, n - k)
            batch.append(SpoolRecord(T0 * 10**9, exporter, local, msg))
        w.write(batch)
        done += n
    w.close()
    return w.files[-1]


def run_measured(cmd: list[str], env: dict) -> tuple[float, float, int, str]:
    """(wall seconds, CPU seconds (user + system, the figure to compare on a shared machine), peak RSS
    in bytes, stdout) of ``cmd`` run as its own process."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out_f, tempfile.TemporaryFile() as err_f:
        proc = subprocess.Popen(cmd, env=env, stdout=out_f, stderr=err_f)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        out_f.seek(0)
        err_f.seek(0)
        out, err = out_f.read().decode(), err_f.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{out}\n{err}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024, out


def bench_collect(work: Path, records: int, same_span: bool = False) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cfg = work / "bench.toml"
    cfg.write_text("interval = 60\nsettle = 0\n")  # the default tables: hosts, pairs, services, link
    hour = 3_600_000
    runs = [(records // 2, hour // 2), *([(records // 4, hour)] if same_span else []), (records, hour)]
    for n, span in runs:
        spool = work / f"spool{n}_{span}"
        t = time.perf_counter()
        path = make_spool(spool, n, span)
        made = time.perf_counter() - t
        store = work / f"store{n}_{span}"
        wall, cpu, rss, out = run_measured(
            [
                sys.executable,
                "-m",
                "flowdiff",
                "collect",
                "--config",
                str(cfg),
                "--store",
                str(store),
                str(path),
            ],
            env,
        )
        got = int(re.search(r"([\d,]+) flow records", out).group(1).replace(",", ""))
        assert got == n, out
        print(
            f"collect  {n:>10,} IPFIX records over {span / 60_000:3.0f} min  {path.stat().st_size / 1e6:7.1f} MB  "
            f"{wall:6.2f} s wall "
            f"{cpu:6.2f} s CPU  {n / wall / 1e6:5.2f} M records/s  peak RSS {rss / 2**20:6.0f} MiB   "
            f"(spool made in {made:.1f} s)"
        )
        print("         " + out.strip())


def bench_listen(work: Path, datagrams: int, rate: int, rcvbuf: int | None = None) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spool = work / "listen"
    rcvbuf = ["--rcvbuf", str(rcvbuf)] if rcvbuf else []  # default: listen's own (32 MiB asked for)
    proc = subprocess.Popen(
        [sys.executable, "-m", "flowdiff", "listen", "--spool", str(spool), *rcvbuf,
         "--rotate", "5", f"127.0.0.1:{port}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None and "receiving on" in proc.stderr.readline()
    payload = _template() + bytes(1400 - len(_template()))
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.connect(("127.0.0.1", port))
    t0 = time.perf_counter()
    burst = max(rate // 1000, 1)
    for i in range(0, datagrams, burst):
        for _ in range(min(burst, datagrams - i)):
            sender.send(payload)
        ahead = (i + burst) / rate - (time.perf_counter() - t0)
        if ahead > 0:
            time.sleep(ahead)
    sent_in = time.perf_counter() - t0
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, _, usage = os.wait4(proc.pid, 0)
    out = proc.stdout.read() if proc.stdout else ""
    cpu = usage.ru_utime + usage.ru_stime
    spooled = 0
    for f in sorted(spool.iterdir()):
        data = f.read_bytes()
        pos = 24
        while pos < len(data):
            spooled += 1
            pos += 16 + struct.unpack_from("<I", data, pos + 8)[0]
    drops = re.search(r"([\d,]+) dropped by the kernel", out)
    print(
        f"listen   {datagrams:,} datagrams of 1,400 B sent at {datagrams / sent_in:,.0f}/s: "
        f"{spooled:,} in the spool ({len(list(spool.iterdir()))} files), "
        f"kernel drops {drops.group(1) if drops else 0}, lost {datagrams - spooled:,}; listen used "
        f"{cpu:.1f} s CPU ({usage.ru_utime:.1f} user, {usage.ru_stime:.1f} system; "
        f"{cpu / max(spooled, 1) * 1e6:.1f} us per datagram)"
    )
    print("         " + out.strip())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=2_000_000)
    ap.add_argument("--datagrams", type=int, default=300_000)
    ap.add_argument("--rate", type=int, default=50_000)
    ap.add_argument("--rcvbuf", type=int, help="listen --rcvbuf (default: listen's own)")
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--only", choices=["collect", "listen"])
    ap.add_argument("--same-span", action="store_true", help="also a quarter of the records over the hour")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=a.workdir) as tmp:
        work = Path(tmp)
        if a.only != "listen":
            bench_collect(work, a.records, a.same_span)
        if a.only != "collect":
            bench_listen(work, a.datagrams, a.rate, a.rcvbuf)


if __name__ == "__main__":
    main()
