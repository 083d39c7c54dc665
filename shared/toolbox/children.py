"""Child processes of `seatcast run`: started, waited on until ready, stopped in order.

Each child runs in its own session, so a Ctrl-C in the terminal reaches only
the launcher, which then stops the children in order (gateways, API, Redis).
On Linux each child also gets SIGTERM if the launcher dies without cleaning
up, so a killed `make run` leaves no process holding the ports.
"""

from __future__ import annotations

import ctypes
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

PR_SET_PDEATHSIG = 1
POLL_SECONDS = 0.1


class StartFailed(Exception):
    """A part of the stack could not start; the message names the part and says why."""


class Interrupted(Exception):
    """The user asked to stop while the stack was starting."""


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def last_words(log: Path) -> str:
    """The last meaningful line a process wrote: a JSON log line's message, or the raw line."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "no output"
    for line in reversed(lines):
        line = line.strip()
        if not line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            return line[:300]
        if isinstance(entry, dict):
            exception = str(entry.get("exception", "")).strip().splitlines()
            message = str(entry.get("message", line))
            return (f"{message}: {exception[-1]}" if exception else message)[:300]
        return line[:300]
    return "no output"


class Child:
    """One supervised process; its stdout and stderr go to `log_path`."""

    def __init__(
        self, name: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.log_path = log_path
        # None until start(); kept after exit to report the status.
        self.process: subprocess.Popen[bytes] | None = None
        # The open log file while the process may still write to it.
        self._log: IO[bytes] | None = None
        self.reported_exit = False

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def exit_status(self) -> int | None:
        """None while running (or never started), else the exit status."""
        return self.process.poll() if self.process else None

    def start(self) -> None:
        self._log = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        except OSError as error:
            raise StartFailed(
                f"{self.name}: cannot start {self.argv[0]}: {error.strerror}"
            ) from None

    def wait_ready(
        self, ready: Callable[[], bool], timeout: float, stop_requested: Callable[[], bool]
    ) -> None:
        """Poll `ready` until it is true; StartFailed if the process exits or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.exit_status()
            if status is not None:
                raise StartFailed(
                    f"{self.name} exited with status {status}: {last_words(self.log_path)}"
                )
            if ready():
                return
            if stop_requested():
                raise Interrupted
            if time.monotonic() > deadline:
                why = f"{last_words(self.log_path)} (log: {self.log_path})"
                raise StartFailed(f"{self.name} was not ready after {timeout:g} s: {why}")
            time.sleep(POLL_SECONDS)  # poll

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait_stopped(self, timeout: float, force_requested: Callable[[], bool]) -> int | None:
        """Wait for the exit after terminate(); SIGKILL after `timeout` or when forced."""
        if self.process is None:
            return None
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if force_requested() or time.monotonic() > deadline:
                self.process.kill()
                self.process.wait()
                break
            time.sleep(POLL_SECONDS)  # poll
        self.close_log()
        return self.process.returncode

    def close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
