"""flowdiff packets: the packets behind a report row, found in real captures and read back with dpkt.

The site (two normal days of the synthetic mail enclave, then a day with the anomalies) is collected,
learned and diffed once per module; tests that delete or change captures work on a copy of it.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import dpkt
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from flowdiff.baseline import learn
from flowdiff.canon import canonicalise
from flowdiff.capture import open_capture
from flowdiff.cli import main
from flowdiff.collect import collect
from flowdiff.config import load_config
from flowdiff.demo import frames as synth_frames
from flowdiff.demo import scenario as synth_scenario
from flowdiff.diff import diff
from flowdiff.errors import ReportError
from flowdiff.packets import PacketsResult, find_packets, write_pcap
from flowdiff.store import Store

ROTATE = 4 * 3600


def _toml(doc: dict) -> str:
    lines, tables = [], []
    for k, v in doc.items():
        if isinstance(v, dict):
            tables.append((k, v))
        else:
            lines.append(f"{k} = {json.dumps(v)}")
    for k, v in tables:
        if k == "networks":
            lines += ["[networks]"] + [f"{json.dumps(c)} = {json.dumps(lab)}" for c, lab in v.items()]
        else:
            for name, sub in v.items():
                lines += [f"[{k}.{name}]"] + [f"{n} = {json.dumps(x)}" for n, x in sub.items()]
    return "\n".join(lines) + "\n"


def _write_config(scenario: synth_scenario.Scenario, root: Path) -> Path:
    path = root / "flowdiff.toml"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(_toml(scenario.config_dict(root)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    base = tmp_path_factory.mktemp("packets-site")
    scenario = synth_scenario.enclave_scenario(base / "captures", days=2, anomaly_day=True, rotate=ROTATE)
    config_path = _write_config(scenario, base / "site")
    config = load_config(config_path)
    collect([str(p) for p in scenario.normal_files], config)
    learn(config)
    collect([str(p) for p in scenario.last_day_files], config)
    report = diff(config)
    assert report.report_id
    return {"base": base, "scenario": scenario, "config_path": config_path, "report": report}


def _row(report, table: str, **key) -> pd.Series:
    df = report.rows[table]
    m = np.ones(len(df), dtype=bool)
    for k, v in key.items():
        m &= (df[k] == v).to_numpy()
    assert m.sum() == 1, f"no single {table} row {key}"
    return df[m].iloc[0]


def _cli(*args: str):
    return CliRunner().invoke(main, ["packets", *args])


def _read_pcap(path: Path) -> tuple[int, list[tuple[float, bytes]], int]:
    """(link type, dpkt's (ts, bytes) records, sum of the records' original lengths)."""
    with open(path, "rb") as f:
        reader = dpkt.pcap.Reader(f)
        records = list(reader)
        linktype = reader.datalink()
    reader2 = open_capture(path)
    wire = sum(int(b.wirelen.sum()) for b in reader2.batches())
    assert reader2.stats.records == len(records) and not reader2.stats.damage
    return linktype, records, wire


def _ip_of(buf: bytes):
    eth = dpkt.ethernet.Ethernet(buf)
    return eth, eth.data


def _addr(raw: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(raw)


# ------------------------------------------------------------------ report rows to pcap


def test_services_row_with_a_collapsed_client_writes_exactly_its_packets(site, tmp_path):
    report = site["report"]
    row = _row(report, "services", client="internet", server=synth_scenario.MAILHOST.ip, service_port=23)
    out = tmp_path / "telnet.pcap"
    r = _cli(report.report_id, str(row["row"]), "-w", str(out), "--config", str(site["config_path"]))
    assert r.exit_code == 0, r.output
    assert (
        f"{row['packets']} packets, {row['bytes']:,} bytes" in r.stdout and "1 capture searched" in r.stdout
    )
    assert "Warning" not in r.output
    linktype, records, wire = _read_pcap(out)
    assert linktype == dpkt.pcap.DLT_EN10MB
    assert len(records) == row["packets"] and wire == row["bytes"]
    internet = ipaddress.ip_network("0.0.0.0/0")
    local = [
        ipaddress.ip_network(n) for n in ("10.20.0.0/24", "10.20.1.0/24", "10.20.100.0/24", "10.8.0.0/24")
    ]
    first_ts = row["first_seen"].timestamp()
    for ts, buf in records:
        _, ip = _ip_of(buf)
        tcp = ip.data
        assert isinstance(tcp, dpkt.tcp.TCP)
        a, b = _addr(ip.src), _addr(ip.dst)
        server_first = str(a) == synth_scenario.MAILHOST.ip
        client, server = (b, a) if server_first else (a, b)
        assert str(server) == synth_scenario.MAILHOST.ip and (tcp.sport if server_first else tcp.dport) == 23
        assert client in internet and not any(client in n for n in local)  # collapsed to "internet"
        assert ts >= first_ts - 1e-6
    first_tcp = _ip_of(records[0][1])[1].data
    assert first_tcp.flags & dpkt.tcp.TH_SYN and not first_tcp.flags & dpkt.tcp.TH_ACK


def test_services_row_of_a_udp_exchange_holds_both_directions(site, tmp_path):
    report = site["report"]
    row = _row(report, "services", client=synth_scenario.NEW_TALKER.ip, service_port=53)
    out = tmp_path / "dns.pcap"
    r = _cli(report.report_id, str(row["row"]), "-w", str(out), "--config", str(site["config_path"]))
    assert r.exit_code == 0, r.output
    _, records, wire = _read_pcap(out)
    assert len(records) == row["packets"] and wire == row["bytes"]
    directions = set()
    for _, buf in records:
        _, ip = _ip_of(buf)
        udp = ip.data
        assert isinstance(udp, dpkt.udp.UDP) and 53 in (udp.sport, udp.dport)
        directions.add((str(_addr(ip.src)), str(_addr(ip.dst))))
    assert directions == {
        (synth_scenario.NEW_TALKER.ip, synth_scenario.RESOLVER.ip),
        (synth_scenario.RESOLVER.ip, synth_scenario.NEW_TALKER.ip),
    }


def test_hosts_row_writes_the_packets_the_host_sent(site, tmp_path):
    report = site["report"]
    row = _row(report, "hosts", src=synth_scenario.NEW_TALKER.ip)
    out = tmp_path / "hosts.pcap"
    r = _cli(report.report_id, str(row["row"]), "-w", str(out), "--config", str(site["config_path"]))
    assert r.exit_code == 0, r.output
    _, records, wire = _read_pcap(out)
    assert len(records) == row["packets"] > 0 and wire == row["bytes"]
    assert {str(_addr(_ip_of(buf)[1].src)) for _, buf in records} == {synth_scenario.NEW_TALKER.ip}


@pytest.mark.parametrize("ethertype", [synth_scenario.ODD_ETHERTYPE, synth_frames.ETH_ARP])
def test_link_row_finds_non_ip_frames(site, tmp_path, ethertype):
    report = site["report"]
    df = report.rows["link"]
    row = df[df["ethertype"] == ethertype].iloc[0]
    out = tmp_path / "link.pcap"
    r = _cli(report.report_id, str(row["row"]), "-w", str(out), "--config", str(site["config_path"]))
    assert r.exit_code == 0, r.output
    _, records, wire = _read_pcap(out)
    assert len(records) == row["packets"] > 0 and wire == row["bytes"]
    for _, buf in records:
        eth = dpkt.ethernet.Ethernet(buf)
        assert eth.type == ethertype
        assert (
            synth_frames.mac_str(eth.src) == row["src_mac"]
            and synth_frames.mac_str(eth.dst) == row["dst_mac"]
        )


def test_one_line_per_packet_without_w(site):
    report = site["report"]
    row = _row(report, "services", client="internet", server=synth_scenario.MAILHOST.ip, service_port=23)
    r = _cli(report.report_id, str(row["row"]), "--config", str(site["config_path"]))
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert len(lines) == row["packets"]
    assert all(" tcp " in line and ":23" in line for line in lines)
    day = row["first_seen"].strftime("%Y-%m-%d %H:%M:%S")
    assert lines[0].startswith(day) and lines[0].endswith("[S]") and " > 10.20.0.10:23 tcp " in lines[0]
    assert (
        lines[1].startswith(day)
        and lines[1].endswith("[S.]")
        and lines[1].split()[2].startswith("10.20.0.10:23")
    )
    assert sum(int(line.split(" tcp ")[1].split()[0]) for line in lines) == row["bytes"]  # wire lengths
    assert f"{row['packets']} packets" in r.stderr and "1 capture searched" in r.stderr

    arp = report.rows["link"][report.rows["link"]["ethertype"] == synth_frames.ETH_ARP]
    r = _cli(report.report_id, str(arp["row"].iloc[0]), "--config", str(site["config_path"]))
    assert r.exit_code == 0 and " arp " in r.stdout and ("who-has" in r.stdout or "is-at" in r.stdout)


def test_library_api_returns_the_packets(site):
    config = load_config(site["config_path"])
    report = site["report"]
    row = _row(report, "services", client=synth_scenario.MAILHOST.ip, server="internet", service_port=6667)
    res = find_packets(config, report_id=report.report_id, row=int(row["row"]))
    assert isinstance(res, PacketsResult) and res.exit_code == 0 and not res.warnings()
    assert (res.matched, res.bytes) == (row["packets"], row["bytes"]) and res.table == "services"
    assert len(res.searched) == 1 and res.missing == [] and res.linktypes == [1]
    assert [p.ts_ns for p in res.packets] == sorted(p.ts_ns for p in res.packets)


def test_bad_report_id_and_row_are_one_line_errors(site):
    report = site["report"]
    r = _cli(report.report_id, "999", "--config", str(site["config_path"]))
    assert r.exit_code == 2 and r.stderr.strip().startswith("Error: report") and "no row 999" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = _cli("20990101T000000Z-000000", "1", "--config", str(site["config_path"]))
    assert r.exit_code == 2 and "Error: no report" in r.stderr
    r = _cli("services", "--config", str(site["config_path"]))
    assert r.exit_code == 2 and "not a report id" in r.output and "--table services" in r.output
    with pytest.raises(ReportError):
        find_packets(load_config(site["config_path"]), report_id=report.report_id, row=999)


# ------------------------------------------------------------------ --table / --where


def _store_total(config, table: str, since: str, until: str, canonical: bool, **key) -> tuple[int, int]:
    """What the store counted for a key in [since, until) (whole intervals), canonicalised or raw."""
    df = Store(config.store).read(table, since=since, until=until)
    if canonical:
        df = canonicalise(df, config.tables[table], config.networks)
    for k, v in key.items():
        df = df[df[k] == v]
    return int(df["packets"].sum()), int(df["bytes"].sum())


def test_where_mode_matches_the_store_canonical_and_raw(site, tmp_path):
    config = load_config(site["config_path"])
    day = site["scenario"].last_day
    since, until = day.strftime("%Y-%m-%dT00:00"), day.strftime("%Y-%m-%dT06:00")
    want = _store_total(config, "hosts", since, until, True, src="internet")
    assert want[0] > 0
    out = tmp_path / "internet.pcap"
    r = _cli(
        "--table",
        "hosts",
        "--where",
        "src=internet",
        "--since",
        since,
        "--until",
        until,
        "-w",
        str(out),
        "--config",
        str(site["config_path"]),
    )
    assert r.exit_code == 0, r.output
    _, records, wire = _read_pcap(out)
    assert (len(records), wire) == want

    # a CIDR takes every raw address inside it
    stored = Store(config.store).read("hosts", since=since, until=until)
    net = ipaddress.ip_network("10.20.0.0/26")
    inside = stored[[ipaddress.ip_address(a) in net for a in stored["src"]]]
    r = _cli(
        "--table",
        "hosts",
        "--where",
        f"src={net}",
        "--since",
        since,
        "--until",
        until,
        "--config",
        str(site["config_path"]),
    )
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == int(inside["packets"].sum()) > 0

    raw = "198.51.100.77"  # the IRC server: one raw address inside the collapsed "internet"
    want_raw = _store_total(config, "hosts", since, until, False, src=raw)
    assert 0 < want_raw[0] < want[0]
    r = _cli(
        "--table",
        "hosts",
        "--where",
        f"src={raw}",
        "--since",
        since,
        "--until",
        until,
        "--config",
        str(site["config_path"]),
    )
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == want_raw[0]
    assert all(line.split()[2].startswith(raw + ":") for line in r.stdout.splitlines())


def test_where_mode_with_an_ipv6_prefix_takes_every_temporary_address(site):
    config = load_config(site["config_path"])
    day = site["scenario"].last_day
    since, until = day.strftime("%Y-%m-%dT00:00"), site["scenario"].last_day_end.strftime("%Y-%m-%dT00:00")
    prefix = f"{synth_scenario.LAPTOP6_PREFIX}::/64"  # ipv6_prefix = 64: the laptop's temporary addresses are one key
    want = _store_total(config, "pairs", since, until, True, src=prefix)
    assert want[0] > 0
    r = _cli(
        "--table",
        "pairs",
        "--where",
        f"src={prefix}",
        "--since",
        since,
        "--until",
        until,
        "--config",
        str(site["config_path"]),
    )
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert len(lines) == want[0] and all(
        line.split()[2].startswith(f"[{synth_scenario.LAPTOP6_PREFIX}:") for line in lines
    )


def test_where_mode_refuses_bad_filters(site):
    cfg = str(site["config_path"])
    r = _cli("--table", "hosts", "--where", "src=not-an-ip", "--config", cfg)
    assert r.exit_code == 2 and "not-an-ip" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _cli("--table", "hosts", "--where", "dport=53", "--config", cfg)
    assert r.exit_code == 2 and "no key field 'dport'" in r.stderr
    r = _cli("--table", "pairs", "--where", "proto=1-255", "--config", cfg)
    assert r.exit_code == 2 and "no ranges" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _cli("--table", "nope", "--where", "src=10.20.0.10", "--config", cfg)
    assert r.exit_code == 2 and "no table named 'nope'" in r.stderr
    r = _cli("--table", "hosts", "--config", cfg)
    assert r.exit_code == 2 and "--where" in r.output


def test_roles_follow_the_syn_across_intervals(tmp_path):
    """A connection from port 1000 to port 5000: the port rule alone would make 1000 the service, the
    SYN says 5000. Its packets span two intervals, the SYN only in the first."""
    a, b = "192.0.2.10", "198.51.100.20"
    t0 = (1_699_999_980 - 5) * 10**9  # 5 s before an interval boundary (60 s intervals)
    frames = synth_frames.tcp_session(
        t0,
        client_mac="00:00:5e:00:53:01",
        server_mac="00:00:5e:00:53:02",
        client=a,
        server=b,
        cport=1000,
        sport=5000,
        exchanges=[(True, b"x" * 50)] * 6,
        rtt_ns=2 * 10**9,
    )
    cap = synth_frames.write_pcap(tmp_path / "c.pcap", frames)
    root = tmp_path / "site"
    cfg = root / "flowdiff.toml"
    root.mkdir()
    cfg.write_text(
        _toml(
            {
                "store": str(root / "store"),
                "interval": 60,
                "sensor": "t",
                "tables": {"services": {"keys": ["client", "server", "proto", "service_port"]}},
            }
        ),
        encoding="utf-8",
    )
    config = load_config(cfg)
    collect([str(cap)], config)
    stored = Store(config.store).read("services")
    assert set(stored["service_port"]) == {5000} and stored["interval_start"].nunique() == 2
    r = _cli(
        "--table", "services", "--where", f"client={a}", "--where", "service_port=5000", "--config", str(cfg)
    )
    assert r.exit_code == 0, r.output
    assert len(r.stdout.splitlines()) == len(frames) == int(stored["packets"].sum())
    # only the second interval: its packets carry no SYN, the one of the first interval still decides
    late = stored[stored["interval_start"] == stored["interval_start"].max()]
    r = _cli(
        "--table",
        "services",
        "--where",
        f"client={a}",
        "--where",
        "service_port=5000",
        "--since",
        "2023-11-14T22:13:00",
        "--config",
        str(cfg),
    )
    assert r.exit_code == 0, r.output
    assert len(r.stdout.splitlines()) == int(late["packets"].sum()) > 0
    assert "[S]" not in r.stdout
    r = _cli("--table", "services", "--where", "service_port=1000", "--config", str(cfg))
    assert r.exit_code == 0 and r.stdout == "" and "0 packets" in r.stderr


# ------------------------------------------------------------------ captures that are gone


def _copy_site(site, tmp_path: Path, legacy: bool = False) -> Path:
    """A copy of the site whose ledger points at copied captures (so they can be deleted). ``legacy``:
    a ledger written before entries recorded their capture id (captures are then recognised by file)."""
    dst = tmp_path / "copy"
    shutil.copytree(site["base"], dst, copy_function=shutil.copy2)
    old, new = str(site["base"].resolve()), str(dst.resolve())
    ledger = next((dst / "site" / "store" / "_ledger").glob("*.jsonl"))
    lines = [json.loads(x) for x in ledger.read_text(encoding="utf-8").replace(old, new).splitlines()]
    if legacy:
        lines = [{k: v for k, v in e.items() if k != "capture_id"} for e in lines]
    ledger.write_text("".join(json.dumps(e) + "\n" for e in lines), encoding="utf-8")
    cfg = dst / "site" / "flowdiff.toml"
    cfg.write_text(cfg.read_text(encoding="utf-8").replace(old, new), encoding="utf-8")
    return dst


def _capture_of(files, when) -> Path:
    name = when.strftime("%Y%m%d%H%M%S.pcap")
    return max((f for f in files if f.name <= name), key=lambda f: f.name)


@pytest.mark.parametrize("legacy", [False, True], ids=["ledger-with-ids", "old-ledger"])
def test_a_deleted_capture_is_named(site, tmp_path, legacy):
    dst = _copy_site(site, tmp_path, legacy)
    cfg = str(dst / "site" / "flowdiff.toml")
    scenario = site["scenario"]
    report = site["report"]
    row = _row(report, "services", client="internet", server=synth_scenario.MAILHOST.ip, service_port=23)
    files = [dst / "captures" / p.name for p in scenario.last_day_files]
    victim = _capture_of(files, row["first_seen"].to_pydatetime())
    victim.unlink()
    # the row's only capture is gone: one line, exit 2
    r = _cli(report.report_id, str(row["row"]), "--config", cfg)
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [
        f"Error: the capture that fed report {report.report_id} row {row['row']} can no longer be read: "
        f"{victim} (no longer on disk)"
    ]
    # a window fed by several captures: the others are searched, the missing one is named
    day = scenario.last_day
    r = _cli(
        "--table",
        "hosts",
        "--where",
        "src=internet",
        "--since",
        day.strftime("%Y-%m-%dT08:00"),
        "--until",
        day.strftime("%Y-%m-%dT20:00"),
        "--config",
        cfg,
    )
    assert r.exit_code == 0, r.output
    warnings = [line for line in r.stderr.splitlines() if line.startswith("Warning:")]
    assert warnings == [
        f"Warning: {victim}: no longer on disk (collected "
        f"{_collected_at(dst, victim)}); its packets cannot be shown"
    ]
    assert "2 captures searched, 1 missing" in r.stderr
    assert all(line[:10] == day.strftime("%Y-%m-%d") for line in r.stdout.splitlines())


def _collected_at(dst: Path, capture: Path) -> str:
    for line in (
        next((dst / "site" / "store" / "_ledger").glob("*.jsonl")).read_text(encoding="utf-8").splitlines()
    ):
        e = json.loads(line)
        if e["path"] == str(capture.resolve()):
            at = e["collected_at"]
    return at


def test_a_changed_capture_is_named_and_a_touched_one_still_searched(site, tmp_path):
    dst = _copy_site(site, tmp_path)
    cfg = str(dst / "site" / "flowdiff.toml")
    report = site["report"]
    files = [dst / "captures" / p.name for p in site["scenario"].last_day_files]
    telnet = _row(report, "services", client="internet", server=synth_scenario.MAILHOST.ip, service_port=23)
    irc = _row(report, "services", client=synth_scenario.MAILHOST.ip, server="internet", service_port=6667)
    touched = _capture_of(files, telnet["first_seen"].to_pydatetime())
    os.utime(touched, (1_800_000_000, 1_800_000_000))  # same bytes, new mtime: verified by content hash
    r = _cli(report.report_id, str(telnet["row"]), "--config", cfg)
    assert r.exit_code == 0 and "Warning" not in r.stderr and len(r.stdout.splitlines()) == telnet["packets"]
    changed = _capture_of(files, irc["first_seen"].to_pydatetime())
    with open(changed, "ab") as f:
        f.write(b"\0" * 16)
    r = _cli(report.report_id, str(irc["row"]), "--config", cfg)
    assert r.exit_code == 2 and str(changed) in r.stderr and "changed since it was collected" in r.stderr


# ------------------------------------------------------------------ writing


def test_mixed_link_types_are_written_as_pcapng(site, tmp_path):
    config = load_config(site["config_path"])
    report = site["report"]
    row = _row(report, "services", client=synth_scenario.NEW_TALKER.ip, service_port=53)
    res = find_packets(config, report_id=report.report_id, row=int(row["row"]))
    # the same frames as if the second half had been captured on a raw-IP link (strip the Ethernet header)
    half = len(res.packets) // 2
    mixed = res.packets[:half] + [replace(p, linktype=101, data=p.data[14:]) for p in res.packets[half:]]
    res = replace(res, packets=mixed)
    assert write_pcap(res, tmp_path / "mixed.pcap") == "pcapng"
    reader = open_capture(tmp_path / "mixed.pcap")
    batches = list(reader.batches())
    assert reader.stats.format == "pcapng" and not reader.stats.damage
    assert sorted(np.concatenate([b.linktype for b in batches]).tolist()) == sorted(p.linktype for p in mixed)
    assert int(sum(b.wirelen.sum() for b in batches)) == row["bytes"]
    with open(tmp_path / "mixed.pcap", "rb") as f:
        assert len(list(dpkt.pcapng.Reader(f))) == len(mixed)


def test_help_stays_fast():
    code = "import sys; from flowdiff.cli import main; print('pandas' in sys.modules, 'dpkt' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


@pytest.mark.parametrize("legacy", [False, True], ids=["ledger-with-ids", "old-ledger"])
def test_a_capture_collected_after_the_report_is_listed_not_searched(site, tmp_path, legacy):
    """A late capture adds to the row's interval after the report: the row's packets stay the row's."""
    dst = _copy_site(site, tmp_path, legacy)
    cfg = dst / "site" / "flowdiff.toml"
    report = site["report"]
    row = _row(report, "services", client="internet", server=synth_scenario.MAILHOST.ip, service_port=23)
    t = int(row["first_seen"].timestamp()) * 10**9 + 60 * 10**9  # same interval, a minute later
    frames = synth_frames.tcp_session(
        t,
        client_mac=synth_scenario.ROUTER.mac,
        server_mac=synth_scenario.MAILHOST.mac,
        client="203.0.113.99",
        server=synth_scenario.MAILHOST.ip,
        cport=41000,
        sport=23,
    )
    late = synth_frames.write_pcap(dst / "late.pcap", frames)
    time.sleep(1.1)  # collected in a later second than the report was made
    collect([str(late)], load_config(cfg))
    r = _cli(report.report_id, str(row["row"]), "--config", str(cfg))
    assert r.exit_code == 0, r.output
    assert len(r.stdout.splitlines()) == row["packets"] and "203.0.113.99" not in r.stdout
    (warning,) = [line for line in r.stderr.splitlines() if line.startswith("Warning:")]
    assert "collected after the report" in warning and str(late.resolve()) in warning
    # without a report, the late capture counts like any other
    r = _cli(
        "--table",
        "services",
        "--where",
        "client=internet",
        "--where",
        f"server={synth_scenario.MAILHOST.ip}",
        "--where",
        "service_port=23",
        "--config",
        str(cfg),
    )
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == row["packets"] + len(frames)
    assert f"{len(site['scenario'].files) + 1} captures searched" in r.stderr


