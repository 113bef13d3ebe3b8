#!/usr/bin/env python3
"""A minimal WebSocket (RFC 6455) echo backend and load clients, stdlib only.

    ws.py server PORT [PORT...]
        Echo backends. A plain HTTP request (health checks, /) gets 200 "ok".
    ws.py load HOST PORT TUNNELS
        Opens TUNNELS WebSocket tunnels through HOST:PORT and prints
        `OPEN open=<n> errors=<n>`, then obeys commands, one per line on
        stdin (the caller measures memory and latency between them):
          busy RATE   every tunnel sends paced messages, RATE per second in
                      all, until the next command; prints `BUSY`
          idle        stops that, waits for the echoes, prints
                      `IDLE sent=<n> received=<n> errors=<n>`
          burst N     every tunnel ping-pongs N messages at once (closed
                      loop); prints `BURST msgs=<n> failed=<n> msgs_per_s=<n>
                      p50=<us> p99=<us>`
          quit        closes the tunnels and exits
    ws.py probe HOST PORT COUNT
        Opens one more tunnel, ping-pongs COUNT messages on it, one at a
        time, and prints `PROBE n=<n> errors=<n> p50=<us> p99=<us>
        p999=<us>`: one tunnel's round trip, whatever the others do.

The probe runs in a process of its own, so its round trips do not queue
behind the load's own Python work. Only small text frames are used, so only
the 7-bit and 16-bit length forms matter; the parser accepts every form.
"""

import asyncio
import base64
import hashlib
import os
import sys
import time

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC11B65"
PAYLOAD = b"x" * 32
OPEN_AT_ONCE = 200
# The paced sender's tick: RATE/100 messages every 10 ms.
PACE = 0.01


def unmask(data, mask):
    n = len(data)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(data, "big") ^ key).to_bytes(n, "big")


