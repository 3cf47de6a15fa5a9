"""Commands of the learn/diff stage: learn, diff, accept, deny, ignore and the ``baseline`` group.

Each command parses its options, makes one library call (flowdiff.baseline, flowdiff.diff, flowdiff.triage) and formats
the result. Exit status: 0 ok; ``diff --exit-code`` 1 when new rows were found; 2 on errors.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import click

from flowdiff.cli.common import (
    EXIT_FOUND,
    config_option,
    format_frame,
    format_option,
    handle_errors,
    load,
    parse_when,
)
from flowdiff.vocab import iso_time

if TYPE_CHECKING:
    import pandas as pd

_FORMATS = click.Choice(["table", "json", "csv"])


def _where_option(help_text: str):
    return click.option("--where", "where", multiple=True, metavar="FIELD=VALUE", help=help_text)


def _split_target(target: str, rows: tuple[str, ...]) -> tuple[str | None, list[int] | None, str | None]:
    """``REPORT_ID [ROW ...]`` or ``TABLE``: returns (report_id, rows, table)."""
    from flowdiff.archive import is_report_id

    if is_report_id(target):
        try:
            nums = [int(r) for r in rows]
        except ValueError:
            raise click.BadParameter(
                f"row numbers are integers, got {' '.join(rows)!r}", param_hint="ROW"
            ) from None
        return target, nums or None, None
    if rows:
        raise click.BadParameter(f"{target!r} is a table name; give filters with --where, not rows",
                                 param_hint="ROW")  # fmt: skip
    return None, None, target


def _ts(t: Any) -> str:
    return iso_time(t) or "-"


@click.command()
@config_option
@click.option(
    "--table", "tables", multiple=True, help="Learn only this table (repeatable); others keep theirs."
)
@click.option(
    "--since", help="Learn from intervals starting at or after this time (ISO, UTC) or age (7d)."
)
@click.option("--until", help="Learn from intervals starting before this time or age.")
@click.option("--last", help="Learn from the last DURATION of stored data (e.g. 7d), counted back from the "
                             "newest interval.")  # fmt: skip
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
@handle_errors
def learn(
    config_path, tables, since, until, last, min_intervals, min_packets, both_directions, by, reason
):
    """Freeze the keys seen in the store into a new baseline version.

    With no window options every stored interval is learned from; those intervals then count as
    already diffed.
    """
    from flowdiff.baseline import learn as run_learn

    config = load(config_path)
    res = run_learn(
        config, tables=tables or None, since=parse_when(since), until=parse_when(until), last=last, by=by,
        min_intervals=min_intervals, min_packets=min_packets, both_directions=both_directions, reason=reason,
    )  # fmt: skip
    for t, lt in res.tables.items():
        click.echo(
            f"{t:<12} {lt.rows:>9,} keys frozen ({lt.candidates:,} seen, {lt.below_threshold:,} below the "
            f"thresholds) from {lt.intervals:,} intervals {_ts(lt.since)} .. {_ts(lt.until)}"
        )
    click.echo(f"baseline {res.version} (parent {res.parent or 'none'})")

@click.command()
@config_option
@click.option("--table", "tables", multiple=True, help="Diff only this table (repeatable).")
@click.option("--since", help="Only intervals starting at or after this time (ISO, UTC) or age (2h).")
@click.option("--until", help="Only intervals starting before this time or age.")
@click.option("--format", "fmt", type=_FORMATS, default="table", show_default=True,
              help="json: JSON Lines, one object per new row.")  # fmt: skip
@click.option("--exit-code", is_flag=True, help="Exit with 1 when new rows were found (like git diff).")
@click.option("--dry-run", is_flag=True, help="Show what is new without recording a report or the state.")
@handle_errors
def diff(config_path, tables, since, until, fmt, exit_code, dry_run):
    """Show the rows of the intervals not diffed yet that are not in the baseline (or hit a deny rule).

    Each new key is reported once; the report is archived under the reports directory and every row
    carries the exact accept/deny command.
    """
    from flowdiff.diff import diff as run_diff

    config = load(config_path)
    res = run_diff(config, tables=tables or None, since=parse_when(since), until=parse_when(until),
                   record=not dry_run)  # fmt: skip
    _print_diff(res, fmt)
    if res.report_id and not dry_run:  # the report is archived rendered, and queued with [mail]
        from flowdiff.deliver import deliver

        d = deliver(res, config)
        queued = f", queued as {d.message_id} (flowdiff notify sends it)" if d.message_id else ""
        if fmt == "table":  # csv/json output stays pure data, even with 2>&1
            click.echo(f"report archived: {d.report_dir / 'report.txt'}{queued}")
    if exit_code and res.total:
        sys.exit(EXIT_FOUND)


@click.group()
def baseline():
    """Inspect and manage baseline versions (history, show, diff, rollback)."""

@baseline.command()
@config_option
@format_option
@handle_errors
def history(config_path, fmt):
    """List every baseline version, oldest first; the current one is marked with *."""
    import pandas as pd

    from flowdiff.baseline import current_version
    from flowdiff.baseline import history as run_history

    config = load(config_path)
    cur = current_version(config)
    recs = [
        {"current": "*" if v.id == cur else "", "version": v.id, "parent": v.parent or "", "created_at": v.created_at,
         "by": v.by, "action": v.action, "rows": ", ".join(f"{t} {e.rows}" for t, e in v.tables.items()),
         "reason": v.reason}
        for v in run_history(config)
    ]  # fmt: skip
    if not recs and fmt == "table":
        click.echo("no baseline yet: run `flowdiff learn`")
        return
    click.echo(format_frame(pd.DataFrame(recs), fmt))

@baseline.command()
@config_option
@click.option("--table", help="Only this table.")
@click.option("--version", "version", help="Version to show (default: the current one).")
@_where_option("Only rows matching (exact, CIDR, range or label; repeatable).")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many rows per table.")
@format_option
@handle_errors
def show(config_path, table, version, where, limit, fmt):
    """List what a baseline holds, biggest keys first."""
    from flowdiff.baseline import show as run_show

    config = load(config_path)
    res = run_show(config, table, version=version, where=list(where) or None, limit=limit)
    _print_tables(res, fmt)

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
    res = diff_versions(config, v1, v2, tables or None)
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
        return
    _print_tables(frames, fmt)

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
        click.echo(f"no new rows ({res.intervals} table intervals diffed)")
        return
    for t, df in res.rows.items():
        if not len(df):
            continue
        keys = list(res.keys[t])
        click.echo(f"== {t}: {len(df)} new")
        show = df[["row", *keys, "interval_start", "first_seen", "packets", "bytes", "reason", "neighbour"]]
        click.echo(format_frame(show, "table"))
        for r, cmd in zip(df["row"], df["accept_cmd"], strict=True):
            click.echo(f"  [{r}] {cmd}")
    where = f"report {res.report_id}" if res.report_id else "not recorded (--dry-run)"
    click.echo(f"{res.total} new rows ({', '.join(f'{t} {n}' for t, n in res.counts().items())}); {where}")
