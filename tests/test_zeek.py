"""zeek: conn.log (TSV and JSON lines, plain and gzip) into the count tables, with the issue's mapping."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from flowdiff.cli import main
from flowdiff.zeek import ZeekReader, sniff_conn_log

ROOT = Path(__file__).resolve().parents[1]
SHARED_ZEEK = next(
    (b / "shared" / "zeek" for b in (ROOT.parent, ROOT.parent.parent) if (b / "shared" / "zeek").is_dir()),
    None,
)

CONFIG = """interval = 60
settle = 0
[tables.services]
keys = ["client", "server", "proto", "service_port"]
[tables.pairs]
keys = ["src", "dst", "proto", "sport", "dport", "icmp_type", "icmp_code"]
"""

HEADER = "\n".join(
    [
        "#separator \\x09",
        "#set_separator\t,",
        "#empty_field\t(empty)",
        "#unset_field\t-",
        "#path\tconn",
        "#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\tduration\torig_pkts\torig_ip_bytes\tresp_pkts\tresp_ip_bytes",
        "#types\ttime\tstring\taddr\tport\taddr\tport\tenum\tinterval\tcount\tcount\tcount\tcount",
    ]
)
LINES = [
    # a UDP "client" on a low port talking to a high port: Zeek's originator is still the client
    "1700000000.5\tC1\t10.0.0.1\t53\t10.0.0.2\t40000\tudp\t0.5\t2\t100\t3\t300",
    "1700000001.0\tC2\t2001:db8::1\t50000\t2001:db8::2\t443\ttcp\t-\t4\t400\t-\t-",  # unset counters
    "1700000002.0\tC3\t10.0.0.3\t8\t10.0.0.4\t0\ticmp\t0.1\t1\t84\t1\t84",
    "1700000061.0\tC4\t10.0.0.1\t1234\t10.0.0.2\t80\ttcp\t1.0\t5\t500\t5\t5000",
    "not\ta\tvalid\tline",
]


def _collect(tmp_path: Path, *paths: Path) -> tuple[str, pd.DataFrame, pd.DataFrame]:
    (tmp_path / "c.toml").write_text(CONFIG)
    res = CliRunner().invoke(main, ["collect", "--config", str(tmp_path / "c.toml"), *map(str, paths)])
    assert res.exit_code == 0, res.output
    store = tmp_path / "store"
    return res.output, pd.read_parquet(store / "services"), pd.read_parquet(store / "pairs")


def _check_mapping(services: pd.DataFrame, pairs: pd.DataFrame) -> None:
    rows = {
        (r.client, r.server, r.proto, r.service_port): (r.packets, r.bytes) for r in services.itertuples()
    }
    assert rows == {
        ("10.0.0.1", "10.0.0.2", 17, 40000): (5, 400),
        ("2001:db8::1", "2001:db8::2", 6, 443): (4, 400),
        ("10.0.0.3", "10.0.0.4", 1, 0): (2, 168),
        ("10.0.0.1", "10.0.0.2", 6, 80): (10, 5500),
    }
    icmp = pairs[pairs.proto == 1].iloc[0]
    assert (icmp.icmp_type, icmp.icmp_code, icmp.sport, icmp.dport) == (8, 0, 0, 0)
    assert sorted(services["interval_start"].astype("int64").unique() // 10**6) == [1699999980, 1700000040]


@pytest.mark.parametrize("gz", [False, True])
def test_tsv_conn_log_mapping_unset_and_bad_lines(tmp_path, gz):
    text = HEADER + "\n" + "\n".join(LINES) + "\n#close\t2023-11-14-22-14-00\n"
    path = tmp_path / ("conn.log.gz" if gz else "conn.log")
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    assert sniff_conn_log(path) == "tsv"
    out, services, pairs = _collect(tmp_path, path)
    _check_mapping(services, pairs)
    assert "4 flow records" in out and "zeek-bad-line 1" in out and "zeek-unset-counts 1" in out


def test_json_conn_log_and_missing_columns(tmp_path):
    fields = HEADER.split("\n")[5].split("\t")[1:]
    lines = []
    for line in LINES[:4]:
        obj = {}
        for k, v in zip(fields, line.split("\t"), strict=True):
            if v != "-":
                obj[k] = (
                    v if k in ("uid", "id.orig_h", "id.resp_h", "proto") else float(v) if "." in v else int(v)
                )
        lines.append(json.dumps(obj))
    path = tmp_path / "conn.json"
    path.write_text("\n".join(lines) + "\n")
    assert sniff_conn_log(path) == "json"
    _, services, pairs = _collect(tmp_path, path)
    _check_mapping(services, pairs)


def test_conn_log_without_counter_columns(tmp_path):
    text = "\n".join(
        ["#separator \\x09", "#unset_field\t-", "#fields\tts\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto",
         "1700000000.0\t10.1.0.1\t5555\t10.1.0.2\t22\ttcp"]
    )  # fmt: skip
    path = tmp_path / "conn.log"
    path.write_text(text + "\n")
    reader = ZeekReader(path, "tsv")
    chunks = list(reader.chunks())
    assert chunks[0]["packets"].tolist() == [0] and chunks[0]["dport"].tolist() == [22]
    assert reader.stats.skipped["zeek-unset-counts"] == 1


def test_conn_logs_in_a_directory_are_found_by_content(tmp_path):
    d = tmp_path / "logs"
    d.mkdir()
    (d / "conn.00.log").write_text(HEADER + "\n" + LINES[0] + "\n")
    (d / "conn.01.log").write_text(HEADER + "\n" + LINES[3] + "\n")
    (d / "notes.txt").write_text("hello\n")
    (tmp_path / "c.toml").write_text(CONFIG)
    res = CliRunner().invoke(main, ["collect", "--config", str(tmp_path / "c.toml"), "--all", str(d)])
    assert res.exit_code == 0, res.output
    assert "2 files collected" in res.output and "1 not captures" in res.output


@pytest.mark.skipif(SHARED_ZEEK is None, reason="../shared/zeek is not present on this machine")
@pytest.mark.parametrize(
    "name,kind,records",
    [("zat_conn.log", "tsv", 360), ("zat_conn.json.log", "json", 50), ("zat_conn_date_issue.log", "tsv", 3)],
)
def test_real_zeek_logs_read_in_place(tmp_path, name, kind, records):
    path = SHARED_ZEEK / name  # read where it is, never copied
    assert sniff_conn_log(path) == kind
    reader = ZeekReader(path, kind)
    chunks = list(reader.chunks())
    n = sum(len(c["ts_ns"]) for c in chunks)
    assert n == records and not reader.stats.skipped.get("zeek-bad-line")
    # packets and bytes equal the sums of the log's own columns
    want_pk = want_by = 0
    with open(path) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            if kind == "json":
                o = json.loads(line)
                vals = [o.get(k, 0) for k in ("orig_pkts", "resp_pkts", "orig_ip_bytes", "resp_ip_bytes")]
            else:
                cols = dict(zip(FIELDS_OF[name], line.rstrip("\n").split("\t"), strict=False))
                vals = [
                    int(cols[k]) if cols.get(k, "-") != "-" else 0
                    for k in ("orig_pkts", "resp_pkts", "orig_ip_bytes", "resp_ip_bytes")
                ]
            want_pk += vals[0] + vals[1]
            want_by += vals[2] + vals[3]
    assert sum(int(c["packets"].sum()) for c in chunks) == want_pk
    assert sum(int(c["bytes"].sum()) for c in chunks) == want_by
    out, services, _ = _collect(tmp_path, path)
    assert services["packets"].sum() == want_pk and f"{records:,} flow records" in out


def _fields(name: str) -> list[str]:
    if SHARED_ZEEK is None or not (SHARED_ZEEK / name).exists():
        return []
    for line in open(SHARED_ZEEK / name):
        if line.startswith("#fields"):
            return line.rstrip("\n").split("\t")[1:]
    return []


FIELDS_OF = {n: _fields(n) for n in ("zat_conn.log", "zat_conn_date_issue.log")}
