"""listen: sockets -> rotated spool files that ``collect``, ``run --spool`` and ``watch`` read unchanged.

A listener owns several sockets (UDP and TCP) and one *receiver* per socket, a small plug-in that turns
what arrives into :class:`SpoolRecord` s (a flow collector keeps each datagram as it is; a syslog
receiver may cut a TCP stream into messages). The records go to a :class:`SpoolWriter`.

Spool format. Every spool file is a classic pcap (nanosecond time stamps, link type 101 ``DLT_RAW``)
whose packets are synthetic IPv4/IPv6 + UDP headers around the received payload: the sender
(exporter) is the source, the listening address and port the destination, the receive time the time
stamp. So a spool file *is* a capture: ``collect``'s newest-file rule, the ledger, capture ids, parts
and ``run --spool`` handle it with no special case, ``tcpdump -r`` and Wireshark open it, and a
tcpdump capture of the same export traffic decodes by the same path (``flow_ports``). Files are
named ``<UTC strftime stamp><suffix>`` (``20260102T030405.flows.pcap``): one pattern, so the last name
is the newest, exactly like a ``tcpdump -G`` spool; the ``.flows.pcap`` suffix is the mark that tells
``collect`` to decode every UDP payload of the file as flow export, whatever ``flow_ports`` says.

Nothing received is lost at a rotation or a stop: a file is flushed, fsync'ed and closed before the
next one is opened (the records are written in receive order, each completely, so a file is never cut
inside a record except by a crash, and then only its last record), and a started listener always
opens a new file (never appends to one a crash may have torn). The writer flushes after each round
of the loop, so what was received is in the OS's hands within milliseconds.

Drops. Datagrams the kernel dropped because the socket buffer was full are counted where Linux says
so (``SO_RXQ_OVFL``: a cumulative counter per socket on every received datagram); ``rcvbuf`` sets
``SO_RCVBUF``. Datagrams longer than the receive buffer are counted as ``truncated`` and not written.

The library never installs signal handlers: :meth:`Listener.stop` (safe from a signal handler or
another thread) ends :meth:`Listener.run` after the current round, closing the current file properly.
The ``flowdiff listen`` command wires SIGTERM and SIGINT to it.
"""

from __future__ import annotations

import abc
import contextlib
import functools
import ipaddress
import logging
import os
import selectors
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from flowdiff.errors import FlowdiffError
from flowdiff.exitcodes import ExitCode

log = logging.getLogger(__name__)

__all__ = [
    "FLOW_SPOOL_SUFFIX",
    "DatagramReceiver",
    "Endpoint",
    "FlowReceiver",
    "ListenError",
    "ListenResult",
    "Listener",
    "SpoolRecord",
    "SpoolWriter",
    "StreamReceiver",
    "is_flow_spool",
    "parse_endpoint",
]

FLOW_SPOOL_SUFFIX = ".flows.pcap"
STAMP = "%Y%m%dT%H%M%S"
LINKTYPE_RAW = 101
_MAX_PAYLOAD = 65535 - 48  # fits the UDP length and the IPv6 payload length fields
_SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)  # Linux; Python does not always export it


class ListenError(FlowdiffError):
    """A listening address that cannot be used (bad syntax, in use, no permission) or a spool problem."""


def is_flow_spool(path: str | os.PathLike) -> bool:
    """True for the spool files ``flowdiff listen`` writes for flow export (decoded as flows by collect)."""
    name = Path(path).name.lower()
    return name.endswith(FLOW_SPOOL_SUFFIX) or name.endswith(FLOW_SPOOL_SUFFIX + ".gz")


# ---------------------------------------------------------------- records and receivers


@dataclass(frozen=True)
class SpoolRecord:
    """One unit of received data as it is spooled: the payload of one synthetic UDP packet."""

    ts_ns: int  # receive time, UTC nanoseconds
    src: tuple[str, int]  # sender address and port
    dst: tuple[str, int]  # listening address and port
    payload: bytes


class DatagramReceiver(abc.ABC):
    """Plug-in for a UDP socket: each datagram becomes zero or more spool records.

    ``datagram`` is called on the listener's thread, once per datagram, and must not block; the counts
    it wants reported go into ``counts`` (shown in the listener's summary)."""

    kind = "udp"
    passthrough = False  # True: every datagram is one record, unchanged (the listener skips datagram())

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    @abc.abstractmethod
    def datagram(
        self, data: bytes, peer: tuple[str, int], local: tuple[str, int], ts_ns: int
    ) -> Iterable[SpoolRecord]: ...


