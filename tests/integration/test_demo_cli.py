"""The README's main command, shortened: `fleetcache demo` runs a fleet and cleans up."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.slow
@pytest.mark.parametrize("worker_class", ["gthread", "gevent"])
def test_demo_runs_a_fleet_on_the_embedded_server(worker_class: str) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("FLEETCACHE_REDIS_URL", "REDIS_URL")}
    demo = subprocess.Popen(
        [sys.executable, "-m", "fleetcache", "demo", "--seconds", "1.5", "--workers", "2",
         "--clients", "4", "--burst", "12", "--worker-class", worker_class],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    stdout, stderr = demo.communicate(timeout=120)
    assert demo.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert "an embedded server" in stdout
    assert "errors 0" in stdout
    assert "stampede burst: 1 compute(s) for 12 concurrent requests" in stdout
    assert "cross-worker invalidation delay: p50" in stdout
    # Everything the demo started (gunicorn master, workers, embedded server) carries its
    # namespace in the environment; none may be left.
    assert _processes_with_env(f"FLEETCACHE_NAMESPACE=demo{demo.pid}") == []


def _processes_with_env(entry: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if entry.encode() in f.read().split(b"\0"):
                    found.append(int(pid))
        except OSError:
            continue
    return found
