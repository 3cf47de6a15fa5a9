"""The compiled fast paths of flow records: FlowDecoder.add_batch (flowdiff/_flowwalk.py) gives exactly what
FlowDecoder.add gives datagram by datagram (records, skip counts, templates, sequence gaps), on valid, cut,
garbled and mixed streams; FlowRouter finds the same payloads as netflow._udp_payload; the listener's
write_v4 writes the same bytes as write_one; the Aggregator's SYN memory decides roles across drains and
stays bounded."""

from __future__ import annotations

import random
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from netflow_ref import (
    V4_FIELDS,
    Rec,
    data_set,
    ipfix_message,
    reference_decode,
    rows_of,
    template_set,
    v5_datagram,
    v9_datagram,
)
from test_netflow import T0, generated_datagrams, random_recs

from flowdiff.aggregate import Aggregator
from flowdiff.listen import HEAD_V4, SpoolWriter
from flowdiff.netflow import FlowDecoder, TemplateCache, _udp_payload


def _as_batch(
    grams: list[tuple[bytes, str]], pad: int = 7
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list, np.ndarray]:
    """The datagrams laid out in one buffer (with gaps, like frames of a capture chunk)."""
    names = sorted({e for _, e in grams})
    buf, offs, lens = bytearray(), [], []
    for payload, _ in grams:
        buf += bytes(pad)
        offs.append(len(buf))
        lens.append(len(payload))
        buf += payload
    which = np.array([names.index(e) for _, e in grams], dtype=np.int64)
    return np.frombuffer(bytes(buf), dtype=np.uint8), np.array(offs), np.array(lens), names, which


def _both(
    grams: list[tuple[bytes, str]], cache: TemplateCache | None = None
) -> tuple[FlowDecoder, FlowDecoder]:
    one = FlowDecoder(cache.copy() if cache else None)
    for payload, exporter in grams:
        one.add(payload, exporter)
    many = FlowDecoder(cache.copy() if cache else None)
    many.add_batch(*_as_batch(grams))
    return one, many


def _assert_same(one: FlowDecoder, many: FlowDecoder) -> list:
    one.drop_pending()
    many.drop_pending()
    a, b = one.take(), many.take()
    rows_a, rows_b = sorted(rows_of(a, one.exporters)), sorted(rows_of(b, many.exporters))
    assert rows_a == rows_b
    # every column, not just the reference's: same multiset of full rows
    full = sorted(zip(*(a[k].tolist() for k in sorted(a)), strict=True))
    exp_a = [one.exporters[i - 1] for i in a["exporter"].tolist()]
    exp_b = [many.exporters[i - 1] for i in b["exporter"].tolist()]
    key = [k for k in sorted(a) if k != "exporter"]
    assert sorted(zip(*(a[k].tolist() for k in key), exp_a, strict=True)) == sorted(
        zip(*(b[k].tolist() for k in key), exp_b, strict=True)
    )
    assert len(full) == len(b["ts_ns"])
    assert one.skipped == many.skipped
    assert one.cache.to_json() == many.cache.to_json()
    assert one.datagrams == many.datagrams and one.records == many.records
    return rows_a


