"""A real gunicorn fleet running the demo app (fleetcache/cli/demo_app.py), for the fleet tests.

:func:`gunicorn_fleet` boots ``gunicorn -c deploy/gunicorn.conf.py
fleetcache.cli.demo_app:app`` from the repository root on a free loopback port with 4 workers,
waits until every worker answers ``/health`` with ok, and on exit stops the master (SIGTERM,
SIGKILL after a deadline) and checks that no process it ever saw under the master is still
running. Whatever is left is SIGKILLed before the check fails: a leaked gunicorn or server
would break every later test.

Processes are followed through ``/proc`` (Linux only), by pid *and* start time, so a
recycled pid is never mistaken for one of ours.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from ..servers import Server, binaries, free_port

REPO = Path(__file__).resolve().parents[2]
WORKERS = 4
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0  # gunicorn.conf.py: graceful_timeout = 10
GONE_TIMEOUT = 5.0
REQUEST_TIMEOUT = 30.0

# Environment the fleet must not inherit from whoever runs the tests.
_SCRUBBED = ("FLEETCACHE_REDIS_URL", "REDIS_URL", "FLEETCACHE_NAMESPACE", "FLEETCACHE_DEMO_DB",
             "GUNICORN_CMD_ARGS", "GUNICORN_ACCESSLOG", "WEB_CONCURRENCY")

if not sys.platform.startswith("linux"):  # pragma: no cover
    pytest.skip("the fleet tests follow processes through /proc", allow_module_level=True)


# -- processes ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Proc:
    """A process identified by pid and start time (immune to pid reuse)."""

    pid: int
    start: int

    @classmethod
    def of(cls, pid: int) -> Proc | None:
        stat = _stat(pid)
        return None if stat is None else cls(pid, stat[2])

    def alive(self) -> bool:
        """Running (a zombie, or a new process with the same pid, counts as gone)."""
        stat = _stat(self.pid)
        return stat is not None and stat[2] == self.start and stat[0] not in "ZX"

    def cmdline(self) -> str:
        try:
            raw = Path(f"/proc/{self.pid}/cmdline").read_bytes()
        except OSError:
            return ""
        return raw.replace(b"\0", b" ").decode(errors="replace").strip()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, starttime) from /proc/<pid>/stat, or None if there is no such pid."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()  # the name, in parentheses, may hold spaces
    return fields[0], int(fields[1]), int(fields[19])


def children(pid: int) -> list[Proc]:
    """Live direct children of ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None and stat[1] == pid and stat[0] not in "ZX":
                found.append(Proc(int(entry), stat[2]))
    return found


def descendants(pid: int) -> list[Proc]:
    """Live children of ``pid``, their children, and so on."""
    found: list[Proc] = []
    todo = [pid]
    while todo:
        for child in children(todo.pop()):
            found.append(child)
            todo.append(child.pid)
    return found


def is_embedded_server(proc: Proc) -> bool:
    """A redis-server/valkey-server started by fleetcache.embedded (its dir is fleetcache-*)."""
    cmd = proc.cmdline()
    return "fleetcache-" in cmd and ("redis-server" in cmd or "valkey-server" in cmd)


def embedded_dir(proc: Proc) -> str | None:
    """The private directory named in an embedded server's command line (or its title)."""
    match = re.search(r"(/\S*/fleetcache-[^/\s]+)/", proc.cmdline())
    return match.group(1) if match else None


