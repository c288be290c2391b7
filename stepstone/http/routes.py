"""The endpoints: Cloudflare's Workflows REST API, less the `/accounts/{account_id}` prefix.

Each endpoint does what the matching `WorkflowHandle` / `Instance` call does, and
answers with the envelope of responses.py. Instances are rendered by the CLI's
`InstanceDetail.as_dict`, so `stepstone instances describe --json` and this API print one shape.
`ROUTES` is the routing table; openapi.py documents exactly these (a test checks).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from stepstone import clock
from stepstone.durations import to_datetime
from stepstone.engine import Engine
from stepstone.http import inputs, stream
from stepstone.http.openapi import OPENAPI
from stepstone.http.responses import ApiError, JSONResponse, api_error, failure, ok
from stepstone.instances import Instance, WorkflowHandle, cursor_position, detail_of, workflow_rows
from stepstone.store.base import STATUSES, InstanceRecord

MAX_PER_PAGE = 100
DEFAULT_PER_PAGE = 50
_SCAN = 200
"""Instances read at a time while skipping those outside a date range."""


@dataclass
class Api:
    """What the endpoints share: the engine, the API's caps, and the signal that ends live streams."""

    engine: Engine
    max_body_bytes: int
    """Largest request body read; more is answered 413 before it is parsed."""
    max_batch: int = 100
    """Most instances one batch creates (Cloudflare's cap too)."""
    poll_interval: float = 0.5
    """Seconds between a live stream's reads of the store."""
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the server stops, so live streams end and shutdown need not wait for clients."""


Endpoint = Callable[[Request, Api], Awaitable[Response]]


def _endpoint(fn: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    """Give `fn` the Api, and answer any failure as JSON with its code (never a traceback)."""

    async def answer(request: Request) -> Response:
        try:
            return await fn(request, request.app.state.api)
        except ClientDisconnect:  # gone while sending its body: nobody reads the answer, nothing to log
            return failure(ApiError("invalid_input", "the client went away while sending the request body"))
        except Exception as exc:
            return failure(api_error(exc))

    answer.__name__ = fn.__name__
    answer.__doc__ = fn.__doc__
    return answer


async def _workflow(engine: Engine, name: str) -> WorkflowHandle:
    """The workflow's handle; one recorded by an Engine after this server started is known too."""
    return await engine.find_workflow(name)


async def _instance(request: Request, api: Api) -> Instance:
    handle = await _workflow(api.engine, request.path_params["name"])
    return await handle.get(request.path_params["id"])


async def _described(instance: Instance) -> dict[str, Any]:
    """The instance as `stepstone instances describe --json` prints it, steps included."""
    return (await instance.describe()).as_dict()


# -- workflows ------------------------------------------------------------------------------


async def list_workflows(request: Request, api: Api) -> Response:
    """Every workflow an Engine recorded, with its instance counts by status."""
    return ok(await workflow_rows(api.engine))


# -- instances ------------------------------------------------------------------------------


async def list_instances(request: Request, api: Api) -> Response:
    """A page of instances, newest first: ?status, ?per_page, ?cursor, ?date_start, ?date_end (created)."""
    handle = await _workflow(api.engine, request.path_params["name"])
    status = request.query_params.get("status")
    if status is not None and status not in STATUSES:
        raise ApiError("invalid_input", f"invalid status {status!r}: expected one of {', '.join(STATUSES)}")
    per_page = inputs.query_int(request, "per_page", default=DEFAULT_PER_PAGE, low=1, high=MAX_PER_PAGE)
    cursor = request.query_params.get("cursor")
    before = None if cursor is None else cursor_position(cursor)
    start, end = inputs.query_time(request, "date_start"), inputs.query_time(request, "date_end")
    if start is not None and end is not None and start > end:
        raise ApiError("invalid_input", "invalid date range: date_start is after date_end")
    records = await _page(api.engine, handle.name, status, per_page, before, start, end)
    page = records[:per_page]
    next_cursor = str(page[-1].pk) if len(records) > per_page else None
    items = [detail_of(record).as_dict(steps=False) for record in page]
    return ok(items, result_info={"count": len(items), "per_page": per_page, "cursor": next_cursor})


