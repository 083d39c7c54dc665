"""Smoke tests of `make bench`'s pieces: the floor server, the load client, /proc, the report.

No timing is asserted: figures are benchmark output, never test conditions.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from bench import procstat, report
from bench.__main__ import parse_args
from bench.control import LoadClient, LoadClientError
from bench.delivery import check_seqs, latency_summary
from bench.frames import text_frame
from bench.publisher import Feed, seat_change
from bench.resp import PushReader, RespError, command
from bench.servers import Backend, ServerProcess, ServerSpec, parse_servers
from bench.wsclient import (
    ACCEPT,
    CLOSE,
    PING,
    TEXT,
    FrameReader,
    ProtocolError,
    check_upgrade,
    client_frame,
)
from shared.messages import parse_iso
from shared.publisher import Publisher
from tests.conftest import JWT_SECRET
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer


@pytest.fixture
async def floor(redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[ServerProcess]:
    """A running floor server on its own Redis."""
    backend = Backend(redis_server.url, JWT_SECRET, "warning")
    server = ServerProcess(
        ServerSpec("floor", is_floor=True), free_port(), backend, tmp_path / "floor.log"
    )
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def load_client(tmp_path: Path) -> AsyncIterator[LoadClient]:
    """A load client process, told to quit after the test."""
    client = await LoadClient.start(tmp_path / "client.log")
    yield client
    await client.stop()


async def test_load_client_receives_every_seq_from_the_floor(
    floor: ServerProcess, load_client: LoadClient, redis_url: str
) -> None:
    """20 watchers of one event each get seqs 1..5 once, in order, with a latency each."""
    connected = await load_client.call(
        "connect", url=floor.ws_url, secret=JWT_SECRET, events=[7], perEvent=20
    )
    assert connected["connected"] == 20
    assert connected["failed"] == 0
    armed = await load_client.call("arm", expected=5)
    redis = Redis.from_url(redis_url)
    feed = Feed(Publisher(redis))
    await feed.burst(7, 5)
    await redis.aclose()
    got = await load_client.call("collect", quiet=10.0, deadline=30.0, serverPids=[floor.pid])
    assert armed["target"] == 100
    assert (got["delivered"], got["lost"], got["duplicates"], got["outOfOrder"]) == (100, 0, 0, 0)
    assert got["completeWatchers"] == 20
    assert got["latencyMs"]["max"] is not None
    assert feed.published == 5


async def test_floor_refuses_a_bad_token(floor: ServerProcess, load_client: LoadClient) -> None:
    """A token signed with another secret never gets a watcher connected."""
    reply = await load_client.call(
        "connect",
        url=floor.ws_url,
        secret="another-secret-that-is-long-enough!!",
        events=[1],
        perEvent=2,
    )
    assert (reply["connected"], reply["failed"]) == (0, 2)
    assert "401" in next(iter(reply["failures"]))


async def test_load_client_reports_an_unknown_command(load_client: LoadClient) -> None:
    """A command the client does not know comes back as an error, and the client goes on."""
    with pytest.raises(LoadClientError, match="unknown command"):
        await load_client.call("dance")
    assert (await load_client.call("arm", expected=1))["watchers"] == 0


def test_seq_check_counts_losses_duplicates_and_disorder() -> None:
    """Each departure from 1..n is counted once, under its own name."""
    assert check_seqs([1, 2, 3], 3).complete == 1
    check = check_seqs([1, 3, 3, 2, 9], 4)
    assert (check.lost, check.duplicates, check.out_of_order, check.unexpected) == (1, 1, 1, 1)
    assert check.complete == 0
    assert check_seqs([], 2).lost == 2


def test_latency_summary_uses_nearest_rank_in_milliseconds() -> None:
    """p50 of 1..100 ms is 50 ms, p99 is 99 ms, max 100 ms; nothing received gives None."""
    summary = latency_summary([n / 1000 for n in range(100, 0, -1)])
    assert summary == {"p50": 50.0, "p90": 90.0, "p99": 99.0, "max": 100.0}
    assert latency_summary([])["p99"] is None


def test_published_timestamps_keep_microseconds() -> None:
    """The publisher's timestamp parses back with microseconds, so latency is precise."""
    change = seat_change(3, 2)
    assert change.seq == 2
    assert len(change.timestamp) == len("2026-11-25T17:00:00.123456Z")
    assert parse_iso(change.timestamp).microsecond == int(change.timestamp[-7:-1])


