"""JSON in and out of the store, and the size and length limits on what goes in."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from stepstone.errors import InvalidInputError, LimitExceededError

JSON = Any
"""A JSON value: None, bool, int, float, str, list of JSON, dict of str to JSON."""

MiB = 1024 * 1024

ID_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,99}")


@dataclass(frozen=True)
class Limits:
    """Limits on what an instance may hold. Each is configurable on the Engine."""

    max_value_bytes: int = MiB
    """Largest serialized step result, params or event payload, in bytes."""
    max_step_name: int = 256
    """Longest step name, in characters."""
    max_steps: int = 10_000
    """Most steps per instance (`do` and `wait_for_event`; sleeps don't count)."""

    def __post_init__(self) -> None:
        for name in ("max_value_bytes", "max_step_name", "max_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"invalid Limits {name}={value!r}: expected a positive integer")


_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _non_str_key(value: Any) -> tuple[Any] | None:
    """The first dict key in `value` that is not a str (in a 1-tuple: it may be None), or None."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    return (key,)
                if isinstance(child, dict | list | tuple):
                    stack.append(child)
        elif isinstance(item, list | tuple):
            stack.extend(child for child in item if isinstance(child, dict | list | tuple))
    return None


def dumps(value: Any, *, what: str) -> str:
    """Serialize a JSON value, raising TypeError naming `what` if it is not one."""
    text = _encode(value, what)
    _check_keys(value, what)
    return text


def _encode(value: Any, what: str) -> str:
    try:
        return _encoder.encode(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what} is not JSON-serializable: {exc}") from None


def _check_keys(value: Any, what: str) -> None:
    if isinstance(value, dict | list | tuple):
        found = _non_str_key(value)
        if found is not None:
            raise TypeError(f"{what} is not JSON-serializable: dict key {found[0]!r} is not a str")


def encode_result(value: Any, limit: int, *, what: str) -> tuple[str, JSON]:
    """A step's result serialized, and the value as it reads back from that text (what a
    replay returns): TypeError naming `what` if it is not JSON, else LimitExceededError if
    the text is over `limit` bytes.

    The read-back copy serves as the check that every dict key is a str (the encoder would
    write 1 as "1" silently): equal to the value, the value had none other. Only when they
    differ (a tuple reads back as a list, too) are the keys looked at one by one.
    """
    text = _encode(value, what)
    if _size(text) > limit:
        _check_keys(value, what)
        check_size(text, limit, what=what)
    copy = json.loads(text)
    if copy != value:
        _check_keys(value, what)
    return text, copy


def loads(text: str | None) -> JSON:
    return None if text is None else json.loads(text)


def _size(text: str) -> int:
    """Bytes in UTF-8."""
    return len(text) if text.isascii() else len(text.encode())


def check_size(text: str, limit: int, *, what: str) -> None:
    size = _size(text)
    if size > limit:
        raise LimitExceededError(
            f"{what} is {size} bytes serialized; limit is {limit} (max_value_bytes)",
            limit=limit,
            value=size,
            limit_name="max_value_bytes",
        )


def dumps_input(value: Any, limits: Limits, *, what: str) -> str:
    """Serialize user input (params, event payloads): bad values raise InvalidInputError."""
    try:
        text = dumps(value, what=what)
    except TypeError as exc:
        raise InvalidInputError(str(exc)) from None
    check_size(text, limits.max_value_bytes, what=what)
    return text


def check_id(value: object, *, what: str = "instance id") -> str:
    """Instance ids and event types: 1-100 characters of [A-Za-z0-9_-], not starting with '-'."""
    if not isinstance(value, str) or ID_PATTERN.fullmatch(value) is None:
        raise InvalidInputError(
            f"invalid {what} {value!r}: expected 1 to 100 characters of letters, digits, '_' "
            "and '-', not starting with '-'"
        )
    return value
