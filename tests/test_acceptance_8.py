"""Issue 8 acceptance: the user's exact commands, pasted as flowdiff printed them, from another folder."""

from __future__ import annotations

import shlex

import pytest
from click.testing import CliRunner

from flowdiff.cli import main


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    work = tmp_path_factory.mktemp("acc8") / "demo"
    r = CliRunner().invoke(main, ["demo", "--workdir", str(work)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return work, r.output


def _report(work):
    (rep,) = (work / "reports").iterdir()
    return rep


def test_demo_report_commands_pasted_from_another_folder(demo_dir, tmp_path, monkeypatch):
    """Item 7: the demo's report carries --config ABSOLUTE_PATH; pasted elsewhere it acts on the demo."""
    work, _ = demo_dir
    text = (_report(work) / "report.txt").read_text()
    line = next(ln for ln in text.splitlines() if "accept:" in ln)
    cmd = line.split("accept:", 1)[1].strip()
    assert f"--config {work.resolve() / 'flowdiff.toml'}" in cmd
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, [*shlex.split(cmd)[1:], "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "hosts src=10.20.0.99" in r.output


def test_demo_explore_hint_pasted_from_another_folder(demo_dir, tmp_path, monkeypatch):
    work, out = demo_dir
    cmd = next(ln for ln in out.splitlines() if ln.startswith("Explore: ")).split("Explore: ", 1)[1]
    cmd = cmd.split("   (done", 1)[0]
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, shlex.split(cmd)[1:])
    assert r.exit_code == 0, r.output
    assert "10.20.0.10" in r.output


def test_ignore_refusal_hint_carries_config(demo_dir, tmp_path, monkeypatch):
    """Item 3: `ignore REPORT 1` on a hosts row refuses; the accept it suggests works when pasted."""
    work, _ = demo_dir
    rid = _report(work).name
    monkeypatch.chdir(tmp_path)
    cfg = str(work / "flowdiff.toml")
    r = CliRunner().invoke(main, ["ignore", rid, "1", "--config", cfg])
    assert r.exit_code == 2
    hint = r.output.strip().split("to make this row normal: ", 1)[1]
    assert f"--config {work.resolve() / 'flowdiff.toml'}" in hint
    r = CliRunner().invoke(main, [*shlex.split(hint)[1:], "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "hosts src=10.20.0.99" in r.output
