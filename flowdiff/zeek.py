"""Zeek ``conn.log`` (TSV with its ``#fields`` header, or JSON lines; plain or gzip) -> flow records.

One connection is one record, counted in the interval of its ``ts``:

* ``src``/``client`` = ``id.orig_h``, ``dst``/``server`` = ``id.resp_h`` (Zeek's originator is the
  client whatever the ports say), ``sport`` = ``id.orig_p``, ``dport``/``service_port`` = ``id.resp_p``;
* ``proto`` from ``proto`` (``tcp`` 6, ``udp`` 17, ``icmp`` 1, or 58 between IPv6 addresses); for ICMP
  Zeek puts the type in ``id.orig_p`` and the code in ``id.resp_p``: they become ``icmp_type`` and
  ``icmp_code`` and the ports are 0, as in packet tables;
* ``packets`` = ``orig_pkts + resp_pkts``, ``bytes`` = ``orig_ip_bytes + resp_ip_bytes`` (IP layer);
  first seen ``ts``, last seen ``ts + duration``.

Unset (``-``) or missing counters count as 0 and are counted (``zeek-unset-counts``); a line without
addresses or with values that do not parse is skipped and counted (``zeek-bad-line``), never raised.
Link fields (MACs, VLAN) are not in conn.log: ``ethertype`` is 0x0800/0x86dd, MACs 0.
"""

from __future__ import annotations

import gzip
import io
import ipaddress
import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from flowdiff.netflow import FLOW_FIELDS
from flowdiff.schema import PACKET_FIELDS

__all__ = ["ZeekReader", "sniff_conn_log"]

_PROTO = {"tcp": 6, "udp": 17, "icmp": 1, "icmp6": 58, "ipv6-icmp": 58}
_NEEDED = ("ts", "id.orig_h", "id.resp_h")
CHUNK_LINES = 100_000


def _open_text(path: Path) -> io.TextIOBase:
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    raw = gzip.open(path, "rb") if gz else open(path, "rb")  # noqa: SIM115 - the caller closes it
    return io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="\n")


def sniff_conn_log(path: str | os.PathLike) -> str | None:
    """``"tsv"`` or ``"json"`` when the file starts like a Zeek conn.log, else None (content, not name)."""
    try:
        with _open_text(Path(path)) as f:
            head = f.read(4096)
    except (OSError, EOFError, UnicodeError, gzip.BadGzipFile):
        return None
    if head.startswith("#separator") and "\n#fields" in head and "id.orig_h" in head:
        return "tsv"
    first = head.lstrip().split("\n", 1)[0]
    if first.startswith("{"):
        try:
            obj = json.loads(first)
        except ValueError:
            return None
        if isinstance(obj, dict) and "id.orig_h" in obj and "id.resp_h" in obj and "ts" in obj:
            return "json"
    return None


class ZeekStats:
    """The part of ``capture.CaptureStats`` collect reads (records, skips, damage, content hash)."""

    def __init__(self, path: str):
        self.path = path
        self.records = 0
        self.skipped: Counter[str] = Counter()
        self.damage: list = []
        self.sha256: str | None = None
        self.linktypes: set[int] = set()
        self.file_bytes_read = 0


class ZeekReader:
    """Streams a conn.log as chunks of flow records (``schema.PACKET_FIELDS`` + ``netflow.FLOW_FIELDS``)."""

    def __init__(self, path: str | os.PathLike, kind: str):
        self.path = str(path)
        self.kind = kind
        self.stats = ZeekStats(self.path)

    def chunks(self, lines_per_chunk: int = CHUNK_LINES) -> Iterator[dict[str, np.ndarray]]:
        from flowdiff.capture import content_sha256

        self.stats = st = ZeekStats(self.path)
        fields: list[str] | None = None
        unset, sep = "-", "\t"
        rows: list[tuple] = []
        with _open_text(Path(self.path)) as f:
            for line in f:
                st.file_bytes_read += len(line)
                line = line.rstrip("\r\n")
                if not line:
                    continue
                if self.kind == "tsv" and line.startswith("#"):
                    if line.startswith("#fields"):
                        fields = line.split(sep)[1:]
                    elif line.startswith("#unset_field"):
                        unset = line.split(sep, 1)[1] if sep in line else "-"
                    continue
                row = self._row(line, fields, unset, sep, st)
                if row is not None:
                    rows.append(row)
                if len(rows) >= lines_per_chunk:
                    st.records += len(rows)
                    yield _arrays(rows)
                    rows = []
        if rows:
            st.records += len(rows)
            yield _arrays(rows)
        st.sha256 = content_sha256(self.path)  # the ledger's content hash, as for captures

    def _row(self, line: str, fields: list[str] | None, unset: str, sep: str, st: ZeekStats) -> tuple | None:
        if self.kind == "tsv":
            if fields is None:
                st.skipped["zeek-bad-line"] += 1
                return None
            values = line.split(sep)
            rec = {k: v for k, v in zip(fields, values, strict=False) if v != unset}
        else:
            try:
                obj = json.loads(line)
            except ValueError:
                st.skipped["zeek-bad-line"] += 1
                return None
            if not isinstance(obj, dict):
                st.skipped["zeek-bad-line"] += 1
                return None
            rec = {k: str(v) for k, v in obj.items() if v is not None and v != "-"}
        return _record(rec, st)