class StreamReceiver(abc.ABC):
    """Plug-in for a TCP listening socket: the bytes of each accepted connection become records.

    ``data`` gets the bytes as they arrive (any split: the receiver frames them, e.g. by octet counting
    or newlines, and keeps the unfinished rest per ``conn``); ``closed`` is called once when the peer
    closes (or the listener stops) and may flush what is left."""

    kind = "tcp"

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    @abc.abstractmethod
    def data(
        self, conn: int, data: bytes, peer: tuple[str, int], local: tuple[str, int], ts_ns: int
    ) -> Iterable[SpoolRecord]: ...

    def closed(
        self, conn: int, peer: tuple[str, int], local: tuple[str, int], ts_ns: int
    ) -> Iterable[SpoolRecord]:
        return ()


class FlowReceiver(DatagramReceiver):
    """NetFlow v5/v9 and IPFIX export: every datagram is kept as it is (decoded later, by collect, with
    the templates kept in the ledger), so nothing depends on the listener understanding it."""

    passthrough = True

    def datagram(self, data, peer, local, ts_ns):
        return (SpoolRecord(ts_ns, peer, local, data),)


# ---------------------------------------------------------------- addresses


@dataclass(frozen=True)
class Endpoint:
    """Where to listen: ``transport`` is ``udp`` or ``tcp``."""

    host: str
    port: int
    transport: str = "udp"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}://{host}:{self.port}" if self.transport != "udp" else f"{host}:{self.port}"


def parse_endpoint(text: str, default_transport: str = "udp") -> Endpoint:
    """``ADDR:PORT``, ``[V6ADDR]:PORT``, ``:PORT`` (all IPv4 addresses), optionally ``udp://`` or
    ``tcp://`` in front. Raises ListenError naming the text when it is not one of those."""
    transport, rest = default_transport, text.strip()
    if "://" in rest:
        transport, rest = rest.split("://", 1)
        if transport not in ("udp", "tcp"):
            raise ListenError(f"{text}: transport must be udp:// or tcp://")
    if rest.startswith("["):
        host, sep, port = rest[1:].partition("]:")
    else:
        host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ListenError(f"{text}: expected ADDR:PORT (e.g. 0.0.0.0:2055 or [::]:4739)")
    host = host or "0.0.0.0"
    try:
        ipaddress.ip_address(host)
    except ValueError as e:
        raise ListenError(f"{text}: {host!r} is not an IPv4/IPv6 address") from e
    return Endpoint(host, int(port), transport)


# ---------------------------------------------------------------- the spool writer


@functools.lru_cache(maxsize=4096)
def _ip_bytes(addr: str) -> tuple[int, bytes]:
    ip = ipaddress.ip_address(addr.split("%", 1)[0])
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.version, ip.packed


def _checksum(header: bytes) -> int:
    s = sum(struct.unpack(f"!{len(header) // 2}H", header))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def synthetic_packet(src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> bytes:
    """IPv4 (or IPv6 when either side is IPv6) + UDP header around ``payload`` (UDP checksum 0)."""
    pre = _v4_prefix(src[0], dst[0])
    if pre is not None:  # the common case, fast: the header's checksum from a cached partial sum
        total = 28 + len(pl := payload)
        s = pre[1] + total
        s = (s & 0xFFFF) + (s >> 16)
        s = (s & 0xFFFF) + (s >> 16)
        head = (
            pre[0][:2]
            + total.to_bytes(2, "big")
            + pre[0][4:10]
            + (~s & 0xFFFF).to_bytes(2, "big")
            + pre[0][12:]
        )
        return head + struct.pack("!HHHH", src[1] & 0xFFFF, dst[1] & 0xFFFF, 8 + len(pl), 0) + pl
    sv, sa = _ip_bytes(src[0])
    dv, da = _ip_bytes(dst[0])
    udp = struct.pack("!HHHH", src[1] & 0xFFFF, dst[1] & 0xFFFF, 8 + len(payload), 0)
    if sv == 4 and dv == 4:
        ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 0, 0x4000, 64, 17, 0, sa, da))
        struct.pack_into("!H", ip, 10, _checksum(bytes(ip)))
        return bytes(ip) + udp + payload
    if sv == 4:
        sa = b"\0" * 10 + b"\xff\xff" + sa
    if dv == 4:
        da = b"\0" * 10 + b"\xff\xff" + da
    ip6 = struct.pack("!IHBB16s16s", 6 << 28, 8 + len(payload), 17, 64, sa, da)
    return ip6 + udp + payload


