"""Commands of the triage stage: accept, deny, ignore (flowdiff.triage).

Each command parses its options, makes one library call and prints exactly what it changed.
"""

from __future__ import annotations

import sys

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
        raise click.BadParameter(
            f"{target!r} is a table name; give filters with --where, not rows", param_hint="ROW"
        )
    return None, None, target


_MAX_KEYS_SHOWN = 50  # keys printed per table; the rest are counted (`flowdiff baseline diff` shows all)


def _all_rows_option(what: str):
    return click.option(
        "--all-rows",
        is_flag=True,
        help=f"With TABLE and no --where: take every reported row of the table ({what}). Required, "
        "so that all rows are never taken by accident.",
    )


_incident_option = click.option(
    "--incident",
    type=click.IntRange(min=1),
    metavar="N",
    help="With REPORT_ID: exactly the rows of the report's incident N (the report numbers them).",
)


def _print_incident(config, report_id, incident) -> None:
    if incident is None or report_id is None:
        return
    from flowdiff.archive import load_report

    for inc in load_report(config, report_id).incidents:
        if inc.number == incident:
            click.echo(f"incident {inc.number}: {inc.title}")


_dry_run_option = click.option(
    "--dry-run", is_flag=True, help="Print what would change; write nothing (and take no lock)."
)


def _key_text(keys, values) -> str:
    from flowdiff.vocab import format_value

    return " ".join(f"{k}={format_value(k, v)}" for k, v in zip(keys, values, strict=True))


def _print_accept(res) -> None:
    counts = ", ".join(f"{t} {len(df)}" for t, df in res.added.items())
    if not res.added:
        have = sum(res.already.values())
        why = f"the {have} rows are already in baseline {res.parent}" if have else "no reported row waits"
        click.echo(f"nothing added: {why}")
        return
    if res.dry_run:
        click.echo(
            f"would accept {res.total} rows ({counts}) into a new baseline version (parent {res.parent}); "
            "dry run: nothing written"
        )
    else:
        click.echo(f"accepted {res.total} rows ({counts}) into baseline {res.version} (parent {res.parent})")
    for t, df in res.added.items():
        keys = list(df.columns)
        for vals in df.head(_MAX_KEYS_SHOWN).itertuples(index=False, name=None):
            click.echo(f"  + {t} {_key_text(keys, vals)}")
        if len(df) > _MAX_KEYS_SHOWN:
            more = f"`flowdiff baseline diff {res.parent} {res.version}`" if res.version else "--dry-run off"
            click.echo(f"  ... and {len(df) - _MAX_KEYS_SHOWN} more {t} rows (all: {more})")


def _print_rules(res) -> None:
    if not res.rules:
        click.echo("nothing added: no reported row waits")
        return
    verb = "would add" if res.dry_run else "added"
    n = len(res.rules)
    click.echo(f"{verb} {n} rule{'s' if n > 1 else ''} to {res.rules_path}:")
    for r in res.rules:
        click.echo(r.to_toml().rstrip("\n"))
    if res.dry_run:
        click.echo("dry run: nothing written")


@click.command()
@click.argument("target", metavar="REPORT_ID|TABLE")
@click.argument("rows", nargs=-1, metavar="[ROW]...")
@config_option
@_where_option("With TABLE: accept the reported rows matching (exact, CIDR, range or label; repeatable).")
@_all_rows_option("all into one new baseline version")
@click.option("--reason", help="Why these rows are normal (kept in the baseline history).")
@click.option("--by", help="Who accepts (default: the user name).")
@_incident_option
@_dry_run_option
@handle_errors
def accept(target, rows, config_path, where, all_rows, reason, by, incident, dry_run):
    """Add rows to a new baseline version: REPORT_ID [ROW...] (all rows when none given), or
    TABLE --where field=value ... (the reported rows that match; every key field given exactly adds
    that key even if it was never reported), or TABLE --all-rows. Prints every key added."""
    from flowdiff.triage import accept as run_accept

    report_id, nums, table = _split_target(target, rows)
    config = load(config_path)
    res = run_accept(
        config,
        report_id=report_id,
        rows=nums,
        table=table,
        where=list(where) or None,
        reason=reason,
        by=by,
        all_rows=all_rows,
        dry_run=dry_run,
        incident=incident,
    )
    _print_incident(config, report_id, incident)
    _print_accept(res)
    sys.exit(res.exit_code)


@click.command()
@click.argument("target", metavar="REPORT_ID|TABLE")
@click.argument("rows", nargs=-1, metavar="[ROW]...")
@config_option
@_where_option("With TABLE: the fields the rule matches (exact, CIDR, range, label or '*'; repeatable).")
@_all_rows_option("one exact deny rule each")
@click.option("--name", help="Rule name (default: deny-TABLE-N).")
@click.option("--reason", help="Comment stored with the rule.")
@click.option("--by", help="Who added it (default: the user name).")
@_incident_option
@_dry_run_option
@handle_errors
def deny(target, rows, config_path, where, all_rows, name, reason, by, incident, dry_run):
    """Add a deny rule: matching rows are always reported, even when in the baseline.
    REPORT_ID [ROW...] denies those exact rows; TABLE --where field=value ... denies what matches.
    Prints the rules written; a rule matching every row of a table is refused."""
    from flowdiff.triage import deny as run_deny

    report_id, nums, table = _split_target(target, rows)
    config = load(config_path)
    res = run_deny(
        config,
        report_id=report_id,
        rows=nums,
        table=table,
        where=list(where) or None,
        all_rows=all_rows,
        name=name,
        reason=reason,
        by=by,
        dry_run=dry_run,
        incident=incident,
    )
    _print_incident(config, report_id, incident)
    _print_rules(res)
    sys.exit(res.exit_code)


@click.command()
@click.argument("target", metavar="REPORT_ID|TABLE")
@click.argument("rows", nargs=-1, metavar="[ROW]...")
@config_option
@_where_option("With TABLE: the fields the rule matches; every other field is '*' (repeatable).")
@click.option(
    "--wildcard",
    "wildcard",
    multiple=True,
    metavar="FIELD",
    help="Match any value of this field (default: the client side; asked for when unclear).",
)
@click.option("--any", "any_fields", multiple=True, metavar="FIELD", hidden=True)
@_all_rows_option("one allow rule each, with the --wildcard field")
@click.option("--name", help="Rule name (default: allow-TABLE-N).")
@click.option("--reason", help="Comment stored with the rule.")
@click.option("--by", help="Who added it (default: the user name).")
@_dry_run_option
@handle_errors
def ignore(target, rows, config_path, where, wildcard, any_fields, all_rows, name, reason, by, dry_run):
    """Add an allow rule with a wildcard, so that rows like these are normal without being learned
    (e.g. any client of a public service). Prints the rules written; a rule that would allow every
    row of a table (hosts: src=*) is refused."""
    from flowdiff.triage import ignore as run_ignore

    report_id, nums, table = _split_target(target, rows)
    config = load(config_path)
    res = run_ignore(
        config,
        report_id=report_id,
        rows=nums,
        table=table,
        where=list(where) or None,
        wildcard=list(wildcard) + list(any_fields) or None,
        all_rows=all_rows,
        name=name,
        reason=reason,
        by=by,
        dry_run=dry_run,
    )
    _print_rules(res)
    sys.exit(res.exit_code)


def register(main: click.Group) -> None:
    """Add accept, deny and ignore to ``flowdiff``."""
    for command in (accept, deny, ignore):
        main.add_command(command)
