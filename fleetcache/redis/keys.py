"""Every name fleetcache uses in Redis, in one place: values, flags, locks, channel, streams.

With ``hash_tags`` (Redis Cluster) every name starts with the hash tag ``{namespace}``, so
the whole namespace lives in one hash slot: each write script touches the value, its fill
lease and lock, the tag sets, the replay log and the position at once, and publishes on a
shard channel of the same slot, which Redis Cluster allows only within one slot. Without
it the layout is the single-server one that existing data already uses. The namespace is
non-empty and cannot contain braces, so the first ``{`` of a name is always ours and the
tag is never empty, whatever the key holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: pottery prefixes every Redlock key with this; the fill lock keeps pottery's format so a
#: stock pottery client on the same name excludes and is excluded.
REDLOCK_PREFIX = "redlock:"


@dataclass(frozen=True, slots=True)
class KeyLayout:
    """Names under one namespace.

    ============  ==========================================  ==========================
    what          single server                               ``hash_tags=True``
    ============  ==========================================  ==========================
    value         ``{ns}:v:{key}``                            ``{{ns}}:v:{key}``
    fill lease    ``{ns}:f:{key}``                            ``{{ns}}:f:{key}``
    fill lock     ``redlock:{ns}:lock:{key}``                 ``redlock:{{ns}}:lock:{key}``
    channel       ``{ns}:inv``                                ``{{ns}}:inv`` (sharded)
    replay log    ``{ns}:log``                                ``{{ns}}:log``
    epoch         ``{ns}:epoch``                              ``{{ns}}:epoch``
    position      ``{ns}:pos``                                ``{{ns}}:pos``
    tag set       ``{ns}:t:{tag}``                            ``{{ns}}:t:{tag}``
    stream        ``{ns}:s:{name}``                           ``{{ns}}:s:{name}``
    workers       ``{ns}:w`` (hash: ``{host}:{pid}:{id}``)    ``{{ns}}:w``
    worker TTLs   ``{ns}:w:live`` (sorted set)                ``{{ns}}:w:live``
    folded        ``{ns}:w:folded`` (sorted set)              ``{{ns}}:w:folded``
    retired       ``{ns}:w:retired`` (hash)                   ``{{ns}}:w:retired``
    ============  ==========================================  ==========================

    The four ``w`` names are the fleet view (:mod:`fleetcache.observe.registry`): every
    worker's stats snapshot, when each snapshot dies, the workers recently declared dead,
    and per-host totals of the workers gone (one script touches all four).

    A tag set holds the keys written with that tag (``set(..., tags=[...])``), until
    ``invalidate_tag`` empties it or it expires (it lives as long as its longest-lived
    member was written for). A key rewritten without the tag stays in the set: invalidating
    the tag then deletes that value from L2 too, never serving anything stale, at worst
    one more miss.
    """

    namespace: str
    hash_tags: bool = False
    value_prefix: str = field(init=False)
    lease_prefix: str = field(init=False)
    channel: str = field(init=False)
    log: str = field(init=False)
    epoch: str = field(init=False)
    position: str = field(init=False)
    _lock_prefix: str = field(init=False)
    _stream_prefix: str = field(init=False)
    _tag_prefix: str = field(init=False)
    workers: str = field(init=False)
    workers_live: str = field(init=False)
    workers_folded: str = field(init=False)
    retired: str = field(init=False)

    def __post_init__(self) -> None:
        ns = self.namespace
        if not ns or "{" in ns or "}" in ns:
            raise ValueError("a namespace is non-empty and has no braces (hash-tag syntax)")
        head = "{" + ns + "}" if self.hash_tags else ns
        set_ = object.__setattr__  # frozen: derived names are fixed at construction
        set_(self, "value_prefix", f"{head}:v:")
        set_(self, "channel", f"{head}:inv")
        # The stream every notice is also appended to, so a listener that missed some
        # replays them (fleetcache.redis.replay), and the key whose absence says the
        # namespace was flushed from outside (FLUSHALL, a restart without persistence).
        set_(self, "log", f"{head}:log")
        set_(self, "epoch", f"{head}:epoch")
        # The id of the last notice logged: the version of the last write, read with
        # values so a reader knows how new they are (sync_strategy="update").
        set_(self, "position", f"{head}:pos")
        # The fleet view (fleetcache.observe).
        for attr, name in (("workers", "w"), ("workers_live", "w:live"),
                           ("workers_folded", "w:folded"), ("retired", "w:retired")):
            set_(self, attr, f"{head}:{name}")
        set_(self, "lease_prefix", f"{head}:f:")
        set_(self, "_lock_prefix", f"{head}:lock:")
        set_(self, "_stream_prefix", f"{head}:s:")
        set_(self, "_tag_prefix", f"{head}:t:")

    def value(self, key: str) -> str:
        """The Redis key holding ``key``'s value."""
        return self.value_prefix + key

    def lease(self, key: str) -> str:
        """The set of live fill leases of ``key`` (tokens of computes that may store; any
        write of the key deletes it, see :mod:`fleetcache.redis.store`)."""
        return self.lease_prefix + key

    def lock_name(self, key: str) -> str:
        """The Redlock *name* of ``key``'s fill lock (pottery stores it under
        ``redlock:`` + name, see :meth:`lock`)."""
        return self._lock_prefix + key

    def lock(self, key: str) -> str:
        """The Redis key of ``key``'s fill lock."""
        return REDLOCK_PREFIX + self.lock_name(key)

    def stream(self, name: str) -> str:
        """The Redis key of the stream ``name``."""
        return self._stream_prefix + name

    def tag(self, tag: str) -> str:
        """The Redis set of the keys written with ``tag``."""
        return self._tag_prefix + tag

    def value_match(self, prefix: str) -> str:
        """A SCAN ``MATCH`` pattern for the values of every key starting with ``prefix``
        (glob characters in the names escaped, so it matches nothing else)."""
        return glob_escape(self.value_prefix + prefix) + "*"

    def key_of(self, value_name: str) -> str:
        """The cache key whose value lives under ``value_name`` (the inverse of
        :meth:`value`)."""
        return value_name[len(self.value_prefix):]


def glob_escape(text: str) -> str:
    """Escape SCAN MATCH metacharacters so a pattern never matches other names."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
