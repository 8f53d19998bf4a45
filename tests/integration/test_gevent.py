"""Under gevent monkey-patching: the listener is a greenlet, locks are greenlet-aware, and a
compute blocked in one greenlet never stalls the others. Runs in a fresh interpreter,
because patching must happen before anything else is imported."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest

from fleetcache import CacheConfig, FleetCache

from ..servers import Server

SCRIPT = textwrap.dedent(
    """
    from gevent import monkey
    monkey.patch_all()

    import json, os, sys, time
    import gevent
    from fleetcache import FleetCache

    def own_native_threads():
        # OS threads minus gevent's own resolver/threadpool workers
        return len(os.listdir("/proc/self/task")) - gevent.get_hub().threadpool.size

    url, ns = sys.argv[1], sys.argv[2]
    baseline = own_native_threads()
    a = FleetCache.from_url(url, namespace=ns)
    b = FleetCache.from_url(url, namespace=ns)
    assert a.connect(wait=5) and b.connect(wait=5)

    computes = []
    def compute():
        computes.append(1)
        gevent.sleep(0.2)          # a blocking call, cooperative under patching
        return {"v": 1}

    ticks = []
    def heartbeat():
        end = time.monotonic() + 0.35
        while time.monotonic() < end:
            ticks.append(time.monotonic())
            gevent.sleep(0.01)

    hb = gevent.spawn(heartbeat)
    start = time.monotonic()
    jobs = [gevent.spawn((a if i % 2 else b).get_or_compute, "cold", compute)
            for i in range(50)]
    gevent.joinall(jobs, timeout=5)
    elapsed = time.monotonic() - start
    hb.join()
    values = [j.value for j in jobs]

    # cross-instance invalidation through the greenlet listener
    a.set("k", 1); b.get("k"); a.set("k", 2)
    deadline = time.monotonic() + 2
    while b.get("k") != 2 and time.monotonic() < deadline:
        gevent.sleep(0.005)
    print(json.dumps({
        "extra_native_threads": own_native_threads() - baseline,
        "computes": len(computes),
        "values_ok": all(v == {"v": 1} for v in values),
        "elapsed": elapsed,
        "ticks": len(ticks),
        "invalidated": b.get("k") == 2,
    }))
    a.close(); b.close()
    """
)


@pytest.mark.slow
def test_gevent_patched_workers(server: Server, namespace: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, server.url, namespace],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # Listeners and pottery's executor run as greenlets: no extra OS thread.
    assert result["extra_native_threads"] == 0, result
    assert result["computes"] == 1, result
    assert result["values_ok"], result
    assert result["elapsed"] < 0.6, result
    # The hub kept running while computes slept: ~35 ticks of 10 ms in 0.35 s.
    assert result["ticks"] >= 20, result
    assert result["invalidated"], result


PAUSED_SCRIPT = textwrap.dedent(
    """
    from gevent import monkey
    monkey.patch_all()

    import gc, json, sys, time
    import gevent
    from fleetcache import FleetCache

    def live_greenlets():
        # Spawned greenlets only: gevent's resolver threadpool brings hub greenlets of its
        # own native threads, which are not ours to count.
        gc.collect()
        return sum(1 for o in gc.get_objects()
                   if isinstance(o, gevent.Greenlet) and not o.dead)

    cache = FleetCache.from_url(sys.argv[1], namespace=sys.argv[2],
                                health_check_interval=0.5, health_check_timeout=0.3)
    assert cache.connect(wait=5)
    cache.set("k", "v")
    baseline = live_greenlets()
    print("ready", flush=True)
    sys.stdin.readline()                      # the parent has SIGSTOPped the server
    start = time.monotonic()
    jobs = [gevent.spawn(cache.get, f"cold{i}", "dflt") for i in range(20)]
    gevent.joinall(jobs, timeout=10)
    slowest = time.monotonic() - start
    during = [j.value for j in jobs]
    print("paused-done", flush=True)
    sys.stdin.readline()                      # the parent has resumed it
    deadline = time.monotonic() + 5
    while not cache.health().ok and time.monotonic() < deadline:
        gevent.sleep(0.05)
    gevent.sleep(0.5)                         # let finished greenlets be reaped
    print(json.dumps({"slowest": slowest, "all_default": during == ["dflt"] * 20,
                      "recovered": cache.health().ok, "value": cache.get("k"),
                      "leaked": live_greenlets() - baseline}), flush=True)
    cache.close()
    """
)


@pytest.mark.slow
def test_gevent_reads_during_a_paused_server_are_bounded_and_leak_nothing(
    own_server: Server, namespace: str
) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", PAUSED_SCRIPT, own_server.url, namespace],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        assert child.stdout.readline().strip() == "ready"
        own_server.pause()
        try:
            child.stdin.write("go\n")
            child.stdin.flush()
            assert child.stdout.readline().strip() == "paused-done"
        finally:
            own_server.resume()
        child.stdin.write("go\n")
        child.stdin.flush()
        result = json.loads(child.stdout.readline())
        assert child.wait(10) == 0
    finally:
        child.kill()
        child.wait()
    # 20 concurrent greenlets against a stopped server: each bounded by the socket timeout
    # (0.25 s, one retry only on connection errors), none waits for another.
    assert result["slowest"] < 1.5, result
    assert result["all_default"], result
    assert result["recovered"] and result["value"] == "v", result
    assert result["leaked"] <= 0, result


STARVED_SCRIPT = textwrap.dedent(
    """
    from gevent import monkey
    monkey.patch_all()

    import json, sys, time
    from fleetcache import FleetCache

    b = FleetCache.from_url(sys.argv[1], namespace=sys.argv[2])
    assert b.connect(wait=5)
    assert b.get("k") == 1                    # now in L1
    print("ready", flush=True)
    # A request greenlet serving L1 hits never yields: without the lease the listener
    # greenlet would never run, and this loop would serve 1 until it ends (all three reads).
    reads = [lambda: b.get("k"), lambda: b.get_or_compute("k", lambda: -1),
             lambda: b.get_many(["k"]).get("k")]
    last_old = first_new = None
    end = time.monotonic() + float(sys.argv[3])
    i = 0
    while (now := time.monotonic()) < end:
        i += 1
        if reads[i % 3]() == 1:
            last_old = now
        elif first_new is None:
            first_new = now
    s = b.stats()
    print(json.dumps({"last_old": last_old, "first_new": first_new,
                      "listener_waits": s.listener_waits, "l1_hits": s.l1_hits}), flush=True)
    b.close()
    """
)


@pytest.mark.slow
def test_a_greenlet_that_never_yields_stops_serving_an_invalidated_value(
    server: Server, namespace: str
) -> None:
    """The listener's lease: a hot loop of L1 hits starves the listener greenlet, so L1 is
    trusted only ``max_listener_lag`` past its last renewal; then reads wait for it."""
    writer = FleetCache.from_url(server.url, namespace=namespace)
    writer.set("k", 1)
    proc = subprocess.Popen(
        [sys.executable, "-c", STARVED_SCRIPT, server.url, namespace, "1.5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.4)
        writer.set("k", 2)
        written = time.monotonic()  # CLOCK_MONOTONIC is system-wide: comparable across processes
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        writer.close()
    assert proc.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    lag = CacheConfig().max_listener_lag
    assert result["first_new"] is not None, result
    assert result["last_old"] < written + lag + 0.05, (result, written)
    assert result["listener_waits"] > 0, result
    assert result["l1_hits"] > 1000, result  # L1 still served between renewals
