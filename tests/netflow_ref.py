"""Test helpers for flow export: an encoder of NetFlow v5/v9/IPFIX datagrams from plain records, and a
second, independent decoder (one record at a time, struct only) that flowdiff.netflow is held to.

Neither shares code with flowdiff/netflow.py: the encoder writes what RFC 3954 / RFC 7011 and Cisco's v5
layout say, the reference decoder reads them back the slow, obvious way."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

V4_FIELDS = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (6, 1), (2, 4), (1, 8), (10, 2), (14, 4)]
V6_FIELDS = [(27, 16), (28, 16), (7, 2), (11, 2), (4, 1), (6, 1), (2, 4), (1, 8), (10, 2), (14, 4)]


@dataclass(frozen=True)
class Rec:
    src: str
    dst: str
    proto: int
    sport: int
    dport: int
    flags: int
    packets: int
    bytes: int
    start_ms: int  # epoch milliseconds
    end_ms: int
    in_if: int = 0
    out_if: int = 0

    @property
    def v6(self) -> bool:
        return ":" in self.src


def _value(rec: Rec, ie: int, length: int) -> bytes:
    v = {
        8: int(ipaddress.ip_address(rec.src)) if not rec.v6 else 0,
        12: int(ipaddress.ip_address(rec.dst)) if not rec.v6 else 0,
        27: int(ipaddress.ip_address(rec.src)) if rec.v6 else 0,
        28: int(ipaddress.ip_address(rec.dst)) if rec.v6 else 0,
        7: rec.sport, 11: rec.dport, 4: rec.proto, 6: rec.flags, 2: rec.packets, 1: rec.bytes,
        10: rec.in_if, 14: rec.out_if, 152: rec.start_ms, 153: rec.end_ms,
    }.get(ie, 0x5A)  # fmt: skip
    return (v % (1 << (8 * length))).to_bytes(length, "big")


def v5_datagram(recs: list[Rec], *, export_ms: int, uptime_ms: int = 10_000_000, seq: int = 0) -> bytes:
    secs, ms = divmod(export_ms, 1000)
    head = struct.pack("!HHIIIIBBH", 5, len(recs), uptime_ms, secs, ms * 1_000_000, seq, 0, 0, 0)
    body = b""
    for r in recs:
        first = uptime_ms - (export_ms - r.start_ms)
        last = uptime_ms - (export_ms - r.end_ms)
        body += struct.pack(
            "!4s4s4sHHIIIIHHBBBBHHBBH", ipaddress.IPv4Address(r.src).packed, ipaddress.IPv4Address(r.dst).packed,
            b"\0" * 4, r.in_if & 0xFFFF, r.out_if & 0xFFFF, r.packets, r.bytes, first % 2**32, last % 2**32, r.sport, r.dport,
            0, r.flags, r.proto, 0, 0, 0, 0, 0, 0,
        )  # fmt: skip
    return head + body


def template_set(version: int, tid: int, fields: list[tuple], options_scope: int = 0) -> bytes:
    """fields: (ie, length) or (ie, length, enterprise)."""
    body = b""
    for f in fields:
        ie, length = f[0], f[1]
        if len(f) > 2:
            body += struct.pack("!HHI", ie | 0x8000, length, f[2])
        else:
            body += struct.pack("!HH", ie, length)
    if options_scope:
        if version == 9:
            scope_len = 4 * options_scope
            head = struct.pack("!HHH", tid, scope_len, 4 * len(fields) - scope_len)
        else:
            head = struct.pack("!HHH", tid, len(fields), options_scope)
        sid = 1 if version == 9 else 3
    else:
        head = struct.pack("!HH", tid, len(fields))
        sid = 0 if version == 9 else 2
    content = head + body
    return struct.pack("!HH", sid, 4 + len(content)) + content


def data_set(
    tid: int, recs: list[Rec], fields: list[tuple], *, export_ms: int = 0, uptime_ms: int = 0
) -> bytes:
    body = b""
    for r in recs:
        for f in fields:
            ie, length = f[0], f[1]
            if length == 0xFFFF:
                text = f"if-{r.in_if}".encode()
                body += bytes([len(text)]) + text
            elif ie in (22, 21):
                t = r.start_ms if ie == 22 else r.end_ms
                body += ((uptime_ms - (export_ms - t)) % 2**32).to_bytes(4, "big")
            elif len(f) > 2:
                body += b"\xee" * length
            else:
                body += _value(r, ie, length)
    body += b"\0" * ((-len(body)) % 4)
    return struct.pack("!HH", tid, 4 + len(body)) + body


def v9_datagram(sets: list[bytes], *, export_ms: int, uptime_ms: int = 10_000_000, seq: int = 0,
                source_id: int = 0) -> bytes:  # fmt: skip
    return struct.pack("!HHIIII", 9, len(sets), uptime_ms, export_ms // 1000, seq, source_id) + b"".join(sets)


def ipfix_message(sets: list[bytes], *, export_s: int, seq: int = 0, domain: int = 0) -> bytes:
    body = b"".join(sets)
    return struct.pack("!HHIII", 10, 16 + len(body), export_s, seq, domain) + body


# ---------------------------------------------------------------- the reference decoder


def reference_decode(datagrams: list[tuple[bytes, str]]) -> list[tuple]:
    """(src, dst, proto, sport, dport, flags, packets, bytes, start_ns, in_if, out_if, exporter) per
    record, one record at a time. Assumes well-formed input (it is for generated datagrams)."""
    templates: dict[tuple, list[tuple[int, int, int]]] = {}
    out = []
    for data, exporter in datagrams:
        version = struct.unpack_from("!H", data)[0]
        if version == 5:
            count, uptime, secs, nsecs = struct.unpack_from("!xxHIII", data)
            export_ns = secs * 10**9 + nsecs
            for i in range(count):
                r = struct.unpack_from("!4s4s4sHHIIIIHHBBBBHHBBH", data, 24 + 48 * i)
                start = export_ns - ((uptime - r[7]) % 2**32) * 10**6
                fields = {8: int.from_bytes(r[0], "big"), 12: int.from_bytes(r[1], "big"), 10: r[3], 14: r[4],
                          2: r[5], 1: r[6], 7: r[9], 11: r[10], 6: r[12], 4: r[13]}  # fmt: skip
                out.append(_row(fields, start, exporter))
            continue
        if version == 9:
            uptime, secs, _, domain = struct.unpack_from("!4xIIII", data)
            pos, end, export_ns = 20, len(data), secs * 10**9
        else:
            length, secs, _, domain = struct.unpack_from("!2xHIII", data)
            pos, end, export_ns, uptime = 16, length, secs * 10**9, None
        while pos + 4 <= end:
            sid, slen = struct.unpack_from("!HH", data, pos)
            body = data[pos + 4 : pos + slen]
            pos += slen
            if sid in (0, 2):
                q = 0
                while q + 4 <= len(body):
                    tid, count = struct.unpack_from("!HH", body, q)
                    q += 4
                    fields = []
                    for _ in range(count):
                        ie, flen = struct.unpack_from("!HH", body, q)
                        q += 4
                        pen = 0
                        if version == 10 and ie & 0x8000:
                            pen = struct.unpack_from("!I", body, q)[0]
                            q += 4
                            ie &= 0x7FFF
                        fields.append((ie, flen, pen))
                    if count == 0:
                        templates.pop((exporter, domain, tid), None)
                    else:
                        templates[(exporter, domain, tid)] = fields
            elif sid >= 256:
                fields = templates[(exporter, domain, sid)]
                q = 0
                while True:
                    rec, start_q = {}, q
                    try:
                        for ie, flen, pen in fields:
                            if flen == 0xFFFF:
                                vl = body[q]
                                q += 1 + vl
                                continue
                            chunk = body[q : q + flen]
                            if len(chunk) < flen:
                                raise IndexError
                            if pen == 0:
                                rec.setdefault(ie, int.from_bytes(chunk, "big"))
                            q += flen
                    except IndexError:
                        break
                    if q == start_q:
                        break
                    if 22 in rec and uptime is not None:
                        start = export_ns - ((uptime - rec[22]) % 2**32) * 10**6
                    elif 152 in rec:
                        start = rec[152] * 10**6
                    else:
                        start = export_ns
                    out.append(_row(rec, start, exporter))
    return out


def _row(f: dict, start_ns: int, exporter: str) -> tuple:
    if 27 in f and (f.get(8, 0) == 0 and f.get(12, 0) == 0):
        src, dst = str(ipaddress.IPv6Address(f[27])), str(ipaddress.IPv6Address(f[28]))
    else:
        src, dst = str(ipaddress.IPv4Address(f[8])), str(ipaddress.IPv4Address(f[12]))
    proto = f.get(4, 0)
    tcpudp = proto in (6, 17)
    return (src, dst, proto, f.get(7, 0) if tcpudp else 0, f.get(11, 0) if tcpudp else 0, f.get(6, 0) & 0xFF,
            f.get(2, 1), f.get(1, 0), start_ns, f.get(10, 0), f.get(14, 0), exporter)  # fmt: skip


def rows_of(arrays: dict, exporters: list[str]) -> list[tuple]:
    """flowdiff.netflow's arrays as the reference decoder's tuples."""
    out = []
    for i in range(len(arrays["ts_ns"])):
        v = int(arrays["ip_version"][i])
        if v == 4:
            src = str(ipaddress.IPv4Address(int(arrays["src_lo"][i])))
            dst = str(ipaddress.IPv4Address(int(arrays["dst_lo"][i])))
        else:
            src = str(ipaddress.IPv6Address((int(arrays["src_hi"][i]) << 64) | int(arrays["src_lo"][i])))
            dst = str(ipaddress.IPv6Address((int(arrays["dst_hi"][i]) << 64) | int(arrays["dst_lo"][i])))
        out.append((src, dst, int(arrays["proto"][i]), int(arrays["sport"][i]), int(arrays["dport"][i]),
                    int(arrays["tcp_flags"][i]), int(arrays["packets"][i]), int(arrays["bytes"][i]),
                    int(arrays["ts_ns"][i]), int(arrays["input_if"][i]), int(arrays["output_if"][i]),
                    exporters[int(arrays["exporter"][i]) - 1]))  # fmt: skip
    return out
