"""incidents: a report's new rows grouped by what explains them, and the stations table's words.

An admin reads incidents, not rows: one new device makes a ``hosts`` row, ``pairs``, a ``services`` row,
``link`` rows and a ``stations`` row, all of them one event. Rows are joined when they share a *new
entity*: an address or a MAC that no baseline of any table knows (in any column of its kind), or a new
service (server, protocol and port that no services-like baseline knows); all hits of one deny rule are
one incident too. A row that shares nothing is an incident of its own. The groups are the connected
components of the rows-entities graph (label propagation over numpy arrays, not Python per row), numbered
in a fixed order: deny-rule hits first, then new stations, then new services on the config's own
networks, then the rest, each by first seen.

Everything here is pure: ``group_incidents`` takes the rows and what the baselines know (``Known``, made
by ``known_entities`` from baseline batches), so a notebook can call it on ``load_report(...).rows``.
The stations table's rows get arpwatch's words (``station_reasons``) before diff remembers them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from flowdiff.schema import ADDRESS_KEYS, STATIONS
from flowdiff.vocab import format_value

__all__ = [
    "Incident",
    "Known",
    "NEW_STATION",
    "CHANGED_MAC",
    "NEW_ADDRESS",
    "STATION_REASONS",
    "candidates",
    "known_entities",
    "group_incidents",
    "own_networks",
    "station_reasons",
]

NEW_STATION = "new station"  # neither the address nor the MAC is known
CHANGED_MAC = "changed ethernet address"  # a known address with another MAC (the ARP-spoofing sign)
NEW_ADDRESS = "new address for a known MAC"
STATION_REASONS = (NEW_STATION, CHANGED_MAC, NEW_ADDRESS)
MAC_KEYS = ("src_mac", "dst_mac")
_KIND_ORDER = {"deny": 0, "station": 1, "service": 2, "other": 3}
_LABELS = frozenset({"internet", "other", "random"})  # canonical labels are never entities


@dataclass
class Known:
    """Entity values a set of baselines knows (or, as ``candidates``, that new rows carry)."""

    addresses: set[str] = field(default_factory=set)
    macs: set[str] = field(default_factory=set)
    services: set[tuple[str, int, int]] = field(default_factory=set)  # (server, proto, port); proto -1: any
    ethertypes: set[int] = field(default_factory=set)


@dataclass(frozen=True)
class Incident:
    """One cause: its number in the report, a title in words, its rows as (table, row number)."""

    number: int
    title: str
    kind: str  # "deny", "station", "service" or "other": the ordering class
    rows: tuple[tuple[str, int], ...]
    accept_cmd: str = ""
    deny_cmd: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "incident": self.number,
            "title": self.title,
            "kind": self.kind,
            "rows": [{"table": t, "row": r} for t, r in self.rows],
            "accept_cmd": self.accept_cmd,
            "deny_cmd": self.deny_cmd,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Incident:
        return cls(
            number=int(obj["incident"]),
            title=str(obj["title"]),
            kind=str(obj.get("kind", "other")),
            rows=tuple((str(r["table"]), int(r["row"])) for r in obj["rows"]),
            accept_cmd=str(obj.get("accept_cmd", "")),
            deny_cmd=str(obj.get("deny_cmd", "")),
        )


# ---------------------------------------------------------------- what is an entity


def _is_mac_entity(values: pd.Series) -> np.ndarray:
    """Unicast MAC text (multicast and broadcast MACs, ``random`` are shared by unrelated senders): the
    group bit is the lowest bit of the first octet, i.e. the second hex digit is odd."""
    text = values.astype(str)
    unicast = (text.str.len() == 17) & ~text.str[1].str.lower().isin(list("13579bdf"))
    return (unicast & (text != "00:00:00:00:00:00")).to_numpy()  # all zero: a link without MACs


def _is_address_entity(values: pd.Series, labels: frozenset[str]) -> np.ndarray:
    text = values.astype(str)
    return ((text.str.contains(r"[.:]", regex=True)) & ~text.isin(labels)).to_numpy()


def _service_columns(keys: Sequence[str]) -> tuple[str, str | None, str] | None:
    if "server" in keys and "service_port" in keys:
        return "server", ("proto" if "proto" in keys else None), "service_port"
    return None


def candidates(
    rows: Mapping[str, pd.DataFrame], keys: Mapping[str, Sequence[str]], labels: Iterable[str] = ()
) -> Known:
    """The entity values the new rows carry (what ``known_entities`` has to look up)."""
    lab = _LABELS | frozenset(labels)
    out = Known()
    for table, df in rows.items():
        if not len(df):
            continue
        k = list(keys[table])
        for col in (c for c in k if c in ADDRESS_KEYS):
            v = df[col]
            out.addresses.update(_objects(v[_is_address_entity(v, lab)]))
        for col in (c for c in k if c in MAC_KEYS):
            v = df[col]
            out.macs.update(_objects(v[_is_mac_entity(v)]))
        if "ethertype" in k:
            out.ethertypes.update(int(x) for x in pd.unique(df["ethertype"]))
        svc = _service_columns(k)
        if svc is not None:
            cols = [c for c in svc if c is not None]  # a flood's rows share few services
            out.services.update(_service_tuples(df[cols].drop_duplicates(), svc))
    return out


def _service_tuples(df: pd.DataFrame, svc: tuple[str, str | None, str]) -> list[tuple[str, int, int]]:
    server, proto, port = svc
    pr = df[proto].astype(int).to_numpy() if proto else np.full(len(df), -1)
    return list(zip(_objects(df[server]), pr.tolist(), df[port].astype(int).tolist(), strict=True))


def _objects(values: pd.Series) -> np.ndarray:
    """The values as Python strings in one conversion: iterating a Series of Arrow-backed strings makes
    each one separately (1M new rows of a flood: 1 s a column instead of 0.3)."""
    return values.astype(str).to_numpy(dtype=object)


# ---------------------------------------------------------------- what the baselines know


def _unique_text(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    u = pc.unique(col)
    if pa.types.is_dictionary(u.type):
        u = u.cast(u.type.value_type)
    return u


def _baseline_services(
    t: pa.Table, svc: tuple[str, str | None, str], servers: pa.Array
) -> set[tuple[str, int, int]]:
    """The distinct (server, proto, port) of a baseline batch whose server is wanted (proto -1 where the
    table has none). Distinct in Arrow first: a baseline's millions of keys share a few services."""
    server, proto, port = svc
    s = t[server]
    if pa.types.is_dictionary(s.type):
        s = s.cast(s.type.value_type)
    cols = {
        "server": s,
        "proto": t[proto].cast(pa.int64()) if proto else pa.repeat(pa.scalar(-1, pa.int64()), t.num_rows),
        "port": t[port].cast(pa.int64()),
    }
    sub = pa.table(cols).filter(pc.is_in(s, value_set=servers))
    if not sub.num_rows:
        return set()
    d = sub.group_by(list(cols), use_threads=False).aggregate([]).to_pydict()
    return set(zip(d["server"], d["proto"], d["port"], strict=True))


