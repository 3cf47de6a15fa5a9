"""Commands of the report/mail stage: notify, outbox, test-mail, run, watch."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from flowdiff.cli.common import EXIT_ERROR, config_option, handle_errors, load
from flowdiff.errors import MailError

EXIT_DEFERRED = 3


def register(main: click.Group) -> None:
    main.add_command(notify)
    main.add_command(outbox)
    main.add_command(test_mail_cmd)
    main.add_command(run_cmd)
    main.add_command(watch_cmd)


def _unsent_reports(config) -> list[str]:
    """Archived reports not delivered (no sent.json) and not waiting in the outbox, oldest first."""
    from flowdiff.diff import list_reports
    from flowdiff.mail import SENT_RECORD, list_outbox

    waiting = {e.report_id for e in list_outbox(config)}
    return [
        rid
        for rid in list_reports(config)
        if rid not in waiting and not (Path(config.reports) / rid / SENT_RECORD).exists()
    ]


@click.command()
@click.argument("report_ids", nargs=-1)
@config_option
@handle_errors
def notify(report_ids, config_path) -> None:
    """Mail the reports that `flowdiff diff` produced and that were not sent yet.

    Without REPORT_IDS, every archived report that was neither delivered nor is waiting in the
    outbox; a REPORT_ID named explicitly is sent even if it was sent before (same Message-ID). Each report is rendered, archived (report.html, report.txt, message.eml) and queued in the
    outbox; then the outbox is flushed. Exit status 3 when a message could not be sent yet.
    """
    from flowdiff.diff import load_report
    from flowdiff.mail import flush_outbox, queue_report
    from flowdiff.report import archive_report, render_report

    config = load(config_path)
    if not config.mail.enabled:
        raise MailError("mail is not configured: set [mail] host and to")
    ids = list(report_ids) or _unsent_reports(config)
    for rid in ids:
        result = load_report(config, rid)
        if not result.total:
            click.echo(f"report {rid}: no new rows, nothing to send")
            continue
        rendered = render_report(result, config)
        archive_report(rendered, result, config)
        entry = queue_report(rendered, config)
        click.echo(f"report {rid}: queued as {entry.message_id}")
    res = flush_outbox(config)
    _echo_flush(res)
    if res.deferred:
        sys.exit(EXIT_DEFERRED)


def _echo_flush(res) -> None:
    for mid in res.sent:
        click.echo(f"sent {mid}")
    for mid, error in res.failed:
        click.echo(f"Warning: {mid} not sent: {error}", err=True)
    if res.busy:
        click.echo("Warning: another flowdiff process is sending the outbox", err=True)


@click.group(invoke_without_command=True)
@click.pass_context
@config_option
@handle_errors
def outbox(ctx, config_path) -> None:
    """Messages waiting to be sent (lists them when no subcommand is given).

    A report enters the outbox before the first attempt and leaves it only after the server accepted
    it; failed attempts are retried by every `flowdiff run` with backoff (1 min doubling up to 1 h).
    """
    if ctx.invoked_subcommand is None:
        ctx.invoke(outbox_list, config_path=config_path)


@outbox.command("list")
@config_option
@handle_errors
def outbox_list(config_path) -> None:
    """List the waiting messages: Message-ID, subject, attempts, next attempt, last error."""
    from flowdiff.mail import list_outbox

    config = load(config_path)
    entries = list_outbox(config)
    if not entries:
        click.echo("outbox is empty")
        return
    from flowdiff.vocab import iso_time

    for e in entries:
        nxt = (
            iso_time(e.next_attempt)
            if e.attempts
            else "now"
        )
        click.echo(f"{e.message_id}  {e.subject}")
        click.echo(f"    queued {e.created}, {e.attempts} attempt(s), next {nxt}, {e.size:,} bytes")
        if e.last_error:
            click.echo(f"    last error: {e.last_error}")


@outbox.command("retry")
@config_option
@handle_errors
def outbox_retry(config_path) -> None:
    """Try every waiting message now, ignoring the backoff. Exit status 3 when some still wait."""
    from flowdiff.mail import flush_outbox

    config = load(config_path)
    if not config.mail.enabled:
        raise MailError("mail is not configured: set [mail] host and to")
    res = flush_outbox(config, force=True)
    _echo_flush(res)
    if not res.sent and not res.failed and not res.busy:
        click.echo("outbox is empty")
    if res.deferred:
        sys.exit(EXIT_DEFERRED)


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
@click.option("--spool", type=click.Path(file_okay=False, exists=True),
              help="tcpdump spool directory: collect its closed captures first (default: config key `spool`; "
                   "without either: diff, report, send).")  # fmt: skip
@click.option(
    "--all",
    "all_files",
    is_flag=True,
    help="Also collect the newest capture, which tcpdump may still be writing.",
)
@click.option("--exit-code", "exit_on_new", is_flag=True, help="Exit status 1 when new rows were found.")
@click.option("--wait", "lock_wait", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Seconds to wait for an overlapping run to finish before giving up (exit 2).")  # fmt: skip
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors (the report is still mailed).")
@handle_errors
def run_cmd(config_path, spool, all_files, exit_on_new, lock_wait, quiet) -> None:
    """One pass for cron: collect, diff, report, mail, retry the outbox.

    Prints nothing when there is nothing new (cron mails any output). Exit status: 0 ok, 1 new rows
    with --exit-code, 2 error (config, lock, unreadable capture), 3 a report waits in the outbox.
    """
    from flowdiff.pipeline import run

    config = load(config_path)
    res = run(config, spool or config.spool, all_files=all_files, lock_wait=lock_wait)
    for line in res.errors:
        click.echo(f"Warning: {line}", err=True)
    line = res.summary()
    if line and not quiet:
        click.echo(line)
    sys.exit(res.exit_code(exit_on_new))


@click.command("watch")
@click.argument("directory", type=click.Path(file_okay=False, exists=True))
@config_option
@click.option("--poll", type=click.FloatRange(min=0.05), default=1.0, show_default=True,
              help="Seconds between looks at the directory.")  # fmt: skip
@handle_errors
def watch_cmd(directory, config_path, poll) -> None:
    """Run a pass as soon as tcpdump closes a rotated capture in DIRECTORY, until SIGTERM.

    A capture counts as closed when a newer one appears or it has not changed for `settle` seconds.
    Mail outages and bad captures are logged; the watch goes on.
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
    if stats.failures and not stats.passes:
        sys.exit(EXIT_ERROR)
