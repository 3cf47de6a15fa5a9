"""netflow: v5/v9/IPFIX decoding held to the reference decoder of tests/netflow_ref.py, bad input counted
under its reason (never raised, never a wrong row), templates across files, and collect end to end."""

from __future__ import annotations

import random
import struct

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from netflow_ref import (
    V4_FIELDS,
    V6_FIELDS,
    Rec,
    data_set,
    ipfix_message,
    reference_decode,
    rows_of,
    template_set,
    v5_datagram,
    v9_datagram,
)

from flowdiff.cli import main
from flowdiff.listen import SpoolRecord, SpoolWriter
from flowdiff.netflow import FlowDecoder, TemplateCache, decode_datagrams, split_proportional

T0 = 1_700_000_000_000  # epoch ms


def random_recs(rng: random.Random, n: int, v6: bool = False) -> list[Rec]:
    out = []
    for _ in range(n):
        if v6:
            src = f"2001:db8::{rng.randrange(1, 0xFFFF):x}"
            dst = f"2001:db8:1::{rng.randrange(1, 0xFFFF):x}"
        else:
            src = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
            dst = f"192.0.2.{rng.randrange(1, 255)}"
        proto = rng.choice([6, 17, 6, 17, 47])
        start = T0 + rng.randrange(0, 600_000)
        out.append(Rec(src, dst, proto, rng.randrange(65536), rng.randrange(65536), rng.randrange(256),
                       rng.randrange(1, 10**6), rng.randrange(40, 10**9), start, start + rng.randrange(0, 60_000),
                       rng.randrange(65536), rng.randrange(2**32)))  # fmt: skip
    return out


