"""collect end to end: captures -> store, through the CLI and the library, on real and generated captures."""

from __future__ import annotations

import functools
import importlib
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from crash_steps import forked, kill_at_every_step
from hypothesis import given, settings
from hypothesis import strategies as st

from flowdiff.cli import main
from flowdiff.collect import collect, find_captures
from flowdiff.config import parse_config
from flowdiff.demo import frames as synth
from flowdiff.errors import StoreError
from flowdiff.exitcodes import ExitCode
from flowdiff.store import Store

DATA = Path(__file__).resolve().parent / "data"
T5 = ["src", "dst", "proto", "sport", "dport"]
T5_CONFIG = 'interval = 60\nsensor = "test"\n[tables.t5]\nkeys = ["src", "dst", "proto", "sport", "dport"]\n'
ORACLE_FILES = sorted(
    p for p in DATA.glob("*.pcap*") if (DATA / f"{p.name.removesuffix('.gz')}.oracle.i60.csv").exists()
)


def oracle_table(capture: Path) -> pd.DataFrame:
    df = pd.read_csv(
        capture.parent / f"{capture.name.removesuffix('.gz')}.oracle.i60.csv", dtype={"src": str, "dst": str}
    )
    df["interval_start"] = pd.to_datetime(df["interval_start"], utc=True)
    return df


def store_table(store: Path, table: str = "t5") -> pd.DataFrame:
    return pd.read_parquet(store / table)


def normalise(df: pd.DataFrame) -> pd.DataFrame:
    cols = ["interval_start", *T5, "packets", "bytes"]
    out = df[cols].copy()
    out["interval_start"] = out["interval_start"].astype("datetime64[us, UTC]")
    for c in ["proto", "sport", "dport", "packets", "bytes"]:
        out[c] = out[c].astype("int64")
    for c in ["src", "dst"]:
        out[c] = out[c].astype(str)
    return out.sort_values(cols).reset_index(drop=True)


def run_cli(*args: str, config: Path | None = None):
    argv = list(args) + (["--config", str(config)] if config else [])
    return CliRunner().invoke(main, argv, catch_exceptions=False)


@pytest.fixture
def t5_config(write_config) -> Path:
    return write_config(T5_CONFIG)


@pytest.mark.parametrize("capture", ORACLE_FILES, ids=[p.name for p in ORACLE_FILES])
def test_store_reproduces_oracle(capture, t5_config, tmp_path):
    """The whole pipeline (CLI -> store -> pandas.read_parquet) gives tshark's table, packets and bytes.
    Per-packet differences, if any, are justified in tests/test_oracle.py; here only files without one."""
    r = run_cli("collect", str(capture), config=t5_config)
    assert r.exit_code == 0, r.output
    oracle = oracle_table(capture)
    if oracle.empty:
        assert (
            not (tmp_path / "store" / "t5" / "sensor=test").exists() or store_table(tmp_path / "store").empty
        )
        return
    got = normalise(store_table(tmp_path / "store"))
    want = normalise(oracle)
    if capture.name in ORACLE_EXCEPTIONS:
        pytest.xfail(ORACLE_EXCEPTIONS[capture.name])
    pd.testing.assert_frame_equal(got, want)


# Captures where flowdiff deliberately differs from tshark 4.0.17, with the reason. Kept in sync with
# tests/test_oracle.py, which checks the per-packet details.
ORACLE_EXCEPTIONS: dict[str, str] = {}


def test_whole_corpus_matches_oracle(shared_pcaps, t5_config, tmp_path):
    """Every good capture of ../shared/pcaps that has an oracle table, collected in one run."""
    good = sorted(p for p in (shared_pcaps / "good").iterdir() if not p.name.endswith(".csv"))
    store = tmp_path / "store"
    mismatched = []
    for capture in good:
        shutil.rmtree(store, ignore_errors=True)
        r = run_cli("collect", str(capture), config=t5_config)
        assert r.exit_code == 0, f"{capture.name}: {r.output}"
        want = normalise(oracle_table(capture))
        got = normalise(store_table(store)) if (store / "t5" / "sensor=test").exists() else want.iloc[:0]
        if not got.equals(want) and capture.name not in ORACLE_EXCEPTIONS:
            mismatched.append(capture.name)
    assert mismatched == []


def small_capture(path: Path, *, t0: int = 1_700_000_000, clients: int = 3, compress: bool = False) -> Path:
    return synth.write_pcap(path, small_frames(t0=t0, clients=clients), compress=compress)


def small_frames(*, t0: int = 1_700_000_000, clients: int = 3) -> list[synth.Frame]:
    """SMTP sessions from `clients` clients to one server, plus one ARP request: 10 * clients + 1 frames."""
    frames = []
    for i in range(clients):
        frames += synth.tcp_session(
            (t0 + 40 * i) * 10**9,
            client_mac="02:00:00:00:00:01",
            server_mac="00:00:5e:00:53:01",
            client=f"192.0.2.{10 + i}",
            server="198.51.100.25",
            cport=40000 + i,
            sport=25,
            exchanges=[(True, b"EHLO x\r\n"), (False, b"250 ok\r\n")],
        )
    frames.append(
        synth.Frame((t0 + 5) * 10**9, synth.arp_frame("02:00:00:00:00:01", "192.0.2.10", "192.0.2.1"))
    )
    frames.sort(key=lambda f: f.ts_ns)
    return frames


def test_collect_default_tables_and_summary(tmp_path):
    cap = small_capture(tmp_path / "a.pcap")
    r = run_cli("collect", str(cap))
    assert r.exit_code == 0, r.output
    line = r.output.strip().splitlines()[-1]
    assert line.startswith("1 file collected, 31 packets,")
    assert "1 interval" in line and "rows written" in line and "Mpps" in line
    services = pd.read_parquet(tmp_path / "store" / "services")
    assert sorted(services.client) == ["192.0.2.10", "192.0.2.11", "192.0.2.12"]
    assert set(services.service_port) == {25} and set(services.server) == {"198.51.100.25"}
    link = pd.read_parquet(tmp_path / "store" / "link")
    assert 0x0806 in set(link.ethertype)  # ARP shows in the link table
    hosts = pd.read_parquet(tmp_path / "store" / "hosts")
    assert hosts.packets.sum() == 30  # every IP frame, the ARP frame is not a host row
    r2 = run_cli("show", "services", "--format", "csv")
    assert r2.output.splitlines()[0].startswith("client,server,proto,service_port,packets,bytes")


