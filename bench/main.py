"""The bench's driver: runs each scenario's children, prints the table and targets, writes results.json."""

# The output prints ranges with an en dash and ratios with a multiplication sign.
# ruff: noqa: RUF001

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import profile
from bench.common import BENCH, DEFAULT_PG, RESULT_PREFIX, ROOT, fresh_database, log, median

SCENARIOS = ["startup", "raw", "sequential", "concurrent", "timers", "events", "idle", "scale"]
STORES = ["sqlite", "postgres"]
SYSTEMS = ["stepstone", "dbos"]

# Sizes of each scenario. Full: the definitions. Quick: a smoke run under two minutes.
FULL: dict[str, dict[str, Any]] = {
    "startup": {"reps": 10, "warmup": True},
    "raw": {"seconds": 2.0, "reps": 3, "warmup": True},
    "sequential": {"count": {"1": 200, "10": 100}, "cap": 6.0, "reps": 3, "warmup": 20},
    "concurrent": {"instances": 100, "steps": 10, "reps": 3},
    "timers": {"instances": 200, "seconds": 1.0, "reps": 3},
    # Per-store overrides under the store's name. Events are sent at random moments over
    # `window` s, so that they land anywhere in a polling cycle (SQLite across processes).
    "events": {"samples": 30, "window": 3.0, "reps": 3, "sqlite": {"samples": 20, "window": 5.0}},
    "idle": {"instances": 10_000, "settle": 3.0, "window": 10.0, "windows": 3},
    "scale": {"total": 1_000_000, "waiting_every": 2, "calls": 30},
}
QUICK: dict[str, dict[str, Any]] = {
    "startup": {"reps": 3, "warmup": False},
    "raw": {"seconds": 0.25, "reps": 3, "warmup": False},
    "sequential": {"count": {"1": 30, "10": 10}, "cap": 2.0, "reps": 3, "warmup": 3},
    "concurrent": {"instances": 20, "steps": 10, "reps": 3},
    "timers": {"instances": 20, "seconds": 0.2, "reps": 3},
    "events": {"samples": 2, "window": 0.2, "reps": 3},
    "idle": {"instances": 200, "settle": 0.5, "window": 0.5, "windows": 3},
    "scale": {"total": 5_000, "waiting_every": 2, "calls": 10},
}
TIMEOUT = {"quick": 120, "full": 900}
"""Seconds one child may take before it is killed and reported as crashed."""


@dataclass
class Job:
    """One child: a system's run of a scenario (variant) on a store."""

    scenario: str
    system: str
    store: str | None
    params: dict[str, Any]
    variant: str = ""
    """Prefix of the metric names (the events scenario runs across processes and in one)."""


@dataclass
class Row:
    scenario: str
    metric: str
    store: str | None
    system: str
    unit: str
    values: list[float]

    @property
    def median(self) -> float:
        return median(self.values)

    def as_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario, "metric": self.metric, "store": self.store, "system": self.system,
            "median": self.median, "min": min(self.values), "max": max(self.values), "unit": self.unit,
            "values": self.values,
        }  # fmt: skip


@dataclass
class Run:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def get(self, scenario: str, metric: str, store: str | None, system: str) -> Row | None:
        for row in self.rows:
            if (row.scenario, row.metric, row.store, row.system) == (scenario, metric, store, system):
                return row
        return None


def plan(args: argparse.Namespace) -> list[Job]:
    sizes = QUICK if args.quick else FULL
    jobs = []
    for scenario in args.only:
        if args.reps and "reps" in sizes[scenario]:
            sizes[scenario]["reps"] = args.reps
        if scenario == "startup":
            jobs += [Job(scenario, system, None, sizes[scenario]) for system in args.systems]
            continue
        for store in args.stores:
            params = {k: v for k, v in sizes[scenario].items() if k not in STORES}
            params.update(sizes[scenario].get(store, {}))
            # SQLite's faster mode, benchmarked apart: the limit and stepstone's throughput.
            normal = (
                [Job(scenario, "stepstone" if scenario != "raw" else "raw", store,
                     {**params, "synchronous": "NORMAL"}, "synchronous=NORMAL: ")]
                if store == "sqlite" and scenario in ("raw", "sequential", "concurrent") and
                ("stepstone" in args.systems or scenario == "raw")
                else []
            )  # fmt: skip
            if scenario == "raw":
                jobs += [Job(scenario, "raw", store, params), *normal]
                continue
            for system in args.systems:
                if scenario == "events":
                    jobs.append(Job(scenario, system, store, {**params, "cross_process": True}, "another process: "))
                    if store == "sqlite":
                        jobs.append(Job(scenario, system, store, {**params, "cross_process": False}, "one process: "))
                else:
                    jobs.append(Job(scenario, system, store, params))
            jobs += normal if scenario != "raw" else []
    return jobs


