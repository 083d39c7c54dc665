"""Contract section 5 end to end: two real `python -m gateway` replicas on one real Redis.

The replicas and Redis are shared by the module; every test uses its own
event ids, so tests do not hear each other. The first replica, which most
tests talk to, carries its clients on aiofastnet's transports
(SOCKET_TRANSPORT=aiofastnet), the second on uvloop's, the default that the
other modules' gateways use: the contract holds on both, and across them.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import jwt
import orjson
import pytest
import redis.asyncio as aioredis

from shared.channels import history_key, state_key
from shared.messages import SeatChange, parse_iso, utc_now_iso
from shared.publisher import Publisher
from tests.conftest import JWT_SECRET
from tests.support.processes import ServiceProcess
from tests.support.redis_server import RedisServer
from tests.support.wait import scheduled_callbacks_run
from tests.support.ws_client import WsClient

CHANGE_FIELDS = {
    "type",
    "eventId",
    "bookingId",
    "userId",
    "seats",
    "availableSeats",
    "seq",
    "timestamp",
}
_event_ids = itertools.count(1000)


@pytest.fixture(scope="module")
def module_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def replicas(module_redis: RedisServer) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    env = {"JWT_SECRET": JWT_SECRET, "LOG_LEVEL": "info", "REDIS_URL": module_redis.url}
    started = [
        ServiceProcess("gateway", {**env, "SOCKET_TRANSPORT": transport})
        for transport in ("aiofastnet", "uvloop")
    ]
    try:
        for process in started:
            process.start()
        yield started[0], started[1]
    finally:
        for process in started:
            process.close()


def test_each_replica_serves_clients_on_its_socket_transport(
    replicas: tuple[ServiceProcess, ServiceProcess],
) -> None:
    """The first replica's clients ride aiofastnet's transports, the second's uvloop's."""
    for replica, transport in zip(replicas, ("aiofastnet", "uvloop"), strict=True):
        [line] = [line for line in replica.logs().splitlines() if "serving clients" in line]
        assert orjson.loads(line)["socketTransport"] == transport


@pytest.fixture
def gateway(replicas: tuple[ServiceProcess, ServiceProcess]) -> ServiceProcess:
    return replicas[0]


@pytest.fixture
def event_id() -> int:
    return next(_event_ids)


@pytest.fixture
async def redis(module_redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis(port=module_redis.port)
    yield client
    await client.aclose()


@pytest.fixture
def publisher(redis: aioredis.Redis) -> Publisher:
    return Publisher(redis)


def change(event_id: int, seq: int, kind: str = "booking_created", seats: int = 1) -> SeatChange:
    return SeatChange(
        kind, event_id, f"BK-{event_id:x}{seq:04x}", 10 + seq, seats, 500 - seq, seq, utc_now_iso()
    )  # type: ignore[arg-type]


async def publish_range(publisher: Publisher, event_id: int, seqs: range) -> list[SeatChange]:
    changes = [change(event_id, seq) for seq in seqs]
    for item in changes:
        assert await publisher.publish(item)
    return changes


def seqs(messages: list[dict[str, object]]) -> list[object]:
    return [m["seq"] for m in messages]


async def test_path_url_subscribes_and_forwards_every_field(
    gateway: ServiceProcess, event_id: int, publisher: Publisher, token: Callable[..., str]
) -> None:
    """`/ws/events/{id}`: connection_established, subscribed, then each change as published, byte for byte."""
    async with await WsClient.open(gateway.ws_url, f"/ws/events/{event_id}", token(10)) as client:
        hello = await client.recv_type("connection_established")
        assert set(hello) == {"type", "clientId", "eventId", "timestamp"}
        assert hello["eventId"] == event_id
        assert isinstance(hello["clientId"], str)
        assert hello["clientId"]
        parse_iso(hello["timestamp"])
        subscribed = await client.recv_type("subscribed")
        assert subscribed == {
            "type": "subscribed",
            "eventId": event_id,
            "seq": None,
            "availableSeats": None,
            "timestamp": subscribed["timestamp"],
        }
        created = change(event_id, 1)
        cancelled = change(event_id, 2, "booking_cancelled", seats=3)
        for item in (created, cancelled):
            await publisher.publish(item)
        for item in (created, cancelled):
            text = await client.recv_text()
            assert text == item.payload().decode()
            message = orjson.loads(text)
            assert set(message) == CHANGE_FIELDS
            assert isinstance(message["userId"], int)


async def test_plain_url_connects_without_a_subscription(
    gateway: ServiceProcess, token: Callable[..., str]
) -> None:
    """`/ws`: connection_established with eventId null and nothing else until asked."""
    async with await WsClient.open(gateway.ws_url, "/ws", token(11)) as client:
        hello = await client.recv_type("connection_established")
        assert hello["eventId"] is None
        await client.send_json({"type": "ping"})
        assert (await client.recv_json())["type"] == "pong"


async def test_authorization_header_token(
    gateway: ServiceProcess, event_id: int, token: Callable[..., str]
) -> None:
    """A non-browser client may send `Authorization: Bearer <jwt>` instead of `?token=`."""
    headers = {"Authorization": f"Bearer {token(12)}"}
    async with await WsClient.open(
        gateway.ws_url, f"/ws/events/{event_id}", headers=headers
    ) as client:
        await client.recv_type("connection_established")
        assert (await client.recv_type("subscribed"))["eventId"] == event_id


async def test_missing_token_is_refused(gateway: ServiceProcess) -> None:
    """No token: the server accepts, then closes 1008 `Authentication token required`."""
    for path in ("/ws", "/ws/events/1"):
        client = await WsClient.open(gateway.ws_url, path)
        assert await client.closed() == (1008, "Authentication token required")
    client = await WsClient.open(gateway.ws_url, "/ws", headers={"Authorization": "Basic abc"})
    assert await client.closed() == (1008, "Authentication token required")


def _bad_tokens(token: Callable[..., str]) -> list[str]:
    other_secret = "another-secret-that-is-also-long-enough!!"
    return [
        "garbage",
        token(5, ttl_seconds=-10),  # expired
        jwt.encode({"sub": "5"}, other_secret, algorithm="HS256"),
        jwt.encode({"sub": "5"}, None, algorithm="none"),
        jwt.encode({"role": "admin"}, JWT_SECRET, algorithm="HS256"),  # no sub
        jwt.encode({"sub": "abc"}, JWT_SECRET, algorithm="HS256"),
        jwt.encode({"sub": "5", "nbf": 4102444800}, JWT_SECRET, algorithm="HS256"),  # not yet valid
    ]


async def test_bad_tokens_are_refused(gateway: ServiceProcess, token: Callable[..., str]) -> None:
    """Bad, expired, foreign, `none`-signed or sub-less tokens: close 1008 `Invalid authentication token`."""
    for bad in _bad_tokens(token):
        client = await WsClient.open(gateway.ws_url, "/ws", bad)
        assert await client.closed() == (1008, "Invalid authentication token"), bad
        client = await WsClient.open(
            gateway.ws_url, "/ws", headers={"Authorization": f"Bearer {bad}"}
        )
        assert await client.closed() == (1008, "Invalid authentication token"), bad


async def test_invalid_path_event_id_keeps_the_connection(
    gateway: ServiceProcess, token: Callable[..., str]
) -> None:
    """A path eventId that is not a positive integer: eventId null, an error, and the socket stays open."""
    for segment in ("abc", "0", "-4", "1.5", "99999999999999999999"):
        async with await WsClient.open(
            gateway.ws_url, f"/ws/events/{segment}", token(13)
        ) as client:
            assert (await client.recv_type("connection_established"))["eventId"] is None
            error = await client.recv_type("error")
            assert error["code"] == "invalid_event_id"
            await client.send_json({"type": "ping"})
            await client.recv_type("pong")


async def test_subscribed_carries_the_latest_state(
    gateway: ServiceProcess, event_id: int, publisher: Publisher, token: Callable[..., str]
) -> None:
    """`subscribed` gives the seq and availableSeats Redis has, then only newer messages follow."""
    await publish_range(publisher, event_id, range(1, 4))
    async with await WsClient.open(gateway.ws_url, "/ws", token(14)) as client:
        await client.recv_type("connection_established")
        await client.send_json({"type": "subscribe_event", "eventId": event_id})
        subscribed = await client.recv_type("subscribed")
        assert (subscribed["seq"], subscribed["availableSeats"]) == (3, 497)
        assert "recovered" not in subscribed
        await publish_range(publisher, event_id, range(4, 5))
        assert (await client.recv_json())["seq"] == 4


async def test_switching_events_stops_the_old_feed(
    gateway: ServiceProcess, publisher: Publisher, token: Callable[..., str]
) -> None:
    """A plain subscribe leaves every other event: the old one's messages stop at once."""
    old, new = next(_event_ids), next(_event_ids)
    async with await WsClient.open(gateway.ws_url, f"/ws/events/{old}", token(15)) as client:
        await client.recv_type("connection_established")
        await client.recv_type("subscribed")
        await client.send_json({"type": "subscribe_event", "eventId": new})
        assert (await client.recv_type("subscribed"))["eventId"] == new
        # Published in this order: had the old feed survived, its message would come first.
        await publish_range(publisher, old, range(1, 2))
        await publish_range(publisher, new, range(1, 2))
        message = await client.recv_json()
        assert (message["eventId"], message["seq"]) == (new, 1)