def wait_gone(procs: list[Proc], timeout: float) -> list[Proc]:
    """Poll until none of ``procs`` is alive; those still alive at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in procs if p.alive()]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.02)


def poll(check: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Call ``check`` until it returns something truthy; its last result at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() >= deadline:
            return result
        time.sleep(interval)


# -- the fleet -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Flavor:
    """How gunicorn runs its workers."""

    worker_class: str
    preload: bool = True

    @property
    def id(self) -> str:
        return f"{self.worker_class}-{'preload' if self.preload else 'nopreload'}"

    def env(self) -> dict[str, str]:
        return {
            "GUNICORN_WORKERS": str(WORKERS),
            "GUNICORN_WORKER_CLASS": self.worker_class,
            # gunicorn runs "sync" with threads > 1 as gthread: sync must say threads=1
            "GUNICORN_THREADS": "8" if self.worker_class == "gthread" else "1",
            "GUNICORN_WORKER_CONNECTIONS": "100",
            "GUNICORN_PRELOAD": "1" if self.preload else "0",
            "GUNICORN_MAX_REQUESTS": "0",
        }


@dataclass
class Response:
    status: int
    body: dict[str, Any]


@dataclass
class Fleet:
    """One running gunicorn master and what the tests saw of it."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    master: Proc
    seen: set[Proc] = field(default_factory=set)  # every process ever seen under the master
    embedded_dirs: set[str] = field(default_factory=set)  # directories of embedded servers
    ready_pids: set[int] = field(default_factory=set)

    # requests

    def request(self, method: str, path: str, timeout: float = REQUEST_TIMEOUT) -> Response:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            # Connection: close, so no idle keep-alive socket holds a worker at shutdown.
            conn.request(method, path, headers={"Connection": "close"})
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {"raw": raw[:500].decode(errors="replace")}
        return Response(resp.status, body)

    def get(self, path: str, timeout: float = REQUEST_TIMEOUT) -> dict[str, Any]:
        """GET ``path``; its JSON body (AssertionError unless 200)."""
        resp = self.request("GET", path, timeout)
        assert resp.status == 200, f"GET {path}: {resp.status} {resp.body}\n{self.log_tail()}"
        return resp.body

    def post(self, path: str, timeout: float = REQUEST_TIMEOUT) -> dict[str, Any]:
        resp = self.request("POST", path, timeout)
        assert resp.status == 200, f"POST {path}: {resp.status} {resp.body}\n{self.log_tail()}"
        return resp.body

    def get_many(self, paths: list[str], concurrency: int = 8) -> list[dict[str, Any]]:
        """GET every path, ``concurrency`` at a time; bodies in the order of ``paths``."""
        with ThreadPoolExecutor(concurrency) as pool:
            return list(pool.map(self.get, paths))

    def until_all_workers(
        self, path: str, timeout: float = 20.0, check: Callable[[dict[str, Any]], None] | None
        = None,
    ) -> list[dict[str, Any]]:
        """GET ``path`` in concurrent batches until all current workers have answered it."""
        bodies: list[dict[str, Any]] = []
        want = {p.pid for p in self.workers()}
        assert len(want) == WORKERS, f"workers: {want}\n{self.log_tail()}"
        deadline = time.monotonic() + timeout
        while not want <= {b["pid"] for b in bodies}:
            assert time.monotonic() < deadline, (
                f"only {sorted({b['pid'] for b in bodies})} of workers {sorted(want)} answered "
                f"{path} in {timeout} s\n{self.log_tail()}"
            )
            batch = self.get_many([path] * 8)
            for body in batch:
                if check is not None:
                    check(body)
            bodies.extend(batch)
        return bodies

    # processes

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no gunicorn log)"
        return "--- gunicorn log (tail) ---\n" + "\n".join(text.splitlines()[-lines:])

    def snapshot(self) -> list[Proc]:
        """Every live process under the master now (remembered for the final check)."""
        procs = descendants(self.master.pid) if self.master.alive() else []
        self.seen.update(procs)
        for proc in procs:
            path = embedded_dir(proc) if is_embedded_server(proc) else None
            if path is not None:
                self.embedded_dirs.add(path)
        return procs

    def workers(self) -> list[Proc]:
        """The master's live worker processes (not the embedded server)."""
        self.snapshot()
        if not self.master.alive():
            return []
        return [p for p in children(self.master.pid) if not is_embedded_server(p)]

    def embedded_servers(self) -> list[Proc]:
        return [p for p in self.snapshot() if is_embedded_server(p)]

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Until ``/health`` said ok from ``WORKERS`` distinct worker pids."""
        deadline = time.monotonic() + timeout
        last: object = None
        while len(self.ready_pids) < WORKERS:
            if self.proc.poll() is not None:
                raise AssertionError(f"gunicorn exited with {self.proc.returncode} while "
                                     f"booting\n{self.log_tail()}")
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"only {sorted(self.ready_pids)} of {WORKERS} workers answered /health ok "
                    f"in {timeout} s; last answer: {last!r}\n{self.log_tail()}"
                )
            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(self._health, range(8)))
            for answer in answers:
                last = answer
                if isinstance(answer, Response) and answer.status == 200 and answer.body.get("ok"):
                    self.ready_pids.add(answer.body["pid"])
            if len(self.ready_pids) < WORKERS:
                time.sleep(0.05)
        self.snapshot()

    def _health(self, _: int) -> Response | str:
        try:
            return self.request("GET", "/health", timeout=2.0)
        except (OSError, http.client.HTTPException) as exc:  # not listening yet, or booting
            return repr(exc)

    def terminate(self) -> None:
        """SIGTERM the master (graceful shutdown), remembering its processes first."""
        self.snapshot()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> list[Proc]:
        """Stop the master; the processes ever seen under it still running (now SIGKILLed)."""
        self.terminate()
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.snapshot()
            self.proc.kill()
            self.proc.wait(10)
        left = wait_gone(sorted(self.seen, key=lambda p: p.pid), GONE_TIMEOUT)
        for proc in left:
            proc.kill()
        wait_gone(left, GONE_TIMEOUT)
        return left


def fleet_env(
    port: int, flavor: Flavor, *, redis_url: str | None, namespace: str, db_path: Path,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """The environment of a test fleet: nothing inherited that could redirect it."""
    env = {k: v for k, v in os.environ.items()
           if k not in _SCRUBBED and not k.startswith("GUNICORN_")}
    env.update(flavor.env())
    env.update({
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "FLEETCACHE_NAMESPACE": namespace,
        "FLEETCACHE_DEMO_DB": str(db_path),
        "PYTHONUNBUFFERED": "1",
    })
    if redis_url is not None:
        env["FLEETCACHE_REDIS_URL"] = redis_url
    env.update(extra or {})
    return env


def gunicorn_command() -> list[str]:
    cmd = [sys.executable, "-m", "gunicorn", "-c", "deploy/gunicorn.conf.py"]
    # gunicorn >= 25.1 opens a control socket at one fixed path per user: several masters
    # (parallel test runs, another checkout) would fight over it.
    if tuple(int(p) for p in version("gunicorn").split(".")[:2]) >= (25, 1):
        cmd.append("--no-control-socket")
    return [*cmd, "fleetcache.cli.demo_app:app"]


@contextlib.contextmanager
def gunicorn_fleet(
    workdir: Path, flavor: Flavor, redis_url: str | None, namespace: str | None = None,
    extra_env: dict[str, str] | None = None, *, app: str | None = None,
) -> Iterator[Fleet]:
    """A ready gunicorn fleet of the demo app (or of ``app``, a WSGI ``module:callable``
    that answers /health like it); stopped, and checked for leftovers, on exit.

    ``redis_url=None`` runs it with no Redis URL at all: the embedded default.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = workdir / f"gunicorn-{port}.log"
    env = fleet_env(port, flavor, redis_url=redis_url,
                    namespace=namespace or "f" + uuid.uuid4().hex[:12],
                    db_path=workdir / "demo.sqlite3", extra=extra_env)
    command = gunicorn_command()
    if app is not None:
        assert command[-1].endswith(":app"), command  # the demo app, swapped for ``app``
        command[-1] = app
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT)
    master = Proc.of(proc.pid)
    assert master is not None, "gunicorn master vanished at once"
    fleet = Fleet(proc, port, log_path, master)
    ok = False
    try:
        fleet.wait_ready()
        using = f"Using worker: {flavor.worker_class}"
        assert using in log_path.read_text(errors="replace"), (
            f"gunicorn did not run {flavor.worker_class} workers\n{fleet.log_tail()}")
        yield fleet
        ok = True
    finally:
        left = fleet.stop()
        for path in fleet.embedded_dirs:  # left behind only if the master was SIGKILLed
            _remove_embedded_dir(path)
        if ok:  # never hide the body's own failure behind this one
            assert not left, (
                f"processes left after gunicorn stopped (now killed): "
                f"{[(p.pid, p.cmdline()) for p in left]}\n{fleet.log_tail()}"
            )


