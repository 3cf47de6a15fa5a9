"""Triage: the commands a human runs on a report's rows. accept (grey -> white: a new baseline version),
deny (grey -> black: a deny rule, always reported) and ignore (an allow rule with a wildcard).

These are the commands that can make a sensor blind, so they change exactly what they are asked to
change, print it, and refuse what would mute a whole table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from flowdiff.archive import load_report
from flowdiff.baseline import KeysAdded, add_keys, anti_join, coerce_keys, get_version
from flowdiff.config import Config, TableConfig
from flowdiff.errors import BaselineError
from flowdiff.netmap import NetworkMap
from flowdiff.rules import ANY, _compile, add_rule, parse_where, where_mask
from flowdiff.state import commit_state, load_state, lock

AcceptResult = KeysAdded  # what accept returns

__all__ = ["AcceptResult", "accept", "deny", "ignore"]


def _exact_key(tc: TableConfig, where: Mapping[str, Any]) -> pd.DataFrame | None:
    """A single key row when ``where`` names every key field with one exact value."""
    if set(where) != set(tc.keys):
        return None
    row: dict[str, Any] = {}
    for k in tc.keys:
        kind, value = _compile(k, where[k]) if not isinstance(where[k], list) else ("list", None)
        if kind not in ("eq", "label"):
            return None
        row[k] = [value]
    return pd.DataFrame(row)


def accept(
    config: Config,
    report_id: str | None = None,
    rows: Sequence[int] | None = None,
    table: str | None = None,
    where: Mapping[str, Any] | Sequence[str] | None = None,
    reason: str | None = None,
    by: str | None = None,
) -> KeysAdded:
    """Add rows to a new baseline version (who, when, why recorded).

    Either ``report_id`` (with ``rows``: the row numbers printed in the report; all rows when omitted), or
    ``table`` with ``where`` filters (rule syntax: exact, CIDR, range, label): the reported, not yet
    accepted keys that match; when ``where`` names every key field exactly, that key is added even if it
    was never reported. Accepted keys leave the reported state, so if a later version drops them again
    they are reported again."""
    nmap = NetworkMap(config.networks)
    picks: dict[str, pd.DataFrame] = {}
    with lock(config):
        state = load_state(config)
        version = get_version(config)
        if report_id is not None:
            rep = load_report(config, report_id)
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
        elif table is not None:
            tc = config.select_tables([table])[table]
            w = parse_where(tc, where)
            rep_df = state.reported(table, tc.keys)
            rep_df = rep_df[where_mask(rep_df, w, nmap)]
            if len(rep_df):
                picks[table] = rep_df
            else:
                exact = _exact_key(tc, w)
                if exact is None:
                    raise BaselineError(
                        f"no reported row of {table!r} matches {_where_text(w)}; to add a key that was never "
                        f"reported, give every key field exactly ({', '.join(tc.keys)})"
                    )
                picks[table] = coerce_keys(exact, tc.keys)
        else:
            raise BaselineError("accept needs a report id or a table with --where filters")
        if not picks:
            raise BaselineError("nothing to accept: no rows matched")

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
    return res

def _where_text(w: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in w.items()) or "(no filter)"



def _report_rows(
    config: Config, report_id: str, rows: Sequence[int] | None
) -> list[tuple[str, dict[str, Any]]]:
    rep = load_report(config, report_id)
    out: list[tuple[str, dict[str, Any]]] = []
    want = {int(r) for r in rows} if rows else None
    for t, df in rep.rows.items():
        for rec in df.to_dict(orient="records"):
            if want is None or int(rec["row"]) in want:
                out.append((t, {k: _plain(rec[k]) for k in rep.keys[t]}))
    if want:
        missing = sorted(want - {int(r) for _, df in rep.rows.items() for r in df["row"]})
        if missing:
            raise BaselineError(f"report {report_id} has no row {missing[0]}")
    if not out:
        raise BaselineError(f"report {report_id} has no rows")
    return out


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def deny(
    config: Config,
    report_id: str | None = None,
    rows: Sequence[int] | None = None,
    table: str | None = None,
    where: Mapping[str, Any] | Sequence[str] | None = None,
    *,
    name: str | None = None,
    reason: str | None = None,
    by: str | None = None,
) -> list[Any]:
    """Add deny rules: one per report row (every key field exact), or one from ``table`` + ``where``."""
    with lock(config):
        if report_id is not None:
            picked = _report_rows(config, report_id, rows)
            return [
                add_rule(
                    config,
                    "deny",
                    t,
                    m,
                    name=(f"{name}-{i}" if name and len(picked) > 1 else name),
                    comment=reason or f"from report {report_id}",
                    by=by,
                )  # fmt: skip
                for i, (t, m) in enumerate(picked, 1)
            ]
        if table is None:
            raise BaselineError("deny needs a report id or a table with --where filters")
        tc = config.select_tables([table])[table]
        w = parse_where(tc, where)
        if not w:
            raise BaselineError(
                "deny TABLE needs at least one --where field=value (a rule for every row is a mistake)"
            )
        return [add_rule(config, "deny", table, w, name=name, comment=reason, by=by)]


def ignore(
    config: Config,
    report_id: str | None = None,
    rows: Sequence[int] | None = None,
    table: str | None = None,
    where: Mapping[str, Any] | Sequence[str] | None = None,
    *,
    any_fields: Sequence[str] | None = None,
    name: str | None = None,
    reason: str | None = None,
    by: str | None = None,
) -> list[Any]:
    """Add allow rules with a wildcard. From report rows: the row's key with ``any_fields`` set to ``*``
    (default: the client side, ``client``/``src``/``src_mac``, so "any client of this service" is normal).
    From ``table`` + ``where``: the fields given, every other field ``*``."""
    with lock(config):
        if report_id is not None:
            out = []
            picked = _report_rows(config, report_id, rows)
            for i, (t, m) in enumerate(picked, 1):
                keys = list(m)
                wild = list(any_fields) if any_fields else [next((k for k in ("client", "src", "src_mac") if k in keys),
                                                                 keys[0])]  # fmt: skip
                bad = [f for f in wild if f not in keys]
                if bad:
                    raise BaselineError(f"table {t!r} has no key field {bad[0]!r} (keys: {', '.join(keys)})")
                match = {k: (ANY if k in wild else v) for k, v in m.items()}
                nm = f"{name}-{i}" if name and len(picked) > 1 else name
                out.append(add_rule(config, "allow", t, match, name=nm, comment=reason or f"from report {report_id}",
                                    by=by))  # fmt: skip
            return out
        if table is None:
            raise BaselineError("ignore needs a report id or a table with --where filters")
        tc = config.select_tables([table])[table]
        w = parse_where(tc, where)
        if not w:
            raise BaselineError(
                "ignore TABLE needs at least one --where field=value (use --where FIELD='*' for all)"
            )
        return [add_rule(config, "allow", table, w, name=name, comment=reason, by=by)]
