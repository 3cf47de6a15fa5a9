"""flowdiff/_jit.py: kernels run interpreted for tiny inputs (numba never imported) and compiled otherwise,
and both ways store exactly the same rows.

The proof the interpreted path rests on: every capture of tests/data (good and bad), a NetFlow/IPFIX
spool, Zeek conn.logs and syslog files, collected once interpreted and once compiled, each in a fresh
interpreter, give stores whose every Parquet file reads back equal, and the same ledger."""

from __future__ import annotations

import gzip
import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from netflow_ref import (
    V4_FIELDS,
    V6_FIELDS,
    Rec,
    data_set,
    ipfix_message,
    template_set,
    v5_datagram,
    v9_datagram,
)
from test_zeek import HEADER as ZEEK_HEADER  # the same conn.log header the Zeek tests read

from flowdiff import _jit
from flowdiff.listen import SpoolRecord, SpoolWriter

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
SHARED_ZEEK = next(
    (b / "shared" / "zeek" for b in (ROOT.parent, ROOT.parent.parent) if (b / "shared" / "zeek").is_dir()),
    None,
)
T0 = 1_700_000_000_000  # epoch ms

CONFIG = """interval = 300
sensor = "s"
settle = 0
service_ports = [8080, 8443]
flow_ports = [2055, 4739]
flow_split = "proportional"
[networks]
"192.168.0.0/16" = "lan"
"10.0.0.0/8" = "dhcp"
"2001:db8::/32" = "v6"
"0.0.0.0/0" = "internet"
[logs]
[tables.messages]
keys = ["host", "program", "template", "severity", "facility"]
[tables.hosts]
keys = ["src"]
[tables.services]
keys = ["client", "server", "proto", "service_port"]
collapse = ["dhcp", "internet"]
ipv6_prefix = 64
collapse_random_macs = true
[tables.link]
keys = ["ethertype", "src_mac", "dst_mac", "vlan"]
[tables.t5]
keys = ["src", "dst", "proto", "sport", "dport", "ip_version", "icmp_type", "icmp_code", "tcp_flags"]
[tables.nets]
keys = ["src_label", "dst_label", "client_label", "server_net/48", "src_net/24", "dst_net/64"]
[tables.exporters]
keys = ["exporter", "input_if", "output_if", "client"]
"""

# collect in a fresh interpreter, interpreted (numba must stay out) or compiled (numba engaged first)
SCRIPT = """
import json, sys
from flowdiff import _jit
from flowdiff.collect import collect
from flowdiff.config import load_config

mode, cfg, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
if mode == "compiled":
    _jit.compiled()
else:
    _jit.INTERPRET_BYTES = 1 << 40  # every input counts as tiny
res = collect(paths, load_config(cfg), all_files=True)
print(json.dumps({"numba": "numba" in sys.modules, "files": [(f.path, f.status, f.records) for f in res.files],
                  "packets": res.packets, "flows": res.flow_records, "rows": res.rows_written}))
"""


def _random_recs(rng: random.Random, n: int, v6: bool = False) -> list[Rec]:
    out = []
    for _ in range(n):
        if v6:
            src, dst = f"2001:db8::{rng.randrange(1, 0xFFFF):x}", f"2001:db8:1::{rng.randrange(1, 0xFFFF):x}"
        else:
            src = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
            dst = f"192.0.2.{rng.randrange(1, 255)}"
        start = T0 + rng.randrange(0, 900_000)
        out.append(Rec(src, dst, rng.choice([6, 17, 1, 47]), rng.randrange(65536), rng.randrange(65536),
                       rng.randrange(256), rng.randrange(1, 10**6), rng.randrange(40, 10**9), start,
                       start + rng.randrange(0, 400_000), rng.randrange(65536), rng.randrange(2**32)))  # fmt: skip
    return out


