"""report: one diff result -> one human report (subject, plain text, HTML, CSV attachments).

Templates are jinja2 files packaged in ``flowdiff/templates/``; a folder named by ``config.templates``
is searched first, so a user overrides one template by copying it there. Everything that reaches a
template (sensor names, network labels, addresses) is untrusted: the HTML template is autoescaped and
undefined variables are errors (``StrictUndefined``), so a typo in a user template fails loudly instead
of mailing an empty report.

The templates receive plain, pre-formatted values (see ``report_context``); they never see DataFrames.
This module knows nothing of SMTP: ``flowdiff.mail`` turns a ``RenderedReport`` into a message.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from flowdiff.archive import ROW_COLUMNS, DiffResult
from flowdiff.config import Config
from flowdiff.durable import atomic_write_bytes, atomic_write_text
from flowdiff.errors import ReportError
from flowdiff.logsource import add_examples
from flowdiff.vocab import format_value, human_time, one_line

PACKAGED_TEMPLATES = Path(__file__).resolve().parent / "templates"
TEMPLATE_NAMES = ("subject.txt", "report.txt", "report.html")
TOP_HIDDEN = 5  # rows named in the summary of what did not fit in the body
INCIDENTS_SHOWN = 50  # incidents listed in the body (all of them are in incidents.json)
INCIDENT_ROWS_SHOWN = 12  # rows listed under one incident in the body

# Archive file names under <reports>/<report_id>/ (rows.parquet and rows.json come from diff).
REPORT_HTML = "report.html"
REPORT_TEXT = "report.txt"
REPORT_EML = "message.eml"  # written by flowdiff.deliver (this module builds no mail)
REPORT_META = "rendered.json"  # (report.json and rows.* are written by diff)
CSV_SUFFIX = ".csv.gz"
CSV_MIME = "application/gzip"
TIME_COLUMNS = ("interval_start", "first_seen", "last_seen")
GZIP_LEVEL = 6
GZIP_RESERVE = 600  # compressed cut note, final flush and gzip trailer
MIME_RESERVE = 12_000  # message headers, part headers and boundaries of the bodies
ATTACHMENT_HEADERS = 600  # MIME headers and boundary of one attachment


@dataclass(frozen=True)
class RenderedReport:
    """A report ready to archive or mail. ``attachments`` are ``(filename, bytes, mimetype)``."""

    subject: str
    text: str
    html: str
    attachments: list[tuple[str, bytes, str]] = field(default_factory=list)
    message_id: str = ""
    date: str = ""  # RFC 2822 Date of the message; set by deliver (kept across re-deliveries)
    attached_rows: dict[str, int] = field(default_factory=dict)  # table -> rows in its CSV attachment
    report_id: str = ""
    sensor: str = ""
    counts: dict[str, int] = field(default_factory=dict)


# ---------------------------------------------------------------- small formatting helpers


def human_bytes(n: int) -> str:
    """Decimal units, like ``ls --si``: 999 B, 1.2 kB, 3.4 MB."""
    n = int(n)
    if n < 1000:
        return f"{n} B"
    value = float(n)
    for unit in ("kB", "MB", "GB", "TB", "PB"):
        value /= 1000.0
        if value < 999.95 or unit == "PB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def _bytes_long(n: int) -> str:
    """``1.2 kB (1,234)``; just ``999 B`` when the short form is already exact."""
    return human_bytes(n) if n < 1000 else f"{human_bytes(n)} ({n:,})"


def message_id_for(report_id: str, sensor: str) -> str:
    """A Message-ID that depends only on the report and the sensor: a re-send of the same report
    carries the same id, so a recipient (or its mail client) can recognise a duplicate."""
    digest = hashlib.sha256(f"{sensor}\0{report_id}".encode()).hexdigest()[:12]
    rid = re.sub(r"[^A-Za-z0-9._-]", "_", report_id)[:24] or "report"
    host = re.sub(r"[^A-Za-z0-9-]", "-", sensor).strip("-")[:16] or "sensor"
    # at most 65 characters, so that "Message-ID: <...>" is never folded (the digest keeps it unique)
    return f"<{rid}.{digest}@{host}.flowdiff>"


def subject_counts(counts: dict[str, int]) -> list[tuple[str, int]]:
    """Tables with new rows, the largest first (the order of the subject line)."""
    return sorted(((t, n) for t, n in counts.items() if n), key=lambda kv: (-kv[1], kv[0]))


# ---------------------------------------------------------------- context


def _sorted_rows(df: pd.DataFrame, keys: tuple[str, ...]) -> pd.DataFrame:
    """Largest first, ties by key: the order of the body and of the (maybe cut) CSV. Arrow's sort is
    ten times faster than pandas' on string keys (0.1 s for 400k rows)."""
    order = ["bytes", "packets", *keys]
    try:
        table = pa.Table.from_pandas(df[order], preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed-type object columns: pandas copes
        return df.sort_values(order, ascending=[False, False] + [True] * len(keys), kind="stable")
    sort_keys = [("bytes", "descending"), ("packets", "descending"), *((k, "ascending") for k in keys)]
    return df.take(pc.sort_indices(table, sort_keys=sort_keys).to_numpy())


def _row_context(row: dict[str, Any], keys: tuple[str, ...], number: int) -> dict[str, Any]:
    """Template values of one shown row (only the ``max_rows`` shown rows get one, never all rows)."""
    fields = [(k, format_value(k, row[k])) for k in keys]
    return {
        "row": int(row["row"]) if "row" in row else number,  # what `flowdiff accept REPORT ROW` takes
        "fields": fields,
        "key": " ".join(f"{k}={v}" for k, v in fields),
        "first_seen": human_time(row["first_seen"]),
        "last_seen": human_time(row["last_seen"]),
        "interval": human_time(row["interval_start"]),
        "packets": f"{int(row['packets']):,}",
        "bytes": human_bytes(int(row["bytes"])),
        "bytes_exact": f"{int(row['bytes']):,}",
        "bytes_long": _bytes_long(int(row["bytes"])),
        "reason": str(row["reason"]),
        "neighbour": str(row["neighbour"] or ""),
        "accept_cmd": str(row["accept_cmd"]),
        "deny_cmd": str(row["deny_cmd"]),
        "incident": _incident_number(row.get("incident")),
        "incident_title": str(row.get("incident_title") or ""),
        "sensors": _text(row.get("sensors")),
        "example": "",  # log tables: one line of the key (flowdiff.logsource.add_examples)
    }


def _text(value: Any) -> str:
    """A text field of a row; "" for missing ones (None, NaN: rows of older reports)."""
    return "" if value is None or value != value else str(value)


def _incident_number(value: Any) -> int:
    try:
        return int(value) if value == value and value is not None else 0  # NaN: rows without incidents
    except (TypeError, ValueError):
        return 0


def _incidents_context(result: DiffResult) -> list[dict[str, Any]]:
    """Template values of the incidents shown (``INCIDENTS_SHOWN``, each with its first
    ``INCIDENT_ROWS_SHOWN`` rows): title, rows underneath, one accept/deny command for all of them."""
    shown = result.incidents[:INCIDENTS_SHOWN]
    wanted: dict[str, set[int]] = {}
    for inc in shown:
        for t, r in inc.rows[:INCIDENT_ROWS_SHOWN]:
            wanted.setdefault(t, set()).add(r)
    recs: dict[tuple[str, int], dict[str, Any]] = {}
    for t, numbers in wanted.items():
        df = result.rows.get(t)
        if df is None or not len(df):
            continue
        keys = tuple(result.keys.get(t) or ())
        sub = df[df["row"].isin(numbers)]
        for rc in _rows_context(sub, keys, 1):
            recs[(t, rc["row"])] = {**rc, "table": t}
    out = []
    for inc in shown:
        rows = [recs[k] for k in inc.rows[:INCIDENT_ROWS_SHOWN] if k in recs]
        out.append(
            {
                "number": inc.number,
                "title": inc.title,
                "kind": inc.kind,
                "count": len(inc.rows),
                "rows": rows,
                "more": len(inc.rows) - len(rows),
                "accept_cmd": inc.accept_cmd,
                "deny_cmd": inc.deny_cmd,
            }
        )
    return out


def _rows_context(df: pd.DataFrame, keys: tuple[str, ...], first: int) -> list[dict[str, Any]]:
    return [_row_context(r, keys, i) for i, r in enumerate(df.to_dict("records"), first)]


def _csv_name(table: str, report_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", f"{table}-{report_id}")
    return f"{safe}{CSV_SUFFIX}"


def _csv_table(df: pd.DataFrame, keys: tuple[str, ...]) -> pa.Table:
    """Key columns first; as Arrow, so that blocks of it are written to CSV in C++, not row by row."""
    return pa.Table.from_pandas(
        df.loc[:, [*keys, *[c for c in df.columns if c not in keys]]], preserve_index=False
    )


def _iso_text(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Timestamps as ISO 8601 UTC text (``2026-11-30T01:00:07Z``), vectorised: a cast, not strftime
    per value (Arrow's strftime with a time zone costs seconds per 100k values)."""
    if not pa.types.is_timestamp(column.type):
        return column
    naive = pc.cast(column.cast(pa.timestamp(column.type.unit)), pa.timestamp("s"), safe=False)
    text = pc.binary_join_element_wise(pc.replace_substring(pc.cast(naive, pa.string()), " ", "T"), "Z", "")
    return pc.fill_null(text, "-")


def _csv_bytes(table: pa.Table, *, header: bool = True) -> bytes:
    for col in TIME_COLUMNS:
        if col in table.column_names:
            table = table.set_column(table.schema.get_field_index(col), col, _iso_text(table[col]))
    sink = io.BytesIO()
    pacsv.write_csv(table, sink, pacsv.WriteOptions(include_header=header, eol="\r\n"))
    return sink.getvalue()


def gzip_csv(df: pd.DataFrame, keys: tuple[str, ...], budget: int, cut_note: str) -> tuple[bytes | None, int]:
    """The rows of ``df`` (in order) as gzip-compressed CSV of at most ``budget`` bytes, and how many
    rows it holds. When not all rows fit, the CSV stops at a row boundary and ends with ``cut_note``
    (``{shown}``/``{total}`` filled in). None when not even the header fits.

    Rows are written and compressed in blocks (growing while they fit, shrinking when one does not),
    and only as many rows as fit are ever turned into text: a 400k-row table costs what fits in the
    mail, not what the table holds."""
    table = _csv_table(df, keys)
    header = _csv_bytes(table.slice(0, 0))
    comp = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)  # wbits 31: gzip container, mtime 0
    first = comp.compress(header) + comp.flush(zlib.Z_SYNC_FLUSH)
    if len(first) + GZIP_RESERVE > budget:
        return None, 0
    parts, size, done, step, n = [first], len(first), 0, 1024, len(df)
    per_row = 0.0  # compressed bytes per row so far: keeps blocks from overshooting the budget much
    while done < n:
        block = min(step, n - done)
        if per_row:
            block = max(1, min(block, int((budget - size - GZIP_RESERVE) / per_row * 0.9)))
        trial = comp.copy()
        piece = trial.compress(_csv_bytes(table.slice(done, block), header=False))
        piece += trial.flush(zlib.Z_SYNC_FLUSH)
        if size + len(piece) + GZIP_RESERVE > budget:
            if block == 1:
                break
            step = max(1, block // 4)
            continue
        comp, size, done = trial, size + len(piece), done + block
        parts.append(piece)
        per_row = (size - len(first)) / done
        step = min(step * 2, 32768)
    if done < n:
        note = cut_note.replace("{shown}", f"{done:,}").replace("{total}", f"{n:,}")
        parts.append(comp.compress(f"# {one_line(note, 400)}\r\n".encode()))
    parts.append(comp.flush())
    return b"".join(parts), done


def _encoded_bound(text: str) -> int:
    """Bytes a body can take once MIME-encoded: 7bit when ASCII with short lines, else at most
    quoted-printable's worst case (3 bytes per byte plus soft line breaks)."""
    data = text.encode("utf-8")
    lines = text.count("\n") + 1
    if data.isascii() and max((len(x) for x in text.split("\n")), default=0) <= 78:
        return len(data) + lines
    return len(data) * 3 + len(data) // 25 + 2 * lines


def _attachment_budget(config: Config, subject: str, text: str, html: str, parts: int) -> int:
    """Bytes of (compressed) attachments that still fit in ``max_message_bytes``: what remains after the
    bodies and headers, base64-encoded (57 bytes per 78-byte line)."""
    fixed = _encoded_bound(text) + _encoded_bound(html) + 3 * len(subject) + MIME_RESERVE
    room = int(config.max_message_bytes) - fixed - ATTACHMENT_HEADERS * parts
    return max(0, room * 57 // 78)


def report_context(
    result: DiffResult, config: Config
) -> tuple[dict[str, Any], dict[str, pd.DataFrame], dict[str, tuple[str, ...]]]:
    """Template variables for one report; the sorted rows and keys of the tables cut by ``max_rows``
    (their CSV attachments are built by ``render_report``, which knows the room left in the message).
    Per-row values are made only for the shown rows."""
    if not result.report_id or result.total == 0:
        raise ReportError("nothing new: a report needs at least one new row")
    sensor = one_line(config.mail.sensor or result.sensor or config.sensor, 63)
    limit = max(1, int(config.max_rows))
    rows_path = str(Path(config.reports) / result.report_id / "rows.parquet")
    tables, overflow, overflow_keys = [], {}, {}
    for name, count in result.counts().items():  # diff's table order, so row numbers ascend
        keys = tuple(
            result.keys.get(name) or [c for c in result.rows[name].columns if c not in (*ROW_COLUMNS, "row")]
        )
        df = _sorted_rows(result.rows[name], keys)
        shown, hidden = df.iloc[:limit], df.iloc[limit:]
        entry: dict[str, Any] = {
            "name": name,
            "columns": list(keys),
            "count": count,
            "rows": _rows_context(shown, keys, 1),
            "hidden": len(hidden),
            "hidden_packets": f"{int(hidden['packets'].sum()):,}" if len(hidden) else "0",
            "hidden_bytes": human_bytes(int(hidden["bytes"].sum())) if len(hidden) else "0 B",
            "top_hidden": _rows_context(hidden.iloc[:TOP_HIDDEN], keys, limit + 1),
            "attachment": "",
            "attachment_rows": 0,
            "attachment_cut": False,
        }
        add_examples(config.store, name, keys, shown, entry["rows"])  # log tables: one line per template
        if len(hidden):
            overflow[name], overflow_keys[name] = df, keys
            # worst case until the attachment is built: named, cut, the longest numbers
            entry.update(
                attachment=_csv_name(name, result.report_id), attachment_rows=count, attachment_cut=True
            )
        tables.append(entry)
    ctx = {
        "sensor": sensor,
        "report_id": result.report_id,
        "total": result.total,
        "counts": subject_counts(result.counts()),
        "incidents": _incidents_context(result),
        "incident_count": len(result.incidents),
        "incidents_hidden": max(0, len(result.incidents) - INCIDENTS_SHOWN),
        "incidents_path": str(Path(config.reports) / result.report_id / "incidents.json"),
        "tables": tables,
        "max_rows": limit,
        "max_message": human_bytes(int(config.max_message_bytes)),
        "rows_path": rows_path,
        "baseline_versions": sorted((t, str(v)) for t, v in result.baseline_versions.items()),
        "since": human_time(result.since),
        "until": human_time(result.until),
        "intervals": int(result.intervals),
        "archive": str(Path(config.reports) / result.report_id),
    }
    return ctx, overflow, overflow_keys


def _attachments(
    ctx: dict[str, Any],
    overflow: dict[str, pd.DataFrame],
    keys: dict[str, tuple[str, ...]],
    budget: int,
) -> list[tuple[str, bytes, str]]:
    """One gzip CSV per table cut by ``max_rows``, sharing ``budget``: the smaller tables go first, and
    what one leaves unused goes to the next. Updates each table entry of ``ctx`` with what it holds."""
    entries = {t["name"]: t for t in ctx["tables"]}
    built: dict[str, bytes] = {}
    order = sorted(overflow, key=lambda t: (len(overflow[t]), t))
    for i, name in enumerate(order):
        share = budget // (len(order) - i)
        note = (
            "cut: the first {shown} of {total} rows (largest first) fit in the mail "
            f"(max_message_bytes); all rows are in {ctx['rows_path']}"
        )
        data, rows = gzip_csv(overflow[name], keys[name], share, note)
        entry = entries[name]
        entry.update(attachment_rows=rows, attachment_cut=rows < len(overflow[name]))
        if data is None:
            entry["attachment"] = ""
            continue
        budget -= len(data)
        built[name] = data
    return [(entries[t]["attachment"], built[t], CSV_MIME) for t in overflow if t in built]


# ---------------------------------------------------------------- rendering


def template_environment(config: Config) -> jinja2.Environment:
    """User folder first, packaged templates second; strict undefined; HTML autoescaped."""
    loaders: list[jinja2.BaseLoader] = []
    if config.templates is not None:
        loaders.append(jinja2.FileSystemLoader(str(config.templates)))
    loaders.append(jinja2.FileSystemLoader(str(PACKAGED_TEMPLATES)))
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        undefined=jinja2.StrictUndefined,
        autoescape=jinja2.select_autoescape(
            enabled_extensions=("html", "htm", "xml"), default_for_string=False
        ),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["one_line"] = one_line
    return env


def _render(env: jinja2.Environment, name: str, ctx: dict[str, Any]) -> str:
    try:
        return env.get_template(name).render(**ctx)
    except jinja2.TemplateNotFound as e:
        raise ReportError(f"template {e.name} not found (user folder or packaged templates)") from None
    except jinja2.TemplateSyntaxError as e:
        raise ReportError(f"template {e.filename or name} line {e.lineno}: {e.message}") from None
    except jinja2.UndefinedError as e:
        raise ReportError(f"template {name}: {e.message}") from None


def render_report(result: DiffResult, config: Config) -> RenderedReport:
    """Render one diff result. Raises ReportError when there is nothing new or a template fails.

    The bodies hold ``max_rows`` rows per table; the rows of a longer table go to a gzip CSV attachment,
    cut so that the mail stays under ``max_message_bytes`` (the bodies say so, and where all rows are).
    The bodies are rendered twice when there are attachments: first with the longest possible notes, to
    know the room left, then with what the attachments really hold (a few milliseconds)."""
    ctx, overflow, keys = report_context(result, config)
    env = template_environment(config)
    subject = one_line(_render(env, "subject.txt", ctx), 250)
    text, html = _render(env, "report.txt", ctx), _render(env, "report.html", ctx)
    attachments: list[tuple[str, bytes, str]] = []
    if overflow:
        budget = _attachment_budget(config, subject, text, html, len(overflow))
        attachments = _attachments(ctx, overflow, keys, budget)
        text, html = _render(env, "report.txt", ctx), _render(env, "report.html", ctx)
    return RenderedReport(
        subject=subject,
        text=text,
        html=html,
        attachments=attachments,
        message_id=message_id_for(result.report_id or "", ctx["sensor"]),
        report_id=result.report_id or "",
        sensor=ctx["sensor"],
        counts=dict(ctx["counts"]),
        attached_rows={t["name"]: t["attachment_rows"] for t in ctx["tables"] if t["attachment"]},
    )


# ---------------------------------------------------------------- archive


def report_dir(config: Config, report_id: str) -> Path:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", report_id):
        raise ReportError(f"not a report id: {report_id!r}")
    return Path(config.reports) / report_id


def archive_report(rendered: RenderedReport, result: DiffResult, config: Config) -> Path:
    """Write report.html, report.txt, rendered.json and the gzip CSV attachments under
    ``<reports>/<report_id>/``, each atomically. Done whether or not mail is configured, so a sensor
    without mail keeps its reports. (``flowdiff.deliver`` adds message.eml, the message as mailed.)"""
    d = report_dir(config, rendered.report_id)
    atomic_write_text(d / REPORT_TEXT, rendered.text)
    atomic_write_text(d / REPORT_HTML, rendered.html)
    for fname, data, _mime in rendered.attachments:
        atomic_write_bytes(d / fname, data)
    meta = {
        "report_id": rendered.report_id,
        "sensor": rendered.sensor,
        "subject": rendered.subject,
        "message_id": rendered.message_id,
        "counts": rendered.counts,
        "incidents": len(result.incidents),
        "total": result.total,
        "baseline_versions": {t: str(v) for t, v in result.baseline_versions.items()},
        "since": human_time(result.since),
        "until": human_time(result.until),
        "attachments": [a[0] for a in rendered.attachments],
        "date": rendered.date,
    }
    atomic_write_text(d / REPORT_META, json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return d
