#!/usr/bin/env python3
"""The workloads of issue 11: collect when every packet makes a new row, over a week, from a cold start.

    python benchmarks/bench_cardinality.py                       # every workload (about 5 minutes)
    python benchmarks/bench_cardinality.py --only startup,busy   # some of them
    python benchmarks/bench_cardinality.py --packets 1000000 --keep --workdir /var/tmp/fdcard

Workloads (captures made by ``../shared/bench/gen_pcap.py``, deterministic numpy; ``--gen`` points
elsewhere; a workload whose generator is missing is skipped with one line saying so):

* ``hc5``: high cardinality (scans, DNS, many short flows: about half the packets start a new 5-tuple
  row per minute), ``gen_pcap.py -n 5000000 --snaplen 96``, one 5-tuple table, ``interval = 60``;
  against the naive dpkt loop of bench_collect.py on the same file (its first ``--dpkt-packets``);
  and the same table from a capture 5x smaller, for memory flatness;
* ``hcdef``: the same capture, the four default tables, ``interval = 300``;
* ``week``: one capture over a week (2,017 intervals; 40 day files, one per table and UTC day, where
  it was 10,085 interval files before collect wrote day files), default tables; then
  ``flowdiff learn`` over the collected store against DuckDB's GROUP BY of the same keys over the
  same files (``pip install flowdiff[bench]`` for duckdb);
* ``startup``: collecting a capture of 20 packets, whole process, median of 5 runs after one warm-up;
* ``busy``: bench_collect.py's busy span-port capture (20,000 packets/s, 20,000 flows), 5-tuple table.

Before any workload but ``startup``, an untimed warm-up (a 100,000-packet capture over three days and
a dense 200,000-packet one, collected with the default and the 5-tuple tables, then learned) fills
numba's cache, as cron's first pass after an install does: no workload is charged with compiling.

Every tool runs as its own process and is measured whole: wall seconds, CPU seconds (user + system,
from wait4(2), the figure to compare on a shared machine), peak RSS of that process; the peak RSS of
all children (getrusage(RUSAGE_CHILDREN)) closes the run. Each figure is printed with its target and
PASS or FAIL (wall-clock targets are meant for an idle machine: see the CPU column when it is busy).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# ../shared beside the project; from a git worktree (one folder deeper), ../../shared
DEFAULT_GEN = next(
    (g for b in (ROOT.parent, ROOT.parent.parent) if (g := b / "shared" / "bench" / "gen_pcap.py").is_file()),
    ROOT.parent / "shared" / "bench" / "gen_pcap.py",
)
GB = 1 << 30
FLOWDIFF = [sys.executable, "-m", "flowdiff"]
T5 = '[tables.t5]\nkeys = ["src", "dst", "proto", "sport", "dport"]\n'
DEFAULT_KEYS = {
    "hosts": ["src"],
    "pairs": ["src", "dst", "proto"],
    "services": ["client", "server", "proto", "service_port"],
    "link": ["ethertype", "src_mac", "dst_mac"],
}
WORKLOADS = ("startup", "hc5", "hcdef", "week", "busy")


@dataclass
class Run:
    label: str
    packets: int
    wall: float  # seconds, whole process
    cpu: float  # user + system seconds
    rss: int  # bytes, peak of that process
    out: str = ""

    @property
    def mpps(self) -> float:
        return self.packets / self.wall / 1e6 if self.wall > 0 else 0.0


def run(cmd: list[str], label: str, packets: int = 0, cwd: Path = ROOT) -> Run:
    """``cmd`` as its own process: wall time, CPU time and peak RSS of exactly that child."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    # Dirty pages left by what ran before (a capture just generated: 300-500 MB) are written out first:
    # collect makes its store durable with syncfs(2), which would otherwise flush them on its clock
    # (measured on a fresh machine: hc5 1.56 s right after generating its capture, 1.39 s when cached).
    os.sync()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=cwd, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        out.seek(0)
        err.seek(0)
        text, errors = out.read().decode(), err.read().decode()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.exit(f"{label} failed with exit status {code}:\n{text}\n{errors}")
    rss = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return Run(label, packets, wall, usage.ru_utime + usage.ru_stime, rss, text)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def show(r: Run, target: str = "", ok: bool | None = None) -> None:
    rate = f"{r.mpps:7.3f} Mpps" if r.packets else " " * 12
    tail = f"  target {target}: {verdict(bool(ok))}" if target else ""
    print(
        f"  {r.label:<36} {r.packets:>11,} pkts {r.wall:7.2f} s wall {r.cpu:7.2f} s CPU {rate} "
        f"{r.rss / 2**20:7,.0f} MB{tail}",
        flush=True,
    )


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.work: Path = args.workdir.resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.generated: list[Path] = []
        self.results: list[tuple[str, bool]] = []

    def check(self, what: str, ok: bool) -> bool:
        self.results.append((what, ok))
        return ok

    # -- captures
    def gen(self, name: str, *options: str) -> Path | None:
        """A capture of gen_pcap.py, cached in the workdir under ``name`` (the generator is
        deterministic: same options, same bytes). None, with one line, when there is no generator."""
        path = self.work / f"{name}.pcap"
        stamp = self.work / f"{name}.options"
        want = " ".join(options)
        if path.exists() and stamp.exists() and stamp.read_text() == want:
            return path
        gen = self.args.gen
        if not gen.is_file():
            print(f"  skipped: no capture generator at {gen} (give --gen PATH)", flush=True)
            return None
        t = time.perf_counter()
        subprocess.run([sys.executable, str(gen), *options, "-o", str(path)], check=True, capture_output=True)
        stamp.write_text(want)
        self.generated += [path, stamp, Path(str(path) + ".truth.json")]
        print(
            f"  generated {path.name} ({path.stat().st_size / 1e6:,.0f} MB) in {time.perf_counter() - t:.1f} s"
        )
        return path

    def config(self, name: str, interval: int, tables: str) -> Path:
        """A config in its own folder (store and baselines beside it), the store emptied."""
        d = self.work / name
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        cfg = d / "flowdiff.toml"
        cfg.write_text(f'interval = {interval}\nsensor = "bench"\nstore = "store"\n\n{tables}')
        return cfg

    def collect(self, cfg: Path, capture: Path, label: str, packets: int) -> Run:
        r = run(
            [*FLOWDIFF, "collect", "--config", str(cfg), "--all", "--no-progress", str(capture)],
            label,
            packets,
        )
        if "1 file collected" not in r.out:
            sys.exit(f"{label}: unexpected output: {r.out}")
        return r

    def packets_of(self, capture: Path) -> int:
        truth = Path(str(capture) + ".truth.json")
        return int(json.loads(truth.read_text())["packets"])

    # -- workloads
    def startup(self) -> None:
        print("startup: collect of a 20-packet capture, whole process (median of 5 after a warm-up)")
        cap = self.gen("startup", "-n", "20", "--snaplen", "96")
        if cap is None:
            return
        runs = []
        for i in range(6):
            cfg = self.config("startup", 300, "")
            r = self.collect(cfg, cap, "flowdiff collect (20 packets)", 20)
            if i:  # the first run may compile or fill the OS cache
                runs.append(r)
        med = sorted(runs, key=lambda r: r.wall)[len(runs) // 2]
        med.label = "flowdiff collect (20 packets), median"
        show(med, "<= 0.5 s", self.check("startup <= 0.5 s", med.wall <= 0.5))
        print(f"  (CPU seconds of the 5 runs: {', '.join(f'{r.cpu:.2f}' for r in runs)})")

    def warm_up(self) -> None:
        """An untimed collect (default tables over days, and the 5-tuple table) and learn of a small
        capture: the first collect after an install or an upgrade compiles the kernels into numba's
        cache (30-50 s, once: cron pays it on its first pass), which no workload is to be charged with
        (on a fresh machine hc5 read 0.12 Mpps and 1.7x the RSS of the 1/5 capture without it)."""
        print("warm-up: an untimed collect and learn fill numba's cache (it compiles after an install)")
        # sparse intervals over days (day files, sorted groups) and dense ones (direct-addressed groups)
        caps = [
            self.gen("warmup-days", "-n", "100000", "--snaplen", "96", "--duration", "259200"),
            self.gen("warmup-dense", "-n", "200000", "--snaplen", "96"),
        ]
        if None in caps:
            return
        t = time.perf_counter()
        for name, interval, tables in (("warmup", 300, ""), ("warmup5", 60, T5)):
            cfg = self.config(name, interval, tables)
            collect = [*FLOWDIFF, "collect", "--config", str(cfg), "--all", "--no-progress", *map(str, caps)]
            subprocess.run(collect, check=True, capture_output=True)
        learn = [*FLOWDIFF, "learn", "--config", str(self.work / "warmup" / "flowdiff.toml"), "--force"]
        subprocess.run(learn, check=True, capture_output=True)
        print(f"  done in {time.perf_counter() - t:.1f} s", flush=True)

    def high_cardinality(self, five_tuple: bool, default: bool) -> None:
        n = self.args.packets
        print(f"high cardinality: gen_pcap.py -n {n} --snaplen 96")
        cap = self.gen(f"hc-{n}", "-n", str(n), "--snaplen", "96")
        if cap is None:
            return
        packets = self.packets_of(cap)
        if five_tuple:
            r5 = self.collect(self.config("hc5", 60, T5), cap, "collect 5-tuple, interval 60", packets)
            dpkt = self.dpkt(cap, packets)
            show(r5, ">= 2 Mpps", self.check("hc5 >= 2 Mpps", r5.mpps >= 2.0))
            ratio = r5.mpps / dpkt.mpps
            show(dpkt)
            print(
                f"  collect / dpkt: {ratio:.1f}x  target >= 30x: {verdict(self.check('hc5 >= 30x dpkt', ratio >= 30))}"
            )
            self.memory("hc5", r5)
            if not self.args.no_flatness:
                small_n = n // 5
                small = self.gen(f"hc-{small_n}", "-n", str(small_n), "--snaplen", "96")
                if small is not None:
                    rs = self.collect(
                        self.config("hc5s", 60, T5), small, "collect 5-tuple, 1/5 capture", small_n
                    )
                    show(rs)
                    grow = r5.rss / rs.rss
                    ok = self.check("hc5 peak RSS flat (x < 1.5 for 5x the packets)", grow < 1.5)
                    print(f"  peak RSS x{grow:.2f} for 5x the packets  target flat (< x1.5): {verdict(ok)}")
        if default:
            rd = self.collect(
                self.config("hcdef", 300, ""), cap, "collect default tables, interval 300", packets
            )
            show(rd, ">= 1.5 Mpps", self.check("hcdef >= 1.5 Mpps", rd.mpps >= 1.5))
            self.memory("hcdef", rd)

    def memory(self, name: str, r: Run) -> None:
        self.check(f"{name} peak RSS < 1 GB", r.rss < GB)
        if r.rss >= GB:
            print(f"  peak RSS {r.rss / 2**20:,.0f} MB  target < 1 GB: FAIL")

    def dpkt(self, cap: Path, packets: int) -> Run:
        n = min(self.args.dpkt_packets, packets)
        cmd = [
            sys.executable,
            str(HERE / "bench_collect.py"),
            "--dpkt-loop",
            str(cap),
            "--dpkt-packets",
            str(n),
        ]
        return run(cmd, f"naive dpkt loop (first {n:,})", n)

    def week(self) -> None:
        n = self.args.week_packets
        print(
            f"week: gen_pcap.py -n {n} --snaplen 96 --hosts 2000 --services 200 --flows 20000 --duration 604800"
        )
        cap = self.gen(
            f"week-{n}",
            *("-n", str(n), "--snaplen", "96", "--hosts", "2000", "--services", "200"),
            *("--flows", "20000", "--duration", "604800"),
        )
        if cap is None:
            return
        packets = self.packets_of(cap)
        cfg = self.config("week", 300, "")
        r = self.collect(cfg, cap, "collect default tables, a week", packets)
        found = [p.stem for p in (cfg.parent / "store").rglob("*.parquet")]
        files, days = len(found), sum(1 for s in found if len(s) == 8)
        show(r, ">= 1 Mpps", self.check("week collect >= 1 Mpps", r.mpps >= 1.0))
        print(f"  {files:,} files in the store ({days:,} day files, {files - days:,} interval files)")
        self.memory("week", r)
        learn = run([*FLOWDIFF, "learn", "--config", str(cfg), "--force"], "flowdiff learn")
        duck = run(
            [sys.executable, __file__, "--duckdb-groupby", str(cfg.parent / "store")], "duckdb GROUP BY"
        )
        if "skipped" in duck.out:
            show(learn)
            print(f"  {duck.out.strip()}")
            return
        show(learn)
        show(duck)
        ratio = learn.wall / duck.wall
        print(
            f"  learn / duckdb: {ratio:.2f}x  target <= 2x: {verdict(self.check('week learn <= 2x duckdb', ratio <= 2))}"
        )

    def busy(self) -> None:
        from bench_collect import BUSY_RATE, capture

        n = self.args.packets
        print(f"busy span port: bench_collect.py's capture, {n:,} packets at {BUSY_RATE:,} packets/s")
        info, new = capture(self.work, n, False, 0, BUSY_RATE)
        if new:
            self.generated += [info.path, info.path.with_suffix(".info")]
        r = self.collect(self.config("busy", 60, T5), info.path, "collect 5-tuple, busy span port", n)
        show(r, ">= 3 Mpps", self.check("busy >= 3 Mpps", r.mpps >= 3.0))
        self.memory("busy", r)

    def close(self) -> None:
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        ok = self.check("every process peak RSS < 1 GB", peak < GB)
        print(f"\npeak RSS of all children: {peak / 2**20:,.0f} MB  target < 1 GB: {verdict(ok)}")
        failed = [w for w, ok in self.results if not ok]
        met = len(self.results) - len(failed)
        print(
            f"targets met: {met} of {len(self.results)}"
            + (f"; missed: {'; '.join(failed)}" if failed else "")
        )
        if not self.args.keep:
            for name in ("startup", "warmup", "warmup5", "hc5", "hc5s", "hcdef", "week", "busy"):
                shutil.rmtree(self.work / name, ignore_errors=True)
            for p in self.generated:
                p.unlink(missing_ok=True)


def duckdb_groupby(store: Path) -> None:
    """The peer of `flowdiff learn`: per table, every key's intervals, packets, bytes, first and last
    seen over all the store's files (day and interval files), in one GROUP BY each."""
    try:
        import duckdb
    except ImportError:
        print("skipped: duckdb is not installed (pip install duckdb)")
        return
    con = duckdb.connect()
    rows = 0
    for table, keys in DEFAULT_KEYS.items():
        cols = ", ".join(keys)
        glob = str(store / table / "sensor=*" / "*.parquet")
        q = (
            f"SELECT {cols}, count(*) AS intervals, sum(packets), sum(bytes), min(first_seen), max(last_seen) "
            f"FROM read_parquet('{glob}', hive_partitioning = true) GROUP BY {cols}"
        )
        rows += len(con.execute(q).fetchall())
    print(f"{rows} keys")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gen", type=Path, default=DEFAULT_GEN, help=f"gen_pcap.py (default {DEFAULT_GEN})")
    ap.add_argument(
        "--only", default=",".join(WORKLOADS), help=f"comma-separated among {', '.join(WORKLOADS)}"
    )
    ap.add_argument("--packets", type=int, default=5_000_000, help="packets of the hc and busy captures")
    ap.add_argument("--week-packets", type=int, default=3_000_000, help="packets of the week capture")
    ap.add_argument("--dpkt-packets", type=int, default=500_000, help="records the dpkt loop reads")
    ap.add_argument("--no-flatness", action="store_true", help="skip the 1/5 capture of the memory check")
    ap.add_argument("--keep", action="store_true", help="keep captures and stores in the workdir")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "flowdiff-bench-card")
    ap.add_argument("--duckdb-groupby", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.duckdb_groupby:
        duckdb_groupby(args.duckdb_groupby)
        return
    only = {w.strip() for w in args.only.split(",") if w.strip()}
    unknown = only - set(WORKLOADS)
    if unknown:
        ap.error(f"unknown workload {sorted(unknown)[0]!r} (choose among {', '.join(WORKLOADS)})")
    # an installed package has its bytecode compiled (pip does it); a checkout run with
    # PYTHONDONTWRITEBYTECODE (or a fresh clone) would recompile every module in every measured process
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "flowdiff")], check=True)
    bench = Bench(args)
    print(f"workdir {bench.work}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    if "startup" in only:
        bench.startup()
    if only - {"startup"}:
        bench.warm_up()
    if only & {"hc5", "hcdef"}:
        bench.high_cardinality("hc5" in only, "hcdef" in only)
    if "week" in only:
        bench.week()
    if "busy" in only:
        bench.busy()
    bench.close()


if __name__ == "__main__":
    main()
