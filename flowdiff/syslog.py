"""Syslog lines -> (time, host, program, facility, severity, message), a whole batch at a time.

Formats, told apart per line (a file may mix them, e.g. after an rsyslog upgrade):

* RFC 3164 as rsyslog's traditional file format, syslog-ng and ``journalctl -o short`` write it:
  ``Jun 14 15:16:01 combo sshd[1939]: message`` (the day space- or zero-padded; no year). The tag may
  lack its ``:`` (rsyslog writes messages it received as RFC 5424 that way): the first word after the
  host is then the program;
* rsyslog's high-precision file format (Debian's default): ``2026-12-02T01:00:00.123456+01:00 host
  prog[pid]: message``;
* RFC 5424: ``<34>1 2026-12-02T01:00:00.003Z host app procid msgid [sd] message``;
* any of the above with a leading ``<PRI>`` (as they arrive on the network): facility and severity are
  then known, else they are ``-``.

Everything is done with pyarrow.compute (RE2) over whole arrays, never per line in Python: that is what
makes collect read a few hundred thousand lines per second. A line that matches no format is kept: its
host and program are ``-``, its message is the whole line and its time is the previous line's (or the
file's modification time for a file that starts with such lines), so it is still counted.

Times: RFC 3164 lines carry no year and no zone. The year is the reference time's (the file's
modification time), or the year before for a line that would be more than a day after it (a file that
spans New Year); the zone is ``[logs] timezone`` (default UTC).
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from flowdiff._jit import njit
from flowdiff._lazy import lazy

pc = lazy("pyarrow.compute")

NIL = "-"  # unknown host / program / facility / severity (RFC 5424's nil value)

FACILITIES = (
    "kern user mail daemon auth syslog lpr news uucp cron authpriv ftp ntp security console solaris-cron "
    "local0 local1 local2 local3 local4 local5 local6 local7"
).split()
SEVERITIES = "emerg alert crit err warning notice info debug".split()

_MON = r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_BSD_TS = _MON + r" [ 0-3]\d \d\d:\d\d:\d\d"
_ISO_TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-]\d\d:?\d\d)?"

_SNIFF = re.compile(r"^(?:<\d{1,3}>)?(?:1 )?(?:" + _BSD_TS + "|" + _ISO_TS + r") +\S+ \S")
GZIP_MAGIC = b"\x1f\x8b"


@dataclass
class Lines:
    """Parsed lines as Arrow arrays of equal length (one element per line)."""

    ts_us: np.ndarray  # int64 UTC microseconds
    host: pa.Array
    program: pa.Array
    facility: pa.Array
    severity: pa.Array
    message: pa.Array
    nbytes: np.ndarray  # uint64 bytes of the line (UTF-8, without the newline)
    parsed: np.ndarray  # bool: the line matched a syslog format
    buf: np.ndarray  # the bytes the lines are in
    starts: np.ndarray  # where each line starts in buf
    ends: np.ndarray  # where it ends (without the newline)

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def line(self) -> pa.Array:
        """Every line as read (without its newline)."""
        return self.lines_at(np.arange(len(self.starts)))

    def lines_at(self, index: np.ndarray) -> pa.Array:
        """The lines at these positions (examples need a few, not all)."""
        index = np.asarray(index, dtype=np.int64)
        return _string_array(*_gather(self.buf, self.starts[index], self.ends[index], _NIL_B[:0], False))


def looks_like_syslog(head: bytes) -> bool:
    """True when most of the first complete lines of ``head`` (decompressed bytes) start like a syslog
    line in one of the formats above: how collect tells a syslog file from any other file."""
    text = head.decode("utf-8", "replace")
    lines = [ln for ln in text.split("\n")[:20] if ln.strip()]
    if len(text) >= 4096 and len(lines) > 1:
        lines = lines[:-1]  # the last one may be cut
    if not lines:
        return False
    good = sum(bool(_SNIFF.match(ln)) for ln in lines)
    return good * 2 > len(lines) and bool(_SNIFF.match(lines[0]))


def read_head(path: str, n: int = 4096) -> bytes:
    """The first ``n`` bytes of a file, decompressed when it is gzip. Raises OSError / zlib.error."""
    with open(path, "rb") as f:
        raw = f.read(n if n >= 64 else 64)
        if raw[:2] != GZIP_MAGIC:
            return raw[:n]
        f.seek(0)
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        out = b""
        while len(out) < n:
            block = f.read(65536)
            if not block:
                break
            out += d.decompress(block, n - len(out))
        return out


def open_text(path: str):  # noqa: ANN201 - a binary file object
    """The file's bytes as a stream, decompressed when it is gzip (by content, not by name)."""
    with open(path, "rb") as f:
        gz = f.read(2) == GZIP_MAGIC
    return gzip.open(path, "rb") if gz else open(path, "rb")  # noqa: SIM115


