"""`flowdiff listen --syslog`: real sockets on 127.0.0.1 (UDP and TCP with RFC 6587 framing), a real
rsyslogd forwarding to it and writing a file, and both collected into the messages table."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowdiff.collect import collect
from flowdiff.config import parse_config
from flowdiff.store import Store
from flowdiff.syslog_listen import SyslogTcpReceiver, spool_line

LOCAL = ("127.0.0.1", 514)
PEER = ("127.0.0.1", 40000)


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(spool: Path, *endpoints: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "flowdiff", "listen", "--spool", str(spool), "--rotate", "3600"]
    for ep in endpoints:
        args += ["--syslog", ep]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    assert "receiving on" in line, line + proc.stderr.read()
    return proc


def stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    return out


def spool_lines(spool: Path) -> list[str]:
    return [ln for p in sorted(spool.glob("*.syslog")) for ln in p.read_text().splitlines()]


def wait_for(pred, timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


KEYS = ["host", "program", "template", "facility", "severity"]


def collect_messages(tmp_path: Path, *paths: Path):
    tables = {"messages": {"keys": KEYS}}
    config = parse_config({"sensor": "s", "interval": 3600, "logs": {}, "tables": tables}, base=tmp_path)
    res = collect(list(paths), config, all_files=True)
    return res, Store(config.store).read("messages")


def test_udp_and_tcp_into_the_spool_then_collected(tmp_path):
    spool = tmp_path / "spool"
    udp, tcp = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)
    proc = start(spool, f"127.0.0.1:{udp}", f"tcp://127.0.0.1:{tcp}")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(
                b"<38>Dec  2 01:00:00 gw sshd[1]: Failed password for root from 192.0.2.1 port 22 ssh2",
                ("127.0.0.1", udp),
            )
            s.sendto(b"<13>1 2026-12-02T01:00:01Z web app 9 - - hello 5424\n", ("127.0.0.1", udp))
            s.sendto(b"<14>myprog: no header here", ("127.0.0.1", udp))
        frames = [
            b"<86>Dec  2 01:00:02 gw su[2]: session opened for user root",
            b"<30>Dec  2 01:00:03 gw cron[3]: line\nbreak",
        ]
        octet = b"".join(b"%d %s" % (len(f), f) for f in frames)
        with socket.create_connection(("127.0.0.1", tcp)) as c:
            for i in range(0, len(octet), 7):  # frames split anywhere
                c.sendall(octet[i : i + 7])
                time.sleep(0.002)
        with socket.create_connection(("127.0.0.1", tcp)) as c:  # newline framing, last one without
            c.sendall(
                b"<13>Dec  2 01:00:04 h a: one\n<13>Dec  2 01:00:05 h a: two\n<13>Dec  2 01:00:06 h a: three"
            )
        wait_for(lambda: len(spool_lines(spool)) >= 8)
    finally:
        summary = stop(proc)
    assert "listen:" in summary and "3 datagrams" in summary
    lines = spool_lines(spool)
    assert len(lines) == 8
    assert "<13>1 2026-12-02T01:00:01Z web app 9 - - hello 5424" in lines
    assert "<30>Dec  2 01:00:03 gw cron[3]: line#012break" in lines  # octet-counted: the LF is data
    bare = next(x for x in lines if "myprog" in x)
    assert bare.startswith("<14>20") and " 127.0.0.1 myprog: no header here" in bare
    res, df = collect_messages(tmp_path, spool)
    assert res.packets == 8 and int(df["packets"].sum()) == 8
    assert set(df["host"]) == {"gw", "web", "127.0.0.1", "h"}
    assert (
        df.set_index("program").loc["sshd", "template"]
        == "Failed password for <USER> from <IP> port <NUM> <NUM>"
    )


@given(st.lists(st.integers(1, 40), max_size=30), st.booleans())
@settings(max_examples=100, deadline=None)
def test_tcp_framing_survives_any_split(cuts, octet_counting):
    msgs = [b"<13>Dec  2 01:00:%02d h p: message %d" % (i, i) for i in range(6)]
    stream = b"".join((b"%d %s" % (len(m), m)) if octet_counting else m + b"\n" for m in msgs)
    rx = SyslogTcpReceiver()
    got, pos = [], 0
    for c in cuts:
        got += rx.data(1, stream[pos : pos + c], PEER, LOCAL, 0)
        pos += c
    got += rx.data(1, stream[pos:], PEER, LOCAL, 0)
    got += rx.closed(1, PEER, LOCAL, 0)
    assert [r.payload for r in got] == msgs


def test_spool_line_keeps_a_header_and_dates_a_bare_message():
    assert spool_line(b"<13>Dec  2 01:00:00 h p: x\r\n", PEER, 0) == b"<13>Dec  2 01:00:00 h p: x"
    assert spool_line(b"<13>p: x", PEER, 0) == b"<13>1970-01-01T00:00:00.000000+00:00 127.0.0.1 p: x"


RSYSLOG_CONF = """\
global(workDirectory="{work}")
module(load="imudp")
module(load="imtcp")
input(type="imudp" address="127.0.0.1" port="{udp}")
input(type="imtcp" address="127.0.0.1" port="{tcp}")
*.* action(type="omfile" file="{out}")
*.* action(type="omfwd" target="127.0.0.1" port="{fwd}" protocol="tcp" TCP_Framing="octet-counted"
       template="RSYSLOG_SyslogProtocol23Format")
