"""Syslog files -> rows of the log tables (``messages``), one part per chunk of lines.

A log table is a count table keyed by some of ``host, program, template, facility, severity``
(``schema.LOG_KEYS``); it is filled only from syslog files, never from captures. Its metrics are the
store's: ``packets`` is the number of lines, ``bytes`` their bytes (UTF-8, without the newline),
``first_seen`` / ``last_seen`` the times of the first and last line. So learn, diff, accept, deny,
ignore, reports, mail and status work on it as on any table.

A file is read in chunks of whole lines (:data:`CHUNK_BYTES`, cut at a newline: the same chunks on
every run), each chunk parsed (:mod:`flowdiff.syslog`), masked (:mod:`flowdiff.logtemplate`) and
aggregated per interval: one part per chunk, merged by collect under the part ids of the file, which
makes a re-run after a crash exact, as for captures.

Example lines: the report shows, for each new template, one line it was made from. The earliest line
of every key (then the smallest, for a tie) is kept in ``<store>/<table>/_examples.parquet`` (one small
file per table: one row per key and sensor; Parquet readers of the table skip files starting with
``_``), merged after every part, so re-collecting gives the same file.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from flowdiff.durable import atomic_write_parquet
from flowdiff.errors import CaptureError, StoreError
from flowdiff.logtemplate import mask
from flowdiff.schema import INTERVAL, LOG_KEYS, PARTITION, TIMESTAMP, is_log_table, table_schema
from flowdiff.syslog import GZIP_MAGIC, Lines, looks_like_syslog, open_text, parse_bytes, read_head

CHUNK_BYTES = 32 << 20  # lines read per part (cut at a newline)
EXAMPLES = "_examples.parquet"
_BLOCK = 1 << 16


def is_log_file(path: str | os.PathLike) -> bool:
    """True when the file (plain or gzip) starts like syslog (see :func:`flowdiff.syslog.looks_like_syslog`)."""
    try:
        return looks_like_syslog(read_head(os.fspath(path)))
    except (OSError, EOFError, ValueError, Exception):  # zlib.error and friends: not a readable log
        return False


def tz_offset(timezone: str, at_us: int) -> int:
    """Seconds east of UTC of ``timezone`` (an IANA name or UTC) at a time (RFC 3164 times have no zone)."""
    if timezone.upper() == "UTC":
        return 0
    off = datetime.fromtimestamp(at_us / 1e6, UTC).astimezone(ZoneInfo(timezone)).utcoffset()
    return int(off.total_seconds()) if off is not None else 0


def key_columns(lines: Lines, templates: pa.Array) -> dict[str, pa.Array]:
    return {
        "host": lines.host,
        "program": lines.program,
        "template": templates,
        "facility": lines.facility,
        "severity": lines.severity,
    }


@dataclass
class ChunkRows:
    """One chunk's rows per table (``schema.table_schema(keys)``) and its example lines."""

    tables: dict[str, pa.Table]
    examples: dict[str, pa.Table]
    lines: int = 0
    unparsed: int = 0
    bytes: int = 0


def rows_of_lines(lines: Lines, tables: Mapping[str, Sequence[str]], interval: int) -> ChunkRows:
    """Count-table rows of parsed lines for every log table (name -> keys)."""
    templates = mask(lines.message)
    cols = key_columns(lines, templates)
    step = int(interval) * 1_000_000
    ts = lines.ts_us
    base = pa.table(
        {
            INTERVAL: pa.array(ts - ts % step, pa.int64()),
            "ts": pa.array(ts, pa.int64()),
            "nbytes": pa.array(lines.nbytes, pa.uint64()),
            "idx": pa.array(np.arange(len(lines)), pa.int64()),
            **cols,
        }
    )
    out, examples = {}, {}
    for name, keys in tables.items():
        group = [INTERVAL, *keys]
        agg = base.group_by(group).aggregate(
            [
                ("ts", "count"),
                ("nbytes", "sum"),
                ("ts", "min"),
                ("ts", "max"),
            ]
        )
        rows = pa.table(
            {
                INTERVAL: agg[INTERVAL].cast(TIMESTAMP),
                **{k: agg[k] for k in keys},
                "packets": agg["ts_count"].cast(pa.uint64()),
                "bytes": agg["nbytes_sum"].cast(pa.uint64()),
                "first_seen": agg["ts_min"].cast(TIMESTAMP),
                "last_seen": agg["ts_max"].cast(TIMESTAMP),
            }
        )
        # sorted by (interval, keys) and unique per key: collect writes parts as "presorted"
        order = [(INTERVAL, "ascending"), *((k, "ascending") for k in keys)]
        out[name] = rows.cast(table_schema(keys)).sort_by(order)
        examples[name] = _first_lines(base, list(keys), lines)
    unparsed = int((~lines.parsed).sum())
    return ChunkRows(out, examples, len(lines), unparsed, int(lines.nbytes.sum()))


