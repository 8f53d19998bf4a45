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
    stream        ``{ns}:s:{name}``                           the same
    ============  ==========================================  ==========================
    """

    namespace: str
    hash_tags: bool = False
    value_prefix: str = field(init=False)
    lease_prefix: str = field(init=False)
    channel: str = field(init=False)
    log: str = field(init=False)
    epoch: str = field(init=False)
    _lock_prefix: str = field(init=False)
    _stream_prefix: str = field(init=False)

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
        set_(self, "lease_prefix", f"{ns}:f:")
        set_(self, "_lock_prefix", f"{ns}:lock:")
        set_(self, "_stream_prefix", f"{ns}:s:")

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