"""


@pytest.mark.skipif(
    shutil.which("rsyslogd") is None or shutil.which("logger") is None,
    reason="rsyslogd or logger not installed (apt-get install rsyslog bsdutils)",
)
def test_rsyslog_file_and_forwarding_to_the_listener(tmp_path):
    """rsyslogd on loopback receives `logger` messages, writes them to a file and forwards them (TCP,
    octet counting) to `flowdiff listen --syslog`: both collect to the same counts per template."""
    spool, work = tmp_path / "spool", tmp_path / "work"
    work.mkdir()
    out = tmp_path / "out" / "messages.log"
    fwd = free_port(socket.SOCK_STREAM)
    udp, tcp = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)
    conf = tmp_path / "rsyslog.conf"
    conf.write_text(RSYSLOG_CONF.format(work=work, udp=udp, tcp=tcp, out=out, fwd=fwd))
    listener = start(spool, f"tcp://127.0.0.1:{fwd}")
    rsyslogd = subprocess.Popen(
        ["rsyslogd", "-n", "-f", str(conf), "-i", str(tmp_path / "rsyslogd.pid")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        sent = [
            ("sshd", "Failed password for root from 203.0.113.5 port 4242 ssh2"),
            ("sshd", "Failed password for root from 203.0.113.6 port 4243 ssh2"),
            ("sshd", "Accepted publickey for alice from 10.0.0.5 port 50122 ssh2"),
            ("cron", "(root) CMD (run-parts /etc/cron.hourly)"),
        ]

        def logger(tag: str, text: str, *extra: str) -> None:
            subprocess.run(["logger", "-n", "127.0.0.1", *extra, "-t", tag, text], check=True, timeout=10)

        wait_for(lambda: _accepts(tcp), timeout=20)
        for i, (tag, text) in enumerate(sent):
            if i % 2:
                logger(tag, text, "-P", str(tcp), "-T")
            else:
                logger(tag, text, "-P", str(udp), "-d")
        wait_for(lambda: out.exists() and len(out.read_text().splitlines()) >= len(sent), timeout=20)
        wait_for(lambda: len(spool_lines(spool)) >= len(sent), timeout=20)
    finally:
        rsyslogd.send_signal(signal.SIGTERM)
        rsyslogd.communicate(timeout=20)
        stop(listener)
    file_res, file_df = collect_messages(tmp_path / "a", out)
    spool_res, spool_df = collect_messages(tmp_path / "b", spool)
    assert file_res.packets == spool_res.packets == len(sent)
    for df in (file_df, spool_df):
        by = df.groupby(["program", "template"])["packets"].sum().to_dict()
        assert by[("sshd", "Failed password for <USER> from <IP> port <NUM> <NUM>")] == 2
        assert by[("cron", "(root) CMD (run-parts <PATH>)")] == 1
    assert set(spool_df["severity"]) == {"notice"} and set(spool_df["facility"]) == {
        "user"
    }  # logger's default


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def test_listen_needs_one_kind(tmp_path):
    from click.testing import CliRunner

    from flowdiff.cli import main

    r = CliRunner().invoke(
        main, ["listen", "--spool", str(tmp_path), "--syslog", "127.0.0.1:1", "127.0.0.1:2"]
    )
    assert r.exit_code == 2 and "one kind per listen process" in r.output
    assert os.listdir(tmp_path) == []
