"""The gateway's limits on real processes: slow consumers, frame size, rates, origins, connections, expiry."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from shared.publisher import Publisher
from tests.support.processes import ServiceProcess
from tests.support.wait import async_wait_until
from tests.support.ws_client import WsClient

Start = Callable[..., ServiceProcess]


def metric(gateway: ServiceProcess, name: str) -> float:
    for line in httpx.get(gateway.http_url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def metric_reaches(gateway: ServiceProcess, name: str, value: float) -> None:
    async def reached() -> bool:
        return await asyncio.to_thread(metric, gateway, name) >= value

    await async_wait_until(reached, timeout=20, what=f"{name} >= {value}")


async def open_slow_reader(gateway: ServiceProcess, path: str) -> WsClient:
    """A client whose kernel receive buffer is tiny and whose library stops reading at once."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", gateway.port))
    sock.setblocking(False)
    connection = await connect(
        gateway.ws_url + path,
        sock=sock,
        max_queue=1,
        ping_interval=None,
        max_size=None,
        compression=None,
    )
    return WsClient(connection)


async def test_slow_consumer_is_closed_4008_while_others_keep_up(
    service: Start, redis_url: str, redis: aioredis.Redis, token: Callable[..., str]
) -> None:
    """A client that stops reading overflows its own buffer and gets 4008; a reading one gets everything."""
    gateway = service(
        "gateway",
        {
            "REDIS_URL": redis_url,
            "OUTBOUND_BUFFER_BYTES": "262144",
            "PING_INTERVAL_SECONDS": "60",
        },
    )
    path = f"/ws/events/77?token={token(1)}"
    reader = await WsClient.open(gateway.ws_url, "/ws/events/77", token(2))
    slow = await open_slow_reader(gateway, path)
    for client in (reader, slow):
        await client.recv_type("connection_established")
        await client.recv_type("subscribed")
    publisher = Publisher(redis, history_size=50)
    # 600 x 16 KB: more than the stalled client's kernel buffers and its 256 KiB budget hold.
    pad = "x" * 16_000
    count = 600
    got: list[dict[str, object]] = []
    progress = asyncio.Condition()

    async def read_all() -> None:
        while len(got) < count:
            message = await reader.recv_json(timeout=30)
            async with progress:
                got.append(message)
                progress.notify_all()

    async def publish_paced() -> None:
        # The reading client stays within two messages (32 KB) of the publisher, far
        # inside its budget: only the client that stopped reading can overflow.
        for seq in range(1, count + 1):
            async with progress:
                await progress.wait_for(lambda seq=seq: len(got) >= seq - 2)
            payload = orjson.dumps(
                {"type": "booking_created", "eventId": 77, "seq": seq, "pad": pad}
            )
            await publisher.publish_payload(77, seq, 100, payload)

    async with asyncio.timeout(60):
        await asyncio.gather(read_all(), publish_paced())
    assert [m["seq"] for m in got] == list(range(1, count + 1))
    await metric_reaches(gateway, "seatcast_gateway_slow_consumer_disconnects_total", 1)
    assert await slow.closed(timeout=20) == (4008, "Slow consumer: outbound buffer overflowed")
    await slow.close()
    await reader.close()


async def test_frame_size_and_origins(
    service: Start, redis_url: str, token: Callable[..., str]
) -> None:
    """64 KiB frames pass, larger ones close with 1009; foreign origins get 403."""
    gateway = service(
        "gateway",
        {
            "REDIS_URL": redis_url,
            "ALLOWED_ORIGINS": "https://tickets.example",
            "DRAIN_SECONDS": "1",
        },
    )
    with pytest.raises(InvalidStatus) as refused:
        await WsClient.open(gateway.ws_url, "/ws", token(3), origin="https://evil.example")
    assert refused.value.response.status_code == 403
    async with await WsClient.open(
        gateway.ws_url, "/ws", token(3), origin="https://tickets.example"
    ) as client:
        await client.recv_type("connection_established")
        skeleton = '{"type":"ping","pad":""}'
        await client.send_text(skeleton.replace('""', '"' + "x" * (65_536 - len(skeleton)) + '"'))
        await client.recv_type("pong")
        await client.send_text(skeleton.replace('""', '"' + "x" * (65_537 - len(skeleton)) + '"'))
        code, _reason = await client.closed()
        assert code == 1009
    async with await WsClient.open(
        gateway.ws_url, "/ws", token(3)
    ) as client:  # no Origin: not a browser
        await client.recv_type("connection_established")


