"""Syslog parsing (flowdiff.syslog) and masking (flowdiff.logtemplate): formats, bad lines, templates."""

from __future__ import annotations

import csv
import gzip
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowdiff.logtemplate import mask, mask_one
from flowdiff.syslog import NIL, looks_like_syslog, parse_bytes, parse_lines, read_head

ROOT = Path(__file__).resolve().parents[1]
SHARED_LOGS = next(
    (b / "shared" / "logs" for b in (ROOT.parent, ROOT.parent.parent) if (b / "shared" / "logs").is_dir()),
    ROOT.parent / "shared" / "logs",
)


def us(text: str) -> int:
    return int(datetime.fromisoformat(text).astimezone(UTC).timestamp() * 1_000_000)


REF = us("2026-12-02T12:00:00+00:00")


def test_rfc3164_file_line():
    lines = parse_lines(
        ["Dec  2 01:02:03 mail1 postfix/smtpd[4321]: connect from unknown[10.1.2.3]"], ref_us=REF
    )
    assert lines.parsed.tolist() == [True]
    assert lines.host.to_pylist() == ["mail1"]
    assert lines.program.to_pylist() == ["postfix/smtpd"]  # the pid is not part of the key
    assert lines.message.to_pylist() == ["connect from unknown[10.1.2.3]"]
    assert lines.ts_us.tolist() == [us("2026-12-02T01:02:03+00:00")]
    assert lines.facility.to_pylist() == [NIL] and lines.severity.to_pylist() == [NIL]


def test_rfc3164_network_form_with_pri_and_timezone():
    lines = parse_lines(
        ["<38>Dec  2 10:00:00 fw sshd: Accepted publickey for bob"], ref_us=REF, tz_offset_s=3600
    )
    assert lines.facility.to_pylist() == ["auth"] and lines.severity.to_pylist() == ["info"]  # 38 = 4*8+6
    assert lines.ts_us.tolist() == [us("2026-12-02T09:00:00+00:00")]  # local time +01:00


def test_rfc3164_year_is_the_one_before_for_a_line_after_the_reference():
    # a file modified on 2 January holding lines of 31 December
    lines = parse_lines(["Dec 31 23:59:59 h cron[1]: job"], ref_us=us("2027-01-02T00:00:00+00:00"))
    assert lines.ts_us.tolist() == [us("2026-12-31T23:59:59+00:00")]


def test_rfc5424_line():
    line = '<165>1 2026-12-02T01:02:03.004567+02:00 web01 nginx 812 ID47 [exampleSDID@32473 iut="3" eventSource="App]x"] GET /index.html 200'
    lines = parse_lines([line, "<13>1 - - - - - - bare message"], ref_us=REF)
    assert lines.parsed.tolist() == [True, True]
    assert lines.host.to_pylist() == ["web01", "-"]
    assert lines.program.to_pylist() == ["nginx", NIL]
    assert lines.message.to_pylist() == ["GET /index.html 200", "bare message"]
    assert lines.facility.to_pylist() == ["local4", "user"] and lines.severity.to_pylist() == [
        "notice",
        "notice",
    ]
    assert lines.ts_us[0] == us("2026-12-02T01:02:03.004567+02:00")
    assert lines.ts_us[1] == lines.ts_us[0]  # no time: the previous line's


def test_rsyslog_high_precision_file_format():
    lines = parse_lines(["2026-12-02T01:02:03.123456-05:00 db2 kernel: [  12.5] eth0: link up"], ref_us=REF)
    assert lines.host.to_pylist() == ["db2"] and lines.program.to_pylist() == ["kernel"]
    assert lines.ts_us.tolist() == [us("2026-12-02T06:02:03.123456+00:00")]


