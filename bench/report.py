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
# The WebSocket tables' labels: there the client is ws.py, not wrk.
WS_LABEL = {**LABEL, "direct": "direct (client -> backend)"}


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


def memory_table(idle_path):
    idle = {r[0]: r for r in rows(idle_path)}
    if not idle:
        return []

    def idle_bytes(c):
        if c not in idle:
            return None
        _, opened, _errors, _alive, before, after = idle[c]
        return (int(after) - int(before)) * 1024 / int(opened) if int(opened) else None

    out = [
        "| candidate | idle conns open / alive / errors | bytes per idle conn | × HAProxy | × nginx |",
        "|---|--:|--:|--:|--:|",
    ]
    for c in ordered(set(idle)):
        n = c.rsplit("-", 1)[-1]
        b = idle_bytes(c)
        _, opened, errors, alive, _b, _a = idle[c]
        out.append(
            "| "
            + " | ".join(
                [
                    LABEL.get(c, c),
                    f"{opened} / {alive} / {errors}",
                    fmt(b, ",.0f"),
                    ratio(b, idle_bytes(peer(c))) if peer(c) else "—",
                    ratio(b, idle_bytes("nginx-" + n)) if peer(c) else "—",
                ]
            )
            + " |"
        )
    return out


def spread(values, spec):
    """`median (min–max)`, or the value alone for one round."""
    if not values:
        return "—"
    med = format(statistics.median(values), spec)
    if len(values) == 1:
        return med
    return f"{med} ({format(min(values), spec)}–{format(max(values), spec)})"


def ws_stats(ws_path, hz):
    by = defaultdict(list)
    for r in rows(ws_path):
        (cand, _round, opened, open_errors, before, after, i50, i99, i999, b50, b99, b999,
         mps, r50, r99, errors, probe_errors, msgs, ticks) = r
        n = int(opened)
        by[cand].append(
            dict(
                opened=n,
                errors=int(open_errors) + int(errors) + int(probe_errors),
                bytes=(int(after) - int(before)) * 1024 / n if n and cand != "direct" else None,
                idle=(int(i50), int(i99), int(i999)),
                busy=(int(b50), int(b99), int(b999)),
                mps=int(mps),
                burst=(int(r50), int(r99)),
                per_core=int(msgs) / (int(ticks) / hz) if int(ticks) and cand != "direct" else None,
            )
        )
    return by