def _plain_stream(seed: int, n: int = 40) -> list[tuple[bytes, str]]:
    """Templates once, then many plain data messages (the fast path's case), v5, v9 and IPFIX."""
    rng = random.Random(seed)
    out = []
    fields = [*V4_FIELDS, (152, 8), (153, 8)]
    v9_fields = [*V4_FIELDS, (22, 4), (21, 4)]
    for exporter in ("198.51.100.1", "198.51.100.2"):
        out.append(
            (ipfix_message([template_set(10, 256, fields)], export_s=T0 // 1000 + 700, domain=1), exporter)
        )
        out.append(
            (
                v9_datagram([template_set(9, 300, v9_fields)], export_ms=T0 + 700_000, uptime_ms=5_000_000),
                exporter,
            )
        )
    seq = {}
    for k in range(n):
        exporter = ("198.51.100.1", "198.51.100.2")[k % 2]
        kind = k % 3
        recs = random_recs(rng, rng.randrange(1, 25))
        if kind == 0:
            s = seq.get((exporter, 10), 0)
            msg = ipfix_message([data_set(256, recs, fields), data_set(256, recs[:3], fields)],
                                export_s=T0 // 1000 + 700, domain=1, seq=s)  # fmt: skip
            seq[(exporter, 10)] = s + len(recs) + min(3, len(recs)) + (5 if k == 9 else 0)  # one gap
        elif kind == 1:
            msg = v9_datagram([data_set(300, recs, v9_fields, export_ms=T0 + 700_000, uptime_ms=5_000_000)],
                              export_ms=T0 + 700_000, uptime_ms=5_000_000)  # fmt: skip
        else:
            msg = v5_datagram(recs, export_ms=T0 + 700_000)
        out.append((msg, exporter))
    return out


@pytest.mark.parametrize("seed", range(4))
def test_batch_equals_one_by_one_on_generated_datagrams(seed):
    grams = generated_datagrams(seed)
    one, many = _both(grams)
    rows = _assert_same(one, many)
    assert rows == sorted(reference_decode(grams))


@pytest.mark.parametrize("seed", range(4))
def test_batch_equals_one_by_one_and_the_reference_on_plain_streams(seed):
    grams = _plain_stream(seed)
    one, many = _both(grams)
    rows = _assert_same(one, many)
    assert rows == sorted(reference_decode(grams))
    assert len(rows) > 100


def test_batch_with_templates_known_before_the_file():
    """Templates from an earlier file (the ledger's cache): the first datagram is already fast."""
    grams = _plain_stream(1)
    head, tail = grams[:4], grams[4:]
    cache = FlowDecoder()
    for payload, exporter in head:
        cache.add(payload, exporter)
    one, many = _both(tail, cache.cache)
    _assert_same(one, many)
    assert len(many.take()["ts_ns"]) == 0


_PLAIN = _plain_stream(5, n=12)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.integers(0, len(_PLAIN) - 1), st.integers(0, 3000), st.binary(max_size=8),
                  st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 255)), max_size=4)),
        min_size=1, max_size=12,
    )
)  # fmt: skip
def test_fuzz_batch_equals_one_by_one(picks):
    """Datagrams cut, extended or with flipped bytes, after valid templates: the batch path gives the same
    rows, counts and template state as add() (the general path, held to the reference)."""
    grams = list(_PLAIN[:4])
    for which, cut, tail, flips in picks:
        b = bytearray(_PLAIN[which][0][:cut] + tail)
        for pos, val in flips:
            if pos < len(b):
                b[pos] = val
        grams.append((bytes(b), _PLAIN[which][1]))
    one, many = _both(grams)
    _assert_same(one, many)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 65535), st.integers(0, 65535), st.integers(0, 120))
def test_udp_payload_finder_equals_python(frame, sport, dport, at):
    from flowdiff._flowwalk import udp_payloads

    if at <= len(frame):  # a real UDP header somewhere, maybe
        body = frame[at:]
        frame = frame[:at] + struct.pack("!HHHH", sport, dport, 8 + len(body), 0) + body
    buf = np.frombuffer(b"\x00" * 5 + frame, dtype=np.uint8)
    off, ln = np.empty(1, dtype=np.int64), np.empty(1, dtype=np.int64)
    udp_payloads(buf, np.array([5]), np.array([len(frame)]), np.array([sport]), np.array([dport]), off, ln)
    want = _udp_payload(frame, sport, dport)
    got = None if off[0] < 0 else bytes(buf[off[0] : off[0] + ln[0]])
    assert got == want


