"""`flowdiff demo`: the whole pipeline on a generated week of a small enclave."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import click

from flowdiff.cli.common import config_option, handle_errors, load


def register(main: click.Group) -> None:
    main.add_command(demo)


@click.command()
@click.option(
    "--workdir",
    type=click.Path(file_okay=False),
    default="demo",
    show_default=True,
    help="Directory for the captures, store, baselines and reports (rebuilt on every run).",
)
@config_option
@handle_errors
def demo(workdir, config_path) -> None:
    """Run collect -> learn -> diff -> report on a generated capture set and say what was found.

    Writes a normal week of a small mail enclave (SMTP from the internet, DNS, IMAP over the VPN,
    admin ssh, NTP, ARP, DHCP and IPv6 address churn) as rotated captures, then a last day with
    four anomalies. Learns the week, diffs the last day and prints the new rows, which must be exactly
    the injected anomalies (exit status 1 if not). The report is archived under WORKDIR/reports and
    mailed when the config (--config, $FLOWDIFF_CONFIG or ./flowdiff.toml) has a [mail] section; only
    the mail and report settings of that config are used.
    """
    from flowdiff.demo import OVERRIDABLE, run_demo

    user = load(config_path)
    overrides = {k: getattr(user, k) for k in OVERRIDABLE if getattr(user, k) is not None}
    show = sys.stderr.isatty()
    result = run_demo(
        Path(workdir),
        config_overrides=overrides,
        progress=(lambda line: click.echo(f"  .. {line}", err=True)) if show else None,
    )
    click.echo(format_summary(result))
    sys.exit(result.exit_code)


def _rel(p: Path) -> str:
    try:
        return os.path.relpath(p)
    except ValueError:  # another drive (Windows)
        return str(p)


def _packets(n: int) -> str:
    return f"{n:,} packet" + ("" if n == 1 else "s")


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return str(n)


def format_summary(result) -> str:
    """The demo's findings for a human: stages, then each injected anomaly with the rows it caused."""
    sc = result.scenario
    lines = [
        f"flowdiff demo: {sc.days} normal days of a small mail enclave, then a day with "
        f"{len(sc.anomalies)} anomalies ({_rel(result.workdir)})",
        "",
    ]
    c = result.collect
    every = f"{sc.rotate // 3600} h" if sc.rotate % 3600 == 0 else f"{sc.rotate} s"
    lines.append(
        f"  collect  {len(sc.files)} captures (one per {every}), {sc.packets:,} packets, in {c.seconds:.1f} s"
    )
    tables = ", ".join(f"{t} {lt.rows} keys" for t, lt in result.learn.tables.items())
    n_int = max((lt.intervals for lt in result.learn.tables.values()), default=0)
    lines.append(f"  learn    baseline {result.learn.version} from {n_int} intervals: {tables}")
    d = result.diff
    counts = ", ".join(f"{t} {n}" for t, n in d.counts().items()) or "none"
    lines.append(f"  diff     {sc.last_day:%Y-%m-%d}: {d.total} new rows ({counts})")
    lines.append("")
    n = len(d.incidents)
    if result.ok:
        lines.append(f"Found exactly the {len(sc.anomalies)} injected anomalies, as {n} incidents:")
    else:
        lines.append(
            f"The report did NOT show exactly the {len(sc.anomalies)} injected anomalies as incidents:"
        )
    for inc, anomaly, found in result.by_incident():
        if anomaly is not None:
            injected = f"injected: {anomaly.name} {anomaly.time:%H:%M}, {anomaly.description}"
        else:
            injected = "injected: none of the anomalies (or several)"
        lines.append(f"  {inc.number}. {inc.title}")
        lines.append(f"       ({injected})")
        for f in sorted(found, key=lambda f: (f.row.table, f.number)):
            lines.append(f"       {_row(f.row):<78} {_packets(f.packets)}, {_size(f.bytes)}")
    for row in result.missing:
        lines.append(f"  MISSING     {_row(row)}")
    for f in result.unexpected:
        lines.append(f"  UNEXPECTED  {_row(f.row)}   {_packets(f.packets)}, {_size(f.bytes)} ({f.reason})")
    lines.append("")
    if result.report_html is None:
        lines.append("No new rows, so no report.")
    else:
        lines.append(f"Report: {_rel(result.report_html)}")
        if not result.mail_enabled:
            lines.append("  (mail is not configured: add a [mail] section to --config to receive it)")
        elif result.outbox is not None and result.outbox.sent:
            lines.append(f"  mailed to {', '.join(result.config.mail.to)}")
        else:
            why = result.outbox.failed[-1][1] if result.outbox and result.outbox.failed else "not sent yet"
            lines.append(f"  mail waits in the outbox ({why}); `flowdiff outbox` retries it")
    toml = shlex.quote(str((result.workdir / "flowdiff.toml").resolve()))  # pasted from anywhere
    lines.append(f"Explore: flowdiff show services --config {toml}   (done in {result.seconds:.1f} s)")
    return "\n".join(lines)


def _row(row) -> str:
    from flowdiff.vocab import format_value

    return f"{row.table:<9} " + " ".join(f"{k}={format_value(k, v)}" for k, v in row.key)