async def test_message_rate_limit(
    service: Start, redis_url: str, token: Callable[..., str]
) -> None:
    """More than MAX_CLIENT_MESSAGES_PER_SECOND messages in a second: close 1008."""
    gateway = service("gateway", {"REDIS_URL": redis_url, "MAX_CLIENT_MESSAGES_PER_SECOND": "5"})
    async with await WsClient.open(gateway.ws_url, "/ws", token(4)) as client:
        await client.recv_type("connection_established")
        for _ in range(8):
            await client.send_json({"type": "ping"})
        code, reason = await client.closed()
        assert (code, reason) == (1008, "Too many messages")
    async with await WsClient.open(gateway.ws_url, "/ws", token(4)) as client:
        await client.recv_type("connection_established")
        for _ in range(5):
            await client.send_json({"type": "ping"})
        for _ in range(5):
            await client.recv_type("pong")


async def test_max_subscriptions(service: Start, redis_url: str, token: Callable[..., str]) -> None:
    """`mode: add` past MAX_SUBSCRIPTIONS is `too_many_subscriptions`; switching still works."""
    gateway = service("gateway", {"REDIS_URL": redis_url, "MAX_SUBSCRIPTIONS": "2"})
    async with await WsClient.open(gateway.ws_url, "/ws", token(5)) as client:
        await client.recv_type("connection_established")
        for event_id in (1, 2, 2):
            await client.send_json({"type": "subscribe_event", "eventId": event_id, "mode": "add"})
            await client.recv_type("subscribed")
        await client.send_json({"type": "subscribe_event", "eventId": 3, "mode": "add"})
        assert (await client.recv_type("error"))["code"] == "too_many_subscriptions"
        await client.send_json({"type": "subscribe_event", "eventId": 3})
        assert (await client.recv_type("subscribed"))["eventId"] == 3


async def test_max_connections(service: Start, redis_url: str, token: Callable[..., str]) -> None:
    """At MAX_CONNECTIONS new clients are closed 1013 and /readyz is 503, until one leaves."""
    gateway = service("gateway", {"REDIS_URL": redis_url, "MAX_CONNECTIONS": "2"})
    first = await WsClient.open(gateway.ws_url, "/ws", token(6))
    second = await WsClient.open(gateway.ws_url, "/ws", token(7))
    for client in (first, second):
        await client.recv_type("connection_established")
    refused = await WsClient.open(gateway.ws_url, "/ws", token(8))
    assert (await refused.closed())[0] == 1013
    async with httpx.AsyncClient(base_url=gateway.http_url) as http:
        response = await http.get("/readyz")
        assert response.status_code == 503
        assert "connection limit reached" in response.json()["reasons"]
        await first.close()

        async def ready() -> bool:
            return (await http.get("/readyz")).status_code == 200

        await async_wait_until(ready, timeout=10, what="ready again")
    async with await WsClient.open(gateway.ws_url, "/ws", token(8)) as again:
        await again.recv_type("connection_established")
    await second.close()


async def test_token_expiry_closes_unless_refreshed(
    service: Start, redis_url: str, token: Callable[..., str]
) -> None:
    """A token that expires closes the connection 1008; a refreshed one keeps it open."""
    gateway = service("gateway", {"REDIS_URL": redis_url})
    refreshed = await WsClient.open(gateway.ws_url, "/ws", token(9, ttl_seconds=2))
    expiring = await WsClient.open(gateway.ws_url, "/ws", token(9, ttl_seconds=2))
    for client in (refreshed, expiring):
        await client.recv_type("connection_established")
    await refreshed.send_json({"type": "refresh_token", "token": token(9, ttl_seconds=3600)})
    await refreshed.recv_type("token_refreshed")
    assert await expiring.closed(timeout=10) == (1008, "Authentication token expired")
    await refreshed.send_json({"type": "ping"})
    await refreshed.recv_type("pong")
    await refreshed.close()


