#!/usr/bin/env python3
"""Opens N keep-alive HTTP/1.1 connections, one request each, then holds them.

    idle_conns.py HOST PORT N HOLD_SECS

Prints `READY open=<n> errors=<n>` once every connection has had its answer,
holds them idle for HOLD_SECS (the caller measures the balancer's memory
meanwhile), then `ALIVE <n>`: how many the balancer kept open, and exits.
Only the standard library, so it runs on any machine with python3.
"""

import asyncio
import sys

OPEN_AT_ONCE = 200  # stays under every candidate's listen backlog


async def one(host, port, sem, held):
    async with sem:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
        writer.write(b"GET /idle HTTP/1.1\r\nHost: bench\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        status = head.split(b" ", 2)[1]
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length:
            await asyncio.wait_for(reader.readexactly(length), 10)
        if status != b"200":
            raise RuntimeError(f"status {status!r}")
        held.append((reader, writer))


async def main():
    host, port, n, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    sem = asyncio.Semaphore(OPEN_AT_ONCE)
    held = []
    results = await asyncio.gather(
        *(one(host, port, sem, held) for _ in range(n)), return_exceptions=True
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    print(f"READY open={len(held)} errors={len(errors)}", flush=True)
    if errors:
        print(f"first error: {errors[0]!r}", file=sys.stderr)
    await asyncio.sleep(hold)
    alive = sum(1 for r, _ in held if not r.at_eof())
    print(f"ALIVE {alive}", flush=True)
    for _, w in held:
        w.close()


if __name__ == "__main__":
    asyncio.run(main())
