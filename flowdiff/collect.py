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

* files named on the command line, and the files a glob matches, are always read (unless the ledger
  already has them); a path that does not exist, or a glob that matches nothing, is an error
  (:class:`CaptureError`, raised before anything is read): a typo in a cron line must not look like a
  quiet network;
* in a directory (a ``tcpdump -G`` spool), only the newest file can be the one tcpdump is still
  writing; every older capture is closed and read at once. The newest is found among the files that
  start like a capture or could be the start of one (empty, or a few bytes of a magic: tcpdump without
  ``-U`` writes nothing to a new file until about 4 KiB are buffered). Names made by ``strftime``
  (every candidate has the same shape, digits aside, and at least 6 digits) sort in time order, so the
  last name is the newest; otherwise the last modified file is. The newest waits for the next run if
  it has no complete magic yet (always), or it has changed in the last ``config.settle`` seconds
  (unless ``all_files``). An older empty file is ignored as "empty", never holding the others back;
  files that are not captures (by their first bytes) are ignored and named (``ignored_reasons``);
* a capture already in the ledger (same path, size and modification time, or the same content hash)
  is skipped, so collecting the same file again changes nothing, unless some of the selected tables
  were not filled from it yet (a table added to the config later, or an earlier ``--table``): it is
  then read again for exactly those tables, under the same part ids, and the ledger gets an entry
  naming them. A capture that could not be read at all is remembered as such and not retried.