def test_write_v4_writes_what_write_one_writes(tmp_path):
    a = SpoolWriter(tmp_path / "a", clock=lambda: 1e9)
    b = SpoolWriter(tmp_path / "b", clock=lambda: 1e9)
    buf = bytearray(HEAD_V4 + 70000)
    for i, size in enumerate([0, 1, 100, 1400, 65507]):
        payload = bytes((i * 7 + k) & 0xFF for k in range(size))
        a.write_one(10**18 + i, ("10.1.2.3", 2055 + i), ("127.0.0.1", 4739), payload)
        buf[HEAD_V4 : HEAD_V4 + size] = payload
        b.write_v4(10**18 + i, ("10.1.2.3", 2055 + i), ("127.0.0.1", 4739), buf, size)
    a.close()
    b.close()
    assert a.files[0].read_bytes() == b.files[0].read_bytes()
    assert a.records == b.records == 5 and a.bytes_written == b.bytes_written


# ---------------------------------------------------------------- SYN memory across drains


def _flows(rows: list[dict]) -> dict[str, np.ndarray]:
    from flowdiff.netflow import empty_records

    out = empty_records(len(rows))
    for i, r in enumerate(rows):
        out["ip_version"][i] = 4
        out["src_lo"][i], out["dst_lo"][i] = r["src"], r["dst"]
        out["proto"][i], out["sport"][i], out["dport"][i] = 6, r["sport"], r["dport"]
        out["tcp_flags"][i] = r.get("flags", 0x10)
        out["ts_ns"][i] = out["ts_end_ns"][i] = r["t"] * 10**9
        out["packets"][i], out["bytes"][i] = 1, 100
    return out


def _services(agg: Aggregator, parts: list) -> set[tuple]:
    import pyarrow as pa

    tables = [p["services"] for p in parts if p and p["services"].num_rows] + [agg.finish()["services"]]
    t = pa.concat_tables(tables).to_pydict()
    return set(zip(t["client"], t["server"], t["service_port"], strict=True))


@pytest.mark.parametrize("cap", [1 << 21, 3])
def test_a_syn_decides_the_roles_in_later_drains(cap):
    """A connection whose SYN record (client port 80 -> server port 5000, so the port rule alone would get
    it wrong) is drained long before its later records: they keep the roles the SYN decided, also when
    the memory is small and has to forget (the connection's SYN is the newest, so it is kept)."""
    a, b = 0x0A000001, 0x0A000002
    agg = Aggregator({"services": ("client", "server", "service_port")}, interval=60)
    agg.max_syns = cap
    agg._syns.cap = cap
    parts = []
    old = [
        {"t": 1, "src": 0x0B000000 + k, "dst": b, "sport": 1000 + k, "dport": 6000, "flags": 0x02}
        for k in range(8)
    ]
    agg.add_flows(_flows(old))
    agg.add_flows(_flows([{"t": 100, "src": a, "dst": b, "sport": 80, "dport": 5000, "flags": 0x02}]))
    parts.append(agg.drain(keep=1) if agg.closed_intervals() else {})
    for t in (200, 300, 400):  # later records of the same connection, both directions, no SYN
        agg.add_flows(_flows([{"t": t, "src": b, "dst": a, "sport": 5000, "dport": 80},
                              {"t": t, "src": a, "dst": b, "sport": 80, "dport": 5000}]))  # fmt: skip
        parts.append(agg.drain(keep=1))
    assert agg._syns.n <= cap
    got = _services(agg, parts)
    assert ("10.0.0.1", "10.0.0.2", 5000) in got
    assert ("10.0.0.2", "10.0.0.1", 80) not in got and ("10.0.0.1", "10.0.0.2", 80) not in got


def test_syn_memory_forgets_the_oldest_first():
    from flowdiff.aggregate import _SynMemory

    rows = np.zeros((10, 16), dtype=np.uint64)
    for k in range(10):
        rows[k, 2], rows[k, 4] = 0x0A000000 + k, 0x0B000000
        rows[k, 7] = np.uint64(6 | (1000 + k) << 8 | 80 << 24 | 4 << 56)
        rows[k, 14] = np.uint64(k) ^ np.uint64(1 << 63)  # SYN times 0..9
    mem = _SynMemory(8)
    mem.add(rows, np.arange(10))
    assert mem.n == 6  # over the cap: down to three quarters, the newest SYNs
    kept = sorted(int(np.minimum(mem.syn[i, 0], mem.syn[i, 1]) ^ (1 << 63)) for i in range(mem.n))
    assert kept == [4, 5, 6, 7, 8, 9]