async def test_mode_add_keeps_other_subscriptions(
    gateway: ServiceProcess, publisher: Publisher, token: Callable[..., str]
) -> None:
    """`mode: add` watches several events at once, each in its own order."""
    first, second = next(_event_ids), next(_event_ids)
    async with await WsClient.open(gateway.ws_url, f"/ws/events/{first}", token(16)) as client:
        await client.recv_type("connection_established")
        await client.recv_type("subscribed")
        await client.send_json({"type": "subscribe_event", "eventId": second, "mode": "add"})
        await client.recv_type("subscribed")
        await publish_range(publisher, first, range(1, 3))
        await publish_range(publisher, second, range(1, 3))
        got = await client.collect(lambda m: len(m) == 4)
        assert [(m["eventId"], m["seq"]) for m in got] == [
            (first, 1),
            (first, 2),
            (second, 1),
            (second, 2),
        ]


async def test_unsubscribe(
    gateway: ServiceProcess, publisher: Publisher, token: Callable[..., str]
) -> None:
    """`unsubscribe_event` answers `unsubscribed` and that event's messages stop."""
    left, kept = next(_event_ids), next(_event_ids)
    async with await WsClient.open(gateway.ws_url, f"/ws/events/{left}", token(17)) as client:
        await client.recv_type("connection_established")
        await client.recv_type("subscribed")
        await client.send_json({"type": "subscribe_event", "eventId": kept, "mode": "add"})
        await client.recv_type("subscribed")
        await client.send_json({"type": "unsubscribe_event", "eventId": left})
        reply = await client.recv_type("unsubscribed")
        assert set(reply) == {"type", "eventId", "timestamp"}
        assert reply["eventId"] == left
        await publish_range(publisher, left, range(1, 2))
        await publish_range(publisher, kept, range(1, 2))
        message = await client.recv_json()
        assert (message["eventId"], message["seq"]) == (kept, 1)


