"""Access control: with a token set, every request needs `Authorization: Bearer <token>`; without
one, only what comes from this machine (not what a web page makes a browser send) is answered."""

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


async def test_without_a_token_the_api_is_open_to_clients_on_this_machine(client: httpx.AsyncClient) -> None:
    assert result(await client.get("/workflows"))
    for host in ("localhost:8787", "127.0.0.1", "[::1]:8787"):
        assert result(await client.get("/workflows", headers={"Host": host}))
    # The dashboard's own calls: from its page, on the host it was loaded from.
    same = {"Origin": "http://127.0.0.1:8787", "Sec-Fetch-Site": "same-origin"}
    assert result(await client.post("/workflows/greeter/instances", json={}, headers=same), 201)


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"Origin": "https://evil.example"}, id="another-origin"),
        pytest.param({"Origin": "http://127.0.0.1:3000"}, id="another-port"),
        pytest.param({"Origin": "null"}, id="opaque-origin"),
        pytest.param({"Sec-Fetch-Site": "cross-site"}, id="cross-site"),
        pytest.param({"Sec-Fetch-Site": "same-site"}, id="same-site"),
        pytest.param({"Host": "rebound.evil.example:8787"}, id="dns-rebinding"),
        pytest.param({"Host": "192.168.1.20:8787"}, id="not-loopback"),
    ],
)
async def test_without_a_token_what_a_web_page_could_make_a_browser_send_is_403(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    # A form post or "simple" fetch (text/plain: no preflight) from a page elsewhere, or a
    # page whose name was made to resolve to this machine, must neither write nor read.
    simple = headers | {"Content-Type": "text/plain"}
    forged = await client.post("/workflows/greeter/instances", content=b'{"instance_id": "forged"}', headers=simple)
    assert error_code(forged, 403) == "forbidden"
    assert "STEPSTONE_API_TOKEN" in forged.text
    assert error_code(await client.get("/workflows", headers=headers), 403) == "forbidden"
    assert result(await client.get("/workflows/greeter/instances")) == []


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
