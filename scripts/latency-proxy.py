#!/usr/bin/env python3
# Usage: scripts/latency-proxy.py LISTEN_PORT TARGET_PORT DELAY_MS (both on 127.0.0.1). For benchmarks:
# it gives the test bed's MinIO the round-trip time of a remote store (docs/benchmarks.md).
"""A TCP proxy that adds a fixed delay to every response: each chunk from the server reaches the
client `delay` seconds after it left the server (order kept, throughput not limited)."""
import asyncio, sys, time

LISTEN, TARGET, DELAY = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]) / 1000

async def pipe(reader, writer, delay):
    queue = asyncio.Queue()
    async def pump():
        while True:
            item = await queue.get()
            if item is None:
                break
            due, data = item
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        writer.close()
    task = asyncio.create_task(pump())
    try:
        while True:
            data = await reader.read(1 << 20)
            if not data:
                break
            await queue.put((time.monotonic() + delay, data))
    except ConnectionError:
        pass
    await queue.put(None)
    await task

async def handle(client_r, client_w):
    server_r, server_w = await asyncio.open_connection("127.0.0.1", TARGET)
    await asyncio.gather(pipe(client_r, server_w, 0), pipe(server_r, client_w, DELAY), return_exceptions=True)

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", LISTEN)
    async with server:
        await server.serve_forever()

asyncio.run(main())
