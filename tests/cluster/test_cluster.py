"""fleetcache on a Redis Cluster (3 primaries + 3 replicas): the same behaviour as on one
server, then the slot's primary moves.

Real processes (forked workers, :mod:`tests.integration.procs`) on
``redis+cluster://...``: the core behaviour suite (:mod:`tests.integration.deployment`);
namespaces spread over the primaries and their notices stay in their shard. Then the
namespace's slot moves: migrated to another primary, failed over by hand (``CLUSTER
FAILOVER``), and its primary killed or stalled. Every worker follows, writes fail fast
while it happens and work after it, and no read is served stale past the documented bound
once the new owner took a write. Also: the CLI, cachelib's and Django's own suites, and a
TLS cluster.

The module shares one cluster; the tests that kill a node come last.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from fleetcache import BackendUnavailableError, FleetCache
from fleetcache.redis.cluster import slot_home

from ..integration import procs
from ..integration.deployment import (
    DeploymentSuite,
    bus_stats,
    clear,
    lose_the_primary,
    summary,
    wait_for_write,
    write_loop,
)
from ..integration.procs import ABSENT, Fleet, await_value, connected, hold
from ..servers import Server, binaries, free_port
from ..tls import certificate, tls_options
from ..waiting import wait_until
from .topology import Cluster, join

pytestmark = pytest.mark.slow

SLACK = 0.5  # scheduling slack on top of a documented bound (2 shared cores)


def home_port(cache: FleetCache) -> int:
    """The port of the primary this worker's cache writes to now."""
    home = slot_home(cache._tiers.process().client)
    assert home is not None
    return home.primary()[1]


# -- the core behaviour (tests.integration.deployment) --------------------------------------


class TestCoreBehaviourOnCluster(DeploymentSuite):
    @pytest.fixture
    def url(self, nodes: Cluster) -> str:
        return nodes.url()


# -- layout ---------------------------------------------------------------------------------


def namespaces_on_every_primary(nodes: Cluster) -> dict[int, str]:
    """One namespace whose slot each primary serves."""
    found: dict[int, str] = {}
    for i in range(200):
        found.setdefault(nodes.owner(f"app{i}"), f"app{i}")
        if len(found) == 3:
            return found
    raise AssertionError("could not find a namespace on every primary")


def test_namespaces_spread_over_primaries_and_notices_stay_in_their_shard(
    nodes: Cluster,
) -> None:
    owners = namespaces_on_every_primary(nodes)
    caches = {port: FleetCache.from_url(nodes.url(count=1), namespace=ns)
              for port, ns in owners.items()}
    try:
        for port, cache in caches.items():
            assert cache.connect(wait=5.0)
            cache.set_many({f"k{i}": i for i in range(20)}, tags=["t"])
            assert home_port(cache) == port
        for port, ns in owners.items():
            owner = nodes.client(port)
            # Every name of the namespace lives on its slot's primary, and nowhere else.
            assert owner.execute_command(  # type: ignore[no-untyped-call]
                "CLUSTER", "COUNTKEYSINSLOT", key_slot(ns.encode())) >= 20
            shard: Any = owner.execute_command(  # type: ignore[no-untyped-call]
                "PUBSUB", "SHARDCHANNELS")
            assert f"{{{ns}}}:inv".encode() in shard
            for other in set(owners) - {port}:
                elsewhere = nodes.client(other)
                assert f"{{{ns}}}:inv".encode() not in elsewhere.execute_command(  # type: ignore[no-untyped-call]
                    "PUBSUB", "SHARDCHANNELS")
                assert list(elsewhere.scan_iter(match=f"{{{ns}}}:*")) == []
            # No classic channel anywhere: classic PUBLISH floods every node of a cluster.
            assert owner.pubsub_channels() == []
    finally:
        for cache in caches.values():
            cache.close()


def test_the_cli_reads_and_flushes_a_namespace_on_the_cluster(
    nodes: Cluster, namespace: str,
) -> None:
    from ..integration.test_observe import cli

    url = nodes.url(count=2)
    cache = FleetCache.from_url(url, namespace=namespace, stats_interval=0.1)
    try:
        cache.set("user:1", {"name": "alice"}, tags=["user"])
        assert cache.get("user:1") == {"name": "alice"}
        done = cli("inspect", "user:1", "--url", url, "--namespace", namespace, "--json")
        assert done.returncode == 0, done.stderr
        assert '"state": "fresh"' in done.stdout and '"user"' in done.stdout

        def shown() -> bool:
            table = cli("stats", "--url", url, "--namespace", namespace)
            return table.returncode == 0 and "1 live worker(s)" in table.stdout

        assert wait_until(shown, 5.0, step=0.2)
        done = cli("flush", "--url", url, "--namespace", namespace, "--yes")
        assert done.returncode == 0 and "1 value(s) deleted" in done.stdout, done
        assert wait_until(lambda: cache.get("user:1") is None, 2.0)
    finally:
        cache.close()


