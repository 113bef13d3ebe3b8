#!/usr/bin/env python3
"""Turns the raw TSV files of bench/run.sh into the markdown results page.

Ratios: "x direct" divides by the `direct` row of the same load; "x HAProxy"
by HAProxy with the same thread count (haproxy-1 for *-1, haproxy-2 for *-2)
at the same load. For latency and memory a ratio below 1 is better; for
throughput and requests per core-second, above 1.
"""

import argparse
import platform
import statistics
import subprocess
from collections import defaultdict

ORDER = [
    "direct", "haproxy-1", "haproxy-2", "nginx-1", "nginx-2",
    "hashgateprev-1", "hashgate-1", "hashgateprev-2", "hashgate-2",
]
LABEL = {
    "direct": "direct (wrk -> backend)",
    "haproxy-1": "HAProxy, nbthread 1",
    "haproxy-2": "HAProxy, nbthread 2",
    "nginx-1": "nginx, 1 worker",
    "nginx-2": "nginx, 2 workers",
    "hashgate-1": "hashgate, 1 thread",
    "hashgate-2": "hashgate, 2 threads",
    "hashgateprev-1": "hashgate (HASHGATE_PREV_BIN), 1 thread",
    "hashgateprev-2": "hashgate (HASHGATE_PREV_BIN), 2 threads",
}


def rows(path):
    try:
        with open(path) as f:
            return [line.rstrip("\n").split("\t") for line in f if line.strip()]
    except FileNotFoundError:
        return []


def ordered(names):
    return sorted(names, key=lambda n: ORDER.index(n) if n in ORDER else 99)


def peer(cand):
    """The HAProxy row a candidate is compared with (same thread count)."""
    return None if cand == "direct" else "haproxy-" + cand.rsplit("-", 1)[1]


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}x"


def fmt(v, spec):
    return "—" if v is None else format(v, spec)


def sh(cmd):
    try:
        out = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10)
        return (out.stdout + out.stderr).strip().splitlines()[0]
    except Exception:  # noqa: BLE001 - informational only
        return "?"