def test_recollect_is_a_noop_and_same_content_under_new_name(tmp_path):
    cap = small_capture(tmp_path / "a.pcap")
    config = parse_config({"sensor": "s"})
    first = collect([cap], config)
    snapshot = {p: p.read_bytes() for p in (tmp_path / "store").rglob("*.parquet")}
    again = collect([cap], config)
    assert again.files[0].status == "known" and again.packets == 0
    copy = tmp_path / "copy.pcap"
    shutil.copy(cap, copy)
    third = collect([copy], config)
    assert third.files[0].status == "known"
    assert {p: p.read_bytes() for p in (tmp_path / "store").rglob("*.parquet")} == snapshot
    assert first.packets == 31


def test_files_sharing_an_interval_merge(tmp_path):
    """Two captures split from one give exactly the tables of the whole, also over two runs."""
    frames = small_frames(clients=4)
    whole = synth.write_pcap(tmp_path / "whole.pcap", frames)
    half = len(frames) // 2
    synth.write_pcap(tmp_path / "p1.pcap", frames[:half])
    synth.write_pcap(tmp_path / "p2.pcap.gz", frames[half:], compress=True)
    cfg_whole = parse_config({"sensor": "s", "store": str(tmp_path / "s1"), "interval": 60})
    cfg_parts = parse_config({"sensor": "s", "store": str(tmp_path / "s2"), "interval": 60})
    collect([whole], cfg_whole)
    collect([tmp_path / "p1.pcap"], cfg_parts)
    collect([tmp_path / "p2.pcap.gz"], cfg_parts)
    for table in ("hosts", "pairs", "services", "link"):
        a = Store(tmp_path / "s1").read(table)
        b = Store(tmp_path / "s2").read(table)
        pd.testing.assert_frame_equal(a, b)


def test_spool_rule_defers_newest(tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    old = small_capture(spool / "20261130100000.pcap")
    new = small_capture(spool / "20261130100500.pcap", t0=1_700_000_300)
    (spool / "notes.txt").write_text("not a capture")
    past = time.time() - 3600
    os.utime(old, (past, past))
    files, deferred, ignored = find_captures([spool], settle=600)
    assert files == [old] and deferred == [new] and ignored == [spool / "notes.txt"]
    files, deferred, _ = find_captures([spool], all_files=True, settle=600)
    assert files == [old, new] and deferred == []
    files, deferred, _ = find_captures([spool], settle=600, now=time.time() + 3600)
    assert files == [old, new]  # the newest has been idle longer than `settle`: tcpdump is done with it
    r = run_cli("collect", str(spool))
    assert r.exit_code == 0
    assert "1 still being written" in r.output and "1 not captures" in r.output


BAD = DATA / "bad"


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("empty.pcap", b"", "empty"),
        ("text.pcap", b"hello, this is not a capture at all\n" * 4, "not a"),
    ],
)
def test_unreadable_file_is_one_line_and_exit_2(tmp_path, name, content, needle):
    bad = tmp_path / name
    bad.write_bytes(content)
    good = small_capture(tmp_path / "good.pcap")
    r = CliRunner().invoke(main, ["collect", str(bad), str(good)])
    assert r.exit_code == 2
    errors = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and str(bad) in errors[0] and needle in errors[0].lower()
    assert "Traceback" not in r.output
    assert "1 file collected, 31 packets" in r.output  # the good file is still collected
    # Reported once: the next cron run does not complain about the same file again.
    r2 = CliRunner().invoke(main, ["collect", str(bad), str(good)])
    assert r2.exit_code == 0 and "Error" not in r2.output


def test_a_capture_named_file_in_a_spool_that_is_not_a_capture_is_loud_once(tmp_path):
    """A spool's `*.pcap` with a garbage header (a disk error, a wrong tool) is damage, not a stray note:
    one Error line and exit 2 on the first run, remembered after that; a text file stays ignored."""
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "20261201215000.pcap").write_bytes(b"\x00garbage where a pcap header should be\n" * 8)
    small_capture(spool / "20261201215500.pcap")
    (spool / "notes.txt").write_text("not a capture")
    r = CliRunner().invoke(main, ["collect", "--all", str(spool)])
    assert r.exit_code == 2, r.output
    errors = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "20261201215000.pcap" in errors[0], r.output
    assert "1 file collected" in r.output and "1 not captures" in r.output and "1 unreadable" in r.output
    again = CliRunner().invoke(main, ["collect", "--all", str(spool)])
    assert again.exit_code == 0 and "Error" not in again.output, again.output


def test_truncated_capture_keeps_good_records(tmp_path):
    cap = small_capture(tmp_path / "a.pcap")
    data = cap.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) - 30])  # mid-record
    r = CliRunner().invoke(main, ["collect", str(cut)])
    assert r.exit_code == 0, r.output  # damaged, not unreadable
    warn = [line for line in r.output.splitlines() if line.startswith("Warning:")]
    assert len(warn) == 1 and str(cut) in warn[0] and "byte" in warn[0]
    assert "1 file collected, 30 packets" in r.output


def test_real_bad_corpus_never_tracebacks(shared_pcaps, tmp_path):
    bad = sorted((shared_pcaps / "bad").iterdir())
    r = CliRunner().invoke(main, ["collect", *map(str, bad)])
    assert r.exit_code in (0, 2), r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    for line in r.output.splitlines():
        if line.startswith(("Error:", "Warning:")):
            assert str(shared_pcaps / "bad") in line


def test_unknown_table_is_an_error(tmp_path):
    cap = small_capture(tmp_path / "a.pcap")
    r = CliRunner().invoke(main, ["collect", "--table", "nope", str(cap)])
    assert r.exit_code == 2 and "no table named 'nope'" in r.output


# ---------------------------------------------------------------- kill -9 at every write step


def _collect_child(store: str, files: list[str], crash_at: int | None) -> None:
    if crash_at:
        os.environ["FLOWDIFF_CRASH_AT"] = str(crash_at)
    collect(files, parse_config({"store": store, "interval": 60, "sensor": "s"}))


def _collect_forked(store: Path, files: list[Path], crash_at: int | None) -> int | None:
    return forked(functools.partial(_collect_child, files=[str(f) for f in files]), store, crash_at)


def _snapshot(store: Path) -> dict[str, pd.DataFrame]:
    out = {}
    for table in ("hosts", "pairs", "services", "link"):
        df = Store(store).read(table)
        out[table] = df.sort_values(list(df.columns)).reset_index(drop=True)
    return out


