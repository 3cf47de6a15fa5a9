from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from flowdiff.cli import main
from flowdiff.config import Config, load_config, parse_config, parse_duration, parse_size
from flowdiff.errors import ConfigError
from flowdiff.schema import DEFAULT_TABLES, STATIONS, STATIONS_KEYS

ROOT = Path(__file__).resolve().parents[1]


def test_no_config_gives_defaults():
    c = load_config()
    assert c.source is None
    assert c.interval == 300
    assert {n: t.keys for n, t in c.tables.items()} == {**DEFAULT_TABLES, STATIONS: STATIONS_KEYS}
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
    assert list(c.tables) == ["t5", "stations"]
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


# ---------------------------------------------------------------- paths: one rule (issue 8, item 1)


def test_every_relative_path_in_a_config_file_is_relative_to_its_folder(tmp_path):
    site = tmp_path / "site"
    (site / "tpl").mkdir(parents=True)
    (site / "nets.txt").write_text("10.0.0.0/8 lan\n")
    cfg = site / "flowdiff.toml"
    cfg.write_text(
        'store = "data/store"\nbaselines = "data/baselines"\nreports = "out"\nspool = "spool"\n'
        'outbox = "box"\nrules = "rules.toml"\ntemplates = "tpl"\nnetworks = "nets.txt"\n'
        '[mail]\nhost = "localhost"\nto = "a@b.c"\ncafile = "ca.pem"\npassword_file = "pw"\n'
    )
    other = tmp_path / "home"
    other.mkdir()
    os.chdir(other)
    c = load_config(cfg)
    assert (c.store, c.baselines, c.reports) == (site / "data/store", site / "data/baselines", site / "out")
    assert (c.spool, c.outbox_path, c.rules_path, c.templates) == (
        site / "spool",
        site / "box",
        site / "rules.toml",
        site / "tpl",
    )
    assert c.networks == {"10.0.0.0/8": "lan"}
    assert (c.mail.cafile, c.mail.password_file) == (str(site / "ca.pem"), str(site / "pw"))


def test_defaults_follow_the_config_file_but_not_without_one(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "flowdiff.toml").write_text("interval = 60\n")
    c = load_config(site / "flowdiff.toml")
    assert (c.store, c.baselines, c.reports) == (site / "store", site / "baselines", site / "reports")
    assert c.outbox_path == site / "reports" / "outbox" and c.rules_path == site / "baselines" / "rules.toml"
    d = load_config()  # no config file at all: the working directory
    assert (d.store, d.baselines, d.reports) == (Path("store"), Path("baselines"), Path("reports"))
    assert c.with_overrides(store="mine").store == Path("mine")  # --store DIR: the working directory


def test_the_readme_cron_line_run_from_home_uses_the_site_store(tmp_path, data_dir):
    """`flowdiff run --config /site/flowdiff.toml --spool /site/spool`, run by cron from $HOME."""
    site, home = tmp_path / "site", tmp_path / "home"
    (site / "spool").mkdir(parents=True)
    home.mkdir()
    cap = site / "spool" / "20261201000000.pcap"
    shutil.copy(data_dir / "tcpdump__LINKTYPE_IPV4.pcap", cap)
    os.utime(cap, (time.time() - 3000, time.time() - 3000))  # closed 50 min ago
    (site / "flowdiff.toml").write_text('sensor = "s1"\nreports = "reports"\n')
    cmd = [
        sys.executable,
        "-m",
        "flowdiff",
        "run",
        "--config",
        str(site / "flowdiff.toml"),
        "--spool",
        str(site / "spool"),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(cmd, cwd=home, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert list(home.iterdir()) == []  # nothing built in $HOME
    assert any((site / "store" / "_ledger").glob("*.jsonl")) and (site / "reports").is_dir()
    assert r.stdout.splitlines() == [
        "health no-baseline: no baseline yet: 1 interval collected (0.0 days); "
        f"flowdiff learn --config {(site / 'flowdiff.toml').resolve()} is due"
    ]
    again = subprocess.run(cmd, cwd=home, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout == "" and list(home.iterdir()) == []  # quiet, same store


@pytest.mark.parametrize("key", ["store", "baselines", "reports"])
def test_a_folder_key_naming_a_plain_file_is_one_line(write_config, tmp_path, key):
    (tmp_path / "afile").write_text("x")
    p = write_config(f'{key} = "afile"\n')
    r = CliRunner().invoke(main, ["tables", "--config", str(p)])
    assert r.exit_code == 2
    assert r.output == f"Error: config {p}: {key}: {tmp_path / 'afile'} is not a folder\n"
    with pytest.raises(ConfigError, match="afile is not a folder"):  # an override from a notebook too
        Config().with_overrides(**{key: "afile"})


def test_health_keys(write_config):
    c = load_config(write_config('stale_after = "2h"\nmin_free = "500MB"\n[mail]\nheartbeat = "daily"\n'))
    assert (c.stale_after, c.min_free, c.mail.heartbeat) == (7200, 500 * 10**6, "daily")
    d = Config()
    assert (d.stale_after, d.min_free, d.mail.heartbeat) == (3600, 10**9, "off")
    sizes = [parse_size(v) for v in ("1GB", "1 gb", "2GiB", "10KB", 0, 123)]
    assert sizes == [10**9, 10**9, 2 * 2**30, 10**4, 0, 123]
    for bad in ('min_free = "lots"', "min_free = -1", 'stale_after = "soon"', '[mail]\nheartbeat = "hourly"'):
        with pytest.raises(ConfigError, match=bad.split("=")[0].strip().replace("[mail]\n", "mail.")):
            load_config(write_config(bad + "\n"))
