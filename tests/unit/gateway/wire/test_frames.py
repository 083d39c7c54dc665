"""The server's pre-built frames as a WebSocket client reads them, and where whole client frames end.

Frames built by gateway/wire/frames.py are read back with websockets' own
client protocol (which refuses masked frames from a server); the frames fed
to `whole_frames_end` are serialised by websockets as a client would.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from gateway.wire.frames import ping_frame, text_frame, whole_frames_end

# Payload sizes at the edges of the three length encodings (7 bits, 16 bits, 64 bits).
SIZES = [0, 1, 125, 126, 127, 65_535, 65_536, 70_000]


def client() -> ClientProtocol:
    """A client-side protocol past its handshake, with no message size limit."""
    return ClientProtocol(parse_uri("ws://gateway.test/"), state=State.OPEN, max_size=None)


def received(data: bytes) -> list[Frame]:
    """The frames a client reads from `data`, failing the test on any protocol error."""
    protocol = client()
    protocol.receive_data(data)
    assert protocol.state is State.OPEN, protocol.close_exc
    return [event for event in protocol.events_received() if isinstance(event, Frame)]


def header_size(payload_size: int) -> int:
    """RFC 6455's shortest header for an unmasked frame of `payload_size` bytes."""
    return 2 if payload_size < 126 else 4 if payload_size < 65_536 else 10


@pytest.mark.parametrize("size", SIZES)
def test_text_frame_parses_as_one_unmasked_text_frame(size: int) -> None:
    """`text_frame` is what a client reads back as exactly that text: one final frame, shortest header."""
    payload = ("é" * (size // 2) + "a" * (size % 2)).encode()
    frame = text_frame(payload)
    assert len(frame) == header_size(size) + size
    [read] = received(frame)
    assert read.opcode is Opcode.TEXT
    assert read.fin
    assert (read.rsv1, read.rsv2, read.rsv3) == (False, False, False)
    assert read.data == payload


def test_text_frames_follow_one_another_in_one_write() -> None:
    """Frames joined into one write are read back as the same frames, in order."""
    payloads = [b"", b'{"seq":1}', b"x" * 200, b"y" * 70_000]
    read = received(b"".join(text_frame(payload) for payload in payloads))
    assert [frame.data for frame in read] == payloads


@pytest.mark.parametrize("size", [0, 4, 125])
def test_ping_frame_is_read_as_a_ping(size: int) -> None:
    """`ping_frame` is a ping carrying its payload, and the client answers it with a pong."""
    payload = bytes(range(size))
    protocol = client()
    protocol.receive_data(ping_frame(payload))
    [read] = protocol.events_received()
    assert isinstance(read, Frame)
    assert read.opcode is Opcode.PING
    assert read.fin
    assert read.data == payload
    assert protocol.data_to_send()  # the pong


def test_ping_frame_refuses_more_than_a_control_frame_carries() -> None:
    """A ping's payload is at most 125 bytes."""
    with pytest.raises(ValueError, match="125"):
        ping_frame(bytes(126))


# whole_frames_end

payload_sizes = st.one_of(
    st.integers(0, 125), st.integers(126, 65_535), st.integers(65_536, 70_000)
)
client_frames = st.lists(st.tuples(payload_sizes, st.booleans()), max_size=4)
# Sizes a max_size below them can refuse.
refusable_sizes = st.one_of(
    st.integers(1, 125), st.integers(126, 65_535), st.integers(65_536, 70_000)
)


def serialised(size: int, masked: bool) -> bytes:
    """A binary frame of `size` bytes as websockets writes it, masked as a client's or not."""
    frame = Frame(Opcode.BINARY, bytes([size % 251]) * size)
    return frame.serialize(mask=masked)


@given(client_frames, st.data(), st.booleans())
@settings(max_examples=200, deadline=None)
def test_whole_frames_end_is_the_end_of_the_last_whole_frame(
    specs: list[tuple[int, bool]], data: st.DataObject, as_bytearray: bool
) -> None:
    """Cut anywhere, the bytes' whole frames end exactly where the last complete one does."""
    encoded = [serialised(size, masked) for size, masked in specs]
    stream = b"".join(encoded)
    cut = data.draw(st.integers(0, len(stream)), label="cut")
    ends, end = [0], 0
    for frame in encoded:
        end += len(frame)
        ends.append(end)
    expected = max(end for end in ends if end <= cut)
    chunk = bytearray(stream[:cut]) if as_bytearray else stream[:cut]
    assert whole_frames_end(chunk, max_size=70_000) == (expected, False)


@given(client_frames, refusable_sizes, st.booleans(), st.data())
@settings(max_examples=200, deadline=None)
def test_whole_frames_end_flags_a_declared_payload_over_max_size(
    before: list[tuple[int, bool]], size: int, masked: bool, data: st.DataObject
) -> None:
    """A frame declaring more than max_size is flagged once its length is read, before its payload."""
    max_size = data.draw(st.integers(0, size - 1), label="max_size")
    allowed = [(min(s, max_size), m) for s, m in before]  # the frames before it fit
    head = b"".join(serialised(s, m) for s, m in allowed)
    large = serialised(size, masked)
    stream = head + large
    # The length is known once the first 2, 4 or 10 bytes of the frame are in.
    length_known = len(head) + header_size(size)
    cut = data.draw(st.integers(len(head), len(stream)), label="cut")
    end, too_large = whole_frames_end(stream[:cut], max_size=max_size)
    assert end == len(head)
    assert too_large is (cut >= length_known)
