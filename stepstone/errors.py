"""Every exception stepstone raises, in one tree.

    StepstoneError
    ├── InvalidInputError (ValueError)     bad id, duration, option, non-JSON value
    │   └── LimitExceededError             a value over a configured limit
    ├── WorkflowNotFoundError (LookupError)
    ├── InstanceNotFoundError (LookupError)
    │   └── NoSuchIdError (also an InvalidInputError)   get() of a malformed id
    ├── InstanceExistsError
    ├── InvalidStateError                  operation not allowed in the instance's state
    ├── NonRetryableError                  raised by user code: stop retrying this step
    ├── StepTimeoutError (TimeoutError)    one attempt ran over its timeout
    ├── StepFailed                         a step failed for good (raised by step.do)
    │   └── WaitTimeout                    wait_for_event ran out of time
    ├── LeaseLostError                     (internal) another worker owns the instance now
    └── StoreClosedError                   the store is not open, or closing

No exception stops a run that suspends (to be resumed later): its tasks are cancelled
(see replay.py), so that no `except Exception` and no `gather(..., return_exceptions=True)`
in a workflow can take that for a value and run on.
"""

from __future__ import annotations

from typing import Any


class StepstoneError(Exception):
    """Base class of every stepstone exception."""


class InvalidInputError(StepstoneError, ValueError):
    """A value given to stepstone is malformed; the message names it and what was expected."""


class LimitExceededError(InvalidInputError):
    """A value breaks one of the engine's `Limits`."""

    def __init__(self, message: str, *, limit: int, value: int, limit_name: str) -> None:
        super().__init__(message)
        self.limit = limit
        """The limit that was broken, e.g. 1048576 (bytes)."""
        self.value = value
        """The offending figure (a size, a length or a count)."""
        self.limit_name = limit_name
        """Which limit, as named in `Limits`: max_value_bytes, max_step_name or max_steps."""

    def __reduce__(self) -> Any:
        return (_rebuild_limit_error, (str(self), self.limit, self.value, self.limit_name))


def _rebuild_limit_error(message: str, limit: int, value: int, limit_name: str) -> LimitExceededError:
    return LimitExceededError(message, limit=limit, value=value, limit_name=limit_name)


class WorkflowNotFoundError(StepstoneError, LookupError):
    """No workflow of that name is registered with this engine or recorded in the store."""


class InstanceNotFoundError(StepstoneError, LookupError):
    """No instance with that id exists in that workflow."""


class NoSuchIdError(InvalidInputError, InstanceNotFoundError):
    """An instance asked for by an id no instance can have (`get("not an id!")`): bad input,
    and so also not found; either `except` catches it."""


class InstanceExistsError(StepstoneError):
    """An instance with that id already exists in that workflow."""


class InvalidStateError(StepstoneError):
    """The operation is not allowed in the instance's current status."""


class NonRetryableError(StepstoneError):
    """Raise it (or a subclass) from a step function to fail the step without retrying."""


class StepTimeoutError(StepstoneError, TimeoutError):
    """One attempt of a step ran over its timeout."""


class StepFailed(StepstoneError):
    """A step failed for good: its retries are spent or its error was not retryable.

    `error_type` is the original exception's `module.QualifiedName` (`builtins.`
    dropped), `message` its text. Raised again, from the record, on every replay.
    """

    def __init__(self, step: str, error_type: str, message: str) -> None:
        super().__init__(f"step {step!r} failed: {error_type}: {message}")
        self.step = step
        """The name of the step that failed."""
        self.error_type = error_type
        """`module.QualifiedName` of the original exception, e.g. `"ValueError"`."""
        self.message = message
        """The original exception's text."""

    def __reduce__(self) -> Any:
        return (type(self), (self.step, self.error_type, self.message))


class WaitTimeout(StepFailed):
    """`step.wait_for_event` timed out before a matching event arrived."""

    def __init__(self, step: str, error_type: str = "stepstone.WaitTimeout", message: str = "") -> None:
        super().__init__(step, error_type, message or f"no event arrived for step {step!r}")


class LeaseLostError(StepstoneError):
    """The worker no longer owns the instance (taken over, terminated, restarted or deleted)."""


class StoreClosedError(StepstoneError):
    """The store is not open: never opened, closed, or closing (its writer stopped, as when
    the event loop cancels every task). Trying the operation again cannot help."""

    def __init__(self, message: str = "the store is not open (use `async with engine:`)") -> None:
        super().__init__(message)


def error_type_name(exc: BaseException) -> str:
    """`module.QualifiedName` of an exception's class, `builtins.` dropped.

    stepstone's own exceptions are named by their public path (`stepstone.X`).
    """
    cls = type(exc)
    module, name = getattr(cls, "__module__", None), getattr(cls, "__qualname__", cls.__name__)
    if not isinstance(module, str) or not module or module == "builtins":  # (a class may set __module__ = None)
        return name
    if module.startswith("stepstone.") and module.count(".") == 1:
        return f"stepstone.{name}"
    return f"{module}.{name}"


def exception_text(exc: BaseException) -> str:
    """`str(exc)`, or, if that fails (a user's `__str__` that raises), a description that
    says so: a failure must be recorded whatever its exception does."""
    try:
        return str(exc)
    except Exception as failure:
        return f"<{error_type_name(exc)} whose str() raised {error_type_name(failure)}>"
