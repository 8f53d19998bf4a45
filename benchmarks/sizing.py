"""13. Sizing: how many invalidation notices one Redis server fans out, and what a cluster,
batching and ``sync_strategy="update"`` change (docs/sizing.md reads these figures).

Every notice is the real thing: the module first makes fleetcache write (``delete``,
``delete_many`` of 10 and 100 keys, ``set`` under ``sync_strategy="update"`` with values of
100 B, 1 KB and 10 KB) on a private server and keeps the bytes it published (channel
``{ns}:inv``, ``<log entry id>|<MessagePack notice>``). The simulated publishers send those
bytes with the notice's 8-byte sender id overwritten by a CLOCK_MONOTONIC timestamp (same
size, same shape; monotonic is system-wide on Linux), so a subscriber can tell each
notice's delivery lag.

* **Subscribers**: ``SUB_PROCS`` forked processes share the N subscriber connections (a
  simulated worker each: one connection, or one per cluster node for sharded pub/sub).
  They read raw sockets with epoll, 1 MiB per ``recv``: every notice of a run has one
  frame size, so frames are counted from bytes, and one lag sample is taken per ``recv``
  (its oldest whole frame: the samples lean to the late side). Each sampled frame's
  header is checked. A subscriber process's CPU over the window is reported: near 100%
  it would be the bottleneck.
* **Publishers**: ``PUBLISHERS`` forked processes on raw sockets, ``PIPELINE`` pre-encoded
  PUBLISH (or SPUBLISH) commands per write, the timestamps patched in just before it,
  then the replies read: as fast as they can for ``duration`` ("saturated"), or paced,
  ``PACED_PIPELINE`` per write, aiming at half the saturated rate of the same round ("half
  load": the lag a server with headroom shows; the rate reached is reported).
* **Figures**: published/s; delivered/s (frames received in the window, all subscribers);
  the server's CPU (``INFO cpu`` used_cpu_sys + used_cpu_user, delta over wall) and its CPU
  per delivery (counted until the subscribers drained); lag percentiles (ms); after the
  publishers stop, how long until the last frame arrived ("drain") and how many frames never
  did; the largest output buffer of a subscriber seen (``CLIENT LIST TYPE pubsub`` omem,
  sampled every 0.25 s) and connections dropped.
* **Cluster**: 3 primaries (``--cluster-enabled yes``, joined as ``redis-cli --cluster
  create`` would: ``tests.cluster.topology.join``). Classic: every subscriber holds one
  connection to one node (spread evenly), publishers spread PUBLISH over the three nodes,
  and the cluster bus forwards every notice to every node. Sharded: ``SHARDS`` channels
  ``{ns}:inv:{NN}`` in slots spread over the nodes, each subscriber holds one connection
  per node SSUBSCRIBEd to that node's channels, each notice SPUBLISHed to one channel on
  its owner.
* **Context**: the server CPU of one real ``cache.set`` (its script, XADD and PUBLISH to
  no subscriber), from ``INFO cpu`` and ``INFO commandstats``.

On a 2-core machine the server, the publishers and the subscribers share two cores, so
the absolute ceiling is lower than a dedicated server's; the server's CPU per delivery is
the figure that carries over (docs/sizing.md derives from it).

    python -m benchmarks.sizing [--quick]
"""

from __future__ import annotations

# ruff: noqa: PLC0415 - fleetcache and redis are imported where they are used
import contextlib
import multiprocessing as mp
import os
import selectors
import socket
import struct
import threading
import time
import uuid
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.cluster.topology import join
from tests.servers import free_port

from . import harness as h

NAME = "sizing"
ROUNDS = (1, 3)  # (--quick, full)
DURATION_S = (0.5, 3.0)  # per run (--quick, full)
LEAD_S = 0.3  # publishers and subscribers armed, then all start at one instant
IDLE_END_S = 0.2  # a subscriber is done once nothing arrived for this long after the end
DRAIN_MAX_S = 15.0
SUB_PROCS = 4
PUBLISHERS = 2
PIPELINE = 50  # commands per write, saturated
PACED_PIPELINE = 5  # commands per write, paced
PACED_SHARE = 0.5
SINGLE_N = (8, 32, 128)
CLUSTER_N = ((32,), (32, 128))  # (--quick, full)
BATCH_N = 32
BATCH_KEYS = (1, 10, 100)
VALUE_BYTES = (100, 1_000, 10_000)
NODES = 3
SHARDS = 12  # sharded pub/sub channels, SHARDS // NODES per node
NS = "app"
CHANNEL = f"{NS}:inv"
CTX = mp.get_context("fork")
TS = struct.Struct(">q")
SETS = 2_000  # real cache.set calls timed for the context figure


def key_name(i: int) -> str:
    return f"user:{i:06d}"


def bulk(b: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(b), b)


def command(*parts: bytes) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(bulk(p) for p in parts)


def ts_offset(payload: bytes) -> int:
    """Where a notice's 8-byte sender id starts: ``<id>|`` then a MessagePack array of 3 or
    4 whose first element is ``bin 8``."""
    i = payload.index(b"|") + 1
    if payload[i] not in (0x93, 0x94) or payload[i + 1:i + 3] != b"\xc4\x08":
        raise RuntimeError(f"unexpected notice shape: {payload[:40]!r}")
    return i + 3


# -- the real notices -------------------------------------------------------------------------