"""

from __future__ import annotations

import collections
import contextlib
import glob
import hashlib
import logging
import os
import queue
import re
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from flowdiff._jit import interpreted, interpreted_below
from flowdiff.aggregate import Aggregator, Drained
from flowdiff.capture import DEFAULT_CHUNK, CaptureReader, content_sha256, open_capture, sniff_start
from flowdiff.config import Config, TableConfig
from flowdiff.dayfile import DayFiles
from flowdiff.decode import decode, decoded_linktypes, linktype_name
from flowdiff.errors import CaptureError, StoreError
from flowdiff.exitcodes import ExitCode
from flowdiff.listen import is_flow_spool
from flowdiff.schema import INTERVAL, DecodeStatus, log_tables, packet_tables
from flowdiff.store import LedgerEntry, Store, int64_values
from flowdiff.zeek import ZeekReader, sniff_conn_log

if TYPE_CHECKING:  # flow records and syslog are imported when a file needs them (start-up of cron runs)
    from flowdiff.netflow import FlowRouter, TemplateStore

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
    tables: list[str] = field(default_factory=list)  # the tables this read filled
    again: bool = False  # read again for tables it had not filled yet


@dataclass
class CollectResult:
    files: list[FileResult] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)  # newest spool files left for the next run
    ignored: list[str] = field(default_factory=list)  # files of directories that are not captures
    ignored_reasons: dict[str, str] = field(default_factory=dict)  # path -> "empty" | "not a capture"
    empty_dirs: list[str] = field(default_factory=list)  # directories without any capture
    packets: int = 0
    bytes: int = 0
    rows_written: int = 0
    intervals: set[datetime] = field(default_factory=set)
    skipped: Counter = field(default_factory=Counter)  # frames counted by no table, by reason
    seconds: float = 0.0
    flow_records: int = 0  # NetFlow/IPFIX records and Zeek connections counted

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
    def files_again(self) -> list[FileResult]:
        """Captures collected before, read again for tables they had not filled yet."""
        return [f for f in self.files if f.again and f.status in ("ok", "damaged")]

    @property
    def files_skipped(self) -> int:
        return self.files_known + len(self.deferred) + len(self.ignored)

    @property
    def errors(self) -> list[str]:
        """One line per capture that could not be read at all or was damaged."""
        return [f.message for f in self.files if f.status in ("failed", "damaged")]

    @property
    def exit_code(self) -> ExitCode:
        """OK, or ERROR when any capture could not be read at all (damaged files still count as read)."""
        return ExitCode.ERROR if self.files_failed else ExitCode.OK

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
        if self.flow_records:
            parts.insert(2, f"{self.flow_records:,} flow records")
        extra = []
        if again := self.files_again:
            tables = sorted({t for f in again for t in f.tables})
            extra.append(
                f"{len(again)} read again for table{'s' if len(tables) != 1 else ''} {', '.join(tables)}"
            )
        if self.files_known:
            extra.append(f"{self.files_known} already collected")
        if self.deferred:
            extra.append(f"{len(self.deferred)} still being written")
        if self.files_failed:
            extra.append(f"{self.files_failed} unreadable")
        if self.ignored:
            extra.append(f"{len(self.ignored)} not captures")
        for d in self.empty_dirs:
            extra.append(f"no capture in {d}")
        if self.skipped:
            extra.append(
                "skipped frames: " + ", ".join(f"{k} {v:,}" for k, v in sorted(self.skipped.items()))
            )
        return ", ".join(parts) + (f" ({'; '.join(extra)})" if extra else "")


# ---------------------------------------------------------------- finding captures


@dataclass
class Found:
    """What :func:`scan_paths` found: captures to read, files left for the next run, files ignored
    (path -> why) and directories without any capture."""

    files: list[Path] = field(default_factory=list)
    deferred: list[Path] = field(default_factory=list)
    ignored: dict[Path, str] = field(default_factory=dict)
    empty_dirs: list[Path] = field(default_factory=list)


def find_captures(
    paths: Iterable[str | os.PathLike],
    *,
    all_files: bool = False,
    settle: int = 600,
    now: float | None = None,
) -> tuple[list[Path], list[Path], list[Path]]:
    """Expand files, directories and globs into (captures to read, deferred, ignored non-captures).
    Raises CaptureError for a path that does not exist or a glob that matches nothing."""
    found = scan_paths(paths, all_files=all_files, settle=settle, now=now)
    return found.files, found.deferred, list(found.ignored)


def scan_paths(
    paths: Iterable[str | os.PathLike],
    *,
    all_files: bool = False,
    settle: int = 600,
    now: float | None = None,
) -> Found:
    """:func:`find_captures` with the reasons: which files were ignored why, which directories were empty."""
    now = time.time() if now is None else now
    found = Found()
    files: list[Path] = []
    missing: list[str] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            targets = [p]
        elif p.exists():
            targets = [p]
        elif glob.has_magic(str(raw)):
            targets = [m for m in (Path(m) for m in sorted(glob.glob(str(raw)))) if m.is_dir() or m.is_file()]
        else:
            targets = []
        if not targets:
            missing.append(str(raw))
        for t in targets:
            if t.is_dir():
                _scan_dir(t, found, all_files=all_files, settle=settle, now=now)
                files += found.files
                found.files = []
            else:
                files.append(t)
    if missing:
        first = missing[0]
        what = "no file matches this pattern" if glob.has_magic(first) else "no such file or directory"
        more = f" (and {len(missing) - 1} more: {', '.join(missing[1:])})" if len(missing) > 1 else ""
        raise CaptureError(first, f"{what}; nothing was collected{more}")
    seen: set[Path] = set()
    unique = []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    found.files = unique
    return found


# tcpdump -G names files with strftime: same shape, digits aside, and enough digits to hold a time
_DIGIT = re.compile(r"\d")
_MIN_STAMP_DIGITS = 6


def _newest(candidates: list[tuple[Path, os.stat_result]]) -> Path | None:
    """The file tcpdump may still be writing: the last by name when the names are time stamps of one
    pattern (they sort in time order), else the last modified (then by name)."""
    if not candidates:
        return None
    shapes = {_DIGIT.sub("0", p.name) for p, _ in candidates}
    if len(shapes) == 1 and len(_DIGIT.findall(candidates[0][0].name)) >= _MIN_STAMP_DIGITS:
        return max(p for p, _ in candidates)
    return max(candidates, key=lambda c: (c[1].st_mtime_ns, c[0].name))[0]


# Names tcpdump, dumpcap and rotation scripts give captures. In a spool, such a file that does not start like
# a capture is damage (a disk error, a wrong tool), not a stray note: it is reported as unreadable, not ignored.
CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap", ".dmp", ".pcap.gz", ".pcapng.gz", ".cap.gz")


def _scan_dir(d: Path, found: Found, *, all_files: bool, settle: int, now: float) -> None:
    candidates: list[tuple[Path, os.stat_result, str]] = []
    for p in sorted(d.iterdir()):
        if p.name.startswith("."):
            continue
        try:
            st = p.stat()
        except OSError:  # gone since the listing (tcpdump -z, a cleanup job): not ours to read
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        kind = sniff_start(p)
        if kind == "other" and _is_log_file(p):  # syslog: same spool rules, its own newest file
            kind = "log"
        if kind == "other" and sniff_conn_log(p):  # a Zeek conn.log: read like a capture
            kind = "capture"
        if kind == "other" and not p.name.lower().endswith(CAPTURE_SUFFIXES):
            found.ignored[p] = "not a capture"
        else:  # a file named like a capture that does not start like one is read, and fails loudly, once
            candidates.append((p, st, "capture" if kind == "other" else kind))
    if not candidates:
        found.empty_dirs.append(d)
        return
    newest = {_newest([(p, st) for p, st, k in candidates if (k == "log") == logs]) for logs in (False, True)}
    for p, st, kind in candidates:
        if p in newest:
            being_written = kind == "partial" or (not all_files and now - st.st_mtime < settle)
            (found.deferred if being_written else found.files).append(p)
        elif kind == "partial" and st.st_size == 0:
            found.ignored[p] = "empty"  # closed and empty: nothing to read, nothing to hold back
        else:
            found.files.append(p)  # closed; a partial header is reported as unreadable, once


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
    FileResult with a one-line message; a path or glob that names nothing raises CaptureError before
    anything is read, and a store or config problem raises another FlowdiffError."""
    t0 = time.perf_counter()
    selected = config.select_tables(tables)
    store = Store(config.store, config.sensor)
    result = CollectResult()
    found = scan_paths(paths, all_files=all_files, settle=config.settle)
    result.deferred = [str(p) for p in found.deferred]
    result.ignored = [str(p) for p in found.ignored]
    result.ignored_reasons = {str(p): why for p, why in found.ignored.items()}
    result.empty_dirs = [str(d) for d in found.empty_dirs]
    small = interpreted_below(found.files)  # a cron pass of a few packets: no numba (flowdiff/_jit.py)
    with store.lock(), interpreted(small):
        store.remove_stale_temp_files()
        for name, tc in selected.items():
            store.ensure_table(name, tc.keys, config.interval)
        known = _Known.from_ledger(store)
        templates = _LazyTemplates(config.store)
        for path in found.files:
            result.files.append(
                _collect_one(path, config, selected, store, known, result, progress, templates)
            )
        try:
            store.fold_ledger()
        except StoreError as e:  # what was collected stands; the next collect folds again
            log.warning("%s (while folding the ledger; the captures collected stand)", e)
    result.seconds = time.perf_counter() - t0
    return result


