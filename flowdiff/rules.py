"""White and black lists: ``allow`` and ``deny`` rules on count-table rows.

The rules file (``rules`` in the config, default ``<baselines>/rules.toml``) holds entries like::

    [[allow]]                       # normal even if never learned
    name = "mail-in"
    table = "services"              # or "*": every table that has all the fields named below
    server = "10.1.0.25"
    proto = "tcp"
    service_port = 25               # client is not named: any client

    [[deny]]                        # always reported, even when in the baseline
    name = "telnet"
    table = "*"
    service_port = [23, 2323]

A field value is an exact value, a CIDR (``"10.0.0.0/8"``, address fields), a port or number range
(``"1024-65535"``), a network label from ``[networks]`` (address fields: matches addresses whose longest
match has that label, and the label itself after ``collapse``), ``"*"`` (anything), or a list of those
(any of them). ``proto`` takes every name of :data:`flowdiff.vocab.PROTOCOLS` (``icmpv6`` and ``ipv6-icmp``
alike); ``ethertype`` takes ``0x0806``. What each field takes is decided in one place,
:func:`flowdiff.vocab.parse_spec`, for this file, ``--where`` and ``accept`` alike. Other keys of an entry:
``comment``, ``by``, ``created`` (kept for the audit trail).

Rules written by the triage commands go through :func:`add_rules`, which refuses a rule matching every
possible row of a table (:func:`everything_tables`): an allow rule like that mutes the table forever.

Matching is vectorised: each field spec is evaluated once on the distinct values of its column.
"""

from __future__ import annotations

import ipaddress
import json
import re
import tomllib
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from flowdiff.config import Config, TableConfig
from flowdiff.durable import atomic_write_text
from flowdiff.errors import BadValueError, BaselineError, RulesError, TooBroadError
from flowdiff.netmap import OTHER, NetworkMap, parse_addresses
from flowdiff.schema import is_key_field, key_type
from flowdiff.vocab import (
    ANY,
    IP_VERSIONS,
    NUMBER_FIELDS,
    PROTOCOLS,
    field_kind,
    format_value,
    now_iso,
    parse_spec,
)

KINDS = ("allow", "deny")
META_FIELDS = ("name", "table", "comment", "by", "created")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.:/-][A-Za-z0-9_.:/ -]{0,99}$")

__all__ = [
    "Rule",
    "RuleSet",
    "load_rules",
    "parse_rules",
    "add_rule",
    "field_mask",
    "rule_mask",
    "apply_rules",
    "parse_where",
    "where_mask",
    "RuleDraft",
    "add_rules",
    "guard_rule",
    "covers_everything",
    "matches_everything",
    "everything_tables",
    "network_labels",
]


@dataclass(frozen=True)
class Rule:
    """One allow or deny entry. ``match`` maps key fields to value specs; fields not named match anything."""

    kind: str
    name: str
    table: str = ANY
    match: dict[str, Any] = field(default_factory=dict)
    comment: str = ""
    by: str = ""
    created: str = ""

    def applies_to(self, table: str, keys: Sequence[str]) -> bool:
        if self.table not in (ANY, table):
            return False
        return all(f in keys for f in self.match)

    def describe(self) -> str:
        fields = " ".join(f"{k}={_spec_text(k, v)}" for k, v in self.match.items()) or "(any row)"
        return f"{self.kind} {self.name} [{self.table}] {fields}"

    def to_toml(self) -> str:
        """The entry as it stands in the rules file."""
        entry: dict[str, Any] = {"name": self.name, "table": self.table, **self.match}
        entry.update(
            {k: v for k, v in (("comment", self.comment), ("by", self.by), ("created", self.created)) if v}
        )
        return _toml_entry(self.kind, entry)


@dataclass
class RuleSet:
    rules: list[Rule]
    path: Path | None = None

    def for_table(self, table: str, keys: Sequence[str], kind: str | None = None) -> list[Rule]:
        return [r for r in self.rules if r.applies_to(table, keys) and (kind is None or r.kind == kind)]

    @property
    def names(self) -> set[str]:
        return {r.name for r in self.rules}