def generated_datagrams(seed: int) -> list[tuple[bytes, str]]:
    """Datagrams of every version, two exporters, several domains, enterprise and variable-length fields."""
    rng = random.Random(seed)
    export = T0 + 700_000
    out = []
    for exporter in ("198.51.100.1", "2001:db8:ffff::2"):
        out.append((v5_datagram(random_recs(rng, 30), export_ms=export), exporter))
        out.append(
            (v5_datagram(random_recs(rng, 7), export_ms=export, uptime_ms=1000), exporter)
        )  # uptime wrap
        v9_fields = [*V4_FIELDS, (22, 4), (21, 4)]
        recs9 = random_recs(rng, 20)
        out.append((v9_datagram([template_set(9, 300, v9_fields),
                                 data_set(300, recs9, v9_fields, export_ms=export, uptime_ms=5_000_000)],
                                export_ms=export, uptime_ms=5_000_000, source_id=7), exporter))  # fmt: skip
        ipfix6 = [*V6_FIELDS, (152, 8), (153, 8), (99, 4, 9)]  # an enterprise field, skipped
        ipfix4 = [*V4_FIELDS, (152, 8), (82, 0xFFFF), (153, 8)]  # a variable-length field
        for domain in (1, 2):
            sets = [template_set(10, 256, ipfix6), template_set(10, 257, ipfix4),
                    data_set(256, random_recs(rng, 15, v6=True), ipfix6),
                    data_set(257, random_recs(rng, 12), ipfix4)]  # fmt: skip
            out.append((ipfix_message(sets, export_s=export // 1000, domain=domain), exporter))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_decoder_equals_reference_on_generated_datagrams(seed):
    grams = generated_datagrams(seed)
    arrays, dec = decode_datagrams(grams)
    want = reference_decode(grams)
    assert len(want) == 2 * (30 + 7 + 20 + 2 * (15 + 12))
    assert sorted(rows_of(arrays, dec.exporters)) == sorted(want)
    assert not dec.skipped


def test_v5_times_counters_and_interfaces():
    rec = Rec("10.0.0.1", "10.0.0.2", 6, 40000, 443, 0x1B, 12, 3400, T0, T0 + 2500, 3, 4)
    arrays, dec = decode_datagrams([(v5_datagram([rec], export_ms=T0 + 10_000), "192.0.2.9")])
    assert arrays["ts_ns"].tolist() == [T0 * 10**6] and arrays["ts_end_ns"].tolist() == [(T0 + 2500) * 10**6]
    assert arrays["packets"].tolist() == [12] and arrays["bytes"].tolist() == [3400]
    assert arrays["input_if"].tolist() == [3] and arrays["output_if"].tolist() == [4]
    assert dec.exporters == ["192.0.2.9"] and arrays["exporter"].tolist() == [1]


def test_icmp_type_code_from_the_destination_port():
    rec = Rec("10.0.0.1", "10.0.0.2", 1, 0, 0x0800, 0, 1, 84, T0, T0)
    arrays, _ = decode_datagrams([(v5_datagram([rec], export_ms=T0), "192.0.2.9")])
    assert (arrays["icmp_type"][0], arrays["icmp_code"][0], arrays["sport"][0], arrays["dport"][0]) == (
        8,
        0,
        0,
        0,
    )


# ---------------------------------------------------------------- bad input, each under its reason


def _one(payload: bytes, cache: TemplateCache | None = None) -> tuple[dict, FlowDecoder]:
    return decode_datagrams([(payload, "192.0.2.1")], cache)


REC = Rec("10.0.0.1", "10.0.0.2", 17, 5000, 53, 0, 1, 80, T0, T0)


@pytest.mark.parametrize(
    "payload,reason",
    [
        (b"\x00\x05\x00", "flow-short-datagram"),
        (v5_datagram([REC], export_ms=T0)[:20], "flow-short-datagram"),
        (struct.pack("!HH", 7, 0) + b"\0" * 40, "flow-unknown-version"),
        (v5_datagram([REC], export_ms=T0)[:-1], "flow-bad-length"),  # count says more than is there
        (ipfix_message([template_set(10, 256, V4_FIELDS)], export_s=1)[:-4], "flow-bad-length"),
        (ipfix_message([struct.pack("!HH", 300, 400) + b"\0" * 8], export_s=1), "flow-bad-length"),
        (ipfix_message([template_set(10, 256, [(8, 4), (12, 0)])], export_s=1), "flow-bad-template"),
        (ipfix_message([template_set(10, 12, V4_FIELDS)], export_s=1), "flow-bad-template"),
        (ipfix_message([struct.pack("!HH", 7, 8) + b"\0" * 4], export_s=1), "flow-bad-set"),
        (ipfix_message([data_set(999, [REC], V4_FIELDS)], export_s=1), "flow-no-template"),
    ],
)
def test_bad_input_is_counted_under_its_reason(payload, reason):
    arrays, dec = _one(payload)
    assert dec.skipped[reason] >= 1, dec.skipped
    assert len(arrays["ts_ns"]) == 0


def test_template_id_collision_uses_the_new_layout_and_counts_it():
    a = [(8, 4), (12, 4), (2, 4), (1, 4)]
    b = [(12, 4), (8, 4), (1, 4), (2, 4)]  # same id, fields swapped
    grams = [
        (ipfix_message([template_set(10, 256, a), data_set(256, [REC], a)], export_s=1), "192.0.2.1"),
        (ipfix_message([template_set(10, 256, b), data_set(256, [REC], b)], export_s=1), "192.0.2.1"),
    ]
    arrays, dec = decode_datagrams(grams)
    assert dec.skipped["flow-template-changed"] == 1
    assert sorted(rows_of(arrays, dec.exporters)) == sorted(reference_decode(grams))
    assert len(arrays["ts_ns"]) == 2


def test_zero_length_records_and_padding_make_no_rows():
    fields = [(8, 4), (12, 4)]
    msg = ipfix_message(
        [template_set(10, 256, fields), struct.pack("!HH", 256, 4 + 3) + b"\0\0\0"], export_s=1
    )
    arrays, dec = _one(msg)
    assert len(arrays["ts_ns"]) == 0 and not dec.skipped  # 3 bytes of padding: not a record


def test_records_without_addresses_are_counted():
    fields = [(2, 4), (1, 4)]
    msg = ipfix_message([template_set(10, 256, fields), data_set(256, [REC, REC], fields)], export_s=1)
    arrays, dec = _one(msg)
    assert len(arrays["ts_ns"]) == 0 and dec.skipped["flow-no-address"] == 2


def test_sequence_gaps_are_counted():
    grams = [(v5_datagram([REC] * 3, export_ms=T0, seq=s), "192.0.2.1") for s in (0, 3, 10)]
    arrays, dec = decode_datagrams(grams)
    assert len(arrays["ts_ns"]) == 9 and dec.skipped["flow-sequence-gap"] == 4


def test_template_flood_is_bounded():
    sets = [template_set(10, 256 + i, [(8, 4), (12, 4)]) for i in range(1100)]
    dec = FlowDecoder()
    for k in range(0, 1100, 100):
        dec.add(ipfix_message(sets[k : k + 100], export_s=1), "192.0.2.1")
    assert len(dec.cache.templates) == 1024 and dec.skipped["flow-template-limit"] == 76


def test_pending_data_waits_for_its_template_within_a_bound():
    dec = FlowDecoder(pending_limit=2)
    for _ in range(3):
        dec.add(ipfix_message([data_set(256, [REC], V4_FIELDS)], export_s=1), "192.0.2.1")
    assert dec.skipped["flow-no-template"] == 1  # the third set is over the bound
    dec.add(ipfix_message([template_set(10, 256, V4_FIELDS)], export_s=1), "192.0.2.1")
    assert len(dec.take()["ts_ns"]) == 2  # the two waiting sets, decoded once the template came


def test_withdrawal_forgets_the_template():
    dec = FlowDecoder()
    dec.add(ipfix_message([template_set(10, 256, V4_FIELDS)], export_s=1), "192.0.2.1")
    dec.add(ipfix_message([struct.pack("!HHHH", 2, 8, 256, 0)], export_s=1), "192.0.2.1")
    dec.add(ipfix_message([data_set(256, [REC], V4_FIELDS)], export_s=1), "192.0.2.1")
    dec.drop_pending()
    assert len(dec.take()["ts_ns"]) == 0 and dec.skipped["flow-no-template"] == 1


def test_templates_are_per_exporter_and_domain():
    dec = FlowDecoder()
    dec.add(ipfix_message([template_set(10, 256, V4_FIELDS)], export_s=1, domain=1), "192.0.2.1")
    dec.add(ipfix_message([data_set(256, [REC], V4_FIELDS)], export_s=1, domain=2), "192.0.2.1")
    dec.add(ipfix_message([data_set(256, [REC], V4_FIELDS)], export_s=1, domain=1), "192.0.2.2")
    dec.drop_pending()
    assert len(dec.take()["ts_ns"]) == 0 and dec.skipped["flow-no-template"] == 2


# ---------------------------------------------------------------- fuzz


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600), st.sampled_from([b"", b"\x00\x05", b"\x00\x09", b"\x00\x0a"]))
def test_fuzz_random_bytes_never_raise(data, prefix):
    dec = FlowDecoder()
    dec.add(prefix + data, "192.0.2.1")
    dec.drop_pending()
    arrays = dec.take()
    n = len(arrays["ts_ns"])
    assert all(len(v) == n for v in arrays.values())
    assert set(arrays["ip_version"].tolist()) <= {4, 6}


_VALID = generated_datagrams(99)
_VALID_ROWS = {g: set(reference_decode([g])) for g in _VALID}


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(_VALID) - 1), st.integers(0, 2000), st.binary(max_size=64))
def test_fuzz_cut_or_extended_datagrams_never_make_a_wrong_row(which, cut, tail):
    """A datagram cut anywhere, or followed by garbage, gives only rows of the intact datagram."""
    gram, exporter = _VALID[which]
    for payload in (gram[:cut], gram + tail):
        dec = FlowDecoder()
        dec.add(payload, exporter)
        dec.drop_pending()
        rows = set(rows_of(dec.take(), dec.exporters))
        assert rows <= _VALID_ROWS[(gram, exporter)]


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, len(_VALID) - 1),
    st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)), max_size=8),
)
def test_fuzz_flipped_bytes_never_raise(which, flips):
    gram, exporter = _VALID[which]
    b = bytearray(gram)
    for pos, val in flips:
        if pos < len(b):
            b[pos] = val
    dec = FlowDecoder()
    dec.add(bytes(b), exporter)
    dec.drop_pending()
    arrays = dec.take()
    assert all(len(v) == len(arrays["ts_ns"]) for v in arrays.values())


