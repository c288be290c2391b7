"""The scenarios, run with stepstone (each in a child process of its own, on a fresh database)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from typing import Any

from bench import bulk
from bench.common import ROOT, Result, log, percentile, store_of
from bench.ss_workflows import WORKFLOWS, Sleeper, Steps, Waiter
from stepstone import Engine


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def _options(params: dict[str, Any]) -> dict[str, Any]:
    """Store options a variant of a scenario asks for (`synchronous` on SQLite)."""
    return {"synchronous": params["synchronous"]} if "synchronous" in params else {}


# -- sequential ---------------------------------------------------------------------------


async def _sequential_batch(engine: Engine, steps: int, count: int, cap: float) -> tuple[float, list[float]]:
    """Run instances of a `steps`-step workflow one after another; (seconds, latency of each)."""
    handle = engine.workflow(Steps)
    latencies: list[float] = []
    began = time.perf_counter()
    while len(latencies) < count and time.perf_counter() - began < cap:
        start = time.perf_counter()
        instance = await handle.create(params={"steps": steps})
        status = await instance.wait(timeout=60)
        latencies.append(time.perf_counter() - start)
        if status.status != "complete":
            raise RuntimeError(f"instance ended {status.status}: {status.error}")
    return time.perf_counter() - began, latencies


async def sequential(url: str, params: dict[str, Any]) -> Result:
    result = Result()
    async with Engine(url, workflows=WORKFLOWS, **_options(params)) as engine:
        await _sequential_batch(engine, 1, params["warmup"], 30)
        await _sequential_batch(engine, 10, params["warmup"], 30)
        for _ in range(params["reps"]):
            per_instance = {}
            for steps in (1, 10):
                seconds, latencies = await _sequential_batch(engine, steps, params["count"][str(steps)], params["cap"])
                n = len(latencies)
                per_instance[steps] = seconds / n
                result.add(f"{steps}-step instances/s", "instances/s", n / seconds)
                result.add(f"{steps}-step steps/s", "steps/s", n * steps / seconds)
                result.add(f"{steps}-step latency p50", "ms", _ms(percentile(latencies, 50)))
                result.add(f"{steps}-step latency p99", "ms", _ms(percentile(latencies, 99)))
            result.add("per-step overhead (10-step - 1-step)/9", "ms", _ms((per_instance[10] - per_instance[1]) / 9))
    return result


# -- concurrent ---------------------------------------------------------------------------


async def concurrent(url: str, params: dict[str, Any]) -> Result:
    result = Result()
    instances, steps = params["instances"], params["steps"]
    async with Engine(url, workflows=WORKFLOWS, **_options(params)) as engine:
        handle = engine.workflow(Steps)
        for rep in range(params["reps"] + 1):  # the first round warms up
            began = time.perf_counter()
            batch = await handle.create_batch([{"params": {"steps": steps}} for _ in range(instances)])
            statuses = await asyncio.gather(*(instance.wait(timeout=120) for instance in batch))
            seconds = time.perf_counter() - began
            bad = [s for s in statuses if s.status != "complete"]
            if bad:
                raise RuntimeError(f"{len(bad)} instances did not complete: {bad[0]}")
            if rep > 0:
                result.add("steps/s", "steps/s", instances * steps / seconds)
                result.add("instances/s", "instances/s", instances / seconds)
    return result


# -- timers -------------------------------------------------------------------------------


async def timers(url: str, params: dict[str, Any]) -> Result:
    result = Result()
    async with Engine(url, workflows=WORKFLOWS) as engine:
        handle = engine.workflow(Sleeper)
        for _ in range(params["reps"]):
            batch = await handle.create_batch(
                [{"params": {"seconds": params["seconds"]}} for _ in range(params["instances"])]
            )
            # Every instance ends before any history is read: reads must not load the
            # process while the timers fire.
            statuses = await asyncio.gather(*(instance.wait(timeout=60 + params["seconds"]) for instance in batch))
            lateness = []
            for instance, status in zip(batch, statuses, strict=True):
                if status.status != "complete":
                    raise RuntimeError(f"instance ended {status.status}: {status.error}")
                detail = await instance.describe()
                (nap,) = [s for s in detail.steps if s.kind == "sleep"]
                assert nap.due is not None
                lateness.append(float(status.output) - nap.due.timestamp())  # type: ignore[arg-type]
            result.add("wake-up lateness p50", "ms", _ms(percentile(lateness, 50)))
            result.add("wake-up lateness p99", "ms", _ms(percentile(lateness, 99)))
    return result


# -- events -------------------------------------------------------------------------------


async def _all_waiting(engine: Engine, workflow: str, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        counts = await engine.store.status_counts(workflow)
        if counts.get("waiting", 0) >= count:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {counts} of {count} instances of {workflow} are waiting")
        await asyncio.sleep(0.02)


class _Sender:
    """Another process that sends events on request; each send is timed there, just before the call."""

    async def start(self, url: str) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.child", "stepstone", "event-sender", url, "{}",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=ROOT,
        )  # fmt: skip
        assert self.proc.stdout is not None
        ready = await asyncio.wait_for(self.proc.stdout.readline(), 60)
        if ready.strip() != b"ready":
            raise RuntimeError(f"event sender did not start: {ready!r}")

    async def send(self, schedule: dict[str, Any]) -> list[float]:
        """Send `go` to each of `ids` at its offset (s) from now; the times (epoch s) just before each send."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(schedule).encode() + b"\n")
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), 120)
        return [float(t) for t in json.loads(line)]

    async def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        await asyncio.wait_for(self.proc.wait(), 30)