def test_cachelibs_own_suite_passes_on_the_cluster(nodes: Cluster, tmp_path: Path) -> None:
    from ..peers.test_cachelib_suite import run_cachelib_suite

    run_cachelib_suite(nodes.url(count=2), tmp_path)


@pytest.mark.timeout(600)
def test_djangos_own_suite_passes_on_the_cluster(nodes: Cluster, tmp_path: Path) -> None:
    from ..peers.test_django_suite import run_django_suite

    run_django_suite(nodes.url(count=2), tmp_path)


def test_a_tls_cluster_serves_rediss_cluster_urls(tmp_path: Path, namespace: str) -> None:
    """3 primaries with TLS for clients and the cluster bus: the slot's owner is found,
    and followed, over TLS (CLUSTER SLOTS over TLS names the TLS ports)."""
    exe = binaries().get("redis")
    if exe is None:
        pytest.skip("TLS needs redis-server (the embedded Valkey is built without it)")
    cert, key = certificate(tmp_path)
    servers, tls_ports = [], []
    try:
        for _ in range(3):
            port, options = tls_options(cert, key)
            tls_ports.append(port)
            servers.append(Server(exe, extra=(
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-port", str(free_port()), "--tls-cluster", "yes", *options)).start())
        join(servers, primaries=3)
        Cluster(servers).wait_healthy()
        url = f"rediss+cluster://127.0.0.1:{tls_ports[0]}/?ssl_ca_certs={cert}"
        a = FleetCache.from_url(url, namespace=namespace)
        b = FleetCache.from_url(url, namespace=namespace)
        try:
            assert a.connect(wait=5.0) and b.connect(wait=5.0)
            a.set("k", 1)
            assert hold(b, "k") == 1
            a.set("k", 2)
            assert await_value(b, "k", 2, 2.0)
            assert home_port(a) in tls_ports
        finally:
            a.close()
            b.close()
        for i in range(20):  # fresh connections serve their first command (fleetcache.redis.tls)
            with FleetCache.from_url(url, namespace=namespace, stats_interval=0) as cache:
                cache.set(f"k{i}", i)
                assert cache.get_many([f"k{i}"]) == {f"k{i}": i}
    finally:
        for server in servers:
            server.stop()


# -- the slot moves -------------------------------------------------------------------------


def start_migration(nodes: Cluster, namespace: str, to: int) -> tuple[Any, Any, str]:
    """Mark ``namespace``'s slot as migrating to the primary on port ``to`` (source
    client, target client, target id)."""
    slot = key_slot(namespace.encode())
    src, dst = nodes.client(nodes.owner(namespace)), nodes.client(to)
    src_id, dst_id = (c.execute_command("CLUSTER", "MYID").decode()  # type: ignore[no-untyped-call]
                      for c in (src, dst))
    dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)  # type: ignore[no-untyped-call]
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)  # type: ignore[no-untyped-call]
    return src, dst, dst_id


def migrate(nodes: Cluster, namespace: str, to: int) -> None:
    """Move ``namespace``'s slot, keys and all, to the primary on port ``to`` (the steps of
    ``redis-cli --cluster reshard`` for one slot)."""
    slot = key_slot(namespace.encode())
    src, dst, dst_id = start_migration(nodes, namespace, to)
    while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):  # type: ignore[no-untyped-call]
        src.execute_command("MIGRATE", "127.0.0.1", to, "", 0, 5000, "KEYS", *keys)  # type: ignore[no-untyped-call]
    for node in (dst, src):
        node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)  # type: ignore[no-untyped-call]
    wait_owner(nodes, namespace, to)


def test_clear_and_delete_prefix_refuse_a_slot_half_way_through_a_migration(
    nodes: Cluster, namespace: str,
) -> None:
    """Half the keys on each node: a SCAN of either would miss the other's, and the values
    missed would outlive the clear."""
    cache = FleetCache.from_url(nodes.url(), namespace=namespace)
    try:
        cache.set_many({f"k{i}": i for i in range(20)})
        to = next(p for p in namespaces_on_every_primary(nodes) if p != home_port(cache))
        src, dst, _ = start_migration(nodes, namespace, to)
        slot = key_slot(namespace.encode())
        try:
            for call in (cache.clear, lambda: cache.delete_prefix("k")):
                with pytest.raises(BackendUnavailableError, match="being migrated"):
                    call()
        finally:
            for node in (src, dst):
                node.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")  # type: ignore[no-untyped-call]
        assert cache.delete_prefix("k1") == 11  # k1, k10..k19
        assert cache.clear() == 9
    finally:
        cache.close()


def wait_owner(nodes: Cluster, namespace: str, port: int) -> None:
    deadline = time.monotonic() + 10.0
    while nodes.owner(namespace) != port:
        assert time.monotonic() < deadline, "the cluster never agreed on the new owner"
        time.sleep(0.05)