def ws_table(ws_path, hz):
    by = ws_stats(ws_path, hz)
    if not by:
        return []
    med = {
        c: dict(
            bytes=statistics.median(r["bytes"] for r in runs) if runs[0]["bytes"] is not None else None,
            idle99=statistics.median(r["idle"][1] for r in runs),
            busy99=statistics.median(r["busy"][1] for r in runs),
            mps=statistics.median(r["mps"] for r in runs),
            per_core=(
                statistics.median(r["per_core"] for r in runs if r["per_core"])
                if any(r["per_core"] for r in runs)
                else None
            ),
        )
        for c, runs in by.items()
    }

    def best_peer_mps(c):
        n = c.rsplit("-", 1)[-1]
        peers = [med[p]["mps"] for p in (f"haproxy-{n}", f"nginx-{n}") if p in med]
        return max(peers) if peers else None

    out = [
        "| candidate | tunnels open / errors | bytes per idle tunnel | × HAProxy "
        "| 1 tunnel RTT, others idle: p50 / p99 / p99.9 µs | p99 × HAProxy "
        "| 1 tunnel RTT, all busy: p50 / p99 / p99.9 µs | p99 × HAProxy "
        "| all tunnels at once: msgs/s | × best peer | their RTT p50 / p99 µs "
        "| msgs per candidate core-s | × HAProxy |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for c in ordered(by):
        runs = by[c]
        m, h = med[c], med.get(peer(c)) if peer(c) else None

        def triple(k):
            return " / ".join(f"{statistics.median(r[k][i] for r in runs):,.0f}" for i in range(3))

        def p99_range(k):
            if len(runs) == 1:
                return ""
            return f" (p99 {min(r[k][1] for r in runs):,}–{max(r[k][1] for r in runs):,})"

        out.append(
            "| "
            + " | ".join(
                [
                    WS_LABEL.get(c, c),
                    f"{min(r['opened'] for r in runs)} / {sum(r['errors'] for r in runs)}",
                    spread([r["bytes"] for r in runs if r["bytes"] is not None], ",.0f"),
                    ratio(m["bytes"], h and h["bytes"]),
                    triple("idle") + p99_range("idle"),
                    ratio(m["idle99"], h and h["idle99"]),
                    triple("busy") + p99_range("busy"),
                    ratio(m["busy99"], h and h["busy99"]),
                    spread([r["mps"] for r in runs], ",.0f"),
                    ratio(m["mps"], best_peer_mps(c)) if c != "direct" else "—",
                    " / ".join(f"{statistics.median(r['burst'][i] for r in runs):,.0f}" for i in range(2)),
                    spread([r["per_core"] for r in runs if r["per_core"]], ",.0f"),
                    ratio(m["per_core"], h and h["per_core"]),
                ]
            )
            + " |"
        )
    return out


def ws_scale_table(path):
    data = rows(path)
    if not data:
        return []
    out = [
        "| candidate | tunnels open / open errors / failed echoes | messages echoed | msgs/s "
        "| RSS before → all open (MB) | Pss growth per tunnel (bytes) |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for r in sorted(data, key=lambda r: ORDER.index(r[0]) if r[0] in ORDER else 99):
        cand, opened, open_errors, failed, before, after, rss_before, rss_after, msgs, mps = r
        n = int(opened)
        per = (int(after) - int(before)) * 1024 / n if n and cand != "direct" else None
        rss = "—" if cand == "direct" else f"{int(rss_before) / 1024:.1f} → {int(rss_after) / 1024:.1f}"
        out.append(
            f"| {WS_LABEL.get(cand, cand)} | {opened} / {open_errors} / {failed} | {int(msgs):,} "
            f"| {int(mps):,} | {rss} | {fmt(per, ',.0f')} |"
        )
    return out


def main():
    ap = argparse.ArgumentParser()
    for name in ["http", "idle", "ws", "ws-scale", "command", "load-before", "load-after", "pinning", "hashgate-rev"]:
        ap.add_argument("--" + name, default="")
    for name in ["rounds", "duration", "warmup", "idle-conns", "ws-tunnels", "ws-messages", "ws-rounds",
                 "ws-probe", "ws-busy-rate", "ws-scale-tunnels", "ws-scale-messages", "fd-limit",
                 "elapsed", "hz"]:
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
        f"(bench/ws.py), {a.ws_rounds} round(s), candidates interleaved; bytes per idle tunnel = "
        f"Pss delta / open; one more tunnel, from a probe process of its own, times "
        f"{a.ws_probe} round trips one at a time while the others are idle, then while they "
        f"carry {a.ws_busy_rate:,} paced messages/s in all; then every tunnel ping-pongs "
        f"{a.ws_messages} messages at once, closed loop (the Python client and backend share "
        "the machine's two cores with the candidate: compare with `direct`), with the "
        "candidate's CPU time meanwhile (user+system; messages per core-second counts round "
        "trips, two frames relayed each). Medians over the rounds, (min–max) where there are "
        "several",
        f"- Scale step: {a.ws_scale_tunnels} tunnels open at once through each candidate, all "
        f"processes under a {a.fd_limit}-descriptor limit, each echoing {a.ws_scale_messages} "
        "messages; RSS and Pss of the candidate's processes before and with all of them open",
        "",
        "## Throughput, latency, CPU",
        "",
    ]
    lines += http_table(a.http, a.hz or 100) or ["(phase not run)"]
    lines += ["", "## Memory per idle keep-alive connection", ""]
    lines += memory_table(a.idle) or ["(phase not run)"]
    lines += ["", "## WebSocket tunnels", ""]
    lines += ws_table(a.ws, a.hz or 100) or ["(phase not run)"]
    lines += ["", "### Scale step", ""]
    lines += ws_scale_table(a.ws_scale) or ["(not run)"]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
