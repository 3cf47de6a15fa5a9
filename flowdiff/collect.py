"""collect: captures -> decode -> aggregate -> store, one capture at a time.

A capture is streamed: while it is read, every interval older than the newest one is drained out of
the Aggregator and merged into the store as a numbered *part* of the capture (``<capture id>#<k>``), so
memory stays flat however long the capture. Only after the last part is durable is the capture entered
in the ledger. Each interval file remembers which parts it holds, and the parts of a capture are the
same on every run (same bytes, same chunks), so a crash at any moment followed by a re-run gives
exactly the store of an uninterrupted run. A frame arriving late for an interval already drained is in
a later part, which merges into that interval's file like any other.

The capture id is known before the capture is read: a hash of its size and its first and last MiB.
When the ledger already has a capture of the same size, the whole file is hashed first instead (its
sha256 is then the id): a renamed copy is recognised before anything is written.

Threads (two cores): one reads and hashes the file, one walks and decodes the records, the caller
aggregates, and one builds the drained tables and writes them; the compiled loops release the GIL.

Which files are collected:

* files named on the command line are always read (unless the ledger already has them);
* in a directory (a ``tcpdump -G`` spool), the newest capture is the one tcpdump may still be writing:
  it is left for the next run unless ``all_files`` is set or it has not changed for ``config.settle``
  seconds; files that are not captures (by their first bytes) are ignored and counted;
* a capture already in the ledger (same path, size and modification time, or the same content hash)
  is skipped, so collecting the same file again changes nothing.
"""

from __future__ import annotations

import collections
import contextlib
import glob
import hashlib
import logging
import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

from flowdiff.aggregate import Aggregator, Drained
from flowdiff.capture import DEFAULT_CHUNK, CaptureReader, content_sha256, open_capture, sniff_capture
from flowdiff.config import Config, TableConfig
from flowdiff.decode import decode, decoded_linktypes, linktype_name
from flowdiff.errors import CaptureError
from flowdiff.schema import INTERVAL, DecodeStatus
from flowdiff.store import LedgerEntry, Store

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (path, bytes done, bytes total)


@dataclass
class FileResult:
    path: str
    status: str  # ok | damaged | failed | known (already in the ledger)
    records: int = 0
    bytes: int = 0  # wire bytes counted
    rows_written: int = 0
    message: str = ""


@dataclass
class CollectResult:
    files: list[FileResult] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)  # newest spool files left for the next run
    ignored: list[str] = field(default_factory=list)  # non-capture files found in directories
    packets: int = 0
    bytes: int = 0
    rows_written: int = 0
    intervals: set = field(default_factory=set)
    skipped: Counter = field(default_factory=Counter)  # frames counted by no table, by reason
    seconds: float = 0.0

    @property
    def files_ok(self) -> int:
        return sum(f.status in ("ok", "damaged") for f in self.files)

    @property
    def files_known(self) -> int:
        return sum(f.status == "known" for f in self.files)

    @property
    def files_failed(self) -> int:
        return sum(f.status == "failed" for f in self.files)

    @property
    def files_skipped(self) -> int:
        return self.files_known + len(self.deferred) + len(self.ignored)

    @property
    def errors(self) -> list[str]:
        """One line per capture that could not be read at all or was damaged."""
        return [f.message for f in self.files if f.status in ("failed", "damaged")]

    @property
    def exit_code(self) -> int:
        """0, or 2 when any capture could not be read at all (damaged files still count as read)."""
        return 2 if self.files_failed else 0

    @property
    def mpps(self) -> float:
        return self.packets / self.seconds / 1e6 if self.seconds > 0 else 0.0

    def summary(self) -> str:
        parts = [
            f"{self.files_ok} file{'s' if self.files_ok != 1 else ''} collected",
            f"{self.packets:,} packets",
            f"{self.bytes:,} bytes",
            f"{len(self.intervals)} interval{'s' if len(self.intervals) != 1 else ''}",
            f"{self.rows_written:,} rows written",
            f"{self.seconds:.2f} s",
            f"{self.mpps:.2f} Mpps",
        ]
        extra = []
        if self.files_known:
            extra.append(f"{self.files_known} already collected")
        if self.deferred:
            extra.append(f"{len(self.deferred)} still being written")
        if self.files_failed:
            extra.append(f"{self.files_failed} unreadable")
        if self.ignored:
            extra.append(f"{len(self.ignored)} not captures")
        if self.skipped:
            extra.append(
                "skipped frames: " + ", ".join(f"{k} {v:,}" for k, v in sorted(self.skipped.items()))
            )
        return ", ".join(parts) + (f" ({'; '.join(extra)})" if extra else "")


