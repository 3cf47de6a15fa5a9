"""deliver: the one path from a diff result to the reader: render -> archive -> (queue for mail).

``run``, ``notify``, ``diff`` and the demo all deliver a report through ``deliver``, so a report looks
the same and lands in the same place whichever command produced it. This is the only module that
knows both sides: ``flowdiff.report`` renders (jinja2, no SMTP), ``flowdiff.mail`` packages and sends
(no jinja2). Here the rendered report becomes a message, no larger than ``max_message_bytes``, whose
bytes are archived as ``message.eml`` next to the report and, with ``[mail]``, put in the outbox.

Delivering the same report again is harmless: the Message-ID, the Date (kept in ``rendered.json``) and
the MIME boundaries are derived from the report, so the same files are rewritten with the same bytes,
and the outbox keeps the one entry it has. Sending is never done here: that is ``flush_outbox``'s job
(``run``, ``notify``, ``outbox retry``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from email.utils import formatdate
from pathlib import Path

from flowdiff.archive import DiffResult
from flowdiff.config import Config
from flowdiff.durable import atomic_write_bytes
from flowdiff.errors import ReportError
from flowdiff.exitcodes import ExitCode
from flowdiff.mail import (
    SENT_RECORD,
    OutboxResult,
    build_message,
    enqueue,
    flush_outbox,
    list_failed,
    list_outbox,
)
from flowdiff.report import REPORT_EML, REPORT_META, RenderedReport, archive_report, render_report, report_dir

log = logging.getLogger(__name__)

__all__ = ["Delivery", "NotifyResult", "deliver", "notify", "pending_reports", "unrendered_reports"]

_SHRINK_TRIES = 6  # re-renders with less room before giving up on max_message_bytes


@dataclass(frozen=True)
class Delivery:
    """One delivered report: where it is archived, and the Message-ID it waits under in the outbox
    (None when it was not queued: no ``[mail]``, or ``queue=False``)."""

    report_dir: Path
    message_id: str | None
    rendered: RenderedReport
    message_bytes: int  # size of message.eml, never above config.max_message_bytes

    @property
    def cut(self) -> bool:
        """True when an attachment holds fewer rows than its table (all rows: rows.parquet)."""
        return any(n < self.rendered.counts.get(t, 0) for t, n in self.rendered.attached_rows.items())


def _message_date(directory: Path) -> str:
    """The Date of the first delivery of this report (kept in rendered.json), else now."""
    try:
        date = json.loads((directory / REPORT_META).read_text(encoding="utf-8")).get("date", "")
    except (OSError, ValueError, AttributeError):
        date = ""
    return str(date or formatdate(localtime=False, usegmt=True))


def _fitting_message(result: DiffResult, config: Config, date: str) -> tuple[RenderedReport, bytes]:
    """Render, and build the message; the rare message still above ``max_message_bytes`` (the size
    estimate of ``render_report`` is conservative, but user templates may be anything) is rendered
    again with less room for attachments, then with fewer body rows, until it fits."""
    limit = int(config.max_message_bytes)
    trial = config
    for _ in range(_SHRINK_TRIES):
        rendered = replace(render_report(result, trial), date=date)
        data = build_message(rendered, config.mail).as_bytes()
        if len(data) <= limit:
            return rendered, data
        over = len(data) - limit
        room = trial.max_message_bytes - 2 * over - 10_000
        if room > 0 and rendered.attachments:
            trial = replace(trial, max_message_bytes=room)
        else:
            trial = replace(trial, max_message_bytes=max(1, room), max_rows=max(1, trial.max_rows // 4))
    raise ReportError(
        f"report {result.report_id}: the message is {len(data):,} bytes even with {trial.max_rows} row(s) "
        f"per table and no attachment; raise max_message_bytes (now {limit:,})"
    )


def deliver(result: DiffResult, config: Config, *, queue: bool = True) -> Delivery:
    """Render one report, archive it under ``<reports>/<report_id>/`` (report.txt, report.html, the
    gzip CSV attachments, message.eml, rendered.json) and, when ``queue`` and ``[mail]`` is configured,
    put the message in the outbox. Raises ReportError when there is nothing new, a template fails, or
    even a minimal message exceeds ``max_message_bytes``."""
    if not result.report_id:
        raise ReportError("nothing new: a report needs at least one new row")
    directory = report_dir(config, result.report_id)
    rendered, data = _fitting_message(result, config, _message_date(directory))
    atomic_write_bytes(directory / REPORT_EML, data)
    archive_report(rendered, result, config)  # rendered.json last: it marks the report as rendered
    message_id = None
    if queue and config.mail.enabled:
        message_id = enqueue(data, config).message_id
    return Delivery(directory, message_id, rendered, len(data))


# ---------------------------------------------------------------- which reports still need something


def unrendered_reports(config: Config) -> list[str]:
    """Reports archived by diff (``report.json``) that have no rendered report yet, oldest first."""
    from flowdiff.archive import list_reports

    return [rid for rid in list_reports(config) if not (Path(config.reports) / rid / REPORT_META).exists()]


def pending_reports(config: Config) -> list[str]:
    """Archived reports never mailed: no sent.json, not waiting in the outbox and not refused by the
    server (a refused one is retried only when named: ``flowdiff notify REPORT_ID``), oldest first."""
    from flowdiff.archive import list_reports

    known = {e.report_id for e in list_outbox(config)} | {e.report_id for e in list_failed(config)}
    return [
        rid
        for rid in list_reports(config)
        if rid not in known and not (Path(config.reports) / rid / SENT_RECORD).exists()
    ]


# ---------------------------------------------------------------- notify


@dataclass
class NotifyResult:
    """What ``notify`` did: the reports delivered (rendered, archived, queued), those without new rows,
    and the flush of the outbox (None without ``[mail]``: nothing can be sent)."""

    delivered: list[Delivery] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)  # report ids with no new rows: nothing to send
    unsent: list[str] = field(default_factory=list)  # without [mail]: reports that could not be mailed
    outbox: OutboxResult | None = None
    mail_enabled: bool = False

    @property
    def exit_code(self) -> ExitCode:
        """ERROR when there was something to mail and no ``[mail]`` (or a message was refused for
        good), DEFERRED while a message waits in the outbox, else OK."""
        if not self.mail_enabled:
            return ExitCode.ERROR if self.unsent else ExitCode.OK
        return self.outbox.exit_code if self.outbox is not None else ExitCode.OK


def notify(config: Config, report_ids: list[str] | None = None) -> NotifyResult:
    """Mail the reports that were not mailed yet (or those named, even if mailed before: same
    Message-ID), then flush the outbox.

    Without ``[mail]`` nothing can be sent, but nothing is lost either: the reports not rendered yet
    (or those named) are rendered and archived, and ``unsent`` lists every report that is not mailed,
    which makes the exit code ERROR when there is any (asked to notify, a sensor without mail cannot)."""
    from flowdiff.archive import load_report

    out = NotifyResult(mail_enabled=config.mail.enabled)
    if out.mail_enabled:
        ids = list(report_ids or []) or pending_reports(config)
    else:
        ids = list(report_ids or []) or unrendered_reports(config)
        out.unsent = list(report_ids or []) or pending_reports(config)
    for rid in ids:
        result = load_report(config, rid)
        if not result.total:
            out.empty.append(rid)
            continue
        out.delivered.append(deliver(result, config))
    if out.mail_enabled:
        out.outbox = flush_outbox(config)
    return out
