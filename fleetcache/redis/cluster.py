"""Redis Cluster: a namespace lives in one hash slot, and a client that follows that slot.

Every write of fleetcache is one script that touches the value, its fill lease, the tag
sets, the replay log and the position together, then publishes its notice; a listener
replays the log from a position after a gap; a reader MGETs values with the position. A
cluster runs a script, a MULTI or an MGET only on keys of one slot. So with a
``redis+cluster://`` URL every name of a namespace carries the hash tag ``{namespace}``
(:class:`~fleetcache.redis.keys.KeyLayout` with ``hash_tags``), and the namespace lives in
one slot, on one primary and its replicas, as a Redisson ``RLocalCachedMap`` lives in one
key. Every guarantee of one server holds unchanged: all-or-nothing bulk writes, one notice
per write, exact replay, one compute per fleet. A cluster spreads *namespaces* over its
primaries (several caches, one namespace each), not the keys of one.

What this module adds is a client that keeps following that slot:

* :class:`SlotHome` knows which primary serves the slot, asking any node it knows
  (``CLUSTER SLOTS``: the seeds of the URL first, then every node the cluster named);
* :class:`SlotConnection` connects to that primary, whatever address its pool was made
  with, each time it (re)connects; turns a ``MOVED`` reply (a failover, a resharding moved
  the slot) into a ``ConnectionError`` after noting the new owner, so the client's retry
  policy reconnects there: the same path a dead server takes; and drops itself before
  sending when the home moved since it connected, so that keyless commands (``SCAN``,
  ``INFO``) and pub/sub never stay on a former owner. A dead or stalled primary sends no
  ``MOVED``: a connection error or a timeout makes the next connection ask the cluster
  again. ``CLUSTERDOWN``, ``TRYAGAIN`` and ``ASK`` (the slot half-way through a migration:
  the namespace's keys are on two nodes until it ends) are outages
  (``BackendUnavailableError``): reads are misses and writes fail until the cluster is
  whole again; the connection stays as it is.

Everything fleetcache builds on the client (the command lane, the listener, the replay
log, streams, locks, the fleet view) then works on a cluster as on one server. The
listener uses sharded pub/sub (``SSUBSCRIBE``): notices stay within the slot's shard
instead of flooding every node of the cluster, and Redis unsubscribes it when the slot
moves, which the listener treats as a gap (:mod:`fleetcache.redis.bus`). Not every move
says so (a primary demoted by a failover keeps its subscribers; one cut off from the
cluster keeps answering PING), so :class:`SlotWatch`, on the listener's watchdog beat, asks
the slot's owner through the command lane and has the listener reconnect when its
connection no longer leads there. ``clear()`` and ``delete_prefix`` SCAN, which sees one
node's keys: they refuse a slot half-way through a migration
(:mod:`fleetcache.redis.store`). A failover to a
replica is another server with another ``run_id``: every worker flushes its L1, since the
replica may lack the last writes (replication is asynchronous).

Fork: the pool is redis-py's (fork-safe by ``_checkpid``), and fleetcache builds a fresh
client, with a fresh :class:`SlotHome`, in every process anyway.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import ClusterDownError, MovedError
from redis.retry import Retry

from ..core.config import CacheConfig, ClusterURL
from .lane import CommandLane
from .options import query_options
from .tls import SettledTLS, TLSConnection

logger = logging.getLogger("fleetcache")

Address = tuple[str, int]


class SlotHome:
    """The primary that serves one hash slot, as the cluster last said.

    ``probe(host, port)`` makes an unconnected redis-py connection to a node, used once for
    ``CLUSTER SLOTS``. The answer is kept until a ``MOVED`` names another owner, or a
    connection to it fails or times out. One thread asks the cluster at a time (the others
    wait for its answer), and an answer older than a ``MOVED`` received meanwhile is not
    kept.
    """

    __slots__ = ("_asking", "_generation", "_lock", "_nodes", "_primary", "_probe", "slot")

    def __init__(self, seeds: tuple[Address, ...], slot: int,
                 probe: Callable[[str, int], Any]) -> None:
        self.slot = slot
        self._probe = probe
        self._nodes: list[Address] = list(dict.fromkeys(seeds))  # asked in this order
        self._primary: Address | None = None
        self._generation = 0  # bumped by every change of _primary from outside discovery
        self._lock = threading.Lock()  # guards _nodes
        self._asking = threading.Lock()  # one discovery at a time

    @property
    def known(self) -> Address | None:
        """The slot's primary if known now (never asks the cluster)."""
        return self._primary

    def primary(self) -> Address:
        """The slot's primary (asked of the cluster if not known)."""
        found = self._primary
        if found is not None:
            return found
        with self._asking:
            found = self._primary
            if found is None:
                generation = self._generation
                found = self._discover()
                if self._generation == generation:
                    self._primary = found
                else:  # a MOVED arrived while we asked: it is newer than our answer
                    found = self._primary or found
        return found

    def moved(self, slot: int, address: Address) -> None:
        """A ``MOVED`` reply: ``slot`` is now served at ``address``."""
        self._generation += 1
        if slot == self.slot:
            if self._primary != address:
                logger.warning("fleetcache: cluster slot %d moved to %s:%s; following it",
                               slot, *address)
            self._primary = address
        else:  # not our slot: nothing of the namespace lives there; ask again
            self._primary = None

    def lost(self, address: Address) -> None:
        """A connection to ``address`` failed: ask the cluster again next time, that node
        last (a stalled one would cost a whole timeout per question)."""
        with self._lock:
            if address in self._nodes:
                self._nodes.remove(address)
                self._nodes.append(address)
        if self._primary == address:
            self._generation += 1
            self._primary = None

    def _discover(self) -> Address:
        asked: set[Address] = set()
        unreachable = 0
        while True:  # nodes named by an answer are asked too, in the same round
            with self._lock:
                node = next((n for n in self._nodes if n not in asked), None)
            if node is None:
                break
            asked.add(node)
            host, port = node
            conn = self._probe(host, port)
            try:
                conn.send_command("CLUSTER", "SLOTS")
                ranges = conn.read_response()
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                unreachable += 1
                continue
            except redis.RedisError:
                continue  # not a cluster node (or an ACL without CLUSTER): ask the next
            finally:
                conn.disconnect()
            owner = self._read_slots(ranges, host)
            if owner is not None:
                with self._lock:  # the node that answered is asked first next time
                    self._nodes.remove((host, port))
                    self._nodes.insert(0, (host, port))
                return owner
        raise redis.ConnectionError(
            f"no node of the cluster names the primary of slot {self.slot} "
            f"({len(asked)} asked, {unreachable} unreachable)")

    def _read_slots(self, ranges: Any, asked: str) -> Address | None:
        """The slot's owner in a ``CLUSTER SLOTS`` reply; every node named is remembered
        (a seed list of one node still finds the rest after that node dies). A node whose
        endpoint the cluster does not know (``"?"``) is no address."""
        owner = None
        for start, end, *servers in ranges:
            addresses = [_address(server, asked) for server in servers]
            with self._lock:
                self._nodes.extend(a for a in addresses
                                   if a is not None and a not in self._nodes)
            if int(start) <= self.slot <= int(end):
                owner = addresses[0] if addresses else None
        return owner