async def test_ping(gateway: ServiceProcess, token: Callable[..., str]) -> None:
    """`ping` gets `pong` with a timestamp."""
    async with await WsClient.open(gateway.ws_url, "/ws", token(18)) as client:
        await client.recv_type("connection_established")
        await client.send_json({"type": "ping"})
        pong = await client.recv_type("pong")
        assert set(pong) == {"type", "timestamp"}
        parse_iso(pong["timestamp"])


async def test_get_stats_for_admins_only(
    gateway: ServiceProcess, token: Callable[..., str]
) -> None:
    """Admins get this replica's stats; anyone else gets `forbidden`."""
    async with await WsClient.open(gateway.ws_url, "/ws/events/1", token(1, admin=True)) as admin:
        await admin.recv_type("connection_established")
        await admin.recv_type("subscribed")
        await admin.send_json({"type": "get_stats"})
        data = (await admin.recv_type("stats"))["data"]
        for key in ("connections", "subscriptions", "eventsWatched", "messagesIn", "messagesOut"):
            assert isinstance(data[key], int), key
        assert data["connections"] >= 1
        assert data["subscriptions"] >= 1
        assert data["eventsWatched"] >= 1
    async with await WsClient.open(gateway.ws_url, "/ws", token(2)) as user:
        await user.recv_type("connection_established")
        await user.send_json({"type": "get_stats"})
        error = await user.recv_type("error")
        assert error["code"] == "forbidden"


async def test_refresh_token(gateway: ServiceProcess, token: Callable[..., str]) -> None:
    """A valid token of the same user is accepted (expiresAt ISO, or null); others are `invalid_token`."""
    async with await WsClient.open(gateway.ws_url, "/ws", token(19, ttl_seconds=60)) as client:
        await client.recv_type("connection_established")
        await client.send_json({"type": "refresh_token", "token": token(19, ttl_seconds=7200)})
        refreshed = await client.recv_type("token_refreshed")
        assert (
            parse_iso(refreshed["expiresAt"]).timestamp()
            > parse_iso(utc_now_iso()).timestamp() + 7000
        )
        await client.send_json({"type": "refresh_token", "token": token(19, ttl_seconds=None)})
        assert (await client.recv_type("token_refreshed"))["expiresAt"] is None
        for bad in (token(20), "garbage", token(19, ttl_seconds=-5)):
            await client.send_json({"type": "refresh_token", "token": bad})
            assert (await client.recv_type("error"))["code"] == "invalid_token"
        await client.send_json({"type": "ping"})
        await client.recv_type("pong")


