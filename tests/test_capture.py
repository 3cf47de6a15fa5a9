"""flowdiff.capture: pcap / pcapng / gzip reading, streaming, damage handling.

Captures are built byte by byte with struct here, and real ones come from tests/data (and from
../shared/pcaps when present). Expected values come from the inputs themselves or from a small,
slow, independent reference reader below (``ref_read``), never from the code under test.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import os
import re
import struct
import subprocess
import sys
import tempfile
import textwrap
import zlib
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowdiff.capture import (
    CaptureReader,
    CaptureStats,
    Damage,
    RecordBatch,
    _units_to_ns,
    open_capture,
    sniff_capture,
)
from flowdiff.errors import CaptureError

DATA = Path(__file__).resolve().parent / "data"
# ../shared/pcaps beside the project, also from a git worktree one folder deeper (../../shared)
SHARED = next(
    (
        b / "shared" / "pcaps"
        for b in Path(__file__).resolve().parents[2:4]
        if (b / "shared" / "pcaps").is_dir()
    ),
    Path(__file__).resolve().parents[2] / "shared" / "pcaps",
)
INT64_MAX = 2**63 - 1

# ---------------------------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------------------------


def pcap_header(
    *, big=False, nanos=False, linktype=1, snaplen=65535, version=(2, 4), modified=False, ltfield=None
):
    e = ">" if big else "<"
    magic = 0xA1B2CD34 if modified else (0xA1B23C4D if nanos else 0xA1B2C3D4)
    return struct.pack(
        e + "IHHiIII", magic, *version, 0, 0, snaplen, linktype if ltfield is None else ltfield
    )


def pcap_record(sec, frac, data, wirelen=None, *, big=False, modified=False, caplen=None):
    e = ">" if big else "<"
    hdr = struct.pack(
        e + "IIII",
        sec,
        frac,
        len(data) if caplen is None else caplen,
        len(data) if wirelen is None else wirelen,
    )
    if modified:
        hdr += struct.pack(e + "iHBx", 3, 0x0800, 0)
    return hdr + data


def pcap_file(records, **hdr):
    """records: (sec, frac, data, wirelen) tuples."""
    big, modified = hdr.get("big", False), hdr.get("modified", False)
    return pcap_header(**hdr) + b"".join(pcap_record(*r, big=big, modified=modified) for r in records)


def _pad(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def block(btype, body, *, big=False, blen=None, trailer=None):
    e = ">" if big else "<"
    body = _pad(body)
    n = 12 + len(body) if blen is None else blen
    return struct.pack(e + "II", btype, n) + body + struct.pack(e + "I", n if trailer is None else trailer)


def opt(code, value, *, big=False):
    e = ">" if big else "<"
    return struct.pack(e + "HH", code, len(value)) + _pad(value)


def shb(*, big=False, version=(1, 0), options=b""):
    e = ">" if big else "<"
    body = struct.pack(e + "IHHq", 0x1A2B3C4D, *version, -1) + options
    return block(0x0A0D0D0A, body, big=big)


def idb(linktype, snaplen=0, *, tsresol=None, tsoffset=None, big=False, options=b""):
    e = ">" if big else "<"
    opts = options
    if tsresol is not None:
        opts += opt(9, bytes([tsresol]), big=big)
    if tsoffset is not None:
        opts += opt(14, struct.pack(e + "q", tsoffset), big=big)
    if opts:
        opts += struct.pack(e + "HH", 0, 0)
    return block(1, struct.pack(e + "HHI", linktype, 0, snaplen) + opts, big=big)


def epb(ifid, units, data, wirelen=None, *, big=False, caplen=None):
    e = ">" if big else "<"
    n = len(data) if caplen is None else caplen
    hdr = struct.pack(
        e + "IIIII", ifid, units >> 32, units & 0xFFFFFFFF, n, len(data) if wirelen is None else wirelen
    )
    return block(6, hdr + data, big=big)


def opb(ifid, units, data, wirelen=None, *, big=False):
    e = ">" if big else "<"
    hdr = struct.pack(
        e + "HHIIII",
        ifid,
        0,
        units >> 32,
        units & 0xFFFFFFFF,
        len(data),
        len(data) if wirelen is None else wirelen,
    )
    return block(2, hdr + data, big=big)


def spb(data, wirelen=None, *, big=False):
    e = ">" if big else "<"
    return block(3, struct.pack(e + "I", len(data) if wirelen is None else wirelen) + data, big=big)


def payload(i: int, n: int) -> bytes:
    return bytes((i * 7 + j) & 0xFF for j in range(n))


# ---------------------------------------------------------------------------------------------------
# Independent reference reader (slow, simple, for well-formed input and for where damage starts)
# ---------------------------------------------------------------------------------------------------


def _to_ns(units: int, tsresol: int, off_s: int) -> int | None:
    base = 2 ** (tsresol & 0x7F) if tsresol & 0x80 else 10 ** (tsresol & 0x7F)
    ns, off = units * 10**9 // base, off_s * 10**9
    if ns > INT64_MAX or not -(2**63) <= off <= INT64_MAX:
        return None
    return ns + off if ns + off <= INT64_MAX else None


def _options(body: bytes, q: int, e: str) -> dict[int, bytes] | None:
    """First value of each option code; None when an option runs past the block (damage)."""
    opts: dict[int, bytes] = {}
    while q + 4 <= len(body):
        code, n = struct.unpack_from(e + "HH", body, q)
        if code == 0:
            break
        if q + 4 + n > len(body):
            return None
        opts.setdefault(code, body[q + 4 : q + 4 + n])
        q += 4 + n + (-n % 4)
    return opts


PCAP_LE = (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1")
PCAP_BE = (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d")


def ref_read(data: bytes):
    """-> (records [(bytes, caplen, wirelen, ts_ns, linktype)], skipped Counter, offset where it stopped or None).

    Written from the format specifications, for files whose header is readable; "stopped" is where the
    structure first breaks (a length that does not fit, an option that overruns its block, ...).
    """
    recs, skipped = [], Counter()
    if data[:4] in PCAP_LE + PCAP_BE:
        e = "<" if data[:4] in PCAP_LE else ">"
        mult = 1 if data[:4] in (PCAP_LE[1], PCAP_BE[1]) else 1000
        snaplen, ltfield = struct.unpack_from(e + "II", data, 16)
        limit = max(1 << 20, min(snaplen, 16 << 20))
        p = 24
        while p < len(data):
            if len(data) - p < 16:
                return recs, skipped, p
            sec, frac, cap, wire = struct.unpack_from(e + "IIII", data, p)
            if cap > limit or p + 16 + cap > len(data):
                return recs, skipped, p
            # libpcap and tshark: seconds + fraction as a plain sum, an overflowing fraction included
            recs.append((data[p + 16 : p + 16 + cap], cap, wire, sec * 10**9 + frac * mult, ltfield & 0xFFFF))
            p += 16 + cap
        return recs, skipped, None
    p, e, ifs = 0, "<", []
    while p < len(data):
        if len(data) - p < 12:
            return recs, skipped, p
        btype = struct.unpack_from(e + "I", data, p)[0]
        be = e
        if btype == 0x0A0D0D0A:
            bom = data[p + 8 : p + 12]
            if bom not in (b"\x1a\x2b\x3c\x4d", b"\x4d\x3c\x2b\x1a"):
                return recs, skipped, p
            be = ">" if bom == b"\x1a\x2b\x3c\x4d" else "<"
        blen = struct.unpack_from(be + "I", data, p + 4)[0]
        if blen < 12 or blen % 4 or blen > 16 << 20 or p + blen > len(data):
            return recs, skipped, p
        if struct.unpack_from(be + "I", data, p + blen - 4)[0] != blen:
            return recs, skipped, p
        body = data[p + 8 : p + blen - 4]
        if btype == 0x0A0D0D0A:
            e = be
            if blen < 28 or struct.unpack_from(e + "H", body, 4)[0] != 1 or _options(body, 16, e) is None:
                return recs, skipped, p
            ifs = []
        elif btype == 1:
            opts = _options(body, 8, e) if blen >= 20 else None
            if opts is None:
                return recs, skipped, p
            lt, _, snap = struct.unpack_from(e + "HHI", body)
            res = opts[9][0] if opts.get(9) else 6
            off = struct.unpack(e + "q", opts[14][:8])[0] if len(opts.get(14, b"")) >= 8 else 0
            ifs.append((lt, snap, res, off))
        elif btype in (2, 6):
            if blen < 32:
                return recs, skipped, p
            if btype == 6:
                ifid, hi, lo, cap, wire = struct.unpack_from(e + "IIIII", body)
            else:
                ifid, _, hi, lo, cap, wire = struct.unpack_from(e + "HHIIII", body)
            if cap > len(body) - 20:
                return recs, skipped, p
            if ifid >= len(ifs):
                skipped["unknown-interface"] += 1
            else:
                ts = _to_ns((hi << 32) | lo, ifs[ifid][2], ifs[ifid][3])
                if ts is None:
                    skipped["bad-timestamp"] += 1
                else:
                    recs.append((body[20 : 20 + cap], cap, wire, ts, ifs[ifid][0]))
        elif btype == 3:
            if blen < 16:
                return recs, skipped, p
            (wire,) = struct.unpack_from(e + "I", body)
            cap = min(wire, len(body) - 4)
            if ifs and ifs[0][1]:
                cap = min(cap, ifs[0][1])
            if not ifs:
                skipped["unknown-interface"] += 1
            else:
                recs.append((body[4 : 4 + cap], cap, wire, 0, ifs[0][0]))
        p += blen
    return recs, skipped, None


# ---------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------


def read_all(path, **kw):
    """All records as (bytes, caplen, wirelen, ts_ns, linktype), the stats, and the number of batches."""
    reader = open_capture(path)
    out, n_batches = [], 0
    for b in reader.batches(**kw):
        assert isinstance(b, RecordBatch) and len(b) > 0
        assert b.buf.dtype == np.uint8 and b.offset.dtype == np.int64 and b.caplen.dtype == np.uint32
        assert b.wirelen.dtype == np.uint32 and b.ts_ns.dtype == np.int64 and b.linktype.dtype == np.uint16
        assert len(b.caplen) == len(b.wirelen) == len(b.ts_ns) == len(b.linktype) == len(b)
        assert np.all(b.offset + b.caplen <= len(b.buf))
        n_batches += 1
        for o, c, w, t, lt in zip(
            b.offset.tolist(),
            b.caplen.tolist(),
            b.wirelen.tolist(),
            b.ts_ns.tolist(),
            b.linktype.tolist(),
            strict=True,
        ):
            out.append((b.buf[o : o + c].tobytes(), c, w, t, lt))
    return out, reader.stats, n_batches


def write(tmp_path, name, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


# ---------------------------------------------------------------------------------------------------
# pcap
# ---------------------------------------------------------------------------------------------------

SAMPLE = [
    (1_600_000_000 + i, (i * 123_457) % 1_000_000, payload(i, 40 + 13 * i), 60 + 100 * i) for i in range(6)
]


@pytest.mark.parametrize("big", [False, True], ids=["le", "be"])
@pytest.mark.parametrize("nanos", [False, True], ids=["us", "ns"])
def test_pcap_fields_exact(tmp_path, big, nanos):
    path = write(tmp_path, "a.pcap", pcap_file(SAMPLE, big=big, nanos=nanos, linktype=113, snaplen=96))
    reader = open_capture(path)
    assert isinstance(reader, CaptureReader) and reader.stats.format == "pcap" and reader.stats.records == 0
    recs, stats, _ = read_all(path)
    mult = 1 if nanos else 1000
    assert recs == [(d, len(d), w, s * 10**9 + f * mult, 113) for s, f, d, w in SAMPLE]
    assert stats.format == "pcap" and stats.records == len(SAMPLE) and stats.linktypes == {113}
    assert not stats.damage and not stats.skipped
    assert stats.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert stats.bytes_read == path.stat().st_size


def test_pcap_wirelen_is_not_caplen(tmp_path):
    """Header-only captures (-s 96): wirelen keeps the length on the wire."""
    path = write(
        tmp_path,
        "s.pcap",
        pcap_file([(1, 0, payload(1, 96), 1514), (2, 0, payload(2, 96), 9000)], snaplen=96),
    )
    recs, _, _ = read_all(path)
    assert [(r[1], r[2]) for r in recs] == [(96, 1514), (96, 9000)]


def test_pcap_seconds_are_unsigned(tmp_path):
    path = write(tmp_path, "t.pcap", pcap_file([(0xFFFFFFFF, 999_999, b"x", 1), (0x80000000, 0, b"y", 1)]))
    recs, _, _ = read_all(path)
    assert [r[3] for r in recs] == [0xFFFFFFFF * 10**9 + 999_999_000, 0x80000000 * 10**9]
    assert datetime.fromtimestamp(recs[0][3] // 10**9, UTC).year == 2106


@pytest.mark.parametrize("big", [False, True], ids=["le", "be"])
@pytest.mark.parametrize("nanos", [False, True], ids=["us", "ns"])
def test_pcap_subsecond_overflow_carries_into_the_seconds(tmp_path, nanos, big):
    """Old capture tools wrote records with 1,000,000 or more microseconds (10^9 or more nanoseconds);
    libpcap and tshark count them at seconds + fraction, a plain sum, and so does flowdiff."""
    limit = 10**9 if nanos else 10**6
    unit = 1 if nanos else 1000
    recs_in = [(10, limit - 1, b"a", 1), (11, limit, b"b", 1), (12, 0xFFFFFFFF, b"c", 1), (13, 0, b"d", 1)]
    for modified in [False, True] if not nanos else [False]:
        recs, stats, _ = read_all(
            write(tmp_path, "t.pcap", pcap_file(recs_in, nanos=nanos, big=big, modified=modified))
        )
        assert [r[0] for r in recs] == [b"a", b"b", b"c", b"d"]
        assert [r[3] for r in recs] == [
            10 * 10**9 + (limit - 1) * unit,
            12 * 10**9,  # 11 s + one whole second
            12 * 10**9 + 0xFFFFFFFF * unit,  # 4294.967295 s later (4.294967295 s in a nanosecond file)
            13 * 10**9,
        ]
        assert not stats.skipped and not stats.damage


def test_pcap_linktype_is_low_16_bits_fcs_bits_ignored(tmp_path):
    # 0x30000065: FCS length bits (28-31) set, link type RAW (101), like bad/tcpdump__heap-overflow-1.pcap
    recs, stats, _ = read_all(write(tmp_path, "f.pcap", pcap_file([(1, 0, b"\x45", 1)], ltfield=0x30000065)))
    assert recs[0][4] == 101 and stats.linktypes == {101}


def test_pcap_reserved_linktype_bits_refuse_the_file(tmp_path):
    path = write(tmp_path, "r.pcap", pcap_file([(1, 0, b"x", 1)], ltfield=0x00300000))
    with pytest.raises(CaptureError, match="reserved bits") as ei:
        open_capture(path)
    assert ei.value.offset == 20 and ei.value.path == str(path)


@pytest.mark.parametrize(
    ("version", "ok"), [((2, 4), True), ((2, 5), True), ((2, 2), True), ((1, 4), False), ((3, 0), False)]
)
def test_pcap_versions(tmp_path, version, ok):
    path = write(tmp_path, "v.pcap", pcap_file([(1, 0, b"x", 1)], version=version))
    if ok:
        assert len(read_all(path)[0]) == 1
    else:
        with pytest.raises(CaptureError, match=r"version \d\.\d"):
            open_capture(path)


def test_pcap_modified_format(tmp_path):
    """Kuznetzov's patched libpcap: 24-byte record headers, same magic family."""
    recs, stats, _ = read_all(write(tmp_path, "m.pcap", pcap_file(SAMPLE[:3], modified=True)))
    assert recs == [(d, len(d), w, s * 10**9 + f * 1000, 1) for s, f, d, w in SAMPLE[:3]]