async def raw_upgrade(
    gateway: ServiceProcess, token: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket over a bare socket: the test reads and answers every frame itself."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(
        f"GET /ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert b" 101 " in head.split(b"\r\n", 1)[0]
    return reader, writer


async def test_dead_peers_are_dropped(
    service: Start, redis_url: str, token: Callable[..., str]
) -> None:
    """A peer that never answers the server's pings is disconnected."""
    gateway = service(
        "gateway",
        {"REDIS_URL": redis_url, "PING_INTERVAL_SECONDS": "0.3", "PING_TIMEOUT_SECONDS": "0.3"},
    )
    _, writer = await raw_upgrade(gateway, token(10))
    await metric_reaches(gateway, "seatcast_gateway_connections", 1)

    async def dropped() -> bool:
        return await asyncio.to_thread(metric, gateway, "seatcast_gateway_connections") == 0

    await async_wait_until(dropped, timeout=10, what="dead peer dropped")
    writer.close()


async def test_a_live_peer_is_pinged_again_and_again_and_kept(
    service: Start, redis_url: str, token: Callable[..., str]
) -> None:
    """Each pong schedules the next ping (one timer per process): three rounds, still connected."""
    gateway = service(
        "gateway",
        {"REDIS_URL": redis_url, "PING_INTERVAL_SECONDS": "0.2", "PING_TIMEOUT_SECONDS": "2"},
    )
    reader, writer = await raw_upgrade(gateway, token(10))
    pings = 0
    async with asyncio.timeout(10):
        while pings < 3:
            first, length = await reader.readexactly(2)
            length &= 0x7F
            if length == 126:
                length = int.from_bytes(await reader.readexactly(2), "big")
            payload = await reader.readexactly(length)
            if first & 0x0F == 0x9:
                pings += 1
                # A masked pong (a zero mask leaves the payload as is) with the ping's payload.
                writer.write(bytes((0x8A, 0x80 | len(payload))) + bytes(4) + payload)
    assert metric(gateway, "seatcast_gateway_connections") == 1
    writer.close()
    await writer.wait_closed()


def tcp_connections_to(port: int) -> int:
    """Established TCP connections to `port` on this host, from /proc/net/tcp{,6}."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                local, state = line.split()[1], line.split()[3]
                if int(local.rsplit(":", 1)[1], 16) == port and state == "01":
                    count += 1
    return count


async def test_a_client_that_never_reads_is_dropped(
    service: Start, redis_url: str, redis: aioredis.Redis, token: Callable[..., str]
) -> None:
    """Overflowed and sent a 4008 it never reads, a stalled client is dropped after the close timeout.

    `transport.close()` alone would wait for a buffer this client never drains:
    the close timeout aborts the connection instead.
    """
    gateway = service(
        "gateway",
        {"REDIS_URL": redis_url, "OUTBOUND_BUFFER_BYTES": "262144", "PING_INTERVAL_SECONDS": "60"},
    )
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    await asyncio.to_thread(sock.connect, ("127.0.0.1", gateway.port))
    request = (
        f"GET /ws/events/78?token={token(3)} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await asyncio.to_thread(sock.sendall, request.encode())
    assert b" 101 " in await asyncio.to_thread(sock.recv, 512)
    await metric_reaches(gateway, "seatcast_gateway_subscriptions", 1)
    assert tcp_connections_to(gateway.port) == 1
    publisher = Publisher(redis, history_size=50)
    pad = "x" * 16_000
    for seq in range(1, 601):
        payload = orjson.dumps({"type": "booking_created", "eventId": 78, "seq": seq, "pad": pad})
        await publisher.publish_payload(78, seq, 100, payload)
    await metric_reaches(gateway, "seatcast_gateway_slow_consumer_disconnects_total", 1)

    async def dropped() -> bool:
        return tcp_connections_to(gateway.port) == 0

    try:
        await async_wait_until(
            dropped, timeout=30, what="the stalled client's TCP connection dropped"
        )
    finally:
        sock.close()
