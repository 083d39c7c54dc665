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
    output = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, check=True
    ).stdout
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
        args = [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--cluster-enabled",
            "yes",
            "--dir",
            str(node_dir),
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
            # Explicit bus port: the default (port + 10000) overflows for high free ports.
            "--cluster-port",
            str(self.bus_ports[port]),
        ]
        self.processes[port] = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
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
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *nodes,
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
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
        self.resume_node(port)

    def resume_node(self, port: int) -> None:
        """Start a stopped master again and wait until the cluster is whole."""
        self.start_node(port)
        wait_until(self._healthy, timeout=20, what="cluster state ok after restart")

    def close(self) -> None:
        for port in list(self.processes):
            self.stop_node(port)
        self._dir.cleanup()

    def owner(self, key: str) -> int:
        """The port of the master owning `key`'s slot."""
        with self.client() as client:
            node = client.get_node_from_key(key)
        assert node is not None
        return int(node.port)

    def node_client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=5)

    def flush(self) -> None:
        """Empty every master, so a test starts from a cluster with no keys."""
        for port in self.ports:
            with self.node_client(port) as client:
                client.flushall()

    def node_id(self, port: int) -> str:
        with self.node_client(port) as client:
            return str(client.execute_command("CLUSTER", "MYID").decode())

    def move_slot(self, slot: int, to_port: int) -> None:
        """Migrate one slot, keys and all, to another master (what `redis-cli --cluster
        reshard` does for each slot): IMPORTING/MIGRATING, MIGRATE the keys, SETSLOT NODE."""
        source = next(p for p in self.ports if self._owns(p, slot))
        source_id, target_id = self.node_id(source), self.node_id(to_port)
        with self.node_client(to_port) as target, self.node_client(source) as origin:
            target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
            origin.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
            while keys := origin.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
                origin.execute_command(
                    "MIGRATE", "127.0.0.1", to_port, "", 0, 5000, "REPLACE", "KEYS", *keys
                )
            for port in (to_port, source, *[p for p in self.ports if p not in (to_port, source)]):
                with self.node_client(port) as client:
                    client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        wait_until(lambda: self._agree(slot, to_port), timeout=20, what=f"slot {slot} moved")

    def _owns(self, port: int, slot: int) -> bool:
        with self.node_client(port) as client:
            for first, last, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if first <= slot <= last and int(master[1]) == port:
                    return True
        return False

    def _agree(self, slot: int, port: int) -> bool:
        """Every master names `port` as the slot's owner."""
        for asked in self.ports:
            with self.node_client(asked) as client:
                owners = [
                    int(master[1])
                    for first, last, master, *_ in client.execute_command("CLUSTER", "SLOTS")
                    if first <= slot <= last
                ]
            if owners != [port]:
                return False
        return True

    def shard_subscribers(self, port: int, channel: str) -> tuple[int, int]:
        """(sharded subscribers, classic subscribers) of `channel` on one node."""
        with self.node_client(port) as client:
            sharded = client.execute_command("PUBSUB", "SHARDNUMSUB", channel)
            classic = client.execute_command("PUBSUB", "NUMSUB", channel)
        return int(sharded[1]), int(classic[1])