def test_pcap_caplen_over_wirelen_and_zero_length_records_are_kept(tmp_path):
    recs, stats, _ = read_all(
        write(tmp_path, "z.pcap", pcap_file([(1, 0, b"", 0), (2, 0, b"abcdef", 2)], snaplen=4))
    )
    assert [(r[0], r[1], r[2]) for r in recs] == [(b"", 0, 0), (b"abcdef", 6, 2)] and not stats.damage


def test_pcap_bogus_caplen_is_damage_after_good_records(tmp_path):
    good = pcap_file(SAMPLE[:3])
    data = good + struct.pack("<IIII", 5, 0, 0x7FFFFFFF, 60) + b"\0" * 100 + pcap_record(*SAMPLE[3])
    path = write(tmp_path, "b.pcap", data)
    recs, stats, _ = read_all(path)
    assert len(recs) == 3 and stats.records == 3
    assert [(d.offset, "bogus captured length 2147483647" in d.message) for d in stats.damage] == [
        (len(good), True)
    ]
    assert str(stats.damage[0]) == f"{path} at byte {len(good)}: {stats.damage[0].message}"
    assert stats.sha256 == hashlib.sha256(data).hexdigest()  # the hash still covers the whole file


def test_pcap_truncated_at_every_offset(tmp_path):
    data = pcap_file(SAMPLE)
    ends = np.cumsum([24] + [16 + len(d) for _, _, d, _ in SAMPLE]).tolist()
    path = tmp_path / "cut.pcap"
    for cut in range(len(data) + 1):
        path.write_bytes(data[:cut])
        if cut < 24:
            with pytest.raises(CaptureError):
                open_capture(path)
            continue
        recs, stats, _ = read_all(path, chunk_bytes=64)
        complete = sum(e <= cut for e in ends) - 1
        assert [r[0] for r in recs] == [d for _, _, d, _ in SAMPLE[:complete]], cut
        if cut in ends:
            assert not stats.damage, cut
        else:
            assert [d.offset for d in stats.damage] == [ends[complete]], cut
            assert "cut short" in stats.damage[0].message


