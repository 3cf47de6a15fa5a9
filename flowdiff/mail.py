"""mail: reports as email, and an outbox so that nothing is lost while the mail server is down.

Delivery is at-least-once with a stable identity:

1. ``enqueue`` writes the message (``<name>.eml``, the exact bytes that will be sent) and its state
   (``<name>.json``) to the outbox, atomically, *before* the first attempt.
2. ``flush_outbox`` sends each due message; only after the server accepted it (250 after DATA) are
   the two files removed, and a delivery record is written to ``<reports>/<report_id>/sent.json``.
3. A failed attempt is logged in one line and rescheduled with exponential backoff (1 min, 2, 4 ...
   capped at 1 h); messages wait in the outbox for as long as it takes.
4. A message the server refuses for good (a 5xx reply to MAIL FROM, RCPT TO or DATA, such as 552
   "message too big") is never retried: it moves to ``<outbox>/failed/<name>.eml`` and ``.json``
   (state plus ``failed_at``), which is said in one log line; ``drop_message`` removes it.

A crash after the server accepted a message and before its outbox files are removed makes the next
flush send it again: the recipient then receives the same bytes with the same ``Message-ID``, which
mail clients and list software use to recognise (and usually hide) the duplicate. That is the only
case of a second delivery, and it is recognisable by design.

Passwords come from the environment variable named by ``mail.password_env`` or from
``mail.password_file``; they are never taken from the command line and never logged.
This module knows nothing of jinja2; ``flowdiff.report`` renders, this module only packages and sends.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import email.policy
import hashlib
import json
import logging
import os
import re
import socket
import ssl
import time
from dataclasses import asdict, dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import formatdate, getaddresses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiosmtplib

from flowdiff.config import Config, MailConfig
from flowdiff.durable import atomic_write_bytes, atomic_write_text, file_lock, fsync_dir
from flowdiff.errors import LockError, MailError, MailRefusedError
from flowdiff.exitcodes import ExitCode
from flowdiff.vocab import iso_time, one_line

if TYPE_CHECKING:
    from flowdiff.report import RenderedReport

log = logging.getLogger(__name__)

BACKOFF_BASE = 60.0  # seconds before the second attempt
BACKOFF_MAX = 3600.0  # never wait longer than this between attempts
FLUSH_LOCK = ".flush.lock"
FAILED_DIR = "failed"  # <outbox>/failed/<name>.eml + .json: refused for good (the health check reads it)
SENT_RECORD = "sent.json"  # in <reports>/<report_id>/ once the server accepted the report


# ---------------------------------------------------------------- building messages


def _header_value(value: Any) -> str:
    """A header value on one line: CR/LF and other controls become spaces (no header injection)."""
    return one_line(value, 998)


def default_from(mail_config: MailConfig) -> str:
    return mail_config.from_addr or f"flowdiff@{_header_value(socket.getfqdn()) or 'localhost'}"


def build_message(rendered: RenderedReport, mail_config: MailConfig) -> EmailMessage:
    """multipart/alternative (text, then HTML) plus attachments, with the report's stable Message-ID.

    Every header value passes through ``_header_value``; the email package additionally refuses any
    header containing CR or LF, so a hostile sensor name or label can never add a header."""
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["Subject"] = _header_value(rendered.subject)
    msg["From"] = _header_value(default_from(mail_config))
    if mail_config.to:
        msg["To"] = ", ".join(_header_value(a) for a in mail_config.to)
    msg["Date"] = _header_value(rendered.date) or formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = _header_value(rendered.message_id)
    if rendered.report_id:
        msg["X-Flowdiff-Report"] = _header_value(rendered.report_id)
    if rendered.sensor:
        msg["X-Flowdiff-Sensor"] = _header_value(rendered.sensor)
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to a robot
    msg.set_content(rendered.text, subtype="plain", charset="utf-8")
    msg.add_alternative(rendered.html, subtype="html", charset="utf-8")
    for filename, data, mimetype in rendered.attachments:
        maintype, _, subtype = mimetype.partition("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype or "octet-stream", filename=filename)
    _stable_boundaries(msg, rendered.message_id)
    return msg


def _stable_boundaries(msg: EmailMessage, seed: str) -> None:
    """Boundaries derived from the Message-ID instead of random ones, so that rendering the same report
    again gives the same bytes. ``=_`` cannot occur in base64 or quoted-printable text."""
    digest = hashlib.sha256(seed.encode("utf-8", "replace")).hexdigest()[:24]
    for i, part in enumerate(p for p in msg.walk() if p.is_multipart()):
        part.set_boundary(f"=_flowdiff_{digest}_{i}")


def _test_message(config: Config) -> EmailMessage:
    mc = config.mail
    sensor = _header_value(config.sensor_name)
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["Subject"] = f"[flowdiff {sensor}] test message"
    msg["From"] = _header_value(default_from(mc))
    msg["To"] = ", ".join(_header_value(a) for a in mc.to)
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = f"<test.{time.time_ns()}@{re.sub(r'[^A-Za-z0-9-]', '-', sensor)[:16]}.flowdiff>"
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(
        f"This is a test message from flowdiff on {sensor}.\n"
        f"Server {mc.host}:{mc.effective_port}, tls={mc.tls}, verify={mc.verify}.\n"
        "If you can read this, reports will reach you.\n"
    )
    return msg


# ---------------------------------------------------------------- sending


def _password(mc: MailConfig) -> str | None:
    if mc.password_env:
        value = os.environ.get(mc.password_env)
        if value is None:
            raise MailError(f"mail.password_env: environment variable {mc.password_env} is not set")
        return value
    if mc.password_file:
        try:
            return Path(mc.password_file).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as e:
            raise MailError(f"mail.password_file: cannot read {mc.password_file}: {e.strerror}") from None
    return None


def _tls_context(mc: MailConfig) -> ssl.SSLContext | None:
    if mc.tls == "none":
        return None
    try:
        ctx = ssl.create_default_context(cafile=mc.cafile)
    except (OSError, ssl.SSLError) as e:
        raise MailError(f"mail.cafile: cannot load {mc.cafile}: {e}") from None
    if not mc.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _envelope(message: EmailMessage | bytes, mc: MailConfig) -> tuple[str, list[str]]:
    """Sender and recipients: those of the message itself (what was enqueued is what is sent)."""
    msg = (
        message
        if isinstance(message, EmailMessage)
        else BytesParser(policy=email.policy.SMTP).parsebytes(message)
    )
    sender = [a for _, a in getaddresses([str(msg.get("From", ""))]) if a]
    rcpts = [a for _, a in getaddresses([str(v) for v in msg.get_all("To", [])]) if a]
    return (sender[0] if sender else default_from(mc)), (rcpts or list(mc.to))


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if type(exc).__name__ not in text else text


async def send_async(message: EmailMessage | bytes, mail_config: MailConfig) -> str:
    """Send one message; returns the server's reply to DATA. Raises MailError on any failure."""
    mc = mail_config
    if not mc.host:
        raise MailError("mail is not configured: set [mail] host and to")
    sender, rcpts = _envelope(message, mc)
    if not rcpts:
        raise MailError("mail is not configured: set [mail] to")
    password = _password(mc)
    if mc.username and password is None:
        raise MailError("mail.username is set but neither mail.password_env nor mail.password_file")
    where = f"{mc.host}:{mc.effective_port}"
    if mc.username and mc.tls == "none":
        log.warning('mail.tls is "none": the SMTP password crosses the network unencrypted')
    try:
        _, reply = await aiosmtplib.send(
            message,
            sender=sender,
            recipients=rcpts,
            hostname=mc.host,
            port=mc.effective_port,
            username=mc.username,
            password=password if mc.username else None,
            timeout=mc.timeout,
            use_tls=mc.tls == "implicit",
            start_tls=mc.tls == "starttls",
            validate_certs=mc.verify,
            tls_context=_tls_context(mc),
        )
    except aiosmtplib.SMTPException as e:
        code = _permanent_refusal(e)
        if code is not None:
            raise MailRefusedError(f"{where}: {_describe(e)}", code=code) from None
        raise MailError(f"{where}: {_describe(e)}") from None
    except (OSError, TimeoutError, ssl.SSLError) as e:
        raise MailError(f"{where}: {_describe(e)}") from None
    return reply


