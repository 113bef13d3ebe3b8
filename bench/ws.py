#!/usr/bin/env python3
"""A minimal WebSocket (RFC 6455) echo backend and load client, stdlib only.

    ws.py server PORT [PORT...]
        Echo backends. A plain HTTP request (health checks, /) gets 200 "ok".
    ws.py client HOST PORT TUNNELS MESSAGES HOLD_SECS
        Opens TUNNELS WebSocket tunnels through HOST:PORT, prints
        `OPEN open=<n> errors=<n>`, holds them HOLD_SECS (the caller measures
        memory), then measures per-message round trips twice: one tunnel
        ping-ponging MESSAGES*10 messages while the others sit idle, and every
        tunnel ping-ponging MESSAGES messages at once. Prints one RESULT line.

Only small text frames are used, so only the 7-bit and 16-bit length forms
matter; the parser accepts every form anyway.
"""

import asyncio
import base64
import hashlib
import os
import statistics
import sys
import time

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC11B65"
PAYLOAD = b"x" * 32
OPEN_AT_ONCE = 200


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


async def client(host, port, n, messages, hold):
    sem = asyncio.Semaphore(OPEN_AT_ONCE)
    results = await asyncio.gather(
        *(open_tunnel(host, port, sem) for _ in range(n)), return_exceptions=True
    )
    tunnels = [r for r in results if not isinstance(r, BaseException)]
    errors = [r for r in results if isinstance(r, BaseException)]
    print(f"OPEN open={len(tunnels)} errors={len(errors)}", flush=True)
    if errors:
        print(f"first error: {errors[0]!r}", file=sys.stderr)
    await asyncio.sleep(hold)
    single, every = [], []
    failed = 0
    if tunnels:
        await ping_pong(tunnels[0], messages * 10, single)
        t0 = time.perf_counter()
        outcomes = await asyncio.gather(
            *(ping_pong(t, messages, every) for t in tunnels), return_exceptions=True
        )
        elapsed = time.perf_counter() - t0
        failed = sum(1 for o in outcomes if isinstance(o, BaseException))
    else:
        elapsed = float("nan")
    print(
        f"RESULT open={len(tunnels)} open_errors={len(errors)} failed={failed} "
        f"single_p50={pct(single, 50):.0f} single_p99={pct(single, 99):.0f} "
        f"all_p50={pct(every, 50):.0f} all_p99={pct(every, 99):.0f} "
        f"all_msgs_per_s={len(every) / elapsed:.0f} median_single={statistics.median(single) * 1e6 if single else 0:.0f}",
        flush=True,
    )
    for _, w in tunnels:
        w.close()


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "server":
        asyncio.run(server([int(p) for p in sys.argv[2:]]))
    elif len(sys.argv) == 7 and sys.argv[1] == "client":
        h, p, n, m, hold = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
        asyncio.run(client(h, p, n, m, hold))
    else:
        sys.exit(__doc__)