def test_flow_spool_drained_in_parts_gives_the_tables_of_one_pass(tmp_path, monkeypatch):
    """Flow records over 40 minutes, read in small chunks and drained in many parts (every keep intervals
    and past the row bound), give exactly the tables of one pass; a connection whose SYN record came in
    the first minute keeps its roles (client port 80, server port 5000) in every later part."""
    import dataclasses
    import importlib

    import pandas as pd

    from flowdiff.collect import collect
    from flowdiff.config import parse_config
    from flowdiff.listen import SpoolRecord
    from flowdiff.store import Store

    fc = importlib.import_module("flowdiff.collect")  # the package exports a function of that name
    rng = random.Random(11)
    fields = [*V4_FIELDS, (152, 8), (153, 8)]
    w = SpoolWriter(tmp_path / "spool", rotate=10**9, clock=lambda: T0 / 1000)
    grams = [ipfix_message([template_set(10, 256, fields)], export_s=T0 // 1000, domain=1)]
    for minute in range(40):
        recs = [
            dataclasses.replace(
                r, start_ms=T0 + minute * 60_000 + r.start_ms % 60_000, end_ms=T0 + minute * 60_000 + 59_000
            )
            for r in random_recs(rng, 30)
        ]
        flags = 0x02 if minute == 0 else 0x10
        recs.append(
            Rec(
                "10.9.9.1",
                "10.9.9.2",
                6,
                80,
                5000,
                flags,
                5,
                500,
                T0 + minute * 60_000,
                T0 + minute * 60_000 + 10,
            )
        )
        recs.append(
            Rec(
                "10.9.9.2",
                "10.9.9.1",
                6,
                5000,
                80,
                flags | 0x10,
                5,
                500,
                T0 + minute * 60_000 + 5,
                T0 + minute * 60_000 + 10,
            )
        )
        grams.append(
            ipfix_message([data_set(256, recs, fields)], export_s=T0 // 1000 + minute * 60 + 61, domain=1)
        )
    w.write([SpoolRecord(T0 * 10**6, ("198.51.100.1", 2055), ("127.0.0.1", 4739), g) for g in grams])
    w.close()
    spool = w.files[-1]
    one = parse_config({"sensor": "s", "store": str(tmp_path / "one"), "interval": 60})
    many = parse_config({"sensor": "s", "store": str(tmp_path / "many"), "interval": 60})
    with monkeypatch.context() as m:  # the reference: no drain, one pass
        m.setattr(fc.Aggregator, "closed_intervals", lambda self, keep=1: False)
        assert collect([spool], one).flow_records == 40 * 32
    monkeypatch.setattr(fc, "_CHUNK_BYTES", 4096)
    monkeypatch.setattr(fc, "_FLOW_DRAIN_ROWS", 100)
    res = collect([spool], many)
    assert res.flow_records == 40 * 32 and res.files[0].status == "ok"
    assert res.files[0].again is False
    from test_collect import _sources

    assert len({x.rsplit("#", 1)[1] for x in _sources(tmp_path / "many")}) >= 4  # drained in parts
    for table in ("hosts", "pairs", "services", "link"):
        pd.testing.assert_frame_equal(
            Store(tmp_path / "many").read(table), Store(tmp_path / "one").read(table)
        )
    services = Store(tmp_path / "many").read("services", where={"proto": 6})
    long = services[services.server == "10.9.9.2"]
    assert len(long) == 40 and set(long.client) == {"10.9.9.1"} and set(long.service_port) == {5000}