# ---------------------------------------------------------------- flows spanning intervals


def test_proportional_split_keeps_exact_totals():
    n = 1000
    rng = np.random.default_rng(1)
    start = rng.integers(0, 10**12, n).astype(np.int64)
    recs = {
        "ts_ns": start,
        "ts_end_ns": start + rng.integers(0, 10**12, n),
        "packets": rng.integers(1, 10**6, n).astype(np.uint64),
        "bytes": rng.integers(0, 10**10, n).astype(np.uint64),
        "src_lo": np.arange(n, dtype=np.uint64),
    }
    out = split_proportional(recs, 60)
    for name in ("packets", "bytes"):
        totals = np.bincount(
            out["src_lo"].astype(np.int64), weights=out[name].astype(np.float64), minlength=n
        )
        assert totals.astype(np.uint64).tolist() == recs[name].tolist()
    step = 60 * 10**9
    assert (out["ts_ns"] // step == out["ts_end_ns"] // step).all()  # every piece within one interval


# ---------------------------------------------------------------- collect end to end


def _spool(tmp_path, name, grams):
    w = SpoolWriter(
        tmp_path / name, rotate=300, clock=lambda: 1_700_000_000.0 + len(list((tmp_path / name).glob("*")))
    )
    for payload, exporter in grams:
        w.write([SpoolRecord(T0 * 10**6, (exporter, 2055), ("127.0.0.1", 4739), payload)])
    w.close()
    return w.files[-1]


CONFIG = """interval = 60
settle = 0
[tables.five]
keys = ["src", "dst", "proto", "sport", "dport"]
[tables.services]
keys = ["client", "server", "proto", "service_port"]
[tables.exporters]
keys = ["exporter", "input_if", "output_if"]
"""


def test_collect_spool_files_templates_survive_rotation_and_restart(tmp_path, write_config):
    cfg = write_config(CONFIG)
    tpl = ipfix_message([template_set(10, 256, V4_FIELDS + [(152, 8), (153, 8)])], export_s=T0 // 1000)
    fields = V4_FIELDS + [(152, 8), (153, 8)]
    recs = random_recs(random.Random(5), 20)
    data = ipfix_message([data_set(256, recs, fields)], export_s=T0 // 1000)
    f1 = _spool(tmp_path, "s1", [(tpl, "198.51.100.7")])
    f2 = _spool(tmp_path, "s2", [(data, "198.51.100.7")])  # only data: the template is from the file before
    runner = CliRunner()
    res = runner.invoke(main, ["collect", "--config", str(cfg), str(f1)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["collect", "--config", str(cfg), str(f2)])  # another run: a "restart"
    assert res.exit_code == 0, res.output
    assert "20 flow records" in res.output
    five = pd.read_parquet(tmp_path / "store" / "five")
    got = {(r.src, r.dst, r.proto, r.sport, r.dport): (r.packets, r.bytes) for r in five.itertuples()}
    want = {}
    for r in recs:
        k = (
            r.src,
            r.dst,
            r.proto,
            r.sport if r.proto in (6, 17) else 0,
            r.dport if r.proto in (6, 17) else 0,
        )
        p, b = want.get(k, (0, 0))
        want[k] = (p + r.packets, b + r.bytes)
    assert got == want
    ex = pd.read_parquet(tmp_path / "store" / "exporters")
    assert set(ex["exporter"]) == {"198.51.100.7"}
    assert ex["packets"].sum() == sum(r.packets for r in recs)
    # collecting again changes nothing (ledger), and a table added later reads the file with its templates
    res = runner.invoke(main, ["collect", "--config", str(cfg), str(f2)])
    assert "1 already collected" in res.output
    cfg2 = write_config(CONFIG + '[tables.hosts]\nkeys = ["src"]\n', "two.toml")
    res = runner.invoke(main, ["collect", "--config", str(cfg2), str(f1), str(f2)])
    assert res.exit_code == 0, res.output
    hosts = pd.read_parquet(tmp_path / "store" / "hosts")
    assert hosts["packets"].sum() == sum(r.packets for r in recs)


def test_collect_flow_ports_in_a_tcpdump_capture(tmp_path, write_config):
    """Export traffic captured on the wire (Ethernet) is decoded only on `flow_ports`."""
    rec = Rec("10.9.0.1", "10.9.0.2", 6, 40000, 443, 0x02, 7, 700, T0, T0 + 1000)
    payload = v5_datagram([rec], export_ms=T0 + 5000)
    import dpkt

    udp = dpkt.udp.UDP(sport=5000, dport=2055, data=payload)
    udp.ulen = 8 + len(payload)
    ip = dpkt.ip.IP(src=bytes([192, 0, 2, 5]), dst=bytes([192, 0, 2, 6]), p=17, data=udp)
    eth = dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=0x0800, data=ip)
    cap = tmp_path / "wire.pcap"
    with open(cap, "wb") as f:
        w = dpkt.pcap.Writer(f)
        w.writepkt(bytes(eth), ts=T0 / 1000 + 5)
    plain = write_config(CONFIG, "plain.toml")
    res = CliRunner().invoke(
        main, ["collect", "--config", str(plain), "--store", str(tmp_path / "a"), str(cap)]
    )
    five = pd.read_parquet(tmp_path / "a" / "five")
    assert five["dport"].tolist() == [2055]  # without flow_ports: just a UDP packet
    flows = write_config("flow_ports = [2055]\n" + CONFIG, "flows.toml")
    res = CliRunner().invoke(
        main, ["collect", "--config", str(flows), "--store", str(tmp_path / "b"), str(cap)]
    )
    assert res.exit_code == 0, res.output
    five = pd.read_parquet(tmp_path / "b" / "five")
    assert five[["src", "dport", "packets", "bytes"]].values.tolist() == [["10.9.0.1", 443, 7, 700]]
    svc = pd.read_parquet(tmp_path / "b" / "services")
    assert svc[["client", "server", "service_port"]].values.tolist() == [["10.9.0.1", "10.9.0.2", 443]]
    ex = pd.read_parquet(tmp_path / "b" / "exporters")
    assert ex["exporter"].tolist() == ["192.0.2.5"]


def test_config_refuses_bad_flow_keys(write_config):
    from flowdiff.config import load_config
    from flowdiff.errors import ConfigError

    with pytest.raises(ConfigError, match="flow_split"):
        load_config(write_config('flow_split = "end"\n'))
    with pytest.raises(ConfigError, match="flow_ports"):
        load_config(write_config("flow_ports = 2055\n"))