def test_kill_minus_9_at_every_step_then_rerun_is_exact(tmp_path):
    # two captures whose packets fall in the same interval, so the second merges into the first's files
    files = [small_capture(tmp_path / f"c{i}.pcap", t0=1_700_000_000 + 10 * i, clients=1) for i in range(2)]
    ref = tmp_path / "ref"
    _collect_child(str(ref), [str(f) for f in files], None)  # in this process: the children inherit warm code
    want = _snapshot(ref)

    def check(store: Path, step: int) -> None:
        got = _snapshot(store)
        for table in want:
            pd.testing.assert_frame_equal(got[table], want[table], obj=f"{table} after crash at step {step}")
        assert not list(store.rglob(".*.tmp"))

    crashed = kill_at_every_step(
        tmp_path, functools.partial(_collect_child, files=[str(f) for f in files]), check
    )
    assert crashed >= 10  # every data file write, rename and ledger append was a crash point


def test_kill_minus_9_of_the_real_command_mid_run(tmp_path):
    """The CLI process killed at an arbitrary moment (here: while writing), then re-run."""
    files = [small_capture(tmp_path / f"c{i}.pcap", t0=1_700_000_000 + 90 * i, clients=2) for i in range(3)]
    ref = tmp_path / "ref"
    assert _collect_forked(ref, files, None) == 0
    store = tmp_path / "store"
    env = dict(os.environ, FLOWDIFF_CRASH_AT="9")
    cmd = [
        sys.executable,
        "-m",
        "flowdiff",
        "collect",
        "--store",
        str(store),
        "--interval",
        "60",
        *map(str, files),
    ]
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=120).returncode == -signal.SIGKILL
    env["FLOWDIFF_CRASH_AT"] = ""
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    ref_tables, got = _snapshot(ref), _snapshot(store)
    for table in ref_tables:
        pd.testing.assert_frame_equal(
            got[table].drop(columns="sensor"), ref_tables[table].drop(columns="sensor")
        )


# ---------------------------------------------------------------- streaming: closed intervals leave memory


def long_frames(*, t0: int = 1_700_000_040, minutes: int = 4) -> list[synth.Frame]:
    """Traffic over several 60 s intervals: one TCP connection that lasts all of them, whose client
    port (3000) is lower than its server port (40000), so only its SYN (in the first interval) makes the
    right side the client; UDP and TCP background every few seconds; and one frame of the first
    interval that arrives last (out of order), after that interval was drained."""
    cm, sm = "02:00:00:00:00:01", "00:00:5e:00:53:01"
    cli, srv = "192.0.2.50", "198.51.100.7"
    frames = [synth.Frame(t0 * 10**9, synth.tcp_frame(cm, sm, cli, srv, 3000, 40000, 0x02))]
    frames.append(synth.Frame(t0 * 10**9 + 1000, synth.tcp_frame(sm, cm, srv, cli, 40000, 3000, 0x12)))
    for s in range(1, minutes * 60, 3):
        ts = (t0 + s) * 10**9
        fwd = s % 2 == 0
        a, b = (cli, srv) if fwd else (srv, cli)
        pa_, pb = (3000, 40000) if fwd else (40000, 3000)
        frames.append(synth.Frame(ts, synth.tcp_frame(cm, sm, a, b, pa_, pb, 0x18, b"x" * (s % 50))))
        host = f"192.0.2.{100 + s % 7}"
        frames.append(
            synth.Frame(ts + 5000, synth.udp_frame(cm, sm, host, "198.51.100.53", 5353 + s % 3, 53, b"q"))
        )
    late = synth.udp_frame(cm, sm, "192.0.2.99", "198.51.100.53", 1234, 53, b"late")
    frames.append(synth.Frame((t0 + 2) * 10**9, late))
    return frames


def _sources(store: Path) -> set[str]:
    import json

    from flowdiff.store import file_metadata  # a day file collect wrote has its record in the footer only

    out: set[str] = set()
    for f in [store] if store.is_file() else store.rglob("*.parquet"):
        out.update(json.loads(file_metadata(f)[b"flowdiff.sources"]))
    return out


def test_streamed_parts_give_the_tables_of_one_pass(tmp_path, monkeypatch):
    """A capture read in many small chunks is drained interval by interval (several parts merged into
    the store, a late frame included) and gives exactly the tables of one pass over the whole capture,
    client/server roles included; collecting it again, also renamed, changes nothing."""
    fc = importlib.import_module("flowdiff.collect")  # the package exports a function of that name

    cap = synth.write_pcap(tmp_path / "long.pcap", long_frames())
    one = parse_config({"sensor": "s", "store": str(tmp_path / "one"), "interval": 60})
    many = parse_config({"sensor": "s", "store": str(tmp_path / "many"), "interval": 60})
    with monkeypatch.context() as m:  # the reference: no drain, one pass over the whole capture
        m.setattr(fc.Aggregator, "closed_intervals", lambda self, keep=1: False)
        collect([cap], one)
    assert {s.rsplit("#", 1)[1] for s in _sources(tmp_path / "one")} == {"0"}
    monkeypatch.setattr(fc, "_CHUNK_BYTES", 2048)
    monkeypatch.setattr(fc, "_DRAIN_ROWS", 0)  # a part whenever an interval closes
    res = collect([cap], many)
    assert res.files[0].status == "ok" and res.packets == len(long_frames())
    assert len({s.rsplit("#", 1)[1] for s in _sources(tmp_path / "many")}) == 4  # one per interval
    first = Store(tmp_path / "many", "s").interval_path(
        "hosts", pd.Timestamp(1_700_000_040, unit="s", tz="UTC")
    )
    assert len(_sources(first)) == 2  # the late frame came in the last part and merged
    for table in ("hosts", "pairs", "services", "link"):
        pd.testing.assert_frame_equal(
            Store(tmp_path / "many").read(table), Store(tmp_path / "one").read(table)
        )
    services = Store(tmp_path / "many").read("services", where={"proto": 6})
    assert len(services) == 4  # the long connection, once per interval
    assert set(services.client) == {"192.0.2.50"} and set(services.service_port) == {40000}
    snapshot = {p: p.read_bytes() for p in (tmp_path / "many").rglob("*.parquet")}
    copy = tmp_path / "renamed.pcap"
    shutil.copy(cap, copy)
    again = collect([cap, copy], many)
    assert [f.status for f in again.files] == ["known", "known"]
    assert {p: p.read_bytes() for p in (tmp_path / "many").rglob("*.parquet")} == snapshot