def _first_lines(base: pa.Table, keys: list[str], lines: Lines) -> pa.Table:
    """The first line of each key in the chunk (files are in time order, near enough): the example the
    report shows. Across chunks and files :func:`merge_examples` keeps the earliest."""
    agg = (
        base.select([*keys, "ts", "idx"])
        .group_by(keys, use_threads=False)
        .aggregate([("ts", "first"), ("idx", "first")])
    )
    return pa.table(
        {
            **{k: agg[k] for k in keys},
            "first_seen": agg["ts_first"].cast(TIMESTAMP),
            "example": lines.lines_at(agg["idx_first"].to_numpy()),
        }
    )


def read_chunks(
    path: str | os.PathLike,
    chunk_bytes: int = CHUNK_BYTES,
    damage: list[str] | None = None,
    offset: int = 0,
) -> Iterator[bytes]:
    """Whole lines of the (decompressed) file, about ``chunk_bytes`` at a time, always cut after a
    newline (the last chunk may end without one). A file that breaks off (a gzip stream cut short or
    corrupt, a read error) ends there: what was read before is kept and the reason goes to ``damage``
    (or, without a list, raises CaptureError)."""
    path = os.fspath(path)
    pending: list[bytes] = []  # read in small blocks: a stream that breaks off loses at most one block
    size = 0
    try:
        with open_text(path) as f:
            if offset:
                f.seek(offset)
            while block := f.read(_BLOCK):
                pending.append(block)
                size += len(block)
                if size >= chunk_bytes and b"\n" in block:
                    data = b"".join(pending)
                    cut = data.rfind(b"\n") + 1
                    pending, size = [data[cut:]], len(data) - cut
                    yield data[:cut]
    except (OSError, EOFError, zlib.error) as e:
        why = f"cannot read as syslog: {getattr(e, 'strerror', None) or e}"
        if damage is None:
            raise CaptureError(path, why) from e
        damage.append(f"{path}: {why}")
    if size:
        yield b"".join(pending)


def iter_file_rows(
    path: str | os.PathLike,
    tables: Mapping[str, Sequence[str]],
    interval: int,
    *,
    timezone: str = "UTC",
    ref_us: int | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    damage: list[str] | None = None,
    offset: int = 0,
) -> Iterator[ChunkRows]:
    """Rows of every chunk of a syslog file (see the module doc). ``ref_us`` (default: the file's
    modification time) dates RFC 3164 lines, which have no year, and lines without a time; ``offset``:
    the bytes to skip (a plain file that grew, see :func:`appended_to`)."""
    if ref_us is None:
        ref_us = os.stat(path).st_mtime_ns // 1000
    tz_s = tz_offset(timezone, ref_us)
    for data in read_chunks(path, chunk_bytes, damage, offset):
        lines = parse_bytes(data, ref_us=ref_us, tz_offset_s=tz_s)
        yield rows_of_lines(lines, tables, interval)


def parse_file(path: str | os.PathLike, *, timezone: str = "UTC", ref_us: int | None = None) -> pa.Table:
    """Every line of a syslog file with its number, time, host, program, facility, severity, template
    and the line itself (``flowdiff logs parse``: why two lines do or do not group). Raises CaptureError
    for a file that cannot be read."""
    try:
        if ref_us is None:
            ref_us = os.stat(path).st_mtime_ns // 1000
    except OSError as e:
        raise CaptureError(os.fspath(path), f"cannot read: {e.strerror or e}") from None
    offset = tz_offset(timezone, ref_us)
    parts, first = [], 1
    for data in read_chunks(path):
        lines = parse_bytes(data, ref_us=ref_us, tz_offset_s=offset)
        parts.append(
            pa.table(
                {
                    "line": pa.array(np.arange(first, first + len(lines)), pa.int64()),
                    "time": pa.array(lines.ts_us, pa.int64()).cast(TIMESTAMP),
                    **{k: v for k, v in key_columns(lines, mask(lines.message)).items()},
                    "text": lines.line,
                }
            )
        )
        first += len(lines)
    if not parts:
        return pa.table(
            {
                "line": pa.array([], pa.int64()),
                "time": pa.array([], TIMESTAMP),
                **{k: pa.array([], pa.string()) for k in LOG_KEYS},
                "text": pa.array([], pa.string()),
            }
        )
    return pa.concat_tables(parts)