_StatKey = tuple[str, int, int]  # (resolved path, size, mtime_ns)


@dataclass
class _Known:
    """What the ledger says. A capture is identified by its content hash, or (when the stream could not
    be hashed: a corrupt gzip) by its stat key."""

    failed: set[_StatKey] = field(default_factory=set)  # unreadable: reported once, never retried
    by_stat: dict[_StatKey, str] = field(default_factory=dict)  # -> identity
    filled: dict[str, set[str]] = field(default_factory=dict)  # identity -> tables filled from it
    ids: dict[str, str] = field(default_factory=dict)  # identity -> capture id of its parts
    sizes: set[int] = field(default_factory=set)  # sizes of the hashed captures

    @classmethod
    def from_ledger(cls, store: Store) -> _Known:
        known = cls()
        for e, tables in store.ledger_tables():
            key = (e.path, e.size, e.mtime_ns)
            if e.status == "failed":
                known.failed.add(key)
            elif e.status in ("ok", "damaged"):
                known.add(key, e.sha256, tables, e.capture_id)
        return known

    def add(self, key: _StatKey, sha: str | None, tables: Iterable[str], capture_id: str | None) -> str:
        ident = sha or "stat:{}:{}:{}".format(*key)
        self.by_stat[key] = ident
        self.filled.setdefault(ident, set()).update(tables)
        if capture_id:
            self.ids.setdefault(ident, capture_id)
        if sha:
            self.sizes.add(key[1])
        return ident


