"""The servers under test: the floor, and the gateway in the configurations to compare.

`--servers floor,gateway,gateway:2,gateway:1:aiofastnet` names them: `floor`, or
`gateway[:<WORKERS>[:<SOCKET_TRANSPORT>]]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench import procstat
from shared.settings import GATEWAY_VARIABLES, SOCKET_TRANSPORTS

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SERVERS = "floor,gateway,gateway:1:aiofastnet"
# A 200-message burst to one client is ~40 KB; nothing in a benchmark should overflow.
OUTBOUND_BUFFER_BYTES = 8 << 20
START_SECONDS = 30.0
STOP_SECONDS = 20.0
POLL_SECONDS = 0.05


def profiler_command(output: Path) -> list[str]:
    """`py-spy record` in front of a command: on-CPU samples of it and its workers.

    Speedscope's format keeps the samples in order, so a scenario's part of
    the run can be told from the connects before it; it opens in speedscope.app.
    """
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    return [
        py_spy,
        "record",
        "--rate",
        "250",
        "--subprocesses",
        "--format",
        "speedscope",
        "--output",
        str(output),
        "--",
    ]


class ServerFailed(Exception):
    """The server exited or never became ready; the message says why."""


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """One server variant to measure."""

    name: str
    is_floor: bool
    workers: int = 1
    socket_transport: str = SOCKET_TRANSPORTS[0]


def parse_servers(text: str) -> list[ServerSpec]:
    """`floor,gateway:wsproto,...` as specs; ValueError names the first bad one."""
    specs = [_parse_server(name.strip()) for name in text.split(",") if name.strip()]
    if not specs:
        raise ValueError("--servers names no server")
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"--servers names a server twice: {text!r}")
    return specs


def _parse_server(name: str) -> ServerSpec:
    if name == "floor":
        return ServerSpec(name, is_floor=True)
    kind, _, rest = name.partition(":")
    workers, _, transport = rest.partition(":")
    workers, transport = workers or "1", transport or SOCKET_TRANSPORTS[0]
    if kind != "gateway" or not workers.isdigit() or transport not in SOCKET_TRANSPORTS:
        raise ValueError(
            f"unknown server {name!r}: use floor or "
            f"gateway[:<workers>[:<{'|'.join(SOCKET_TRANSPORTS)}>]]"
        )
    return ServerSpec(name, is_floor=False, workers=int(workers), socket_transport=transport)


@dataclass(frozen=True, slots=True)
class Backend:
    """What every server under test is given."""

    redis_url: str
    jwt_secret: str = field(repr=False)
    log_level: str
    # Set by `--profile`: every gateway runs under `py-spy record`, its samples written here.
    profile_dir: Path | None = None


class ServerProcess:
    """One server under test on a given port, its output kept in a log file."""

    def __init__(self, spec: ServerSpec, port: int, backend: Backend, log_path: Path) -> None:
        self.spec = spec
        self.port = port
        self._backend = backend
        self._log_path = log_path
        # The running process; None before start and after stop.
        self._process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        """The server's process: under `--profile`, the one py-spy started, not py-spy."""
        assert self._process is not None
        if not self._profiled:
            return self._process.pid
        children = procstat.children_of(self._process.pid)
        return children[0] if children else self._process.pid

    @property
    def _profiled(self) -> bool:
        return self._backend.profile_dir is not None and not self.spec.is_floor

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.returncode is None

    def _command(self) -> list[str]:
        if self.spec.is_floor:
            return [
                sys.executable,
                "-m",
                "bench.floor",
                "--port",
                str(self.port),
                "--redis-url",
                self._backend.redis_url,
            ]
        command = [sys.executable, "-m", "gateway"]
        if not self._profiled:
            return command
        return [*profiler_command(self._profile_path()), *command]

    def _profile_path(self) -> Path:
        assert self._backend.profile_dir is not None
        return self._backend.profile_dir / self._log_path.with_suffix(".speedscope.json").name

    def _environment(self) -> dict[str, str]:
        # The gateway reads nothing of the caller's settings: only what is set here.
        env = {key: value for key, value in os.environ.items() if key not in GATEWAY_VARIABLES}
        env.update(
            HOST="127.0.0.1",
            PORT=str(self.port),
            REDIS_URL=self._backend.redis_url,
            JWT_SECRET=self._backend.jwt_secret,
            LOG_LEVEL=self._backend.log_level,
            OUTBOUND_BUFFER_BYTES=str(OUTBOUND_BUFFER_BYTES),
            # Nobody is connected when the runner stops a server: no drain to wait for.
            DRAIN_SECONDS="0",
            WORKERS=str(self.spec.workers),
            SOCKET_TRANSPORT=self.spec.socket_transport,
        )
        return env

    async def start(self) -> None:
        """Start and wait for `GET /readyz` to answer 200; ServerFailed otherwise."""
        with self._log_path.open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                *self._command(),
                env=self._environment(),
                cwd=ROOT,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = asyncio.get_running_loop().time() + START_SECONDS
        while await http_status(self.port, "/readyz") != 200:
            if not self.alive:
                status = self._process.returncode
                raise ServerFailed(f"exited with status {status}: {self.last_log_line()}")
            if asyncio.get_running_loop().time() > deadline:
                await self.stop()
                raise ServerFailed(f"not ready after {START_SECONDS:g} s: {self.last_log_line()}")
            await asyncio.sleep(POLL_SECONDS)  # poll

    async def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after a while; the exit status."""
        process, self._process = self._process, None
        if process is None:
            return None
        if process.returncode is None and self._profiled:
            # py-spy writes its samples once the gateway it started has exited;
            # a SIGTERM to py-spy itself would lose them.
            for child in procstat.children_of(process.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGTERM)
        elif process.returncode is None:
            process.terminate()
        if process.returncode is None:
            try:
                await asyncio.wait_for(process.wait(), STOP_SECONDS)
            except TimeoutError:
                process.kill()
                await process.wait()
        return process.returncode

    def last_log_line(self) -> str:
        lines = self._log_path.read_text(errors="replace").strip().splitlines()
        return lines[-1][:300] if lines else "(no output)"


async def http_status(port: int, path: str) -> int | None:
    """The status of `GET path` on 127.0.0.1:port, or None when nothing answers."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2.0)
    except (OSError, TimeoutError):
        return None
    try:
        request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        writer.write(request.encode())
        status_line = await asyncio.wait_for(reader.readline(), 2.0)
    except (OSError, TimeoutError):
        return None
    finally:
        writer.close()
    parts = status_line.split()
    return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None
