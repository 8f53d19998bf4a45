"""A Sentinel deployment of the tests' own: 1 primary + 1 replica + 3 sentinels on loopback.

Short ``down-after-milliseconds`` and ``failover-timeout`` so that a failover (forced with
``SENTINEL FAILOVER``, or after a kill) completes in seconds. Every process is a
:class:`~tests.servers.Server` on a free port (never 6379); sentinels rewrite their
``sentinel.conf`` in their own workdir.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import redis

from ..servers import Server, binaries
from ..waiting import wait_until

SERVICE = "fc"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000


def binary() -> str:
    """The server binary with Sentinel built in (redis-server; the embedded Valkey else)."""
    found = binaries()
    return found.get("redis") or found["valkey"]


@dataclass
class SentinelServer(Server):
    """``redis-server <conf> --sentinel``: the config file must come first."""

    monitor_port: int = 0

    def start(self, timeout: float = 10.0) -> SentinelServer:
        conf = os.path.join(self.workdir, "sentinel.conf")
        if not os.path.exists(conf):  # a restart keeps what the sentinel learned
            with open(conf, "w") as f:
                f.write(f"port {self.port}\nbind 127.0.0.1\ndir {self.workdir}\n"
                        f"sentinel monitor {SERVICE} 127.0.0.1 {self.monitor_port} 2\n"
                        f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
                        f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n"
                        f"sentinel parallel-syncs {SERVICE} 1\n")
        self.proc = subprocess.Popen([self.binary, conf, "--sentinel"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sentinel exited with {self.proc.returncode}")
            with contextlib.suppress(redis.RedisError):
                if redis.Redis(port=self.port, socket_timeout=0.2).ping():
                    return self
            time.sleep(0.02)
        raise RuntimeError(f"sentinel did not answer on port {self.port}")


@dataclass
class Topology:
    primary: Server
    replica: Server
    sentinels: list[SentinelServer] = field(default_factory=list)

    @property
    def nodes(self) -> dict[int, Server]:
        return {s.port: s for s in (self.primary, self.replica)}

    def url(self, scheme: str = "redis+sentinel", userinfo: str = "", db: int | None = None
            ) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        at = f"{userinfo}@" if userinfo else ""
        tail = "" if db is None else f"/{db}"
        return f"{scheme}://{at}{hosts}/{SERVICE}{tail}"

    def sentinel_client(self, i: int = 0) -> redis.Redis:
        return redis.Redis(port=self.sentinels[i].port, socket_timeout=1.0)

    def master_port(self) -> int:
        """The primary's port as every sentinel reports it (waits until they agree)."""
        ports: set[int] = set()

        def agreed() -> bool:
            ports.clear()
            for i in range(len(self.sentinels)):
                with contextlib.suppress(redis.RedisError):
                    addr: Any = self.sentinel_client(i).sentinel_get_master_addr_by_name(
                        SERVICE)
                    ports.add(int(addr[1]))
            return len(ports) == 1

        assert wait_until(agreed, 15.0, step=0.05), f"sentinels disagree: {ports}"
        return ports.pop()

    def ready(self, timeout: float = 20.0) -> None:
        """Every sentinel knows the replica (in sync) and the other two sentinels."""

        def known() -> bool:
            for i in range(len(self.sentinels)):
                try:
                    info: Any = self.sentinel_client(i).sentinel_master(SERVICE)
                    replicas: Any = self.sentinel_client(i).sentinel_slaves(SERVICE)
                except redis.RedisError:
                    return False
                if (info.get("num-other-sentinels", 0) < len(self.sentinels) - 1
                        or not info.get("is_master") or info.get("is_sdown")
                        or not any(not r["is_sdown"] and r.get("master-link-status") == "ok"
                                   for r in replicas)):
                    return False
            return True

        assert wait_until(known, timeout, step=0.1), "sentinel topology not ready"

    def failover(self) -> tuple[int, int]:
        """``SENTINEL FAILOVER``; (old primary port, new primary port) once every sentinel
        reports the new one."""
        old = self.master_port()
        self.sentinel_client(0).execute_command(  # type: ignore[no-untyped-call]
            "SENTINEL", "FAILOVER", SERVICE)
        new: list[int] = []

        def switched() -> bool:
            port = self.master_port()
            new[:] = [port]
            return port != old

        assert wait_until(switched, 20.0, step=0.05), "no failover within 20 s"
        return old, new[0]

    def stop(self) -> None:
        for s in (*self.sentinels, self.replica, self.primary):
            s.stop()


@contextlib.contextmanager
def topology() -> Iterator[Topology]:
    exe = binary()
    primary = Server(exe).start()
    replica = Server(exe, extra=("--replicaof", "127.0.0.1", str(primary.port))).start()
    topo = Topology(primary, replica)
    try:
        for _ in range(3):
            topo.sentinels.append(SentinelServer(exe, monitor_port=primary.port).start())
        topo.ready()
        yield topo
    finally:
        topo.stop()