def _address(server: Any, asked: str) -> Address | None:
    """A node's ``[host, port, id, ...]`` entry: an empty host is the node asked (it did
    not announce another), ``"?"`` an unknown endpoint (None)."""
    raw = server[0]
    host = raw.decode() if isinstance(raw, bytes) else str(raw)
    if host == "?":
        return None
    return (host or asked), int(server[1])


class SlotWatch:
    """Called by the listener on its watchdog beat: True if the slot's primary is no longer
    where the listener's connection leads (the listener then reconnects: a gap)."""

    __slots__ = ("_home", "_key", "_lane")

    def __init__(self, home: SlotHome, lane: CommandLane, key: str) -> None:
        self._home = home
        self._lane = lane
        self._key = key  # a name of the namespace: its slot is the home's

    def __call__(self, connection: Any) -> bool:
        try:
            self._lane.execute("EXISTS", self._key)  # a MOVED reply updates the home
            primary = self._home.primary()
        except redis.RedisError:
            return False  # the listener's own PING watchdog guards its connection
        if connection is None or (connection.host, connection.port) == primary:
            return False
        self._lane.close()  # idle connections may lead to the former owner too
        logger.warning("fleetcache: cluster slot %d is served at %s:%s now; the listener "
                       "reconnects", self._home.slot, *primary)
        return True


