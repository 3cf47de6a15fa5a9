#!/usr/bin/env python3
"""Regenerate the tshark oracle tables of tests/data (``<capture>.oracle.i60.csv``), or check them.

    python tests/data/regen_oracle.py                 # rewrite every table that has its capture here
    python tests/data/regen_oracle.py --check         # rebuild in memory, compare byte for byte (exit 1)
    python tests/data/regen_oracle.py tests/data/zeek__pbb.pcap ...   # only these captures

The tables are the independent view that tests/test_oracle.py holds the decoder to: one row per 60 s
interval and 5-tuple of the frames whose outermost network header is IP, as tshark 4.0.17 dissects them
(the definition is in ../shared/pcaps/ORACLE.md; in short):

* the outermost IP header is the first ``ip``/``ipv6`` layer of ``frame.protocols`` for which tshark
  gives both addresses; IPv6 addresses are written as ``inet_ntop`` prints them;
* ``proto``: the IPv4 Protocol field; for IPv6 the Next Header chain walked over Hop-by-Hop (0),
  Routing (43), Fragment (44) and Destination Options (60) only (an extension header that was not
  captured ends the walk with its own number);
* ``sport``/``dport``: the first TCP/UDP ports when proto is 6/17, else 0; IP reassembly is off;
* ``packets``: frames, ``bytes``: sum of ``frame.len`` (the length on the wire);
* ``interval_start``: ``floor(t / 60) * 60`` of the exact decimal time stamp (0 when a frame has none).

Needs tshark (Debian: ``apt-get install tshark``); other versions than 4.0.17 may dissect differently,
so the script says which one it runs. Exit status: 0 done (or all tables equal with --check), 1 some
table differs (--check), 2 tshark missing or a capture unreadable. Standard library only.
"""

from __future__ import annotations

import argparse
import csv
import io
import ipaddress
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections import defaultdict
from datetime import UTC, datetime
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUFFIX = ".oracle.i60.csv"
INTERVAL = 60
TSHARK_VERSION = "4.0.17"  # the version the committed tables were made with
PREFS = ("ip.defragment:FALSE", "ipv6.defragment:FALSE", "tcp.desegment_tcp_streams:FALSE")
FIELDS = (
    "frame.time_epoch",
    "frame.len",
    "frame.protocols",
    "ip.src",
    "ip.dst",
    "ip.proto",
    "ipv6.src",
    "ipv6.dst",
    "ipv6.nxt",
    "ipv6.hopopts.nxt",
    "ipv6.routing.nxt",
    "ipv6.fraghdr.nxt",
    "ipv6.dstopts.nxt",
    "tcp.srcport",
    "tcp.dstport",
    "udp.srcport",
    "udp.dstport",
)
EXTENSION_FIELD = {
    0: "ipv6.hopopts.nxt",
    43: "ipv6.routing.nxt",
    44: "ipv6.fraghdr.nxt",
    60: "ipv6.dstopts.nxt",
}
HEADER = ["interval_start", "src", "dst", "proto", "sport", "dport", "packets", "bytes"]

Frame = dict[str, list[str]]  # field -> its occurrences in packet order, outermost first


class Unreadable(Exception):
    """tshark could not read the capture at all."""


def tshark_frames(capture: Path, tshark: str) -> list[Frame]:
    cmd = [tshark, "-n", "-r", str(capture)]
    for pref in PREFS:
        cmd += ["-o", pref]
    cmd += ["-T", "fields", "-E", "header=n", "-E", "separator=/t", "-E", "aggregator=,"]
    cmd += ["-E", "quote=n", "-E", "occurrence=a"]
    for name in FIELDS:
        cmd += ["-e", name]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    frames = []
    for line in proc.stdout.splitlines():
        values = line.split("\t")
        values += [""] * (len(FIELDS) - len(values))
        frames.append({name: (v.split(",") if v else []) for name, v in zip(FIELDS, values, strict=True)})
    if proc.returncode != 0:
        problem = " ".join(x for x in proc.stderr.splitlines() if "Running as user" not in x).strip()
        if not frames:
            raise Unreadable(f"tshark exit status {proc.returncode}: {problem}")
        print(
            f"regen_oracle: {capture.name}: tshark stopped early ({problem}); the table covers the "
            f"{len(frames)} frames it read",
            file=sys.stderr,
        )
    return frames


def number(text: str | None) -> int | None:
    if not text:
        return None
    try:
        return int(text, 16) if text.lower().startswith("0x") else int(text)
    except ValueError:
        return None


def address(text: str) -> str:
    try:
        a = ipaddress.ip_address(text)
    except ValueError:
        return text
    return socket.inet_ntop(socket.AF_INET6, a.packed) if a.version == 6 else str(a)


