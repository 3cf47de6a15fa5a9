"""What every command shares: --config and -v before or after the command name, and exit codes that are
data (an internal error is 70, never 1: `diff --exit-code` uses 1 for "new rows")."""

from __future__ import annotations

import json
import logging

import pytest
from click.testing import CliRunner

from flowdiff.cli import main
from flowdiff.exitcodes import ExitCode


def _invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def test_config_before_or_after_the_command_is_the_same(tmp_path, write_config):
    config = write_config(f'store = "{tmp_path / "site-store"}"\n[tables.only]\nkeys = ["src"]\n')
    before = _invoke("--config", str(config), "tables", "--format", "json")
    after = _invoke("tables", "--format", "json", "--config", str(config))
    assert before.exit_code == after.exit_code == 0, (before.output, after.output)
    assert before.output == after.output
    assert [json.loads(line)["table"] for line in after.output.splitlines()] == ["only", "stations"]


def test_config_after_the_command_wins_over_one_before(tmp_path, write_config):
    one = write_config('[tables.one]\nkeys = ["src"]\n', "one.toml")
    two = write_config('[tables.two]\nkeys = ["dst"]\n', "two.toml")
    r = _invoke("--config", str(one), "tables", "--format", "json", "--config", str(two))
    assert r.exit_code == 0, r.output
    assert [json.loads(line)["table"] for line in r.output.splitlines()] == ["two", "stations"]


@pytest.fixture
def restore_logging():
    """`-v` lowers the root logger's level for the rest of the process: put it back for later tests."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.setLevel(level)
    root.handlers[:] = handlers


def test_verbose_before_or_after_the_command(tmp_path, restore_logging):
    for args in (["-v", "status", "--format", "json"], ["status", "-v", "--format", "json"]):
        r = _invoke(*args)
        assert r.exit_code in (ExitCode.OK, ExitCode.NEW_ROWS), r.output
        assert "Error" not in r.output


def test_an_internal_error_exits_70_with_its_traceback(monkeypatch):
    import flowdiff.baseline

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(flowdiff.baseline, "history", broken)
    r = _invoke("baseline", "history")
    assert r.exit_code == ExitCode.INTERNAL == 70
    assert "RuntimeError: a bug" in r.output
    assert "internal error" in r.output


def test_a_flowdiff_error_is_one_line_and_exit_2(tmp_path):
    r = _invoke("collect", str(tmp_path / "nothing-here-*.pcap"))
    assert r.exit_code == ExitCode.ERROR
    assert r.output.startswith("Error: ") and len(r.output.strip().splitlines()) == 1, r.output
