"""A real three-master Redis Cluster on loopback ports, for the cluster tests.

Built from the machine's `redis-server` (Redis 7 or newer, which has sharded
pub/sub); `cluster_skip_reason()` says why the tests cannot run where it lacks.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import redis
from redis.cluster import RedisCluster

from tests.support.ports import free_port
from tests.support.wait import wait_until

MIN_MAJOR = 7


def _server_major(binary: str) -> int:
    output = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"v=(\d+)\.", output)
    return int(match.group(1)) if match else 0


def cluster_skip_reason() -> str | None:
    """None when a cluster can be built here, else why not."""
    binary = shutil.which("redis-server")
    if binary is None or shutil.which("redis-cli") is None:
        return "redis-server/redis-cli are not installed: Redis Cluster tests need Redis 7"
    major = _server_major(binary)
    if major < MIN_MAJOR:
        return f"redis-server is version {major}, Redis Cluster sharded pub/sub needs 7 or newer"
    return None


class RedisClusterServers:
    """Three cluster-enabled masters covering all 16384 slots."""

    def __init__(self, masters: int = 3) -> None:
        self.ports = [free_port() for _ in range(masters)]
        self.bus_ports = {port: free_port() for port in self.ports}
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self._dir = tempfile.TemporaryDirectory(prefix="seatcast-cluster-")

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def start_node(self, port: int) -> None:
        node_dir = Path(self._dir.name) / str(port)
        node_dir.mkdir(exist_ok=True)
        args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--cluster-enabled", "yes", "--dir", str(node_dir),
                "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000",
                # Explicit bus port: the default (port + 10000) overflows for high free ports.
                "--cluster-port", str(self.bus_ports[port])]
        self.processes[port] = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: self._answers(port), timeout=10, what=f"cluster node {port}")

    def _answers(self, port: int) -> bool:
        try:
            with redis.Redis(port=port, socket_timeout=1) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def start(self) -> None:
        for port in self.ports:
            self.start_node(port)
        nodes = [f"127.0.0.1:{port}" for port in self.ports]
        subprocess.run(["redis-cli", "--cluster", "create", *nodes, "--cluster-replicas", "0",
                        "--cluster-yes"], check=True, capture_output=True, timeout=30)
        wait_until(self._healthy, timeout=20, what="cluster state ok on every node")

    def _healthy(self) -> bool:
        for port in self.ports:
            try:
                with redis.Redis(port=port, socket_timeout=1) as client:
                    info = client.execute_command("CLUSTER", "INFO")
            except redis.RedisError:
                return False
            text = info.decode() if isinstance(info, bytes) else str(info)
            if "cluster_state:ok" not in text:
                return False
        return True

    def client(self) -> RedisCluster:
        return RedisCluster(host="127.0.0.1", port=self.ports[0], socket_timeout=5)

    def stop_node(self, port: int) -> None:
        process = self.processes.pop(port, None)
        if process is not None:
            process.terminate()
            process.wait(timeout=10)

    def restart_node(self, port: int) -> None:
        """Stop and start one master; it keeps its slots (nodes.conf) but not its data."""
        self.stop_node(port)
        self.start_node(port)
        wait_until(self._healthy, timeout=20, what="cluster state ok after restart")

    def close(self) -> None:
        for port in list(self.processes):
            self.stop_node(port)
        self._dir.cleanup()