def known_entities(
    wanted: Known,
    baselines: Iterable[tuple[Sequence[str], Callable[[list[str]], Iterable[pa.Table]]]],
) -> Known:
    """The values of ``wanted`` that the baselines know. ``baselines`` gives, per baseline table, its key
    columns and a function returning its batches of the columns asked for (``baseline.iter_baseline``).
    Only distinct values of each batch are compared (``pyarrow.compute``), so a 10M-key baseline costs a
    few vectorised passes, and memory stays one batch."""
    found = Known()
    addr_set = pa.array(sorted(wanted.addresses), pa.string())
    mac_set = pa.array(sorted(wanted.macs), pa.string())
    servers = pa.array(sorted({s for s, _, _ in wanted.services}), pa.string())
    for keys, batches in baselines:
        keys = list(keys)
        addr_cols = [c for c in keys if c in ADDRESS_KEYS] if len(addr_set) else []
        mac_cols = [c for c in keys if c in MAC_KEYS] if len(mac_set) else []
        eth = ["ethertype"] if "ethertype" in keys and wanted.ethertypes else []
        svc = _service_columns(keys) if len(servers) else None
        svc_cols = [c for c in (svc or ()) if c is not None]
        cols = list(dict.fromkeys([*addr_cols, *mac_cols, *eth, *svc_cols]))
        if not cols:
            continue
        for t in batches(cols):
            if not t.num_rows:
                continue
            for c in addr_cols:
                u = _unique_text(t[c])
                found.addresses.update(u.filter(pc.is_in(u, value_set=addr_set)).to_pylist())
            for c in mac_cols:
                u = _unique_text(t[c])
                found.macs.update(u.filter(pc.is_in(u, value_set=mac_set)).to_pylist())
            if eth:
                found.ethertypes.update(
                    int(x) for x in pc.unique(t["ethertype"]).to_pylist() if x in wanted.ethertypes
                )
            if svc is not None:
                got = _baseline_services(t, svc, servers)
                if got:
                    found.services.update(got & wanted.services)
                    # a table without proto (-1) and one with it know the same (server, port)
                    ports = {(s, p) for s, _, p in got}
                    found.services.update(
                        w
                        for w in wanted.services
                        if (w[0], w[2]) in ports and -1 in (w[1], (-1 if svc[1] is None else 0))
                    )
    return found


