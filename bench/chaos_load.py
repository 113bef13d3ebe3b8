#!/usr/bin/env python3
"""A steady load of idempotent GETs from several client addresses, for
bench/chaos.sh (and the Swarm CI test, tests/swarm.sh).

    chaos_load.py HOST:PORT OUT [options]

    --clients N      client source addresses (default 8)
    --source A.B.C   first three octets of the source addresses: clients
                     are A.B.C.1 .. A.B.C.N (default 127.2.0); "none" binds
                     no source address (network namespaces pick their own)
    --rate R         requests per second over all clients (default 200)
    --paths P,Q      paths, taken in turn (default /api/client-ip)
    --timeout S      per-request limit in seconds (default 30)
    --secs S         stop after S seconds at most (default 900)
    --stop-file F    stop as soon as F exists

Each client keeps a pool of keep-alive connections (at most 512 at once)
and sends its share of the rate on a fixed schedule, the clients in turn
(open loop: a slow answer does not slow the next request down). Like
browsers and HTTP libraries, a request whose reused keep-alive connection turns out closed
before any byte of an answer arrived is sent once more on a new connection
(RFC 9112 §9.3.1); nothing else is retried. Every request becomes one line
of OUT: start (unix seconds), latency ms, ok (1 = 200), status or error,
path, client, instance (X-Instance-Id), retried.

Bounded in count (the rate) and in time (--secs, --timeout).
"""

import argparse
import asyncio
import os
import sys
import time

MAX_CONNS = 512


class Stale(Exception):
    """A reused connection was closed before any byte of an answer."""


async def read_answer(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length, chunked, close, instance = None, False, False, ""
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
        elif name == b"connection" and b"close" in value.lower():
            close = True
        elif name == b"x-instance-id":
            instance = value.decode(errors="replace")
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length is not None:
        await reader.readexactly(length)
    else:
        await reader.read()
        close = True
    return status, close, instance


class Client:
    def __init__(self, args, source):
        self.args = args
        self.source = source
        self.idle = []
        self.open = 0

    async def connect(self):
        host, port = self.args.target
        local = (self.source, 0) if self.source else None
        return await asyncio.wait_for(
            asyncio.open_connection(host, port, local_addr=local), self.args.timeout
        )

    async def exchange(self, conn, path, reused):
        reader, writer = conn
        writer.write(f"GET {path} HTTP/1.1\r\nHost: chaos\r\n\r\n".encode())
        await writer.drain()
        try:
            return await read_answer(reader)
        except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError) as e:
            got_nothing = not isinstance(e, asyncio.IncompleteReadError) or not e.partial
            if reused and got_nothing:
                raise Stale() from e
            raise

    async def request(self, path, out):
        start = time.time()
        t0 = time.monotonic()
        retried = 0
        status, ok, instance = "", 0, ""
        conn = None
        try:
            async def attempt():
                nonlocal conn, retried
                reused = bool(self.idle)
                conn = self.idle.pop() if reused else await self.connect()
                try:
                    return await self.exchange(conn, path, reused)
                except (Stale, ConnectionResetError, BrokenPipeError):
                    if not reused:
                        raise
                    conn[1].close()
                    retried = 1
                    conn = await self.connect()
                    return await self.exchange(conn, path, False)

            code, close, instance = await asyncio.wait_for(attempt(), self.args.timeout)
            status, ok = str(code), int(code == 200)
            if close:
                conn[1].close()
            else:
                self.idle.append(conn)
            conn = None
        except asyncio.TimeoutError:
            status = "timeout"
        except Exception as e:  # noqa: BLE001: every failure is a data point
            status = type(e).__name__
        finally:
            if conn is not None:
                conn[1].close()
            self.open -= 1
        ms = (time.monotonic() - t0) * 1000
        out.write(f"{start:.3f} {ms:.1f} {ok} {status} {path} {self.source or '-'} {instance or '-'} {retried}\n")


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("target")
    p.add_argument("out")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--source", default="127.2.0")
    p.add_argument("--rate", type=float, default=200)
    p.add_argument("--paths", default="/api/client-ip")
    p.add_argument("--timeout", type=float, default=30)
    p.add_argument("--secs", type=float, default=900)
    p.add_argument("--stop-file")
    args = p.parse_args()
    host, _, port = args.target.rpartition(":")
    args.target = (host, int(port))
    paths = args.paths.split(",")
    sources = [None] * args.clients if args.source == "none" else [
        f"{args.source}.{i + 1}" for i in range(args.clients)
    ]
    clients = [Client(args, s) for s in sources]
    out = open(args.out, "w", buffering=1)
    # One request every 1/rate s, the clients in turn (evenly spread, not in
    # bursts, so a short outage catches its fair share); each client takes
    # the paths in turn.
    every = 1 / args.rate
    stop = time.monotonic() + args.secs
    tasks = set()
    n = 0
    next_at = time.monotonic()
    while time.monotonic() < stop and not (args.stop_file and os.path.exists(args.stop_file)):
        c = clients[n % len(clients)]
        path = paths[(n // len(clients)) % len(paths)]
        n += 1
        if c.open >= MAX_CONNS:
            out.write(f"{time.time():.3f} 0.0 0 overloaded {path} {c.source or '-'} - 0\n")
        else:
            c.open += 1
            t = asyncio.ensure_future(c.request(path, out))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
        next_at += every
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    if tasks:
        await asyncio.wait(tasks, timeout=args.timeout + 1)
    out.close()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(130)
