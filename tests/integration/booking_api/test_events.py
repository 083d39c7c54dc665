"""Events endpoints and the error body, against real PostgreSQL and Redis (in-process app)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tests.support.api_client import bearer, create_event

pytestmark = pytest.mark.timeout(60)


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    request = f"{response.request.method} {response.request.url} {response.request.content!r}"
    assert response.status_code == status, f"{request}: {response.text}"
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]


async def test_admin_creates_event_with_seq_zero(
    client: httpx.AsyncClient, token: Callable[..., str]
) -> None:
    """An admin's POST /api/events returns 201 and the event with every seat free and seq 0."""
    response = await client.post(
        "/api/events", json={"name": "Opera", "capacity": 50}, headers=bearer(token(1, admin=True))
    )
    assert response.status_code == 201
    event = response.json()
    assert event == {
        "id": event["id"],
        "name": "Opera",
        "capacity": 50,
        "availableSeats": 50,
        "seq": 0,
    }
    assert isinstance(event["id"], int)
    assert event["id"] >= 1


async def test_list_and_get_events(client: httpx.AsyncClient, token: Callable[..., str]) -> None:
    """GET /api/events lists every event oldest first; GET /api/events/{id} returns one."""
    admin = token(1, admin=True)
    first = await create_event(client, admin, 5, "First")
    second = await create_event(client, admin, 7, "Second")
    listed = (await client.get("/api/events")).json()
    assert listed == [first, second]
    one = await client.get(f"/api/events/{second['id']}")
    assert one.status_code == 200
    assert one.json() == second


async def test_list_is_empty_at_first(client: httpx.AsyncClient) -> None:
    """With no events, GET /api/events is an empty JSON array."""
    response = await client.get("/api/events")
    assert response.status_code == 200
    assert response.json() == []
    assert response.headers["content-type"] == "application/json"


UNKNOWN_EVENT_PATHS = [
    "/api/events/999999",
    "/api/events/0",
    "/api/events/-1",
    "/api/events/abc",
    "/api/events/1.5",
    "/api/events/9223372036854775808",
    "/api/events/" + "9" * 40,
    "/api/events/%00",
    "/api/events/01",
]


async def test_unknown_or_malformed_event_id_is_404(client: httpx.AsyncClient) -> None:
    """An event id that names no event (absent, not a positive integer, beyond bigint) is 404."""
    for path in UNKNOWN_EVENT_PATHS:
        assert_error(await client.get(path), 404, "not_found")


async def test_create_event_requires_token(client: httpx.AsyncClient) -> None:
    """Without a token POST /api/events is 401 with a WWW-Authenticate challenge."""
    response = await client.post("/api/events", json={"name": "x", "capacity": 1})
    assert_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == "Bearer"


BAD_AUTHORIZATIONS = [
    "Bearer not-a-jwt",
    "Basic dXNlcjpwYXNz",
    "Bearer ",
    "bearer",
    "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIiwicm9sZSI6ImFkbWluIn0.",
]


async def test_create_event_refuses_bad_tokens(client: httpx.AsyncClient) -> None:
    """Malformed, non-bearer and unsigned (`alg: none`) tokens are 401."""
    for header in BAD_AUTHORIZATIONS:
        response = await client.post(
            "/api/events", json={"name": "x", "capacity": 1}, headers={"Authorization": header}
        )
        assert_error(response, 401, "unauthorized")


async def test_expired_token_is_401(client: httpx.AsyncClient, token: Callable[..., str]) -> None:
    """An expired admin token is refused with 401."""
    response = await client.post(
        "/api/events",
        json={"name": "x", "capacity": 1},
        headers=bearer(token(1, admin=True, ttl_seconds=-60)),
    )
    assert_error(response, 401, "unauthorized")


async def test_non_admin_cannot_create_event(
    client: httpx.AsyncClient, token: Callable[..., str]
) -> None:
    """A valid token without the admin role gets 403 forbidden and no event is created."""
    response = await client.post(
        "/api/events", json={"name": "x", "capacity": 1}, headers=bearer(token(5))
    )
    assert_error(response, 403, "forbidden")
    assert (await client.get("/api/events")).json() == []


INVALID_EVENT_BODIES = [
    {"name": "x"},
    {"capacity": 5},
    {"name": "x", "capacity": 0},
    {"name": "x", "capacity": 1_000_001},
    {"name": "x", "capacity": -3},
    {"name": "x", "capacity": True},
    {"name": "x", "capacity": 5.0},
    {"name": "x", "capacity": "5"},
    {"name": "x", "capacity": None},
    {"name": "", "capacity": 5},
    {"name": "   ", "capacity": 5},
    {"name": "a" * 201, "capacity": 5},
    {"name": 12, "capacity": 5},
    {"name": "nul\u0000byte", "capacity": 5},
    {"name": "x", "capacity": 5, "extra": 1},
    {"name": "x", "capacity": 5, "availableSeats": 3},
    [{"name": "x", "capacity": 5}],
    "x",
    None,
]


async def test_invalid_event_bodies_are_422(
    client: httpx.AsyncClient, token: Callable[..., str]
) -> None:
    """Missing, unknown, wrongly typed (bool is not int) or out-of-range fields are 422."""
    for body in INVALID_EVENT_BODIES:
        response = await client.post("/api/events", json=body, headers=bearer(token(1, admin=True)))
        assert_error(response, 422, "invalid_request")
    assert (await client.get("/api/events")).json() == []


MALFORMED_BODIES = [
    b"",
    b"{",
    b"{'name': 'x'}",
    b"NaN",
    b'{"name": "x", "capacity": 5,}',
    b"\xff\xfe",
]


async def test_malformed_json_is_422(client: httpx.AsyncClient, token: Callable[..., str]) -> None:
    """A body that is not JSON at all gets the 422 error body, not a 400 or 500."""
    for raw in MALFORMED_BODIES:
        response = await client.post(
            "/api/events",
            content=raw,
            headers={**bearer(token(1, admin=True)), "Content-Type": "application/json"},
        )
        assert_error(response, 422, "invalid_request")


async def test_body_over_64_kib_is_422(
    client: httpx.AsyncClient, token: Callable[..., str]
) -> None:
    """A body larger than 64 KiB is refused with 422 before it is parsed."""
    raw = b'{"name": "' + b"a" * (70 * 1024) + b'", "capacity": 5}'
    response = await client.post("/api/events", content=raw, headers=bearer(token(1, admin=True)))
    assert_error(response, 422, "invalid_request")
    assert "65536" in response.json()["error"]["message"]


async def test_sql_looking_name_is_just_data(
    client: httpx.AsyncClient, token: Callable[..., str]
) -> None:
    """A name that looks like SQL is stored and returned verbatim; the tables survive."""
    name = "x'); DROP TABLE events; --"
    event = await create_event(client, token(1, admin=True), 3, name)
    assert event["name"] == name
    assert (await client.get(f"/api/events/{event['id']}")).json()["name"] == name


async def test_unicode_name_round_trips(
    client: httpx.AsyncClient, token: Callable[..., str]
) -> None:
    """Names are Unicode text: 200 characters of emoji are accepted and returned unchanged."""
    name = "🎫" * 200
    event = await create_event(client, token(1, admin=True), 3, name)
    assert event["name"] == name


async def test_unknown_path_and_method_use_error_body(client: httpx.AsyncClient) -> None:
    """Starlette's own 404 and 405 come back in the API's error body; 405 keeps Allow."""
    assert_error(await client.get("/api/nothing"), 404, "not_found")
    response = await client.put("/api/events")
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["allow"]