def test_proc_stat_fields_survive_a_command_name_with_spaces_and_parens() -> None:
    """utime and stime are found after the last `)`, whatever the process is called."""
    line = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 1 0 1 2 3"
    fields = procstat.stat_fields(line)
    assert fields[procstat.PPID_INDEX] == "1"
    assert (fields[procstat.UTIME_INDEX], fields[procstat.STIME_INDEX]) == ("250", "75")
    assert procstat.schedstat_seconds("1500000000 20 3\n") == 1.5
    assert procstat.rss_kib("Name:\tx\nVmRSS:\t  2048 kB\n") == 2048


def test_proc_readings_of_this_process() -> None:
    """This process has used CPU and holds memory; a tree includes the root itself."""
    assert procstat.cpu(os.getpid()).total_seconds > 0
    assert procstat.rss(os.getpid()) > 0
    assert os.getpid() in procstat.process_tree(os.getpid())


def test_push_reader_splits_arrays_across_any_chunking() -> None:
    """Pushes fed one byte at a time come out whole and in order; an error reply raises."""
    data = (
        b"*3\r\n$9\r\nsubscribe\r\n$3\r\nabc\r\n:1\r\n"
        b'*3\r\n$7\r\nmessage\r\n$3\r\nabc\r\n$7\r\n{"a":1}\r\n'
    )
    reader, pushes = PushReader(), []
    for index in range(len(data)):
        pushes += reader.feed(data[index : index + 1])
    assert pushes == [[b"subscribe", b"abc", 1], [b"message", b"abc", b'{"a":1}']]
    assert command(b"SUBSCRIBE", b"x") == b"*2\r\n$9\r\nSUBSCRIBE\r\n$1\r\nx\r\n"
    with pytest.raises(RespError, match="ERR"):
        PushReader().feed(b"-ERR wrong\r\n")


@pytest.mark.parametrize(
    ("size", "header"),
    [
        (5, b"\x81\x05"),
        (126, b"\x81\x7e\x00\x7e"),
        (70000, b"\x81\x7f" + (70000).to_bytes(8, "big")),
    ],
)
def test_text_frame_header_fits_the_payload_size(size: int, header: bytes) -> None:
    """A server text frame: FIN + text opcode, unmasked, 7/16/64-bit length."""
    payload = b"x" * size
    assert text_frame(payload) == header + payload


def test_frame_reader_returns_whole_messages_from_any_chunking() -> None:
    """Short, 16-bit-length, fragmented and control frames come out whole, byte by byte too."""
    long_text = b"y" * 300
    stream = (
        text_frame(b"hello")
        + text_frame(long_text)
        + b"\x01\x03abc"
        + b"\x89\x01p"
        + b"\x80\x03def"  # "abc" + ping + "def"
        + b"\x88\x02"
        + (4008).to_bytes(2, "big")
    )
    expected = [
        (TEXT, b"hello"),
        (TEXT, long_text),
        (PING, b"p"),
        (TEXT, b"abcdef"),
        (CLOSE, (4008).to_bytes(2, "big")),
    ]
    assert FrameReader().feed(stream) == expected
    reader, messages = FrameReader(), []
    for index in range(len(stream)):
        messages += reader.feed(stream[index : index + 1])
    assert messages == expected


def test_frame_reader_refuses_masked_server_frames() -> None:
    """A server must not mask its frames (RFC 6455 5.1)."""
    with pytest.raises(ProtocolError, match="masked"):
        FrameReader().feed(b"\x81\x85\x00\x00\x00\x00hello")


