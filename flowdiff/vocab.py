"""One vocabulary, declared once: how key values are named, parsed and printed everywhere.

Reports, `--where` filters, rules, the commands printed in reports and the CLI tables all go through
these functions, so that a value printed in one place is accepted as it is in every other
(``proto=icmpv6`` in a report is what a rule and ``--where`` take).
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any

# IP protocol numbers by name. The first name of a number is the one printed; every name is accepted.
PROTOCOLS: dict[str, int] = {
    "icmp": 1,
    "igmp": 2,
    "tcp": 6,
    "udp": 17,
    "gre": 47,
    "esp": 50,
    "ah": 51,
    "icmpv6": 58,
    "ipv6-icmp": 58,  # IANA's keyword, accepted as an alias
    "ospf": 89,
    "pim": 103,
    "vrrp": 112,
    "sctp": 132,
}
PROTOCOL_NAMES: dict[int, str] = {}
for _name, _number in PROTOCOLS.items():
    PROTOCOL_NAMES.setdefault(_number, _name)

# C0 and C1 controls, and the Unicode line and paragraph separators: never inside a header or one line.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def proto_name(number: int) -> str:
    """``tcp`` for 6; the number itself (as text) when the protocol has no name here."""
    return PROTOCOL_NAMES.get(int(number), str(int(number)))


def proto_number(text: str | int) -> int:
    """6 for ``tcp``, ``TCP``, ``6`` or 6; raises ValueError for anything else."""
    if isinstance(text, int) and not isinstance(text, bool):
        number = text
    else:
        t = str(text).strip().lower()
        if t in PROTOCOLS:
            return PROTOCOLS[t]
        try:
            number = int(t, 0)
        except ValueError:
            names = ", ".join(sorted({n for n in PROTOCOLS}))
            raise ValueError(f"{text!r} is not a protocol number (0-255) or name ({names})") from None
    if not 0 <= number <= 255:
        raise ValueError(f"{number} is not a protocol number (0-255)")
    return number


def ethertype_text(value: int) -> str:
    return f"0x{int(value):04x}"


def format_value(field: str, value: Any) -> str:
    """A key value as people read it and as every command accepts it back."""
    if field == "proto":
        return proto_name(int(value))
    if field == "ethertype":
        return ethertype_text(int(value))
    return str(value)


# ------------------------------------------------------------------ key values: what each field takes

ANY = "*"
RANDOM_MAC = "random"  # what collapse_random_macs stores for a locally administered MAC
ADDRESS_FIELDS = ("src", "dst", "client", "server")
MAC_FIELDS = ("src_mac", "dst_mac")
LABEL_FIELDS = ("src_label", "dst_label", "client_label", "server_label")
TEXT_FIELDS = ("host", "program", "template", "facility", "severity")  # log tables: matched exactly
# numeric key fields: (lowest, highest, what a value is) -- the domain a rule or a filter may name
NUMBER_FIELDS: dict[str, tuple[int, int, str]] = {
    "proto": (0, 255, "protocol"),
    "sport": (0, 65535, "port"),
    "dport": (0, 65535, "port"),
    "service_port": (0, 65535, "port"),
    "vlan": (0, 4095, "VLAN id"),
    "ip_version": (0, 6, "IP version (0, 4 or 6)"),
    "ethertype": (0, 0xFFFF, "ethertype"),
    "icmp_type": (0, 255, "ICMP type"),
    "icmp_code": (0, 255, "ICMP code"),
    "tcp_flags": (0, 255, "TCP flags value"),
    "input_if": (0, 0xFFFFFFFF, "interface index"),
    "output_if": (0, 0xFFFFFFFF, "interface index"),
}
IP_VERSIONS = (0, 4, 6)
_NET_FIELD_RE = re.compile(r"^(src|dst|client|server)_net/\d{1,3}$")
_RANGE_RE = re.compile(r"^\s*([0-9a-zA-Z]+)\s*-\s*([0-9a-zA-Z]+)\s*$")
_MAC_RE = re.compile(r"^[0-9a-f]{2}([:-])[0-9a-f]{2}(\1[0-9a-f]{2}){4}$")


def field_kind(field: str) -> str:
    """``address``, ``net``, ``label``, ``mac`` or ``number``; ValueError for a name that is no key field."""
    if field in ADDRESS_FIELDS or field == "exporter":  # exporter: a flow exporter's address
        return "address"
    if field in MAC_FIELDS:
        return "mac"
    if field in LABEL_FIELDS:
        return "label"
    if field in NUMBER_FIELDS:
        return "number"
    if field in TEXT_FIELDS:
        return "text"
    if _NET_FIELD_RE.match(field):
        return "net"
    raise ValueError(f"{field!r} is not a key field")


def _field_number(field: str, text: str | int) -> int:
    lo, hi, what = NUMBER_FIELDS[field]
    if isinstance(text, int):
        n = text
    elif field == "proto":
        try:
            return proto_number(text)
        except ValueError:
            names = ", ".join(sorted(PROTOCOLS))
            raise ValueError(f"not a protocol number (0-255), name ({names}) or range like 1-255") from None
    else:
        try:
            n = int(str(text).strip(), 0)
        except ValueError:
            raise ValueError(
                f"not a number: expected {what} ({_domain(field)}), a range like "
                f'{_example_range(field)} or "*"'
            ) from None
    if not lo <= n <= hi or (field == "ip_version" and n not in IP_VERSIONS):
        article = "an" if what[0].lower() in "aeiou" else "a"
        raise ValueError(f"not {article} {what} ({_domain(field)})")
    return n


def _domain(field: str) -> str:
    lo, hi, _ = NUMBER_FIELDS[field]
    if field == "ip_version":
        return "0, 4 or 6"
    if field == "ethertype":
        return "0x0000-0xffff"
    return f"{lo}-{hi}"


def _example_range(field: str) -> str:
    return {"ethertype": "0x0800-0x08ff", "vlan": "100-199"}.get(field, "1024-65535")


def parse_spec(field: str, spec: Any, labels: Collection[str] | None = None) -> tuple[str, Any]:
    """One value spec of a key field, checked against the field, as ``(kind, value)``: ``any``, ``eq``,
    ``range`` (lo, hi), ``cidr`` (an ip_network) or ``label``.

    The one place that says which values a field takes: the rules file, ``--where`` and ``accept`` all
    come here, so a value is accepted or refused alike everywhere. ``labels`` are the ``[networks]``
    labels (with ``other``); when None, an address field takes any other word as a label (matching
    time, after validation). Stored canonical values are valid: labels, IPv6 prefixes, ``random``.
    Raises ValueError with a message that does not repeat the value (callers prefix ``field=value``)."""
    if isinstance(spec, bool) or not isinstance(spec, int | str):
        raise ValueError('expected a value, CIDR, range, label or "*"')
    if spec == ANY:
        return ("any", None)
    kind = field_kind(field)
    if kind == "number":
        if isinstance(spec, str):
            m = _RANGE_RE.match(spec)
            if m and not (field == "proto" and spec.strip().lower() in PROTOCOLS):
                lo, hi = _field_number(field, m.group(1)), _field_number(field, m.group(2))
                if lo > hi:
                    raise ValueError(f"empty range {spec}")
                return ("range", (lo, hi))
        return ("eq", _field_number(field, spec))
    if kind == "text":
        return ("eq", str(spec))
    if isinstance(spec, int):
        raise ValueError(_expected(kind, labels))
    text = spec.strip()
    if kind in ("address", "net") and "/" in text:
        try:
            return ("cidr", ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ValueError("not a valid CIDR") from None
    if kind == "address":
        try:
            return ("eq", str(ipaddress.ip_address(text)))
        except ValueError:
            pass
        if text and (labels is None or text in labels):
            return ("label", text)
        raise ValueError(_expected(kind, labels))
    if kind == "mac":
        t = text.lower()
        if t == RANDOM_MAC:
            return ("eq", t)
        if _MAC_RE.match(t):
            return ("eq", t.replace("-", ":"))
        raise ValueError(_expected(kind, labels))
    if kind == "label" and (labels is None or text in labels):
        return ("eq", text)
    raise ValueError(_expected(kind, labels))


def _expected(kind: str, labels: Collection[str] | None) -> str:
    known = f" (labels: {', '.join(sorted(labels))})" if labels else ""
    return {
        "address": f"not an IPv4/IPv6 address, CIDR or [networks] label{known}",
        "net": "not a network prefix like 10.1.2.0/24 or 2001:db8::/64",
        "mac": f"not a MAC address (like 00:16:3e:00:00:0a) or {RANDOM_MAC}",
        "label": f"not a [networks] label{known}",
    }[kind]


def check_value(field: str, spec: Any, labels: Collection[str] | None = None) -> None:
    """Raise ValueError when ``spec`` (or any item of a list of specs) is not a value of ``field``."""
    specs = spec if isinstance(spec, list) else [spec]
    if not specs:
        raise ValueError("empty list")
    for s in specs:
        parse_spec(field, s, labels)


def _utc(ts: Any) -> datetime | None:
    if ts is None:
        return None
    if isinstance(ts, str):
        ts = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    if hasattr(ts, "to_pydatetime"):  # pandas Timestamp
        if ts != ts:  # NaT
            return None
        ts = ts.to_pydatetime()
    if isinstance(ts, int | float):
        ts = datetime.fromtimestamp(ts, UTC)
    if ts.tzinfo is None:
        return ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC)


def iso_time(ts: Any, *, micro: bool = False) -> str | None:
    """``2024-03-11T15:32:00Z`` (UTC; microseconds kept with ``micro`` when there are any); None for None."""
    t = _utc(ts)
    if t is None:
        return None
    if micro and t.microsecond:
        return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def human_time(ts: Any) -> str:
    """``2024-03-11 15:32:00Z`` for reports and tables; ``-`` when there is no time."""
    t = _utc(ts)
    return "-" if t is None else t.strftime("%Y-%m-%d %H:%M:%SZ")


def now_iso() -> str:
    return iso_time(datetime.now(UTC)) or ""


def one_line(value: Any, limit: int = 200) -> str:
    """Text with control characters (CR, LF, NUL, U+2028 ...) folded to one space and runs of blanks
    collapsed: safe for a mail header, a log line or a table cell. Cut to ``limit`` characters."""
    s = _CONTROL.sub(" ", str(value))
    s = "".join(" " if unicodedata.category(c) in ("Zl", "Zp") else c for c in s)
    s = " ".join(s.split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


def utc_timestamp(value: Any) -> Any:
    """A pandas Timestamp in UTC (naive input counts as UTC), or None: how every `--since`/`--until` and
    stored time is compared."""
    if value is None:
        return None
    import pandas as pd

    t = pd.Timestamp(value)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
