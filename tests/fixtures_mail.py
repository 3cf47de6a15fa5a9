"""DiffResult objects built directly (the report/mail tests need no store, no baseline)."""

from __future__ import annotations

import shlex

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from flowdiff.diff import ROW_COLUMNS, DiffResult

T0 = pd.Timestamp("2026-11-30 01:00:00", tz="UTC")
SERVICES = ("client", "server", "proto", "service_port")
HOSTS = ("src",)


def table_frame(
    report_id: str,
    table: str,
    keys: tuple[str, ...],
    key_rows: list[tuple],
    *,
    seed: int = 1,
    first_row: int = 1,
) -> pd.DataFrame:
    """New rows with distinct byte counts (row i: (i + seed) * 1111 bytes) and the exact commands."""
    rows = []
    for i, values in enumerate(key_rows):
        row = dict(zip(keys, values, strict=True))
        where = " ".join(shlex.quote(f"{k}={v}") for k, v in row.items())
        row.update(
            interval_start=T0 + pd.Timedelta(minutes=5 * (i % 3)),
            first_seen=T0 + pd.Timedelta(seconds=7 * i + 1),
            last_seen=T0 + pd.Timedelta(seconds=7 * i + 100),
            packets=3 * (i + seed),
            bytes=1111 * (i + seed),
            reason="new" if i % 4 else "deny-rule telnet",
            neighbour="" if i % 2 else f"{table} neighbour {i}",
            accept_cmd=f"flowdiff accept {table} --where {where}",
            deny_cmd=f"flowdiff deny {table} --where {where}",
        )
        rows.append(row)
    df = pd.DataFrame(rows, columns=[*keys, *ROW_COLUMNS])
    df["packets"] = df["packets"].astype("uint64")
    df["bytes"] = df["bytes"].astype("uint64")
    df = df.sort_values("bytes", ascending=False, kind="stable").reset_index(drop=True)
    df["row"] = range(first_row, first_row + len(df))  # the number `flowdiff accept REPORT ROW` takes
    return df


def make_result(
    report_id: str = "20261130T010000Z-abc123",
    *,
    services: int = 2,
    hosts: int = 1,
    sensor: str = "sensor1",
    client: str = "10.0.0.",
) -> DiffResult:
    svc = [(f"{client}{i + 10}", "192.0.2.1", 6 if i % 2 == 0 else 17, 22 + i) for i in range(services)]
    hst = [(f"198.51.100.{i + 1}",) for i in range(hosts)]
    rows = {
        "services": table_frame(report_id, "services", SERVICES, svc),
        "hosts": table_frame(report_id, "hosts", HOSTS, hst, seed=5, first_row=services + 1),
    }
    return DiffResult(
        report_id=report_id,
        rows=rows,
        keys={"services": SERVICES, "hosts": HOSTS},
        baseline_versions={"services": "v3-9f2c", "hosts": "v1-77aa"},
        since=T0,
        until=T0 + pd.Timedelta(minutes=15),
        intervals=6,
        sensor=sensor,
    )


def big_result(n: int, report_id: str = "20261130T010000Z-big400", *, sensor: str = "sensor1") -> DiffResult:
    """``n`` new rows in ``services`` (and 3 in ``hosts``), built column-wise: the huge-report case
    (issue 8 item 6 had 388,873 rows) without a Python loop per row."""
    i = np.arange(n, dtype=np.int64)
    octets = [pc.cast(pa.array(v), pa.string()) for v in (i // 65536 % 256, i // 256 % 256, i % 256)]
    clients = pc.binary_join_element_wise("10", *octets, ".")
    where = pc.binary_join_element_wise(
        "client=",
        clients,
        " server=192.0.2.1 proto=tcp service_port=",
        pc.cast(pa.array(1024 + i % 60000), pa.string()),
        "",
    )
    df = pd.DataFrame(
        {
            "client": clients.to_pandas(),
            "server": "192.0.2.1",
            "proto": np.full(n, 6, dtype=np.uint8),
            "service_port": (1024 + i % 60000).astype(np.uint16),
            "interval_start": T0 + pd.to_timedelta((i % 12) * 300, unit="s"),
            "first_seen": T0 + pd.to_timedelta(i % 3600, unit="s"),
            "last_seen": T0 + pd.to_timedelta(i % 3600 + 60, unit="s"),
            "packets": (i % 97 + 1).astype(np.uint64),
            "bytes": ((n - i) // 4 * 61 + 61).astype(np.uint64),  # ties of 4: ordered by packets, key
            "reason": "new",
            "neighbour": "",
            "accept_cmd": pc.binary_join_element_wise(
                "flowdiff accept services --where ", where, ""
            ).to_pandas(),
            "deny_cmd": pc.binary_join_element_wise("flowdiff deny services --where ", where, "").to_pandas(),
        }
    )
    df["row"] = np.arange(1, n + 1, dtype=np.int64)
    addresses = [("198.51.100.1",), ("198.51.100.2",), ("198.51.100.3",)]
    hosts = table_frame(report_id, "hosts", HOSTS, addresses, first_row=n + 1)
    return DiffResult(
        report_id=report_id,
        rows={"services": df, "hosts": hosts},
        keys={"services": SERVICES, "hosts": HOSTS},
        baseline_versions={"services": "v3-9f2c", "hosts": "v1-77aa"},
        since=T0,
        until=T0 + pd.Timedelta(hours=1),
        intervals=12,
        sensor=sensor,
    )