def _collect_one(
    path: Path,
    config: Config,
    tables: dict[str, TableConfig],
    store: Store,
    known: _Known,
    result: CollectResult,
    progress: Progress | None,
    templates: _LazyTemplates | None = None,
) -> FileResult:
    try:
        st = path.stat()
    except OSError as e:
        return FileResult(str(path), "failed", message=f"{path}: cannot read: {e.strerror}")
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in known.failed:
        return FileResult(str(path), "known")
    if sniff_start(path) == "other" and _is_log_file(path):
        return _collect_log(path, key, config, log_tables(tables), store, known, result)
    tables = packet_tables(tables)
    ident = known.by_stat.get(key)
    if ident is not None and not set(tables) - known.filled[ident]:
        return FileResult(str(path), "known")

    def entry(
        sha: str | None, records: int, status: str, message: str, filled: list[str], capture_id: str | None
    ) -> LedgerEntry:
        return LedgerEntry(
            key[0],
            key[1],
            key[2],
            sha,
            records,
            status,
            message,
            sensor=config.sensor,
            tables=filled,
            capture_id=capture_id,
        )

    fr = FileResult(str(path), "ok")
    try:
        zeek_kind = sniff_conn_log(path)
        reader = ZeekReader(path, zeek_kind) if zeek_kind else open_capture(path)
        if ident is not None:  # collected before, not for every selected table
            capture_id = known.ids.get(ident) or _capture_id(path, st.st_size, known.sizes)[0]
        else:
            capture_id, sha = _capture_id(path, st.st_size, known.sizes)
            if sha is not None and sha in known.filled:  # the same capture under another name or mtime
                ident, capture_id = sha, known.ids.get(sha, capture_id)
                if not set(tables) - known.filled[sha]:
                    store.ledger_append(
                        entry(sha, 0, "ok", "same content as a capture already collected", [], capture_id)
                    )
                    known.add(key, sha, (), capture_id)
                    fr.status = "known"
                    return fr
        if ident is not None:
            fr.again = True
            tables = {n: tc for n, tc in tables.items() if n not in known.filled[ident]}
        fr.tables = sorted(tables)
        agg = Aggregator(
            tables, interval=config.interval, networks=config.networks, service_ports=config.service_ports
        )
        parts = _PartWriter(store, tables, capture_id, fr, result)
        router, again = None, False
        if not zeek_kind and (config.flow_ports or is_flow_spool(path)):
            from flowdiff.netflow import FlowRouter

            cache, again = (templates or _LazyTemplates(config.store)).get().for_file(capture_id)
            router = FlowRouter(
                cache,
                all_udp=is_flow_spool(path),
                ports=config.flow_ports,
                split=config.flow_split,
                interval=config.interval,
            )
        try:
            fr.bytes = _read_all(reader, agg, parts, st.st_size, progress, router, config)
            parts.submit(agg.finish())
        finally:
            parts.close()
        if router is not None:
            (templates or _LazyTemplates(config.store)).get().done(router.decoder.cache, again)
            result.skipped.update(router.skipped)
            result.flow_records += router.decoder.records
    except CaptureError as e:
        store.ledger_append(entry(None, 0, "failed", str(e), [], None))
        known.failed.add(key)
        return FileResult(str(path), "failed", message=str(e))
    stats = reader.stats
    fr.status, fr.records, wire = ("damaged" if stats.damage else "ok"), stats.records, fr.bytes
    if stats.damage:
        fr.message = str(stats.damage[0]) + f" (kept the {stats.records:,} records before it)"
    store.ledger_append(entry(stats.sha256, stats.records, fr.status, fr.message, fr.tables, capture_id))
    known.add(key, stats.sha256, fr.tables, capture_id)
    result.packets += 0 if zeek_kind else stats.records  # conn.log lines are flow records, not packets
    result.bytes += wire
    result.rows_written += fr.rows_written
    result.skipped.update(agg.skipped)
    result.skipped.update(stats.skipped)
    if zeek_kind:
        result.flow_records += stats.records
    elif isinstance(reader, CaptureReader):
        _note_unknown_linktypes(reader, agg, fr)
    return fr


