"""pipeline: the unattended sensor. ``run`` is one cron pass, ``watch`` runs a pass per rotation.

One pass (``run``):

1. collect the closed captures of the spool directory (the newest file is the one tcpdump still
   writes: it waits for the next pass unless ``all_files`` or it has been idle for ``config.settle``);
2. diff the intervals not diffed yet against the current baselines (skipped, quietly, while no
   baseline has been learned: a new sensor first gathers the days to learn from);
3. when there are new rows: render the report, archive it under ``<reports>/<report_id>/``, and (when
   ``[mail]`` is configured) put the message in the outbox. A report that diff archived but that was
   never rendered (a crash, or a template error, between diff and render) is caught up here too;
4. look at the sensor's own health (flowdiff.health: a stale spool, unreadable captures, no baseline, a
   store that cannot be written, messages the server refused): a problem is reported once when it starts
   and once when it clears, as a line in the summary and, with mail, a short health mail;
5. flush the outbox (this also retries messages left by earlier passes, with backoff).

Passes never overlap: a lock file (``<reports>/.run.lock``, flock) is held for the whole pass; a
second pass waits up to ``lock_wait`` seconds and then raises LockError naming the holder's pid.

Exit codes (``RunResult.exit_code``; the CLI returns them):

    0  nothing new, or new rows reported (archived, and mailed when mail is configured)
    1  new rows found and ``exit_on_new`` (``flowdiff run --exit-code``), like ``git diff --exit-code``
    2  error: bad config, lock not obtained, store problem, unreadable capture (FlowdiffError)
    3  a report could not be mailed yet: it waits in the outbox and is retried by the next pass

A pass that fails on the store (StoreError, OSError: disk full, permission denied) still records and
mails the ``store`` health problem before the error is raised; the exception carries that HealthResult
as ``health`` (``getattr(e, "health", None)``) so that the CLI can print its lines.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowdiff.config import Config
from flowdiff.deliver import deliver, unrendered_reports
from flowdiff.durable import file_lock
from flowdiff.errors import FlowdiffError, LockError, StoreError
from flowdiff.exitcodes import ExitCode
from flowdiff.health import HealthResult
from flowdiff.health import check as check_health
from flowdiff.mail import OutboxResult, flush_outbox, list_outbox

if TYPE_CHECKING:
    from flowdiff.collect import CollectResult
    from flowdiff.diff import DiffResult

log = logging.getLogger(__name__)

RUN_LOCK = ".run.lock"
MAX_PASS_DELAY = 60.0  # watch: longest wait before retrying a pass that failed
EXIT_OK, EXIT_NEW, EXIT_ERROR, EXIT_DEFERRED = (
    ExitCode.OK,
    ExitCode.NEW_ROWS,
    ExitCode.ERROR,
    ExitCode.DEFERRED,
)


@dataclass
class RunResult:
    """What one pass did. ``collect``/``diff`` are the results of those stages (None when skipped)."""

    collect: CollectResult | None = None
    diff: DiffResult | None = None
    report_dir: Path | None = None
    message_id: str | None = None  # of the report queued in this pass
    caught_up: list[str] = field(default_factory=list)  # earlier reports rendered (and queued) now
    no_baseline: bool = False  # nothing learned yet: collected only
    outbox: OutboxResult = field(default_factory=OutboxResult)
    mail_enabled: bool = False
    health: HealthResult | None = None  # what the health check of this pass opened or cleared
    seconds: float = 0.0

    @property
    def new_rows(self) -> int:
        return self.diff.total if self.diff is not None and self.diff.report_id else 0

    @property
    def errors(self) -> list[str]:
        """One line per capture that could not be read (or was damaged) in this pass."""
        return list(self.collect.errors) if self.collect is not None else []

    @property
    def deferred(self) -> bool:
        """A message waits in the outbox after this pass (server down or refusing)."""
        return self.mail_enabled and self.outbox.deferred

    def exit_code(self, exit_on_new: bool = False) -> ExitCode:
        if self.collect is not None and self.collect.files_failed:
            return ExitCode.ERROR
        if self.deferred:
            return ExitCode.DEFERRED
        if exit_on_new and self.new_rows:
            return ExitCode.NEW_ROWS
        return ExitCode.OK

    def summary(self) -> str:
        """One line for a human, then one line per health problem opened, cleared or recalled; empty
        when the pass found nothing new, sent nothing, made no failed attempt and changed no health
        problem (so that cron, which mails any output, stays quiet)."""
        main = self._main_line()
        lines = [main] if main else []
        if self.health is not None:
            lines += self.health.lines()
        return "\n".join(lines)

    def _main_line(self) -> str:
        parts = []
        if self.new_rows and self.diff is not None:
            counts = ", ".join(
                f"{t} {n}" for t, n in sorted(self.diff.counts().items(), key=lambda kv: -kv[1])
            )
            parts.append(f"report {self.diff.report_id}: {self.new_rows} new rows ({counts})")
            if not self.mail_enabled:
                parts.append(f"archived in {self.report_dir} (mail is not configured)")
        if self.caught_up:
            parts.append(
                f"earlier report{'s' if len(self.caught_up) != 1 else ''} {', '.join(self.caught_up)} rendered"
            )
        if self.outbox.sent:
            parts.append(f"{len(self.outbox.sent)} message{'s' if len(self.outbox.sent) != 1 else ''} sent")
        if self.deferred and (self.outbox.failed or self.new_rows):
            # said once per failed attempt (backoff), not on every cron run of a long outage
            why = self.outbox.failed[-1][1] if self.outbox.failed else "not due for retry yet"
            parts.append(f"{len(self.outbox.waiting)} waiting in the outbox ({why})")
        return "; ".join(parts)


def run_lock_path(config: Config) -> Path:
    return Path(config.reports) / RUN_LOCK


def run(
    config: Config,
    spool: str | os.PathLike | None = None,
    *,
    all_files: bool = False,
    lock_wait: float = 30.0,
) -> RunResult:
    """One pass: collect the closed captures of ``spool`` (skipped when None), diff, report, check
    the sensor's health, send.

    Never raises for a bad capture (it is in ``result.errors``) nor for a mail server that is down
    (the report waits in the outbox, ``result.deferred``); raises FlowdiffError for the rest (a store
    error after recording and queueing the ``store`` health problem, see the module doc)."""
    t0 = time.perf_counter()
    result = RunResult(mail_enabled=config.mail.enabled)
    with file_lock(run_lock_path(config), wait=lock_wait, what="flowdiff run in"):
        try:
            _pass(config, spool, all_files, result)
        except (StoreError, OSError) as e:
            result.health = _health(config, spool, result, error=e)
            with contextlib.suppress(FlowdiffError, OSError):
                result.outbox = flush_outbox(config)
            with contextlib.suppress(AttributeError):
                e.health = result.health  # type: ignore[union-attr]  # for the CLI's lines
            raise
        first = flush_outbox(config) if config.mail.enabled else None
        # after the report's attempt: a refusal for good opens outbox-failed in this pass, not the next
        result.health = _health(config, spool, result)
        if first is not None and first.failed:  # server down now: the health mails wait for the next pass
            first.waiting = [e.message_id for e in list_outbox(config)]
            result.outbox = first
        else:
            result.outbox = _merged(first, flush_outbox(config))
        _daily_compaction(config)  # housekeeping last: the report and the health check never wait for it
    result.seconds = time.perf_counter() - t0
    return result


def _merged(first: OutboxResult | None, second: OutboxResult) -> OutboxResult:
    """The two flushes of a pass as one (the second sends what the health check queued)."""
    if first is None:
        return second
    return OutboxResult(
        sent=first.sent + second.sent,
        failed=first.failed + second.failed,
        waiting=second.waiting,
        busy=first.busy or second.busy,
        refused=first.refused + second.refused,
    )


def _health(
    config: Config, spool: str | os.PathLike | None, result: RunResult, error: BaseException | None = None
) -> HealthResult:
    """The health check of a pass; a failing check is logged, never fatal (the pass did its work)."""
    try:
        return check_health(
            config,
            spool,
            collect=result.collect,
            diff=result.diff,
            error=error,
            summary=lambda: _status_text(config, spool),
        )
    except Exception as e:  # noqa: BLE001 - health must not break the pass it watches
        log.exception("health check failed")
        return HealthResult(save_error=f"health check failed: {e}")


def _status_text(config: Config, spool: str | os.PathLike | None) -> str:
    from flowdiff.status import status

    return status(config, spool).text()


def health_pass(
    config: Config, spool: str | os.PathLike | None = None, *, lock_wait: float = 0.0
) -> HealthResult | None:
    """A health check and outbox flush without collecting (watch between rotations: a capture that stops
    arriving is noticed although no pass runs). None when a pass holds the lock."""
    try:
        with file_lock(run_lock_path(config), wait=lock_wait, what="flowdiff run in"):
            health = check_health(config, spool, summary=lambda: _status_text(config, spool))
            res = flush_outbox(config)
    except LockError:
        return None
    if res.sent:
        log.info("watch: %d waiting message(s) sent", len(res.sent))
    return health


def _pass(config: Config, spool: str | os.PathLike | None, all_files: bool, result: RunResult) -> None:
    from flowdiff.baseline import current_version
    from flowdiff.collect import collect
    from flowdiff.diff import diff, load_report

    logs = [p for p in (config.logs.paths if config.logs else ()) if glob.glob(str(p))]
    for p in set(config.logs.paths if config.logs else ()) - set(logs):
        log.warning("run: [logs] paths: %s matches no file; nothing collected from it", p)
    if spool is not None or logs:  # [logs] paths are collected on every pass too
        result.collect = collect(
            [*([spool] if spool is not None else []), *logs], config, all_files=all_files
        )
    if current_version(config) is None:
        # a new sensor gathers the data to learn from: nothing to compare with yet, and no noise
        log.info("run: no baseline yet (flowdiff learn); captures collected, diff skipped")
        result.no_baseline = True
    else:
        result.diff = diff(config)
    for rid in unrendered_reports(config):
        if result.diff is not None and rid == result.diff.report_id:
            result.report_dir, result.message_id = _deliver(result.diff, config)
        else:
            _deliver(load_report(config, rid), config)
            result.caught_up.append(rid)


def _daily_compaction(config: Config) -> None:
    """Once a UTC day, the complete days older than ``compact_after`` become day files (flowdiff.compact)."""
    from flowdiff.compact import compact_if_due

    try:
        done = compact_if_due(config)
    except (StoreError, OSError) as e:  # the pass did its work; the next pass tries again
        log.error("run: compaction failed, the store keeps its interval files for now: %s", e)
        return
    if done is not None and (done.days or done.leftovers):
        log.info("run: %s", done.line())


def _deliver(diff_result: DiffResult, config: Config) -> tuple[Path, str | None]:
    """Render and archive one report and, with mail configured, queue it (sending is the flush's job)."""
    delivery = deliver(diff_result, config)
    return delivery.report_dir, delivery.message_id


# ---------------------------------------------------------------- watch


def _closed_files(directory: Path, config: Config) -> set[tuple[str, int, int]]:
    from flowdiff.collect import spool_captures

    out = set()
    for p in spool_captures(directory, config):
        try:
            st = p.stat()
        except FileNotFoundError:
            continue
        out.add((str(p), st.st_size, st.st_mtime_ns))
    return out


@dataclass
class WatchStats:
    passes: int = 0
    reports: int = 0
    failures: int = 0  # passes that raised (logged, then the watch went on)

    @property
    def exit_code(self) -> ExitCode:
        """ERROR when every pass failed (the watch never saw a capture through), else OK."""
        return ExitCode.ERROR if self.failures and not self.passes else ExitCode.OK


def watch(
    config: Config,
    directory: str | os.PathLike,
    *,
    poll: float = 1.0,
    stop_event: threading.Event | None = None,
    retry_every: float = 30.0,
    lock_wait: float = 30.0,
    on_pass: Callable[[RunResult], None] | None = None,
) -> WatchStats:
    """Run a pass whenever a capture in ``directory`` becomes closed (a newer file appeared, or the
    newest stopped changing for ``config.settle`` seconds); retry the outbox every ``retry_every``
    seconds while it is not empty. Returns when ``stop_event`` is set; without one, SIGTERM and
    SIGINT set an internal event (only from the main thread), and the pass in progress finishes first.

    A failing pass (bad store, lock held too long, unexpected error) is logged and retried after
    2, 4, 8 ... at most 60 seconds; bad captures and mail outages do not fail a pass at all."""
    directory = Path(directory)
    stop = stop_event or threading.Event()
    restore = _install_signal_handlers(stop) if stop_event is None else {}
    stats = WatchStats()
    seen: set[tuple[str, int, int]] = set()
    last_retry = time.monotonic()
    pending = True  # a pass is due: at start-up, when a capture closed, and after a failed pass
    not_before, failed_in_row = 0.0, 0
    try:
        while not stop.is_set():
            try:
                closed = _closed_files(directory, config)
                if closed - seen:
                    seen |= closed
                    pending = True
                if pending and time.monotonic() >= not_before:
                    _one_pass(config, directory, stats, on_pass, lock_wait)
                    pending, failed_in_row = False, 0
                    last_retry = time.monotonic()
                elif time.monotonic() - last_retry >= retry_every:
                    last_retry = time.monotonic()
                    health = health_pass(config, directory)  # also retries the outbox
                    for line in health.lines() if health is not None else []:
                        log.warning("watch: %s", line)
            except Exception as e:  # noqa: BLE001 - an unattended sensor must outlive one bad pass
                stats.failures += 1
                failed_in_row += 1
                delay = min(MAX_PASS_DELAY, 2.0**failed_in_row)
                not_before = time.monotonic() + delay  # retry the pass, without spinning on the error
                if isinstance(e, FlowdiffError):
                    log.error("watch: %s; next try in %.0f s", e, delay)
                else:
                    log.exception("watch: unexpected error; next try in %.0f s", delay)
            stop.wait(poll)
    finally:
        for sig, handler in restore.items():
            signal.signal(sig, handler)
    return stats


def _one_pass(
    config: Config,
    directory: Path,
    stats: WatchStats,
    on_pass: Callable[[RunResult], None] | None,
    lock_wait: float,
) -> None:
    res = run(config, directory, lock_wait=lock_wait)
    stats.passes += 1
    for error in res.errors:
        log.warning("watch: %s", error)
    if res.new_rows:
        stats.reports += 1
    line = res.summary()
    if line:
        log.info("watch: %s", line)
    if on_pass is not None:
        on_pass(res)


def _install_signal_handlers(stop: threading.Event) -> dict[int, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum: int, frame: Any) -> None:
        log.info("watch: signal %d, stopping after the current pass", signum)
        stop.set()

    previous: dict[int, Any] = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.getsignal(sig)
        signal.signal(sig, handler)
    return previous
