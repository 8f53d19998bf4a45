"""``fleetcache inspect KEY``: where one key lives and in what state, read from Redis.

L2 only: each worker's L1 is memory inside that process, and nothing outside it can see
it (the fleet view counts L1 entries, not their keys). What L2 says bounds L1, though: a
worker never keeps an entry past its L2 expiry, nor past a write's notice.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import redis

from ..core.codec import Codec
from ..core.config import CacheConfig
from ..core.errors import CorruptValueError
from ..core.notfound import NOT_FOUND
from ..redis.errors import mapped_errors
from ..redis.keys import KeyLayout
from ._target import add_target_arguments, connect

SUMMARY = "show one key: presence in L2, TTL left, size, fresh or stale, its value"
DESCRIPTION = """\
Reads KEY's entry in L2 (Redis) and decodes its envelope with fleetcache's codec: whether
it is there, the TTL Redis will keep it, its size, whether it is fresh, stale (kept for a
stale_ttl window: get_or_compute serves it while one worker refreshes it) or a cached
NOT_FOUND, its value, and whether a compute of it is running now (its fill lock).

L1 lives inside each worker process and cannot be seen from here; every worker drops KEY
from its L1 when any worker writes it, and never keeps it past its L2 expiry.

Signed caches: set FLEETCACHE_SIGNING_KEY to the app's signing_key, or the value reads
as foreign. Exit code 0 if KEY is in L2, 1 if not."""

_PREVIEW = 400
_L1_NOTE = ("per process: not visible from outside a worker (each worker holds KEY at most "
            "l1_ttl and drops it on any write's notice; `fleetcache stats` shows L1 sizes)")


def describe(client: redis.Redis, keys: KeyLayout, key: str, codec: Codec) -> dict[str, Any]:
    """What L2 holds for ``key``, as a JSON-able dict."""
    with mapped_errors("inspecting a key"):
        pipe = client.pipeline(transaction=False)
        pipe.get(keys.value(key))
        pipe.pttl(keys.value(key))
        pipe.pttl(keys.lock(key))
        pipe.scard(keys.lease(key))
        pipe.time()
        blob, pttl, lock_pttl, leases, (seconds, micros) = pipe.execute()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    info: dict[str, Any] = {
        "key": key, "redis_key": keys.value(key), "l2": blob is not None,
        "l1": _L1_NOTE,
        "computing": lock_pttl is not None and lock_pttl >= 0,
        "fill_leases": int(leases),
        "tags": None,  # the envelope's, once it is read
    }
    if blob is None:
        return info
    info["size_bytes"] = len(blob)
    info["ttl_s"] = None if pttl < 0 else pttl / 1000
    try:
        decoded = codec.decode(blob, key)
    except CorruptValueError as exc:
        info["state"] = "corrupt"
        info["error"] = f"{exc} (foreign bytes, another version, or another signing key)"
        return info
    value, expires_at_ms, tags = decoded
    info["tags"] = list(tags)
    left = (expires_at_ms - now_ms) / 1000
    info["fresh_s"] = round(left, 3)
    if value is NOT_FOUND:
        info["state"] = "not-found" if left > 0 else "not-found (expired)"
        return info
    info["state"] = "fresh" if left > 0 else "stale"
    text = json.dumps(value, default=repr, ensure_ascii=False)
    info["value"] = text if len(text) <= _PREVIEW else text[:_PREVIEW] + "..."
    return info


def _print(info: dict[str, Any]) -> None:
    print(f"key        {info['key']!r}  (Redis key {info['redis_key']!r})")
    if not info["l2"]:
        print("L2         absent")
    else:
        ttl = "no expiry" if info["ttl_s"] is None else f"{info['ttl_s']:.3f} s left"
        print(f"L2         present, {info['size_bytes']} bytes, {ttl}")
        state = info["state"]
        if "fresh_s" in info:
            when = (f"fresh for {info['fresh_s']:.3f} s more" if info["fresh_s"] > 0 else
                    f"fresh time passed {-info['fresh_s']:.3f} s ago")
            state = f"{state} ({when})"
        print(f"state      {state}")
        if "error" in info:
            print(f"error      {info['error']}")
        if "value" in info:
            print(f"value      {info['value']}")
    print(f"L1         {info['l1']}")
    tags = info["tags"]
    print(f"tags       {'(none)' if not tags else ', '.join(tags)}")
    compute = "running (fill lock held)" if info["computing"] else "none"
    print(f"compute    {compute}; fill leases: {info['fill_leases']}")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Describe the key; 0 if it is in L2, 1 if not."""
    client, keys = connect(args)
    signing = os.environ.get("FLEETCACHE_SIGNING_KEY") or None
    # Validated like the app's settings (a short signing key is refused the same way).
    config = CacheConfig(namespace=keys.namespace, signing_key=signing)
    codec = Codec(config.max_value_bytes, config.signing_key_bytes)
    try:
        info = describe(client, keys, args.key, codec)
    finally:
        client.close()
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
    else:
        _print(info)
    return 0 if info["l2"] else 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``fleetcache inspect``."""
    parser.add_argument("key", metavar="KEY", help="the cache key (as the app passes it)")
    add_target_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(run=run)
