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
(any of them). ``proto`` also takes ``tcp``, ``udp``, ``icmp``, ``icmpv6``, ``sctp``; ``ethertype`` takes
``0x0806``. Other keys of an entry: ``comment``, ``by``, ``created`` (kept for the audit trail).

Matching is vectorised: each field spec is evaluated once on the distinct values of its column.
"""

from __future__ import annotations

import ipaddress
import json
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from flowdiff.config import Config, TableConfig
from flowdiff.durable import atomic_write_text
from flowdiff.errors import BaselineError, RulesError
from flowdiff.netmap import NetworkMap, parse_addresses
from flowdiff.schema import ADDRESS_KEYS, is_key_field, key_type
from flowdiff.vocab import PROTOCOLS, now_iso, proto_number

KINDS = ("allow", "deny")
META_FIELDS = ("name", "table", "comment", "by", "created")
ANY = "*"
PROTO_NAMES = PROTOCOLS  # kept for imports from earlier versions
_RANGE_RE = re.compile(r"^\s*(\d+|0x[0-9a-fA-F]+)\s*-\s*(\d+|0x[0-9a-fA-F]+)\s*$")
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
        fields = " ".join(f"{k}={_spec_text(v)}" for k, v in self.match.items()) or "(any row)"
        return f"{self.kind} {self.name} [{self.table}] {fields}"


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
        _validate_spec(k, v, label)
        match[k] = v
    meta = {k: str(entry.get(k, "")) for k in ("comment", "by", "created")}
    return Rule(kind=kind, name=name, table=table, match=match, **meta)


def _validate_spec(fieldname: str, spec: Any, label: str) -> None:
    specs = spec if isinstance(spec, list) else [spec]
    if not specs:
        raise RulesError(f"{label}: {fieldname}: empty list")
    for s in specs:
        if isinstance(s, bool) or not isinstance(s, int | str):
            raise RulesError(f'{label}: {fieldname}: expected a value, CIDR, range, label or "*", got {s!r}')
        try:
            _compile(fieldname, s)
        except ValueError as e:
            raise RulesError(f"{label}: {fieldname}: {e}") from None


# ------------------------------------------------------------------ matching


def _numeric(fieldname: str) -> bool:
    return pa.types.is_integer(key_type(fieldname))


def _int(fieldname: str, text: str) -> int:
    t = text.strip().lower()
    if fieldname == "proto":
        return proto_number(t)
    try:
        return int(t, 0)
    except ValueError:
        raise ValueError(f'{text!r} is not a number, a range like 1024-65535 or "*"') from None


def _compile(fieldname: str, spec: Any) -> tuple[str, Any]:
    """A spec as ``(kind, value)``: any, eq, range, cidr, label."""
    if spec == ANY:
        return ("any", None)
    if _numeric(fieldname):
        if isinstance(spec, int):
            return ("eq", spec)
        m = _RANGE_RE.match(spec)
        if m:
            lo, hi = int(m.group(1), 0), int(m.group(2), 0)
            if lo > hi:
                raise ValueError(f"empty range {spec!r}")
            return ("range", (lo, hi))
        return ("eq", _int(fieldname, spec))
    spec = str(spec)
    if fieldname in ADDRESS_KEYS:
        if "/" in spec:
            try:
                return ("cidr", ipaddress.ip_network(spec, strict=False))
            except ValueError:
                raise ValueError(f"{spec!r} is not a valid CIDR") from None
        try:
            return ("eq", str(ipaddress.ip_address(spec)))
        except ValueError:
            return ("label", spec)
    if fieldname.endswith("_mac"):
        return ("eq", spec.lower())
    return ("eq", spec)


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


def parse_where(tc: TableConfig, where: Mapping[str, Any] | Sequence[str] | None) -> dict[str, Any]:
    """``field=value`` strings or a mapping, checked against the table's key fields."""
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
    out: dict[str, Any] = {}
    for k, v in items:
        if k not in tc.keys:
            raise BaselineError(f"table {tc.name!r} has no key field {k!r} (keys: {', '.join(tc.keys)})")
        out[k] = v
    return out


def where_mask(df: pd.DataFrame, where: Mapping[str, Any], nmap: NetworkMap | None) -> np.ndarray:
    mask = np.ones(len(df), dtype=bool)
    for k, v in where.items():
        try:
            mask &= field_mask(df[k], k, v, nmap)
        except ValueError as e:
            raise BaselineError(f"--where {k}={v}: {e}") from None
    return mask



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
) -> Rule:
    """Append an allow/deny entry to the rules file (atomic rewrite; comments and order of the existing
    file are kept). The whole file is validated before it replaces the old one."""
    if kind not in KINDS:
        raise RulesError(f"rule kind must be allow or deny, not {kind!r}")
    current = load_rules(config)
    path = config.rules_path
    old = path.read_text(encoding="utf-8") if path.exists() else _HEADER
    if name is None:
        n = 1
        while f"{kind}-{table}-{n}".replace("*", "any") in current.names:
            n += 1
        name = f"{kind}-{table}-{n}".replace("*", "any")
    elif name in current.names:
        raise RulesError(f"a rule named {name!r} already exists in {path}")
    entry: dict[str, Any] = {"name": name, "table": table}
    entry.update({k: _normalise(k, _plain(v)) for k, v in match.items()})
    if comment:
        entry["comment"] = comment
    entry["by"] = by or _user()
    entry["created"] = now_iso()
    text = old.rstrip("\n") + "\n\n" + _toml_entry(kind, entry)
    rules = parse_rules(text, config, path=path)
    atomic_write_text(path, text)
    return next(r for r in rules.rules if r.name == name)


_HEADER = "# flowdiff rules: [[allow]] rows are normal, [[deny]] rows are always reported (see baselines/README.md)\n"


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    return v


def _normalise(fieldname: str, v: Any) -> Any:
    """Plain numbers of numeric fields are written as TOML integers (``service_port = 23``)."""
    if isinstance(v, list):
        return [_normalise(fieldname, x) for x in v]
    if isinstance(v, str) and is_key_field(fieldname) and _numeric(fieldname) and v.strip().isdigit():
        return int(v.strip())
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


def _spec_text(v: Any) -> str:
    if isinstance(v, list):
        return ",".join(str(x) for x in v)
    return str(v)


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def iter_rules(rules: RuleSet, kind: str | None = None) -> Iterable[Rule]:
    return (r for r in rules.rules if kind is None or r.kind == kind)
