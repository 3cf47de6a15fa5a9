"""Configuration: one TOML file, every key optional.

Lookup order: ``--config FILE``, else ``$FLOWDIFF_CONFIG``, else ``./flowdiff.toml``, else built-in
defaults. Unknown keys are errors (a typo must not silently disable a table or the mail).

Paths, one rule: every relative path in a config file (store, baselines, reports, spool, outbox, rules,
templates, networks, mail cafile/password_file) is relative to the folder of that file, and so are the
defaults of the keys it leaves out (``store`` is ``<config folder>/store``): cron runs
``flowdiff run --config /site/flowdiff.toml`` from the home directory and must find the site's store,
not start a new one there. Without any config file the defaults are relative to the working directory,
and so are command-line overrides (``--store DIR``).
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import socket
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from flowdiff.errors import ConfigError
from flowdiff.schema import (
    ADDRESS_KEYS,
    DEFAULT_LOG_TABLES,
    DEFAULT_TABLES,
    LOG_KEYS,
    STATIONS,
    STATIONS_KEYS,
    is_key_field,
    is_log_table,
)

CONFIG_ENV = "FLOWDIFF_CONFIG"
DEFAULT_CONFIG_NAME = "flowdiff.toml"

_DURATION_RE = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")
_DURATION_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)\s*$", re.IGNORECASE)
_SIZE_UNIT = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
    "t": 10**12,
    "ki": 2**10,
    "mi": 2**20,
    "gi": 2**30,
    "ti": 2**40,
}
HEARTBEATS = ("off", "daily")


def parse_duration(value: Any, key: str = "duration") -> int:
    """Seconds from an int or a string like ``300``, ``5m``, ``7d``, ``2w``."""
    if isinstance(value, bool):
        raise ConfigError(f"expected seconds or a duration like '7d', got {value!r}", key=key)
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"must not be negative, got {value}", key=key)
        return value
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return int(m.group(1)) * _DURATION_UNIT[m.group(2)]
    raise ConfigError(f"expected seconds or a duration like '7d', got {value!r}", key=key)


def parse_message_size(value: Any, key: str = "max_message_bytes") -> int:
    """A mail size limit: at least 10 kB, or no report could carry its first rows."""
    n = parse_size(value, key)
    if n < 10_000:
        raise ConfigError(f"expected a size of at least 10kB like 5MB or 500kB, got {value!r}", key=key)
    return n


def parse_size(value: Any, key: str = "size") -> int:
    """Bytes from an int or a string like ``1GB``, ``500MB``, ``2GiB`` (KB/MB/GB are powers of 1000)."""
    if isinstance(value, bool):
        raise ConfigError(f"expected bytes or a size like '1GB', got {value!r}", key=key)
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"must not be negative, got {value}", key=key)
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            unit = m.group(2).lower().removesuffix("b")
            if unit in _SIZE_UNIT:
                return int(float(m.group(1)) * _SIZE_UNIT[unit])
    raise ConfigError(f"expected bytes or a size like '1GB', '500MB', got {value!r}", key=key)


@dataclass(frozen=True)
class TableConfig:
    """One count table (an NNstat statistics object) and how learn/diff treat it."""

    name: str
    keys: tuple[str, ...]
    # canonicalisation before learn and diff
    collapse: tuple[str, ...] = ()  # network labels whose addresses become the label itself
    ipv6_prefix: int | None = None  # reduce IPv6 addresses to this prefix ("2001:db8::/64")
    collapse_random_macs: bool = True  # locally administered MACs -> "random"
    # evidence needed for a key to enter the baseline
    min_intervals: int = 2
    min_packets: int = 2
    both_directions: bool = False


@dataclass(frozen=True)
class MailConfig:
    host: str | None = None
    port: int | None = None  # default: 587 for starttls, 465 for implicit, 25 for none
    tls: str = "starttls"  # "starttls" | "implicit" | "none"
    verify: bool = True
    cafile: str | None = None
    username: str | None = None
    password_env: str | None = None
    password_file: str | None = None
    from_addr: str | None = None
    to: tuple[str, ...] = ()
    timeout: float = 30.0
    sensor: str | None = None  # name in the subject; defaults to the top-level sensor
    heartbeat: str = "off"  # "daily": an "all quiet" summary once a day, so that silence can be trusted

    @property
    def enabled(self) -> bool:
        return bool(self.host and self.to)

    @property
    def effective_port(self) -> int:
        if self.port:
            return self.port
        return {"starttls": 587, "implicit": 465, "none": 25}[self.tls]


@dataclass(frozen=True)
class LogsConfig:
    """``[logs]``: syslog input (flowdiff.logsource). Its presence adds the ``messages`` table."""

    paths: tuple[Path, ...] = ()  # files, directories, globs that `run` collects besides --spool
    timezone: str = "UTC"  # zone of RFC 3164 time stamps (they carry none)


@dataclass(frozen=True)
class Config:
    store: Path = Path("store")  # or a StoreUrl: "s3://bucket/prefix"
    baselines: Path = Path("baselines")
    reports: Path = Path("reports")
    interval: int = 300
    sensor: str = field(default_factory=lambda: default_sensor())
    networks: dict[str, str] = field(default_factory=dict)  # canonical CIDR -> label
    service_ports: tuple[int, ...] = ()  # ports >= 1024 that are services (client/server rule)
    tables: dict[str, TableConfig] = field(default_factory=dict)
    rules: Path | None = None  # default <baselines>/rules.toml
    rearm: int = 0  # seconds after which a reported, never-accepted key is reported again; 0 = never
    spool: Path | None = None  # tcpdump spool directory for `flowdiff run` (else --spool)
    settle: int = 600  # the newest capture in a directory counts as closed after this many idle seconds
    max_rows: int = 25  # rows per table in the body of a report (the rest go to the CSV attachment)
    max_message_bytes: int = 5_000_000  # a report mail never exceeds this (the CSV attachment is cut)
    templates: Path | None = None  # user folder overriding the packaged report templates
    outbox: Path | None = None  # default <reports>/outbox
    stale_after: int = 3600  # health: no new capture in the spool for this long is a problem; 0 = off
    min_free: int = 10**9  # health: less free disk than this (bytes) under the store is a problem; 0 = off
    mail: MailConfig = field(default_factory=MailConfig)
    scheduler: str | None = None  # [dask] scheduler: tcp://HOST:PORT of a dask.distributed cluster
    s3_endpoint_url: str | None = None  # [s3] endpoint_url (else $AWS_ENDPOINT_URL, else AWS itself)
    compact_after: int = 2 * 86400  # store: complete UTC days older than this are compacted into day files
    keep: int | None = None  # store: `expire` removes intervals older than this; None = keep everything
    baseline_scope: str = "sensor"  # "sensor": a baseline per sensor; "all": one shared by every sensor
    logs: LogsConfig | None = None  # [logs]; None when the config has no such section
    source: Path | None = None  # the file this was read from, None for built-in defaults
    flow_ports: tuple[int, ...] = ()  # UDP ports whose packets in captures are flow export (NetFlow/IPFIX)
    flow_split: str = "start"  # a flow spanning intervals: all in its start's, or "proportional" to time

    @property
    def rules_path(self) -> Path:
        return self.rules if self.rules is not None else self.baselines / "rules.toml"

    @property
    def outbox_path(self) -> Path:
        return self.outbox if self.outbox is not None else self.reports / "outbox"

    @property
    def config_arg(self) -> str:
        """`` --config /absolute/path`` when a config file was used (also ./flowdiff.toml or
        $FLOWDIFF_CONFIG), else "": every command flowdiff prints for a human to paste (in reports, hints,
        health mails) carries it, so that pasted in another folder or shell it acts on the same site."""
        if self.source is None:
            return ""
        return f" --config {shlex.quote(str(Path(self.source).resolve()))}"

    @property
    def sensor_name(self) -> str:
        return self.mail.sensor or self.sensor

    @property
    def data_sensor(self) -> str | None:
        """The store partition that learn and diff read: this sensor's, or every sensor's when the
        baseline is shared (``baseline_scope = "all"``)."""
        return self.sensor if self.baseline_scope == "sensor" else None

    def for_sensor(self, name: str) -> Config:
        """The config seen as sensor ``name`` of the same store (``--sensor NAME``, and every command for
        its own sensor). With a baseline per sensor, the baselines folder itself belongs to one sensor
        (the one named in its ``SENSOR`` file, written by its first learn; without the file, the config's
        own sensor, as before sensors shared stores); every other sensor keeps its baselines and reports
        in ``<baselines>/sensors/<name>`` and ``<reports>/sensors/<name>``, whichever sensor's config is
        used. Rules and the outbox stay shared."""
        name = _sensor(name, "--sensor")
        changes: dict[str, Any] = {"sensor": name}
        if name != self.sensor:
            changes["mail"] = replace(self.mail, sensor=None)
        if self.baseline_scope == "sensor" and name != self.baselines_owner():
            changes.update(
                baselines=self.baselines / "sensors" / name,
                reports=self.reports / "sensors" / name,
                rules=self.rules_path,
                outbox=self.outbox_path,
            )
        return replace(self, **changes) if changes != {"sensor": self.sensor} else self

    def baselines_owner(self) -> str:
        """The sensor whose baselines are in the baselines folder itself (see :meth:`for_sensor`)."""
        try:
            return (self.baselines / BASELINES_OWNER).read_text(encoding="utf-8").strip() or self.sensor
        except OSError:
            return self.sensor

    def with_overrides(self, **changes: Any) -> Config:
        """A copy with CLI overrides applied (``None`` values are ignored)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        for k in ("store", "baselines", "reports"):
            if k == "store" and is_store_url(changes.get(k)):
                changes[k] = StoreUrl(changes[k], self.s3_endpoint_url)
            elif k in changes:
                changes[k] = Path(changes[k])
                _check_folder(changes[k], f"--{k}")
        if "interval" in changes and int(changes["interval"]) <= 0:
            raise ConfigError("must be a positive number of seconds", key="interval")
        return replace(self, **changes)

    def select_tables(self, names: Sequence[str] | None) -> dict[str, TableConfig]:
        """The tables named (all when ``names`` is empty); unknown names are an error."""
        if not names:
            return dict(self.tables)
        missing = [n for n in names if n not in self.tables]
        if missing:
            known = ", ".join(self.tables)
            raise ConfigError(f"no table named {missing[0]!r} (tables: {known})", key="table")
        return {n: self.tables[n] for n in names}


