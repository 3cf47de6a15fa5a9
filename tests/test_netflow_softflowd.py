"""A real exporter: softflowd replays captures from tests/data as NetFlow v5, v9 and IPFIX to a real
`flowdiff listen` on 127.0.0.1; collecting the spool gives, per 5-tuple, exactly the packets of
collecting the capture itself, and the IP-layer bytes (flow records count IP bytes, captures wire bytes:
the difference is the link layer, computed here independently with dpkt)."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import dpkt
import pandas as pd
import pytest
from click.testing import CliRunner

from flowdiff.cli import main

pytestmark = pytest.mark.skipif(
    shutil.which("softflowd") is None or shutil.which("softflowctl") is None,
    reason="softflowd is not installed (apt-get install softflowd; .ci/run installs it)",
)

DATA = Path(__file__).parent / "data"
FIVE = ["src", "dst", "proto", "sport", "dport"]
CONFIG = """interval = 60
settle = 0
[tables.five]
keys = ["src", "dst", "proto", "sport", "dport"]
[tables.services]
keys = ["client", "server", "proto", "service_port"]
[tables.exporters]
keys = ["exporter", "input_if", "output_if"]
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _softflowd_replay(capture: Path, version: str, port: int, work: Path) -> None:
    """softflowd 1.1.0 reads a capture file only once its control socket has been used (it blocks in
    accept() first), then exports every flow at the end of the file and exits."""
    ctl = work / f"sf{version}.ctl"
    proc = subprocess.Popen(
        ["softflowd", "-r", capture.name, "-n", f"127.0.0.1:{port}", "-v", version, "-d", "-6",
         "-p", str(work / f"sf{version}.pid"), "-c", str(ctl)],
        cwd=capture.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        subprocess.run(["softflowctl", "-c", str(ctl), "statistics"], capture_output=True)
        time.sleep(0.2)
    if proc.poll() is None:
        proc.kill()
        pytest.fail("softflowd did not finish replaying " + capture.name)
    assert proc.returncode == 0, proc.stdout.read().decode()


def _ip_bytes(capture: Path) -> Counter:
    """IP-layer bytes per 5-tuple of an untagged Ethernet capture, as softflowd counts them: the frame
    after its 14-byte Ethernet header, so the padding of frames shorter than 60 bytes is included
    (a router counts the IP total length instead; the difference is at most 6 bytes per tiny packet)."""
    out: Counter = Counter()
    with open(capture, "rb") as f:
        for _, frame in dpkt.pcap.Reader(f):
            eth = dpkt.ethernet.Ethernet(frame)
            assert eth.type in (0x0800, 0x86DD, 0x0806), "untagged captures only"
            ip = eth.data
            if isinstance(ip, dpkt.ip.IP):
                src, dst, proto = socket.inet_ntoa(ip.src), socket.inet_ntoa(ip.dst), ip.p
            elif isinstance(ip, dpkt.ip6.IP6):
                src = socket.inet_ntop(socket.AF_INET6, ip.src)
                dst = socket.inet_ntop(socket.AF_INET6, ip.dst)
                proto = ip.nxt
            else:
                continue
            l4 = ip.data
            ports = (l4.sport, l4.dport) if proto in (6, 17) and hasattr(l4, "sport") else (0, 0)
            out[(src, dst, proto, *ports)] += len(frame) - 14
    return out


def _collect(tmp: Path, name: str, path: Path) -> pd.DataFrame:
    d = tmp / name
    d.mkdir()
    (d / "c.toml").write_text(CONFIG)
    res = CliRunner().invoke(main, ["collect", "--config", str(d / "c.toml"), "--all", str(path)])
    assert res.exit_code == 0, res.output
    return pd.read_parquet(d / "store" / "five")


@pytest.mark.parametrize("capture", ["zeek__tunnels__Teredo.pcap", "tcpdump__pptp.pcap"])
def test_softflowd_v5_v9_ipfix_equal_the_capture(tmp_path, capture):
    cap = tmp_path / "c.pcap"
    cap.symlink_to(DATA / capture)
    packets = _collect(tmp_path, "cap", cap).groupby(FIVE)[["packets", "bytes"]].sum()
    ip_bytes = _ip_bytes(DATA / capture)
    for version in ("5", "9", "10"):
        spool, port = tmp_path / f"spool{version}", _free_port()
        listener = subprocess.Popen(
            [sys.executable, "-m", "flowdiff", "listen", "--spool", str(spool), f"127.0.0.1:{port}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert "receiving on" in listener.stderr.readline()
        _softflowd_replay(cap, version, port, tmp_path)
        time.sleep(0.3)
        listener.send_signal(signal.SIGTERM)
        out, err = listener.communicate(timeout=20)
        assert listener.returncode == 0, err
        assert "dropped" not in out
        flows = _collect(tmp_path, f"flows{version}", spool).groupby(FIVE)[["packets", "bytes"]].sum()
        expected = packets
        if version == "5":  # NetFlow v5 carries IPv4 only
            expected = packets[[":" not in s for s in packets.index.get_level_values("src")]]
        assert len(flows) >= 3
        assert flows["packets"].to_dict() == expected["packets"].to_dict(), version
        want_bytes = {k: ip_bytes[k] for k in expected.index}
        assert flows["bytes"].to_dict() == want_bytes, version
