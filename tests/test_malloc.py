"""flowdiff/_malloc.py: the CLI keeps the memory a drain frees for the next drain (no page faults)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

import flowdiff.cli as cli

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
    reason="glibc's mallopt only",
)

SCRIPT = """
import resource, sys
import numpy as np
from flowdiff._malloc import keep_freed_memory

if sys.argv[1] == "keep":
    assert keep_freed_memory()


def drain():  # the arrays of one drain: allocated, written, freed
    arrays = []
    for n in (3 << 20, 9 << 20, 1 << 20, 14 << 20, 6 << 20):
        a = np.empty(n, np.uint8)
        a.fill(1)
        arrays.append(a)
    del arrays


drain()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    drain()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("GLIBC_TUNABLES", None)
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT), mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return int(out.stdout)


def test_memory_freed_by_one_drain_is_reused_by_the_next_without_page_faults():
    kept = _faults("keep")
    assert kept < 100  # ten more drains, the same memory: no page is faulted in again
    assert _faults("default") > kept  # glibc's defaults give the top of the heap back (measured: 20-30k)


def test_the_cli_sets_it_before_any_command(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(1) or True)
    res = CliRunner().invoke(cli.main, ["status", "--store", str(tmp_path / "store")])
    assert calls == [1], res.output