@functools.lru_cache(maxsize=4096)
def _v4_prefix(src: str, dst: str) -> tuple[bytes, int] | None:
    """(an IPv4 header with length and checksum 0, the ones' complement sum of its words) or None."""
    sv, sa = _ip_bytes(src)
    dv, da = _ip_bytes(dst)
    if sv != 4 or dv != 4:
        return None
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 0, 0, 0x4000, 64, 17, 0, sa, da)
    return head, sum(struct.unpack("!10H", head))


@functools.lru_cache(maxsize=4096)
def _v4_parts(src: str, dst: str) -> tuple[bytes, int, bytes, bytes]:
    """(header with length and checksum 0, the ones' complement sum of its words, source and destination
    addresses) of the IPv4 header between two IPv4 addresses."""
    pre = _v4_prefix(src, dst)
    if pre is None:
        raise ValueError(f"{src} -> {dst} is not IPv4 on both sides")
    return pre[0], pre[1], pre[0][12:16], pre[0][16:20]


_REC_HEADER = struct.Struct("<IIII")
_V4_UDP = struct.Struct("!BBHHHBBH4s4sHHHH")  # the synthetic IPv4 + UDP header of the fast path
HEAD_V4 = _REC_HEADER.size + _V4_UDP.size  # room kept in front of a datagram received by write_v4
_PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, LINKTYPE_RAW)  # nanosecond pcap