# ---------------------------------------------------------------------------------------------------
# pcapng
# ---------------------------------------------------------------------------------------------------


def multi_interface_pcapng():
    """Two sections (LE then BE), interfaces with different link types and resolutions, every packet block
    type, and blocks that carry no packet. Returns (bytes, expected records, expected skips)."""
    d = [payload(i, 20 + 7 * i) for i in range(10)]
    parts = [
        shb(options=opt(4, b"flowdiff test") + struct.pack("<HH", 0, 0)),
        idb(1, 65535),  # us (default)
        idb(0, 0, tsresol=9),  # ns
        idb(101, 0, tsresol=0x80 | 20, tsoffset=1000),  # 2^-20 s, +1000 s
        epb(0, 1_700_000_000_123_456, d[0], 1500),
        epb(1, 1_700_000_000_123_456_789, d[1]),
        epb(2, (1_700_000_000 << 20) + 12345, d[2], 200),
        block(0x00000BAD, b"custom block with a PEN" + b"\0" * 5),  # custom block: skipped
        block(4, struct.pack("<HH", 0, 0)),  # name resolution block: skipped
        spb(d[3]),
        spb(d[4] + b"\xff" * 3, wirelen=len(d[4])),  # trailing junk beyond the original length
        opb(1, 5_000_000_000, d[5], 77),
        block(5, struct.pack("<III", 0, 0, 0)),  # interface statistics: skipped
        block(0x12345678, b"unknown"),
        epb(7, 1, d[6]),  # no interface 7: skipped, counted
        shb(big=True),
        idb(113, 0, tsresol=3, big=True),  # ms, big-endian section; interface ids start again
        epb(0, 1_700_000_000_999, d[7], 90, big=True),
        epb(1, 1, d[8], big=True),  # interface 1 does not exist in this section
        spb(d[9], big=True),
    ]
    expected = [
        (d[0], len(d[0]), 1500, 1_700_000_000_123_456_000, 1),
        (d[1], len(d[1]), len(d[1]), 1_700_000_000_123_456_789, 0),
        (d[2], len(d[2]), 200, 1_700_000_000 * 10**9 + 12345 * 10**9 // 2**20 + 1000 * 10**9, 101),
        (d[3], len(d[3]), len(d[3]), 0, 1),
        (d[4], len(d[4]), len(d[4]), 0, 1),
        (d[5], len(d[5]), 77, 5_000_000_000, 0),
        (d[7], len(d[7]), 90, 1_700_000_000_999_000_000, 113),
        (d[9], len(d[9]), len(d[9]), 0, 113),
    ]
    return b"".join(parts), expected, Counter({"unknown-interface": 2})


def test_pcapng_multi_interface_multi_section(tmp_path):
    data, expected, skips = multi_interface_pcapng()
    path = write(tmp_path, "m.pcapng", data)
    recs, stats, _ = read_all(path)
    assert recs == expected
    assert stats.skipped == skips and not stats.damage
    assert stats.format == "pcapng" and stats.linktypes == {0, 1, 101, 113}
    assert stats.other_blocks == 4 and stats.records == len(expected)
    assert stats.sha256 == hashlib.sha256(data).hexdigest()
    assert ref_read(data) == (expected, skips, None)  # the reference reader agrees


def test_pcapng_spb_caplen_is_bounded_by_snaplen(tmp_path):
    data = shb() + idb(1, 64) + spb(payload(1, 100), wirelen=1000)
    recs, _, _ = read_all(write(tmp_path, "s.pcapng", data))
    assert [(r[0], r[1], r[2], r[3]) for r in recs] == [(payload(1, 64), 64, 1000, 0)]


@pytest.mark.parametrize(
    ("tsresol", "units", "expected"),
    [
        (6, 2**62, None),  # microseconds beyond int64 ns (year 148,000)
        (9, 2**63, None),
        (9, 2**63 - 1, 2**63 - 1),
        (6, 4_294_967_296_000_000, 4_294_967_296 * 10**9),  # 2106-02-07T06:28:16Z: fits, kept
        (12, 10**18 + 999, 10**15),  # picoseconds
        (0x80 | 32, 3 << 32 | 1 << 31, 3_500_000_000),
        (0x80 | 100, 2**64 - 1, 0),
        (127, 2**64 - 1, 0),
        (0, 9_223_372_036, 9_223_372_036 * 10**9),
        (0, 9_223_372_037, None),
    ],
)
def test_pcapng_time_stamp_conversion(tmp_path, tsresol, units, expected):
    data = shb() + idb(1, tsresol=tsresol) + epb(0, units, b"x")
    recs, stats, _ = read_all(write(tmp_path, "t.pcapng", data))
    if expected is None:
        assert recs == [] and stats.skipped == Counter({"bad-timestamp": 1})
    else:
        assert [r[3] for r in recs] == [expected] and not stats.skipped


def test_pcapng_tsoffset_out_of_range(tmp_path):
    data = shb() + idb(1, tsoffset=2**62) + epb(0, 1, b"x") + idb(1, tsoffset=-5) + epb(1, 10_000_000, b"y")
    recs, stats, _ = read_all(write(tmp_path, "o.pcapng", data))
    assert [r[3] for r in recs] == [5 * 10**9] and stats.skipped == Counter({"bad-timestamp": 1})


@given(
    units=st.integers(0, 2**64 - 1),
    kind=st.integers(0, 1),
    exp=st.integers(0, 127),
    off_s=st.sampled_from([0, 1, -1, 10**9, -(10**9), 2**33]),
)
@settings(max_examples=400, deadline=None)
def test_time_stamp_conversion_is_exact(units, kind, exp, off_s):
    ok, ns = _units_to_ns(units >> 32, units & 0xFFFFFFFF, kind, exp, off_s * 10**9)
    expected = _to_ns(units, (0x80 if kind else 0) | exp, off_s)
    raw = units * 10**9 // (2**exp if kind else 10**exp)
    if raw > INT64_MAX:  # documented: the time stamp itself must fit before if_tsoffset is added
        assert not ok
    else:
        assert (ok, ns if ok else None) == (expected is not None, expected)


def test_pcapng_truncated_at_every_offset(tmp_path):
    data, _, _ = multi_interface_pcapng()
    ref_all = ref_read(data)[0]
    path = tmp_path / "cut.pcapng"
    first_shb = struct.unpack_from("<I", data, 4)[0]
    for cut in range(len(data) + 1):
        path.write_bytes(data[:cut])
        if cut < first_shb:
            with pytest.raises(CaptureError):
                open_capture(path)
            continue
        recs, stats, _ = read_all(path, chunk_bytes=64)
        ref_recs, ref_skips, ref_stop = ref_read(data[:cut])
        assert recs == ref_recs and recs == ref_all[: len(recs)], cut
        assert stats.skipped == ref_skips, cut
        assert [d.offset for d in stats.damage] == ([] if ref_stop is None else [ref_stop]), cut


def test_pcapng_damaged_blocks(tmp_path):
    head = shb() + idb(1)
    good = epb(0, 1, b"good")
    cases = {
        "bad block length": block(6, b"\0" * 24, blen=30),
        "block length trailer": block(6, struct.pack("<IIIII", 0, 0, 0, 4, 4) + b"abcd", trailer=40),
        "runs past the end of its packet block": epb(0, 1, b"abcd", caplen=400),
        "bogus block length": block(6, b"\0" * 24, blen=0x7FFFFFF0),
        "too short": block(6, b"\0" * 8),
        "option 9 of length 200": idb(
            1, options=opt(9, b"\x06")[:2] + struct.pack("<H", 200) + b"\x06\0\0\0"
        ),
        "unsupported pcapng version 2.0": shb(version=(2, 0)),
        "byte-order magic": block(0x0A0D0D0A, struct.pack("<IHHq", 0x11223344, 1, 0, -1)),
    }
    for needle, bad in cases.items():
        path = write(tmp_path, "d.pcapng", head + good + bad + good)
        recs, stats, _ = read_all(path)
        assert [r[0] for r in recs] == [b"good"], needle
        assert len(stats.damage) == 1 and needle in stats.damage[0].message, (needle, stats.damage)
        assert stats.damage[0].offset >= len(head + good), needle


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (shb(version=(0, 1)), "version 0.1"),
        (shb(options=struct.pack("<HH", 4, 400) + b"abcd"), "runs past the end"),
        (shb()[:20], "trailer does not match"),  # the next block's bytes are no trailer
        (block(0x0A0D0D0A, struct.pack("<IHHq", 0x01020304, 1, 0, -1)), "byte-order magic"),
        (block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1), trailer=99), "trailer"),
    ],
)
def test_pcapng_unreadable_first_section_is_capture_error(tmp_path, data, needle):
    with pytest.raises(CaptureError, match=needle):
        open_capture(write(tmp_path, "x.pcapng", data + idb(1) + epb(0, 1, b"x")))


