"""Column names and types, declared once.

Three layers of columns exist:

* **packet fields** (``PACKET_FIELDS``): what the decoder extracts from each frame, as numpy arrays
  (struct of arrays, one element per frame). Addresses are two uint64 halves; IPv4 lives in ``*_lo``.
* **key fields** (``KEY_FIELDS`` plus the parameterised ``*_net/N``): what a count table may be keyed by,
  with the Arrow type it is stored as.
* **metrics** (``METRICS``) and ``interval_start``: present in every count table.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

TIMESTAMP = pa.timestamp("us", tz="UTC")

# Per-frame arrays produced by flowdiff.decode. Order matters only for documentation.
PACKET_FIELDS: dict[str, np.dtype] = {
    "ts_ns": np.dtype(np.int64),  # UTC nanoseconds since the epoch
    "wirelen": np.dtype(np.uint32),  # original length on the wire (never the captured length)
    "status": np.dtype(np.uint8),  # DecodeStatus: 0 = decoded, else why IP fields are absent
    "ethertype": np.dtype(np.uint16),  # Ethernet type after the VLAN/VN-Tag/DSA tags (MPLS, PPPoE, ARP show
    # as themselves); derived (0x0800/0x86dd) on links without one; 0 if none
    "src_mac": np.dtype(np.uint64),  # 48-bit MAC in the low bits; 0 when the link has none
    "dst_mac": np.dtype(np.uint64),
    "vlan": np.dtype(np.uint16),  # outermost VLAN id, 0 when untagged
    "ip_version": np.dtype(np.uint8),  # 0 (not IP), 4 or 6: outermost IP header
    "src_hi": np.dtype(np.uint64),  # IPv6 upper 64 bits; 0 for IPv4
    "src_lo": np.dtype(np.uint64),  # IPv6 lower 64 bits; IPv4 address in the low 32 bits
    "dst_hi": np.dtype(np.uint64),
    "dst_lo": np.dtype(np.uint64),
    "proto": np.dtype(np.uint8),  # IPv4 protocol / IPv6 upper-layer next header
    "sport": np.dtype(np.uint16),  # TCP/UDP ports, 0 otherwise and on non-first fragments
    "dport": np.dtype(np.uint16),
    "icmp_type": np.dtype(np.uint8),
    "icmp_code": np.dtype(np.uint8),
    "tcp_flags": np.dtype(np.uint8),  # FIN=1 SYN=2 RST=4 PSH=8 ACK=16 URG=32 ECE=64 CWR=128
}


class DecodeStatus:
    """Per-frame outcome of decoding; anything but OK/NOT_IP is a skip reason in the summary."""

    OK = 0  # IP header decoded
    NOT_IP = 1  # a well-formed non-IP frame (ARP, LLDP, STP ...): counted by link tables only
    UNKNOWN_LINKTYPE = 2  # link type flowdiff does not decode: counted nowhere, reported by name
    TRUNCATED_LINK = 3  # frame shorter than its link-layer header
    BAD_IP = 4  # IP version/IHL invalid or IP header not captured: counted by link tables only

    NAMES = {0: "ok", 1: "not-ip", 2: "unknown-linktype", 3: "truncated-link", 4: "bad-ip-header"}


# Key fields a table may use, with their stored Arrow type.
KEY_FIELDS: dict[str, pa.DataType] = {
    "src": pa.string(),
    "dst": pa.string(),
    "client": pa.string(),
    "server": pa.string(),
    "proto": pa.uint8(),
    "sport": pa.uint16(),
    "dport": pa.uint16(),
    "service_port": pa.uint16(),
    "src_label": pa.string(),
    "dst_label": pa.string(),
    "client_label": pa.string(),
    "server_label": pa.string(),
    "vlan": pa.uint16(),
    "ip_version": pa.uint8(),
    "ethertype": pa.uint16(),
    "src_mac": pa.string(),
    "dst_mac": pa.string(),
    "icmp_type": pa.uint8(),
    "icmp_code": pa.uint8(),
    "tcp_flags": pa.uint8(),
    # flow records (flowdiff/netflow.py): the exporter's address and SNMP interface indexes; "" and 0 for packets
    "exporter": pa.string(),
    "input_if": pa.uint32(),
    "output_if": pa.uint32(),
}
# Key fields of log tables (filled only from syslog files, never from captures; see flowdiff.logsource).
LOG_KEYS: dict[str, pa.DataType] = {
    "host": pa.string(),
    "program": pa.string(),
    "template": pa.string(),
    "facility": pa.string(),
    "severity": pa.string(),
}
KEY_FIELDS.update(LOG_KEYS)
# Network keys carry their prefix length in the name: "src_net/24", "dst_net/64".
NET_BASES = ("src_net", "dst_net", "client_net", "server_net")
_NET_RE = re.compile(r"^(src_net|dst_net|client_net|server_net)/(\d{1,3})$")

# Key fields that only exist for IP frames: a table using any of them skips non-IP frames.
IP_ONLY = {
    "src",
    "dst",
    "client",
    "server",
    "proto",
    "sport",
    "dport",
    "service_port",
    "src_label",
    "dst_label",
    "client_label",
    "server_label",
    "icmp_type",
    "icmp_code",
    "tcp_flags",
}
# Address-valued keys (text form); collapse / ipv6_prefix apply to these.
ADDRESS_KEYS = ("src", "dst", "client", "server")

METRICS: dict[str, pa.DataType] = {
    "packets": pa.uint64(),
    "bytes": pa.uint64(),
    "first_seen": TIMESTAMP,
    "last_seen": TIMESTAMP,
}
INTERVAL = "interval_start"
PARTITION = "sensor"


@dataclass(frozen=True)
class NetKey:
    base: str  # "src_net", ...
    prefix: int


def parse_net_key(name: str) -> NetKey | None:
    m = _NET_RE.match(name)
    if not m:
        return None
    prefix = int(m.group(2))
    if prefix > 128:
        return None
    return NetKey(m.group(1), prefix)


def is_key_field(name: str) -> bool:
    return name in KEY_FIELDS or parse_net_key(name) is not None


def key_type(name: str) -> pa.DataType:
    if name in KEY_FIELDS:
        return KEY_FIELDS[name]
    if parse_net_key(name) is not None:
        return pa.string()
    raise KeyError(name)


def is_log_table(keys: Sequence[str]) -> bool:
    """A table keyed by log fields: filled from syslog files only (config refuses mixing the two kinds)."""
    return any(k in LOG_KEYS for k in keys)


def log_tables(tables: Mapping[str, Any]) -> dict[str, Any]:
    """The log tables among ``tables`` (name -> TableConfig)."""
    return {n: tc for n, tc in tables.items() if is_log_table(tc.keys)}


def packet_tables(tables: Mapping[str, Any]) -> dict[str, Any]:
    """The tables filled from captures among ``tables``."""
    return {n: tc for n, tc in tables.items() if not is_log_table(tc.keys)}


def is_ip_table(keys: Sequence[str]) -> bool:
    return any(k in IP_ONLY or parse_net_key(k) is not None for k in keys)


def table_schema(keys: Sequence[str]) -> pa.Schema:
    """Schema of a count table's Parquet files (without the hive ``sensor`` partition column)."""
    fields = [pa.field(INTERVAL, TIMESTAMP, nullable=False)]
    fields += [pa.field(k, key_type(k), nullable=False) for k in keys]
    fields += [pa.field(m, t, nullable=False) for m, t in METRICS.items()]
    return pa.schema(fields)


def empty_frame(keys: Sequence[str]) -> Any:
    """A zero-row pandas DataFrame with the full dtypes of a count table (never ``None``)."""
    return table_schema(keys).empty_table().to_pandas()


DEFAULT_TABLES: dict[str, tuple[str, ...]] = {
    "hosts": ("src",),
    "pairs": ("src", "dst", "proto"),
    "services": ("client", "server", "proto", "service_port"),
    "link": ("ethertype", "src_mac", "dst_mac"),
}

# The always-collected table of which MAC carries which address (arpwatch's object): filled from ARP,
# IPv6 neighbour discovery and IP frames from the config's own networks (flowdiff.aggregate).
STATIONS = "stations"
STATIONS_KEYS: tuple[str, ...] = ("src_mac", "src")
# The log table a config gets with a [logs] section (unless it defines a log table itself).
DEFAULT_LOG_TABLES: dict[str, tuple[str, ...]] = {"messages": ("host", "program", "template")}
