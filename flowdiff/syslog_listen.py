"""The syslog receiver of ``flowdiff listen --syslog ADDR:PORT``: UDP datagrams and TCP streams (RFC 6587
octet counting and newline framing) -> rotated spool files of syslog lines that ``collect`` and
``run --spool`` read like any syslog file (flowdiff.logsource).

Spool files are plain text, one message per line, named ``<UTC stamp>.syslog`` by the listener's
rotating writer (flowdiff.listen.SpoolWriter, here writing lines instead of pcap records), so the
newest one waits in collect until the next file starts, exactly as for captures.

What a line holds: the message as it was sent (``<PRI>`` included, so facility and severity are known),
with line breaks inside it written as ``#012`` (as rsyslog does). A message that does not start with a
syslog time stamp and host (some devices send ``<13>prog: text``) gets the receive time and the
sender's address in front, so it is still dated and attributed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from flowdiff.listen import (
    DatagramReceiver,
    Endpoint,
    Listener,
    ListenResult,
    SpoolRecord,
    SpoolWriter,
    StreamReceiver,
    parse_endpoint,
)
from flowdiff.syslog import _BSD_TS, _ISO_TS

SYSLOG_SPOOL_SUFFIX = ".syslog"
MAX_MESSAGE = 64 * 1024  # longer frames are cut (and counted): a runaway sender must not eat the memory
_HEADER = re.compile(
    rb"^(?:<\d{1,3}>)?(?:1 )?(?:" + _BSD_TS.encode() + b"|" + _ISO_TS.encode() + rb"|-) +\S+ "
)
_PRI = re.compile(rb"^<(\d{1,3})>")


def spool_line(message: bytes, peer: tuple[str, int], ts_ns: int) -> bytes:
    """The spool line of one received message (see the module doc), without the newline."""
    msg = (
        message.rstrip(b"\r\n\x00").replace(b"\r\n", b"#012").replace(b"\n", b"#012").replace(b"\r", b"#015")
    )
    if _HEADER.match(msg):
        return msg
    pri = _PRI.match(msg)
    head = pri.group(0) if pri else b""
    rest = msg[len(head) :].lstrip(b" ")
    stamp = datetime.fromtimestamp(ts_ns / 1e9, UTC).isoformat(timespec="microseconds").encode()
    return head + stamp + b" " + peer[0].encode() + b" " + rest


class SyslogUdpReceiver(DatagramReceiver):
    """One message per datagram (RFC 5426)."""

    def datagram(self, data, peer, local, ts_ns):
        if not data.strip():
            self.counts["empty syslog datagrams"] += 1
            return ()
        return (SpoolRecord(ts_ns, peer, local, spool_line(data[:MAX_MESSAGE], peer, ts_ns)),)


class SyslogTcpReceiver(StreamReceiver):
    """RFC 6587 framing per connection: ``LEN SP MSG`` (octet counting) when a frame starts with a digit,
    else a message ends at LF (or NUL). The unfinished rest waits for more bytes; at close it is kept."""

    def __init__(self) -> None:
        super().__init__()
        self._buf: dict[int, bytearray] = {}

    def data(self, conn, data, peer, local, ts_ns):
        buf = self._buf.setdefault(conn, bytearray())
        buf += data
        return list(self._frames(buf, peer, local, ts_ns))

    def closed(self, conn, peer, local, ts_ns):
        buf = self._buf.pop(conn, bytearray())
        if buf.strip():
            return [SpoolRecord(ts_ns, peer, local, spool_line(bytes(buf[:MAX_MESSAGE]), peer, ts_ns))]
        return ()

    def _frames(self, buf: bytearray, peer, local, ts_ns) -> Iterable[SpoolRecord]:
        while buf:
            if buf[:1] in (b"\n", b"\r", b"\x00", b" "):
                del buf[:1]
                continue
            if buf[:1].isdigit():
                sp = buf.find(b" ", 0, 12)
                if sp > 0 and buf[:sp].isdigit():
                    n = int(buf[:sp])
                    if len(buf) < sp + 1 + n:
                        if n > MAX_MESSAGE * 4:  # no sender means that: resynchronise at the next line
                            self.counts["syslog frames too long"] += 1
                            del buf[: sp + 1]
                            continue
                        return
                    msg = bytes(buf[sp + 1 : sp + 1 + n])
                    del buf[: sp + 1 + n]
                    if len(msg) > MAX_MESSAGE:
                        self.counts["syslog messages cut"] += 1
                    yield SpoolRecord(ts_ns, peer, local, spool_line(msg[:MAX_MESSAGE], peer, ts_ns))
                    continue
                if sp < 0 and len(buf) < 12:
                    return  # the length may still be arriving
            end = min((i for i in (buf.find(b"\n"), buf.find(b"\x00")) if i >= 0), default=-1)
            if end < 0:
                if len(buf) > MAX_MESSAGE:
                    self.counts["syslog messages cut"] += 1
                    yield SpoolRecord(ts_ns, peer, local, spool_line(bytes(buf[:MAX_MESSAGE]), peer, ts_ns))
                    del buf[:]
                return
            msg = bytes(buf[:end])
            del buf[: end + 1]
            yield SpoolRecord(ts_ns, peer, local, spool_line(msg, peer, ts_ns))


class SyslogSpoolWriter(SpoolWriter):
    """The listener's rotating writer, writing one text line per record instead of a pcap record."""

    header = b""  # plain text, one message per line

    def __init__(self, directory, rotate: int = 300, **kw) -> None:  # noqa: ANN001
        super().__init__(directory, rotate, suffix=SYSLOG_SPOOL_SUFFIX, **kw)

    def write(self, records: Iterable[SpoolRecord]) -> int:
        n = 0
        for r in records:
            now = self.clock()
            if self._f is None or now >= self._ends_at:
                self._open(now)
            f: Any = self._f
            f.write(r.payload + b"\n")
            self.bytes_written += len(r.payload) + 1  # the listener flushes when this moves
            n += 1
        self.records += n
        return n


def listen_syslog(
    endpoints: Sequence[str | Endpoint],
    spool: str | os.PathLike,
    *,
    rotate: int = 300,
    rcvbuf: int | None = None,
    duration: float | None = None,
    ready: Callable[[Listener], None] | None = None,
) -> ListenResult:
    """Receive syslog on ``endpoints`` (``ADDR:PORT`` is UDP, ``tcp://ADDR:PORT`` TCP) into ``spool``
    until stopped (see :func:`flowdiff.listen.listen` for ``ready`` and ``duration``)."""
    eps = [e if isinstance(e, Endpoint) else parse_endpoint(e) for e in endpoints]
    writer = SyslogSpoolWriter(spool, rotate)
    pairs = [(ep, SyslogTcpReceiver() if ep.transport == "tcp" else SyslogUdpReceiver()) for ep in eps]
    listener = Listener(pairs, writer, rcvbuf=rcvbuf)
    if ready is not None:
        ready(listener)
    return listener.run(duration=duration)
