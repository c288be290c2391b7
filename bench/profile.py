"""`--profile`: run a child under py-spy and print where its time goes, function by function.

py-spy samples the process (and its subprocesses, such as the idle scenario's worker)
without pausing it. `--profile cpu` (the default) counts only threads that are running;
`--profile wall` counts waiting threads too, thread by thread, which shows what a
latency-bound scenario waits on (a sleep, a poll, a lock, the database). The raw
"collapsed stacks" go to bench/profiles/*.txt, which flamegraph tools read as is.
Timings taken under the profiler are not comparable with an unprofiled run.
"""

from __future__ import annotations

import collections
import os
import re
import sys
from pathlib import Path

_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def wrap(command: list[str], output: Path, mode: str) -> list[str]:
    output.parent.mkdir(parents=True, exist_ok=True)
    py_spy = os.path.join(os.path.dirname(sys.executable), "py-spy")
    wall = ["--idle", "--threads"] if mode == "wall" else []
    return [py_spy, "record", "--format", "raw", "--rate", "250", "--nonblocking", "--subprocesses", *wall,
            "--output", str(output), "--", *command]  # fmt: skip


def _thread(frame: str) -> str:
    """`thread (1234): stepstone-step_3` -> stepstone-step (threads of one pool together)."""
    name = frame.split(":", 1)[1].strip() if ":" in frame else frame
    return re.sub(r"[_-]?\d+$", "", name) or name


def _name(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    path = match["file"]
    for marker in ("site-packages/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    else:
        path = path.rsplit("/main/", 1)[-1]
    return f"{match['function']} ({path})"


def summarize(path: Path, top: int = 25) -> None:
    """Print the functions with the most samples: on top of the stack (self) and anywhere (total)."""
    if not path.exists():
        print(f"  (no profile at {path})", file=sys.stderr)
        return
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    threads: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        parts = stack.split(";")
        thread = next((_thread(f) for f in parts if f.startswith("thread ")), None)
        frames = [_name(f) for f in parts if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        samples += count
        own[frames[-1]] += count
        for name in set(frames):
            total[name] += count
        if thread is not None:
            threads[thread][frames[-1]] += count
    print(f"\nprofile {path.name}: {samples} samples", file=sys.stderr)
    for title, counter in (("self", own), ("total (self + callees)", total)):
        print(f"  top functions, {title}:", file=sys.stderr)
        for name, count in counter.most_common(top):
            print(f"    {100 * count / max(samples, 1):5.1f}%  {name}", file=sys.stderr)
    for thread, counter in sorted(threads.items(), key=lambda item: -sum(item[1].values())):
        thread_samples = sum(counter.values())
        print(f"  thread {thread} ({100 * thread_samples / max(samples, 1):.1f}% of samples), on top:", file=sys.stderr)
        for name, count in counter.most_common(8):
            print(f"    {100 * count / thread_samples:5.1f}%  {name}", file=sys.stderr)
