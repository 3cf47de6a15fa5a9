"""Commands of the report/mail stage: notify, outbox, test-mail, run, watch."""

from __future__ import annotations

import logging
import shlex
import sys

import click

from flowdiff.cli.common import config_option, format_option, handle_errors, load
from flowdiff.errors import MailError


def register(main: click.Group) -> None:
    main.add_command(notify)
    main.add_command(outbox)
    main.add_command(test_mail_cmd)
    main.add_command(run_cmd)
    main.add_command(watch_cmd)


@click.command()
@click.argument("report_ids", nargs=-1)
@config_option
@handle_errors
def notify(report_ids, config_path) -> None:
    """Mail the reports that `flowdiff diff` produced and that were not sent yet.

    Without REPORT_IDS, every archived report that was neither delivered, nor is waiting in the outbox,
    nor was refused by the server; a REPORT_ID named explicitly is sent even if it was sent (or refused)
    before, with the same Message-ID. Each report is rendered, archived (report.txt, report.html,
    message.eml) and queued in the outbox; then the outbox is flushed.

    Without [mail] nothing can be sent: the reports not rendered yet (or those named) are still rendered
    and archived, and one line says that mail is not configured. Exit status: 0 done (or nothing to
    send), 2 reports that cannot be mailed (no [mail]) or a message refused by the server for good,
    3 a message waits in the outbox (server down).
    """
    from flowdiff.deliver import notify as run_notify

    config = load(config_path)
    res = run_notify(config, list(report_ids) or None)
    for rid in res.empty:
        click.echo(f"report {rid}: no new rows, nothing to send")
    for d in res.delivered:
        what = f"queued as {d.message_id}" if d.message_id else f"archived in {d.report_dir}"
        cut = " (attachment cut to fit max_message_bytes)" if d.cut else ""
        click.echo(f"report {d.rendered.report_id}: {what}{cut}")
    if res.outbox is not None:
        _echo_flush(res.outbox, config)
    elif res.unsent:
        n = len(res.unsent)
        click.echo(
            f"Error: mail is not configured (set [mail] host and to): {n} report{'s' if n != 1 else ''} "
            f"not mailed, archived in {config.reports}",
            err=True,
        )
    else:
        click.echo("nothing to send (mail is not configured)")
    sys.exit(res.exit_code)


def _echo_flush(res, config) -> None:
    for mid in res.sent:
        click.echo(f"sent {mid}")
    for mid, error in res.failed:
        click.echo(f"Warning: {mid} not sent: {error}", err=True)
    cfg = config.config_arg
    for mid, error in res.refused:
        click.echo(
            f"Warning: {mid} refused by the server for good, moved to {config.outbox_path / 'failed'} "
            f"(flowdiff outbox drop {shlex.quote(mid)}{cfg} removes it): {error}",
            err=True,
        )
    if res.busy:
        click.echo("Warning: another flowdiff process is sending the outbox", err=True)


@click.group(invoke_without_command=True)
@click.pass_context
@config_option
@format_option
@handle_errors
def outbox(ctx, config_path, fmt) -> None:
    """Messages waiting to be sent, and those the server refused (lists them when no subcommand is given).

    A report enters the outbox before the first attempt and leaves it only after the server accepted
    it; failed attempts are retried by every `flowdiff run` with backoff (1 min doubling up to 1 h). A
    message the server refuses for good (5xx, e.g. 552 too big) moves to the outbox's failed/ folder.
    """
    if ctx.invoked_subcommand is None:
        ctx.invoke(outbox_list, config_path=config_path, fmt=fmt)


_OUTBOX_COLUMNS = [
    "state",
    "message_id",
    "subject",
    "report_id",
    "created",
    "attempts",
    "next_attempt",
    "failed_at",
    "size",
    "last_error",
]


@outbox.command("list")
@config_option
@format_option
@handle_errors
def outbox_list(config_path, fmt) -> None:
    """List the waiting and the failed messages: state, Message-ID, subject, attempts, next attempt,
    size, last error."""
    import pandas as pd

    from flowdiff.cli.common import format_frame
    from flowdiff.mail import list_failed, list_outbox

    config = load(config_path)
    entries = list_outbox(config) + list_failed(config)
    if not entries and fmt == "table":
        click.echo("outbox is empty")
        return
    rows = [{**{k: getattr(e, k) for k in _OUTBOX_COLUMNS}, "next_attempt": _next(e)} for e in entries]
    df = pd.DataFrame(rows, columns=_OUTBOX_COLUMNS)
    if fmt == "table":
        from flowdiff.vocab import one_line

        df["subject"] = [one_line(s, 40) for s in df["subject"]]
        df["last_error"] = [one_line(s, 60) for s in df["last_error"]]
    if len(df) or fmt != "json":
        click.echo(format_frame(df, fmt))