def test_random_macs_match_as_random(tmp_path):
    """collapse_random_macs: locally administered MACs are one key, ``random``, and so are their frames."""
    t = 1_700_000_000 * 10**9
    macs = ["02:11:22:33:44:55", "06:aa:bb:cc:dd:ee", "00:1b:21:0a:00:09"]  # two random, one universal
    frames = []
    for i, mac in enumerate(macs):
        frames += synth_frames.udp_exchange(
            t + i * 10**9,
            client_mac=mac,
            server_mac="00:1b:21:0a:00:01",
            client=f"192.0.2.{10 + i}",
            server="192.0.2.1",
            cport=40000 + i,
            sport=53,
            request=b"q" * 20,
            response=None,
        )
    cap = synth_frames.write_pcap(tmp_path / "m.pcap", frames)
    root = tmp_path / "site"
    root.mkdir()
    cfg = root / "flowdiff.toml"
    cfg.write_text(
        _toml(
            {
                "store": str(root / "store"),
                "interval": 60,
                "sensor": "t",
                "tables": {"link": {"keys": ["ethertype", "src_mac", "dst_mac"]}},
            }
        ),
        encoding="utf-8",
    )
    config = load_config(cfg)
    collect([str(cap)], config)
    df = canonicalise(Store(config.store).read("link"), config.tables["link"], config.networks)
    assert int(df.loc[df["src_mac"] == "random", "packets"].sum()) == 2
    r = _cli("--table", "link", "--where", "src_mac=random", "--config", str(cfg))
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()  # MACs in front: the table is keyed by them
    assert sorted(line.split()[2] for line in lines) == sorted(macs[:2]) and all(" udp " in x for x in lines)