def _num(rec: dict, key: str) -> int | None:
    v = rec.get(key)
    if v is None:
        return None
    return int(v)


def _ts_ns(text: str) -> int:
    try:
        whole, _, frac = text.partition(".")
        return int(whole) * 10**9 + int((frac + "000000000")[:9] or 0)
    except ValueError:  # JSON logs written with ISO 8601 time stamps
        from datetime import datetime

        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1e9)


def _record(rec: dict, st: ZeekStats) -> tuple | None:
    try:
        if any(k not in rec for k in _NEEDED):
            raise ValueError("missing")
        src = ipaddress.ip_address(rec["id.orig_h"])
        dst = ipaddress.ip_address(rec["id.resp_h"])
        if src.version != dst.version:
            raise ValueError("mixed")
        ts = _ts_ns(rec["ts"])
        dur = rec.get("duration")
        end = ts + (int(float(dur) * 1e9) if dur is not None else 0)
        proto_name = rec.get("proto", "").lower()
        proto = _PROTO.get(proto_name, 0)
        if proto == 1 and src.version == 6:
            proto = 58
        sport, dport = _num(rec, "id.orig_p") or 0, _num(rec, "id.resp_p") or 0
        icmp_type = icmp_code = 0
        if proto in (1, 58):
            icmp_type, icmp_code, sport, dport = sport & 0xFF, dport & 0xFF, 0, 0
        elif proto not in (6, 17):
            sport = dport = 0
        counts = [_num(rec, k) for k in ("orig_pkts", "resp_pkts", "orig_ip_bytes", "resp_ip_bytes")]
        if not (0 <= sport < 65536 and 0 <= dport < 65536) or any(c is not None and c < 0 for c in counts):
            raise ValueError("range")
    except (ValueError, OverflowError):
        st.skipped["zeek-bad-line"] += 1
        return None
    if any(c is None for c in counts):
        st.skipped["zeek-unset-counts"] += 1
    pk = (counts[0] or 0) + (counts[1] or 0)
    by = (counts[2] or 0) + (counts[3] or 0)
    s, d = int(src), int(dst)
    return (ts, max(end, ts), src.version, s >> 64, s & (2**64 - 1), d >> 64, d & (2**64 - 1), proto, sport,
            dport, icmp_type, icmp_code, pk, by)  # fmt: skip


def _arrays(rows: list[tuple]) -> dict[str, np.ndarray]:
    n = len(rows)
    cols = list(zip(*rows, strict=True))
    out = {name: np.zeros(n, dtype=dt) for name, dt in {**PACKET_FIELDS, **FLOW_FIELDS}.items()}
    names = ("ts_ns", "ts_end_ns", "ip_version", "src_hi", "src_lo", "dst_hi", "dst_lo", "proto", "sport",
             "dport", "icmp_type", "icmp_code", "packets", "bytes")  # fmt: skip
    for name, col in zip(names, cols, strict=True):
        out[name] = np.array(col, dtype=out[name].dtype)
    out["ethertype"] = np.where(out["ip_version"] == 6, 0x86DD, 0x0800).astype(np.uint16)
    out["wirelen"] = np.minimum(out["bytes"], 0xFFFFFFFF).astype(np.uint32)
    out["client_is_src"][:] = 1
    return out