class StoreUrl(str):
    """``store = "s3://bucket/prefix"``: kept as text (a Path would fold the "//"), with the endpoint of
    ``[s3] endpoint_url``; flowdiff.store opens it as a store on object storage (flowdiff.objstore)."""

    endpoint_url: str | None

    def __new__(cls, url: str, endpoint_url: str | None = None) -> StoreUrl:
        obj = super().__new__(cls, url.rstrip("/"))
        obj.endpoint_url = endpoint_url
        return obj

    def __reduce__(self) -> Any:
        return (StoreUrl, (str(self), self.endpoint_url))


def is_store_url(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("s3://")


def default_sensor() -> str:
    """The host name, cut to what a partition directory and a mail subject can safely hold."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname().split(".")[0]).strip("-._")
    return name[:63] or "sensor"


def default_tables() -> dict[str, TableConfig]:
    return with_stations({name: TableConfig(name=name, keys=keys) for name, keys in DEFAULT_TABLES.items()})


def with_stations(tables: dict[str, TableConfig]) -> dict[str, TableConfig]:
    """The tables plus ``stations`` (src_mac, src), whatever the config names: it is small, and the
    incident grouping needs to know which MAC carries which address. Unless configured itself, it
    collapses as the other tables say (their collapse labels, their IPv6 prefix, random MACs)."""
    if STATIONS in tables:
        if tables[STATIONS].keys != STATIONS_KEYS:
            raise ConfigError("the stations table is keyed by src_mac, src", key=f"tables.{STATIONS}.keys")
        return tables
    if tables and all(is_log_table(tc.keys) for tc in tables.values()):
        return tables  # a syslog-only listener sees no frames: a stations table would stay empty forever
    collapse: list[str] = []
    for tc in tables.values():
        collapse += [c for c in tc.collapse if c not in collapse]
    prefixes = [tc.ipv6_prefix for tc in tables.values() if tc.ipv6_prefix is not None]
    station = TableConfig(
        name=STATIONS,
        keys=STATIONS_KEYS,
        collapse=tuple(collapse),
        ipv6_prefix=min(prefixes) if prefixes else None,
        collapse_random_macs=all(tc.collapse_random_macs for tc in tables.values()),
    )
    return {**tables, STATIONS: station}


_TOP_KEYS = {
    "store",
    "baselines",
    "reports",
    "interval",
    "sensor",
    "networks",
    "service_ports",
    "tables",
    "rules",
    "rearm",
    "settle",
    "spool",
    "max_rows",
    "templates",
    "outbox",
    "mail",
    "stale_after",
    "min_free",
    "max_message_bytes",
    "dask",
    "s3",
    "logs",
    "flow_ports",
    "flow_split",
    "compact_after",
    "keep",
    "baseline_scope",
}
_LOGS_KEYS = {"paths", "timezone"}
_TABLE_KEYS = {
    "keys",
    "collapse",
    "ipv6_prefix",
    "collapse_random_macs",
    "min_intervals",
    "min_packets",
    "both_directions",
}
_MAIL_KEYS = {
    "host",
    "port",
    "tls",
    "verify",
    "cafile",
    "username",
    "password_env",
    "password_file",
    "from",
    "to",
    "timeout",
    "sensor",
    "heartbeat",
}
_FOLDER_KEYS = ("store", "baselines", "reports", "spool", "outbox")  # must be folders when they exist
BASELINES_OWNER = "SENSOR"  # <baselines>/SENSOR: the sensor whose baseline is in the folder itself
_SENSOR_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def find_config_file(explicit: str | os.PathLike | None = None) -> Path | None:
    if explicit:
        return Path(explicit)
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    local = Path(DEFAULT_CONFIG_NAME)
    return local if local.is_file() else None


def load_config(path: str | os.PathLike | None = None) -> Config:
    """Read the config (see module doc for the lookup order); built-in defaults when there is none."""
    found = find_config_file(path)
    if found is None:
        config = Config(tables=default_tables())
        for key in ("store", "baselines", "reports"):
            _check_folder(getattr(config, key), key)
        return config
    try:
        raw = tomllib.loads(found.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("file not found", path=str(found)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read: {e}", path=str(found)) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"not valid TOML: {e}", path=str(found)) from None
    try:
        return parse_config(raw, base=found.parent, source=found)
    except ConfigError as e:
        if e.path is None:
            raise ConfigError(str(e).removeprefix("config "), path=str(found)) from None
        raise


def parse_config(raw: dict[str, Any], *, base: Path = Path("."), source: Path | None = None) -> Config:
    """Validate a parsed TOML document. Every relative path, and the default of every folder key left
    out, is taken relative to ``base``, the config file's folder (see the module doc)."""
    _reject_unknown(raw, _TOP_KEYS, "")
    kw: dict[str, Any] = {"source": source}
    for key in ("store", "baselines", "reports"):
        kw[key] = _rel(base, _str(raw[key], key) if key in raw else key)
    for key in ("spool", "rules", "templates", "outbox"):
        if key in raw:
            kw[key] = _rel(base, _str(raw[key], key))
    for key in _FOLDER_KEYS:
        if key in kw and not (key == "store" and is_store_url(raw.get("store"))):
            _check_folder(kw[key], key)
    if "interval" in raw:
        kw["interval"] = parse_duration(raw["interval"], "interval")
        if kw["interval"] <= 0:
            raise ConfigError("must be a positive number of seconds", key="interval")
    for key in ("rearm", "settle", "stale_after"):
        if key in raw:
            kw[key] = parse_duration(raw[key], key)
    kw.update(_store_keys(raw))
    if "min_free" in raw:
        kw["min_free"] = parse_size(raw["min_free"], "min_free")
    if "max_rows" in raw:
        kw["max_rows"] = _int(raw["max_rows"], "max_rows", minimum=1)
    if "max_message_bytes" in raw:
        kw["max_message_bytes"] = parse_message_size(raw["max_message_bytes"])
    if "sensor" in raw:
        kw["sensor"] = _sensor(raw["sensor"], "sensor")
    if "service_ports" in raw:
        ports = raw["service_ports"]
        if not isinstance(ports, list):
            raise ConfigError("expected a list of port numbers", key="service_ports")
        kw["service_ports"] = tuple(_int(p, "service_ports", minimum=1, maximum=65535) for p in ports)
    if "flow_ports" in raw:
        if not isinstance(raw["flow_ports"], list):
            raise ConfigError("expected a list of UDP port numbers", key="flow_ports")
        kw["flow_ports"] = tuple(_int(p, "flow_ports", minimum=1, maximum=65535) for p in raw["flow_ports"])
    if "flow_split" in raw:
        if raw["flow_split"] not in ("start", "proportional"):
            raise ConfigError('expected "start" or "proportional"', key="flow_split")
        kw["flow_split"] = raw["flow_split"]
    if "networks" in raw:
        kw["networks"] = parse_networks(raw["networks"], base)
    kw["tables"] = _tables(raw.get("tables"), kw.get("networks", {}))
    if "mail" in raw:
        kw["mail"] = _mail(raw["mail"], base)
    kw.update(_dask_s3(raw))
    if is_store_url(raw.get("store")):
        kw["store"] = StoreUrl(raw["store"], kw.get("s3_endpoint_url"))

    if "logs" in raw:
        kw["logs"] = _logs(raw["logs"], base)
        if not any(k in LOG_KEYS for tc in kw["tables"].values() for k in tc.keys):
            kw["tables"] = {
                **kw["tables"],
                **{n: TableConfig(name=n, keys=k) for n, k in DEFAULT_LOG_TABLES.items()},
            }
    return Config(**kw)


def _dask_s3(raw: dict[str, Any]) -> dict[str, Any]:
    """``[dask] scheduler`` and ``[s3] endpoint_url`` (flowdiff.distributed, flowdiff.objstore)."""
    out: dict[str, Any] = {}
    for section, key, field_name in (
        ("dask", "scheduler", "scheduler"),
        ("s3", "endpoint_url", "s3_endpoint_url"),
    ):
        if section not in raw:
            continue
        if not isinstance(raw[section], dict):
            raise ConfigError(f"expected a [{section}] table", key=section)
        _reject_unknown(raw[section], {key}, f"{section}.")
        if key in raw[section]:
            value = _str(raw[section][key], f"{section}.{key}")
            if "://" not in value:
                raise ConfigError(
                    f"expected an address like tcp://HOST:PORT or http://HOST:PORT, got {value!r}",
                    key=f"{section}.{key}",
                )
            out[field_name] = value
    return out


def _logs(raw: Any, base: Path) -> LogsConfig:
    if not isinstance(raw, dict):
        raise ConfigError("expected a [logs] section", key="logs")
    _reject_unknown(raw, _LOGS_KEYS, "logs.")
    kw: dict[str, Any] = {}
    if "paths" in raw:
        paths = raw["paths"]
        if isinstance(paths, str):
            paths = [paths]
        if not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths):
            raise ConfigError("expected a list of files, directories or globs", key="logs.paths")
        kw["paths"] = tuple(_rel(base, p) for p in paths)
    if "timezone" in raw:
        tz = _str(raw["timezone"], "logs.timezone")
        if tz.upper() != "UTC":
            try:
                from zoneinfo import ZoneInfo

                ZoneInfo(tz)
            except (ValueError, KeyError, OSError):
                raise ConfigError(
                    f"unknown time zone {tz!r} (an IANA name like Europe/Berlin, or UTC)", key="logs.timezone"
                ) from None
        kw["timezone"] = tz
    return LogsConfig(**kw)