def test_journalctl_short():
    text = [
        "-- Journal begins at Mon 2026-11-30 08:00:01 UTC, ends at Wed 2026-12-02 01:00:00 UTC. --",
        "Dec 02 00:59:58 box systemd[1]: Started Session 4 of user alice.",
        "Dec 02 00:59:59 box sudo[991]:    alice : TTY=pts/0 ; PWD=/home/alice ; USER=root ; COMMAND=/usr/bin/id",
    ]
    lines = parse_lines(text, ref_us=REF)
    assert lines.parsed.tolist() == [False, True, True]
    assert lines.program.to_pylist() == [NIL, "systemd", "sudo"]
    assert lines.host.to_pylist() == [NIL, "box", "box"]
    assert lines.ts_us[1] == us("2026-12-02T00:59:58+00:00")
    assert lines.ts_us[0] == REF  # before the first time stamp: the reference time


def test_bad_lines_are_kept_and_counted():
    data = b"garbage \xff\xfe not utf8\nDec  2 01:00:00 h p[1]: ok\n\njust words\r\nDec  2 01:00:05 h p: last"
    lines = parse_bytes(data, ref_us=REF)
    assert len(lines) == 5
    assert lines.parsed.tolist() == [False, True, False, False, True]
    assert lines.host.to_pylist() == [NIL, "h", NIL, NIL, "h"]
    assert lines.message.to_pylist()[3] == "just words"  # \r\n accepted
    assert lines.ts_us[3] == us("2026-12-02T01:00:00+00:00")  # the previous line's time
    assert lines.line.to_pylist()[0].startswith("garbage ")  # invalid UTF-8 replaced, never an error


@given(st.binary(max_size=400))
@settings(max_examples=300, deadline=None)
def test_any_bytes_parse_to_one_row_per_line(data):
    lines = parse_bytes(data, ref_us=REF)
    expected = data.count(b"\n") + (0 if not data or data.endswith(b"\n") else 1)
    assert len(lines) == expected
    assert len(lines.host) == len(lines.program) == len(lines.message) == expected
    assert len(mask(lines.message)) == expected
    for col in (lines.host, lines.program, lines.message, lines.line):
        col.validate(full=True)  # valid UTF-8 whatever the bytes


@given(
    st.sampled_from(
        [b"1 Dec 02 00:59:58 host - - - ", b"<13>1 2026-12-02T00:59:58Z h p 1 m ", b"<13>Dec  2 00:59:58 h "]
    ),
    st.binary(max_size=80),
)
@settings(max_examples=300, deadline=None)
def test_fields_cut_anywhere_are_still_valid_text(header, tail):
    lines = parse_bytes(header + tail + b"\n", ref_us=REF)
    for col in (lines.host, lines.program, lines.message):
        col.validate(full=True)
        col.to_pylist()


def test_a_malformed_structured_data_field_does_not_cut_a_character():
    lines = parse_bytes("1 Dec 02 00:59:58 host - - - \u00e9t\u00e9\n".encode(), ref_us=REF)
    assert lines.message.to_pylist() == ["\u00e9t\u00e9"]
    lines = parse_bytes(b"1 Dec 02 00:59:58 host - - - \xff\n", ref_us=REF)
    assert lines.message.to_pylist() == ["\ufffd"]  # invalid bytes replaced, as in the line itself


@given(st.lists(st.text(max_size=60), max_size=20))
@settings(max_examples=200, deadline=None)
def test_masking_is_a_pure_function_of_the_message(msgs):
    once = mask(pa.array(msgs, pa.string())).to_pylist()
    assert mask(pa.array(list(reversed(msgs)), pa.string())).to_pylist() == list(reversed(once))
    assert [mask_one(m) for m in msgs] == once


