"""Codec: MessagePack round trips in the envelope, named encode errors, foreign bytes refused."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fleetcache import (
    NOT_FOUND,
    CorruptValueError,
    FleetCacheError,
    InvalidArgumentError,
    ValueEncodeError,
    ValueTooLargeError,
)
from fleetcache.core.codec import Codec

EXPIRES = 1_700_000_000_123

# database=None: these tests must leave no .hypothesis directory behind.
PROPERTY = settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


@pytest.fixture
def codec() -> Codec:
    return Codec(max_value_bytes=1024 * 1024)


def round_trip(codec: Codec, value: Any, key: str = "k") -> Any:
    decoded, expires_at_ms, _ = codec.decode(codec.encode(key, value, EXPIRES))
    assert expires_at_ms == EXPIRES
    return decoded


class Point(msgspec.Struct):
    x: int
    y: str


@dataclasses.dataclass
class Pair:
    left: int
    right: list[str]


class Unencodable:
    """A module-level class msgspec cannot encode."""


class Outer:
    class Inner:
        """A nested class: its __qualname__ is 'Outer.Inner', its __name__ 'Inner'."""


# -- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        {"a": 1, "b": [1, 2, {"c": None}]},
        [1, "two", 3.5, None, True],
        "",
        "héllo ✓",
        0,
        -1,
        2**63 - 1,
        -(2**63),
        2**64 - 1,
        3.141592653589793,
        -0.5,
        float("inf"),
        True,
        False,
        None,
        b"",
        b"\x00\xffraw",
        {},
        [],
    ],
    ids=repr,
)
def test_round_trip_of_plain_values(codec: Codec, value: Any) -> None:
    decoded = round_trip(codec, value)
    assert decoded == value
    assert type(decoded) is type(value)


def test_bool_does_not_come_back_as_int(codec: Codec) -> None:
    assert round_trip(codec, [True, 1, False, 0]) == [True, 1, False, 0]
    assert [type(v) for v in round_trip(codec, [True, 1])] == [bool, int]


def test_round_trip_of_tz_aware_datetime(codec: Codec) -> None:
    when = dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    decoded = round_trip(codec, {"at": when})["at"]
    assert isinstance(decoded, dt.datetime)
    assert decoded.tzinfo is not None
    assert decoded == when  # same instant (msgspec normalises to UTC)


def test_struct_comes_back_as_dict(codec: Codec) -> None:
    assert round_trip(codec, Point(3, "z")) == {"x": 3, "y": "z"}


def test_dataclass_comes_back_as_dict(codec: Codec) -> None:
    assert round_trip(codec, Pair(1, ["a", "b"])) == {"left": 1, "right": ["a", "b"]}


def test_nested_structs_and_dataclasses(codec: Codec) -> None:
    assert round_trip(codec, {"p": [Point(1, "a")], "q": Pair(2, [])}) == {
        "p": [{"x": 1, "y": "a"}],
        "q": {"left": 2, "right": []},
    }


def test_tuple_comes_back_as_list(codec: Codec) -> None:
    assert round_trip(codec, (1, (2, 3))) == [1, [2, 3]]


def test_expiry_is_carried(codec: Codec) -> None:
    assert codec.decode(codec.encode("k", "v", 42)) == ("v", 42, ())


def test_encode_is_stable(codec: Codec) -> None:
    value = {"a": [1, 2], "b": "c"}
    assert codec.encode("k", value, 1) == codec.encode("other", value, 1)


# -- unencodable values ----------------------------------------------------------------------


def _recursive_list() -> list[Any]:
    items: list[Any] = [1]
    items.append(items)
    return items


@pytest.mark.parametrize(
    ("value", "culprit"),
    [
        pytest.param({"user": {"obj": Unencodable()}}, Unencodable, id="custom-class-in-dict"),
        pytest.param([1, Unencodable()], Unencodable, id="custom-class-in-list"),
        pytest.param(object(), object, id="object"),
        pytest.param(_recursive_list(), list, id="recursive-list"),
        pytest.param(2**64, int, id="int-over-2**64"),
        pytest.param(-(2**63) - 1, int, id="int-under-int64"),
    ],
)
def test_unencodable_value_names_key_and_type(codec: Codec, value: Any, culprit: type) -> None:
    with pytest.raises(ValueEncodeError) as info:
        codec.encode("user:42", value, EXPIRES)
    err = info.value
    assert err.key == "user:42"
    assert err.value_type is culprit
    message = str(err)
    assert "'user:42'" in message
    assert culprit.__qualname__ in message


def test_nested_class_is_named_as_the_culprit(codec: Codec) -> None:
    # msgspec names the type by __name__ ("Inner"); the culprit must still be found for a
    # class whose __qualname__ differs ("Outer.Inner"), as for classes defined in functions.
    with pytest.raises(ValueEncodeError) as info:
        codec.encode("k", {"a": Outer.Inner()}, EXPIRES)
    assert info.value.value_type is Outer.Inner


def test_value_encode_error_is_a_fleetcache_error_and_a_type_error(codec: Codec) -> None:
    assert issubclass(ValueEncodeError, FleetCacheError)
    assert issubclass(ValueEncodeError, TypeError)
    with pytest.raises(TypeError):
        codec.encode("k", object(), EXPIRES)
    with pytest.raises(FleetCacheError):
        codec.encode("k", object(), EXPIRES)


def test_value_encode_error_keeps_the_cause(codec: Codec) -> None:
    with pytest.raises(ValueEncodeError) as info:
        codec.encode("k", object(), EXPIRES)
    assert info.value.__cause__ is not None


# -- size limit ------------------------------------------------------------------------------


def test_value_over_max_value_bytes_raises() -> None:
    codec = Codec(max_value_bytes=100)
    with pytest.raises(ValueTooLargeError) as info:
        codec.encode("big", b"x" * 200, EXPIRES)
    err = info.value
    assert err.key == "big"
    assert err.limit == 100
    assert err.size > 200
    assert "'big'" in str(err)
    assert isinstance(err, InvalidArgumentError)
    assert isinstance(err, FleetCacheError)


def test_value_at_the_limit_is_accepted() -> None:
    probe = Codec(max_value_bytes=10_000)
    size = len(probe.encode("k", "x" * 50, EXPIRES))
    exact = Codec(max_value_bytes=size)
    assert exact.decode(exact.encode("k", "x" * 50, EXPIRES))[0] == "x" * 50
    with pytest.raises(ValueTooLargeError):
        Codec(max_value_bytes=size - 1).encode("k", "x" * 50, EXPIRES)


# -- foreign bytes ---------------------------------------------------------------------------


def _valid(codec: Codec) -> bytes:
    return codec.encode("k", {"a": [1, 2, 3]}, EXPIRES)


@pytest.mark.parametrize(
    "make_blob",
    [
        pytest.param(lambda c: b"1", id="redis-cli-SET-1"),
        pytest.param(lambda c: b"garbage", id="garbage"),
        pytest.param(lambda c: b"", id="empty"),
        pytest.param(lambda c: _valid(c)[:-1], id="truncated-envelope"),
        pytest.param(lambda c: _valid(c)[:2], id="envelope-header-only"),
        pytest.param(lambda c: _valid(c) + b"\x00", id="trailing-bytes"),
        pytest.param(lambda c: msgspec.msgpack.encode({"a": 1}), id="plain-msgpack-dict"),
        pytest.param(lambda c: msgspec.msgpack.encode([1, 2]), id="short-array"),
        pytest.param(lambda c: msgspec.msgpack.encode([3, EXPIRES, 1]), id="wrong-version"),
        pytest.param(lambda c: msgspec.msgpack.encode([1, 1.5, 1]), id="float-expiry"),
        pytest.param(lambda c: msgspec.msgpack.encode([True, EXPIRES, 1]), id="bool-version"),
        pytest.param(lambda c: b"\x93\x01\x05\xa1\xff", id="invalid-utf8-in-payload"),
        pytest.param(lambda c: b"\x93\x01\x05" + b"\x91" * 100_000 + b"\x01", id="too-deep"),
    ],
)
def test_foreign_bytes_raise_corrupt_value_error(codec: Codec, make_blob: Any) -> None:
    with pytest.raises(CorruptValueError):
        codec.decode(make_blob(codec))


def test_corrupt_value_error_is_a_fleetcache_error() -> None:
    assert issubclass(CorruptValueError, FleetCacheError)


# -- properties ------------------------------------------------------------------------------

json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=25,
)


def _same(a: Any, b: Any) -> bool:
    """Equality that also tells bool from int and -0.0 from 0.0 (``==`` does not)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, float):
        return a == b and str(a) == str(b)
    return bool(a == b)