def _remove_embedded_dir(path: str) -> None:
    """A SIGKILLed master cannot remove its embedded server's directory: do it for it."""
    if Path(path).name.startswith("fleetcache-") and \
            Path(path).parent == Path(tempfile.gettempdir()):
        shutil.rmtree(path, ignore_errors=True)


# -- fixtures ------------------------------------------------------------------------------

FLAVORS = [
    Flavor("sync"),
    Flavor("gthread"),
    Flavor("gthread", preload=False),
    Flavor("gevent"),
    Flavor("gevent", preload=False),
]


@pytest.fixture(scope="module")
def fleet_server() -> Iterator[Server]:
    """One private server (the first kind available) per test module: the fleet suite runs
    against one kind only, to keep it short; the integration suite covers both kinds."""
    kinds = binaries()
    if not kinds:
        pytest.skip("no redis-server or valkey-server available")
    srv = Server(kinds[sorted(kinds)[0]]).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module", params=FLAVORS, ids=lambda f: f.id)
def fleet(
    request: pytest.FixtureRequest, fleet_server: Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    """A ready 4-worker fleet per flavor, shared by the tests of a module (own namespace)."""
    flavor: Flavor = request.param
    with gunicorn_fleet(tmp_path_factory.mktemp(flavor.id), flavor, fleet_server.url) as f:
        yield f


StartFleet = Callable[..., contextlib.AbstractContextManager[Fleet]]


@pytest.fixture
def start_fleet(tmp_path: Path) -> Iterator[StartFleet]:
    """``with start_fleet(flavor, url, **extra_env) as fleet:`` for a test's own fleet."""

    def start(flavor: Flavor, redis_url: str | None, namespace: str | None = None,
              **extra_env: str) -> contextlib.AbstractContextManager[Fleet]:
        return gunicorn_fleet(tmp_path / uuid.uuid4().hex[:8], flavor, redis_url, namespace,
                              extra_env)

    yield start



def cold_burst(fleet: Fleet, clients: int) -> tuple[str, list[Response], dict[str, Any]]:
    """``clients`` requests at once (a barrier) for one fresh key whose compute takes 300 ms
    (the app's /burst): asserts every answer is a 200 and exactly one request computed;
    (the key, the answers, the computing answer's body)."""
    key = uuid.uuid4().hex
    barrier = threading.Barrier(clients)

    def one(_: int) -> Response:
        barrier.wait(timeout=30)
        # sync workers serve one request at a time: the last waits for all the others
        return fleet.request("GET", f"/burst/{key}?ms=300", timeout=60)

    with ThreadPoolExecutor(clients) as pool:
        answers = list(pool.map(one, range(clients)))
    failed = [(a.status, a.body) for a in answers if a.status != 200]
    assert not failed, f"{failed}\n{fleet.log_tail()}"
    computed = [a.body for a in answers if a.body["computed"]]
    assert len(computed) == 1, f"{len(computed)} computes of one cold key: {computed}"
    assert len({a.body["pid"] for a in answers}) >= 2, "the burst reached one worker only"
    return key, answers, computed[0]
