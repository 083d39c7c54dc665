"""`seatcast run` (`make run`): the whole system on one machine with one command.

PostgreSQL and Redis are the ones DATABASE_URL and REDIS_URL name, else
embedded ones with their data under the data directory (`.data/` by default,
`--data-dir` or SEATCAST_DATA_DIR). Then the booking API and the gateway
replicas start as child processes, demo events are seeded through the API,
and the addresses and tokens are printed. Ctrl-C (or SIGTERM) stops every
process in order — gateways, API, Redis, PostgreSQL — and keeps the data.
A part that cannot start stops the launch with one line naming it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlencode, urlsplit

from shared.redis_connect import connect as redis_connect
from shared.settings import MIN_SECRET_BYTES, fail
from shared.tokens import mint_token
from shared.toolbox.api_client import ApiRequestFailed, ApiUnreachable
from shared.toolbox.children import Child, Interrupted, StartFailed, last_words
from shared.toolbox.embedded import EmbeddedPostgres, redis_child
from shared.toolbox.seed import seed_demo_events

ROOT = Path(__file__).resolve().parents[2]
SERVICE_READY_SECONDS = 60.0
REDIS_READY_SECONDS = 20.0
TOKEN_TTL_SECONDS = 24 * 3600
ADMIN_USER, DEMO_USER, SECOND_USER = 1, 10, 11
# Short in development: Ctrl-C should not wait out a production drain window.
DEV_DRAIN_SECONDS = "2"
STOP_GRACE_SECONDS = 15.0
SUPERVISE_SECONDS = 0.5
DEFAULT_API_PORT = 8000


@dataclass(frozen=True)
class Plan:
    host: str
    api_port: int
    gateway_ports: tuple[int, ...]
    data_dir: Path

    @property
    def public_host(self) -> str:
        """The host to print in URLs: a wildcard address is not one a browser can open."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host

    @property
    def api_url(self) -> str:
        return f"http://{self.public_host}:{self.api_port}"

    def gateway_http(self, port: int) -> str:
        return f"http://{self.public_host}:{port}"

    def gateway_ws(self, port: int) -> str:
        return f"ws://{self.public_host}:{port}"


@dataclass
class Part:
    """A row of the status table."""

    name: str
    address: str
    pid: int | None
    state: str


