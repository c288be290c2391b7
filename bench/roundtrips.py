"""Round trips to PostgreSQL per workflow instance and per step, counted on the wire.

    bench/.venv/bin/python -m bench.roundtrips [--pg URL] [--count N]

Issue 5 asks that a step cost about one commit, with no extra round trips. This runs
stepstone (worker in-process) through a TCP proxy that counts, on every connection, each
time the server answers after the client has sent: one round trip. It runs N 1-step and
N 10-step instances one after another (create, then wait) and prints round trips per
instance, and per step as (10-step - 1-step) / 9. Counts, unlike timings, do not depend
on the machine's load. Not part of `bench/run`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
from urllib.parse import urlsplit, urlunsplit

from bench.common import DEFAULT_PG, fresh_database
from bench.ss_workflows import WORKFLOWS, Steps
from stepstone import Engine


class TurnCounter:
    """A TCP proxy on 127.0.0.1 (a free port) to `host:port`, counting round trips, on its own thread."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.turns = 0
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()

    async def _serve(self) -> None:
        server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await server.serve_forever()

    async def _connection(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(*self.upstream)
        last = [""]  # who spoke last on this connection

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, side: str) -> None:
            try:
                while data := await reader.read(65536):
                    if side == "server" and last[0] == "client":
                        self.turns += 1
                    last[0] = side
                    writer.write(data)
                    await writer.drain()
            finally:
                writer.close()

        await asyncio.gather(pipe(client_r, server_w, "client"), pipe(server_r, client_w, "server"),
                             return_exceptions=True)  # fmt: skip


async def _run(url: str, counter: TurnCounter, count: int) -> dict[int, float]:
    per_instance = {}
    async with Engine(url, workflows=WORKFLOWS) as engine:
        handle = engine.workflow(Steps)
        for steps in (1, 10):
            for _ in range(5):  # warm up: prepared statements, pool
                await (await handle.create(params={"steps": steps})).wait(30)
            await asyncio.sleep(0.2)  # let the last runs' follow-up claims settle
            before = counter.turns
            for _ in range(count):
                await (await handle.create(params={"steps": steps})).wait(30)
            await asyncio.sleep(0.2)
            per_instance[steps] = (counter.turns - before) / count
    return per_instance


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.roundtrips", description=__doc__.split("\n")[0])
    parser.add_argument("--pg", default=os.environ.get("BENCH_PG", DEFAULT_PG), help="a PostgreSQL server URL")
    parser.add_argument("--count", type=int, default=50, help="instances of each kind")
    args = parser.parse_args()
    with fresh_database("postgres", "roundtrips", args.pg) as url:
        parts = urlsplit(url)
        counter = TurnCounter(parts.hostname or "127.0.0.1", parts.port or 5432)
        counter.start()
        user = f"{parts.username}@" if parts.username else ""
        proxied = urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{counter.port}"))
        per_instance = asyncio.run(_run(proxied, counter, args.count))
    print("PostgreSQL round trips, everything the process sends (client reads, claims, heartbeats included):")
    print(f"  1-step instance  (create, wait): {per_instance[1]:.1f}")
    print(f"  10-step instance (create, wait): {per_instance[10]:.1f}")
    print(f"  per step, (10-step - 1-step) / 9: {(per_instance[10] - per_instance[1]) / 9:.2f}")


if __name__ == "__main__":
    main()
