"""Shared fixtures: paths to the real capture corpus, configs and stores in tmp dirs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
# ../shared/pcaps beside the project; from a git worktree (one folder deeper), ../../shared/pcaps
SHARED_PCAPS = next(
    (b / "shared" / "pcaps" for b in (ROOT.parent, ROOT.parent.parent) if (b / "shared" / "pcaps").is_dir()),
    ROOT.parent / "shared" / "pcaps",
)


@pytest.fixture
def shared_pcaps() -> Path:
    """The public capture corpus beside the project; tests that need all of it skip without it."""
    if not (SHARED_PCAPS / "good").is_dir():
        pytest.skip("../shared/pcaps is not present on this machine")
    return SHARED_PCAPS


@pytest.fixture
def data_dir() -> Path:
    return DATA


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """No test reads the developer's ./flowdiff.toml or $FLOWDIFF_CONFIG, and the default
    store/baselines/reports land in the test's own directory."""
    monkeypatch.delenv("FLOWDIFF_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    os.environ.setdefault("TZ", "UTC")


@pytest.fixture
def write_config(tmp_path):
    """Write a TOML config into tmp_path and return its path."""

    def _write(text: str, name: str = "flowdiff.toml") -> Path:
        p = tmp_path / name
        p.write_text(text, encoding="utf-8")
        return p

    return _write