# ---------------------------------------------------------------- stations


def station_reasons(rows: pd.DataFrame, baseline: Iterable[pa.Table]) -> pd.DataFrame:
    """The stations table's new rows with arpwatch's words instead of ``new``: ``new station`` (neither
    the address nor the MAC is in the stations baseline), ``changed ethernet address`` (the address is,
    with another MAC) and ``new address for a known MAC``. ``baseline`` yields batches with ``src_mac``
    and ``src``. Deny-rule rows keep their reason."""
    if not len(rows):
        return rows
    new = (rows["reason"] == "new").to_numpy()
    if not new.any():
        return rows
    addrs = pa.array(sorted(set(rows.loc[new, "src"].astype(str))), pa.string())
    macs = pa.array(sorted(set(rows.loc[new, "src_mac"].astype(str))), pa.string())
    known_a: set[str] = set()
    known_m: set[str] = set()
    for t in baseline:
        if not t.num_rows:
            continue
        ua, um = _unique_text(t["src"]), _unique_text(t["src_mac"])
        known_a.update(ua.filter(pc.is_in(ua, value_set=addrs)).to_pylist())
        known_m.update(um.filter(pc.is_in(um, value_set=macs)).to_pylist())
    a_known = rows["src"].astype(str).isin(known_a).to_numpy()
    m_known = rows["src_mac"].astype(str).isin(known_m).to_numpy()
    words = np.where(a_known, CHANGED_MAC, np.where(m_known, NEW_ADDRESS, NEW_STATION))
    out = rows.copy()
    out["reason"] = np.where(new, words, out["reason"].to_numpy(dtype=object))
    return out


# ---------------------------------------------------------------- grouping


def _components(n_rows: int, row_of: np.ndarray, ent_of: np.ndarray, n_ent: int) -> np.ndarray:
    """Connected component (smallest row index in it) of each row of a bipartite rows-entities graph:
    minimum-label propagation, vectorised; converges in as many rounds as the longest chain."""
    label = np.arange(n_rows, dtype=np.int64)
    if not len(row_of):
        return label
    while True:
        ent = np.full(n_ent, n_rows, dtype=np.int64)
        np.minimum.at(ent, ent_of, label[row_of])
        new = label.copy()
        np.minimum.at(new, row_of, ent[ent_of])
        if np.array_equal(new, label):
            return label
        label = new