def load_rules(config: Config) -> RuleSet:
    """The rules file of the config; a missing file is an empty rule set (nothing allowed or denied)."""
    path = config.rules_path
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return RuleSet([], path)
    except (OSError, UnicodeDecodeError) as e:
        raise RulesError(f"{path}: cannot read: {e}") from None
    return parse_rules(text, config, path=path)


def parse_rules(text: str, config: Config, *, path: Path | None = None) -> RuleSet:
    """Validate a rules document: unknown tables, fields and malformed values are errors naming the entry,
    because a typo in a deny rule must not silently stop reporting."""
    where = f"{path}: " if path else ""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RulesError(f"{where}not valid TOML: {e}") from None
    unknown = [k for k in doc if k not in KINDS]
    if unknown:
        raise RulesError(f"{where}unknown section {unknown[0]!r} (use [[allow]] and [[deny]])")
    rules: list[Rule] = []
    seen: set[str] = set()
    for kind in KINDS:
        entries = doc.get(kind, [])
        if not isinstance(entries, list):
            raise RulesError(f"{where}{kind}: use [[{kind}]] entries")
        for i, entry in enumerate(entries, 1):
            rule = _parse_entry(kind, i, entry, config, where)
            if rule.name in seen:
                raise RulesError(f"{where}{kind} #{i}: the rule name {rule.name!r} is used twice")
            seen.add(rule.name)
            rules.append(rule)
    return RuleSet(rules, path)


def _parse_entry(kind: str, i: int, entry: Any, config: Config, where: str) -> Rule:
    label = f"{where}{kind} #{i}"
    if not isinstance(entry, dict):
        raise RulesError(f"{label}: expected a table of field = value")
    name = entry.get("name", f"{kind}-{i}")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise RulesError(f"{label}: name must be a short string of letters, digits, '-', '_', '.'")
    label = f"{where}{kind} {name!r}"
    table = entry.get("table", ANY)
    if not isinstance(table, str) or (table != ANY and table not in config.tables):
        known = ", ".join(config.tables)
        raise RulesError(f'{label}: no table {table!r} in the config (tables: {known}, or "*")')
    match: dict[str, Any] = {}
    for k, v in entry.items():
        if k in META_FIELDS:
            continue
        if not is_key_field(k):
            raise RulesError(f"{label}: {k!r} is not a key field")
        if table != ANY and k not in config.tables[table].keys:
            keys = ", ".join(config.tables[table].keys)
            raise RulesError(f"{label}: table {table!r} has no field {k!r} (keys: {keys})")
        _validate_spec(k, v, label, network_labels(config.networks))
        match[k] = v
    meta = {k: str(entry.get(k, "")) for k in ("comment", "by", "created")}
    return Rule(kind=kind, name=name, table=table, match=match, **meta)


def network_labels(networks: Mapping[str, str] | NetworkMap | None) -> frozenset[str]:
    """The labels an address field takes: those of ``[networks]`` and ``other`` (in no network)."""
    if networks is None:
        return frozenset({OTHER})
    if isinstance(networks, NetworkMap):
        return frozenset(networks.labels)
    return frozenset(networks.values()) | {OTHER}


def _validate_spec(fieldname: str, spec: Any, label: str, labels: Collection[str] | None = None) -> None:
    specs = spec if isinstance(spec, list) else [spec]
    if not specs:
        raise RulesError(f"{label}: {fieldname}: empty list")
    for s in specs:
        try:
            parse_spec(fieldname, s, labels)
        except ValueError as e:
            raise RulesError(f"{label}: {fieldname} = {_toml_value(s)}: {e}") from None


# ------------------------------------------------------------------ matching


def _numeric(fieldname: str) -> bool:
    return pa.types.is_integer(key_type(fieldname))