def _flow_spool(d: Path) -> Path:
    """Every export version, two exporters, spans of several intervals (proportional split)."""
    rng = random.Random(11)
    export = T0 + 1_400_000
    grams = []
    for exporter in ("198.51.100.1", "2001:db8:ffff::2"):
        grams.append((v5_datagram(_random_recs(rng, 30), export_ms=export), exporter))
        v9 = [*V4_FIELDS, (22, 4), (21, 4)]
        sets9 = [
            template_set(9, 300, v9),
            data_set(300, _random_recs(rng, 20), v9, export_ms=export, uptime_ms=5_000_000),
        ]
        grams.append((v9_datagram(sets9, export_ms=export, uptime_ms=5_000_000, source_id=7), exporter))
        f6, f4 = [*V6_FIELDS, (152, 8), (153, 8)], [*V4_FIELDS, (152, 8), (82, 0xFFFF), (153, 8)]
        sets = [template_set(10, 256, f6), template_set(10, 257, f4),
                data_set(256, _random_recs(rng, 15, v6=True), f6), data_set(257, _random_recs(rng, 12), f4)]  # fmt: skip
        grams.append((ipfix_message(sets, export_s=export // 1000, domain=1), exporter))
    w = SpoolWriter(d, rotate=300, clock=lambda: 1_700_000_000.0)
    w.write([SpoolRecord(T0 * 10**6, (exp, 2055), ("127.0.0.1", 4739), g) for g, exp in grams])
    w.close()
    return w.files[-1]


ZEEK_LINES = [
    "1700000000.5\tC1\t10.0.0.1\t53\t10.0.0.2\t40000\tudp\t0.5\t2\t100\t3\t300",
    "1700000001.0\tC2\t2001:db8::1\t50000\t2001:db8::2\t443\ttcp\t-\t4\t400\t-\t-",
    "1700000002.0\tC3\t10.0.0.3\t8\t10.0.0.4\t0\ticmp\t0.1\t1\t84\t1\t84",
    "1700000361.0\tC4\t10.0.0.1\t1234\t192.168.1.2\t80\ttcp\t1.0\t5\t500\t5\t5000",
    "not\ta\tvalid\tline",
]
SYSLOG = [
    "Dec  1 08:00:01 mx postfix/smtpd[100]: connect from unknown[192.0.2.10]",
    "Dec  1 08:00:02 mx postfix/smtpd[100]: 4F1A2B3C4D: client=unknown[192.0.2.10]",
    "Dec  1 08:10:00 gw sshd[2001]: Accepted publickey for alice from 10.0.0.5 port 50122 ssh2",
    "Dec  1 08:20:00 gw sshd[2002]: Failed password for root from 203.0.113.9 port 52144 ssh2",
    '<165>1 2026-12-01T09:02:03.004567+02:00 web01 nginx 812 ID47 [x@1 a="3"] GET /index.html 200',
    "<13>1 - - - - - - bare message",
    "2026-12-01T10:02:03.123456-05:00 db2 kernel: [  12.5] eth0: link up",
    "Dec 01 10:59:58 box systemd[1]: Started Session 4 of user alice.",
    "garbage \xff not a syslog line",
    "Dec  1 11:00:00 gw CRON[3000]: (root) CMD (run-parts /etc/cron.hourly)",
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[str]:
    d = tmp_path_factory.mktemp("jit-inputs")
    paths = sorted(
        str(p)
        for p in [*DATA.iterdir(), *(DATA / "bad").iterdir()]
        if ".pcap" in p.name and "oracle" not in p.name
    )
    paths.append(str(_flow_spool(d / "flows")))
    tsv = d / "conn.log"
    tsv.write_text("\n".join([ZEEK_HEADER, *ZEEK_LINES]) + "\n")
    (d / "conn.log.gz").write_bytes(gzip.compress(tsv.read_bytes().replace(b"C1", b"G1"), mtime=0))
    keys = ("ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto", "duration",
            "orig_pkts", "orig_ip_bytes", "resp_pkts", "resp_ip_bytes")  # fmt: skip
    rows = [dict(zip(keys, line.split("\t"), strict=True)) for line in ZEEK_LINES[:4]]
    (d / "conn.json.log").write_text(
        "".join(json.dumps({k: v for k, v in r.items() if v != "-"}) + "\n" for r in rows)
    )
    paths += [str(d / "conn.log"), str(d / "conn.log.gz"), str(d / "conn.json.log")]
    if SHARED_ZEEK is not None:
        paths += [
            str(SHARED_ZEEK / n) for n in ("zat_conn.log", "zat_conn.json.log", "zat_conn_date_issue.log")
        ]
    log = d / "messages.log"
    log.write_text("\n".join(SYSLOG) + "\n", encoding="utf-8", errors="surrogateescape")
    (d / "messages.log.1.gz").write_bytes(gzip.compress(log.read_bytes()[::-1].strip() + b"\n", mtime=0))
    for p in (log, d / "messages.log.1.gz"):
        os.utime(p, ns=(1_764_979_200 * 10**9,) * 2)
    paths += [str(log), str(d / "messages.log.1.gz")]
    return paths


def _run(
    code: str, *argv: str, cwd: Path | None = None, timeout: int = 300, flags: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter (these tests are about what one process imports and compiles),
    with this checkout first on its path and ``argv`` as its arguments."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, *flags, "-c", textwrap.dedent(code), *argv]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)


def _collect(tmp: Path, mode: str, paths: list[str]) -> dict:
    (tmp / mode).mkdir()
    cfg = tmp / mode / "flowdiff.toml"
    cfg.write_text(CONFIG)
    proc = _run(SCRIPT, mode, str(cfg), *paths, cwd=tmp / mode, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Warning" not in proc.stderr, proc.stderr[-3000:]  # interpreted: no numpy overflow warnings
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _tables(store: Path) -> dict[str, object]:
    return {str(p.relative_to(store)): pq.read_table(p) for p in sorted(store.rglob("*.parquet"))}


def _ledger(store: Path) -> list[dict]:
    out = []
    for f in sorted((store / "_ledger").glob("*.jsonl")):
        for line in f.read_text().splitlines():
            e = json.loads(line)
            out.append({k: v for k, v in e.items() if k not in ("collected_at", "time", "seconds")})
    return out


def test_interpreted_and_compiled_collect_store_the_same_rows(tmp_path, inputs):
    interp = _collect(tmp_path, "interpreted", inputs)
    comp = _collect(tmp_path, "compiled", inputs)
    assert interp["numba"] is False and comp["numba"] is True
    assert interp == {**comp, "numba": False}
    # the inputs really exercised every kind of source
    statuses = {Path(p).name: s for p, s, _ in comp["files"]}
    assert comp["packets"] > 1500 and comp["flows"] > 100 and comp["rows"] > 5000
    assert statuses["conn.log"] == statuses["messages.log"] == statuses["zeek__pbb.pcap"] == "ok"
    assert any(s == "damaged" for s in statuses.values()) and any(s == "failed" for s in statuses.values())
    a, b = _tables(tmp_path / "interpreted" / "store"), _tables(tmp_path / "compiled" / "store")
    assert a.keys() == b.keys() and len(a) > 100
    assert {k.split("/")[0] for k in a} >= {
        "messages",
        "hosts",
        "services",
        "link",
        "t5",
        "nets",
        "exporters",
    }
    for name in a:
        assert a[name].equals(b[name]), name
    assert _ledger(tmp_path / "interpreted" / "store") == _ledger(tmp_path / "compiled" / "store")


def test_interpreted_below_counts_bytes_and_stands_down_once_compiled(tmp_path):
    small, big = tmp_path / "small", tmp_path / "big"
    small.write_bytes(b"x" * 1000)
    big.write_bytes(b"x" * (_jit.INTERPRET_BYTES + 1))
    assert _jit.interpreted_below([small]) or _jit._engaged
    tiny = tmp_path / "tiny.gz"
    tiny.write_bytes(gzip.compress(b"\0" * 100))
    assert _jit.interpreted_below([tiny]) or _jit._engaged
    assert not _jit.interpreted_below([small, big])
    assert not _jit.interpreted_below([small, tmp_path / "missing"])
    assert not _jit.interpreted_below([small], limit=999)
    packed = tmp_path / "big.pcap.gz"  # a gzip file counts with its uncompressed size
    packed.write_bytes(gzip.compress(b"\0" * (_jit.INTERPRET_BYTES + 1)))
    assert packed.stat().st_size < 1000 and not _jit.interpreted_below([packed])
    _jit.compiled()
    assert not _jit.interpreted_below([small])  # numba is loaded: compiled code is the cheaper one


LAZY = """
import sys
import numpy as np
from flowdiff import _jit, capture, decode, aggregate, netmap, canon
from flowdiff.aggregate import _ingest  # held outside flowdiff: stays a Kernel, calls the dispatcher
assert "numba" not in sys.modules
assert isinstance(aggregate._ingest, _jit.Kernel) and isinstance(aggregate._mix, _jit.Kernel)
with _jit.interpreted():
    print(int(canon._mix(np.uint64(2**64 - 12345))))
assert "numba" not in sys.modules
_jit.compiled()
import numba
from numba.core.registry import CPUDispatcher
assert "numba" in sys.modules
for mod in (capture, decode, aggregate, netmap, canon):
    for name, k in vars(mod).items():
        assert not isinstance(k, _jit.Kernel), (mod.__name__, name)  # every kernel rebound, callers too
assert isinstance(aggregate._mix, CPUDispatcher) and _ingest.dispatcher is aggregate._ingest
with _jit.interpreted():  # compiled stays compiled
    print(int(canon._mix(np.uint64(2**64 - 12345))))
import flowdiff.diff  # imported after: dispatchers at once
assert isinstance(sys.modules["flowdiff.diff"]._net4_hash, CPUDispatcher)
"""


def test_kernels_are_lazy_then_all_compiled_at_once():
    proc = _run(LAZY, flags=("-W", "error"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, second = proc.stdout.split()
    assert first == second  # the same wrapped uint64 value interpreted and compiled


SMALL_COLLECT = """
import json, os, sys
from flowdiff.cli import main
try:
    main(["collect", "--store", sys.argv[2], sys.argv[1]], standalone_mode=False)
finally:
    heavy = ("numba", "pandas", "pyarrow.compute", "pyarrow.dataset")
    print(json.dumps({m: m in sys.modules for m in heavy}))
"""


@pytest.mark.parametrize("capture", ["tcpdump__LINKTYPE_IPV4.pcap", "tcpdump__LINKTYPE_IPV6.pcap"])
def test_collecting_a_small_capture_loads_neither_numba_nor_pandas_nor_arrow_compute(tmp_path, capture):
    """What cron and watch pay on every pass: these imports cost 0.05-0.5 s each, and a capture of a
    few packets needs none of them (pyarrow's Array.cast imports pyarrow.compute: avoided too; IPv6
    addresses are put in text order without Arrow's sort)."""
    proc = _run(SMALL_COLLECT, str(DATA / capture), str(tmp_path / "s"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 file collected" in proc.stdout
    loaded = json.loads(proc.stdout.splitlines()[-1])
    assert not any(loaded.values()), loaded
    assert list((tmp_path / "s").rglob("*.parquet"))


SMALL_LEARN = """
import json, sys
from flowdiff.cli import main
for args in (["collect", sys.argv[1]], ["learn", "--min-intervals", "1", "--min-packets", "1"]):
    try:
        main([*args, "--store", sys.argv[2]], standalone_mode=False)
    except SystemExit as e:  # commands exit with their result's code
        assert e.code == 0, (args, e.code)
print(json.dumps({m: m in sys.modules for m in ("numba", "pyarrow.dataset")}))
"""


def test_learn_loads_no_numba(tmp_path):
    """learn reads the store with Arrow and hashes its keys (a few thousand distinct values) with
    numpy: importing numba and loading its kernels would cost more than the learning."""
    proc = _run(SMALL_LEARN, str(DATA / "tcpdump__LINKTYPE_IPV4.pcap"), str(tmp_path / "s"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.splitlines()[-1])
    # the store was read, numba never loaded
    assert loaded == {"numba": False, "pyarrow.dataset": True}, loaded
    learned = [pq.read_table(p) for p in (tmp_path / "baselines" / "data").rglob("*.parquet")]
    assert learned and sum(t.num_rows for t in learned) > 0


FUZZ = """
import random, sys
import numpy as np
import pyarrow as pa
from types import SimpleNamespace
import dpkt
from flowdiff import _jit
from flowdiff.decode import decode, decoded_linktypes
from flowdiff.syslog import parse_bytes

rnd = random.Random(3)
frames = []
for path in sys.argv[1:]:  # real frames, cut and with flipped bytes
    with open(path, "rb") as f:
        r = dpkt.pcap.Reader(f)
        lt = r.datalink()
        for _, pkt in list(r)[:40]:
            b = bytearray(pkt)
            for _ in range(rnd.randint(0, 3)):
                if b:
                    b[rnd.randrange(len(b))] = rnd.randrange(256)
            frames.append((lt, bytes(b[: rnd.randint(0, len(b))] if rnd.random() < 0.3 else b)))
for lt in decoded_linktypes() + [147]:
    for _ in range(60):
        frames.append((lt, bytes(rnd.randrange(256) for _ in range(rnd.randint(0, 96)))))
buf = b"".join(f for _, f in frames)
off = np.cumsum([0] + [len(f) for _, f in frames[:-1]]).astype(np.int64)
cap = np.array([len(f) for _, f in frames], dtype=np.uint32)
batch = SimpleNamespace(buf=np.frombuffer(buf, np.uint8), offset=off, caplen=cap, wirelen=cap + 4,
                        ts_ns=np.arange(len(frames), dtype=np.int64), linktype=np.array([lt for lt, _ in frames], np.uint16))
slots = [[b"", b"<13>", b"<165>", b"<9999>"], [b"", b"1 "],
         [b"Dec  1 23:59:59", b"Feb 29 10:02:03", b"2026-12-01T10:02:03", b"2026-12-01 10:02:03.123456+05:30",
          b"2026-12-01T10:02:03,5Z", b"-", b"Jan 1 00:00:00", b"2026-13-45T99:99:99-0800", b"Dec 02 00:59:58"],
         [b" ", b"  ", b""], [b"host", b"h-1", b""], [b" ", b""],
         [b"prog[12]: ", b"prog: ", b"app 812 ID47 [x@1 a=\\"]\\"] ", b"- - - ", b"\\xef\\xbb\\xbf"], [b"msg 42", b"\\xff", b""]]
lines = [b"".join(rnd.choice(c) for c in slots) for _ in range(3000)]
text = b"\\n".join(x[: rnd.randrange(len(x) + 1)] if rnd.random() < 0.2 else x for x in lines)

def syslog():
    lines = parse_bytes(text, ref_us=1_764_979_200_000_000, tz_offset_s=3600)
    return [lines.ts_us.tolist(), lines.parsed.tolist(), lines.nbytes.tolist()] + [
        getattr(lines, k).cast(pa.binary()).to_pylist() for k in ("host", "program", "facility", "severity", "message")]

with _jit.interpreted():
    a, sa = decode(batch), syslog()
assert "numba" not in sys.modules
_jit.compiled()
b, sb = decode(batch), syslog()
for name in a:
    assert a[name].dtype == b[name].dtype and a[name].tolist() == b[name].tolist(), name
assert sa == sb
print(len(frames), sum(sa[1]))
"""


def test_fuzzed_frames_and_syslog_lines_decode_the_same_interpreted_and_compiled():
    """Beyond the samples: cut and mutated real frames, random bytes on every link type, and syslog
    lines made of random header fragments give the same fields both ways."""
    captures = sorted(str(p) for p in DATA.glob("*.pcap"))
    proc = _run(FUZZ, *captures, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    frames, parsed = map(int, proc.stdout.split())
    assert frames > 1500 and parsed > 100


EXT_MOD = """
import numpy as np
from flowdiff._jit import njit

@njit(cache=False)
def inner(x):
    return x * np.uint64(0x9E3779B97F4A7C15)

@njit(cache=False)
def outer(a):
    s = np.uint64(0)
    for v in a:
        s ^= inner(v)
    return s
"""

EXT_RUN = """
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import extmod
from flowdiff import _jit
a = np.arange(1, 50, dtype=np.uint64) << np.uint64(40)
with _jit.interpreted():
    first = int(extmod.outer(a))
_jit.compiled()
assert isinstance(extmod.inner, _jit.Kernel)  # not a flowdiff module: not rebound
print(first, int(extmod.outer(a)), int(extmod.outer.dispatcher(a)))
"""


def test_a_kernel_left_in_some_globals_is_typed_as_its_dispatcher(tmp_path):
    """A compiled kernel calling a Kernel object (a module outside flowdiff, or one not rebound yet
    while another thread compiles) still compiles: numba types a Kernel as its dispatcher."""
    (tmp_path / "extmod.py").write_text(EXT_MOD)
    proc = _run(EXT_RUN, str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    values = proc.stdout.split()
    assert len(values) == 3 and len(set(values)) == 1  # wrapped the same interpreted and compiled