def parse_networks(value: Any, base: Path = Path(".")) -> dict[str, str]:
    """``{"CIDR": "label"}`` inline, or the path of a TOML file with such a table (a ``[networks]``
    table or top-level entries) or of a text file with ``CIDR label`` lines."""
    if isinstance(value, str):
        path = _rel(base, value)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"cannot read networks file {path}: {e.strerror}", key="networks") from None
        if path.suffix == ".toml":
            try:
                doc = tomllib.loads(text)
            except tomllib.TOMLDecodeError as e:
                raise ConfigError(f"{path}: not valid TOML: {e}", key="networks") from None
            value = doc.get("networks", doc)
        else:
            value = {}
            for n, line in enumerate(text.splitlines(), 1):
                line = line.split("#", 1)[0].strip()
                if not line:
                    continue
                parts = line.replace(",", " ").split()
                if len(parts) != 2:
                    raise ConfigError(f"{path}:{n}: expected 'CIDR label'", key="networks")
                value[parts[0]] = parts[1]
    if not isinstance(value, dict):
        raise ConfigError('expected a table of "CIDR" = "label" or a file name', key="networks")
    out: dict[str, str] = {}
    for cidr, label in value.items():
        key = f"networks.{cidr!r}"
        try:
            net = ipaddress.ip_network(str(cidr), strict=False)
        except ValueError:
            raise ConfigError("not a valid CIDR network", key=key) from None
        if not isinstance(label, str) or not label.strip():
            raise ConfigError("label must be a non-empty string", key=key)
        out[str(net)] = label.strip()
    return out


