"""diff: new rows of the stored intervals against the current baseline and the rules.

INTERFACE (fixed; the report/mail stage relies on it; the owner fills in the rest):
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

# Columns every per-table frame of DiffResult.rows has, after the table's own key columns.
ROW_COLUMNS = (
    "interval_start",  # timestamp[us, UTC]: first interval the key was seen in this diff
    "first_seen",  # timestamp[us, UTC]
    "last_seen",  # timestamp[us, UTC]
    "packets",  # uint64, summed over the diffed intervals
    "bytes",  # uint64
    "reason",  # "new" or "deny-rule NAME"
    "neighbour",  # str: nearest accepted neighbour, "" when none
    "accept_cmd",  # str: exact `flowdiff accept ...` command for this row
    "deny_cmd",  # str: exact `flowdiff deny ...` command for this row
)


@dataclass
class DiffResult:
    """What one diff found. ``rows`` has an entry (maybe empty, full schema) for every diffed table."""

    report_id: str | None  # None when nothing new was found (no report is archived then)
    rows: dict[str, pd.DataFrame]  # table -> key columns + ROW_COLUMNS, sorted by bytes descending
    keys: dict[str, tuple[str, ...]]  # table -> its key columns, in order
    baseline_versions: dict[str, str]  # table -> baseline version id used
    since: pd.Timestamp | None  # span of the intervals diffed (UTC), None when there were none
    until: pd.Timestamp | None
    intervals: int = 0  # number of (table, interval) pairs diffed
    sensor: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(len(df) for df in self.rows.values())

    def counts(self) -> dict[str, int]:
        return {t: len(df) for t, df in self.rows.items() if len(df)}
