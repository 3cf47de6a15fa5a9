"""Rules: the allow/deny file, its validation, vectorised matching and atomic additions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from flowdiff.config import parse_config
from flowdiff.errors import RulesError
from flowdiff.netmap import NetworkMap
from flowdiff.rules import add_rule, apply_rules, field_mask, load_rules, parse_rules


@pytest.fixture
def config(tmp_path):
    return parse_config(
        {
            "baselines": str(tmp_path / "baselines"),
            "networks": {"10.1.0.0/24": "servers", "10.2.0.0/24": "dhcp"},
            "tables": {
                "services": {"keys": ["client", "server", "proto", "service_port"]},
                "hosts": {"keys": ["src"]},
                "link": {"keys": ["ethertype", "src_mac", "dst_mac"]},
            },
        }
    )


ROWS = pd.DataFrame(
    {
        "client": ["10.2.0.7", "dhcp", "192.0.2.1", "2001:db8:1::/64", "10.1.0.9"],
        "server": ["10.1.0.25", "10.1.0.25", "10.1.0.10", "2001:db8:1::10", "10.1.0.25"],
        "proto": np.array([6, 6, 17, 6, 6], np.uint8),
        "service_port": np.array([25, 23, 53, 443, 2323], np.uint16),
    }
)


def test_field_specs_exact_cidr_range_label_any_and_lists():
    nm = NetworkMap({"10.1.0.0/24": "servers", "10.2.0.0/24": "dhcp"})
    assert field_mask(ROWS["server"], "server", "10.1.0.25").tolist() == [True, True, False, False, True]
    assert field_mask(ROWS["client"], "client", "10.0.0.0/8").tolist() == [True, False, False, False, True]
    # a prefix produced by ipv6_prefix is inside a shorter CIDR
    assert field_mask(ROWS["client"], "client", "2001:db8::/32").tolist() == [
        False,
        False,
        False,
        True,
        False,
    ]
    # a label: addresses with that longest match, and the collapsed label itself
    assert field_mask(ROWS["client"], "client", "dhcp", nm).tolist() == [True, True, False, False, False]
    assert field_mask(ROWS["service_port"], "service_port", "1-1023").tolist() == [
        True,
        True,
        True,
        True,
        False,
    ]
    assert field_mask(ROWS["service_port"], "service_port", [23, "2323"]).tolist() == [
        False,
        True,
        False,
        False,
        True,
    ]
    assert field_mask(ROWS["proto"], "proto", "udp").tolist() == [False, False, True, False, False]
    assert field_mask(ROWS["client"], "client", "*").all()
    macs = pd.Series(["00:16:3E:00:00:01", "random"]).str.lower()
    assert field_mask(macs, "src_mac", "00:16:3E:00:00:01").tolist() == [True, False]
    assert field_mask(pd.Series(np.array([0x806, 0x800], np.uint16)), "ethertype", "0x0806").tolist() == [
        True,
        False,
    ]


def test_deny_wins_over_allow_and_star_tables_need_the_fields(config):
    text = """
[[allow]]
name = "mail"
table = "services"
server = "10.1.0.25"

[[deny]]
name = "telnet"
table = "*"
service_port = [23, 2323]

