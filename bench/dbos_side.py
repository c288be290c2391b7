"""The scenarios, run with DBOS Transact 3.4 (sync API), where DBOS has the same thing.

Fairness notes (printed with the results):
- On SQLite, DBOS gets the same durability as stepstone: the file is put in WAL mode
  before launch (the mode is kept in the file) and SQLite's default synchronous=FULL
  stays. DBOS's own default is a rollback journal, equally durable.
- Sequential workflows are called directly (`steps(n)`), DBOS's fastest path: the
  workflow runs in the calling thread. stepstone's figure includes `create` + `wait`.
- Everything else starts workflows with `DBOS.start_workflow` and waits on the handles.
"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
from typing import Any

from bench import bulk
from bench.common import ROOT, Result, log, percentile, sqlite_path, store_of


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def launch(url: str) -> Any:
    """Configure DBOS on `url`, register the bench's workflows, launch; returns the workflows module."""
    if store_of(url) == "sqlite":
        conn = sqlite3.connect(sqlite_path(url))
        conn.execute("PRAGMA journal_mode=WAL")
        conn.close()
    from dbos import DBOS

    DBOS(config={"name": "stepstone-bench", "system_database_url": url, "log_level": "WARNING"})
    from bench import dbos_workflows

    DBOS.launch()
    return dbos_workflows


# -- sequential ---------------------------------------------------------------------------


def _sequential_batch(wf: Any, steps: int, count: int, cap: float) -> tuple[float, list[float]]:
    latencies: list[float] = []
    began = time.perf_counter()
    while len(latencies) < count and time.perf_counter() - began < cap:
        start = time.perf_counter()
        wf.steps(steps)
        latencies.append(time.perf_counter() - start)
    return time.perf_counter() - began, latencies


def sequential(url: str, params: dict[str, Any]) -> Result:
    result = Result()
    wf = launch(url)
    _sequential_batch(wf, 1, params["warmup"], 30)
    _sequential_batch(wf, 10, params["warmup"], 30)
    for _ in range(params["reps"]):
        per_instance = {}
        for steps in (1, 10):
            seconds, latencies = _sequential_batch(wf, steps, params["count"][str(steps)], params["cap"])
            n = len(latencies)
            per_instance[steps] = seconds / n
            result.add(f"{steps}-step instances/s", "instances/s", n / seconds)
            result.add(f"{steps}-step steps/s", "steps/s", n * steps / seconds)
            result.add(f"{steps}-step latency p50", "ms", _ms(percentile(latencies, 50)))
            result.add(f"{steps}-step latency p99", "ms", _ms(percentile(latencies, 99)))
        result.add("per-step overhead (10-step - 1-step)/9", "ms", _ms((per_instance[10] - per_instance[1]) / 9))
    return result


# -- concurrent ---------------------------------------------------------------------------


def concurrent(url: str, params: dict[str, Any]) -> Result:
    from dbos import DBOS

    result = Result()
    wf = launch(url)
    instances, steps = params["instances"], params["steps"]
    for rep in range(params["reps"] + 1):  # the first round warms up
        began = time.perf_counter()
        handles = [DBOS.start_workflow(wf.steps, steps) for _ in range(instances)]
        for handle in handles:
            handle.get_result()
        seconds = time.perf_counter() - began
        if rep > 0:
            result.add("steps/s", "steps/s", instances * steps / seconds)
            result.add("instances/s", "instances/s", instances / seconds)
    return result


# -- timers -------------------------------------------------------------------------------


