"""Demo events for `make run`, created through the booking API like any admin would.

Idempotent by name: a second run finds them and creates nothing.
"""

from __future__ import annotations

from typing import Any

from shared.toolbox.api_client import request_json

DEMO_EVENTS: tuple[tuple[str, int], ...] = (
    ("Aurora Festival · Opening Night", 200),
    ("The Midnight Quartet · Blue Room Jazz Club", 40),
    ("Hamlet · Riverside Theatre", 120),
    ("Future of Cities Summit · Keynote", 500),
)


def seed_demo_events(api_url: str, admin_token: str) -> list[dict[str, Any]]:
    """Create the demo events that do not exist yet; return every event, oldest first."""
    existing = {event["name"] for event in request_json("GET", f"{api_url}/api/events")}
    for name, capacity in DEMO_EVENTS:
        if name not in existing:
            request_json(
                "POST",
                f"{api_url}/api/events",
                token=admin_token,
                body={"name": name, "capacity": capacity},
            )
    events: list[dict[str, Any]] = request_json("GET", f"{api_url}/api/events")
    return sorted(events, key=lambda event: int(event["id"]))