def _own(address: str, own_networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        a = ipaddress.ip_address(address)
    except ValueError:
        try:
            n = ipaddress.ip_network(address, strict=False)
        except ValueError:
            return False
        return any(n.version == o.version and n.subnet_of(o) for o in own_networks)  # type: ignore[arg-type]
    return any(a.version == o.version and a in o for o in own_networks)


def own_networks(networks: Mapping[str, str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The config's own networks: every ``[networks]`` entry but a default route (``0.0.0.0/0``), and
    none labelled like a default route."""
    default = {lab for cidr, lab in networks.items() if cidr.endswith("/0")}
    return [
        ipaddress.ip_network(c, strict=False)
        for c, lab in networks.items()
        if not c.endswith("/0") and lab not in default
    ]


def group_incidents(
    rows: Mapping[str, pd.DataFrame],
    keys: Mapping[str, Sequence[str]],
    known: Known,
    *,
    networks: Mapping[str, str] | None = None,
    report_id: str | None = None,
    config_arg: str = "",
) -> list[Incident]:
    """The incidents of a report's rows (``DiffResult.rows``: each frame with its key columns, ``reason``,
    ``first_seen`` and ``row``), numbered in order: deny-rule hits, new stations, new services on own
    networks, the rest; each class by first seen, then row number. ``known``: what the baselines know
    (an entity not in it is new). With ``report_id``, each incident carries its accept/deny command."""
    networks = dict(networks or {})
    labels = _LABELS | frozenset(networks.values())
    own = own_networks(networks)
    own_labels = {networks[str(n)] for n in own if str(n) in networks}  # a collapsed pool is own too
    recs: list[tuple[str, dict[str, Any]]] = []
    ent_rows: list[int] = []
    ent_names: list[str] = []
    for table, df in rows.items():
        if not len(df):
            continue
        k = list(keys[table])
        base = len(recs)
        idx = np.arange(base, base + len(df))
        for col in (c for c in k if c in ADDRESS_KEYS):
            v = df[col].astype(str)
            m = _is_address_entity(v, labels) & ~v.isin(known.addresses).to_numpy()
            ent_rows += idx[m].tolist()
            ent_names += ("a " + v[m]).tolist()
        for col in (c for c in k if c in MAC_KEYS):
            v = df[col].astype(str)
            m = _is_mac_entity(v) & ~v.isin(known.macs).to_numpy()
            ent_rows += idx[m].tolist()
            ent_names += ("m " + v[m]).tolist()
        svc = _service_columns(k)
        if svc is not None:
            for i, t in zip(idx.tolist(), _service_tuples(df, svc), strict=True):
                if t not in known.services:
                    ent_rows.append(i)
                    ent_names.append(f"s {t[0]}|{t[1]}|{t[2]}")
        reason = df["reason"].astype(str)
        deny = reason.str.startswith("deny-rule").to_numpy()
        ent_rows += idx[deny].tolist()
        ent_names += ("d " + reason[deny]).tolist()
        recs += [(table, r) for r in df.to_dict("records")]
    if not recs:
        return []
    codes, uniques = pd.factorize(pd.Series(ent_names, dtype=object)) if ent_names else (np.zeros(0, int), [])
    comp = _components(
        len(recs), np.asarray(ent_rows, dtype=np.int64), np.asarray(codes, dtype=np.int64), len(uniques)
    )
    ents_of: dict[int, list[str]] = {}
    for r, c in zip(ent_rows, codes, strict=True):
        ents_of.setdefault(r, []).append(str(uniques[c]))
    groups: dict[int, list[int]] = {}
    for i, c in enumerate(comp.tolist()):
        groups.setdefault(c, []).append(i)
    drafts = []
    for members in groups.values():
        ents = list(dict.fromkeys(e for i in members for e in ents_of.get(i, [])))
        kind, title = _describe(members, recs, keys, ents, known, own, own_labels)
        first = min(recs[i][1]["first_seen"] for i in members)
        rows_of = tuple(sorted(((recs[i][0], int(recs[i][1]["row"])) for i in members), key=lambda x: x[1]))
        drafts.append((_KIND_ORDER[kind], first, min(r for _, r in rows_of), kind, title, rows_of))
    drafts.sort(key=lambda d: (d[0], d[1], d[2]))
    out = []
    for n, (_, _, _, kind, title, rows_of) in enumerate(drafts, 1):
        acc = den = ""
        if report_id:
            acc = f"flowdiff accept {report_id} --incident {n}{config_arg}"
            den = f"flowdiff deny {report_id} --incident {n}{config_arg}"
        out.append(Incident(n, title, kind, rows_of, acc, den))
    return out


def _describe(
    members: list[int],
    recs: list[tuple[str, dict[str, Any]]],
    keys: Mapping[str, Sequence[str]],
    ents: list[str],
    known: Known,
    own: Sequence[Any],
    own_labels: set[str],
) -> tuple[str, str]:
    """(ordering class, title in words) of one group of rows."""
    n = len(members)
    more = f", {n} rows" if n > 1 else ""
    reasons = [str(recs[i][1]["reason"]) for i in members]
    denied = sorted({r.removeprefix("deny-rule ").strip() for r in reasons if r.startswith("deny-rule")})
    if denied:
        return "deny", f"deny rule {', '.join(denied)} hit{more}"
    stations = [
        recs[i][1] for i in members if recs[i][0] == STATIONS and recs[i][1]["reason"] in STATION_REASONS
    ]
    if stations:
        s = min(stations, key=lambda r: (STATION_REASONS.index(r["reason"]), int(r["row"])))
        return "station", f"{s['reason']} {s['src']} {s['src_mac']}{more}"
    services = [e[2:] for e in ents if e.startswith("s ")]
    if services:
        server, proto, port = services[0].rsplit("|", 2)
        clients = sorted(
            {
                str(recs[i][1]["client"])
                for i in members
                if "client" in recs[i][1] and str(recs[i][1].get("server")) == server
            }
        )
        what = f"{format_value('proto', int(proto))}/{port}" if int(proto) >= 0 else f"port {port}"
        frm = (
            f" from {clients[0]}"
            if len(clients) == 1
            else (f" from {len(clients)} clients" if clients else "")
        )
        kind = "service" if server in own_labels or _own(server, own) else "other"
        return kind, f"new service {server} {what}{frm}{more}"
    for i in members:
        table, rec = recs[i]
        if "ethertype" in rec and int(rec["ethertype"]) not in known.ethertypes:
            src = f" from {rec['src_mac']}" if "src_mac" in rec else ""
            return "other", f"new ethertype {format_value('ethertype', rec['ethertype'])}{src}{more}"
    for e in ents:
        if e.startswith("a "):
            return "other", f"new address {e[2:]}{more}"
    for e in ents:
        if e.startswith("m "):
            return "other", f"new MAC {e[2:]}{more}"
    table, rec = recs[members[0]]
    key = " ".join(f"{k}={format_value(k, rec[k])}" for k in keys[table])
    return "other", f"{reasons[0]} {table} row {key}{more}"
