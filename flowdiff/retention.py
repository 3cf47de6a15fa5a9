"""Retention: ``expire`` removes the stored intervals older than a window (config ``keep``).

Only count tables are removed: interval files, whole day files, and the row groups of a day file that
straddles the window's edge (the day file is rewritten without them, by the same write-then-rename step
compaction uses). Baselines, their versions and the reports are untouched, so ``history`` still names the
window each baseline was learned from, even when the data of that window is gone.

Order of removal, so that a crash at any step leaves a readable store and a re-run finishes: interval
files first (late parts and compaction leftovers of an expired day included), then the day file. A day
file removed before its leftovers would let them count again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from flowdiff.compact import _pieces, _row_groups, local_only, store_sensors
from flowdiff.config import Config
from flowdiff.errors import ConfigError
from flowdiff.exitcodes import ExitCode
from flowdiff.schema import table_schema
from flowdiff.store import Store, _interval_of_file, day_meta

__all__ = ["ExpireResult", "expire"]

_DAY = timedelta(days=1)


@dataclass
class ExpireResult:
    """What expire removed: intervals (per table and sensor), files removed, day files rewritten."""

    cutoff: datetime
    intervals: int = 0
    files: int = 0
    rewritten: int = 0
    tables: dict[str, int] = field(default_factory=dict)  # table -> intervals removed
    sensors: set[str] = field(default_factory=set)

    def line(self) -> str:
        edge = f"{self.cutoff:%Y-%m-%dT%H:%M:%SZ}"
        if not self.intervals:
            return f"expire: nothing stored before {edge}"
        per = ", ".join(f"{t} {n}" for t, n in sorted(self.tables.items()))
        return (
            f"expire: removed {self.intervals} interval(s) before {edge} ({per}; "
            f"{len(self.sensors)} sensor(s)): {self.files} file(s) deleted, {self.rewritten} day file(s) "
            "rewritten; baselines and reports untouched"
        )

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.OK


def expire(
    config: Config,
    *,
    keep: int | None = None,
    now: datetime | None = None,
    sensors: Sequence[str] | None = None,
) -> ExpireResult:
    """Remove every interval that ended more than ``keep`` seconds ago (default: config ``keep``)."""
    keep = config.keep if keep is None else keep
    if keep is None:
        raise ConfigError(
            "no retention window: give --keep DURATION (like 400d) or set `keep` in the config", key="keep"
        )
    if keep <= 0:
        raise ConfigError("must be a positive duration like '400d'", key="keep")
    now = now or datetime.now(UTC)
    result = ExpireResult(cutoff=now - timedelta(seconds=keep))
    local_only(config, "expire")
    root = Path(config.store)
    if not root.is_dir():
        return result
    for sensor in sensors or store_sensors(root):
        store = Store(root, sensor)
        with store.lock():
            for table in store.tables():
                interval = int((store.table_meta(table) or {}).get("interval", config.interval))
                for sd in store.sensor_dirs(table):
                    n = _expire_dir(store, table, sd, interval, result)
                    if n:
                        result.tables[table] = result.tables.get(table, 0) + n
                        result.sensors.add(sensor)
    return result


def _expire_dir(store: Store, table: str, sd: Any, interval: int, result: ExpireResult) -> int:
    cutoff = result.cutoff
    step = timedelta(seconds=interval)

    def old(start: Any) -> bool:
        return start.to_pydatetime() + step <= cutoff

    gone: set[Any] = set()
    files = [p for start, p in sd.intervals.items() if old(start)]
    gone.update(start for start in sd.intervals if old(start))
    files += [p for p in sd.leftovers if old(_interval_of_file(p.name))]
    held = sd.day_intervals()
    gone.update(start for start in held if old(start))
    result.files += store.remove_files(files)
    for _day, path in sorted(sd.days.items()):
        record = day_meta(path)
        expired = [n for n in record if (s := _interval_of_file(n)) is not None and old(s)]
        if not expired:
            continue
        if len(expired) == len(record):
            result.files += store.remove_files([path])
            continue
        keep = {n: rec for n, rec in record.items() if n not in expired}
        keys = store.table_keys(table) or ()
        schema = table_schema(keys)
        groups = _row_groups(path, schema)
        store.write_day_file(path, schema, _pieces(keep, groups, {}, path, keys, schema), keep)
        result.rewritten += 1
    result.intervals += len(gone)
    return len(gone)
