"""The embedded single-box server: private unix socket, clean stop, dies with its parent."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from fleetcache import FleetCache
from fleetcache.server.embedded import EmbeddedServer


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_embedded_server_serves_a_cache_on_a_private_socket() -> None:
    with EmbeddedServer() as server:
        mode = os.stat(os.path.dirname(server.socket_path)).st_mode
        assert stat.S_IMODE(mode) == 0o700
        assert server.url.startswith("unix://")
        with FleetCache.from_url(server.url, namespace="emb") as cache:
            assert cache.connect(wait=5)
            cache.set("k", {"v": 1})
            assert cache.get_or_compute("c", lambda: 7) == 7
            assert cache.get("k") == {"v": 1}
        pid = server.pid
        directory = os.path.dirname(server.socket_path)
    assert pid is not None
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(pid)
    assert not os.path.exists(directory)


def test_no_tcp_port_is_opened() -> None:
    with EmbeddedServer() as server:
        out = subprocess.run(["ss", "-ltnp"], capture_output=True, text=True, check=False)
        if out.returncode != 0:
            pytest.skip("ss not available")
        assert f"pid={server.pid}," not in out.stdout


@pytest.mark.slow
def test_server_dies_when_its_parent_is_sigkilled() -> None:
    script = (
        "import sys, time\n"
        "from fleetcache.server.embedded import EmbeddedServer\n"
        "s = EmbeddedServer(); s.start(); print(s.pid, flush=True); time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        server_pid = int(parent.stdout.readline())
        assert _alive(server_pid)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(5)
        deadline = time.monotonic() + 5
        while _alive(server_pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _alive(server_pid), "embedded server outlived its SIGKILLed parent"
    finally:
        parent.kill()
