"""3. Codec: msgspec MessagePack vs JSON vs pickle, for small, medium and large values.

Size in bytes and encode/decode time per value. Codecs: msgspec MessagePack (what fleetcache
stores, reused Encoder/Decoder), fleetcache's own envelope codec (MessagePack inside
``[version, expiry, payload]``), msgspec JSON, the standard library's json, and pickle
(highest protocol: what cachelib and dogpile store). Small values are timed in batches (one
encode is shorter than a timer read), large ones one by one; the codecs' samples are
interleaved (sample i of each codec back to back) so a shared machine's drift hits them
alike. Ratios are to msgspec MessagePack, per round, then the median.

    python -m benchmarks.codec [--quick]
"""

from __future__ import annotations

# ruff: noqa: PLC0415 - codecs are imported where measured
import json
import pickle
import time
from collections.abc import Callable
from typing import Any

from . import harness as h

NAME = "codec"
ROUNDS = (2, 5)  # (--quick, full)


def _record(i: int) -> dict[str, Any]:
    return {"id": i, "name": f"Product {i}", "price": 19.99 + i, "in_stock": i % 3 != 0,
            "tags": ["red", "large", "sale"][: 1 + i % 3], "rating": 4.5,
            "description": "A sturdy thing that does what it says. " * 2}


VALUES: dict[str, Any] = {
    "small": {"user": "alice", "score": 100, "active": True},
    "medium": [_record(i) for i in range(20)],
    "large": [_record(i) for i in range(5000)],
}
BATCH = {"small": 1000, "medium": 50, "large": 1}


def codecs() -> dict[str, tuple[Callable[[Any], bytes], Callable[[bytes], Any]]]:
    import msgspec

    from fleetcache.core.codec import Codec

    mp_enc, mp_dec = msgspec.msgpack.Encoder().encode, msgspec.msgpack.Decoder().decode
    js_enc, js_dec = msgspec.json.Encoder().encode, msgspec.json.Decoder().decode
    fc = Codec(64 * 1024 * 1024)
    expires = int((time.time() + 3600) * 1000)
    return {
        "msgspec msgpack": (mp_enc, mp_dec),
        "fleetcache envelope (msgpack)": (lambda v: fc.encode("k", v, expires),
                                          lambda b: fc.decode(b)[0]),
        "msgspec json": (js_enc, js_dec),
        "stdlib json": (lambda v: json.dumps(v, separators=(",", ":")).encode(),
                        json.loads),
        "pickle (protocol 5)": (lambda v: pickle.dumps(v, protocol=pickle.HIGHEST_PROTOCOL),
                                pickle.loads),
    }


def _interleaved(cs: dict[str, tuple[Callable[[Any], bytes], Callable[[bytes], Any]]],
                 value: Any, batch: int, samples: int, r: int) -> dict[str, dict[str, Any]]:
    """Sample i of every codec back to back (rotated order): drift hits all codecs alike."""
    import gc

    names = list(cs)
    order = names[r % len(names):] + names[:r % len(names)]
    values = [value] * batch
    blobs = {name: [cs[name][0](value)] * batch for name in names}
    times: dict[str, dict[str, list[float]]] = {n: {"encode": [], "decode": []} for n in names}
    for name in order:  # warm
        h.loop_call1(cs[name][0], values)
        h.loop_call1(cs[name][1], blobs[name])
    for _ in range(samples):
        gc.collect()  # large values make garbage: collect between samples, never inside
        gc.disable()
        try:
            for name in order:
                enc, dec = cs[name]
                times[name]["encode"].append(h.loop_call1(enc, values) / batch)
                times[name]["decode"].append(h.loop_call1(dec, blobs[name]) / batch)
        finally:
            gc.enable()
    return {n: {op: h.pcts(times[n][op]) for op in ("encode", "decode")} for n in names}