def http_table(path, hz):
    by = defaultdict(list)
    for r in rows(path):
        cand, load, _round, reqs, dur_us, p50, p99, p999, ticks, wall_us, opens, errors = r
        by[(cand, load)].append(
            dict(
                rps=int(reqs) / (int(dur_us) / 1e6),
                p50=int(p50) / 1000,
                p99=int(p99) / 1000,
                p999=int(p999) / 1000,
                cores=(int(ticks) / hz) / (int(wall_us) / 1e6),
                per_core=int(reqs) / (int(ticks) / hz) if int(ticks) else None,
                opens=int(opens) / (int(wall_us) / 1e6),
                errors=int(errors),
            )
        )
    if not by:
        return []
    stats = {}
    for key, runs in by.items():
        med = lambda f: statistics.median(r[f] for r in runs)  # noqa: E731
        stats[key] = dict(
            rps=med("rps"),
            lo=min(r["rps"] for r in runs),
            hi=max(r["rps"] for r in runs),
            p50=med("p50"),
            p99=med("p99"),
            p999=med("p999"),
            cores=med("cores") if key[0] != "direct" else None,
            per_core=(
                statistics.median(r["per_core"] for r in runs if r["per_core"])
                if key[0] != "direct" and any(r["per_core"] for r in runs)
                else None
            ),
            opens=max(r["opens"] for r in runs),
            errors=sum(r["errors"] for r in runs),
            rounds=len(runs),
        )
    out = [
        "| candidate | wrk | req/s (median) | min–max | × direct | × HAProxy | p50 ms | p99 ms "
        "| p99.9 ms | p99 × HAProxy | balancer CPU (cores) | req per balancer core-s "
        "| × HAProxy | backend TCP opens/s (max) | errors |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    loads = sorted({k[1] for k in stats}, key=lambda s: int(s[1:]))
    for load in loads:
        direct = stats.get(("direct", load))
        for cand in ordered({k[0] for k in stats if k[1] == load}):
            s = stats[(cand, load)]
            h = stats.get((peer(cand), load)) if peer(cand) else None
            t = "-t1 -c16" if load == "c16" else f"-t2 -{load}"
            out.append(
                "| "
                + " | ".join(
                    [
                        LABEL.get(cand, cand),
                        t,
                        f"{s['rps']:,.0f}",
                        f"{s['lo']:,.0f}–{s['hi']:,.0f}",
                        ratio(s["rps"], direct and direct["rps"]),
                        ratio(s["rps"], h and h["rps"]),
                        f"{s['p50']:.3f}",
                        f"{s['p99']:.3f}",
                        f"{s['p999']:.3f}",
                        ratio(s["p99"], h and h["p99"]),
                        fmt(s["cores"], ".2f"),
                        fmt(s["per_core"], ",.0f"),
                        ratio(s["per_core"], h and h["per_core"]),
                        f"{s['opens']:.1f}",
                        str(s["errors"]),
                    ]
                )
                + " |"
            )
    return out


def memory_table(idle_path, ws_path):
    idle = {r[0]: r for r in rows(idle_path)}
    ws = {r[0]: r for r in rows(ws_path)}
    if not idle and not ws:
        return []

    def idle_bytes(c):
        if c not in idle:
            return None
        _, opened, _errors, _alive, before, after = idle[c]
        return (int(after) - int(before)) * 1024 / int(opened) if int(opened) else None

    def ws_bytes(c):
        if c not in ws or c == "direct":
            return None
        r = ws[c]
        return (int(r[10]) - int(r[9])) * 1024 / int(r[1]) if int(r[1]) else None

    out = [
        "| candidate | idle conns open / alive / errors | bytes per idle conn | × HAProxy | × nginx "
        "| WS tunnels open / errors | bytes per tunnel | RTT 1 tunnel p50 / p99 µs "
        "| all tunnels msgs/s | all tunnels RTT p50 / p99 µs |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for c in ordered(set(idle) | set(ws)):
        n = c.rsplit("-", 1)[-1]
        b = idle_bytes(c)
        cells = [LABEL.get(c, c)]
        if c in idle:
            _, opened, errors, alive, _b, _a = idle[c]
            cells += [
                f"{opened} / {alive} / {errors}",
                fmt(b, ",.0f"),
                ratio(b, idle_bytes(peer(c))) if peer(c) else "—",
                ratio(b, idle_bytes("nginx-" + n)) if peer(c) else "—",
            ]
        else:
            cells += ["—"] * 4
        if c in ws:
            r = ws[c]
            cells += [
                f"{r[1]} / {int(r[2]) + int(r[3])}",
                fmt(ws_bytes(c), ",.0f"),
                f"{r[4]} / {r[5]}",
                f"{int(r[8]):,}",
                f"{r[6]} / {r[7]}",
            ]
        else:
            cells += ["—"] * 5
        out.append("| " + " | ".join(cells) + " |")
    return out


def main():
    ap = argparse.ArgumentParser()
    for name in ["http", "idle", "ws", "command", "load-before", "load-after", "pinning", "hashgate-rev"]:
        ap.add_argument("--" + name, default="")
    for name in ["rounds", "duration", "warmup", "idle-conns", "ws-tunnels", "ws-messages", "elapsed", "hz"]:
        ap.add_argument("--" + name, type=int, default=0)
    a = ap.parse_args()

    cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2")
    mem = sh("free -g | awk '/Mem:/ {print $2 \" GiB\"}'")
    lines = [
        f"# hashgate side-by-side benchmark, {sh('date -u +%F')}",
        "",
        f"- Command: `{a.command}` (hashgate {a.hashgate_rev}), {a.elapsed} s",
        f"- Machine: {sh('nproc')} CPUs ({cpu.strip()}), {mem}, Linux {platform.release()}; "
        f"load average before {a.load_before}, after {a.load_after} (shared machine: "
        "compare ratios within this run, not absolute numbers)",
        f"- Tools: {sh('haproxy -v')}; {sh('nginx -v')}; {sh('wrk -v')}",
        f"- Pinning: {a.pinning}",
        f"- Phase 1: wrk with `--latency`-grade percentiles from bench/latency.lua, "
        f"{a.warmup} s warm-up then {a.duration} s measured, {a.rounds} round(s), candidates "
        "interleaved within each round; every request from 127.0.0.1, so the hash sends "
        "all of it to one backend for every candidate",
        "- Balancer CPU: user+system time of the candidate's processes (nginx: master and "
        "workers) over the measured run, divided by wall time; backend TCP opens: delta of "
        "the backend nginx's stub_status `accepts` (for `direct`, wrk's own connections)",
        f"- Phase 2: {a.idle_conns} keep-alive client connections, one request each, then "
        "held idle; bytes per connection = Pss delta of the candidate's processes / open",
        f"- Phase 3: {a.ws_tunnels} WebSocket tunnels to a stdlib asyncio echo backend "
        f"(bench/ws.py); bytes per tunnel = Pss delta / open; RTT of one tunnel with "
        f"the others idle, then every tunnel sending {a.ws_messages} messages at once "
        "(the Python client is the bottleneck there: compare with `direct`)",
        "",
        "## Throughput, latency, CPU",
        "",
    ]
    lines += http_table(a.http, a.hz or 100) or ["(phase not run)"]
    lines += ["", "## Memory and WebSocket", ""]
    lines += memory_table(a.idle, a.ws) or ["(phases not run)"]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