def _compile(fieldname: str, spec: Any, labels: Collection[str] | None = None) -> tuple[str, Any]:
    """A spec as ``(kind, value)``: any, eq, range, cidr, label (checked by :func:`flowdiff.vocab.parse_spec`,
    the one place that says what each field takes)."""
    return parse_spec(fieldname, spec, labels)


def field_mask(
    values: pd.Series | np.ndarray, fieldname: str, spec: Any, nmap: NetworkMap | None = None
) -> np.ndarray:
    """Boolean mask of ``values`` (one key column) matching ``spec``; evaluated on distinct values."""
    specs = spec if isinstance(spec, list) else [spec]
    compiled = [_compile(fieldname, s) for s in specs]
    n = len(values)
    if any(kind == "any" for kind, _ in compiled):
        return np.ones(n, dtype=bool)
    codes, uniques = pd.factorize(pd.Series(values), use_na_sentinel=False)
    uniq = np.asarray(uniques, dtype=object)
    hit = np.zeros(len(uniq), dtype=bool)
    for kind, value in compiled:
        hit |= _match_unique(uniq, fieldname, kind, value, nmap)
    return hit[codes] if n else np.zeros(0, dtype=bool)


def _match_unique(
    uniq: np.ndarray, fieldname: str, kind: str, value: Any, nmap: NetworkMap | None
) -> np.ndarray:
    if kind == "eq":
        if _numeric(fieldname):
            return np.asarray(pd.to_numeric(pd.Series(uniq), errors="coerce") == value, dtype=bool)
        return uniq == value
    if kind == "range":
        v = pd.to_numeric(pd.Series(uniq), errors="coerce").to_numpy(dtype=float)
        return (v >= value[0]) & (v <= value[1])
    if kind == "label":
        out = uniq == value
        if nmap is not None and value in nmap.labels:
            out |= nmap.labels_for_text(uniq) == value
        return out
    if kind == "cidr":
        return _cidr_mask(uniq, value)
    raise AssertionError(kind)