async def _page(
    engine: Engine, workflow: str, status: str | None, per_page: int, before: int | None,
    start: datetime | None, end: datetime | None,
) -> list[InstanceRecord]:  # fmt: skip
    """Up to per_page + 1 records (one more tells that a next page exists) created within [start, end].

    Newest first by creation, so the first one created before `start` ends the scan. Times
    compare as the API shows them (to the microsecond), so a `created` read back selects its instance.
    """
    if start is None and end is None:
        return await engine.store.list_instances(
            workflow, status=status, limit=per_page + 1, before_pk=before, now=clock.now()
        )
    chunk = max(per_page + 1, _SCAN)
    found: list[InstanceRecord] = []
    while True:
        records = await engine.store.list_instances(
            workflow, status=status, limit=chunk, before_pk=before, now=clock.now()
        )
        for record in records:
            created = to_datetime(record.created_at)
            if start is not None and created < start:
                return found
            if end is None or created <= end:
                found.append(record)
                if len(found) > per_page:
                    return found
        if len(records) < chunk:
            return found
        before = records[-1].pk


async def create_instance(request: Request, api: Api) -> Response:
    """Create one instance: {"instance_id"?: str, "params"?: JSON}. 201 with the instance."""
    handle = await _workflow(api.engine, request.path_params["name"])
    body = inputs.json_object(
        await inputs.read_json(request, api.max_body_bytes, empty={}),
        what="request body",
        allowed=("instance_id", "params"),
    )
    instance = await handle.create(id=body.get("instance_id"), params=body.get("params"))
    return ok(await _described(instance), status=201)


async def create_batch(request: Request, api: Api) -> Response:
    """Create instances all or nothing: [{"instance_id"?, "params"?}, ...]. 201 with the instances."""
    handle = await _workflow(api.engine, request.path_params["name"])
    body = await inputs.read_json(request, api.max_body_bytes)
    if not isinstance(body, list):
        raise ApiError("invalid_input", f"invalid batch: expected a JSON array, got {inputs.type_name(body)}")
    if len(body) > api.max_batch:
        raise ApiError(
            "limit_exceeded", f"a batch of {len(body)} instances; this server creates at most {api.max_batch}"
        )
    items = []
    for index, item in enumerate(body):
        fields = inputs.json_object(item, what=f"batch item {index}", allowed=("instance_id", "params"))
        items.append({"id": fields.get("instance_id"), "params": fields.get("params")})
    created = await handle.create_batch(items)
    return ok([await _described(instance) for instance in created], status=201)


async def get_instance(request: Request, api: Api) -> Response:
    """Status, params, output, error, times, and the steps with every attempt."""
    instance = await _instance(request, api)
    return ok((await instance.describe()).as_dict())


_ACTIONS = ("pause", "resume", "terminate", "restart")


async def change_status(request: Request, api: Api) -> Response:
    """{"status": "pause" | "resume" | "terminate" | "restart", "from"?: step}. 200 with the instance."""
    body = inputs.json_object(await inputs.read_json(request, api.max_body_bytes), what="request body",
                              allowed=("status", "from"))  # fmt: skip
    action = body.get("status")
    if action not in _ACTIONS:
        raise ApiError("invalid_input", f"invalid status {action!r}: expected one of {', '.join(_ACTIONS)}")
    if "from" in body and action != "restart":
        raise ApiError("invalid_input", f"invalid field 'from': only a restart takes it, not {action!r}")
    instance = await _instance(request, api)
    if action == "restart":
        await instance.restart(**_from_step(body.get("from")))
    else:
        await getattr(instance, action)()
    return ok(await _described(instance))