def test_upgrade_answer_must_be_101_with_the_right_accept() -> None:
    """Only a 101 carrying the accept value of the client's key completes the upgrade."""
    check_upgrade(b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: " + ACCEPT.encode())
    with pytest.raises(ProtocolError, match="403"):
        check_upgrade(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0")
    with pytest.raises(ProtocolError, match="Accept"):
        check_upgrade(b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: nope")
    assert client_frame(CLOSE, b"\x03\xe9") == b"\x88\x82\x00\x00\x00\x00\x03\xe9"


def test_server_list_parses_variants_and_refuses_unknown_ones() -> None:
    """`floor`, `gateway[:<workers>[:<transport>]]`; anything else is an error."""
    specs = parse_servers("floor, gateway, gateway:2, gateway:1:aiofastnet")
    assert [(s.is_floor, s.workers, s.socket_transport) for s in specs] == [
        (True, 1, "uvloop"),
        (False, 1, "uvloop"),
        (False, 2, "uvloop"),
        (False, 1, "aiofastnet"),
    ]
    bad_names = (
        "",
        "nginx",
        "gateway:quick",
        "gateway:two",
        "gateway:1:tcp",
        "gateway:fast",
        "floor,floor",
    )
    for bad in bad_names:
        with pytest.raises(ValueError, match="server"):
            parse_servers(bad)


def test_only_picks_scenarios_and_refuses_unknown_ones(capsys: pytest.CaptureFixture[str]) -> None:
    """`--only paced,routing` names scenarios; a typo stops before anything starts."""
    assert parse_args(["--only", "paced, routing"]).only == frozenset({"paced", "routing"})
    assert parse_args([]).only is None
    with pytest.raises(SystemExit):
        parse_args(["--only", "pacing"])
    assert "--only takes some of" in capsys.readouterr().err


async def test_profiled_gateway_is_measured_not_its_profiler(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Under `--profile`, CPU and memory are read from the gateway, and py-spy writes its samples."""
    backend = Backend(redis_server.url, JWT_SECRET, "warning", profile_dir=tmp_path)
    server = ServerProcess(
        ServerSpec("gateway", is_floor=False), free_port(), backend, tmp_path / "g.log"
    )
    await server.start()
    try:
        assert server.pid != server._process.pid  # type: ignore[union-attr]
        assert "gateway" in procstat.command_line(server.pid)
    finally:
        assert await server.stop() == 0
    assert (tmp_path / "g.speedscope.json").stat().st_size > 0


def _delivery(cpu: float, p99: float, lost: int = 0) -> dict[str, Any]:
    return {
        "delivered": 10,
        "expectedDeliveries": 10,
        "cpuUsPerDelivery": cpu,
        "kernelShare": 0.5,
        "latencyMs": {"p50": 1.0, "p90": 2.0, "p99": p99, "max": 9.0},
        "lost": lost,
        "duplicates": 0,
        "outOfOrder": 0,
        "closes": {"4008": 1},
        "clientCpuUsPerDelivery": 5.0,
    }


def test_report_takes_medians_worst_losses_and_ratios_to_the_floor(tmp_path: Path) -> None:
    """Two runs become medians (losses: the worst run), with ratios and a table and a plot."""
    runs = [
        {"run": 1, "server": "floor", "results": {"paced": _delivery(10.0, 4.0)}},
        {"run": 2, "server": "floor", "results": {"paced": _delivery(14.0, 6.0)}},
        {"run": 1, "server": "gateway:x", "results": {"paced": _delivery(20.0, 8.0, lost=3)}},
        {"run": 2, "server": "gateway:x", "results": {"paced": _delivery(30.0, 10.0)}},
        {"run": 1, "server": "gateway:y", "results": {"start": {"error": "exited with status 2"}}},
        {"run": 1, "server": "gateway:z", "results": {"paced": _delivery(24.0, 8.0)}},
        {"run": 2, "server": "gateway:z", "results": {"paced": {"error": "no client connected"}}},
    ]
    summary = report.summarize(runs, ["floor", "gateway:x", "gateway:y", "gateway:z"])
    paced = summary["gateway:x"]["paced"]
    assert paced["cpuUsPerDelivery"] == 25.0
    assert paced["ratioToFloor"] == pytest.approx(25.0 / 12.0)
    assert paced["p99AboveFloorMs"] == pytest.approx(4.0)
    assert paced["lost"] == 3
    assert paced["closes"] == {"4008": 2}
    meta = {
        "started": "2026-11-25T17:00:00+00:00",
        "command": "python -m bench",
        "mode": "full",
        "runs": 2,
        "sizes": {
            "paced_watchers": 1000,
            "burst_watchers": 5000,
            "routing_events": 1000,
            "routing_watchers": 5,
        },
        "machine": {"cpus": 2, "cpuModel": "cpu", "kernel": "6", "python": "3.11"},
    }
    paths = report.write(tmp_path / "run", {"meta": meta, "summary": summary, "runs": runs})
    table = (tmp_path / "run" / "results.md").read_text()
    assert "| gateway:x | 25.0 µs (2.08\N{MULTIPLICATION SIGN})" in table
    assert "gateway:y, start: exited with status 2" in table
    assert "| gateway:z | 24.0 µs (2.00\N{MULTIPLICATION SIGN}), 1 run(s) failed |" in table
    assert "gateway:z, paced: no client connected" in table
    assert (tmp_path / "latest.png").read_bytes().startswith(b"\x89PNG")
    assert len(paths) == 6