# ---------------------------------------------------------------- finding captures


def find_captures(
    paths: Iterable[str | os.PathLike],
    *,
    all_files: bool = False,
    settle: int = 600,
    now: float | None = None,
) -> tuple[list[Path], list[Path], list[Path]]:
    """Expand files, directories and globs into (captures to read, deferred, ignored non-captures)."""
    now = time.time() if now is None else now
    files: list[Path] = []
    deferred: list[Path] = []
    ignored: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found, late, other = _scan_dir(p, all_files=all_files, settle=settle, now=now)
            files += found
            deferred += late
            ignored += other
        elif p.exists():
            files.append(p)
        elif glob.has_magic(str(raw)):
            matches = sorted(Path(m) for m in glob.glob(str(raw)))
            files += [m for m in matches if m.is_file()]
        else:
            files.append(p)  # reported as unreadable by the reader, with its name
    seen: set[Path] = set()
    unique = []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique, deferred, ignored


def _scan_dir(
    d: Path, *, all_files: bool, settle: int, now: float
) -> tuple[list[Path], list[Path], list[Path]]:
    captures, ignored = [], []
    for p in sorted(d.iterdir()):
        if not p.is_file() or p.name.startswith("."):
            continue
        (captures if sniff_capture(p) else ignored).append(p)
    deferred = []
    if captures and not all_files:
        newest = max(captures, key=lambda p: (p.stat().st_mtime_ns, p.name))
        if now - newest.stat().st_mtime < settle:
            captures.remove(newest)
            deferred.append(newest)
    return captures, deferred, ignored


def spool_captures(directory: str | os.PathLike, config: Config, all_files: bool = False) -> list[Path]:
    """Closed captures of a tcpdump spool directory (the newest one waits; see the module doc)."""
    found, _, _ = find_captures([directory], all_files=all_files, settle=config.settle)
    return found


# ---------------------------------------------------------------- collecting


