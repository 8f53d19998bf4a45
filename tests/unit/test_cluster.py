"""Redis Cluster without a cluster: the URL, the settings, and how the slot's primary is
found and followed (:class:`~fleetcache.redis.cluster.SlotHome` on a scripted probe).

The real cluster (3 primaries + 3 replicas, failovers, a migration) is tests/cluster."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from fleetcache import CacheConfig, ConfigError, FleetCache
from fleetcache.core.config import parse_cluster_url
from fleetcache.redis.cluster import SlotHome, SlotWatch
from fleetcache.redis.store import RedisStore


def test_cluster_urls_parse_and_never_show_the_password() -> None:
    url = "redis+cluster://app:s3cr%40t@10.0.0.1:7000,[::1]:7001,node-c"
    target = parse_cluster_url(url)
    assert target.nodes == (("10.0.0.1", 7000), ("::1", 7001), ("node-c", 6379))
    assert (target.username, target.password, target.ssl) == ("app", "s3cr@t", False)
    assert "s3cr" not in repr(target)
    cache = FleetCache.from_url(url)
    assert cache.config.is_cluster
    assert "s3cr" not in repr(cache) and "s3cr" not in repr(cache.config)
    assert parse_cluster_url("rediss+cluster://h:1/?ssl_cert_reqs=none").ssl
    assert parse_cluster_url("redis+cluster://h:1/0").nodes == (("h", 1),)
    assert parse_cluster_url("redis+cluster://h:1/?db=0").nodes == (("h", 1),)
    for bad in ("redis+cluster://u:s3cr/et@h:1", "redis+cluster://u:s3cret@h:x",
                "redis+cluster://u:s3cret@h:1/2", "redis+cluster://u:s3cret@h:1,",
                "redis+cluster://u:s3c#ret@h:1", "redis+cluster://h:1/?db=3"):
        with pytest.raises(ConfigError) as err:
            FleetCache.from_url(bad)
        assert "s3c" not in str(err.value), (bad, str(err.value))


def test_cluster_true_reads_a_plain_url_as_a_node() -> None:
    config = CacheConfig(url="redis://h:7000", cluster=True)
    assert config.is_cluster and parse_cluster_url(config.url).nodes == (("h", 7000),)
    assert not CacheConfig(url="redis://h:7000").is_cluster
    for url in ("unix:///tmp/redis.sock", "redis+sentinel://h:1/svc"):
        with pytest.raises(ConfigError, match="cluster=True"):
            CacheConfig(url=url, cluster=True)
    with pytest.raises(ConfigError, match="cluster must be"):
        CacheConfig(cluster="yes")  # type: ignore[arg-type]


def test_a_cluster_cache_keeps_its_namespace_in_one_slot() -> None:
    keys = FleetCache.from_url("redis+cluster://h:1", namespace="shop").keys
    assert keys.value("k") == "{shop}:v:k" and keys.channel == "{shop}:inv"
    assert FleetCache.from_url("redis://h:1", namespace="shop").keys.value("k") == "shop:v:k"


def test_cluster_scripts_publish_on_the_shard_channel() -> None:
    sent: list[str] = []

    class Client:
        def register_script(self, text: str) -> Any:
            sent.append(text)
            return text

    for url, sharded in (("redis://h:1", False), ("redis+cluster://h:1", True)):
        sent.clear()
        RedisStore(Client(), FleetCache.from_url(url).keys, None, 1000)  # type: ignore[arg-type]
        publishing = [t for t in sent if "PUBLISH'" in t]
        assert publishing and all(("'SPUBLISH'" in t) == sharded for t in publishing)


# -- SlotHome --------------------------------------------------------------------------------


def slots_reply(owner: int, *others: int, host: bytes = b"127.0.0.1") -> list[Any]:
    """A CLUSTER SLOTS reply: slots 0-99 on ``owner`` (with its replica ``others[0]``),
    100-16383 on ``others[1]``."""
    return [[0, 99, [host, owner, b"id1"], [host, others[0], b"id2"]],
            [100, 16383, [host, others[1], b"id3"]]]


class Probe:
    """Scripted nodes: port -> CLUSTER SLOTS reply (None: unreachable); asked ports kept."""

    def __init__(self, replies: dict[int, Any]) -> None:
        self.replies = replies
        self.asked: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> Any:
        probe = self

        class Conn:
            def send_command(self, *args: Any) -> None:
                probe.asked.append((host, port))
                if probe.replies.get(port) is None:
                    raise redis.ConnectionError("refused")

            def read_response(self) -> Any:
                return probe.replies[port]

            def disconnect(self) -> None:
                pass

        return Conn()


def test_the_slot_s_primary_is_asked_of_the_seeds_in_order() -> None:
    probe = Probe({1: None, 2: slots_reply(10, 11, 12)})
    home = SlotHome((("127.0.0.1", 1), ("127.0.0.1", 2)), 42, probe)
    assert home.primary() == ("127.0.0.1", 10)
    assert probe.asked == [("127.0.0.1", 1), ("127.0.0.1", 2)]
    assert home.primary() == ("127.0.0.1", 10)  # remembered: no second question
    assert len(probe.asked) == 2


def test_a_lost_primary_is_asked_again_of_any_node_the_cluster_named() -> None:
    probe = Probe({1: slots_reply(10, 11, 12)})
    home = SlotHome((("127.0.0.1", 1),), 42, probe)
    assert home.primary() == ("127.0.0.1", 10)
    home.lost(("127.0.0.1", 99))  # another node: nothing changes
    assert home.primary() == ("127.0.0.1", 10) and len(probe.asked) == 1
    # The seed dies and the replica takes over: the nodes learned from the first answer
    # are asked in turn.
    probe.replies = {1: None, 10: None, 11: slots_reply(11, 10, 12)}
    home.lost(("127.0.0.1", 10))
    assert home.primary() == ("127.0.0.1", 11)
    # The lost node is asked last: a stalled one would cost a timeout per question.
    assert probe.asked[1:] == [("127.0.0.1", 1), ("127.0.0.1", 11)]


def test_moved_follows_our_slot_and_forgets_on_another() -> None:
    home = SlotHome((("127.0.0.1", 1),), 42, Probe({1: slots_reply(10, 11, 12)}))
    home.moved(42, ("127.0.0.1", 12))
    assert home.primary() == ("127.0.0.1", 12)
    home.moved(7, ("127.0.0.1", 11))  # not ours: ask the cluster again
    assert home.primary() == ("127.0.0.1", 10)


def test_a_node_without_an_announced_host_is_the_one_asked() -> None:
    home = SlotHome((("10.0.0.5", 1),), 42, Probe({1: slots_reply(10, 11, 12, host=b"")}))
    assert home.primary() == ("10.0.0.5", 10)


def test_an_unknown_endpoint_is_no_address() -> None:
    unknown = [[0, 99, [b"?", 10, b"id1"]], [100, 16383, [b"127.0.0.1", 12, b"id3"]]]
    probe = Probe({1: unknown, 12: slots_reply(11, 10, 12)})
    home = SlotHome((("127.0.0.1", 1),), 42, probe)
    assert home.primary() == ("127.0.0.1", 11)  # asked the next node the cluster named
    assert ("?", 10) not in probe.asked


def test_an_answer_older_than_a_moved_is_not_kept() -> None:
    home: SlotHome

    class Racing(Probe):
        def __call__(self, host: str, port: int) -> Any:
            home.moved(42, ("127.0.0.1", 12))  # arrives while discovery asks
            return super().__call__(host, port)

    home = SlotHome((("127.0.0.1", 1),), 42, Racing({1: slots_reply(10, 11, 12)}))
    assert home.primary() == ("127.0.0.1", 12)


def test_no_node_answering_is_a_connection_error() -> None:
    home = SlotHome((("127.0.0.1", 1), ("127.0.0.1", 2)), 42, Probe({}))
    with pytest.raises(redis.ConnectionError, match="2 asked, 2 unreachable"):
        home.primary()


# -- SlotWatch -------------------------------------------------------------------------------


class Lane:
    """A command lane whose reply may be a MOVED (as SlotConnection turns it: the home
    updated, then the retry lands on the new owner) or an outage."""

    def __init__(self, home: SlotHome) -> None:
        self.home = home
        self.moved_to: tuple[str, int] | None = None
        self.down = False
        self.sent: list[tuple[Any, ...]] = []

        self.closed = 0

    def close(self) -> None:
        self.closed += 1

    def execute(self, *args: Any) -> Any:
        self.sent.append(args)
        if self.down:
            raise redis.ConnectionError("refused")
        if self.moved_to is not None:
            self.home.moved(self.home.slot, self.moved_to)
        return 1


class Conn:
    def __init__(self, port: int) -> None:
        self.host, self.port = "127.0.0.1", port


def test_the_slot_watch_reconnects_a_listener_left_on_a_former_owner() -> None:
    home = SlotHome((("127.0.0.1", 1),), 42, Probe({1: slots_reply(10, 11, 12)}))
    lane = Lane(home)
    watch = SlotWatch(home, lane, "{shop}:epoch")  # type: ignore[arg-type]
    assert watch(Conn(10)) is False  # the listener is on the owner
    assert lane.sent == [("EXISTS", "{shop}:epoch")]  # one round trip per beat
    lane.moved_to = ("127.0.0.1", 11)  # a failover the listener was not told about
    assert watch(Conn(10)) is True
    assert lane.closed == 1  # its idle connections may lead to the former owner too
    assert watch(Conn(11)) is False  # reconnected to the new owner
    lane.down = True  # no answer: the listener's own PING watchdog decides
    assert watch(Conn(10)) is False
    assert watch(None) is False
