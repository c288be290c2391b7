"""/openapi.json documents exactly the routes the app serves, and the error codes it answers."""

from __future__ import annotations

import httpx
from starlette.routing import Route

from stepstone import Engine
from stepstone.http import create_app, dashboard
from stepstone.http.openapi import OPENAPI
from stepstone.http.responses import ERRORS

from .conftest import asgi_client

_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def routed() -> set[tuple[str, str]]:
    """The API's routes: every route of the app but the dashboard's page and files."""
    app = create_app(Engine("sqlite:///unused.db", worker=False))
    pairs = set()
    for route in app.routes:
        assert isinstance(route, Route)
        if dashboard.is_public(route.path):
            continue
        for method in route.methods or ():
            if method != "HEAD":  # Starlette answers HEAD wherever it answers GET
                pairs.add((method.lower(), route.path))
    return pairs


def documented() -> set[tuple[str, str]]:
    return {(method, path) for path, item in OPENAPI["paths"].items() for method in item if method in _METHODS}


def test_every_route_is_documented_and_every_documented_path_is_routed() -> None:
    assert routed() == documented()


def test_every_path_parameter_is_declared() -> None:
    for path, item in OPENAPI["paths"].items():
        declared = {p["name"] for p in item.get("parameters", []) if p["in"] == "path"}
        in_path = {part[1:-1] for part in path.split("/") if part.startswith("{")}
        assert declared == in_path, path


def test_every_reference_resolves_and_every_error_code_is_listed() -> None:
    schemas = OPENAPI["components"]["schemas"]

    def walk(node: object) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if ref is not None:
                assert ref.removeprefix("#/components/schemas/") in schemas, ref
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(OPENAPI)
    assert schemas["Error"]["properties"]["code"]["enum"] == list(ERRORS)


async def test_the_document_is_served_as_is(engine: Engine) -> None:
    async with asgi_client(engine) as client:
        response: httpx.Response = await client.get("/openapi.json")
    assert response.status_code == 200
    assert response.json() == OPENAPI
