"""Stage 2 of the aggregator (fine rows -> count tables): the shortcuts it takes give the rows and the
row order of the plain computation (grouping paths, string gather, stations rules, one-side ranks)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from test_writepath import _random_packets

import flowdiff.aggregate as fa
from flowdiff.schema import STATIONS, STATIONS_KEYS, DecodeStatus

_SIGN = np.uint64(1 << 63)


def _reference_groups(inum, code, sel, metrics):
    """Groups of equal (interval, code) in that order, by pandas-free numpy: (interval, code, packets,
    bytes, first, last) of each."""
    order = np.lexsort((code, inum))
    i, c = inum[order], code[order]
    starts = np.flatnonzero(np.r_[True, (i[1:] != i[:-1]) | (c[1:] != c[:-1])])
    rows = order if sel is None else sel[order]
    m = metrics[rows]
    p = np.add.reduceat(m[:, 0], starts)
    b = np.add.reduceat(m[:, 1], starts)
    f = (np.minimum.reduceat(m[:, 2], starts) ^ _SIGN).view(np.int64)
    la = (np.maximum.reduceat(m[:, 3], starts) ^ _SIGN).view(np.int64)
    return i[starts], c[starts], p, b, f, la


@pytest.mark.parametrize("card", [1 << 10, 1 << 50, 1 << 62])  # packed words, argsort, sort per interval
@pytest.mark.parametrize("with_sel", [False, True])
def test_sorted_groups_give_the_groups_in_interval_and_key_order_on_every_path(card, with_sel):
    rng = np.random.default_rng(card % 97 + with_sel)
    n_fine = 5000
    metrics = np.empty((n_fine, 4), dtype=np.uint64)
    metrics[:, 0] = rng.integers(1, 100, n_fine)
    metrics[:, 1] = rng.integers(60, 10**6, n_fine)
    first = rng.integers(-(10**15), 10**15, n_fine)
    metrics[:, 2] = first.view(np.uint64) ^ _SIGN
    metrics[:, 3] = (first + rng.integers(0, 10**9, n_fine)).view(np.uint64) ^ _SIGN
    sel = np.sort(rng.choice(n_fine, 3000, replace=False)) if with_sel else None
    m = n_fine if sel is None else len(sel)
    inum = np.sort(rng.integers(1000, 1004, m)).astype(np.int64)
    code = rng.integers(0, 700, m).astype(np.uint64)  # repeats: groups of several rows
    firsts, p, b, f, la = fa._sorted_groups(inum, code, card, sel, metrics)
    want = _reference_groups(inum, code, sel, metrics)
    where = np.arange(n_fine) if sel is None else np.full(n_fine, -1)
    if sel is not None:
        where[sel] = np.arange(m)
    pos = where[firsts]  # any row of a group stands for it: its interval and code must be the group's
    assert (pos >= 0).all()
    assert np.array_equal(inum[pos], want[0]) and np.array_equal(code[pos], want[1])
    for got, exp in zip((p, b, f, la), want[2:], strict=True):
        assert np.array_equal(got, exp)


def _string_array(values: list[str]) -> pa.Array:
    return pa.array(values, type=pa.string())


@pytest.mark.parametrize("compiled", [True, False])
def test_string_gather_copies_strings_of_any_length_up_to_the_end_of_the_data(compiled):
    rng = np.random.default_rng(7)
    words = ["", "a", "0.0.0.0", "255.255.255.255", "02:00:00:00:00:0a", "x" * 16, "y" * 17, "z" * 33]
    words += ["".join(rng.choice(list("0123456789abcdef:."), rng.integers(0, 48))) for _ in range(200)]
    words += ["2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", "q" * 15]  # long ones last: the end of the data
    text = _string_array(words)
    idx = np.concatenate([rng.integers(0, len(words), 3000), [len(words) - 1, len(words) - 2, 0]])
    if compiled:
        got = fa._take(text, idx)
    else:
        bufs = text.buffers()
        offsets = np.frombuffer(bufs[1], dtype=np.int32, count=len(text) + 1).astype(np.int64)
        data = np.frombuffer(bufs[2], dtype=np.uint8)
        off, out = fa._take_strings.py_func(offsets, data, idx.astype(np.int64))
        got = pa.StringArray.from_buffers(len(idx), pa.py_buffer(off.astype(np.int32)), pa.py_buffer(out))
    assert got.to_pylist() == [words[i] for i in idx]


def _station_reference(k6, k7, hi, lo, own):
    """The stations rules as numpy masks (the form stage 2 had before they became one kernel pass)."""
    status, ver = (k6 >> np.uint64(60)) & np.uint64(7), (k6 >> np.uint64(56)) & np.uint64(15)
    proto, icmp = k6 & np.uint64(0xFF), (k6 >> np.uint64(40)) & np.uint64(0xFF)
    ethertype = (k7 >> np.uint64(16)) & np.uint64(0xFFFF)
    ok = status == DecodeStatus.OK
    arp = (status == DecodeStatus.NOT_IP) & (ethertype == 0x0806) & (lo != 0)
    nd = ok & (ver == 6) & (proto == 58) & (icmp >= 133) & (icmp <= 137)
    unspecified = (hi == 0) & (lo == 0)
    link_local = ((ver == 6) & ((hi >> np.uint64(54)) == 0x3FA)) | (
        (ver == 4) & ((lo >> np.uint64(16)) == 0xA9FE)
    )
    real = (ok & own) | nd | link_local
    sel = np.flatnonzero(arp | (ok & ~unspecified))
    w0 = np.where(arp, np.uint64(4), np.where(real, ver, np.uint64(0)))
    w1 = np.where(real, hi, np.uint64(0))
    w2 = np.where(arp | real, lo, np.uint64(0))
    return sel, w0[sel], w1[sel], w2[sel]


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("with_own", [True, False])
def test_station_rows_follow_the_arp_nd_link_local_and_own_network_rules(compiled, with_own):
    rng = np.random.default_rng(3 + with_own)
    n = 4000
    status = rng.choice([0, 0, 0, 1, 4], n).astype(np.uint64)
    ver = np.where(status == 0, rng.choice([4, 6], n), rng.choice([0, 4, 6], n)).astype(np.uint64)
    proto = rng.choice([6, 17, 58, 1], n).astype(np.uint64)
    icmp = rng.choice([0, 128, 133, 135, 136, 137, 138], n).astype(np.uint64)
    k6 = proto | (icmp << np.uint64(40)) | (ver << np.uint64(56)) | (status << np.uint64(60))
    k7 = rng.choice([0x0800, 0x0806, 0x86DD], n).astype(np.uint64) << np.uint64(16)
    hi = np.where(ver == 6, rng.choice([0, 0xFE80 << 48, 0xFEBF << 48, 0x20010DB8 << 32], n), 0).astype(
        np.uint64
    )
    lo = rng.choice([0, 1, 0xA9FE0001, 0x0A140001, 0xC0000201], n).astype(np.uint64)
    own = rng.random(n) < 0.3
    inum = rng.integers(0, 50, n).astype(np.uint64)
    mac = rng.integers(0, 1 << 48, n, dtype=np.uint64)
    kernel = fa._station_rows if compiled else fa._station_rows.py_func
    sel, keys = kernel(k6, k7, hi, lo, own if with_own else fa._NO_OWN, inum, mac)
    want = _station_reference(k6, k7, hi, lo, own if with_own else np.zeros(n, dtype=bool))
    assert len(want[0]) > 0
    assert np.array_equal(sel, want[0])
    assert np.array_equal(keys, np.stack([inum[sel], mac[sel], *want[1:]], axis=1))


def _with_link_frames(packets: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Some frames made ARP (not IP), IPv6 neighbour discovery and link-local, for the stations table."""
    p = {k: v.copy() for k, v in packets.items()}
    n = len(p["ts_ns"])
    arp = np.arange(n) % 17 == 0
    p["status"][arp] = DecodeStatus.NOT_IP
    p["ethertype"][arp] = 0x0806
    p["ip_version"][arp] = 0
    nd = (np.arange(n) % 23 == 0) & (p["ip_version"] == 6)
    p["proto"][nd], p["icmp_type"][nd] = 58, 135
    ll = (np.arange(n) % 29 == 0) & (p["ip_version"] == 6)
    p["src_hi"][ll] = np.uint64(0xFE80 << 48)
    return p