# ---------------------------------------------------------------------------------------------------
# Streaming: chunk boundaries, big records, buffer reuse
# ---------------------------------------------------------------------------------------------------


def _big_mixed(n=300):
    recs = [(1_000 + i, i, payload(i, (i * 37) % 300), 1500) for i in range(n)]
    recs.insert(n // 2, (5_000, 7, payload(99, 70_000), 70_000))  # larger than any small chunk
    return recs


@pytest.mark.parametrize("threaded", [False, True])
@pytest.mark.parametrize("chunk", [64, 1000, 4096, 1 << 20])
def test_chunking_never_changes_records(tmp_path, chunk, threaded):
    recs_in = _big_mixed()
    data = pcap_file(recs_in, nanos=True)
    ng = shb() + idb(1, tsresol=9) + b"".join(epb(0, s * 10**9 + f, d, w) for s, f, d, w in recs_in)
    for name, blob in (("a.pcap", data), ("a.pcapng", ng)):
        path = write(tmp_path, name, blob)
        recs, stats, n_batches = read_all(path, chunk_bytes=chunk, threaded=threaded)
        assert recs == [(d, len(d), w, s * 10**9 + f, 1) for s, f, d, w in recs_in], name
        assert not stats.damage and stats.sha256 == hashlib.sha256(blob).hexdigest()
        assert n_batches > 1 if chunk < 1 << 20 else n_batches >= 1


def test_kept_batches_stay_valid(tmp_path):
    """Chunk buffers are recycled, but never while a consumer still holds a batch pointing into them."""
    recs_in = _big_mixed(2000)
    path = write(tmp_path, "k.pcap", pcap_file(recs_in))
    reader = open_capture(path)
    kept = list(reader.batches(chunk_bytes=4096))
    assert len(kept) > 10
    got = [
        b.buf[o : o + c].tobytes()
        for b in kept
        for o, c in zip(b.offset.tolist(), b.caplen.tolist(), strict=True)
    ]
    assert got == [d for _, _, d, _ in recs_in]
    # the same file again (buffers now in the pool) gives the same result
    assert [r[0] for r in read_all(path, chunk_bytes=4096)[0]] == got


def test_batches_restart_and_early_stop(tmp_path):
    path = write(tmp_path, "r.pcap", pcap_file(_big_mixed()))
    reader = open_capture(path)
    it = reader.batches(chunk_bytes=4096, threaded=True)
    first = next(it)
    it.close()  # stopping early: no hash, no hang, the helper thread ends
    assert len(first) > 0 and reader.stats.sha256 is None
    total = sum(len(b) for b in reader.batches(chunk_bytes=4096))
    assert total == reader.stats.records == len(_big_mixed()) and reader.stats.sha256 is not None


# ---------------------------------------------------------------------------------------------------
# gzip
# ---------------------------------------------------------------------------------------------------


def test_gzip_detected_by_magic_not_name(tmp_path):
    plain, expected, skips = multi_interface_pcapng()
    path = write(tmp_path, "looks-plain.pcapng", gzip.compress(plain))
    recs, stats, _ = read_all(path, chunk_bytes=100)
    assert recs == expected and stats.skipped == skips
    assert stats.format == "pcapng, gzip"
    assert stats.sha256 == hashlib.sha256(plain).hexdigest() and stats.bytes_read == len(plain)
    assert stats.file_bytes_read == path.stat().st_size
    # and a plain file named .gz is read as what it is
    recs2, stats2, _ = read_all(write(tmp_path, "x.pcap.gz", pcap_file(SAMPLE)))
    assert len(recs2) == len(SAMPLE) and stats2.format == "pcap"


@pytest.mark.parametrize("frac", [0.3, 0.66, 0.999])
def test_gzip_cut_short_keeps_every_decompressible_record(tmp_path, frac):
    plain = pcap_file(_big_mixed())
    gz = gzip.compress(plain)
    cut = gz[: int(len(gz) * frac)]
    path = write(tmp_path, "c.pcap.gz", cut)
    readable = zlib.decompressobj(31).decompress(cut)  # all that can be decompressed before the cut
    for chunk in (4096, 1 << 20):
        recs, stats, _ = read_all(path, chunk_bytes=chunk)
        assert recs == ref_read(readable)[0] and 0 < len(recs) <= len(ref_read(plain)[0])
        assert [d.offset for d in stats.damage] == [len(readable)] and "gzip" in stats.damage[0].message
        assert stats.sha256 is None and stats.bytes_read == len(readable)
        assert stats.file_bytes_read == len(cut)


def test_gzip_corrupt_data_is_damage_not_traceback(tmp_path):
    plain = pcap_file(_big_mixed())
    gz = bytearray(gzip.compress(plain, compresslevel=1))
    gz[len(gz) // 2 : len(gz) // 2 + 8] = b"\xff" * 8
    recs, stats, _ = read_all(write(tmp_path, "c.pcap.gz", bytes(gz)), chunk_bytes=4096)
    assert recs == ref_read(plain)[0][: len(recs)] and len(stats.damage) == 1


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (gzip.compress(b"just some text, not a capture"), "not a pcap or pcapng capture"),
        (gzip.compress(b""), "empty"),
        (b"\x1f\x8b\x08\x00garbage", "gzip"),
        (b"\x1f\x8b", "gzip"),
    ],
)
def test_gzip_unreadable(tmp_path, content, needle):
    with pytest.raises(CaptureError, match=needle):
        open_capture(write(tmp_path, "g.gz", content))


