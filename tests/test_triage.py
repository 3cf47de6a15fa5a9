"""accept / deny / ignore: the guard rails (issue 8 items 3, 4, 7), each through the user's exact command."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import fixtures_baseline as fx
import pytest
from click.testing import CliRunner

from flowdiff.baseline import current_version, learn, show
from flowdiff.cli import main as flowdiff_main
from flowdiff.diff import diff
from flowdiff.errors import BadValueError, TooBroadError
from flowdiff.rules import load_rules
from flowdiff.state import load_state
from flowdiff.triage import TriageResult, accept, deny, ignore


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """A store with one normal day and a baseline learned from it."""
    root = tmp_path_factory.mktemp("learned")
    config = fx.write_config(root)
    fx.write(config, fx.day(0), "day0")
    learn(config)
    return root


@pytest.fixture
def site(learned, tmp_path):
    return fx.copy_site(learned, tmp_path)


def _run(*args: str):
    return CliRunner().invoke(flowdiff_main, list(args))


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``root`` with its size and mtime: "nothing written" means equal."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
    }


def _report(site, *kinds: str) -> str:
    extra = [row for k in kinds for row in fx.anomaly(k, 1)]
    fx.write(site, fx.day(1) + extra, "day1")
    res = diff(site)
    assert res.report_id
    return res.report_id


def _row(site, report_id: str, table: str) -> str:
    from flowdiff.archive import load_report

    return str(int(load_report(site, report_id).rows[table]["row"].iloc[0]))


def _one_error_line(out) -> str:
    assert out.exit_code == 2, out.output
    lines = out.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), out.output
    return lines[0]


# ------------------------------------------------------------------ item 3: ignore never mutes a table


def test_ignore_on_a_hosts_row_is_refused_and_names_what_it_would_mute(site):
    rid = _report(site, "new_host")
    out = _run("ignore", rid, _row(site, rid, "hosts"))
    line = _one_error_line(out)
    assert line.startswith("Error: this rule would allow every row of table hosts (src=*): ")
    assert f"flowdiff accept {rid} " in line
    assert not site.rules_path.exists()
    # the library says the same with structured fields
    with pytest.raises(TooBroadError) as e:
        ignore(site, rid, [int(_row(site, rid, "hosts"))])
    assert (e.value.kind, e.value.table, e.value.fields) == ("allow", "hosts", "src=*")


def test_ignore_asks_which_field_when_it_is_ambiguous(site):
    rid = _report(site, "new_pair")
    row = _row(site, rid, "pairs")
    line = _one_error_line(_run("ignore", rid, row))
    assert "--wildcard FIELD" in line and "src, dst" in line
    assert not site.rules_path.exists()
    out = _run("ignore", rid, row, "--wildcard", "dst")
    assert out.exit_code == 0, out.output
    assert out.output.startswith(f"added 1 rule to {site.rules_path}:\n[[allow]]\n")
    assert 'dst = "*"' in out.output and 'proto = "udp"' in out.output
    rule = load_rules(site).rules[0]
    assert rule.match["dst"] == "*" and rule.match["src"] in ("10.1.0.10", "10.1.0.53")
    assert rule.describe().endswith("proto=udp")
    # the old option name still works (hidden alias)
    out = _run("ignore", rid, row, "--any", "src")
    assert out.exit_code == 0 and 'src = "*"' in out.output, out.output
    assert "--any" not in _run("ignore", "--help").output and "--wildcard" in _run("ignore", "--help").output


def test_ignore_a_services_row_prints_the_rule_written(site):
    rid = _report(site, "new_service")
    out = _run("ignore", rid, _row(site, rid, "services"))
    assert out.exit_code == 0, out.output
    written = site.rules_path.read_text()
    entry = out.output.split(":\n", 1)[1]
    assert entry.strip() in written  # exactly what went into the file
    assert tomllib.loads(entry)["allow"][0] | {"by": "x", "created": "x"} == {
        "name": "allow-services-1",
        "table": "services",
        "client": "*",
        "server": "10.1.0.25",
        "proto": "tcp",
        "service_port": 8080,
        "comment": f"from report {rid}",
        "by": "x",
        "created": "x",
    }


@pytest.mark.parametrize(
    "args",
    [
        ["ignore", "hosts", "--where", "src=*"],
        ["ignore", "services", "--where", "service_port=0-65535"],
        ["ignore", "pairs", "--where", "proto=0-255", "--where", "src=*"],
        ["deny", "link", "--where", "ethertype=0x0000-0xffff"],
        ["accept", "services", "--where", "client=*"],
    ],
)
def test_table_wide_rules_are_refused(site, args):
    before = _snapshot(site.baselines)
    line = _one_error_line(_run(*args))
    assert re.match(
        rf"Error: this (rule|change) would (allow|deny|accept) every row of table {args[1]} \(", line
    ), line
    assert _snapshot(site.baselines) == before


def test_labels_and_cidrs_that_cover_everything_are_refused(tmp_path):
    networks = {"0.0.0.0/0": "internet", "::/0": "internet"}
    config = fx.make_config(tmp_path, networks=networks, tables={"hosts": {"keys": ["src"]}})
    with pytest.raises(TooBroadError, match=r"allow every row of table hosts \(src=internet\)"):
        ignore(config, table="hosts", where=["src=internet"], dry_run=True)
    with pytest.raises(TooBroadError, match="every row of table hosts"):
        ignore(config, table="hosts", where={"src": ["0.0.0.0/0", "::/0"]}, dry_run=True)
    # one address family alone is not everything
    (tmp_path / "baselines").mkdir()
    res = ignore(config, table="hosts", where={"src": "0.0.0.0/0"}, dry_run=True)
    assert res.dry_run and res.rules[0].match == {"src": "0.0.0.0/0"}


def test_accepting_a_key_that_every_row_has_is_refused(tmp_path):
    # the whole address space is one collapsed label: its one key would mute the table
    config = fx.make_config(
        tmp_path,
        networks={"0.0.0.0/0": "internet", "::/0": "internet"},
        tables={"hosts": {"keys": ["src"], "collapse": ["internet"]}},
    )
    learn(config, force=True)  # an empty baseline on purpose (learn refuses one without --force)
    fx.write(config, fx.scan(1), "scan")
    res = diff(config)
    assert res.rows["hosts"]["src"].tolist() == ["internet"]
    for kwargs in ({"report_id": res.report_id}, {"table": "hosts", "all_rows": True}):
        with pytest.raises(
            TooBroadError, match=r"this change would accept every row of table hosts \(src=internet\)"
        ):
            accept(config, **kwargs)
    assert current_version(config) == "v0001"


# ------------------------------------------------------------------ item 4: values are checked, all rows explicit


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["accept", "hosts", "--where", "src=not-an-ip"],
            "Error: --where src=not-an-ip: not an IPv4/IPv6 address, CIDR or [networks] label",
        ),
        (
            ["deny", "services", "--where", "server=300.1.1.1"],
            "Error: --where server=300.1.1.1: not an IPv4/IPv6 address, CIDR or [networks] label",
        ),
        (
            ["deny", "services", "--where", "service_port=70000"],
            "Error: --where service_port=70000: not a port",
        ),
        (
            ["deny", "services", "--where", "service_port=http"],
            "Error: --where service_port=http: not a number",
        ),
        (["ignore", "services", "--where", "proto=tcpx"], "Error: --where proto=tcpx: not a protocol"),
        (
            ["deny", "link", "--where", "ethertype=0x10000"],
            "Error: --where ethertype=0x10000: not an ethertype",
        ),
        (
            ["deny", "link", "--where", "src_mac=00:16:3e:zz:00:01"],
            "Error: --where src_mac=00:16:3e:zz:00:01: not a MAC address",
        ),
        (
            ["accept", "services", "--where", "server=10.0.0.0/33"],
            "Error: --where server=10.0.0.0/33: not a valid",
        ),
        (["deny", "services", "--where", "service_port=9-3"], "Error: --where service_port=9-3: empty range"),
    ],
)
def test_bad_values_are_named_in_one_line(site, args, message):
    before = _snapshot(site.baselines)
    line = _one_error_line(_run(*args))
    assert line.startswith(message), line
    assert _snapshot(site.baselines) == before


def test_bad_value_in_the_library_is_a_bad_value_error(site):
    with pytest.raises(BadValueError) as e:
        accept(site, table="hosts", where={"src": "not-an-ip"})
    assert (e.value.field, e.value.value) == ("src", "not-an-ip")


def test_accept_a_table_needs_where_or_all_rows(site):
    _report(site, "new_host", "new_pair")
    line = _one_error_line(_run("accept", "hosts"))
    assert "--all-rows" in line and "every reported row of table hosts" in line
    assert current_version(site) == "v0001"
    out = _run("accept", "hosts", "--all-rows")
    assert out.exit_code == 0, out.output
    assert out.output.splitlines() == [
        "accepted 1 rows (hosts 1) into baseline v0002 (parent v0001)",
        "  + hosts src=10.1.0.77",
    ]
    assert current_version(site) == "v0002"
    assert len(load_state(site).reported("hosts", ["src"])) == 0
    # nothing waits any more
    again = _run("accept", "hosts", "--all-rows")
    assert again.exit_code == 0 and again.output.startswith("nothing added")


def test_accept_prints_every_key_added(site):
    rid = _report(site, "new_host")
    out = _run("accept", rid, "--reason", "new web client")
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert (
        lines[0]
        == "accepted 7 rows (hosts 1, pairs 2, services 1, link 2, stations 1) into baseline v0002 (parent v0001)"
    )
    assert "  + hosts src=10.1.0.77" in lines
    assert "  + services client=10.1.0.77 server=10.1.0.10 proto=tcp service_port=443" in lines
    assert any(x.startswith("  + link ethertype=0x0800 src_mac=") for x in lines)
    assert len(lines) == 8


def test_deny_all_rows_writes_one_exact_rule_per_reported_row(site):
    _report(site, "new_pair")
    out = _run("deny", "pairs", "--all-rows", "--reason", "no DNS between servers")
    assert out.exit_code == 0, out.output
    rules = load_rules(site).rules
    assert sorted((r.kind, r.table, r.match["src"], r.match["dst"], r.match["proto"]) for r in rules) == [
        ("deny", "pairs", "10.1.0.10", "10.1.0.53", "udp"),
        ("deny", "pairs", "10.1.0.53", "10.1.0.10", "udp"),
    ]
    assert [r.name for r in rules] == ["deny-pairs-1", "deny-pairs-2"]
    assert out.output.count("[[deny]]") == 2


def test_stored_canonical_values_are_valid(site):
    # a DHCP address is stored as its label: accepting one is accepting the label, already learned
    out = _run("accept", "hosts", "--where", "src=10.2.0.151")
    assert out.exit_code == 0, out.output
    assert out.output.startswith("nothing added: the 1 rows are already in baseline v0001")
    assert _run("accept", "hosts", "--where", "src=dhcp").output.startswith("nothing added")
    # an IPv6 address is stored as its /64 (ipv6_prefix = 64)
    out = _run("accept", "hosts", "--where", "src=2001:db8:9::1")
    assert out.exit_code == 0 and "  + hosts src=2001:db8:9::/64" in out.output, out.output
    assert "2001:db8:9::/64" in set(show(site, "hosts")["hosts"]["src"])
    # a label this table does not collapse is no value its rows can have
    line = _one_error_line(_run("accept", "hosts", "--where", "src=servers"))
    assert "does not collapse label servers" in line
    # rules take labels, prefixes and `random` as they are stored
    for where in (
        "client=dhcp",
        "client=2001:db8:1::/64",
        "src_mac=random",
        "proto=icmpv6",
        "proto=ipv6-icmp",
    ):
        table = "link" if "mac" in where else "services"
        assert _run("deny", table, "--where", where, "--dry-run").exit_code == 0, where


def test_protocol_names_are_one_vocabulary(site):
    out = _run("deny", "services", "--where", "proto=ipv6-icmp", "--where", "server=10.1.0.10")
    assert out.exit_code == 0, out.output
    assert 'proto = "icmpv6"' in out.output
    rule = load_rules(site).rules[0]
    assert rule.describe() == "deny deny-services-1 [services] proto=icmpv6 server=10.1.0.10"
    out = _run("deny", "services", "--where", "proto=6", "--where", "service_port=23")
    assert 'proto = "tcp"' in out.output


# ------------------------------------------------------------------ --dry-run


def test_dry_run_prints_the_change_and_writes_nothing(site):
    rid = _report(site, "new_service", "new_pair")
    (site.baselines / ".lock").unlink(missing_ok=True)
    before = _snapshot(site.baselines)
    acc = _run("accept", rid, "--dry-run")
    assert acc.exit_code == 0, acc.output
    assert acc.output.startswith("would accept ") and "dry run: nothing written" in acc.output
    assert "  + services client=dhcp server=10.1.0.25 proto=tcp service_port=8080" in acc.output
    den = _run("deny", rid, "--dry-run")
    assert den.exit_code == 0 and den.output.startswith("would add ") and "[[deny]]" in den.output
    ign = _run("ignore", rid, _row(site, rid, "services"), "--dry-run")
    assert (
        ign.exit_code == 0
        and 'client = "*"' in ign.output
        and ign.output.endswith("dry run: nothing written\n")
    )
    assert _snapshot(site.baselines) == before  # no rules file, no version, no lock file
    # the same commands for real do what the dry run said
    real = _run("accept", rid)
    assert real.output.replace("accepted", "would accept").split(" into ")[0] == acc.output.split(" into ")[0]


def test_dry_run_result_object(site):
    rid = _report(site, "new_host")
    res = accept(site, rid, dry_run=True)
    assert isinstance(res, TriageResult) and res.dry_run and res.version is None and res.total == 7
    assert res.exit_code == 0 and current_version(site) == "v0001"
    d = deny(site, table="services", where={"service_port": "23"}, dry_run=True)
    assert d.action == "deny" and d.total == 1 and d.rules[0].match == {"service_port": 23}
    assert d.rules_path == site.rules_path and not site.rules_path.exists()


# ------------------------------------------------------------------ item 7: pasted commands, lock files


def test_pasted_commands_in_an_empty_directory_say_what_is_missing_and_create_nothing(tmp_path):
    runner = CliRunner()
    with runner.isolated_filesystem(temp_dir=tmp_path) as d:
        here = Path.cwd()
        cases = [
            (
                [
                    "accept",
                    "services",
                    "--where",
                    "client=10.1.0.77",
                    "--where",
                    "server=10.1.0.10",
                    "--where",
                    "proto=6",
                    "--where",
                    "service_port=443",
                ],
                f"no baseline in {here / 'baselines'}: run `flowdiff learn` first",
            ),
            (["accept", "20261130T015500Z-ab12cd", "1"], f"no baseline in {here / 'baselines'}:"),
            (
                ["deny", "20261130T015500Z-ab12cd", "1"],
                f"no report 20261130T015500Z-ab12cd in {here / 'reports'} ",
            ),
            (
                ["ignore", "hosts", "--where", "src=10.0.0.0/8"],
                f"no folder {here / 'baselines'} for the rules file rules.toml",
            ),
        ]
        for args, message in cases:
            out = runner.invoke(flowdiff_main, args)
            line = _one_error_line(out)
            assert message in line, line
            assert line.endswith("(no config file was read: did you mean --config FILE?)"), line
        assert list(Path(d).iterdir()) == []


def test_a_leftover_lock_file_is_no_obstacle(site):
    rid = _report(site, "new_host")
    (site.baselines / ".lock").write_text("12345\n")  # left behind by a killed process
    out = _run("accept", rid, _row(site, rid, "hosts"))
    assert out.exit_code == 0 and "into baseline v0002" in out.output, out.output
    assert _run("deny", "services", "--where", "service_port=23").exit_code == 0