[[deny]]
name = "never-matches-services"
table = "*"
src = "10.2.0.7"
"""
    rules = parse_rules(text, config)
    allowed, deny = apply_rules(ROWS, "services", list(ROWS.columns), rules, NetworkMap(config.networks))
    assert allowed.tolist() == [True, True, False, False, True]
    assert deny.tolist() == ["", "telnet", "", "", "telnet"]
    assert [r.name for r in rules.for_table("hosts", ["src"])] == ["never-matches-services"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[allow]]\ntable = "nope"\nsrc = "1.2.3.4"', "no table 'nope'"),
        ('[[allow]]\ntable = "hosts"\ndst = "1.2.3.4"', "table 'hosts' has no field 'dst'"),
        ('[[deny]]\ntable = "*"\nbogus = 1', "'bogus' is not a key field"),
        ('[[deny]]\nsrc = "10.0.0.0/33"', "not a valid CIDR"),
        ('[[deny]]\nservice_port = "9-3"', "empty range"),
        ('[[deny]]\nservice_port = "http"', "not a number"),
        ('[[deny]]\nname = "a"\nsrc = "*"\n[[allow]]\nname = "a"\nsrc = "*"', "used twice"),
        ("[[block]]\nsrc = 1", "unknown section 'block'"),
        ("[[deny]\nsrc = 1", "not valid TOML"),
        ("[[deny]]\nsrc = true", "expected a value"),
    ],
)
def test_bad_rules_are_refused_with_the_entry_named(config, text, message):
    with pytest.raises(RulesError, match=message):
        parse_rules(text, config)


def test_missing_file_is_no_rules(config):
    assert load_rules(config).rules == []


def test_add_rule_appends_keeps_comments_and_validates(config):
    path = config.rules_path
    path.parent.mkdir(parents=True)
    path.write_text('# site policy\n[[allow]]\nname = "dns"\nservice_port = 53\n', encoding="utf-8")
    r = add_rule(
        config,
        "deny",
        "services",
        {"service_port": "23", "server": "10.1.0.0/24"},
        name="telnet",
        comment='old "box"',
        by="ops",
    )
    assert r.match == {"service_port": 23, "server": "10.1.0.0/24"} and r.by == "ops"
    text = path.read_text()
    assert (
        text.startswith("# site policy\n")
        and "service_port = 23\n" in text
        and 'comment = "old \\"box\\""' in text
    )
    assert [x.name for x in load_rules(config).rules] == ["dns", "telnet"]
    auto = add_rule(config, "allow", "*", {"src": "10.9.0.0/16"})
    assert auto.name == "allow-any-1"
    with pytest.raises(RulesError, match="already exists"):
        add_rule(config, "deny", "services", {"proto": 6}, name="telnet")
    with pytest.raises(RulesError, match="has no field"):
        add_rule(config, "deny", "hosts", {"server": "10.1.0.1"})
    # a refused rule leaves the file as it was, and no temp file behind
    assert [x.name for x in load_rules(config).rules] == ["dns", "allow-any-1", "telnet"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["rules.toml"]


# ------------------------------------------------------------------ one validation for every field


@pytest.mark.parametrize(
    ("field", "good", "bad"),
    [
        (
            "src",
            ["10.1.0.5", "2001:db8::1", "10.0.0.0/8", "2001:db8:1::/64", "dhcp", "other", "*"],
            ["not-an-ip", "300.1.1.1", "10.0.0.0/33", "", 7],
        ),
        ("src_net/24", ["10.1.2.0/24", "2001:db8::/64", "*"], ["10.1.2.3", "servers"]),
        ("src_label", ["dhcp", "servers", "other"], ["lan"]),
        (
            "src_mac",
            ["00:16:3e:00:00:0a", "00-16-3E-00-00-0A", "random", "*"],
            ["00:16:3e:00:00", "zz:16:3e:00:00:0a"],
        ),
        (
            "service_port",
            [0, 65535, "443", "1024-65535", "*"],
            [-1, 65536, "70000", "http", "9-3", "1-70000"],
        ),
        ("proto", ["tcp", "TCP", "icmpv6", "ipv6-icmp", 6, "17", "1-255"], ["tcpx", 256, "-1"]),
        ("ethertype", ["0x0806", 2048, "0x0800-0x08ff"], ["0x10000", "arpx"]),
        ("vlan", [0, 4095, "100-199"], [4096]),
        ("ip_version", [0, 4, 6], [5, 7]),
        ("icmp_type", [0, 255], [256]),
        ("tcp_flags", [18], [256, True]),
    ],
)
def test_one_validation_for_every_field(field, good, bad):
    from flowdiff.vocab import parse_spec

    labels = {"servers", "dhcp", "other"}
    for v in good:
        parse_spec(field, v, labels)
    for v in bad:
        with pytest.raises(ValueError):
            parse_spec(field, v, labels)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[[deny]]\nserver = "300.1.1.1"',
            r"server = \"300.1.1.1\": not an IPv4/IPv6 address, CIDR or \[networks\]",
        ),
        (
            '[[deny]]\nclient = "lan"',
            r"not an IPv4/IPv6 address, CIDR or \[networks\] label \(labels: dhcp, other",
        ),
        ("[[deny]]\nservice_port = 70000", "not a port"),
        ('[[deny]]\nsrc_mac = "nope"', "not a MAC address"),
    ],
)
def test_the_rules_file_takes_the_same_values(config, text, message):
    with pytest.raises(RulesError, match=message):
        parse_rules(text, config)


def test_rules_print_values_through_the_vocabulary(config):
    rules = parse_rules(
        '[[deny]]\nname = "x"\nproto = 58\nethertype = 2054\nservice_port = [23, 2323]', config
    )
    assert rules.rules[0].describe() == "deny x [*] proto=icmpv6 ethertype=0x0806 service_port=23,2323"


NETS = {"10.1.0.0/24": "servers", "0.0.0.0/0": "internet", "::/0": "internet6"}


@pytest.mark.parametrize(
    ("field", "spec", "networks", "everything"),
    [
        ("src", "*", {}, True),
        ("src", "0.0.0.0/0", {}, False),
        ("src", ["0.0.0.0/0", "::/0"], {}, True),
        ("src", ["0.0.0.0/1", "128.0.0.0/1", "::/0"], {}, True),
        ("src", "other", {}, True),  # no networks: every address is "other"
        ("src", "other", NETS, False),
        ("src", ["internet", "internet6"], NETS, False),  # 10.1.0.0/24 is "servers"
        ("src", ["internet", "internet6", "servers"], NETS, True),
        ("src", ["internet", "::/0", "10.0.0.0/8"], NETS, True),
        ("src", "internet", {"0.0.0.0/0": "internet", "::/0": "internet"}, True),
        ("src_net/24", ["0.0.0.0/0", "::/0"], {}, True),
        ("src_label", ["servers", "internet", "internet6"], NETS, False),
        ("src_label", ["servers", "internet", "internet6", "other"], NETS, True),
        ("service_port", "0-65535", {}, True),
        ("service_port", ["0-1023", "1024-65535"], {}, True),
        ("service_port", ["0-1023", "1025-65535"], {}, False),
        ("service_port", "1-65535", {}, False),
        ("proto", "0-255", {}, True),
        ("vlan", "0-4095", {}, True),
        ("ip_version", [0, 4, 6], {}, True),
        ("ip_version", [4, 6], {}, False),
        ("src_mac", "random", {}, False),
        ("src_mac", "*", {}, True),
    ],
)
def test_what_covers_every_value_of_a_field(field, spec, networks, everything):
    from flowdiff.rules import covers_everything

    assert covers_everything(field, spec, networks) is everything


def test_a_rule_is_everything_when_every_key_field_is(config):
    from flowdiff.errors import TooBroadError
    from flowdiff.rules import everything_tables

    assert everything_tables(config, "hosts", {"src": "*"}) == ["hosts"]
    assert everything_tables(config, "services", {"service_port": "0-65535", "proto": "*"}) == ["services"]
    assert everything_tables(config, "services", {"service_port": "1-65535"}) == []
    # table "*": every table that has the fields named
    # unnamed fields match anything
    assert everything_tables(config, "*", {"src_mac": "*"}) == ["link", "stations"]
    assert everything_tables(config, "*", {"src_mac": "00:16:3e:00:00:01"}) == []
    assert everything_tables(config, "*", {}) == ["services", "hosts", "link", "stations"]
    config.rules_path.parent.mkdir(parents=True)
    with pytest.raises(TooBroadError, match=r"would deny every row of table link \(ethertype=\* src_mac=\* "):
        add_rule(config, "deny", "link", {"src_mac": "*"})
    assert not config.rules_path.exists()


def test_network_key_fields_match_by_cidr():
    nets = pd.Series(["10.1.2.0/24", "10.1.3.0/24", "2001:db8::/64"])
    assert field_mask(nets, "src_net/24", "10.1.2.0/24").tolist() == [True, False, False]
    assert field_mask(nets, "src_net/24", "10.1.0.0/16").tolist() == [True, True, False]
    assert field_mask(nets, "src_net/24", "::/0").tolist() == [False, False, True]