def _next(entry) -> str:
    from flowdiff.vocab import iso_time

    if entry.state == "failed":
        return ""
    return iso_time(entry.next_attempt) or "now" if entry.attempts else "now"


@outbox.command("drop")
@click.argument("message")
@config_option
@handle_errors
def outbox_drop(message, config_path) -> None:
    """Remove one message (waiting or failed) from the outbox for good. MESSAGE is its Message-ID, its
    entry name, or a unique prefix of either (`flowdiff outbox list` shows them)."""
    from flowdiff.mail import drop_message

    config = load(config_path)
    e = drop_message(config, message)
    click.echo(f"dropped {e.state} message {e.message_id} ({e.subject}; {e.attempts} attempt(s))")


@outbox.command("retry")
@config_option
@handle_errors
def outbox_retry(config_path) -> None:
    """Try every waiting message now, ignoring the backoff (failed ones stay: `flowdiff notify
    REPORT_ID` queues a report again). Exit status 3 when some still wait, 2 when one was refused."""
    from flowdiff.mail import flush_outbox

    config = load(config_path)
    if not config.mail.enabled:
        raise MailError("mail is not configured: set [mail] host and to")
    res = flush_outbox(config, force=True)
    _echo_flush(res, config)
    if not res.sent and not res.failed and not res.refused and not res.busy:
        click.echo("outbox is empty")
    sys.exit(res.exit_code)


@click.command("test-mail")
@config_option
@handle_errors
def test_mail_cmd(config_path) -> None:
    """Send a test message with the [mail] settings, now and not via the outbox, to check them."""
    from flowdiff.mail import test_mail

    config = load(config_path)
    mid = test_mail(config)
    mc = config.mail
    click.echo(f"sent {mid} to {', '.join(mc.to)} via {mc.host}:{mc.effective_port} (tls={mc.tls})")


@click.command("run")
@config_option
@click.option(
    "--spool",
    type=click.Path(file_okay=False, exists=True),
    help="tcpdump spool directory: collect its closed captures first (default: config key `spool`; "
    "without either: diff, report, send).",
)
@click.option(
    "--all",
    "all_files",
    is_flag=True,
    help="Also collect the newest capture, which tcpdump may still be writing.",
)
@click.option("--exit-code", "exit_on_new", is_flag=True, help="Exit status 1 when new rows were found.")
@click.option(
    "--wait",
    "lock_wait",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds to wait for an overlapping run to finish before giving up (exit 2).",
)
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors (the report is still mailed).")
@handle_errors
def run_cmd(config_path, spool, all_files, exit_on_new, lock_wait, quiet) -> None:
    """One pass for cron: collect, diff, report, mail, retry the outbox.

    Prints nothing when there is nothing new (cron mails any output); a health problem (stale spool,
    unreadable capture, no baseline, store, refused mail) is one line when it starts and one when it
    clears. Exit status: 0 ok, 1 new rows with --exit-code, 2 error (config, lock, unreadable capture,
    store), 3 a report waits in the outbox.
    """
    from flowdiff.pipeline import run

    config = load(config_path)
    try:
        res = run(config, spool or config.spool, all_files=all_files, lock_wait=lock_wait)
    except Exception as e:  # a store error was recorded as a health problem: show it, then the error
        health = getattr(e, "health", None)
        for line in health.lines() if health is not None else []:
            click.echo(line)
        raise
    for line in res.errors:
        click.echo(f"Warning: {line}", err=True)
    line = res.summary()
    if line and not quiet:
        click.echo(line)
    sys.exit(res.exit_code(exit_on_new))


@click.command("watch")
@click.argument("directory", type=click.Path(file_okay=False, exists=True))
@config_option
@click.option(
    "--poll",
    type=click.FloatRange(min=0.05),
    default=1.0,
    show_default=True,
    help="Seconds between looks at the directory.",
)
@handle_errors
def watch_cmd(directory, config_path, poll) -> None:
    """Run a pass as soon as tcpdump closes a rotated capture in DIRECTORY, until SIGTERM.

    A capture counts as closed when a newer one appears or it has not changed for `settle` seconds.
    Mail outages and bad captures are logged; the watch goes on. Between passes the sensor's health
    (a spool that stopped receiving captures, ...) is checked every 30 s and logged once per change.
    """
    from flowdiff.pipeline import watch

    config = load(config_path)
    logging.getLogger("flowdiff").setLevel(
        min(logging.getLogger("flowdiff").getEffectiveLevel(), logging.INFO)
    )
    stats = watch(config, directory, poll=poll)
    click.echo(
        f"watch stopped: {stats.passes} passes, {stats.reports} reports, {stats.failures} failed passes"
    )
    sys.exit(stats.exit_code)
