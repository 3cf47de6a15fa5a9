#!/usr/bin/env python3
"""Benchmark flowdiff's syslog templates against drain3 on Loghub's labelled Linux sample (issue 13).

    pip install -e '.[bench]'                  # drain3
    python benchmarks/bench_logs.py            # reads ../shared/logs/Linux_2k.log* in place
    python benchmarks/bench_logs.py --logs DIR --speed-lines 1000000

Three figures, flowdiff and drain3 (default settings: TemplateMiner() without a config file) side by side:

1. grouping accuracy (Loghub's definition): the share of lines whose predicted group holds exactly the
   lines of its ground-truth group. flowdiff is measured twice: grouping by the template alone (what drain3
   and the ground truth group by) and by the messages table's key (host, program, template);
2. learn the first half, diff the second: the new rows flowdiff reports (real collect, learn with
   min_intervals = min_packets = 1, diff on a temporary store) against the ground-truth templates that
   first appear in the second half, and how many of those are missed (no line of theirs in a new row);
   for drain3, the clusters it creates in the second half;
3. parse speed: lines per second of `collect` (whole library call, store writes included) on a file of
   --speed-lines lines made from the sample with every number varied, spread over one day (288 intervals
   of 5 minutes), and of parse + mask alone.

The sample stays where it is (its licence asks for a reference to Loghub with every copy).
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


from flowdiff.config import parse_config  # noqa: E402
from flowdiff.logtemplate import mask  # noqa: E402
from flowdiff.syslog import parse_bytes  # noqa: E402

REF_US = 1_135_987_200_000_000  # 2005-12-31: the sample is from 2005 (RFC 3164 lines carry no year)


def accuracy(pred: list, truth: list[str]) -> float:
    """Loghub's grouping accuracy: a line counts when its predicted group equals its true group."""
    groups: dict = {}
    for i, p in enumerate(pred):
        groups.setdefault(p, []).append(i)
    size_true: dict[str, int] = {}
    for t in truth:
        size_true[t] = size_true.get(t, 0) + 1
    ok = 0
    for members in groups.values():
        kinds = {truth[i] for i in members}
        if len(kinds) == 1 and size_true[truth[members[0]]] == len(members):
            ok += len(members)
    return ok / len(truth)


def load(logs: Path) -> tuple[bytes, list[str]]:
    data = (logs / "Linux_2k.log").read_bytes()
    with open(logs / "Linux_2k.log_structured.csv", newline="", encoding="utf-8") as f:
        truth = [row["EventId"] for row in csv.DictReader(f)]
    return data, truth


def flowdiff_groups(data: bytes) -> tuple[list, list, list[str]]:
    lines = parse_bytes(data, ref_us=REF_US)
    templates = mask(lines.message).to_pylist()
    hosts, progs = lines.host.to_pylist(), lines.program.to_pylist()
    return templates, list(zip(hosts, progs, templates, strict=True)), lines.message.to_pylist()


def drain_groups(messages: list[str]) -> tuple[list[int], object]:
    from drain3 import TemplateMiner

    miner = TemplateMiner()
    return [miner.add_log_message(m)["cluster_id"] for m in messages], miner


def half_split(data: bytes, truth: list[str], keys: list) -> dict:
    """Collect, learn the first half, diff the second, with the real library calls."""
    from flowdiff.baseline import learn
    from flowdiff.collect import collect
    from flowdiff.diff import diff

    raw = data.splitlines(keepends=True)
    half = len(raw) // 2
    with tempfile.TemporaryDirectory(prefix="bench-logs-") as tmp:
        t = Path(tmp)
        (t / "first.log").write_bytes(b"".join(raw[:half]))
        (t / "second.log").write_bytes(b"".join(raw[half:]))
        for p in ("first.log", "second.log"):
            os.utime(t / p, ns=(REF_US * 1000, REF_US * 1000))
        config = parse_config(
            {
                "interval": 3600,
                "sensor": "bench",
                "logs": {},
                "tables": {"messages": {"keys": ["host", "program", "template"]}},
            },
            base=t,
        )
        collect([t / "first.log"], config)
        learn(config, min_intervals=1, min_packets=1)
        collect([t / "second.log"], config)
        result = diff(config)
        rows = result.rows["messages"]
    new_keys = set(zip(rows["host"], rows["program"], rows["template"], strict=True))
    seen_first = set(truth[:half])
    truly_new = {e for e in truth[half:] if e not in seen_first}
    missed = [
        e for e in truly_new if not any(keys[i] in new_keys for i in range(half, len(truth)) if truth[i] == e)
    ]
    return {"new_rows": len(rows), "truly_new": len(truly_new), "missed": sorted(missed), "half": half}


