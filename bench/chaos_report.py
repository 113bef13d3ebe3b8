#!/usr/bin/env python3
"""The chaos table: requests, failed requests and the worst latency per row.

    chaos_report.py LOAD ROWS

LOAD: chaos_load.py's lines. ROWS: one line per row, `START END NAME...`
(unix seconds; a request belongs to the row its start falls in). Prints a
markdown table; failures are listed by what the client saw.
"""

import collections
import sys


def main():
    load_path, rows_path = sys.argv[1], sys.argv[2]
    reqs = []
    for line in open(load_path):
        f = line.split()
        if len(f) < 8:
            continue
        reqs.append((float(f[0]), float(f[1]), f[2] == "1", f[3], int(f[7])))
    print("| row | requests | failed | worst latency ms | p99 ms | failures seen | stale keep-alive retries |")
    print("|---|--:|--:|--:|--:|---|--:|")
    for line in open(rows_path):
        start, end, name = line.split(maxsplit=2)
        start, end = float(start), float(end)
        rows = [r for r in reqs if start <= r[0] < end]
        failed = [r for r in rows if not r[2]]
        lat = sorted(r[1] for r in rows)
        worst = f"{lat[-1]:,.0f}" if lat else "-"
        p99 = f"{lat[min(len(lat) - 1, int(len(lat) * 0.99))]:,.0f}" if lat else "-"
        kinds = collections.Counter(r[3] for r in failed)
        seen = ", ".join(f"{n}x {k}" for k, n in kinds.most_common()) or "-"
        retries = sum(r[4] for r in rows)
        print(f"| {name.strip()} | {len(rows):,} | {len(failed):,} | {worst} | {p99} | {seen} | {retries} |")


if __name__ == "__main__":
    main()