def follow(nodes: Cluster, namespace: str, move: Any) -> dict[str, Any]:
    """A reader holding a value in L1 and a writer writing through ``move()``; what the
    reader saw after the new owner took a write."""
    url = nodes.url()
    with Fleet() as fleet:
        reader = fleet.spawn("reader", connected(url, namespace))
        writer = fleet.spawn("writer", connected(url, namespace))
        writer.call(procs.timed_set, "k", "before")
        assert reader.call(hold, "k") == "before"
        old = reader.call(home_port)
        writer.send(write_loop, "w", 3.0)  # writes all through the move
        new = move(old)
        moved = time.monotonic()
        cfg = FleetCache.from_url(url).config
        bound = cfg.health_check_interval + cfg.health_check_timeout
        fresh = FleetCache.from_url(url, namespace=namespace)
        try:
            wait_for_write(fresh, 20.0)
            written = procs.timed_set(fresh, "k", "after")
            seen = reader.call(await_value, "k", "after", bound + 5.0, timeout=bound + 8.0)
        finally:
            fresh.close()
        writes = writer.recv(timeout=20.0)
        stats = reader.call(bus_stats)
        assert reader.call(home_port) == new
        writer.call(procs.timed_set, "k", "again")  # the old workers write to the new owner
        reader.call(await_value, "k", "again", 2.0)
        # clear() SCANs, a command without a key: it must run on the new owner too.
        assert reader.call(clear) >= 2  # "k" and "w" at least
        writer.call(await_value, "k", ABSENT, 2.0)
        left = nodes.client(new).scan(0, match=f"{{{namespace}}}:v:*", count=1000)[1]
        assert left == [], left
        reader.stop()
        writer.stop()
    return {"late": seen["seen_at"] - written, "bound": bound, "writes": writes,
            "stats": stats, "moved": moved}


def check_followed(result: dict[str, Any], label: str, *, writes_may_fail: bool) -> None:
    late, bound, writes, stats = (result[k] for k in ("late", "bound", "writes", "stats"))
    print(f"\n{label}: reader served the old value {late:.3f} s after the new owner took a "
          f"write (bound {bound} s); writes {summary(writes)}; reader "
          f"{stats['l1_flushes']} flushes, {stats['reconnects']} reconnects")
    assert late <= bound + SLACK, f"stale for {late:.3f} s after the move"
    assert stats["reconnects"] >= 1 and stats["bus"], stats
    assert all(outcome == "ok" or outcome.endswith("Error") for _, outcome, _ in writes)
    if not writes_may_fail:  # a MOVED is followed within the call: its retry lands there
        assert all(outcome == "ok" for _, outcome, _ in writes), summary(writes)
    assert max(took for _, _, took in writes) < 1.0, summary(writes)
    after = [outcome for start, outcome, _ in writes
             if start > result["moved"] + bound + SLACK]
    assert after and all(outcome == "ok" for outcome in after), summary(writes)


def test_a_migrated_slot_is_followed_by_every_worker(nodes: Cluster, namespace: str) -> None:
    def move(old: int) -> int:
        to = next(p for p in namespaces_on_every_primary(nodes) if p != old)
        migrate(nodes, namespace, to)
        return to

    result = follow(nodes, namespace, move)
    # Mid-migration the slot's keys are on two nodes: a write may meet ASK (an outage).
    check_followed(result, "slot migrated", writes_may_fail=True)


def test_a_manual_failover_is_followed_by_every_worker(nodes: Cluster, namespace: str) -> None:
    def move(old: int) -> int:
        replica = nodes.replica_of(old)
        nodes.client(replica).execute_command("CLUSTER", "FAILOVER")  # type: ignore[no-untyped-call]
        wait_owner(nodes, namespace, replica)
        return replica

    result = follow(nodes, namespace, move)
    check_followed(result, "manual failover", writes_may_fail=False)


# -- a lost primary (last: it changes the topology for good) --------------------------------


@pytest.mark.parametrize("how", ["killed", "stalled"])
def test_a_lost_primary_fails_writes_fast_then_its_replica_takes_over(
    nodes: Cluster, namespace: str, how: str,
) -> None:
    """Killed (SIGKILL), or stalled (SIGSTOP: connections open, nothing answers, no MOVED
    ever comes): the cluster fails the primary over after cluster-node-timeout, and the
    cache must find the new one by itself."""
    nodes.wait_healthy()  # the replica in sync: it must be able to take over
    victim = nodes.by_port(nodes.owner(namespace))
    fail, back = ((victim.kill, victim.start) if how == "killed"
                  else (victim.pause, victim.resume))

    def restore() -> None:
        back()  # rejoins as a replica of its former replica
        nodes.wait_healthy()

    lose_the_primary(nodes.url(count=3), namespace, fail=fail, restore=restore, label=how)


def test_a_cluster_client_of_the_application_is_refused(nodes: Cluster) -> None:
    from redis.cluster import RedisCluster

    from fleetcache import ConfigError

    app_client = RedisCluster(host="127.0.0.1", port=nodes.nodes[0].port)
    try:
        with pytest.raises(ConfigError, match="redis\\+cluster://"):
            FleetCache(client=app_client)
        with pytest.raises(ConfigError, match="cluster url"):
            FleetCache(url=nodes.url(), client=redis.Redis(port=nodes.nodes[0].port))
    finally:
        app_client.close()