# ---------------------------------------------------------------------------------------------------
# Files that cannot be read at all, sniffing
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"", "empty file"),
        (b"\xd4\xc3\xb2\xa1\x02\x00", "too short for a pcap header"),
        (b"hello, this is not a capture\n" * 10, "not a pcap or pcapng capture"),
        (b"\x0a\x0d\x0d\x0a\x1c", "too short"),
        (shb()[:20], "cut short"),
    ],
)
def test_unreadable_files(tmp_path, content, needle):
    path = write(tmp_path, "bad.pcap", content)
    with pytest.raises(CaptureError, match=needle) as ei:
        open_capture(path)
    assert str(path) in str(ei.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CaptureError, match="cannot open"):
        open_capture(tmp_path / "nope.pcap")
    with pytest.raises(CaptureError, match="directory"):
        open_capture(tmp_path)


def test_sniff_capture(tmp_path):
    assert sniff_capture(write(tmp_path, "a", pcap_file(SAMPLE)))
    assert sniff_capture(write(tmp_path, "b", pcap_file(SAMPLE, big=True, nanos=True)))
    assert sniff_capture(write(tmp_path, "c", multi_interface_pcapng()[0]))
    assert sniff_capture(write(tmp_path, "d", gzip.compress(pcap_file(SAMPLE))))
    assert not sniff_capture(write(tmp_path, "e", gzip.compress(b"log line\n")))
    assert not sniff_capture(write(tmp_path, "f", b"README"))
    assert not sniff_capture(write(tmp_path, "g", b""))
    assert not sniff_capture(tmp_path / "missing")
    assert not sniff_capture(tmp_path)


