"""`flowdiff logs parse FILE`: how flowdiff reads a syslog file, line by line (see flowdiff.logsource)."""

from __future__ import annotations

import click

from flowdiff.cli.common import config_option, format_frame, format_option, handle_errors, load


def register(main: click.Group) -> None:
    main.add_command(logs_group)


@click.group("logs")
def logs_group() -> None:
    """Syslog input: inspect how lines become rows of the messages table."""


@logs_group.command("parse")
@click.argument("file", type=click.Path(dir_okay=False))
@config_option
@click.option("--all-columns", is_flag=True, help="Also show time, facility, severity and the line itself.")
@format_option
@handle_errors
def parse_cmd(file, config_path, all_columns, fmt) -> None:
    """Print every line of a syslog FILE (plain or gzip) with its line number, host, program and
    template: lines with the same host, program and template are one row of the messages table.
    Unparseable lines show host and program '-'."""
    from flowdiff.logsource import parse_file

    config = load(config_path)
    tz = config.logs.timezone if config.logs else "UTC"
    table = parse_file(file, timezone=tz)
    cols = ["line", "host", "program", "template"]
    if all_columns:
        cols = ["line", "time", "host", "program", "facility", "severity", "template", "text"]
    click.echo(format_frame(table.select(cols).to_pandas(), fmt))