def run_job(job: Job, args: argparse.Namespace, run: Run) -> None:
    where = job.store or "no database"
    label = f"{job.scenario}{' (' + job.variant.rstrip(': ') + ')' if job.variant else ''}"
    log(f"- {label}: {job.system} on {where}")
    tag = f"{job.scenario}_{job.system}"
    began = time.perf_counter()
    profile_to = None
    try:
        with fresh_database(job.store or "sqlite", tag, args.pg) as url:
            command = [sys.executable, "-m", "bench.child", job.system, job.scenario, url, json.dumps(job.params)]
            if args.profile and job.system == "stepstone" and job.scenario != "startup":
                variant = "-" + job.variant.split()[0] if job.variant else ""
                profile_to = BENCH / "profiles" / f"{job.scenario}-{job.store}{variant}-{args.profile}.txt"
                command = profile.wrap(command, profile_to, args.profile)
            done = subprocess.run(
                command, cwd=ROOT, stdout=subprocess.PIPE, text=True, timeout=TIMEOUT[args.mode], check=False
            )
    except subprocess.TimeoutExpired:
        run.errors.append(f"{label}, {job.system} on {where}: killed after {TIMEOUT[args.mode]} s")
        log(f"  FAILED: timed out after {TIMEOUT[args.mode]} s")
        return
    except Exception as exc:  # no database could be made, say: the other scenarios may still run
        run.errors.append(f"{label}, {job.system} on {where}: {type(exc).__name__}: {exc}")
        log(f"  FAILED: {type(exc).__name__}: {exc}")
        return
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        run.errors.append(f"{label}, {job.system} on {where}: the child exited {done.returncode} (traceback above)")
        log(f"  FAILED: exit code {done.returncode}")
        return
    payload = json.loads(lines[-1].removeprefix(RESULT_PREFIX))
    for metric, entry in payload["metrics"].items():
        run.rows.append(Row(job.scenario, job.variant + metric, job.store, job.system, entry["unit"], entry["values"]))
    for note in payload["notes"]:
        if note not in run.notes:
            run.notes.append(note)
    log(f"  done in {time.perf_counter() - began:.1f} s")
    if profile_to is not None:
        profile.summarize(profile_to)


# -- output -------------------------------------------------------------------------------


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def cell(row: Row | None) -> str:
    if row is None:
        return "-"
    return f"{fmt(row.median)} ({fmt(min(row.values))}–{fmt(max(row.values))})"


def print_table(run: Run) -> None:
    for scenario in SCENARIOS:
        rows = [r for r in run.rows if r.scenario == scenario]
        if not rows:
            continue
        systems = [s for s in ("raw", "stepstone", "dbos") if any(r.system == s for r in rows)]
        both = "stepstone" in systems and "dbos" in systems
        header = [
            "metric",
            "store",
            "unit",
            *(("limit" if s == "raw" else s if s == "stepstone" else "DBOS") for s in systems),
        ]
        if both:
            header.append("stepstone/DBOS")
        keys: list[tuple[str, str | None, str]] = []
        for row in rows:
            key = (row.metric, row.store, row.unit)
            if key not in keys:
                keys.append(key)
        table = [header]
        for metric, store, unit in keys:
            line = [metric, store or "-", unit]
            found = {s: run.get(scenario, metric, store, s) for s in systems}
            line += [cell(found[s]) for s in systems]
            if both:
                ours, theirs = found["stepstone"], found["dbos"]
                line.append(f"{ours.median / theirs.median:.2f}" if ours and theirs and theirs.median else "-")
            table.append(line)
        widths = [max(len(line[i]) for line in table) for i in range(len(header))]
        print(f"\n== {scenario} " + "=" * max(0, sum(widths) + 2 * len(widths) - len(scenario) - 4))
        for i, line in enumerate(table):
            print("  ".join(text.ljust(widths[j]) if j < 3 else text.rjust(widths[j]) for j, text in enumerate(line)))
            if i == 0:
                print("  ".join("-" * w for w in widths))