_NIL_B = np.frombuffer(NIL.encode(), np.uint8)
_MONTHS = np.frombuffer(b"JanFebMarAprMayJunJulAugSepOctNovDec", np.uint8)


@njit(inline="always")
def _digit(c: int) -> bool:
    return 48 <= c <= 57


@njit(inline="always")
def _num(buf: np.ndarray, i: int, n: int) -> int:
    v = np.int64(0)
    for k in range(i, i + n):
        v = v * 10 + (np.int64(buf[k]) - 48)  # int64 interpreted too (flowdiff/_jit.py)
    return int(v)


@njit(inline="always")
def _all_digits(buf: np.ndarray, i: int, n: int, end: int) -> bool:
    if i + n > end:
        return False
    for k in range(i, i + n):
        if not _digit(buf[k]):
            return False
    return True


@njit(inline="always")
def _days(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date."""
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


@njit(cache=True, nogil=True)
def _scan(buf, starts, ends, year, ref_us, tz_us, months, out_i, out_ts):  # noqa: ANN001, ANN202
    """Header fields of every line. out_i columns: 0 ok, 1 pri (-1 none), 2/3 host start/end,
    4/5 program start/end (equal when none), 6 message start. out_ts: UTC microseconds, or INT64_MIN."""
    nmin = np.iinfo(np.int64).min
    for li in range(len(starts)):
        s, e = starts[li], ends[li]
        out_i[li, 0] = 0
        out_i[li, 1] = -1
        out_i[li, 2] = s
        out_i[li, 3] = s
        out_i[li, 4] = s
        out_i[li, 5] = s
        out_i[li, 6] = s
        out_ts[li] = nmin
        i = s
        pri = -1
        if i < e and buf[i] == 60:  # <PRI>
            j = i + 1
            while j < e and j < i + 4 and _digit(buf[j]):
                j += 1
            if j > i + 1 and j < e and buf[j] == 62:
                pri = _num(buf, i + 1, j - i - 1)
                i = j + 1
        v5424 = False
        if i + 1 < e and buf[i] == 49 and buf[i + 1] == 32:  # "1 "
            v5424 = True
            i += 2
        ts = nmin
        # time stamp: "Mmm dd hh:mm:ss" | ISO 8601 | "-"
        if i + 15 <= e and buf[i + 3] == 32 and buf[i + 6] == 32 and buf[i + 9] == 58 and buf[i + 12] == 58:
            mon = 0
            for m in range(12):
                if (
                    buf[i] == months[3 * m]
                    and buf[i + 1] == months[3 * m + 1]
                    and buf[i + 2] == months[3 * m + 2]
                ):
                    mon = m + 1
            d0 = np.int64(buf[i + 4])
            if (
                mon
                and (d0 == 32 or _digit(d0))
                and _digit(buf[i + 5])
                and _all_digits(buf, i + 7, 2, e)
                and (_all_digits(buf, i + 10, 2, e) and _all_digits(buf, i + 13, 2, e))
            ):
                day = (0 if d0 == 32 else d0 - 48) * 10 + np.int64(buf[i + 5]) - 48
                secs = _num(buf, i + 7, 2) * 3600 + _num(buf, i + 10, 2) * 60 + _num(buf, i + 13, 2)
                ts = (_days(year, mon, day) * 86400 + secs) * 1_000_000 - tz_us
                if ts > ref_us + 86_400_000_000:
                    ts = (_days(year - 1, mon, day) * 86400 + secs) * 1_000_000 - tz_us
                i += 15
        elif (
            _all_digits(buf, i, 4, e)
            and i + 19 <= e
            and buf[i + 4] == 45
            and buf[i + 7] == 45
            and (buf[i + 10] == 84 or buf[i + 10] == 32)
            and buf[i + 13] == 58
            and buf[i + 16] == 58
            and _all_digits(buf, i + 5, 2, e)
            and _all_digits(buf, i + 8, 2, e)
            and _all_digits(buf, i + 11, 2, e)
            and _all_digits(buf, i + 14, 2, e)
            and _all_digits(buf, i + 17, 2, e)
        ):
            days = _days(_num(buf, i, 4), _num(buf, i + 5, 2), _num(buf, i + 8, 2))
            secs = _num(buf, i + 11, 2) * 3600 + _num(buf, i + 14, 2) * 60 + _num(buf, i + 17, 2)
            j = i + 19
            frac = 0
            if j < e and (buf[j] == 46 or buf[j] == 44):
                j += 1
                k = 0
                while j < e and _digit(buf[j]):
                    if k < 6:
                        frac = frac * 10 + np.int64(buf[j]) - 48
                    k += 1
                    j += 1
                while k < 6:
                    frac *= 10
                    k += 1
            off = 0
            if j < e and buf[j] == 90:
                j += 1
            elif j + 3 <= e and (buf[j] == 43 or buf[j] == 45) and _all_digits(buf, j + 1, 2, e):
                sign = 1 if buf[j] == 43 else -1
                hh = _num(buf, j + 1, 2)
                j += 3
                mm = 0
                if j < e and buf[j] == 58:
                    j += 1
                if _all_digits(buf, j, 2, e):
                    mm = _num(buf, j, 2)
                    j += 2
                off = sign * (hh * 3600 + mm * 60)
            ts = (days * 86400 + secs - off) * 1_000_000 + frac
            i = j
        elif v5424 and i < e and buf[i] == 45:
            ts = nmin + 1  # nil time stamp: a parsed line without a time
            i += 1
        if ts == nmin:
            continue
        if ts == nmin + 1:
            ts = nmin
        # one or more spaces, then the host
        if i >= e or buf[i] != 32:
            continue
        while i < e and buf[i] == 32:
            i += 1
        hs = i
        while i < e and buf[i] != 32:
            i += 1
        he = i
        if he == hs or i >= e:
            continue
        i += 1
        out_i[li, 0] = 1
        out_i[li, 1] = pri
        out_i[li, 2] = hs
        out_i[li, 3] = he
        out_i[li, 6] = i
        out_ts[li] = ts
        if v5424:  # APP-NAME PROCID MSGID SD [MSG]
            ps = i
            while i < e and buf[i] != 32:
                i += 1
            pe = i
            for _ in range(2):
                i += 1
                while i < e and buf[i] != 32:
                    i += 1
            i += 1
            if i < e and buf[i] == 91:
                q = False
                depth = 0
                while i < e:
                    c = buf[i]
                    if q:
                        if c == 92:
                            i += 1
                        elif c == 34:
                            q = False
                    elif c == 34:
                        q = True
                    elif c == 91:
                        depth += 1
                    elif c == 93:
                        depth -= 1
                        if depth == 0 and (i + 1 >= e or buf[i + 1] != 91):
                            i += 1
                            break
                    i += 1
            elif i < e and buf[i] == 45:
                i += 1  # "-" (anything else is malformed: the message starts there, whole characters)
            if i < e and buf[i] == 32:
                i += 1
            if i + 3 <= e and buf[i] == 0xEF and buf[i + 1] == 0xBB and buf[i + 2] == 0xBF:
                i += 3  # BOM
            if pe > ps and not (pe == ps + 1 and buf[ps] == 45):
                out_i[li, 4] = ps
                out_i[li, 5] = pe
            out_i[li, 6] = min(i, e)
            continue
        # RFC 3164 tag: prog[pid]: or prog:
        ps = i
        while i < e and i - ps < 64 and buf[i] != 32 and buf[i] != 91 and buf[i] != 58:
            i += 1
        pe = i
        if pe == ps or i >= e:
            continue
        if buf[i] == 91:
            while i < e and buf[i] != 93 and buf[i] != 32:
                i += 1
            if i >= e or buf[i] != 93:
                continue
            i += 1
        if i < e and buf[i] == 58:
            i += 1
        elif i >= e or buf[i] != 32:
            continue  # "prog" must end with ':' or a space (rsyslog writes RFC 5424 tags without ':')
        if i < e and buf[i] == 32:
            i += 1
        out_i[li, 4] = ps
        out_i[li, 5] = pe
        out_i[li, 6] = i


@njit(cache=True, nogil=True)
def _gather(buf, starts, ends, nil, collapse):  # noqa: ANN001, ANN202
    """A string column made of byte ranges of ``buf`` (``nil`` where a range is empty). ``collapse``:
    every run of digits becomes one '0' and trailing blanks go (the first step of masking)."""
    n = len(starts)
    total = 0
    for k in range(n):
        total += ends[k] - starts[k] if ends[k] > starts[k] else len(nil)
    out = np.empty(total, np.uint8)
    offs = np.empty(n + 1, np.int64)
    o = 0
    for k in range(n):
        offs[k] = o
        s, e = starts[k], ends[k]
        if e <= s:
            for c in nil:
                out[o] = c
                o += 1
            continue
        if not collapse:
            for i in range(s, e):
                out[o] = buf[i]
                o += 1
            continue
        while e > s and (buf[e - 1] == 32 or buf[e - 1] == 9):
            e -= 1
        prev = False
        for i in range(s, e):
            c = buf[i]
            d = 48 <= c <= 57
            if d and prev:
                continue
            out[o] = 48 if d else c
            o += 1
            prev = d
    offs[n] = o
    return out[:o], offs


def _string_array(data: np.ndarray, offsets: np.ndarray) -> pa.Array:
    n = len(offsets) - 1
    if len(data) < 2**31 - 1:
        arr = pa.Array.from_buffers(
            pa.string(), n, [None, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data)]
        )
    else:
        arr = pa.Array.from_buffers(pa.large_string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    return _valid_utf8(arr)


def _valid_utf8(arr: pa.Array) -> pa.Array:
    """The input is valid UTF-8 (:func:`utf8`), but a field cut inside a character (a 64-byte program
    name, a malformed header) is not: such values get U+FFFD, as :func:`utf8` gives bad bytes, so that
    no reader (pandas, the report, Parquet) ever meets invalid text. Validation is one SIMD pass."""
    try:
        arr.validate(full=True)
        return arr
    except pa.ArrowInvalid:
        raw = arr.view(pa.large_binary() if pa.types.is_large_string(arr.type) else pa.binary())
        text = [None if b is None else b.decode("utf-8", "replace") for b in raw.to_pylist()]
        return pa.array(text, arr.type)


def _names(code: np.ndarray, names: list[str]) -> pa.Array:
    table = pa.array([*names, NIL])
    idx = np.where((code < 0) | (code >= len(names)), len(names), code)
    return table.take(pa.array(idx))


def utf8(data: bytes) -> bytes:
    """``data`` as valid UTF-8 (invalid bytes replaced; unchanged, not copied, when already valid)."""
    try:
        data.decode("utf-8")
        return data
    except UnicodeDecodeError:
        return data.decode("utf-8", "replace").encode("utf-8")


def line_bounds(buf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive, without ``\\n`` / ``\\r\\n``) of every line; a last line without a
    newline counts, a final newline does not make an empty line."""
    nl = np.flatnonzero(buf == 10)
    starts = np.r_[0, nl + 1]
    ends = np.r_[nl, len(buf)]
    if len(buf) == 0 or buf[-1] == 10:
        starts, ends = starts[:-1], ends[:-1]
    cr = (ends > starts) & (buf[np.maximum(ends - 1, 0)] == 13)
    ends = ends - cr
    return starts.astype(np.int64), ends.astype(np.int64)


def parse_bytes(data: bytes, *, ref_us: int, tz_offset_s: int = 0) -> Lines:
    """Parse every line of ``data`` (see the module doc). ``ref_us`` is the reference time for RFC
    3164's missing year and for lines without a time; ``tz_offset_s`` is the offset of RFC 3164 times
    from UTC (``[logs] timezone``)."""
    buf = np.frombuffer(utf8(data), np.uint8)
    starts, ends = line_bounds(buf)
    n = len(starts)
    out_i = np.empty((n, 7), np.int64)
    out_ts = np.empty(n, np.int64)
    year = datetime.fromtimestamp(ref_us / 1e6, UTC).year
    _scan(buf, starts, ends, year, ref_us, tz_offset_s * 1_000_000, _MONTHS, out_i, out_ts)
    ok = out_i[:, 0].astype(bool)
    pri = out_i[:, 1]
    host = _string_array(*_gather(buf, out_i[:, 2], out_i[:, 3], _NIL_B, False))
    program = _string_array(*_gather(buf, out_i[:, 4], out_i[:, 5], _NIL_B, False))
    message = _string_array(*_gather(buf, out_i[:, 6], ends, _NIL_B[:0], False))
    facility = _names(np.where(pri >= 0, pri // 8, -1), FACILITIES)
    severity = _names(np.where(pri >= 0, pri % 8, -1), SEVERITIES)
    ts = _fill_times(out_ts, ref_us)
    nbytes = (ends - starts).astype(np.uint64)
    return Lines(ts, host, program, facility, severity, message, nbytes, ok, buf, starts, ends)


def parse_lines(lines: Sequence[str], *, ref_us: int, tz_offset_s: int = 0) -> Lines:
    """:func:`parse_bytes` for lines given as strings (tests, notebooks, the listener)."""
    data = "".join(ln.replace("\n", " ") + "\n" for ln in lines).encode("utf-8")
    return parse_bytes(data, ref_us=ref_us, tz_offset_s=tz_offset_s)


def collapse_digits(strings: pa.Array) -> pa.Array:
    """Every run of digits -> one '0', trailing blanks dropped: the first, compiled step of masking."""
    strings = pc.fill_null(strings, "").cast(pa.large_string())
    if isinstance(strings, pa.ChunkedArray):
        strings = strings.combine_chunks()
    _, offs_buf, data_buf = strings.buffers()
    offsets = np.frombuffer(offs_buf, np.int64)[strings.offset : strings.offset + len(strings) + 1]
    buf = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    return _string_array(*_gather(buf, offsets[:-1].copy(), offsets[1:].copy(), _NIL_B[:0], True))


def _fill_times(ts_us: np.ndarray, ref_us: int) -> np.ndarray:
    """Lines without a usable time take the previous line's, or ``ref_us`` before the first one."""
    missing = ts_us == np.iinfo(np.int64).min
    if not missing.any():
        return ts_us
    idx = np.where(~missing, np.arange(len(ts_us)), 0)
    np.maximum.accumulate(idx, out=idx)
    out = ts_us[idx]
    first = np.flatnonzero(~missing)
    out[: first[0] if len(first) else len(out)] = ref_us
    return out
