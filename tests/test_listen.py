"""listen: a real `flowdiff listen` subprocess on real UDP sockets; rotation, restart and SIGTERM lose nothing."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from flowdiff.cli import main
from flowdiff.collect import _newest
from flowdiff.listen import (
    FLOW_SPOOL_SUFFIX,
    Endpoint,
    FlowReceiver,
    Listener,
    ListenError,
    SpoolRecord,
    SpoolWriter,
    StreamReceiver,
    is_flow_spool,
    parse_endpoint,
)


def read_spool(path: Path) -> list[tuple[int, bytes, bytes]]:
    """(ts_ns, ip+udp header, payload) of every packet of a listen spool file, parsed independently."""
    data = path.read_bytes()
    magic, _, _, _, _, _, linktype = struct.unpack_from("<IHHiIII", data)
    assert magic == 0xA1B23C4D and linktype == 101
    out, pos = [], 24
    while pos < len(data):
        sec, nsec, incl, orig = struct.unpack_from("<IIII", data, pos)
        pkt = data[pos + 16 : pos + 16 + incl]
        assert len(pkt) == incl == orig
        hl = 20 if pkt[0] >> 4 == 4 else 40
        out.append((sec * 10**9 + nsec, pkt[: hl + 8], pkt[hl + 8 :]))
        pos += 16 + incl
    return out


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(spool: Path, port: int, rotate: int = 1) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flowdiff",
            "listen",
            "--spool",
            str(spool),
            "--rotate",
            str(rotate),
            "--rcvbuf",
            str(4 << 20),
            f"127.0.0.1:{port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stderr.readline()  # "listen: receiving on ..." once every socket is bound
    assert "receiving on" in line, line + proc.stderr.read()
    return proc


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> str:
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    return out


def send(port: int, payloads: list[bytes], pace: float = 0.0) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for p in payloads:
            s.sendto(p, ("127.0.0.1", port))
            if pace:
                time.sleep(pace)


def test_listen_rotation_restart_and_sigterm_lose_nothing(tmp_path):
    spool = tmp_path / "spool"
    port = free_udp_port()
    first = [b"A%06d" % i + bytes(i % 300) for i in range(600)]
    proc = start(spool, port, rotate=1)
    send(port, first, pace=0.004)  # about 2.5 s: crosses at least two rotations
    out = stop(proc)
    assert "600 datagrams" in out and "600 records" in out
    files_run1 = sorted(spool.iterdir())
    assert len(files_run1) >= 2, "rotated every second"
    # a restart opens a new file, never appends to the last one
    sizes = {p: p.stat().st_size for p in files_run1}
    second = [b"B%06d" % i for i in range(300)]
    proc = start(spool, port, rotate=1)
    send(port, second, pace=0.001)
    out = stop(proc, signal.SIGINT)
    assert "300 datagrams" in out
    files = sorted(spool.iterdir())
    assert all(p.stat().st_size == sizes[p] for p in files_run1)
    assert len(files) > len(files_run1)
    got = [rec for p in files for rec in read_spool(p)]
    assert [payload for _, _, payload in got] == first + second  # every datagram, in order, intact
    ts = [t for t, _, _ in got]
    assert ts == sorted(ts)
    # exporter as source, the listening address/port as destination
    hdr = got[0][1]
    assert hdr[12:16] == socket.inet_aton("127.0.0.1") and struct.unpack("!H", hdr[22:24])[0] == port
    # the names are one strftime pattern: collect's newest-file rule picks the last one
    assert all(p.name.endswith(FLOW_SPOOL_SUFFIX) and is_flow_spool(p) for p in files)
    assert _newest([(p, p.stat()) for p in files]) == files[-1]


def test_listener_in_process_counts_and_addresses(tmp_path):
    writer = SpoolWriter(tmp_path, rotate=300)
    lst = Listener([(Endpoint("127.0.0.1", 0), FlowReceiver())], writer, rcvbuf=1 << 20)
    ((host, port),) = lst.addresses
    send(port, [b"x" * 10] * 50)
    res = lst.run(duration=0.5)
    assert res.datagrams == 50 and res.records == 50 and res.kernel_drops == 0
    assert len(res.files) == 1 and len(read_spool(Path(res.files[0]))) == 50
    assert "50 datagrams" in res.summary()


def test_kernel_drops_are_counted(tmp_path):
    """A tiny receive buffer that is not read while a burst arrives: Linux counts the drops."""
    writer = SpoolWriter(tmp_path, rotate=300)
    lst = Listener([(Endpoint("127.0.0.1", 0), FlowReceiver())], writer, rcvbuf=2048)
    ((_, port),) = lst.addresses
    send(port, [b"y" * 1000] * 200)
    res = lst.run(duration=0.3)
    if not sys.platform.startswith("linux"):
        pytest.skip("SO_RXQ_OVFL is Linux only")
    assert res.datagrams < 200
    assert res.datagrams + res.kernel_drops == 200
    assert "dropped by the kernel" in res.summary()


@pytest.mark.parametrize(
    "text,expected",
    [
        ("127.0.0.1:2055", Endpoint("127.0.0.1", 2055)),
        (":4739", Endpoint("0.0.0.0", 4739)),
        ("[::1]:9995", Endpoint("::1", 9995)),
        ("tcp://0.0.0.0:514", Endpoint("0.0.0.0", 514, "tcp")),
    ],
)
def test_parse_endpoint(text, expected):
    assert parse_endpoint(text) == expected


@pytest.mark.parametrize("text", ["2055", "host:2055", "1.2.3.4:0", "1.2.3.4:70000", "sctp://1.2.3.4:1"])
def test_parse_endpoint_refuses(text):
    with pytest.raises(ListenError, match="ADDR:PORT|not an IPv4|transport"):
        parse_endpoint(text)


def test_cli_listen_bad_address_is_one_line(tmp_path):
    res = CliRunner().invoke(main, ["listen", "--spool", str(tmp_path), "nonsense"])
    assert res.exit_code == 2
    assert res.output.startswith("Error: nonsense: expected ADDR:PORT")


def test_cli_listen_port_in_use(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        res = CliRunner().invoke(main, ["listen", "--spool", str(tmp_path), f"127.0.0.1:{port}"])
    assert res.exit_code == 2 and "cannot listen" in res.output


def test_cli_listen_help_names_the_options():
    res = CliRunner().invoke(main, ["listen", "--help"])
    assert res.exit_code == 0
    for opt in ("--spool", "--rotate", "--rcvbuf"):
        assert opt in res.output


def test_spool_writer_never_reuses_a_name(tmp_path):
    clock = [1_700_000_000.5]
    w1 = SpoolWriter(tmp_path, rotate=60, clock=lambda: clock[0])
    rec = SpoolRecord(1, ("10.0.0.1", 5), ("10.0.0.2", 6), b"p")
    w1.write([rec])
    w1.close()
    w2 = SpoolWriter(tmp_path, rotate=60, clock=lambda: clock[0])  # a restart within the same second
    w2.write([rec])
    w2.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 2 and len({len(n) for n in names}) == 1
    assert os.path.getsize(tmp_path / names[0]) == os.path.getsize(tmp_path / names[1])


class _Lines(StreamReceiver):
    """A newline-framed TCP receiver, as a syslog plug-in would be: one record per line."""

    def __init__(self):
        super().__init__()
        self.rest: dict[int, bytes] = {}

    def data(self, conn, data, peer, local, ts_ns):
        buf = self.rest.get(conn, b"") + data
        *lines, self.rest[conn] = buf.split(b"\n")
        self.counts["lines"] += len(lines)
        return [SpoolRecord(ts_ns, peer, local, line) for line in lines]

    def closed(self, conn, peer, local, ts_ns):
        rest = self.rest.pop(conn, b"")
        return [SpoolRecord(ts_ns, peer, local, rest)] if rest else []


def test_tcp_stream_receiver_plugin_and_udp_side_by_side(tmp_path):
    writer = SpoolWriter(tmp_path, rotate=300, suffix=".lines.pcap")
    lst = Listener(
        [(Endpoint("127.0.0.1", 0, "tcp"), _Lines()), (Endpoint("127.0.0.1", 0), FlowReceiver())], writer
    )
    (_, tport), (_, uport) = lst.addresses
    import threading

    def client():
        with socket.create_connection(("127.0.0.1", tport)) as c:
            c.sendall(b"one\ntw")
            time.sleep(0.05)
            c.sendall(b"o\nthree")
        send(uport, [b"datagram"])

    t = threading.Thread(target=client)
    t.start()
    res = lst.run(duration=0.6)
    t.join()
    payloads = sorted(p for f in res.files for _, _, p in read_spool(Path(f)))
    assert payloads == [b"datagram", b"one", b"three", b"two"]
    assert res.counts["lines"] == 2 and res.sockets[0].connections == 1
    assert all(f.endswith(".lines.pcap") for f in res.files)


def test_cli_listen_needs_a_spool(tmp_path):
    res = CliRunner().invoke(main, ["listen", "127.0.0.1:2055"])
    assert res.exit_code == 2 and "give --spool DIR or set `spool` in the config" in res.output


def test_cli_listen_spool_from_the_config(tmp_path, write_config):
    cfg = write_config('spool = "flows"\n')
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # the port is taken: fails after the spool
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        res = CliRunner().invoke(main, ["listen", "--config", str(cfg), f"127.0.0.1:{port}"])
    assert res.exit_code == 2 and "cannot listen" in res.output
    assert (tmp_path / "flows").is_dir()
