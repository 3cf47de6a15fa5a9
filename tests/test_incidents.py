"""Incidents (issue 14 items 1 and 3): new rows grouped by the new entity that explains them."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pytest
from click.testing import CliRunner
from fixtures_enclave import copy_site, learned_enclave
from smtp_server import make_server

from flowdiff.archive import INCIDENTS_FILE, load_report
from flowdiff.baseline import read_baseline
from flowdiff.cli import main as flowdiff_main
from flowdiff.demo.frames import Frame, arp_frame, tcp_session, udp_exchange
from flowdiff.demo.scenario import MAILHOST, RESOLVER, ROUTER
from flowdiff.diff import diff
from flowdiff.incidents import Known, group_incidents, known_entities
from flowdiff.schema import STATIONS

NEW_MAC, NEW_IP = "b8:27:eb:5a:9c:01", "10.20.0.99"


@pytest.fixture(scope="module")
def enclave(tmp_path_factory):
    return learned_enclave(tmp_path_factory.mktemp("enclave"))


@pytest.fixture
def site(enclave, tmp_path):
    return copy_site(enclave, tmp_path / "site")


def _run(*args: str):
    return CliRunner().invoke(flowdiff_main, [str(a) for a in args])


def _new_device(site, hour: int = 11) -> list[Frame]:
    """A device never seen: it ARPs for the resolver and asks it three questions."""
    t = site.at(hour, 5)
    frames = [Frame(t, arp_frame(NEW_MAC, NEW_IP, RESOLVER.ip))]
    frames.append(Frame(t + 300_000, arp_frame(RESOLVER.mac, RESOLVER.ip, NEW_IP, reply_to=NEW_MAC)))
    for i in range(3):
        frames += udp_exchange(
            t + (5 + i * 60) * 1_000_000_000,
            client_mac=NEW_MAC,
            server_mac=RESOLVER.mac,
            client=NEW_IP,
            server=RESOLVER.ip,
            cport=40000 + i,
            sport=53,
            request=b"\x12\x34\x01\x00" + bytes(20),
            response=b"\x12\x34\x81\x80" + bytes(30),
        )
    return frames


def _telnet(site, hour: int = 15) -> list[Frame]:
    ex = [(False, b"login: "), (True, b"root\r\n"), (False, b"Password: ")]
    return tcp_session(
        site.at(hour, 32),
        client_mac=ROUTER.mac,
        server_mac=MAILHOST.mac,
        client="203.0.113.66",
        server=MAILHOST.ip,
        cport=51000,
        sport=23,
        exchanges=ex,
    )


def _rows(res) -> set[tuple[str, int]]:
    return {(t, int(r)) for t, df in res.rows.items() for r in df["row"]}


# ------------------------------------------------------------------ grouping on real captures


def test_one_new_device_is_one_incident_with_all_its_rows(site):
    site.inject(_new_device(site))
    res = diff(site.config, since=site.scenario.last_day)
    assert res.total == 9 and res.counts() == {"hosts": 1, "pairs": 2, "services": 1, "link": 4, STATIONS: 1}
    (inc,) = res.incidents
    assert inc.number == 1 and inc.kind == "station"
    assert inc.title == f"new station {NEW_IP} {NEW_MAC}, 9 rows"
    assert set(inc.rows) == _rows(res)
    for df in res.rows.values():
        assert (df["incident"] == 1).all() and (df["incident_title"] == inc.title).all()


def test_rows_that_share_nothing_new_are_incidents_of_their_own_in_the_fixed_order(site):
    site.inject(_new_device(site, hour=11) + _telnet(site, hour=3))
    res = diff(site.config, since=site.scenario.last_day)
    assert [i.number for i in res.incidents] == [1, 2]
    station, service = res.incidents
    assert station.kind == "station"  # new stations before new services on own networks
    assert service.kind == "service" and service.title == f"new service {MAILHOST.ip} tcp/23 from internet"
    assert service.rows == (
        ("services", int(res.rows["services"].query("service_port == 23")["row"].iloc[0])),
    )
    assert set(station.rows) | set(service.rows) == _rows(res)


def test_a_deny_rule_hit_is_the_first_incident(site):
    out = _run(
        "deny", "services", "--where", "client=internet", "--where", f"server={MAILHOST.ip}",
        "--where", "proto=tcp", "--where", "service_port=25", "--name", "smtp-in", "--config", site.config_path,
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    site.inject(_new_device(site, hour=1))  # earlier than any inbound mail: order is not by time
    res = diff(site.config, since=site.scenario.last_day)
    first = res.incidents[0]
    assert first.kind == "deny" and first.title == "deny rule smtp-in hit"
    (row,) = first.rows
    assert res.rows[row[0]].set_index("row").loc[row[1], "reason"] == "deny-rule smtp-in"
    assert res.incidents[1].title.startswith(f"new station {NEW_IP}")


# ------------------------------------------------------------------ where it shows


def test_diff_json_carries_the_incident_and_incidents_json_is_written(site):
    site.inject(_new_device(site) + _telnet(site))
    out = _run("diff", "--format", "json", "--config", site.config_path)
    assert out.exit_code == 0, out.output
    recs = [json.loads(line) for line in out.output.splitlines()]
    assert len(recs) == 10
    assert {r["incident"] for r in recs} == {1, 2}
    by = {r["incident"]: r["incident_title"] for r in recs}
    assert by[1].startswith(f"new station {NEW_IP} {NEW_MAC}") and by[2].startswith("new service")
    rid = recs[0]["report_id"]
    saved = json.loads((site.root / "reports" / rid / INCIDENTS_FILE).read_text())
    assert [(i["incident"], i["title"]) for i in saved] == sorted(by.items())
    assert (
        saved[0]["accept_cmd"] == f"flowdiff accept {rid} --incident 1 --config {site.config_path.resolve()}"
    )
    assert {(r["table"], r["row"]) for r in saved[0]["rows"]} == {
        (r["table"], r["row"]) for r in recs if r["incident"] == 1
    }
    text = (site.root / "reports" / rid / "report.txt").read_text()
    assert "== 2 incidents ==" in text and f"#1 new station {NEW_IP}" in text
    assert (
        f"flowdiff accept {rid} --incident 2" in text and "flowdiff accept hosts --where" in text
    )  # per row too
    html = (site.root / "reports" / rid / "report.html").read_text()
    assert "--incident 1" in html and 'class="incident"' in html
    assert load_report(site.config, rid).incidents[0].title == by[1]


def test_diff_table_output_lists_the_incidents_before_the_rows(site):
    site.inject(_new_device(site) + _telnet(site))
    out = _run("diff", "--config", site.config_path)
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    head = lines.index("== 2 incidents")
    assert lines[head + 1] == f"#1 new station {NEW_IP} {NEW_MAC}, 9 rows: rows 1-3, 5-10"
    rid = next(line.rsplit(" ", 1)[1] for line in lines if " new rows (" in line)  # "...; report <id>"
    assert lines[head + 2] == (
        f"  accept all: flowdiff accept {rid} --incident 1 --config {site.config_path.resolve()}"
    )
    telnet = next(i for i, line in enumerate(lines) if line.startswith("#2 new service"))
    assert lines[telnet].endswith(": row 4") and head < telnet < lines.index("== hosts: 1 new")
    assert (
        "  [4] flowdiff accept services --where client=internet"
        in lines[lines.index("== services: 2 new") + 4]
    )


def test_accept_by_incident_accepts_exactly_its_rows(site):
    site.inject(_new_device(site) + _telnet(site))
    res = diff(site.config, since=site.scenario.last_day)
    station = res.incidents[0]
    out = _run(
        "accept", res.report_id, "--incident", "1", "--reason", "the new Pi", "--config", site.config_path
    )
    assert out.exit_code == 0, out.output
    assert out.output.splitlines()[0] == f"incident 1: {station.title}"
    assert "accepted 9 rows" in out.output
    from flowdiff.baseline import get_version

    version = get_version(site.config)
    for table, df in res.rows.items():
        base = read_baseline(site.config, version.tables[table]).to_pandas()
        keys = list(res.keys[table])
        have = set(base[keys].astype(str).itertuples(index=False, name=None))
        for rec in df.to_dict("records"):
            key = tuple(str(rec[k]) for k in keys)
            assert (key in have) == (rec["incident"] == 1), (table, key)
    bad = _run("accept", res.report_id, "--incident", "7", "--config", site.config_path)
    assert bad.exit_code == 2 and bad.output.startswith(f"Error: report {res.report_id} has no incident 7")


def test_deny_by_incident_writes_one_rule_per_row(site):
    site.inject(_telnet(site))
    res = diff(site.config, since=site.scenario.last_day)
    out = _run("deny", res.report_id, "--incident", "1", "--dry-run", "--config", site.config_path)
    assert out.exit_code == 0, out.output
    assert "would add 1 rule" in out.output and "service_port = 23" in out.output


def test_the_mail_subject_counts_incidents_first(site, tmp_path):
    srv = make_server(tmp_path / "smtp", "none")
    try:
        mail = srv.mail_kwargs()
        to = ", ".join(f'"{a}"' for a in mail["to"])
        site.config_path.write_text(
            site.config_path.read_text()
            + f'\n[mail]\nhost = "127.0.0.1"\nport = {mail["port"]}\ntls = "none"\nfrom = "{mail["from_addr"]}"\nto = [{to}]\n'
        )
        site.inject(_new_device(site) + _telnet(site))
        assert _run("diff", "--config", site.config_path).exit_code == 0
        out = _run("notify", "--config", site.config_path)
        assert out.exit_code == 0, out.output
        (received,) = srv.inbox.wait(1)
        assert received.message["Subject"] == "[flowdiff demo] 2 incidents, 10 new rows"
        body = received.message.get_body(("plain",)).get_content()
        assert "== 2 incidents ==" in body
    finally:
        srv.stop()


# ------------------------------------------------------------------ the library, directly


def _frame(
    table: str, keys: tuple[str, ...], rows: list[tuple], first_row: int, reason: str = "new"
) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=list(keys))
    df["reason"] = reason
    df["first_seen"] = pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(range(len(df)), unit="s")
    df["row"] = range(first_row, first_row + len(df))
    return df


def test_group_incidents_is_pure_and_deterministic():
    keys = {"hosts": ("src",), "link": ("ethertype", "src_mac", "dst_mac"), "pairs": ("src", "dst", "proto")}
    rows = {
        "hosts": _frame("hosts", keys["hosts"], [("10.0.0.9",), ("10.0.0.8",)], 1),
        "pairs": _frame(
            "pairs", keys["pairs"], [("10.0.0.9", "10.0.0.1", 17), ("10.0.0.7", "10.0.0.1", 6)], 3
        ),
        "link": _frame("link", keys["link"], [(0x88B5, "f4:8e:38:64:00:03", "ff:ff:ff:ff:ff:ff")], 5),
    }
    known = Known(
        addresses={"10.0.0.1", "10.0.0.7"},
        macs={"f4:8e:38:64:00:03", "ff:ff:ff:ff:ff:ff"},
        ethertypes={0x0800},
    )
    a = group_incidents(rows, keys, known, report_id="20261130T010000Z-abc123")
    b = group_incidents(rows, keys, known, report_id="20261130T010000Z-abc123")
    assert a == b
    assert [sorted(i.rows) for i in a] == [
        [("hosts", 1), ("pairs", 3)],  # one class ("other"): by first seen, then row number
        [("link", 5)],
        [("hosts", 2)],
        [("pairs", 4)],
    ]
    assert [i.title for i in a] == [
        "new address 10.0.0.9, 2 rows",
        "new ethertype 0x88b5 from f4:8e:38:64:00:03",
        "new address 10.0.0.8",
        "new pairs row src=10.0.0.7 dst=10.0.0.1 proto=tcp",
    ]
    assert a[0].accept_cmd == "flowdiff accept 20261130T010000Z-abc123 --incident 1"


def test_incident_classes_deny_then_stations_then_own_services_then_the_rest():
    keys = {"services": ("client", "server", "proto", "service_port"), STATIONS: ("src_mac", "src")}
    nets = {"10.20.0.0/24": "servers", "10.20.100.0/24": "dhcp", "0.0.0.0/0": "internet"}
    svc = [
        ("10.20.0.10", "internet", 6, 6667),  # a service on the internet: the rest
        ("internet", "10.20.0.10", 6, 23),  # on an own network
        ("internet", "dhcp", 6, 8080),  # on an own pool, collapsed to its label
    ]
    rows = {
        "services": _frame("services", keys["services"], svc, 1),
        STATIONS: _frame(STATIONS, keys[STATIONS], [("b8:27:eb:5a:9c:01", "10.20.0.99")], 5, "new station"),
    }
    rows["services"].loc[0, "reason"] = "deny-rule irc"
    rows["services"] = pd.concat([rows["services"], _frame("s", keys["services"], [svc[0]], 4)])
    got = group_incidents(rows, keys, Known(addresses={"10.20.0.10"}), networks=nets)
    assert [(i.kind, i.title) for i in got] == [
        ("deny", "deny rule irc hit, 2 rows"),  # both rows of the new service internet tcp/6667
        ("station", "new station 10.20.0.99 b8:27:eb:5a:9c:01"),
        ("service", "new service 10.20.0.10 tcp/23 from internet"),
        ("service", "new service dhcp tcp/8080 from internet"),
    ]


def test_known_services_are_looked_up_in_every_batch_with_and_without_proto():
    """known_entities finds a wanted (server, proto, port) in any batch of any baseline: exactly, or by
    (server, port) when one side has no proto (-1); servers come as text or dictionary codes."""
    wanted = Known(
        services={("10.0.0.1", 6, 25), ("10.0.0.1", -1, 80), ("10.0.0.2", 17, 53), ("10.0.0.3", 6, 443)}
    )
    with_proto = [
        pa.table(
            {
                "server": ["10.0.0.1", "10.0.0.9"],
                "proto": pa.array([6, 6], pa.uint8()),
                "service_port": pa.array([25, 443], pa.uint16()),
            }
        ),
        pa.table(
            {
                "server": pa.array(["10.0.0.1", "10.0.0.3"]).dictionary_encode(),
                "proto": pa.array([17, 17], pa.uint8()),
                "service_port": pa.array([80, 443], pa.uint16()),
            }
        ),
    ]
    no_proto = [pa.table({"server": ["10.0.0.2"], "service_port": pa.array([53], pa.uint16())})]
    sources = [
        (("client", "server", "proto", "service_port"), lambda cols: [t.select(cols) for t in with_proto]),
        (("server", "service_port"), lambda cols: [t.select(cols) for t in no_proto]),
    ]
    found = known_entities(wanted, sources)
    assert found.services == {("10.0.0.1", 6, 25), ("10.0.0.1", -1, 80), ("10.0.0.2", 17, 53)}
