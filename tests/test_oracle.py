"""The decoder against tshark: 5-tuple count tables per 60 s interval must equal the oracle tables.

``../shared/pcaps/ORACLE.md`` defines the oracle (outermost IP header, ports only from the TCP/UDP header
right after it, no reassembly, bytes = original frame length). Here the table is built straight from
``decode`` output, so a mismatch is a decoder bug, not an aggregation bug. The captures the core test
needs live in ``tests/data`` (see PROVENANCE.md); the whole corpus is used when ``../shared`` exists.
"""

from __future__ import annotations

import csv
import socket
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from decode_ref import decode_reference  # tests/decode_ref.py

from flowdiff.capture import open_capture
from flowdiff.decode import decode
from flowdiff.errors import CaptureError
from flowdiff.schema import PACKET_FIELDS, DecodeStatus

DATA = Path(__file__).resolve().parent / "data"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "pcaps"
SUFFIX = ".oracle.i60.csv"
INTERVAL_NS = 60 * 10**9

# Captures where flowdiff deliberately disagrees with tshark 4.0.17 (name -> reason). An entry that
# starts to match fails its test, so the list cannot go stale.
# Currently empty: every capture of ../shared/pcaps/good (62 files) matches exactly, including
# 802.1ah PBB and VN-Tag, which a plain header parser would miss.
EXPECTED_DIFFERENCES: dict[str, str] = {}

Key = tuple[str, str, str, int, int, int]


def _addr(version: int, hi: int, lo: int) -> str:
    if version == 4:
        return socket.inet_ntop(socket.AF_INET, int(lo).to_bytes(4, "big"))
    return socket.inet_ntop(socket.AF_INET6, int(hi).to_bytes(8, "big") + int(lo).to_bytes(8, "big"))


def _interval(ts_ns: int) -> str:
    start = ts_ns // INTERVAL_NS * 60  # exact integer floor, like the oracle's decimal arithmetic
    return datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def flowdiff_table(capture: Path) -> dict[Key, tuple[int, int]]:
    """(interval, src, dst, proto, sport, dport) -> (packets, bytes) over the IP frames of a capture."""
    packets: Counter[Key] = Counter()
    octets: Counter[Key] = Counter()
    for batch in open_capture(str(capture)).batches():
        d = decode(batch)
        for i in np.flatnonzero(d["status"] == DecodeStatus.OK):
            v = int(d["ip_version"][i])
            key = (
                _interval(int(d["ts_ns"][i])),
                _addr(v, d["src_hi"][i], d["src_lo"][i]),
                _addr(v, d["dst_hi"][i], d["dst_lo"][i]),
                int(d["proto"][i]),
                int(d["sport"][i]),
                int(d["dport"][i]),
            )
            packets[key] += 1
            octets[key] += int(d["wirelen"][i])
    return {k: (packets[k], octets[k]) for k in packets}


def oracle_table(path: Path) -> dict[Key, tuple[int, int]]:
    with path.open(newline="") as fh:
        return {
            (r["interval_start"], r["src"], r["dst"], int(r["proto"]), int(r["sport"]), int(r["dport"])): (
                int(r["packets"]),
                int(r["bytes"]),
            )
            for r in csv.DictReader(fh)
        }


def _capture_for(oracle: Path) -> Path:
    plain = oracle.with_name(oracle.name[: -len(SUFFIX)])
    return plain if plain.exists() else plain.with_name(plain.name + ".gz")


def _diff(mine: dict, theirs: dict) -> list[str]:
    return [
        f"{k}: flowdiff {mine.get(k)} tshark {theirs.get(k)}"
        for k in sorted(set(mine) | set(theirs))
        if mine.get(k) != theirs.get(k)
    ]


def _check(oracle: Path) -> None:
    capture = _capture_for(oracle)
    diff = _diff(flowdiff_table(capture), oracle_table(oracle))
    name = oracle.name[: -len(SUFFIX)]
    if name in EXPECTED_DIFFERENCES:
        assert diff, f"{name} now matches tshark: drop it from EXPECTED_DIFFERENCES"
    else:
        assert not diff, "\n".join(diff[:20])


CORE = sorted(DATA.glob("*" + SUFFIX))


def test_core_set_covers_the_link_types():
    """The shipped captures exercise every link type of the corpus except DSA (no oracle: tshark cannot
    read it; tests/test_decode.py checks it by hand)."""
    seen = set()
    for oracle in CORE:
        for batch in open_capture(str(_capture_for(oracle))).batches():
            seen.update(np.unique(batch.linktype).tolist())
    assert {0, 1, 9, 10, 101, 113, 127, 192, 105, 228, 229, 239, 242, 276} <= seen


@pytest.mark.parametrize("oracle", CORE, ids=[p.name[: -len(SUFFIX)] for p in CORE])
def test_core_captures_match_oracle(oracle: Path):
    _check(oracle)


def _corpus(kind: str, pattern: str) -> list:
    if not (SHARED / kind).is_dir():
        return [pytest.param(None, marks=pytest.mark.skip(reason="../shared/pcaps is not present"))]
    paths = sorted(p for p in (SHARED / kind).glob(pattern) if pattern.endswith(".csv") or p.suffix != ".csv")
    return [pytest.param(p, id=p.name) for p in paths]


@pytest.mark.parametrize("oracle", _corpus("good", "*" + SUFFIX))
def test_corpus_matches_oracle(oracle: Path):
    _check(oracle)


@pytest.mark.parametrize("capture", _corpus("bad", "*"))
def test_damaged_corpus_decodes_like_the_reference(capture: Path):
    """Malformed frames (bad IHL, truncated headers, bogus TLVs, DSA tags): no crash, valid statuses,
    and the compiled decoder agrees with the per-frame dpkt reference on every field."""
    try:
        batches = list(open_capture(str(capture)).batches())
    except CaptureError as exc:  # an unreadable file is the capture module's business, not decode's
        pytest.skip(f"not readable as a capture: {exc}")
    for batch in batches:
        fast, ref = decode(batch), decode_reference(batch)
        assert set(np.unique(fast["status"])) <= set(DecodeStatus.NAMES)
        for name in PACKET_FIELDS:
            np.testing.assert_array_equal(fast[name], ref[name], err_msg=name)