@pytest.mark.parametrize("networks", [None, {"10.0.0.0/9": "own", "0.0.0.0/0": "internet"}])
def test_a_table_alone_has_the_rows_it_has_beside_tables_that_rank_both_sides(networks):
    """Values of one side are ranked alone when no table needs the other side (hosts without pairs,
    stations without link), and the stations keys over its own rows only: the same rows either way."""
    packets = _with_link_frames(_random_packets(20_000, 5))
    alone = {"hosts": ("src",), STATIONS: STATIONS_KEYS, "dsts": ("dst", "proto")}
    both = {
        **alone,
        "pairs": ("src", "dst", "proto"),
        "link": ("ethertype", "src_mac", "dst_mac"),
        "services": ("client", "server", "proto", "service_port"),
    }
    a = fa.aggregate(packets, alone, interval=300, networks=networks)
    b = fa.aggregate(packets, both, interval=300, networks=networks)
    for name in alone:
        assert a[name].num_rows > 0
        assert a[name].equals(b[name]), name
    internet = [s for s in a[STATIONS].column("src").to_pylist() if s == "internet"]
    assert internet and len(set(a[STATIONS].column("src").to_pylist())) > 2


@pytest.mark.parametrize("compiled", [True, False])
def test_hash_reduce_gives_each_distinct_key_once_with_its_metrics_in_order_of_first_appearance(
    compiled, monkeypatch
):
    if not compiled:  # the helpers too (a dispatcher would return the hash as a Python int)
        for helper in ("_mix", "_finalize", "_acc_first", "_acc_add"):
            monkeypatch.setattr(fa, helper, getattr(fa, helper).py_func)
    rng = np.random.default_rng(11)
    n, n_fine = 6000, 9000
    words = rng.integers(0, 4, (n, 5)).astype(np.uint64)  # few distinct keys: most elements repeat one
    words[:, 4] = words[:, 4] << np.uint64(63)  # high bits count too
    rows = np.sort(rng.choice(n_fine, n, replace=False)).astype(np.int64)
    metrics = rng.integers(0, 1 << 40, (n_fine, 4)).astype(np.uint64)
    kernel = fa._hash_reduce if compiled else fa._hash_reduce.py_func
    with np.errstate(over="ignore"):  # interpreted hashing wraps around, as compiled
        keys, acc = kernel(words, rows, metrics)
    seen = list(dict.fromkeys(tuple(int(w) for w in words[t]) for t in range(n)))
    assert [tuple(k) for k in keys.tolist()] == seen  # first appearance order, each key once
    for g, key in enumerate(seen):
        members = rows[np.all(words == np.array(key, dtype=np.uint64)[None, :], axis=1)]
        m = metrics[members]
        want = [m[:, 0].sum(), m[:, 1].sum(), m[:, 2].min(), m[:, 3].max()]
        assert acc[g].tolist() == [int(x) for x in want]