@dataclass
class Target:
    text: str
    store: str | None
    value: float | None
    threshold: float
    higher_is_better: bool
    unit: str

    @property
    def passed(self) -> bool | None:
        if self.value is None:
            return None
        return self.value >= self.threshold if self.higher_is_better else self.value <= self.threshold

    def as_json(self) -> dict[str, Any]:
        return {
            "target": self.text, "store": self.store, "value": self.value, "threshold": self.threshold,
            "unit": self.unit, "pass": self.passed,
        }  # fmt: skip


def targets(run: Run) -> list[Target]:
    def med(scenario: str, metric: str, store: str | None, system: str) -> float | None:
        row = run.get(scenario, metric, store, system)
        return None if row is None else row.median

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None or b == 0 else a / b

    found = []
    for store in STORES:
        raw1 = med("raw", "INSERT+COMMIT/s, 1 conn", store, "raw")
        found.append(
            Target(
                "sequential 10-step steps/s ÷ raw 1-conn commits/s",
                store,
                ratio(med("sequential", "10-step steps/s", store, "stepstone"), raw1),
                0.7,
                True,
                "×",
            )
        )
        # The same target read as "a step costs about one commit": the steps one instance
        # runs per second once its own start and end are set apart (1 / per-step overhead).
        overhead = med("sequential", "per-step overhead (10-step - 1-step)/9", store, "stepstone")
        found.append(
            Target(
                "sequential steps/s within an instance (1000 / per-step overhead ms) ÷ raw 1-conn commits/s",
                store,
                ratio(None if not overhead or overhead <= 0 else 1000 / overhead, raw1),
                0.7,
                True,
                "×",
            )
        )
        found.append(
            Target(
                "concurrent steps/s ÷ raw 1-conn commits/s",
                store,
                ratio(med("concurrent", "steps/s", store, "stepstone"), raw1),
                1.5,
                True,
                "×",
            )
        )
        for scenario, metric in (
            ("sequential", "1-step instances/s"),
            ("sequential", "10-step steps/s"),
            ("concurrent", "steps/s"),
        ):
            ours, theirs = med(scenario, metric, store, "stepstone"), med(scenario, metric, store, "dbos")
            found.append(Target(f"{scenario} {metric} ÷ DBOS's", store, ratio(ours, theirs), 3.0, True, "×"))
        found.append(
            Target(
                "timers: wake-up lateness p50",
                store,
                med("timers", "wake-up lateness p50", store, "stepstone"),
                5.0,
                False,
                "ms",
            )
        )
        found.append(
            Target(
                "timers: wake-up lateness p99",
                store,
                med("timers", "wake-up lateness p99", store, "stepstone"),
                50.0,
                False,
                "ms",
            )
        )
        variant, limit = ("one process: ", 5.0) if store == "sqlite" else ("another process: ", 15.0)
        found.append(
            Target(
                f"events ({variant.rstrip(': ')}): send_event to next step p50",
                store,
                med("events", variant + "send_event to next step p50", store, "stepstone"),
                limit,
                False,
                "ms",
            )
        )
        found.append(Target("idle: worker CPU", store, med("idle", "worker CPU", store, "stepstone"), 1.0, False, "%"))
        found.append(
            Target("idle: worker RSS", store, med("idle", "worker RSS", store, "stepstone"), 150.0, False, "MB")
        )
        for status in ("waiting", "complete"):
            metric = f"list 50 {status}, newest first"
            found.append(Target(f"scale: {metric}", store, med("scale", metric, store, "stepstone"), 20.0, False, "ms"))
    found.append(
        Target(
            "start-up: import stepstone",
            None,
            med("startup", "import wall time", None, "stepstone"),
            150.0,
            False,
            "ms",
        )
    )
    return [t for t in found if t.value is not None]  # fmt: skip


def print_targets(found: list[Target], quick: bool) -> None:
    print("\n== targets (issue 5) " + "=" * 60)
    if quick:
        print("(quick run: reduced sizes, so these are indicative only)")
    for t in found:
        sign = "≥" if t.higher_is_better else "≤"
        verdict = "PASS" if t.passed else "FAIL"
        print(f"{verdict}  {t.text} [{t.store or '-'}]: {fmt(t.value)} {t.unit} (target {sign} {fmt(t.threshold)})")


