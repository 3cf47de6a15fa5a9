"""tests/data/regen_oracle.py: the script that makes the oracle tables reproduces the committed ones byte for
byte (when tshark is installed), and says so in one line when it is not."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent / "data"
SCRIPT = DATA / "regen_oracle.py"
# a pcapng of the other byte order, a gzip-compressed pcap, IPv6 extension headers, fragments, tunnels
SAMPLE = (
    "pcapngtg__be__basic__test006.pcapng",
    "zeek__llc.pcap.gz",
    "libpcap__ipv6_ext_headers.pcap",
    "zeek__ipv4__fragmented-1.pcap",
    "zeek__tunnels__Teredo.pcap",
)


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
def test_regenerated_tables_are_the_committed_ones(tmp_path):
    for name in SAMPLE:
        shutil.copy(DATA / name, tmp_path / name)
    proc = _run(*(str(tmp_path / n) for n in SAMPLE))
    assert proc.returncode == 0, proc.stderr
    for name in SAMPLE:
        table = name.removesuffix(".gz") + ".oracle.i60.csv"
        assert (tmp_path / table).read_bytes() == (DATA / table).read_bytes(), table
    again = _run("--check", *(str(tmp_path / n) for n in SAMPLE))
    assert again.returncode == 0 and f"{len(SAMPLE)} tables, 0 differ" in again.stdout


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
def test_check_reports_a_table_that_differs(tmp_path):
    name = "tcpdump__pptp.pcap"
    shutil.copy(DATA / name, tmp_path / name)
    committed = (DATA / (name + ".oracle.i60.csv")).read_text()
    (tmp_path / (name + ".oracle.i60.csv")).write_text(committed.replace(",16,1286", ",16,1287"))
    proc = _run("--check", str(tmp_path / name))
    assert proc.returncode == 1 and "differs: tcpdump__pptp.pcap.oracle.i60.csv" in proc.stdout


def test_without_tshark_it_says_so_and_exits_2():
    proc = _run("--tshark", "/nonexistent/tshark")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("regen_oracle: tshark not found") and len(proc.stderr.splitlines()) == 1
