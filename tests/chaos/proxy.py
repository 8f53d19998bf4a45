"""A loopback TCP proxy that breaks the link between a client and a server on demand.

One thread runs a ``select`` loop over every socket; tests change its behaviour through
calls that run *inside* that loop (so no socket is ever closed under another thread's feet):

* pass traffic through unchanged (the default);
* :meth:`Proxy.set_latency`: delay every chunk, per direction ("up" = client to server,
  "down" = server to client), on every connection or only on command (``"data"``) or
  pub/sub connections. Chunks are delayed, not serialised: like a long wire;
* :meth:`Proxy.reset`: abort every connection with a TCP RST on both sides
  (``SO_LINGER`` 0, then close), like a middlebox or a peer that crashed and came back;
* :meth:`Proxy.refuse`: RST every new connection right after accepting it, like a server
  that is down (with :meth:`Proxy.reset` first: a cut, and no way back until healed);
* :meth:`Proxy.blackhole`: keep connections open but stop forwarding, silently, in one or
  both directions. Nothing is read from a held direction, so bytes wait in kernel buffers
  and FIN/RST from the held side go unnoticed, exactly like a partition or a half-open TCP
  connection. ``scope="pubsub"`` holds only connections that sent SUBSCRIBE (the client's
  invalidation listener); ``new_connections=True`` keeps holding connections made (or
  subscribing) later, so a reconnect does not escape. :meth:`Proxy.heal` releases
  everything, held bytes included (a healed partition: TCP delivers what was in flight).

No dependencies beyond the standard library; loopback only.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

monotonic = time.monotonic

Direction = Literal["up", "down", "both"]
Scope = Literal["all", "pubsub"]
LatencyScope = Literal["all", "data", "pubsub"]

_CHUNK = 65536
_MAX_QUEUED = 256  # chunks per direction before we stop reading (backpressure)
_TICK = 0.05  # longest select() sleep: bounds how late a delayed chunk is sent
_LINGER_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


def _rst_close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    with contextlib.suppress(OSError):
        sock.close()


class _Pipe:
    """One direction of one connection: read ``src``, delay, write ``dst``."""

    __slots__ = ("chunks", "dst", "eof", "held", "name", "out", "queue", "shut", "src")

    def __init__(self, name: str, src: socket.socket, dst: socket.socket) -> None:
        self.name = name
        self.src = src
        self.dst = dst
        self.queue: deque[tuple[float, bytes]] = deque()  # (deliver_at, data)
        self.out = bytearray()  # due bytes not yet accepted by dst
        self.eof = False  # src said FIN
        self.shut = False  # FIN passed on to dst
        self.held = False  # blackholed: neither read nor written
        self.chunks = 0  # chunks read from src so far


class _Conn:
    __slots__ = ("client", "client_port", "down", "id", "subscribed", "tail", "up",
                 "upstream", "upstream_port")

    def __init__(self, cid: int, client: socket.socket, upstream: socket.socket) -> None:
        self.id = cid
        self.client = client
        self.upstream = upstream
        self.client_port = client.getpeername()[1]
        self.upstream_port = upstream.getsockname()[1]
        self.up = _Pipe("up", client, upstream)
        self.down = _Pipe("down", upstream, client)
        self.subscribed = False  # the client sent SUBSCRIBE on it: a pub/sub connection
        self.tail = b""  # last bytes sent up, so a command split across chunks still matches


@dataclass(frozen=True)
class ConnInfo:
    """A snapshot of one proxied connection."""

    id: int
    client_port: int  # the client's local port (what the client's socket is bound to)
    upstream_port: int  # the proxy's local port towards the server (what CLIENT LIST shows)
    subscribed: bool
    held_up: bool
    held_down: bool
    chunks_up: int
    chunks_down: int


@dataclass
class _Rule:
    scope: Scope
    directions: tuple[str, ...]
    new_connections: bool


class Proxy:
    """``Proxy(port)`` forwards ``127.0.0.1:proxy.port`` to ``127.0.0.1:port``."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._calls: deque[tuple[Callable[[], Any], list[Any], threading.Event]] = deque()
        self._conns: dict[int, _Conn] = {}
        self._next_id = 0
        self._latency = {"up": 0.0, "down": 0.0}
        self._latency_scope: LatencyScope = "all"
        self._rule: _Rule | None = None
        self._refusing = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        # Counters, read by tests (ints: safe to read from any thread).
        self.accepted = 0
        self.resets = 0  # connections aborted by reset()
        self.failed_upstream = 0  # accepted, but the server refused
        self.refused = 0  # accepted and aborted by refuse()

    # -- life cycle -----------------------------------------------------------------------

    def start(self) -> Proxy:
        self._thread = threading.Thread(target=self._loop, name="chaos-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close every connection (plain close, no RST) and the listener; join the thread."""
        if self._thread is None:
            return
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                self._call(self._shutdown_all)
            self._thread.join(5.0)
        self._thread = None
        for sock in (self._listener, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> Proxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def url(self, userinfo: str = "") -> str:
        """A redis:// URL through the proxy (``userinfo`` such as ``"app:pass"``)."""
        at = "@" if userinfo else ""
        return f"redis://{userinfo}{at}127.0.0.1:{self.port}/0"

    # -- faults (each runs inside the loop thread and returns once applied) -------------

    def set_latency(
        self, up: float = 0.0, down: float = 0.0, scope: LatencyScope = "all"
    ) -> None:
        """Delay every chunk read from now on by ``up``/``down`` seconds.

        ``scope="data"`` delays only connections that never sent SUBSCRIBE (commands),
        ``"pubsub"`` only those that did (the invalidation listener).
        """

        def apply() -> None:
            self._latency.update(up=up, down=down)
            self._latency_scope = scope

        self._call(apply)

    def reset(self) -> int:
        """RST every connection, both sides; how many were aborted."""
        return int(self._call(self._reset_all))

    def blackhole(
        self, scope: Scope = "all", direction: Direction = "both", new_connections: bool = True
    ) -> int:
        """Stop forwarding on matching connections, silently; how many are held now."""
        dirs = ("up", "down") if direction == "both" else (direction,)
        rule = _Rule(scope, dirs, new_connections)
        return int(self._call(lambda: self._apply_rule(rule)))

    def refuse(self) -> int:
        """Abort every connection now and RST every new one until :meth:`heal`; how many
        were aborted."""

        def apply() -> int:
            self._refusing = True
            return self._reset_all()

        return int(self._call(apply))

    def heal(self) -> int:
        """Forward everything again, held bytes first, and accept new connections again;
        how many connections were held."""

        def apply() -> int:
            self._refusing = False
            return self._heal_all()

        return int(self._call(apply))

    def connections(self) -> list[ConnInfo]:
        return list(self._call(self._snapshot))

    def wait_for_chunk(
        self, scope: Scope = "pubsub", direction: Literal["up", "down"] = "down",
        timeout: float = 5.0,
    ) -> float:
        """Wait until a new chunk passes on a matching connection; when (monotonic).

        With ``scope="pubsub", direction="down"`` this returns just after the listener got a
        message (a PONG of its watchdog, typically): the moment a blackhole hurts most.
        """

        def count() -> int:
            return sum(c.chunks_down if direction == "down" else c.chunks_up
                       for c in self.connections() if scope == "all" or c.subscribed)

        before = count()
        deadline = monotonic() + timeout
        while monotonic() < deadline:
            if count() > before:
                return monotonic()
            time.sleep(0.002)
        raise TimeoutError(f"no {direction} chunk on a {scope} connection within {timeout} s")

    # -- the loop -------------------------------------------------------------------------

    def _call(self, fn: Callable[[], Any], timeout: float = 5.0) -> Any:
        thread = self._thread
        if thread is None or not thread.is_alive():
            raise RuntimeError("proxy is not running")
        box: list[Any] = []
        done = threading.Event()
        self._calls.append((fn, box, done))
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if not done.wait(timeout):
            raise TimeoutError("proxy loop did not answer")
        if box and isinstance(box[0], BaseException):
            raise box[0]
        return box[0] if box else None

    def _run_calls(self) -> None:
        while self._calls:
            fn, box, done = self._calls.popleft()
            try:
                box.append(fn())
            except BaseException as exc:
                box.append(exc)
            done.set()

    def _loop(self) -> None:
        try:
            while not self._stopping:
                self._run_calls()
                if self._stopping:
                    break
                self._step()
        finally:
            self._stopping = True
            self._shutdown_all()
            self._run_calls()  # nobody waits forever on a call made while we stopped

    def _step(self) -> None:
        now = monotonic()
        readers: dict[socket.socket, tuple[_Conn, _Pipe]] = {}
        writers: list[socket.socket] = []
        timeout = _TICK
        for conn in list(self._conns.values()):
            for pipe in (conn.up, conn.down):
                if conn.id not in self._conns:
                    break  # aborted while flushing the other direction
                if pipe.held:
                    continue
                while pipe.queue and pipe.queue[0][0] <= now:
                    pipe.out += pipe.queue.popleft()[1]
                if pipe.out:
                    self._flush(conn, pipe)
                if conn.id not in self._conns:
                    break
                if pipe.out:
                    writers.append(pipe.dst)
                elif pipe.queue:
                    timeout = min(timeout, pipe.queue[0][0] - now)
                elif pipe.eof and not pipe.shut:
                    with contextlib.suppress(OSError):
                        pipe.dst.shutdown(socket.SHUT_WR)
                    pipe.shut = True
                if not pipe.eof and len(pipe.queue) < _MAX_QUEUED:
                    readers[pipe.src] = (conn, pipe)
            if conn.id in self._conns and conn.up.shut and conn.down.shut:
                self._drop(conn, rst=False)
        rlist: list[Any] = [self._listener, self._wake_r, *readers]
        try:
            readable, _, _ = select.select(rlist, writers, [], max(0.0, timeout))
        except (OSError, ValueError):
            return  # a socket closed between building the lists and select: go round again
        now = monotonic()
        for sock in readable:
            if sock is self._listener:
                self._accept()
            elif sock is self._wake_r:
                with contextlib.suppress(OSError):
                    while self._wake_r.recv(4096):
                        pass
            else:
                conn, pipe = readers[sock]
                if conn.id in self._conns and not pipe.held:
                    self._read(conn, pipe, now)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self.accepted += 1
            if self._refusing:
                self.refused += 1
                _rst_close(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=1.0)
            except OSError:
                self.failed_upstream += 1
                _rst_close(client)  # like the server: connection refused/reset
                continue
            for sock in (client, upstream):
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(self._next_id, client, upstream)
            self._next_id += 1
            self._conns[conn.id] = conn
            rule = self._rule
            if rule is not None and rule.new_connections and rule.scope == "all":
                self._hold(conn, rule)

    def _read(self, conn: _Conn, pipe: _Pipe, now: float) -> None:
        try:
            data = pipe.src.recv(_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn, rst=True)  # mirror a reset to the other side
            return
        if not data:
            pipe.eof = True
            return
        pipe.chunks += 1
        if pipe is conn.up and not conn.subscribed:
            seen = (conn.tail + data).upper()
            if b"SUBSCRIBE" in seen:
                conn.subscribed = True
                rule = self._rule
                if rule is not None and rule.new_connections and rule.scope == "pubsub":
                    self._hold(conn, rule)  # this very chunk is held too
            conn.tail = data[-16:]
        scope = self._latency_scope
        delayed = scope == "all" or (scope == "pubsub") == conn.subscribed
        pipe.queue.append((now + (self._latency[pipe.name] if delayed else 0.0), data))

    def _flush(self, conn: _Conn, pipe: _Pipe) -> None:
        try:
            sent = pipe.dst.send(pipe.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn, rst=True)
            return
        del pipe.out[:sent]

    def _drop(self, conn: _Conn, *, rst: bool) -> None:
        self._conns.pop(conn.id, None)
        for sock in (conn.client, conn.upstream):
            if rst:
                _rst_close(sock)
            else:
                with contextlib.suppress(OSError):
                    sock.close()

    def _reset_all(self) -> int:
        conns = list(self._conns.values())
        for conn in conns:
            self._drop(conn, rst=True)
        self.resets += len(conns)
        return len(conns)

    def _shutdown_all(self) -> None:
        self._stopping = True
        for conn in list(self._conns.values()):
            self._drop(conn, rst=False)

    def _matches(self, conn: _Conn, rule: _Rule) -> bool:
        return rule.scope == "all" or conn.subscribed

    def _hold(self, conn: _Conn, rule: _Rule) -> None:
        for name in rule.directions:
            getattr(conn, name).held = True

    def _apply_rule(self, rule: _Rule) -> int:
        self._rule = rule
        held = 0
        for conn in self._conns.values():
            if self._matches(conn, rule):
                self._hold(conn, rule)
                held += 1
        return held

    def _heal_all(self) -> int:
        self._rule = None
        held = 0
        for conn in self._conns.values():
            if conn.up.held or conn.down.held:
                held += 1
            conn.up.held = conn.down.held = False
        return held

    def _snapshot(self) -> list[ConnInfo]:
        return [
            ConnInfo(c.id, c.client_port, c.upstream_port, c.subscribed, c.up.held,
                     c.down.held, c.up.chunks, c.down.chunks)
            for c in self._conns.values()
        ]
