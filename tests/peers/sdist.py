"""A peer project's own test suite, taken from its sdist on PyPI (never ported by hand).

The sdist of the *installed* version is downloaded once into ``~/.cache/fleetcache-tests``
(pip's index settings apply) and unpacked into a temporary directory for each run.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
from importlib.metadata import version
from pathlib import Path

CACHE = Path.home() / ".cache" / "fleetcache-tests"


def unpack_sdist(project: str, into: Path) -> Path:
    """Unpack ``project``'s sdist at its installed version under ``into``; its root dir."""
    wanted = version(project)
    CACHE.mkdir(parents=True, exist_ok=True)
    found = sorted(CACHE.glob(f"{project}-{wanted}.tar.gz"))
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--no-binary", ":all:", "--dest", str(CACHE), f"{project}=={wanted}"],
            check=True, timeout=300,
        )
        found = sorted(CACHE.glob(f"{project}-{wanted}.tar.gz"))
    if not found:
        raise RuntimeError(f"pip download left no {project}-{wanted}.tar.gz in {CACHE}")
    with tarfile.open(found[0]) as archive:
        archive.extractall(into, filter="data")
    return into / f"{project}-{wanted}"
