"""`flowdiff compact` and `flowdiff expire`: keeping a store small for years."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from flowdiff.cli.common import config_option, handle_errors, load, store_option

if TYPE_CHECKING:
    from flowdiff.config import Config


def register(main: click.Group) -> None:
    main.add_command(compact_cmd)
    main.add_command(expire_cmd)


def _duration(value: str | None, key: str) -> int | None:
    if value is None:
        return None
    from flowdiff.config import parse_duration

    return parse_duration(int(value) if value.isdigit() else value, key)


@click.command("compact")
@config_option
@store_option
@click.option(
    "--older-than",
    metavar="DURATION",
    help="Compact complete UTC days that ended at least this long ago, like 2d or 12h; 0 compacts every "
    "complete day (default: config key `compact_after`, 2d).",
)
@click.option("--sensor", "sensors", multiple=True, help="Compact only this sensor's partition (repeatable).")
@handle_errors
def compact_cmd(config_path, store, older_than, sensors) -> None:
    """Merge the interval files of each complete UTC day into one day file per table and sensor.

    Row groups of whole intervals, so interval filters skip the other intervals; every reader (learn,
    diff, show, pandas, DuckDB, polars) gives the same results before and after. Safe to interrupt and
    to re-run. `run` does it once a day by itself. Prints one line saying what it merged.
    """
    from flowdiff.compact import compact

    config = load(config_path, store=store)
    result = compact(config, older_than=_duration(older_than, "--older-than"), sensors=sensors or None)
    click.echo(result.line())
    sys.exit(result.exit_code)


@click.command("expire")
@config_option
@store_option
@click.option(
    "--keep",
    metavar="DURATION",
    help="Keep the intervals of this window, like 400d or 52w; remove older ones (default: config "
    "key `keep`; without either, expire refuses).",
)
@click.option("--sensor", "sensors", multiple=True, help="Expire only this sensor's partition (repeatable).")
@handle_errors
def expire_cmd(config_path, store, keep, sensors) -> None:
    """Remove the stored intervals older than the retention window.

    Interval files, day files and the row groups of a day file at the window's edge go; baselines and
    reports stay, and `history` still names each baseline's learning window. Prints one line saying
    what it removed.
    """
    from flowdiff.retention import expire

    config = load(config_path, store=store)
    result = expire(config, keep=_duration(keep, "--keep"), sensors=sensors or None)
    click.echo(result.line())
    sys.exit(result.exit_code)


sensor_option = click.option(
    "--sensor",
    "sensor",
    metavar="NAME|all",
    help="The sensor to act on in a store shared by many sensors, or `all` (default: config key `sensor`).",
)


def sensor_configs(config: Config, choice: str | None, *, shared_ok: bool = True) -> list[Config]:
    from flowdiff.sensors import sensor_configs as pick

    return pick(config, choice, shared_ok=shared_ok)


def sensor_heading(configs: list[Config], choice: str | None, fmt: str = "table") -> Callable[[Config], None]:
    """A ``sensor NAME:`` line before each sensor's output when --sensor was given (table output)."""

    def show(config: Config) -> None:
        if choice is not None and fmt == "table":
            click.echo(f"sensor {config.sensor}:" if config.baseline_scope == "sensor" else "all sensors:")

    return show
