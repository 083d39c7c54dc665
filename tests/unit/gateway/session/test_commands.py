"""Client messages parsed into commands (or the contract's error), and the replies' shapes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.session import commands as protocol
from gateway.session.commands import (
    GetStats,
    Ping,
    ProtocolError,
    RefreshToken,
    SubscribeEvent,
    UnsubscribeEvent,
    parse,
    parse_event_id,
)

INVALID = ProtocolError("invalid_message", "Invalid message format")
BAD_EVENT = ProtocolError("invalid_event_id", "eventId must be a positive integer")


def frame(message: object) -> str:
    return json.dumps(message)


@pytest.mark.parametrize(
    ("message", "command"),
    [
        ({"type": "subscribe_event", "eventId": 7}, SubscribeEvent(7, add=False, since=None)),
        (
            {"type": "subscribe_event", "eventId": 7, "mode": "add"},
            SubscribeEvent(7, add=True, since=None),
        ),
        (
            {"type": "subscribe_event", "eventId": 7, "mode": "replace"},
            SubscribeEvent(7, False, None),
        ),
        (
            {"type": "subscribe_event", "eventId": 7, "since": 0},
            SubscribeEvent(7, add=False, since=0),
        ),
        (
            {"type": "subscribe_event", "eventId": 7, "since": 12, "mode": "add"},
            SubscribeEvent(7, True, 12),
        ),
        ({"type": "subscribe_event", "eventId": 7, "since": None}, SubscribeEvent(7, False, None)),
        ({"type": "unsubscribe_event", "eventId": 3}, UnsubscribeEvent(3)),
        ({"type": "ping"}, Ping()),
        ({"type": "ping", "extra": [1, 2]}, Ping()),
        ({"type": "get_stats"}, GetStats()),
        ({"type": "refresh_token", "token": "abc.def.ghi"}, RefreshToken("abc.def.ghi")),
        ({"type": "subscribe_event", "eventId": 2**63 - 1}, SubscribeEvent(2**63 - 1, False, None)),
    ],
)
def test_valid_commands(message: dict[str, object], command: object) -> None:
    """Every client message of contract section 5 parses to its command."""
    assert parse(frame(message)) == command


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "[]",
        "[1, 2]",
        "42",
        '"ping"',
        "null",
        "{}",
        '{"type": 1}',
        '{"type": null}',
        '{"type": ["ping"]}',
        '{"Type": "ping"}',
        '{"type": "ping"',
        "{'type': 'ping'}",
    ],
)
def test_invalid_message(text: str) -> None:
    """What is not a JSON object with a string `type` is `invalid_message`, `Invalid message format`."""
    assert parse(text) == INVALID


def test_binary_frames_are_invalid_messages() -> None:
    """Frames are JSON text; a binary frame, even of valid JSON, is `invalid_message`."""
    assert parse(b'{"type": "ping"}') == INVALID


@pytest.mark.parametrize("kind", ["pong", "subscribe", "PING", "", "booking_created", "x" * 500])
def test_unknown_type(kind: str) -> None:
    """An unknown `type` is `unknown_type`; the message quotes at most 64 characters of it."""
    result = parse(frame({"type": kind}))
    assert isinstance(result, ProtocolError)
    assert result.code == "unknown_type"
    assert len(result.message) < 100


@pytest.mark.parametrize(
    "event_id", [0, -1, 1.5, 7.0, "7", "", None, True, False, [7], {"id": 7}, 2**63, 10**30]
)
@pytest.mark.parametrize("kind", ["subscribe_event", "unsubscribe_event"])
def test_invalid_event_id(kind: str, event_id: object) -> None:
    """`eventId` must be a JSON integer > 0 (and fit a bigint); else `invalid_event_id`."""
    assert parse(frame({"type": kind, "eventId": event_id})) == BAD_EVENT


def test_missing_event_id() -> None:
    """A subscribe without `eventId` is `invalid_event_id`."""
    assert parse(frame({"type": "subscribe_event"})) == BAD_EVENT


@pytest.mark.parametrize("since", [-1, 1.5, "3", True, [], {}])
def test_invalid_since(since: object) -> None:
    """`since` must be a non-negative integer; anything else is `invalid_message` with a reason."""
    result = parse(frame({"type": "subscribe_event", "eventId": 1, "since": since}))
    assert result == ProtocolError("invalid_message", "since must be a non-negative integer")


@pytest.mark.parametrize("mode", ["ADD", "append", 1, None, True])
def test_invalid_mode(mode: object) -> None:
    """`mode` is "add" or "replace" (the default); anything else is `invalid_message`."""
    result = parse(frame({"type": "subscribe_event", "eventId": 1, "mode": mode}))
    assert isinstance(result, ProtocolError)
    assert result.code == "invalid_message"


@pytest.mark.parametrize("token", [None, "", 42, ["a"]])
def test_refresh_without_a_token(token: object) -> None:
    """`refresh_token` without a non-empty string token is `invalid_token`."""
    result = parse(frame({"type": "refresh_token", "token": token}))
    assert isinstance(result, ProtocolError)
    assert result.code == "invalid_token"


@pytest.mark.parametrize(
    ("segment", "expected"),
    [
        ("1", 1),
        ("42", 42),
        ("007", 7),
        ("0", None),
        ("-3", None),
        ("abc", None),
        ("1.5", None),
        ("", None),
        ("٣", None),
        ("9" * 19, None),
        (str(2**63 - 1), 2**63 - 1),
        ("1e3", None),
    ],
)
def test_path_event_ids(segment: str, expected: int | None) -> None:
    """A URL path eventId is a string of ASCII digits naming a positive bigint."""
    assert parse_event_id(segment) == expected


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(
    st.one_of(
        st.text(),
        st.binary(),
        json_values.map(frame),
        st.dictionaries(
            st.sampled_from(["type", "eventId", "since", "mode", "token"]), json_values
        ).map(frame),
        st.fixed_dictionaries(
            {"type": st.sampled_from(["subscribe_event", "unsubscribe_event", "refresh_token"])},
            optional={
                "eventId": json_values,
                "since": json_values,
                "mode": json_values,
                "token": json_values,
            },
        ).map(frame),
    )
)
def test_parse_never_raises(text: str | bytes) -> None:
    """Any frame gives a command or an error with one of the contract's codes, never an exception."""
    result = parse(text)
    if isinstance(result, ProtocolError):
        assert result.code in {
            "invalid_message",
            "unknown_type",
            "invalid_event_id",
            "invalid_token",
        }
        assert result.message
    else:
        assert isinstance(
            result, SubscribeEvent | UnsubscribeEvent | Ping | GetStats | RefreshToken
        )


def test_reply_shapes() -> None:
    """Server replies carry exactly the contract's fields."""
    assert set(protocol.connection_established("c1", None)) == {
        "type",
        "clientId",
        "eventId",
        "timestamp",
    }
    assert set(protocol.subscribed(1, 3, 47, None)) == {
        "type",
        "eventId",
        "seq",
        "availableSeats",
        "timestamp",
    }
    assert protocol.subscribed(1, None, None, False)["recovered"] is False
    assert set(protocol.unsubscribed(1)) == {"type", "eventId", "timestamp"}
    assert set(protocol.pong()) == {"type", "timestamp"}
    assert protocol.token_refreshed(None) == {"type": "token_refreshed", "expiresAt": None}
    assert protocol.error_message("forbidden", "no") == {
        "type": "error",
        "code": "forbidden",
        "message": "no",
    }