async def test_errors_keep_the_connection_open(
    gateway: ServiceProcess, token: Callable[..., str]
) -> None:
    """Malformed messages get the contract's error codes; the connection stays usable."""
    cases = [
        ("not json", "invalid_message"),
        ("[1,2]", "invalid_message"),
        ('{"type": 7}', "invalid_message"),
        ('{"type": "fly"}', "unknown_type"),
        ('{"type": "subscribe_event", "eventId": "7"}', "invalid_event_id"),
        ('{"type": "subscribe_event", "eventId": -1}', "invalid_event_id"),
        ('{"type": "unsubscribe_event", "eventId": 0}', "invalid_event_id"),
    ]
    async with await WsClient.open(gateway.ws_url, "/ws", token(21)) as client:
        await client.recv_type("connection_established")
        for text, code in cases:
            await client.send_text(text)
            error = await client.recv_type("error")
            assert error["code"] == code, text
            assert set(error) == {"type", "code", "message"}
        await client.connection.send(b'{"type": "ping"}')
        assert (await client.recv_type("error"))["message"] == "Invalid message format"
        await client.send_json({"type": "ping"})
        await client.recv_type("pong")


async def test_watchers_on_both_replicas_get_everything_in_order(
    replicas: tuple[ServiceProcess, ServiceProcess],
    event_id: int,
    publisher: Publisher,
    token: Callable[..., str],
) -> None:
    """Three watchers on each replica receive every message, once, in seq order."""
    clients = [
        await WsClient.open(replica.ws_url, f"/ws/events/{event_id}", token(30 + n))
        for n, replica in enumerate([*replicas, *replicas, *replicas])
    ]
    try:
        for client in clients:
            await client.recv_type("connection_established")
            await client.recv_type("subscribed")
        changes = await publish_range(publisher, event_id, range(1, 51))
        expected = [c.payload().decode() for c in changes]
        for client in clients:
            assert [await client.recv_text() for _ in expected] == expected
    finally:
        for client in clients:
            await client.close()


async def test_a_burst_of_subscribers_all_get_subscribed(
    gateway: ServiceProcess, event_id: int, publisher: Publisher, token: Callable[..., str]
) -> None:
    """300 clients subscribing at the same moment all get `subscribed` and then the feed."""

    async def watch() -> WsClient:
        client = await WsClient.open(gateway.ws_url, f"/ws/events/{event_id}", token(50))
        await client.recv_type("connection_established")
        await client.recv_type("subscribed", timeout=30)
        return client

    clients = await asyncio.gather(*(watch() for _ in range(300)))
    try:
        await publish_range(publisher, event_id, range(1, 2))
        for client in clients:
            assert (await client.recv_json())["seq"] == 1
    finally:
        await asyncio.gather(*(client.close() for client in clients))


async def test_since_recovers_across_replicas(
    replicas: tuple[ServiceProcess, ServiceProcess],
    event_id: int,
    publisher: Publisher,
    token: Callable[..., str],
) -> None:
    """A client leaves replica A at seq 5; on replica B, `since: 5` replays 6-10 and goes live at 11."""
    first, second = replicas
    async with await WsClient.open(first.ws_url, f"/ws/events/{event_id}", token(40)) as client:
        await client.recv_type("connection_established")
        await client.recv_type("subscribed")
        await publish_range(publisher, event_id, range(1, 6))
        assert seqs(await client.collect(lambda m: len(m) == 5)) == [1, 2, 3, 4, 5]
    await publish_range(publisher, event_id, range(6, 11))  # while the client is away
    async with await WsClient.open(second.ws_url, "/ws", token(40)) as client:
        await client.recv_type("connection_established")
        await client.send_json({"type": "subscribe_event", "eventId": event_id, "since": 5})
        subscribed = await client.recv_type("subscribed")
        assert (subscribed["recovered"], subscribed["seq"], subscribed["availableSeats"]) == (
            True,
            10,
            490,
        )
        assert seqs(await client.collect(lambda m: len(m) == 5)) == [6, 7, 8, 9, 10]
        await publish_range(publisher, event_id, range(11, 12))
        assert (await client.recv_json())["seq"] == 11


