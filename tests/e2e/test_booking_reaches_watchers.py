"""The whole path: bookings through a real `python -m booking_api` reach watchers on two gateway replicas."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from shared.messages import parse_iso
from tests.support.processes import ServiceProcess
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


async def test_bookings_and_cancellations_reach_both_replicas(
    api: ServiceProcess,
    service: Callable[..., ServiceProcess],
    redis_url: str,
    token: Callable[..., str],
) -> None:
    """Watchers on two replicas get every booking and cancellation, with every contract field, in seq order."""
    replicas = [service("gateway", {"REDIS_URL": redis_url}) for _ in range(2)]
    admin = {"Authorization": f"Bearer {token(1, admin=True)}"}
    user = {"Authorization": f"Bearer {token(42)}"}
    async with httpx.AsyncClient(base_url=api.http_url, timeout=10) as http:
        created = await http.post(
            "/api/events", json={"name": "Gateway night", "capacity": 50}, headers=admin
        )
        assert created.status_code == 201, created.text
        event = created.json()
        event_id = event["id"]
        watchers = [
            await WsClient.open(replica.ws_url, f"/ws/events/{event_id}", token(100 + n))
            for n, replica in enumerate(replicas * 2)
        ]
        try:
            for watcher in watchers:
                await watcher.recv_type("connection_established")
                subscribed = await watcher.recv_type("subscribed")
                assert subscribed["seq"] in (None, 0)
            bookings = []
            for seats in (2, 1, 3):
                response = await http.post(
                    "/api/bookings", json={"eventId": event_id, "seats": seats}, headers=user
                )
                assert response.status_code == 201, response.text
                bookings.append(response.json())
            cancelled = await http.delete(f"/api/bookings/{bookings[0]['bookingId']}", headers=user)
            assert cancelled.status_code == 200, cancelled.text
            expected = [("booking_created", b) for b in bookings] + [
                ("booking_cancelled", cancelled.json())
            ]
            for watcher in watchers:
                got = await watcher.collect(lambda m: len(m) == 4, timeout=20)
                assert [m["seq"] for m in got] == [1, 2, 3, 4]
                for message, (kind, booking) in zip(got, expected, strict=True):
                    assert set(message) == CHANGE_FIELDS
                    assert message["type"] == kind
                    assert message["eventId"] == event_id
                    assert message["bookingId"] == booking["bookingId"]
                    assert message["userId"] == 42
                    assert message["seats"] == booking["seats"]
                    assert message["availableSeats"] == booking["availableSeats"]
                    parse_iso(message["timestamp"])
            assert [m["availableSeats"] for m in got] == [48, 47, 44, 46]
        finally:
            for watcher in watchers:
                await watcher.close()
