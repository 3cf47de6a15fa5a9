"""`flowdiff status`: the sensor on one screen (exit 1 while a health problem is open)."""

from __future__ import annotations

import json
import sys

import click

from flowdiff.cli.common import config_option, handle_errors, load
from flowdiff.cli.store_cmds import sensor_configs, sensor_option


def register(main: click.Group) -> None:
    main.add_command(status_cmd)


@click.command("status")
@config_option
@click.option(
    "--spool",
    type=click.Path(file_okay=False),
    help="tcpdump spool directory to look at (default: config key `spool`, else the spool "
    "that the last `run` or `watch` looked at).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Output: aligned lines for people, or one JSON object for monitoring systems.",
)
@sensor_option
@handle_errors
def status_cmd(config_path, spool, fmt, sensor) -> None:
    """The sensor on one screen: last capture, last interval, baseline, last report, outbox, health.

    Writes nothing. Exit status: 0 healthy, 1 a health problem is open (stale spool, unreadable
    capture, no baseline, store, refused mail), 2 error.
    """
    from flowdiff.status import status

    code = 0
    for config in sensor_configs(load(config_path), sensor):
        st = status(config, spool)
        if fmt == "json":
            click.echo(json.dumps(st.to_json(), indent=1, sort_keys=True))
        else:
            click.echo(st.text())
        code = max(code, int(st.exit_code))
    sys.exit(code)
