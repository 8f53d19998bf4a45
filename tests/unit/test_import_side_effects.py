"""Importing fleetcache (and building a cache) must leave the host app's process alone.

Each check runs in a fresh interpreter (``sys.executable -c``): this pytest process has long
since imported fleetcache, pottery and redis.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(
    not os.path.isdir("/proc/self/fd"), reason="counts sockets through /proc/self/fd"
)

# Helpers every child script starts with. REDIS_URL points at a dead loopback port so that
# nothing (pottery's default client included) could ever reach a real server on 6379.
PRELUDE = textwrap.dedent(
    """
    import json, logging, os, sys, threading

    def sockets():
        count = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                    count += 1
            except OSError:
                pass
        return count

    def report(**facts):
        print("RESULT " + json.dumps(facts))
    """
)


def run_child(body: str) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k not in ("FLEETCACHE_REDIS_URL",)}
    env["REDIS_URL"] = "redis://127.0.0.1:1/0"
    proc = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(body)],
        check=False, capture_output=True, text=True, timeout=60, env=env,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, proc.stdout + proc.stderr
    result: dict[str, object] = json.loads(lines[0][len("RESULT "):])
    return result


def test_import_starts_no_thread_and_opens_no_socket() -> None:
    facts = run_child(
        """
        threads, socks = threading.active_count(), sockets()
        import fleetcache
        report(threads=[threads, threading.active_count()], sockets=[socks, sockets()],
               names=[t.name for t in threading.enumerate()])
        """
    )
    before, after = facts["threads"]  # type: ignore[misc]
    assert after == before, facts["names"]
    before, after = facts["sockets"]  # type: ignore[misc]
    assert after == before


def test_sockets_are_counted_by_the_probe() -> None:
    """The socket probe sees a socket the child opens (else the checks above prove nothing)."""
    facts = run_child(
        """
        import socket
        socks = sockets()
        s = socket.socket()
        report(sockets=[socks, sockets()])
        """
    )
    before, after = facts["sockets"]  # type: ignore[misc]
    assert after == before + 1


def test_import_leaves_json_dumps_alone() -> None:
    facts = run_child(
        """
        original = json.dumps
        import fleetcache
        import fleetcache.redis.locks  # the module that imports pottery
        report(same=json.dumps is original, pottery_loaded="pottery" in sys.modules,
               sample=json.dumps({"a": 1}))
        """
    )
    assert facts["pottery_loaded"] is True  # else this test would not exercise the trap
    assert facts["same"] is True
    assert facts["sample"] == '{"a": 1}'


def test_pottery_imported_first_keeps_its_json_dumps() -> None:
    facts = run_child(
        """
        original = json.dumps
        import pottery
        potterys = json.dumps
        import fleetcache
        report(pottery_patched=potterys is not original, kept=json.dumps is potterys)
        """
    )
    assert facts["pottery_patched"] is True  # pottery still does its patch, else moot
    assert facts["kept"] is True


def test_import_leaves_logging_config_alone() -> None:
    facts = run_child(
        """
        root = logging.getLogger()
        handlers, level = list(root.handlers), root.level
        disabled = logging.root.manager.disable
        import fleetcache
        fc = logging.getLogger("fleetcache")
        report(
            handlers_same=root.handlers == handlers,
            level=[level, root.level],
            disable=[disabled, logging.root.manager.disable],
            fleetcache_handlers=[type(h).__name__ for h in fc.handlers],
            fleetcache_level=fc.level,
            fleetcache_propagate=fc.propagate,
        )
        """
    )
    assert facts["handlers_same"] is True
    before, after = facts["level"]  # type: ignore[misc]
    assert after == before
    before, after = facts["disable"]  # type: ignore[misc]
    assert after == before
    assert facts["fleetcache_handlers"] == []
    assert facts["fleetcache_level"] == 0  # NOTSET: the app decides
    assert facts["fleetcache_propagate"] is True


def test_constructing_a_cache_is_lazy_until_first_use() -> None:
    facts = run_child(
        """
        import fleetcache
        threads, socks = threading.active_count(), sockets()
        cache = fleetcache.FleetCache.from_url("redis://127.0.0.1:1/0")
        built = [threading.active_count(), sockets()]
        repr(cache); cache.stats()
        inspected = [threading.active_count(), sockets()]
        miss = cache.get("k", "default")  # first use: connects (refused) and starts listener
        used = [threading.active_count(), sockets()]
        cache.close()
        report(start=[threads, socks], built=built, inspected=inspected, used=used, miss=miss)
        """
    )
    assert facts["built"] == facts["start"]
    assert facts["inspected"] == facts["start"]
    assert facts["miss"] == "default"
    # First use does start the listener: the probe would have seen an eager one.
    assert facts["used"][0] > facts["start"][0]  # type: ignore[index]


def test_constructing_from_env_is_lazy_too() -> None:
    facts = run_child(
        """
        import fleetcache
        threads, socks = threading.active_count(), sockets()
        cache = fleetcache.FleetCache(namespace="lazy")
        report(start=[threads, socks], built=[threading.active_count(), sockets()])
        """
    )
    assert facts["built"] == facts["start"]