@pytest.mark.parametrize("networks", [None, {"10.0.0.0/9": "own", "0.0.0.0/0": "internet"}])
def test_stations_rows_are_the_frames_grouped_by_interval_mac_and_station_address(networks):
    """The stations table against a plain per-frame computation: the stations rules, the address text
    made by ``ipaddress``, groups summed in a dict, sorted by interval, MAC text and address text."""
    import ipaddress

    p = _with_link_frames(_random_packets(20_000, 9))
    got = fa.aggregate(p, {STATIONS: STATIONS_KEYS}, interval=300, networks=networks)[STATIONS]
    u = np.uint64
    status, ver = p["status"].astype(u), p["ip_version"].astype(u)
    k6 = p["proto"].astype(u) | (p["icmp_type"].astype(u) << u(40)) | (ver << u(56)) | (status << u(60))
    k7 = p["ethertype"].astype(u) << u(16)
    own_net = ipaddress.ip_network("10.0.0.0/9")
    own = np.array(
        [
            networks is not None and v == 4 and ipaddress.ip_address(int(lo)) in own_net
            for v, lo in zip(p["ip_version"].tolist(), p["src_lo"].tolist(), strict=True)
        ]
    )
    sel, w0, w1, w2 = _station_reference(k6, k7, p["src_hi"].astype(u), p["src_lo"].astype(u), own)
    groups: dict[tuple[int, str, str], list[int]] = {}
    for i, v, hi, lo in zip(sel.tolist(), w0.tolist(), w1.tolist(), w2.tolist(), strict=True):
        text = "internet" if v == 0 else str(ipaddress.ip_address(lo if v == 4 else hi << 64 | lo))
        mac = ":".join(f"{int(p['src_mac'][i]):012x}"[k : k + 2] for k in range(0, 12, 2))
        ts = int(p["ts_ns"][i])
        key = (ts // 300_000_000_000 * 300_000_000, mac, text)
        g = groups.setdefault(key, [0, 0, ts, ts])
        g[0] += 1
        g[1] += int(p["wirelen"][i])
        g[2], g[3] = min(g[2], ts), max(g[3], ts)
    want = [(*k, pk, b, f // 1000, la // 1000) for k, (pk, b, f, la) in sorted(groups.items())]
    cols = [
        got.column(c).cast(pa.int64()) if i in (0, 5, 6) else got.column(c)
        for i, c in enumerate(got.column_names)
    ]
    assert len(want) > 100 and got.num_rows == len(want)
    assert list(zip(*(c.to_pylist() for c in cols), strict=True)) == want
    texts = {t for _, _, t, *_ in want}
    assert "internet" in texts and any(":" in t for t in texts) and any("." in t for t in texts)
