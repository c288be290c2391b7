"""Access control: with a token set, every request needs `Authorization: Bearer <token>`."""

from __future__ import annotations

import httpx
import pytest

from stepstone import Engine
from stepstone.errors import InvalidInputError
from stepstone.http.auth import is_loopback
from stepstone.http.server import check_exposure

from .conftest import asgi_client
from .support import error_code, result

TOKEN = "s3cret-token-value"

# One request to each endpoint (the paths need not exist: the token is checked first).
EVERY_ENDPOINT = [
    ("GET", "/openapi.json"),
    ("GET", "/workflows"),
    ("GET", "/workflows/stream"),
    ("GET", "/workflows/greeter/instances"),
    ("POST", "/workflows/greeter/instances"),
    ("POST", "/workflows/greeter/instances/batch"),
    ("GET", "/workflows/greeter/instances/x"),
    ("DELETE", "/workflows/greeter/instances/x"),
    ("PATCH", "/workflows/greeter/instances/x/status"),
    ("POST", "/workflows/greeter/instances/x/events/reply"),
    ("GET", "/workflows/greeter/instances/x/stream"),
    ("GET", "/workflows/greeter/stream"),
    ("GET", "/no/such/path"),
]


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-header"),
        pytest.param({"Authorization": "Bearer wrong"}, id="wrong-token"),
        pytest.param({"Authorization": f"Bearer {TOKEN}x"}, id="longer-token"),
        pytest.param({"Authorization": f"Basic {TOKEN}"}, id="other-scheme"),
        pytest.param({"Authorization": TOKEN}, id="no-scheme"),
    ],
)
async def test_every_endpoint_is_401_without_the_right_token(engine: Engine, headers: dict[str, str]) -> None:
    async with asgi_client(engine, token=TOKEN) as client:
        for method, path in EVERY_ENDPOINT:
            response = await client.request(method, path, headers=headers)
            assert error_code(response, 401) == "unauthorized", (method, path)
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert TOKEN not in response.text


async def test_the_right_token_is_let_through(engine: Engine) -> None:
    async with asgi_client(engine, token=TOKEN) as client:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        assert result(await client.get("/workflows", headers=headers))
        assert result(await client.get("/workflows", headers={"authorization": f"bearer {TOKEN}"}))
        assert error_code(await client.get("/no/such/path", headers=headers), 404) == "not_found"


async def test_the_token_comes_from_the_environment(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEPSTONE_API_TOKEN", TOKEN)
    async with asgi_client(engine) as client:
        assert error_code(await client.get("/workflows"), 401) == "unauthorized"
        assert result(await client.get("/workflows", headers={"Authorization": f"Bearer {TOKEN}"}))


async def test_without_a_token_the_api_is_open(client: httpx.AsyncClient) -> None:
    assert result(await client.get("/workflows"))


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "localhost", "LOCALHOST", "::1", "[::1]"])
def test_loopback_hosts_need_no_token(host: str) -> None:
    assert is_loopback(host)
    check_exposure(host, None)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "example.com", "10.0.0.1"])
def test_other_hosts_need_a_token(host: str) -> None:
    assert not is_loopback(host)
    with pytest.raises(InvalidInputError, match="STEPSTONE_API_TOKEN"):
        check_exposure(host, None)
    check_exposure(host, TOKEN)
