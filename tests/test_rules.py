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
    r = add_rule(config, "deny", "services", {"service_port": "23", "server": "10.1.0.0/24"}, name="telnet",
                 comment='old "box"', by="ops")  # fmt: skip
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