def test_memory_is_flat_as_the_capture_grows():
    """Fine rows held by the Aggregator while collecting stay those of about two intervals, whatever
    the number of intervals in the capture (the rows of closed intervals are drained)."""
    from flowdiff.aggregate import Aggregator
    from flowdiff.capture import RecordBatch
    from flowdiff.decode import decode

    frames = long_frames(minutes=12)
    peaks = []
    for minutes in (3, 12):
        agg = Aggregator({"t": ["src", "dst", "proto", "sport", "dport"]}, interval=60)
        peak = drained = 0
        t_end = (1_700_000_040 + minutes * 60) * 10**9
        for f in frames[:-1]:
            if f.ts_ns >= t_end:
                break
            raw = np.frombuffer(f.data, dtype=np.uint8)
            batch = RecordBatch(
                raw,
                np.zeros(1, np.int64),
                np.array([len(raw)], np.uint32),
                np.array([len(raw)], np.uint32),
                np.array([f.ts_ns], np.int64),
                np.ones(1, np.uint16),
            )
            agg.add(decode(batch))
            if agg.closed_intervals():
                drained += sum(t.num_rows for t in agg.drain().values())
            peak = max(peak, agg.fine_rows)
        drained += sum(t.num_rows for t in agg.finish().values())
        assert drained > 0
        peaks.append(peak)
    assert peaks[1] <= peaks[0] + 2, peaks  # without draining: 4x the rows for 4x the intervals


_PART_TABLES = {"services": {"keys": ["client", "server", "proto", "service_port"]}, "t5": {"keys": T5}}


def _collect_parts_child(store: str, files: list[str], crash_at: int | None) -> None:
    if crash_at:
        os.environ["FLOWDIFF_CRASH_AT"] = str(crash_at)
    collect(files, parse_config({"store": store, "interval": 60, "sensor": "s", "tables": _PART_TABLES}))


def test_kill_minus_9_at_every_step_of_a_capture_drained_in_parts(tmp_path, monkeypatch):
    """As above, with captures drained in several parts (small chunks) into overlapping intervals: a
    re-run skips exactly the parts an interval file already holds, whatever step the crash hit."""
    monkeypatch.setattr(
        importlib.import_module("flowdiff.collect"), "_CHUNK_BYTES", 2048
    )  # inherited by fork
    monkeypatch.setattr(importlib.import_module("flowdiff.collect"), "_DRAIN_ROWS", 0)
    files = [
        synth.write_pcap(tmp_path / f"l{i}.pcap", long_frames(t0=1_700_000_040 + 90 * i, minutes=2))
        for i in range(2)
    ]
    ref = tmp_path / "ref"
    _collect_parts_child(str(ref), [str(f) for f in files], None)
    want = {t: Store(ref).read(t) for t in _PART_TABLES}
    assert len(_sources(ref)) >= 5  # several parts per capture (2 + 3)

    def check(store: Path, step: int) -> None:
        for t in _PART_TABLES:
            pd.testing.assert_frame_equal(
                Store(store).read(t), want[t], obj=f"{t} after crash at step {step}"
            )
        shutil.rmtree(store)

    crashed = kill_at_every_step(
        tmp_path, functools.partial(_collect_parts_child, files=[str(f) for f in files]), check
    )
    assert crashed >= 20


def test_ipv4_text_order_is_the_order_of_the_strings():
    """The numeric shortcut that orders distinct IPv4 addresses like their dotted-quad text (so the
    stored rows are sorted as pyarrow sorts the strings) agrees with sorting the text itself."""
    import pyarrow.compute as pc

    from flowdiff.aggregate import _ipv4_text_order
    from flowdiff.netmap import address_array

    rng = np.random.default_rng(7)
    edge = np.array([0, 1, 2, 9, 10, 11, 19, 20, 25, 99, 100, 101, 199, 200, 249, 250, 255], dtype=np.uint64)
    octets = np.where(
        rng.random((5000, 4)) < 0.5, rng.choice(edge, (5000, 4)), rng.integers(0, 256, (5000, 4))
    )
    o = octets.astype(np.uint64)
    v = np.unique((o[:, 0] << 24) | (o[:, 1] << 16) | (o[:, 2] << 8) | o[:, 3])
    uniq = np.stack([np.full(len(v), 4, np.uint64), np.zeros(len(v), np.uint64), v], axis=1)
    text = address_array(uniq[:, 0], uniq[:, 1], uniq[:, 2])
    want = text.take(pc.sort_indices(text)).to_pylist()
    got = text.take(_ipv4_text_order(uniq)).to_pylist()
    assert got == want and len(set(got)) == len(got) > 4000
    mixed = np.vstack([uniq[:3], [[6, 1, 2]]]).astype(np.uint64)
    assert _ipv4_text_order(mixed) is None  # IPv6 present: the text is sorted


def test_renamed_copy_of_a_gzip_capture_changes_nothing(tmp_path):
    """The same-content check before reading compares the decompressed stream's hash, as the ledger
    records it, so a renamed .gz copy is recognised before any part is written."""
    cap = small_capture(tmp_path / "a.pcap.gz", compress=True)
    config = parse_config({"sensor": "s"})
    assert collect([cap], config).files[0].status == "ok"
    snapshot = {p: p.read_bytes() for p in (tmp_path / "store").rglob("*.parquet")}
    copy = tmp_path / "b.pcap.gz"
    shutil.copy(cap, copy)
    again = collect([copy], config)
    assert again.files[0].status == "known" and again.packets == 0
    assert {p: p.read_bytes() for p in (tmp_path / "store").rglob("*.parquet")} == snapshot


def test_unknown_link_type_is_reported_by_name_never_as_rows(tmp_path):
    frames = small_frames(clients=1)
    cap = synth.write_pcap(tmp_path / "user0.pcap", frames, linktype=147)
    r = CliRunner().invoke(main, ["collect", str(cap)])
    assert r.exit_code == 0, r.output
    warn = [line for line in r.output.splitlines() if line.startswith("Warning:")]
    assert len(warn) == 1 and str(cap) in warn[0]
    assert "unknown link type 147 (USER0)" in warn[0] and f"{len(frames)} frames" in warn[0]
    assert f"unknown-linktype {len(frames)}" in r.output  # the summary counts them by reason
    assert not list((tmp_path / "store").rglob("*.parquet"))  # no wrong rows, in any table


