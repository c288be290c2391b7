"""Retry policies of steps: `Retries`, the resolved `StepConfig`, and the wait before retry n."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal, cast

from stepstone import durations
from stepstone.errors import InvalidInputError

Backoff = Literal["constant", "linear", "exponential"]
BACKOFFS: tuple[Backoff, ...] = ("constant", "linear", "exponential")

DEFAULT_TIMEOUT = timedelta(minutes=10)

MAX_RETRY_WAIT = timedelta(days=365).total_seconds()
"""Seconds at which linear and exponential waits stop growing (unless the delay itself is
longer): past it, a retry is as good as never, and delay * 2**(n-1) would overflow a float
from retry 1025 on."""

_MAX_DOUBLINGS = 1023
"""2.0 ** 1023 is the largest power of two a float holds; enough to pass any ceiling."""


class _Mapping:
    """Lets a config record be read as `cfg.limit` or, as in Cloudflare's API, `cfg["limit"]`."""

    def __getitem__(self, key: str) -> Any:
        if key not in self.__dataclass_fields__:  # type: ignore[attr-defined]
            raise KeyError(key)
        return getattr(self, key)

    def keys(self) -> list[str]:
        return list(self.__dataclass_fields__)  # type: ignore[attr-defined]


@dataclass(frozen=True, eq=False)
class Retries(_Mapping):
    """How a step is retried after a failed attempt. Two are equal when they retry alike:
    the delay compared as a duration, however written ("10 seconds", 10, a timedelta)."""

    limit: int = 5
    """Retries after the first attempt; 0 means one attempt only."""
    delay: Any = "10 seconds"
    """Wait before the first retry: a duration (timedelta, seconds, or "10 seconds")."""
    backoff: Backoff = "exponential"
    """How the wait grows: constant (delay), linear (delay * n), exponential (delay * 2**(n-1))."""

    def __post_init__(self) -> None:
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 0:
            raise InvalidInputError(f"invalid retries limit {self.limit!r}: expected an integer >= 0")
        durations.seconds(self.delay, what="retry delay")
        if self.backoff not in BACKOFFS:
            raise InvalidInputError(f"invalid retries backoff {self.backoff!r}: expected one of {', '.join(BACKOFFS)}")

    @property
    def delay_seconds(self) -> float:
        return durations.seconds(self.delay, what="retry delay")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Retries):
            return NotImplemented
        return (self.limit, self.delay_seconds, self.backoff) == (other.limit, other.delay_seconds, other.backoff)

    def __hash__(self) -> int:
        return hash((self.limit, self.delay_seconds, self.backoff))

    def wait_before_retry(self, n: int) -> float:
        """Seconds to wait before retry number `n` (1-based): constant delay, linear delay * n,
        exponential delay * 2**(n-1).

        A growing wait stops at MAX_RETRY_WAIT (365 days), or at the delay when that is
        longer; a zero delay stays zero. No `n` overflows.
        """
        base = self.delay_seconds
        if self.backoff == "constant" or base == 0:
            return base
        ceiling = max(base, MAX_RETRY_WAIT)
        # Both factors are bounded before they become floats; base * factor may still be
        # inf (a huge delay), which the ceiling takes.
        if self.backoff == "linear":
            return min(base * min(n, 1 << _MAX_DOUBLINGS), ceiling)
        return min(base * 2.0 ** min(n - 1, _MAX_DOUBLINGS), ceiling)


@dataclass(frozen=True)
class StepConfig(_Mapping):
    """The resolved options of one step, as `ctx.config` shows them."""

    retries: Retries = field(default_factory=Retries)
    timeout: timedelta = DEFAULT_TIMEOUT


def resolve_retries(value: object) -> Retries:
    """A `Retries`, a mapping with some of its keys, or None (the defaults)."""
    if value is None:
        return Retries(delay=timedelta(seconds=10))
    if isinstance(value, Retries):
        return Retries(value.limit, durations.parse(value.delay, what="retry delay"), value.backoff)
    if isinstance(value, Mapping):
        unknown = sorted(str(k) for k in value if k not in ("limit", "delay", "backoff"))
        if unknown:
            raise InvalidInputError(
                f"invalid retries option(s) {', '.join(unknown)}: expected only limit, delay, backoff"
            )
        policy = Retries(
            value.get("limit", 5), value.get("delay", "10 seconds"), cast(Backoff, value.get("backoff", "exponential"))
        )
        return Retries(policy.limit, durations.parse(policy.delay, what="retry delay"), policy.backoff)
    raise InvalidInputError(f"invalid retries {value!r}: expected stepstone.Retries or a dict")


_DEFAULTS = StepConfig(resolve_retries(None), DEFAULT_TIMEOUT)
"""The config of a step given no options (most steps): resolved once, shared (it is frozen)."""


def resolve(retries: object = None, timeout: object = None, config: object = None) -> StepConfig:
    """Resolve `step.do`'s options (keywords, or Cloudflare's `config=` dict) into a StepConfig."""
    if retries is None and timeout is None and config is None:
        return _DEFAULTS
    if config is not None:
        if retries is not None or timeout is not None:
            raise InvalidInputError("give either config= or retries=/timeout=, not both")
        if not isinstance(config, Mapping):
            raise InvalidInputError(f"invalid step config {config!r}: expected a dict with retries and timeout")
        unknown = sorted(str(k) for k in config if k not in ("retries", "timeout"))
        if unknown:
            raise InvalidInputError(f"invalid step config key(s) {', '.join(unknown)}: expected retries, timeout")
        retries, timeout = config.get("retries"), config.get("timeout")
    resolved_timeout = (
        DEFAULT_TIMEOUT
        if timeout is None
        else timedelta(seconds=durations.positive_seconds(timeout, what="step timeout"))
    )
    return StepConfig(resolve_retries(retries), resolved_timeout)
