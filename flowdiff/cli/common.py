"""What every command shares: the --config option, loading it, and turning errors into one line."""

from __future__ import annotations

import functools
import gc
import logging
import sys
from collections.abc import Callable
from typing import Any

import click

from flowdiff.config import Config, load_config
from flowdiff.errors import FlowdiffError
from flowdiff.exitcodes import ExitCode


def _verbose_callback(ctx: click.Context, param: click.Parameter, value: int) -> None:
    if value:
        setup_logging(value)


verbose_option = click.option(
    "-v",
    "--verbose",
    count=True,
    expose_value=False,
    is_eager=True,
    callback=_verbose_callback,
    help="More log output on stderr (-vv for debug); also accepted before the command.",
)

_config_flag = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Config file (default: $FLOWDIFF_CONFIG, else ./flowdiff.toml, else built-in defaults); "
    "also accepted before the command.",
)


def config_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--config FILE`` and ``-v``: every command takes them after its name, and the ``flowdiff`` group
    before it (``flowdiff --config F run`` and ``flowdiff run --config F`` are the same)."""
    return _config_flag(verbose_option(func))


store_option = click.option(
    "--store", type=click.Path(file_okay=False), help="Store directory (config key `store`)."
)

scheduler_option = click.option(
    "--scheduler",
    metavar="tcp://HOST:PORT",
    help="Run the reads on this dask.distributed scheduler (config [dask] scheduler); same results.",
)

format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
    help="Output: an aligned table, CSV, or JSON Lines (one object per row).",
)


def group_config_path() -> str | None:
    """``--config`` given before the command name (``flowdiff --config F CMD``), if any."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return None
    return ctx.find_root().params.get("config_path")


def load(config_path: str | None, **overrides: Any) -> Config:
    """The config with command-line overrides applied (options left unset do not override). A
    ``--config`` after the command wins over one before it."""
    config = load_config(config_path or group_config_path()).with_overrides(**overrides)
    return config.for_sensor(config.sensor)  # a store shared by sensors: this sensor's baselines


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """FlowdiffError -> ``Error: ...`` on stderr and exit status 2. An OSError (disk full, permission
    denied, a directory that vanished) is the machine's problem, not a bug: one line as well; every write
    is atomic, so what was stored before stays intact. Anything else is a bug and keeps its traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except FlowdiffError as e:
            click.echo(f"Error: {e}", err=True)
            sys.exit(ExitCode.ERROR)
        except OSError as e:
            where = f"{e.filename}: " if e.filename else ""
            click.echo(f"Error: {where}{e.strerror or e}", err=True)
            sys.exit(ExitCode.ERROR)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit, KeyboardInterrupt):
            raise
        except Exception:  # a bug: keep the traceback, and never exit 1 (that reads as "new rows")
            import traceback

            traceback.print_exc()
            click.echo("Error: internal error (a bug in flowdiff; the traceback is above)", err=True)
            sys.exit(ExitCode.INTERNAL)
        finally:
            # The command is done: spare the interpreter a last full collection over the many
            # objects numba and pandas leave behind (0.3-0.4 s at every cron run).
            gc.freeze()

    return wrapper


def setup_logging(verbose: int) -> None:
    """``-v`` once: INFO, twice: DEBUG. Called by the group and again by a command's own ``-v``; the
    more verbose of the two wins."""
    level = logging.WARNING - 10 * min(verbose, 2)
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    elif verbose:
        root.setLevel(min(root.level, level))


class OptionError(click.ClickException):
    """A bad option value: ``Error: --since: ...`` on one line (no usage text), exit status 2."""

    exit_code = int(ExitCode.ERROR)


def _option_name(value: str) -> str | None:
    """The option of the running command that holds ``value`` (``--since``), for the error line."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return None
    for param in ctx.command.params:
        if isinstance(param, click.Option) and ctx.params.get(param.name or "") == value:
            return max(param.opts, key=len)
    return None


def parse_when(value: str | None, *, now: Any = None, option: str | None = None) -> Any:
    """``--since``/``--until``: an ISO time (UTC unless it says otherwise) or an age like ``2h``/``7d``.
    A value that is neither is an OptionError naming the option (``option``, else found in the
    running command)."""
    import pandas as pd

    from flowdiff.config import parse_duration

    if value is None:
        return None
    try:
        seconds = parse_duration(value, "time")
    except FlowdiffError:
        try:
            t = pd.Timestamp(value)
        except ValueError:
            t = None
        if t is None or t is pd.NaT:
            name = option or _option_name(value)
            where = f"{name}: " if name else ""
            raise OptionError(
                f"{where}{value!r} is neither a time (2026-11-30T12:00, UTC unless it says otherwise) "
                "nor an age (90s, 30m, 2h, 7d, 2w)"
            ) from None
        return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
    now = pd.Timestamp.now(tz="UTC") if now is None else now
    return now - pd.Timedelta(seconds=seconds)


def format_frame(df: Any, fmt: str) -> str:
    """A DataFrame as an aligned text table, CSV or JSON Lines (times in ISO 8601 UTC)."""
    import pandas as pd

    from flowdiff.vocab import format_value, iso_time

    out = df.copy()
    for col in out.columns:
        if isinstance(out[col].dtype, pd.DatetimeTZDtype):
            out[col] = [iso_time(v) for v in out[col]]
    if fmt == "table":  # people read protocols by name and ethertypes in hex
        for col in ("proto", "ethertype"):
            if col in out.columns and pd.api.types.is_integer_dtype(out[col]):
                out[col] = [format_value(col, v) for v in out[col]]
    if fmt == "csv":
        return out.to_csv(index=False).rstrip("\n")
    if fmt == "json":
        return out.to_json(orient="records", lines=True, force_ascii=False, date_format="iso").rstrip("\n")
    if out.empty:
        return "(no rows)"
    return out.to_string(index=False)