def test_public_types():
    d = Damage("x.pcap", 597, "bogus captured length 2147483647 in record header")
    assert str(d) == "x.pcap at byte 597: bogus captured length 2147483647 in record header"
    s = CaptureStats(path="x.pcap")
    assert s.records == 0 and s.sha256 is None and s.skipped == Counter() and s.damage == []
    assert len(RecordBatch(*(np.empty(0),) * 6)) == 0


# ---------------------------------------------------------------------------------------------------
# Real captures: tests/data always, ../shared/pcaps when present
# ---------------------------------------------------------------------------------------------------


def _manifest() -> dict[str, int]:
    """Record counts of the corpus: the structural count when the manifest gives one, else tshark's."""
    counts = {}
    for line in (SHARED / "MANIFEST.md").read_text().splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 8 and cells[1].startswith("`"):
            m = re.search(r"(\d+) packet records by structure", cells[7]) or re.match(r"(\d+)", cells[7])
            counts[cells[1].strip("`")] = int(m.group(1))
    return counts


def _manifest_sha() -> dict[str, str]:
    text = (SHARED / "MANIFEST.md").read_text()
    return {m.group(2): m.group(1) for m in re.finditer(r"^([0-9a-f]{64})  (\S+)$", text, re.M)}


def _oracle_i60(path: Path) -> dict[int, tuple[int, int]]:
    per: dict[int, list[int]] = {}
    with path.open() as f:
        for row in csv.DictReader(f):
            t = int(
                datetime.strptime(row["interval_start"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
            )
            acc = per.setdefault(t, [0, 0])
            acc[0] += int(row["packets"])
            acc[1] += int(row["bytes"])
    return {k: (v[0], v[1]) for k, v in per.items()}


def _check_against_oracle(capture: Path, oracle: Path) -> bool:
    """Per 60 s interval: we have at least the oracle's IP frames and bytes; exactly them when the
    capture holds nothing but IP frames (same total count). Returns whether the exact check applied."""
    recs, stats, _ = read_all(capture)
    assert not stats.damage and not stats.skipped
    ours: dict[int, list[int]] = {}
    for r in recs:
        acc = ours.setdefault(r[3] // 10**9 // 60 * 60, [0, 0])
        acc[0] += 1
        acc[1] += r[2]
    ref = _oracle_i60(oracle)
    exact = sum(p for p, _ in ref.values()) == len(recs)
    for t, (p, b) in ref.items():
        assert t in ours, (capture.name, t)
        if exact:
            assert tuple(ours[t]) == (p, b), (capture.name, t)
        else:
            assert ours[t][0] >= p and ours[t][1] >= b, (capture.name, t)
    if exact:
        assert set(ours) == set(ref)
    return exact


LOCAL = sorted(p for p in DATA.glob("*.pcap*") if not p.name.endswith(".csv"))


@pytest.mark.parametrize("capture", LOCAL, ids=[p.name for p in LOCAL])
def test_local_captures_agree_with_reference_reader_and_oracle(capture):
    raw = capture.read_bytes()
    plain = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    recs, stats, _ = read_all(capture, chunk_bytes=512)
    ref_recs, ref_skips, ref_stop = ref_read(plain)
    assert ref_stop is None and recs == ref_recs and stats.skipped == ref_skips and not stats.damage
    assert stats.sha256 == hashlib.sha256(plain).hexdigest()
    oracle = DATA / (capture.name.removesuffix(".gz") + ".oracle.i60.csv")
    if oracle.exists():
        _check_against_oracle(capture, oracle)


def test_local_captures_cover_the_formats():
    formats, linktypes = set(), set()
    for p in LOCAL:
        reader = open_capture(p)
        for b in reader.batches():
            linktypes.update(b.linktype.tolist())
        formats.add(reader.stats.format)
    assert {"pcap", "pcapng"} <= formats
    big_endian = [p for p in LOCAL if p.read_bytes()[:4] in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d")]
    nanos = [p for p in LOCAL if p.read_bytes()[:4] in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")]
    assert big_endian and nanos and len(linktypes) >= 10


@pytest.mark.parametrize("name", ["tcpdump__pptp.pcap", "pcapngtg__be__difficult__test202.pcapng"])
def test_real_capture_inside_gzip(tmp_path, name):
    plain = (DATA / name).read_bytes()
    recs, stats, _ = read_all(write(tmp_path, name + ".gz", gzip.compress(plain)), chunk_bytes=256)
    assert recs == read_all(DATA / name)[0] and recs
    assert stats.format.endswith(", gzip") and stats.sha256 == hashlib.sha256(plain).hexdigest()


def test_local_spb_only_capture_has_no_time(tmp_path):
    recs, stats, _ = read_all(DATA / "pcapngtg__le__basic__test010.pcapng")
    assert recs and {r[3] for r in recs} == {0}


def test_local_2106_capture():
    recs, _, _ = read_all(DATA / "tcpdump__time_2106_max.pcap")
    assert [datetime.fromtimestamp(r[3] // 10**9, UTC).isoformat() for r in recs] == [
        "2106-02-07T06:28:15+00:00"
    ]


@pytest.fixture(scope="module")
def shared():
    if not (SHARED / "good").is_dir():
        pytest.skip("../shared/pcaps is not present on this machine")
    return SHARED


def test_corpus_good(shared):
    counts, shas = _manifest(), _manifest_sha()
    exact = 0
    captures = sorted(p for p in (shared / "good").iterdir() if not p.name.endswith(".csv"))
    assert len(captures) >= 60
    for p in captures:
        recs, stats, _ = read_all(p)
        assert len(recs) == counts[p.name], p.name
        assert recs == ref_read(p.read_bytes())[0], p.name
        if p.name in shas:
            assert stats.sha256 == shas[p.name], p.name
        exact += _check_against_oracle(p, shared / "good" / f"{p.name}.oracle.i60.csv")
    assert exact >= len(captures) * 2 // 3  # most captures hold IP frames only: exact agreement


# How each file of bad/ is handled (design decisions, see flowdiff/capture.py's docstring):
#   a CaptureError naming the problem, or the good records then one Damage, or records skipped by reason.
REFUSED = {
    "libpcap__linktype-reserved-field-not-zero.pcap": "reserved bits",
    "libpcap__pcap-invalid-version-1.pcap": "version 1.4",
    "libpcap__pcapng-invalid-vers-1.pcapng": "version 0.1",
    "libpcap__shb-option-too-long.pcapng": "section header",
}
DAMAGED = {
    "derived__bogus_caplen.pcap": "bogus captured length",
    "derived__cut_mid_block.pcapng": "block cut short",
    "derived__cut_mid_packet.pcap": "record cut short",
    "dpkt__truncated_dns_2.pcap": "record header cut short",
}
SKIPPED: dict[str, Counter] = {}  # tcpdump__timestamp_invalid_nano.pcap: its records are all counted now


def _bad_files():
    local = sorted(p for p in (DATA / "bad").iterdir() if not p.name.endswith(".csv"))
    shared_bad = sorted((SHARED / "bad").iterdir()) if (SHARED / "bad").is_dir() else []
    return [pytest.param(p, id=f"{p.parent.parent.name}/{p.name}") for p in local + shared_bad]


@pytest.mark.parametrize("path", _bad_files())
def test_bad_corpus(path):
    if path.name in REFUSED:
        with pytest.raises(CaptureError, match=REFUSED[path.name]) as ei:
            open_capture(path)
        assert str(path) in str(ei.value)
        return
    data = path.read_bytes()
    ref_recs, ref_skips, ref_stop = ref_read(data)
    recs, stats, _ = read_all(path, chunk_bytes=256)
    assert recs == ref_recs  # every good record before the damage, nothing after it
    assert stats.skipped == SKIPPED.get(path.name, Counter()) == ref_skips
    if path.name in DAMAGED:
        assert len(stats.damage) == 1 and DAMAGED[path.name] in stats.damage[0].message
        assert stats.damage[0].offset == ref_stop
    else:
        assert not stats.damage and ref_stop is None
    if (SHARED / "MANIFEST.md").exists():
        assert stats.records == _manifest()[path.name] - sum(stats.skipped.values())
    assert stats.sha256 == hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------------
# Property tests: garbage, truncation, byte flips
# ---------------------------------------------------------------------------------------------------

MAGICS = [
    b"",
    b"\xd4\xc3\xb2\xa1\x02\x00\x04\x00",
    b"\xa1\xb2\x3c\x4d\x00\x02\x00\x04",
    b"\x0a\x0d\x0d\x0a",
    b"\x1f\x8b",
]


@pytest.fixture(scope="module")
def hyp_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hypothesis")


def _read_or_refuse(data: bytes, chunk: int, where: Path):
    """No exception but CaptureError; iteration ends; returns (records, stats) or None when refused."""
    path = where / "h.bin"
    path.write_bytes(data)
    try:
        reader = open_capture(path)
    except CaptureError as exc:
        assert exc.path == str(path)
        return None
    recs = []
    for b in reader.batches(chunk_bytes=chunk, threaded=False):
        assert np.all(b.offset + b.caplen <= len(b.buf)) and np.all(b.offset >= 0)
        recs += [
            b.buf[o : o + c].tobytes() for o, c in zip(b.offset.tolist(), b.caplen.tolist(), strict=True)
        ]
    st_ = reader.stats
    assert st_.records == len(recs) and len(st_.damage) <= 1
    for d in st_.damage:
        assert 0 <= d.offset <= len(data) or data[:2] == b"\x1f\x8b"
    return recs, st_


@given(
    prefix=st.sampled_from(MAGICS), body=st.binary(max_size=600), chunk=st.sampled_from([64, 256, 1 << 16])
)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_garbage_never_crashes(hyp_dir, prefix, body, chunk):
    data = prefix + body
    out = _read_or_refuse(data, chunk, hyp_dir)
    if out is not None:
        assert len(out[0]) <= len(data) // 16


_VALID = {
    "pcap": pcap_file(SAMPLE),
    "pcap-be-ns": pcap_file(SAMPLE, big=True, nanos=True),
    "pcapng": multi_interface_pcapng()[0],
}


@given(kind=st.sampled_from(sorted(_VALID)), data=st.data(), chunk=st.sampled_from([64, 256, 1 << 16]))
@settings(max_examples=200, deadline=None)
def test_truncated_captures_never_gain_records(hyp_dir, kind, data, chunk):
    blob = _VALID[kind]
    cut = data.draw(st.integers(0, len(blob)))
    gz = data.draw(st.booleans())
    full = ref_read(blob)[0]
    out = _read_or_refuse(gzip.compress(blob)[:cut] if gz else blob[:cut], chunk, hyp_dir)
    if out is not None:
        assert out[0] == [r[0] for r in full[: len(out[0])]]


@given(kind=st.sampled_from(sorted(_VALID)), data=st.data(), chunk=st.sampled_from([64, 256, 1 << 16]))
@settings(max_examples=200, deadline=None)
def test_byte_flips_never_crash(hyp_dir, kind, data, chunk):
    """Flipped bytes may turn one record into several (a smaller caplen exposes packet bytes as headers),
    so the bound here is physical: at most one record per 16 bytes."""
    blob = bytearray(_VALID[kind])
    for _ in range(data.draw(st.integers(1, 8))):
        blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    out = _read_or_refuse(bytes(blob), chunk, hyp_dir)
    if out is not None:
        assert len(out[0]) <= len(blob) // 16
        ref_recs, ref_skips, ref_stop = ref_read(bytes(blob))
        assert out[0] == [r[0] for r in ref_recs] and out[1].skipped == ref_skips
        # damage where the reference stops; an overrunning option is reported at the option itself
        assert [d.offset >= ref_stop for d in out[1].damage] == ([] if ref_stop is None else [True])


# ---------------------------------------------------------------------------------------------------
# numba does not check bounds: run the compiled walkers with bounds checking on exact-size inputs
# ---------------------------------------------------------------------------------------------------

_BOUNDSCHECK_SCRIPT = textwrap.dedent(
    """
    import random, sys
    import numba
    import numpy as np
    from flowdiff import capture as C

    def outs(n):
        m = n // 16 + 1
        return (np.empty(m, np.int64), np.empty(m, np.uint32), np.empty(m, np.uint32), np.empty(m, np.int64),
                np.empty(m, np.uint16))

    def walk_pcap(blob):
        buf = np.frombuffer(blob, np.uint8).copy()
        for big in (False, True):
            for hdr in (16, 24):
                off, cap, wire, ts, _ = outs(len(buf))
                C._walk_pcap(buf, min(24, len(buf)), len(buf), big, hdr, 1000, 1 << 20, off, cap, wire, ts, 0,
                             np.zeros(3, np.int64))

    def walk_pcapng(blob, rnd):
        buf = np.frombuffer(blob, np.uint8).copy()
        n_if = rnd.randint(0, 3)
        lt = np.array([1, 0, 101][: max(n_if, 1)], np.uint16)
        snap = np.array([0, 64, 1][: max(n_if, 1)], np.int64)
        kind = np.array([0, 1, 2][: max(n_if, 1)], np.int64)
        exp = np.array([6, 127, 30][: max(n_if, 1)], np.int64)
        tso = np.array([0, 10**18, -(10**18)][: max(n_if, 1)], np.int64)
        off, cap, wire, ts, ltout = outs(len(buf))
        pos, k, big = 0, 0, False
        for _ in range(10000):
            k, pos, status, code, detail = C._walk_pcapng(buf, pos, len(buf), big, lt, snap, kind, exp, tso, n_if,
                                                          off, cap, wire, ts, ltout, k, np.zeros(3, np.int64))
            if status in (2, 3):  # SHB / IDB: complete, skip it
                big = not big if status == 2 and rnd.random() < 0.3 else big
                pos += detail
                continue
            break

    @numba.njit
    def overrun(a, i):
        return a[i]

    try:  # proves that bounds checking is really on in this process
        overrun(np.zeros(4, np.uint8), 4)
        sys.exit("NUMBA_BOUNDSCHECK is not in effect")
    except IndexError:
        pass

    rnd = random.Random(7)
    inputs = [open(p, "rb").read() for p in sys.argv[1:]]
    n = 0
    for blob in inputs:
        cuts = range(len(blob) + 1) if len(blob) < 3000 else rnd.sample(range(len(blob) + 1), 3000)
        variants = [blob[:c] for c in cuts]
        for _ in range(300):
            b = bytearray(blob)
            for _ in range(rnd.randint(1, 6)):
                b[rnd.randrange(len(b))] = rnd.randrange(256)
            variants.append(bytes(b[: rnd.randint(0, len(b))]))
        for v in variants:
            walk_pcap(v)
            walk_pcapng(v, rnd)
            n += 1
    for hi in (0, 1, 0x7FFFFFFF, 0xFFFFFFFF):
        for exp in range(128):
            for kind in (0, 1, 2):
                C._units_to_ns(hi, 0xFFFFFFFF, kind, exp, 10**18)
    print("ok", n)
    """
)


def test_walkers_stay_in_bounds_under_numba_boundscheck(tmp_path):
    samples = []
    for name, blob in (("a.pcap", pcap_file(SAMPLE)), ("b.pcapng", multi_interface_pcapng()[0])):
        samples.append(str(write(tmp_path, name, blob)))
    samples += [
        str(DATA / "pcapngtg__be__difficult__test202.pcapng"),
        str(DATA / "bad" / "derived__cut_mid_block.pcapng"),
    ]
    script = write(tmp_path, "bc.py", _BOUNDSCHECK_SCRIPT.encode())
    env = dict(os.environ)
    env["NUMBA_BOUNDSCHECK"] = "1"
    # a cache of its own: the bounds-checked build must not be mixed with the normal one
    env["NUMBA_CACHE_DIR"] = str(Path(tempfile.gettempdir()) / "flowdiff-numba-boundscheck")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run(
        [sys.executable, str(script), *samples], capture_output=True, text=True, env=env, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith("ok ") and int(r.stdout.split()[1]) > 1000
