"""The runner's side of the load client: a subprocess spoken to in JSON lines."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from orjson import dumps, loads

from bench.servers import ROOT

# Connecting thousands of clients or waiting out a burst can take minutes.
REPLY_SECONDS = 600.0
# One reply line: a few hundred bytes, but never cut one short.
LINE_LIMIT = 1 << 20


class LoadClientError(Exception):
    """The load client failed a command or exited."""


class LoadClient:
    """One `python -m bench.loadclient` process."""

    def __init__(self, process: asyncio.subprocess.Process, log_path: Path) -> None:
        self._process = process
        self._log_path = log_path

    @classmethod
    async def start(cls, log_path: Path) -> LoadClient:
        with log_path.open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.loadclient",
                cwd=ROOT,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                limit=LINE_LIMIT,
            )
        return cls(process, log_path)

    @property
    def pid(self) -> int:
        return self._process.pid

    async def call(self, cmd: str, **fields: Any) -> dict[str, Any]:
        """Send one command and return its reply; LoadClientError on failure."""
        stdin, stdout = self._process.stdin, self._process.stdout
        assert stdin is not None
        assert stdout is not None
        stdin.write(dumps({"cmd": cmd, **fields}) + b"\n")
        await stdin.drain()
        line = await asyncio.wait_for(stdout.readline(), REPLY_SECONDS)
        if not line:
            raise LoadClientError(f"the load client exited; see {self._log_path}")
        reply: dict[str, Any] = loads(line)
        if "error" in reply:
            raise LoadClientError(f"{cmd}: {reply['error']}")
        return reply

    async def stop(self) -> None:
        """Ask it to close every watcher and quit; kill it if it does not."""
        stdin = self._process.stdin
        if self._process.returncode is None and stdin is not None:
            try:
                stdin.write(dumps({"cmd": "quit"}) + b"\n")
                await stdin.drain()
                stdin.close()
                await asyncio.wait_for(self._process.wait(), 30.0)
            except (OSError, TimeoutError):
                self._process.kill()
                await self._process.wait()
