"""The demo: the whole pipeline on a generated week of a small mail enclave.

``run_demo`` writes the captures of ``flowdiff.demo.scenario.enclave_scenario`` into a work directory, then
does what an operator does: collect every capture, learn a baseline from the normal week, diff the last
day, render and archive the report (and mail it when ``[mail]`` is configured). It returns what the diff
found next to what the scenario injected, so the CLI, the tests and the notebook can check that the
two are the same set: the demo is also the end-to-end test of the project.

Layout of the work directory (default ``./demo``)::

    demo/.flowdiff-demo     marker: this directory belongs to the demo and may be rebuilt
    demo/flowdiff.toml      the config used (try `flowdiff show hosts --config demo/flowdiff.toml`)
    demo/captures/          rotated captures, one per 4 hours, like `tcpdump -G 14400`
    demo/store/ baselines/ reports/

Every run starts from scratch in that directory, so re-running gives the same findings. The scenario
(what is written and what must be found) is ``flowdiff.demo.scenario``; the frame builders and capture
writers it uses (and the tests) are ``flowdiff.demo.frames``.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from flowdiff.config import Config, parse_config
from flowdiff.demo.scenario import Anomaly, ExpectedRow, Scenario, enclave_scenario
from flowdiff.errors import FlowdiffError
from flowdiff.exitcodes import ExitCode

if TYPE_CHECKING:  # the stages are imported when the demo runs, not when it is imported
    from flowdiff.archive import DiffResult
    from flowdiff.baseline import LearnResult
    from flowdiff.collect import CollectResult
    from flowdiff.incidents import Incident
    from flowdiff.mail import OutboxResult

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_WORKDIR", "DemoResult", "Finding", "run_demo", "demo_config"]

DEFAULT_WORKDIR = Path("demo")
MARKER = ".flowdiff-demo"
_OWNED = ("captures", "store", "baselines", "reports", "flowdiff.toml")
# Config fields a user's config may bring to the demo (mail, looks of the report); the rest (tables,
# networks, directories, interval) belongs to the scenario, or the findings would not be the injected ones.
OVERRIDABLE = ("mail", "templates", "max_rows")

# Captures rotated every 4 hours and 4-hour intervals: 48 capture files and 48 intervals for the 8 days
# keep the demo to seconds (collect's cost is per file and per interval, not per packet, at this size).
DEMO_ROTATE = 4 * 3600
DEMO_INTERVAL = 4 * 3600

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Finding:
    """One new row of the demo's diff, with the injected anomaly it belongs to (None: not injected)."""

    row: ExpectedRow
    anomaly: Anomaly | None
    packets: int
    bytes: int
    first_seen: pd.Timestamp
    reason: str
    number: int = 0  # the row number in the report
    incident: int = 0  # the report's incident the row belongs to


@dataclass
class DemoResult:
    workdir: Path
    config: Config
    scenario: Scenario
    collect: CollectResult
    learn: LearnResult
    diff: DiffResult
    findings: list[Finding] = field(default_factory=list)
    missing: list[ExpectedRow] = field(default_factory=list)  # injected but not reported
    report_dir: Path | None = None
    mail_enabled: bool = False
    message_id: str | None = None  # of the queued report when mail is configured
    outbox: OutboxResult | None = None
    seconds: float = 0.0

    @property
    def unexpected(self) -> list[Finding]:
        """Reported rows the scenario did not inject (false alarms)."""
        return [f for f in self.findings if f.anomaly is None]

    @property
    def ok(self) -> bool:
        """The diff found exactly the injected anomalies, and the report grouped them as one incident
        per anomaly (its rows are exactly the anomaly's rows)."""
        if self.missing or self.unexpected:
            return False
        pairs = self.by_incident()
        return (
            len(pairs) == len(self.scenario.anomalies)
            and all(a is not None and {f.row for f in found} == set(a.rows) for _, a, found in pairs)
            and len({a.name for _, a, _ in pairs if a is not None}) == len(pairs)
        )

    def by_incident(self) -> list[tuple[Incident, Anomaly | None, list[Finding]]]:
        """The report's incidents, in its order, each with its rows and the injected anomaly those rows
        belong to (None when they belong to none, or to several: the report grouped them wrongly)."""
        out = []
        for inc in self.diff.incidents:
            found = [f for f in self.findings if f.incident == inc.number]
            names = {f.anomaly.name if f.anomaly else None for f in found}
            anomaly = found[0].anomaly if len(names) == 1 and found else None
            out.append((inc, anomaly, found))
        return out

    @property
    def exit_code(self) -> ExitCode:
        """OK when the diff found exactly the injected anomalies, NEW_ROWS (1) when it did not."""
        return ExitCode.OK if self.ok else ExitCode.NEW_ROWS

    @property
    def report_html(self) -> Path | None:
        return self.report_dir / "report.html" if self.report_dir is not None else None

    def by_anomaly(self) -> list[tuple[Anomaly, list[Finding]]]:
        """Findings grouped by injected anomaly, in the order they happened."""
        return [(a, [f for f in self.findings if f.anomaly is a]) for a in self.scenario.anomalies]


def demo_config(scenario: Scenario, workdir: Path, overrides: dict[str, Any] | None = None) -> Config:
    """The scenario's suggested config with store/baselines/reports under ``workdir``, plus the allowed
    ``overrides`` (Config field -> value, e.g. ``{"mail": MailConfig(...)}``)."""
    config = parse_config(scenario.config_dict(workdir))
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    bad = sorted(set(overrides) - set(OVERRIDABLE))
    if bad:
        raise FlowdiffError(f"the demo cannot override {', '.join(bad)} (only {', '.join(OVERRIDABLE)})")
    return replace(config, **overrides)


