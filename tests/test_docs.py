"""The README and --help must tell the truth: every command documented, every command helpful,
and CI runs exactly the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from flowdiff.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def all_commands(group: click.Group = main, prefix: str = "") -> list[tuple[str, click.Command]]:
    out = []
    for name, cmd in sorted(group.commands.items()):
        full = f"{prefix}{name}"
        out.append((full, cmd))
        if isinstance(cmd, click.Group):
            out += all_commands(cmd, full + " ")
    return out


@pytest.mark.parametrize(("name", "cmd"), all_commands(), ids=[n for n, _ in all_commands()])
def test_every_command_is_documented_and_has_help(name, cmd):
    assert cmd.help and len(cmd.help.strip()) > 20, f"`flowdiff {name}` has no real help text"
    assert f"flowdiff {name}" in README, f"`flowdiff {name}` is not in the README"
    r = CliRunner().invoke(main, [*name.split(), "--help"])
    assert r.exit_code == 0, r.output
    for param in cmd.params:
        if isinstance(param, click.Option) and not param.hidden and param.name not in ("help",):
            assert param.help, f"`flowdiff {name}` option {param.opts[0]} has no help"


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    m = re.search(r"^(pip install -e '\.\[test\]' && pytest.*)$", ci, re.M)
    assert m, ".ci/run does not run the test command"
    assert m.group(1) in README


def test_readme_has_the_two_setup_commands():
    assert "flowdiff demo" in README
    assert "pip install -e '.[test]' && pytest" in README


def test_readme_store_one_liners_run(tmp_path):
    """The pandas / DuckDB / polars / flowdiff lines of 'The store' run as written on a real store."""
    from flowdiff.collect import collect
    from flowdiff.config import parse_config
    from flowdiff.demo import frames as synth

    frames = synth.udp_exchange(
        1_700_000_000 * 10**9,
        client_mac="02:00:00:00:00:01",
        server_mac="02:00:00:00:00:02",
        client="192.0.2.1",
        server="192.0.2.53",
        cport=40000,
        sport=53,
        request=b"q",
        response=b"a",
    )
    collect([synth.write_pcap(tmp_path / "a.pcap", frames)], parse_config({"sensor": "doc"}))
    section = README.split("## The store", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    results = {}
    for n, line in enumerate(code.strip().splitlines()):
        head, _, last = line.split("#")[0].strip().rpartition(";")
        exec(head, results)  # noqa: S102 - the README's own lines
        results[f"r{n}"] = eval(last.strip(), results)  # noqa: S307
    assert len(results["r0"]) == 0  # the README's example filters on a later day
    assert int(results["r1"]["packets"].sum()) == len(frames)
    assert len(results["r2"].fetchall()) == 1
    assert results["r3"]["sensor"].to_list() == ["doc"] * results["r3"].height
    assert int(results["r4"]["packets"].sum()) == len(frames) and len(results["r4"]) == len(results["r1"])
