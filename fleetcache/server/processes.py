"""Stopping a child process in bounded time: SIGTERM, a grace period, then SIGKILL."""

from __future__ import annotations

import subprocess
from typing import Any


def stop(proc: subprocess.Popen[Any], grace: float) -> int:
    """Ask ``proc`` to stop (SIGTERM), wait up to ``grace`` seconds, then kill it; its
    exit code. A gunicorn master given SIGTERM stops its workers (and, through the hooks,
    the embedded server) before it exits; the kill bounds how long a stuck one may take."""
    if proc.poll() is None:
        proc.terminate()
    try:
        return proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(5)