def _tables(raw: Any, networks: dict[str, str]) -> dict[str, TableConfig]:
    if raw is None:
        return default_tables()
    if not isinstance(raw, dict) or not raw:
        raise ConfigError("expected [tables.NAME] sections with keys = [...]", key="tables")
    labels = set(networks.values())
    out: dict[str, TableConfig] = {}
    for name, spec in raw.items():
        prefix = f"tables.{name}"
        if not re.match(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,62}$", name):
            raise ConfigError("table names use letters, digits, '_' and '-'", key=prefix)
        if not isinstance(spec, dict):
            raise ConfigError("expected a table with keys = [...]", key=prefix)
        _reject_unknown(spec, _TABLE_KEYS, prefix + ".")
        keys = spec.get("keys")
        if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
            raise ConfigError("expected a non-empty list of key field names", key=prefix + ".keys")
        for k in keys:
            if not is_key_field(k):
                raise ConfigError(f"unknown key field {k!r}", key=prefix + ".keys")
        if len(set(keys)) != len(keys):
            raise ConfigError("a key field is listed twice", key=prefix + ".keys")
        if any(k in LOG_KEYS for k in keys) and not all(k in LOG_KEYS for k in keys):
            raise ConfigError(
                f"log key fields ({', '.join(LOG_KEYS)}) cannot be mixed with packet key fields",
                key=prefix + ".keys",
            )
        kw: dict[str, Any] = {"name": name, "keys": tuple(keys)}
        if "collapse" in spec:
            col = spec["collapse"]
            if not isinstance(col, list) or not all(isinstance(c, str) for c in col):
                raise ConfigError("expected a list of network labels", key=prefix + ".collapse")
            unknown = [c for c in col if c not in labels]
            if unknown:
                raise ConfigError(f"label {unknown[0]!r} is not in [networks]", key=prefix + ".collapse")
            if not any(k in ADDRESS_KEYS for k in keys):
                raise ConfigError("table has no address key to collapse", key=prefix + ".collapse")
            kw["collapse"] = tuple(col)
        if "ipv6_prefix" in spec:
            kw["ipv6_prefix"] = _int(spec["ipv6_prefix"], prefix + ".ipv6_prefix", minimum=1, maximum=128)
        for b in ("collapse_random_macs", "both_directions"):
            if b in spec:
                kw[b] = _bool(spec[b], f"{prefix}.{b}")
        for n in ("min_intervals", "min_packets"):
            if n in spec:
                kw[n] = _int(spec[n], f"{prefix}.{n}", minimum=1)
        out[name] = TableConfig(**kw)
    return with_stations(out)


