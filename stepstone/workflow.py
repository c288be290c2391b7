"""`Workflow`, what its `run()` receives (`WorkflowEvent`, `Event`), and naming workflows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from stepstone.errors import InvalidInputError
from stepstone.serialization import JSON, is_storable

if TYPE_CHECKING:
    from stepstone.step import WorkflowStep


@dataclass(frozen=True)
class WorkflowEvent:
    """What `run()` is started with."""

    payload: JSON
    """The instance's params."""
    timestamp: datetime
    """When the instance was created (aware, UTC)."""
    instance_id: str
    workflow_name: str


@dataclass(frozen=True)
class Event:
    """An event delivered to `step.wait_for_event`."""

    type: str
    payload: JSON
    timestamp: datetime
    """When the event was sent (aware, UTC)."""


class Workflow:
    """Base class of workflows: subclass it and define `async def run(self, event, step)`.

    `run()` is re-executed from the top whenever an instance resumes; completed steps
    return their recorded results, so code outside steps must be deterministic.
    """

    name: ClassVar[str]
    """The workflow's name; defaults to the class name."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = cls.__name__

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> JSON:
        raise NotImplementedError(f"{type(self).__qualname__} must define async def run(self, event, step)")


def name_of(workflow: object) -> str:
    """The name of a Workflow subclass, or a name given as a string."""
    if isinstance(workflow, str):
        return workflow
    if isinstance(workflow, type) and issubclass(workflow, Workflow):
        return workflow.name
    raise InvalidInputError(f"invalid workflow {workflow!r}: expected a Workflow subclass or its name")


def check_class(cls: object) -> type[Workflow]:
    if not (isinstance(cls, type) and issubclass(cls, Workflow)):
        raise InvalidInputError(f"invalid workflow {cls!r}: expected a subclass of stepstone.Workflow")
    name = cls.name
    # A name is one segment of the HTTP API's paths (/workflows/NAME/...): no '/', not '.' or '..'.
    if (
        not isinstance(name, str)
        or not name
        or len(name) > 256
        or not is_storable(name)
        or "/" in name
        or name in (".", "..")
    ):
        raise InvalidInputError(
            f"invalid workflow name {name!r}: expected 1 to 256 characters of Unicode text, without '/' "
            "(nor '.' or '..' alone, or NUL characters or lone surrogates)"
        )
    return cls