def ipv6_upper_protocol(frame: Frame) -> int | None:
    """The first Next Header that is not one of the four walked-over extension headers."""
    proto = number(frame["ipv6.nxt"][0]) if frame["ipv6.nxt"] else None
    taken = dict.fromkeys(EXTENSION_FIELD.values(), 0)
    for _ in range(sum(len(frame[f]) for f in EXTENSION_FIELD.values())):
        if proto not in EXTENSION_FIELD:
            break
        name = EXTENSION_FIELD[proto]
        if taken[name] >= len(frame[name]):
            break  # that extension header was not dissected (cut off): its number is the answer
        proto = number(frame[name][taken[name]])
        taken[name] += 1
    return proto


def five_tuple(frame: Frame) -> tuple[str, str, int, int, int] | None:
    """The key of one frame by its outermost IP header, or None when tshark found no IP in it."""
    layers = frame["frame.protocols"][0].split(":") if frame["frame.protocols"] else []
    for layer in layers:
        if layer == "ip" and frame["ip.src"] and frame["ip.dst"]:
            src, dst = frame["ip.src"][0], frame["ip.dst"][0]
            proto = number(frame["ip.proto"][0]) if frame["ip.proto"] else None
            break
        if layer == "ipv6" and frame["ipv6.src"] and frame["ipv6.dst"]:
            src, dst = frame["ipv6.src"][0], frame["ipv6.dst"][0]
            proto = ipv6_upper_protocol(frame)
            break
    else:
        return None
    proto = proto or 0
    sport = dport = 0
    if proto in (6, 17):
        kind = "tcp" if proto == 6 else "udp"
        s, d = frame[f"{kind}.srcport"], frame[f"{kind}.dstport"]
        if s and d:
            sport, dport = number(s[0]) or 0, number(d[0]) or 0
    return address(src), address(dst), proto, sport, dport


def interval_start(epoch: list[str]) -> int:
    try:
        seconds = int(Decimal(epoch[0]).to_integral_value(rounding=ROUND_FLOOR)) if epoch else 0
    except (InvalidOperation, ValueError):
        seconds = 0
    return seconds // INTERVAL * INTERVAL


def table_csv(frames: list[Frame]) -> str:
    totals: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
    for frame in frames:
        key = five_tuple(frame)
        if key is None:
            continue
        slot = totals[(interval_start(frame["frame.time_epoch"]), *key)]
        slot[0] += 1
        slot[1] += number(frame["frame.len"][0] if frame["frame.len"] else None) or 0
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HEADER)
    for key in sorted(totals):
        start = datetime.fromtimestamp(key[0], UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        writer.writerow([start, *key[1:], *totals[key]])
    return out.getvalue()


def capture_of(table: Path) -> Path:
    plain = table.with_name(table.name[: -len(SUFFIX)])
    return plain if plain.exists() else plain.with_name(plain.name + ".gz")


def table_of(capture: Path) -> Path:
    name = capture.name[:-3] if capture.name.endswith(".gz") else capture.name
    return capture.with_name(name + SUFFIX)


def write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    os.replace(tmp, path)


def tshark_version(tshark: str) -> str:
    first = subprocess.run([tshark, "--version"], capture_output=True, text=True).stdout.splitlines()
    words = first[0].split() if first else []
    return next((w for w in words if w[:1].isdigit()), "unknown")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("captures", nargs="*", type=Path, help="captures to redo (default: every table here)")
    ap.add_argument("--check", action="store_true", help="compare with the committed tables, write nothing")
    ap.add_argument("--tshark", default=os.environ.get("TSHARK", "tshark"), help="tshark to run")
    args = ap.parse_args(argv)
    tshark = shutil.which(args.tshark)
    if tshark is None:
        print(
            f"regen_oracle: tshark not found ({args.tshark}); install it (Debian: apt-get install "
            f"tshark, version {TSHARK_VERSION} made the committed tables)",
            file=sys.stderr,
        )
        return 2
    version = tshark_version(tshark)
    if version != TSHARK_VERSION:
        print(
            f"regen_oracle: warning: tshark {version}, the tables were made with {TSHARK_VERSION}; "
            "dissectors differ between releases",
            file=sys.stderr,
        )
    tables = [table_of(c) for c in args.captures] or sorted(HERE.glob("*" + SUFFIX))
    changed = 0
    for table in tables:
        capture = capture_of(table)
        try:
            text = table_csv(tshark_frames(capture, tshark))
        except (Unreadable, OSError) as e:
            print(f"regen_oracle: {capture}: {e}", file=sys.stderr)
            return 2
        old = table.read_text(encoding="utf-8") if table.exists() else None
        if text == old:
            continue
        changed += 1
        if args.check:
            print(f"differs: {table.name}")
        else:
            write_atomically(table, text)
            print(f"wrote {table.name}")
    what = "differ from what tshark gives now" if args.check else "rewritten"
    print(f"{len(tables)} tables, {changed} {what} (tshark {version})")
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