class SpoolWriter:
    """Writes spool records into rotated pcap files ``<dir>/<UTC stamp><suffix>``.

    A new file is started at the first record after each multiple of ``rotate`` seconds (UTC), and
    always at the first record after (re)start: a file that a crash may have left torn is never
    appended to. The previous file is flushed, fsync'ed and closed first. Records are never split."""

    header = _PCAP_HEADER  # what every spool file starts with (a subclass writing text has none)

    def __init__(
        self,
        directory: str | os.PathLike,
        rotate: int = 300,
        suffix: str = FLOW_SPOOL_SUFFIX,
        clock: Callable[[], float] = time.time,
    ):
        if rotate <= 0:
            raise ListenError(f"--rotate must be a positive number of seconds, not {rotate}")
        self.directory = Path(directory)
        self.rotate = int(rotate)
        self.suffix = suffix
        self.clock = clock
        self.files: list[Path] = []  # every file opened, in order
        self.records = 0
        self.bytes_written = 0  # record bytes written (flushed or not)
        self._wall = clock is time.time  # write_v4 may then compare the receive time with the rotation
        self._ends_ns = 0
        self._v4: dict[tuple[str, str], tuple[bytes, int, bytes, bytes]] = {}
        self._f: BinaryIO | None = None
        self._path: Path | None = None
        self._ends_at = 0.0
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ListenError(f"{self.directory}: cannot create the spool directory: {e.strerror}") from e

    @property
    def current(self) -> Path | None:
        return self._path

    def due(self, now: float | None = None) -> bool:
        """True when the open file's time is over (the loop rotates even while nothing arrives)."""
        return self._f is not None and (self.clock() if now is None else now) >= self._ends_at

    def seconds_to_rotation(self) -> float | None:
        return None if self._f is None else max(0.0, self._ends_at - self.clock())

    def write(self, records: Iterable[SpoolRecord]) -> int:
        n = 0
        for r in records:
            self.write_one(r.ts_ns, r.src, r.dst, r.payload)
            n += 1
        return n

    def write_one(self, ts_ns: int, src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> None:
        """One record (the hot path of a pass-through receiver: no SpoolRecord made)."""
        if self._f is None or self.clock() >= self._ends_at:
            self._open(self.clock())
        pkt = synthetic_packet(src, dst, payload[:_MAX_PAYLOAD])
        sec, nsec = divmod(ts_ns, 1_000_000_000)
        f = self._f
        assert f is not None
        f.write(_REC_HEADER.pack(sec & 0xFFFFFFFF, nsec, len(pkt), len(pkt)))
        f.write(pkt)
        self.records += 1
        self.bytes_written += 16 + len(pkt)

    def write_v4(
        self, ts_ns: int, src: tuple[str, int], dst: tuple[str, int], buf: bytearray, n: int
    ) -> None:
        """:meth:`write_one` for IPv4 on both sides, with the payload already in ``buf[HEAD_V4:HEAD_V4 + n]``
        (received there): the headers are packed in front of it and the record goes out in one write,
        without copying the payload into new objects (the listener's hot path)."""
        if self._f is None or (ts_ns >= self._ends_ns if self._wall else self.clock() >= self._ends_at):
            self._open(self.clock())
        if n > _MAX_PAYLOAD:
            n = _MAX_PAYLOAD
        parts = self._v4.get((src[0], dst[0]))
        if parts is None:
            parts = self._v4[(src[0], dst[0])] = _v4_parts(src[0], dst[0])
        _, partial, sa, da = parts
        total = 28 + n
        c = partial + total
        c = (c & 0xFFFF) + (c >> 16)
        c = (c & 0xFFFF) + (c >> 16)
        sec, nsec = divmod(ts_ns, 1_000_000_000)
        _REC_HEADER.pack_into(buf, 0, sec & 0xFFFFFFFF, nsec, total, total)
        _V4_UDP.pack_into(
            buf,
            16,
            0x45,
            0,
            total,
            0,
            0x4000,
            64,
            17,
            ~c & 0xFFFF,
            sa,
            da,
            src[1] & 0xFFFF,
            dst[1] & 0xFFFF,
            8 + n,
            0,
        )
        self._f.write(memoryview(buf)[: HEAD_V4 + n])  # type: ignore[union-attr]
        self.records += 1
        self.bytes_written += HEAD_V4 + n

    def flush(self) -> None:
        if self._f is not None:
            self._f.flush()

    def rotate_now(self) -> None:
        """Close the current file (durably); the next record opens a new one."""
        self.close()

    def close(self) -> None:
        f, self._f = self._f, None
        if f is None:
            return
        try:
            f.flush()
            os.fsync(f.fileno())
        finally:
            f.close()
        with contextlib.suppress(OSError):  # the directory entry too, so the name survives a crash
            fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _open(self, now: float) -> None:
        self.close()
        start = int(now)
        while True:
            name = datetime.fromtimestamp(start, UTC).strftime(STAMP) + self.suffix
            path = self.directory / name
            if not path.exists() and (not self.files or path > self.files[-1]):
                break
            start += 1  # restarted within the same second: a later name, never the old file
        try:
            f = open(path, "xb", buffering=1 << 20)  # noqa: SIM115 - closed in close()
        except OSError as e:
            raise ListenError(f"{path}: cannot create spool file: {e.strerror}") from e
        f.write(self.header)
        self._f = f
        self._path = path
        self.files.append(path)
        self._ends_at = (int(now) // self.rotate + 1) * self.rotate
        self._ends_ns = self._ends_at * 1_000_000_000
        log.info("listen: writing %s", path)


# ---------------------------------------------------------------- the loop


@dataclass
class SocketStats:
    endpoint: str
    datagrams: int = 0
    bytes: int = 0
    kernel_drops: int = 0  # SO_RXQ_OVFL: datagrams the kernel dropped (socket buffer full)
    truncated: int = 0  # longer than the receive buffer: not written
    connections: int = 0  # TCP


@dataclass
class ListenResult:
    """What a listener received and wrote (``exit_code`` 0 unless a socket failed while running)."""

    sockets: list[SocketStats] = field(default_factory=list)
    records: int = 0
    files: list[str] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)  # receivers' own counts
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def datagrams(self) -> int:
        return sum(s.datagrams for s in self.sockets)

    @property
    def kernel_drops(self) -> int:
        return sum(s.kernel_drops for s in self.sockets)

    @property
    def truncated(self) -> int:
        return sum(s.truncated for s in self.sockets)

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.ERROR if self.errors else ExitCode.OK

    def summary(self) -> str:
        parts = [
            f"{self.datagrams:,} datagrams",
            f"{sum(s.bytes for s in self.sockets):,} bytes",
            f"{self.records:,} records",
            f"{len(self.files)} file{'s' if len(self.files) != 1 else ''}",
            f"{self.seconds:.1f} s",
        ]
        extra = []
        if self.kernel_drops:
            extra.append(f"{self.kernel_drops:,} dropped by the kernel (socket buffer full: raise --rcvbuf)")
        if self.truncated:
            extra.append(f"{self.truncated:,} truncated datagrams not written")
        extra += [f"{k} {v:,}" for k, v in sorted(self.counts.items())]
        return "listen: " + ", ".join(parts) + (f" ({'; '.join(extra)})" if extra else "")


_MSG_TRUNC = int(socket.MSG_TRUNC)
_BATCH = 1024  # datagrams read per socket per readiness before looking at the others
_RECV = 65536
DEFAULT_RCVBUF = 32 << 20  # asked for when --rcvbuf is not given: ~0.3 s of 50,000 datagrams/s
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux, CAP_NET_ADMIN: past net.core.rmem_max
_FLUSH_S = 0.02  # received data reaches the OS within this (a flush per round only when idle)
_FLUSH_BYTES = 1 << 20
_COALESCE = 64  # rounds that read fewer datagrams than this wait _COALESCE_S before the next one
_COALESCE_S = 0.002


class Listener:
    """A select loop over several sockets, each with its receiver, writing into one SpoolWriter."""

    def __init__(
        self,
        endpoints: Sequence[tuple[Endpoint, DatagramReceiver | StreamReceiver]],
        writer: SpoolWriter,
        *,
        rcvbuf: int | None = None,
    ):
        if not endpoints:
            raise ListenError("nothing to listen on: give at least one ADDR:PORT")
        self.writer = writer
        self.result = ListenResult()
        self._sel = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, ("wake", None, None))
        self._socks: list[socket.socket] = []
        self._conns: dict[int, tuple[socket.socket, StreamReceiver, tuple, tuple, SocketStats]] = {}
        self._receivers: list[DatagramReceiver | StreamReceiver] = []
        self._rxbuf = bytearray(HEAD_V4 + _RECV)
        self._received = 0  # datagrams read (all sockets)
        self._local: dict[int, tuple[str, int]] = {}
        try:
            for ep, receiver in endpoints:
                self._open(ep, receiver, rcvbuf)
        except BaseException:
            self.close()
            raise

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The bound (address, port) of each socket, in order (port 0 asks the OS for a free one)."""
        return [s.getsockname()[:2] for s in self._socks]

    def _open(self, ep: Endpoint, receiver, rcvbuf: int | None) -> None:
        family = socket.AF_INET6 if ":" in ep.host else socket.AF_INET
        if ep.transport != receiver.kind:
            raise ListenError(f"{ep}: a {receiver.kind} receiver cannot serve a {ep.transport} socket")
        kind = socket.SOCK_DGRAM if ep.transport == "udp" else socket.SOCK_STREAM
        s = socket.socket(family, kind)
        try:
            if kind == socket.SOCK_DGRAM or rcvbuf:
                _set_rcvbuf(s, int(rcvbuf or DEFAULT_RCVBUF), str(ep), explicit=bool(rcvbuf))
            if kind == socket.SOCK_DGRAM:
                with contextlib.suppress(OSError):
                    s.setsockopt(socket.SOL_SOCKET, _SO_RXQ_OVFL, 1)
            else:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((ep.host, ep.port))
            if kind == socket.SOCK_STREAM:
                s.listen(64)
        except OSError as e:
            s.close()
            raise ListenError(f"{ep}: cannot listen: {e.strerror or e}") from e
        s.setblocking(False)
        stats = SocketStats(str(ep))
        self.result.sockets.append(stats)
        self._socks.append(s)
        self._receivers.append(receiver)
        self._sel.register(s, selectors.EVENT_READ, (ep.transport, receiver, stats))

    def stop(self) -> None:
        """End :meth:`run` after the current round (safe from a signal handler or another thread)."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def run(self, *, duration: float | None = None) -> ListenResult:
        """Receive until :meth:`stop` (or ``duration`` seconds); the current file is closed properly."""
        t0 = time.monotonic()
        flushed, at = time.monotonic(), self.writer.bytes_written
        try:
            while not self._stop.is_set():
                timeout = self.writer.seconds_to_rotation()
                if self.writer.bytes_written != at:  # unflushed data: wake up in time to flush it
                    timeout = _FLUSH_S if timeout is None else min(timeout, _FLUSH_S)
                if duration is not None:
                    left = duration - (time.monotonic() - t0)
                    if left <= 0:
                        break
                    timeout = left if timeout is None else min(timeout, left)
                events = self._sel.select(timeout)
                before = self._received
                for key, _ in events:
                    self._ready(key)
                if 0 < self._received - before < _COALESCE:
                    # a trickle: let a few milliseconds of datagrams gather in the socket buffer, so that
                    # a round reads many (a wake-up per datagram costs more than reading it)
                    self._stop.wait(_COALESCE_S)
                # flush when idle, every _FLUSH_S or _FLUSH_BYTES: not a write(2) per small round
                now = time.monotonic()
                pending = self.writer.bytes_written - at
                if pending and (not events or now - flushed >= _FLUSH_S or pending >= _FLUSH_BYTES):
                    self.writer.flush()
                    flushed, at = now, self.writer.bytes_written
                if self.writer.due():
                    self.writer.rotate_now()
                    flushed, at = now, self.writer.bytes_written
            self._drain_all()  # what is already queued in the kernel at stop is received, not lost
        finally:
            self._final_drops()
            for conn in list(self._conns):
                self._close_conn(conn)
            self.writer.close()
            self.result.seconds = time.monotonic() - t0
            self.result.records = self.writer.records
            self.result.files = [str(p) for p in self.writer.files]
            for r in self._receivers:
                self.result.counts.update(r.counts)
            self.close()
        return self.result

    def close(self) -> None:
        for s in [*self._socks, self._wake_r, self._wake_w]:
            with contextlib.suppress(OSError, KeyError, ValueError):
                self._sel.unregister(s)
            s.close()
        self._socks = []
        self._sel.close()

    def _final_drops(self) -> None:
        """SO_RXQ_OVFL stamps the count on the datagrams queued after a drop, so drops after the last
        datagram read are only in /proc/net/udp[6] (the ``drops`` column of the socket's inode)."""
        for s, stats in zip(self._socks, self.result.sockets, strict=True):
            if s.type == socket.SOCK_DGRAM:
                stats.kernel_drops = max(stats.kernel_drops, proc_udp_drops(s))

    def _drain_all(self) -> None:
        for key in list(self._sel.get_map().values()):
            if key.data[0] == "udp":
                self._ready(key)

    def _ready(self, key: selectors.SelectorKey) -> None:
        what, receiver, stats = key.data
        if what == "wake":
            with contextlib.suppress(OSError):
                self._wake_r.recv(4096)
        elif what == "udp":
            self._read_datagrams(key.fileobj, receiver, stats)  # type: ignore[arg-type]
        elif what == "tcp":
            self._accept(key.fileobj, receiver, stats)  # type: ignore[arg-type]
        else:
            self._read_stream(key.fd)

    def _read_datagrams(self, s: socket.socket, receiver: DatagramReceiver, stats: SocketStats) -> None:
        if receiver.passthrough and s.family == socket.AF_INET:
            return self._read_v4_passthrough(s, stats)
        local = s.getsockname()[:2]
        anc = socket.CMSG_SPACE(4)
        writer, passthrough = self.writer, receiver.passthrough
        for _ in range(_BATCH):
            try:
                data, ancdata, flags, peer = s.recvmsg(_RECV, anc)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # e.g. ICMP port unreachable reported on a UDP socket: not fatal
                log.debug("listen: %s: %s", stats.endpoint, e)
                return
            ts = time.time_ns()
            for level, typ, value in ancdata:  # only present once the kernel has dropped any
                if level == socket.SOL_SOCKET and typ == _SO_RXQ_OVFL and len(value) >= 4:
                    stats.kernel_drops = struct.unpack("=I", value[:4])[0]
            stats.datagrams += 1
            stats.bytes += len(data)
            if flags & _MSG_TRUNC:
                stats.truncated += 1
                continue
            if passthrough:
                writer.write_one(ts, peer, local, data)
            else:
                writer.write(receiver.datagram(data, peer[:2], local, ts))

    def _read_v4_passthrough(self, s: socket.socket, stats: SocketStats) -> None:
        """The hot loop of ``flowdiff listen``: each datagram is received straight into a buffer behind
        room for its spool headers, which the writer packs in front of it (one write, no copies)."""
        buf = self._rxbuf
        views = [memoryview(buf)[HEAD_V4:]]
        local = self._local.get(s.fileno())
        if local is None:
            local = self._local[s.fileno()] = s.getsockname()[:2]
        anc = socket.CMSG_SPACE(4)
        recv = s.recvmsg_into
        write = self.writer.write_v4
        now_ns = time.time_ns
        got = nbytes = 0
        try:
            for _ in range(_BATCH):
                try:
                    n, ancdata, flags, peer = recv(views, anc)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as e:  # e.g. ICMP port unreachable reported on a UDP socket: not fatal
                    log.debug("listen: %s: %s", stats.endpoint, e)
                    return
                ts = now_ns()
                if ancdata:  # only present once the kernel has dropped any
                    for level, typ, value in ancdata:
                        if level == socket.SOL_SOCKET and typ == _SO_RXQ_OVFL and len(value) >= 4:
                            stats.kernel_drops = struct.unpack("=I", value[:4])[0]
                got += 1
                nbytes += n
                if flags & _MSG_TRUNC:
                    stats.truncated += 1
                    continue
                write(ts, peer, local, buf, n)
        finally:
            stats.datagrams += got
            stats.bytes += nbytes
            self._received += got

    def _accept(self, s: socket.socket, receiver: StreamReceiver, stats: SocketStats) -> None:
        try:
            conn, peer = s.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            log.warning("listen: %s: accept failed: %s", stats.endpoint, e)
            return
        conn.setblocking(False)
        stats.connections += 1
        self._conns[conn.fileno()] = (conn, receiver, peer[:2], s.getsockname()[:2], stats)
        self._sel.register(conn, selectors.EVENT_READ, ("conn", receiver, stats))

    def _read_stream(self, fd: int) -> None:
        conn, receiver, peer, local, stats = self._conns[fd]
        try:
            data = conn.recv(_RECV)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close_conn(fd)
            return
        stats.bytes += len(data)
        self.writer.write(receiver.data(fd, data, peer, local, time.time_ns()))

    def _close_conn(self, fd: int) -> None:
        conn, receiver, peer, local, _ = self._conns.pop(fd)
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(conn)
        self.writer.write(receiver.closed(fd, peer, local, time.time_ns()))
        conn.close()


