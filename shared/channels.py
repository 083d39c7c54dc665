"""Redis names of contract section 4.

The `{eventId}` hash tag puts an event's channel, history and state in one
Redis Cluster slot, so the publish script and sharded pub/sub stay on one shard.
"""

from __future__ import annotations

CHANNEL_PREFIX = "booking:event:"


def event_channel(event_id: int) -> str:
    """The pub/sub channel of an event: `booking:event:{42}`."""
    return f"{CHANNEL_PREFIX}{{{event_id}}}"


def history_key(event_id: int) -> str:
    """The history stream of an event, entry ids `<seq>-0`."""
    return f"{CHANNEL_PREFIX}{{{event_id}}}:history"


def state_key(event_id: int) -> str:
    """A hash with the event's latest `seq` and `availableSeats`."""
    return f"{CHANNEL_PREFIX}{{{event_id}}}:state"


def event_id_of_channel(channel: str | bytes) -> int:
    """The event id inside a channel name; raises ValueError for a foreign channel."""
    text = channel.decode() if isinstance(channel, bytes) else channel
    if not (text.startswith(CHANNEL_PREFIX + "{") and text.endswith("}")):
        raise ValueError(f"not an event channel: {text!r}")
    return int(text[len(CHANNEL_PREFIX) + 1 : -1])