def measure(opts: h.Options) -> dict[str, Any]:
    cs = codecs()
    samples = {"small": opts.pick(15, 200), "medium": opts.pick(15, 200),
               "large": opts.pick(5, 60)}
    sizes: dict[str, dict[str, int]] = {}
    for size, value in VALUES.items():
        sizes[size] = {}
        for name, (enc, dec) in cs.items():
            blob = enc(value)
            back = dec(blob)
            assert back == json.loads(json.dumps(value)), f"{name} round trip of {size}"
            sizes[size][name] = len(blob)
    rounds: list[dict[str, dict[str, dict[str, dict[str, float]]]]] = []
    for r in range(opts.rounds):
        rd: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
        for size, value in VALUES.items():
            rd[size] = _interleaved(cs, value, BATCH[size], samples[size], r)
        rounds.append(rd)
    return {"sizes": sizes, "rounds": rounds, "samples": samples}


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    rounds = raw["rounds"]
    for size in VALUES:
        names = list(rounds[0][size])
        floor = "msgspec msgpack"
        figures[size] = {}
        for name in names:
            fig: dict[str, Any] = {"bytes": raw["sizes"][size][name],
                                   "size_ratio": raw["sizes"][size][name]
                                   / raw["sizes"][size][floor]}
            for op in ("encode", "decode"):
                fig[op + "_ns"] = h.median_rounds([rd[size][name][op] for rd in rounds])
                fig[op + "_ratio_p50"] = h.median(rd[size][name][op]["p50"]
                                                  / rd[size][floor][op]["p50"] for rd in rounds)
            figures[size][name] = fig
    return figures


def _us(ns: float) -> float:
    return ns / 1000


def tables(figures: dict[str, Any]) -> list[h.Table]:
    out = []
    for size, value_figs in figures.items():
        t = h.Table(f"Codec, {size} value (times in us per value)",
                    ["codec", "bytes", "x size", "enc p50", "enc p99", "x enc", "dec p50",
                     "dec p99", "x dec"],
                    note="x = ratio to msgspec msgpack (p50, per-round median).")
        for name, fig in value_figs.items():
            t.add(name, fig["bytes"], h.fmt_ratio(fig["size_ratio"]),
                  _us(fig["encode_ns"]["p50"]), _us(fig["encode_ns"]["p99"]),
                  h.fmt_ratio(fig["encode_ratio_p50"]), _us(fig["decode_ns"]["p50"]),
                  _us(fig["decode_ns"]["p99"]), h.fmt_ratio(fig["decode_ratio_p50"]))
        out.append(t)
    return out


def chart(figures: dict[str, Any]) -> dict[str, Any]:
    names = list(figures["small"])
    panels = []
    for op in ("encode", "decode"):
        panels.append({
            "title": f"{op}: time relative to msgspec msgpack (p50)", "unit": "x", "log": True,
            "categories": list(figures),
            "series": [{"label": n, "values": [figures[s][n][op + "_ratio_p50"] for s in figures]}
                       for n in names],
        })
    panels.append({
        "title": "encoded size relative to msgspec msgpack", "unit": "x", "log": False,
        "categories": list(figures),
        "series": [{"label": n, "values": [figures[s][n]["size_ratio"] for s in figures]}
                   for n in names],
    })
    return {"title": "Codecs: small / medium / large values", "panels": panels}


def run(opts: h.Options) -> dict[str, Any]:
    started = time.monotonic()
    raw = measure(opts)
    figures = summarize(raw)
    tbls = tables(figures)
    m = figures["small"]["msgspec msgpack"]
    p = figures["small"]["pickle (protocol 5)"]
    gls = [h.goal("msgpack decode of a small value faster than pickle (informative)",
                  m["decode_ns"]["p50"] / p["decode_ns"]["p50"], "< 1",
                  m["decode_ns"]["p50"] < p["decode_ns"]["p50"])]
    params = {"batch": BATCH, "samples_per_round": raw["samples"],
              "values": {k: len(json.dumps(v)) for k, v in VALUES.items()}}
    return h.report(opts, NAME, None, started, params=params,
                    figures=figures, raw_rounds=raw["rounds"], tables=tbls, goals=gls,
                    chart=chart(figures))


def main() -> None:
    h.cli(h.parser("python -m benchmarks.codec"), ROUNDS, run)


if __name__ == "__main__":
    main()
