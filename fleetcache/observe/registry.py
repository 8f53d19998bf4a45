"""The Redis side of the fleet view: worker snapshots, their liveness, retired totals.

Four names per namespace (:class:`~fleetcache.redis.keys.KeyLayout`): a hash of the live
workers' snapshots (field ``host:pid:instance``), a sorted set of when each snapshot dies,
a sorted set of workers recently declared dead, and a hash of per-host *retired* totals
(field ``host|counter``, plus ``host|`` = when the host was last seen).

Why retired totals: a ``_total`` metric summed over live workers only would drop each time a
worker is recycled (gunicorn ``max_requests``, a crash, a deploy), and Prometheus reads a
drop as a counter reset: ``rate()`` would then count everything the surviving workers had
served as new. So a worker leaving adds its counters to its host's retired totals in the
same atomic step that removes its snapshot, and the per-host sum stays monotonic:

* a worker that closes its cache (gunicorn ``worker_exit``) retires itself with its final
  counters;
* a worker that dies without a word (SIGKILL, OOM, a lost host) is folded in by whoever
  calls the script next (any worker's report, any reader) once its snapshot is past its
  TTL, with the counters of its last report (what it served after that is lost);
* a worker declared dead while alive (paused, or cut off from Redis for longer than the
  TTL) comes back with counters that include what the fold added: its next report takes
  that back (it sends the counters of its last stored snapshot), so nothing is counted
  twice. Such a return is recognised for ``FOLDED_MEMORY`` seconds.

Everything runs in one Lua script on the server's clock (``TIME``), so hosts with skewed
clocks agree on who is dead (an ACL user refused ``TIME`` falls back to each caller's own
clock: grant ``+time``). Memory stays bounded: dead workers are pruned at every call,
a host's retired totals leave ``RETAIN`` seconds after its last worker did, and every key
expires ``RETAIN`` seconds after the last report (an abandoned namespace cleans itself up).
"""

from __future__ import annotations

import time
from typing import Any

import redis

from ..redis.keys import KeyLayout
from .snapshot import WorkerSnapshot, encode

#: How long a host's retired totals outlive its last worker, and every registry key its
#: last report (seconds).
RETAIN = 24 * 3600.0

#: How long a worker declared dead is remembered, so that one which was only paused can
#: take back what the fold added (seconds).
FOLDED_MEMORY = 3600.0

