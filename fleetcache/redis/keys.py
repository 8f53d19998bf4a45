"""Every name fleetcache uses in Redis, in one place: values, flags, locks, channel, streams.

With ``hash_tags`` every per-key name carries the hash tag ``{namespace:key}``, so the
value, the fill lock and the fill lease of one key hash to one Redis Cluster slot
(the scripts touch all three at once); without it the layout is the single-server one that
existing data already uses. The namespace is non-empty and cannot contain braces, so the
first ``{`` of a name is always ours and the tag is never empty, whatever the key holds (a
key starting with ``}`` would otherwise make an empty tag, and Redis hashes the whole name).
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
    value         ``{ns}:v:{key}``                            ``{ns}:v:{{ns}:{key}}``
    fill lease    ``{ns}:f:{key}``                            ``{ns}:f:{{ns}:{key}}``
    fill lock     ``redlock:{ns}:lock:{key}``                 ``redlock:{ns}:lock:{{ns}:{key}}``
    channel       ``{ns}:inv``                                the same
    replay log    ``{ns}:log``                                the same
    epoch         ``{ns}:epoch``                              the same
    position      ``{ns}:pos``                                the same
    tag set       ``{ns}:t:{tag}``                            the same
    stream        ``{ns}:s:{name}``                           the same
    workers       ``{ns}:w`` (hash: ``{host}:{pid}:{id}``)    ``{ns}:w:{{ns}:w}``
    worker TTLs   ``{ns}:w:live`` (sorted set)                ``{ns}:w:live:{{ns}:w}``
    folded        ``{ns}:w:folded`` (sorted set)              ``{ns}:w:folded:{{ns}:w}``
    retired       ``{ns}:w:retired`` (hash)                   ``{ns}:w:retired:{{ns}:w}``
    ============  ==========================================  ==========================

    The four ``w`` names are the fleet view (:mod:`fleetcache.observe.registry`): every
    worker's stats snapshot, when each snapshot dies, the workers recently declared dead,
    and per-host totals of the workers gone. One script touches all four, so with hash
    tags they share one tag.

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
        set_ = object.__setattr__  # frozen: derived names are fixed at construction
        set_(self, "value_prefix", f"{ns}:v:")
        set_(self, "channel", f"{ns}:inv")
        # The stream every notice is also appended to, so a listener that missed some
        # replays them (fleetcache.redis.replay), and the key whose absence says the
        # namespace was flushed from outside (FLUSHALL, a restart without persistence).
        set_(self, "log", f"{ns}:log")
        set_(self, "epoch", f"{ns}:epoch")
        # The id of the last notice logged: the version of the last write, read with
        # values so a reader knows how new they are (sync_strategy="update").
        set_(self, "position", f"{ns}:pos")
        # The fleet view (fleetcache.observe): one slot for the four under hash tags.
        fleet_tag = "{" + ns + ":w}" if self.hash_tags else ""
        for attr, name in (("workers", "w"), ("workers_live", "w:live"),
                           ("workers_folded", "w:folded"), ("retired", "w:retired")):
            set_(self, attr, f"{ns}:{name}:{fleet_tag}" if fleet_tag else f"{ns}:{name}")
        set_(self, "lease_prefix", f"{ns}:f:")
        set_(self, "_lock_prefix", f"{ns}:lock:")
        set_(self, "_stream_prefix", f"{ns}:s:")
        set_(self, "_tag_prefix", f"{ns}:t:")

    def _tagged(self, key: str) -> str:
        return "{" + self.namespace + ":" + key + "}" if self.hash_tags else key

    def value(self, key: str) -> str:
        """The Redis key holding ``key``'s value."""
        return self.value_prefix + self._tagged(key)

    def lease(self, key: str) -> str:
        """The set of live fill leases of ``key`` (tokens of computes that may store; any
        write of the key deletes it, see :mod:`fleetcache.redis.store`)."""
        return self.lease_prefix + self._tagged(key)

    def lock_name(self, key: str) -> str:
        """The Redlock *name* of ``key``'s fill lock (pottery stores it under
        ``redlock:`` + name, see :meth:`lock`)."""
        return self._lock_prefix + self._tagged(key)

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
        start = self.value_prefix + ("{" + self.namespace + ":" if self.hash_tags else "")
        return glob_escape(start + prefix) + "*"

    def key_of(self, value_name: str) -> str:
        """The cache key whose value lives under ``value_name`` (the inverse of
        :meth:`value`)."""
        key = value_name[len(self.value_prefix):]
        return key[len(self.namespace) + 2:-1] if self.hash_tags else key


def glob_escape(text: str) -> str:
    """Escape SCAN MATCH metacharacters so a pattern never matches other names."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