def _collect_log(
    path: Path,
    key: _StatKey,
    config: Config,
    tables: dict[str, TableConfig],
    store: Store,
    known: _Known,
    result: CollectResult,
) -> FileResult:
    """A syslog file (flowdiff.logsource): the same ledger, part ids and idempotence as a capture. Its
    identity and part ids are the sha256 of its decompressed lines, so logrotate's renamed and gzipped
    copies are recognised as collected."""
    from flowdiff.logsource import appended_to, iter_file_rows, merge_examples
    from flowdiff.logsource import content_sha256 as log_sha256

    fr = FileResult(str(path), "ok")
    if not tables:
        why = "syslog, but no log table is configured (add a [logs] section to the config)"
        result.ignored.append(str(path))
        result.ignored_reasons[str(path)] = why
        log.warning("%s: %s", path, why)
        fr.status, fr.message = "known", why
        return fr

    def entry(sha: str | None, lines: int, status: str, message: str, filled: list[str]) -> LedgerEntry:
        return LedgerEntry(
            *key,
            sha,
            lines,
            status,
            message,
            sensor=config.sensor,
            tables=filled,
            capture_id=sha and f"log-{sha[:32]}",
        )

    try:
        ident = known.by_stat.get(key) or log_sha256(path)
        if ident in known.filled and not set(tables) - known.filled[ident]:
            if key not in known.by_stat:
                store.ledger_append(entry(ident, 0, "ok", "same content as a log already collected", []))
                known.add(key, ident, (), f"log-{ident[:32]}")
            fr.status = "known"
            return fr
        offset = 0
        if ident in known.filled:
            fr.again = True
            tables = {n: tc for n, tc in tables.items() if n not in known.filled[ident]}
        else:  # a live log that grew since it was collected: only the lines after the collected part
            earlier = [(k[1], i) for k, i in known.by_stat.items() if k[0] == key[0] and k[1] < key[1]]
            offset, base = appended_to(path, earlier)
            if offset and set(tables) - known.filled.get(base or "", set()):
                offset = 0  # a table that never saw the beginning: read it all
            if offset:
                log.info(
                    "%s: grew since it was collected; reading the %s bytes after it", path, key[1] - offset
                )
        fr.tables = sorted(tables)
        keys = {n: tc.keys for n, tc in tables.items()}
        tz = config.logs.timezone if config.logs else "UTC"
        parts = _PartWriter(store, tables, f"log-{ident[:32]}", fr, result)
        unparsed, damage = 0, list[str]()
        try:
            rows = iter_file_rows(
                path, keys, config.interval, timezone=tz, ref_us=key[2] // 1000, damage=damage, offset=offset
            )
            for chunk in rows:
                parts.submit(chunk.tables)
                for name, ex in chunk.examples.items():
                    merge_examples(store.root, config.sensor, name, keys[name], ex)
                fr.records += chunk.lines
                fr.bytes += chunk.bytes
                unparsed += chunk.unparsed
        finally:
            parts.close()
    except CaptureError as e:
        store.ledger_append(entry(None, 0, "failed", str(e), []))
        known.failed.add(key)
        return FileResult(str(path), "failed", message=str(e))
    if damage:
        fr.status, fr.message = "damaged", f"{damage[0]} (kept the {fr.records:,} lines before it)"
        log.warning(fr.message)
    elif unparsed:
        fr.message = (
            f"{path}: {unparsed:,} of {fr.records:,} lines are not syslog (counted with host and program '-')"
        )
        log.info(fr.message)
    store.ledger_append(entry(ident, fr.records, fr.status, fr.message, fr.tables))
    known.add(key, ident, fr.tables, f"log-{ident[:32]}")
    result.packets += fr.records
    result.bytes += fr.bytes
    result.rows_written += fr.rows_written
    return fr


def _is_log_file(path: Path) -> bool:
    from flowdiff.logsource import is_log_file

    return is_log_file(path)


class _LazyTemplates:
    """The flow template store (``netflow.TemplateStore``), opened on first use only."""

    def __init__(self, root: Path):
        self.root = root
        self._store: TemplateStore | None = None

    def get(self) -> TemplateStore:
        if self._store is None:
            from flowdiff.netflow import TemplateStore

            self._store = TemplateStore(self.root)
        return self._store


