"""Publications parsed once from a Redis payload and encoded once for every watcher."""

from __future__ import annotations

import pytest

from gateway.fanout.publication import outgoing, parse_publication
from gateway.wire.frames import text_frame


def test_publication_is_parsed_once_and_kept_as_text() -> None:
    """A payload becomes one Publication whose text is the payload, byte for byte."""
    payload = '{"type":"booking_created","eventId":4,"seq":9,"timestamp":"2026-11-25T17:00:00.500Z","n":"é"}'
    publication = parse_publication(payload.encode())
    assert publication is not None
    assert (publication.event_id, publication.seq) == (4, 9)
    assert publication.text == payload
    assert publication.size == len(payload.encode())
    assert publication.published_at == pytest.approx(1795626000.5)
    assert publication.frame == text_frame(payload.encode())


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"nope",
        b"[]",
        b'{"eventId": 1}',
        b'{"seq": 1}',
        b'{"eventId": 0, "seq": 1}',
        b'{"eventId": 1, "seq": "2"}',
        b'{"eventId": true, "seq": 1}',
        b"\xff\xfe",
    ],
)
def test_malformed_publications_are_refused(payload: bytes) -> None:
    """A payload without a positive integer `eventId` and `seq` is not a publication."""
    assert parse_publication(payload) is None


def test_outgoing_counts_utf8_bytes() -> None:
    """The outbound byte budget counts encoded bytes, not characters."""
    reply = outgoing({"message": "ééé"})
    assert reply.size == len(reply.text.encode())
    assert reply.size > len(reply.text)
