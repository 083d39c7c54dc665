"""A command run in the background whose output lines tests wait for."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import IO

from tests.support.processes import ROOT
from tests.support.wait import wait_until


def cli_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for `python -m shared.toolbox.cli`: this checkout first on the path."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("JWT_SECRET", "DATABASE_URL", "REDIS_URL")
    }
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra or {})
    return env


def run_cli(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run `python -m shared.toolbox.cli ARGS` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "shared.toolbox.cli", *args],
        env=cli_env(env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class Streamed:
    """A running process; every line it writes is collected as it arrives."""

    def __init__(
        self, argv: Sequence[str], env: Mapping[str, str], cwd: str | os.PathLike[str] = ROOT
    ) -> None:
        self.process = subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        assert self.process.stdout is not None
        assert self.process.stderr is not None
        self._readers = [
            threading.Thread(
                target=self._collect, args=(self.process.stdout, self.stdout), daemon=True
            ),
            threading.Thread(
                target=self._collect, args=(self.process.stderr, self.stderr), daemon=True
            ),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _collect(stream: IO[str], into: list[str]) -> None:
        for line in stream:
            into.append(line.rstrip("\n"))

    def wait_for(
        self, predicate: Callable[[str], bool], timeout: float, what: str, *, stderr: bool = False
    ) -> str:
        """The first line (stdout, or stderr) matching `predicate`; fails on timeout or early exit."""
        lines = self.stderr if stderr else self.stdout

        def found() -> str | None:
            for line in list(lines):
                if predicate(line):
                    return line
            if self.process.poll() is not None:
                self.finish(5)
                raise AssertionError(
                    f"exited {self.process.returncode} before {what}:\n{self.transcript()}"
                )
            return None

        line = wait_until(found, timeout=timeout, what=what)
        assert line is not None
        return line

    def finish(self, timeout: float) -> int:
        """Wait for the exit and for the readers to drain the pipes."""
        code = self.process.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None and not any(r.is_alive() for r in self._readers):
                stream.close()
        return code

    def transcript(self) -> str:
        return "\n".join(["--- stdout", *self.stdout, "--- stderr", *self.stderr])

    def interrupt(self) -> None:
        self.process.send_signal(signal.SIGINT)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.finish(10)