def real_notices(url: str) -> tuple[dict[str, bytes], dict[str, Any]]:
    """What fleetcache publishes for each case (captured from its channel), and the server
    CPU of one real ``set`` (no subscriber but the capture's, unsubscribed by then)."""
    import redis

    from fleetcache import FleetCache

    client: Any = redis.Redis.from_url(url)
    ps = client.pubsub()
    ps.subscribe(CHANNEL)
    assert ps.get_message(timeout=2) is not None  # the confirmation
    inv = FleetCache.from_url(url, namespace=NS, stats_interval=0)
    upd = FleetCache.from_url(url, namespace=NS, stats_interval=0, sync_strategy="update",
                              sync_value_limit=4 * max(VALUE_BYTES))
    names: list[str] = []
    try:
        assert inv.connect(wait=10) and upd.connect(wait=10)
        inv.delete(key_name(1))
        names.append("keys=1")
        for k in BATCH_KEYS[1:]:
            inv.delete_many([key_name(i) for i in range(k)])
            names.append(f"keys={k}")
        for size in VALUE_BYTES:
            upd.set(key_name(1), os.urandom(size // 2).hex())  # incompressible text
            names.append(f"value={size}")
        inv.invalidate_tag("big")
        names.append("tag")
        got: list[bytes] = []
        deadline = time.monotonic() + 5
        while len(got) < len(names) + 1 and time.monotonic() < deadline:
            msg = ps.get_message(timeout=0.2)
            if msg and msg["type"] == "message":
                got.append(msg["data"])
        notices = dict(zip(names, got, strict=False))  # the tag's second notice is left out
        ps.unsubscribe()
        ps.close()
        # Context: the server CPU one real set costs (its script: XADD, SET, PUBLISH).
        cpu0, stats0 = h.server_cpu(client), client.info("commandstats")
        for i in range(SETS):
            inv.set(key_name(i % 1000), {"id": i, "name": "x" * 20})
        cpu1, stats1 = h.server_cpu(client), client.info("commandstats")
    finally:
        inv.close()
        upd.close()
    scripts = [name for name in ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_fcall")
               if name in stats1]
    script = max(scripts, key=lambda n: stats1[n]["calls"] - stats0.get(n, {}).get("calls", 0))
    calls = stats1[script]["calls"] - stats0.get(script, {}).get("calls", 0)
    usec = stats1[script]["usec"] - stats0.get(script, {}).get("usec", 0)
    context = {"sets": SETS, "cpu_us_per_set": (cpu1 - cpu0) / SETS * 1e6,
               "script_us_per_call": usec / calls if calls else float("nan"),
               "script": script.removeprefix("cmdstat_")}
    missing = [n for n in names if n not in notices]
    if missing:
        raise RuntimeError(f"notices not captured: {missing}")
    for payload in notices.values():
        ts_offset(payload)
    return notices, context


# -- subscriber and publisher processes -------------------------------------------------------


@dataclass(frozen=True)
class SubConn:
    """One subscriber connection: where, what it subscribes, what it then receives."""

    worker: int
    port: int
    subscribe: bytes  # the command
    confirm: bytes  # the exact replies to it
    frame: int  # bytes of every notice frame it receives
    ts_at: int  # the timestamp's offset in a frame
    head: bytes  # every frame starts with this


def _read_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed while subscribing")
        buf += chunk
    return buf


class _Receiver:
    """A subscriber process's connections and what they received."""

    def __init__(self, conns: list[SubConn]) -> None:
        self.conns = conns
        self.socks = []
        for c in conns:
            s = socket.create_connection(("127.0.0.1", c.port), timeout=10)
            s.sendall(c.subscribe)
            got = _read_exact(s, len(c.confirm))
            if got != c.confirm:
                raise RuntimeError(f"subscribe replied {got[:200]!r}")
            s.setblocking(False)
            self.socks.append(s)
        n = len(conns)
        self.total = [0] * n  # bytes received
        self.frames = [0] * n
        self.window = [0] * n
        self.lags = array("q")
        self.dropped = 0
        self.last_rx = 0

    def chunk(self, i: int, data: bytes, now: int, in_window: bool) -> None:
        """Count a recv's whole frames from its bytes; sample its oldest whole frame."""
        c = self.conns[i]
        size = len(data)
        before = self.total[i]
        first = (-before) % c.frame
        if first + c.frame <= size:
            if data[first:first + len(c.head)] != c.head:
                raise RuntimeError(f"frame out of step: {data[first:first + 60]!r}")
            if in_window:
                self.lags.append(now - TS.unpack_from(data, first + c.ts_at)[0])
        self.total[i] = after = before + size
        got = after // c.frame - before // c.frame
        self.frames[i] += got
        if in_window:
            self.window[i] += got
        self.last_rx = now

    def run(self, t0: int, t1: int) -> dict[str, Any]:
        sel = selectors.EpollSelector()
        for i, s in enumerate(self.socks):
            sel.register(s, selectors.EVENT_READ, i)
        cpu0 = cpu1 = None
        drain_end = t1 + int(DRAIN_MAX_S * 1e9)
        idle = int(IDLE_END_S * 1e9)
        open_socks = len(self.socks)
        while open_socks:
            events = sel.select(0.02)
            now = time.monotonic_ns()
            if cpu0 is None and now >= t0:
                cpu0 = time.process_time()
            if cpu1 is None and now >= t1:
                cpu1 = time.process_time()
            in_window = t0 <= now <= t1
            for key, _ in events:
                i = key.data
                try:
                    data = self.socks[i].recv(1 << 20)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    self.dropped += 1
                    open_socks -= 1
                    sel.unregister(self.socks[i])
                    continue
                self.chunk(i, data, now, in_window)
            if now > t1 and (now - max(self.last_rx, t1) > idle or now > drain_end):
                break
        for s in self.socks:
            s.close()
        per_worker: dict[int, list[int]] = {}
        for c, f, w in zip(self.conns, self.frames, self.window, strict=True):
            row = per_worker.setdefault(c.worker, [0, 0])
            row[0] += f
            row[1] += w
        return {"workers": per_worker, "lags": self.lags.tobytes(), "dropped": self.dropped,
                "last_rx": self.last_rx,
                "cpu": (cpu1 or time.process_time()) - (cpu0 or 0.0),
                "partial": sum(t % c.frame for t, c in zip(self.total, self.conns,
                                                          strict=True))}


def _subscriber(conns: list[SubConn], ready: Any, go: Any, out: Any) -> None:
    try:
        receiver = _Receiver(conns)
    except Exception as exc:
        ready.put(f"{type(exc).__name__}: {exc}")
        raise
    ready.put(len(conns))
    t0, t1 = go.get()
    out.put(receiver.run(t0, t1))


@dataclass(frozen=True)
class PubTarget:
    """A publisher's connection to one node and the commands it cycles through there."""

    port: int
    commands: tuple[bytes, ...]
    payload_len: int
    ts_in_payload: int


def _batch(target: PubTarget, size: int) -> tuple[bytearray, list[int]]:
    buf = bytearray()
    offsets = []
    for j in range(size):
        cmd = target.commands[j % len(target.commands)]
        offsets.append(len(buf) + len(cmd) - 2 - target.payload_len + target.ts_in_payload)
        buf += cmd
    return buf, offsets


def _publisher(targets: list[PubTarget], t0: int, t1: int, rate: float | None,
               out: Any) -> None:
    """Writes of ``size`` commands to each target; two writes in flight per connection
    (the next one is sent before the last one's replies are read), or paced."""
    size = PIPELINE if rate is None else PACED_PIPELINE
    conns = []
    for t in targets:
        s = socket.create_connection(("127.0.0.1", t.port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conns.append((s, *_batch(t, size)))
    owed = [0] * len(conns)  # replies not read yet, per connection
    pack = TS.pack_into
    interval = 0 if rate is None else size * len(conns) / rate * 1e9
    time.sleep(max(0.0, (t0 - time.monotonic_ns()) / 1e9))
    cpu0 = time.process_time()
    writes = 0
    while True:
        now = time.monotonic_ns()
        if now >= t1:
            break
        if interval:
            due = t0 + writes * interval
            if due > now:
                time.sleep((due - now) / 1e9)
                now = time.monotonic_ns()
        for i, (s, buf, offsets) in enumerate(conns):
            for off in offsets:
                pack(buf, off, now)
            s.sendall(buf)
            owed[i] += size
        for i, (s, _, _) in enumerate(conns):
            owed[i] = _replies(s, owed[i], size)
        writes += 1
    for i, (s, _, _) in enumerate(conns):
        owed[i] = _replies(s, owed[i], 0)
        s.close()
    out.put({"sent": writes * size * len(conns), "cpu": time.process_time() - cpu0})


def _replies(sock: socket.socket, owed: int, keep: int) -> int:
    """Read integer replies until at most ``keep`` are still owed."""
    while owed > keep:
        data = sock.recv(65536)
        if not data or b"-" in data:
            raise RuntimeError(f"publish failed: {data[:200]!r}")
        owed -= data.count(b"\n")
    return owed


# -- one run ----------------------------------------------------------------------------------


@dataclass
class Node:
    port: int
    client: Any


@dataclass
class Case:
    """One run: who subscribes where, who publishes what where."""

    label: str
    n: int
    mode: str  # "single", "classic" (cluster), "sharded" (cluster)
    payload: bytes
    subs: list[SubConn] = field(default_factory=list)
    pubs: list[list[PubTarget]] = field(default_factory=list)
    keys: int = 1


def _frame_parts(kind: bytes, channel: bytes, payload: bytes) -> tuple[int, int, bytes]:
    frame = b"*3\r\n" + bulk(kind) + bulk(channel) + bulk(payload)
    return len(frame), len(frame) - 2 - len(payload) + ts_offset(payload), b"*3\r\n" + bulk(kind)


def classic_case(nodes: list[Node], n: int, payload: bytes, label: str | None = None,
                 keys: int = 1) -> Case:
    """Classic pub/sub: each subscriber SUBSCRIBEs on one node (spread evenly), each
    publisher PUBLISHes on every node. One node: the single-server case."""
    ch = CHANNEL.encode()
    size, at, head = _frame_parts(b"message", ch, payload)
    confirm = b"*3\r\n" + bulk(b"subscribe") + bulk(ch) + b":1\r\n"
    subs = [SubConn(w, nodes[w % len(nodes)].port, command(b"SUBSCRIBE", ch), confirm, size,
                    at, head) for w in range(n)]
    targets = [PubTarget(node.port, (command(b"PUBLISH", ch, payload),), len(payload),
                         ts_offset(payload)) for node in nodes]
    mode = "single" if len(nodes) == 1 else "classic"
    return Case(label or f"classic PUBLISH, N={n}", n, mode, payload, subs,
                [targets for _ in range(PUBLISHERS)], keys)


def sharded_case(nodes: list[Node], shards: dict[int, list[bytes]], n: int,
                 payload: bytes) -> Case:
    subs = []
    targets = []
    for node in nodes:
        chans = shards[node.port]
        size, at, head = _frame_parts(b"smessage", chans[0], payload)
        confirm = b"".join(b"*3\r\n" + bulk(b"ssubscribe") + bulk(c) + b":%d\r\n" % (j + 1)
                           for j, c in enumerate(chans))
        # One SSUBSCRIBE per channel: a command's channels must share a slot.
        subscribe = b"".join(command(b"SSUBSCRIBE", c) for c in chans)
        subs += [SubConn(w, node.port, subscribe, confirm, size, at, head)
                 for w in range(n)]
        targets.append(PubTarget(node.port, tuple(command(b"SPUBLISH", c, payload)
                                                  for c in chans),
                                 len(payload), ts_offset(payload)))
    return Case(f"sharded SPUBLISH, N={n}", n, "sharded", payload, subs,
                [targets for _ in range(PUBLISHERS)])


def _omem_watch(nodes: list[Node], stop: threading.Event, seen: list[int]) -> None:
    while not stop.wait(0.25):
        for node in nodes:
            with contextlib.suppress(Exception):
                for c in node.client.client_list(_type="pubsub"):
                    seen[0] = max(seen[0], int(c.get("omem", 0)))


def _cluster_info(node: Node) -> dict[str, str]:
    """CLUSTER INFO as a dict (redis-py parses it into one; raw text is parsed here)."""
    info = node.client.execute_command("CLUSTER INFO")
    if isinstance(info, bytes | str):
        text = info.decode() if isinstance(info, bytes) else info
        info = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {str(k): str(v) for k, v in info.items()}


def _bus_published(node: Node) -> int:
    return int(_cluster_info(node).get("cluster_stats_messages_publish_sent", 0))


def run_case(nodes: list[Node], case: Case, duration: float,
             rate: float | None = None) -> dict[str, Any]:
    """Subscribers up, everyone starts at t0, publishers stop at t1, subscribers drain."""
    ready, out = CTX.Queue(), CTX.Queue()
    chunks = [case.subs[i::SUB_PROCS] for i in range(SUB_PROCS)]
    gos = [CTX.Queue() for _ in chunks]
    subs = [CTX.Process(target=_subscriber, args=(chunk, ready, go, out), daemon=True)
            for chunk, go in zip(chunks, gos, strict=True) if chunk]
    pubs: list[Any] = []
    stop = threading.Event()
    omem = [0]
    watcher = threading.Thread(target=_omem_watch, args=(nodes, stop, omem), daemon=True)
    try:
        for p in subs:
            p.start()
        said = [ready.get(timeout=60) for _ in subs]
        if any(isinstance(x, str) for x in said) or sum(said) != len(case.subs):
            raise RuntimeError(f"subscribers did not connect: {said}")
        t0 = time.monotonic_ns() + int(LEAD_S * 1e9)
        t1 = t0 + int(duration * 1e9)
        pub_out = CTX.Queue()
        per_pub = None if rate is None else rate / len(case.pubs)
        pubs = [CTX.Process(target=_publisher, args=(targets, t0, t1, per_pub, pub_out),
                            daemon=True) for targets in case.pubs]
        for p in pubs:
            p.start()
        for go in gos[:len(subs)]:
            go.put((t0, t1))
        bus0 = [_bus_published(node) for node in nodes] if case.mode != "single" else []
        time.sleep(max(0.0, (t0 - time.monotonic_ns()) / 1e9))
        cpu0 = [h.server_cpu(node.client) for node in nodes]
        w0 = time.monotonic_ns()
        watcher.start()
        time.sleep(max(0.0, (t1 - time.monotonic_ns()) / 1e9))
        cpu1 = [h.server_cpu(node.client) for node in nodes]
        w1 = time.monotonic_ns()
        stop.set()
        pub_res = [pub_out.get(timeout=30) for _ in pubs]
        sub_res = [out.get(timeout=DRAIN_MAX_S + 30) for _ in subs]
        bus1 = [_bus_published(node) for node in nodes] if case.mode != "single" else []
        cpu_end = [h.server_cpu(node.client) for node in nodes]  # every notice processed by now
    finally:
        stop.set()
        for p in [*pubs, *subs]:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)
    return _result(case, duration, rate, {
        "wall": (w1 - w0) / 1e9, "t1": t1, "pubs": pub_res, "subs": sub_res, "cpu0": cpu0,
        "cpu1": cpu1, "cpu_end": cpu_end, "bus0": bus0, "bus1": bus1, "omem": omem[0]})


def _result(case: Case, duration: float, rate: float | None,
            raw: dict[str, Any]) -> dict[str, Any]:
    """One run's figures from what the processes and the servers said."""
    wall, t1, pub_res, sub_res = raw["wall"], raw["t1"], raw["pubs"], raw["subs"]
    cpu0, cpu1, cpu_end, bus0, bus1 = (raw[k] for k in ("cpu0", "cpu1", "cpu_end", "bus0",
                                                         "bus1"))
    published = sum(r["sent"] for r in pub_res)
    delivered = sum(f for r in sub_res for f, _ in r["workers"].values())
    in_window = sum(w for r in sub_res for _, w in r["workers"].values())
    lags = array("q")
    for r in sub_res:
        lags.frombytes(r["lags"])
    node_cpu = [(b - a) / wall for a, b in zip(cpu0, cpu1, strict=True)]
    spent = sum(cpu_end) - sum(cpu0)  # CPU-seconds for every notice of the run
    frame = case.subs[0].frame
    expected = published * case.n
    return {
        "label": case.label, "mode": case.mode, "n": case.n, "keys": case.keys,
        "notice_bytes": len(case.payload), "frame_bytes": frame,
        "connections": len(case.subs), "duration_s": duration,
        "paced_rate": rate,
        "published_per_s": published / duration,
        "delivered_per_s": in_window / duration,
        "delivered_per_s_per_subscriber": in_window / duration / case.n,
        "delivered_mb_per_s": in_window * frame / duration / 1e6,
        "keys_invalidated_per_s": published * case.keys / duration,
        "published": published, "delivered": delivered, "expected": expected,
        "undelivered": expected - delivered,
        "node_cpu": node_cpu, "server_cpu": sum(node_cpu),
        "busiest_node_cpu": max(node_cpu),
        "cpu_us_per_notice": spent / published * 1e6 if published else None,
        "cpu_us_per_delivery": spent / delivered * 1e6 if delivered else None,
        "cpu_us_per_key": spent / (published * case.keys) * 1e6 if published else None,
        "deliveries_per_server_cpu_s": delivered / spent if delivered and spent else None,
        "lag_ms": h.pcts(v / 1e6 for v in lags),
        "drain_ms": max(0.0, (max(r["last_rx"] for r in sub_res) - t1) / 1e6),
        "max_omem": raw["omem"],
        "dropped": sum(r["dropped"] for r in sub_res),
        "sub_proc_cpu_max": max(r["cpu"] for r in sub_res) / duration,
        "pub_proc_cpu_max": max(r["cpu"] for r in pub_res) / duration,
        "bus_publish_sent": [b - a for a, b in zip(bus0, bus1, strict=True)],
    }


def _show(res: dict[str, Any]) -> None:
    lag = res["lag_ms"]
    paced = " (half load)" if res["paced_rate"] else ""
    cpus = "/".join(f"{c:.0%}" for c in res["node_cpu"])
    print(f"  {res['label']}{paced}: {res['published_per_s']:,.0f} pub/s, "
          f"{res['delivered_per_s']:,.0f} deliv/s, server CPU {cpus}, "
          f"lag p50 {lag['p50']:.2f} p99 {lag['p99']:.2f} ms, drain {res['drain_ms']:.0f} ms, "
          f"undelivered {res['undelivered']}, subs CPU {res['sub_proc_cpu_max']:.0%}, "
          f"pubs CPU {res['pub_proc_cpu_max']:.0%}",
          flush=True)


def _rotated(items: Sequence[Any], r: int) -> list[Any]:
    k = r % len(items)
    return [*items[k:], *items[:k]]


# -- the cluster ------------------------------------------------------------------------------


@contextlib.contextmanager
def cluster() -> Iterator[list[Node]]:
    """Three fresh primaries on free loopback ports, one cluster; stopped after."""
    import redis

    servers = []
    try:
        for _ in range(NODES):
            s = h.Server(extra=(*h.Server.extra, "--cluster-enabled", "yes",
                                "--cluster-config-file", "nodes.conf",
                                "--cluster-port", str(free_port())))
            s.start()
            servers.append(s)
        join(servers, primaries=NODES)
        nodes = [Node(s.port, redis.Redis(port=s.port)) for s in servers]
        deadline = time.monotonic() + 30
        while not all(_cluster_info(n).get("cluster_state") == "ok" for n in nodes):
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster not ok: {_cluster_info(nodes[0])}")
            time.sleep(0.1)
        yield nodes
    finally:
        for s in servers:
            s.stop()


def shard_channels(nodes: list[Node]) -> dict[int, list[bytes]]:
    """SHARDS channels of one length, SHARDS // NODES in slots owned by each node (found
    through redis-py's RedisCluster, as a client would route them)."""
    from redis.cluster import RedisCluster

    rc: Any = RedisCluster(host="127.0.0.1", port=nodes[0].port)
    try:
        per = SHARDS // len(nodes)
        out: dict[int, list[bytes]] = {n.port: [] for n in nodes}
        for j in range(100):
            name = f"{CHANNEL}:{{{j:02d}}}"
            port = int(rc.get_node_from_key(name).port)
            if len(out[port]) < per:
                out[port].append(name.encode())
            if all(len(v) == per for v in out.values()):
                return out
    finally:
        rc.close()
    raise RuntimeError("could not spread the shard channels")


# -- the measurement --------------------------------------------------------------------------


def measure(opts: h.Options, server: h.Server) -> dict[str, Any]:
    """The single-server runs (N, batching, update values), each round in rotated order,
    then each N again at half its saturated rate."""
    notices, context = real_notices(server.url)
    node = Node(server.port, server.client())
    duration = opts.pick(*DURATION_S)
    one = [node]
    cases = [classic_case(one, n, notices["keys=1"], f"N={n}") for n in SINGLE_N]
    cases += [classic_case(one, BATCH_N, notices[f"keys={k}"], f"{k} keys per notice", keys=k)
              for k in BATCH_KEYS[1:]]
    cases += [classic_case(one, BATCH_N, notices[f"value={b}"], f"update, value {b:,} B")
              for b in VALUE_BYTES]
    rounds = []
    for r in range(opts.rounds):
        rd: dict[str, Any] = {}
        for case in _rotated(cases, r):
            rd[case.label] = res = run_case([node], case, duration)
            _show(res)
        if not opts.quick:
            for case in _rotated(cases[:len(SINGLE_N)], r):
                rate = PACED_SHARE * rd[case.label]["published_per_s"]
                rd[f"{case.label} half"] = res = run_case([node], case, duration, rate)
                _show(res)
        rounds.append(rd)
    return {"rounds": rounds, "notices": {k: len(v) for k, v in notices.items()},
            "context": context, "disconnections": _disconnections(node),
            "payload": notices["keys=1"]}


def _disconnections(node: Node) -> int | None:
    stats = node.client.info("stats")
    value = stats.get("client_output_buffer_limit_disconnections")
    return None if value is None else int(value)


def measure_cluster(opts: h.Options, payload: bytes) -> dict[str, Any]:
    duration = opts.pick(*DURATION_S)
    with cluster() as nodes:
        shards = shard_channels(nodes)
        cases = []
        for n in opts.pick(*CLUSTER_N):
            cases += [classic_case(nodes, n, payload), sharded_case(nodes, shards, n, payload)]
        rounds = []
        for r in range(opts.rounds):
            rd = {}
            for case in _rotated(cases, r):
                rd[case.label] = res = run_case(nodes, case, duration)
                _show(res)
            rounds.append(rd)
        version = nodes[0].client.info("server")["redis_version"]
        disc = [_disconnections(n) for n in nodes]
    return {"rounds": rounds, "ports": [n.port for n in nodes],
            "shards": {str(k): [c.decode() for c in v] for k, v in shards.items()},
            "version": version, "disconnections": disc}


# -- summary ----------------------------------------------------------------------------------

SCALARS = ("published_per_s", "delivered_per_s", "delivered_per_s_per_subscriber",
           "delivered_mb_per_s", "keys_invalidated_per_s", "server_cpu", "busiest_node_cpu",
           "cpu_us_per_notice", "cpu_us_per_delivery", "cpu_us_per_key",
           "deliveries_per_server_cpu_s", "drain_ms", "sub_proc_cpu_max", "pub_proc_cpu_max",
           "paced_rate")


def summarize_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    first = runs[0]
    out: dict[str, Any] = {k: first[k] for k in ("label", "mode", "n", "keys", "notice_bytes",
                                                 "frame_bytes", "connections")}
    for k in SCALARS:
        out[k] = h.median(r[k] for r in runs if r[k] is not None)
    out["node_cpu"] = [h.median(r["node_cpu"][i] for r in runs)
                       for i in range(len(first["node_cpu"]))]
    out["bus_publish_sent"] = [h.median(r["bus_publish_sent"][i] for r in runs)
                               for i in range(len(first["bus_publish_sent"]))]
    out["lag_ms"] = h.median_rounds([r["lag_ms"] for r in runs])
    out["undelivered"] = sum(r["undelivered"] for r in runs)
    out["dropped"] = sum(r["dropped"] for r in runs)
    out["max_omem"] = max(r["max_omem"] for r in runs)
    return out


def summarize(single: dict[str, Any], clustered: dict[str, Any]) -> dict[str, Any]:
    def by_label(rounds: list[dict[str, Any]]) -> dict[str, Any]:
        return {label: summarize_runs([rd[label] for rd in rounds]) for label in rounds[0]}

    figures: dict[str, Any] = {"single": by_label(single["rounds"]),
                               "notice_bytes": single["notices"],
                               "context": single["context"]}
    figures["cluster"] = by_label(clustered["rounds"])
    rd = clustered["rounds"]
    for n in {r["n"] for r in rd[0].values()}:
        c, s = f"classic PUBLISH, N={n}", f"sharded SPUBLISH, N={n}"
        figures["cluster"][s]["cpu_per_delivery_ratio_to_classic"] = h.median(
            x[s]["cpu_us_per_delivery"] / x[c]["cpu_us_per_delivery"] for x in rd)
        figures["cluster"][s]["delivered_ratio_to_classic"] = h.median(
            x[s]["delivered_per_s"] / x[c]["delivered_per_s"] for x in rd)
    base = f"N={BATCH_N}"
    rounds = single["rounds"]
    for k in BATCH_KEYS[1:]:
        label = f"{k} keys per notice"
        figures["single"][label]["cpu_per_key_ratio_to_1"] = h.median(
            x[label]["cpu_us_per_key"] / x[base]["cpu_us_per_key"] for x in rounds)
    for b in VALUE_BYTES:
        label = f"update, value {b:,} B"
        figures["single"][label]["cpu_per_notice_ratio_to_invalidate"] = h.median(
            x[label]["cpu_us_per_notice"] / x[base]["cpu_us_per_notice"] for x in rounds)
    return figures


def _pct(v: float) -> str:
    return "-" if v is None else f"{v:.0%}"


def tables(figures: dict[str, Any]) -> list[h.Table]:
    single = figures["single"]
    ctx = figures["context"]
    t1 = h.Table("One server, classic PUBLISH of a 1-key notice "
                 f"({figures['notice_bytes']['keys=1']} B), N subscriber connections",
                 ["run", "published/s", "delivered/s", "per subscriber/s", "server CPU",
                  "us CPU/delivery", "deliveries per CPU-s", "lag p50 ms", "lag p99 ms",
                  "drain ms", "undelivered", "max omem", "subs CPU"],
                 note="median of rounds; 'half load' = paced, 5 notices per write, aiming at "
                      "half the saturated rate of the same round (published/s is what it "
                      "reached); server CPU = INFO cpu delta / wall (1.0 = one core); "
                      "subs CPU = the busiest subscriber process (1.0 = it was the "
                      "bottleneck); undelivered = published x N - received, summed over "
                      "rounds; omem = largest subscriber output buffer seen (bytes). "
                      f"One real cache.set costs the server {ctx['cpu_us_per_set']:.0f} us "
                      f"of CPU ({ctx['script']} {ctx['script_us_per_call']:.0f} us/call, "
                      "no subscriber).")
    for n in SINGLE_N:
        for label, name in ((f"N={n}", f"N={n}, saturated"),
                            (f"N={n} half", f"N={n}, half load")):
            if label not in single:
                continue
            f = single[label]
            t1.add(name, f["published_per_s"], f["delivered_per_s"],
                   f["delivered_per_s_per_subscriber"], _pct(f["server_cpu"]),
                   f["cpu_us_per_delivery"], f["deliveries_per_server_cpu_s"],
                   f["lag_ms"]["p50"], f["lag_ms"]["p99"], f["drain_ms"], f["undelivered"],
                   f["max_omem"], _pct(f["sub_proc_cpu_max"]))
    out = [t1]
    cl = figures["cluster"]
    t2 = h.Table("3-primary cluster: classic PUBLISH vs sharded SPUBLISH "
                 f"({SHARDS} shard channels), saturated",
                 ["run", "connections", "published/s", "delivered/s", "CPU per node",
                  "us CPU/delivery (all nodes)", "x classic", "bus PUBLISH msgs/node",
                  "lag p50 ms", "lag p99 ms", "undelivered", "subs CPU"],
                 note="median of rounds; CPU per node = INFO cpu delta / wall of each "
                      "primary; bus PUBLISH msgs = cluster_stats_messages_publish_sent "
                      "delta per node (classic pub/sub forwards every notice to every "
                      "other node); 'x classic' = CPU per delivery over classic's at the "
                      "same N, per round. All three primaries, the publishers and the "
                      "subscribers share the machine's cores.")
    for label, f in cl.items():
        t2.add(label, f["connections"], f["published_per_s"], f["delivered_per_s"],
               " / ".join(_pct(c) for c in f["node_cpu"]), f["cpu_us_per_delivery"],
               h.fmt_ratio(f.get("cpu_per_delivery_ratio_to_classic", 1.0)),
               " / ".join(h.fmt(b) for b in f["bus_publish_sent"]), f["lag_ms"]["p50"],
               f["lag_ms"]["p99"], f["undelivered"], _pct(f["sub_proc_cpu_max"]))
    out.append(t2)
    t3 = h.Table(f"Batching: keys per invalidation notice, N={BATCH_N} subscribers, saturated",
                 ["notice", "bytes", "notices/s", "keys invalidated/s", "server CPU",
                  "us CPU/notice", "us CPU/key", "x 1 key", "lag p99 ms"],
                 note="a delete_many(k keys) notice names every key; an invalidate_tag "
                      f"notice is {figures['notice_bytes'].get('tag', '?')} B whatever the "
                      "number of keys (costs as a 1-key notice).")
    rows: list[tuple[str, str, str | None]] = [(f"N={BATCH_N}", "1 key (delete)", None)]
    rows += [(f"{k} keys per notice", f"{k} keys (delete_many)", "cpu_per_key_ratio_to_1")
             for k in BATCH_KEYS[1:]]
    for label, name, ratio in rows:
        f = single[label]
        t3.add(name, f["notice_bytes"], f["published_per_s"], f["keys_invalidated_per_s"],
               _pct(f["server_cpu"]), f["cpu_us_per_notice"], f["cpu_us_per_key"],
               h.fmt_ratio(f[ratio]) if ratio else "1.00x", f["lag_ms"]["p99"])
    out.append(t3)
    t4 = h.Table(f'sync_strategy="update": the notice carries the value, N={BATCH_N}, saturated',
                 ["notice", "bytes", "notices/s", "delivered MB/s", "server CPU",
                  "us CPU/notice", "us CPU/delivery", "x invalidate", "lag p99 ms",
                  "max omem", "subs CPU"],
                 note="values above sync_value_limit (default 4,096 B) go as a plain "
                      "invalidation; it was raised here to carry the 10 KB one.")
    f = single[f"N={BATCH_N}"]
    t4.add("invalidate (1 key)", f["notice_bytes"], f["published_per_s"],
           f["delivered_mb_per_s"], _pct(f["server_cpu"]), f["cpu_us_per_notice"],
           f["cpu_us_per_delivery"], "1.00x", f["lag_ms"]["p99"], f["max_omem"],
           _pct(f["sub_proc_cpu_max"]))
    for b in VALUE_BYTES:
        f = single[f"update, value {b:,} B"]
        t4.add(f"update, value {b:,} B", f["notice_bytes"], f["published_per_s"],
               f["delivered_mb_per_s"], _pct(f["server_cpu"]), f["cpu_us_per_notice"],
               f["cpu_us_per_delivery"], h.fmt_ratio(f["cpu_per_notice_ratio_to_invalidate"]),
               f["lag_ms"]["p99"], f["max_omem"], _pct(f["sub_proc_cpu_max"]))
    out.append(t4)
    return out


def goals(figures: dict[str, Any]) -> list[dict[str, Any]]:
    runs = [*figures["single"].values(), *figures["cluster"].values()]
    undelivered = sum(r["undelivered"] for r in runs)
    dropped = sum(r["dropped"] for r in runs)
    top = figures["single"][f"N={SINGLE_N[-1]}"]
    out = [h.goal("every published notice reached every subscriber, no connection dropped",
                  undelivered + dropped, "0", undelivered == 0 and dropped == 0,
                  f"{undelivered} undelivered, {dropped} dropped over every run"),
           h.goal(f"one server's deliveries per CPU-second at N={SINGLE_N[-1]}",
                  top["deliveries_per_server_cpu_s"], "informative", None,
                  f"{top['delivered_per_s']:,.0f} delivered/s at "
                  f"{top['server_cpu']:.0%} server CPU")]
    ratios = [f["cpu_per_delivery_ratio_to_classic"] for f in figures["cluster"].values()
              if "cpu_per_delivery_ratio_to_classic" in f]
    worst = max(ratios)
    out.append(h.goal("sharded pub/sub: less cluster CPU per delivery than classic",
                      worst, "< 1.00x classic", worst < 1.0,
                      "the worst N's ratio (median of rounds)"))
    batch = figures["single"][f"{BATCH_KEYS[-1]} keys per notice"]
    out.append(h.goal(f"batching: server CPU per key, {BATCH_KEYS[-1]} keys per notice",
                      batch["cpu_per_key_ratio_to_1"], "informative (x one notice per key)",
                      None))
    return out


def chart(figures: dict[str, Any]) -> dict[str, Any]:
    single = figures["single"]
    ns = [f"N={n}" for n in SINGLE_N]
    panels = [
        {"title": "one server, 1-key notices, saturated (median of rounds)", "unit": "per s",
         "log": True, "categories": ns,
         "series": [{"label": "published/s", "values": [single[n]["published_per_s"]
                                                        for n in ns]},
                    {"label": "delivered/s (all subscribers)",
                     "values": [single[n]["delivered_per_s"] for n in ns]}]},
    ]
    cl = figures["cluster"]
    cats = list(cl)
    panels.append({
        "title": "3-primary cluster: server CPU per delivered notice, all nodes",
        "unit": "ns", "log": False, "categories": cats,
        "series": [{"label": "ns CPU per delivery",
                    "values": [cl[c]["cpu_us_per_delivery"] * 1000 for c in cats]}]})
    batch = [f"N={BATCH_N}", *(f"{k} keys per notice" for k in BATCH_KEYS[1:])]
    panels.append({
        "title": f"server CPU per invalidated key, N={BATCH_N}", "unit": "us", "log": True,
        "categories": [f"{k} key(s) per notice" for k in BATCH_KEYS],
        "series": [{"label": "us CPU per key",
                    "values": [single[b]["cpu_us_per_key"] for b in batch]}]})
    upd = [f"N={BATCH_N}", *(f"update, value {b:,} B" for b in VALUE_BYTES)]
    panels.append({
        "title": f'server CPU per notice: invalidate vs sync_strategy="update", N={BATCH_N}',
        "unit": "us", "log": True,
        "categories": ["invalidate", *(f"update {b:,} B" for b in VALUE_BYTES)],
        "series": [{"label": "us CPU per notice",
                    "values": [single[u]["cpu_us_per_notice"] for u in upd]}]})
    return {"title": "Sizing: invalidation fan-out", "panels": panels}


def run(opts: h.Options) -> dict[str, Any]:
    single, version, started = h.on_server(lambda server: measure(opts, server))
    payload = single.pop("payload")  # the cluster's notices: fleetcache's 1-key notice
    clustered = measure_cluster(opts, payload)
    figures = summarize(single, clustered)
    params = {"single_n": list(SINGLE_N), "cluster_n": list(opts.pick(*CLUSTER_N)),
              "batch_n": BATCH_N, "batch_keys": list(BATCH_KEYS),
              "value_bytes": list(VALUE_BYTES), "duration_s": opts.pick(*DURATION_S),
              "subscriber_processes": SUB_PROCS, "publishers": PUBLISHERS,
              "pipeline": PIPELINE, "paced_pipeline": PACED_PIPELINE,
              "paced_share": PACED_SHARE, "shards": SHARDS, "nodes": NODES,
              "namespace": NS, "channel": CHANNEL, "run_id": uuid.uuid4().hex[:8]}
    extra = {"disconnections": {"single": single["disconnections"],
                                "cluster": clustered["disconnections"]},
             "shard_channels": clustered["shards"]}
    raw = {"single": single["rounds"], "cluster": clustered["rounds"]}
    return h.report(opts, NAME, version, started, params=params, figures=figures,
                    raw_rounds=raw, tables=tables(figures), goals=goals(figures),
                    chart=chart(figures), extra=extra)


def main() -> None:
    h.cli(h.parser("python -m benchmarks.sizing"), ROUNDS, run)


if __name__ == "__main__":
    main()
