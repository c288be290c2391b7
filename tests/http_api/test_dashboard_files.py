"""The dashboard's page and files: served at `/` and `/dashboard/`, without the API token, and nothing else."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from stepstone import Engine
from stepstone.http import create_app

from .conftest import BASE_URL, asgi_client
from .support import error_code, result

TOKEN = "dashboard-token-1"


async def test_the_page_and_its_files_need_no_token_while_the_api_still_does(engine: Engine) -> None:
    async with asgi_client(engine, token=TOKEN) as client:
        page = await client.get("/")
        assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
        assert '<script type="module" src="dashboard/app.js">' in page.text
        script = await client.get("/dashboard/app.js")
        assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
        style = await client.get("/dashboard/style.css")
        assert style.status_code == 200 and style.headers["content-type"].startswith("text/css")
        assert error_code(await client.get("/workflows"), 401) == "unauthorized"
        assert result(await client.get("/workflows", headers={"Authorization": f"Bearer {TOKEN}"}))


async def test_every_module_the_page_imports_is_served(engine: Engine) -> None:
    async with asgi_client(engine) as client:
        for name in ("app", "api", "format", "overview", "instances", "instance"):
            response = await client.get(f"/dashboard/{name}.js")
            assert response.status_code == 200, name
        assert (await client.get("/dashboard/icon.svg")).headers["content-type"] == "image/svg+xml"


async def test_the_page_may_load_only_its_own_files_and_call_only_this_server(engine: Engine) -> None:
    async with asgi_client(engine) as client:
        page = await client.get("/")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"


async def test_mounted_under_a_prefix_the_page_is_still_open_and_the_api_still_guarded(engine: Engine) -> None:
    outer = Starlette(routes=[Mount("/ops", app=create_app(engine, token=TOKEN))])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=outer), base_url=BASE_URL) as client:
        assert (await client.get("/ops/")).status_code == 200
        assert (await client.get("/ops/dashboard/app.js")).status_code == 200
        assert error_code(await client.get("/ops/workflows"), 401) == "unauthorized"
        assert error_code(await client.get("/ops/dashboard/../workflows"), 401) == "unauthorized"


@pytest.mark.parametrize(
    "path",
    [
        "/dashboard/nope.js",
        "/dashboard/__init__.py",
        "/dashboard/..%2F__init__.py",
        "/dashboard/../app.py",
        "/dashboard/index.html.bak",
        "/dashboard/",
    ],
)
async def test_nothing_but_the_shipped_files_is_served(engine: Engine, path: str) -> None:
    async with asgi_client(engine) as client:
        response = await client.get(path)
    assert response.status_code == 404
    assert "import" not in response.text


def test_every_dashboard_file_is_shipped_in_the_package() -> None:
    """A non-editable install carries only what pyproject's package-data names."""
    root = Path(__file__).parents[2]
    with (root / "pyproject.toml").open("rb") as file:
        patterns = tomllib.load(file)["tool"]["setuptools"]["package-data"]["stepstone.http.dashboard"]
    folder = root / "stepstone" / "http" / "dashboard"
    files = [path for path in folder.iterdir() if path.is_file() and path.suffix != ".py"]
    assert {path.name for path in files} >= {"index.html", "app.js", "style.css"}
    for path in files:
        assert any(fnmatch.fnmatch(path.name, pattern) for pattern in patterns), path.name
