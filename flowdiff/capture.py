"""Reading pcap / pcapng (optionally gzip-compressed) captures into batches of record descriptors.

A capture is streamed in chunks (``chunk_bytes``, 2 MiB by default): memory stays bounded by a few
chunks however large the file is. Each chunk is walked once by a numba-compiled loop that writes the
index arrays of a :class:`RecordBatch` (where each record's data starts, its captured and wire length,
its time stamp in UTC nanoseconds, its link type); no Python object is created per record. Only the
rare pcapng blocks that change the walker's state (Section Header, Interface Description) go back to
Python.

Failure policy (the collect summary relies on it):

* a file that cannot be read at all (missing, empty, not a capture, unsupported version, reserved bits
  set in the pcap link-type field, malformed first section header) raises
  :class:`flowdiff.errors.CaptureError` from :func:`open_capture`, before any record is produced;
* a structural problem later on (record or block cut short, bogus captured length, bad block length,
  corrupt gzip stream) ends the walk with one :class:`Damage` in ``stats.damage``; every good record
  before it has already been delivered;
* a problem confined to one record (a pcapng time stamp that does not fit int64 nanoseconds, a packet
  block naming an interface that was never described) skips that record and counts it in
  ``stats.skipped`` under a reason. A pcap record whose sub-second field is out of range (1,000,000 or
  more microseconds, 10^9 or more nanoseconds) is not a problem: like libpcap and tshark, its time is
  the plain sum of seconds and fraction (the overflow carries into the seconds).

Formats: pcap (microsecond and nanosecond magic, both byte orders, Kuznetzov's "modified" variant),
pcapng (any number of sections of either byte order; interfaces with their own link type, snaplen,
``if_tsresol`` and ``if_tsoffset``; Enhanced, Simple and obsolete Packet Blocks; every other block is
skipped), and either of them inside gzip (detected by its magic, not the file name).

Memory and speed: chunk buffers and index arrays are recycled through a process-wide pool (first touch
of fresh memory is slow on small VMs), but never while any batch or view still points into them. For
files larger than a chunk a helper thread reads, decompresses and hashes (sha256 of the decompressed
stream) one chunk ahead; read(2), zlib and hashlib release the GIL, the compiled walkers run nogil.
"""

from __future__ import annotations

import collections
import gzip
import hashlib
import logging
import os
import queue
import struct
import sys
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from flowdiff._jit import njit
from flowdiff.errors import CaptureError

__all__ = [
    "RecordBatch",
    "Damage",
    "CaptureStats",
    "CaptureReader",
    "open_capture",
    "sniff_capture",
    "sniff_start",
    "release_buffers",
    "content_sha256",
    "SKIP_REASONS",
    "DEFAULT_CHUNK",
]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------
# Public data types
# ---------------------------------------------------------------------------------------------------


@dataclass
class RecordBatch:
    """Index arrays over one chunk of a capture; record ``i`` is ``buf[offset[i] : offset[i] + caplen[i]]``.

    ``buf`` belongs to this batch alone (the reader never writes into it again), so a consumer may
    keep a batch as long as it likes; it keeps the chunk's memory alive while it does.
    """

    buf: np.ndarray  # uint8
    offset: np.ndarray  # int64
    caplen: np.ndarray  # uint32
    wirelen: np.ndarray  # uint32
    ts_ns: np.ndarray  # int64, UTC ns since the epoch; 0 for pcapng Simple Packet Blocks
    linktype: np.ndarray  # uint16

    def __len__(self) -> int:
        return int(self.offset.shape[0])


@dataclass
class Damage:
    """A structural problem after which the rest of the file is not parsed."""

    path: str
    offset: int  # byte offset in the (decompressed) capture stream
    message: str

    def __str__(self) -> str:
        return f"{self.path} at byte {self.offset}: {self.message}"


@dataclass
class CaptureStats:
    path: str
    format: str = ""  # "pcap" | "pcapng", plus ", gzip"
    records: int = 0  # records delivered in batches
    skipped: collections.Counter = field(default_factory=collections.Counter)  # reason -> records
    damage: list[Damage] = field(default_factory=list)
    # sha256 of the whole decompressed stream, set once it has been read to its end. After damage the
    # rest of the stream is still read (not parsed) so a damaged file has a content hash too; it stays
    # None when the stream itself fails (corrupt gzip) or the consumer stops iterating early.
    sha256: str | None = None
    bytes_read: int = 0  # decompressed bytes read so far (updated while iterating)
    linktypes: set[int] = field(default_factory=set)  # of the pcap header / of every pcapng interface
    other_blocks: int = 0  # pcapng blocks that carry no packet for us (NRB, ISB, custom, ...)
    file_bytes_read: int = 0  # position in the file on disk (differs from bytes_read for gzip): progress


# Per-record skip reasons, indexed by the walkers' counter array.
SKIP_REASONS = ("bad-timestamp", "unknown-interface")
_SKIP_BAD_TS = 0
_SKIP_NO_IF = 1
_OTHER_BLOCK = 2  # third counter: blocks without packets (not a problem, reported as stats.other_blocks)

# ---------------------------------------------------------------------------------------------------
# Format constants
# ---------------------------------------------------------------------------------------------------

GZIP_MAGIC = b"\x1f\x8b"
PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAP_MAGIC_MODIFIED = 0xA1B2CD34  # Kuznetzov's patched libpcap: 24-byte record headers
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BOM = 0x1A2B3C4D
_PCAP_MAGICS = {
    struct.pack(order + "I", m) for order in "<>" for m in (PCAP_MAGIC_US, PCAP_MAGIC_NS, PCAP_MAGIC_MODIFIED)
}
_PCAPNG_MAGIC = struct.pack("<I", PCAPNG_SHB)

