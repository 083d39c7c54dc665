"""Real `python -m booking_api` and `python -m gateway` processes for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import httpx

from tests.support.ports import free_port
from tests.support.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]


class ServiceProcess:
    """One service process on a free port; its stderr (JSON logs) kept in a file."""

    def __init__(self, module: str, env: Mapping[str, str], port: int | None = None) -> None:
        self.module = module
        self.port = port or free_port()
        self.env = {**os.environ, **env, "PORT": str(self.port), "HOST": "127.0.0.1"}
        self.env.setdefault("PYTHONPATH", str(ROOT))
        self.log_file = tempfile.NamedTemporaryFile(
            prefix=f"seatcast-{module}-", suffix=".log", delete=False
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self, ready_path: str = "/readyz", timeout: float = 30.0) -> ServiceProcess:
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module],
            env=self.env,
            cwd=ROOT,
            stdout=self.log_file,
            stderr=self.log_file,
        )
        wait_until(
            lambda: self._ready(ready_path), timeout=timeout, what=f"{self.module} {ready_path}"
        )
        return self

    def _ready(self, path: str) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(
                f"{self.module} exited with {self.process.returncode}:\n{self.logs()}"
            )
        try:
            return httpx.get(self.http_url + path, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def logs(self) -> str:
        return Path(self.log_file.name).read_text(errors="replace")

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code = self.process.returncode
        self.process = None
        return code

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def close(self) -> None:
        self.stop()
        self.log_file.close()
        Path(self.log_file.name).unlink(missing_ok=True)