def timers(url: str, params: dict[str, Any]) -> Result:
    from dbos import DBOS

    result = Result()
    wf = launch(url)
    for _ in range(params["reps"]):
        handles = [DBOS.start_workflow(wf.sleeper, params["seconds"]) for _ in range(params["instances"])]
        # Every workflow ends before any history is read: reads must not load the
        # process while the timers fire.
        results = [handle.get_result() for handle in handles]
        lateness = []
        for handle, started in zip(handles, results, strict=True):
            (due,) = [
                s["output"] for s in DBOS.list_workflow_steps(handle.workflow_id) if s["function_name"] == "DBOS.sleep"
            ]
            lateness.append(started - float(due))
        result.add("wake-up lateness p50", "ms", _ms(percentile(lateness, 50)))
        result.add("wake-up lateness p99", "ms", _ms(percentile(lateness, 99)))
    return result


# -- events -------------------------------------------------------------------------------


def _wait_until_receiving(workflow_ids: list[str], timeout: float) -> None:
    """Until each workflow has entered `recv` (which first records its timeout)."""
    from dbos import DBOS

    deadline = time.monotonic() + timeout
    for workflow_id in workflow_ids:
        while not DBOS.list_workflow_steps(workflow_id):
            if time.monotonic() > deadline:
                raise TimeoutError(f"workflow {workflow_id} did not reach recv")
            time.sleep(0.01)


def _send_scheduled(send: Any, plan: dict[str, Any]) -> list[float]:
    start = time.monotonic()
    sent = []
    for workflow_id, offset in zip(plan["ids"], plan["offsets"], strict=True):
        time.sleep(max(0.0, start + offset - time.monotonic()))
        sent.append(time.time())
        send(workflow_id, {"sent": sent[-1]}, topic="go")
    return sent


def events(url: str, params: dict[str, Any]) -> Result:
    """As stepstone's: `samples` workflows in `recv`, messages sent at random moments over `window` s."""
    from dbos import DBOS

    from bench.ss_side import schedule

    result = Result()
    wf = launch(url)
    cross = params["cross_process"]
    rng = random.Random(5)
    sender = None
    if cross:
        sender = subprocess.Popen(
            [sys.executable, "-m", "bench.child", "dbos", "event-sender", url, "{}"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT, text=True,
        )  # fmt: skip
        assert sender.stdout is not None and sender.stdin is not None
        if sender.stdout.readline().strip() != "ready":
            raise RuntimeError("event sender did not start")
    for _ in range(params["reps"]):
        handles = [DBOS.start_workflow(wf.waiter) for _ in range(params["samples"])]
        _wait_until_receiving([h.workflow_id for h in handles], 60)
        plan = schedule([h.workflow_id for h in handles], params["window"], rng)
        if sender is not None:
            assert sender.stdout is not None and sender.stdin is not None
            sender.stdin.write(json.dumps(plan) + "\n")
            sender.stdin.flush()
            sent = [float(t) for t in json.loads(sender.stdout.readline())]
        else:
            sent = _send_scheduled(DBOS.send, plan)
        latencies = [h.get_result() - t for h, t in zip(handles, sent, strict=True)]
        result.add("send_event to next step p50", "ms", _ms(percentile(latencies, 50)))
        result.add("send_event to next step p99", "ms", _ms(percentile(latencies, 99)))
    if sender is not None:
        assert sender.stdin is not None
        sender.stdin.close()
        sender.wait(30)
    return result


def event_sender(url: str, params: dict[str, Any]) -> None:
    """The other process of the events scenario: a DBOSClient that sends `go` messages on schedule."""
    from dbos import DBOSClient

    client = DBOSClient(system_database_url=url)
    print("ready", flush=True)
    for line in sys.stdin:
        print(json.dumps(_send_scheduled(client.send, json.loads(line))), flush=True)
    client.destroy()


# -- idle ---------------------------------------------------------------------------------


def idle(url: str, params: dict[str, Any]) -> Result:
    """`instances` workflows sleeping an hour in a DBOS process of their own: its CPU and RSS."""
    import psutil

    from bench import ss_side

    result = Result()
    worker = subprocess.Popen(
        [sys.executable, "-m", "bench.child", "dbos", "idle-worker", url, json.dumps(params)],
        stdout=subprocess.PIPE, cwd=ROOT, text=True,
    )  # fmt: skip
    try:
        assert worker.stdout is not None
        began = time.perf_counter()
        line = worker.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"the DBOS idle worker did not get ready: {line!r}")
        log(f"  {params['instances']} workflows asleep after {time.perf_counter() - began:.1f} s")
        ss_side._measure_process(psutil.Process(worker.pid), params, result)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(30)
    return result


