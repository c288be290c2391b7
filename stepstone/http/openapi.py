"""The OpenAPI 3.1 document served at /openapi.json: data, kept beside routes.py.

A test checks that every route is documented here and every path here is routed, so
the two cannot drift apart silently. Schemas describe what the endpoints send: the
envelope of responses.py and the instance shape of the CLI's `--json` output.
"""

from __future__ import annotations

from typing import Any

from stepstone import __version__
from stepstone.http.responses import ERRORS
from stepstone.store.base import STATUSES

_JSON_VALUE: dict[str, Any] = {"description": "Any JSON value."}
_TIME = {"type": "string", "format": "date-time", "description": "ISO 8601, UTC, with offset."}
_MAYBE_TIME = {"type": ["string", "null"], "format": "date-time"}
_ERROR_VALUE = {
    "type": ["object", "null"],
    "properties": {"name": {"type": "string"}, "message": {"type": "string"}, "step": {"type": "string"}},
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _envelope(result: dict[str, Any], *, paged: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "allOf": [_ref("Envelope"), {"type": "object", "properties": {"result": result}}],
    }
    if paged:
        schema["allOf"][1]["properties"]["result_info"] = _ref("ResultInfo")
    return schema


def _ok(description: str, result: dict[str, Any], *, status: str = "200", paged: bool = False) -> dict[str, Any]:
    return {
        status: {
            "description": description,
            "content": {"application/json": {"schema": _envelope(result, paged=paged)}},
        }
    }


def _errors(*statuses: int) -> dict[str, Any]:
    """Error responses of an operation (to all: 401 when a token is set, 403 when none is, 405
    for a method its path does not take)."""
    out: dict[str, Any] = {}
    for status in sorted({401, 403, 405, 500, *statuses}):
        codes = [code for code, code_status in ERRORS.items() if code_status == status]
        out[str(status)] = {
            "description": "Error codes: " + ", ".join(codes),
            "content": {"application/json": {"schema": _ref("ErrorEnvelope")}},
        }
    return out


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}, "description": description}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


_NAME = _path_param("name", "The workflow's name.")
_ID = _path_param("id", "The instance id.")
_PER_PAGE = _query("per_page", {"type": "integer", "minimum": 1, "maximum": 100, "default": 50}, "Instances per page.")
_CREATE_ITEM = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "instance_id": {
            "type": "string",
            "pattern": "^[A-Za-z0-9_][A-Za-z0-9_-]{0,99}$",
            "description": "Default: generated.",
        },
        "params": _JSON_VALUE,
    },
}
_SSE = {"text/event-stream": {"schema": {"type": "string", "description": "Server-Sent Events."}}}