def test_progress_bar_reports_file_position(tmp_path):
    cap = small_capture(tmp_path / "a.pcap.gz", compress=True)
    seen = []
    collect([cap], parse_config({"sensor": "s"}), progress=lambda p, done, total: seen.append((done, total)))
    assert seen and seen[-1][0] == seen[-1][1] == cap.stat().st_size
    r = CliRunner().invoke(main, ["collect", "--progress", str(small_capture(tmp_path / "b.pcap"))])
    assert r.exit_code == 0 and str(tmp_path / "b.pcap") in r.output  # the bar is labelled with the file


# ---------------------------------------------------------------- paths and globs that name nothing (issue 8, item 8)


def test_glob_that_matches_nothing_is_an_error(tmp_path):
    (tmp_path / "dir").mkdir()
    r = CliRunner().invoke(main, ["collect", "dir/*.pcap"])
    assert r.exit_code == 2
    errors = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert errors == r.output.strip().splitlines() and len(errors) == 1
    assert "dir/*.pcap" in errors[0] and "no file matches" in errors[0]
    assert not (tmp_path / "store").exists()  # nothing was touched


def test_path_that_does_not_exist_is_an_error_and_nothing_is_collected(tmp_path):
    good = small_capture(tmp_path / "good.pcap")
    r = CliRunner().invoke(main, ["collect", str(good), "nope/missing.pcap"])
    assert r.exit_code == 2
    assert r.output.strip().splitlines() == [
        "Error: nope/missing.pcap: no such file or directory; nothing was collected"
    ]
    assert not list((tmp_path / "store").rglob("*.parquet")) if (tmp_path / "store").exists() else True


def test_glob_that_matches_reads_every_file(tmp_path):
    (tmp_path / "dir").mkdir()
    for i in range(2):
        small_capture(tmp_path / "dir" / f"c{i}.pcap", t0=1_700_000_000 + 100 * i)
    r = CliRunner().invoke(main, ["collect", "dir/*.pcap"])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("2 files collected, 62 packets,")


def test_directory_without_any_capture_is_fine_but_said(tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "README").write_text("captures go here\n")
    r = CliRunner().invoke(main, ["collect", str(spool)])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("0 files collected,")
    assert f"no capture in {spool}" in r.output and "1 not captures" in r.output


@pytest.fixture
def quiet_logging():
    """The log level as a fresh process has it (a `-v` of an earlier test lowers the root logger's)."""
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.WARNING)
    yield
    root.setLevel(level)


