"""Which control operations apply in which status, and what they lead to (SPEC §3 table).

Pure rules shared by both stores: a store reads the instance's status inside its
transaction, asks `plan`, and applies the `Transition` (or raises, changing nothing).
"""

from __future__ import annotations

from dataclasses import dataclass

from stepstone.errors import InvalidStateError
from stepstone.store.base import ControlOp, Status


@dataclass(frozen=True)
class Transition:
    status: Status
    paused_status: str | None = None
    """For a pause: the status to return to on resume."""
    revoke_lease: bool = False
    """The worker running the instance (if any) loses it: its next write is refused."""
    reset: bool = False
    """Restart: output, error and timers are cleared (and the history, from a step on)."""


_ALLOWED: dict[ControlOp, frozenset[str]] = {
    "pause": frozenset({"queued", "running", "waiting"}),
    "resume": frozenset({"paused", "waitingForPause"}),
    "terminate": frozenset({"queued", "running", "waiting", "paused", "waitingForPause"}),
    "restart": frozenset(
        {"queued", "running", "paused", "errored", "terminated", "complete", "waiting", "waitingForPause", "unknown"}
    ),
}


def plan(op: ControlOp, status: str, paused_status: str | None) -> Transition:
    """The transition `op` makes from `status`; InvalidStateError if it does not apply."""
    if status not in _ALLOWED[op]:
        allowed = ", ".join(sorted(_ALLOWED[op]))
        raise InvalidStateError(f"cannot {op} an instance that is {status}; {op} applies to: {allowed}")
    if op == "pause":
        if status == "running":
            return Transition("waitingForPause")
        return Transition("paused", paused_status=status)
    if op == "resume":
        if status == "waitingForPause":
            return Transition("running")
        return Transition("waiting" if paused_status == "waiting" else "queued")
    if op == "terminate":
        return Transition("terminated", revoke_lease=True)
    return Transition("queued", revoke_lease=True, reset=True)


def can_receive_events(status: str) -> bool:
    return status not in ("complete", "errored", "terminated")


def end_status(current: str, end: str, wake_at: float | None) -> tuple[str, str | None]:
    """(status, paused_status) after a run stops with `end` while the instance is `current`.

    A pause asked while a step ran (`waitingForPause`) takes effect when the run stops;
    a run that stopped to pause finds the pause withdrawn if the instance was resumed
    meanwhile, and simply goes on waiting or queued.
    """
    resume_as = "waiting" if wake_at is not None else "queued"
    if current == "waitingForPause" and end in ("waiting", "queued", "paused"):
        return "paused", resume_as
    if end == "paused":
        return resume_as, None
    return end, None
