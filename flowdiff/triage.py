"""Triage: the commands a human runs on a report's rows. accept (grey -> white: a new baseline version),
deny (grey -> black: a deny rule, always reported) and ignore (an allow rule with a wildcard).

These are the commands that can make a sensor blind, so they change exactly what they are asked to
change, return it (the CLI prints it), and refuse what would mute a whole table:

* every value is checked against its field (:func:`flowdiff.vocab.parse_spec`), before anything is read;
* no rule, and no baseline key, that matches every possible row of a table is ever written
  (:class:`~flowdiff.errors.TooBroadError`); ``ignore`` asks which field to wildcard when it is not clear;
* a table without ``--where`` means every reported row of it only with ``all_rows=True``;
* ``dry_run=True`` computes the same change and writes nothing, and takes no lock;
* a missing baseline, report or rules folder is named (with a hint about ``--config``) before the lock is
  taken, so a command pasted into the wrong directory creates nothing there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flowdiff.archive import load_report, report_dir
from flowdiff.baseline import (
    Version,
    add_keys,
    anti_join,
    baseline_entry,
    baseline_rows_from,
    coerce_keys,
    get_version,
    read_baseline,
)
from flowdiff.canon import canon_values
from flowdiff.config import Config, TableConfig
from flowdiff.errors import BadValueError, BaselineError, ReportError, RulesError, TooBroadError
from flowdiff.exitcodes import ExitCode
from flowdiff.netmap import NetworkMap
from flowdiff.rules import (
    ANY,
    Rule,
    RuleDraft,
    _compile,
    add_rules,
    everything_tables,
    match_text,
    matches_everything,
    network_labels,
    parse_where,
    where_mask,
)
from flowdiff.state import commit_state, load_state, lock
from flowdiff.vocab import RANDOM_MAC, field_kind

__all__ = ["TriageResult", "AcceptResult", "accept", "deny", "ignore", "wildcard_fields"]


@dataclass
class TriageResult:
    """What one triage command changed (or, with ``dry_run``, would change).

    accept: ``version`` (None when nothing was added or in a dry run), ``parent``, ``added`` (table -> the
    key rows added) and ``already`` (table -> rows that were in the baseline already).
    deny / ignore: ``rules`` (as written to ``rules_path``)."""

    action: str  # "accept", "deny" or "ignore"
    dry_run: bool = False
    version: str | None = None
    parent: str | None = None
    added: dict[str, pd.DataFrame] = field(default_factory=dict)
    already: dict[str, int] = field(default_factory=dict)
    rules: list[Rule] = field(default_factory=list)
    rules_path: Path | None = None

    @property
    def total(self) -> int:
        """Keys added (accept) or rules written (deny, ignore)."""
        if self.action == "accept":
            return sum(len(df) for df in self.added.values())
        return len(self.rules)

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.OK


AcceptResult = TriageResult  # what accept returns (the name of earlier versions)


# ------------------------------------------------------------------ preconditions (checked before the lock)


def _hint(config: Config) -> str:
    if config.source is None:
        return " (no config file was read: did you mean --config FILE?)"
    return f" (config {config.source})"


def _require_baseline(config: Config) -> None:
    if load_state(config).version is None:
        raise BaselineError(
            f"no baseline in {config.baselines.absolute()}: run `flowdiff learn` first{_hint(config)}"
        )


def _require_report(config: Config, report_id: str) -> None:
    if not (report_dir(config, report_id) / "report.json").is_file():
        raise ReportError(f"no report {report_id} in {config.reports.absolute()}{_hint(config)}")


def _require_rules_folder(config: Config) -> None:
    folder = config.rules_path.parent.absolute()
    if not folder.is_dir():
        raise RulesError(
            f"no folder {folder} for the rules file {config.rules_path.name}: run `flowdiff learn` first"
            f"{_hint(config)}"
        )


@contextlib.contextmanager
def _changing(config: Config, dry_run: bool) -> Iterator[None]:
    """The baselines lock, taken only to change something and only where the baselines already are:
    a dry run, or a rule written next to a config before any learn, creates no lock file."""
    if dry_run or not config.baselines.is_dir():
        yield
        return
    with lock(config):
        yield


def _table_filter(
    config: Config,
    action: str,
    report_id: str | None,
    table: str | None,
    where: Mapping[str, Any] | Sequence[str] | None,
    all_rows: bool,
    nmap: NetworkMap,
) -> tuple[TableConfig | None, dict[str, Any]]:
    """The table and its checked ``--where`` filters; refuses a table without filters unless ``all_rows``."""
    if report_id is None and table is None:
        raise BaselineError(f"{action} needs a report id, or a table with --where FIELD=VALUE or --all-rows")
    if table is None:
        if all_rows:
            raise BaselineError("--all-rows goes with a table, not with a report id")
        return None, {}
    tc = config.select_tables([table])[table]
    w = parse_where(tc, where, nmap)
    if report_id is not None:
        return tc, w
    if all_rows and w:
        raise BaselineError(f"--all-rows takes every reported row of {table}: give it without --where")
    if not w and not all_rows:
        raise BaselineError(
            f"{action} {table} without --where would take every reported row of table {table}: "
            f"give --where FIELD=VALUE, or --all-rows to mean every reported row"
        )
    return tc, w


# ------------------------------------------------------------------ accept


def accept(
    config: Config,
    report_id: str | None = None,
    rows: Sequence[int] | None = None,
    table: str | None = None,
    where: Mapping[str, Any] | Sequence[str] | None = None,
    reason: str | None = None,
    by: str | None = None,
    *,
    all_rows: bool = False,
    dry_run: bool = False,
    incident: int | None = None,
) -> TriageResult:
    """Add rows to a new baseline version (who, when, why recorded).

    ``incident`` (with ``report_id``, without ``rows``): exactly the rows of that incident of the report.

    Either ``report_id`` (with ``rows``: the row numbers printed in the report; all rows when omitted), or
    ``table`` with ``where`` filters (rule syntax: exact, CIDR, range, label): the reported, not yet
    accepted keys that match; when ``where`` names every key field exactly, that key (canonicalised like
    the table's rows) is added even if it was never reported. ``table`` with ``all_rows`` takes every
    reported row of it. Accepted keys leave the reported state, so if a later version drops them again
    they are reported again."""
    nmap = NetworkMap(config.networks)
    rows = incident_rows(config, report_id, incident, rows) if incident is not None else rows
    tc, w = _table_filter(config, "accept", report_id, table, where, all_rows, nmap)
    if tc is not None and report_id is None and w and matches_everything(w, tc.keys, config.networks):
        raise TooBroadError(
            "accept",
            tc.name,
            match_text(w, tc.keys),
            "refused: use --all-rows to accept every reported row of the table",
        )
    _require_baseline(config)
    if report_id is not None:
        _require_report(config, report_id)
    with _changing(config, dry_run):
        state = load_state(config)
        version = get_version(config)
        if report_id is not None:
            picks = _report_picks(config, report_id, rows, table)
        else:
            assert tc is not None
            picks = _table_picks(config, tc, w, state.reported(tc.name, tc.keys), nmap)
        if not picks:
            return TriageResult("accept", dry_run=dry_run, parent=version.id)
        for t, df in picks.items():
            _guard_keys(config, config.select_tables([t])[t], df)
        if dry_run:
            added, already = _fresh_keys(config, version, picks)
            return TriageResult("accept", dry_run=True, parent=version.id, added=added, already=already)
        reported_updates: dict[str, tuple[Sequence[str], pd.DataFrame]] = {}
        for t, df in picks.items():
            keys = list(config.select_tables([t])[t].keys)
            rep_state = state.reported(t, keys)
            if len(rep_state):
                keep = anti_join(rep_state, coerce_keys(df, keys), keys)
                if len(keep) != len(rep_state):
                    reported_updates[t] = (keys, keep)
        why = reason + (f" (report {report_id})" if report_id else "") if reason else None
        res = add_keys(config, version, picks, action="accept", reason=why, by=by)
        if res.version is None:
            if reported_updates:
                commit_state(config, state, reported=reported_updates)
        else:
            commit_state(config, state, version=res.version, reported=reported_updates)
    return TriageResult(
        "accept", version=res.version, parent=res.parent, added=res.added, already=res.already
    )


def incident_rows(
    config: Config, report_id: str | None, incident: int, rows: Sequence[int] | None = None
) -> list[int]:
    """The row numbers of incident ``incident`` of a report (``flowdiff accept REPORT_ID --incident N``)."""
    if report_id is None:
        raise BaselineError("--incident needs a REPORT_ID (the incident numbers are the report's)")
    if rows:
        raise BaselineError("give --incident or row numbers, not both")
    _require_report(config, report_id)
    incidents = load_report(config, report_id).incidents
    for inc in incidents:
        if inc.number == int(incident):
            return sorted(r for _, r in inc.rows)
    have = f"incidents 1-{len(incidents)}" if incidents else "no incidents (made before incidents existed)"
    raise BaselineError(f"report {report_id} has no incident {incident} (it has {have})")


def _report_picks(
    config: Config, report_id: str, rows: Sequence[int] | None, table: str | None
) -> dict[str, pd.DataFrame]:
    rep = load_report(config, report_id)
    picks: dict[str, pd.DataFrame] = {}
    for t, df in rep.rows.items():
        if rows:
            df = df[df["row"].isin([int(r) for r in rows])]
        if table is not None and t != table:
            continue
        if len(df):
            picks[t] = df
    if rows:
        found = {int(r) for df in picks.values() for r in df["row"]}
        missing = [r for r in rows if int(r) not in found]
        if missing:
            raise BaselineError(f"report {report_id} has no row {missing[0]}")
    if not picks:
        raise BaselineError(
            f"nothing to accept: report {report_id} has no rows" + (f" of {table}" if table else "")
        )
    return picks


def _table_picks(
    config: Config, tc: TableConfig, w: Mapping[str, Any], reported: pd.DataFrame, nmap: NetworkMap
) -> dict[str, pd.DataFrame]:
    """The reported rows matching ``w`` (all with no filter); else the one key ``w`` names exactly."""
    if w:
        reported = reported[where_mask(reported, w, nmap)]
    if len(reported):
        return {tc.name: reported}
    if not w:
        return {}  # --all-rows and nothing waits: nothing to add
    exact = _exact_key(config, tc, w, nmap)
    if exact is None:
        raise BaselineError(
            f"no reported row of {tc.name!r} matches {_where_text(w)}; to add a key that was never "
            f"reported, give every key field exactly ({', '.join(tc.keys)})"
        )
    return {tc.name: exact}


def _exact_key(
    config: Config, tc: TableConfig, where: Mapping[str, Any], nmap: NetworkMap
) -> pd.DataFrame | None:
    """The key row ``where`` names when it gives every key field one exact value, canonicalised the way
    learn and diff canonicalise the table's rows (a DHCP address becomes ``dhcp``, an IPv6 address its
    prefix), so that the key added is one a row can have. A key that every row has is refused."""
    if set(where) != set(tc.keys):
        return None
    labels = network_labels(nmap)
    row: dict[str, Any] = {}
    for k in tc.keys:
        v = where[k]
        if isinstance(v, list):
            return None
        kind, value = _compile(k, v, labels)
        if kind == "label":
            if value not in tc.collapse:
                raise BadValueError(
                    f"--where {k}={v}",
                    k,
                    v,
                    f"table {tc.name} does not collapse label {value} "
                    "(its rows hold addresses): give an address",
                )
        elif (
            kind == "cidr"
            and field_kind(k) == "address"
            and value.version == 6
            and value.prefixlen == tc.ipv6_prefix
        ):
            value = str(value)
        elif kind != "eq":
            return None
        if value == RANDOM_MAC and field_kind(k) == "mac" and not tc.collapse_random_macs:
            raise BadValueError(f"--where {k}={v}", k, v, f"table {tc.name} does not collapse random MACs")
        row[k] = [value]
    df = coerce_keys(pd.DataFrame(row), tc.keys)
    for k in tc.keys:
        if field_kind(k) in ("address", "mac"):
            df[k] = canon_values(k, df[k].to_numpy(dtype=object), tc, nmap)
    return df


def _guard_keys(config: Config, tc: TableConfig, df: pd.DataFrame) -> None:
    """Refuse baseline keys that every row of the table has: a collapse label that covers the whole
    address space (``internet`` = 0.0.0.0/0 and ::/0), or ``other`` when there are no networks. Only
    labels can do that (one address, port or MAC is never every value), so only they are looked at."""
    labels = network_labels(config.networks)
    covering: dict[str, set[Any]] = {}
    for k in tc.keys:
        if field_kind(k) not in ("address", "label"):
            return
        values = [v for v in pd.unique(df[k]) if v in labels]
        covering[k] = {v for v in values if matches_everything({k: v}, [k], config.networks)}
        if not covering[k]:
            return
    hit = np.ones(len(df), dtype=bool)
    for k, vals in covering.items():
        hit &= df[k].isin(list(vals)).to_numpy()
    if hit.any():
        key = {k: _plain(df[k].to_numpy()[hit][0]) for k in tc.keys}
        raise TooBroadError(
            "accept",
            tc.name,
            match_text(key, tc.keys),
            "refused: every row of the table has this key, the table would be muted",
        )


def _fresh_keys(
    config: Config, version: Version, picks: Mapping[str, pd.DataFrame]
) -> tuple[dict[str, pd.DataFrame], dict[str, int]]:
    """What :func:`flowdiff.baseline.add_keys` would add, computed without writing (``dry_run``)."""
    added: dict[str, pd.DataFrame] = {}
    already: dict[str, int] = {}
    for t, df in picks.items():
        tc = config.select_tables([t])[t]
        keys = list(tc.keys)
        _, entry = baseline_entry(config, tc, version)
        new_rows = baseline_rows_from(df, keys)
        base = read_baseline(config, entry, columns=keys).to_pandas()
        fresh = anti_join(new_rows, base, keys)
        already[t] = len(new_rows) - len(fresh)
        if len(fresh):
            added[t] = fresh[keys].reset_index(drop=True)
    return added, already


def _where_text(w: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in w.items()) or "(no filter)"


# ------------------------------------------------------------------ deny and ignore


def _report_rows(
    config: Config, report_id: str, rows: Sequence[int] | None
) -> list[tuple[str, int, dict[str, Any]]]:
    """``(table, row number, key)`` of the report rows asked for (all when ``rows`` is empty)."""
    rep = load_report(config, report_id)
    out: list[tuple[str, int, dict[str, Any]]] = []
    want = {int(r) for r in rows} if rows else None
    for t, df in rep.rows.items():
        for rec in df.to_dict(orient="records"):
            if want is None or int(rec["row"]) in want:
                out.append((t, int(rec["row"]), {k: _plain(rec[k]) for k in rep.keys[t]}))
    if want:
        missing = sorted(want - {int(r) for _, df in rep.rows.items() for r in df["row"]})
        if missing:
            raise BaselineError(f"report {report_id} has no row {missing[0]}")
    if not out:
        raise BaselineError(f"report {report_id} has no rows")
    return out


def _reported_rows(config: Config, tc: TableConfig) -> list[dict[str, Any]]:
    """Keys of ``tc`` reported and not accepted yet (``--all-rows``)."""
    df = load_state(config).reported(tc.name, tc.keys)
    return [
        {k: _plain(v) for k, v in zip(tc.keys, rec, strict=True)}
        for rec in df[list(tc.keys)].itertuples(index=False, name=None)
    ]


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _name(name: str | None, i: int, n: int) -> str | None:
    return f"{name}-{i}" if name and n > 1 else name


def _guard(config: Config, draft: RuleDraft, hint: str = "") -> None:
    for t in everything_tables(config, draft.table, draft.match):
        raise TooBroadError(draft.kind, t, match_text(draft.match, config.tables[t].keys), hint)


def _write(
    config: Config, action: str, drafts: list[RuleDraft], by: str | None, dry_run: bool
) -> TriageResult:
    made = add_rules(config, drafts, by=by, dry_run=dry_run) if drafts else []
    return TriageResult(action, dry_run=dry_run, rules=made, rules_path=config.rules_path)


def deny(
    config: Config,
    report_id: str | None = None,
    rows: Sequence[int] | None = None,
    table: str | None = None,
    where: Mapping[str, Any] | Sequence[str] | None = None,
    *,
    all_rows: bool = False,
    name: str | None = None,
    reason: str | None = None,
    by: str | None = None,
    dry_run: bool = False,
    incident: int | None = None,
) -> TriageResult:
    """Add deny rules: one per report row (every key field exact), one per reported row of ``table``
    (``all_rows``), or one from ``table`` + ``where``. A rule matching every row of a table is refused.
    ``incident`` (with ``report_id``): one rule per row of that incident of the report."""
    nmap = NetworkMap(config.networks)
    rows = incident_rows(config, report_id, incident, rows) if incident is not None else rows
    tc, w = _table_filter(config, "deny", report_id, table, where, all_rows, nmap)
    if report_id is not None:
        _require_report(config, report_id)
    # reports are immutable and the rules do not depend on the diff state: the rules are made and
    # checked before the lock, which is taken only to write them
    if report_id is not None:
        picked = _report_rows(config, report_id, rows)
        drafts = [
            RuleDraft("deny", t, m, _name(name, i, len(picked)), reason or f"from report {report_id}")
            for i, (t, _, m) in enumerate(picked, 1)
        ]
    elif all_rows:
        assert tc is not None
        keys = _reported_rows(config, tc)
        drafts = [
            RuleDraft("deny", tc.name, m, _name(name, i, len(keys)), reason or "a reported row")
            for i, m in enumerate(keys, 1)
        ]
    else:
        assert tc is not None
        drafts = [RuleDraft("deny", tc.name, w, name, reason)]
    for d in drafts:
        _guard(config, d)
    _require_rules_folder(config)
    with _changing(config, dry_run):
        return _write(config, "deny", drafts, by, dry_run)


def wildcard_fields(table: str, keys: Sequence[str], given: Sequence[str] | None = None) -> list[str]:
    """The fields ``ignore`` sets to ``*`` on a report row: ``given``, else the one client-side field
    (``client``: "any client of this service"), else the one address or MAC field; when several could be
    meant (``pairs``: src or dst?) the caller must say which (``--wildcard FIELD``)."""
    if given:
        bad = [f for f in given if f not in keys]
        if bad:
            raise RulesError(f"table {table!r} has no key field {bad[0]!r} (keys: {', '.join(keys)})")
        return list(given)
    client = [k for k in keys if k.split("_")[0] == "client" and field_kind(k) != "mac"]
    if len(client) == 1:
        return client
    ends = [k for k in keys if field_kind(k) in ("address", "net", "label", "mac")]
    if len(ends) == 1:
        return ends
    cands = client or ends or list(keys)
    raise RulesError(
        f"which field of table {table} may take any value? give --wildcard FIELD (one of {', '.join(cands)})"
    )


def ignore(
    config: Config,
    report_id: str | None = None,
    rows: Sequence[int] | None = None,
    table: str | None = None,
    where: Mapping[str, Any] | Sequence[str] | None = None,
    *,
    wildcard: Sequence[str] | None = None,
    any_fields: Sequence[str] | None = None,
    all_rows: bool = False,
    name: str | None = None,
    reason: str | None = None,
    by: str | None = None,
    dry_run: bool = False,
) -> TriageResult:
    """Add allow rules with a wildcard. From report rows (or every reported row of ``table`` with
    ``all_rows``): the row's key with the ``wildcard`` fields set to ``*`` (default: see
    :func:`wildcard_fields`). From ``table`` + ``where``: the fields given, every other field ``*``.
    A rule that would allow every row of a table is refused: it would mute the table forever."""
    wild = list(wildcard or any_fields or [])
    nmap = NetworkMap(config.networks)
    tc, w = _table_filter(config, "ignore", report_id, table, where, all_rows, nmap)
    if report_id is not None:
        _require_report(config, report_id)
    drafts: list[RuleDraft] = []
    if report_id is not None or all_rows:
        if report_id is not None:
            picked = _report_rows(config, report_id, rows)
        else:
            assert tc is not None
            picked = [(tc.name, 0, m) for m in _reported_rows(config, tc)]
        for i, (t, row, m) in enumerate(picked, 1):
            fields = wildcard_fields(t, list(m), wild)
            match = {k: (ANY if k in fields else v) for k, v in m.items()}
            src = f"report {report_id}" if report_id else "a reported row"
            d = RuleDraft("allow", t, match, _name(name, i, len(picked)), reason or f"from {src}")
            one = f"flowdiff accept {report_id} {row}" if report_id else f"flowdiff accept {t} --where ..."
            one += config.config_arg  # pasted from another folder, it must act on this site
            _guard(config, d, f"refused: it would mute the table; to make this row normal: {one}")
            drafts.append(d)
    else:
        assert tc is not None
        match = {k: v for k, v in w.items() if k not in wild}
        drafts.append(RuleDraft("allow", tc.name, match, name, reason))
        _guard(config, drafts[0])
    _require_rules_folder(config)
    with _changing(config, dry_run):
        return _write(config, "ignore", drafts, by, dry_run)