def _cidr_mask(uniq: np.ndarray, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> np.ndarray:
    ver, hi, lo = parse_addresses(uniq)
    top = int(net.network_address)
    bits = 32 if net.version == 4 else 128
    mask = ((1 << bits) - 1) ^ ((1 << (bits - net.prefixlen)) - 1)
    if net.version == 4:
        out = (ver == 4) & ((lo & np.uint64(mask)) == np.uint64(top))
    else:
        m_hi, m_lo = mask >> 64, mask & ((1 << 64) - 1)
        t_hi, t_lo = top >> 64, top & ((1 << 64) - 1)
        out = (
            (ver == 6)
            & ((hi & np.uint64(m_hi)) == np.uint64(t_hi))
            & ((lo & np.uint64(m_lo)) == np.uint64(t_lo))
        )
    # values that are prefixes themselves (after ipv6_prefix): inside when the prefix is a subnet
    for i in np.flatnonzero((ver == 0) & np.array(["/" in str(u) for u in uniq], dtype=bool)):
        try:
            sub = ipaddress.ip_network(str(uniq[i]), strict=False)
        except ValueError:
            continue
        out[i] = sub.version == net.version and sub.subnet_of(net)  # type: ignore[arg-type]
    return out


def rule_mask(df: pd.DataFrame, rule: Rule, nmap: NetworkMap | None = None) -> np.ndarray:
    """Rows of ``df`` matching every field of ``rule``."""
    mask = np.ones(len(df), dtype=bool)
    for f, spec in rule.match.items():
        if not mask.any():
            break
        mask &= field_mask(df[f], f, spec, nmap)
    return mask


def apply_rules(
    df: pd.DataFrame, table: str, keys: Sequence[str], rules: RuleSet, nmap: NetworkMap | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(allowed, deny_name)`` per row: allowed is a bool mask; deny_name is the name of the first deny rule
    that matches ("" when none). Deny wins over allow: a deny rule is a promise to always report."""
    allowed = np.zeros(len(df), dtype=bool)
    deny = np.full(len(df), "", dtype=object)
    for rule in rules.for_table(table, keys):
        m = rule_mask(df, rule, nmap)
        if rule.kind == "allow":
            allowed |= m
        else:
            deny[m & (deny == "")] = rule.name
    return allowed, deny


# ------------------------------------------------------------------ --where filters (rule syntax)


def parse_where(
    tc: TableConfig,
    where: Mapping[str, Any] | Sequence[str] | None,
    networks: Mapping[str, str] | NetworkMap | None = None,
) -> dict[str, Any]:
    """``field=value`` strings or a mapping, checked against the table's key fields and each value
    against its field (labels against ``networks`` when given): a bad value is named in one line."""
    if where is None:
        return {}
    items: list[tuple[str, Any]]
    if isinstance(where, Mapping):
        items = list(where.items())
    else:
        items = []
        for w in where:
            if "=" not in w:
                raise BaselineError(f"--where {w!r}: expected field=value")
            k, v = w.split("=", 1)
            items.append((k.strip(), v.strip()))
    labels = network_labels(networks) if networks is not None else None
    out: dict[str, Any] = {}
    for k, v in items:
        if k not in tc.keys:
            raise BaselineError(f"table {tc.name!r} has no key field {k!r} (keys: {', '.join(tc.keys)})")
        check_where(k, v, labels)
        out[k] = v
    return out


def check_where(fieldname: str, value: Any, labels: Collection[str] | None = None) -> None:
    """Raise :class:`BadValueError` (``--where server=300.1.1.1: not an IPv4/IPv6 address ...``)."""
    specs = value if isinstance(value, list) else [value]
    for s in specs:
        try:
            parse_spec(fieldname, s, labels)
        except ValueError as e:
            raise BadValueError(
                f"--where {fieldname}={_spec_text(fieldname, value)}", fieldname, value, str(e)
            ) from None


def where_mask(df: pd.DataFrame, where: Mapping[str, Any], nmap: NetworkMap | None) -> np.ndarray:
    """Rows of ``df`` matching every ``--where`` filter (values checked first, labels against ``nmap``)."""
    labels = network_labels(nmap) if nmap is not None else None
    mask = np.ones(len(df), dtype=bool)
    for k, v in where.items():
        check_where(k, v, labels)
        mask &= field_mask(df[k], k, v, nmap)
    return mask


# ------------------------------------------------------------------ rules that match every row


def covers_everything(fieldname: str, spec: Any, networks: Mapping[str, str] | None = None) -> bool:
    """True when ``spec`` matches every value ``fieldname`` can take: ``*``, a full range (``0-65535``),
    CIDRs or ``[networks]`` labels that together cover the whole IPv4 and IPv6 space, every label ...
    A rule whose fields all do this mutes (or floods) a whole table."""
    specs = spec if isinstance(spec, list) else [spec]
    compiled = [parse_spec(fieldname, s) for s in specs]
    if any(kind == "any" for kind, _ in compiled):
        return True
    kind = field_kind(fieldname)
    if kind == "number":
        return _numbers_covered(fieldname, compiled)
    if kind in ("address", "net"):
        cidrs = [v for k, v in compiled if k == "cidr"]
        labels = {v for k, v in compiled if k == "label"} if kind == "address" else set()
        return _address_space_covered(cidrs, labels, networks or {})
    if kind == "label":
        return network_labels(networks) <= {v for _, v in compiled}
    return False  # MACs: only "*" matches every MAC


def _numbers_covered(fieldname: str, compiled: Sequence[tuple[str, Any]]) -> bool:
    lo, hi, _ = NUMBER_FIELDS[fieldname]
    spans = sorted((v, v) if k == "eq" else v for k, v in compiled)
    if fieldname == "ip_version":
        return all(any(a <= n <= b for a, b in spans) for n in IP_VERSIONS)
    nxt = lo
    for a, b in spans:
        if a > nxt:
            return False
        nxt = max(nxt, b + 1)
    return nxt > hi


def _address_space_covered(
    cidrs: Sequence[Any], labels: Collection[str], networks: Mapping[str, str]
) -> bool:
    """Whether the CIDRs and the addresses whose longest match in ``networks`` carries one of ``labels``
    (``other``: in no network) together hold every IPv4 and every IPv6 address. The space is cut at every
    network boundary; inside one piece the longest match is the same everywhere."""
    nets = [(ipaddress.ip_network(c, strict=False), lab) for c, lab in networks.items()]
    for version, bits in ((4, 32), (6, 128)):
        mine = [(int(n.network_address), int(n.broadcast_address)) for n in cidrs if n.version == version]
        theirs = [
            (int(n.network_address), int(n.broadcast_address), n.prefixlen, lab)
            for n, lab in nets
            if n.version == version
        ]
        cuts = {0, 1 << bits}
        for lo, hi in [*mine, *((a, b) for a, b, _, _ in theirs)]:
            cuts |= {lo, hi + 1}
        for start in sorted(cuts)[:-1]:
            if any(a <= start <= b for a, b in mine):
                continue
            inside = [(p, lab) for a, b, p, lab in theirs if a <= start <= b]
            label = max(inside)[1] if inside else OTHER
            if label not in labels:
                return False
    return True


def matches_everything(
    match: Mapping[str, Any], keys: Sequence[str], networks: Mapping[str, str] | None
) -> bool:
    """True when a rule (or a key) with these fields matches every possible row of a table with ``keys``."""
    return all(covers_everything(k, match[k], networks) for k in keys if k in match)


def everything_tables(config: Config, table: str, match: Mapping[str, Any]) -> list[str]:
    """The tables (of those a rule on ``table`` applies to) of which it would match every possible row."""
    tables = (
        config.tables if table == ANY else {table: config.tables[table]} if table in config.tables else {}
    )
    return [
        t
        for t, tc in tables.items()
        if all(f in tc.keys for f in match) and matches_everything(match, tc.keys, config.networks)
    ]


def match_text(match: Mapping[str, Any], keys: Sequence[str] | None = None) -> str:
    """``src=* proto=tcp``: the fields of a rule in key order, unnamed key fields shown as ``*``."""
    names = list(keys) if keys is not None else list(match)
    names += [k for k in match if k not in names]
    return " ".join(f"{k}={_spec_text(k, match.get(k, ANY))}" for k in names)


# ------------------------------------------------------------------ writing


def add_rule(
    config: Config,
    kind: str,
    table: str,
    match: Mapping[str, Any],
    *,
    name: str | None = None,
    comment: str | None = None,
    by: str | None = None,
    dry_run: bool = False,
) -> Rule:
    """Append one allow/deny entry to the rules file (see :func:`add_rules`)."""
    return add_rules(config, [RuleDraft(kind, table, dict(match), name, comment)], by=by, dry_run=dry_run)[0]


@dataclass(frozen=True)
class RuleDraft:
    """A rule to add: kind, table, fields; the name is made up (``deny-services-3``) when None."""

    kind: str
    table: str
    match: dict[str, Any]
    name: str | None = None
    comment: str | None = None


def add_rules(
    config: Config, drafts: Sequence[RuleDraft], *, by: str | None = None, dry_run: bool = False
) -> list[Rule]:
    """Append allow/deny entries to the rules file in one atomic rewrite (comments and order of the existing
    file are kept). The whole file is validated before it replaces the old one, and a rule that would
    match every possible row of a table is refused (:class:`TooBroadError`): all or nothing. With
    ``dry_run`` the rules are built and checked the same way and nothing is written."""
    current = load_rules(config)
    path = config.rules_path
    old = path.read_text(encoding="utf-8") if path.exists() else _HEADER
    names = set(current.names)
    text = old.rstrip("\n") + "\n"
    made: list[str] = []
    for d in drafts:
        if d.kind not in KINDS:
            raise RulesError(f"rule kind must be allow or deny, not {d.kind!r}")
        name = d.name
        if name is None:
            n = 1
            while f"{d.kind}-{d.table}-{n}".replace("*", "any") in names:
                n += 1
            name = f"{d.kind}-{d.table}-{n}".replace("*", "any")
        elif name in names:
            raise RulesError(f"a rule named {name!r} already exists in {path}")
        names.add(name)
        match = {k: _normalise(k, _plain(v)) for k, v in d.match.items()}
        if d.table != ANY and d.table not in config.tables:
            raise RulesError(f"no table {d.table!r} in the config (tables: {', '.join(config.tables)})")
        guard_rule(config, d.kind, d.table, match)
        entry: dict[str, Any] = {"name": name, "table": d.table, **match}
        if d.comment:
            entry["comment"] = d.comment
        entry["by"] = by or current_user()
        entry["created"] = now_iso()
        text += "\n" + _toml_entry(d.kind, entry)
        made.append(name)
    rules = parse_rules(text, config, path=path)
    if not dry_run:
        atomic_write_text(path, text)
    by_name = {r.name: r for r in rules.rules}
    return [by_name[n] for n in made]


def guard_rule(config: Config, kind: str, table: str, match: Mapping[str, Any]) -> None:
    """Refuse a rule that would match every possible row of a table (an allow rule mutes the table
    forever; a deny rule floods it): :class:`TooBroadError` naming the table and the fields."""
    for t in everything_tables(config, table, match):
        raise TooBroadError(kind, t, match_text(match, config.tables[t].keys))


_HEADER = "# flowdiff rules: [[allow]] rows are normal, [[deny]] rows are always reported (see baselines/README.md)\n"


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    return v


def _normalise(fieldname: str, v: Any) -> Any:
    """Values as people read them and reports print them: plain numbers of numeric fields as TOML integers
    (``service_port = 23``), protocols by name (``proto = "tcp"``), ethertypes in hex (``"0x0806"``)."""
    if isinstance(v, list):
        return [_normalise(fieldname, x) for x in v]
    if isinstance(v, str) and is_key_field(fieldname) and _numeric(fieldname) and v.strip().isdigit():
        v = int(v.strip())
    if isinstance(v, str) and fieldname == "proto" and v.strip().lower() in PROTOCOLS:
        return format_value("proto", PROTOCOLS[v.strip().lower()])  # ipv6-icmp is written icmpv6
    if isinstance(v, int) and not isinstance(v, bool) and fieldname in ("proto", "ethertype"):
        text = format_value(fieldname, v)
        return v if text == str(v) else text
    return v


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    # a JSON string literal is a valid TOML basic string (same escapes)
    return json.dumps(str(v), ensure_ascii=False)


def _toml_entry(kind: str, entry: Mapping[str, Any]) -> str:
    lines = [f"[[{kind}]]"]
    for k, v in entry.items():
        key = k if re.match(r"^[A-Za-z0-9_-]+$", k) else json.dumps(k)
        lines.append(f"{key} = {_toml_value(v)}")
    return "\n".join(lines) + "\n"


def _spec_text(fieldname: str, v: Any) -> str:
    """A spec as one word of a one-line description; numbers through :func:`flowdiff.vocab.format_value`."""
    if isinstance(v, list):
        return ",".join(_spec_text(fieldname, x) for x in v)
    if isinstance(v, int) and not isinstance(v, bool) and fieldname in NUMBER_FIELDS:
        return format_value(fieldname, v)
    return str(v)


def current_user() -> str:
    """Who changed a rule or a baseline, when ``--by`` does not say: the login name (getpass looks at
    $LOGNAME, $USER, ... then the password database), ``unknown`` when there is none."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def iter_rules(rules: RuleSet, kind: str | None = None) -> Iterable[Rule]:
    return (r for r in rules.rules if kind is None or r.kind == kind)