# libpcap's LT_RESERVED1 bits of the pcap header's link-type field (FCS length and flag live above).
_LT_RESERVED_MASK = 0x03FF0000
# A pcap caplen above this is bogus (4 x libpcap's MAXIMUM_SNAPLEN), unless the header's snaplen is
# larger; a pcapng block above _MAX_BLOCK is bogus (libpcap's MAX_BLOCKSIZE). Both bound the memory a
# damaged length can make us allocate.
_MAX_CAPLEN = 4 * 262144
_MAX_BLOCK = 16 << 20

_BT_IDB = 1
_BT_OPB = 2
_BT_SPB = 3
_BT_EPB = 6

# walker return status
_ST_NEED = 0  # detail = bytes needed from pos
_ST_FULL = 1  # output arrays full
_ST_SHB = 2  # a Section Header Block is complete at pos (detail = its length)
_ST_IDB = 3  # an Interface Description Block is complete at pos (detail = its length)
_ST_DAMAGE = 4  # (code, detail) describe it

_D_CAPLEN = 1  # captured length over the limit
_D_BOM = 2  # SHB byte-order magic neither way round
_D_BLEN = 3  # block length < 12 or not a multiple of 4
_D_BIG = 4  # block length over _MAX_BLOCK
_D_TRAILER = 5  # trailing copy of the block length differs
_D_SHORT = 6  # block too short for its fixed fields
_D_BLOCK_CAPLEN = 7  # captured length runs past the block

_TS_DEC = 0  # if_tsresol 10^-n
_TS_BIN = 1  # if_tsresol 2^-n
_TS_BAD = 2  # interface whose time stamps cannot be converted (offset out of range)

# Chunks small enough to stay in a core's L2 cache: the walker, the decoder and the aggregator then all
# read bytes the read(2) has just brought in. Measured on the 2-core box for read+decode+aggregate of a
# header-only capture: 0.19 us/record at 1-2 MiB, 0.22 at 8 MiB, 0.24-0.32 at 32 MiB.
DEFAULT_CHUNK = 2 << 20

_INT64_MAX = np.iinfo(np.int64).max
_NS = 1_000_000_000
_POW10 = np.array([10**i for i in range(20)], dtype=np.uint64)

# ---------------------------------------------------------------------------------------------------
# Compiled walkers. numba does not check bounds: every read below is guarded by `end - pos`.
# ---------------------------------------------------------------------------------------------------


@njit(inline="always")
def _u16(b, p, big):
    if big:
        return (np.int64(b[p]) << 8) | np.int64(b[p + 1])
    return np.int64(b[p]) | (np.int64(b[p + 1]) << 8)


@njit(inline="always")
def _u32(b, p, big):
    if big:
        return (
            (np.int64(b[p]) << 24)
            | (np.int64(b[p + 1]) << 16)
            | (np.int64(b[p + 2]) << 8)
            | np.int64(b[p + 3])
        )
    return (
        np.int64(b[p]) | (np.int64(b[p + 1]) << 8) | (np.int64(b[p + 2]) << 16) | (np.int64(b[p + 3]) << 24)
    )


@njit(cache=True, nogil=True)
def _walk_pcap(
    buf,
    pos,
    end,
    big,
    hdr_len,
    frac_mult,
    max_caplen,
    out_off,
    out_cap,
    out_wire,
    out_ts,
    k,
    skipped,
):
    """Index pcap records in ``buf[pos:end]``; returns (k, pos, status, code, detail).

    The time stamp is the plain sum seconds + sub-second field, also when that field is 1,000,000 or
    more (10^9 or more in nanosecond files): some old capture tools wrote such records, and libpcap and
    tshark carry the overflow into the seconds, so the record is counted where they count it.
    """
    n_out = out_off.shape[0]
    while True:
        if end - pos < hdr_len:
            return k, pos, _ST_NEED, 0, hdr_len
        caplen = _u32(buf, pos + 8, big)
        if caplen > max_caplen:
            return k, pos, _ST_DAMAGE, _D_CAPLEN, caplen
        total = hdr_len + caplen
        if end - pos < total:
            return k, pos, _ST_NEED, 0, total
        if k >= n_out:
            return k, pos, _ST_FULL, 0, 0
        out_off[k] = pos + hdr_len
        out_cap[k] = caplen
        out_wire[k] = _u32(buf, pos + 12, big)
        # unsigned 32-bit seconds and sub-second field: at most 2^32 * 10^9 + 2^32 * 10^3 < 2^63
        out_ts[k] = _u32(buf, pos, big) * 1_000_000_000 + _u32(buf, pos + 4, big) * frac_mult
        k += 1
        pos += total