@PROPERTY
@given(value=json_like, expires=st.integers(min_value=0, max_value=2**63 - 1))
def test_property_round_trip_of_json_like_values(value: Any, expires: int) -> None:
    codec = Codec(max_value_bytes=16 * 1024 * 1024)
    decoded, expires_at_ms, _ = codec.decode(codec.encode("k", value, expires))
    assert expires_at_ms == expires
    assert _same(decoded, value), (decoded, value)


# Random bytes alone rarely look like an envelope; also mutate real envelope prefixes so the
# payload decoder (strings, maps, extensions) sees malformed input.
random_blobs = st.one_of(
    st.binary(max_size=64),
    st.binary(max_size=32).map(lambda tail: b"\x93\x01\x05" + tail),
    st.binary(max_size=32).map(lambda tail: b"\x93\x01\xcf" + b"\x00" * 8 + tail),
)


@PROPERTY
@given(blob=random_blobs)
@example(blob=b"\x93\x01\x05\xa1\xff")  # an invalid UTF-8 string as the payload
@example(blob=b"\x93\x01\x05\xd7\xff" + b"\xff" * 8)  # an invalid timestamp extension
@example(blob=b"\x93\x01\x05\x81\x80\x01")  # an unhashable map key
def test_property_random_bytes_decode_or_raise_corrupt_value_error(blob: bytes) -> None:
    codec = Codec(max_value_bytes=1024)
    try:
        _value, expires_at_ms, _ = codec.decode(blob)
    except CorruptValueError:
        return
    assert isinstance(expires_at_ms, int)


