"""The whole cycle on real captures: collect -> learn -> collect more -> diff -> accept, through the CLI.

The expected new rows come from tshark's reference tables (tests/data/*.oracle.i60.csv), not from flowdiff."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
from click.testing import CliRunner

from flowdiff.cli import main

DATA = Path(__file__).resolve().parent / "data"
NEW = ["zeek__tunnels__Teredo.pcap", "tcpdump__mpls-traceroute.pcap"]
CONFIG = """
interval = 60
sensor = "real"
[tables.pairs]
keys = ["src", "dst", "proto"]
min_intervals = 1
min_packets = 1
"""


def oracle_pairs(names: list[str]) -> set[tuple[str, str, int]]:
    out: set[tuple[str, str, int]] = set()
    for name in names:
        df = pd.read_csv(DATA / f"{name.removesuffix('.gz')}.oracle.i60.csv", dtype={"src": str, "dst": str})
        out |= set(zip(df.src, df.dst, df.proto.astype(int), strict=True))
    return out


def cli(*args: str):
    r = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert r.exit_code in (0, 1), r.output
    return r


def test_real_captures_learn_diff_accept(write_config):
    config = str(write_config(CONFIG))
    known = sorted(
        p.name
        for p in DATA.glob("*.pcap*")
        if (DATA / f"{p.name.removesuffix('.gz')}.oracle.i60.csv").exists() and p.name not in NEW
    )
    cli("collect", "--config", config, *(str(DATA / n) for n in known))
    learned = cli("learn", "--config", config)
    assert "pairs" in learned.output

    assert (
        cli("diff", "--config", config, "--format", "json").output == ""
    )  # learned intervals count as diffed

    cli("collect", "--config", config, *(str(DATA / n) for n in NEW))
    r = cli("diff", "--config", config, "--format", "json", "--exit-code")
    assert r.exit_code == 1
    rows = [json.loads(line) for line in r.output.splitlines()]
    rows = [row for row in rows if row["table"] != "stations"]  # the always-collected table (issue 14)
    got = {(row["src"], row["dst"], row["proto"]) for row in rows}
    want = oracle_pairs(NEW) - oracle_pairs(known)
    assert want and got == want
    assert len(rows) == len(got)  # each new key exactly once
    assert all(row["reason"] == "new" for row in rows)

    again = cli("diff", "--config", config, "--format", "json", "--exit-code")
    assert again.exit_code == 0 and again.output == ""  # nothing is reported twice

    report_id = sorted(p.name for p in (Path("reports")).iterdir() if re.match(r"^\d{8}T", p.name))[-1]
    cli("accept", "--config", config, report_id, "--reason", "lab traffic")
    shown = cli("baseline", "show", "--config", config, "--format", "json").output
    in_baseline = {
        (r["src"], r["dst"], r["proto"]) for r in map(json.loads, shown.splitlines()) if "dst" in r
    }
    assert want <= in_baseline
