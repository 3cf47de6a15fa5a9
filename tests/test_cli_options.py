"""The same option means the same thing on every command (issue 9, item 4): one ``--store``, one
``--config``, and ``--format`` choices drawn from one set."""

from __future__ import annotations

import click
import pytest

from flowdiff.cli import main


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    out: list[tuple[str, click.Command]] = []
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            out += _commands(cmd, f"{prefix}{name} ")
        else:
            out.append((f"{prefix}{name}", cmd))
    return out


def _option(cmd: click.Command, flag: str) -> click.Option | None:
    return next((p for p in cmd.params if isinstance(p, click.Option) and flag in p.opts), None)


COMMANDS = _commands(main)


@pytest.mark.parametrize(("name", "cmd"), COMMANDS, ids=[n for n, _ in COMMANDS])
def test_every_command_takes_config(name, cmd):
    opt = _option(cmd, "--config")
    assert opt is not None and opt.name == "config_path"


def test_store_is_one_option_everywhere():
    stores = {name: _option(cmd, "--store") for name, cmd in COMMANDS}
    found = {name: o for name, o in stores.items() if o is not None}
    assert {"collect", "diff", "learn", "show", "tables"} <= set(found)
    shapes = {(o.name, o.help, type(o.type).__name__, o.type.file_okay) for o in found.values()}
    assert shapes == {("store", "Store directory (config key `store`).", "Path", False)}


def test_format_choices_come_from_one_set():
    for name, cmd in COMMANDS:
        opt = _option(cmd, "--format")
        if opt is not None:
            assert opt.name == "fmt", name
            assert isinstance(opt.type, click.Choice) and "table" in opt.type.choices, name
            assert set(opt.type.choices) <= {"table", "csv", "json"}, name
