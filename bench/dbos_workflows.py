"""The same workflows for DBOS Transact, with its sync API (`@DBOS.workflow()`, `@DBOS.step()`).

Import this after `DBOS(config=...)` and before `DBOS.launch()`.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from dbos import DBOS

asleep = 0
"""How many `nap` workflows of this process have reached their sleep."""
_asleep_lock = threading.Lock()


@DBOS.step()
def small(i: int) -> dict[str, Any]:
    return {"step": i, "ok": True}


@DBOS.step()
def now() -> float:
    return time.time()


@DBOS.workflow()
def steps(n: int) -> dict[str, Any]:
    for i in range(n):
        small(i)
    return {"steps": n}


@DBOS.workflow()
def steps_then_sleep(n: int, seconds: float) -> dict[str, Any]:
    for i in range(n):
        small(i)
    DBOS.sleep(seconds)
    return {"steps": n}


@DBOS.workflow()
def sleeper(seconds: float) -> float:
    DBOS.sleep(seconds)
    return now()


@DBOS.workflow()
def waiter() -> float:
    DBOS.recv("go", timeout_seconds=3600)
    return now()


@DBOS.workflow()
def nap(seconds: float) -> None:
    global asleep
    with _asleep_lock:
        asleep += 1
    DBOS.sleep(seconds)