def versions(pg_server: str) -> dict[str, Any]:
    import sqlite3
    from importlib import metadata

    import psycopg

    found: dict[str, Any] = {"python": platform.python_version(), "sqlite": sqlite3.sqlite_version}
    for package in ("stepstone", "dbos", "psycopg"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    try:
        with psycopg.connect(pg_server) as conn:
            row = conn.execute(
                "SELECT current_setting('server_version'), current_setting('synchronous_commit')"
            ).fetchone()
            found["postgres"], found["postgres_synchronous_commit"] = row if row else (None, None)
    except psycopg.Error:
        found["postgres"] = None
    try:
        found["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                      text=True, check=False).stdout.strip() or None  # fmt: skip
    except OSError:
        found["git"] = None
    return found


def machine() -> dict[str, Any]:
    model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = None
    with contextlib.suppress(ValueError, OSError):
        memory = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return {"cpus": os.cpu_count(), "cpu_model": model, "memory_gib": memory, "system": platform.platform()}


# -- entry point --------------------------------------------------------------------------


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="reduced sizes: a smoke run in under two minutes")
    parser.add_argument("--only", help=f"comma-separated scenarios (default: all): {','.join(SCENARIOS)}")
    parser.add_argument("--store", choices=[*STORES, "both"], default="both")
    parser.add_argument("--system", choices=[*SYSTEMS, "both"], default="both")
    parser.add_argument("--reps", type=int, help="repetitions per scenario (default 3; at least 3 for medians)")
    parser.add_argument("--pg", default=os.environ.get("BENCH_PG", DEFAULT_PG),
                        help="a PostgreSQL server URL (each scenario makes a database there, drops it)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=BENCH / "results.json", help="where to write the results")
    parser.add_argument("--profile", nargs="?", const="cpu", choices=["cpu", "wall"],
                        help="run stepstone's children under py-spy (cpu: running threads; wall: waiting ones "
                        "too, per thread); profiles to bench/profiles/ (slows them)")  # fmt: skip
    args = parser.parse_args(argv)
    args.mode = "quick" if args.quick else "full"
    args.only = SCENARIOS if not args.only else [s.strip() for s in args.only.split(",")]
    unknown = [s for s in args.only if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    args.stores = STORES if args.store == "both" else [args.store]
    args.systems = SYSTEMS if args.system == "both" else [args.system]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    started = datetime.datetime.now(datetime.UTC)
    began = time.perf_counter()
    run = Run()
    load_before = os.getloadavg()
    log(f"stepstone bench ({args.mode}): {', '.join(args.only)} on {', '.join(args.stores)}")
    if load_before[0] > 0.5:
        log(f"note: the machine is busy (load average {load_before[0]:.2f}): expect noisy figures")
    for job in plan(args):
        run_job(job, args, run)
    elapsed = time.perf_counter() - began
    print_table(run)
    found = targets(run)
    print_targets(found, args.quick)
    load_after = os.getloadavg()
    notes = [
        "medians of the repetitions, (min–max); latencies are per instance or per event, "
        "percentiles within a repetition",
        f"load average (1 min) {load_before[0]:.2f} before the run, {load_after[0]:.2f} after: other work on the "
        "machine disturbs the figures",
        "stepstone/DBOS is the quotient of the medians (for ms, below 1 means stepstone is faster)",
        *run.notes,
    ]
    print("\nnotes:\n" + "\n".join(f"- {n}" for n in notes))
    if run.errors:
        print("\nerrors:\n" + "\n".join(f"- {e}" for e in run.errors))
    print(f"\n{args.mode} run took {elapsed:.0f} s; results in {args.out}")
    document = {
        "meta": {
            "mode": args.mode, "started": started.isoformat(timespec="seconds"), "seconds": round(elapsed, 1),
            "command": " ".join(["bench/run", *sys.argv[1:]]), "machine": machine(), "versions": versions(args.pg),
            "load_average": {"before": load_before, "after": load_after},
            "sizes": {s: (QUICK if args.quick else FULL)[s] for s in args.only},
        },
        "results": [row.as_json() for row in run.rows],
        "targets": [t.as_json() for t in found],
        "notes": notes,
        "errors": run.errors,
    }  # fmt: skip
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    return 1 if run.errors else 0
