"""SOCKET_TRANSPORT: whose transports carry the accepted sockets, on the gateway's uvloop loop."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from gateway.process.transports import AIOFASTNET, UVLOOP, serve_clients_with

pytestmark = pytest.mark.timeout(30)


class Echo(asyncio.Protocol):
    """Keeps its transport and writes back what it reads."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


async def _accepted_transport(transport: str) -> tuple[str, str, bytes]:
    """The modules of the accepted and the outgoing socket's transports, and an echo."""
    loop = asyncio.get_running_loop()
    serve_clients_with(loop, transport)
    accepted: list[Echo] = []

    def make() -> Echo:
        accepted.append(Echo())
        return accepted[-1]

    server = await loop.create_server(make, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        outgoing = type(writer.transport).__module__
        writer.write(b"seat")
        echoed = await asyncio.wait_for(reader.readexactly(4), 5)
        writer.close()
        await writer.wait_closed()
    finally:
        server.close()
    return type(accepted[0].transport).__module__, outgoing, echoed


@pytest.mark.parametrize(("transport", "module"), [(AIOFASTNET, "aiofastnet"), (UVLOOP, "uvloop")])
def test_accepted_sockets_get_the_chosen_transport(transport: str, module: str) -> None:
    """aiofastnet's transports for SOCKET_TRANSPORT=aiofastnet, uvloop's own by default;
    outgoing connections (Redis) keep uvloop's either way."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        accepted, outgoing, echoed = runner.run(_accepted_transport(transport))
    assert accepted.split(".")[0] == module
    assert outgoing.split(".")[0] == "uvloop"
    assert echoed == b"seat"


def test_an_unknown_transport_is_refused() -> None:
    with (
        asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner,
        pytest.raises(ValueError, match="unknown socket transport 'asyncio'"),
    ):
        runner.run(_accepted_transport("asyncio"))