def _from_step(value: Any) -> dict[str, Any]:
    """restart()'s keywords from `from`: a step name, or {"name", "count"?, "type"?}."""
    if value is None:
        return {}
    if isinstance(value, str):
        return {"from_step": value}
    fields = inputs.json_object(value, what="'from'", allowed=("name", "count", "type"))
    if not isinstance(fields.get("name"), str):
        raise ApiError("invalid_input", "invalid 'from': expected a step name, or an object with a string 'name'")
    return {"from_step": fields["name"], "count": fields.get("count", 1), "type": fields.get("type", "do")}


async def send_event(request: Request, api: Api) -> Response:
    """Send an event of {type} to the instance; the body (any JSON, or nothing: null) is its payload."""
    payload = await inputs.read_json(request, api.max_body_bytes, empty=None)
    instance = await _instance(request, api)
    event_type = request.path_params["type"]
    await instance.send_event(event_type, payload)
    return ok({"id": instance.id, "workflow": instance.workflow, "type": event_type})


async def delete_instance(request: Request, api: Api) -> Response:
    """Delete the instance and its history (stopping it first)."""
    instance = await _instance(request, api)
    await instance.delete()
    return ok({"id": instance.id, "workflow": instance.workflow, "deleted": True})


# -- live changes ---------------------------------------------------------------------------


async def workflow_stream(request: Request, api: Api) -> Response:
    """SSE: counts by status, and the newest ?per_page instances, now and at each change."""
    handle = await _workflow(api.engine, request.path_params["name"])
    window = inputs.query_int(request, "per_page", default=DEFAULT_PER_PAGE, low=1, high=MAX_PER_PAGE)
    pacer = stream.Pacer(api.engine, api.poll_interval, api.stopping)
    return stream.EventStreamResponse(stream.workflow_changes(api.engine, pacer, handle.name, window))


async def overview_stream(request: Request, api: Api) -> Response:
    """SSE: every workflow with its counts by status, now and at each change (the dashboard's overview)."""
    pacer = stream.Pacer(api.engine, api.poll_interval, api.stopping)
    return stream.EventStreamResponse(stream.overview_changes(api.engine, pacer))


async def instance_stream(request: Request, api: Api) -> Response:
    """SSE: the instance (steps included) now and at each change; `deleted` ends it."""
    instance = await _instance(request, api)
    pacer = stream.Pacer(api.engine, api.poll_interval, api.stopping)
    return stream.EventStreamResponse(stream.instance_changes(api.engine, pacer, instance.workflow, instance.id))


# -- the document ---------------------------------------------------------------------------


async def openapi(request: Request, api: Api) -> Response:
    """This API's OpenAPI 3.1 document (as is: no envelope)."""
    return JSONResponse(OPENAPI)


_INSTANCES = "/workflows/{name}/instances"
_INSTANCE = _INSTANCES + "/{id}"

def _route(path: str, **endpoints: Endpoint) -> Route:
    """One route per path, whatever its methods (`GET=fn, POST=fn`), so that a 405 answer's
    Allow header names every method the path takes."""
    answers = {method: _endpoint(fn) for method, fn in endpoints.items()}
    if len(answers) == 1:
        [(method, answer)] = answers.items()
        return Route(path, answer, methods=[method])

    async def by_method(request: Request) -> Response:
        return await answers["GET" if request.method == "HEAD" else request.method](request)

    return Route(path, by_method, methods=list(answers))


ROUTES = [
    _route("/openapi.json", GET=openapi),
    _route("/workflows", GET=list_workflows),
    _route("/workflows/stream", GET=overview_stream),
    _route(_INSTANCES, GET=list_instances, POST=create_instance),
    _route(_INSTANCES + "/batch", POST=create_batch),
    _route(_INSTANCE, GET=get_instance, DELETE=delete_instance),
    _route(_INSTANCE + "/status", PATCH=change_status),
    _route(_INSTANCE + "/events/{type}", POST=send_event),
    _route(_INSTANCE + "/stream", GET=instance_stream),
    _route("/workflows/{name}/stream", GET=workflow_stream),
]
