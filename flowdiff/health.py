"""health: a dead capture must not look like a quiet network.

``run`` and ``watch`` look at their own inputs on every pass and keep what they found in
``<baselines>/health.json``. A problem is reported (one line, and with ``[mail]`` a short text mail with
the header ``X-Flowdiff-Health: KIND``) once when it starts and once when it clears, never on every pass;
``no-baseline`` is repeated once a day, because learning is due. Kinds:

    stale-spool     no new capture in the spool for ``stale_after`` (tcpdump died, the span port went dark)
    capture-errors  a capture that could not be read at all (once per file, open while the file is there)
    no-baseline     nothing learned yet (daily, with how much is collected), or a table without a baseline
    store           the store, baselines or reports cannot be written, or less than ``min_free`` disk left
    outbox-failed   messages the mail server refused for good, in ``<outbox>/failed/``

The optional daily heartbeat (``[mail] heartbeat = "daily"``) mails a short summary even when all is
quiet, so that silence in the inbox can be trusted; its time is kept in the same file.
This module never prints: ``check`` returns a ``HealthResult`` whose ``lines()`` the caller shows.
"""

from __future__ import annotations

import contextlib
import email.policy
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowdiff.config import Config
from flowdiff.durable import atomic_write_text
from flowdiff.vocab import iso_time, one_line

if TYPE_CHECKING:
    from flowdiff.collect import CollectResult
    from flowdiff.diff import DiffResult

log = logging.getLogger(__name__)

HEALTH_FILE = "health.json"
KINDS = ("stale-spool", "capture-errors", "no-baseline", "store", "outbox-failed")
HEARTBEAT = "heartbeat"  # X-Flowdiff-Health value of the daily summary
DAY = 86400
DAY_SLACK = 600  # "once a day" from cron: a pass a few minutes early still counts as the next day
FAILED_DIR = "failed"  # <outbox>/failed/<name>.eml + .json: messages the server refused for good

_HINTS = {
    "stale-spool": "Check that tcpdump runs and rotates into the spool, the span port and the disk.",
    "capture-errors": "Each file is not tried again until it changes (the reason is in the store's ledger); "
    "remove or replace it to clear this.",
    "no-baseline": "Learn what is normal: flowdiff learn{config}",
    "store": "Free disk space or fix the permissions; nothing collected before is lost.",
    "outbox-failed": "See `flowdiff outbox list{config}`; remove a message with `flowdiff outbox drop{config} ID`.",
}


@dataclass
class Problem:
    """One open problem. ``key`` says what it is about within its kind (a file, a table, a folder)."""

    kind: str
    key: str
    message: str
    since: str = ""  # ISO time first seen
    reported: str = ""  # ISO time last reported (opened or daily reminder)
    stamp: str = ""  # capture-errors: "size mtime_ns" of the file when it failed

    @property
    def ident(self) -> tuple[str, str]:
        return (self.kind, self.key)


@dataclass
class HealthState:
    """What ``health.json`` holds: the open problems and the time of the last heartbeat."""

    problems: dict[tuple[str, str], Problem] = field(default_factory=dict)
    last_heartbeat: str = ""
    spool: str = ""  # the spool of the last check: `flowdiff status` looks at it without --spool


@dataclass
class HealthResult:
    """What one check changed. Nothing changed: ``lines()`` is empty (cron stays quiet)."""

    opened: list[Problem] = field(default_factory=list)
    cleared: list[Problem] = field(default_factory=list)
    reminded: list[Problem] = field(default_factory=list)  # still open, reported again (daily)
    open: list[Problem] = field(default_factory=list)  # every problem open after this check
    heartbeat: bool = False  # the daily summary was queued
    queued: list[str] = field(default_factory=list)  # Message-IDs put in the outbox
    save_error: str = ""  # health.json could not be written (the store kind says why)

    @property
    def changed(self) -> bool:
        return bool(self.opened or self.cleared or self.reminded)

    def lines(self) -> list[str]:
        out = [f"health {p.kind}: {p.message}" for p in self.opened + self.reminded]
        out += [f"health {p.kind} cleared: {p.message}" for p in self.cleared]
        if self.save_error:
            out.append(f"health: state not saved: {self.save_error}")
        return out


# ---------------------------------------------------------------- state


def health_path(config: Config) -> Path:
    return Path(config.baselines) / HEALTH_FILE


def load_state(config: Config) -> HealthState:
    """The recorded state; an unreadable file is treated as empty (problems are then found again)."""
    try:
        raw = json.loads(health_path(config).read_text(encoding="utf-8"))
        problems = [
            Problem(**{k: v for k, v in p.items() if k in Problem.__dataclass_fields__})
            for p in raw.get("problems", [])
        ]
    except FileNotFoundError:
        return HealthState()
    except (OSError, ValueError, TypeError, AttributeError) as e:
        log.warning("health: %s unreadable (%s); starting afresh", health_path(config), e)
        return HealthState()
    return HealthState(
        {p.ident: p for p in problems}, str(raw.get("last_heartbeat") or ""), str(raw.get("spool") or "")
    )