def schedule(ids: list[str], window: float, rng: random.Random) -> dict[str, Any]:
    """When to send each event: at random moments over `window` seconds (offsets sorted)."""
    return {"ids": ids, "offsets": sorted(rng.uniform(0, window) for _ in ids)}


async def _send_scheduled(engine: Engine, workflow: str, plan: dict[str, Any]) -> list[float]:
    handle = engine.workflow(workflow)
    instances = [await handle.get(instance_id) for instance_id in plan["ids"]]
    loop = asyncio.get_running_loop()
    start = loop.time()
    sent = []
    for instance, offset in zip(instances, plan["offsets"], strict=True):
        await asyncio.sleep(max(0.0, start + offset - loop.time()))
        sent.append(time.time())
        await instance.send_event("go", {"sent": sent[-1]})
    return sent


async def events(url: str, params: dict[str, Any]) -> Result:
    """`send_event` (from another process, or this one) until the next step starts.

    `samples` instances wait for an event; the events are sent at random moments over
    `window` seconds, as independent senders would, so that they land anywhere in a
    polling worker's cycle (sent one right after the other, each would land at the
    same point of it).
    """
    result = Result()
    cross = params["cross_process"]
    rng = random.Random(5)
    async with Engine(url, workflows=WORKFLOWS) as engine:
        handle = engine.workflow(Waiter)
        sender = _Sender()
        if cross:
            await sender.start(url)
        for _ in range(params["reps"]):
            batch = await handle.create_batch([{} for _ in range(params["samples"])])
            await _all_waiting(engine, Waiter.name, len(batch), 60)
            plan = schedule([i.id for i in batch], params["window"], rng)
            if cross:
                sent = await sender.send(plan)
            else:
                sent = await _send_scheduled(engine, Waiter.name, plan)
            statuses = await asyncio.gather(*(instance.wait(timeout=60) for instance in batch))
            latencies = [float(s.output) - t for s, t in zip(statuses, sent, strict=True)]  # type: ignore[arg-type]
            result.add("send_event to next step p50", "ms", _ms(percentile(latencies, 50)))
            result.add("send_event to next step p99", "ms", _ms(percentile(latencies, 99)))
        if cross:
            await sender.stop()
    return result


async def event_sender(url: str, params: dict[str, Any]) -> None:
    """The other process of the events scenario: reads schedules, sends `go` events, prints the times."""
    async with Engine(url, worker=False) as engine:
        loop = asyncio.get_running_loop()
        print("ready", flush=True)
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            sent = await _send_scheduled(engine, Waiter.name, json.loads(line))
            print(json.dumps(sent), flush=True)


