"""A worker process for the crash tests: serves tests/crash/app.py's workflows until killed.

    STEPSTONE_CRASH_JOURNAL=journal.txt python tests/crash/worker_main.py DB_URL \
        [--lease-seconds S] [--host NAME] [--parent PID] [--cli] [--create N]

Prints `ready pid=PID` once the engine has started (its workflows are recorded in the
store and it is claiming instances). `--host NAME` makes the worker believe it runs on
another machine, so it cannot free a dead neighbour's leases by checking its pid and
must wait for them to expire. `--parent PID` makes the worker die with that process
(Linux), so no worker outlives a test run that was itself killed.

With `--cli` it runs the real command instead, `stepstone worker tests/crash/app.py
--db DB_URL` (with the lease and host asked for), which stops gracefully on SIGTERM
and says `stepstone worker ready` on stderr once it serves.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import importlib.util
import logging
import os
import signal
import sys
from pathlib import Path
from types import ModuleType

import stepstone
import stepstone.worker

_PR_SET_PDEATHSIG = 1
LEASE_ENV = "STEPSTONE_CRASH_LEASE"  # as in app.py


def load_app() -> ModuleType:
    """tests/crash/app.py, loaded by path: this script runs outside any package."""
    spec = importlib.util.spec_from_file_location("stepstone_crash_app", Path(__file__).with_name("app.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def die_with(parent: int) -> None:
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGKILL)


async def serve(url: str, lease_seconds: float, create: int) -> None:
    app = load_app()
    engine = stepstone.Engine(url, workflows=app.WORKFLOWS, lease_seconds=lease_seconds)
    await engine.start()
    if create:  # created here, beside a worker with free slots: leased to it and started at once
        items = [{"id": f"own-{n}", "params": {"n": n, "slow": 3.0}} for n in range(create)]
        await engine.workflow("crash-multistep").create_batch(items)
    print(f"ready pid={os.getpid()}", flush=True)
    await engine.serve_forever()


def run_cli(url: str, lease_seconds: float) -> None:
    """`stepstone worker tests/crash/app.py --db URL`, in this process (exits with its code)."""
    from stepstone.cli import main as stepstone_main

    os.environ[LEASE_ENV] = repr(lease_seconds)  # app.py's engine takes its lease from here
    stepstone_main(["worker", str(Path(__file__).with_name("app.py")), "--db", url], prog_name="stepstone")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("--lease-seconds", type=float, default=30.0)
    parser.add_argument("--host", help="pretend to run on this host")
    parser.add_argument("--parent", type=int, help="die when this process dies")
    parser.add_argument("--cli", action="store_true", help="run `stepstone worker` on app.py (stops on SIGTERM)")
    parser.add_argument("--create", type=int, default=0,
                        help="once started, create this many crash-multistep instances own-0, own-1, ...")  # fmt: skip
    args = parser.parse_args()
    if args.parent is not None:
        die_with(args.parent)
    if args.host is not None:
        host: str = args.host
        stepstone.worker.host_identity = lambda: host
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    if args.cli:
        run_cli(args.url, args.lease_seconds)
    else:
        asyncio.run(serve(args.url, args.lease_seconds, args.create))


if __name__ == "__main__":
    main()