async def test_since_when_history_is_gone(
    gateway: ServiceProcess, event_id: int, redis: aioredis.Redis, token: Callable[..., str]
) -> None:
    """History capped below `since + 1`: `recovered: false`, no replay, live from the state on."""
    short = Publisher(redis, history_size=3)
    await publish_range(short, event_id, range(1, 11))
    async with await WsClient.open(gateway.ws_url, "/ws", token(41)) as client:
        await client.recv_type("connection_established")
        await client.send_json({"type": "subscribe_event", "eventId": event_id, "since": 2})
        subscribed = await client.recv_type("subscribed")
        assert (subscribed["recovered"], subscribed["seq"], subscribed["availableSeats"]) == (
            False,
            10,
            490,
        )
        await publish_range(short, event_id, range(11, 12))
        assert (await client.recv_json())["seq"] == 11


async def test_since_up_to_date_and_unknown_events(
    gateway: ServiceProcess, event_id: int, publisher: Publisher, token: Callable[..., str]
) -> None:
    """`since` at the latest seq recovers nothing and is `recovered: true`; so is `since: 0` of a new event."""
    await publish_range(publisher, event_id, range(1, 3))
    fresh = next(_event_ids)
    async with await WsClient.open(gateway.ws_url, "/ws", token(42)) as client:
        await client.recv_type("connection_established")
        await client.send_json({"type": "subscribe_event", "eventId": event_id, "since": 2})
        assert (await client.recv_type("subscribed"))["recovered"] is True
        await client.send_json(
            {"type": "subscribe_event", "eventId": fresh, "since": 0, "mode": "add"}
        )
        subscribed = await client.recv_type("subscribed")
        assert (subscribed["recovered"], subscribed["seq"]) == (True, None)
        await client.send_json(
            {"type": "subscribe_event", "eventId": next(_event_ids), "since": 4, "mode": "add"}
        )
        assert (await client.recv_type("subscribed"))["recovered"] is False


async def test_since_merges_replay_and_live_without_gap_or_duplicate(
    gateway: ServiceProcess, event_id: int, publisher: Publisher, token: Callable[..., str]
) -> None:
    """Messages keep coming while a client recovers: it gets seq 1..N exactly once, in order."""
    await publish_range(publisher, event_id, range(1, 21))

    async def keep_publishing() -> None:
        for seq in range(21, 121):
            await publisher.publish(change(event_id, seq))
            # Yield between publishes, so the subscribe below lands in the middle of them.
            await scheduled_callbacks_run()

    async with await WsClient.open(gateway.ws_url, "/ws", token(43)) as client:
        await client.recv_type("connection_established")
        publishing = asyncio.create_task(keep_publishing())
        await client.send_json({"type": "subscribe_event", "eventId": event_id, "since": 0})
        assert (await client.recv_type("subscribed"))["recovered"] is True
        got = await client.collect(lambda m: bool(m) and m[-1]["seq"] == 120, timeout=20)
        await publishing
        assert seqs(got) == list(range(1, 121))


async def test_seq_jump_is_filled_from_history(
    gateway: ServiceProcess,
    event_id: int,
    redis: aioredis.Redis,
    publisher: Publisher,
    token: Callable[..., str],
) -> None:
    """A change that reached history but never pub/sub is filled in before the next one."""
    async with await WsClient.open(gateway.ws_url, f"/ws/events/{event_id}", token(44)) as client:
        await client.recv_type("connection_established")
        await client.recv_type("subscribed")
        await publish_range(publisher, event_id, range(1, 2))
        missing = change(event_id, 2)
        await redis.xadd(history_key(event_id), {"payload": missing.payload()}, id="2-0")
        await redis.hset(state_key(event_id), mapping={"seq": 2, "availableSeats": 498})
        await publish_range(publisher, event_id, range(3, 4))
        texts = [await client.recv_text() for _ in range(3)]
        assert [orjson.loads(t)["seq"] for t in texts] == [1, 2, 3]
        assert texts[1] == missing.payload().decode()


async def test_http_endpoints(gateway: ServiceProcess) -> None:
    """/healthz, /readyz, /metrics (every metric the contract names), `/` and `/client.js`."""
    async with httpx.AsyncClient(base_url=gateway.http_url) as http:
        assert (await http.get("/healthz")).status_code == 200
        ready = await http.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready"}
        metrics = (await http.get("/metrics")).text
        for name in (
            "seatcast_gateway_connections",
            "seatcast_gateway_subscriptions",
            "seatcast_gateway_redis_messages_total",
            "seatcast_gateway_deliveries_total",
            "seatcast_gateway_slow_consumer_disconnects_total",
            "seatcast_gateway_delivery_latency_seconds_bucket",
        ):
            assert name in metrics, name
        page = await http.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        script = await http.get("/client.js")
        assert script.status_code == 200
        assert "javascript" in script.headers["content-type"]