# KEYS: snapshots (hash), live (zset: field -> dies at ms), folded (zset: field -> folded at
# ms), retired (hash: "host|counter" -> total, "host|" -> last seen ms).
# ARGV: mode ("report" | "retire" | "read"), now_ms ("" = server TIME), the caller's clock
# in ms (used only where TIME is refused: an ACL user without +time), retain_ms,
# folded_memory_ms, then for report/retire: field, host, snapshot JSON, ttl_ms, the counters
# of this process's last stored snapshot as JSON ("" if none yet).
_SCRIPT = """
local mode = ARGV[1]
local now = tonumber(ARGV[2])
if not now then
  local t = redis.pcall('TIME')
  if type(t) == 'table' and t[1] then
    now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  else
    now = tonumber(ARGV[3])
  end
end
local retain = tonumber(ARGV[4])

local function add(host, counters, sign)
  for name, value in pairs(counters) do
    if type(name) == 'string' and type(value) == 'number' and value ~= 0 then
      redis.call('HINCRBYFLOAT', KEYS[4], host .. '|' .. name, sign * value)
    end
  end
  redis.call('HSET', KEYS[4], host .. '|', now)
end

local function fold(blob)
  local ok, snap = pcall(cjson.decode, blob)
  if ok and type(snap) == 'table' and type(snap.host) == 'string'
      and type(snap.counters) == 'table' then
    add(snap.host, snap.counters, 1)
  end
end

-- Workers past their TTL died without retiring: their last counters become retired ones.
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, field in ipairs(dead) do
  local blob = redis.call('HGET', KEYS[1], field)
  if blob then
    fold(blob)
    redis.call('HDEL', KEYS[1], field)
    redis.call('ZADD', KEYS[3], now, field)
  end
end
if #dead > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[5]))

-- Hosts gone for longer than retain: their retired totals go too.
if #dead > 0 or mode ~= 'report' then
  local flat = redis.call('HGETALL', KEYS[4])
  local gone = {}
  for i = 1, #flat, 2 do
    local name = flat[i]
    if string.sub(name, -1) == '|' and tonumber(flat[i + 1]) < now - retain then
      gone[string.sub(name, 1, -2)] = true
    end
  end
  if next(gone) then
    for i = 1, #flat, 2 do
      local host = string.match(flat[i], '^(.*)|[^|]*$')
      if host and gone[host] then
        redis.call('HDEL', KEYS[4], flat[i])
      end
    end
  end
end

if mode == 'read' then
  return {now, redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[4])}
end

local field, host, snap, ttl, prev = ARGV[6], ARGV[7], ARGV[8], tonumber(ARGV[9]), ARGV[10]
local resurrected = 0
if redis.call('HEXISTS', KEYS[1], field) == 0 and prev ~= ''
    and redis.call('ZSCORE', KEYS[3], field) then
  -- Declared dead while alive: the fold added our last stored counters; take them back.
  add(host, cjson.decode(prev), -1)
  redis.call('ZREM', KEYS[3], field)
  resurrected = 1
end
if mode == 'retire' then
  fold(snap)
  redis.call('HDEL', KEYS[1], field)
  redis.call('ZREM', KEYS[2], field)
else
  redis.call('HSET', KEYS[1], field, snap)
  redis.call('ZADD', KEYS[2], now + ttl, field)
  redis.call('HSET', KEYS[4], host .. '|', now)
end
for i = 1, 4 do
  redis.call('PEXPIRE', KEYS[i], retain)
end
return resurrected
"""


class Registry:
    """The worker registry of one namespace, on one client (thread-safe: redis-py's pool).

    ``now_ms`` arguments replace the server's clock (tests of expiry use it; nothing else
    should).
    """

    def __init__(self, client: redis.Redis, keys: KeyLayout) -> None:
        self._keys = [keys.workers, keys.workers_live, keys.workers_folded, keys.retired]
        self._script = client.register_script(_SCRIPT)

    def _call(self, mode: str, *args: str | bytes, now_ms: int | None) -> Any:
        head = ["" if now_ms is None else str(now_ms), str(int(time.time() * 1000)),
                str(int(RETAIN * 1000)), str(int(FOLDED_MEMORY * 1000))]
        return self._script(keys=self._keys, args=[mode, *head, *args])

    def report(self, snapshot: WorkerSnapshot, ttl: float, stored: bytes | None,
               now_ms: int | None = None) -> bool:
        """Store ``snapshot``, live for ``ttl`` seconds. ``stored``: the counters (JSON) of
        this process's last stored snapshot. True if this worker had been declared dead
        meanwhile (and what that added to the retired totals was taken back)."""
        return bool(self._call("report", snapshot.worker, snapshot.host, encode(snapshot),
                               str(int(ttl * 1000)), stored or b"", now_ms=now_ms))

    def retire(self, snapshot: WorkerSnapshot, stored: bytes | None,
               now_ms: int | None = None) -> None:
        """Remove this worker, its final counters added to its host's retired totals."""
        self._call("retire", snapshot.worker, snapshot.host, encode(snapshot), "0",
                   stored or b"", now_ms=now_ms)

    def read(self, now_ms: int | None = None) -> tuple[int, list[bytes], list[bytes]]:
        """``(server ms, snapshots hash flat, retired hash flat)``, the dead folded first."""
        now, workers, retired = self._call("read", now_ms=now_ms)
        return int(now), list(workers), list(retired)
