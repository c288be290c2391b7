"""Every endpoint of the HTTP API and every error code it answers, on both stores (issue 6)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest

from stepstone import Engine, Limits

from .app import Greeter
from .conftest import asgi_client
from .support import error_code, result, wait_for_status

INSTANCES = "/workflows/greeter/instances"


async def create(client: httpx.AsyncClient, instance_id: str, params: object = None) -> dict[str, object]:
    created: dict[str, object] = result(
        await client.post(INSTANCES, json={"instance_id": instance_id, "params": params}), 201
    )
    return created


# -- workflows ------------------------------------------------------------------------------


async def test_workflows_lists_every_recorded_workflow_with_counts_of_every_status(client: httpx.AsyncClient) -> None:
    await create(client, "a")
    await create(client, "b")
    result(await client.patch(f"{INSTANCES}/b/status", json={"status": "pause"}))
    rows = result(await client.get("/workflows"))
    assert [row["name"] for row in rows] == ["flaky", "greeter"]
    greeter = rows[1]["counts"]
    assert greeter == {
        "queued": 1, "running": 0, "paused": 1, "errored": 0, "terminated": 0, "complete": 0, "waiting": 0,
        "waitingForPause": 0, "unknown": 0,
    }  # fmt: skip
    assert sum(rows[0]["counts"].values()) == 0


async def test_a_workflow_recorded_after_the_app_started_is_known(store_url: str, client: httpx.AsyncClient) -> None:
    class Later(Greeter):
        name = "later"

    assert error_code(await client.get("/workflows/later/instances"), 404) == "workflow_not_found"
    async with Engine(store_url, workflows=[Later], worker=False):
        pass
    assert result(await client.get("/workflows/later/instances")) == []


# -- creating -------------------------------------------------------------------------------


async def test_create_returns_the_queued_instance(client: httpx.AsyncClient) -> None:
    created = await create(client, "order-1", {"who": "ana"})
    assert created["id"] == "order-1" and created["workflow"] == "greeter" and created["status"] == "queued"
    assert created["params"] == {"who": "ana"} and created["output"] is None and created["error"] is None
    assert datetime.fromisoformat(str(created["created"])).tzinfo is not None
    assert created["steps"] == []


async def test_create_without_a_body_generates_an_id_and_null_params(client: httpx.AsyncClient) -> None:
    created = result(await client.post(INSTANCES), 201)
    assert len(created["id"]) == 36 and created["params"] is None
    also = result(await client.post(INSTANCES, json={"params": [1, 2]}), 201)
    assert also["id"] != created["id"] and also["params"] == [1, 2]


async def test_create_of_an_existing_id_is_409_and_changes_nothing(client: httpx.AsyncClient) -> None:
    await create(client, "dup", {"n": 1})
    assert error_code(await client.post(INSTANCES, json={"instance_id": "dup", "params": {"n": 2}}), 409) == (
        "instance_exists"
    )
    assert result(await client.get(f"{INSTANCES}/dup"))["params"] == {"n": 1}


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"{not json", id="not-json"),
        pytest.param(b"\xff\xfe", id="not-utf8"),
        pytest.param(b"[]", id="not-an-object"),
        pytest.param(b'{"id": "x"}', id="unknown-field"),
        pytest.param(b'{"instance_id": "-bad id"}', id="bad-id"),
        pytest.param(b'{"instance_id": 7}', id="id-not-a-string"),
        pytest.param(b'{"params": NaN}', id="params-not-json"),
        pytest.param(b'{"params": ' + b"1" * 5000 + b"}", id="a-number-python-will-not-read"),
        pytest.param(b'{"params": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", id="nested-past-reading"),
    ],
)
async def test_create_with_bad_input_is_400(client: httpx.AsyncClient, body: bytes) -> None:
    assert error_code(await client.post(INSTANCES, content=body), 400) == "invalid_input"
    assert result(await client.get(INSTANCES)) == []


async def test_params_nested_hundreds_deep_are_shown_as_stored(client: httpx.AsyncClient) -> None:
    deep: list[object] = []
    for _ in range(600):
        deep = [deep]
    assert result(await client.post(INSTANCES, json={"instance_id": "deep", "params": deep}), 201)["params"] == deep
    assert result(await client.get(f"{INSTANCES}/deep"))["params"] == deep
    assert [item["params"] for item in result(await client.get(INSTANCES))] == [deep]


async def test_params_over_the_engine_limit_are_413(store_url: str) -> None:
    limits = Limits(max_value_bytes=100)
    engine = Engine(store_url, workflows=[Greeter], worker=False, limits=limits)
    async with engine, asgi_client(engine) as client:
        response = await client.post(INSTANCES, json={"params": "x" * 200})
        assert error_code(response, 413) == "limit_exceeded"
        assert "max_value_bytes" in response.json()["errors"][0]["message"]
        result(await client.post(INSTANCES, json={"params": "x" * 50}), 201)


async def test_a_body_over_the_api_cap_is_413_before_it_is_parsed(engine: Engine) -> None:
    async with asgi_client(engine, max_body_bytes=1000) as client:
        assert error_code(await client.post(INSTANCES, content=b"{" * 5000), 413) == "limit_exceeded"

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the cap holds while reading
            for _ in range(10):
                yield b" " * 200

        assert error_code(await client.post(INSTANCES, content=chunks()), 413) == "limit_exceeded"


# -- batches --------------------------------------------------------------------------------


async def test_batch_creates_every_instance(client: httpx.AsyncClient) -> None:
    body = [{"instance_id": "b1", "params": 1}, {"params": 2}, {}]
    created = result(await client.post(f"{INSTANCES}/batch", json=body), 201)
    assert [c["params"] for c in created] == [1, 2, None]
    assert created[0]["id"] == "b1" and all(c["status"] == "queued" for c in created)
    assert len(result(await client.get(INSTANCES))) == 3


async def test_batch_is_all_or_nothing(client: httpx.AsyncClient) -> None:
    await create(client, "taken")
    body = [{"instance_id": "new-1"}, {"instance_id": "taken"}, {"instance_id": "new-2"}]
    assert error_code(await client.post(f"{INSTANCES}/batch", json=body), 409) == "instance_exists"
    assert [i["id"] for i in result(await client.get(INSTANCES))] == ["taken"]
    for bad in ([{"instance_id": "x"}, {"instance_id": "x"}], [{"instance_id": "ok"}, {"oops": 1}], {"params": 1}):
        assert error_code(await client.post(f"{INSTANCES}/batch", json=bad), 400) == "invalid_input"
    assert error_code(await client.post(f"{INSTANCES}/batch"), 400) == "invalid_input"
    assert [i["id"] for i in result(await client.get(INSTANCES))] == ["taken"]


async def test_a_batch_over_the_cap_is_413(engine: Engine) -> None:
    async with asgi_client(engine, max_batch=3) as client:
        response = await client.post(f"{INSTANCES}/batch", json=[{}] * 4)
        assert error_code(response, 413) == "limit_exceeded"
        assert result(await client.post(f"{INSTANCES}/batch", json=[{}] * 3), 201)


# -- listing --------------------------------------------------------------------------------


async def test_list_pages_newest_first_with_a_cursor(client: httpx.AsyncClient) -> None:
    for n in range(5):
        await create(client, f"i{n}")
    seen, cursor, pages = [], None, 0
    while True:
        params = {"per_page": "2"} | ({"cursor": cursor} if cursor else {})
        response = await client.get(INSTANCES, params=params)
        page = result(response)
        info = response.json()["result_info"]
        assert info["count"] == len(page) and info["per_page"] == 2
        seen += [i["id"] for i in page]
        pages += 1
        cursor = info["cursor"]
        if cursor is None:
            break
    assert seen == ["i4", "i3", "i2", "i1", "i0"] and pages == 3
    assert "steps" not in page[0]


async def test_list_filters_by_status(client: httpx.AsyncClient) -> None:
    for n in range(3):
        await create(client, f"s{n}")
    result(await client.patch(f"{INSTANCES}/s1/status", json={"status": "pause"}))
    assert [i["id"] for i in result(await client.get(INSTANCES, params={"status": "paused"}))] == ["s1"]
    assert [i["id"] for i in result(await client.get(INSTANCES, params={"status": "queued"}))] == ["s2", "s0"]


async def test_list_filters_by_creation_date_range(client: httpx.AsyncClient) -> None:
    made = [await create(client, f"d{n}") for n in range(4)]
    times = [datetime.fromisoformat(str(m["created"])) for m in made]

    async def ids(**params: str) -> list[str]:
        return [i["id"] for i in result(await client.get(INSTANCES, params=params))]

    assert await ids(date_start=times[1].isoformat(), date_end=times[2].isoformat()) == ["d2", "d1"]
    assert await ids(date_start=times[2].isoformat()) == ["d3", "d2"]
    assert await ids(date_end=times[0].isoformat()) == ["d0"]
    # Cloudflare's form: UTC without an offset.
    naive = times[3].astimezone(UTC).replace(tzinfo=None).isoformat()
    assert await ids(date_start=naive) == ["d3"]
    # A range and pages together.
    response = await client.get(INSTANCES, params={"date_end": times[2].isoformat(), "per_page": "2"})
    assert [i["id"] for i in result(response)] == ["d2", "d1"]
    cursor = response.json()["result_info"]["cursor"]
    assert await ids(date_end=times[2].isoformat(), per_page="2", cursor=cursor) == ["d0"]


@pytest.mark.parametrize(
    "params",
    [
        {"status": "sleepy"},
        {"per_page": "0"},
        {"per_page": "101"},
        {"per_page": "ten"},
        {"per_page": "\u00b2"},  # a digit to str.isdigit, not to int()
        {"per_page": "9" * 5000},
        {"cursor": "abc"},
        {"cursor": "9" * 5000},
        {"date_start": "yesterday"},
        {"date_start": "2030-01-02T00:00:00Z", "date_end": "2030-01-01T00:00:00Z"},
    ],
    ids=lambda params: ",".join(f"{k}={v[:20]!r}" for k, v in params.items()),
)
async def test_list_with_bad_parameters_is_400(client: httpx.AsyncClient, params: dict[str, str]) -> None:
    assert error_code(await client.get(INSTANCES, params=params), 400) == "invalid_input"


# -- one instance ---------------------------------------------------------------------------


async def test_get_shows_status_params_output_times_and_steps_with_attempts(
    live: tuple[Engine, httpx.AsyncClient],
) -> None:
    _, client = live
    await create(client, "g1", {"who": "ana"})
    waiting = await wait_for_status(client, f"{INSTANCES}/g1", "waiting")
    greet, reply = waiting["steps"]
    assert (greet["name"], greet["kind"], greet["count"], greet["status"]) == ("greet", "do", 1, "complete")
    assert greet["result"] == "hello ana"
    [attempt] = greet["attempts"]
    assert attempt["attempt"] == 1 and attempt["outcome"] == "ok" and attempt["error"] is None
    assert datetime.fromisoformat(attempt["ended"]) >= datetime.fromisoformat(attempt["started"])
    assert (reply["kind"], reply["status"]) == ("wait_for_event", "waiting") and reply["due"] is not None
    assert waiting["wake"] is not None and waiting["started"] is not None and waiting["ended"] is None

    sent = result(await client.post(f"{INSTANCES}/g1/events/reply", json={"ok": True}))
    assert sent == {"id": "g1", "workflow": "greeter", "type": "reply"}
    done = await wait_for_status(client, f"{INSTANCES}/g1", "complete")
    assert done["output"] == {"greeting": "hello ana", "reply": {"ok": True}}
    assert done["params"] == {"who": "ana"} and done["error"] is None and done["ended"] is not None
    assert [step["status"] for step in done["steps"]] == ["complete", "complete"]


async def test_get_shows_the_error_and_every_failed_attempt(live: tuple[Engine, httpx.AsyncClient]) -> None:
    _, client = live
    result(await client.post("/workflows/flaky/instances", json={"instance_id": "f1"}), 201)
    failed = await wait_for_status(client, "/workflows/flaky/instances/f1", "errored")
    assert failed["error"] == {"name": "ValueError", "message": "no luck", "step": "try"}
    [step] = failed["steps"]
    assert step["status"] == "failed" and step["error"] == {"name": "ValueError", "message": "no luck"}
    assert [(a["attempt"], a["outcome"], a["error"]["name"]) for a in step["attempts"]] == [
        (1, "error", "ValueError"),
        (2, "error", "ValueError"),
    ]


async def test_unknown_workflow_or_instance_is_404_and_a_bad_id_400(client: httpx.AsyncClient) -> None:
    assert error_code(await client.get("/workflows/nope/instances"), 404) == "workflow_not_found"
    assert error_code(await client.post("/workflows/nope/instances"), 404) == "workflow_not_found"
    assert error_code(await client.get("/workflows/nope/instances/x"), 404) == "workflow_not_found"
    assert error_code(await client.get(f"{INSTANCES}/missing"), 404) == "instance_not_found"
    assert error_code(await client.delete(f"{INSTANCES}/missing"), 404) == "instance_not_found"
    assert error_code(await client.patch(f"{INSTANCES}/missing/status", json={"status": "pause"}), 404) == (
        "instance_not_found"
    )
    assert error_code(await client.post(f"{INSTANCES}/missing/events/reply"), 404) == "instance_not_found"
    assert error_code(await client.get(f"{INSTANCES}/-dash"), 400) == "invalid_input"


# -- status changes -------------------------------------------------------------------------


async def test_pause_resume_terminate_and_restart(client: httpx.AsyncClient) -> None:
    await create(client, "p1", {"who": "bo"})
    path = f"{INSTANCES}/p1/status"
    assert result(await client.patch(path, json={"status": "pause"}))["status"] == "paused"
    assert error_code(await client.patch(path, json={"status": "pause"}), 409) == "invalid_state"
    assert result(await client.patch(path, json={"status": "resume"}))["status"] == "queued"
    assert error_code(await client.patch(path, json={"status": "resume"}), 409) == "invalid_state"
    assert result(await client.patch(path, json={"status": "terminate"}))["status"] == "terminated"
    assert error_code(await client.patch(path, json={"status": "terminate"}), 409) == "invalid_state"
    restarted = result(await client.patch(path, json={"status": "restart"}))
    assert restarted["status"] == "queued" and restarted["params"] == {"who": "bo"}


@pytest.mark.parametrize(
    "body",
    [
        {"status": "sleep"},
        {},
        {"status": "pause", "from": "greet"},
        {"status": "restart", "from": 3},
        {"status": "restart", "from": {"count": 2}},
        {"status": "restart", "from": {"name": "greet", "step": 1}},
        {"status": "restart", "to": "greet"},
    ],
    ids=json.dumps,
)
async def test_a_bad_status_change_is_400(client: httpx.AsyncClient, body: dict[str, object]) -> None:
    await create(client, "p2")
    assert error_code(await client.patch(f"{INSTANCES}/p2/status", json=body), 400) == "invalid_input"
    assert result(await client.get(f"{INSTANCES}/p2"))["status"] == "queued"


async def test_restart_from_a_step_keeps_what_came_before(live: tuple[Engine, httpx.AsyncClient]) -> None:
    _, client = live
    await create(client, "r1", {"who": "cy"})
    await wait_for_status(client, f"{INSTANCES}/r1", "waiting")
    path = f"{INSTANCES}/r1/status"
    response = await client.patch(path, json={"status": "restart", "from": {"name": "nope"}})
    assert error_code(response, 400) == "invalid_input"
    body = {"status": "restart", "from": {"name": "reply", "type": "wait_for_event", "count": 1}}
    result(await client.patch(path, json=body))
    again = await wait_for_status(client, f"{INSTANCES}/r1", "waiting")
    greet = again["steps"][0]
    assert greet["name"] == "greet" and len(greet["attempts"]) == 1  # kept, not run again
    result(await client.patch(path, json={"status": "restart", "from": "greet"}))
    await wait_for_status(client, f"{INSTANCES}/r1", "waiting")


# -- events ---------------------------------------------------------------------------------


async def test_send_event_takes_the_body_as_payload(live: tuple[Engine, httpx.AsyncClient]) -> None:
    _, client = live
    await create(client, "e1", {"who": "di"})
    # curl -d sends a form content type: the body is JSON whatever the header says.
    sent = await client.post(f"{INSTANCES}/e1/events/reply", content=b"[1, 2]", headers={"content-type": "text/plain"})
    assert result(sent)["type"] == "reply"
    done = await wait_for_status(client, f"{INSTANCES}/e1", "complete")
    assert done["output"]["reply"] == [1, 2]

    await create(client, "e2", {"who": "ed"})
    result(await client.post(f"{INSTANCES}/e2/events/reply"))  # no body: null
    assert (await wait_for_status(client, f"{INSTANCES}/e2", "complete"))["output"]["reply"] is None


async def test_send_event_errors(store_url: str, client: httpx.AsyncClient) -> None:
    await create(client, "e3")
    assert error_code(await client.post(f"{INSTANCES}/e3/events/-bad"), 400) == "invalid_input"
    assert error_code(await client.post(f"{INSTANCES}/e3/events/reply", content=b"{"), 400) == "invalid_input"
    result(await client.patch(f"{INSTANCES}/e3/status", json={"status": "terminate"}))
    assert error_code(await client.post(f"{INSTANCES}/e3/events/reply"), 409) == "invalid_state"
    small = Engine(store_url, worker=False, limits=Limits(max_value_bytes=10))
    async with small, asgi_client(small) as small_client:
        await create(small_client, "e4")
        response = await small_client.post(f"{INSTANCES}/e4/events/reply", json="x" * 20)
        assert error_code(response, 413) == "limit_exceeded"


# -- deleting -------------------------------------------------------------------------------


async def test_delete_removes_the_instance(client: httpx.AsyncClient) -> None:
    await create(client, "x1")
    assert result(await client.delete(f"{INSTANCES}/x1")) == {"id": "x1", "workflow": "greeter", "deleted": True}
    assert error_code(await client.get(f"{INSTANCES}/x1"), 404) == "instance_not_found"
    assert error_code(await client.delete(f"{INSTANCES}/x1"), 404) == "instance_not_found"
    await create(client, "x1")  # the id is free again


# -- the rest -------------------------------------------------------------------------------


async def test_unknown_paths_are_404_and_unknown_methods_405(client: httpx.AsyncClient) -> None:
    assert error_code(await client.get("/nope"), 404) == "not_found"
    assert error_code(await client.get("/workflows/greeter"), 404) == "not_found"
    response = await client.put("/workflows")
    assert error_code(response, 405) == "method_not_allowed"
    assert "GET" in response.headers["allow"]
    # Allow names every method the path takes, whichever of its endpoints they reach.
    for path, methods in ((INSTANCES, {"GET", "HEAD", "POST"}), (f"{INSTANCES}/x", {"GET", "HEAD", "DELETE"})):
        response = await client.put(path)
        assert error_code(response, 405) == "method_not_allowed"
        assert set(response.headers["allow"].split(", ")) == methods


async def test_an_unexpected_failure_is_500_without_details(
    engine: Engine, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken() -> list[str]:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(engine.store, "workflow_names", broken)
    response = await client.get("/workflows")
    assert error_code(response, 500) == "internal_error"
    assert "secret internals" not in response.text
    assert "secret internals" in caplog.text  # the server's log has it