def save_state(config: Config, state: HealthState) -> None:
    doc = {
        "problems": [asdict(p) for p in sorted(state.problems.values(), key=lambda p: p.ident)],
        "last_heartbeat": state.last_heartbeat,
        "spool": state.spool,
    }
    atomic_write_text(health_path(config), json.dumps(doc, indent=1, sort_keys=True) + "\n")


# ---------------------------------------------------------------- looking at the sensor


@dataclass
class Observation:
    """Problems seen now, ``(kind, key) -> Problem``; open problems of a kind not in ``checked`` stay."""

    problems: dict[tuple[str, str], Problem] = field(default_factory=dict)
    checked: set[str] = field(default_factory=set)

    def add(self, kind: str, key: str, message: str, stamp: str = "") -> None:
        self.problems[(kind, key)] = Problem(kind, key, one_line(message, 400), stamp=stamp)


def observe(
    config: Config,
    spool: str | os.PathLike | None = None,
    *,
    collect: CollectResult | None = None,
    diff: DiffResult | None = None,
    error: BaseException | None = None,
    previous: HealthState | None = None,
    now: float | None = None,
) -> Observation:
    """Look at the spool, the store, the baselines and the outbox (no side effects)."""
    now = time.time() if now is None else now
    previous = previous or HealthState()
    obs = Observation()
    _stale_spool(obs, config, spool, now)
    _capture_errors(obs, collect, previous)
    _no_baseline(obs, config, diff, previous)
    _store(obs, config, error)
    _outbox_failed(obs, config)
    return obs


def _ago(seconds: float) -> str:
    s = int(max(0, seconds))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 2 * DAY:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // DAY} days"


def newest_capture(spool: str | os.PathLike) -> tuple[Path, float] | None:
    """The newest capture file in the spool and its mtime (by mtime; only the newest few are sniffed)."""
    from flowdiff.capture import sniff_capture

    d = Path(spool)
    try:
        entries = [(p.stat().st_mtime, p) for p in d.iterdir() if not p.name.startswith(".") and p.is_file()]
    except OSError:
        return None
    for mtime, p in sorted(entries, reverse=True):
        with contextlib.suppress(OSError):
            if sniff_capture(p) or p.stat().st_size == 0:  # a fresh, still empty rotation counts too
                return p, mtime
    return None


def _stale_spool(obs: Observation, config: Config, spool: Any, now: float) -> None:
    if spool is None or config.stale_after <= 0:
        return
    obs.checked.add("stale-spool")
    d = Path(spool)
    found = newest_capture(d)
    if found is None:
        try:
            age = now - d.stat().st_mtime
        except OSError as e:
            obs.add("stale-spool", str(d), f"spool {d} cannot be read: {e.strerror or e}")
            return
        if age >= config.stale_after:
            obs.add("stale-spool", str(d), f"no capture in {d} at all (for {_ago(age)})")
        return
    path, mtime = found
    age = now - mtime
    if age >= config.stale_after:
        obs.add(
            "stale-spool",
            str(d),
            f"no new capture in {d} for {_ago(age)} (newest: {path.name}, {iso_time(mtime)})",
        )


def _file_stamp(path: str) -> str:
    try:
        st = Path(path).stat()
    except OSError:
        return ""
    return f"{st.st_size} {st.st_mtime_ns}"


def _capture_errors(obs: Observation, collect: Any, previous: HealthState) -> None:
    obs.checked.add("capture-errors")
    for p in previous.problems.values():  # still open while the file is there, unchanged
        if p.kind == "capture-errors" and p.stamp and _file_stamp(p.key) == p.stamp:
            obs.problems[p.ident] = Problem(p.kind, p.key, p.message, stamp=p.stamp)
    for f in getattr(collect, "files", None) or []:
        if f.status == "failed":
            key = str(Path(f.path).resolve())
            obs.add("capture-errors", key, f.message or f"{f.path}: unreadable", stamp=_file_stamp(key))


def collected_span(config: Config) -> tuple[int, float]:
    """Intervals in the store (distinct starts over all tables) and the days they span."""
    from flowdiff.store import Store

    store = Store(config.store)
    starts: set = set()
    for name in store.tables():
        starts.update(store.intervals(name))
    if not starts:
        return 0, 0.0
    span = (max(starts) - min(starts)).total_seconds() + config.interval
    return len(starts), span / DAY


