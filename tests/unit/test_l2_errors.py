"""How redis-py errors map onto fleetcache's tree."""

from __future__ import annotations

import pytest
import redis

from fleetcache import BackendError, BackendUnavailableError
from fleetcache.redis.errors import mapped_errors


def test_unreachable_maps_to_backend_unavailable() -> None:
    with pytest.raises(BackendUnavailableError) as info, mapped_errors("GET"):
        raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:1")
    assert isinstance(info.value.__cause__, redis.ConnectionError)


def test_pipeline_errors_drop_the_quoted_command() -> None:
    raw = ("Command # 1 (SET fleetcache:v:k b'\\x93\\x01secret-payload' PX 1000) of pipeline "
           "caused error: NOPERM User app has no permissions to run the 'set' command")
    with pytest.raises(BackendError) as info, mapped_errors("SET"):
        raise redis.ResponseError(raw)
    assert str(info.value) == "SET: NOPERM User app has no permissions to run the 'set' command"
    assert "secret-payload" not in str(info.value)
    assert not isinstance(info.value, BackendUnavailableError)


def test_no_error_passes_through() -> None:
    with mapped_errors("GET"):
        value = 1
    assert value == 1
