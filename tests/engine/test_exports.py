"""The public API: every name SPEC.md uses is importable from `stepstone`, and the export
list is pinned, so adding a public name is a visible, reviewed act (as encode/httpx's
tests/test_exported_members.py does)."""

from __future__ import annotations

import stepstone

# Every public name SPEC.md (sections 1-4) uses.
SPEC_NAMES = [
    "Engine",
    "Event",
    "InstanceExistsError",
    "InstanceNotFoundError",
    "InstanceStatus",
    "InvalidInputError",
    "InvalidStateError",
    "LimitExceededError",
    "Limits",
    "NonRetryableError",
    "Retries",
    "StepContext",
    "StepFailed",
    "StepTimeoutError",
    "StepstoneError",
    "WaitTimeout",
    "Workflow",
    "WorkflowEvent",
    "WorkflowNotFoundError",
    "WorkflowStep",
]

# The reviewed export list: SPEC names, the types of handles and records users hold, and
# Retention (SPEC §6, finished instances kept for a configurable time).
EXPORTED = [
    *SPEC_NAMES,
    "BlockingClient",
    "Instance",
    "InstanceDetail",
    "InstanceList",
    "Retention",
    "StepConfig",
    "StepInfo",
    "WorkflowHandle",
    "__version__",
]

EXCEPTIONS = [
    "InstanceExistsError",
    "InstanceNotFoundError",
    "InvalidInputError",
    "InvalidStateError",
    "LimitExceededError",
    "NonRetryableError",
    "StepFailed",
    "StepTimeoutError",
    "WaitTimeout",
    "WorkflowNotFoundError",
]


def test_every_name_in_the_spec_is_importable_from_stepstone() -> None:
    missing = [name for name in SPEC_NAMES if not hasattr(stepstone, name)]
    assert missing == []


def test_every_name_in_the_spec_is_listed_in_all() -> None:
    assert sorted(set(SPEC_NAMES) - set(stepstone.__all__)) == []


def test_exported_names_are_exactly_the_reviewed_list() -> None:
    assert sorted(stepstone.__all__) == sorted(EXPORTED)


def test_every_name_in_all_is_defined() -> None:
    namespace: dict[str, object] = {}
    exec("from stepstone import *", namespace)
    assert sorted(name for name in namespace if name != "__builtins__") == sorted(stepstone.__all__)


def test_every_stepstone_exception_derives_from_stepstone_error() -> None:
    for name in EXCEPTIONS:
        cls = getattr(stepstone, name)
        assert issubclass(cls, stepstone.StepstoneError), name
    assert issubclass(stepstone.StepstoneError, Exception)


def test_bad_input_errors_are_value_errors() -> None:
    assert issubclass(stepstone.InvalidInputError, ValueError)
    assert issubclass(stepstone.LimitExceededError, ValueError)


def test_wait_timeout_is_a_step_failed() -> None:
    assert issubclass(stepstone.WaitTimeout, stepstone.StepFailed)