def run_demo(
    workdir: str | Path = DEFAULT_WORKDIR,
    *,
    config_overrides: dict[str, Any] | None = None,
    progress: Progress | None = None,
    days: int = 7,
    seed: int = 0,
) -> DemoResult:
    """Generate the scenario into ``workdir`` (rebuilt from scratch), collect -> learn the week -> diff
    the last day -> report (archived; mailed when ``config_overrides["mail"]`` is enabled).

    ``progress`` receives one line per stage. Raises FlowdiffError when ``workdir`` exists, is not empty
    and is not a demo directory (the demo never deletes what it did not create)."""
    from flowdiff.baseline import learn
    from flowdiff.collect import collect
    from flowdiff.diff import diff

    say = progress or (lambda _line: None)
    t0 = time.perf_counter()
    workdir = Path(workdir).resolve()
    _prepare(workdir)

    say(f"writing {days + 1} days of captures of a small mail enclave into {workdir / 'captures'}")
    scenario = enclave_scenario(
        workdir / "captures", days=days, seed=seed, rotate=DEMO_ROTATE, interval=DEMO_INTERVAL
    )
    toml = workdir / "flowdiff.toml"
    toml.write_text(_toml(scenario.config_dict(workdir)), encoding="utf-8")
    # the report's accept/deny commands carry --config of the file written here (issue 8, item 7)
    config = replace(demo_config(scenario, workdir, config_overrides), source=toml.resolve())

    say(f"collect: {len(scenario.files)} captures, {scenario.packets:,} packets")
    collected = collect([scenario.directory], config, all_files=True)
    if collected.errors:
        raise FlowdiffError("demo captures could not be collected: " + "; ".join(collected.errors))

    say(f"learn: the normal week {_day(scenario.start)} .. {_day(scenario.last_day)} (exclusive)")
    learned = learn(config, since=scenario.start, until=scenario.last_day, by="flowdiff demo")

    say(f"diff: {_day(scenario.last_day)} against the baseline")
    result = diff(config, since=scenario.last_day, until=scenario.last_day_end)
    out = DemoResult(workdir, config, scenario, collected, learned, result, mail_enabled=config.mail.enabled)
    out.findings, out.missing = _match(result, scenario)
    if result.report_id:
        _report(out, say)
    out.seconds = time.perf_counter() - t0
    return out


def _report(out: DemoResult, say: Progress) -> None:
    from flowdiff.deliver import deliver
    from flowdiff.mail import flush_outbox

    delivery = deliver(out.diff, out.config)
    out.report_dir, out.message_id = delivery.report_dir, delivery.message_id
    say(f"report: {out.report_dir}")
    if out.config.mail.enabled:
        out.outbox = flush_outbox(out.config)


def _prepare(workdir: Path) -> None:
    """Empty the demo's own files from ``workdir`` (created if missing); refuse a foreign directory."""
    if workdir.exists() and not workdir.is_dir():
        raise FlowdiffError(f"{workdir} is not a directory")
    if workdir.is_dir() and any(workdir.iterdir()) and not (workdir / MARKER).exists():
        raise FlowdiffError(
            f"{workdir} is not empty and was not made by `flowdiff demo`; choose another --workdir"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    for name in _OWNED:
        p = workdir / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    (workdir / MARKER).write_text("made by `flowdiff demo`: rebuilt from scratch on every run\n")


def _match(result: DiffResult, scenario: Scenario) -> tuple[list[Finding], list[ExpectedRow]]:
    expected = scenario.expected_rows()
    findings = []
    for table, df in result.rows.items():
        keys = result.keys[table]
        for rec in df.to_dict("records"):
            row = ExpectedRow(table, tuple((k, _plain(rec[k])) for k in keys))
            findings.append(
                Finding(
                    row=row,
                    anomaly=scenario.anomaly_of(row) if row in expected else None,
                    packets=int(rec["packets"]),
                    bytes=int(rec["bytes"]),
                    first_seen=rec["first_seen"],
                    reason=str(rec["reason"]),
                    number=int(rec["row"]),
                    incident=int(rec.get("incident", 0) or 0),
                )
            )
    order = {a.name: i for i, a in enumerate(scenario.anomalies)}
    findings.sort(key=lambda f: (order.get(f.anomaly.name, -1) if f.anomaly else -1, f.row.table, str(f.row)))
    found = {f.row for f in findings}
    missing = sorted(expected - found, key=str)
    return findings, missing


def _plain(v: Any) -> Any:
    """numpy scalars -> int/str, so rows compare equal to the scenario's expected keys."""
    if hasattr(v, "item"):
        v = v.item()
    return v


def _day(t: Any) -> str:
    return pd.Timestamp(t).strftime("%Y-%m-%d")


def _toml(doc: dict[str, Any]) -> str:
    """The demo config as TOML (a small writer: strings, ints, lists and one level of sub-tables)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = ["# written by `flowdiff demo`; try: flowdiff show services --config " + "<this file>", ""]
    for k, v in doc.items():
        if not isinstance(v, dict):
            lines.append(f"{k} = {value(v)}")
    for k, v in doc.items():
        if isinstance(v, dict) and not any(isinstance(x, dict) for x in v.values()):
            lines += ["", f"[{k}]"] + [f"{value(n)} = {value(x)}" for n, x in v.items()]
        elif isinstance(v, dict):
            for name, sub in v.items():
                lines += ["", f"[{k}.{name}]"] + [f"{n} = {value(x)}" for n, x in sub.items()]
    return "\n".join(lines) + "\n"
