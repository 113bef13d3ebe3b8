#!/usr/bin/env python3
"""Steady GET load from one client address, for tests/swarm/run.sh.

Runs inside one network namespace (one client address): THREADS threads each
send `GET /api/client-ip` every INTERVAL seconds until STOP_FILE appears or
MAX_SECS pass (both bounds always apply). Even threads keep one keep-alive
connection, odd threads open a new connection per request. A request fails
when it raises, times out (10 s) or answers anything but 200 with this
client's own address in the body (the balancer keyed on it and forwarded
it). Prints one JSON line: requests, failures, worst latency, the instances
that answered, and a few failure samples.

    load.py HOST PORT EXPECT_IP STOP_FILE MAX_SECS [THREADS] [INTERVAL]
"""

import http.client
import json
import os
import sys
import threading
import time

host, port, expect_ip, stop_file = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
max_secs = float(sys.argv[5])
threads = int(sys.argv[6]) if len(sys.argv) > 6 else 4
interval = float(sys.argv[7]) if len(sys.argv) > 7 else 0.05
deadline = time.monotonic() + max_secs

lock = threading.Lock()
totals = {"requests": 0, "failures": 0, "worst_ms": 0.0}
latencies = []
instances = set()
samples = []


def one(conn):
    """One request on `conn`; returns (ok, why, instance)."""
    conn.request("GET", "/api/client-ip", headers={"Host": "hashgate"})
    resp = conn.getresponse()
    body = resp.read()
    if resp.status != 200:
        return False, "status %d: %s" % (resp.status, body[:120]), None
    doc = json.loads(body)
    if doc.get("ip") != expect_ip:
        return False, "keyed on %r, not %s" % (doc.get("ip"), expect_ip), None
    return True, "", doc.get("instance")


def worker(n):
    keep_alive = n % 2 == 0
    conn = None
    while time.monotonic() < deadline and not os.path.exists(stop_file):
        if conn is None:
            conn = http.client.HTTPConnection(host, port, timeout=10)
        t0 = time.monotonic()
        try:
            ok, why, instance = one(conn)
        except Exception as e:  # noqa: BLE001 - every failure counts
            ok, why, instance = False, "%s: %s" % (type(e).__name__, e), None
        ms = (time.monotonic() - t0) * 1000
        if not ok or not keep_alive:
            conn.close()
            conn = None
        with lock:
            totals["requests"] += 1
            totals["worst_ms"] = max(totals["worst_ms"], ms)
            latencies.append(ms)
            if instance:
                instances.add(instance)
            if not ok:
                totals["failures"] += 1
                if len(samples) < 5:
                    samples.append("%.0f ms %s" % (ms, why))
        time.sleep(interval)
    if conn is not None:
        conn.close()


pool = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(threads)]
for t in pool:
    t.start()
for t in pool:
    t.join(max_secs + 30)
latencies.sort()
p99 = latencies[int(len(latencies) * 0.99)] if latencies else 0.0
print(json.dumps({
    "client": expect_ip,
    "requests": totals["requests"],
    "failures": totals["failures"],
    "worst_ms": round(totals["worst_ms"], 1),
    "p99_ms": round(p99, 1),
    "slow_over_500ms": sum(1 for x in latencies if x > 500),
    "instances": sorted(instances),
    "samples": samples,
}))