PATHS: dict[str, dict[str, Any]] = {
    "/openapi.json": {
        "get": {
            "operationId": "openapi",
            "summary": "This document (served as is, without the envelope).",
            "responses": {
                "200": {"description": "The OpenAPI document.", "content": {"application/json": {}}},
                **_errors(),
            },
        }
    },
    "/workflows": {
        "get": {
            "operationId": "listWorkflows",
            "summary": "Workflows recorded in the store, with instance counts by status.",
            "responses": {**_ok("The workflows.", {"type": "array", "items": _ref("Workflow")}), **_errors()},
        }
    },
    "/workflows/stream": {
        "get": {
            "operationId": "streamWorkflows",
            "summary": "Server-Sent Events: `workflows` (an array of Workflow, as GET /workflows) now and whenever "
            "a workflow appears or a count changes.",
            "responses": {"200": {"description": "An event stream.", "content": _SSE}, **_errors()},
        }
    },
    "/workflows/{name}/instances": {
        "parameters": [_NAME],
        "get": {
            "operationId": "listInstances",
            "summary": "A page of the workflow's instances, newest first.",
            "parameters": [
                _query("status", {"type": "string", "enum": list(STATUSES)}, "Only instances of this status."),
                _query("cursor", {"type": "string"}, "The `result_info.cursor` of the previous page."),
                _PER_PAGE,
                _query(
                    "date_start",
                    {"type": "string", "format": "date-time"},
                    "Created at or after (ISO 8601; without an offset, UTC).",
                ),
                _query(
                    "date_end",
                    {"type": "string", "format": "date-time"},
                    "Created at or before (ISO 8601; without an offset, UTC).",
                ),
            ],
            "responses": {
                **_ok("The page.", {"type": "array", "items": _ref("InstanceSummary")}, paged=True),
                **_errors(400, 404),
            },
        },
        "post": {
            "operationId": "createInstance",
            "summary": "Create an instance (queued).",
            "requestBody": {"required": False, "content": {"application/json": {"schema": _CREATE_ITEM}}},
            "responses": {
                **_ok("The new instance.", _ref("InstanceSummary"), status="201"),
                **_errors(400, 404, 409, 413),
            },
        },
    },
    "/workflows/{name}/instances/batch": {
        "parameters": [_NAME],
        "post": {
            "operationId": "createInstanceBatch",
            "summary": "Create up to 100 instances, all or nothing (one existing id: none is created).",
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"type": "array", "maxItems": 100, "items": _CREATE_ITEM}}},
            },
            "responses": {
                **_ok("The new instances.", {"type": "array", "items": _ref("InstanceSummary")}, status="201"),
                **_errors(400, 404, 409, 413),
            },
        },
    },
    "/workflows/{name}/instances/{id}": {
        "parameters": [_NAME, _ID],
        "get": {
            "operationId": "getInstance",
            "summary": "Status, params, output, error, times, and the steps with every attempt.",
            "responses": {**_ok("The instance.", _ref("Instance")), **_errors(400, 404)},
        },
        "delete": {
            "operationId": "deleteInstance",
            "summary": "Delete the instance and its history, stopping it first.",
            "responses": {
                **_ok(
                    "Deleted.",
                    {
                        "type": "object",
                        "properties": {
                            "id": {"type": "string"},
                            "workflow": {"type": "string"},
                            "deleted": {"const": True},
                        },
                    },
                ),
                **_errors(400, 404),
            },
        },
    },
    "/workflows/{name}/instances/{id}/status": {
        "parameters": [_NAME, _ID],
        "patch": {
            "operationId": "changeInstanceStatus",
            "summary": "Pause, resume, terminate or restart (optionally from a step) the instance.",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["status"],
                            "properties": {
                                "status": {"enum": ["pause", "resume", "terminate", "restart"]},
                                "from": {
                                    "description": "restart only: keep the results recorded before this step.",
                                    "oneOf": [
                                        {"type": "string", "description": "The step's name (its first `do`)."},
                                        {
                                            "type": "object",
                                            "required": ["name"],
                                            "additionalProperties": False,
                                            "properties": {
                                                "name": {"type": "string"},
                                                "count": {"type": "integer", "minimum": 1, "default": 1},
                                                "type": {"enum": ["do", "sleep", "wait_for_event"], "default": "do"},
                                            },
                                        },
                                    ],
                                },
                            },
                        }
                    }
                },
            },
            "responses": {
                **_ok("The instance, in its new status.", _ref("InstanceSummary")),
                **_errors(400, 404, 409, 413),
            },
        },
    },
    "/workflows/{name}/instances/{id}/events/{type}": {
        "parameters": [_NAME, _ID, _path_param("type", "The event type (the instance-id grammar).")],
        "post": {
            "operationId": "sendEvent",
            "summary": "Send an event; the first wait for its type takes it, now or later.",
            "requestBody": {
                "required": False,
                "description": "The event's payload, any JSON value; an empty body is null.",
                "content": {"application/json": {"schema": _JSON_VALUE}},
            },
            "responses": {
                **_ok(
                    "Sent.",
                    {
                        "type": "object",
                        "properties": {
                            "id": {"type": "string"},
                            "workflow": {"type": "string"},
                            "type": {"type": "string"},
                        },
                    },
                ),
                **_errors(400, 404, 409, 413),
            },
        },
    },
    "/workflows/{name}/instances/{id}/stream": {
        "parameters": [_NAME, _ID],
        "get": {
            "operationId": "streamInstance",
            "summary": "Server-Sent Events: `instance` (an Instance, steps included) now and at each change; "
            "`deleted` ({id, workflow}) then the end.",
            "responses": {"200": {"description": "An event stream.", "content": _SSE}, **_errors(400, 404)},
        },
    },
    "/workflows/{name}/stream": {
        "parameters": [_NAME],
        "get": {
            "operationId": "streamWorkflow",
            "summary": "Server-Sent Events: `counts` ({workflow, counts}) now and when they change; `instance` "
            "(an InstanceSummary) for each of the newest per_page instances, now and at each of its changes.",
            "parameters": [_PER_PAGE],
            "responses": {"200": {"description": "An event stream.", "content": _SSE}, **_errors(400, 404)},
        },
    },
}