@njit(cache=True, nogil=True)
def _units_to_ns(hi, lo, kind, exp, off_ns):
    """pcapng time stamp (64-bit count of 10^-exp or 2^-exp s) -> (ok, UTC ns incl. if_tsoffset)."""
    units = (np.uint64(hi) << np.uint64(32)) | np.uint64(lo)
    if kind == _TS_DEC:
        if exp <= 9:
            mult = _POW10[9 - exp]
            if units > np.uint64(_INT64_MAX) // mult:
                return False, np.int64(0)
            ns = np.int64(units * mult)
        elif exp - 9 > 19:
            ns = np.int64(0)
        else:
            ns = np.int64(units // _POW10[exp - 9])
    elif kind == _TS_BIN:
        if exp >= 64:
            sec = np.uint64(0)
            frac = units
        else:
            sec = units >> np.uint64(exp)
            frac = units & ((np.uint64(1) << np.uint64(exp)) - np.uint64(1))
        if sec > np.uint64(_INT64_MAX // _NS):
            return False, np.int64(0)
        # exact floor(frac * 10^9 / 2^exp) in 64-bit arithmetic (10^9 = 2^9 * 5^9)
        if exp <= 34:  # frac < 2^34: the product fits
            fns = (frac * np.uint64(_NS)) >> np.uint64(exp)
        elif exp <= 41:  # frac * 5^9 < 2^62
            fns = (frac * np.uint64(1953125)) >> np.uint64(exp - 9)
        else:  # 96-bit product frac * 5^9 kept as q * 2^32 + (bits that cannot reach the result)
            q = (frac >> np.uint64(32)) * np.uint64(1953125) + (
                ((frac & np.uint64(0xFFFFFFFF)) * np.uint64(1953125)) >> np.uint64(32)
            )
            fns = q >> np.uint64(exp - 41) if exp - 41 < 64 else np.uint64(0)
        s = np.int64(sec) * _NS
        f = np.int64(fns)
        if s > _INT64_MAX - f:
            return False, np.int64(0)
        ns = s + f
    else:
        return False, np.int64(0)
    if off_ns > 0 and ns > _INT64_MAX - off_ns:
        return False, np.int64(0)
    return True, ns + off_ns


@njit(cache=True, nogil=True)
def _walk_pcapng(
    buf,
    pos,
    end,
    big,
    if_lt,
    if_snap,
    if_kind,
    if_exp,
    if_off,
    n_if,
    out_off,
    out_cap,
    out_wire,
    out_ts,
    out_lt,
    k,
    skipped,
):
    """Index pcapng packet blocks in ``buf[pos:end]``; returns (k, pos, status, code, detail).

    Stops at a complete SHB or IDB (Python parses those), at damage, or when it needs more bytes.
    Every other block type is checked for a sane length and skipped.
    """
    n_out = out_off.shape[0]
    while True:
        if k >= n_out:
            return k, pos, _ST_FULL, 0, 0
        if end - pos < 12:
            return k, pos, _ST_NEED, 0, 12
        btype = _u32(buf, pos, big)
        bbig = big
        if btype == 0x0A0D0D0A:
            if _u32(buf, pos + 8, True) == 0x1A2B3C4D:
                bbig = True
            elif _u32(buf, pos + 8, False) == 0x1A2B3C4D:
                bbig = False
            else:
                return k, pos, _ST_DAMAGE, _D_BOM, _u32(buf, pos + 8, False)
        blen = _u32(buf, pos + 4, bbig)
        if blen < 12 or (blen & 3) != 0:
            return k, pos, _ST_DAMAGE, _D_BLEN, blen
        if blen > _MAX_BLOCK:
            return k, pos, _ST_DAMAGE, _D_BIG, blen
        if end - pos < blen:
            return k, pos, _ST_NEED, 0, blen
        if _u32(buf, pos + blen - 4, bbig) != blen:
            return k, pos, _ST_DAMAGE, _D_TRAILER, _u32(buf, pos + blen - 4, bbig)
        if btype == 0x0A0D0D0A:
            return k, pos, _ST_SHB, 0, blen
        if btype == _BT_IDB:
            return k, pos, _ST_IDB, 0, blen
        if btype == _BT_EPB or btype == _BT_OPB:
            if blen < 32:
                return k, pos, _ST_DAMAGE, _D_SHORT, blen
            if btype == _BT_EPB:
                ifid = _u32(buf, pos + 8, big)
            else:
                ifid = _u16(buf, pos + 8, big)
            caplen = _u32(buf, pos + 20, big)
            if caplen > blen - 32:
                return k, pos, _ST_DAMAGE, _D_BLOCK_CAPLEN, caplen
            if ifid >= n_if:
                skipped[_SKIP_NO_IF] += 1
            else:
                ok, ts = _units_to_ns(
                    _u32(buf, pos + 12, big),
                    _u32(buf, pos + 16, big),
                    if_kind[ifid],
                    if_exp[ifid],
                    if_off[ifid],
                )
                if not ok:
                    skipped[_SKIP_BAD_TS] += 1
                else:
                    out_off[k] = pos + 28
                    out_cap[k] = caplen
                    out_wire[k] = _u32(buf, pos + 24, big)
                    out_ts[k] = ts
                    out_lt[k] = if_lt[ifid]
                    k += 1
        elif btype == _BT_SPB:
            if blen < 16:
                return k, pos, _ST_DAMAGE, _D_SHORT, blen
            if n_if == 0:
                skipped[_SKIP_NO_IF] += 1
            else:
                wire = _u32(buf, pos + 8, big)
                # captured length = min(original length, snaplen of interface 0), bounded by the block
                caplen = min(wire, blen - 16)
                if if_snap[0] > 0:
                    caplen = min(caplen, if_snap[0])
                out_off[k] = pos + 12
                out_cap[k] = caplen
                out_wire[k] = wire
                out_ts[k] = 0
                out_lt[k] = if_lt[0]
                k += 1
        else:
            skipped[_OTHER_BLOCK] += 1
        pos += blen


# ---------------------------------------------------------------------------------------------------
# Streaming source: fresh chunks of the decompressed stream, hashed as they are read
# ---------------------------------------------------------------------------------------------------

# Bytes kept free in front of each chunk so the tail of the previous chunk (a record cut by the chunk
# boundary) can be put in front of it without copying the chunk.
_HEADROOM = 256 << 10
_EOF = object()


def _refs_alone() -> int:
    items = [np.empty(1)]
    return sys.getrefcount(items[0])


_REFS_ALONE = _refs_alone()  # what sys.getrefcount reports for an object referenced only by one list


class _Pool:
    """Reusable numpy buffers, shared by all readers of the process.

    Fresh memory is expensive to touch (page faults; on this project's VMs first touch of memory runs
    at ~100 MB/s), so chunk buffers and index arrays are recycled. An entry is reused only when nothing
    outside the pool refers to any of its arrays: a batch (or any view of its arrays) that a consumer
    keeps holds a reference, so recycling never overwrites data someone can still see.
    """

    def __init__(self, per_key: int = 8, keys: int = 4):
        self._lock = threading.Lock()
        self._entries: dict[tuple, list[list[np.ndarray]]] = {}
        self._per_key = per_key
        self._keys = keys  # distinct sizes kept (chunk sizes rarely change within a process)

    def take(self, key: tuple, make) -> list[np.ndarray]:
        with self._lock:
            entries = self._entries.pop(key, [])
            self._entries[key] = entries  # most recently used last
            while len(self._entries) > self._keys:
                del self._entries[next(iter(self._entries))]
            for entry in entries:
                if all(sys.getrefcount(entry[j]) <= _REFS_ALONE for j in range(len(entry))):
                    return list(entry)
            entry = make(key)
            if len(entries) < self._per_key:
                entries.append(entry)
            return list(entry)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


_POOL = _Pool()


def release_buffers() -> None:
    """Let go of the recycled chunk buffers (they are otherwise kept for the next capture)."""
    _POOL.clear()


def _make_chunk(key) -> list[np.ndarray]:
    return [np.empty(key[1], dtype=np.uint8)]


class _StreamError(Exception):
    def __init__(self, offset: int, message: str):
        super().__init__(message)
        self.offset = offset
        self.message = message


def _open_stream(path: str):
    """The file, or a streaming gzip reader over it when it starts with the gzip magic."""
    f = open(path, "rb")  # noqa: SIM115 - closed by the caller
    try:
        head = f.read(2)
        f.seek(0)
    except OSError:
        f.close()
        raise
    if head == GZIP_MAGIC:
        return gzip.GzipFile(fileobj=f, mode="rb"), f, True
    return f, f, False


def _describe_stream_error(exc: BaseException) -> str:
    if isinstance(exc, EOFError):
        return "gzip stream ends before its end-of-stream marker (file cut short)"
    if isinstance(exc, gzip.BadGzipFile | zlib.error):
        return f"corrupt gzip stream ({exc})"
    return f"read error ({exc})"


class _Source:
    """Reads the capture stream in fresh numpy chunks and feeds them to a sha256.

    With ``threaded`` a daemon thread reads (and decompresses) one chunk ahead and hashes it, so file
    I/O, inflate and sha256 run on the second core while the caller walks and decodes; file reads,
    zlib and hashlib release the GIL. At most two chunks wait in the queue, which bounds memory.
    """

    def __init__(self, path: str, chunk_bytes: int, threaded: bool):
        self.stream, self._raw, self.gzip = _open_stream(path)
        self.chunk_bytes = chunk_bytes
        self.bytes_read = 0
        self.file_pos = 0
        self.sha256: str | None = None
        self.error: _StreamError | None = None
        self._done = False
        self._pending: _StreamError | None = None
        self._hash = hashlib.sha256()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if threaded:
            self._q: queue.Queue = queue.Queue(maxsize=2)
            self._thread = threading.Thread(target=self._run, name="flowdiff-capture-read", daemon=True)
            self._thread.start()

    def _read_one(self):
        """Next (array, start, end) chunk with _HEADROOM free bytes before start, or _EOF.

        A read error after some bytes of the chunk is raised on the next call, so the bytes that could
        be read (all records before a corrupt gzip block) are still delivered.
        """
        if self._pending is not None:
            raise self._pending
        (arr,) = _POOL.take(("chunk", _HEADROOM + self.chunk_bytes), _make_chunk)
        view = memoryview(arr)[_HEADROOM:]
        n = 0
        # readinto1 for gzip: a plain readinto loops inside BufferedReader and drops what it had read
        # when the stream then fails
        readinto = self.stream.readinto1 if self.gzip else self.stream.readinto
        try:
            while n < self.chunk_bytes:
                got = readinto(view[n:])
                if not got:
                    break
                n += got
        except (OSError, EOFError, zlib.error) as exc:
            self._pending = _StreamError(self.bytes_read + n, _describe_stream_error(exc))
            if n == 0:
                raise self._pending from exc
        if n == 0:
            self.sha256 = self._hash.hexdigest()
            return _EOF
        self._hash.update(view[:n])
        self.bytes_read += n
        self.file_pos = self._raw.tell()
        return arr, _HEADROOM, _HEADROOM + n

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._read_one()
            except _StreamError as exc:
                item = exc
            except Exception as exc:  # an unexpected failure must still reach the consumer
                item = _StreamError(self.bytes_read, f"read error ({exc!r})")
            while not self._stop.is_set():
                try:
                    self._q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item is _EOF or isinstance(item, _StreamError):
                return

    def next_chunk(self):
        """(array, start, end), or None at the end of the stream or after a read error (see .error)."""
        if self.error is not None or self._done:
            return None
        if self._thread is None:
            try:
                item = self._read_one()
            except _StreamError as exc:
                item = exc
        else:
            item = self._q.get()
        if isinstance(item, _StreamError):
            self.error = item
            self._done = True
            return None
        if item is _EOF:
            self._done = True
            return None
        return item

    def drain(self) -> None:
        """Read (and hash) the rest of the stream without parsing it."""
        while self.next_chunk() is not None:
            pass

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            while self._thread.is_alive():
                try:
                    self._q.get(timeout=0.05)
                except queue.Empty:
                    pass
            self._thread.join()
        try:
            self.stream.close()
        finally:
            self._raw.close()


class _Window:
    """The unparsed bytes ``buf[pos:end]``; ``base + i`` is the stream offset of ``buf[i]``."""

    def __init__(self, source: _Source):
        self.source = source
        self.buf = np.empty(0, dtype=np.uint8)
        self.pos = 0
        self.end = 0
        self.base = 0

    @property
    def avail(self) -> int:
        return self.end - self.pos

    def offset(self, i: int) -> int:
        return self.base + i

    def more(self, need: int) -> bool:
        """Move to a fresh buffer holding at least ``need`` unparsed bytes; False if the stream ends first.

        The buffer is always replaced (never refilled in place), because batches already handed out
        point into the old one.
        """
        while True:
            chunk = self.source.next_chunk()
            if chunk is None:
                return False
            arr, start, end = chunk
            rest = self.buf[self.pos : self.end]
            r = rest.shape[0]
            stream_off = self.base + self.pos
            if r <= start:
                arr[start - r : start] = rest
                self.buf, self.pos, self.end = arr, start - r, end
            else:  # a record longer than the headroom is being carried: rare, copy once
                merged = np.empty(r + end - start, dtype=np.uint8)
                merged[:r] = rest
                merged[r:] = arr[start:end]
                self.buf, self.pos, self.end = merged, 0, merged.shape[0]
            self.base = stream_off - self.pos
            if self.avail >= need:
                return True


class _Outputs:
    """Index arrays for the records of one window, taken from the pool when the window is a standard chunk."""

    def __init__(self, window_bytes: int, chunk_bytes: int):
        if window_bytes <= _HEADROOM + chunk_bytes:
            # every record format needs at least 16 bytes
            arrays = _POOL.take(("out", (_HEADROOM + chunk_bytes) // 16 + 1), _make_outputs)
        else:  # a window grown for one huge record: one-off
            arrays = _make_outputs(("out", window_bytes // 16 + 1))
        self.off, self.cap, self.wire, self.ts, self.lt = arrays
        self.k = 0

    def batch(self, buf: np.ndarray) -> RecordBatch:
        k = self.k
        return RecordBatch(buf, self.off[:k], self.cap[:k], self.wire[:k], self.ts[:k], self.lt[:k])


def _make_outputs(key) -> list[np.ndarray]:
    n = key[1]
    return [
        np.empty(n, np.int64),
        np.empty(n, np.uint32),
        np.empty(n, np.uint32),
        np.empty(n, np.int64),
        np.empty(n, np.uint16),
    ]


# ---------------------------------------------------------------------------------------------------
# Header parsing (Python: once per file / section / interface)
# ---------------------------------------------------------------------------------------------------


@dataclass
class _PcapHeader:
    big: bool
    nanos: bool
    hdr_len: int
    linktype: int
    snaplen: int
    fcs_info: int  # the upper bits of the link-type field (FCS length/flag), kept for reference


class _HeaderError(Exception):
    def __init__(self, offset: int, message: str):
        super().__init__(message)
        self.offset = offset
        self.message = message


def _parse_pcap_header(head: bytes) -> _PcapHeader:
    if len(head) < 24:
        raise _HeaderError(0, f"file too short for a pcap header ({len(head)} of 24 bytes)")
    big = head[:4] in (
        struct.pack(">I", PCAP_MAGIC_US),
        struct.pack(">I", PCAP_MAGIC_NS),
        struct.pack(">I", PCAP_MAGIC_MODIFIED),
    )
    e = ">" if big else "<"
    magic, major, minor, _zone, _sigfigs, snaplen, ltfield = struct.unpack(e + "IHHiIII", head[:24])
    # libpcap and tshark read only major version 2; minor versions differ only in ancient files
    # (2.2/2.3 writers), and tshark reads 2.5 as 2.4, so any minor version is accepted.
    if major != 2:
        raise _HeaderError(4, f"unsupported pcap version {major}.{minor} (only 2.x exists)")
    # Bits 16-25 of the link-type field are reserved (bits 26-31 carry the FCS length). Set reserved
    # bits mean a writer we do not understand: like libpcap and tshark, refuse the file rather than
    # guess what its records mean.
    if ltfield & _LT_RESERVED_MASK:
        raise _HeaderError(
            20, f"reserved bits set in the pcap link-type field (0x{ltfield:08x}): unknown format extension"
        )
    return _PcapHeader(
        big=big,
        nanos=magic == PCAP_MAGIC_NS,
        hdr_len=24 if magic == PCAP_MAGIC_MODIFIED else 16,
        linktype=ltfield & 0xFFFF,
        snaplen=snaplen,
        fcs_info=ltfield >> 26,
    )


def _walk_options(body: bytes, start: int, big: bool, block_off: int, what: str) -> dict[int, bytes]:
    """pcapng options of one block (first value of each code); an option that overruns the block is damage."""
    e = ">" if big else "<"
    opts: dict[int, bytes] = {}
    p = start
    while len(body) - p >= 4:
        code, length = struct.unpack_from(e + "HH", body, p)
        if code == 0:  # opt_endofopt
            break
        if p + 4 + length > len(body):
            raise _HeaderError(
                block_off + p, f"{what} option {code} of length {length} runs past the end of the block"
            )
        opts.setdefault(code, body[p + 4 : p + 4 + length])
        p += 4 + ((length + 3) & ~3)
    return opts


def _parse_shb(block: bytes, block_off: int) -> bool:
    """Validate a complete Section Header Block; returns its byte order (True = big-endian)."""
    if len(block) < 28:
        raise _HeaderError(block_off, f"section header block too short ({len(block)} bytes)")
    if struct.unpack_from(">I", block, 8)[0] == PCAPNG_BOM:
        big = True
    elif struct.unpack_from("<I", block, 8)[0] == PCAPNG_BOM:
        big = False
    else:
        raise _HeaderError(block_off + 8, "section header block without a byte-order magic")
    e = ">" if big else "<"
    major, minor = struct.unpack_from(e + "HH", block, 12)
    # libpcap accepts 1.0 and 1.2; 1.x is the only major version ever defined.
    if major != 1:
        raise _HeaderError(block_off + 12, f"unsupported pcapng version {major}.{minor}")
    _walk_options(block[: len(block) - 4], 24, big, block_off, "section header")
    return big


@dataclass
class _Interface:
    linktype: int
    snaplen: int
    kind: int
    exp: int
    off_ns: int


def _parse_idb(block: bytes, block_off: int, big: bool) -> _Interface:
    if len(block) < 20:
        raise _HeaderError(block_off, f"interface description block too short ({len(block)} bytes)")
    e = ">" if big else "<"
    linktype, _reserved, snaplen = struct.unpack_from(e + "HHI", block, 8)
    opts = _walk_options(block[: len(block) - 4], 16, big, block_off, "interface description")
    kind, exp, off_ns = _TS_DEC, 6, 0  # default resolution: microseconds
    res = opts.get(9)  # if_tsresol: MSB clear = 10^-n, set = 2^-n
    if res:
        kind = _TS_BIN if res[0] & 0x80 else _TS_DEC
        exp = res[0] & 0x7F
    tso = opts.get(14)  # if_tsoffset: signed seconds added to every time stamp
    if tso is not None and len(tso) >= 8:
        off_s = struct.unpack(e + "q", tso[:8])[0]
        off_ns = off_s * _NS
        if not -_INT64_MAX <= off_ns <= _INT64_MAX:
            kind = _TS_BAD  # every time stamp of this interface is out of range: counted per record
            off_ns = 0
    return _Interface(linktype, snaplen, kind, exp, off_ns)


class _InterfaceTable:
    """The interfaces of the current section as the arrays the compiled walker reads."""

    def __init__(self) -> None:
        self.items: list[_Interface] = []
        self._arrays = self._build()

    def reset(self) -> None:
        self.items = []
        self._arrays = self._build()

    def add(self, itf: _Interface) -> None:
        self.items.append(itf)
        self._arrays = self._build()

    def _build(self):
        it = self.items
        return (
            np.array([i.linktype for i in it] or [0], dtype=np.uint16),
            np.array([i.snaplen for i in it] or [0], dtype=np.int64),
            np.array([i.kind for i in it] or [0], dtype=np.int64),
            np.array([i.exp for i in it] or [0], dtype=np.int64),
            np.array([i.off_ns for i in it] or [0], dtype=np.int64),
            len(it),
        )

    @property
    def arrays(self):
        return self._arrays


# ---------------------------------------------------------------------------------------------------
# Reader
# ---------------------------------------------------------------------------------------------------


def _read_head(path: str, n: int) -> tuple[bytes, bool]:
    """First ``n`` bytes of the decompressed stream (fewer if it is shorter) and whether it is gzip."""
    stream, raw, gz = _open_stream(path)
    try:
        out = bytearray()
        while len(out) < n:
            got = stream.read(n - len(out))
            if not got:
                break
            out += got
        return bytes(out), gz
    finally:
        stream.close()
        raw.close()


def _damage_text(code: int, detail: int, fmt: str) -> str:
    text = _DAMAGE_TEXT.get(code)
    return text.format(detail=detail) if text else f"damaged {fmt} structure (code {code})"


_DAMAGE_TEXT = {
    _D_CAPLEN: "bogus captured length {detail} in record header",
    _D_BOM: "section header block with unknown byte-order magic 0x{detail:08x}",
    _D_BLEN: "bad block length {detail} (must be >= 12 and a multiple of 4)",
    _D_BIG: f"bogus block length {{detail}} (over {_MAX_BLOCK} bytes)",
    _D_TRAILER: "block length trailer {detail} does not match the block header",
    _D_SHORT: "packet block too short for its fields ({detail} bytes)",
    _D_BLOCK_CAPLEN: "captured length {detail} runs past the end of its packet block",
}


class CaptureReader:
    """One capture file; :meth:`batches` streams its records, :attr:`stats` tells what happened."""

    def __init__(self, path: str, fmt: str, gz: bool, pcap_header: _PcapHeader | None):
        self.path = path
        self._fmt = fmt
        self._gz = gz
        self._pcap = pcap_header
        self.stats = self._fresh_stats()

    def _fresh_stats(self) -> CaptureStats:
        st = CaptureStats(path=self.path, format=self._fmt + (", gzip" if self._gz else ""))
        if self._pcap is not None:
            st.linktypes.add(self._pcap.linktype)
        return st

    def __repr__(self) -> str:
        return f"CaptureReader({self.path!r}, format={self.stats.format!r})"

    def batches(
        self, chunk_bytes: int = DEFAULT_CHUNK, *, threaded: bool | None = None
    ) -> Iterator[RecordBatch]:
        """Stream the records, one batch per chunk of the capture (empty batches are never yielded).

        Reading starts from the beginning on every call and resets :attr:`stats`. ``threaded`` (default:
        when the file is larger than one chunk) reads, decompresses and hashes on a helper thread.
        """
        chunk_bytes = max(int(chunk_bytes), 64)
        if threaded is None:
            try:
                threaded = os.path.getsize(self.path) > chunk_bytes
            except OSError:
                threaded = False
        self.stats = st = self._fresh_stats()
        try:
            source = _Source(self.path, chunk_bytes, threaded)
        except OSError as exc:
            raise CaptureError(self.path, f"cannot open: {exc.strerror or exc}") from exc
        try:
            window = _Window(source)
            walk = self._walk_pcap if self._pcap is not None else self._walk_pcapng
            for batch in walk(window, st):
                st.records += len(batch)
                st.bytes_read, st.file_bytes_read = source.bytes_read, source.file_pos
                yield batch
            if source.error is None:
                source.drain()  # after damage: the content hash still covers the whole stream
        finally:
            source.close()
            st.bytes_read, st.file_bytes_read = source.bytes_read, source.file_pos
            if source.error is not None:
                if not st.damage:
                    st.damage.append(Damage(self.path, source.error.offset, source.error.message))
            else:
                st.sha256 = source.sha256
            for d in st.damage:
                log.debug("%s", d)

    def _damage(self, st: CaptureStats, offset: int, message: str) -> None:
        st.damage.append(Damage(self.path, offset, message))

    def _end_of_stream(self, window: _Window, st: CaptureStats, need: int) -> None:
        """The pcapng stream ended (or failed) while ``need`` bytes were wanted at window.pos."""
        if window.source.error is not None or not window.avail:
            return  # stream error (reported by batches) or a clean end between blocks
        at, left = window.offset(window.pos), window.avail
        if need == 12:
            msg = f"block header cut short: {left} of 12 bytes at the end of the file"
        else:
            msg = f"block cut short: block length {need}, {left} bytes remain"
        self._damage(st, at, msg)

    def _walk_pcap(self, window: _Window, st: CaptureStats) -> Iterator[RecordBatch]:
        h = self._pcap
        assert h is not None
        if not window.more(24):
            if window.source.error is None:
                self._damage(st, 0, "pcap header missing (file changed since it was opened?)")
            return
        window.pos += 24
        frac_mult = 1 if h.nanos else 1000
        max_caplen = max(_MAX_CAPLEN, min(h.snaplen, _MAX_BLOCK))
        skipped = np.zeros(3, dtype=np.int64)
        out = _Outputs(window.avail, window.source.chunk_bytes)
        while True:
            out.k, window.pos, status, code, detail = _walk_pcap(
                window.buf,
                window.pos,
                window.end,
                h.big,
                h.hdr_len,
                frac_mult,
                max_caplen,
                out.off,
                out.cap,
                out.wire,
                out.ts,
                out.k,
                skipped,
            )
            self._count_skips(st, skipped)
            if out.k:
                out.lt[: out.k] = h.linktype
                yield out.batch(window.buf)
            if status == _ST_DAMAGE:
                self._damage(st, window.offset(window.pos), _damage_text(code, detail, "pcap"))
                return
            if status == _ST_NEED:
                if not window.more(detail):
                    self._pcap_cut_short(window, st, h.hdr_len, detail)
                    return
            out = _Outputs(window.avail, window.source.chunk_bytes)

    def _pcap_cut_short(self, window: _Window, st: CaptureStats, hdr_len: int, need: int) -> None:
        if window.source.error is not None or not window.avail:
            return  # stream error (reported by batches) or a clean end between records
        at, left = window.offset(window.pos), window.avail
        if need == hdr_len:
            msg = f"record header cut short: {left} of {hdr_len} bytes at the end of the file"
        else:
            msg = (
                f"record cut short: header promises {need - hdr_len} captured bytes, {left - hdr_len} remain"
            )
        self._damage(st, at, msg)

    def _walk_pcapng(self, window: _Window, st: CaptureStats) -> Iterator[RecordBatch]:
        ifaces = _InterfaceTable()
        big = False
        skipped = np.zeros(3, dtype=np.int64)
        out = _Outputs(0, window.source.chunk_bytes)
        while True:
            lt, snap, kind, exp, off, n_if = ifaces.arrays
            out.k, window.pos, status, code, detail = _walk_pcapng(
                window.buf,
                window.pos,
                window.end,
                big,
                lt,
                snap,
                kind,
                exp,
                off,
                n_if,
                out.off,
                out.cap,
                out.wire,
                out.ts,
                out.lt,
                out.k,
                skipped,
            )
            self._count_skips(st, skipped)
            if status in (_ST_SHB, _ST_IDB):
                block_off = window.offset(window.pos)
                block = window.buf[window.pos : window.pos + detail].tobytes()
                try:
                    if status == _ST_SHB:
                        big = _parse_shb(block, block_off)
                        ifaces.reset()
                    else:
                        itf = _parse_idb(block, block_off, big)
                        ifaces.add(itf)
                        st.linktypes.add(itf.linktype)
                except _HeaderError as exc:
                    if out.k:
                        yield out.batch(window.buf)
                    self._damage(st, exc.offset, exc.message)
                    return
                window.pos += detail
                continue
            if out.k:
                yield out.batch(window.buf)
            if status == _ST_DAMAGE:
                self._damage(st, window.offset(window.pos), _damage_text(code, detail, "pcapng"))
                return
            if status == _ST_NEED:
                if not window.more(detail):
                    self._end_of_stream(window, st, detail)
                    return
            out = _Outputs(window.avail, window.source.chunk_bytes)

    @staticmethod
    def _count_skips(st: CaptureStats, skipped: np.ndarray) -> None:
        for i, reason in enumerate(SKIP_REASONS):
            if skipped[i]:
                st.skipped[reason] += int(skipped[i])
        st.other_blocks += int(skipped[_OTHER_BLOCK])
        skipped[:] = 0


def open_capture(path: str | os.PathLike) -> CaptureReader:
    """Check a capture's file header and return a reader; :class:`CaptureError` if it cannot be read at all."""
    p = os.fspath(path)
    try:
        head, gz = _read_head(p, 24)
    except IsADirectoryError as exc:
        raise CaptureError(p, "is a directory, not a capture file") from exc
    except OSError as exc:
        if isinstance(exc, gzip.BadGzipFile):
            raise CaptureError(p, f"corrupt gzip stream ({exc})", offset=0) from exc
        raise CaptureError(p, f"cannot open: {exc.strerror or exc}") from exc
    except (EOFError, zlib.error) as exc:
        raise CaptureError(p, _describe_stream_error(exc), offset=0) from exc
    if not head:
        raise CaptureError(p, "empty file" + (" (inside gzip)" if gz else ""))
    try:
        if head[:4] in _PCAP_MAGICS:
            return CaptureReader(p, "pcap", gz, _parse_pcap_header(head))
        if head[:4] == _PCAPNG_MAGIC:
            _check_first_shb(p, head)
            return CaptureReader(p, "pcapng", gz, None)
    except _HeaderError as exc:
        raise CaptureError(p, exc.message, offset=exc.offset) from exc
    raise CaptureError(
        p,
        f"not a pcap or pcapng capture (starts with {head[:4].hex()})" + (" inside gzip" if gz else ""),
        offset=0,
    )


def _check_first_shb(path: str, head: bytes) -> None:
    """Validate the whole first Section Header Block, so a file whose section cannot be read is refused."""
    if len(head) < 12:
        raise _HeaderError(0, f"file too short for a pcapng section header ({len(head)} bytes)")
    if head[8:12] == struct.pack(">I", PCAPNG_BOM):
        e = ">"
    elif head[8:12] == struct.pack("<I", PCAPNG_BOM):
        e = "<"
    else:
        raise _HeaderError(8, "pcapng section header without a byte-order magic")
    blen = struct.unpack_from(e + "I", head, 4)[0]
    if blen < 28 or blen % 4 or blen > _MAX_BLOCK:
        raise _HeaderError(4, f"bad section header block length {blen}")
    try:
        block, _ = _read_head(path, blen)
    except (OSError, EOFError, zlib.error) as exc:
        raise _HeaderError(0, _describe_stream_error(exc)) from exc
    if len(block) < blen:
        raise _HeaderError(0, f"section header block cut short ({len(block)} of {blen} bytes)")
    if struct.unpack_from(e + "I", block, blen - 4)[0] != blen:
        raise _HeaderError(blen - 4, "section header block length trailer does not match")
    _parse_shb(block, 0)


def content_sha256(path: str | os.PathLike) -> str | None:
    """sha256 of the decompressed capture stream, as ``CaptureStats.sha256`` gives it after a full
    read; None when the stream cannot be read to its end (corrupt gzip). ``OSError`` if unreadable."""
    stream, raw, _ = _open_stream(os.fspath(path))
    h = hashlib.sha256()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    try:
        while n := stream.readinto(view):
            h.update(view[:n])
    except (EOFError, zlib.error, gzip.BadGzipFile):
        return None
    finally:
        stream.close()
        raw.close()
    return h.hexdigest()


def sniff_capture(path: str | os.PathLike) -> bool:
    """Cheap test for directory scans: does the file start like a pcap or pcapng (possibly gzipped)?"""
    return sniff_start(path) == "capture"


_MAGICS = (*_PCAP_MAGICS, _PCAPNG_MAGIC)


def sniff_start(path: str | os.PathLike) -> str:
    """What the first bytes of a file say, for directory scans: ``"capture"`` (a pcap or pcapng magic,
    possibly inside gzip), ``"partial"`` (empty, or fewer bytes than a magic and a prefix of one: tcpdump
    without ``-U`` writes nothing to a new file until about 4 KiB are buffered, so the file it is
    writing may look like this for a whole rotation on a quiet link) or ``"other"``."""
    try:
        head, gz = _read_head(os.fspath(path), 4)
    except EOFError:  # a gzip stream cut before its first bytes: still being written, or cut short
        return "partial"
    except Exception:  # any other unreadable file is simply "not a capture"
        return "other"
    if head in _MAGICS:
        return "capture"
    if len(head) < 4 and (
        any(m.startswith(head) for m in _MAGICS) or (not gz and GZIP_MAGIC.startswith(head))
    ):
        return "partial"
    return "other"
