"""A learned site of the demo's enclave (generated normal days), copied per test, plus injected captures.

The incident and stations tests need a real pipeline (captures -> store -> baseline -> diff) with a
baseline that knows the normal enclave; collecting and learning it once per module and copying the
folder per test keeps them to a second or two each.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

from flowdiff.baseline import learn
from flowdiff.collect import collect
from flowdiff.config import Config, load_config
from flowdiff.demo import _toml
from flowdiff.demo.frames import NS, Frame, write_pcap
from flowdiff.demo.scenario import Scenario, enclave_scenario

ROTATE = INTERVAL = 4 * 3600


@dataclass
class Site:
    root: Path
    scenario: Scenario
    config: Config

    @property
    def config_path(self) -> Path:
        return self.root / "flowdiff.toml"

    def at(self, hour: int, minute: int = 0) -> int:
        """Nanoseconds of a time on the last (diffed) day."""
        t = self.scenario.last_day + timedelta(hours=hour, minutes=minute)
        return int(t.timestamp()) * NS

    def inject(self, frames: list[Frame], name: str = "extra") -> None:
        """Write the frames as one more capture of the last day and collect it."""
        folder = self.root / "extra"
        folder.mkdir(exist_ok=True)
        path = write_pcap(folder / f"{name}.pcap", sorted(frames, key=lambda f: f.ts_ns))
        res = collect([path], self.config, all_files=True)
        assert not res.errors, res.errors


def _write_config(root: Path, scenario: Scenario, extra: str = "") -> Config:
    path = root / "flowdiff.toml"
    path.write_text(_toml(scenario.config_dict(root)) + extra, encoding="utf-8")
    return load_config(path)


def learned_enclave(root: Path, days: int = 3) -> Site:
    """``days`` normal days and a normal last day collected; the normal days learned."""
    scenario = enclave_scenario(
        root / "captures", days=days, anomaly_day=False, rotate=ROTATE, interval=INTERVAL
    )
    config = _write_config(root, scenario)
    res = collect([scenario.directory], config, all_files=True)
    assert not res.errors, res.errors
    learn(config, since=scenario.start, until=scenario.last_day, by="test")
    return Site(root, scenario, config)


def copy_site(site: Site, dest: Path, extra_config: str = "") -> Site:
    """A copy of a learned site under ``dest`` (its own store, baselines, reports and config)."""
    shutil.copytree(site.root, dest, ignore=shutil.ignore_patterns("captures"), dirs_exist_ok=True)
    scenario = replace(site.scenario)
    return Site(dest, scenario, _write_config(dest, scenario, extra_config))
