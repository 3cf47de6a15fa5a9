"""Commands of the triage stage: accept, deny, ignore (flowdiff.triage).

Each command parses its options, makes one library call and prints exactly what it changed.
"""

from __future__ import annotations

import click

from flowdiff.cli.common import config_option, handle_errors, load


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


@click.command()
@click.argument("target", metavar="REPORT_ID|TABLE")
@click.argument("rows", nargs=-1, metavar="[ROW]...")
@config_option
@_where_option("With TABLE: accept the reported rows matching (exact, CIDR, range or label; repeatable).")
@click.option("--reason", help="Why these rows are normal (kept in the baseline history).")
@click.option("--by", help="Who accepts (default: the user name).")
@handle_errors
def accept(target, rows, config_path, where, reason, by):
    """Add rows to a new baseline version: REPORT_ID [ROW...] (all rows when none given), or
    TABLE --where field=value ... (the reported rows that match; every key field given exactly adds
    that key even if it was never reported)."""
    from flowdiff.triage import accept as run_accept

    report_id, nums, table = _split_target(target, rows)
    config = load(config_path)
    res = run_accept(config, report_id=report_id, rows=nums, table=table, where=list(where) or None,
                     reason=reason, by=by)  # fmt: skip
    if res.version is None:
        click.echo(f"nothing added: the rows are already in baseline {res.parent}")
        return
    counts = ", ".join(f"{t} {len(df)}" for t, df in res.added.items())
    click.echo(f"accepted {res.total} rows ({counts}) into baseline {res.version} (parent {res.parent})")

@click.command()
@click.argument("target", metavar="REPORT_ID|TABLE")
@click.argument("rows", nargs=-1, metavar="[ROW]...")
@config_option
@_where_option("With TABLE: the fields the rule matches (exact, CIDR, range, label or '*'; repeatable).")
@click.option("--name", help="Rule name (default: deny-TABLE-N).")
@click.option("--reason", help="Comment stored with the rule.")
@click.option("--by", help="Who added it (default: the user name).")
@handle_errors
def deny(target, rows, config_path, where, name, reason, by):
    """Add a deny rule: matching rows are always reported, even when in the baseline.
    REPORT_ID [ROW...] denies those exact rows; TABLE --where field=value ... denies what matches."""
    from flowdiff.triage import deny as run_deny

    report_id, nums, table = _split_target(target, rows)
    config = load(config_path)
    added = run_deny(config, report_id=report_id, rows=nums, table=table, where=list(where) or None,
                     name=name, reason=reason, by=by)  # fmt: skip
    for r in added:
        click.echo(f"added {r.describe()} to {config.rules_path}")

@click.command()
@click.argument("target", metavar="REPORT_ID|TABLE")
@click.argument("rows", nargs=-1, metavar="[ROW]...")
@config_option
@_where_option("With TABLE: the fields the rule matches; every other field is '*' (repeatable).")
@click.option("--any", "any_fields", multiple=True, metavar="FIELD",
              help="With REPORT_ID: match any value of this field (default: the client side).")  # fmt: skip
@click.option("--name", help="Rule name (default: allow-TABLE-N).")
@click.option("--reason", help="Comment stored with the rule.")
@click.option("--by", help="Who added it (default: the user name).")
@handle_errors
def ignore(target, rows, config_path, where, any_fields, name, reason, by):
    """Add an allow rule with a wildcard, so that rows like these are normal without being learned
    (e.g. any client of a public service)."""
    from flowdiff.triage import ignore as run_ignore

    report_id, nums, table = _split_target(target, rows)
    config = load(config_path)
    added = run_ignore(config, report_id=report_id, rows=nums, table=table, where=list(where) or None,
                       any_fields=list(any_fields) or None, name=name, reason=reason, by=by)  # fmt: skip
    for r in added:
        click.echo(f"added {r.describe()} to {config.rules_path}")


def register(main: click.Group) -> None:
    """Add accept, deny and ignore to ``flowdiff``."""
    for command in (accept, deny, ignore):
        main.add_command(command)