def _mail(raw: Any, base: Path) -> MailConfig:
    if not isinstance(raw, dict):
        raise ConfigError("expected a [mail] table", key="mail")
    _reject_unknown(raw, _MAIL_KEYS, "mail.")
    kw: dict[str, Any] = {}
    for k in ("host", "username", "password_env", "sensor"):
        if k in raw:
            kw[k] = _str(raw[k], f"mail.{k}")
    if "sensor" in kw:
        kw["sensor"] = _sensor(kw["sensor"], "mail.sensor")
    if "from" in raw:
        kw["from_addr"] = _address(raw["from"], "mail.from")
    if "to" in raw:
        to = raw["to"]
        if isinstance(to, str):
            to = [to]
        if not isinstance(to, list) or not to:
            raise ConfigError("expected an address or a list of addresses", key="mail.to")
        kw["to"] = tuple(_address(a, "mail.to") for a in to)
    if "port" in raw:
        kw["port"] = _int(raw["port"], "mail.port", minimum=1, maximum=65535)
    if "tls" in raw:
        tls = raw["tls"]
        if tls not in ("starttls", "implicit", "none"):
            raise ConfigError(f'expected "starttls", "implicit" or "none", got {tls!r}', key="mail.tls")
        kw["tls"] = tls
    if "verify" in raw:
        kw["verify"] = _bool(raw["verify"], "mail.verify")
    for k in ("cafile", "password_file"):
        if k in raw:
            kw[k] = str(_rel(base, _str(raw[k], f"mail.{k}")))
    if "timeout" in raw:
        t = raw["timeout"]
        if isinstance(t, bool) or not isinstance(t, int | float) or t <= 0:
            raise ConfigError(f"expected a positive number of seconds, got {t!r}", key="mail.timeout")
        kw["timeout"] = float(t)
    if "heartbeat" in raw:
        hb = raw["heartbeat"]
        if hb is False:
            hb = "off"
        if hb not in HEARTBEATS:
            raise ConfigError(f'expected "daily" or "off", got {hb!r}', key="mail.heartbeat")
        kw["heartbeat"] = hb
    if "password_env" in kw and "password_file" in kw:
        raise ConfigError("give password_env or password_file, not both", key="mail.password_env")
    return MailConfig(**kw)


