"""Start-up: wall time of `python -c "import X"` and of the command line's `--help`."""

from __future__ import annotations

import compileall
import os
import subprocess
import sys
import time
from typing import Any

import stepstone
from bench.common import Result

COMMANDS = {
    "stepstone": {"import": [sys.executable, "-c", "import stepstone"], "--help": ["stepstone", "--help"]},
    "dbos": {"import": [sys.executable, "-c", "import dbos"], "--help": ["dbos", "--help"]},
}


def _wall(command: list[str]) -> float:
    began = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - began


def run(system: str, params: dict[str, Any]) -> Result:
    result = Result()
    bin_dir = os.path.dirname(sys.executable)
    if system == "stepstone":
        # pip compiles an installed wheel's bytecode; this editable install is compiled here,
        # so that the import below reads bytecode as a user's would, instead of compiling
        # every module on every start (as it would with PYTHONDONTWRITEBYTECODE set).
        compileall.compile_dir(os.path.dirname(stepstone.__file__), quiet=1)
        bare = [_wall([sys.executable, "-c", "pass"]) for _ in range(params["reps"])]
        result.note(
            f"start-up: the bare interpreter (python -c pass) takes {1000 * sorted(bare)[len(bare) // 2]:.0f} ms"
        )
    for label, command in COMMANDS[system].items():
        if not command[0].startswith("/"):
            command = [os.path.join(bin_dir, command[0]), *command[1:]]
        if params["warmup"]:
            _wall(command)  # fills the page cache (pip compiled the bytecode at install)
        for _ in range(params["reps"]):
            result.add(f"{label} wall time", "ms", 1000 * _wall(command))
    return result
