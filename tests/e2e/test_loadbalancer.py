"""A real nginx, configured from deploy/nginx, in front of three gateway replicas.

300 clients connect through nginx and are spread over the replicas; bookings
go through nginx too. One replica gets SIGTERM: its clients are closed with
1012, reconnect through nginx to the others with `since`, and every client
ends with every seq exactly once, in order. Skipped, with the reason, where
nginx is not installed.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.binaries import needs_binary
from tests.support.manifests import write_nginx_config
from tests.support.ports import free_port
from tests.support.processes import ServiceProcess
from tests.support.wait import wait_until
from tests.support.watching import (
    BookingLoad,
    RecordingWatcher,
    Watchers,
    create_event,
    diagnostics,
    event_state,
    report,
    until,
)

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
pytestmark = [
    needs_binary("nginx", "apt-get install nginx-light"),
    pytest.mark.timeout(180),
]

CLIENTS = 300
REPLICAS = 3
DRAIN_SECONDS = 2


class Nginx:
    """nginx in the foreground with a config of its own in a temporary directory."""

    def __init__(self, gateways: list[str], api: list[str]) -> None:
        self.port = free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="seatcast-nginx-")
        root = Path(self._dir.name)
        # Workers run as an unprivileged user when nginx starts as root: let them in.
        root.chmod(0o755)
        (root / "temp").mkdir()
        self._config = write_nginx_config(root, listen_port=self.port, gateways=gateways, api=api)
        self._root = root
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> Nginx:
        assert NGINX is not None
        self.process = subprocess.Popen(
            [NGINX, "-p", str(self._root), "-c", str(self._config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wait_until(self._answers, timeout=20, what="nginx answering")
        return self

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            error = self.process.stderr.read().decode() if self.process.stderr else ""
            raise RuntimeError(f"nginx exited: {error} {self.error_log()}")
        try:
            return httpx.get(f"{self.http_url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def error_log(self) -> str:
        path = self._root / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()
        self._dir.cleanup()


@pytest.fixture
def replicas(service: Callable[..., ServiceProcess], redis_url: str) -> list[ServiceProcess]:
    env = {"REDIS_URL": redis_url, "DRAIN_SECONDS": str(DRAIN_SECONDS)}
    return [service("gateway", env) for _ in range(REPLICAS)]


@pytest.fixture
def nginx(
    replicas: list[ServiceProcess],
    service: Callable[..., ServiceProcess],
    database_url: str,
    redis_url: str,
) -> Iterator[Nginx]:
    api = service("booking_api", {"DATABASE_URL": database_url, "REDIS_URL": redis_url})
    proxy = Nginx([f"127.0.0.1:{g.port}" for g in replicas], [f"127.0.0.1:{api.port}"])
    try:
        yield proxy.start()
    finally:
        proxy.close()


def connections(replica: ServiceProcess) -> int:
    """The replica's open client connections, from its /metrics."""
    text = httpx.get(f"{replica.http_url}/metrics", timeout=5).text
    match = re.search(r"^seatcast_gateway_connections (\S+)$", text, re.MULTILINE)
    assert match is not None, text
    return int(float(match.group(1)))


async def test_sigterm_behind_nginx_moves_clients_to_the_other_replicas_losing_nothing(
    nginx: Nginx, replicas: list[ServiceProcess], token: Callable[..., str]
) -> None:
    """300 clients through nginx land on all three replicas; SIGTERM on one closes its
    clients with 1012 within the drain window, they reconnect through nginx to the other
    two with `since`, and every client ends with every seq once, in order."""
    event_id = await create_event(nginx.http_url, token(1, admin=True))
    watchers = Watchers(
        [RecordingWatcher([nginx.ws_url], token(1000 + n), event_id) for n in range(CLIENTS)]
    ).start()
    await until(watchers.all_subscribed, 60, f"{CLIENTS} clients subscribed through nginx")
    spread = [await asyncio.to_thread(connections, r) for r in replicas]
    assert sum(spread) == CLIENTS
    assert all(count > 0 for count in spread), spread

    users = [token(2000 + n) for n in range(8)]
    load = BookingLoad(nginx.http_url, users, event_id, interval=0.03)
    booking = asyncio.create_task(load.run())
    await until(lambda: watchers.min_seq() >= 10, 60, "10 changes delivered")

    victim = replicas[0]
    victim.signal(signal.SIGTERM)
    terminated_at = time.monotonic()
    assert await asyncio.to_thread(victim.wait, DRAIN_SECONDS + 10) == 0
    moved = [w for w in watchers.watchers if 1012 in w.close_codes]
    assert len(moved) == spread[0]
    assert all(w.close_codes[0] == 1012 for w in moved)
    explain = diagnostics(watchers, replicas)
    await until(watchers.all_subscribed, 30, "every client subscribed again", explain)
    report(
        "replica SIGTERM (drain 2 s) -> all its clients resubscribed through nginx",
        max(w.subscribed_at[-1] for w in moved) - terminated_at,
    )
    report(
        "1012 close -> resubscribed elsewhere, slowest client",
        max(_first_after(w.subscribed_at, w.closed_at[0]) - w.closed_at[0] for w in moved),
    )
    survivors = [await asyncio.to_thread(connections, r) for r in replicas[1:]]
    assert sum(survivors) == CLIENTS

    seen = watchers.max_seq()
    await until(lambda: watchers.min_seq() >= seen + 10, 60, "changes after the drain", explain)
    load.stop()
    await booking
    final = await event_state(nginx.http_url, event_id)
    await until(lambda: watchers.all_reached(final["seq"]), 60, f"all at {final}", explain)
    await watchers.stop()
    watchers.assert_exactly_once(final["seq"], final["availableSeats"])
    assert load.failures == []


def _first_after(instants: list[float], start: float) -> float:
    return min(t for t in instants if t > start)