def idle_worker(url: str, params: dict[str, Any]) -> None:
    """Start `instances` sleeping workflows (in chunks, so the connection pool keeps up); say ready."""
    from dbos import DBOS

    wf = launch(url)
    started = 0
    while started < params["instances"]:
        chunk = min(200, params["instances"] - started)
        for _ in range(chunk):
            DBOS.start_workflow(wf.nap, 3600)
        started += chunk
        deadline = time.monotonic() + 120
        while wf.asleep < started:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {wf.asleep} of {started} workflows reached their sleep")
            time.sleep(0.01)
    time.sleep(0.5)  # the last sleeps record their wake-up time
    print("ready", flush=True)
    while True:
        time.sleep(3600)


# -- scale --------------------------------------------------------------------------------


def scale(url: str, params: dict[str, Any]) -> Result:
    from dbos import DBOS, DBOSClient

    result = Result()
    wf = launch(url)
    finished = DBOS.start_workflow(wf.steps, 10)
    finished.get_result()
    waiting = DBOS.start_workflow(wf.steps_then_sleep, 1, 3600)
    deadline = time.monotonic() + 60
    while not any(s["function_name"] == "DBOS.sleep" for s in DBOS.list_workflow_steps(waiting.workflow_id)):
        if time.monotonic() > deadline:
            raise TimeoutError("the waiting template did not reach its sleep")
        time.sleep(0.01)
    DBOS.destroy(workflow_completion_timeout_sec=0)  # the sleeping thread stays; the process exits with os._exit
    began = time.perf_counter()
    templates = {"finished": finished.workflow_id, "waiting": waiting.workflow_id}
    per_finished = bulk.dbos_expand(url, templates, params["total"], params["waiting_every"])
    log(f"  loaded {params['total']:,} workflows in {time.perf_counter() - began:.1f} s")
    result.add("bytes on disk per finished 10-step instance", "bytes", per_finished)
    client = DBOSClient(system_database_url=url)
    for status, dbos_status in (("waiting", "PENDING"), ("complete", "SUCCESS")):
        for _ in range(3):
            client.list_workflows(status=dbos_status, limit=50, sort_desc=True)
        for _ in range(params["calls"]):
            began = time.perf_counter()
            page = client.list_workflows(status=dbos_status, limit=50, sort_desc=True)
            result.add(f"list 50 {status}, newest first", "ms", _ms(time.perf_counter() - began))
        if len(page) != 50:
            raise RuntimeError(f"the page of {dbos_status} workflows has {len(page)} of 50")
    client.destroy()
    return result


SCENARIOS = {
    "sequential": sequential,
    "concurrent": concurrent,
    "timers": timers,
    "events": events,
    "idle": idle,
    "scale": scale,
}


def run(scenario: str, url: str, params: dict[str, Any]) -> Result | None:
    if scenario == "event-sender":
        event_sender(url, params)
        return None
    if scenario == "idle-worker":
        idle_worker(url, params)
        return None
    log(f"  DBOS {scenario} on {store_of(url)}: {json.dumps(params)}")
    result = SCENARIOS[scenario](url, params)
    if store_of(url) == "sqlite":
        conn = sqlite3.connect(sqlite_path(url))
        mode, sync = conn.execute("PRAGMA journal_mode").fetchone()[0], conn.execute("PRAGMA synchronous").fetchone()[0]
        conn.close()
        result.note(f"DBOS SQLite file: journal_mode={mode}, synchronous={sync} (2 = FULL)")
    return result