def content_sha256(path: str | os.PathLike) -> str:
    """sha256 of the file's decompressed content: the identity of a log file in the ledger, so a file
    renamed or compressed by logrotate is recognised as already collected."""
    import hashlib

    h = hashlib.sha256()
    try:
        with open_text(os.fspath(path)) as f:
            while block := f.read(1 << 20):
                h.update(block)
        return h.hexdigest()
    except (EOFError, zlib.error, gzip.BadGzipFile):  # a damaged gzip stream: its raw bytes identify it
        h = hashlib.sha256(b"raw:")
        try:
            with open(path, "rb") as raw:
                while block := raw.read(1 << 20):
                    h.update(block)
        except OSError as e:
            raise CaptureError(os.fspath(path), f"cannot read: {e.strerror or e}") from e
        return h.hexdigest()
    except OSError as e:
        raise CaptureError(os.fspath(path), f"cannot read as syslog: {e.strerror or e}") from e


def appended_to(path: str | os.PathLike, earlier: Sequence[tuple[int, str]]) -> tuple[int, str | None]:
    """A plain log file that only grew since it was collected (``earlier``: the (size, content sha256) of
    its collected versions, same path): the size of the longest such version that this file starts with
    (ending at a line end) and its sha, so that only the lines after it are read; ``(0, None)`` otherwise.
    This is how a live file such as ``/var/log/syslog`` is collected again without counting twice."""
    import hashlib

    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            if f.read(2) == GZIP_MAGIC:
                return 0, None
            for size, sha in sorted(earlier, reverse=True):
                if size <= 0:
                    continue
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    continue
                f.seek(0)
                h, left = hashlib.sha256(), size
                while left and (block := f.read(min(left, 1 << 20))):
                    h.update(block)
                    left -= len(block)
                if not left and h.hexdigest() == sha:
                    return size, sha
    except OSError:
        return 0, None
    return 0, None


# ---------------------------------------------------------------- example lines


def examples_path(store_root: str | os.PathLike, table: str) -> Path:
    return Path(store_root) / table / EXAMPLES


def merge_examples(
    store_root: str | os.PathLike, sensor: str, table: str, keys: Sequence[str], new: pa.Table
) -> None:
    """Keep the earliest example line of every key (see the module doc); atomic, idempotent."""
    if not new.num_rows:
        return
    keys = list(keys)
    path = examples_path(store_root, table)
    new = new.append_column(PARTITION, pa.array([sensor] * new.num_rows, pa.string()))
    parts = [new.select([PARTITION, *keys, "first_seen", "example"])]
    if path.exists():
        try:
            old = pq.read_table(path)
        except (OSError, pa.ArrowInvalid) as e:
            raise StoreError(f"{path}: unreadable example lines: {e}") from None
        parts.insert(0, old.select(parts[0].schema.names).cast(parts[0].schema))
    both = pa.concat_tables(parts)
    group = [PARTITION, *keys]
    both = both.sort_by(
        [*((k, "ascending") for k in group), ("first_seen", "ascending"), ("example", "ascending")]
    )
    agg = both.group_by(group, use_threads=False).aggregate([("first_seen", "first"), ("example", "first")])
    out = pa.table(
        {**{k: agg[k] for k in group}, "first_seen": agg["first_seen_first"], "example": agg["example_first"]}
    )
    if path.exists() and pq.read_table(path).equals(out):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_parquet(path, out)


def example_lines(store_root: str | os.PathLike, table: str, keys: Sequence[str], rows: Any) -> list[str]:
    """One example line per row of ``rows`` (a DataFrame with the key columns), "" when none is known
    (a table that is not a log table, a store written before examples existed)."""
    keys = list(keys)
    n = len(rows)
    if not is_log_table(keys) or not n:
        return [""] * n
    path = examples_path(store_root, table)
    try:
        ex = pq.read_table(path).to_pandas()
    except (OSError, pa.ArrowInvalid):
        return [""] * n
    if not set(keys) <= set(ex.columns):
        return [""] * n
    ex = ex.sort_values(["first_seen", "example"]).drop_duplicates(keys)
    lookup = {
        tuple(str(v) for v in k): e
        for k, e in zip(ex[keys].itertuples(index=False, name=None), ex["example"], strict=True)
    }
    return [lookup.get(tuple(str(v) for v in k), "") for k in rows[keys].itertuples(index=False, name=None)]


def add_examples(
    store_root: str | os.PathLike, table: str, keys: Sequence[str], rows: Any, contexts: list[dict]
) -> None:
    """Put ``example`` into the report's row contexts of a log table (a no-op for other tables)."""
    if not contexts or not is_log_table(list(keys)):
        return
    for ctx, line in zip(
        contexts, example_lines(store_root, table, keys, rows.iloc[: len(contexts)]), strict=False
    ):
        ctx["example"] = line


__all__ = [
    "CHUNK_BYTES",
    "GZIP_MAGIC",
    "LOG_KEYS",
    "ChunkRows",
    "add_examples",
    "appended_to",
    "content_sha256",
    "example_lines",
    "is_log_file",
    "iter_file_rows",
    "merge_examples",
    "parse_file",
    "rows_of_lines",
    "tz_offset",
]
