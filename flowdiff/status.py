"""status: the sensor on one screen, for a person or a monitoring system.

Read-only: the recorded health state (``<baselines>/health.json``) is merged with a fresh look at what
can be checked without collecting (the spool's newest capture, the folders and the disk, the failed
outbox), so that a sensor whose cron job stopped altogether does not read as healthy.
``Status.exit_code`` is 0 when healthy and 1 (``ExitCode.NEW_ROWS``, "a problem is open") otherwise.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from flowdiff.config import Config
from flowdiff.exitcodes import ExitCode
from flowdiff.health import Problem, failed_messages, load_state, newest_capture, observe
from flowdiff.vocab import human_time, iso_time


@dataclass
class Status:
    sensor: str
    checked_at: str
    spool: str | None = None
    last_capture: dict[str, Any] | None = None  # path, time (mtime), where ("spool" | "ledger")
    last_collected: dict[str, Any] | None = None  # path, collected_at, status: the ledger's last entry
    last_interval: str | None = None  # start of the newest interval in the store
    intervals: int = 0
    baseline: dict[str, Any] | None = None  # version, created_at, age_seconds
    last_report: dict[str, Any] | None = None  # id, created_at, rows, sent
    outbox_waiting: int = 0
    outbox_failed: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.OK if self.healthy else ExitCode.NEW_ROWS

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["healthy"] = self.healthy
        doc["problems"] = [{k: v for k, v in asdict(p).items() if k != "stamp"} for p in self.problems]
        return doc

    def lines(self) -> list[str]:
        """``name: value`` lines, aligned, for a terminal (and the heartbeat mail)."""
        cap = self.last_capture
        col = self.last_collected
        base = self.baseline
        rep = self.last_report
        rows = [
            ("sensor", self.sensor),
            ("spool", self.spool or "-"),
            ("last capture", f"{human_time(cap['time'])}  {cap['path']}" if cap else "-"),
            (
                "last collected",
                f"{human_time(col['collected_at'])}  {col['path']} ({col['status']})" if col else "-",
            ),
            (
                "last interval",
                f"{human_time(self.last_interval)}  ({self.intervals} in the store)"
                if self.last_interval
                else "-",
            ),
            (
                "baseline",
                f"{base['version']}, learned {human_time(base['created_at'])} "
                f"({_age(base['age_seconds'])} ago)"
                if base
                else "none yet (flowdiff learn)",
            ),
            (
                "last report",
                f"{rep['id']}, {rep['rows']} rows, {'sent' if rep['sent'] else 'not sent'}" if rep else "-",
            ),
            ("outbox", f"{self.outbox_waiting} waiting, {self.outbox_failed} failed"),
            (
                "health",
                "ok"
                if self.healthy
                else f"{len(self.problems)} problem{'s' if len(self.problems) != 1 else ''} open",
            ),
        ]
        width = max(len(k) for k, _ in rows) + 1
        out = [f"{k + ':':<{width}} {v}" for k, v in rows]
        out += [
            f"  {p.kind}: {p.message} (since {human_time(p.since) if p.since else 'now'})"
            for p in self.problems
        ]
        return out

    def text(self) -> str:
        return "\n".join(self.lines())


def _age(seconds: float) -> str:
    s = int(max(0, seconds))
    if s < 3600:
        return f"{s // 60} min"
    if s < 2 * 86400:
        return f"{s // 3600} h"
    return f"{s // 86400} days"


def status(config: Config, spool: str | os.PathLike | None = None, *, now: float | None = None) -> Status:
    """The sensor's state now. ``spool`` defaults to the config's ``spool``, else the spool the last
    ``run``/``watch`` looked at (cron passes it with ``--spool``). Writes nothing."""
    now = time.time() if now is None else now
    spool = spool if spool is not None else config.spool
    if spool is None:
        spool = load_state(config).spool or None
    st = Status(
        sensor=config.sensor_name,
        checked_at=iso_time(now) or "",
        spool=str(spool) if spool is not None else None,
    )
    _captures(st, config, spool)
    _intervals(st, config)
    _baseline(st, config, now)
    _report(st, config)
    _outbox(st, config)
    st.problems = open_problems(config, spool, now=now)
    return st


def open_problems(config: Config, spool: Any = None, *, now: float | None = None) -> list[Problem]:
    """Recorded problems, updated by what can be seen now (kinds looked at replace their record)."""
    recorded = load_state(config)
    obs = observe(config, spool, previous=recorded, now=now)
    out = dict(obs.problems)
    for ident, p in recorded.problems.items():
        if p.kind not in obs.checked:
            out[ident] = p
        elif ident in out:
            out[ident].since = p.since
    return sorted(out.values(), key=lambda p: p.ident)


def _captures(st: Status, config: Config, spool: Any) -> None:
    from flowdiff.store import Store

    store = Store(config.store, config.data_sensor)
    ledger = store.ledger() if store.exists() else []
    if ledger:
        e = ledger[-1]
        st.last_collected = {"path": e.path, "collected_at": e.collected_at, "status": e.status}
        newest = max(ledger, key=lambda e: (e.mtime_ns, e.path))
        st.last_capture = {"path": newest.path, "time": iso_time(newest.mtime_ns / 1e9), "where": "ledger"}
    if spool is not None:
        found = newest_capture(spool)
        if found is not None and (st.last_capture is None or iso_time(found[1]) >= st.last_capture["time"]):
            st.last_capture = {"path": str(found[0]), "time": iso_time(found[1]), "where": "spool"}


def _intervals(st: Status, config: Config) -> None:
    from flowdiff.store import Store

    store = Store(config.store, config.data_sensor)
    starts: set = set()
    for name in store.tables():
        starts.update(store.intervals(name))
    if starts:
        st.intervals = len(starts)
        st.last_interval = iso_time(max(starts))


def _baseline(st: Status, config: Config, now: float) -> None:
    from flowdiff.baseline import current_version, get_version
    from flowdiff.health import iso_epoch

    vid = current_version(config)
    if vid is None:
        return
    v = get_version(config, vid)
    st.baseline = {
        "version": v.id,
        "created_at": v.created_at,
        "age_seconds": int(now - iso_epoch(v.created_at)),
    }


def _report(st: Status, config: Config) -> None:
    from flowdiff.diff import list_reports
    from flowdiff.mail import SENT_RECORD

    ids = list_reports(config)
    if not ids:
        return
    d = Path(config.reports) / ids[-1]
    try:
        meta = json.loads((d / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        meta = {}
    rows = sum((meta.get("counts") or {}).values()) if isinstance(meta.get("counts"), dict) else 0
    st.last_report = {
        "id": ids[-1],
        "created_at": meta.get("created_at"),
        "rows": rows,
        "sent": (d / SENT_RECORD).exists(),
    }


def _outbox(st: Status, config: Config) -> None:
    from flowdiff.mail import list_outbox

    st.outbox_waiting = len(list_outbox(config))
    st.outbox_failed = len(failed_messages(config))
