"""A worker process for the crash tests: serves tests/crash/app.py's workflows until killed.

    STEPSTONE_CRASH_JOURNAL=journal.txt python tests/crash/worker_main.py DB_URL \
        [--lease-seconds S] [--host NAME] [--parent PID]

Prints `ready pid=PID` once the engine has started (its workflows are recorded in the
store and it is claiming instances). `--host NAME` makes the worker believe it runs on
another machine, so it cannot free a dead neighbour's leases by checking its pid and
must wait for them to expire. `--parent PID` makes the worker die with that process
(Linux), so no worker outlives a test run that was itself killed.
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


async def serve(url: str, lease_seconds: float) -> None:
    app = load_app()
    engine = stepstone.Engine(url, workflows=app.WORKFLOWS, lease_seconds=lease_seconds)
    await engine.start()
    print(f"ready pid={os.getpid()}", flush=True)
    await engine.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("--lease-seconds", type=float, default=30.0)
    parser.add_argument("--host", help="pretend to run on this host")
    parser.add_argument("--parent", type=int, help="die when this process dies")
    args = parser.parse_args()
    if args.parent is not None:
        die_with(args.parent)
    if args.host is not None:
        host: str = args.host
        stepstone.worker.host_identity = lambda: host
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    asyncio.run(serve(args.url, args.lease_seconds))


if __name__ == "__main__":
    main()
