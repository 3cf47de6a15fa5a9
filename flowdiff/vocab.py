"""One vocabulary, declared once: how key values are named, parsed and printed everywhere.

Reports, `--where` filters, rules, the commands printed in reports and the CLI tables all go through
these functions, so that a value printed in one place is accepted as it is in every other
(``proto=icmpv6`` in a report is what a rule and ``--where`` take).
"""

from __future__ import annotations

import re
import unicodedata
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
