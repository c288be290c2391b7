"""stepstone: durable execution for Python. Cloudflare Workflows' model on SQLite or PostgreSQL."""

from stepstone.blocking import BlockingClient
from stepstone.engine import Engine
from stepstone.errors import (
    InstanceExistsError,
    InstanceNotFoundError,
    InvalidInputError,
    InvalidStateError,
    LimitExceededError,
    NonRetryableError,
    StepFailed,
    StepstoneError,
    StepTimeoutError,
    WaitTimeout,
    WorkflowNotFoundError,
)
from stepstone.instances import Instance, InstanceDetail, InstanceList, InstanceStatus, WorkflowHandle
from stepstone.retention import Retention
from stepstone.retries import Retries, StepConfig
from stepstone.serialization import Limits
from stepstone.step import StepContext, StepInfo, WorkflowStep
from stepstone.workflow import Event, Workflow, WorkflowEvent

__version__ = "0.1.0"

__all__ = [
    "BlockingClient",
    "Engine",
    "Event",
    "Instance",
    "InstanceDetail",
    "InstanceExistsError",
    "InstanceList",
    "InstanceNotFoundError",
    "InstanceStatus",
    "InvalidInputError",
    "InvalidStateError",
    "LimitExceededError",
    "Limits",
    "NonRetryableError",
    "Retention",
    "Retries",
    "StepConfig",
    "StepContext",
    "StepFailed",
    "StepInfo",
    "StepTimeoutError",
    "StepstoneError",
    "WaitTimeout",
    "Workflow",
    "WorkflowEvent",
    "WorkflowHandle",
    "WorkflowNotFoundError",
    "WorkflowStep",
    "__version__",
]
