#!/usr/bin/env python3
"""A TCP proxy that can cut a process off from a server (TLS passes through untouched), for the fault tests
that need the kube-apiserver unreachable for one process only. Standard library only.

    cut-proxy.py --port P --upstream 127.0.0.1:A

SIGUSR1 cuts: every open connection is closed and new ones are refused until SIGUSR2 restores.
"""

import argparse
import asyncio
import signal


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    host, port = args.upstream.rsplit(":", 1)
    state = {"cut": False, "open": set()}

    async def pipe(reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def serve(client_reader, client_writer):
        if state["cut"]:
            client_writer.close()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            client_writer.close()
            return
        connection = (client_writer, upstream_writer)
        state["open"].add(connection)
        await asyncio.gather(pipe(client_reader, upstream_writer), pipe(upstream_reader, client_writer))
        state["open"].discard(connection)

    def cut():
        state["cut"] = True
        for client_writer, upstream_writer in list(state["open"]):
            client_writer.transport.abort()
            upstream_writer.transport.abort()
        state["open"].clear()

    def restore():
        state["cut"] = False

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, cut)
    loop.add_signal_handler(signal.SIGUSR2, restore)
    server = await asyncio.start_server(serve, "127.0.0.1", args.port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