@pytest.mark.parametrize("where", ["before", "after"])
def test_files_skipped_as_not_captures_are_named_with_v(tmp_path, quiet_logging, where):
    spool = tmp_path / "spool"
    spool.mkdir()
    closed = small_capture(spool / "20261201215850.pcap")
    (spool / "notes.txt").write_text("not a capture")
    (spool / "core").write_bytes(b"\x7fELF" + b"\0" * 60)
    _age(closed, 7200)
    quiet = CliRunner().invoke(main, ["collect", str(spool)])
    assert "skipped" not in quiet.output and "2 not captures" in quiet.output
    shutil.rmtree(tmp_path / "store")
    args = ["-v", "collect", str(spool)] if where == "before" else ["collect", "-v", str(spool)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    named = sorted(line for line in r.stderr.splitlines() if line.startswith("skipped"))
    assert named == [
        f"skipped (not a capture): {spool / 'core'}",
        f"skipped (not a capture): {spool / 'notes.txt'}",
    ]
    assert r.stdout.startswith("1 file collected, 31 packets")


# ---------------------------------------------------------------- the newest file of a spool (issue 8, item 12)


def _age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def _issue_spool(tmp_path: Path) -> Path:
    """The spool of the issue: a capture tcpdump has just closed (39 KB) and the new, still empty file
    (tcpdump without -U writes nothing until about 4 KiB are buffered); both modified seconds ago."""
    spool = tmp_path / "spool"
    spool.mkdir()
    closed = small_capture(spool / "20261201215850.pcap", clients=50)
    assert 30_000 < closed.stat().st_size < 60_000
    (spool / "20261201215900.pcap").write_bytes(b"")
    return spool


def test_newer_empty_file_proves_the_previous_capture_is_closed(tmp_path):
    spool = _issue_spool(tmp_path)
    r = CliRunner().invoke(main, ["collect", str(spool)])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("1 file collected, 501 packets,")
    assert "(1 still being written)" in r.output and "not captures" not in r.output
    # the library, and the helper `watch` polls, agree
    files, deferred, ignored = find_captures([spool])
    assert files == [spool / "20261201215850.pcap"] and deferred == [spool / "20261201215900.pcap"]
    assert ignored == []
    from flowdiff.collect import spool_captures

    assert spool_captures(spool, parse_config({})) == [spool / "20261201215850.pcap"]


@pytest.mark.parametrize(
    "head", [b"", b"\xd4", b"\xd4\xc3\xb2", b"\x0a\x0d", b"\x1f"], ids=["0", "1", "3", "ng2", "gz1"]
)
def test_newest_file_without_a_complete_magic_is_still_being_written(tmp_path, head):
    """Also with --all and long after `settle`: there is nothing to read in it yet."""
    spool = tmp_path / "spool"
    spool.mkdir()
    closed = small_capture(spool / "20261201215850.pcap")
    new = spool / "20261201215900.pcap"
    new.write_bytes(head)
    _age(closed, 7200)
    _age(new, 3600)
    for all_files in (False, True):
        files, deferred, ignored = find_captures([spool], all_files=all_files, settle=600)
        assert (files, deferred, ignored) == ([closed], [new], [])


def test_empty_file_that_is_not_the_newest_never_blocks_the_others(tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    a = small_capture(spool / "20261201215000.pcap")
    empty = spool / "20261201215500.pcap"  # tcpdump was killed before it wrote anything
    empty.write_bytes(b"")
    b = small_capture(spool / "20261201220000.pcap", t0=1_700_000_600)
    c = small_capture(spool / "20261201220500.pcap", t0=1_700_000_900)  # being written
    found = find_captures([spool])
    assert found == ([a, b], [c], [empty])
    r = CliRunner().invoke(main, ["-v", "collect", str(spool)])
    assert r.exit_code == 0, r.output
    assert "2 files collected" in r.stdout and "1 still being written" in r.stdout
    assert f"skipped (empty): {empty}" in r.stderr.splitlines()


def test_names_from_strftime_order_the_spool_and_mtime_otherwise(tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    older = small_capture(spool / "20261201215850.pcap")
    newer = small_capture(spool / "20261201215900.pcap", t0=1_700_000_300)
    _age(newer, 30)  # the clock went back, or the file was copied: the name still tells the order
    _age(older, 10)
    assert find_captures([spool]) == ([older], [newer], [])
    ring = tmp_path / "ring"  # tcpdump -C/-W names: numbers that do not sort in time order
    ring.mkdir()
    r1 = small_capture(ring / "trace.pcap1")
    r0 = small_capture(ring / "trace.pcap0", t0=1_700_000_300)
    _age(r1, 60)
    assert find_captures([ring]) == ([r1], [r0], [])


@given(
    kinds=st.lists(st.sampled_from(["capture", "empty", "partial", "text"]), min_size=1, max_size=6),
    ages=st.lists(st.sampled_from([0, 30, 300, 3600, 7200]), min_size=6, max_size=6),  # clear of settle
    all_files=st.booleans(),
)
@settings(max_examples=60, deadline=None)
def test_only_the_newest_file_of_a_spool_can_wait(kinds, ages, all_files):
    """Whatever the mix of captures, empty files, cut headers and other files, and whatever their
    times: every older capture is read, only the last name can wait, and nothing is lost silently
    (each file is read, waiting or ignored)."""
    header = synth.pcap_bytes([])
    content = {"capture": header, "empty": b"", "partial": header[:3], "text": b"hello"}
    with tempfile.TemporaryDirectory() as tmp:
        spool = Path(tmp)
        paths = []
        for i, kind in enumerate(kinds):
            # a text file named like a capture is read (and fails loudly): the stray note is a .txt
            p = spool / f"2026120121{10 + i}00.{'txt' if kind == 'text' else 'pcap'}"
            p.write_bytes(content[kind])
            _age(p, ages[i])
            paths.append(p)
        files, deferred, ignored = find_captures([spool], all_files=all_files, settle=600)
        assert sorted(files + deferred + ignored) == paths
        candidates = [p for p, k in zip(paths, kinds, strict=True) if k != "text"]
        assert set(deferred) <= set(candidates[-1:])
        for p, kind in zip(paths, kinds, strict=True):
            if kind == "text":
                assert p in ignored
            elif p != candidates[-1]:
                assert p in (ignored if kind == "empty" else files)
            elif kind in ("empty", "partial"):
                assert p in deferred
            else:
                assert p in (files if all_files or ages[paths.index(p)] >= 600 else deferred)


def test_directory_with_only_the_file_being_written(tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "20261201215900.pcap").write_bytes(b"")
    r = CliRunner().invoke(main, ["collect", str(spool)])
    assert r.exit_code == 0, r.output
    assert "(1 still being written)" in r.output and "no capture in" not in r.output


# ---------------------------------------------------------------- tables a capture has not filled yet (item 9)


def _parquet_bytes(store: Path, table: str) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in (store / table).rglob("*.parquet")}


def _ledger(store: Path) -> list[dict]:
    import json

    files = [store / "_ledger.jsonl", *sorted((store / "_ledger").glob("*.jsonl"))]  # legacy, per sensor
    return [json.loads(line) for f in files if f.is_file() for line in f.read_text().splitlines()]


def test_collect_table_on_a_capture_collected_before_fills_that_table(tmp_path, write_config):
    """The issue's commands: a capture collected, `link` added to the config, then
    `flowdiff collect --table link FILE`: the link table is filled, nothing else changes."""
    cap = small_capture(tmp_path / "a.pcap")
    before = write_config('sensor = "s"\n[tables.hosts]\nkeys = ["src"]\n')
    assert run_cli("collect", str(cap), config=before).exit_code == 0
    hosts = _parquet_bytes(tmp_path / "store", "hosts")
    after = write_config(
        'sensor = "s"\n[tables.hosts]\nkeys = ["src"]\n'
        '[tables.link]\nkeys = ["ethertype", "src_mac", "dst_mac"]\n'
    )
    r = run_cli("collect", "--table", "link", str(cap), config=after)
    assert r.exit_code == 0, r.output
    assert r.output.startswith("1 file collected, 31 packets,")
    assert "1 read again for table link" in r.output and "already collected" not in r.output
    assert _parquet_bytes(tmp_path / "store", "hosts") == hosts
    ref = parse_config(
        {
            "sensor": "s",
            "store": str(tmp_path / "ref"),
            "tables": {"link": {"keys": ["ethertype", "src_mac", "dst_mac"]}},
        }
    )
    collect([cap], ref)
    pd.testing.assert_frame_equal(
        Store(tmp_path / "store").read("link"), Store(tmp_path / "ref").read("link")
    )
    assert [(e["tables"], e["records"]) for e in _ledger(tmp_path / "store")] == [
        (["hosts", "stations"], 31),
        (["link"], 31),
    ]
    link = _parquet_bytes(tmp_path / "store", "link")
    again = run_cli("collect", str(cap), config=after)  # every table filled now
    assert "1 already collected" in again.output and again.output.startswith("0 files collected")
    assert _parquet_bytes(tmp_path / "store", "link") == link
    assert _parquet_bytes(tmp_path / "store", "hosts") == hosts
    assert len(_ledger(tmp_path / "store")) == 2


def test_table_added_to_the_config_is_filled_by_the_next_spool_run(tmp_path):
    """A renamed copy and a spool re-read: each fills only what its content has not filled."""
    spool = tmp_path / "spool"
    spool.mkdir()
    caps = [small_capture(spool / f"2026120121{m}00.pcap", t0=1_700_000_000 + 60 * m) for m in (50, 55)]
    small_capture(spool / "20261201220000.pcap", t0=1_700_004_000)  # being written
    two = {"hosts": {"keys": ["src"]}, "pairs": {"keys": ["src", "dst", "proto"]}}
    cfg = parse_config({"sensor": "s", "tables": two})
    assert collect([spool], cfg).files_ok == 2
    pairs = _parquet_bytes(tmp_path / "store", "pairs")
    shutil.copy(caps[0], tmp_path / "renamed.pcap")
    three = parse_config(
        {
            "sensor": "s",
            "tables": {**two, "services": {"keys": ["client", "server", "proto", "service_port"]}},
        }
    )
    copy = collect([tmp_path / "renamed.pcap"], three)
    assert [(f.status, f.again, f.tables) for f in copy.files] == [("ok", True, ["services"])]
    res = collect([spool], three)
    assert [(Path(f.path).name, f.status, f.tables) for f in res.files] == [
        (caps[0].name, "known", []),
        (caps[1].name, "ok", ["services"]),
    ]
    assert _parquet_bytes(tmp_path / "store", "pairs") == pairs
    ref = parse_config(
        {
            "sensor": "s",
            "store": str(tmp_path / "ref"),
            "tables": {t: {"keys": list(tc.keys)} for t, tc in three.tables.items()},
        }
    )
    collect([spool], ref)
    for t in three.tables:
        pd.testing.assert_frame_equal(Store(tmp_path / "store").read(t), Store(tmp_path / "ref").read(t))


def test_old_ledger_lines_without_tables(tmp_path):
    """A ledger written before `tables` existed: a table counts as filled when it existed when the
    capture was collected (its _table.json is older than the entry), so only tables created later
    are filled from it."""
    import json

    cap = small_capture(tmp_path / "a.pcap")
    store = tmp_path / "store"
    collect([cap], parse_config({"sensor": "s", "tables": {"hosts": {"keys": ["src"]}}}))
    hour_ago = time.time() - 3600
    entries = _ledger(store)
    for e in entries:
        del e["tables"], e["capture_id"]
        e["collected_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(hour_ago))
    (store / "_ledger.jsonl").write_text(
        "".join(json.dumps(e) + "\n" for e in entries)
    )  # the old single ledger
    shutil.rmtree(store / "_ledger")
    os.utime(store / "hosts" / "_table.json", (hour_ago - 60, hour_ago - 60))
    hosts = _parquet_bytes(store, "hosts")
    both = parse_config(
        {"sensor": "s", "tables": {"hosts": {"keys": ["src"]}, "link": {"keys": ["ethertype"]}}}
    )
    res = collect([cap], both)
    assert [(f.status, f.tables) for f in res.files] == [("ok", ["link", "stations"])]
    assert _parquet_bytes(store, "hosts") == hosts
    assert int(Store(store).read("link").packets.sum()) == 31
    assert collect([cap], both).files[0].status == "known"


def test_unreadable_capture_stays_reported_once_when_tables_are_added(tmp_path):
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"not a capture at all, not even close\n")
    one = parse_config({"sensor": "s", "tables": {"hosts": {"keys": ["src"]}}})
    assert collect([bad], one).files_failed == 1
    two = parse_config(
        {"sensor": "s", "tables": {"hosts": {"keys": ["src"]}, "link": {"keys": ["ethertype"]}}}
    )
    again = collect([bad], two)
    assert again.files[0].status == "known" and again.errors == [] and again.exit_code == ExitCode.OK


def _fill_child(store: str, files: list[str], tables: dict, crash_at: int | None) -> None:
    if crash_at:
        os.environ["FLOWDIFF_CRASH_AT"] = str(crash_at)
    collect(files, parse_config({"store": store, "interval": 60, "sensor": "s", "tables": tables}))


def test_kill_minus_9_while_filling_a_new_table_then_rerun_is_exact(tmp_path, monkeypatch):
    """A capture collected for `services` is read again for `t5` in several parts; killed at every
    write step of that second read, a re-run still gives exactly one count of every packet (the parts
    keep the capture's id), and `services` never changes."""
    monkeypatch.setattr(importlib.import_module("flowdiff.collect"), "_CHUNK_BYTES", 2048)
    monkeypatch.setattr(importlib.import_module("flowdiff.collect"), "_DRAIN_ROWS", 0)
    files = [str(synth.write_pcap(tmp_path / "l.pcap", long_frames(minutes=2)))]
    first = {"services": _PART_TABLES["services"]}
    ref = tmp_path / "ref"
    _fill_child(str(ref), files, _PART_TABLES, None)
    want = Store(ref).read("t5")
    step = 1
    while True:
        store = tmp_path / f"crash{step}"
        _fill_child(str(store), files, first, None)
        services = _parquet_bytes(store, "services")
        child = multiprocessing.get_context("fork").Process(
            target=_fill_child, args=(str(store), files, _PART_TABLES, step)
        )
        child.start()
        child.join(120)
        if child.exitcode == 0:
            break
        assert child.exitcode == -signal.SIGKILL
        _fill_child(str(store), files, _PART_TABLES, None)
        pd.testing.assert_frame_equal(Store(store).read("t5"), want, obj=f"t5 after crash at step {step}")
        assert _parquet_bytes(store, "services") == services
        shutil.rmtree(store)
        step += 1
    assert step > 5


def test_crash_then_a_narrower_run_then_the_full_run_is_exact(tmp_path, monkeypatch):
    """Killed while reading a capture for two tables, re-run with `--table services` only (the ledger
    then says: services), then with both: the second table already holds some parts of the crashed
    read, and the read that fills it now uses the same part ids (the ledger's capture_id), so none
    counts twice."""
    monkeypatch.setattr(importlib.import_module("flowdiff.collect"), "_CHUNK_BYTES", 2048)
    monkeypatch.setattr(importlib.import_module("flowdiff.collect"), "_DRAIN_ROWS", 0)
    files = [str(synth.write_pcap(tmp_path / "l.pcap", long_frames(minutes=2)))]
    ref = tmp_path / "ref"
    _fill_child(str(ref), files, _PART_TABLES, None)
    want = Store(ref).read("t5")
    partial_t5 = 0
    step = 1
    while True:
        store = tmp_path / f"crash{step}"
        child = multiprocessing.get_context("fork").Process(
            target=_fill_child, args=(str(store), files, _PART_TABLES, step)
        )
        child.start()
        child.join(120)
        if child.exitcode == 0:
            break
        partial_t5 += bool(list((store / "t5").rglob("*.parquet")))
        _fill_child(str(store), files, {"services": _PART_TABLES["services"]}, None)
        _fill_child(str(store), files, _PART_TABLES, None)
        pd.testing.assert_frame_equal(Store(store).read("t5"), want, obj=f"t5 after crash at step {step}")
        assert [e["tables"] for e in _ledger(store)][-2:] == [["services", "stations"], ["t5"]]
        shutil.rmtree(store)
        step += 1
    assert partial_t5 >= 3  # the case that matters happened: t5 held parts of the crashed read


# ---------------------------------------------------------------- sub-second overflow (item 11)


def _overflow_pcap(path: Path, records: list[tuple[int, int, bytes]], *, nanos: bool, big: bool) -> Path:
    """A pcap written the way old capture tools did: the sub-second field is stored as given, even
    when it is 1,000,000 or more (10^9 or more in a nanosecond file)."""
    import struct

    e = ">" if big else "<"
    out = [struct.pack(e + "IHHiIII", 0xA1B23C4D if nanos else 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for sec, frac, data in records:
        out.append(struct.pack(e + "IIII", sec, frac, len(data), len(data)) + data)
    path.write_bytes(b"".join(out))
    return path


@pytest.mark.parametrize("big", [False, True], ids=["le", "be"])
@pytest.mark.parametrize("nanos", [False, True], ids=["us", "ns"])
def test_subsecond_overflow_is_counted_in_the_interval_of_the_plain_sum(tmp_path, t5_config, nanos, big):
    one = 10**9 if nanos else 10**6  # one second in the file's unit
    base = 1_700_000_000 // 60 * 60  # an interval boundary
    frame = synth.udp_frame(
        "02:00:00:00:00:01", "02:00:00:00:00:02", "192.0.2.1", "192.0.2.2", 1000, 53, b"q"
    )
    records = [
        (base + 58, one - 1, frame),  # 58.999999: the first interval
        (base + 59, one, frame),  # 59 + 1.0 = 60: the next interval, like libpcap and tshark count it
        (base + 59, one + one // 2, frame),  # 60.5
        (base + 20, 0xFFFFFFFF, frame),  # 20 + 4294.967295 s (us) or + 4.294967295 s (ns)
    ]
    cap = _overflow_pcap(tmp_path / "old.pcap", records, nanos=nanos, big=big)
    r = run_cli("collect", str(cap), config=t5_config)
    assert r.exit_code == 0, r.output
    assert r.output.startswith("1 file collected, 4 packets,") and "skipped frames" not in r.output
    got = store_table(tmp_path / "store").groupby("interval_start").packets.sum()
    last_ns = (base + 20) * 10**9 + 0xFFFFFFFF * (10**9 // one)
    assert (last_ns // 10**9 - base) == (24 if nanos else 4314)
    want = Counter([base, base + 60, base + 60, last_ns // (60 * 10**9) * 60])
    assert {int(k.timestamp()): int(v) for k, v in got.items()} == dict(want)


def test_real_capture_with_nanosecond_overflow_agrees_with_tshark(tmp_path, t5_config):
    """tcpdump's timestamp_invalid_nano.pcap: two of its three records have a nanosecond field of 10^9
    and more. All three are counted now. tshark 4.0.17 counts them too, but prints frame.time_epoch
    with the raw field (1418145370.1000000000, and -1418145370.2147483648 for 2^31, read as signed), so
    its oracle table puts the third frame in 1925. Its own frame.time_relative (2.147483649 s after the
    first frame at .999999999) shows that tshark's time for that frame is the plain sum, which is where
    flowdiff counts it: the oracle row is moved there, every other row must match as it is."""
    import struct

    capture = DATA / "bad" / "tcpdump__timestamp_invalid_nano.pcap"
    r = run_cli("collect", str(capture), config=t5_config)
    assert r.exit_code == 0, r.output
    assert r.output.startswith("1 file collected, 3 packets, 220 bytes,")
    raw = capture.read_bytes()
    third = 24 + 2 * (16 + 76)  # the third record header (two 76-byte records before it)
    sec, frac = struct.unpack_from("<II", raw, third)
    assert frac == 2**31
    oracle = oracle_table(capture)
    wrong = oracle.interval_start.dt.year == 1925
    assert wrong.sum() == 1
    oracle.loc[wrong, "interval_start"] = pd.Timestamp((sec + frac // 10**9) // 60 * 60, unit="s", tz="UTC")
    oracle = oracle.groupby(["interval_start", *T5], as_index=False)[["packets", "bytes"]].sum()
    pd.testing.assert_frame_equal(normalise(store_table(tmp_path / "store")), normalise(oracle))


# ---------------------------------------------------------------- store in the way, exit codes (item 13)


def test_store_that_is_a_plain_file_is_one_line(tmp_path, write_config):
    (tmp_path / "afile").write_text("oops\n")
    config = write_config('store = "afile"\n')
    cap = small_capture(tmp_path / "a.pcap")
    for args in (["collect", str(cap)], ["show", "hosts"], ["tables"]):
        r = run_cli(*args, config=config)
        assert r.exit_code == 2, (args, r.output)
        (line,) = r.output.strip().splitlines()  # the config refuses it first (Store would too, below)
        assert line.startswith("Error: ") and f"{tmp_path / 'afile'} is not a folder" in line, (args, line)
    with pytest.raises(StoreError, match="is not a folder"):
        Store(tmp_path / "afile").read("hosts")
    assert (tmp_path / "afile").read_text() == "oops\n"


def test_exit_code_is_an_exit_code(tmp_path):
    good = collect([small_capture(tmp_path / "a.pcap")], parse_config({"sensor": "s"}))
    assert good.exit_code is ExitCode.OK
    (tmp_path / "b.pcap").write_bytes(b"garbage garbage garbage")
    bad = collect([tmp_path / "b.pcap"], parse_config({"sensor": "s"}))
    assert bad.exit_code is ExitCode.ERROR


@pytest.mark.parametrize("drain_rows", [None, 25])
def test_sparse_intervals_are_drained_together_with_the_tables_of_one_pass(tmp_path, monkeypatch, drain_rows):
    """Closed intervals wait to be drained until they hold _DRAIN_ROWS fine rows (fewer, larger parts
    for a capture of many sparse intervals: each part costs a build and a durable commit): the same
    tables as one pass, in fewer parts than one per interval (by default, this small capture is one)."""
    fc = importlib.import_module("flowdiff.collect")
    cap = synth.write_pcap(tmp_path / "long.pcap", long_frames())
    one = parse_config({"sensor": "s", "store": str(tmp_path / "one"), "interval": 60})
    many = parse_config({"sensor": "s", "store": str(tmp_path / "many"), "interval": 60})
    with monkeypatch.context() as m:
        m.setattr(fc.Aggregator, "closed_intervals", lambda self, keep=1: False)
        collect([cap], one)
    monkeypatch.setattr(fc, "_CHUNK_BYTES", 2048)  # 4 parts with _DRAIN_ROWS = 0 (the test above)
    if drain_rows is not None:
        monkeypatch.setattr(fc, "_DRAIN_ROWS", drain_rows)
    collect([cap], many)
    parts = {s.rsplit("#", 1)[1] for s in _sources(tmp_path / "many")}
    if drain_rows is None:
        assert parts == {"0"}
    else:
        assert 1 < len(parts) < 4
    for table in ("hosts", "pairs", "services", "link"):
        pd.testing.assert_frame_equal(
            Store(tmp_path / "many").read(table), Store(tmp_path / "one").read(table)
        )