def frame(opcode, data, mask):
    n = len(data)
    head = bytes([0x80 | opcode])
    mbit = 0x80 if mask else 0
    if n < 126:
        head += bytes([mbit | n])
    elif n < 65536:
        head += bytes([mbit | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([mbit | 127]) + n.to_bytes(8, "big")
    if mask:
        key = os.urandom(4)
        return head + key + unmask(data, key)
    return head + data


async def read_frame(reader):
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(await reader.readexactly(2), "big")
    elif n == 127:
        n = int.from_bytes(await reader.readexactly(8), "big")
    mask = await reader.readexactly(4) if b1 & 0x80 else None
    data = await reader.readexactly(n) if n else b""
    if mask and data:
        data = unmask(data, mask)
    return b0 & 0x0F, data


async def serve(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            headers = {}
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            if headers.get(b"upgrade", b"").lower() == b"websocket":
                accept = base64.b64encode(
                    hashlib.sha1(headers[b"sec-websocket-key"] + GUID).digest()
                )
                writer.write(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
                )
                while True:
                    op, data = await read_frame(reader)
                    if op == 0x8:
                        writer.write(frame(0x8, b"", False))
                        await writer.drain()
                        return
                    if op in (0x1, 0x2):
                        writer.write(frame(op, data, False))
                    elif op == 0x9:
                        writer.write(frame(0xA, data, False))
            length = int(headers.get(b"content-length", b"0"))
            if length:
                await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\n\r\nok\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def server(ports):
    servers = [await asyncio.start_server(serve, "127.0.0.1", p, backlog=4096) for p in ports]
    print("LISTENING", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


async def open_tunnel(host, port, sem):
    async with sem:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
        key = base64.b64encode(os.urandom(16))
        writer.write(
            b"GET /ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        if head.split(b" ", 2)[1] != b"101":
            raise RuntimeError(f"handshake answered {head[:40]!r}")
        return reader, writer


async def ping_pong(tunnel, count, rtts):
    reader, writer = tunnel
    for _ in range(count):
        t0 = time.perf_counter()
        writer.write(frame(0x1, PAYLOAD, True))
        op, data = await asyncio.wait_for(read_frame(reader), 10)
        rtts.append(time.perf_counter() - t0)
        if data != PAYLOAD:
            raise RuntimeError("echo mismatch")


def pct(values, q):
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q / 100))] * 1e6 if s else float("nan")


async def open_all(host, port, n):
    sem = asyncio.Semaphore(OPEN_AT_ONCE)
    results = await asyncio.gather(
        *(open_tunnel(host, port, sem) for _ in range(n)), return_exceptions=True
    )
    tunnels = [r for r in results if not isinstance(r, BaseException)]
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        print(f"first error: {errors[0]!r}", file=sys.stderr)
    return tunnels, len(errors)


class Busy:
    """Paced load: RATE messages a second over every tunnel in turn, each
    tunnel's echoes read by a reader of its own."""

    def __init__(self, tunnels, rate):
        self.tunnels, self.rate = tunnels, rate
        self.sent = self.received = self.errors = 0
        self.readers = [asyncio.create_task(self.read(t)) for t in tunnels]
        self.pacer = asyncio.create_task(self.pace())

    async def read(self, tunnel):
        reader, _ = tunnel
        try:
            while True:
                await read_frame(reader)
                self.received += 1
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - counted
            self.errors += 1

    async def pace(self):
        per_tick = max(1, round(self.rate * PACE))
        i, start, ticks = 0, time.perf_counter(), 0
        while True:
            for _ in range(per_tick):
                _, writer = self.tunnels[i % len(self.tunnels)]
                writer.write(frame(0x1, PAYLOAD, True))
                self.sent += 1
                i += 1
            ticks += 1
            await asyncio.sleep(max(0, start + ticks * PACE - time.perf_counter()))

    async def stop(self):
        self.pacer.cancel()
        deadline = time.perf_counter() + 10
        while self.received + self.errors < self.sent and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        for r in self.readers:
            r.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)


async def load(host, port, n):
    tunnels, open_errors = await open_all(host, port, n)
    print(f"OPEN open={len(tunnels)} errors={open_errors}", flush=True)
    loop = asyncio.get_running_loop()
    busy = None
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        if cmd[0] == "busy" and tunnels and busy is None:
            busy = Busy(tunnels, int(cmd[1]))
            print("BUSY", flush=True)
        elif cmd[0] == "idle" and busy is not None:
            await busy.stop()
            print(f"IDLE sent={busy.sent} received={busy.received} errors={busy.errors}", flush=True)
            busy = None
        elif cmd[0] == "burst":
            rtts = []
            t0 = time.perf_counter()
            outcomes = await asyncio.gather(
                *(ping_pong(t, int(cmd[1]), rtts) for t in tunnels), return_exceptions=True
            )
            elapsed = time.perf_counter() - t0
            failed = sum(1 for o in outcomes if isinstance(o, BaseException))
            print(
                f"BURST msgs={len(rtts)} failed={failed} msgs_per_s={len(rtts) / elapsed:.0f} "
                f"p50={pct(rtts, 50):.0f} p99={pct(rtts, 99):.0f}",
                flush=True,
            )
    for _, w in tunnels:
        w.close()


async def probe(host, port, count):
    errors, rtts = 0, []
    try:
        tunnel = await open_tunnel(host, port, asyncio.Semaphore(1))
        await ping_pong(tunnel, count, rtts)
        tunnel[1].close()
    except Exception as e:  # noqa: BLE001 - counted and shown
        errors += 1
        print(f"probe error: {e!r}", file=sys.stderr)
    print(
        f"PROBE n={len(rtts)} errors={errors} p50={pct(rtts, 50):.0f} "
        f"p99={pct(rtts, 99):.0f} p999={pct(rtts, 99.9):.0f}",
        flush=True,
    )


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) >= 2 and args[0] == "server":
        asyncio.run(server([int(p) for p in args[1:]]))
    elif len(args) == 4 and args[0] == "load":
        asyncio.run(load(args[1], int(args[2]), int(args[3])))
    elif len(args) == 4 and args[0] == "probe":
        asyncio.run(probe(args[1], int(args[2]), int(args[3])))
    else:
        sys.exit(__doc__)
