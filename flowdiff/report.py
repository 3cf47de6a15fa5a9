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
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from flowdiff.config import Config
from flowdiff.diff import ROW_COLUMNS, DiffResult
from flowdiff.durable import atomic_write_bytes, atomic_write_text
from flowdiff.errors import ReportError
from flowdiff.vocab import format_value, human_time, one_line

PACKAGED_TEMPLATES = Path(__file__).resolve().parent / "templates"
TEMPLATE_NAMES = ("subject.txt", "report.txt", "report.html")
TOP_HIDDEN = 5  # rows named in the summary of what did not fit in the body

# Archive file names under <reports>/<report_id>/ (rows.parquet and rows.json come from diff).
REPORT_HTML = "report.html"
REPORT_TEXT = "report.txt"
REPORT_EML = "message.eml"
REPORT_META = "rendered.json"  # (report.json and rows.* are written by diff)



@dataclass(frozen=True)
class RenderedReport:
    """A report ready to archive or mail. ``attachments`` are ``(filename, bytes, mimetype)``."""

    subject: str
    text: str
    html: str
    attachments: list[tuple[str, bytes, str]] = field(default_factory=list)
    message_id: str = ""
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


def format_time(ts: Any) -> str:
    return human_time(ts)


def format_key_value(field_name: str, value: Any) -> str:
    return format_value(field_name, value)


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
    order = ["bytes", "packets", *keys]
    return df.sort_values(order, ascending=[False, False] + [True] * len(keys), kind="stable")


def _row_context(row: pd.Series, keys: tuple[str, ...], number: int) -> dict[str, Any]:
    fields = [(k, format_key_value(k, row[k])) for k in keys]
    return {
        "row": int(row["row"]) if "row" in row.index else number,  # what `flowdiff accept REPORT ROW` takes
        "fields": fields,
        "key": " ".join(f"{k}={v}" for k, v in fields),
        "first_seen": format_time(row["first_seen"]),
        "last_seen": format_time(row["last_seen"]),
        "interval": format_time(row["interval_start"]),
        "packets": f"{int(row['packets']):,}",
        "bytes": human_bytes(int(row["bytes"])),
        "bytes_exact": f"{int(row['bytes']):,}",
        "bytes_long": _bytes_long(int(row["bytes"])),
        "reason": str(row["reason"]),
        "neighbour": str(row["neighbour"] or ""),
        "accept_cmd": str(row["accept_cmd"]),
        "deny_cmd": str(row["deny_cmd"]),
    }


def _csv_name(table: str, report_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", f"{table}-{report_id}")
    return f"{safe}.csv"


def rows_csv(df: pd.DataFrame, keys: tuple[str, ...]) -> bytes:
    """All rows of one table, timestamps in ISO 8601 UTC, bytes/packets exact."""
    out = df.loc[:, [*keys, *[c for c in df.columns if c not in keys]]].copy()
    for col in ("interval_start", "first_seen", "last_seen"):
        if col in out.columns:
            out[col] = [format_time(v).replace(" ", "T") for v in out[col]]
    return out.to_csv(index=False, lineterminator="\r\n").encode("utf-8")


def report_context(result: DiffResult, config: Config) -> tuple[dict[str, Any], list[tuple[str, bytes, str]]]:
    """Template variables for one report, and the CSV attachments for tables cut by ``max_rows``."""
    if not result.report_id or result.total == 0:
        raise ReportError("nothing new: a report needs at least one new row")
    sensor = one_line(config.mail.sensor or result.sensor or config.sensor, 63)
    limit = max(1, int(config.max_rows))
    tables, attachments = [], []
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
            "rows": [_row_context(r, keys, i) for i, (_, r) in enumerate(shown.iterrows(), 1)],
            "hidden": len(hidden),
            "hidden_packets": f"{int(hidden['packets'].sum()):,}" if len(hidden) else "0",
            "hidden_bytes": human_bytes(int(hidden["bytes"].sum())) if len(hidden) else "0 B",
            "top_hidden": [
                _row_context(r, keys, i)
                for i, (_, r) in enumerate(hidden.iloc[:TOP_HIDDEN].iterrows(), limit + 1)
            ],
            "attachment": "",
        }
        if len(hidden):
            fname = _csv_name(name, result.report_id)
            attachments.append((fname, rows_csv(df, keys), "text/csv"))
            entry["attachment"] = fname
        tables.append(entry)
    ctx = {
        "sensor": sensor,
        "report_id": result.report_id,
        "total": result.total,
        "counts": subject_counts(result.counts()),
        "tables": tables,
        "max_rows": limit,
        "baseline_versions": sorted((t, str(v)) for t, v in result.baseline_versions.items()),
        "since": format_time(result.since),
        "until": format_time(result.until),
        "intervals": int(result.intervals),
        "archive": str(Path(config.reports) / result.report_id),
    }
    return ctx, attachments


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
    """Render one diff result. Raises ReportError when there is nothing new or a template fails."""
    ctx, attachments = report_context(result, config)
    env = template_environment(config)
    subject = one_line(_render(env, "subject.txt", ctx), 250)
    return RenderedReport(
        subject=subject,
        text=_render(env, "report.txt", ctx),
        html=_render(env, "report.html", ctx),
        attachments=attachments,
        message_id=message_id_for(result.report_id or "", ctx["sensor"]),
        report_id=result.report_id or "",
        sensor=ctx["sensor"],
        counts=dict(ctx["counts"]),
    )


# ---------------------------------------------------------------- archive


def report_dir(config: Config, report_id: str) -> Path:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", report_id):
        raise ReportError(f"not a report id: {report_id!r}")
    return Path(config.reports) / report_id


def archive_report(rendered: RenderedReport, result: DiffResult, config: Config) -> Path:
    """Write report.html, report.txt, message.eml, rendered.json and the CSV attachments under
    ``<reports>/<report_id>/``, each atomically. Done whether or not mail is configured, so a sensor
    without mail keeps its reports; the .eml is the message as it would be (or was) mailed."""
    from flowdiff.mail import build_message  # mail builds the MIME message; it needs no jinja2

    d = report_dir(config, rendered.report_id)
    atomic_write_text(d / REPORT_TEXT, rendered.text)
    atomic_write_text(d / REPORT_HTML, rendered.html)
    for fname, data, _mime in rendered.attachments:
        atomic_write_bytes(d / fname, data)
    atomic_write_bytes(d / REPORT_EML, build_message(rendered, config.mail).as_bytes())
    meta = {
        "report_id": rendered.report_id,
        "sensor": rendered.sensor,
        "subject": rendered.subject,
        "message_id": rendered.message_id,
        "counts": rendered.counts,
        "total": result.total,
        "baseline_versions": {t: str(v) for t, v in result.baseline_versions.items()},
        "since": format_time(result.since),
        "until": format_time(result.until),
        "attachments": [a[0] for a in rendered.attachments],
    }
    atomic_write_text(d / REPORT_META, json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return d
