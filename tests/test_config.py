from __future__ import annotations

import pytest
from click.testing import CliRunner

from flowdiff.cli import main
from flowdiff.config import Config, load_config, parse_config, parse_duration
from flowdiff.errors import ConfigError
from flowdiff.schema import DEFAULT_TABLES


def test_no_config_gives_defaults():
    c = load_config()
    assert c.source is None
    assert c.interval == 300
    assert {n: t.keys for n, t in c.tables.items()} == DEFAULT_TABLES
    assert str(c.store) == "store" and str(c.baselines) == "baselines" and str(c.reports) == "reports"
    assert c.sensor and "/" not in c.sensor


def test_lookup_order(write_config, monkeypatch, tmp_path):
    write_config("interval = 60\n")  # ./flowdiff.toml
    assert load_config().interval == 60
    env = write_config("interval = 120\n", "env.toml")
    monkeypatch.setenv("FLOWDIFF_CONFIG", str(env))
    assert load_config().interval == 120
    explicit = write_config("interval = 30\n", "explicit.toml")
    assert load_config(explicit).interval == 30


def test_contract_example(write_config):
    p = write_config(
        """
interval = 60
[networks]
"10.1.0.0/24" = "dmz"
"0.0.0.0/0" = "internet"
[tables.t5]
keys = ["src", "dst", "proto", "sport", "dport"]
"""
    )
    c = load_config(p)
    assert c.interval == 60
    assert c.networks == {"10.1.0.0/24": "dmz", "0.0.0.0/0": "internet"}
    assert list(c.tables) == ["t5"]
    assert c.tables["t5"].keys == ("src", "dst", "proto", "sport", "dport")


def test_networks_from_file(write_config, tmp_path):
    (tmp_path / "nets.txt").write_text("# pools\n10.9.0.0/16 dhcp\n2001:db8::/32 v6net\n")
    c = load_config(write_config('networks = "nets.txt"\n'))
    assert c.networks == {"10.9.0.0/16": "dhcp", "2001:db8::/32": "v6net"}
    (tmp_path / "nets.toml").write_text('[networks]\n"192.0.2.0/24" = "lab"\n')
    assert load_config(write_config('networks = "nets.toml"\n')).networks == {"192.0.2.0/24": "lab"}


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("intervall = 60", "intervall"),
        ("interval = 0", "interval"),
        ('interval = "soon"', "interval"),
        ('[networks]\n"10.0.0.300/24" = "x"', "networks.'10.0.0.300/24'"),
        ('[tables.t]\nkeys = ["src", "bogus"]', "tables.t.keys"),
        ("[tables.t]\nkeys = []", "tables.t.keys"),
        ('[tables.t]\nkeys = ["src"]\ncolor = 1', "tables.t.color"),
        ('[tables.t]\nkeys = ["src"]\ncollapse = ["nope"]', "tables.t.collapse"),
        ('[mail]\ntls = "ssl"', "mail.tls"),
        ('[mail]\npassword = "secret"', "mail.password"),
        ('sensor = "a/b"', "sensor"),
        ("service_ports = [70000]", "service_ports"),
    ],
)
def test_bad_values_name_the_key(write_config, text, key):
    p = write_config(text + "\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert key in str(e.value)
    assert str(p) in str(e.value)
    assert "\n" not in str(e.value)


def test_invalid_toml_is_one_line(write_config):
    p = write_config("interval = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(p)


def test_cli_reports_config_error_without_traceback(write_config):
    p = write_config("bogus = 1\n")
    r = CliRunner().invoke(main, ["tables", "--config", str(p)])
    assert r.exit_code == 2
    assert r.output.strip().startswith("Error: config")
    assert "bogus" in r.output and "Traceback" not in r.output


def test_durations():
    assert parse_duration("7d") == 7 * 86400
    assert parse_duration(300) == 300
    assert parse_duration("5m") == 300
    with pytest.raises(ConfigError):
        parse_duration("-1")


def test_net_keys_and_overrides():
    c = parse_config({"tables": {"n": {"keys": ["src_net/24", "dst_net/64"]}}})
    assert c.tables["n"].keys == ("src_net/24", "dst_net/64")
    c2 = c.with_overrides(store="/tmp/x", interval=None)
    assert str(c2.store) == "/tmp/x" and c2.interval == 300
    with pytest.raises(ConfigError):
        Config().with_overrides(interval=0)


def test_unwritable_store_is_one_line(tmp_path, write_config):
    """An environmental failure (here: the store path is a file) is one line and exit 2, not a traceback."""
    from flowdiff.demo import frames as synth

    (tmp_path / "store").write_text("not a directory")
    cap = synth.write_pcap(
        tmp_path / "a.pcap",
        [synth.Frame(10**18, synth.arp_frame("02:00:00:00:00:01", "192.0.2.1", "192.0.2.2"))],
    )
    config = write_config(f'store = "{tmp_path / "store"}"\n')
    r = CliRunner().invoke(main, ["collect", "--config", str(config), str(cap)])
    assert r.exit_code == 2
    assert r.output.startswith("Error: ") and len(r.output.strip().splitlines()) == 1
    assert str(tmp_path / "store") in r.output