def _no_baseline(obs: Observation, config: Config, diff: Any, previous: HealthState) -> None:
    from flowdiff.baseline import current_version

    obs.checked.add("no-baseline")
    try:
        version = current_version(config)
    except Exception:  # noqa: BLE001 - an unreadable state is the diff's error to report, not ours
        version = "?"
    if version is None:
        intervals, days = collected_span(config)
        obs.add(
            "no-baseline",
            "",
            f"no baseline yet: {intervals} interval{'s' if intervals != 1 else ''} "
            f"collected ({days:.1f} days); flowdiff learn{config.config_arg} is due",
        )
        return
    if diff is None:  # not diffed in this pass: what was known about single tables stays
        for p in previous.problems.values():
            if p.kind == "no-baseline" and p.key:
                obs.problems[p.ident] = Problem(p.kind, p.key, p.message)
        return
    for table, reason in (getattr(diff, "skipped", None) or {}).items():
        obs.add("no-baseline", str(table), str(reason))


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _store(obs: Observation, config: Config, error: BaseException | None) -> None:
    obs.checked.add("store")
    remote = str(config.store).startswith("s3://")  # object storage: no folder, no disk of ours
    for key in ("store", "baselines", "reports"):
        if key == "store" and remote:
            continue
        path = Path(getattr(config, key))
        near = _nearest_existing(path)
        if not near.is_dir():
            obs.add("store", key, f"{key} {near} is not a folder")
        elif not os.access(near, os.W_OK | os.X_OK):
            obs.add("store", key, f"{key} {path} cannot be written (permission denied on {near})")
    if config.min_free > 0 and not remote:
        near = _nearest_existing(Path(config.store))
        with contextlib.suppress(OSError):
            free = shutil.disk_usage(near).free
            if free < config.min_free:
                obs.add(
                    "store",
                    "disk",
                    f"only {_size(free)} free on the disk of {config.store} "
                    f"(min_free {_size(config.min_free)})",
                )
    if error is not None:
        text = str(error) if not isinstance(error, OSError) else _os_error(error)
        obs.add("store", "run", f"the last pass failed: {text}")


def _os_error(e: OSError) -> str:
    where = f"{e.filename}: " if e.filename else ""
    return f"{where}{e.strerror or e}"


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def failed_messages(config: Config) -> list[tuple[str, dict[str, Any]]]:
    """``<outbox>/failed/<name>.eml`` with the state from ``<name>.json`` (empty when unreadable)."""
    d = config.outbox_path / FAILED_DIR
    if not d.is_dir():
        return []
    out = []
    for eml in sorted(d.glob("*.eml")):
        if eml.name.startswith("."):
            continue
        try:
            meta = json.loads(eml.with_suffix(".json").read_text(encoding="utf-8"))
            meta = meta if isinstance(meta, dict) else {}
        except (OSError, ValueError):
            meta = {}
        out.append((eml.stem, meta))
    return out


def _outbox_failed(obs: Observation, config: Config) -> None:
    obs.checked.add("outbox-failed")
    for name, meta in failed_messages(config):
        subject = meta.get("subject") or name
        why = meta.get("last_error") or meta.get("error") or "refused by the server"
        obs.add(
            "outbox-failed",
            name,
            f"message {meta.get('message_id') or name} ({subject}) was refused for good: {why}",
        )


# ---------------------------------------------------------------- comparing, recording, mailing


def check(
    config: Config,
    spool: str | os.PathLike | None = None,
    *,
    collect: CollectResult | None = None,
    diff: DiffResult | None = None,
    error: BaseException | None = None,
    summary: Callable[[], str] | None = None,
    now: float | None = None,
) -> HealthResult:
    """Look, compare with ``health.json``, record the changes and (with mail) queue one short mail per
    kind that opened or cleared. ``summary`` gives the text of the daily heartbeat. The caller flushes
    the outbox. Never raises for a state file that cannot be written (``save_error`` says why)."""
    now = time.time() if now is None else now
    stamp = iso_time(now) or ""
    state = load_state(config)
    obs = observe(config, spool, collect=collect, diff=diff, error=error, previous=state, now=now)
    result = HealthResult()
    for ident, p in obs.problems.items():
        old = state.problems.get(ident)
        if old is None:
            p.since = p.reported = stamp
            result.opened.append(p)
            continue
        p.since, p.reported = old.since, old.reported
        if p.kind == "no-baseline" and now - iso_epoch(old.reported) >= DAY - DAY_SLACK:
            p.reported = stamp
            result.reminded.append(p)
    for ident, old in state.problems.items():
        if ident in obs.problems:
            continue
        if old.kind in obs.checked:
            result.cleared.append(old)
        else:
            obs.problems[ident] = old  # not looked at in this pass: still open
    state.problems = obs.problems
    result.open = sorted(state.problems.values(), key=lambda p: p.ident)
    if config.mail.enabled:
        try:
            _queue_mails(config, result, stamp)
            if config.mail.heartbeat == "daily" and (
                not state.last_heartbeat or now - iso_epoch(state.last_heartbeat) >= DAY - DAY_SLACK
            ):
                _queue_heartbeat(config, result, summary, stamp)
                state.last_heartbeat = stamp
        except OSError as e:  # the outbox cannot be written: the lines are still shown
            result.save_error = f"outbox: {_os_error(e)}"
            log.warning("health: cannot queue the health mail: %s", result.save_error)
    spool_changed = False
    if spool is not None and state.spool != (spool_path := str(Path(spool).absolute())):
        state.spool, spool_changed = spool_path, True
    if result.changed or result.heartbeat or spool_changed:
        try:
            save_state(config, state)
        except OSError as e:
            result.save_error = _os_error(e)
            log.warning("health: cannot save %s: %s", health_path(config), result.save_error)
    return result


