"""A Redis Cluster of the tests' own: 3 primaries + 3 replicas on loopback.

A short ``cluster-node-timeout`` so that a killed primary's replica takes over in a few
seconds. Every node is a :class:`~tests.servers.Server` on a free port (never 6379), with
its ``nodes.conf`` in its own workdir, joined with ``CLUSTER MEET``, ``ADDSLOTSRANGE`` and
``REPLICATE`` (what ``redis-cli --cluster create`` sends, without needing redis-cli).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.crc import key_slot

from ..servers import Server, binaries, free_port
from ..waiting import wait_until

NODE_TIMEOUT_MS = 1000


@dataclass
class Cluster:
    nodes: list[Server] = field(default_factory=list)

    def url(self, scheme: str = "redis+cluster", count: int = 1) -> str:
        """A URL naming the first ``count`` nodes (any node will do as a seed)."""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.nodes[:count])
        return f"{scheme}://{hosts}"

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=1.0)

    def by_port(self, port: int) -> Server:
        return next(s for s in self.nodes if s.port == port)

    def slots(self) -> list[Any]:
        """``CLUSTER SLOTS`` as a live node answers it."""
        for node in self.nodes:
            with contextlib.suppress(redis.RedisError):
                if node.proc is not None:
                    return list(self.client(node.port).execute_command(  # type: ignore[no-untyped-call]
                        "CLUSTER", "SLOTS"))
        raise RuntimeError("no node answers")

    def owner(self, namespace: str) -> int:
        """The port of the primary serving ``namespace``'s slot."""
        slot = key_slot(namespace.encode())
        for start, end, primary, *_ in self.slots():
            if start <= slot <= end:
                return int(primary[1])
        raise RuntimeError(f"slot {slot} has no owner")

    def replica_of(self, port: int) -> int:
        """The port of a replica of the primary on ``port``."""
        for _, _, primary, *replicas in self.slots():
            if int(primary[1]) == port and replicas:
                return int(replicas[0][1])
        raise RuntimeError(f"{port} has no replica")

    def healthy(self) -> bool:
        """Every live node says the cluster is ok, every slot has a live primary, and every
        live replica is in sync with its primary."""
        try:
            for node in self.nodes:
                if node.proc is None:
                    continue
                info: Any = self.client(node.port).execute_command(  # type: ignore[no-untyped-call]
                    "CLUSTER", "INFO")
                text = info.decode() if isinstance(info, bytes) else str(info)
                if "cluster_state:ok" not in text:
                    return False
            live = {s.port for s in self.nodes if s.proc is not None}
            if not all(int(primary[1]) in live for _, _, primary, *_ in self.slots()):
                return False
            # Every live replica in sync: one that is not cannot take over in a failover.
            for port in live:
                info: Any = self.client(port).info("replication")
                if info["role"] == "slave" and info.get("master_link_status") != "up":
                    return False
            return True
        except redis.RedisError:
            return False

    def wait_healthy(self, timeout: float = 30.0) -> None:
        assert wait_until(self.healthy, timeout, step=0.1), "cluster not healthy"

    def stop(self) -> None:
        for s in self.nodes:
            s.stop()


@contextlib.contextmanager
def cluster() -> Iterator[Cluster]:
    found = binaries()
    exe = found.get("redis") or found["valkey"]
    topo = Cluster()
    try:
        for _ in range(6):
            topo.nodes.append(Server(exe, extra=(
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                "--cluster-port", str(free_port()))).start())
        join(topo.nodes, primaries=3)
        topo.wait_healthy()
        # Every replica in sync, so a failover loses nothing the test wrote before it.
        assert wait_until(lambda: all(len(replicas) == 1
                                      for _, _, _, *replicas in topo.slots()), 30.0)
        yield topo
    finally:
        topo.stop()


def join(servers: list[Server], primaries: int) -> None:
    """Make ``servers`` one cluster: the first ``primaries`` share the slots evenly, each of
    the rest replicates one of them in turn. Every server was started with
    ``--cluster-enabled yes`` and a ``--cluster-port``."""
    clients = [redis.Redis(port=s.port, socket_timeout=5.0) for s in servers]
    first = servers[0]
    bus_port = first.extra[first.extra.index("--cluster-port") + 1]
    for c in clients[1:]:
        c.execute_command(  # type: ignore[no-untyped-call]
            "CLUSTER", "MEET", "127.0.0.1", first.port, bus_port)
    bounds = [16384 * i // primaries for i in range(primaries + 1)]
    for i, c in enumerate(clients[:primaries]):
        c.execute_command(  # type: ignore[no-untyped-call]
            "CLUSTER", "ADDSLOTSRANGE", bounds[i], bounds[i + 1] - 1)
    ids = [c.execute_command("CLUSTER", "MYID").decode()  # type: ignore[no-untyped-call]
           for c in clients]

    def everyone_known() -> bool:
        return all(len(c.execute_command(  # type: ignore[no-untyped-call]
            "CLUSTER", "NODES").decode().splitlines()) == len(clients) for c in clients)

    assert wait_until(everyone_known, 30.0, step=0.05), "nodes never met"
    for i, replica in enumerate(clients[primaries:]):
        replica.execute_command(  # type: ignore[no-untyped-call]
            "CLUSTER", "REPLICATE", ids[i % primaries])
    for c in clients:
        c.close()