def collect(
    paths: Sequence[str | os.PathLike],
    config: Config,
    *,
    all_files: bool = False,
    tables: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> CollectResult:
    """Collect captures into ``config.store``. Never raises for a bad capture: each one becomes a
    FileResult with a one-line message; a store or config problem raises FlowdiffError."""
    t0 = time.perf_counter()
    selected = config.select_tables(tables)
    store = Store(config.store, config.sensor)
    result = CollectResult()
    files, deferred, ignored = find_captures(paths, all_files=all_files, settle=config.settle)
    result.deferred = [str(p) for p in deferred]
    result.ignored = [str(p) for p in ignored]
    with store.lock():
        store.remove_stale_temp_files()
        for name, tc in selected.items():
            store.ensure_table(name, tc.keys, config.interval)
        known = _ledger_index(store)
        for path in files:
            result.files.append(_collect_one(path, config, selected, store, known, result, progress))
    result.seconds = time.perf_counter() - t0
    return result


_Known = tuple[set[tuple[str, int, int]], set[str], set[int]]  # (path, size, mtime), sha256s, sizes


def _ledger_index(store: Store) -> _Known:
    by_stat, by_hash, sizes = set(), set(), set()
    for e in store.ledger():
        if e.status in ("ok", "damaged", "failed"):
            by_stat.add((e.path, e.size, e.mtime_ns))
        if e.sha256 and e.status in ("ok", "damaged"):
            by_hash.add(e.sha256)
            sizes.add(e.size)
    return by_stat, by_hash, sizes


def _collect_one(
    path: Path,
    config: Config,
    tables: dict[str, TableConfig],
    store: Store,
    known: _Known,
    result: CollectResult,
    progress: Progress | None,
) -> FileResult:
    by_stat, by_hash, known_sizes = known
    try:
        st = path.stat()
    except OSError as e:
        return FileResult(str(path), "failed", message=f"{path}: cannot read: {e.strerror}")
    stat_key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if stat_key in by_stat:
        return FileResult(str(path), "known")
    fr = FileResult(str(path), "ok")
    try:
        reader = open_capture(path)
        capture_id, sha = _capture_id(path, st.st_size, known)
        if sha is not None and sha in by_hash:  # the same capture under another name or with a new mtime
            store.ledger_append(LedgerEntry(stat_key[0], st.st_size, st.st_mtime_ns, sha, 0, "ok",
                                            "same content as a capture already collected",
                                            sensor=config.sensor))  # fmt: skip
            by_stat.add(stat_key)
            fr.status = "known"
            return fr
        agg = Aggregator(tables, interval=config.interval, networks=config.networks,
                         service_ports=config.service_ports)  # fmt: skip
        parts = _PartWriter(store, tables, capture_id, fr, result)
        try:
            fr.bytes = _read_all(reader, agg, parts, st.st_size, progress)
            parts.submit(agg.finish())
        finally:
            parts.close()
    except CaptureError as e:
        store.ledger_append(LedgerEntry(stat_key[0], st.st_size, st.st_mtime_ns, None, 0, "failed", str(e),
                                        sensor=config.sensor))  # fmt: skip
        return FileResult(str(path), "failed", message=str(e))
    stats = reader.stats
    fr.status, fr.records, wire = ("damaged" if stats.damage else "ok"), stats.records, fr.bytes
    if stats.damage:
        fr.message = str(stats.damage[0]) + f" (kept the {stats.records:,} records before it)"
    store.ledger_append(LedgerEntry(stat_key[0], st.st_size, st.st_mtime_ns, stats.sha256, stats.records,
                                    fr.status, fr.message, sensor=config.sensor))  # fmt: skip
    if stats.sha256:
        by_hash.add(stats.sha256)
        known_sizes.add(st.st_size)
    by_stat.add(stat_key)
    result.packets += stats.records
    result.bytes += wire
    result.rows_written += fr.rows_written
    result.skipped.update(agg.skipped)
    result.skipped.update(stats.skipped)
    _note_unknown_linktypes(reader, agg, fr)
    return fr


def _capture_id(path: Path, size: int, known: _Known) -> tuple[str, str | None]:
    """An id of the capture's content known before it is read, for the parts written while reading:
    a hash of its size, first and last MiB. When a capture already collected has the same size, the
    whole (decompressed) stream is hashed first and returned as the second value, the ledger's content
    hash: a renamed copy is then recognised before anything is written, and two different captures
    never share part ids."""
    try:
        if size in known[2]:
            sha = content_sha256(path)
            if sha is not None:
                return sha, sha
        h = hashlib.sha256(str(size).encode())
        with open(path, "rb") as f:
            if size in known[2]:  # a corrupt gzip stream: the raw bytes identify it
                while block := f.read(1 << 20):
                    h.update(block)
            else:
                h.update(f.read(_ID_SPAN))
                if size > _ID_SPAN:
                    f.seek(max(size - _ID_SPAN, _ID_SPAN))
                    h.update(f.read(_ID_SPAN))
    except OSError as e:
        raise CaptureError(str(path), f"cannot read: {e.strerror or e}") from e
    return "h" + h.hexdigest()[:32], None


_ID_SPAN = 1 << 20


class _PartWriter:
    """Merges the rows drained from the Aggregator into the store as numbered parts of a capture.

    Part ``k`` of capture ``c`` has the source id ``c#k``: reading is deterministic, so a re-run after a
    crash drains the same parts and the store skips exactly those an interval file already holds.
    Tables are built and written on a helper thread (Arrow and the compiled stage 2 release the GIL)
    while reading goes on; at most ``_AHEAD`` parts wait, which bounds memory. Parts are written in
    order, one at a time; :meth:`close` waits for all of them (and raises a store error, if any)."""

    _AHEAD = 2

    def __init__(self, store: Store, tables: dict[str, TableConfig], capture_id: str, fr: FileResult,
                 result: CollectResult):  # fmt: skip
        self.store, self.tables, self.capture_id = store, tables, capture_id
        self.fr, self.result = fr, result
        self.parts = 0
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="flowdiff-store")
        self._pending: collections.deque[Future] = collections.deque()

    def submit(self, drained: Drained | dict[str, pa.Table] | None) -> None:
        if drained is None or (isinstance(drained, dict) and not any(t.num_rows for t in drained.values())):
            return
        source = f"{self.capture_id}#{self.parts}"
        self.parts += 1
        while len(self._pending) >= self._AHEAD:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._write, drained, source))

    def close(self) -> None:
        """Wait until every part is durable; the first error is raised (the other parts still finish)."""
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def _write(self, drained: Drained | dict[str, pa.Table], source: str) -> None:
        tables = drained.tables() if isinstance(drained, Drained) else drained
        with self.store.batch() as batch:
            for name, rows in tables.items():
                if not rows.num_rows:
                    continue
                self.fr.rows_written += batch.write_interval_rows(
                    name, self.tables[name].keys, rows, source, presorted=True
                )
                self.result.intervals.update(_interval_starts(rows))