_ATTEMPT = {
    "type": "object",
    "properties": {
        "attempt": {"type": "integer"},
        "started": _TIME,
        "ended": _TIME,
        "outcome": {"enum": ["ok", "error", "timeout"]},
        "error": _ERROR_VALUE,
    },
}
_STEP = {
    "type": "object",
    "properties": {
        "kind": {"enum": ["do", "sleep", "wait_for_event"]},
        "name": {"type": "string"},
        "count": {"type": "integer", "description": "Occurrence of this name in the run, 1-based."},
        "status": {"enum": ["complete", "failed", "waiting"]},
        "started": _TIME,
        "ended": _MAYBE_TIME,
        "due": {**_MAYBE_TIME, "description": "When a sleep ends, an event wait times out, or a retry is due."},
        "result": _JSON_VALUE,
        "error": _ERROR_VALUE,
        "attempts": {"type": "array", "items": _ref("Attempt")},
    },
}
_SUMMARY_PROPERTIES = {
    "id": {"type": "string"},
    "workflow": {"type": "string"},
    "status": {"enum": list(STATUSES)},
    "params": _JSON_VALUE,
    "output": _JSON_VALUE,
    "error": _ERROR_VALUE,
    "created": _TIME,
    "updated": _TIME,
    "started": _MAYBE_TIME,
    "ended": _MAYBE_TIME,
    "wake": {**_MAYBE_TIME, "description": "When a waiting instance runs again."},
}

SCHEMAS: dict[str, Any] = {
    "Envelope": {
        "type": "object",
        "required": ["success", "result", "errors", "messages"],
        "properties": {
            "success": {"type": "boolean"},
            "result": _JSON_VALUE,
            "errors": {"type": "array", "items": _ref("Error")},
            "messages": {"type": "array", "items": {"type": "string"}},
        },
    },
    "ErrorEnvelope": {
        "allOf": [
            _ref("Envelope"),
            {"type": "object", "properties": {"success": {"const": False}, "result": {"type": "null"}}},
        ],
    },
    "Error": {
        "type": "object",
        "required": ["code", "message"],
        "properties": {"code": {"enum": list(ERRORS)}, "message": {"type": "string"}},
    },
    "ResultInfo": {
        "type": "object",
        "properties": {
            "count": {"type": "integer"},
            "per_page": {"type": "integer"},
            "cursor": {"type": ["string", "null"], "description": "Pass as ?cursor= for the next page; null: last."},
        },
    },
    "Workflow": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "counts": {"type": "object", "properties": {status: {"type": "integer"} for status in STATUSES}},
        },
    },
    "InstanceSummary": {"type": "object", "properties": _SUMMARY_PROPERTIES},
    "Instance": {
        "type": "object",
        "properties": {**_SUMMARY_PROPERTIES, "steps": {"type": "array", "items": _ref("Step")}},
    },
    "Step": _STEP,
    "Attempt": _ATTEMPT,
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "stepstone",
        "version": __version__,
        "description": "Create, inspect and steer workflow instances. Shaped after Cloudflare's Workflows REST "
        "API, without the /accounts/{account_id} prefix. With $STEPSTONE_API_TOKEN set on the server, every "
        "request needs `Authorization: Bearer <token>`.",
    },
    "paths": PATHS,
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    },
    "security": [{}, {"bearer": []}],
}