class _Homed:
    """Connects to the slot's primary and follows it (see the module doc)."""

    slot_home: SlotHome
    host: str
    port: int

    def __init__(self, *, slot_home: SlotHome, **kwargs: Any) -> None:
        self.slot_home = slot_home
        super().__init__(**kwargs)

    def connect_check_health(self, *args: Any, **kwargs: Any) -> None:
        # Every (re)connect of redis-py comes through here: connect(), and the reconnect
        # of a send on a dropped socket (the retries of the lane, clients and pipelines).
        if self._sock is not None:  # type: ignore[attr-defined]
            return
        self.host, self.port = self.slot_home.primary()
        try:
            super().connect_check_health(*args, **kwargs)  # type: ignore[misc]
        except (redis.ConnectionError, redis.TimeoutError):
            self.slot_home.lost((self.host, self.port))
            raise

    def send_packed_command(self, *args: Any, **kwargs: Any) -> None:
        home = self.slot_home.known
        if (self._sock is not None  # type: ignore[attr-defined]
                and home is not None and home != (self.host, self.port)):
            self.disconnect()  # type: ignore[attr-defined]  # reconnects to the home
        super().send_packed_command(*args, **kwargs)  # type: ignore[misc]

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)  # type: ignore[misc]
        except MovedError as exc:
            host = exc.host or self.host  # ":port": the same host
            self.slot_home.moved(int(exc.slot_id), (host, int(exc.port)))
            self.disconnect()  # type: ignore[attr-defined]
            raise redis.ConnectionError(
                f"cluster slot {exc.slot_id} moved to {host}:{exc.port}") from exc
        except ClusterDownError:
            # The connection is in sync; this node may be cut off from the cluster, so new
            # connections ask the cluster again.
            self.slot_home.lost((self.host, self.port))
            raise
        except (redis.ConnectionError, redis.TimeoutError):
            # A dead or stalled primary sends no MOVED: the cluster may be failing it over.
            self.slot_home.lost((self.host, self.port))
            raise


class SlotConnection(_Homed, redis.Connection):
    """A TCP connection to the primary of the namespace's slot."""


class SlotSSLConnection(_Homed, SettledTLS, redis.SSLConnection):
    """A TLS connection to the primary of the namespace's slot."""


def make_cluster_client(config: CacheConfig, target: ClusterURL, retry: Retry) -> redis.Redis:
    """A client on the primary that serves the namespace's slot, following it, with the
    settings' short timeouts and a blocking pool (as :func:`~fleetcache.redis.client.
    make_client` builds for one server)."""
    common: dict[str, Any] = {
        "socket_timeout": config.socket_timeout,
        "socket_connect_timeout": config.connect_timeout,
        "protocol": 2,  # one round trip to set up a connection, as for one server
        "driver_info": None,
        "username": target.username,
        "password": target.password,
        **query_options(target.options),
    }
    base: type[redis.Connection] = TLSConnection if target.ssl else redis.Connection
    no_retry = Retry(NoBackoff(), 0)

    def probe(host: str, port: int) -> Any:
        return base(host=host, port=port, **{**common, "retry": no_retry})

    home = SlotHome(target.nodes, key_slot(config.namespace.encode()), probe)
    pool = redis.BlockingConnectionPool(  # type: ignore[no-untyped-call, unused-ignore]
        connection_class=SlotSSLConnection if target.ssl else SlotConnection,
        max_connections=config.max_connections,
        timeout=config.pool_timeout,
        slot_home=home,
        retry=retry,
        **common,
    )
    return redis.Redis(connection_pool=pool)



def slot_home(client: redis.Redis) -> SlotHome | None:
    """The slot a client built by :func:`make_cluster_client` follows; None for others."""
    home = client.connection_pool.connection_kwargs.get("slot_home")
    return home if isinstance(home, SlotHome) else None
