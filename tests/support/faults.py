"""Parts a fault test may break: a PostgreSQL server of its own, stopped and started at will.

The shared PostgreSQL serves every other test, so a test that restarts the
database gets a private server: `initdb` in a temporary directory and
`pg_ctl` on a free loopback port, from the machine's PostgreSQL binaries or
the ones the `pgserver` package ships. PostgreSQL refuses to run as root, so
under root the server runs as the `postgres` system user.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.support.ports import free_port

SERVER_USER = "postgres"
# Durability is not what these tests are about: trade it for speed.
FAST_SETTINGS = (
    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
    "-c max_connections=50 -c shared_buffers=16MB"
)


def postgres_bin_dir() -> Path | None:
    """A directory holding initdb and pg_ctl; None when there is none."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    # Located, not imported: importing pgserver touches the user's runtime directory.
    spec = importlib.util.find_spec("pgserver")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidates.append(Path(location) / "pginstall" / "bin")
    for directory in candidates:
        if (directory / "initdb").exists() and (directory / "pg_ctl").exists():
            return directory
    return None


def private_postgres_skip_reason() -> str | None:
    if postgres_bin_dir() is None:
        return "no PostgreSQL binaries (initdb, pg_ctl) here to run a private server"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            return f"running as root without a `{SERVER_USER}` user to run PostgreSQL as"
    return None


class PrivatePostgres:
    """One PostgreSQL server in a temporary directory; `stop`/`start` keep data and port."""

    def __init__(self) -> None:
        bin_dir = postgres_bin_dir()
        assert bin_dir is not None, private_postgres_skip_reason()
        self._bin = bin_dir
        self.port = free_port()
        self._tmp = tempfile.TemporaryDirectory(prefix="seatcast-private-pg-")
        self._data = Path(self._tmp.name) / "data"
        self._log = Path(self._tmp.name) / "server.log"
        self._user = SERVER_USER if os.geteuid() == 0 else None
        if self._user is not None:
            shutil.chown(self._tmp.name, user=self._user)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 60) -> None:
        result = subprocess.run(
            [str(self._bin / args[0]), *args[1:]],
            user=self._user,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self._tmp.name,
        )
        if result.returncode != 0:
            log = self._log.read_text() if self._log.exists() else ""
            raise RuntimeError(f"{args[0]} failed: {result.stderr}\n{log}")

    def init(self) -> PrivatePostgres:
        self._run(
            "initdb",
            "-D",
            str(self._data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        )
        return self

    def start(self) -> None:
        options = f"-p {self.port} -h 127.0.0.1 -k {self._tmp.name} {FAST_SETTINGS}"
        self._run(
            "pg_ctl",
            "-D",
            str(self._data),
            "-l",
            str(self._log),
            "-o",
            options,
            "-w",
            "-t",
            "30",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: `fast` disconnects clients and shuts down cleanly, `immediate` crashes."""
        self._run("pg_ctl", "-D", str(self._data), "-m", mode, "-w", "-t", "30", "stop")

    def running(self) -> bool:
        return (self._data / "postmaster.pid").exists()

    def close(self) -> None:
        if self.running():
            with contextlib.suppress(RuntimeError):
                self.stop("immediate")
        self._tmp.cleanup()
