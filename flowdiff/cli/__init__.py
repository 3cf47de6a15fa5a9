"""The ``flowdiff`` command: a thin click layer over the library (see README for the exit codes)."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys

# The CLI process is flowdiff's alone and calls no BLAS: OpenBLAS, loaded with numpy, would start a
# thread per extra core that spins after any call. Set before numpy is first imported (just below).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
from collections.abc import Callable, Iterator
from typing import IO

import click

from flowdiff import __version__
from flowdiff._malloc import keep_freed_memory
from flowdiff._numba import lean_cache_load, skip_blas_probe
from flowdiff.cli.common import (
    config_option,
    format_frame,
    format_option,
    handle_errors,
    load,
    parse_when,
    scheduler_option,
    setup_logging,
    store_option,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="flowdiff")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug).")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Config file for the command (also accepted after the command name).",
)
def main(verbose: int, config_path: str | None) -> None:
    """flowdiff: count tables from packet captures, a frozen baseline of normal traffic,
    and a report of every row that is new.

    \b
    Typical cycle:
      flowdiff collect /var/spool/flowdiff      # captures -> per-interval count tables
      flowdiff learn                            # freeze what was seen as normal
      flowdiff diff                             # what is new since then
      flowdiff run --spool /var/spool/flowdiff  # all of it from cron, with mail

    Try `flowdiff demo` for the whole pipeline on bundled sample data.
    """
    setup_logging(verbose)
    skip_blas_probe()  # before any command runs compiled code (flowdiff/_numba.py says why here)
    lean_cache_load()
    keep_freed_memory()  # the drains' arrays stay mapped between drains (flowdiff/_malloc.py)


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@config_option
@store_option
@click.option(
    "--interval", type=click.IntRange(min=1), help="Interval length in seconds (config key `interval`)."
)
@click.option("--table", "tables", multiple=True, help="Collect only this table (repeatable).")
@click.option(
    "--all",
    "all_files",
    is_flag=True,
    help="Also read the newest capture of each directory (normally left for the next run, "
    "because tcpdump may still be writing it).",
)
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a terminal only).")
@handle_errors
def collect(paths, config_path, store, interval, tables, all_files, progress) -> None:
    """Read captures (files, directories, globs; pcap, pcapng, .gz) into the count tables; also flow
    spools of `flowdiff listen`, Zeek conn.logs and syslog files, recognised by their content.

    Captures already collected are skipped (or read again for tables they have not filled yet);
    damaged captures keep every record before the damage. A path or glob that names nothing is an
    error. Prints one summary line; with -v, names the files skipped as not captures. Exit status 2
    when a capture could not be read at all.
    """
    from flowdiff.collect import collect as run_collect

    config = load(config_path, store=store, interval=interval)
    show_bar = sys.stderr.isatty() if progress is None else progress
    with _progress_bar(sys.stderr) if show_bar else contextlib.nullcontext() as bar:
        result = run_collect(paths, config, all_files=all_files, tables=tables or None, progress=bar)
    for f in result.files:
        if f.message:
            click.echo(("Error: " if f.status == "failed" else "Warning: ") + f.message, err=True)
    if _verbosity() > 0:
        for path, why in result.ignored_reasons.items():
            click.echo(f"skipped ({why}): {path}", err=True)
    click.echo(result.summary())
    sys.exit(result.exit_code)


def _verbosity() -> int:
    """-v count, wherever it was given (before the subcommand, or after it once it is accepted
    there), or as the logging level says."""
    ctx = click.get_current_context(silent=True)
    counts = []
    while ctx is not None:
        counts.append(ctx.params.get("verbose") or 0)
        ctx = ctx.parent
    if logging.getLogger("flowdiff").isEnabledFor(logging.INFO):
        counts.append(1)
    return max(counts, default=0)


@contextlib.contextmanager
def _progress_bar(stream: IO[str]) -> Iterator[Callable[[str, int, int], None]]:
    """A progress bar per capture on ``stream``. click hides the terminal's cursor while a bar is
    drawn and shows it again only when the bar is finished: every bar is finished here, also when
    collect fails or is interrupted, so the cursor comes back and what follows starts on a new line."""
    state: dict = {}

    def update(path: str, done: int, total: int) -> None:
        if state.get("path") != path:
            if "bar" in state:
                state["bar"].render_finish()
            state.update(
                path=path,
                last=0,
                bar=click.progressbar(length=max(total, 1), label=path, file=stream),  # type: ignore[call-overload]
            )
        state["bar"].update(done - state["last"])
        state["last"] = done

    try:
        yield update
    finally:
        if "bar" in state:
            state["bar"].render_finish()
            stream.flush()


@main.command()
@config_option
@store_option
@format_option
@handle_errors
def tables(config_path, store, fmt) -> None:
    """List the count tables: key columns, interval, intervals and rows in the store.

    Tables of the config that nothing was collected into yet are listed too (0 rows); `defined_in`
    says whether a table is in the config, the store or both.
    """
    from flowdiff.store import Store

    config = load(config_path, store=store)
    click.echo(format_frame(_tables_frame(Store(config.store).describe(), config), fmt))


def _tables_frame(stored, config):
    """The store's tables (``Store.describe``) and the config's, config order first."""
    import pandas as pd

    rows = {r["table"]: dict(r) for r in stored.to_dict("records")}
    in_store = set(rows)
    for name, table in config.tables.items():
        empty = {"interval": config.interval, "intervals": 0, "first": pd.NaT, "last": pd.NaT, "rows": 0}
        rows.setdefault(name, {"table": name, "keys": ",".join(table.keys), **empty})
    names = [*config.tables, *(n for n in rows if n not in config.tables)]
    out = pd.DataFrame([rows[n] for n in names], columns=stored.columns)
    where = {(True, True): "config, store", (True, False): "config", (False, True): "store"}
    out["defined_in"] = [where[(n in config.tables, n in in_store)] for n in names]
    return out


@main.command()
@click.argument("table")
@config_option
@store_option
@click.option("--since", help="From this time (ISO, UTC) or age (2h, 7d).")
@click.option("--until", help="Before this time (ISO, UTC) or age.")
@click.option("--top", type=click.IntRange(min=1), default=20, show_default=True, help="Rows to show.")
@click.option("--by-interval", is_flag=True, help="One row per interval instead of totals over the window.")
@click.option(
    "--sensor", metavar="NAME|all", help="Only this sensor's rows, or `all` (default: every sensor)."
)
@scheduler_option
@format_option
@handle_errors
def show(table, config_path, store, since, until, top, by_interval, sensor, scheduler, fmt) -> None:
    """Show a count table: the top rows by bytes over the window (totals per key, or per interval)."""
    from flowdiff.store import Store

    config = load(config_path, store=store)
    st = Store(config.store, None if sensor in (None, "all") else config.for_sensor(sensor).sensor)
    df = st.totals(
        table,
        since=parse_when(since),
        until=parse_when(until),
        top=top,
        by_interval=by_interval,
        scheduler=scheduler or config.scheduler,
    )
    if "sensor" in df.columns and df["sensor"].nunique() <= 1:
        df = df.drop(columns="sensor")
    click.echo(format_frame(df, fmt))


# Commands of the other stages live in their own modules and register themselves here.
_COMMAND_MODULES = (
    "baseline_cmds",
    "triage_cmds",
    "mail_cmds",
    "demo_cmds",
    "status_cmds",
    "packets_cmds",
    "listen_cmds",
    "store_cmds",
    "logs_cmds",
)
for _module in _COMMAND_MODULES:
    try:
        importlib.import_module(f"flowdiff.cli.{_module}").register(main)
    except ModuleNotFoundError as _e:  # pragma: no cover - while a stage is being written
        if _e.name != f"flowdiff.cli.{_module}":
            raise

__all__ = ["main"]
