"""The report archive: report ids, the rows a diff found, and their files under ``<reports>/<report_id>/``.

Report ids are made and recognised here and nowhere else. ``diff`` writes a report's rows here
(``rows.parquet``, ``rows.json``, ``report.json``: first in a temp directory, published by one rename after
the diff state is committed); the triage commands, ``packets``, ``notify`` and the notebook read them back as
a :class:`DiffResult`. Layout: ``reports/README.md``.

INTERFACE (fixed; the report/mail stage relies on it): ``ROW_COLUMNS`` and ``DiffResult``. Each per-table
frame has the table's key columns, then ``ROW_COLUMNS``, then ``row`` (the row number inside the report,
used by ``flowdiff accept REPORT_ID ROW``).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from flowdiff.config import Config
from flowdiff.durable import atomic_write_parquet, atomic_write_text, fsync_dir
from flowdiff.errors import ReportError
from flowdiff.exitcodes import ExitCode
from flowdiff.incidents import Incident
from flowdiff.schema import TIMESTAMP, key_type
from flowdiff.vocab import iso_time, now_iso, utc_timestamp

__all__ = [
    "ROW_COLUMNS",
    "ROW_NUMBER",
    "DiffResult",
    "is_report_id",
    "new_report_id",
    "report_dir",
    "empty_rows",
    "row_records",
    "list_reports",
    "load_report",
    "INCIDENTS_FILE",
]

# Columns every per-table frame of DiffResult.rows has, after the table's own key columns.
ROW_COLUMNS = (
    "interval_start",  # timestamp[us, UTC]: first interval the key was seen in this diff
    "first_seen",  # timestamp[us, UTC]
    "last_seen",  # timestamp[us, UTC]
    "packets",  # uint64, summed over the diffed intervals
    "bytes",  # uint64
    "reason",  # "new" or "deny-rule NAME"
    "neighbour",  # str: nearest accepted neighbour, "" when none
    "accept_cmd",  # str: exact `flowdiff accept ...` command for this row
    "deny_cmd",  # str: exact `flowdiff deny ...` command for this row
    "incident",  # int64: the incident (flowdiff.incidents) the row belongs to, 1.. within the report; 0 none
    "incident_title",  # str: that incident's title in words
    "sensors",  # str: the sensor(s) whose intervals held the key, sorted, "gw1" or "gw1, gw2"
)
INCIDENTS_FILE = "incidents.json"
ROW_NUMBER = "row"
REPORT_ID_RE = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")


def is_report_id(text: str) -> bool:
    """Report ids look like ``20261130T015500Z-ab12cd``; anything else on the command line is a table."""
    return bool(REPORT_ID_RE.match(text))


@dataclass
class DiffResult:
    """What one diff found. ``rows`` has an entry (maybe empty, full schema) for every diffed table."""

    report_id: str | None  # None when nothing new was found (no report is archived then)
    rows: dict[str, pd.DataFrame]  # table -> key columns + ROW_COLUMNS, sorted by bytes descending
    keys: dict[str, tuple[str, ...]]  # table -> its key columns, in order
    baseline_versions: dict[str, str]  # table -> baseline version id used
    since: pd.Timestamp | None  # span of the intervals diffed (UTC), None when there were none
    until: pd.Timestamp | None
    intervals: int = 0  # number of distinct intervals diffed (what a report footer counts)
    sensor: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    table_intervals: int = 0  # number of (table, interval) pairs diffed
    skipped: dict[str, str] = field(default_factory=dict)  # table -> one line: why it was not diffed
    incidents: list[Incident] = field(default_factory=list)  # the rows grouped by cause, in report order

    @property
    def total(self) -> int:
        return sum(len(df) for df in self.rows.values())

    def exit_code(self, exit_on_new: bool = False) -> ExitCode:
        """NEW_ROWS when rows were found and the caller asked for it (``--exit-code``), else OK. A
        table skipped for want of a baseline is a warning (and a health alert in ``run``), not a failure."""
        return ExitCode.NEW_ROWS if exit_on_new and self.total else ExitCode.OK

    def sensors(self) -> list[str]:
        """Every sensor named by a row of this result, sorted."""
        names: set[str] = set()
        for df in self.rows.values():
            if "sensors" in df.columns and len(df):
                for text in pd.unique(df["sensors"].dropna()):
                    names.update(a for a in str(text).split(", ") if a)
        return sorted(names)

    def counts(self) -> dict[str, int]:
        return {t: len(df) for t, df in self.rows.items() if len(df)}


def empty_rows(keys: Sequence[str]) -> pd.DataFrame:
    """A zero-row frame with the full DiffResult row schema of a table."""
    return _row_schema(keys).empty_table().to_pandas(coerce_temporal_nanoseconds=False)


def _row_schema(keys: Sequence[str]) -> pa.Schema:
    fields = [pa.field(k, key_type(k)) for k in keys]
    fields += [pa.field(c, TIMESTAMP) for c in ("interval_start", "first_seen", "last_seen")]
    fields += [pa.field(c, pa.uint64()) for c in ("packets", "bytes")]
    fields += [pa.field(c, pa.string()) for c in ("reason", "neighbour", "accept_cmd", "deny_cmd")]
    fields += [pa.field("incident", pa.int64()), pa.field("incident_title", pa.string())]
    fields.append(pa.field("sensors", pa.string()))
    fields.append(pa.field(ROW_NUMBER, pa.int64()))
    return pa.schema(fields)


def typed_rows(df: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    schema = _row_schema(keys)
    if "incident" not in df.columns or "incident_title" not in df.columns:  # reports before incidents
        df = df.assign(incident=0, incident_title="")
    if "sensors" not in df.columns:  # reports before rows named their sensors
        df = df.assign(sensors="")
    t = pa.Table.from_pandas(df[list(schema.names)], preserve_index=False).cast(schema)
    return t.to_pandas(coerce_temporal_nanoseconds=False)


def new_report_id(now: datetime | None = None, last: str | None = None) -> str:
    """``20261130T015500Z-ab12cd``: sortable by time, random suffix for uniqueness across sensors; two
    reports of one sensor in the same second still sort in order (the suffix then counts up)."""
    t = now or datetime.now(UTC)
    stamp = f"{t.astimezone(UTC):%Y%m%dT%H%M%SZ}"
    suffix = secrets.randbelow(1 << 23)
    if last and last[:16] >= stamp:
        stamp = last[:16]
        suffix = int(last[17:], 16) + 1 + secrets.randbelow(1 << 8)
    return f"{stamp}-{min(suffix, (1 << 24) - 1):06x}"


def report_dir(config: Config, report_id: str) -> Path:
    """``<reports>/<report_id>``; refuses anything that is not a report id (no path tricks)."""
    if not is_report_id(report_id):
        raise ReportError(f"not a report id: {report_id!r} (report ids look like 20261130T015500Z-ab12cd)")
    return config.reports / report_id


def _tmp_dir(config: Config, report_id: str) -> Path:
    return config.reports / f".{report_id}.tmp"


def row_records(result: DiffResult) -> list[dict[str, Any]]:
    """One JSON-ready dict per row: the ``flowdiff diff --format json`` objects (plus the extra columns)."""
    out = []
    for table, df in result.rows.items():
        keys = result.keys[table]
        for rec in df.to_dict(orient="records"):
            obj: dict[str, Any] = {"table": table}
            for k in keys:
                obj[k] = _json_value(rec[k])
            for c in (*ROW_COLUMNS, ROW_NUMBER):
                obj[c] = _json_value(rec[c])
            out.append(obj)
    return out


def _json_value(v: Any) -> Any:
    if isinstance(v, pd.Timestamp):
        return iso_time(v, micro=True)
    if isinstance(v, np.generic):
        return v.item()
    return v


def write_report_tmp(config: Config, result: DiffResult) -> None:
    assert result.report_id
    d = _tmp_dir(config, result.report_id)
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    tables = []
    for t, df in result.rows.items():
        if not len(df):
            continue
        pt = pa.Table.from_pandas(df, preserve_index=False)
        pt = pt.add_column(0, "table", pa.array([t] * len(df), pa.string()))
        tables.append(pt)
    combined = pa.concat_tables(tables, promote_options="default")
    order = ["row", "table"] + [c for c in combined.column_names if c not in ("row", "table")]
    atomic_write_parquet(d / "rows.parquet", combined.select(order))
    atomic_write_text(d / "rows.json", json.dumps(row_records(result), indent=1, ensure_ascii=False) + "\n")
    meta = {
        "report_id": result.report_id,
        "created_at": now_iso(),
        "sensor": result.sensor,
        "since": _json_value(result.since) if result.since is not None else None,
        "until": _json_value(result.until) if result.until is not None else None,
        "intervals": result.intervals,
        "table_intervals": result.table_intervals,
        "skipped": result.skipped,
        "baseline_versions": result.baseline_versions,
        "keys": {t: list(k) for t, k in result.keys.items()},
        "counts": result.counts(),
        "sensors": result.sensors(),
    }
    atomic_write_text(d / "report.json", json.dumps(meta, indent=1) + "\n")
    incidents = [i.to_json() for i in result.incidents]
    atomic_write_text(d / INCIDENTS_FILE, json.dumps(incidents, indent=1, ensure_ascii=False) + "\n")


def publish_report(config: Config, report_id: str) -> None:
    src, dst = _tmp_dir(config, report_id), report_dir(config, report_id)
    if src.is_dir() and not dst.exists():
        os.replace(src, dst)
        fsync_dir(config.reports)


def finish_pending_report(config: Config, last_report: str | None) -> None:
    """A crash between the state commit and the report rename leaves a committed report in its temp
    directory: publish it. Temp directories of reports that were never committed are dropped."""
    if not config.reports.is_dir():
        return
    for d in config.reports.glob(".*.tmp"):
        rid = d.name[1:-4]
        if not is_report_id(rid):
            continue  # not ours (another stage's temp file)
        if rid == last_report:
            publish_report(config, rid)
        else:
            shutil.rmtree(d, ignore_errors=True)


def list_reports(config: Config) -> list[str]:
    """Report ids, oldest first."""
    if not config.reports.is_dir():
        return []
    return sorted(p.name for p in config.reports.iterdir() if (p / "report.json").is_file())


def load_report(config: Config, report_id: str) -> DiffResult:
    """A DiffResult back from an archived report."""
    d = report_dir(config, report_id)
    try:
        meta = json.loads((d / "report.json").read_text(encoding="utf-8"))
        table = pq.read_table(d / "rows.parquet")
    except FileNotFoundError:
        raise ReportError(f"no report {report_id!r} in {config.reports}") from None
    except (OSError, ValueError, pa.ArrowInvalid) as e:
        raise ReportError(f"report {report_id}: unreadable: {e}") from None
    keys = {t: tuple(k) for t, k in meta["keys"].items()}
    df = table.to_pandas(coerce_temporal_nanoseconds=False)
    rows = {}
    for t, k in keys.items():
        sub = df[df["table"] == t]
        rows[t] = typed_rows(sub, k) if len(sub) else empty_rows(k)
    return DiffResult(
        report_id=report_id,
        rows=rows,
        keys=keys,
        baseline_versions=meta.get("baseline_versions", {}),
        since=utc_timestamp(meta.get("since")),
        until=utc_timestamp(meta.get("until")),
        intervals=meta.get("intervals", 0),
        table_intervals=meta.get("table_intervals", 0),
        sensor=meta.get("sensor", ""),
        skipped=meta.get("skipped", {}),
        incidents=_load_incidents(d),
    )


def _load_incidents(d: Path) -> list[Incident]:
    """``incidents.json`` of a report (none for reports made before incidents existed)."""
    try:
        return [Incident.from_json(o) for o in json.loads((d / INCIDENTS_FILE).read_text(encoding="utf-8"))]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ReportError(f"report {d.name}: unreadable {INCIDENTS_FILE}: {e}") from None