def _interval_starts(rows: pa.Table) -> set:
    starts = rows.column(INTERVAL).combine_chunks().cast(pa.int64()).to_numpy()
    return {datetime.fromtimestamp(int(v) / 1e6, UTC) for v in np.unique(starts)}


_DONE = object()
# Bytes read per chunk. Part of what makes the drained parts of a capture deterministic (a re-run after a
# crash must drain the same parts); tests make it small to get many parts out of a small capture.
_CHUNK_BYTES = DEFAULT_CHUNK


def _decoded(reader: CaptureReader) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """(decoded chunk, its wire bytes), walked and decoded one chunk ahead on a helper thread: the
    compiled walker and decoder release the GIL, so they run on the second core while the caller
    aggregates (the reader itself reads and hashes on a third thread)."""
    q: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def produce() -> None:
        try:
            for batch in reader.batches(_CHUNK_BYTES):
                if stop.is_set():
                    break
                packets = decode(batch)
                q.put((packets, int(np.add.reduce(batch.wirelen, dtype=np.uint64))))
            q.put(_DONE)
        except BaseException as e:  # handed to the consumer, raised there
            q.put(e)

    worker = threading.Thread(target=produce, name="flowdiff-decode", daemon=True)
    worker.start()
    try:
        while (item := q.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():
            with contextlib.suppress(queue.Empty):
                q.get(timeout=0.05)
        worker.join()


def _read_all(reader: CaptureReader, agg: Aggregator, parts: _PartWriter, total: int,
              progress: Progress | None) -> int:  # fmt: skip
    wire = 0
    for packets, nbytes in _decoded(reader):
        agg.add(packets)
        wire += nbytes
        if agg.closed_intervals():
            parts.submit(agg.drain_deferred())
        if progress is not None:
            progress(str(reader.path), min(reader.stats.file_bytes_read, total), total)
    return wire


def _note_unknown_linktypes(reader: CaptureReader, agg: Aggregator, fr: FileResult) -> None:
    name = DecodeStatus.NAMES[DecodeStatus.UNKNOWN_LINKTYPE]
    if agg.skipped.get(name):
        unknown = sorted(set(reader.stats.linktypes) - set(decoded_linktypes()))
        kinds = ", ".join(f"{n} ({linktype_name(n)})" for n in unknown)
        msg = f"{reader.path}: {agg.skipped[name]:,} frames of unknown link type {kinds} were not counted"
        log.warning(msg)
        fr.message = fr.message or msg
