"""Commands of the learn/diff stage: learn, diff and the ``baseline`` group (history, show, diff, rollback).

Each command parses its options, makes one library call (flowdiff.baseline, flowdiff.diff) and formats the
result; the exit status is the result's ``exit_code`` (0 ok; ``diff --exit-code`` 1 when new rows were found),
errors exit 2 through ``handle_errors``.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import click

from flowdiff.cli.common import (
    config_option,
    format_frame,
    format_option,
    handle_errors,
    load,
    parse_when,
    scheduler_option,
    store_option,
)
from flowdiff.cli.store_cmds import sensor_configs, sensor_heading, sensor_option
from flowdiff.vocab import iso_time

if TYPE_CHECKING:
    from collections.abc import Sequence

    import pandas as pd

    from flowdiff.incidents import Incident

_FORMATS = click.Choice(["table", "json", "csv"])


def _where_option(help_text: str):
    return click.option("--where", "where", multiple=True, metavar="FIELD=VALUE", help=help_text)


def _ts(t: Any) -> str:
    return iso_time(t) or "-"


@click.command()
@config_option
@store_option
@click.option(
    "--table", "tables", multiple=True, help="Learn only this table (repeatable); others keep theirs."
)
@click.option("--since", help="Learn from intervals starting at or after this time (ISO, UTC) or age (7d).")
@click.option("--until", help="Learn from intervals starting before this time or age.")
@click.option(
    "--last",
    help="Learn from the last DURATION of stored data (e.g. 7d), counted back from the newest interval.",
)
@click.option(
    "--min-intervals",
    type=click.IntRange(min=1),
    help="A key needs this many intervals to be frozen (config min_intervals, default 2).",
)
@click.option(
    "--min-packets",
    type=click.IntRange(min=1),
    help="A key needs this many packets to be frozen (config min_packets, default 2).",
)
@click.option(
    "--both-directions/--any-direction",
    default=None,
    help="Freeze src/dst keys only when the reverse direction was seen too.",
)
@click.option("--by", help="Who learned it (default: the user name).")
@click.option("--reason", help="Why (kept in the baseline history).")
@click.option(
    "--force",
    is_flag=True,
    help="Learn even when a table would keep no key or lose more than half of its keys.",
)
@scheduler_option
@sensor_option
@format_option
@handle_errors
def learn(
    config_path,
    store,
    tables,
    since,
    until,
    last,
    min_intervals,
    min_packets,
    both_directions,
    by,
    reason,
    force,
    scheduler,
    sensor,
    fmt,
):
    """Freeze the keys seen in the store into a new baseline version.

    With no window options every stored interval is learned from; those intervals then count as
    already diffed. Refused (exit 2, nothing written) when the window holds no data for a table, or,
    unless --force, when a table would keep no key or lose more than half of its current keys.
    """
    from flowdiff.baseline import learn as run_learn

    configs = sensor_configs(load(config_path, store=store), sensor, shared_ok=False)
    heading = sensor_heading(configs, sensor, fmt)
    code = 0
    for config in configs:
        res = run_learn(
            config,
            tables=tables or None,
            since=parse_when(since, option="--since"),
            until=parse_when(until, option="--until"),
            last=last,
            by=by,
            min_intervals=min_intervals,
            min_packets=min_packets,
            both_directions=both_directions,
            reason=reason,
            force=force,
            scheduler=scheduler,
        )
        code = max(code, int(res.exit_code))
        if fmt != "table":
            _print_learn_records(res, fmt)
            continue
        heading(config)
        for t, lt in res.tables.items():
            before = "" if lt.keys_before is None else f", {lt.keys_before:,} before"
            forced = " (forced)" if lt.forced else ""
            click.echo(
                f"{t:<12} {lt.rows:>9,} keys frozen ({lt.candidates:,} seen, {lt.below_threshold:,} below the "
                f"thresholds{before}) from {lt.intervals:,} intervals {_ts(lt.since)} .. {_ts(lt.until)}{forced}"
            )
        click.echo(f"baseline {res.version} (parent {res.parent or 'none'})")
    sys.exit(code)


def _print_learn_records(res: Any, fmt: str) -> None:
    import pandas as pd

    recs = [
        {
            "version": res.version,
            "parent": res.parent or "",
            "table": t,
            "keys": lt.rows,
            "keys_before": lt.keys_before,
            "seen": lt.candidates,
            "below_threshold": lt.below_threshold,
            "intervals": lt.intervals,
            "since": _ts(lt.since),
            "until": _ts(lt.until),
            "forced": lt.forced,
        }
        for t, lt in res.tables.items()
    ]
    df = pd.DataFrame(recs)
    df["keys_before"] = df["keys_before"].astype("Int64")
    click.echo(format_frame(df, fmt))


@click.command()
@config_option
@store_option
@click.option("--table", "tables", multiple=True, help="Diff only this table (repeatable).")
@click.option("--since", help="Only intervals starting at or after this time (ISO, UTC) or age (2h).")
@click.option("--until", help="Only intervals starting before this time or age.")
@click.option(
    "--format",
    "fmt",
    type=_FORMATS,
    default="table",
    show_default=True,
    help="json: JSON Lines, one object per new row.",
)
@click.option("--exit-code", is_flag=True, help="Exit with 1 when new rows were found (like git diff).")
@click.option("--dry-run", is_flag=True, help="Show what is new without recording a report or the state.")
@scheduler_option
@sensor_option
@handle_errors
def diff(config_path, store, tables, since, until, fmt, exit_code, dry_run, scheduler, sensor):
    """Show the rows of the intervals not diffed yet that are not in the baseline (or hit a deny rule).

    Each new key is reported once; the report is archived under the reports directory and every row
    carries the exact accept/deny command. A table without a baseline yet is skipped with a warning.
    """
    from flowdiff.diff import diff as run_diff

    configs = sensor_configs(load(config_path, store=store), sensor, shared_ok=False)
    heading = sensor_heading(configs, sensor, fmt)
    code = 0
    for config in configs:
        res = run_diff(
            config,
            tables=tables or None,
            since=parse_when(since, option="--since"),
            until=parse_when(until, option="--until"),
            dry_run=dry_run,
            scheduler=scheduler,
        )
        for line in res.skipped.values():
            click.echo(f"Warning: {line}", err=True)
        d = None
        if res.report_id and not dry_run:  # archived rendered (and queued with [mail]) before printing:
            from flowdiff.deliver import deliver  # `flowdiff diff | head` must not lose the rendering

            d = deliver(res, config)
        heading(config)
        _print_diff(res, fmt)
        if d is not None:
            queued = f", queued as {d.message_id} (flowdiff notify sends it)" if d.message_id else ""
            if fmt == "table":  # csv/json output stays pure data, even with 2>&1
                click.echo(f"report archived: {d.report_dir / 'report.txt'}{queued}")
        code = max(code, int(res.exit_code(exit_code)))
    sys.exit(code)


@click.group()
def baseline():
    """Inspect and manage baseline versions (history, show, diff, rollback)."""


_VERSION_FIELDS = ("current", "version", "parent", "created_at", "by", "action", "reason")


@baseline.command()
@config_option
@click.option("--table", "tables", multiple=True, help="Only this table (repeatable).")
@format_option
@handle_errors
def history(config_path, tables, fmt):
    """List every baseline version, oldest first (the current one is marked with *): who, when, why,
    and per table its keys and learning window (since, until, intervals)."""
    import pandas as pd

    from flowdiff.baseline import current_version
    from flowdiff.baseline import history as run_history

    config = load(config_path)
    cur = current_version(config)
    versions = run_history(config, tables=tables or None)
    recs = []
    for v in versions:
        head = {
            "current": "*" if v.id == cur else "",
            "version": v.id,
            "parent": v.parent or "",
            "created_at": v.created_at,
            "by": v.by,
            "action": v.action,
            "reason": v.reason,
        }
        # one row per table of the version; in the table view its version fields only on the first
        for i, (t, e) in enumerate(v.tables.items()):
            shown = head if i == 0 or fmt != "table" else dict.fromkeys(head, "")
            recs.append({**shown, "table": t, "keys": e.rows, **_window_fields(e.window)})
    if not recs and fmt == "table":
        click.echo("no baseline yet: run `flowdiff learn`")
        sys.exit(versions.exit_code)
    cols = [c for c in _VERSION_FIELDS if c != "reason"] + ["table", "keys", "since", "until", "intervals"]
    click.echo(format_frame(pd.DataFrame(recs, columns=[*cols, "reason"]), fmt))
    sys.exit(versions.exit_code)


def _window_fields(window: dict[str, Any]) -> dict[str, Any]:
    return {
        "since": window.get("since") or "",
        "until": window.get("until") or "",
        "intervals": int(window.get("intervals") or 0),
    }


@baseline.command()
@click.argument("table_arg", metavar="[TABLE]", required=False)
@config_option
@click.option("--table", "tables", multiple=True, help="Only this table (repeatable; same as TABLE).")
@click.option("--version", "version", help="Version to show (default: the current one).")
@_where_option("Only rows matching (exact, CIDR, range or label; repeatable).")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many rows per table.")
@format_option
@handle_errors
def show(table_arg, config_path, tables, version, where, limit, fmt):
    """List what a baseline holds, biggest keys first: every table, or TABLE (flowdiff baseline show
    services)."""
    from flowdiff.baseline import show as run_show

    config = load(config_path)
    names = [*([table_arg] if table_arg else []), *tables]
    res = run_show(config, names or None, version=version, where=list(where) or None, limit=limit)
    _print_tables(res, fmt)
    sys.exit(res.exit_code)


@baseline.command(name="diff")
@click.argument("v1")
@click.argument("v2")
@config_option
@click.option("--table", "tables", multiple=True, help="Only this table (repeatable).")
@format_option
@handle_errors
def diff_cmd(v1, v2, config_path, tables, fmt):
    """Keys added (+) and removed (-) between baseline versions V1 and V2."""
    import pandas as pd

    from flowdiff.baseline import diff_versions

    config = load(config_path)
    res = diff_versions(config, v1, v2, tables=tables or None)
    frames: dict[str, pd.DataFrame] = {}
    for t in dict.fromkeys([*res.added, *res.removed]):
        parts = []
        if t in res.added:
            parts.append(res.added[t].assign(change="+"))
        if t in res.removed:
            parts.append(res.removed[t].assign(change="-"))
        df = pd.concat(parts, ignore_index=True)
        frames[t] = df[["change", *[c for c in df.columns if c != "change"]]]
    if not frames and fmt == "table":
        click.echo(f"{res.v1} and {res.v2} hold the same keys")
    else:
        _print_tables(frames, fmt)
    sys.exit(res.exit_code)


@baseline.command()
@click.argument("version")
@config_option
@click.option("--reason", help="Why (kept in the history).")
@click.option("--by", help="Who (default: the user name).")
@handle_errors
def rollback(version, config_path, reason, by):
    """Make VERSION current again (as a new version, so the history stays complete)."""
    from flowdiff.baseline import rollback as run_rollback

    config = load(config_path)
    v = run_rollback(config, version, by=by, reason=reason)
    click.echo(f"baseline {v.id} (parent {v.parent}) = content of {version}: {v.reason}")
    sys.exit(v.exit_code)


def register(main: click.Group) -> None:
    """Add the learn/diff commands and the ``baseline`` group to ``flowdiff``."""
    for command in (learn, diff, baseline):
        main.add_command(command)


def _print_tables(frames: dict[str, pd.DataFrame], fmt: str) -> None:
    import pandas as pd

    if fmt == "table":
        for t, df in frames.items():
            click.echo(f"== {t} ({len(df)} rows)")
            click.echo(format_frame(df, "table"))
        return
    parts = [df.assign(table=t) for t, df in frames.items() if len(df)]
    if not parts:
        return
    df = pd.concat(parts, ignore_index=True)
    df = df[["table", *[c for c in df.columns if c != "table"]]]
    click.echo(format_frame(df, fmt))


def _print_diff(res: Any, fmt: str) -> None:
    import pandas as pd

    from flowdiff.archive import row_records

    recs = row_records(res)
    if fmt == "json":
        for r in recs:
            click.echo(json.dumps({**r, "report_id": res.report_id}, ensure_ascii=False))
        return
    if fmt == "csv":
        if recs:
            click.echo(pd.DataFrame(recs, dtype=object).to_csv(index=False).rstrip("\n"))
        return
    if not recs:
        n = res.intervals
        click.echo(f"no new rows ({n} interval{'s' if n != 1 else ''} diffed)")
        return
    _print_incidents(getattr(res, "incidents", None) or [])
    for t, df in res.rows.items():
        if not len(df):
            continue
        keys = list(res.keys[t])
        click.echo(f"== {t}: {len(df)} new")
        cols = ["interval_start", "first_seen", "packets", "bytes", "reason", "sensors", "neighbour"]
        cols += ["incident"] if "incident" in df.columns else []
        show = df[["row", *keys, *cols]]
        click.echo(format_frame(show, "table"))
        for r, cmd in zip(df["row"], df["accept_cmd"], strict=True):
            click.echo(f"  [{r}] {cmd}")
    where = f"report {res.report_id}" if res.report_id else "not recorded (--dry-run)"
    click.echo(f"{res.total} new rows ({', '.join(f'{t} {n}' for t, n in res.counts().items())}); {where}")


def _print_incidents(incidents: Sequence[Incident]) -> None:
    """The report's grouping on the terminal too: an admin at the shell reads causes first, then the rows
    (numbered as the rows' ``[n]`` below), with one command per cause."""
    if not incidents:
        return
    click.echo(f"== {len(incidents)} incident{'s' if len(incidents) != 1 else ''}")
    for inc in incidents:
        click.echo(f"#{inc.number} {inc.title}: row{'s' if len(inc.rows) != 1 else ''} {_spans(inc.rows)}")
        if inc.accept_cmd:
            click.echo(f"  accept all: {inc.accept_cmd}")


def _spans(rows: Sequence[tuple[str, int]]) -> str:
    """Row numbers (unique within a report) as runs: 1-3, 5, 7-10."""
    nums = sorted({r for _, r in rows})
    runs: list[list[int]] = []
    for n in nums:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ", ".join(f"{a}-{b}" if b > a else str(a) for a, b in runs)
