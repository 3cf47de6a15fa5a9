"""``flowdiff packets``: the packets behind a report row (or a key), to a pcap or one line each.

A thin layer over :func:`flowdiff.packets.find_packets`; heavy modules are imported inside the command so
that ``flowdiff --help`` stays fast.
"""

from __future__ import annotations

import sys

import click

from flowdiff.cli.common import config_option, handle_errors, load, parse_when


def register(main: click.Group) -> None:
    main.add_command(packets)


@click.command()
@click.argument("report_id", required=False)
@click.argument("row", required=False, type=int)
@config_option
@click.option("--table", help="Without a report: the table whose key --where names.")
@click.option(
    "--where",
    "where",
    multiple=True,
    metavar="FIELD=VALUE",
    help="Without a report: a key field's value, raw or canonical (repeatable; "
    "e.g. --where client=internet --where service_port=23).",
)
@click.option("--since", help="Without a report: packets from this time (ISO, UTC) or age (2h, 7d).")
@click.option("--until", help="Without a report: packets before this time or age.")
@click.option(
    "-w",
    "--write",
    "write_path",
    type=click.Path(dir_okay=False),
    help="Write the packets to this pcap file (for Wireshark) instead of printing them.",
)
@handle_errors
def packets(report_id, row, config_path, table, where, since, until, write_path) -> None:
    """Find the packets behind row ROW of report REPORT_ID (or behind --table T --where FIELD=VALUE ...)
    in the captures that fed it, matched exactly as the row was counted.

    Prints one tcpdump-like line per packet, or with -w writes them to a pcap for Wireshark. A capture
    that fed the row but is no longer on disk (or changed) is named in a Warning line; exit status 2
    when none of them can be read.
    """
    from flowdiff.packets import find_packets, write_pcap

    _check_args(report_id, row, table, where, since, until)
    config = load(config_path)
    result = find_packets(
        config,
        report_id=report_id,
        row=row,
        table=table,
        where=list(where) or None,
        since=parse_when(since),
        until=parse_when(until),
    )
    if result.error:
        click.echo(f"Error: {result.error}", err=True)
        sys.exit(result.exit_code)
    for line in result.warnings():
        click.echo(f"Warning: {line}", err=True)
    if write_path:
        kind = write_pcap(result, write_path)
        note = f" (pcapng: link types {', '.join(map(str, result.linktypes))})" if kind == "pcapng" else ""
        click.echo(f"{result.summary()}; written to {write_path}{note}")
    else:
        for line in result.lines():
            click.echo(line)
        click.echo(result.summary(), err=True)
    sys.exit(result.exit_code)


def _check_args(report_id, row, table, where, since, until) -> None:
    """A report row, or a table key: never a mix, never half of one."""
    if report_id is not None and not table and not where:
        from flowdiff.archive import is_report_id

        if not is_report_id(report_id):
            raise click.UsageError(
                f"{report_id!r} is not a report id (like 20261130T015500Z-ab12cd); for the "
                f"packets of a table give --table {report_id} --where FIELD=VALUE"
            )
    if report_id is not None and (table or where):
        raise click.UsageError("give either REPORT_ID ROW or --table/--where, not both")
    if report_id is not None and row is None:
        raise click.UsageError(
            f"which row of report {report_id}? Give its number: flowdiff packets {report_id} ROW"
        )
    if report_id is None and not (table and where):
        raise click.UsageError("give REPORT_ID ROW, or --table T with at least one --where FIELD=VALUE")
    if report_id is not None and (since or until):
        raise click.UsageError("--since/--until go with --table/--where; a report row has its own time span")