class StopSignal:
    """SIGINT/SIGTERM set a flag the launcher checks; a second one forces the stop."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.count = 0

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        self.event.set()
        if self.count == 2:
            print("seatcast: stopping now (killing what is left)", file=sys.stderr, flush=True)

    def requested(self) -> bool:
        return self.event.is_set()

    def forced(self) -> bool:
        return self.count >= 2


def parse_plan(args: argparse.Namespace) -> Plan:
    try:
        ports = tuple(int(p) for p in str(args.gateway_ports).split(",") if p.strip())
    except ValueError:
        ports = ()
    if not ports or any(not 0 < p < 65536 for p in ports):
        fail(f"--gateway-ports must be ports like 8001,8002, got {args.gateway_ports!r}")
    if len({args.api_port, *ports}) != len(ports) + 1:
        fail("the API and every gateway need a port of their own")
    return Plan(args.host, args.api_port, ports, Path(args.data_dir))


def jwt_secret(data_dir: Path) -> str:
    """JWT_SECRET from the environment, else the one kept in the data dir (made on first run)."""
    secret = os.environ.get("JWT_SECRET", "")
    if secret:
        if len(secret.encode()) < MIN_SECRET_BYTES:
            raise StartFailed(f"JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes long")
        return secret
    path = data_dir / "jwt_secret"
    if path.exists():
        return path.read_text().strip()
    secret = secrets.token_urlsafe(48)
    path.touch(mode=0o600)
    path.write_text(secret + "\n")
    return secret


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


async def _redis_answers(url: str) -> None:
    client = redis_connect(url)
    try:
        await asyncio.wait_for(client.ping(), 3)
    finally:
        await client.aclose()


def redis_answers(url: str) -> bool:
    try:
        asyncio.run(_redis_answers(url))
    except Exception:  # any failure means "not yet"
        return False
    return True


def hide_password(url: str) -> str:
    parts = urlsplit(url)
    return url if parts.password is None else url.replace(f":{parts.password}@", ":***@", 1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Stack:
    """Everything `seatcast run` started, in start order."""

    plan: Plan
    stop: StopSignal
    parts: list[Part] = field(default_factory=list)
    postgres: EmbeddedPostgres | None = None
    redis: Child | None = None
    api: Child | None = None
    gateways: list[Child] = field(default_factory=list)
    secret: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def logs(self) -> Path:
        return self.plan.data_dir / "logs"

    def _checkpoint(self) -> None:
        if self.stop.requested():
            raise Interrupted

    def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.secret = jwt_secret(self.plan.data_dir)
        self._check_ports()
        database_url = self._start_postgres()
        self._checkpoint()
        redis_url = self._start_redis()
        self._checkpoint()
        self._start_api(database_url, redis_url)
        self._checkpoint()
        self._start_gateways(redis_url)
        self._checkpoint()
        admin = mint_token(self.secret, ADMIN_USER, admin=True, ttl_seconds=TOKEN_TTL_SECONDS)
        try:
            self.events = seed_demo_events(self.plan.api_url, admin)
        except (ApiRequestFailed, ApiUnreachable) as error:
            raise StartFailed(f"seeding demo events through the booking API: {error}") from None

    def _check_ports(self) -> None:
        wanted = [("booking API", self.plan.api_port, "--api-port")]
        wanted += [
            (f"gateway {i}", p, "--gateway-ports") for i, p in enumerate(self.plan.gateway_ports, 1)
        ]
        for name, port, option in wanted:
            if port_in_use(self.plan.host, port):
                raise StartFailed(
                    f"{name}: port {port} on {self.plan.host} is already in use "
                    f"(another `make run`? stop it or pass {option})"
                )

    def _start_postgres(self) -> str:
        url = os.environ.get("DATABASE_URL", "").strip()
        if url:
            self.parts.append(Part("PostgreSQL", hide_password(url), None, "external"))
            return url
        pgdata = self.plan.data_dir / "pg"
        print(f"seatcast: starting embedded PostgreSQL in {pgdata} …", flush=True)
        self.postgres = EmbeddedPostgres(pgdata)
        url = self.postgres.start()
        self.parts.append(
            Part("PostgreSQL", f"embedded, data in {pgdata}", self.postgres.pid, "ready")
        )
        return url

    def _start_redis(self) -> str:
        url = os.environ.get("REDIS_URL", "").strip()
        if url:
            if not redis_answers(url):
                raise StartFailed(f"Redis at REDIS_URL {hide_password(url)} does not answer PING")
            self.parts.append(Part("Redis", hide_password(url), None, "external"))
            return url
        port = free_port()
        url = f"redis://127.0.0.1:{port}/0"
        self.redis = redis_child(
            self.plan.data_dir / "redis",
            "127.0.0.1",
            port,
            self.logs / "redis.log",
            dict(os.environ),
        )
        self.redis.start()
        self.redis.wait_ready(lambda: redis_answers(url), REDIS_READY_SECONDS, self.stop.requested)
        self.parts.append(
            Part(
                "Redis",
                f"{url} (embedded, data in {self.plan.data_dir / 'redis'})",
                self.redis.pid,
                "ready",
            )
        )
        return url

    def _child_env(self, redis_url: str) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        env.update(REDIS_URL=redis_url, JWT_SECRET=self.secret)
        env.setdefault("LOG_LEVEL", "info")
        return env

    def _service(self, name: str, module: str, port: int, env: dict[str, str], log: str) -> Child:
        argv = [sys.executable, "-m", module, "--host", self.plan.host, "--port", str(port)]
        child = Child(name, argv, env, self.logs / log)
        child.start()
        return child

    def _start_api(self, database_url: str, redis_url: str) -> None:
        env = self._child_env(redis_url)
        env["DATABASE_URL"] = database_url
        env.setdefault("CORS_ORIGINS", self._cors_origins())
        self.api = self._service(
            "booking API", "booking_api", self.plan.api_port, env, "booking_api.log"
        )
        self.api.wait_ready(
            lambda: http_ok(f"{self.plan.api_url}/readyz"),
            SERVICE_READY_SECONDS,
            self.stop.requested,
        )
        self.parts.append(Part("booking API", self.plan.api_url, self.api.pid, "ready"))

    def _cors_origins(self) -> str:
        if self.plan.host not in ("127.0.0.1", "localhost"):
            return "*"
        return ",".join(
            f"http://{h}:{p}" for p in self.plan.gateway_ports for h in ("127.0.0.1", "localhost")
        )

    def _start_gateways(self, redis_url: str) -> None:
        env = self._child_env(redis_url)
        env.setdefault("DRAIN_SECONDS", DEV_DRAIN_SECONDS)
        for i, port in enumerate(self.plan.gateway_ports, 1):
            self.gateways.append(
                self._service(f"gateway {i}", "gateway", port, env, f"gateway-{port}.log")
            )
        for child, port in zip(self.gateways, self.plan.gateway_ports, strict=True):
            url = self.plan.gateway_http(port)
            child.wait_ready(
                partial(http_ok, f"{url}/readyz"), SERVICE_READY_SECONDS, self.stop.requested
            )
            self.parts.append(Part(child.name, url, child.pid, "ready"))

    # ---------------- running ----------------

    def supervise(self) -> None:
        """Until a stop signal: report any child that exits on its own."""
        while not self.stop.event.wait(SUPERVISE_SECONDS):  # poll
            for child in self._children():
                status = child.exit_status()
                if status is None or child.reported_exit:
                    continue
                child.reported_exit = True
                self._set_state(child, f"exited ({status})")
                print(
                    f"seatcast: {child.name} (pid {child.pid}) exited with status {status}: "
                    f"{last_words(child.log_path)}; the rest keeps running, Ctrl-C stops it",
                    flush=True,
                )

    def _children(self) -> list[Child]:
        return [c for c in (self.redis, self.api, *self.gateways) if c is not None]

    def _set_state(self, child: Child, state: str) -> None:
        for part in self.parts:
            if part.pid == child.pid:
                part.state = state

    def shutdown(self, verbose: bool = True) -> None:
        """Stop in reverse order: gateways (they drain), API, Redis, PostgreSQL."""
        groups: list[list[Child | None]] = [list(self.gateways), [self.api], [self.redis]]
        for group in groups:
            running = [c for c in group if c is not None and c.exit_status() is None]
            for child in running:
                child.terminate()
            for child in running:
                status = child.wait_stopped(STOP_GRACE_SECONDS, self.stop.forced)
                if verbose:
                    print(f"seatcast: {child.name} {stopped_how(status)}", flush=True)
            for member in group:
                if member is not None:
                    member.close_log()
        if self.postgres is not None:
            self.postgres.stop()
            self.postgres = None
            if verbose:
                print("seatcast: embedded PostgreSQL stopped", flush=True)


def stopped_how(status: int | None) -> str:
    # uvicorn re-raises the SIGTERM it handled, so -15 is a clean stop too.
    if status in (0, -signal.SIGTERM):
        return "stopped"
    if status == -signal.SIGKILL:
        return "killed"
    return f"stopped (exit status {status})"


def summary(stack: Stack, seconds: float) -> str:
    plan = stack.plan
    user = mint_token(stack.secret, DEMO_USER, ttl_seconds=TOKEN_TTL_SECONDS)
    second = mint_token(stack.secret, SECOND_USER, ttl_seconds=TOKEN_TTL_SECONDS)
    admin = mint_token(stack.secret, ADMIN_USER, admin=True, ttl_seconds=TOKEN_TTL_SECONDS)
    first, *others = plan.gateway_ports
    replicas = ",".join(plan.gateway_ws(p) for p in plan.gateway_ports)

    def page(port: int, token: str) -> str:
        query = {"token": token, "gateways": replicas}
        if plan.api_port != DEFAULT_API_PORT:
            # The page looks for the API on its own host at port 8000 unless told.
            query["api"] = plan.api_url
        return f"{plan.gateway_http(port)}/?" + urlencode(query, safe=":/,")

    width = max(len(p.name) for p in stack.parts)
    rows = [
        f"  {p.name:<{width}}  {p.state:<8}  pid {p.pid if p.pid else '-':<7}  {p.address}"
        for p in stack.parts
    ]
    events = ", ".join(f"#{e['id']} {e['name']}" for e in stack.events[:6])
    watch = f"seatcast watch --event 1 --url {replicas}"
    if not os.environ.get("JWT_SECRET"):
        watch = f"JWT_SECRET=$(cat {plan.data_dir / 'jwt_secret'}) {watch}"
    lines = [
        "",
        f"seatcast is running (ready in {seconds:.1f} s)",
        "",
        *rows,
        "",
        f"  Demo page     {page(first, user)}",
    ]
    if others:
        lines.append(f"  2nd replica   {page(others[0], second)}")
        lines.append(
            "                (user 11 on another replica: book in one window, watch both update)"
        )
    lines += [
        f"  Events        {events or 'none'}",
        f"  User token    {user}",
        "                (user 10, valid 24 h)",
        f"  Admin token   {admin}",
        "                (user 1, role admin, valid 24 h)",
        f"  Terminal      {watch}",
        f"  Logs          {stack.logs}/ (one file per process)",
        "",
        f"Ctrl-C stops everything; data stays in {plan.data_dir}/ for the next run.",
    ]
    return "\n".join(lines)


def run_stack(args: argparse.Namespace) -> int:
    """Start everything, supervise until a stop signal, stop everything; the exit status."""
    began = time.monotonic()
    plan = parse_plan(args)
    stop = StopSignal()
    stop.install()
    stack = Stack(plan, stop)
    started = False
    try:
        try:
            plan.data_dir.mkdir(parents=True, exist_ok=True)
            stack.start()
        except StartFailed as error:
            print(f"seatcast: {error}", file=sys.stderr, flush=True)
            return 1
        except Interrupted:
            return 0
        started = True
        print(summary(stack, time.monotonic() - began), flush=True)
        stack.supervise()
        print("seatcast: stopping …", flush=True)
        return 0
    finally:
        # Also after an unexpected error: nothing this run started may outlive it.
        stack.shutdown(verbose=started)