def _permanent_refusal(exc: aiosmtplib.SMTPException) -> int | None:
    """The 5xx code when the server refused this message for good (MAIL FROM, RCPT TO or DATA), None
    for anything retrying may cure: 4xx, a dropped connection, a failed login (a config problem)."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [r.code for r in exc.recipients]
        return codes[0] if codes and all(500 <= c < 600 for c in codes) else None
    refusals = (aiosmtplib.SMTPSenderRefused, aiosmtplib.SMTPRecipientRefused, aiosmtplib.SMTPDataError)
    if isinstance(exc, refusals) and 500 <= exc.code < 600:
        return exc.code
    return None


def _in_running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def send(message: EmailMessage | bytes, mail_config: MailConfig) -> str:
    """Synchronous ``send_async``. Inside a running event loop (Jupyter) the coroutine runs on a
    private loop in a worker thread, so this works from a notebook cell too; from async code prefer
    ``await send_async(...)``."""
    if not _in_running_loop():
        return asyncio.run(send_async(message, mail_config))
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, send_async(message, mail_config)).result()


def test_mail(config: Config) -> str:
    """Send a test message now (not via the outbox, so errors show at once); returns its Message-ID."""
    if not config.mail.enabled:
        raise MailError("mail is not configured: set [mail] host and to")
    msg = _test_message(config)
    send(msg, config.mail)
    log.info("test message %s sent to %s", msg["Message-ID"], ", ".join(config.mail.to))
    return str(msg["Message-ID"])


test_mail.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


# ---------------------------------------------------------------- outbox


@dataclass
class OutboxEntry:
    """One message of the outbox; the state is ``<name>.json`` next to ``<name>.eml``: in the outbox
    itself while it waits (``state`` "waiting"), in ``<outbox>/failed/`` once the server refused it
    for good (``state`` "failed", with ``failed_at``)."""

    name: str
    message_id: str
    subject: str = ""
    report_id: str = ""
    created: str = ""  # ISO 8601 UTC
    attempts: int = 0
    next_attempt: float = 0.0  # unix time; due when <= now
    last_attempt: str = ""
    last_error: str = ""
    size: int = 0
    state: str = "waiting"  # "waiting" | "failed"
    failed_at: str = ""  # ISO 8601 UTC, when the server refused it for good

    def due(self, now: float) -> bool:
        return self.next_attempt <= now


@dataclass
class OutboxResult:
    sent: list[str] = field(default_factory=list)  # Message-IDs accepted by the server in this flush
    failed: list[tuple[str, str]] = field(default_factory=list)  # (Message-ID, error): attempts to retry
    waiting: list[str] = field(default_factory=list)  # Message-IDs still in the outbox afterwards
    busy: bool = False  # another process was flushing the outbox; nothing was done
    refused: list[tuple[str, str]] = field(default_factory=list)  # (Message-ID, error): moved to failed/

    @property
    def deferred(self) -> bool:
        return bool(self.waiting)

    @property
    def exit_code(self) -> ExitCode:
        """ERROR when the server refused a message for good in this flush (it will never arrive: the
        user must act), DEFERRED while messages wait, else OK."""
        if self.refused:
            return ExitCode.ERROR
        return ExitCode.DEFERRED if self.waiting else ExitCode.OK


def _now_iso(ts: float | None = None) -> str:
    return iso_time(time.time() if ts is None else ts) or ""


def entry_name(message_id: str) -> str:
    """File name stem for a Message-ID (same id, same file: enqueueing twice keeps one message)."""
    return re.sub(r"[^A-Za-z0-9._@-]", "_", message_id.strip().strip("<>"))[:180] or "message"


def backoff(attempts: int) -> float:
    """Seconds to wait after ``attempts`` failed attempts: 60, 120, 240 ... capped at 3600."""
    return min(BACKOFF_MAX, BACKOFF_BASE * 2 ** max(0, attempts - 1))


def _state_path(outbox: Path, name: str) -> Path:
    return outbox / f"{name}.json"


def _read_state(outbox: Path, eml: Path, state: str = "waiting") -> OutboxEntry:
    name = eml.stem
    try:
        raw = json.loads(_state_path(outbox, name).read_text(encoding="utf-8"))
        known = {k: raw[k] for k in OutboxEntry.__dataclass_fields__ if k in raw}
        entry = OutboxEntry(**known)
    except (OSError, ValueError, TypeError):
        # state lost (crash between the two writes): rebuild it from the message itself
        msg = BytesParser(policy=email.policy.SMTP).parsebytes(eml.read_bytes(), headersonly=True)
        entry = OutboxEntry(
            name=name,
            message_id=str(msg.get("Message-ID", name)),
            subject=str(msg.get("Subject", "")),
            report_id=str(msg.get("X-Flowdiff-Report", "")),
            created=_now_iso(eml.stat().st_mtime),
        )
    entry.name = name
    entry.size = eml.stat().st_size
    entry.state = state
    return entry


def _write_state(outbox: Path, entry: OutboxEntry) -> None:
    data = asdict(entry)
    data.pop("size", None)
    atomic_write_text(_state_path(outbox, entry.name), json.dumps(data, indent=2, sort_keys=True) + "\n")


def enqueue(message: EmailMessage | bytes, config: Config) -> OutboxEntry:
    """Put a message (or its exact bytes) in the outbox, atomically, before any attempt to send it. A
    message with the same Message-ID already waiting is kept as it is, so re-enqueueing never duplicates."""
    outbox = config.outbox_path
    if isinstance(message, bytes):
        data = message
        message = BytesParser(policy=email.policy.SMTP).parsebytes(data, headersonly=True)
    else:
        data = message.as_bytes(policy=email.policy.SMTP)
    mid = str(message.get("Message-ID") or "")
    if not mid:
        raise MailError("a message without Message-ID cannot be queued")
    name = entry_name(mid)
    eml = outbox / f"{name}.eml"
    if eml.exists():
        return _read_state(outbox, eml)
    # queued again on purpose (`flowdiff notify REPORT_ID`): a refused copy gives way to the new one
    _remove_entry(outbox / FAILED_DIR, name)
    atomic_write_bytes(eml, data)
    entry = OutboxEntry(
        name=name,
        message_id=mid,
        subject=str(message.get("Subject", "")),
        report_id=str(message.get("X-Flowdiff-Report", "")),
        created=_now_iso(),
    )
    _write_state(outbox, entry)
    entry.size = eml.stat().st_size
    return entry


def _entries(folder: Path, state: str) -> list[OutboxEntry]:
    if not folder.is_dir():
        return []
    entries = [_read_state(folder, p, state) for p in folder.glob("*.eml") if not p.name.startswith(".")]
    return sorted(entries, key=lambda e: (e.created, e.name))


def list_outbox(config: Config) -> list[OutboxEntry]:
    """Messages waiting in the outbox, oldest first (the refused ones: ``list_failed``)."""
    return _entries(config.outbox_path, "waiting")


def list_failed(config: Config) -> list[OutboxEntry]:
    """Messages the server refused for good (``<outbox>/failed/``), oldest first. They stay until
    ``flowdiff outbox drop`` removes them, or ``flowdiff notify REPORT_ID`` queues the report again."""
    return _entries(config.outbox_path / FAILED_DIR, "failed")


def _remove_entry(outbox: Path, entry: OutboxEntry | str) -> None:
    # the .eml goes first: it is the commit point; a leftover .json without .eml is ignored
    name = entry if isinstance(entry, str) else entry.name
    with contextlib.suppress(FileNotFoundError):
        (outbox / f"{name}.eml").unlink()
    with contextlib.suppress(FileNotFoundError):
        _state_path(outbox, name).unlink()


def _move_to_failed(outbox: Path, entry: OutboxEntry, now: float) -> Path:
    """Park a refused message in ``<outbox>/failed/``: its state first, then the .eml (the commit point:
    from then on it is failed, no longer waiting), then the waiting state goes."""
    failed = outbox / FAILED_DIR
    failed.mkdir(parents=True, exist_ok=True)
    entry.state, entry.failed_at, entry.next_attempt = "failed", _now_iso(now), 0.0
    _write_state(failed, entry)
    os.replace(outbox / f"{entry.name}.eml", failed / f"{entry.name}.eml")
    fsync_dir(failed)
    fsync_dir(outbox)
    with contextlib.suppress(FileNotFoundError):
        _state_path(outbox, entry.name).unlink()
    return failed / f"{entry.name}.eml"


def find_message(config: Config, ident: str) -> OutboxEntry:
    """The waiting or failed message named by its Message-ID (with or without ``<>``), its entry name,
    or a unique prefix of either. Raises MailError naming what was not found, or what is ambiguous."""
    entries = list_outbox(config) + list_failed(config)
    want = ident.strip().strip("<>")
    if not want:
        raise MailError("give a Message-ID or outbox entry name (flowdiff outbox list shows them)")
    exact = [e for e in entries if want in (e.name, e.message_id.strip().strip("<>"))]
    found = exact or [
        e for e in entries if e.name.startswith(want) or e.message_id.strip("<>").startswith(want)
    ]
    if not found:
        raise MailError(f"no message {ident!r} in the outbox {config.outbox_path} (flowdiff outbox list)")
    if len(found) > 1:
        names = ", ".join(e.message_id for e in found[:5])
        raise MailError(f"{ident!r} names {len(found)} messages ({names}); give more of the Message-ID")
    return found[0]


def drop_message(config: Config, ident: str, *, wait: float = 10.0) -> OutboxEntry:
    """Remove one waiting or failed message for good (see ``find_message`` for ``ident``); returns it.
    Holds the flush lock, so a message is never removed while it is being sent."""
    outbox = config.outbox_path
    with file_lock(outbox / FLUSH_LOCK, wait=wait, what="outbox"):
        entry = find_message(config, ident)
        _remove_entry(outbox / FAILED_DIR if entry.state == "failed" else outbox, entry)
    log.info("mail: %s (%s) dropped from the outbox", entry.message_id, entry.state)
    return entry


def _record_delivery(config: Config, entry: OutboxEntry, reply: str) -> None:
    if not entry.report_id or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", entry.report_id):
        return
    d = Path(config.reports) / entry.report_id
    if d.is_dir():
        record = {
            "message_id": entry.message_id,
            "sent": _now_iso(),
            "attempts": entry.attempts,
            "reply": reply,
        }
        atomic_write_text(d / SENT_RECORD, json.dumps(record, indent=2, sort_keys=True) + "\n")


_CONNECTION_ERRORS = (
    OSError,
    TimeoutError,
    ssl.SSLError,
    aiosmtplib.SMTPConnectError,
    aiosmtplib.SMTPServerDisconnected,
    aiosmtplib.SMTPTimeoutError,
)


def _server_unreachable(error: MailError) -> bool:
    """True when the failure concerns the server, not this message (then the others fail alike)."""
    return isinstance(error.__context__, _CONNECTION_ERRORS)


def _attempt(config: Config, entry: OutboxEntry, outbox: Path, now: float) -> MailError | None:
    """One attempt; returns the error, or None when the server accepted the message."""
    data = (outbox / f"{entry.name}.eml").read_bytes()
    entry.attempts += 1
    entry.last_attempt = _now_iso(now)
    try:
        reply = send(data, config.mail)
    except MailRefusedError as e:
        entry.last_error = str(e)
        where = _move_to_failed(outbox, entry, now)
        log.warning(
            "mail: %s refused for good (%s); moved to %s (flowdiff outbox drop %s%s removes it)",
            entry.message_id,
            e,
            where,
            entry.name,
            config.config_arg,
        )
        return e
    except MailError as e:
        entry.last_error = str(e)
        entry.next_attempt = now + backoff(entry.attempts)
        _write_state(outbox, entry)
        log.warning(
            "mail: attempt %d for %s failed: %s; next attempt at %s",
            entry.attempts,
            entry.message_id,
            e,
            _now_iso(entry.next_attempt),
        )
        return e
    _remove_entry(outbox, entry)
    _record_delivery(config, entry, reply)
    log.info("mail: %s accepted by %s (attempt %d)", entry.message_id, config.mail.host, entry.attempts)
    return None


def flush_outbox(config: Config, *, force: bool = False, wait: float = 10.0) -> OutboxResult:
    """Try every due message (every message with ``force``). After a connection-level failure the
    remaining messages are not tried in this flush (the server is down for all of them alike); a
    message the server refused does not hold back the others.
    Two processes never flush at once (a lock file in the outbox); the second one returns ``busy``."""
    result = OutboxResult()
    outbox = config.outbox_path
    if not outbox.is_dir() or not any(outbox.glob("*.eml")):
        return result
    if not config.mail.enabled:
        result.waiting = [e.message_id for e in list_outbox(config)]
        return result
    try:
        with file_lock(outbox / FLUSH_LOCK, wait=wait, what="outbox"):
            now = time.time()
            unreachable = False
            for entry in list_outbox(config):
                if unreachable or not (force or entry.due(now)):
                    result.waiting.append(entry.message_id)
                    continue
                error = _attempt(config, entry, outbox, now)
                if error is None:
                    result.sent.append(entry.message_id)
                elif isinstance(error, MailRefusedError):
                    result.refused.append((entry.message_id, str(error)))
                else:
                    result.failed.append((entry.message_id, str(error)))
                    result.waiting.append(entry.message_id)
                    unreachable = _server_unreachable(error)
    except LockError:
        result.busy = True
        result.waiting = [e.message_id for e in list_outbox(config)]
    return result


def queue_report(rendered: RenderedReport, config: Config) -> OutboxEntry:
    """Build the report's message and put it in the outbox (sending happens in ``flush_outbox``)."""
    return enqueue(build_message(rendered, config.mail), config)