# -- idle ---------------------------------------------------------------------------------


async def idle(url: str, params: dict[str, Any]) -> Result:
    """`instances` instances sleeping an hour; a `stepstone worker` process's CPU and RSS meanwhile."""
    import psutil

    result = Result()
    worker = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "stepstone"), "worker", "bench.ss_workflows", "--db", url],
        cwd=ROOT,
    )
    try:
        async with Engine(url, workflows=WORKFLOWS, worker=False) as client:
            handle = client.workflow(Steps)
            began = time.perf_counter()
            remaining = params["instances"]
            while remaining:
                chunk = min(remaining, 1000)
                await handle.create_batch([{"params": {"steps": 0, "sleep": 3600}} for _ in range(chunk)])
                remaining -= chunk
            await _all_waiting(client, Steps.name, params["instances"], 600)
            log(f"  {params['instances']} instances asleep after {time.perf_counter() - began:.1f} s")
        _measure_process(psutil.Process(worker.pid), params, result)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
    return result


def _cpu_seconds(proc: Any) -> float:
    """CPU time used by all threads of `proc`: nanoseconds from /proc/PID/task/*/schedstat, else psutil's ticks."""
    try:
        total = 0
        for task in os.listdir(f"/proc/{proc.pid}/task"):
            with (
                contextlib.suppress(FileNotFoundError, ProcessLookupError),
                open(f"/proc/{proc.pid}/task/{task}/schedstat") as stat,
            ):
                total += int(stat.read().split()[0])
        return total / 1e9
    except OSError:
        times = proc.cpu_times()
        return float(times.user + times.system)


def _measure_process(proc: Any, params: dict[str, Any], result: Result) -> None:
    """CPU % (of one core), RSS and threads of `proc` over `windows` consecutive windows of `window` s."""
    time.sleep(params["settle"])
    for _ in range(params["windows"]):
        cpu = _cpu_seconds(proc)
        began = time.perf_counter()
        time.sleep(params["window"])
        used = _cpu_seconds(proc) - cpu
        seconds = time.perf_counter() - began
        result.add("worker CPU", "%", 100.0 * used / seconds)
        result.add("worker RSS", "MB", proc.memory_info().rss / 2**20)
    result.add("worker threads", "threads", proc.num_threads())


# -- scale --------------------------------------------------------------------------------


async def scale(url: str, params: dict[str, Any]) -> Result:
    """`total` instances (finished 10-step ones and waiting ones): list a page; bytes per instance."""
    result = Result()
    async with Engine(url, workflows=WORKFLOWS) as engine:
        handle = engine.workflow(Steps)
        finished = await handle.create(params={"steps": 10})
        await finished.wait(timeout=60)
        waiting = await handle.create(params={"steps": 1, "sleep": 3600})
        await _all_waiting(engine, Steps.name, 1, 60)
        templates = {"finished": finished.id, "waiting": waiting.id}
    began = time.perf_counter()
    per_finished = bulk.stepstone_expand(url, templates, params["total"], params["waiting_every"])
    log(f"  loaded {params['total']:,} instances in {time.perf_counter() - began:.1f} s")
    result.add("bytes on disk per finished 10-step instance", "bytes", per_finished)
    async with Engine(url, worker=False) as client:
        handle = client.workflow(Steps.name)
        for status in ("waiting", "complete"):
            for _ in range(3):
                await handle.list(status=status, limit=50)
            for _ in range(params["calls"]):
                began = time.perf_counter()
                page = await handle.list(status=status, limit=50)
                result.add(f"list 50 {status}, newest first", "ms", _ms(time.perf_counter() - began))
            if len(page) != 50:
                raise RuntimeError(f"the page of {status} instances has {len(page)} of 50")
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
        asyncio.run(event_sender(url, params))
        return None
    log(f"  stepstone {scenario} on {store_of(url)}: {json.dumps(params)}")
    return asyncio.run(SCENARIOS[scenario](url, params))