def _queue_heartbeat(
    config: Config, result: HealthResult, summary: Callable[[], str] | None, stamp: str
) -> None:
    text = ""
    if summary is not None:
        try:
            text = summary()
        except Exception as e:  # noqa: BLE001 - the heartbeat goes out even when the summary fails
            text = f"(no summary: {one_line(e)})"
    subject = _heartbeat_subject(result.open)
    result.queued.append(
        _queue(config, HEARTBEAT, subject, _heartbeat_body(result.open, text), f"hb.{stamp}")
    )
    result.heartbeat = True


def iso_epoch(iso: str) -> float:
    from datetime import datetime

    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def _queue_mails(config: Config, result: HealthResult, stamp: str) -> None:
    for kind in KINDS:
        opened = [p for p in result.opened + result.reminded if p.kind == kind]
        cleared = [p for p in result.cleared if p.kind == kind]
        if opened:
            subject = (
                f"{kind}: {opened[0].message}" if len(opened) == 1 else f"{kind}: {len(opened)} problems"
            )
            body = "\n".join(f"- {p.message}\n  since {p.since}" for p in opened)
            result.queued.append(
                _queue(
                    config,
                    kind,
                    subject,
                    f"{body}\n\n{_hint(config, kind)}\n",
                    f"{kind}.open.{stamp}.{_digest(opened)}",
                )
            )
        if cleared:
            subject = (
                f"{kind} cleared: {cleared[0].message}"
                if len(cleared) == 1
                else f"{kind} cleared: {len(cleared)} problems"
            )
            body = "\n".join(f"- cleared: {p.message}\n  open since {p.since}" for p in cleared)
            result.queued.append(
                _queue(config, kind, subject, body + "\n", f"{kind}.cleared.{stamp}.{_digest(cleared)}")
            )


def _hint(config: Config, kind: str) -> str:
    """What to do; commands carry ``--config ABSOLUTE_PATH`` when a config file is used, to be pasted."""
    return _HINTS[kind].format(config=config.config_arg)


def _digest(problems: list[Problem]) -> str:
    return hashlib.sha256("\n".join(sorted(p.key for p in problems)).encode()).hexdigest()[:12]


def _heartbeat_subject(open_problems: list[Problem]) -> str:
    if not open_problems:
        return "all quiet"
    n = len(open_problems)
    return f"daily summary, {n} problem{'s' if n != 1 else ''} open"


def _heartbeat_body(open_problems: list[Problem], summary: str) -> str:
    head = (
        "All quiet: no health problem is open.\n"
        if not open_problems
        else "Open health problems:\n" + "\n".join(f"- {p.kind}: {p.message}" for p in open_problems) + "\n"
    )
    return head + ("\n" + summary.rstrip("\n") + "\n" if summary else "")


def build_health_message(config: Config, kind: str, subject: str, body: str, seed: str) -> EmailMessage:
    """A short text mail, From/To/Message-ID like the reports and the test message (flowdiff.mail)."""
    from flowdiff.mail import default_from

    mc = config.mail
    sensor = one_line(config.sensor_name, 998)
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["Subject"] = one_line(f"[flowdiff {sensor}] health: {subject}", 998)
    msg["From"] = one_line(default_from(mc), 998)
    msg["To"] = ", ".join(one_line(a, 998) for a in mc.to)
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    digest = hashlib.sha256(f"{kind}\n{seed}".encode()).hexdigest()[:20]
    msg["Message-ID"] = f"<health.{kind}.{digest}@{re.sub(r'[^A-Za-z0-9-]', '-', sensor)[:16]}.flowdiff>"
    msg["X-Flowdiff-Health"] = kind
    msg["X-Flowdiff-Sensor"] = sensor
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(f"flowdiff on {sensor}, {iso_time(time.time())}\n\n{body}")
    return msg


def _queue(config: Config, kind: str, subject: str, body: str, seed: str) -> str:
    from flowdiff.mail import enqueue

    return enqueue(build_health_message(config, kind, subject, body, seed), config).message_id