def _reject_unknown(raw: dict[str, Any], allowed: set[str], prefix: str) -> None:
    for k in raw:
        if k not in allowed:
            raise ConfigError("unknown key", key=f"{prefix}{k}")


def _check_folder(path: Path, key: str) -> None:
    """A folder key naming a plain file would fail later with a confusing message: say it now."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path} is not a folder", key=key)


def _rel(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def _str(v: Any, key: str) -> str:
    if not isinstance(v, str) or not v:
        raise ConfigError(f"expected a non-empty string, got {v!r}", key=key)
    return v


def _bool(v: Any, key: str) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"expected true or false, got {v!r}", key=key)
    return v


def _int(v: Any, key: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"expected an integer, got {v!r}", key=key)
    if (minimum is not None and v < minimum) or (maximum is not None and v > maximum):
        raise ConfigError(f"{v} is out of range", key=key)
    return v


def _store_keys(raw: dict[str, Any]) -> dict[str, Any]:
    """compact_after, keep ("off" or a duration) and baseline_scope ("sensor" or "all")."""
    kw: dict[str, Any] = {}
    if "compact_after" in raw:
        kw["compact_after"] = parse_duration(raw["compact_after"], "compact_after")
    if "keep" in raw and raw["keep"] != "off":
        kw["keep"] = parse_duration(raw["keep"], "keep")
        if kw["keep"] <= 0:
            raise ConfigError("must be a positive duration like '400d', or \"off\"", key="keep")
    if "baseline_scope" in raw:
        if raw["baseline_scope"] not in ("sensor", "all"):
            raise ConfigError(
                f'expected "sensor" or "all", got {raw["baseline_scope"]!r}', key="baseline_scope"
            )
        kw["baseline_scope"] = raw["baseline_scope"]
    return kw


def _sensor(v: Any, key: str) -> str:
    s = _str(v, key)
    if not _SENSOR_RE.match(s):
        raise ConfigError("use letters, digits, '.', '_' and '-' (at most 63)", key=key)
    return s


def _address(v: Any, key: str) -> str:
    s = _str(v, key)
    if any(c in s for c in "\r\n\0") or "@" not in s:
        raise ConfigError(f"not a mail address: {s!r}", key=key)
    return s