def drain_half(messages: list[str], half: int) -> int:
    from drain3 import TemplateMiner

    miner = TemplateMiner()
    for m in messages[:half]:
        miner.add_log_message(m)
    before = {c.cluster_id for c in miner.drain.clusters}
    new = set()
    for m in messages[half:]:
        r = miner.add_log_message(m)
        if r["cluster_id"] not in before:
            new.add(r["cluster_id"])
    return len(new)


def speed(data: bytes, n_lines: int) -> dict:
    """Lines/s of collect on a file of ``n_lines`` lines: the sample with its numbers varied."""
    from flowdiff.collect import collect

    rnd = random.Random(13)
    src = data.splitlines()
    num = re.compile(rb"\d+")
    out = []
    while len(out) < n_lines:  # one day of a busy server: the lines spread evenly over 24 hours
        for line in src:
            secs = len(out) * 86400 // n_lines
            head = b"Jul 27 %02d:%02d:%02d" % (secs // 3600, secs // 60 % 60, secs % 60)
            body = num.sub(lambda m: str(rnd.randrange(10 ** len(m.group()))).encode(), line[15:])
            out.append(head + body)
            if len(out) >= n_lines:
                break
    big = b"\n".join(out) + b"\n"
    res = {"lines": len(out), "mb": len(big) / 1e6}
    t0 = time.perf_counter()
    lines = parse_bytes(big, ref_us=REF_US)
    mask(lines.message)
    res["parse_mask_lps"] = len(out) / (time.perf_counter() - t0)
    with tempfile.TemporaryDirectory(prefix="bench-logs-") as tmp:
        t = Path(tmp)
        (t / "big.log").write_bytes(big)
        os.utime(t / "big.log", ns=(REF_US * 1000, REF_US * 1000))
        config = parse_config({"interval": 300, "sensor": "bench", "logs": {}}, base=t)
        t0 = time.perf_counter()
        r = collect([t / "big.log"], config)
        res["collect_s"] = time.perf_counter() - t0
        res["collect_lps"] = len(out) / res["collect_s"]
        res["rows"] = r.rows_written
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    near = [
        d / "shared" / "logs" for d in (ROOT.parent, ROOT.parent.parent)
    ]  # a clone, or a worktree under wt/
    default = next((d for d in near if (d / "Linux_2k.log").exists()), near[0])
    ap.add_argument(
        "--logs", type=Path, default=default, help="folder of Linux_2k.log* (default ../shared/logs)"
    )
    ap.add_argument("--speed-lines", type=int, default=500_000, help="lines of the speed test file")
    args = ap.parse_args()
    if not (args.logs / "Linux_2k.log").exists():
        print(f"no Linux_2k.log in {args.logs} (give --logs DIR)", file=sys.stderr)
        return 2
    data, truth = load(args.logs)
    mask(parse_bytes(data[:4096], ref_us=REF_US).message)  # compiled code loaded (or compiled) first
    t0 = time.perf_counter()
    templates, keys, messages = flowdiff_groups(data)
    t_fd = time.perf_counter() - t0
    t0 = time.perf_counter()
    drain_ids, miner = drain_groups(messages)
    t_dr = time.perf_counter() - t0
    print(f"Loghub Linux_2k: {len(truth):,} lines, {len(set(truth))} ground-truth templates")
    print("1. grouping accuracy (share of lines grouped exactly as the ground truth)")
    print(
        f"   flowdiff, by template               {accuracy(templates, truth):.4f}  ({len(set(templates))} groups, {t_fd:.2f} s)"
    )
    print(f"   flowdiff, by host, program, template {accuracy(keys, truth):.4f}  ({len(set(keys))} groups)")
    print(
        f"   drain3 0.9.11 defaults              {accuracy(drain_ids, truth):.4f}  ({len(set(drain_ids))} groups, {t_dr:.2f} s)"
    )
    hs = half_split(data, truth, keys)
    print(f"2. learn lines 1-{hs['half']}, diff lines {hs['half'] + 1}-{len(truth)}")
    print(f"   ground-truth templates new in the second half  {hs['truly_new']}")
    ratio = hs["new_rows"] / hs["truly_new"] if hs["truly_new"] else float("inf")
    print(
        f"   flowdiff new rows                             {hs['new_rows']}  ({ratio:.2f}x), missed {len(hs['missed'])} {hs['missed'] or ''}"
    )
    dn = drain_half(messages, hs["half"])
    print(f"   drain3 new clusters                           {dn}  ({dn / hs['truly_new']:.2f}x)")
    sp = speed(data, args.speed_lines)
    print(f"3. speed on {sp['lines']:,} lines ({sp['mb']:.0f} MB, numbers varied)")
    print(f"   parse + mask                                  {sp['parse_mask_lps']:,.0f} lines/s")
    print(
        f"   collect (store writes included)               {sp['collect_lps']:,.0f} lines/s ({sp['collect_s']:.2f} s, {sp['rows']:,} rows)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
