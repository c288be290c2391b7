"""Durations and points in time as users write them, turned into `timedelta` / `datetime`.

A duration is a `timedelta`, a number of seconds, or a string `"<number> <unit>"`
(`"10 minutes"`, `"0.5s"`, `"3 Days"`). A point in time is an aware `datetime` or a
number of epoch seconds.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta

from stepstone.errors import InvalidInputError

_UNIT_SECONDS = {
    "ms": 0.001, "millisecond": 0.001, "milliseconds": 0.001,
    "s": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
    "w": 604800.0, "week": 604800.0, "weeks": 604800.0,
}  # fmt: skip

# "<number> <unit>", the one space optional (SPEC §2): no other whitespace, before, between or after.
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+) ?([a-z]+)", re.IGNORECASE | re.ASCII)

_EXPECTED = (
    'expected a timedelta, a number of seconds, or a string like "10 seconds" (units: ms, s, m, h, d, w or their names)'
)


MAX_YEARS = 1000
MAX_SECONDS = MAX_YEARS * 365.25 * 86400.0
"""The longest duration taken: a timer or timeout that long still ends at a time a
`datetime` can show (before year 10000), wherever it starts."""

_EPOCH_RANGE = (datetime(1, 1, 2, tzinfo=UTC).timestamp(), datetime(9999, 12, 30, tzinfo=UTC).timestamp())


def parse(value: object, *, what: str = "duration") -> timedelta:
    """Turn a user-supplied duration into a non-negative `timedelta`.

    Raises `InvalidInputError` naming the bad value for anything else.
    """
    return timedelta(seconds=seconds(value, what=what))


def seconds(value: object, *, what: str = "duration") -> float:
    """Like `parse`, but returns the duration as float seconds."""
    if isinstance(value, timedelta):
        result = value.total_seconds()
    elif isinstance(value, bool):
        raise InvalidInputError(f"invalid {what} {value!r}: {_EXPECTED}")
    elif isinstance(value, int | float):
        result = _float(value, f"invalid {what}", f"expected a non-negative duration of at most {MAX_YEARS} years")
    elif isinstance(value, str):
        match = _DURATION.fullmatch(value)
        unit = match.group(2).lower() if match else ""
        if match is None or unit not in _UNIT_SECONDS:
            raise InvalidInputError(f"invalid {what} {value!r}: {_EXPECTED}")
        result = float(match.group(1)) * _UNIT_SECONDS[unit]
    else:
        raise InvalidInputError(f"invalid {what} {value!r}: {_EXPECTED}")
    if math.isnan(result) or math.isinf(result) or result < 0:
        raise InvalidInputError(f"invalid {what} {value!r}: must be a finite, non-negative duration")
    if result > MAX_SECONDS:
        raise InvalidInputError(f"invalid {what} {value!r}: too long; at most {MAX_YEARS} years")
    return result


def positive_seconds(value: object, *, what: str) -> float:
    """A duration that must be greater than zero (timeouts)."""
    result = seconds(value, what=what)
    if result <= 0:
        raise InvalidInputError(f"invalid {what} {value!r}: must be greater than zero")
    return result


def epoch_seconds(when: object) -> float:
    """Turn a point in time (aware `datetime` or epoch seconds) into epoch seconds."""
    if isinstance(when, datetime):
        if when.tzinfo is None or when.utcoffset() is None:
            raise InvalidInputError(
                f"invalid time {when!r}: a naive datetime is ambiguous; "
                "expected an aware datetime (e.g. datetime.now(timezone.utc))"
            )
        return when.timestamp()
    if isinstance(when, int | float) and not isinstance(when, bool):
        result = _float(when, "invalid time", "epoch seconds outside the years 1 to 9999")
        if _EPOCH_RANGE[0] <= result <= _EPOCH_RANGE[1]:
            return result
        if math.isfinite(result):
            raise InvalidInputError(f"invalid time {when!r}: epoch seconds outside the years 1 to 9999")
    raise InvalidInputError(f"invalid time {when!r}: expected an aware datetime or a number of epoch seconds")


def _float(number: int | float, invalid: str, why: str) -> float:
    """The number as a float; InvalidInputError (`invalid`, the number, `why`) for an integer
    too large for one."""
    try:
        return float(number)
    except OverflowError:  # (only an int can be too large)
        assert isinstance(number, int)
        # Python refuses to write out an integer of more than 4,300 digits: shown by its size.
        shown = repr(number) if number.bit_length() < 10_000 else f"<an integer of {number.bit_length()} bits>"
        raise InvalidInputError(f"{invalid} {shown}: {why}") from None


def to_datetime(epoch: float) -> datetime:
    """Epoch seconds to an aware UTC datetime."""
    return datetime.fromtimestamp(epoch, UTC)
