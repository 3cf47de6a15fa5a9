"""The diff state: which baseline version is current, which intervals were diffed, which keys reported.

Layout under ``config.baselines`` (see ``baselines/README.md``)::

    state/<table>-diffed-*.parquet     intervals already diffed (or learned from), with their data token
    state/<table>-reported-*.parquet   keys already reported, with reason and report id
    CURRENT.json                       the one mutable file, replaced atomically: the current version and
                                       the state files above
    .lock                              serialises learn, accept, rollback, diff and the triage commands

Everything that changes the current version and the diff state together is one ``CURRENT.json`` replace,
so a crash leaves either the old or the new state, never a mixture. The lock is an flock: a lock file
left behind by a killed process is never state and never blocks a later command.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from flowdiff.config import Config
from flowdiff.durable import atomic_write_parquet, atomic_write_text, file_lock
from flowdiff.errors import BaselineError
from flowdiff.schema import INTERVAL, TIMESTAMP, key_type
from flowdiff.vocab import now_iso

CURRENT = "CURRENT.json"
LOCK = ".lock"
REPORTED_COLUMNS: dict[str, pa.DataType] = {
    "reason": pa.string(),
    "first_reported": TIMESTAMP,  # interval in which the key was first reported
    "last_reported": TIMESTAMP,  # interval of the latest report (re-arm counts from here)
    "report_id": pa.string(),
    "first_seen": TIMESTAMP,
    "last_seen": TIMESTAMP,
    "packets": pa.uint64(),
    "bytes": pa.uint64(),
}

__all__ = ["CURRENT", "REPORTED_COLUMNS", "State", "reported_schema", "load_state", "commit_state", "lock"]


def lock(config: Config, wait: float = 60.0) -> contextlib.AbstractContextManager[None]:
    """Serialise every change of the baselines directory (learn, accept, rollback, diff, triage)."""
    return file_lock(config.baselines / LOCK, wait=wait, what="baselines")


@dataclass
class State:
    """The current version and, per table, the diff state files (relative to config.baselines)."""

    root: Path
    version: str | None = None
    files: dict[str, dict[str, str]] = field(default_factory=dict)  # table -> {"diffed": f, "reported": f}
    last_report: str | None = None

    def _read(self, table: str, what: str) -> pa.Table | None:
        rel = self.files.get(table, {}).get(what)
        if not rel:
            return None
        try:
            return pq.read_table(self.root / rel)
        except (OSError, pa.ArrowInvalid) as e:
            raise BaselineError(f"{self.root / rel}: unreadable diff state: {e}") from None

    def diffed(self, table: str) -> dict[pd.Timestamp, str]:
        """Interval start -> data token at the time it was diffed (or learned from)."""
        t = self._read(table, "diffed")
        if t is None:
            return {}
        df = t.to_pandas(coerce_temporal_nanoseconds=False)
        return dict(zip(df[INTERVAL], df["token"], strict=True))

    def reported(self, table: str, keys: Sequence[str]) -> pd.DataFrame:
        t = self._read(table, "reported")
        schema = reported_schema(keys)
        if t is None or list(t.schema.names) != list(schema.names):
            return schema.empty_table().to_pandas(coerce_temporal_nanoseconds=False)
        return t.to_pandas(coerce_temporal_nanoseconds=False)


def reported_schema(keys: Sequence[str]) -> pa.Schema:
    fields = [pa.field(k, key_type(k), nullable=False) for k in keys]
    fields += [pa.field(c, t, nullable=False) for c, t in REPORTED_COLUMNS.items()]
    return pa.schema(fields)


def load_state(config: Config) -> State:
    path = config.baselines / CURRENT
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return State(config.baselines)
    except (OSError, ValueError) as e:
        raise BaselineError(f"{path}: unreadable: {e}") from None
    return State(config.baselines, raw.get("version"), raw.get("files", {}), raw.get("last_report"))


def commit_state(
    config: Config,
    state: State,
    *,
    version: str | None = None,
    diffed: Mapping[str, Mapping[pd.Timestamp, str]] | None = None,
    reported: Mapping[str, tuple[Sequence[str], pd.DataFrame]] | None = None,
    last_report: str | None = None,
) -> State:
    """Write the changed state tables as new files, then replace CURRENT.json in one atomic step.
    Call with the lock held. Unreferenced state files are removed afterwards."""
    files = {t: dict(v) for t, v in state.files.items()}
    tag = uuid.uuid4().hex[:12]
    for table, tokens in (diffed or {}).items():
        items = sorted(tokens.items())
        t = pa.table(
            {
                INTERVAL: pa.array([k for k, _ in items], type=TIMESTAMP),
                "token": pa.array([v for _, v in items], pa.string()),
            }
        )
        rel = f"state/{table}-diffed-{tag}.parquet"
        atomic_write_parquet(config.baselines / rel, t)
        files.setdefault(table, {})["diffed"] = rel
    for table, (keys, df) in (reported or {}).items():
        schema = reported_schema(keys)
        t = pa.Table.from_pandas(df[list(schema.names)], preserve_index=False).cast(schema)
        rel = f"state/{table}-reported-{tag}.parquet"
        atomic_write_parquet(config.baselines / rel, t)
        files.setdefault(table, {})["reported"] = rel
    new = State(
        config.baselines,
        version if version is not None else state.version,
        files,
        last_report if last_report is not None else state.last_report,
    )
    doc = {
        "version": new.version,
        "files": new.files,
        "last_report": new.last_report,
        "updated_at": now_iso(),
    }
    atomic_write_text(config.baselines / CURRENT, json.dumps(doc, indent=1) + "\n")
    _gc_state(config, new)
    return new


def _gc_state(config: Config, state: State) -> None:
    keep = {f for v in state.files.values() for f in v.values()}
    d = config.baselines / "state"
    if not d.is_dir():
        return
    for p in d.glob("*.parquet"):
        if f"state/{p.name}" not in keep:
            with contextlib.suppress(OSError):
                p.unlink()