def _set_rcvbuf(s: socket.socket, size: int, endpoint: str, *, explicit: bool) -> None:
    """SO_RCVBUF of ``size``: forced past net.core.rmem_max where allowed (CAP_NET_ADMIN), else asked
    for (the kernel caps it); one warning line when the kernel gives much less than an explicit size."""
    try:
        s.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, size)
    except OSError:
        with contextlib.suppress(OSError):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    with contextlib.suppress(OSError):
        got = s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2  # Linux reports twice the size
        if got < size // 2:
            (log.warning if explicit else log.info)(
                "listen: %s: receive buffer %d bytes, not the %d asked for (raise net.core.rmem_max)",
                endpoint,
                got,
                size,
            )


def proc_udp_drops(s: socket.socket) -> int:
    """The kernel's drop counter of a UDP socket from /proc/net/udp or udp6 (0 where there is none)."""
    try:
        inode = str(os.fstat(s.fileno()).st_ino)
    except OSError:
        return 0
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as f:
                next(f, None)
                for line in f:
                    cols = line.split()
                    if len(cols) >= 13 and cols[9] == inode:
                        return int(cols[-1])
        except (OSError, ValueError):
            continue
    return 0


def listen(
    endpoints: Sequence[str | Endpoint],
    spool: str | os.PathLike,
    *,
    rotate: int = 300,
    rcvbuf: int | None = None,
    duration: float | None = None,
    ready: Callable[[Listener], None] | None = None,
) -> ListenResult:
    """Collect flow export (NetFlow v5/v9, IPFIX) on ``endpoints`` into ``spool`` until stopped.

    ``ready`` is called with the Listener once every socket is bound (to wire a stop signal)."""
    eps = [e if isinstance(e, Endpoint) else parse_endpoint(e) for e in endpoints]
    writer = SpoolWriter(spool, rotate)
    listener = Listener([(ep, FlowReceiver()) for ep in eps], writer, rcvbuf=rcvbuf)
    if ready is not None:
        ready(listener)
    return listener.run(duration=duration)