def _capture_id(path: Path, size: int, known_sizes: set[int]) -> tuple[str, str | None]:
    """An id of the capture's content known before it is read, for the parts written while reading:
    a hash of its size, first and last MiB. When a capture already collected has the same size, the
    whole (decompressed) stream is hashed first and returned as the second value, the ledger's content
    hash: a renamed copy is then recognised before anything is written, and two different captures
    never share part ids."""
    try:
        if size in known_sizes:
            sha = content_sha256(path)
            if sha is not None:
                return sha, sha
        h = hashlib.sha256(str(size).encode())
        with open(path, "rb") as f:
            if size in known_sizes:  # a corrupt gzip stream: the raw bytes identify it
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
    Two helper threads work while reading goes on: one builds the tables of a part while the other
    writes the tables of the part before it (Arrow, zstd and the compiled stage 2 release the GIL, so on
    a capture that makes many rows the second core is busy all the time instead of one thread building
    and writing in turn). At most ``_AHEAD`` parts are in flight, which bounds memory. Parts are built in
    order and written in order, one at a time; :meth:`close` waits for all of them (and raises a store
    error, if any)."""

    # three, not two: the reader then rarely waits for the writer when a part comes out slow (hc5 of
    # issue 11: 2.5% less wall time in 16 interleaved pairs of runs, peak RSS the same on every workload)
    _AHEAD = 3

    def __init__(
        self,
        store: Store,
        tables: dict[str, TableConfig],
        capture_id: str,
        fr: FileResult,
        result: CollectResult,
    ):
        self.store, self.tables, self.capture_id = store, tables, capture_id
        self.fr, self.result = fr, result
        self.parts = 0
        self.days = DayFiles(store)  # a capture of many intervals writes day files (flowdiff/dayfile.py)
        self._build = ThreadPoolExecutor(1, thread_name_prefix="flowdiff-build")
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="flowdiff-store")
        self._pending: collections.deque[Future] = collections.deque()

    def submit(self, drained: Drained | dict[str, pa.Table] | None) -> None:
        if drained is None or (isinstance(drained, dict) and not any(t.num_rows for t in drained.values())):
            return
        source = f"{self.capture_id}#{self.parts}"
        self.parts += 1
        while len(self._pending) >= self._AHEAD:
            self._pending.popleft().result()
        built = self._build.submit(_tables_of, drained)
        self._pending.append(self._pool.submit(self._write, built, source))

    def close(self) -> None:
        """Wait until every part is durable; the first error is raised (the other parts still finish)."""
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._build.shutdown(wait=True, cancel_futures=True)
            self.fr.rows_written += self.days.close()  # the parts written so far count, even on an error

    def _write(self, built: Future, source: str) -> None:
        tables = built.result()  # a part that failed to build fails its write: the parts before it stand
        with self.store.batch() as batch:
            for name, rows in tables.items():
                if not rows.num_rows:
                    continue
                self.fr.rows_written += self.days.write(batch, name, self.tables[name].keys, rows, source)
                self.result.intervals.update(_interval_starts(rows))


def _tables_of(drained: Drained | dict[str, pa.Table]) -> dict[str, pa.Table]:
    return drained.tables() if isinstance(drained, Drained) else drained


def _interval_starts(rows: pa.Table) -> set[datetime]:
    starts = int64_values(rows.column(INTERVAL))
    heads = starts[np.flatnonzero(starts[1:] != starts[:-1]) + 1]  # rows come grouped by interval
    return {datetime.fromtimestamp(v / 1e6, UTC) for v in {int(starts[0]), *heads.tolist()}}


_DONE = object()
# Bytes read per chunk. Part of what makes the drained parts of a capture deterministic (a re-run after a
# crash must drain the same parts); tests make it small to get many parts out of a small capture.
_CHUNK_BYTES = DEFAULT_CHUNK


def _decoded(
    reader: CaptureReader, router: FlowRouter | None = None
) -> Iterator[tuple[dict[str, np.ndarray], int, dict[str, np.ndarray] | None]]:
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
                packets, flows = decode(batch), None
                if router is not None:  # flow export datagrams become flow records (flowdiff/netflow.py)
                    packets, flows = router.route(batch, packets)
                q.put((packets, int(np.add.reduce(batch.wirelen, dtype=np.uint64)), flows))
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


def _read_all(
    reader: CaptureReader | ZeekReader,
    agg: Aggregator,
    parts: _PartWriter,
    total: int,
    progress: Progress | None,
    router: FlowRouter | None = None,
    config: Config | None = None,
) -> int:
    if isinstance(reader, ZeekReader):
        return _read_zeek(reader, agg, parts, total, progress, config)
    wire = 0
    keep = 1 if router is None else _flow_keep(agg.interval)
    for packets, nbytes, flows in _decoded(reader, router):
        if router is not None and flows is not None and len(flows["ts_ns"]):
            agg.add_flows(flows, router.exporters)
        agg.add(packets)
        wire += nbytes
        if _drain_due(agg, keep, router is not None):
            parts.submit(agg.drain_deferred(keep))
        if progress is not None:
            progress(str(reader.path), min(reader.stats.file_bytes_read, total), total)
    if router is not None:  # data sets still waiting for a template are counted as dropped
        flows = router.finish()
        if len(flows["ts_ns"]):
            agg.add_flows(flows, router.exporters)
    return wire


# Flow records arrive late (an exporter sends a flow when it ends or at its active timeout): the intervals
# of the last 10 minutes stay open, so that late records rarely make extra parts to merge. Every drain
# reads all the rows kept open, so flows drain once that many more intervals have closed (each drain
# hands over about as many intervals as it keeps: the work per record stays constant), or sooner once the
# rows held exceed what the last drain kept by _FLOW_DRAIN_ROWS and by half of it (memory stays bounded
# however dense the flows; a dense window is not read again for every chunk that closes one more interval).
_FLOW_LATENESS = 600
_FLOW_DRAIN_ROWS = 1 << 18


def _flow_keep(interval: int) -> int:
    return 1 + -(-_FLOW_LATENESS // interval)


# A drain hands the closed intervals over as one part once the rows added since the last drain reach
# this many. Every part costs fixed Python work (holding the GIL) and a durable commit on top of its
# rows: a capture of many sparse intervals (the week workload: 1,500 packets an interval) drained a part
# of ~15k rows per 2 MiB chunk, 140 parts, and the thread building them was the bottleneck (3.0-3.4 s;
# 2.3-2.7 s at 2^15 rows, no faster at 2^16 or 2^17, which cost 60-200 MB more peak RSS). Captures with
# more rows than this per interval (the busy and high-cardinality workloads: 40-250k) still drain at
# every closed interval. Memory stays bounded: these rows (4 MB) and the newest interval.
_DRAIN_ROWS = 1 << 15


def _drain_due(agg: Aggregator, keep: int, flows: bool) -> bool:
    if not flows:
        return agg.closed_intervals(keep) and agg.fine_rows >= agg.rows_kept + _DRAIN_ROWS
    return agg.closed_intervals(2 * keep - 1) or (
        agg.fine_rows >= agg.rows_kept + max(_FLOW_DRAIN_ROWS, agg.rows_kept // 2)
        and agg.closed_intervals(keep)
    )


def _read_zeek(
    reader: ZeekReader,
    agg: Aggregator,
    parts: _PartWriter,
    total: int,
    progress: Progress | None,
    config: Config | None,
) -> int:
    """A Zeek conn.log: chunks of connection records into the Aggregator (bytes: IP-layer bytes)."""
    from flowdiff.netflow import split_proportional

    wire = 0
    for records in reader.chunks():
        if config is not None and config.flow_split == "proportional":
            records = split_proportional(records, config.interval)
        agg.add_flows(records)
        wire += int(records["bytes"].sum())
        keep = _flow_keep(agg.interval)  # conn.log is written when connections end: late like flows
        if _drain_due(agg, keep, True):
            parts.submit(agg.drain_deferred(keep))
        if progress is not None:
            progress(reader.path, min(reader.stats.file_bytes_read, total), total)
    return wire


def _note_unknown_linktypes(reader: CaptureReader, agg: Aggregator, fr: FileResult) -> None:
    name = DecodeStatus.NAMES[DecodeStatus.UNKNOWN_LINKTYPE]
    if agg.skipped.get(name):
        unknown = sorted(set(reader.stats.linktypes) - set(decoded_linktypes()))
        kinds = ", ".join(f"{n} ({linktype_name(n)})" for n in unknown)
        msg = f"{reader.path}: {agg.skipped[name]:,} frames of unknown link type {kinds} were not counted"
        log.warning(msg)
        fr.message = fr.message or msg
