"""The fleet profile's sample classifier, on hand-made py-spy raw output (no fleet)."""

from __future__ import annotations

from benchmarks.fleet_profile import classify

RAW = "\n".join([
    # gunicorn's loop calling into Flask calling fleetcache calling redis-py: redis-py's.
    "run (gunicorn/workers/gthread.py:1);full_dispatch_request (flask/app.py:2);"
    "get_or_compute (fleetcache/core/front.py:3);read_response (redis/connection.py:4) 6",
    # fleetcache's L1 lookup is innermost: fleetcache's, named by its innermost own frame.
    "run (gunicorn/workers/gthread.py:1);get (fleetcache/core/front.py:9);"
    "get (fleetcache/core/l1.py:7) 3",
    # stdlib below gunicorn: gunicorn's (the innermost known layer).
    "run (gunicorn/workers/gthread.py:1);format_datetime (email/utils.py:5) 1",
    "garbage line without a count",
])


def test_samples_go_to_the_innermost_known_layer() -> None:
    r = classify(RAW)
    assert r["samples"] == 10
    assert r["buckets"]["redis-py"] == 0.6
    assert r["buckets"]["fleetcache"] == 0.3
    assert r["buckets"]["gunicorn"] == 0.1
    assert r["buckets"]["flask/werkzeug"] == r["buckets"]["other"] == 0.0
    assert r["top"][0] == ("read_response (redis/connection.py)", 0.6)
    assert r["top_fleetcache"] == [("get (fleetcache/core/l1.py)", 0.3)]


def test_no_samples_give_empty_shares() -> None:
    r = classify("")
    assert r["samples"] == 0 and r["top"] == [] and set(r["buckets"].values()) == {0.0}
