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
    text, _ = _encode(value, what)
    _check_keys(value, what)
    return text


def _encode(value: Any, what: str) -> tuple[str, int]:
    """The JSON text of `value` and its size in UTF-8 bytes; TypeError naming `what` if
    `value` is no JSON value.

    The encoder writes text as is (ensure_ascii=False), so a str holding a lone surrogate
    ("\\ud800": Python allows one, UTF-8 and JSON text don't) comes out unencodable, and
    is caught here, where the size is measured: it must not reach the store, whose write
    would then fail on every try.
    """
    try:
        text = _encoder.encode(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(storable_text(f"{what} is not JSON-serializable: {exc}")) from None
    except RecursionError:
        raise TypeError(f"{what} is not JSON-serializable: it is nested too deeply") from None
    if text.isascii():
        return text, len(text)
    try:
        return text, len(text.encode())
    except UnicodeEncodeError as exc:
        where = _unencodable(value) or f"the text {_excerpt(exc.object)}"
        char = exc.object[exc.start : exc.start + 1]
        raise TypeError(
            storable_text(
                f"{what} is not JSON-serializable: {where} holds a lone surrogate ({char!r}), "
                "which UTF-8 cannot encode"
            )
        ) from None


def _unencodable(value: Any) -> str | None:
    """Where in `value` the first str that UTF-8 cannot encode is, e.g. "the string 'a\\ud800'
    at ['tags'][1]" (a dict key: "the key ..."), or None if none is found."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if not _encodable(item):
                return f"the string {_excerpt(item)}" + (f" at {path}" if path else "")
        elif isinstance(item, dict):
            children: list[tuple[Any, str]] = []
            for key, child in item.items():
                if isinstance(key, str) and not _encodable(key):
                    return f"the key {_excerpt(key)}" + (f" in {path}" if path else "")
                children.append((child, f"{path}[{key!r}]"))
            stack.extend(reversed(children))
        elif isinstance(item, list | tuple):
            stack.extend(reversed([(child, f"{path}[{i}]") for i, child in enumerate(item)]))
    return None


def _excerpt(text: str, width: int = 60) -> str:
    """repr() of text (which escapes NUL and lone surrogates), cut to about `width` characters."""
    shown = repr(text)
    return shown if len(shown) <= width else f"{shown[: width - 4]}...{shown[-1]}"


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def is_storable(text: str) -> bool:
    """Whether SQLite and PostgreSQL text columns take `text` as it is: no NUL (PostgreSQL
    refuses it) and no lone surrogate (UTF-8 has no encoding of one)."""
    return "\x00" not in text and (text.isascii() or _encodable(text))


def storable_text(text: str) -> str:
    """`text` made storable in SQLite and PostgreSQL text columns, for messages (errors, a
    user exception's text) that must be recorded whatever they hold: NUL is written as
    \\x00 and each lone surrogate as its escape (\\ud800). Other text is returned unchanged.
    """
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if text.isascii() or _encodable(text):
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _check_keys(value: Any, what: str) -> None:
    if isinstance(value, dict | list | tuple):
        found = _non_str_key(value)
        if found is not None:
            raise TypeError(storable_text(f"{what} is not JSON-serializable: dict key {found[0]!r} is not a str"))


def encode_result(value: Any, limit: int, *, what: str) -> tuple[str, JSON]:
    """A step's result serialized, and the value as it reads back from that text (what a
    replay returns): TypeError naming `what` if it is not JSON (a lone surrogate in a str
    included), else LimitExceededError if the text is over `limit` bytes.

    The read-back copy serves as the check that every dict key is a str (the encoder would
    write 1 as "1" silently): equal to the value, the value had none other. Only when they
    differ (a tuple reads back as a list, too) are the keys looked at one by one.
    """
    text, size = _encode(value, what)
    if size > limit:
        _check_keys(value, what)
        _refuse_size(size, limit, what)
    copy = json.loads(text)
    if copy != value:
        _check_keys(value, what)
    return text, copy


def loads(text: str | None) -> JSON:
    return None if text is None else json.loads(text)


def _refuse_size(size: int, limit: int, what: str) -> None:
    raise LimitExceededError(
        f"{what} is {size} bytes serialized; limit is {limit} (max_value_bytes)",
        limit=limit,
        value=size,
        limit_name="max_value_bytes",
    )


def dumps_input(value: Any, limits: Limits, *, what: str) -> str:
    """Serialize user input (params, event payloads): bad values (not JSON, a lone surrogate
    in a str) raise InvalidInputError naming `what` and the value, over the size limit
    LimitExceededError; either before anything is stored."""
    try:
        text, size = _encode(value, what)
        _check_keys(value, what)
    except TypeError as exc:
        raise InvalidInputError(str(exc)) from None
    if size > limits.max_value_bytes:
        _refuse_size(size, limits.max_value_bytes, what)
    return text


def check_id(value: object, *, what: str = "instance id") -> str:
    """Instance ids and event types: 1-100 characters of [A-Za-z0-9_-], not starting with '-'."""
    if not isinstance(value, str) or ID_PATTERN.fullmatch(value) is None:
        raise InvalidInputError(
            f"invalid {what} {value!r}: expected 1 to 100 characters of letters, digits, '_' "
            "and '-', not starting with '-'"
        )
    return value