@pytest.mark.parametrize(
    ("message", "template"),
    [
        (
            "Failed password for root from 203.0.113.9 port 52144 ssh2",
            "Failed password for <USER> from <IP> port <NUM> <NUM>",
        ),
        (
            "Failed password for invalid user admin from 2001:db8::17 port 2 ssh2",
            "Failed password for invalid user <USER> from <IP> port <NUM> <NUM>",
        ),
        ("session opened for user alice by (uid=0)", "session opened for user <USER> by (uid=<*>)"),
        (
            "3F2A81C0D1: to=<bob@example.org>, relay=mx[198.51.100.4]:25, delay=0.31",
            "<NUM>: to=<EMAIL>, relay=<HOST>[<IP>]:<NUM>, delay=<*>",
        ),
        ("B1C2D3E4F5A6: removed", "<NUM>: removed"),
        ("eth0: link up, 1000Mbps, full-duplex, lpa 0x41E1", "<NUM>: link up, <NUM>, full-duplex, lpa <NUM>"),
        ("dhcp from 00:1b:21:3a:4f:c2 via eth1", "dhcp from <MAC> via <NUM>"),
        ("opened '/var/lib/app/state.db' and /etc/app/app.conf", "opened '<*>' and <PATH>"),
        ('user "mallory" not allowed', 'user "<*>" not allowed'),
        ("action=drop proto=tcp src=10.0.0.1 spt=443", "action=drop proto=tcp src=<*> spt=<*>"),
        ("timeout after 30s at Sat Jun 25 04:41:15 2005", "timeout after <NUM> at <DATE>"),
        (
            "connection from 24.54.76.216 (24-54-76-216.bflony.adelphia.net) at 12:00:01",
            "connection from <IP> (<HOST>) at <TIME>",
        ),
        ("login from host.example.com refused   ", "login from <HOST> refused"),
        ("see https://example.org/a?b=1 for details", "see <URL> for details"),
    ],
)
def test_masking_rules(message, template):
    assert mask_one(message) == template
    assert mask_one(template) == template  # placeholders are stable under masking


def test_same_kind_of_message_on_another_day_has_the_same_template():
    monday = mask_one("Accepted publickey for alice from 10.0.0.5 port 50122 ssh2: RSA SHA256:aK2x9")
    friday = mask_one("Accepted publickey for bob from 10.0.9.77 port 61001 ssh2: RSA SHA256:Zq81b")
    assert monday == friday


def test_looks_like_syslog(tmp_path):
    p = tmp_path / "syslog.2.gz"
    p.write_bytes(gzip.compress(b"Dec  2 01:02:03 h cron[1]: (root) CMD (true)\n" * 3))
    assert looks_like_syslog(read_head(str(p)))
    assert looks_like_syslog(b"<13>1 2026-12-02T01:00:00Z h app - - - hi\n")
    assert not looks_like_syslog(b"hello world\nthis is a note\n")
    assert not looks_like_syslog(b"\xd4\xc3\xb2\xa1\x02\x00\x04\x00")  # a pcap


def _loghub() -> tuple[bytes, list[str]]:
    if not (SHARED_LOGS / "Linux_2k.log").exists():
        pytest.skip("../shared/logs (Loghub Linux_2k) is not present on this machine")
    with open(SHARED_LOGS / "Linux_2k.log_structured.csv", newline="", encoding="utf-8") as f:
        truth = [r["EventId"] for r in csv.DictReader(f)]
    return (SHARED_LOGS / "Linux_2k.log").read_bytes(), truth


def test_loghub_linux_sample_groups_like_the_ground_truth():
    """Loghub's labelled sample: every line parses, and templates group the lines as the labels do
    (grouping accuracy, Loghub's definition; the benchmark compares it with drain3)."""
    data, truth = _loghub()
    lines = parse_bytes(data, ref_us=us("2005-12-31T00:00:00+00:00"))
    assert len(lines) == len(truth) and lines.parsed.all()
    templates = mask(lines.message).to_pylist()
    groups: dict[str, list[int]] = {}
    for i, t in enumerate(templates):
        groups.setdefault(t, []).append(i)
    sizes = {e: truth.count(e) for e in set(truth)}
    ok = sum(
        len(m) for m in groups.values() if len({truth[i] for i in m}) == 1 and sizes[truth[m[0]]] == len(m)
    )
    assert ok / len(truth) >= 0.95