# -- signing ------------------------------------------------------------------------------

SECRET = b"0123456789abcdef-secret"


def test_signed_values_round_trip_and_carry_a_mac() -> None:
    signed, plain = Codec(1 << 20, SECRET), Codec(1 << 20)
    blob = signed.encode("k", {"a": 1}, 42)
    assert len(blob) == len(plain.encode("k", {"a": 1}, 42)) + 32
    assert signed.decode(blob, "k") == ({"a": 1}, 42, ())


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda c, s: Codec(1 << 20).encode("k", {"a": 2}, 42), id="unsigned"),
        pytest.param(lambda c, s: Codec(1 << 20, b"another-secret-1234").encode("k", 1, 42),
                     id="other-secret"),
        pytest.param(lambda c, s: c.encode("other", {"a": 1}, 42), id="copied-from-other-key"),
        pytest.param(lambda c, s: s[:-1] + bytes([s[-1] ^ 1]), id="flipped-mac-bit"),
        pytest.param(lambda c, s: s[:5] + bytes([s[5] ^ 1]) + s[6:], id="flipped-body-bit"),
        pytest.param(lambda c, s: s[-32:], id="mac-only"),
        pytest.param(lambda c, s: b"", id="empty"),
    ],
)
def test_forged_or_damaged_signed_values_are_corrupt(forge: Any) -> None:
    codec = Codec(1 << 20, SECRET)
    genuine = codec.encode("k", {"a": 1}, 42)
    with pytest.raises(CorruptValueError):
        codec.decode(forge(codec, genuine), "k")


def test_not_found_round_trips_as_envelope_version_2() -> None:
    codec = Codec(1024, b"k" * 32)
    blob, served = codec.encode_and_read_back("k", NOT_FOUND, EXPIRES)
    assert served is NOT_FOUND
    assert codec.decode(blob, "k") == (NOT_FOUND, EXPIRES, ())


def test_tags_travel_in_the_envelope_and_untagged_bytes_stay_as_before() -> None:
    codec = Codec(1 << 20)
    plain = codec.encode("k", "v", 42)
    tagged = codec.encode("k", "v", 42, ("user:1", "page"))
    assert plain == msgspec.msgpack.encode((1, 42, "v"))  # 0.1's bytes, unchanged
    assert codec.decode(tagged) == ("v", 42, ("user:1", "page"))
    assert codec.decode(codec.encode("k", NOT_FOUND, 42, ("t",))) == (NOT_FOUND, 42, ("t",))
    signed = Codec(1 << 20, b"secret")
    assert signed.decode(signed.encode("k", [1], 42, ("t",)), "k") == ([1], 42, ("t",))


def test_a_reader_without_tags_reads_a_tagged_value() -> None:
    """A 0.1 process decodes three-element envelopes: the tags element is ignored."""

    class OldEnvelope(msgspec.Struct, array_like=True):
        version: int
        expires_at_ms: int
        data: msgspec.Raw

    old = msgspec.msgpack.Decoder(OldEnvelope).decode(Codec(1 << 20).encode("k", "v", 7, ("t",)))
    assert (old.version, old.expires_at_ms, msgspec.msgpack.decode(old.data)) == (1, 7, "v")
